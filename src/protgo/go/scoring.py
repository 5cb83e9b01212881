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
* **Terms without a training positive** (held out, or never annotated): with a fitted
  conditional (calibration), ``P(term) = P(best direct parent) x sigmoid(a * logit + b)``, as
  ProtBoost scored its untrained terms: a term is never more likely than its parent, and its
  text says which of the parent's proteins carry it (:func:`under_parents`).
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
    vectorised best-parent lookup. Parents outside the list (such as a root) are skipped;
    ``cols`` keeps only the chosen columns with at least one parent inside it."""

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


def parent_scores(scores: np.ndarray, ids: Sequence[str], ontology: Ontology) -> np.ndarray:
    """(N, T) propagated scores -> (N, T): each term's best direct parent's score (0 for a
    term without a parent in ``ids``)."""
    index = ParentIndex(ids, ontology)
    out = np.zeros_like(scores)
    out[:, index.cols] = index.best(scores)
    return out


def text_times_parents(logits: np.ndarray, parent: np.ndarray, a: float, b: float) -> np.ndarray:
    """``parent * sigmoid(a * logits + b)``: never above the parent's score."""
    return parent * (1.0 / (1.0 + np.exp(-(a * logits + b))))


def under_parents(
    scores: np.ndarray, logits: np.ndarray, ids: list[str], ontology: Ontology,
    unseen: Mapping[str, tuple[ParentIndex, float, float]],
) -> np.ndarray:  # fmt: skip
    """Propagated (N, T) ``scores`` with each unseen term's column (per aspect: its
    :class:`ParentIndex` and conditional ``(a, b)``) replaced by :func:`text_times_parents` of
    its raw ``logits`` and its best parent's score, then propagated again."""
    out = scores.copy()
    for index, a, b in unseen.values():
        parent = index.best(scores)
        out[:, index.cols] = text_times_parents(logits[:, index.cols], parent, a, b)
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
