#!/usr/bin/env bash
# The main job on the embedded default models, offline: ARGS next to plain greedy, with both rewards, in the
# setting the committed evaluation supports best, and a line of what that evaluation found.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
args-engine demo "$@"
