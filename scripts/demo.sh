#!/usr/bin/env bash
# The main job on the embedded default models, offline: ARGS next to plain greedy, with both rewards.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
args-engine generate --compare --max-new-tokens 64 "$@"
