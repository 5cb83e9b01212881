"""Files that ship inside the protgo package: the trained models under ``protgo/models/`` and
the experiment configs under ``protgo/configs/``.

They are package data, found relative to the installed package (never the working
directory), so a command finds them from any folder and from an installed wheel.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

# protgo <= 0.1 configs and checkpoints named the shipped model by its old path in the
# repository; those names keep resolving to the packaged copy.
_LEGACY_PREFIX = "models/"


def models_dir() -> Path:
    return Path(str(resources.files("protgo") / "models"))


MARKERS = {"plm": ("config.json",), "bundle": ("bundle.json",)}


def shipped_model_names(kind: str | None = None) -> list[str]:
    """The shipped protein language models (``kind="plm"``: a ``config.json``), aligner
    bundles (``"bundle"``: a ``bundle.json``), or both."""
    root = models_dir()
    if not root.is_dir():
        return []
    markers = MARKERS[kind] if kind else MARKERS["plm"] + MARKERS["bundle"]
    return sorted(d.name for d in root.iterdir() if any((d / m).is_file() for m in markers))


def configs_dir() -> Path:
    return Path(str(resources.files("protgo") / "configs"))


def shipped_config_names() -> list[str]:
    return sorted(p.stem for p in configs_dir().glob("*.yaml"))


def shipped_config(name: str) -> Path | None:
    """The shipped config ``name`` (``demo`` or ``demo.yaml``), or None."""
    stem = name.removesuffix(".yaml").removeprefix("configs/")
    return configs_dir() / f"{stem}.yaml" if stem in shipped_config_names() else None


def shipped_model(name: str, kind: str | None = None) -> Path | None:
    """The directory of the shipped model ``name`` (``protgo-esm-small``) of ``kind`` (see
    :func:`shipped_model_names`), or None."""
    name = name.removeprefix(_LEGACY_PREFIX)
    if name in shipped_model_names(kind):
        return models_dir() / name
    return None
