"""A fork()ed child and its parent's groups: fork copies no threads, and the child shares the
parent's sockets and shared memory. So a child that calls a collective, a point-to-point call or
new_group on a group made before the fork, or waits for a call its parent started, gets a clear
RuntimeError at once (not a hang, and not a call that quietly takes the parent's place in the
group); a child that destroys the group leaves the parent's connections alone and its parent
idle; and the parent's group goes on. (The UCX transport's own case is in test_ucx.py.)"""

import gc
import os
import resource
import time

import numpy as np
import pytest

from launch import run_ranks

PRIME = 1009
CHILD_SECONDS = 10  # the parent's wait for its child: under the group's timeout (ENV), so a hung
ENV = {"PLEXUS_TIMEOUT": "30"}  # child is reported as such, not as the other rank's timeout


def _cpu_seconds() -> float:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def _in_child(what: str, pending) -> str:
    """What `what` did in a forked child: "seconds|exception type|is a RuntimeError|message"."""
    import plexus

    x = np.ones(PRIME, dtype=np.float32)
    calls = {
        "all_reduce": lambda: plexus.all_reduce(x),
        "async all_reduce": lambda: plexus.all_reduce(x, async_op=True).wait(),
        "isend": lambda: plexus.isend(x, dst=1).wait(),
        "new_group": lambda: plexus.new_group([0, 1]),
        "wait": lambda: pending.wait(),  # the parent's receive, which rank 1 sends only later
    }
    t0 = time.monotonic()
    try:
        calls[what]()
        kind, is_runtime, msg = "returned", False, "the call returned"
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        kind, is_runtime, msg = type(e).__name__, isinstance(e, RuntimeError), str(e)
    return f"{time.monotonic() - t0:.2f}|{kind}|{is_runtime}|{msg}"


def _fork_and_report(rank, world, what):
    import plexus

    x = np.ones(PRIME, dtype=np.float32)
    plexus.all_reduce(x)  # connected before the fork
    report, got = None, np.zeros(PRIME, dtype=np.float32)
    pending = plexus.irecv(got, src=1) if what == "wait" and rank == 0 else None
    if rank == 0:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            if what == "exit":  # the child's own teardown: destroy, then the destructors
                try:
                    plexus.destroy_process_group()
                    gc.collect()
                    os.write(w, b"ok")
                except BaseException as e:  # noqa: BLE001 - reported to the parent
                    os.write(w, f"{type(e).__name__}: {e}".encode())
                os._exit(0)  # launch.py's handler and queue are the parent's: not through them
            os.write(w, _in_child(what, pending).encode())
            os._exit(0)
        os.close(w)
        deadline = time.monotonic() + CHILD_SECONDS
        done, status = 0, 0
        while not done and time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            time.sleep(0.05)
        if not done:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            report = f"hung: killed after {CHILD_SECONDS} s"
        else:
            report = f"status {status}|" + os.read(r, 65536).decode()
        os.close(r)
        if what == "exit":  # a child's abort must not reach the parent (whose waits would spin)
            c, t = _cpu_seconds(), time.monotonic()
            time.sleep(1.5)
            report += f"|cpu {(_cpu_seconds() - c) / (time.monotonic() - t):.2f}"
    plexus.barrier()
    if what == "wait" and rank == 1:  # only now: the receive was still pending in the child
        plexus.send(np.full(PRIME, 7, dtype=np.float32), dst=0)
    if pending is not None:
        pending.wait()
        assert np.all(got == 7), got[:4]
    x = np.full(PRIME, rank + 1, dtype=np.float32)
    plexus.all_reduce(x)  # the parents' group still works
    assert np.all(x == world * (world + 1) // 2), x[:4]
    return report


@pytest.mark.parametrize("transport", ["tcp", "shm"])
@pytest.mark.parametrize("what", ["all_reduce", "async all_reduce", "isend", "new_group", "wait"])
def test_a_forked_child_gets_a_clear_error(transport, what):
    report = run_ranks(2, _fork_and_report, what, env=dict(ENV, PLEXUS_TRANSPORTS=transport), timeout=120)[0]
    check_child_raised(report, what)


def check_child_raised(report: str, what: str) -> None:
    """The child exited cleanly after `what` raised a RuntimeError at once, saying it is a fork."""
    assert not report.startswith("hung"), report
    status, seconds, kind, is_runtime, msg = report.split("|", 4)
    assert status == "status 0", report
    assert is_runtime == "True", f"the child's {what} gave {kind}: {msg}"
    assert "fork" in msg.lower(), f"the child's error does not say it is a forked process: {kind}: {msg}"
    assert float(seconds) < 5, f"the child waited {seconds} s before raising: {msg}"


@pytest.mark.parametrize("transport", ["tcp", "shm"])
def test_a_forked_child_destroys_its_copy_without_harm(transport):
    report = run_ranks(2, _fork_and_report, "exit", env=dict(ENV, PLEXUS_TRANSPORTS=transport), timeout=120)[0]
    status, done, cpu = report.split("|")
    assert (status, done) == ("status 0", "ok"), f"the child's teardown: {report} (a signal in the low byte is a crash)"
    assert float(cpu.split()[1]) < 0.3, f"the parent is busy after its child's teardown: {cpu} cores"


def _device_fork(rank, world, folder):
    """The native device path (the emulated device of the tests) and its mapped all_reduces, set
    up before the fork: the child's calls raise, the parent's group goes on."""
    import plexus
    from fake_cuda import FakeCuda
    from plexus.device import ipc

    fake = FakeCuda(folder, rank, native=True)
    ipc.set_driver(fake)
    small, large = fake.array(np.ones(5, np.float32)), fake.array(np.ones(PRIME, np.float32))
    plexus.all_reduce(small)  # the device workspaces, mapped before the fork
    plexus.all_reduce(large)  # and a peer's array, mapped for the call (PLEXUS_DEVICE_MAPPED_MIN)
    reports = []
    if rank == 0:
        for x in (small, large):
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(r)
                t0, out = time.monotonic(), "the call returned"
                try:
                    plexus.all_reduce(x)
                except BaseException as e:  # noqa: BLE001 - reported to the parent
                    out = f"{type(e).__name__}|{isinstance(e, RuntimeError)}|{e}"
                os.write(w, f"{time.monotonic() - t0:.2f}|{out}".encode())
                plexus.destroy_process_group()  # the child's teardown leaves the parent's alone
                os._exit(0)
            os.close(w)
            _, status = os.waitpid(pid, 0)
            reports.append(f"status {status}|" + os.read(r, 65536).decode())
            os.close(r)
    plexus.barrier()
    for x in (small, large):
        x.host[...] = rank + 1
        plexus.all_reduce(x)  # the parents' device calls still work
        assert np.all(x.host == world * (world + 1) // 2), x.host[:4]
    return reports


def test_a_forked_child_cannot_use_the_device_path_of_its_parent(tmp_path):
    reports = run_ranks(2, _device_fork, str(tmp_path), env=dict(ENV, PLEXUS_DEVICE_MAPPED_MIN="1K"), timeout=120)[0]
    assert len(reports) == 2
    for report in reports:
        status, seconds, kind, is_runtime, msg = report.split("|", 4)
        assert status == "status 0" and is_runtime == "True", report
        assert "device collectives were set up before a fork" in msg and float(seconds) < 5, report
