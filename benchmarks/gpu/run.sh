#!/usr/bin/env bash
# One command for a lent GPU, at most about 9.6 minutes (each step has its own timeout; 8 expected): build the
# extension, the GPU tests, end-to-end runs (1B shapes: graphs and eager, and a bridged RM; 8B shapes: two trunks
# and shared trunk, graphs), the micro and kernel benchmarks. Everything lands in $OUT (default benchmarks/results/gpu).
# The GPU machine reaches no package registry: it builds in place against the torch it has.
#   FULL=1 also builds the CUDA cache ops (the native engine's GPU path needs only the C++ allocator + Triton).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
# that image's torch + a g++-13-built extension segfault on C++ exceptions unless the system libstdc++ is loaded
[ -f /lib/x86_64-linux-gnu/libstdc++.so.6 ] && export LD_PRELOAD=/lib/x86_64-linux-gnu/libstdc++.so.6
[ "${FULL:-0}" = 1 ] || export ARGS_ENGINE_SKIP_CUDA=1
step() { echo "== $1 ($(date +%T))"; }

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, \
'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"

step "build the extension in place"
ln -sfn ../kernels args_engine/kernels  # setup.py's package_dir mapping, for an in-place import
timeout ${BUILD_S:-75} python setup.py -q build_ext --inplace > "$OUT/build.log" 2>&1
echo "build exit $?"

step "GPU tests (graph replay == eager, no sync but the step's read, kernels)"
timeout ${TESTS_S:-70} python -m pytest tests/test_step.py tests/test_native_gpu.py tests/test_kernel_*.py -v \
  --maxfail=10 -rs -p no:cacheprovider --import-mode=importlib > "$OUT/tests.log" 2>&1
grep -E "passed|failed|FAILED|Error" "$OUT/tests.log" | tail -15

E2E="python benchmarks/gpu/bench_e2e_gpu.py --out $OUT"
step "end-to-end, 1B shapes, two trunks, CUDA graphs"
timeout ${E2E_S:-90} $E2E --shape 1B --step-mode graph 2>&1 | grep -v Warning | tail -5
step "end-to-end, 1B shapes, two trunks, eager (one transfer per step, no graphs)"
timeout ${EAGER_S:-50} $E2E --shape 1B --step-mode dynamic --batches 1,8 --new-tokens 64 2>&1 | grep -v Warning | tail -4
step "a bridged RM (another tokenizer, its own paged pool) against the same-vocabulary RM, 1B shapes"
timeout ${BRIDGE_S:-55} python benchmarks/gpu/bench_bridge_gpu.py --out $OUT 2>&1 | grep -v Warning | tail -8
step "end-to-end, 8B shapes, two trunks, CUDA graphs"
timeout ${E2E8_S:-90} $E2E --shape 8B --step-mode graph --new-tokens 64 2>&1 | grep -v Warning | tail -5
step "end-to-end, 8B shapes, shared trunk, CUDA graphs"
timeout ${E2E8_S:-90} $E2E --shape 8B --shared-trunk --step-mode graph --new-tokens 64 --batches 1,64 2>&1 | grep -v Warning | tail -4

step "micro benchmarks (pytest-benchmark, CUDA cases)"
timeout ${MICRO_S:-35} python -m pytest benchmarks/micro --benchmark-only -k cuda -q -p no:cacheprovider \
  --import-mode=importlib --benchmark-json "$OUT/micro.json" 2>&1 | tail -25

step "kernel benchmarks"
OUT="$OUT" timeout ${KERNELS_S:-30} python benchmarks/bench_kernels.py 2>&1 | tail -20
step "done"
