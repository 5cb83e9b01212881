"""The GO vectors in the aligned space: :class:`MemoryBank`, the text-space cache mirrored
through the model's GO head (possibly another dimension), updated with momentum in training."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch

from protgo.errors import UserError
from protgo.stores.go_vectors import MANIFEST_VERSION, GoLookupCache, GoVectorCache, _row_map, _rows

Projection = Callable[[torch.Tensor], torch.Tensor]  # (B, D_text) -> (B, D_aligned)


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.float(), dim=-1)


class MemoryBank:
    """The GO vectors in the aligned space: row i is the model's current vector for ``ids[i]``.

    Filled by projecting every cache row (:meth:`from_cache`), then updated with momentum from
    each batch's GO vectors (:meth:`update`: ``row <- normalise(m * row + (1 - m) * new)``) and
    partly re-projected between epochs (:meth:`refresh`). Rows stay unit length.

    Thread-safety model: one lock guards every write (``update``, ``refresh``,
    ``load_state_dict``) and every copy (``copy``, ``snapshot``), so a copy never holds half an
    update. ``matrix`` is the live tensor, for the training process only. DataLoader workers
    are other processes: they get a pickled copy (the lock is dropped and made anew), taken
    when the workers start, and never see later updates; mining that must see the current
    bank happens in the main process through ``VectorResources.set_backends("bank")``.
    """

    def __init__(
        self, ids: Sequence[str], vectors: torch.Tensor, momentum: float = 0.9,
        aspects: Sequence[str] | None = None,
    ):  # fmt: skip
        if not 0.0 <= momentum < 1.0:
            raise UserError(f"phases.bank_momentum must be in [0, 1), got {momentum}")
        if len(ids) != len(vectors):
            raise ValueError(f"{len(ids)} ids but {len(vectors)} vectors")
        self.ids = list(ids)
        self.aspects = list(aspects) if aspects is not None else [""] * len(self.ids)
        self.row = _row_map(self.ids)
        self.matrix = _normalize(vectors.detach()).contiguous().clone()  # (N, D')
        self.momentum = momentum
        self.version = 0  # bumped on every write; VectorResources uses it to spot staleness
        self._lock = threading.RLock()

    @classmethod
    def from_cache(
        cls, cache: GoLookupCache, project: Projection, momentum: float = 0.9,
        batch_size: int = 4096,
    ) -> MemoryBank:  # fmt: skip
        """Project every cache row through ``project`` (e.g. the model's GO head)."""
        with torch.no_grad():
            parts = [
                project(cache.matrix[i : i + batch_size]) for i in range(0, len(cache), batch_size)
            ]
        return cls(cache.ids, torch.cat(parts), momentum, cache.cache.aspects)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])

    def rows(self, ids: Iterable[str]) -> torch.Tensor:
        return torch.from_numpy(_rows(self.row, ids, "memory bank")).to(self.matrix.device)

    def vectors(self, ids: Iterable[str]) -> torch.Tensor:
        with self._lock:
            return self.matrix[self.rows(ids)].clone()  # (B, D')

    def update(self, ids: Sequence[str], new: torch.Tensor) -> None:
        """Momentum update of the rows of ``ids`` with ``new`` (B, D'); duplicates averaged."""
        rows = self.rows(ids)
        new = _normalize(new.detach().to(self.matrix.device))
        uniq, inv = torch.unique(rows, return_inverse=True)
        summed = torch.zeros(len(uniq), self.dim, device=new.device).index_add_(0, inv, new)
        # Renormalised mean, so a repeated id takes the same step as a single one.
        mean = _normalize(summed)  # (U, D')
        with self._lock:
            mixed = self.momentum * self.matrix[uniq] + (1 - self.momentum) * mean
            self.matrix[uniq] = _normalize(mixed)
            self.version += 1

    def refresh(
        self, ids: Iterable[str], cache: GoLookupCache, project: Projection,
        batch_size: int = 4096,
    ) -> int:  # fmt: skip
        """Replace the rows of ``ids`` with ``project(cache vectors)`` (no momentum)."""
        ids = list(dict.fromkeys(ids))
        rows = self.rows(ids)
        with torch.no_grad():
            parts = [
                project(cache.vectors(ids[i : i + batch_size]))
                for i in range(0, len(ids), batch_size)
            ]
        if not parts:
            return 0
        fresh = _normalize(torch.cat(parts).to(self.matrix.device))
        with self._lock:
            self.matrix[rows] = fresh
            self.version += 1
        return len(ids)

    def copy(self) -> torch.Tensor:
        with self._lock:
            return self.matrix.clone()

    def snapshot(self, directory: Path, manifest: dict | None = None) -> GoVectorCache:
        """Write the bank as a GO vector cache file (source "bank") and return it."""
        with self._lock:
            vecs, version = self.matrix.detach().cpu().numpy().copy(), self.version
        meta = {"version": MANIFEST_VERSION, "source": "bank", "bank_version": version}
        cache = GoVectorCache(self.ids, self.aspects, vecs, {**meta, **(manifest or {})})
        cache.save(directory)
        return cache

    def state_dict(self) -> dict:
        with self._lock:
            return {"ids": list(self.ids), "matrix": self.matrix.clone(), "version": self.version}

    def load_state_dict(self, state: dict) -> None:
        if list(state["ids"]) != self.ids:
            raise UserError("memory bank in the checkpoint covers other GO ids than this run's")
        with self._lock:
            self.matrix = state["matrix"].to(self.matrix.device).clone()
            self.version = state["version"]

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["matrix"] = self.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()
