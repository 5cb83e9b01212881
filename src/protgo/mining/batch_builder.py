"""DAG-aware negative mining: a collated batch + curriculum parameters -> C candidates each.

For each protein (in the main process, after collation):

1. shortlist the ``shortlist_M`` GO terms nearest its query in :class:`VectorResources`
   (``cache`` backend: by default the normalised mean of its positive terms' text vectors;
   ``bank`` backend: the protein's current projected vector, passed as ``queries``);
2. drop its positives, their ancestors within ``hier_up`` levels and descendants within
   ``hier_down`` levels (is_a, part_of), and every zero-shot term;
3. keep the ``k_hard`` hardest of the rest as the hard pool;
4. fill the ``C - P`` negative slots (P = its capped positives): ``round(hard_frac * (C-P))``
   hard slots, of which ``sibling_share`` go to siblings of its positives when ``siblings`` is
   on (drawn from per-term queues, favouring the siblings the protein's query scores highest,
   i.e. the ones the model confuses now) and the rest to a random subset of the hard pool;
   the easy slots take up to ``random_k`` random terms, then (when ``inbatch_easy``) the other
   proteins' positives, then random terms again until all C slots are full.

Every negative is checked against the protein's full positive set and mask before the batch
is returned. See :mod:`protgo.mining.collator` for the batch keys.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from protgo.config import MiningConfig
from protgo.data.ontology import Ontology
from protgo.mining.collator import (
    HARD,
    INBATCH,
    POSITIVE,
    RANDOM,
    SIBLING,
    SOURCES,
    index_candidates,
)
from protgo.mining.curriculum import CurriculumParams


class SiblingQueues:
    """Per GO term, up to ``size`` siblings (rows of the searched matrix), nearest first in
    that matrix, built lazily; sampling weights come from the current query scores."""

    def __init__(self, ontology: Ontology, resources, size: int):
        self.ontology, self.resources, self.size = ontology, resources, size
        self._queues: dict[str, np.ndarray] = {}

    def get(self, go_id: str) -> np.ndarray:
        q = self._queues.get(go_id)
        if q is None:
            sib = [s for s in self.ontology.siblings(go_id) if s in self.resources.row]
            rows = np.array([self.resources.row[s] for s in sib], dtype=np.int64)
            if len(rows) > self.size:  # keep the siblings nearest the term itself
                m = _as_numpy(self.resources.matrix)
                near = m[rows] @ m[self.resources.row[go_id]]  # (S,)
                rows = rows[np.argsort(-near, kind="stable")[: self.size]]
            self._queues[go_id] = q = rows
        return q

    def clear(self) -> None:
        """Forget the queues (after the searched matrix changed)."""
        self._queues.clear()


class BatchBuilder:
    """Adds mined negatives to collated batches; see the module docstring."""

    def __init__(
        self, resources, ontology: Ontology, cfg: MiningConfig,
        zero: frozenset[str] = frozenset(), seed: int = 0,
    ):  # fmt: skip
        self.resources, self.ontology, self.cfg = resources, ontology, cfg
        self.C = cfg.n_candidates
        if cfg.max_positives >= self.C:
            raise ValueError("mining.max_positives must be below mining.n_candidates")
        self.rng = np.random.default_rng(seed)
        self.zero_rows = frozenset(resources.row[g] for g in zero if g in resources.row)
        n = len(resources.ids)
        allowed = np.ones(n, dtype=bool)
        allowed[list(self.zero_rows)] = False
        self.allowed = allowed  # (N,) rows that may ever be a candidate
        self.allowed_rows = np.flatnonzero(allowed)
        self.siblings = SiblingQueues(ontology, resources, cfg.sibling_queue_size)
        self._mask_cache: dict[tuple[str, int, int], np.ndarray] = {}

    def set_resources(self, resources) -> None:
        """Use rebuilt resources (phase change, bank refresh); ids must not change."""
        if list(resources.ids) != list(self.resources.ids):
            raise ValueError("new VectorResources cover other GO ids; make a new BatchBuilder")
        self.resources = resources
        self.siblings = SiblingQueues(self.ontology, resources, self.cfg.sibling_queue_size)

    # ---- masks --------------------------------------------------------------------------
    def mask_rows(self, go_id: str, up: int, down: int) -> np.ndarray:
        """Rows (int64) of ``go_id`` and its relatives within ``up``/``down`` levels."""
        key = (go_id, up, down)
        hit = self._mask_cache.get(key)
        if hit is None:
            rel = {go_id}
            if go_id in self.ontology:
                rel |= self.ontology.ancestors(go_id, radius=up)
                rel |= self.ontology.descendants(go_id, radius=down)
            row = self.resources.row
            rows = [row[g] for g in rel if g in row]
            hit = self._mask_cache[key] = np.array(rows, dtype=np.int64)
        return hit

    def forbidden(self, positives, p: CurriculumParams) -> np.ndarray:
        """(N,) bool: rows no negative of this protein may take, i.e. its positives and their
        relatives within the mask radii (zero-shot rows are never allowed anywhere)."""
        banned = np.zeros(len(self.allowed), dtype=bool)
        for g in positives:
            banned[self.mask_rows(g, p.hier_up, p.hier_down)] = True
        return banned

    # ---- queries ------------------------------------------------------------------------
    def default_queries(self, batch: dict) -> torch.Tensor:
        """(B, D) normalised mean of each protein's capped positives' searched vectors."""
        res = self.resources
        ids = [[g for g in row if g in res.row] for row in batch["pos_ids"]]
        flat = [g for row in ids for g in row]
        vecs = _as_numpy(res.matrix)[[res.row[g] for g in flat]]  # (sum P, D), by protein
        q = np.zeros((len(ids), vecs.shape[1]), dtype=np.float32)
        starts = np.cumsum([0] + [len(r) for r in ids[:-1]])
        has = np.array([len(r) > 0 for r in ids], dtype=bool)
        if has.any():
            q[has] = np.add.reduceat(vecs, starts[has], axis=0)
        return torch.nn.functional.normalize(torch.from_numpy(q), dim=1)

    # ---- building -----------------------------------------------------------------------
    def build(self, batch: dict, params: CurriculumParams, queries=None) -> dict:
        """Return ``batch`` with C candidates per protein (keys in the collator docstring).

        ``queries`` (B, D): one search vector per protein in the space of the resources'
        current source; None uses :meth:`default_queries` (cache backend only).
        """
        batch = self._in_vocabulary(batch)
        if queries is None:
            if self.resources.source != "cache":
                raise ValueError("the bank backend needs the proteins' projected vectors")
            queries = self.default_queries(batch)
        queries = torch.as_tensor(queries).detach().float().cpu()  # (B, D)
        rows, _ = self.resources.search(queries, max(params.shortlist_M, 1))  # (B, M)
        rows, queries = rows.numpy(), queries.numpy()
        row, ids = self.resources.row, self.resources.ids
        batch_pos = np.unique([row[g] for pos in batch["positives"] for g in pos]).astype(np.int64)
        cands = []
        for b in range(len(batch["pids"])):
            banned = self.forbidden(batch["positives"][b], params)  # (N,) bool
            negs = self._negatives(
                rows[b], banned, batch_pos if params.inbatch_easy else None,
                batch["pos_ids"][b], queries[b], params, self.C - len(batch["pos_ids"][b]),
            )  # fmt: skip
            self._check(negs, banned, b)
            cands.append([(g, POSITIVE) for g in batch["pos_ids"][b]] +
                         [(ids[r], s) for r, s in negs])  # fmt: skip
        out = dict(batch)
        out.update(index_candidates(cands, batch["positives"], self.C))
        out["go_rows"] = self.resources.rows(out["go_ids"])
        out["params"] = params
        out["stats"] = source_counts(out["cand_source"])
        return out

    def _in_vocabulary(self, batch: dict) -> dict:
        """Drop positives the resources do not hold (other aspects): they cannot be scored."""
        row = self.resources.row
        if all(g in row for pos in batch["positives"] for g in pos):
            return batch
        out = dict(batch)
        out["positives"] = [{g: w for g, w in p.items() if g in row} for p in batch["positives"]]
        out["pos_ids"] = [[g for g in ids if g in row] for ids in batch["pos_ids"]]
        return out

    def _negatives(
        self, shortlist: np.ndarray, banned: np.ndarray, inbatch: np.ndarray | None,
        pos_ids: Sequence[str], query: np.ndarray, p: CurriculumParams, slots: int,
    ) -> list[tuple[int, int]]:  # fmt: skip
        """[(row, source)] of length ``slots`` (fewer only if the vocabulary runs out)."""
        free = self.allowed & ~banned  # (N,) rows still open to this protein; taken ones close
        out: list[tuple[int, int]] = []

        def add(rs: np.ndarray, source: int, limit: int) -> None:
            rs = rs[(rs >= 0) & free[np.clip(rs, 0, None)]]
            _, first = np.unique(rs, return_index=True)
            rs = rs[np.sort(first)][: max(limit - len(out), 0)]  # first occurrences, in order
            free[rs] = False
            out.extend((int(r), source) for r in rs)

        n_hard = min(round(p.hard_frac * slots), slots)
        if p.siblings and n_hard > 0:
            n_sib = round(self.cfg.sibling_share * n_hard)
            add(self._sample_siblings(pos_ids, free, query, n_sib), SIBLING, n_sib)
        pool = shortlist[(shortlist >= 0) & free[np.clip(shortlist, 0, None)]][: p.k_hard]
        add(self.rng.permutation(pool), HARD, n_hard)
        n_random = min(slots, len(out) + max(p.random_k, 0))
        for _ in range(4):  # draws with replacement; repeats and closed rows are skipped
            add(self._random(2 * (n_random - len(out)) + 8), RANDOM, n_random)
        if inbatch is not None:
            add(self.rng.permutation(inbatch), INBATCH, slots)
        for _ in range(4):
            add(self._random(2 * (slots - len(out)) + 8), RANDOM, slots)
        if len(out) < slots:  # small vocabularies or huge masks: sweep every row once
            add(self.rng.permutation(self.allowed_rows), RANDOM, slots)
        return out

    def _random(self, n: int) -> np.ndarray:
        return self.allowed_rows[self.rng.integers(0, len(self.allowed_rows), size=max(n, 0))]

    def _sample_siblings(self, pos_ids, free: np.ndarray, query: np.ndarray, n: int):
        """Up to ``n`` open siblings of the positives, sampled by softmax(score / temp)."""
        queues = [self.siblings.get(g) for g in pos_ids]
        rows = np.unique(np.concatenate(queues)) if queues else np.zeros(0, dtype=np.int64)
        rows = rows[free[rows]]
        if n <= 0 or len(rows) == 0:
            return np.zeros(0, dtype=np.int64)
        if len(rows) > self.cfg.sibling_queue_size:  # bound the scoring work per protein
            rows = self.rng.choice(rows, self.cfg.sibling_queue_size, replace=False)
        scores = _as_numpy(self.resources.matrix)[rows] @ query  # (S,) current scores
        z = (scores.astype(np.float64) - scores.max()) / self.cfg.sibling_temp
        w = np.exp(z)  # softmax numerator
        k = min(n, int((w > 0).sum()))
        return self.rng.choice(rows, size=k, replace=False, p=w / w.sum())

    def _check(self, negs: list[tuple[int, int]], banned: np.ndarray, b: int) -> None:
        """The invariant the loss relies on; a violation is a bug here, never user input."""
        r = np.array([r for r, _ in negs], dtype=np.int64)
        if banned[r].any() or not self.allowed[r].all() or len(np.unique(r)) != len(r):
            raise RuntimeError(f"mining produced a forbidden or repeated negative for protein {b}")


def _as_numpy(matrix) -> np.ndarray:
    """The searched (N, D) matrix as numpy (a view of the CPU tensor). Per-protein work is
    small, and numpy avoids torch's intra-op thread hand-offs, which cost milliseconds per
    call on a busy CPU."""
    return matrix.numpy() if isinstance(matrix, torch.Tensor) else np.asarray(matrix)


def source_counts(source: torch.Tensor) -> dict[str, int]:

    return {name: int((source == code).sum()) for code, name in SOURCES.items()}
