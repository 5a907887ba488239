#!/usr/bin/env bash
# Builds the C++ core with sanitizers and runs tests against that build; any report fails the run.
#   .ci/sanitize.sh address,undefined PYTHON [pytest args...]   ASan + UBSan, the C++-heavy tests
#   .ci/sanitize.sh thread PYTHON [pytest args...]              TSan, the progress engine, p2p, UCX
# PYTHON: an interpreter with the build and test dependencies where plexus is NOT installed (an
# installed plexus, editable ones included, would be imported instead of the sanitized build).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=$1
py=$2
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
# RelWithDebInfo: reports name files and lines (a Release build of the module is stripped).
"$py" -m pip install . --no-deps -q --target "$dir" -Cbuild-dir="build/sanitize-${mode//,/-}" \
  -Ccmake.build-type=RelWithDebInfo -Ccmake.define.PLEXUS_SANITIZE="$mode" -Ccmake.define.PLEXUS_CUDA=OFF
export PYTHONPATH="$dir"
# The sanitizer's runtime first (Python itself is not built with it), then libstdc++: the
# runtime must intercept __cxa_throw in the copy Python loads for plexus.
stdcxx=$(gcc -print-file-name=libstdc++.so)
# UCX rewrites the code of mmap, munmap and friends to watch memory (its registration cache);
# the sanitizers intercept the same calls, and with both every UCX rank died (SIGSEGV). The
# transport's own code does not depend on those hooks.
export UCX_MEM_EVENTS=no UCX_MEM_MALLOC_HOOKS=no UCX_MEM_MMAP_HOOK_MODE=none
skip=()  # tests a sanitizer cannot judge (see below)
case "$mode" in
  address,undefined)
    export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $stdcxx"
    export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1  # CPython's own allocations are not leaks to fix
    export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
    tests=(tests/test_algorithms.py tests/test_errors.py tests/test_shm.py tests/test_p2p.py tests/test_abort.py
           tests/test_strangers.py tests/test_fuzz.py tests/test_kill_matrix.py tests/test_groups.py
           tests/test_async.py tests/test_flight_recorder.py tests/test_auth.py tests/test_device_native.py
           tests/test_device_mapped.py tests/test_device_messages.py
           tests/test_ucx.py tests/test_ucx_device.py tests/test_ucx_device_collectives.py tests/test_fork.py)
    ;;
  thread)
    export LD_PRELOAD="$(gcc -print-file-name=libtsan.so) $stdcxx"
    export TSAN_OPTIONS="halt_on_error=1:abort_on_error=1:second_deadlock_stack=1"
    # torch's OpenMP pool (libgomp) is not instrumented: TSan cannot see its barriers and reports
    # races inside torch's own kernels. One thread each: the tests with torch tensors still run.
    export OMP_NUM_THREADS=1
    # Its comparison with torch's gloo backend: TSan reports gloo's own work objects (c10d).
    skip=(--deselect tests/test_ucx.py::test_torch_backend_over_ucx_matches_gloo)
    tests=(tests/test_p2p.py tests/test_async.py tests/test_abort.py tests/test_strangers.py tests/test_errors.py
           tests/test_groups.py tests/test_flight_recorder.py tests/test_auth.py tests/test_ucx.py tests/test_fork.py
           tests/test_device_messages.py tests/test_ucx_device.py tests/test_ucx_device_collectives.py)
    ;;
  *)
    echo "unknown sanitizer mode: $mode" >&2
    exit 2
    ;;
esac
"$py" -m pytest -q -p no:cacheprovider "${skip[@]}" "${@:3}" "${tests[@]}"
