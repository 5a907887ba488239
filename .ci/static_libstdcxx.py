"""CI check: a plexus built with a static libstdc++ (LDFLAGS=-static-libstdc++, as some
toolchains' default g++ and manylinux builds link) runs 2 ranks of one host over shared memory,
in processes that also load the shared libstdc++ (torch). Without the module's symbol hiding
the two copies clash: its streams break and shared memory fails (a crash on other toolchains).

    LDFLAGS=-static-libstdc++ pip install . --no-deps --target DIR
    PYTHONPATH=DIR python .ci/static_libstdcxx.py
"""

import multiprocessing as mp
import subprocess
import sys
import tempfile


def rank(r, path, q):
    import torch  # noqa: F401 - the shared libstdc++, loaded first, as in a training job
    import numpy as np

    import plexus

    plexus.init_process_group(init_method=f"file://{path}", rank=r, world_size=2)
    x = np.full(1000, r + 1.0, np.float32)
    plexus.all_reduce(x)
    q.put((r, float(x.min()), float(x.max()), plexus.distributed._state.world.comm.transport_to(1 - r), plexus.__file__))
    plexus.destroy_process_group()


def main() -> int:
    import plexus

    exports = subprocess.run(["nm", "-D", "--defined-only", plexus._C.__file__], capture_output=True, text=True,
                             check=True).stdout.split()
    linked = subprocess.run(["ldd", plexus._C.__file__], capture_output=True, text=True).stdout
    print(f"{plexus._C.__file__}: libstdc++ {'shared' if 'libstdc++' in linked else 'static'}; "
          f"{sum(w == 'T' for w in exports)} exported functions")
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    path = tempfile.mktemp(prefix="plexus-static-")
    procs = [ctx.Process(target=rank, args=(r, path, q)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    results = sorted(q.get(timeout=5) for _ in range(q.qsize())) if not q.empty() else []
    print("exit codes", [p.exitcode for p in procs], "results", results)
    ok = [p.exitcode for p in procs] == [0, 0] and len(results) == 2 and \
        all(lo == hi == 3.0 and transport == "shm" for _, lo, hi, transport, _ in results)
    print("static libstdc++ check:", "ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
