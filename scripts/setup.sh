#!/usr/bin/env bash
# Installs everything a fresh machine needs: the CPU torch wheel first (an unpinned torch would pull a
# multi-GB CUDA wheel), then this project, built against that torch (--no-build-isolation).
# Does nothing when this checkout is already installed and its C++ extension is newer than its sources.
set -euo pipefail
cd "$(dirname "$0")/.."
if python -I - 2>/dev/null <<'PY'
import glob, os, torch, args_engine, args_engine._C as C
assert os.path.dirname(os.path.dirname(os.path.abspath(args_engine.__file__))) == os.getcwd()
sources = glob.glob("csrc/*") + ["setup.py", "pyproject.toml"]
assert os.path.getmtime(C.__file__) >= max(map(os.path.getmtime, sources))
PY
then
  exit 0
fi
python -m pip install -q --disable-pip-version-check "torch==2.13.0"
python -m pip install -q --disable-pip-version-check --no-build-isolation -e ".[test]"
