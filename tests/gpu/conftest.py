"""tests/gpu: run only where a GPU is usable; elsewhere every test skips and says why (in the
session header and in the skip reasons, `pytest -rs`).

Markers: `cupy` (needs cupy and a device), `torch_cuda` (needs torch.cuda), `kernels` (needs a
plexus built with CUDA that sees the device). Unmarked tests need either library.
"""

from __future__ import annotations

import functools
import os
import sys

import pytest

# reference.py and launch.py live one folder up.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@functools.lru_cache(maxsize=None)
def cupy_problem():
    try:
        import cupy
    except Exception as e:  # noqa: BLE001 - ImportError, or a broken CUDA install
        return f"cupy is not usable ({type(e).__name__}: {e})"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # noqa: BLE001
        return f"cupy sees no GPU (getDeviceCount failed: {e})"
    return None if n > 0 else "cupy sees no GPU (getDeviceCount() == 0)"


@functools.lru_cache(maxsize=None)
def torch_problem():
    try:
        import torch
    except Exception as e:  # noqa: BLE001
        return f"torch is not usable ({type(e).__name__}: {e})"
    return None if torch.cuda.is_available() else f"torch.cuda is not available (torch {torch.__version__})"


@functools.lru_cache(maxsize=None)
def kernels_problem():
    from plexus import _C

    if not _C.built_with_cuda:
        return "plexus was built without CUDA (no nvcc at build time, or PLEXUS_CUDA=OFF)"
    status = _C._cuda_runtime_status()
    return None if status == "ok" else f"plexus's CUDA runtime: {status}"


def pytest_configure(config):
    config.addinivalue_line("markers", "cupy: needs cupy and a GPU")
    config.addinivalue_line("markers", "torch_cuda: needs torch with CUDA and a GPU")
    config.addinivalue_line("markers", "kernels: needs plexus built with CUDA, on a GPU")


def pytest_report_header(config):
    probes = {"cupy": cupy_problem(), "torch": torch_problem(), "plexus kernels": kernels_problem()}
    return "plexus GPU tests: " + "; ".join(f"{k}: {v or 'ok'}" for k, v in probes.items())


def pytest_collection_modifyitems(config, items):
    here = os.path.dirname(os.path.abspath(__file__))
    for item in items:
        if not str(item.fspath).startswith(here):
            continue
        problems = []
        if item.get_closest_marker("cupy"):
            problems.append(cupy_problem())
        if item.get_closest_marker("torch_cuda"):
            problems.append(torch_problem())
        if item.get_closest_marker("kernels"):
            problems.append(kernels_problem())
        if not problems and cupy_problem() and torch_problem():
            problems.append(f"no GPU: {cupy_problem()}; {torch_problem()}")
        reason = next((p for p in problems if p), None)
        if reason:
            item.add_marker(pytest.mark.skip(reason=f"GPU test skipped: {reason}"))
