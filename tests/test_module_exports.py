"""The built module exports PyInit__C and nothing else, so whatever is linked into it statically
(a libstdc++ from a toolchain that links it so) stays private to it. .ci/run also builds one with
LDFLAGS=-static-libstdc++ and runs 2 ranks over shared memory with it (.ci/static_libstdcxx.py)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from plexus import _C


@pytest.mark.skipif(shutil.which("nm") is None, reason="needs nm (binutils) to read the module's symbols")
def test_only_the_entry_point_is_exported():
    out = subprocess.run(["nm", "-D", "--defined-only", _C.__file__], capture_output=True, text=True, check=True)
    exported = [line.split()[-1] for line in out.stdout.splitlines()
                if len(line.split()) >= 3 and line.split()[-2].isupper()]  # lower case: local symbols
    assert exported == ["PyInit__C"], f"{_C.__file__} exports {len(exported)} symbols: {exported[:20]}"
