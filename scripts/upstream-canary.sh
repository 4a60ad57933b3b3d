#!/usr/bin/env bash
# The upstream canary: installs the newest versions pyproject.toml allows (no constraints) into a brand-new
# virtual environment, then runs a short generation and the fast tests that import transformers, Ray and the
# server (its field table is checked against the newest openai package's). It says which installed versions
# differ from constraints.txt. Exit status: that of the first failing step (CI prints a warning and goes on: a
# red canary means an upstream release will break the next re-pin).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=fresh-venv.sh
. scripts/fresh-venv.sh canary
export ARGS_ENGINE_CACHE="${ARGS_ENGINE_CACHE:-$ROOT/model-cache}"

report_versions() {
  echo "versions that differ from constraints.txt (pinned -> newest):"
  python -I - <<'PY' || true
import importlib.metadata as md, re
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
pinned = dict(line.strip().split("==") for line in open("constraints.txt") if "==" in line and not line.startswith("#"))
pinned = {norm(k): v for k, v in pinned.items()}
newest = {norm(d.metadata["Name"]): d.version.split("+")[0] for d in md.distributions()}
newest.pop("args-engine", None), newest.pop("pip", None)
for name in sorted(pinned.keys() | newest.keys()):
    if pinned.get(name) != newest.get(name):
        print(f"  {name}: {pinned.get(name, '(none)')} -> {newest.get(name, '(none)')}")
PY
}
trap 'status=$?; report_versions; rm -rf "$ROOT"; exit $status' EXIT

ARGS_ENGINE_CONSTRAINTS=none bash scripts/setup.sh
args-engine generate --max-new-tokens 4 "Say hello."
python -m pytest -q -m "not slow" tests/test_packaging.py tests/test_hf.py tests/test_server.py \
  tests/test_server_fields.py tests/test_ray.py
