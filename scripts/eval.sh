#!/usr/bin/env bash
# The committed evaluation: 100 prompts of the HH-RLHF evaluation split, 128 new tokens, the default LM and
# the whole-reply reward head (the default RM when this run was made; the prefix head's run, which is scored by
# the whole-reply head, is benchmarks/results/eval_prefix_rm), every method (greedy, top-k, best-of-10,
# ARGS-greedy at w = 0.5, 1, 1.5, 2, ARGS-stochastic), judged by the MiniLM judge. Writes
# benchmarks/results/eval/{results.json,results.md,*.png}. Extra arguments go to `args-engine eval`
# (e.g. --device cuda --batch-size 32).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
args-engine eval --limit 100 --max-new-tokens 128 --rm args_engine/assets/default_rm.safetensors \
  --out benchmarks/results/eval "$@"
