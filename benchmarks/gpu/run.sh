#!/usr/bin/env bash
# One command for a lent GPU, at most 9 minutes in all (BUDGET_S; every stage has its own timeout, cut to the time
# left, and a stage that no longer fits is skipped): build the extension with its CUDA ops, the GPU tests (kernels
# compiled, the native engine on CUDA, the CUDA cache ops, graph replay == eager), end-to-end runs (1B shapes:
# graphs, graphs with controls and the gate, eager, a bridged RM; 8B shapes: two trunks and shared trunk, graphs), the micro and kernel benchmarks.
# Each stage appends to its own log under $OUT as it runs, so a failure or a timeout keeps everything before it;
# $OUT holds at most 6 files (a device returns 8): summary.log, build.log, tests.log, e2e.log, bench.log, and
# results.jsonl (one line per benchmark JSON, added as each finishes). The machine reaches no package registry:
# it builds in place against the torch it has.
#   run.sh --tiny: a dry run on CPU (no build, one small kernel test, the benchmarks' --tiny configs), so a script
#   error costs no GPU time (tests/test_gpu_scripts.py). SKIP_CUDA_OPS=1 builds without the CUDA cache ops.
set -uo pipefail
cd "$(dirname "$0")/../.."
TINY=0
[ "${1:-}" = --tiny ] && TINY=1
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
JSON_DIR=$(mktemp -d)  # the benchmarks' own JSON files, folded into results.jsonl (keeps $OUT to few files)
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
# that image's torch + a g++-13-built extension segfault on C++ exceptions unless the system libstdc++ is loaded
[ "$TINY" = 0 ] && [ -f /lib/x86_64-linux-gnu/libstdc++.so.6 ] && export LD_PRELOAD=/lib/x86_64-linux-gnu/libstdc++.so.6
[ "${SKIP_CUDA_OPS:-0}" = 1 ] && export ARGS_ENGINE_SKIP_CUDA=1
DEADLINE=$((SECONDS + ${BUDGET_S:-540} - 10))  # 10 s for the last stage's kill and the summary

note() { echo "$*" | tee -a "$OUT/summary.log"; }

# stage NAME LOG LIMIT CMD...: CMD's output appended to $OUT/LOG, under min(LIMIT, time left before DEADLINE)
stage() {
  local name=$1 log=$2 limit=$3
  shift 3
  local left=$((DEADLINE - SECONDS))
  ((left < limit)) && limit=$left
  if ((limit < 15)); then
    note "== $name: skipped, ${left}s left"
    return
  fi
  note "== $name ($(date +%T), limit ${limit}s)"
  echo "== $name ($(date +%T))" >> "$OUT/$log"
  local t0=$SECONDS
  timeout -k 5 "$limit" "$@" >> "$OUT/$log" 2>&1
  local rc=$?
  note "   exit $rc$( ((rc == 124 || rc == 137)) && echo ' (timed out)') after $((SECONDS - t0)) s"
  collect
}

# Every benchmark JSON written so far, one compact line each, into results.jsonl.
collect() {
  local f
  for f in "$JSON_DIR"/*.json; do
    [ -e "$f" ] || continue
    python -c "import json, sys; print(json.dumps({'file': sys.argv[1].rsplit('/', 1)[-1], \
'result': json.load(open(sys.argv[1]))}))" "$f" >> "$OUT/results.jsonl" && rm -f "$f"
  done
}

if [ "$TINY" = 1 ]; then
  note "== machine: dry run on CPU (--tiny)"
else
  note "== machine"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$OUT/summary.log"
fi
python -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, \
'transformers', transformers.__version__)" 2>&1 | tee -a "$OUT/summary.log"

if [ "$TINY" = 1 ]; then
  stage "build (dry run: the installed extension imports)" build.log 60 python -c "import args_engine._C"
  stage "GPU tests (dry run: one kernel test file)" tests.log 120 \
    python -m pytest tests/test_kernel_store_kv.py -q -p no:cacheprovider
  E2E="python benchmarks/gpu/bench_e2e_gpu.py --tiny --out $JSON_DIR"
  stage "end-to-end (tiny)" e2e.log 240 $E2E
  stage "a bridged RM (tiny)" e2e.log 240 python benchmarks/gpu/bench_bridge_gpu.py --tiny --out "$JSON_DIR"
  stage "kernel benchmarks (exits without CUDA)" bench.log 60 env OUT="$JSON_DIR" python benchmarks/bench_kernels.py
  note "== done ($SECONDS s)"
  rm -rf "$JSON_DIR"
  exit 0
fi

ln -sfn ../kernels args_engine/kernels  # setup.py's package_dir mapping, for an in-place import
stage "build the extension in place (with the CUDA cache ops unless SKIP_CUDA_OPS=1)" build.log ${BUILD_S:-150} \
  python setup.py -q build_ext --inplace

# test_kernel_compile_sm90 is the CPU machines' stand-in for this stage (and needs Triton's 3.9 internals)
TESTS=$(ls tests/test_kernel_*.py | grep -v compile_sm90)
stage "GPU tests (kernels compiled, native engine, CUDA cache ops, graph replay == eager)" tests.log ${TESTS_S:-150} \
  python -m pytest $TESTS tests/test_native_gpu.py tests/test_cuda_ops.py tests/test_step.py -v --maxfail=20 -rs \
  -p no:cacheprovider --import-mode=importlib
grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/tests.log" | tail -25 | tee -a "$OUT/summary.log"

E2E="python benchmarks/gpu/bench_e2e_gpu.py --out $JSON_DIR"
stage "end-to-end, 1B shapes, two trunks, CUDA graphs" e2e.log ${E2E_S:-60} $E2E --shape 1B --step-mode graph
stage "end-to-end, 1B shapes, two trunks, CUDA graphs, repetition + presence + gate" e2e.log ${CONTROLS_S:-45} \
  $E2E --shape 1B --step-mode graph --controls --batches 1,8 --new-tokens 64
stage "end-to-end, 1B shapes, two trunks, eager" e2e.log ${EAGER_S:-40} \
  $E2E --shape 1B --step-mode dynamic --batches 1,8 --new-tokens 64
stage "a bridged RM against the same-vocabulary RM, 1B shapes" e2e.log ${BRIDGE_S:-45} \
  python benchmarks/gpu/bench_bridge_gpu.py --out "$JSON_DIR"
stage "end-to-end, 8B shapes, two trunks, CUDA graphs" e2e.log ${E2E8_S:-60} $E2E --shape 8B --step-mode graph \
  --new-tokens 64
stage "end-to-end, 8B shapes, shared trunk, CUDA graphs" e2e.log ${E2E8_S:-60} $E2E --shape 8B --shared-trunk \
  --step-mode graph --new-tokens 64 --batches 1,64
stage "kernel benchmarks" bench.log ${KERNELS_S:-30} env OUT="$JSON_DIR" python benchmarks/bench_kernels.py
stage "micro benchmarks (pytest-benchmark, CUDA cases)" bench.log ${MICRO_S:-30} python -m pytest benchmarks/micro \
  --benchmark-only -k cuda -q -p no:cacheprovider --import-mode=importlib --benchmark-json "$JSON_DIR/micro.json"
note "== done ($SECONDS s)"
rm -rf "$JSON_DIR"
