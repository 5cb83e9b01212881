"""Proteins as training items: residue vectors from the store and positive GO terms.

:class:`ProteinEmbDataset` maps a protein to its residue vectors (memory-mapped, read only
when the item is asked for) and its positives ``pid2pos[pid] = {go_id: weight}``:

* direct annotations have weight 1;
* with ``max_ancestors > 0`` the positives are expanded up the DAG (is_a, part_of): an
  ancestor ``k`` levels above its nearest annotated term gets weight ``gamma ** k``; at most
  ``max_ancestors`` are added per protein (nearest first, then most specific); ancestors on the
  stoplist (the roots and any term annotated, after propagation, to more than
  ``stoplist_share`` of the training proteins) are never added;
* zero-shot terms (:class:`FewZeroConfig`) are never positives.

:class:`FewShotBatchSampler` draws batches so that few-shot terms make up a target share of the
batch's positive (protein, term) pairs.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from protgo.config import MiningConfig
from protgo.data.ontology import Ontology
from protgo.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FewZeroConfig:
    """Zero-shot terms (never a training positive or candidate), few-shot terms, and the
    target share of few-shot terms among a batch's positive pairs (None: no resampling)."""

    zero: frozenset[str] = frozenset()
    few: frozenset[str] = frozenset()
    few_share: float | None = None

    @classmethod
    def from_term_class(
        cls, term_class: Mapping[str, str], few_share: float | None = None
    ) -> FewZeroConfig:
        """From a dataset's ``terms.tsv`` classes (common / few / zero)."""
        zero = frozenset(t for t, c in term_class.items() if c == "zero")
        few = frozenset(t for t, c in term_class.items() if c == "few")
        return cls(zero, few, few_share)


@dataclass
class Specificity:
    """Propagated annotation counts over training proteins, and what follows from them."""

    counts: dict[str, int]
    n_proteins: int
    stoplist: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def from_annotations(
        cls, ontology: Ontology, annotations: Iterable[Iterable[str]], stoplist_share: float
    ) -> Specificity:
        counts: dict[str, int] = {}
        n = 0
        for terms in annotations:
            n += 1
            for t in ontology.propagate(g for g in terms if g in ontology):
                counts[t] = counts.get(t, 0) + 1
        common = {t for t, c in counts.items() if c > stoplist_share * n}
        return cls(counts, n, frozenset(common | set(ontology.roots)))

    def __call__(self, go_id: str) -> float:
        """Information content -log((count+1)/(n+1)): rare terms are specific (>= 0)."""
        return -math.log((self.counts.get(go_id, 0) + 1) / (self.n_proteins + 1))


def expand_positives(
    direct: Iterable[str], ontology: Ontology, cfg: MiningConfig, spec: Specificity,
    zero: frozenset[str] = frozenset(),
) -> dict[str, float]:  # fmt: skip
    """``{go_id: weight}``: direct terms (1.0) plus up to ``max_ancestors`` ancestors."""
    pos = {g: 1.0 for g in direct if g in ontology and g not in zero}
    if cfg.max_ancestors <= 0 or not pos:
        return pos
    # Breadth-first up the DAG: level = distance to the nearest direct term.
    level: dict[str, int] = {}
    frontier, k = set(pos), 0
    while frontier:
        k += 1
        nxt = {p for t in frontier for p in ontology.parents(t)} - set(pos) - set(level)
        for p in nxt:
            level[p] = k
        frontier = nxt
    cands = [t for t in level if t not in spec.stoplist and t not in zero]
    cands.sort(key=lambda t: (level[t], -spec(t), t))
    for t in cands[: cfg.max_ancestors]:
        pos[t] = cfg.gamma ** level[t]
    return pos


class ProteinEmbDataset:
    """``dataset[i]`` -> ``{"pid", "residues" (L, D) fp16, "positives": {go: weight}}``.

    ``store`` is anything with ``get(pid) -> (L, D) array`` and ``length(pid)`` (the
    :class:`~protgo.stores.residues.ResidueStore`). Proteins without any positive left
    (e.g. annotated only to zero-shot terms) are dropped.
    """

    def __init__(
        self, pids: Sequence[str], annotations: Mapping[str, Iterable[str]], ontology: Ontology,
        store, cfg: MiningConfig, fewzero: FewZeroConfig, spec: Specificity,
    ):  # fmt: skip
        self.ontology, self.store, self.cfg = ontology, store, cfg
        self.fewzero, self.spec = fewzero, spec
        self.pid2pos: dict[str, dict[str, float]] = {}
        for pid in pids:
            pos = expand_positives(annotations.get(pid, ()), ontology, cfg, spec, fewzero.zero)
            if pos:
                self.pid2pos[pid] = pos
        self.pids = [p for p in pids if p in self.pid2pos]
        missing = [p for p in self.pids if p not in store]
        if missing:
            raise UserError(
                f"{len(missing)} proteins (e.g. {missing[0]}) are not in the residue store "
                f"{getattr(store, 'root', store)}: run `protgo embed residues` for the dataset"
            )

    @classmethod
    def from_folder(
        cls, folder, split: str, store, cfg: MiningConfig, fewzero: FewZeroConfig | None = None
    ) -> ProteinEmbDataset:
        """The ``split`` proteins of a :class:`~protgo.data.folder.DatasetFolder`; the
        stoplist and specificities come from its training proteins."""
        fewzero = fewzero or FewZeroConfig.from_term_class(folder.term_class, cfg.few_shot_share)
        ann = folder.annotations
        spec = Specificity.from_annotations(
            folder.ontology, (ann.get(p, ()) for p in folder.ids("train")), cfg.stoplist_share
        )
        return cls(folder.ids(split), ann, folder.ontology, store, cfg, fewzero, spec)

    def __len__(self) -> int:
        return len(self.pids)

    def __getitem__(self, i: int) -> dict:
        pid = self.pids[i]
        return {"pid": pid, "residues": self.store.get(pid), "positives": self.pid2pos[pid]}

    def few_pairs(self, pid: str) -> tuple[int, int]:
        """(few-shot positives, all positives) of ``pid``."""
        pos = self.pid2pos[pid]
        return sum(g in self.fewzero.few for g in pos), len(pos)


def epoch_steps(n_proteins: int, batch_size: int) -> int:
    """Steps in an epoch of ``n_proteins`` training proteins in batches of ``batch_size`` (all
    ranks together): full batches only. The trainer and `curriculum show` both count so."""
    return n_proteins // batch_size


class FewShotBatchSampler:
    """Batches of indices in which few-shot terms make up ``share`` of the positive pairs.

    Proteins carrying a few-shot term form one pool, the others a second. Each batch takes a
    number of proteins from the first pool chosen (with stochastic rounding) so that the
    expected share of few-shot pairs is ``share``: ``q = a*|F| / (a*|F| + |O|)`` proteins from
    the few pool with ``a = share*N_O / (A_F - share*N_F)`` (``A_F`` few pairs and ``N_F`` all
    pairs of the few pool, ``N_O`` pairs of the other pool). A pool is reshuffled each epoch
    and cycled when oversampled. Under DDP the trainer gives each rank its slice of every
    batch (``train.trainer.RankSlices``).
    """

    def __init__(
        self, pairs: Sequence[tuple[int, int]], batch_size: int, share: float | None = None,
        seed: int = 0,
    ):  # fmt: skip
        """``pairs[i]`` = (few-shot positives, all positives) of item i."""
        if batch_size < 1:
            raise UserError(f"train.batch_size must be at least 1, got {batch_size}")
        self.batch_size, self.seed = batch_size, seed
        self.epoch = 0
        pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        is_few = pairs[:, 0] > 0
        self.few_pool = np.flatnonzero(is_few)
        self.other_pool = np.flatnonzero(~is_few)
        self.n_batches = epoch_steps(len(pairs), batch_size)
        self.q = self._few_protein_share(pairs, is_few, share)

    @classmethod
    def for_dataset(cls, dataset: ProteinEmbDataset, batch_size: int, **kw) -> FewShotBatchSampler:
        """With the dataset's few-shot terms and target share (``mining.few_shot_share``)."""
        pairs = [dataset.few_pairs(p) for p in dataset.pids]
        return cls(pairs, batch_size, dataset.fewzero.few_share, **kw)

    def _few_protein_share(self, pairs: np.ndarray, is_few: np.ndarray, share) -> float:
        """Share of each batch's proteins drawn from the few pool."""
        n_f, n_o = len(self.few_pool), len(self.other_pool)
        natural = n_f / max(1, n_f + n_o)
        if share is None or n_f == 0 or n_o == 0:
            return natural
        a_f, p_f, p_o = pairs[is_few, 0].sum(), pairs[is_few, 1].sum(), pairs[~is_few, 1].sum()
        if share >= a_f / p_f:
            log.warning(
                "few-shot share %.2f is above the most reachable (%.2f): batches take only "
                "proteins carrying few-shot terms", share, a_f / p_f,
            )  # fmt: skip
            return 1.0
        alpha = share * p_o / (a_f - share * p_f)
        return alpha * n_f / (alpha * n_f + n_o)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n_batches

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        b = self.batch_size
        n_few = np.floor(self.q * b + rng.random(self.n_batches)).astype(int)  # stochastic round
        few = _cycled(rng.permutation(self.few_pool), int(n_few.sum()))
        other = _cycled(rng.permutation(self.other_pool), int((b - n_few).sum()))
        i = j = 0
        for k in range(self.n_batches):
            batch = [*few[i : i + n_few[k]], *other[j : j + b - n_few[k]]]
            i, j = i + n_few[k], j + b - n_few[k]
            yield [int(x) for x in batch]


def _cycled(pool: np.ndarray, n: int) -> np.ndarray:
    """The first ``n`` items of ``pool`` repeated as often as needed."""
    if n == 0 or len(pool) == 0:
        return pool[:0]
    return np.resize(pool, n)
