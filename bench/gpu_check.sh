#!/usr/bin/env bash
# The one-command GPU check. On a machine with a GPU, nvcc, cupy and torch (and
# pytest, ml_dtypes, scikit-build-core, pybind11, cmake) already installed, without any package
# registry:
#   1. builds plexus in place (pip install --no-build-isolation --no-index -e .), with CUDA;
#   2. benchmarks the CUDA reduction kernel against a device-to-device copy (bench/gpu_kernels.py);
#   3. starts the MPS daemon (several ranks share the GPU: without it their kernels are
#      time-sliced), when nvidia-cuda-mps-control is there and this is root, and stops it at the end;
#   4. runs plexus-bench --device cuda on 2 and 4 ranks sharing the GPU (medians of GPU_CHECK_ROUNDS=3
#      interleaved rounds, with their spread), beside NCCL (through
#      torch; NCCL_MULTI_RANK_GPU_ENABLE=1) and cupy's a + b, then the 2-rank all-reduce sweep
#      staged through host memory (PLEXUS_CUDA_IPC=0), to show what IPC saves, with registered
#      buffers (PLEXUS_BENCH_REGISTER=1), with large all_reduces mapped per call from 4 MiB and
#      never (PLEXUS_DEVICE_MAPPED_MIN), all_to_all on 2 and 4 ranks, send/recv on 2 ranks natively
#      and staged (bench/device_messages.py), and over UCX as between hosts, send/recv and all_reduce
#      straight through UCX and staged (when UCX loads and moves CUDA memory: a libucx_cu*.whl in PLEXUS_WHEELS is installed
#      if no UCX is), with grids of 32, 64 and 128
#      blocks (PLEXUS_DEVICE_BLOCKS),
#      and on 4 ranks with one-shot and two-shot forced (PLEXUS_DEVICE_ALGO) around their threshold;
#   5. runs the native device path's GPU tests first (tests/gpu/test_gpu_native.py: programs,
#      chunks, CUDA graph capture, deadline, mismatch; test_gpu_messages.py: send/recv), and the
#      host CPU time of one call;
#   6. runs tests/gpu (every collective on cupy and torch CUDA arrays, the torch backend on CUDA
#      tensors, DDP) + the CPU-side CUDA build, staging, IPC-logic and device-bench tests
#      (GPU_CHECK_TESTS replaces that list).
# GPU_CHECK_SKIP="kernels bench-all staged registered mapped a2a messages grid threshold" leaves those steps out
# (a short device lease).
# Benchmarks run before the tests so the figures exist even if the tests run long. Everything
# ends within GPU_CHECK_SECONDS (default 440: with kill grace, under 8 minutes). Results: $OUT if set, else
# bench/results/gpu-check-<time>/ (gpu_check.log, summary.txt, *.json, tests_gpu.xml; with $OUT
# set, all but the log and the summary are packed into results.tar.gz).
# Exit status: 0 all passed, 1 a step failed, 2 no usable GPU here (nothing else is run).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
RESULTS=${OUT:-bench/results/gpu-check-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$RESULTS"
exec > >(tee -a "$RESULTS/gpu_check.log") 2>&1
START=$(date +%s)
DEADLINE=$((START + ${GPU_CHECK_SECONDS:-440}))
FAILED=()

step() { echo; echo "=== $* [$(($(date +%s) - START)) s]"; }
skip() { [[ " ${GPU_CHECK_SKIP:-} " == *" $1 "* ]] && echo "(skipped: GPU_CHECK_SKIP)"; }
# Seconds a step may take: at most $1, and never past the deadline less $2 kept for later steps.
budget() { local left=$((DEADLINE - $(date +%s) - $2)); ((left > $1)) && left=$1; ((left < 5)) && left=5; echo "$left"; }
run() {  # run NAME SECONDS CMD...: a step that may fail; a timeout (124) is named as such
  local name=$1 secs=$2; shift 2
  timeout --kill-after=10 "$secs" "$@"
  local rc=$?
  if ((rc == 124 || rc == 137)); then echo "gpu_check: $name: TIMEOUT after $secs s"; FAILED+=("$name (timeout)")
  elif ((rc != 0)); then echo "gpu_check: $name: FAILED (exit $rc)"; FAILED+=("$name")
  fi
  return "$rc"
}

step "GPU"
nvidia-smi -L 2>/dev/null || echo "(no nvidia-smi)"
if ! timeout 60 "$PY" -c "
import cupy
n = cupy.cuda.runtime.getDeviceCount()
assert n > 0, 'getDeviceCount() == 0'
p = cupy.cuda.runtime.getDeviceProperties(0)
print(n, 'device(s); 0:', p['name'].decode() if isinstance(p['name'], bytes) else p['name'],
      'sm_%d%d' % (p['major'], p['minor']), 'runtime', cupy.cuda.runtime.runtimeGetVersion(),
      'driver', cupy.cuda.runtime.driverGetVersion())
"; then
  echo "gpu_check: FAILED: no usable GPU here (cupy cannot see a CUDA device); nothing else was run"
  exit 2
fi

step "build: pip install --no-build-isolation --no-index -e ."
NVCC=$(command -v nvcc || ls /usr/local/cuda/bin/nvcc 2>/dev/null || true)
echo "nvcc: ${NVCC:-NOT FOUND} $("${NVCC:-true}" --version 2>/dev/null | tail -1)"
if ! "$PY" -c "import scikit_build_core, pybind11" 2>/dev/null; then
  # Build tools may come as wheels carried along: PLEXUS_WHEELS=<folder of .whl files>.
  if [[ -d ${PLEXUS_WHEELS:-bench/wheels} ]]; then
    "$PY" -m pip install --no-index --find-links "${PLEXUS_WHEELS:-bench/wheels}" scikit-build-core pybind11
  else
    echo "gpu_check: scikit-build-core and pybind11 are needed to build and are not installed"
  fi
fi
if run build "$(budget 300 170)" "$PY" -m pip install --no-build-isolation --no-index --no-deps -e . ; then
  "$PY" -c "
import plexus._C as C
print('built_with_cuda', C.built_with_cuda, C._cuda_build_info())
print('cuda runtime:', C._cuda_runtime_status())
assert C.built_with_cuda and C.cuda_runtime_available()
" || FAILED+=("CUDA in the built module")
else
  echo "gpu_check: the build failed: nothing else can run"
  echo "FAILED: ${FAILED[*]}"
  exit 1
fi

# UCX for device messages between "hosts" (two ranks over PLEXUS_TRANSPORTS=ucx): a libucx wheel
# carried in the same folder (the machine has no registry), when no UCX is installed.
if ! "$PY" -c "import libucx" 2>/dev/null && ls "${PLEXUS_WHEELS:-bench/wheels}"/libucx_cu*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps "${PLEXUS_WHEELS:-bench/wheels}"/libucx_cu*.whl
fi
"$PY" -c "import plexus._C as C; s = C.ucx_status(); print('ucx:', s['version'] or s['problem'], 'cuda_memory', s['cuda_memory'])"

step "CUDA reduction kernel vs device-to-device copy"
skip kernels || run kernels "$(budget 90 150)" "$PY" bench/gpu_kernels.py kernels --out "$RESULTS"

step "MPS (several ranks share this GPU)"
MPS="off"
if ! command -v nvidia-cuda-mps-control >/dev/null; then
  MPS="off (no nvidia-cuda-mps-control here)"
elif (($(id -u) != 0)); then
  MPS="off (starting the daemon needs root)"
else
  export CUDA_MPS_PIPE_DIRECTORY=${CUDA_MPS_PIPE_DIRECTORY:-/tmp/plexus-mps-pipe}
  export CUDA_MPS_LOG_DIRECTORY=${CUDA_MPS_LOG_DIRECTORY:-/tmp/plexus-mps-log}
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
  if nvidia-cuda-mps-control -d; then
    MPS="on"
    trap 'echo quit | nvidia-cuda-mps-control >/dev/null 2>&1' EXIT
  else
    MPS="off (nvidia-cuda-mps-control -d failed)"
  fi
fi
echo "MPS: $MPS"
echo "MPS: $MPS" >> "$RESULTS/summary.txt"

step "native device path: tests/gpu/test_gpu_native.py (programs, chunks, graphs, deadline, mismatch), test_gpu_messages.py"
run native-tests "$(budget 150 250)" "$PY" -m pytest -q -rs -p no:cacheprovider \
  --junitxml="$RESULTS/tests_native.xml" tests/gpu/test_gpu_native.py tests/gpu/test_gpu_messages.py \
  tests/gpu/test_gpu_ucx_messages.py
step "host CPU time of one native all_reduce call (16 floats), beside a host all_reduce"
run host-time "$(budget 40 240)" "$PY" bench/ipc_host_overhead.py --cuda --np 2 --iters 500 --rounds 5 \
  | tee "$RESULTS/host_time.txt" && cat "$RESULTS/host_time.txt" >> "$RESULTS/summary.txt"

BENCH=("$PY" -m plexus.bench --device cuda --vs nccl --vs cupy-add -b 16 -e 256M -f 4 -n 50 -w 10
       --rounds "${GPU_CHECK_ROUNDS:-3}")
export NCCL_MULTI_RANK_GPU_ENABLE=1
for NP in 2 4; do
  step "plexus-bench --device cuda: all_reduce, $NP ranks on one GPU, vs NCCL and cupy a + b"
  run "bench-$NP" "$(budget 120 $((NP == 2 ? 230 : 140)))" "${BENCH[@]}" -np "$NP" \
    --json "$RESULTS/bench_cuda_np$NP.json" && tail -n +1 "$RESULTS/bench_cuda_np$NP.txt" >> "$RESULTS/summary.txt"
done
step "registered buffers (plexus.register: all_reduce in place, no staging), 2 ranks, vs cupy a + b"
skip registered || PLEXUS_BENCH_REGISTER=1 run bench-registered "$(budget 60 100)" "${BENCH[@]}" -np 2 \
  --json "$RESULTS/bench_cuda_registered.json" && tail -n +1 "$RESULTS/bench_cuda_registered.txt" >> "$RESULTS/summary.txt"
step "large all_reduces, 2 ranks: mapped per call from 4 MiB, then never (staged two-shot), vs cupy a + b"
for M in 4M 1024G; do
  skip mapped || PLEXUS_DEVICE_MAPPED_MIN=$M run "bench-mapped-$M" "$(budget 45 100)" "$PY" -m plexus.bench \
    --device cuda --vs cupy-add --sizes 1M,4M,16M,64M,256M -n 30 -w 5 --rounds "${GPU_CHECK_ROUNDS:-3}" -np 2 \
    --json "$RESULTS/bench_cuda_mapped_min$M.json" && tail -n +1 "$RESULTS/bench_cuda_mapped_min$M.txt" >> "$RESULTS/summary.txt"
done
step "all_to_all (one launch, the block sizes shared in the pads), 2 and 4 ranks"
for NP in 2 4; do
  skip a2a || run "bench-a2a-$NP" "$(budget 40 100)" "$PY" -m plexus.bench --device cuda --collective all_to_all \
    -b 64 -e 64M -f 8 -n 30 -w 5 --rounds "${GPU_CHECK_ROUNDS:-3}" -np "$NP" \
    --json "$RESULTS/bench_cuda_a2a_np$NP.json" && tail -n +1 "$RESULTS/bench_cuda_a2a_np$NP.txt" >> "$RESULTS/summary.txt"
done
step "send/recv, 2 ranks: native (lanes, inboxes) and staged, beside a device-to-device copy"
skip messages || run messages "$(budget 40 100)" "$PY" bench/device_messages.py --max 64M --iters 10 --rounds 3 \
  | tee "$RESULTS/messages.txt" && cat "$RESULTS/messages.txt" >> "$RESULTS/summary.txt"
step "send/recv, 2 ranks over UCX as between hosts: straight through UCX (CUDA memory) and staged"
if ! "$PY" -c "import plexus._C as C, sys; sys.exit(not C.ucx_status()['cuda_memory'])"; then
  echo "(skipped: UCX does not load here or cannot move CUDA memory)"
elif ! skip messages; then
  run ucx-messages "$(budget 40 90)" "$PY" bench/device_messages.py --ucx tcp,cuda_copy,self --max 64M --iters 10 \
    --rounds 3 | tee "$RESULTS/ucx_messages.txt" && cat "$RESULTS/ucx_messages.txt" >> "$RESULTS/summary.txt"
  run ucx-all-reduce "$(budget 40 90)" "$PY" bench/device_messages.py --ucx tcp,cuda_copy,self --all-reduce \
    --max 64M --iters 10 --rounds 3 | tee "$RESULTS/ucx_all_reduce.txt" \
    && cat "$RESULTS/ucx_all_reduce.txt" >> "$RESULTS/summary.txt"
fi
step "grids of 32 (default), 64 and 128 blocks per rank (PLEXUS_DEVICE_BLOCKS), 2 ranks, vs cupy a + b"
for B in 32 64 128; do
  skip grid || PLEXUS_DEVICE_BLOCKS=$B run "bench-grid$B" "$(budget 45 100)" "$PY" -m plexus.bench --device cuda \
    --vs cupy-add --sizes 1M,16M,256M -n 30 -w 5 --rounds "${GPU_CHECK_ROUNDS:-3}" -np 2 \
    --json "$RESULTS/bench_cuda_grid$B.json" && tail -n +1 "$RESULTS/bench_cuda_grid$B.txt" >> "$RESULTS/summary.txt"
done
step "where one-shot should end on 4 ranks: PLEXUS_DEVICE_ALGO=oneshot, then twoshot"
for A in oneshot twoshot; do
  skip threshold || PLEXUS_DEVICE_ALGO=$A run "bench-$A" "$(budget 45 100)" "$PY" -m plexus.bench --device cuda \
    --sizes 128K,256K,512K,1M,2M,4M -n 50 -w 10 --rounds "${GPU_CHECK_ROUNDS:-3}" -np 4 \
    --json "$RESULTS/bench_cuda_np4_$A.json" && tail -n +1 "$RESULTS/bench_cuda_np4_$A.txt" >> "$RESULTS/summary.txt"
done
step "plexus-bench --device cuda --collective all, 2 ranks (every collective, #wrong checked)"
skip bench-all || run bench-all "$(budget 90 110)" "$PY" -m plexus.bench --device cuda --vs nccl --collective all -b 4K -e 16M -f 16 \
  -n 10 -w 2 -np 2 --json "$RESULTS/bench_cuda_all.json"
step "the 2-rank all_reduce staged through host memory (PLEXUS_CUDA_IPC=0)"
skip staged || PLEXUS_CUDA_IPC=0 run bench-staged "$(budget 60 95)" "$PY" -m plexus.bench --device cuda -b 4K -e 64M -f 16 -n 5 \
  -w 2 -np 2 --json "$RESULTS/bench_cuda_staged.json"

TESTS=${GPU_CHECK_TESTS:-tests/gpu tests/test_cuda_build.py tests/test_device_logic.py tests/test_cuda_ipc_logic.py tests/test_bench_device.py}
step "tests: $TESTS"
# shellcheck disable=SC2086
run tests "$(budget 400 5)" "$PY" -m pytest -q -rs -p no:cacheprovider --junitxml="$RESULTS/tests_gpu.xml" \
  --deselect tests/gpu/test_gpu_native.py --deselect tests/gpu/test_gpu_messages.py \
  --deselect tests/gpu/test_gpu_ucx_messages.py $TESTS

step "summary"
[[ -f $RESULTS/summary.txt ]] && cat "$RESULTS/summary.txt"
echo "results in $RESULTS; took $(($(date +%s) - START)) s"
if [[ -n ${OUT:-} ]]; then  # the device tool brings back only a few files: one archive holds the rest
  (cd "$RESULTS" && find . -maxdepth 1 -type f ! -name gpu_check.log ! -name summary.txt ! -name results.tar.gz \
    -printf '%P\n' | tar czf results.tar.gz -T - --remove-files) && echo "packed the rest into $RESULTS/results.tar.gz"
fi
if ((${#FAILED[@]})); then
  echo "gpu_check: FAILED: ${FAILED[*]}"
  exit 1
fi
echo "gpu_check: all steps passed"
