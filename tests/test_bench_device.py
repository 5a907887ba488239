"""plexus-bench --device cuda without a GPU, as far as the fakes allow: the sweep's buffers are
host memory posing as device memory (tests/fake_cuda.py's files, seen only through
__cuda_array_interface__), the CUDA IPC driver is FakeCuda and staging's copies are FakeOps, so
plexus runs its device paths (IPC for the six collectives it has, staging for all_to_all) on
every collective, in and out of place, and the sweep counts #wrong against its reference."""

from __future__ import annotations


import numpy as np
import pytest

from launch import run_ranks
from plexus.bench import collectives, data, memory, sweep
from plexus.bench.systems import CupyAdd, Gloo, Mpi, Plexus


class FakeDev:
    """A slice of fake device memory, as the sweep handles device arrays (views, size, dtype)."""

    def __init__(self, host: np.ndarray):
        self.host = host
        self.device_id = 0

    @property
    def __cuda_array_interface__(self):
        h = self.host
        return {"shape": h.shape, "typestr": h.dtype.str, "data": (h.ctypes.data, False), "strides": None,
                "version": 3}

    def __getitem__(self, index):
        return FakeDev(self.host[index])

    @property
    def size(self):
        return self.host.size

    @property
    def dtype(self):
        return self.host.dtype


class FakeCudaMemory(memory.HostMemory):
    """memory.CudaMemory's interface over FakeCuda's fake device memory."""

    device = "cuda"

    def __init__(self, fake):
        self.fake = fake

    def empty(self, n, dtype):
        return FakeDev(self.fake.array(np.empty(n, dtype)).host)

    def empty_like(self, a):
        return self.empty(a.size, a.dtype)

    def upload(self, dst, src):
        np.copyto(dst.host, src)

    def download(self, a):
        return None if a is None else a.host.copy()

    def copy(self, dst, src):
        np.copyto(dst.host, src.host)

    def poison(self, a):
        data.poison(a.host)

    def describe(self, local_rank):
        return "fake-cuda"


def _sweep_on_fake_device(rank, world, folder):
    from fake_cuda import FakeCuda
    from test_device_logic import FakeOps

    from plexus import device
    from plexus.bench.launch import World
    from plexus.device import ipc, libraries

    fake = FakeCuda(folder, rank)
    ipc.set_driver(fake)
    libraries._OPS["cupy"] = FakeOps()
    mem = FakeCudaMemory(fake)
    world_ = World("127.0.0.1")
    plexus_system = Plexus(mem)
    assert Gloo.unsupported(type("G", (), {"memory": mem})(), None, "float32", None)  # host buffers only
    wrong = {}
    for name, coll in collectives.COLLECTIVES.items():
        for dtype in ("float32", "int64", "float16"):
            for op in (("sum", "max") if coll.reduces else ("sum",)):
                s = sweep.Settings(dtype, op, root=world - 1, iters=2, warmup=1, check=True)
                rows = sweep.run(coll, [8, 4096, 40000], [plexus_system], s, world_, memory=mem)
                for row in rows:
                    for placement, m in row.results["plexus"].items():
                        wrong[(name, dtype, op, row.size, placement)] = m.wrong
    return wrong, sorted(device.PATHS)


@pytest.mark.parametrize("world", [2, 3])
def test_sweep_on_device_buffers_checks_every_collective(world, tmp_path):
    results = run_ranks(world, _sweep_on_fake_device, str(tmp_path), timeout=600)
    wrong, paths = results[0]
    assert wrong and all(w == 0 for w in wrong.values()), {k: w for k, w in wrong.items() if w}
    assert len(wrong) == 6 * 2 * 3 * 3 + 3 * 2 * 3 * 3  # reducing: sum and max; the rest: no op
    assert paths == ["cuda_ipc"], paths  # the six direct collectives went through (fake) CUDA IPC


def test_peers_that_cannot_run_on_device_buffers_say_so():
    host, dev = memory.HostMemory(), type("M", (), {"device": "cuda"})()
    coll = collectives.COLLECTIVES["all_reduce"]
    mpi = Mpi.__new__(Mpi)
    mpi.memory = dev
    assert "host buffers only" in mpi.unsupported(coll, "float32", "sum")
    add = CupyAdd.__new__(CupyAdd)
    add.memory = host
    assert "device buffers only" in add.unsupported(coll, "float32", "sum")
    add.memory = dev
    assert add.unsupported(coll, "float32", "sum") is None and add.checks is False
    assert "all_reduce only" in add.unsupported(collectives.COLLECTIVES["broadcast"], "float32", None)
