"""Packaging: the repo's kernels/ is importable only as args_engine.kernels (a top-level `kernels` would be taken
for the Hugging Face `kernels` package, which transformers probes); a built wheel holds every subpackage and
asset, and installed without `-e` in a fresh virtual environment, its commands and modules work."""
import importlib.util
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import args_engine

REPO = Path(args_engine.__file__).resolve().parents[1]


def test_kernels_is_packaged_under_args_engine():
    import args_engine.kernels  # noqa: F401
    import args_engine.kernels.refs as refs
    assert Path(refs.__file__).resolve().parent in (REPO / "kernels", REPO / "args_engine" / "kernels")
    assert not (REPO / "kernels" / "__init__.py").exists()  # a regular package would shadow HF `kernels`
    repo_kernels = REPO / "kernels"
    spec = importlib.util.find_spec("kernels")
    assert spec is None or not str(spec.origin).startswith(str(repo_kernels))


def _installed_kernels_package() -> Path:
    """The Hugging Face `kernels` package's folder, as a process outside the checkout finds it."""
    out = subprocess.run([sys.executable, "-I", "-c", "import kernels; print(kernels.__file__)"],
                         capture_output=True, text=True, cwd="/")
    if out.returncode != 0:
        pytest.skip("the Hugging Face `kernels` package is not installed (transformers >= 5.25 installs it)")
    return Path(out.stdout.strip()).parent


def test_checkout_root_does_not_shadow_hf_kernels():
    """From the checkout's root (cwd on sys.path, as `python -c`, pytest subprocesses and Ray workers have it),
    `import kernels` is the installed package and transformers, which imports it while loading, works."""
    installed = _installed_kernels_package()
    code = ("import kernels; print(kernels.__file__)\n"
            "from transformers import LlamaConfig, LlamaForCausalLM\n"
            "import args_engine.kernels.refs\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, "PYTHONSAFEPATH": ""})
    assert out.returncode == 0, out.stderr[-3000:]
    assert Path(out.stdout.splitlines()[0]).parent == installed


def test_shadowed_package_named_in_the_error(tmp_path):
    """A folder that does shadow a dependency (here a regular `kernels` package in the cwd) gets an error naming
    the file found and the distribution expected, not a traceback deep inside transformers."""
    installed = _installed_kernels_package()
    (tmp_path / "kernels").mkdir()
    (tmp_path / "kernels" / "__init__.py").write_text("")
    out = subprocess.run([sys.executable, "-m", "args_engine.cli", "generate", "--max-new-tokens", "1"],
                         capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONSAFEPATH": ""})
    assert out.returncode == 2, out.stderr[-3000:]
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith("args-engine: error: import of 'kernels' found "), line
    assert str(tmp_path / "kernels" / "__init__.py") in line and str(installed.parent) in line


@pytest.mark.parametrize("name", ["tiny", "common", "baselines", "benchmarks", "scripts", "kernels"])
def test_no_module_of_ours_takes_a_pypi_name(name):
    """Helper modules the tests and benchmarks put on sys.path must not take names of PyPI packages a user may
    have installed (each of these is one)."""
    for folder in (REPO, REPO / "tests", REPO / "benchmarks", REPO / "benchmarks" / "micro"):
        assert not (folder / f"{name}.py").exists() and not (folder / name / "__init__.py").exists(), folder


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


def source_modules() -> set[str]:
    """Every module of the source tree, as the installed package names it (kernels/ -> args_engine.kernels)."""
    mods = set()
    for root, pkg in ((REPO / "args_engine", "args_engine"), (REPO / "kernels", "args_engine.kernels")):
        for f in root.rglob("*.py"):
            rel = f.relative_to(root).with_suffix("")
            if "__pycache__" in rel.parts or (root.name == "args_engine" and rel.parts[0] == "kernels"):
                continue  # args_engine/kernels may be the GPU script's symlink to kernels/
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            mods.add(".".join((pkg, *parts)))
    return mods


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-build-isolation", "--no-deps",
                            "--no-index", "-w", str(out), str(REPO)], capture_output=True, text=True,
                           env={**os.environ, "ARGS_ENGINE_SKIP_CUDA": "1"})
    assert build.returncode == 0, build.stderr[-3000:]
    (whl,) = out.glob("args_engine-*.whl")
    return whl


@pytest.mark.slow
def test_wheel_holds_every_module_and_asset(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    in_wheel = {n[:-3].replace("/", ".").removesuffix(".__init__") for n in names if n.endswith(".py")}
    assert source_modules() - in_wheel == set()
    assets = {f"args_engine/assets/{f.name}" for f in (REPO / "args_engine" / "assets").iterdir()}
    assert assets and assets <= names
    assert any(n.startswith("args_engine/_C") and n.endswith(".so") for n in names)
    assert not any(n.startswith(("kernels/", "tests/", "benchmarks/")) for n in names)


@pytest.mark.slow
def test_wheel_installed_in_fresh_venv(wheel, tmp_path):
    """A non-editable install: the wheel goes into a new venv that sees this environment's dependencies (torch,
    transformers, ...) through a path entry, but not its editable install of this checkout."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # a plain path line: the .pth files there (this checkout's editable finder) are not run
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                             capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-3000:]
    work = tmp_path / "elsewhere"  # not the repo: its kernels/ and args_engine/ must not be on the path
    work.mkdir()
    cli = venv / "bin" / "args-engine"
    for args in (["--help"], ["serve", "--help"], ["generate", "--help"], ["eval", "--help"]):
        run = subprocess.run([str(cli), *args], capture_output=True, text=True, cwd=work)
        assert run.returncode == 0 and "usage: args-engine" in run.stdout, (args, run.stderr[-2000:])
    modules = sorted(m for m in source_modules() if not any(p.startswith("_") for p in m.split(".")[1:]))
    code = ("import importlib, sys, args_engine\n"
            f"assert args_engine.__file__.startswith({site!r}), args_engine.__file__\n"
            "for m in sys.argv[1:]:\n    importlib.import_module(m)\n"
            "import args_engine._C\n")
    run = subprocess.run([str(py), "-c", code, *modules], capture_output=True, text=True, cwd=work)
    assert run.returncode == 0, run.stderr[-3000:]
