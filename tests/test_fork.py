"""A fork()ed child and its parent's groups: fork copies no threads, and the child shares the
parent's sockets and shared memory. So a child that calls a collective, a point-to-point call or
new_group on a group made before the fork gets a clear RuntimeError at once (not a hang, and
not a call that quietly takes the parent's place in the group); a child that exits normally
exits cleanly without closing the parent's connections; and the parent's group goes on.
(The UCX transport's own case is in test_ucx.py.)"""

import gc
import os
import socket
import time

import numpy as np
import pytest

from launch import run_ranks

PRIME = 1009


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _in_child(what: str) -> str:
    """What `what` did in a forked child: "seconds|exception type|is a RuntimeError|message"."""
    import plexus

    x = np.ones(PRIME, dtype=np.float32)
    calls = {
        "all_reduce": lambda: plexus.all_reduce(x),
        "async all_reduce": lambda: plexus.all_reduce(x, async_op=True).wait(),
        "isend": lambda: plexus.isend(x, dst=1).wait(),
        "new_group": lambda: plexus.new_group([0, 1]),
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
    report = None
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
            os.write(w, _in_child(what).encode())
            os._exit(0)
        os.close(w)
        deadline = time.monotonic() + 30
        done, status = 0, 0
        while not done and time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            time.sleep(0.05)
        if not done:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            report = "hung: killed after 30 s"
        else:
            report = f"status {status}|" + os.read(r, 65536).decode()
        os.close(r)
    plexus.barrier()
    x = np.full(PRIME, rank + 1, dtype=np.float32)
    plexus.all_reduce(x)  # the parents' group still works
    assert np.all(x == world * (world + 1) // 2), x[:4]
    return report


@pytest.mark.parametrize("transport", ["tcp", "shm"])
@pytest.mark.parametrize("what", ["all_reduce", "async all_reduce", "isend", "new_group"])
def test_a_forked_child_gets_a_clear_error(transport, what):
    env = {"PLEXUS_TRANSPORTS": transport, "PLEXUS_TIMEOUT": "20"}
    # tcp:// so that the store is a TCP store, whose socket the child shares too.
    report = run_ranks(2, _fork_and_report, what, env=env, timeout=120,
                       init_method=f"tcp://127.0.0.1:{_free_port()}")[0]
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
def test_a_forked_child_exits_normally_without_harm(transport):
    env = {"PLEXUS_TRANSPORTS": transport, "PLEXUS_TIMEOUT": "20"}
    report = run_ranks(2, _fork_and_report, "exit", env=env, timeout=120,
                       init_method=f"tcp://127.0.0.1:{_free_port()}")[0]
    assert report == "status 0|ok", f"the child's teardown: {report} (a signal in the low byte is a crash)"
