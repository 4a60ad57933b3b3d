#!/usr/bin/env bash
# Installs everything a fresh machine needs: the CPU torch wheel first (an unpinned torch would pull a
# multi-GB CUDA wheel), then this project, built against that torch (--no-build-isolation).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q --disable-pip-version-check "torch==2.13.0"
python -m pip install -q --disable-pip-version-check --no-build-isolation -e ".[test]"
