#!/usr/bin/env bash
# The whole test suite, slow tests (real default models) included. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec pytest -m "slow or not slow" "$@"
