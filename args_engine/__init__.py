"""args-engine: ARGS (Alignment as Reward-Guided Search, Khanov et al., ICLR 2024) decoding.

    from args_engine import ARGSEngine, ARGSParams
    engine = ARGSEngine.from_pretrained()          # embedded default LM + RM, offline
    outs = engine.generate(["How do I bake bread?"], ARGSParams(k=10, w=1.0, max_new_tokens=128))
    outs[0].text, outs[0].token_ids, outs[0].rewards
"""
import importlib.machinery as _machinery
import importlib.util as _importlib_util
import os as _os
import sys as _sys


def _mount_checkout_kernels() -> None:
    """Makes the checkout's top-level `kernels/` folder importable as `args_engine.kernels` in editable installs.

    Why the folder has no `__init__.py`: with one it is a regular package named `kernels`, and any Python started
    with the checkout's root on sys.path (`python -c` at the root, pytest subprocesses, Ray workers) imports it in
    place of the Hugging Face `kernels` package that transformers imports while loading. Without one it is only
    a namespace portion, and the import system takes a regular package from any later sys.path entry (the
    installed `kernels`) over it; our own code never imports it as `kernels`.
    A wheel ships the folder as args_engine/kernels/ (setup.py's package_dir), a namespace subpackage that the
    normal path search finds. setuptools' editable finder cannot resolve a namespace subpackage of a regular
    package, so when the folder is not inside this package we register it here, as the namespace package the
    wheel would give."""
    name, here = __name__ + ".kernels", __path__[0]
    checkout = _os.path.join(_os.path.dirname(here), "kernels")
    if name in _sys.modules or _os.path.isdir(_os.path.join(here, "kernels")) or not _os.path.isdir(checkout):
        return
    spec = _machinery.PathFinder.find_spec(name, [_os.path.dirname(checkout)])  # the folder as a namespace portion
    module = _importlib_util.module_from_spec(spec)
    module.__doc__ = "Triton kernels, one file each, with a plain-torch `_ref` beside each launcher."
    _sys.modules[name] = module
    globals()["kernels"] = module  # as an import binds a subpackage on its parent


_mount_checkout_kernels()

from .engine.request import GenerationOutput  # noqa: E402
from .engine import ARGSEngine  # noqa: E402
from .params import ARGSParams  # noqa: E402

__all__ = ["ARGSEngine", "ARGSParams", "GenerationOutput"]
__version__ = "0.1.0"
