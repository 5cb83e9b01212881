"""Training checkpoints: plain dicts with a schema version, written atomically.

A checkpoint holds ``schema_version``, ``kind`` (step / epoch / best / final), ``step``,
``epoch``, the model, optimiser and LR-scheduler states, the curriculum step, the text phase,
the memory bank, the EMA teacher (when used), RNG states (python, numpy, torch) and the
resolved config. Files live in ``<run>/checkpoints/``:

* ``step-00001234.pt`` and ``epoch-0003.pt``: the last ``keep_last`` of each kind are kept;
* ``best.pt`` and ``final.pt``: overwritten in place;
* ``latest.json``: names the newest complete checkpoint; rewritten (atomically) only after
  that checkpoint is on disk, so a kill mid-write leaves the previous one as the latest.

Every file is written to a temporary name in the same folder, flushed, fsynced and renamed.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from protgo.data.ontology import atomic_write_text
from protgo.errors import UserError

SCHEMA_VERSION = 1
Kind = Literal["step", "epoch", "best", "final"]


def rng_state() -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_torch_save(obj, path: Path) -> None:
    """``torch.save`` to a temp file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict:
    """A checkpoint file, or the latest one of a run or checkpoint folder."""
    path = resolve_checkpoint(Path(path))
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file has the same remedy
        raise UserError(
            f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc}); resume from "
            "another checkpoint of the run"
        ) from None
    version = state.get("schema_version") if isinstance(state, dict) else None
    if version != SCHEMA_VERSION:
        raise UserError(
            f"checkpoint {path} has schema version {version}, this protgo reads version "
            f"{SCHEMA_VERSION}: resume it with the protgo version that wrote it, or start anew"
        )
    return state


def resolve_checkpoint(path: Path) -> Path:
    """A file as is; a run folder or its ``checkpoints/`` folder -> the latest checkpoint."""
    if path.is_file():
        return path
    for folder in (path / "checkpoints", path):
        pointer = folder / "latest.json"
        if pointer.is_file():
            return folder / json.loads(pointer.read_text())["file"]
    raise UserError(
        f"no checkpoint at {path}: give a .pt file or a run folder holding checkpoints/latest.json"
    )


class CheckpointManager:
    """Writes checkpoints of one run, prunes old ones, keeps ``latest.json`` current."""

    def __init__(self, directory: Path, keep_last: int = 3):
        if keep_last < 1:
            raise UserError(f"train.keep_last must be at least 1, got {keep_last}")
        self.directory = Path(directory)
        self.keep_last = keep_last

    def path_for(self, kind: Kind, step: int, epoch: int) -> Path:
        name = {"step": f"step-{step:08d}.pt", "epoch": f"epoch-{epoch:04d}.pt",
                "best": "best.pt", "final": "final.pt"}[kind]  # fmt: skip
        return self.directory / name

    def save(self, state: dict, kind: Kind) -> Path:
        """Write ``state`` (a plain dict; ``step`` and ``epoch`` keys required)."""
        state = {**state, "schema_version": SCHEMA_VERSION, "kind": kind}
        path = self.path_for(kind, state["step"], state["epoch"])
        atomic_torch_save(state, path)
        pointer = {"file": path.name, "kind": kind, "step": state["step"], "epoch": state["epoch"]}
        atomic_write_text(self.directory / "latest.json", json.dumps(pointer) + "\n")
        if kind in ("step", "epoch"):
            self._prune(kind)
        return path

    def _prune(self, kind: Kind) -> None:
        old = sorted(self.directory.glob(f"{kind}-*.pt"))[: -self.keep_last]
        for p in old:
            p.unlink(missing_ok=True)
        for tmp in self.directory.glob(".*.tmp"):  # left by a killed writer
            tmp.unlink(missing_ok=True)

    def latest(self) -> Path | None:
        pointer = self.directory / "latest.json"
        return (
            self.directory / json.loads(pointer.read_text())["file"] if pointer.is_file() else None
        )
