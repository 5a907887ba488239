"""Where a benchmark's buffers live: host memory (numpy arrays, the default) or a GPU
(`--device cuda`: torch CUDA tensors on this rank's GPU, which plexus, NCCL and cupy all take).

The sweep makes, fills, poisons and reads back buffers only through these, so every system
sees the same buffers wherever they are, and a time ends when the device is done (sync()).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import data


class HostMemory:
    device = "cpu"

    def empty(self, n: int, dtype: np.dtype) -> np.ndarray:
        return np.empty(n, dtype=dtype)

    def empty_like(self, a: np.ndarray) -> np.ndarray:
        return np.empty_like(a)

    def upload(self, dst: np.ndarray, src: np.ndarray) -> None:
        np.copyto(dst, src)

    def download(self, a: Any) -> Any:
        return a

    def copy(self, dst: np.ndarray, src: np.ndarray) -> None:
        np.copyto(dst, src)

    def poison(self, a: np.ndarray) -> None:
        data.poison(a)

    def sync(self) -> None:
        pass

    def describe(self, local_rank: int) -> str:
        return "cpu"


class CudaMemory:
    """torch CUDA tensors on GPU local_rank % (GPUs of this host): ranks share GPUs when there
    are more of them than GPUs."""

    device = "cuda"

    def __init__(self, local_rank: int) -> None:
        import torch

        self.torch = torch
        self.gpus = torch.cuda.device_count()
        self.index = local_rank % self.gpus
        torch.cuda.set_device(self.index)

    def _dtype(self, dtype: np.dtype) -> Any:
        name = "bfloat16" if dtype.name == "bfloat16" else dtype.name
        return getattr(self.torch, name)

    def empty(self, n: int, dtype: np.dtype) -> Any:
        return self.torch.empty(n, dtype=self._dtype(dtype), device="cuda")

    def empty_like(self, a: Any) -> Any:
        return self.torch.empty_like(a)

    def upload(self, dst: Any, src: np.ndarray) -> None:
        dst.copy_(torch_view(src))

    def download(self, a: Any) -> Any:
        if a is None:
            return None
        host = a.cpu()
        if host.dtype == self.torch.bfloat16:  # numpy reads it through ml_dtypes
            return host.view(self.torch.uint16).numpy().view(data.np_dtype("bfloat16"))
        return host.numpy()

    def copy(self, dst: Any, src: Any) -> None:
        dst.copy_(src)

    def poison(self, a: Any) -> None:
        a.fill_(255 if a.dtype == self.torch.uint8 else -1)

    def sync(self) -> None:
        self.torch.cuda.synchronize()

    def describe(self, local_rank: int) -> str:
        return f"cuda:{self.index} {self.torch.cuda.get_device_name(self.index)}"


def torch_view(a: np.ndarray) -> Any:
    """A CPU tensor over numpy array `a` (no copy)."""
    import torch

    if a.dtype.name == "bfloat16":  # torch cannot read ml_dtypes' bfloat16 directly
        return torch.from_numpy(a.view(np.uint16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def make(device: str, local_rank: int) -> Any:
    return CudaMemory(local_rank) if device == "cuda" else HostMemory()
