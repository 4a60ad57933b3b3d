#!/usr/bin/env bash
# Moves the pins forward on purpose: installs the newest versions pyproject.toml allows into a brand-new
# virtual environment (empty pip cache), runs the whole test suite there, and rewrites constraints.txt from
# that environment only if the suite passed. Review `git diff constraints.txt` and commit it with the suite's
# result. Extra arguments go to pytest. torch stays the pinned CPU wheel (an unpinned torch pulls a CUDA build):
# move it by editing its line first.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=fresh-venv.sh
. scripts/fresh-venv.sh pins
export PIP_CACHE_DIR="$ROOT/pip-cache"
ARGS_ENGINE_CONSTRAINTS=none bash scripts/setup.sh
python -m pytest -m "slow or not slow" "$@"

header=$(sed -n '/^#/p' constraints.txt)
{
  printf '%s\n' "$header"
  python -m pip freeze --all --disable-pip-version-check \
    | grep -v -E '^(#|-e |pip==|args[-_]engine)' | sed -E 's/^(torch==[0-9.]+)\+cpu$/\1/'
} >"$ROOT/constraints.txt"
echo "update-pins: suite passed; changes to constraints.txt:"
diff constraints.txt "$ROOT/constraints.txt" || true
cp "$ROOT/constraints.txt" constraints.txt
