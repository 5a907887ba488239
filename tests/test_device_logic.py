"""Device arrays in the collective layer, without a GPU: host memory poses as device memory
(objects exposing only __cuda_array_interface__) and FakeOps stands in for cupy's copies and
streams. Covers detection, dtype/layout checks, the staging of plexus.device (aliasing, what is
copied which way, failures), the pinned pool, the dispatch of every public collective on device
arrays and, on 2 real ranks, those collectives against numpy."""

from __future__ import annotations

import ctypes
import threading
import time

import numpy as np
import pytest

import plexus
from plexus import _collectives as coll, device
from plexus._arrays import as_buffer
from plexus.device import arrays, libraries, staging
from plexus.device.pinned import PinnedPool
from launch import run_ranks


class FakeDeviceArray:
    """Host memory seen only through __cuda_array_interface__ (like a cupy array would be)."""

    def __init__(self, host: np.ndarray, readonly: bool = False, mask=None):
        self.host, self.readonly, self.mask = host, readonly, mask

    @property
    def __cuda_array_interface__(self):
        h = self.host
        strides = None if h.flags.c_contiguous else h.strides
        return {"shape": h.shape, "typestr": h.dtype.str, "data": (h.ctypes.data, self.readonly),
                "strides": strides, "version": 3, "mask": self.mask}


class FakeEvent:
    def __init__(self, ops):
        self.ops = ops

    def done(self):
        return self.ops.events_done

    def wait(self):
        self.ops.log.append(("wait",))

    def stream_wait(self, stream):
        self.ops.log.append(("stream_wait", stream))


class FakeOps:
    """cupy's part of staging, on host memory; logs what it did."""

    kind = "cupy"

    def __init__(self):
        self.log = []
        self.events_done = True

    def wrap(self, x):
        return x

    def device_of(self, x):
        return getattr(x, "device_id", 0)

    def current_stream(self, device):
        return f"stream{device}"

    def alloc_host(self, nbytes):
        self.log.append(("alloc", nbytes))
        h = np.zeros(nbytes, np.uint8)
        return h, h

    def device_empty(self, device, nbytes):
        """Working "device" memory: host memory, as the fake device arrays are."""
        self.log.append(("device_empty", nbytes))
        h = np.empty(nbytes, np.uint8)
        return h.ctypes.data, h

    def to_host(self, block, off, x, ptr, nbytes, stream):
        self.log.append(("d2h", ptr, nbytes))
        ctypes.memmove(block.host.ctypes.data + off, ptr, nbytes)

    def to_device(self, x, ptr, block, off, nbytes, stream):
        self.log.append(("h2d", ptr, nbytes))
        ctypes.memmove(ptr, block.host.ctypes.data + off, nbytes)

    def synchronize(self, stream):
        self.log.append(("sync", stream))

    def record(self, stream):
        self.log.append(("record", stream))
        return FakeEvent(self)


@pytest.fixture
def fake_ops(monkeypatch):
    ops = FakeOps()
    monkeypatch.setitem(libraries._OPS, "cupy", ops)
    monkeypatch.setattr(staging, "POOL", PinnedPool(1 << 30))
    return ops


def dev(values, dtype=np.float32):
    return FakeDeviceArray(np.array(values, dtype=dtype))


# --- detection and description ----------------------------------------------------------------


class Raises:
    @property
    def __cuda_array_interface__(self):
        raise RuntimeError("not on a GPU")


def test_device_kind():
    assert arrays.device_kind(np.zeros(3)) is None
    assert arrays.device_kind(None) is None
    assert arrays.device_kind([1, 2]) is None
    assert arrays.device_kind(dev([1.0])) == "cupy"
    assert arrays.device_kind(Raises()) is None


@pytest.mark.parametrize("np_dtype,name", [
    ("float16", "float16"), ("float32", "float32"), ("float64", "float64"), ("int8", "int8"),
    ("uint8", "uint8"), ("int32", "int32"), ("int64", "int64"), ("bool", "bool")])
def test_dtype_mapping(np_dtype, name):
    a = arrays.describe(FakeDeviceArray(np.zeros((2, 3), np_dtype)), "x")
    assert (a.dtype, a.shape, a.nbytes, a.kind) == (name, (2, 3), 6 * np.dtype(np_dtype).itemsize, "cupy")


@pytest.mark.parametrize("np_dtype", [">f4", "complex64", "uint16", "uint32"])
def test_unsupported_dtypes(np_dtype):
    with pytest.raises(TypeError, match="x has dtype .* plexus does not support"):
        arrays.describe(FakeDeviceArray(np.zeros(4, np_dtype)), "x")


def test_layout_checks():
    base = np.zeros((4, 6), np.float32)
    with pytest.raises(ValueError, match="C-contiguous"):
        arrays.describe(FakeDeviceArray(base[:, ::2]), "x")
    with pytest.raises(ValueError, match="C-contiguous"):
        arrays.describe(FakeDeviceArray(base.T), "x")
    with pytest.raises(ValueError, match="masked"):
        arrays.describe(FakeDeviceArray(base, mask=object()), "x")
    # Size-1 dimensions may carry any stride; empty arrays are contiguous.
    assert arrays.describe(FakeDeviceArray(base[1:2, :]), "x").nbytes == 24
    assert arrays.describe(FakeDeviceArray(base[:, :0]), "x").nbytes == 0
    assert arrays._c_contiguous((1, 3), (999, 4), 4)
    assert arrays.describe(FakeDeviceArray(base, readonly=True), "x").readonly


def test_plan_regions():
    regions, of = staging.plan_regions([(100, 10), (0, 50), (105, 20), (200, 0), (50, 10), (40, 5)])
    # (0,50) and (40,5) overlap; (50,10) only touches (0,50): separate; (100,10)+(105,20) merge.
    assert regions == [(0, 50), (50, 60), (100, 125)]
    assert of == [2, 0, 2, -1, 1, 0]
    assert staging.plan_regions([(8, 4), (8, 4)]) == ([(8, 12)], [0, 0])


# --- the pinned pool ---------------------------------------------------------------------------


class Ev:
    def __init__(self, done):
        self.flag = done

    def done(self):
        return self.flag


def test_pool_reuses_only_finished_blocks():
    pool = PinnedPool(1 << 30)
    allocs = []

    def alloc(n):
        allocs.append(n)
        h = np.empty(n, np.uint8)
        return h, h

    a = pool.acquire("cupy", 1000, alloc)
    assert a.size == 1 << 16 and len(allocs) == 1
    ev = Ev(False)
    pool.release(a, ev)
    b = pool.acquire("cupy", 1000, alloc)  # a's copy is pending: a fresh block
    assert b is not a and len(allocs) == 2
    ev.flag = True
    assert pool.acquire("cupy", 2000, alloc) is a  # now it is free again
    assert pool.acquire("torch", 10, alloc) is not b  # blocks belong to one library
    pool.release(b)
    assert pool.acquire("cupy", 1 << 20, alloc) is not b  # too small
    c = pool.acquire("cupy", 1 << 20, alloc)
    pool.release(c)
    assert pool.acquire("cupy", 1000, alloc) is b  # not c: no more than twice the size


def test_pool_limit_keeps_pending_blocks():
    pool = PinnedPool(limit_bytes=1 << 17)
    alloc = lambda n: (np.empty(n, np.uint8), None)  # noqa: E731
    blocks = [pool.acquire("cupy", 1 << 16, alloc) for _ in range(4)]
    pending = Ev(False)
    pool.release(blocks[0], pending)
    for b in blocks[1:]:
        pool.release(b)
    assert pool.cached_bytes() == 1 << 17
    assert blocks[0] in pool._free  # oldest, but a copy still reads it


# --- staging a call through host memory ---------------------------------------------------------

SUM = plexus.ReduceOp.SUM.code


class _Group:
    """What the plan functions ask of a group: its size and this rank."""

    def __init__(self, rank=0, n=1):
        self._rank, self._n = rank, n

    def rank(self):
        return self._rank

    def size(self):
        return self._n


def _conv(x, what, writable, reduce_op=-1):
    return as_buffer(x, what, writable=writable)


def _view(ptr, nbytes, dtype=np.float32):
    return np.frombuffer((ctypes.c_char * nbytes).from_address(ptr), dtype)


class _DoneCore:
    what = "fake"
    source = -1

    def wait(self, timeout):
        return True

    def is_completed(self):
        return True

    def failed(self):
        return False


def _doubling(fail=None):
    """A host collective for staging.run: output = 2 x input, at the host addresses it is given."""
    seen = []

    def run_host(call, blocking):
        seen.append(call)
        n = call.count * 4
        _view(call.out_ptrs[0], n)[:] = _view(call.in_ptrs[0], n) * 2
        if fail:
            raise RuntimeError(fail)
        return None if blocking else _DoneCore()

    return run_host, seen


def test_in_place_round_trip(fake_ops):
    x = dev([1, 2, 3])
    call = coll.all_reduce(_Group(), "w", _conv, x, None, SUM, 1.0)
    assert call.device == "cupy"
    run_host, seen = _doubling()
    assert staging.run(call, True, run_host) is None
    np.testing.assert_array_equal(x.host, [2, 4, 6])
    host = seen[0]
    assert host.in_ptrs == host.out_ptrs and host.in_ptrs[0] != x.host.ctypes.data  # in place, on a host copy
    kinds = [e[0] for e in fake_ops.log]
    assert kinds.index("sync") > kinds.index("d2h")  # the copies are waited for before the host op
    assert kinds.count("h2d") == 1 and kinds[-1] == "record"
    # The host copy is not the device memory; finish() copies it back, once.
    stage = staging.Stage(call)
    hx = _view(stage.translate(x.host.ctypes.data), 12)
    hx *= 10
    np.testing.assert_array_equal(x.host, [2, 4, 6])
    stage.finish()
    np.testing.assert_array_equal(x.host, [20, 40, 60])
    stage.finish()
    assert sum(e[0] == "h2d" for e in fake_ops.log) == 2


def test_inputs_are_not_copied_back_and_outputs_not_copied_in(fake_ops):
    a, out = dev([1, 2]), dev([5, 5])
    call = coll.all_reduce(_Group(), "w", _conv, a, out, SUM, 1.0)
    staging.run(call, True, _doubling()[0])
    np.testing.assert_array_equal(a.host, [1, 2])
    np.testing.assert_array_equal(out.host, [2, 4])
    assert [e[1] for e in fake_ops.log if e[0] == "d2h"] == [a.host.ctypes.data]  # out is written in full
    assert [e[1] for e in fake_ops.log if e[0] == "h2d"] == [out.host.ctypes.data]  # a is only read


def test_aliasing_is_kept_on_the_host(fake_ops):
    # all_gather_into_tensor in place: the input is this rank's slice of the output.
    whole = np.arange(8, dtype=np.int32)
    out, part = FakeDeviceArray(whole), FakeDeviceArray(whole[4:6])
    call = coll.all_gather_into_tensor(_Group(rank=2, n=4), "w", _conv, out, part)
    stage = staging.Stage(call)
    hpart, hout = stage.translate(part.host.ctypes.data), stage.translate(out.host.ctypes.data)
    assert hpart - hout == 16 and stage.translate(call.out_ptrs[2]) == hpart
    _view(hout, 32, np.int32)[:] = -1
    assert (_view(hpart, 8, np.int32) == -1).all()
    stage.finish()
    np.testing.assert_array_equal(whole, [-1] * 8)
    assert sum(e[0] == "alloc" for e in fake_ops.log) == 1  # one host block for the region


def test_lists_and_empty_arrays(fake_ops):
    lst = [dev([0.0]), dev([0.0])]
    call = coll.all_gather(_Group(0, 2), "w", _conv, lst, dev([1.0]))
    stage = staging.Stage(call)
    host = [stage.translate(p) for p in call.out_ptrs]
    assert len(set(host)) == 2 and not set(host) & {o.host.ctypes.data for o in lst}
    stage.finish()
    empty = [FakeDeviceArray(np.zeros(0, np.float64)) for _ in range(3)]
    call = coll.all_gather(_Group(0, 2), "w", _conv, empty[:2], empty[2])
    stage = staging.Stage(call)
    assert stage.blocks == [] and stage.translate(call.in_ptrs[0]) == call.in_ptrs[0]  # nothing to copy
    stage.finish()


@pytest.mark.parametrize("kind", ["reduce_scatter", "gather", "scatter", "all_gather"])
def test_an_array_named_twice_is_staged_once(fake_ops, kind):
    mine, other = dev([1.0, 2.0]), dev([3.0, 4.0])
    g = _Group(0, 2)
    call = {"reduce_scatter": lambda: coll.reduce_scatter(g, "w", _conv, mine, [mine, other], SUM, 1.0),
            "gather": lambda: coll.gather(g, "w", _conv, mine, [mine, other], 0),
            "scatter": lambda: coll.scatter(g, "w", _conv, mine, [mine, other], 0),
            "all_gather": lambda: coll.all_gather(g, "w", _conv, [mine, other], mine)}[kind]()

    def run_host(c, blocking):  # the host collective's writes, at the host addresses
        for p in c.out_ptrs:
            _view(p, 8)[:] += 10
        return None

    staging.run(call, True, run_host)
    assert sum(e[0] == "d2h" and e[1] == mine.host.ctypes.data for e in fake_ops.log) <= 1
    assert sum(e[0] == "h2d" and e[1] == mine.host.ctypes.data for e in fake_ops.log) == (kind != "gather" or 1)
    np.testing.assert_array_equal(mine.host, [11.0, 12.0])


class _SlowOps(FakeOps):
    def to_device(self, *args):
        time.sleep(0.2)
        super().to_device(*args)


def test_outputs_are_back_before_any_wait_returns(monkeypatch):
    ops = _SlowOps()
    monkeypatch.setitem(libraries._OPS, "cupy", ops)
    monkeypatch.setattr(staging, "POOL", PinnedPool(1 << 30))
    x = dev([1, 3])
    core = staging.run(coll.all_reduce(_Group(), "w", _conv, x, None, SUM, 1.0), False, _doubling()[0])
    w = plexus.Work([core], [x])
    other = threading.Thread(target=w.is_completed)  # the futures thread, or track() pruning
    other.start()
    time.sleep(0.05)  # it is copying back now
    w.wait()
    np.testing.assert_array_equal(x.host, [2, 6])  # not before the copies were enqueued
    assert w.host_wait() and w.is_completed()
    other.join()
    assert sum(e[0] == "h2d" for e in ops.log) == 1
    assert ops.log[-1][0] == "stream_wait"  # wait() orders the current stream after the copies


def test_failure_leaves_device_alone_and_drops_the_block(fake_ops):
    x = dev([1, 2])
    call = coll.all_reduce(_Group(), "w", _conv, x, None, SUM, 1.0)
    with pytest.raises(RuntimeError, match="peer died"):
        staging.run(call, True, _doubling(fail="peer died")[0])
    np.testing.assert_array_equal(x.host, [1, 2])
    assert staging.POOL.cached_bytes() == 0


def test_async_outputs_come_back_at_wait(fake_ops):
    x = dev([1, 3])
    work = staging.run(coll.all_reduce(_Group(), "w", _conv, x, None, SUM, 1.0), False, _doubling()[0])
    np.testing.assert_array_equal(x.host, [1, 3])  # not before wait()
    w = plexus.Work([work], [x])
    w.wait()
    np.testing.assert_array_equal(x.host, [2, 6])
    assert w.result()[0] is x  # the device array, not its host copy


def test_blocks_are_recycled_after_the_copy_back(fake_ops):
    x = dev(np.ones(100))
    call = coll.all_reduce(_Group(), "w", _conv, x, None, SUM, 1.0)
    fake_ops.events_done = False
    staging.Stage(call).finish()
    second = staging.Stage(call)  # the first block's copy is still pending
    assert sum(e[0] == "alloc" for e in fake_ops.log) == 2
    fake_ops.events_done = True
    second.finish()
    staging.Stage(call)
    assert sum(e[0] == "alloc" for e in fake_ops.log) == 2


def test_argument_errors(fake_ops):
    g = _Group()
    with pytest.raises(TypeError, match="both be device arrays or both host arrays"):
        coll.all_reduce(g, "w", _conv, dev([1.0]), np.zeros(1, np.float32), SUM, 1.0)
    with pytest.raises(ValueError, match="read-only but receives"):
        coll.all_reduce(g, "all_reduce on rank 0", _conv, FakeDeviceArray(np.zeros(2), readonly=True), None, SUM, 1.0)
    a, b = dev([1.0]), dev([1.0])
    b.device_id = 1
    with pytest.raises(ValueError, match="several GPUs"):
        staging.Stage(coll.all_reduce(g, "w", _conv, a, b, SUM, 1.0))
    with pytest.raises(TypeError, match="complex64"):
        coll.all_reduce(g, "w", _conv, np.zeros(2, np.complex64), None, SUM, 1.0)
    with pytest.raises(TypeError, match="<c8, which plexus does not support"):  # a device array: its typestr
        coll.all_reduce(g, "w", _conv, FakeDeviceArray(np.zeros(2, np.complex64)), None, SUM, 1.0)
    assert fake_ops.log == []  # nothing was copied before the checks


class _RecordingComm:
    def __init__(self):
        self.calls = []

    def all_reduce(self, *args):
        self.calls.append(args)
        return None


def test_host_calls_go_straight_to_the_core(fake_ops):
    x = np.ones(3, np.float32)
    g = coll.ProcessGroup(_RecordingComm(), [0], "g")
    call = coll.all_reduce(_Group(), "w", _conv, x, None, SUM, 1.0)
    assert call.device is None and coll.run(g, call, True) is None
    assert g.comm.calls == [(x.ctypes.data, x.ctypes.data, 3, call.code, SUM, 1.0, True)]
    assert fake_ops.log == []


def test_the_device_table_names_collectives_of_the_layer():
    assert set(device.COLLECTIVES) <= set(coll._HOST)
    for direct, fallback in device.COLLECTIVES.values():
        assert direct == device.CUDA_IPC and fallback in (device.PIPELINE, device.STAGED)


# --- real collectives on 2 ranks, through the public API ------------------------------------------


def _device_collectives(rank, world):
    libraries._OPS["cupy"] = FakeOps()

    x = dev(np.arange(5) + rank)
    plexus.all_reduce(x)
    np.testing.assert_array_equal(x.host, 2 * np.arange(5) + 1)
    out = dev(np.zeros(5))
    y = dev(np.full(5, rank + 1.0))
    w = plexus.all_reduce(y, op=plexus.ReduceOp.MAX, out=out, async_op=True)
    w.wait()
    np.testing.assert_array_equal(out.host, np.full(5, 2.0))
    np.testing.assert_array_equal(y.host, np.full(5, rank + 1.0))

    outs = [dev(np.zeros(3, np.int64)) for _ in range(world)]
    plexus.all_gather(outs, dev(np.full(3, rank, np.int64)))
    assert [int(o.host[0]) for o in outs] == list(range(world))

    whole = np.zeros(4 * world, np.int32)
    mine = FakeDeviceArray(whole[4 * rank:4 * rank + 4])
    mine.host[:] = rank + 7
    plexus.all_gather_into_tensor(FakeDeviceArray(whole), mine)  # in place
    np.testing.assert_array_equal(whole, np.repeat(np.arange(world) + 7, 4))

    rs_out = dev(np.zeros(2, np.float64))
    plexus.reduce_scatter_tensor(rs_out, dev(np.arange(2 * world, dtype=np.float64)))
    np.testing.assert_array_equal(rs_out.host, world * np.arange(2 * rank, 2 * rank + 2))

    b = dev(np.full(4, rank, np.uint8))
    plexus.broadcast(b, src=1)
    np.testing.assert_array_equal(b.host, [1] * 4)

    b = dev(np.full(4, rank + 10, np.uint8))
    w = plexus.broadcast(b, src=1, async_op=True)
    np.testing.assert_array_equal(b.host, [rank + 10] * 4)  # copied back at wait(), not before
    w.wait()
    np.testing.assert_array_equal(b.host, [11] * 4)
    assert w.result()[0] is b

    if rank == 0:
        plexus.send(dev(np.arange(6, dtype=np.int64)), dst=1)
        got = dev(np.zeros(6, np.int64))
        w = plexus.irecv(got, src=1)
        w.wait()
        np.testing.assert_array_equal(got.host, -np.arange(6))
    else:
        got = dev(np.zeros(6, np.int64))
        plexus.recv(got, src=0)
        np.testing.assert_array_equal(got.host, np.arange(6))
        plexus.send(dev(-np.arange(6, dtype=np.int64)), dst=0)
    return True


def test_device_collectives_on_two_ranks():
    assert run_ranks(2, _device_collectives, timeout=120) == [True, True]


# --- torch, as far as a CPU build of it goes --------------------------------------------------------


def test_torch_cpu_tensors_are_host_arrays(fake_ops):
    torch = pytest.importorskip("torch")
    t = torch.ones(3)
    assert arrays.device_kind(t) is None
    assert coll.all_reduce(_Group(), "w", _conv, t, None, SUM, 1.0).device is None
    with pytest.raises(TypeError, match="both be device arrays or both host arrays"):
        coll.all_reduce(_Group(), "w", _conv, dev([1.0]), t, SUM, 1.0)
    b = as_buffer(torch.zeros(2, 4, dtype=torch.bfloat16), "x", writable=True)
    assert (b.dtype, b.count, b.itemsize, b.device) == ("bfloat16", 8, 2, None)
    assert fake_ops.log == []


def test_torch_copies_address_bytes():
    torch = pytest.importorskip("torch")
    ops = libraries.TorchOps()
    z = torch.zeros((), dtype=torch.int64)
    assert ops._bytes(z, z.data_ptr(), 8).shape == (8,)
