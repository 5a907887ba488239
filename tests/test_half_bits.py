"""The float16 -> float conversion the CUDA kernels use (csrc/reduce/half_bits.h: integer
operations and one multiply instead of the GPU's conversion unit), compiled for the host and
checked on all 65536 inputs: exact IEEE values (numpy) for every number, and the CPU kernels'
rule for NaN (sign and payload kept, made quiet)."""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROGRAM = r"""
#include <cstdio>
#include "reduce/half_bits.h"
int main() {
  for (uint32_t h = 0; h < 65536; ++h) {
    uint32_t bits = plexus::bits_of_float(plexus::half_bits_to_float(h));
    std::fwrite(&bits, 4, 1, stdout);
  }
  return 0;
}
"""


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ to build the host check")
def test_every_float16_converts_exactly(tmp_path):
    src, exe = tmp_path / "half_bits.cc", tmp_path / "half_bits"
    src.write_text(PROGRAM)
    subprocess.run(["g++", "-std=c++17", "-O2", "-I", os.path.join(ROOT, "csrc"), str(src), "-o", str(exe)],
                   check=True, capture_output=True)
    got = np.frombuffer(subprocess.run([str(exe)], check=True, capture_output=True).stdout, np.uint32)
    halves = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    want = halves.view(np.float16).astype(np.float32).view(np.uint32).copy()
    nan = (halves & 0x7C00 == 0x7C00) & (halves & 0x3FF != 0)
    h = halves[nan].astype(np.uint32)
    want[nan] = ((h & 0x8000) << 16) | 0x7FC00000 | ((h & 0x3FF) << 13)  # the CPU kernels' NaN
    bad = np.flatnonzero(got != want)
    assert bad.size == 0, [(hex(int(halves[i])), hex(int(got[i])), hex(int(want[i]))) for i in bad[:10]]
    assert nan.sum() == 2 * 1023 and (got.view(np.float32)[halves == 0x3C00] == 1.0).all()
