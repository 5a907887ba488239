"""The device-array staging of plexus._device, without a GPU: host memory poses as device memory
(objects exposing only __cuda_array_interface__) and FakeOps stands in for cupy's copies and
streams. Covers detection, dtype/layout checks, aliasing, the pinned pool, route() and, on 2
real ranks, collectives of distributed.py wrapped the way the GPU path will use them."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

import plexus
from plexus import _device, _device_ops
from plexus._pinned import PinnedPool
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

    def mirror(self, block, off, nbytes, x, dtype, shape):
        return _device_ops.numpy_mirror(block, off, nbytes, x.host.dtype, shape)


@pytest.fixture
def fake_ops(monkeypatch):
    ops = FakeOps()
    monkeypatch.setitem(_device_ops._OPS, "cupy", ops)
    monkeypatch.setattr(_device, "POOL", PinnedPool(1 << 30))
    return ops


def dev(values, dtype=np.float32):
    return FakeDeviceArray(np.array(values, dtype=dtype))


# --- detection and description ----------------------------------------------------------------


class Raises:
    @property
    def __cuda_array_interface__(self):
        raise RuntimeError("not on a GPU")


def test_device_kind():
    assert _device.device_kind(np.zeros(3)) is None
    assert _device.device_kind(None) is None
    assert _device.device_kind([1, 2]) is None
    assert _device.device_kind(dev([1.0])) == "cupy"
    assert _device.device_kind(Raises()) is None
    assert _device.has_device([np.zeros(1), [None, dev([1.0])]])
    assert not _device.has_device([np.zeros(1), [None, 3], "x"])


@pytest.mark.parametrize("np_dtype,name", [
    ("float16", "float16"), ("float32", "float32"), ("float64", "float64"), ("int8", "int8"),
    ("uint8", "uint8"), ("int32", "int32"), ("int64", "int64"), ("bool", "bool")])
def test_dtype_mapping(np_dtype, name):
    a = _device.describe(FakeDeviceArray(np.zeros((2, 3), np_dtype)), "x")
    assert (a.dtype, a.shape, a.nbytes, a.kind) == (name, (2, 3), 6 * np.dtype(np_dtype).itemsize, "cupy")


@pytest.mark.parametrize("np_dtype", [">f4", "complex64", "uint16", "uint32"])
def test_unsupported_dtypes(np_dtype):
    with pytest.raises(TypeError, match="x has dtype .* plexus does not support"):
        _device.describe(FakeDeviceArray(np.zeros(4, np_dtype)), "x")


def test_layout_checks():
    base = np.zeros((4, 6), np.float32)
    with pytest.raises(ValueError, match="C-contiguous"):
        _device.describe(FakeDeviceArray(base[:, ::2]), "x")
    with pytest.raises(ValueError, match="C-contiguous"):
        _device.describe(FakeDeviceArray(base.T), "x")
    with pytest.raises(ValueError, match="masked"):
        _device.describe(FakeDeviceArray(base, mask=object()), "x")
    # Size-1 dimensions may carry any stride; empty arrays are contiguous.
    assert _device.describe(FakeDeviceArray(base[1:2, :]), "x").nbytes == 24
    assert _device.describe(FakeDeviceArray(base[:, :0]), "x").nbytes == 0
    assert _device._c_contiguous((1, 3), (999, 4), 4)
    assert _device.describe(FakeDeviceArray(base, readonly=True), "x").readonly


def test_plan_regions():
    regions, of = _device.plan_regions([(100, 10), (0, 50), (105, 20), (200, 0), (50, 10), (40, 5)])
    # (0,50) and (40,5) overlap; (50,10) only touches (0,50): separate; (100,10)+(105,20) merge.
    assert regions == [(0, 50), (50, 60), (100, 125)]
    assert of == [2, 0, 2, -1, 1, 0]
    assert _device.plan_regions([(8, 4), (8, 4)]) == ([(8, 12)], [0, 0])


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


# --- staged() ------------------------------------------------------------------------------------


def test_in_place_round_trip(fake_ops):
    x = dev([1, 2, 3])
    (hx,), (hout,), finish = _device.staged([x], [x])
    assert hout is hx and isinstance(hx, np.ndarray) and hx.dtype == np.float32
    np.testing.assert_array_equal(hx, [1, 2, 3])
    assert hx.ctypes.data != x.host.ctypes.data  # a host copy, not the "device" memory
    kinds = [e[0] for e in fake_ops.log]
    assert kinds.index("sync") > kinds.index("d2h")  # the copies are waited for
    hx *= 10
    np.testing.assert_array_equal(x.host, [1, 2, 3])
    finish()
    np.testing.assert_array_equal(x.host, [10, 20, 30])
    assert fake_ops.log[-1][0] == "record"
    finish()  # once only
    assert sum(e[0] == "h2d" for e in fake_ops.log) == 1


def test_inputs_are_not_copied_back(fake_ops):
    a, out = dev([1, 2]), dev([0, 0])
    (ha, ho), (ho2,), finish = _device.staged([a, out], [out], overwrite_outputs=False)
    assert ho2 is ho
    ha[:] = 7
    ho[:] = ha + 1
    finish()
    np.testing.assert_array_equal(a.host, [1, 2])
    np.testing.assert_array_equal(out.host, [8, 8])


def test_overwrite_outputs_skips_their_first_copy(fake_ops):
    a, out = dev([1, 2]), dev([5, 5])
    _, (ho,), finish = _device.staged([a], [out], overwrite_outputs=True)
    assert [e[1] for e in fake_ops.log if e[0] == "d2h"] == [a.host.ctypes.data]
    ho[:] = 3
    finish()
    np.testing.assert_array_equal(out.host, [3, 3])


def test_aliasing_is_kept_on_the_host(fake_ops):
    # all_gather_into_tensor in place: the input is this rank's slice of the output.
    whole = np.arange(8, dtype=np.int32)
    out, part = FakeDeviceArray(whole), FakeDeviceArray(whole[4:6])
    (hpart,), (hout,), finish = _device.staged([part], [out])
    assert np.shares_memory(hpart, hout)
    assert hpart.ctypes.data - hout.ctypes.data == 16
    hout[:] = -1
    assert (hpart == -1).all()
    finish()
    np.testing.assert_array_equal(whole, [-1] * 8)
    assert sum(e[0] == "alloc" for e in fake_ops.log) == 1  # one host block for the region


def test_structures_none_and_empty(fake_ops):
    lst = [dev([1.0]), dev([2.0])]
    empty = FakeDeviceArray(np.zeros(0, np.float64))
    (hl, hn, he), (hl2,), finish = _device.staged([lst, None, empty], [lst])
    assert isinstance(hl, list) and [float(v[0]) for v in hl] == [1.0, 2.0] and hl2[0] is hl[0]
    assert hn is None and he.shape == (0,) and he.dtype == np.float64
    finish()


def test_failure_leaves_device_alone_and_drops_the_block(fake_ops):
    x = dev([1, 2])
    (hx,), _, finish = _device.staged([x], [x])
    hx[:] = 0
    finish(ok=False)
    np.testing.assert_array_equal(x.host, [1, 2])
    assert _device.POOL.cached_bytes() == 0


def test_blocks_are_recycled_after_the_copy_back(fake_ops):
    x = dev(np.ones(100))
    fake_ops.events_done = False
    _, _, finish = _device.staged([x], [x])
    finish()
    _, _, finish2 = _device.staged([x], [x])  # the first block's copy is still pending
    assert sum(e[0] == "alloc" for e in fake_ops.log) == 2
    fake_ops.events_done = True
    finish2()
    _device.staged([x], [x])
    assert sum(e[0] == "alloc" for e in fake_ops.log) == 2


def test_argument_errors(fake_ops):
    with pytest.raises(TypeError, match="is a device array but .* is not"):
        _device.staged([dev([1.0]), np.zeros(1, np.float32)], [])
    with pytest.raises(ValueError, match="read-only but receives"):
        _device.staged([], [FakeDeviceArray(np.zeros(2), readonly=True)], what="all_reduce on rank 0")
    a, b = dev([1.0]), dev([1.0])
    b.device_id = 1
    with pytest.raises(ValueError, match="several GPUs"):
        _device.staged([a, b], [])
    assert fake_ops.log == []  # nothing was copied before the checks


def test_host_only_calls_pass_through():
    x = np.zeros(3)
    (hx,), (ho,), finish = _device.staged([x], [x])
    assert hx is x and ho is x
    finish()


# --- route() -------------------------------------------------------------------------------------


def _host_only(*arrays):
    """What distributed.py's as_buffer does first: refuse anything but host arrays."""
    for a in arrays:
        if a is not None and not isinstance(a, np.ndarray) and _device.device_kind(a) is not None:
            raise TypeError("must be a numpy array or a torch tensor")


def _collective(tensor, op="sum", group=None, async_op=False, *, out=None):
    """Stands in for a distributed.py collective: doubles `tensor` into `out` (or in place)."""
    _host_only(tensor, out)
    dst = tensor if out is None else out
    dst[...] = tensor * 2
    if async_op:
        return plexus.Work(_DoneCore(), [dst])
    return None


class _DoneCore:
    what = "fake"

    def wait(self, timeout):
        return True

    def is_completed(self):
        return True

    def failed(self):
        return False


def test_route_passes_host_calls_straight_through(fake_ops):
    f = _device.route(("tensor",), ("out|tensor",))(_collective)
    assert f.__plexus_device_routed__ and f.__name__ == "_collective"
    x = np.ones(2, np.float32)
    f(x)
    np.testing.assert_array_equal(x, [2, 2])
    assert fake_ops.log == []


def test_route_stages_device_calls(fake_ops):
    f = _device.route(("tensor",), ("out|tensor",))(_collective)
    x, out = dev([1, 2]), dev([0, 0])
    assert f(x, out=out) is None
    np.testing.assert_array_equal(out.host, [2, 4])
    np.testing.assert_array_equal(x.host, [1, 2])  # an input only: not copied back
    # out is only written: not copied to the host first; x is not copied back
    assert [e[1] for e in fake_ops.log if e[0] == "d2h"] == [x.host.ctypes.data]
    assert [e[1] for e in fake_ops.log if e[0] == "h2d"] == [out.host.ctypes.data]
    f(x)  # without out, tensor is the output
    np.testing.assert_array_equal(x.host, [2, 4])
    with pytest.raises(TypeError, match="_collective: out is not a device array|is a device array but"):
        f(x, out=np.zeros(2, np.float32))


def test_route_async_copies_back_at_wait(fake_ops):
    f = _device.route(("tensor",), ("tensor",))(_collective)
    x = dev([1, 3])
    w = f(x, async_op=True)
    np.testing.assert_array_equal(x.host, [1, 3])  # not before wait()
    assert w.is_completed()
    w.wait()
    np.testing.assert_array_equal(x.host, [2, 6])
    assert w.result()[0] is x  # the device array, not its host copy


def test_route_failure_leaves_outputs(fake_ops):
    def boom(tensor, async_op=False):
        _host_only(tensor)
        tensor[...] = 0
        raise RuntimeError("peer died")

    f = _device.route(("tensor",), ("tensor",))(boom)
    x = dev([5])
    with pytest.raises(RuntimeError, match="peer died") as e:
        f(x)
    assert e.value.__context__ is None  # not shown as raised while handling the first TypeError
    np.testing.assert_array_equal(x.host, [5])


def test_route_reraises_type_errors_of_host_calls(fake_ops):
    def picky(tensor, async_op=False):
        _host_only(tensor)
        raise TypeError("tensor has dtype complex64")

    f = _device.route(("tensor",), ("tensor",))(picky)
    with pytest.raises(TypeError, match="complex64"):
        f(np.zeros(2, np.complex64))
    assert fake_ops.log == []
    with pytest.raises(TypeError, match="complex64"):  # device arrays: the host retry says the same
        f(dev([1.0]))


# --- real collectives on 2 ranks, routed as distributed.py will route them -----------------------


def _routed_collectives(rank, world, public):
    _device_ops._OPS["cupy"] = FakeOps()
    from plexus import distributed as d

    # The public API once wired, or exactly as it is to be wired: @_device.routed on each collective.
    names = ("all_reduce", "all_gather", "all_gather_into_tensor", "reduce_scatter_tensor", "broadcast", "send",
             "recv", "irecv")
    all_reduce, all_gather, all_gather_into_tensor, reduce_scatter_tensor, broadcast, send, recv, irecv = (
        getattr(plexus, n) if public else _device.routed(getattr(d, n)) for n in names)

    x = dev(np.arange(5) + rank)
    all_reduce(x)
    np.testing.assert_array_equal(x.host, 2 * np.arange(5) + 1)
    out = dev(np.zeros(5))
    y = dev(np.full(5, rank + 1.0))
    w = all_reduce(y, op=plexus.ReduceOp.MAX, out=out, async_op=True)
    w.wait()
    np.testing.assert_array_equal(out.host, np.full(5, 2.0))
    np.testing.assert_array_equal(y.host, np.full(5, rank + 1.0))

    outs = [dev(np.zeros(3, np.int64)) for _ in range(world)]
    all_gather(outs, dev(np.full(3, rank, np.int64)))
    assert [int(o.host[0]) for o in outs] == list(range(world))

    whole = np.zeros(4 * world, np.int32)
    mine = FakeDeviceArray(whole[4 * rank:4 * rank + 4])
    mine.host[:] = rank + 7
    all_gather_into_tensor(FakeDeviceArray(whole), mine)  # in place
    np.testing.assert_array_equal(whole, np.repeat(np.arange(world) + 7, 4))

    rs_out = dev(np.zeros(2, np.float64))
    reduce_scatter_tensor(rs_out, dev(np.arange(2 * world, dtype=np.float64)))
    np.testing.assert_array_equal(rs_out.host, world * np.arange(2 * rank, 2 * rank + 2))

    b = dev(np.full(4, rank, np.uint8))
    broadcast(b, src=1)
    np.testing.assert_array_equal(b.host, [1] * 4)

    if rank == 0:
        send(dev(np.arange(6, dtype=np.int64)), dst=1)
        got = dev(np.zeros(6, np.int64))
        w = irecv(got, src=1)
        w.wait()
        np.testing.assert_array_equal(got.host, -np.arange(6))
    else:
        got = dev(np.zeros(6, np.int64))
        recv(got, src=0)
        np.testing.assert_array_equal(got.host, np.arange(6))
        send(dev(-np.arange(6, dtype=np.int64)), dst=0)
    return True


def test_routes_fit_the_public_collectives():
    from plexus import distributed as d

    for name in _device.ROUTES:
        assert _device.routed(getattr(d, name)).__plexus_device_routed__, name
    with pytest.raises(TypeError, match="no parameters"):
        _device.route(("tensr",), ())(d.all_reduce)


WIRED = getattr(plexus.all_reduce, "__plexus_device_routed__", False)


@pytest.mark.parametrize("public", [False, pytest.param(True, marks=pytest.mark.skipif(
    not WIRED, reason="distributed.py does not route device arrays through plexus._device yet"))],
    ids=["wrapped-here", "public-api"])
def test_routed_collectives_on_two_ranks(public):
    assert run_ranks(2, _routed_collectives, public, timeout=120) == [True, True]


# --- torch, as far as a CPU build of it goes --------------------------------------------------------


def test_torch_cpu_tensors_are_host_arrays(fake_ops):
    torch = pytest.importorskip("torch")
    t = torch.ones(3)
    assert _device.device_kind(t) is None and not _device.has_device([[t]])
    (ht,), _, finish = _device.staged([t], [t])
    assert ht is t
    with pytest.raises(TypeError, match="is a device array but output 0 is not"):
        _device.staged([dev([1.0])], [t])
    f = _device.route(("tensor",), ("tensor",))(_collective)
    f(t)
    assert t.tolist() == [2.0, 2.0, 2.0] and fake_ops.log == []


def test_torch_host_mirrors_view_the_staging_block():
    torch = pytest.importorskip("torch")
    from plexus._pinned import Block

    ops = _device_ops.TorchOps()
    host, keep = ops.alloc_host(64)  # no CUDA here: pinning fails, pageable memory is used
    block = Block("torch", 64, host, keep)
    like = torch.zeros(2, 4, dtype=torch.bfloat16)
    m = ops.mirror(block, 8, 16, like, "bfloat16", (2, 4))
    assert m.dtype == torch.bfloat16 and tuple(m.shape) == (2, 4) and m.device.type == "cpu"
    assert m.data_ptr() == host.ctypes.data + 8
    m.fill_(1.0)
    assert host[8:10].view(np.uint16)[0] == 0x3F80  # bfloat16 1.0, seen through the numpy view
    z = torch.zeros((), dtype=torch.int64)
    assert ops._bytes(z, z.data_ptr(), 8).shape == (8,)
