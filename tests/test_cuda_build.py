"""The CUDA part of the build, checked without a GPU: nvcc at build time means the kernels are in
the module (sm_80 and sm_90 code plus sm_90 PTX); without a driver the CUDA functions say so
with clear errors, never a crash; without CUDA they exist and say "built without CUDA"."""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import sys

import pytest

import plexus
from plexus import _C

INFO = _C._cuda_build_info()
WITH_CUDA = bool(_C.built_with_cuda)
needs_cuda_build = pytest.mark.skipif(not WITH_CUDA, reason="this plexus was built without CUDA")
no_driver = pytest.mark.skipif(_C.cuda_runtime_available(), reason="a CUDA device is present (tests/gpu covers it)")


def _nvcc_here() -> str:
    return shutil.which("nvcc") or next(
        (p for p in ("/usr/local/cuda/bin/nvcc", "/opt/cuda/bin/nvcc") if os.path.exists(p)), "")


def test_build_info_agrees_with_built_with_cuda():
    assert INFO["with_cuda"] == WITH_CUDA
    if WITH_CUDA:
        assert INFO["nvcc"] and INFO["cudart_version"] >= 11000, INFO
    if INFO["mode"] == "OFF":
        assert not WITH_CUDA


@pytest.mark.skipif(INFO["mode"] == "OFF", reason="built with PLEXUS_CUDA=OFF")
def test_nvcc_present_means_cuda_built():
    nvcc = _nvcc_here()
    if nvcc:
        assert WITH_CUDA, f"nvcc is at {nvcc} but plexus was built without CUDA ({INFO}); see the CMake log"
    else:
        assert not WITH_CUDA, f"no nvcc here, yet plexus was built with CUDA ({INFO}): built elsewhere?"


def _fatbin_entries(path: str):
    """(kind, sm) of each image in the module's CUDA fat binary: kind 1 = PTX, 2 = cubin."""
    data = open(path, "rb").read()
    i = data.find(struct.pack("<I", 0xBA55ED50))
    assert i >= 0, "no CUDA fat binary in the module"
    _, header, size = struct.unpack_from("<HHQ", data, i + 4)
    off, end, entries = i + header, i + header + size, []
    while off < end:
        kind, _, eh, payload = struct.unpack_from("<HHIQ", data, off)
        entries.append((kind, struct.unpack_from("<I", data, off + 28)[0]))
        off += eh + payload
    return entries, data


@needs_cuda_build
def test_module_holds_the_kernels_for_each_architecture():
    entries, data = _fatbin_entries(_C.__file__)
    archs = INFO["architectures"].split(",")
    want = {(2, int(a.split("-")[0])) for a in archs if a.endswith("-real")}
    want |= {(1, int(a.split("-")[0])) for a in archs if a.endswith("-virtual")}
    if archs == ["80-real", "90-real", "90-virtual"]:
        assert want == {(2, 80), (2, 90), (1, 90)}
    assert want <= set(entries), f"fat binary has {entries}, want {sorted(want)}"
    # Every (storage type, op) kernel, by its mangled name, of the reduction and of the device
    # collectives: float types and integers take SUM/PRODUCT/MIN/MAX; bitwise ops (and bool)
    # run on byte kernels.
    types = [rb"N\w*?4HalfE", rb"N\w*?4BF16E", b"f", b"d", b"a", b"h", b"i", b"l"]
    ops = [b"5OpSum", b"6OpProd", b"5OpMin", b"5OpMax"]
    want_kernels = [(t, o) for t in types for o in ops] + [(b"h", o) for o in (b"6OpBand", b"5OpBor", b"6OpBxor")]
    missing = [f"{kernel}<{t.decode()}, {o.decode()}>" for kernel in ("reduce_kernel", "collective_kernel")
               for t, o in want_kernels
               if not re.search(kernel.encode() + b"I" + t + rb"N\w*?" + o + b"EEEv", data)]
    assert not missing, f"kernels missing from the module: {missing}"


@needs_cuda_build
def test_cudart_is_linked_statically():
    if not shutil.which("ldd"):
        pytest.skip("no ldd")
    out = subprocess.run(["ldd", _C.__file__], capture_output=True, text=True).stdout
    assert "libcudart" not in out, out


@needs_cuda_build
@no_driver
def test_without_a_driver_cuda_says_so():
    assert _C.cuda_runtime_available() is False
    status = _C._cuda_runtime_status()
    assert status != "ok" and "built without CUDA" not in status
    with pytest.raises(RuntimeError, match="CUDA runtime not available") as e:
        _C._cuda_reduce(0, 2, 4096, [8192, 12288], 10)
    assert isinstance(e.value, plexus.PlexusError) and "built without CUDA" not in str(e.value)


@needs_cuda_build
@no_driver
def test_without_a_driver_cuda_ipc_says_so():
    for call in (lambda: _C._cuda_ipc_export(0, 4096), lambda: _C._cuda_event_create(0, True),
                 lambda: _C._cuda_ipc_open(0, bytes(64)), lambda: _C._cuda_device_synchronize(0)):
        with pytest.raises(plexus.PlexusError, match=r"cuda_ipc: cuda\w+: cudaError"):
            call()
    # The collectives then stage device arrays through host memory, every rank alike.
    from plexus.device import ipc

    assert "CUDA runtime" in ipc.local_problem()


@pytest.mark.skipif(WITH_CUDA, reason="this plexus was built with CUDA")
def test_without_cuda_the_functions_exist_and_say_so():
    assert _C.cuda_runtime_available() is False
    assert "built without CUDA" in _C._cuda_runtime_status()
    with pytest.raises(RuntimeError, match="built without CUDA"):
        _C._cuda_reduce(0, 2, 4096, [8192], 10)
    for name in ("_cuda_ipc_export", "_cuda_ipc_open", "_cuda_event_create", "_cuda_memcpy", "_cuda_reduce_to"):
        with pytest.raises(RuntimeError, match="built without CUDA"):
            getattr(_C, name)(0, 0, [0], [0], 0, 1.0, 0, 0) if name == "_cuda_reduce_to" else getattr(_C, name)(0, 0)
    from plexus.device import ipc

    assert ipc.local_problem() == "plexus was built without CUDA"


@needs_cuda_build
def test_bad_arguments_fail_before_touching_the_gpu():
    op = {n.upper(): i for i, n in enumerate(_C.OPS)}
    dt = {n: i for i, n in enumerate(_C.DTYPES)}
    with pytest.raises(ValueError, match="unknown reduction op"):
        _C._cuda_reduce(99, dt["float32"], 4096, [4096], 1)
    with pytest.raises(TypeError, match="unsupported dtype"):
        _C._cuda_reduce(op["SUM"], 99, 4096, [4096], 1)
    with pytest.raises(TypeError, match="band needs an integer or bool dtype"):
        _C._cuda_reduce(op["BAND"], dt["float32"], 4096, [4096], 1)
    with pytest.raises(TypeError, match="avg needs a floating-point dtype"):
        _C._cuda_reduce(op["AVG"], dt["int32"], 4096, [4096], 1)
    with pytest.raises(ValueError, match="at least one source"):
        _C._cuda_reduce(op["SUM"], dt["float32"], 4096, [], 1)
    with pytest.raises(ValueError, match="not aligned to float32"):
        _C._cuda_reduce(op["SUM"], dt["float32"], 4097, [4096], 1)
    with pytest.raises(ValueError, match="source 1 is null"):
        _C._cuda_reduce(op["SUM"], dt["float64"], 4096, [4096, 0], 1)
    _C._cuda_reduce(op["SUM"], dt["float32"], 0, [0], 0)  # nothing to do: no GPU needed
    with pytest.raises(ValueError, match="1 to 8 destinations"):
        _C._cuda_reduce_to(op["SUM"], dt["float32"], [4096] * 9, [4096], 1, 1.0, 0, -1)
    with pytest.raises(ValueError, match="1 to 8 destinations"):
        _C._cuda_reduce_to(op["SUM"], dt["float32"], [], [4096], 1, 1.0, 0, -1)
    with pytest.raises(ValueError, match="destination 1 is null"):
        _C._cuda_reduce_to(op["SUM"], dt["float32"], [4096, 0], [4096], 1, 1.0, 0, -1)


def test_asking_about_cuda_never_crashes_the_process():
    # In a fresh process (a crash there would not take pytest down): import, ask, try a kernel.
    code = ("import plexus._C as C\n"
            "print(C.cuda_runtime_available(), C._cuda_runtime_status())\n"
            "try:\n    C._cuda_reduce(0, 2, 4096, [8192], 4)\nexcept RuntimeError as e:\n    print('raised', e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    if not _C.cuda_runtime_available():
        assert r.stdout.startswith("False") and "raised" in r.stdout, r.stdout
