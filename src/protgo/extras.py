"""Optional dependencies: the extras that training and evaluation need beyond prediction.

``pip install protgo`` predicts with a shipped model; ``protgo[train]`` adds FAISS, W&B and
matplotlib, ``protgo[eval]`` cafaeval and matplotlib (pyproject.toml). A missing one is one
UserError naming the extra, raised where it is first needed.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from protgo.errors import UserError


def need(module: str, extra: str, what: str, load: bool = True) -> ModuleType | None:
    """Import ``module`` (or, with ``load=False``, only check that it is installed: cafaeval
    runs as a separate program), or say which extra brings it."""
    if importlib.util.find_spec(module.split(".")[0]) is None:
        raise UserError(
            f"{what} needs the Python package {module.split('.')[0]}: pip install 'protgo[{extra}]'"
        )
    return importlib.import_module(module) if load else None


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display)."""
    matplotlib = need("matplotlib", "eval", "plotting")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
