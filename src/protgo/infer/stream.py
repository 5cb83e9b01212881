"""Chunked output that survives an interruption, for ``protgo predict`` at proteome scale.

Each finished chunk of proteins is written into ``<out>/partial/chunk-NNNNNN/`` through a
staging folder renamed into place whole, so a chunk folder that exists is complete and one a
kill interrupted never appears. ``partial/run.json`` holds the run's key (a hash of the
sequences, the model and every option that changes the output). The same command run again
finds the finished chunks of the same key and goes on from the first missing one; a partial
run of another key is refused, or discarded with ``--overwrite``. At the end the final files
are assembled from the chunks, one chunk in memory at a time, and ``partial/`` is removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path

from protgo.errors import UserError
from protgo.io import staged_dir, write_json

PARTIAL = "partial"
STATE = "run.json"
INFO = "chunk.json"


def run_key(parts: Mapping) -> str:
    """A stable hash of ``parts`` (JSON-able): what makes two runs' chunks interchangeable."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class ChunkedRun:
    """The finished chunks of one run under ``<out>/partial`` (see the module docs)."""

    def __init__(self, root: Path, n_chunks: int):
        self.root = root
        self.n_chunks = n_chunks

    @classmethod
    def open(cls, out: Path, key: str, n_chunks: int, overwrite: bool) -> ChunkedRun:
        """Resume the partial run of ``key`` in ``out``, or start one."""
        root = Path(out) / PARTIAL
        state = root / STATE
        if root.exists():
            try:
                old = json.loads(state.read_text()).get("key")
            except (OSError, json.JSONDecodeError, AttributeError):
                old = None
            if old != key and not overwrite:
                raise UserError(
                    f"--out {out} holds an unfinished run of other sequences or options "
                    f"({root}): run the same command to finish it, --overwrite to discard it, "
                    "or give a new folder"
                )
            if old != key:
                shutil.rmtree(root)
        root.mkdir(parents=True, exist_ok=True)
        for left in root.glob(".chunk-*"):  # staging a killed run left behind (staged_dir)
            shutil.rmtree(left, ignore_errors=True)
        if not state.is_file():
            write_json(state, {"key": key, "chunks": n_chunks}, indent=1)
        return cls(root, n_chunks)

    def _dir(self, k: int) -> Path:
        return self.root / f"chunk-{k:06d}"

    def done(self, k: int) -> bool:
        return (self._dir(k) / INFO).is_file()

    def finished(self) -> list[int]:
        return [k for k in range(self.n_chunks) if self.done(k)]

    def write(self, k: int, files: Mapping[str, str], info: dict) -> None:
        """Chunk ``k``'s ``files`` and ``info``, renamed into place together."""
        with staged_dir(self._dir(k)) as stage:
            for name, text in files.items():
                (stage / name).write_text(text)
            (stage / INFO).write_text(json.dumps(info))
            for f in stage.iterdir():
                with f.open("rb") as fh:
                    os.fsync(fh.fileno())

    def info(self, k: int) -> dict:
        return json.loads((self._dir(k) / INFO).read_text())

    def pieces(self, name: str) -> Iterator[str]:
        """File ``name`` of every chunk in order, one chunk at a time."""
        for k in range(self.n_chunks):
            yield (self._dir(k) / name).read_text()

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
