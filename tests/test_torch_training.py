"""Real training through torch.distributed with backend "plexus", checked against gloo.

examples/train_ddp.py (DistributedDataParallel) and examples/train_fsdp.py (FSDP2,
torch.distributed.fsdp.fully_shard, on CPU) run under torchrun exactly as a user would run
them, once per backend; the trained parameters must agree within float tolerance. The scripts
never `import plexus`: the backend comes from the `torch.backends` entry point.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")


def _torchrun(script, nproc, backend, out, env=None, steps=5):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           os.path.join(EXAMPLES, script), "--backend", backend, "--steps", str(steps), "--out", str(out)]
    e = dict(os.environ)
    e.setdefault("OMP_NUM_THREADS", "1")
    e.update(env or {})
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=e, cwd=ROOT)


def _train(script, nproc, backend, tmp_path):
    out = tmp_path / f"{script}-{backend}-{nproc}.pt"
    p = _torchrun(script, nproc, backend, out)
    # The gloo reference itself sometimes aborts at exit on a loaded machine ("terminate called
    # without an active exception", with plexus not even imported: TORCH_DEVICE_BACKEND_AUTOLOAD=0):
    # it gets two more tries. Plexus gets none.
    for _ in range(2):
        if backend != "gloo" or p.returncode == 0:
            break
        p = _torchrun(script, nproc, backend, out)
    assert p.returncode == 0, f"torchrun {script} --backend {backend} failed:\n{p.stdout}\n{p.stderr[-6000:]}"
    losses = [line for line in p.stdout.splitlines() if "loss" in line]
    assert len(losses) == 5, p.stdout
    return torch.load(out), losses


def _compare(script, nproc, tmp_path):
    ours, our_losses = _train(script, nproc, "plexus", tmp_path)
    ref, ref_losses = _train(script, nproc, "gloo", tmp_path)
    assert ours.keys() == ref.keys()
    for k in ref:
        torch.testing.assert_close(ours[k], ref[k], rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{script} {k}: {m}")
    # The trained model moved away from its start (so equal parameters mean something).
    assert our_losses[0] != our_losses[-1]


@pytest.mark.parametrize("nproc", [2, 3])
def test_ddp_matches_gloo(nproc, tmp_path):
    _compare("train_ddp.py", nproc, tmp_path)


@pytest.mark.parametrize("nproc", [2, 3])
def test_fsdp2_matches_gloo(nproc, tmp_path):
    _compare("train_fsdp.py", nproc, tmp_path)


def test_backend_comes_from_the_entry_point(tmp_path):
    # The examples do not import plexus ...
    for script in ("train_ddp.py", "train_fsdp.py"):
        with open(os.path.join(EXAMPLES, script)) as f:
            assert not re.search(r"^\s*(import|from)\s+plexus", f.read(), re.M), script
    # ... and with torch's backend autoload off, "plexus" is unknown to them.
    p = _torchrun("train_ddp.py", 1, "plexus", tmp_path / "x.pt", env={"TORCH_DEVICE_BACKEND_AUTOLOAD": "0"}, steps=1)
    assert p.returncode != 0
    assert "plexus" in p.stderr.lower()
