#!/usr/bin/env bash
# One command for a lent GPU (budget: under 8 minutes): build the CUDA extension, run the GPU tests, the kernel
# benchmarks and the end-to-end run. Everything it measures lands in $OUT (default benchmarks/results/gpu).
# The GPU machine reaches no package registry: it builds in place against the torch it has.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
step() { echo "== $1 ($(date +%T))"; }

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, \
'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"

step "build the extension in place (C++ + CUDA)"
ln -sfn ../kernels args_engine/kernels  # setup.py's package_dir mapping, for an in-place import
timeout 300 python setup.py -q build_ext --inplace > "$OUT/build.log" 2>&1
echo "build exit $?"; tail -5 "$OUT/build.log"

step "GPU tests"
timeout 180 python -m pytest tests/test_kernel_*.py tests/test_cache_ops.py tests/test_cuda_build.py \
  tests/test_native_gpu.py -q -rs -p no:cacheprovider --import-mode=importlib 2>&1 | tee "$OUT/tests.log" | tail -25

step "kernel benchmarks"
OUT="$OUT" timeout 90 python benchmarks/bench_kernels.py 2>&1 | tail -30

step "end-to-end"
timeout 240 python benchmarks/gpu/bench_e2e_gpu.py --out "$OUT" 2>&1 | tail -12
step "done"
