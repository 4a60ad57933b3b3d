"""Says plainly when an import failed because a local file or folder shadows an installed package.

A folder named like a real package in the current directory or on PYTHONPATH (a checkout's `kernels/`, a
`tokenizers.py` beside a script) is found before site-packages; the error Python gives is a traceback deep
inside the dependency that imported it. `shadowing_message` names the module, the file that was found and the
installed distribution that should have been."""
from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path


def shadowing_message(exc: ImportError) -> str | None:
    """One line naming what shadowed what, or None when `exc` is not an import of a shadowed package."""
    name = (exc.name or "").partition(".")[0]
    if not name:
        return None
    module = sys.modules.get(name)
    found = getattr(module, "__file__", None) or exc.path
    if found is None and module is not None and getattr(module, "__path__", None):
        found = list(module.__path__)[0]  # a namespace portion (a folder with no __init__.py)
    dists = importlib.metadata.packages_distributions().get(name, [])
    if not found or not dists:
        return None
    dist = importlib.metadata.distribution(dists[0])
    home = Path(dist.locate_file("")).resolve()
    if Path(found).resolve().is_relative_to(home):
        return None  # the installed package itself failed: not a shadowing problem
    return (f"import of {name!r} found {found}, not the installed package {dist.metadata['Name']} "
            f"{dist.version} in {home}: a file or folder named {name!r} in the current directory or on "
            f"PYTHONPATH comes first on sys.path; run from another directory or rename it ({exc})")
