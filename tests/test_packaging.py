"""The repo's kernels/ is importable only as args_engine.kernels: a top-level `kernels` would be taken for
the Hugging Face `kernels` package, which transformers probes."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import args_engine


def test_kernels_is_packaged_under_args_engine():
    import args_engine.kernels  # noqa: F401
    repo_kernels = Path(args_engine.__file__).resolve().parents[1] / "kernels"
    spec = importlib.util.find_spec("kernels")
    assert spec is None or not str(spec.origin).startswith(str(repo_kernels))


def test_extension_built_and_public_api():
    import torch
    import args_engine._C  # noqa: F401
    assert hasattr(torch.ops.args_engine, "store_kv") and hasattr(torch.ops.args_engine, "copy_blocks")
    assert {"ARGSEngine", "ARGSParams", "GenerationOutput"} <= set(args_engine.__all__)


def test_cli_entry_point_installed(tmp_path):
    # cwd outside the repo: `python -m` puts cwd on sys.path, where kernels/ would shadow HF `kernels`
    out = subprocess.run([sys.executable, "-m", "args_engine.cli", "--help"], capture_output=True, text=True,
                         cwd=tmp_path)
    assert out.returncode == 0 and "generate" in out.stdout and "train-rm" in out.stdout
