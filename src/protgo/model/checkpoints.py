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

Loading never runs code: files are read with ``torch.load(weights_only=True)``, which accepts
tensors and plain Python data only, so every state is stored as such (RNG states as tensors,
lists and ints). A file that holds anything else (a pickle crafted to run code, or a file of
another program) is refused with one error. Both trainers (the aligner's and the PLM
pretraining) save and load through this module, in one format and folder layout; a PLM
checkpoint is marked ``"trainer": "plm"`` so neither trainer takes the other's.
"""

from __future__ import annotations

import json
import logging
import pickle
import random
import zipfile
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from protgo.errors import UserError
from protgo.io import atomic_write, atomic_write_text

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
Kind = Literal["step", "epoch", "best", "final"]


def rng_state() -> dict:
    """Python, numpy and torch RNG states as plain data (loadable with weights_only)."""
    np_state = np.random.get_state(legacy=False)
    np_state["state"] = {**np_state["state"], "key": np_state["state"]["key"].tolist()}
    return {
        "python": random.getstate(),
        "numpy": np_state,
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np_state = state["numpy"]
    key = np.asarray(np_state["state"]["key"], dtype=np.uint32)
    np.random.set_state({**np_state, "state": {**np_state["state"], "key": key}})
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_torch_save(obj, path: Path) -> None:
    """``torch.save`` to a temp file in the same folder, fsync, then rename over ``path``."""
    atomic_write(Path(path), lambda fh: torch.save(obj, fh))


def check_zip_members(path: Path, what: str) -> None:
    """A file torch saved is a zip archive whose members carry CRC-32s: a byte changed inside
    a tensor (a bad disk, a damaged copy) fails them, where ``torch.load`` would read the
    changed values silently. Reads the whole file once (about 1 s per GB)."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except zipfile.BadZipFile:
        return  # not a zip: torch.load says what it is (a legacy file, or another program's)
    except OSError as exc:
        raise UserError(f"{what} {path} cannot be read ({exc})") from None
    if bad is not None:
        raise UserError(
            f"{what} {path} is damaged (its member {bad} fails its CRC-32 check): use another "
            "copy or another checkpoint of the run"
        )


def safe_torch_load(path: Path, what: str, map_location: str | torch.device = "cpu"):
    """``torch.load`` that never runs code (weights_only), of a file whose zip members pass
    their checksums (:func:`check_zip_members`); any failure is one UserError naming the file
    (``what``: "checkpoint", "PLM checkpoint", ...)."""
    check_zip_members(path, what)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines()]
        code = next((ln for ln in lines if "GLOBAL" in ln), None)
        if code is not None:
            raise UserError(
                f"{what} {path} asks to load Python objects, not only tensors and plain data, "
                f"so protgo refuses it (loading could run code: {code}); use a file written "
                "by protgo"
            ) from None
        why = next((ln for ln in lines if ln.startswith("Unsupported")), type(exc).__name__)
        raise UserError(
            f"{what} {path} cannot be read (not a checkpoint, or damaged: {why}); resume from "
            "another checkpoint of the run"
        ) from None
    except Exception as exc:  # noqa: BLE001 - any unreadable file has the same remedy
        raise UserError(
            f"{what} {path} cannot be read ({type(exc).__name__}: {exc}); resume from "
            "another checkpoint of the run"
        ) from None


def load_checkpoint(
    path: Path, map_location: str | torch.device = "cpu", trainer: str = "aligner"
) -> dict:
    """A checkpoint file, or the latest readable one of a run or checkpoint folder, written
    by ``trainer`` (``aligner``: `protgo train`; ``plm``: `protgo plm pretrain`).

    Given a folder, a newest checkpoint that cannot be read (cut short, corrupt) is skipped
    for the previous one, and the fallback is printed; a file given by name must be good."""
    path = Path(path)
    candidates = [path] if path.is_file() else _candidates(path)
    for cand, fallback in zip(candidates, [*candidates[1:], None], strict=True):
        try:
            state = _load_one(cand, map_location)
            break
        except UserError as err:
            if fallback is None:
                raise
            log.warning("%s; falling back to %s", err, fallback)
    wrote = state.get("trainer", "aligner")  # aligner checkpoints carry no mark
    if wrote != trainer:
        names = {"aligner": "`protgo train`", "plm": "`protgo plm pretrain`"}
        raise UserError(f"{path} holds a checkpoint of {names.get(wrote, wrote)}, not of "
                        f"{names[trainer]}: give a checkpoint that command wrote")  # fmt: skip
    return state


def _load_one(path: Path, map_location) -> dict:
    state = safe_torch_load(path, "checkpoint", map_location)
    version = state.get("schema_version") if isinstance(state, dict) else None
    if version is None:
        raise UserError(
            f"{path} is not a protgo training checkpoint (it holds no schema version: an "
            "`embed fasta` file, or another program's): give a checkpoint written by `protgo "
            "train`, or a run folder"
        )
    if version != SCHEMA_VERSION:
        raise UserError(
            f"checkpoint {path} has schema version {version}, this protgo reads version "
            f"{SCHEMA_VERSION}: resume it with the protgo version that wrote it, or start anew"
        )
    return state


def _candidates(path: Path) -> list[Path]:
    """The latest checkpoint of a run (or checkpoints) folder, then every other one, newest
    first."""
    latest = resolve_checkpoint(path)
    others = sorted(
        (p for p in latest.parent.glob("*.pt") if p != latest),
        key=lambda p: p.stat().st_mtime_ns,
        reverse=True,
    )
    return [latest, *others]


def resolve_checkpoint(path: Path) -> Path:
    """A file as is; a run folder or its ``checkpoints/`` folder -> the checkpoint that
    ``latest.json`` names (or, when that pointer is damaged, the newest ``.pt`` file)."""
    path = Path(path)
    if path.is_file():
        return path
    for folder in (path / "checkpoints", path):
        pointer = folder / "latest.json"
        if not pointer.is_file():
            continue
        try:
            named = folder / json.loads(pointer.read_text())["file"]
        except (json.JSONDecodeError, KeyError, TypeError):
            named = None
        if named is not None and named.is_file():
            return named
        files = sorted(folder.glob("*.pt"), key=lambda p: p.stat().st_mtime_ns)
        if files:
            log.warning("%s is damaged or names a missing file; using %s", pointer, files[-1])
            return files[-1]
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
            self._prune(kind, path)
        for tmp in self.directory.glob(".*.tmp"):  # half files a killed writer left (any kind)
            tmp.unlink(missing_ok=True)
        return path

    def _prune(self, kind: Kind, newest: Path) -> None:
        """Keep the last ``keep_last`` of ``kind`` by number, and always ``newest``."""
        old = sorted(self.directory.glob(f"{kind}-*.pt"))[: -self.keep_last]
        for p in (p for p in old if p != newest):
            p.unlink(missing_ok=True)

    def latest(self) -> Path | None:
        pointer = self.directory / "latest.json"
        return (
            self.directory / json.loads(pointer.read_text())["file"] if pointer.is_file() else None
        )
