# Sourced (not run) by the scripts that need a brand-new virtual environment: `. scripts/fresh-venv.sh NAME`
# makes ROOT, a temporary folder removed on exit, with a new venv in ROOT/venv (no system site-packages)
# activated, and PYTHONPATH / VIRTUAL_ENV cleared, so nothing installed earlier on this machine is reused.
ROOT=$(mktemp -d "${TMPDIR:-/tmp}/args-engine-$1.XXXXXX")
trap 'rm -rf "$ROOT"' EXIT
unset PYTHONPATH VIRTUAL_ENV
python3 -m venv "$ROOT/venv"
# shellcheck disable=SC1091
. "$ROOT/venv/bin/activate"
