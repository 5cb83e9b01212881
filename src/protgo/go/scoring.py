"""How protgo scores GO terms, in one place: which terms are scored, how model outputs become
scores, how scores are made DAG-consistent, how homology transfers labels, and which number
picks the best checkpoint. Training validation, ``predict``, the baselines and the homology
teacher all call these functions, so a score means the same everywhere.

* **Scorable terms**: terms of the ontology with an ``is_a`` or ``part_of`` parent. A root
  (no such parent; the three GO roots in a full ontology) is carried by every protein of its
  aspect, so it is never predicted, reported or counted (cafaeval leaves it out too).
* **Score transform**: ``sigmoid(logit)`` of the model's term logits, or ``(cos + 1) / 2`` for a
  model without a term bias (plain cosines). Calibration (``predict --calibrate``) replaces it
  with a fitted ``sigmoid(a * logit + b)`` per aspect.
* **Propagation**: a parent scores at least its best descendant over ``is_a`` / ``part_of``
  (:meth:`protgo.data.ontology.Ontology.propagate_matrix`).
* **Terms without a training positive** (held out, or never annotated):
  ``P(term) = P(parents) x sigmoid((logit(own) + logit(neighbours)) / 2)``, capped at its
  least likely parent, where ``P(parents)`` is the geometric mean of its direct parents'
  scores (a protein that carries the term carries every parent), ``own`` the term's score from
  its text and ``neighbours`` the text-similarity-weighted mean score of the
  :data:`NEIGHBOURS` trained terms of its aspect with the nearest text vectors
  (:class:`TextNeighbours`). A term is never more likely than any of its parents (as ProtBoost
  scored its untrained terms), its text says which of the parents' proteins carry it, and
  the trained terms that read like it lend it what they learnt (:func:`under_parents`).
* **Homology transfer** (DeepGOPlus' DiamondScore): ``score(q, t) = sum_h bits_h [t in
  ann(h)] / sum_h bits_h`` over the hits h of q, annotations propagated.
* **Model selection**: the mean over aspects of the per-aspect Fmax, as every reported table
  is per aspect.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import numpy as np

from protgo.data.ontology import Ontology

ScoreInput = Literal["logit", "cos"]
# Terms without a training positive borrow from the trained terms with the nearest text: how
# many, and the softmax temperature over their cosines (chosen on human-exp's valid split;
# docs/results.md).
NEIGHBOURS = 5
NEIGHBOUR_TEMP = 0.05


def is_scorable(ontology: Ontology, go_id: str) -> bool:
    return go_id in ontology and not ontology.is_root(go_id)


def scorable_columns(ontology: Ontology, ids: Sequence[str]) -> list[int]:
    """Positions in ``ids`` of the terms that are scored (in the ontology, not a root)."""
    return [j for j, g in enumerate(ids) if is_scorable(ontology, g)]


def to_scores(values: np.ndarray, kind: ScoreInput) -> np.ndarray:
    """Term logits (``kind="logit"``) or cosines (``"cos"``) -> scores in [0, 1]."""
    values = np.asarray(values, dtype=np.float64)
    if kind == "cos":
        return (values + 1.0) / 2.0
    return 1.0 / (1.0 + np.exp(-values))


def propagate(scores: np.ndarray, ids: list[str], ontology: Ontology) -> np.ndarray:
    """(N, T) scores over ``ids`` made DAG-consistent (a parent >= its best child)."""
    return ontology.propagate_matrix(scores, ids)


class ParentIndex:
    """The direct ``is_a`` / ``part_of`` parents of chosen columns of a term list, for a
    vectorised lookup of their best, least or joint score. Parents outside the list (such as
    a root) are skipped; ``cols`` keeps only the chosen columns with at least one parent
    inside it."""

    def __init__(self, ids: Sequence[str], ontology: Ontology, cols: Iterable[int] | None = None):
        col = {t: j for j, t in enumerate(ids)}
        keep, flat, starts = [], [], []
        for j in range(len(ids)) if cols is None else cols:
            idx = [col[p] for p in ontology.parents(ids[j]) if p in col]
            if idx:
                keep.append(j)
                starts.append(len(flat))
                flat += idx
        self.cols = np.asarray(keep, dtype=np.int64)
        self._flat, self._starts = np.asarray(flat, np.int64), np.asarray(starts, np.int64)

    def best(self, scores: np.ndarray) -> np.ndarray:
        """(N, T) scores -> (N, len(cols)): each kept column's best parent score."""
        if not len(self.cols):
            return np.zeros((scores.shape[0], 0), scores.dtype)
        return np.maximum.reduceat(scores[:, self._flat], self._starts, axis=1)

    def full(
        self, scores: np.ndarray, how: Literal["best", "least", "joint"] = "best"
    ) -> np.ndarray:  # fmt: skip
        """(N, T) scores -> (N, T): each kept column's parent score by ``how`` (0 elsewhere)."""
        out = np.zeros_like(scores)
        out[:, self.cols] = getattr(self, how)(scores)
        return out

    def least(self, scores: np.ndarray) -> np.ndarray:
        """(N, T) scores -> (N, len(cols)): each kept column's least parent score."""
        if not len(self.cols):
            return np.zeros((scores.shape[0], 0), scores.dtype)
        return np.minimum.reduceat(scores[:, self._flat], self._starts, axis=1)

    def joint(self, scores: np.ndarray) -> np.ndarray:
        """(N, T) scores -> (N, len(cols)): the geometric mean of each kept column's parent
        scores, a soft "all of its parents" (between the least and the best)."""
        if not len(self.cols):
            return np.zeros((scores.shape[0], 0), scores.dtype)
        logs = np.log(np.clip(scores[:, self._flat], 1e-12, None))
        counts = np.diff(np.append(self._starts, len(self._flat)))
        return np.exp(np.add.reduceat(logs, self._starts, axis=1) / counts)


def parent_scores(
    scores: np.ndarray, ids: Sequence[str], ontology: Ontology,
    how: Literal["best", "least", "joint"] = "best",
) -> np.ndarray:  # fmt: skip
    """(N, T) propagated scores -> (N, T): each term's best direct parent's score, or its
    least, or their joint score (:meth:`ParentIndex.joint`); 0 for a term without a parent
    in ``ids``."""
    return ParentIndex(ids, ontology).full(scores, how)


def zero_shot_scores(
    own: np.ndarray, neighbours: np.ndarray, parents: np.ndarray, cap: np.ndarray | None = None
) -> np.ndarray:  # fmt: skip
    """``parents * sigmoid((logit(own) + logit(neighbours)) / 2)``, all (N, T) scores in
    [0, 1], capped at ``cap`` (the least parent's score) where given: never above either."""
    z = (_logit(own) + _logit(neighbours)) / 2.0
    out = parents / (1.0 + np.exp(-z))
    return out if cap is None else np.minimum(out, cap)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1.0 - 1e-6)
    return np.log(p / (1.0 - p))


class TextNeighbours:
    """For chosen columns of a term list, the ``k`` donor columns with the nearest text vectors
    (cosine; a column is never its own donor) and their weights, ``softmax(cosine / temp)``,
    for a vectorised weighted mean of the donors' scores (:meth:`mean`)."""

    def __init__(self, text: np.ndarray, cols: Sequence[int], donors: Sequence[int],
                 k: int = NEIGHBOURS, temp: float = NEIGHBOUR_TEMP, chunk: int = 2048):  # fmt: skip
        self.cols, donors = np.asarray(cols, np.int64), np.asarray(donors, np.int64)
        k = min(k, len(donors))
        self._donors = np.zeros((len(self.cols), k), np.int64)
        self._weights = np.zeros((len(self.cols), k))
        if not k:
            return
        unit = text / np.linalg.norm(text, axis=1, keepdims=True).clip(1e-12)
        unit = unit.astype(np.float32)
        pool = unit[donors]
        for i in range(0, len(self.cols), chunk):  # (chunk, D) similarities at a time
            part = self.cols[i : i + chunk]
            sim = unit[part] @ pool.T
            sim[part[:, None] == donors[None, :]] = -np.inf  # never a term's own score
            top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
            near = np.take_along_axis(sim, top, axis=1)
            with np.errstate(invalid="ignore"):
                w = np.exp((near - near.max(axis=1, keepdims=True)) / temp)
            w[~np.isfinite(near)] = 0.0  # a term that is its own only donor: no neighbour
            self._donors[i : i + len(part)] = donors[top]
            total = w.sum(axis=1, keepdims=True)
            self._weights[i : i + len(part)] = np.divide(w, total, where=total > 0,
                                                         out=np.zeros_like(w))  # fmt: skip

    def mean(self, scores: np.ndarray) -> np.ndarray:
        """(N, T) scores -> (N, len(cols)): each column's weighted mean of its donors' scores
        (0 where there is no donor)."""
        out = np.zeros((scores.shape[0], len(self.cols)), scores.dtype)
        for j in range(self._donors.shape[1]):  # (N, C) at a time, not (N, C, k)
            out += scores[:, self._donors[:, j]] * self._weights[:, j]
        return out


def under_parents(
    scores: np.ndarray, own: np.ndarray, ids: list[str], ontology: Ontology,
    unseen: Mapping[str, tuple[ParentIndex, TextNeighbours]],
) -> np.ndarray:  # fmt: skip
    """Propagated (N, T) ``scores`` with each unseen term's column (per aspect: its
    :class:`ParentIndex` and :class:`TextNeighbours` over the same columns) replaced by
    :func:`zero_shot_scores` of its ``own`` (unpropagated) score, its neighbours' and its
    parents' (their joint score, capped at the least), then propagated again."""
    out = scores.copy()
    for parents, neighbours in unseen.values():
        cols = parents.cols
        out[:, cols] = zero_shot_scores(own[:, cols], neighbours.mean(scores),
                                        parents.joint(scores), parents.least(scores))  # fmt: skip
    return propagate(out, ids, ontology)


def transfer_scores(
    hits: Mapping[str, Iterable[tuple[str, float]]], labels: Mapping[str, Iterable[str]]
) -> dict[str, dict[str, float]]:
    """DiamondScore: {query: {term: score}} from bitscore-weighted hits into proteins with
    (propagated) ``labels``; hits to unlabelled proteins are ignored, queries without a
    labelled hit get no entry."""
    out: dict[str, dict[str, float]] = {}
    for q, qh in hits.items():
        qh = [(s, float(b)) for s, b in qh if s in labels]
        total = sum(b for _, b in qh)
        if total <= 0:
            continue
        acc: dict[str, float] = {}
        for s, b in qh:
            for t in labels[s]:
                acc[t] = acc.get(t, 0.0) + b
        out[q] = {t: v / total for t, v in acc.items()}
    return out


def selection_score(per_aspect: Iterable[Mapping]) -> float | None:
    """The number the best checkpoint is chosen by: the mean of the per-aspect Fmax (rows of
    :func:`protgo.eval.metrics.evaluate_fast`); None without any aspect."""
    values = [float(r["fmax"]) for r in per_aspect]
    return float(np.mean(values)) if values else None


def fit_sigmoid(
    x: np.ndarray, truth: np.ndarray, ceiling: np.ndarray | None = None,
    init: tuple[float, float] = (1.0, 0.0), steps: int = 200,
) -> tuple[float, float]:  # fmt: skip
    """(a, b) maximising the likelihood of ``truth`` (0/1) under ``sigmoid(a * x + b)``, or
    under ``ceiling * sigmoid(a * x + b)`` (all arrays flattened alike; L-BFGS in float64).
    Platt calibration is the first; a zero-shot term's score under its parents' the second.
    Positives are few, but the plain likelihood is what makes scores probabilities, so the
    classes are not reweighted."""
    import torch

    z = torch.from_numpy(np.asarray(x, np.float64).ravel())
    y = torch.from_numpy(np.asarray(truth, np.float64).ravel())
    top = None if ceiling is None else torch.from_numpy(np.asarray(ceiling, np.float64).ravel())
    ab = torch.tensor([float(v) for v in init], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([ab], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        if top is None:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(ab[0] * z + ab[1], y)
        else:
            p = (top * torch.sigmoid(ab[0] * z + ab[1])).clamp(1e-9, 1 - 1e-9)
            loss = -(y * p.log() + (1 - y) * (1 - p).log()).mean()
        loss.backward()
        return loss

    opt.step(closure)
    a, b = ab.detach().tolist()
    return float(a), float(b)
