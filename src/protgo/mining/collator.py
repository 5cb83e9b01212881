"""Collation of protein items into a batch, and the batch's layout (one place for all keys).

:class:`ContrastiveEmbCollator` runs in DataLoader workers: it pads residues and indexes the
positives. :class:`~protgo.mining.batch_builder.BatchBuilder` runs afterwards in the main
process (it needs the live FAISS index / memory bank) and adds the mined negatives.

Batch keys (B proteins, L longest protein, D residue dim, P most positives of a protein,
C candidates per protein, U unique GO ids of the batch):

from the collator
    ``pids``         list[str] (B)
    ``residues``     (B, L, D) float16 as stored (half the copy and host->device bytes; cast
                     on the device), or the collator's ``dtype``; zero where padded
    ``mask``         (B, L) bool, True on real residues
    ``lengths``      (B,) int64
    ``positives``    list[dict[str, float]] (B): every positive with its weight (after the
                     zero-shot mask, before the cap); what negatives are checked against
    ``pos_ids``      list[list[str]] (B): the positives used as candidates, at most
                     ``mining.max_positives`` per protein (sampled, weighted by specificity,
                     when a protein has more; the rest are still never negatives)
    ``go_ids``       list[str] (U): unique GO ids of the batch
    ``go_pos``       (U, B) bool: GO->protein direction, go_pos[u, b] is True when go_ids[u]
                     is a positive of protein b (any positive, capped or not)
    ``go_weight``    (U, B) float32: that positive's weight (0 elsewhere)

from the collator (positives only) and replaced by the BatchBuilder (positives + negatives)
    ``cand_idx``     (B, C) int64: index into ``go_ids``, -1 where padded
    ``cand_pos``     (B, C) bool: candidate is a positive of the protein
    ``cand_weight``  (B, C) float32: positive weight, 0 for negatives and padding
    ``cand_source``  (B, C) int8: :data:`SOURCES` code (positive / hard / random / inbatch /
                     sibling / pad)
    ``cand_valid``   (B, C) bool: not padding. The BatchBuilder fills all C slots unless the
                     vocabulary is too small (tiny test ontologies)

from the BatchBuilder
    ``go_rows``      (U,) int64: rows of ``go_ids`` in the searched matrix / GO vector cache
    ``params``       the curriculum parameters the batch was mined with
    ``stats``        {source name: count} for logging
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from protgo.config import MiningConfig

PAD, POSITIVE, HARD, RANDOM, INBATCH, SIBLING = -1, 0, 1, 2, 3, 4
SOURCES = {PAD: "pad", POSITIVE: "positive", HARD: "hard", RANDOM: "random",
           INBATCH: "inbatch", SIBLING: "sibling"}  # fmt: skip


def cap_positives(
    pos: Mapping[str, float], k: int, rng: np.random.Generator, specificity=None
) -> list[str]:
    """At most ``k`` of ``pos``: all if they fit, else sampled without replacement with
    probability proportional to weight * (specificity + 1), so specific direct terms win."""
    ids = sorted(pos)
    if len(ids) <= k:
        return ids
    spec = np.array([specificity(g) if specificity else 0.0 for g in ids])
    w = np.array([pos[g] for g in ids]) * (spec + 1.0)
    pick = rng.choice(len(ids), size=k, replace=False, p=w / w.sum())
    return [ids[i] for i in sorted(pick)]


def index_candidates(
    cands: Sequence[Sequence[tuple[str, int]]], positives: Sequence[Mapping[str, float]], C: int
) -> dict:
    """Per-protein candidate lists [(go_id, source), ...] -> the batch tensors above."""
    B = len(cands)
    go_ids = list(dict.fromkeys([g for row in cands for g, _ in row] +
                                [g for pos in positives for g in sorted(pos)]))  # fmt: skip
    col = {g: u for u, g in enumerate(go_ids)}
    idx = np.full((B, C), -1, dtype=np.int64)
    source = np.full((B, C), PAD, dtype=np.int8)
    weight = np.zeros((B, C), dtype=np.float32)
    go_weight = np.zeros((len(go_ids), B), dtype=np.float32)
    for b, row in enumerate(cands):
        if len(row) > C:
            raise ValueError(f"protein {b} has {len(row)} candidates, more than C={C}")
        idx[b, : len(row)] = [col[g] for g, _ in row]
        source[b, : len(row)] = [s for _, s in row]
        weight[b, : len(row)] = [positives[b].get(g, 0.0) if s == POSITIVE else 0.0
                                 for g, s in row]  # fmt: skip
        go_weight[[col[g] for g in positives[b]], b] = list(positives[b].values())
    idx, source = torch.from_numpy(idx), torch.from_numpy(source)
    go_pos = torch.zeros(len(go_ids), B, dtype=torch.bool)
    for b, pos in enumerate(positives):
        go_pos[[col[g] for g in pos], b] = True
    weight, go_weight = torch.from_numpy(weight), torch.from_numpy(go_weight)
    return {
        "go_ids": go_ids, "go_pos": go_pos, "go_weight": go_weight, "cand_idx": idx,
        "cand_pos": source == POSITIVE, "cand_weight": weight, "cand_source": source,
        "cand_valid": source != PAD,
    }  # fmt: skip


class ContrastiveEmbCollator:
    """Callable for ``DataLoader(collate_fn=...)``: items of
    :class:`~protgo.mining.dataset.ProteinEmbDataset` -> the collator keys above.

    Candidates here are the positives only (C = ``max_positives``); the BatchBuilder widens
    them to ``n_candidates`` with negatives. ``zero`` terms are dropped (a second guard after
    the dataset). Long proteins are cropped to a random ``max_residues`` window when set.
    """

    def __init__(
        self, cfg: MiningConfig, zero: frozenset[str] = frozenset(), specificity=None,
        seed: int = 0, dtype: torch.dtype = torch.float16,
    ):  # fmt: skip
        self.cfg, self.zero, self.specificity, self.dtype = cfg, zero, specificity, dtype
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self._worker: int | None = None

    def _reseed_in_worker(self) -> None:
        # Forked DataLoader workers inherit one random state; give each its own stream.
        info = torch.utils.data.get_worker_info()
        if info is not None and info.id != self._worker:
            self._worker = info.id
            self.rng = np.random.default_rng([self.seed, info.id, info.seed % 2**32])

    def __call__(self, items: Sequence[dict]) -> dict:
        self._reseed_in_worker()
        residues = [self._crop(np.asarray(it["residues"])) for it in items]
        B, L = len(items), max((len(r) for r in residues), default=0)
        D = residues[0].shape[1] if items else 0
        # Filled in numpy (one single-threaded copy per protein), then shared with torch.
        x = np.zeros((B, L, D), dtype=torch.empty(0, dtype=self.dtype).numpy().dtype)
        mask = np.zeros((B, L), dtype=bool)
        for b, r in enumerate(residues):
            x[b, : len(r)] = r  # (L_b, D), cast when dtype differs
            mask[b, : len(r)] = True
        x, mask = torch.from_numpy(x), torch.from_numpy(mask)  # (B, L, D), (B, L)
        positives = [
            {g: w for g, w in it["positives"].items() if g not in self.zero} for it in items
        ]
        k = self.cfg.max_positives
        pos_ids = [cap_positives(p, k, self.rng, self.specificity) for p in positives]
        cands = [[(g, POSITIVE) for g in row] for row in pos_ids]
        batch = {
            "pids": [it["pid"] for it in items], "residues": x, "mask": mask,
            "lengths": torch.tensor([len(r) for r in residues], dtype=torch.long),
            "positives": positives, "pos_ids": pos_ids,
        }  # fmt: skip
        batch.update(index_candidates(cands, positives, k))
        return batch

    def _crop(self, r: np.ndarray) -> np.ndarray:
        """A random window of ``max_residues`` rows of a longer (L, D) protein."""
        m = self.cfg.max_residues
        if m is None or len(r) <= m:
            return r
        start = int(self.rng.integers(0, len(r) - m + 1))
        return r[start : start + m]
