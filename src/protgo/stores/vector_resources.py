"""The FAISS index over GO vectors and the matrix it searches, always from one source.

``set_backends("cache")`` searches the text-space cache (queries are text vectors, e.g. a
protein's positive terms); ``set_backends("bank")`` searches a copy of the MemoryBank taken at
that moment (queries are projected protein vectors). :meth:`VectorResources.score` and
:meth:`VectorResources.vectors` read the very matrix the index was built from, so mining never
shortlists by vectors that differ from the ones scored. Call ``set_backends`` again (or
:meth:`refresh`) after bank updates to search the new rows.

Index kinds (``mining.index``): ``torch`` (the default, no FAISS: exact matmul + topk, which
beat the flat index of the generic faiss-cpu wheel 2.5-3.5x on a 2-core CPU over all of GO,
see benchmarks/go_side.py), ``exact`` (FAISS flat inner product), ``hnsw`` and ``ivf`` for
vocabularies far larger than GO. If FAISS is missing, or
a build or search raises, exact search on the matrix (torch) takes over and the reason is
logged once.
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import torch

from protgo.config import MiningConfig
from protgo.errors import UserError
from protgo.stores.go_vectors import GoLookupCache, _rows
from protgo.stores.memory_bank import MemoryBank

log = logging.getLogger(__name__)

Source = Literal["cache", "bank"]


class VectorResources:
    """FAISS index + searched matrix over the GO terms of a cache (and its bank)."""

    def __init__(
        self,
        cache: GoLookupCache,
        bank: MemoryBank | None = None,
        cfg: MiningConfig | None = None,
        source: Source | None = None,
    ):
        self.cfg = cfg or MiningConfig()
        self.cache = cache
        self.bank = bank
        self._logged: set[str] = set()
        self.index = None  # the FAISS index, or None when exact torch search is in use
        self.set_backends(source or self.cfg.backend)

    # ---- source -------------------------------------------------------------------------
    def set_backends(self, source: Source) -> None:
        """Rebuild matrix and index from ``source`` ("cache" or "bank")."""
        if source == "bank":
            if self.bank is None:
                raise UserError("mining.backend is 'bank' but no MemoryBank was given")
            self.ids, matrix = self.bank.ids, self.bank.copy()
            self._bank_version = self.bank.version
        elif source == "cache":
            self.ids, matrix = self.cache.ids, self.cache.matrix.clone()
            self._bank_version = None
        else:
            raise UserError(f"mining.backend must be 'cache' or 'bank', got {source!r}")
        self.source: Source = source
        self.matrix = matrix.detach().float().cpu().contiguous()  # (N, D), searched and scored
        self.row = self.cache.cache.row if source == "cache" else self.bank.row
        self.index = self._build_index(self.matrix.numpy())

    def set_bank(self, bank: MemoryBank) -> None:
        """Use a new bank (e.g. after a phase change); rebuilds when the bank is in use."""
        self.bank = bank
        if self.source == "bank":
            self.set_backends("bank")

    def refresh(self) -> None:
        """Rebuild from the current source (picks up bank updates)."""
        self.set_backends(self.source)

    @property
    def stale(self) -> bool:
        """True when the bank was written after the matrix was copied from it."""
        return self.source == "bank" and self.bank.version != self._bank_version

    # ---- index --------------------------------------------------------------------------
    def _log_once(self, key: str, message: str) -> None:
        if key not in self._logged:
            self._logged.add(key)
            log.warning(message)

    def _build_index(self, x: np.ndarray):
        """A FAISS index over ``x`` (N, D), or None (exact torch search) if building fails."""
        kind = self.cfg.index
        if kind == "torch":  # chosen, not a fault: matmul + topk is exact and often faster
            return None
        try:
            import faiss

            faiss.omp_set_num_threads(self.cfg.faiss_threads)
            n, d = x.shape
            if kind == "hnsw":
                index = faiss.IndexHNSWFlat(d, self.cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
                index.hnsw.efConstruction = self.cfg.hnsw_ef_construction
                index.hnsw.efSearch = self.cfg.hnsw_ef_search
            elif kind == "ivf":
                # At least ~39 training points per cell, as FAISS's k-means asks.
                nlist = max(1, min(self.cfg.ivf_nlist, n // 39))
                index = faiss.IndexIVFFlat(
                    faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT
                )
                index.train(x)
                index.nprobe = min(self.cfg.ivf_nprobe, nlist)
            else:
                index = faiss.IndexFlatIP(d)
            index.add(x)
            return index
        except Exception as exc:  # noqa: BLE001 - any FAISS fault has the same remedy
            self._log_once(
                f"build:{kind}:{type(exc).__name__}",
                f"FAISS {kind} index build failed ({exc!r}); exact search on the matrix takes over",
            )
            return None

    # ---- search and scoring -------------------------------------------------------------
    def _as_queries(self, queries) -> torch.Tensor:
        q = torch.as_tensor(queries).detach().float().cpu()
        if q.ndim == 1:
            q = q.unsqueeze(0)
        if q.shape[1] != self.matrix.shape[1]:
            raise ValueError(
                f"query dim {q.shape[1]} != {self.source} vector dim {self.matrix.shape[1]}"
            )
        return q.contiguous()  # (B, D)

    def search(self, queries, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-``k`` rows by inner product: (rows (B, k) int64, scores (B, k) float32).

        Rows index ``self.ids`` / ``self.matrix``; :meth:`search_ids` gives GO ids.
        """
        q = self._as_queries(queries)
        k = min(k, len(self.ids))
        if self.index is not None:
            try:
                scores, rows = self.index.search(q.numpy(), k)
                if (rows < 0).any():  # HNSW/IVF found fewer than k: not a usable answer
                    raise RuntimeError(f"{self.cfg.index} index returned fewer than {k} hits")
                return torch.from_numpy(rows), torch.from_numpy(scores)
            except Exception as exc:  # noqa: BLE001
                self._log_once(
                    f"search:{type(exc).__name__}",
                    f"FAISS search failed ({exc!r}); exact search on the matrix takes over",
                )
        return exact_search(q, self.matrix, k)

    def search_ids(self, queries, k: int) -> tuple[list[list[str]], torch.Tensor]:
        rows, scores = self.search(queries, k)
        return [[self.ids[r] for r in row] for row in rows.tolist()], scores

    def rows(self, go_ids) -> torch.Tensor:
        return torch.from_numpy(_rows(self.row, go_ids, f"{self.source} vectors"))

    def vectors(self, go_ids) -> torch.Tensor:
        """The rows of the searched matrix for ``go_ids`` (B, D): what scoring uses."""
        return self.matrix[self.rows(go_ids)]

    def score(self, queries, go_ids=None) -> torch.Tensor:
        """Inner products (B, G) of queries with ``go_ids`` (all terms when None)."""
        q = self._as_queries(queries)
        m = self.matrix if go_ids is None else self.vectors(go_ids)
        return q @ m.T


def exact_search(
    queries: torch.Tensor, matrix: torch.Tensor, k: int, chunk: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference top-k by inner product: matmul + topk, in query chunks to bound memory."""
    rows, scores = [], []
    for i in range(0, len(queries), chunk):
        s, r = torch.topk(queries[i : i + chunk] @ matrix.T, k, dim=1)  # (b, N) -> (b, k)
        rows.append(r)
        scores.append(s)
    if not rows:
        return torch.zeros(0, k, dtype=torch.long), torch.zeros(0, k)
    return torch.cat(rows), torch.cat(scores)
