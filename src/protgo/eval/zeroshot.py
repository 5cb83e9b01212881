"""Zero- and few-shot terms measured from the complete score matrix, beside two baselines that
need no text training.

A prediction file keeps each protein's top terms above a floor, and a pair it leaves out
scores 0: most zero-shot terms then tie at 0 for most proteins and their AUC sinks towards 0.5
whatever the model knows. Here every (protein, term) pair of an aspect is scored, so the AUC
says how well a term's proteins are ranked above the others.

The baselines read the same matrix, so they cost nothing more:

* ``parents``: a term scored by the best propagated score of its direct ``is_a`` /
  ``part_of`` parents (what the ontology alone says: "if it is a kinase, maybe this kinase");
* ``all-parents``: by the geometric mean of those scores (a protein with the term carries
  every parent, so a term with two parents asks for both);
* ``nearest-trained``: a term scored by the trained term (a training positive, not itself)
  whose text vector is nearest, same aspect (what a lookup of similar names says).

If the model's zero-shot AUC does not beat them all, its text side adds nothing for unseen
terms.

``text+neighbours×parents`` is what ``predict`` gives a term without a training positive
(:func:`protgo.go.scoring.under_parents`): its parents' joint score times the mean, in logit
space, of its own text score and its :data:`~protgo.go.scoring.NEIGHBOURS` text neighbours'
scores, capped at its least parent's score.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from protgo.data.folder import TRAINED_CLASSES
from protgo.data.ontology import Ontology
from protgo.eval.metrics import average_precision
from protgo.go import scoring
from protgo.go.scoring import ParentIndex, TextNeighbours, zero_shot_scores

BASELINES = ("parents", "all-parents", "nearest-trained")


def column_auc(truth: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(N, T) bool truth, (N, T) scores -> (T,) ROC AUC per column (the Mann-Whitney statistic,
    ties count one half; NaN for a column without a positive or a negative)."""
    from scipy.stats import rankdata

    ranks = rankdata(scores, axis=0)
    n_pos = truth.sum(axis=0).astype(np.float64)
    n_neg = truth.shape[0] - n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = ((ranks * truth).sum(axis=0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def neighbour_scores(
    scores: np.ndarray, text: np.ndarray, trained: np.ndarray, aspects: np.ndarray,
    k: int = 1, temp: float = scoring.NEIGHBOUR_TEMP,
) -> np.ndarray:  # fmt: skip
    """(N, T) scores, (T, D) text vectors, (T,) bool trained, (T,) aspect -> (N, T): each
    term's score taken from the trained terms of its aspect with the nearest text vectors
    (:class:`protgo.go.scoring.TextNeighbours`; ``k=1``: the nearest one), itself excluded."""
    out = np.zeros_like(scores)
    for aspect in np.unique(aspects):
        cols = np.flatnonzero(aspects == aspect)
        out[:, cols] = TextNeighbours(text, cols, cols[trained[cols]], k, temp).mean(scores)
    return out


def complete_term_metrics(
    scores: np.ndarray, truth: np.ndarray, terms: Sequence[str], term_class: Mapping[str, str],
    aspects: np.ndarray, classes: Sequence[str] = ("zero", "few"), min_positives: int = 1,
    per_term: list | None = None, method: str = "protgo",
) -> list[dict]:  # fmt: skip
    """Mean per-term ROC AUC and AUPR per aspect and term class, from complete (N, T) matrices
    over one set of proteins (``truth``: propagated; each row a protein annotated in the
    term's aspect, or the row is ignored for that aspect: see :func:`aspect_rows`). A term
    counts with at least ``min_positives`` positives and one negative. ``per_term`` receives
    one row per counted term."""
    out = []
    for aspect in np.unique(aspects):
        rows = aspect_rows(truth, aspects, aspect)
        for cls in classes:
            cols = np.flatnonzero((aspects == aspect) & np.array(
                [term_class.get(t) == cls for t in terms]))  # fmt: skip
            t_sub = truth[np.ix_(rows, cols)]
            n_pos = t_sub.sum(axis=0)
            cols = cols[(n_pos >= min_positives) & (n_pos < len(rows))]
            t_sub, s_sub = truth[np.ix_(rows, cols)], scores[np.ix_(rows, cols)]
            aucs = column_auc(t_sub, s_sub)
            aps = np.array([average_precision(t_sub[:, c], s_sub[:, c]) for c in range(len(cols))])
            if per_term is not None:
                per_term += [{"method": method, "aspect": aspect, "class": cls, "term": terms[j],
                              "positives": int(t_sub[:, c].sum()), "auc": float(aucs[c]),
                              "aupr": float(aps[c])} for c, j in enumerate(cols)]  # fmt: skip
            out.append({
                "method": method, "aspect": str(aspect), "class": cls, "terms": len(cols),
                "auc": float(aucs.mean()) if len(cols) else float("nan"),
                "aupr": float(aps.mean()) if len(cols) else float("nan"),
            })  # fmt: skip
    return out


def aspect_rows(truth: np.ndarray, aspects: np.ndarray, aspect: str) -> np.ndarray:
    """The rows (proteins) with a true term of ``aspect``: an unannotated protein is not a
    known negative."""
    return np.flatnonzero(truth[:, aspects == aspect].any(axis=1))


def zero_shot_table(
    scores: np.ndarray, truth: np.ndarray, terms: Sequence[str], ontology: Ontology,
    term_class: Mapping[str, str], text: np.ndarray, min_positives: int = 1,
    per_term: list | None = None, own: np.ndarray | None = None,
) -> list[dict]:  # fmt: skip
    """:func:`complete_term_metrics` for the model's propagated ``scores`` and for each
    baseline (:data:`BASELINES`) built from them. ``text`` (T, D): the terms' text vectors.
    With ``own`` (N, T, the model's scores before propagation), also
    ``text+neighbours×parents``, what ``predict`` scores a term without a training positive."""
    aspects = np.array([ontology.aspect(t) for t in terms])
    trained = np.array([term_class.get(t) in TRAINED_CLASSES for t in terms])
    index = ParentIndex(terms, ontology)  # built once: every parent baseline reads it
    joint = index.full(scores, "joint")
    methods = {
        "protgo": scores,
        "parents": index.full(scores, "best"),
        "all-parents": joint,
        "nearest-trained": neighbour_scores(scores, text, trained, aspects),
    }
    if own is not None:
        near = neighbour_scores(scores, text, trained, aspects, k=scoring.NEIGHBOURS)
        least = index.full(scores, "least")
        methods["text+neighbours×parents"] = zero_shot_scores(own, near, joint, least)
    rows = []
    for name, s in methods.items():
        rows += complete_term_metrics(s, truth, terms, term_class, aspects,
                                      min_positives=min_positives, per_term=per_term,
                                      method=name)  # fmt: skip
    return rows
