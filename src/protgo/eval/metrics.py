"""CAFA metrics in numpy, twins of cafaeval (:mod:`protgo.eval.cafa` runs the reference), and
term-centric AUC/AUPR.

- :func:`fmax_smin` computes Fmax and its threshold, weighted Fmax, IA-weighted Smin and
  coverage in numpy (for validation during training);
  tests check it against cafaeval and against a case worked out by hand.
- :func:`term_centric` gives per-term ROC AUC / AUPR averaged over zero-shot and few-shot
  terms, the figures that say whether unseen functions are predicted at all.

Conventions follow cafaeval 1.3.0 with ``-no_orphans``: thresholds ``tau`` run over
``arange(th_step, 1, th_step)`` and a term is predicted when ``score >= tau``; the roots are not
scored (they would inflate Fmax); precision averages over proteins with at least one
prediction, recall and S over every protein annotated in the aspect; thresholds where no
protein has a prediction are skipped; weighted figures use the terms with IA > 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from protgo.config import ASPECTS
from protgo.data.ontology import Ontology
from protgo.eval.predictions import Predictions

TH_STEP = 0.01


# ----------------------------------------------------------------------------------------------
# Fast protein-centric metrics (numpy)
# ----------------------------------------------------------------------------------------------
def thresholds(th_step: float = TH_STEP) -> np.ndarray:
    """The thresholds cafaeval uses (same float values, so ``>=`` compares alike)."""
    return np.arange(th_step, 1, th_step)


def threshold_curve(
    scores: np.ndarray,
    truth: np.ndarray,
    weights: np.ndarray | None = None,
    th_step: float = TH_STEP,
    chunk: int = 512,
) -> dict[str, np.ndarray]:
    """Precision, recall, coverage, misinformation, remaining uncertainty, F and S per threshold.

    ``scores`` (N, T) propagated, ``truth`` (N, T) bool propagated, over one aspect's scored
    terms and every protein annotated in it; ``weights`` (T,) IA (None: term counts).
    Each score is binned once by how many thresholds it passes, so the cost is O(N T), not
    O(N T K) for K thresholds."""
    tau = thresholds(th_step)
    return _curve(*_counts(scores, truth, weights, len(tau), tau, chunk), tau)


def _counts(scores, truth, weights, k: int, tau: np.ndarray, chunk: int):
    """Per protein and threshold: true positives, predicted terms (weighted), and per protein
    the (weighted) true terms: (tp (N, K), n_pred (N, K), n_gt (N, 1))."""
    n_prot, n_terms = scores.shape
    w = np.ones(n_terms) if weights is None else np.asarray(weights, dtype=np.float64)
    pred_w = np.zeros((n_prot, k + 1))  # weight of terms whose score passes exactly b thresholds
    tp_w = np.zeros((n_prot, k + 1))
    for s in range(0, n_prot, chunk):
        sc, tr = scores[s : s + chunk], truth[s : s + chunk]
        bins = np.searchsorted(tau, sc, side="right")  # (n, T) thresholds passed
        idx = (np.arange(len(sc))[:, None] * (k + 1) + bins).ravel()
        size = len(sc) * (k + 1)
        pred_w[s : s + chunk] = np.bincount(
            idx, np.broadcast_to(w, sc.shape).ravel(), size
        ).reshape(-1, k + 1)
        tp_w[s : s + chunk] = np.bincount(idx, (tr * w).ravel(), size).reshape(-1, k + 1)
    # Predicted at tau[i] <=> passes more than i thresholds: reverse cumulative sums, (N, K).
    n_pred = np.cumsum(pred_w[:, ::-1], axis=1)[:, ::-1][:, 1:]
    tp = np.cumsum(tp_w[:, ::-1], axis=1)[:, ::-1][:, 1:]
    n_gt = (truth * w).sum(axis=1)[:, None]  # (N, 1)
    return tp, n_pred, n_gt


def _curve(tp: np.ndarray, n_pred: np.ndarray, n_gt: np.ndarray, tau: np.ndarray) -> dict:
    n_prot, k = tp.shape
    has_pred = n_pred > 0
    n_cov = has_pred.sum(axis=0)
    prec_sum = np.divide(tp, n_pred, out=np.zeros_like(tp), where=has_pred).sum(axis=0)
    pr = np.divide(prec_sum, n_cov, out=np.zeros(k), where=n_cov > 0)
    rc = np.divide(tp, n_gt, out=np.zeros_like(tp), where=n_gt > 0).sum(axis=0) / n_prot
    mi = (n_pred - tp).sum(axis=0) / n_prot
    ru = (n_gt - tp).sum(axis=0) / n_prot
    f = np.divide(2 * pr * rc, pr + rc, out=np.zeros(k), where=(pr + rc) > 0)
    return {
        "tau": tau,
        "pr": pr,
        "rc": rc,
        "cov": n_cov / n_prot,
        "mi": mi,
        "ru": ru,
        "f": f,
        "s": np.sqrt(mi**2 + ru**2),
    }


def fmax_interval(
    scores: np.ndarray, truth: np.ndarray, n_boot: int = 1000, level: float = 0.95,
    seed: int = 0, th_step: float = TH_STEP,
) -> tuple[float, float]:  # fmt: skip
    """Percentile bootstrap interval of Fmax over proteins (rows resampled with replacement;
    each resample takes its own best threshold, as Fmax does)."""
    tau = thresholds(th_step)
    tp, n_pred, n_gt = _counts(scores, truth, None, len(tau), tau, 512)
    rng = np.random.default_rng(seed)
    n = len(tp)
    best = np.empty(n_boot)
    for b in range(n_boot):
        idx = rng.integers(0, n, n)
        cu = _curve(tp[idx], n_pred[idx], n_gt[idx], tau)
        best[b] = np.max(np.where(cu["cov"] > 0, cu["f"], 0.0))
    lo, hi = np.quantile(best, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def fmax_smin(
    scores: np.ndarray, truth: np.ndarray, ia: np.ndarray | None = None, th_step: float = TH_STEP
) -> dict[str, float]:
    """Fmax (+ threshold, coverage), weighted Fmax and IA-weighted Smin, as cafaeval gives them.

    ``scores``/``truth`` (N, T) as in :func:`threshold_curve`; ``ia`` (T,) information
    accretion (weighted figures use the columns with IA > 0; None: left out)."""
    if scores.shape[0] == 0:
        raise ValueError("no proteins to evaluate")
    cu = threshold_curve(scores, truth, None, th_step)
    ok = cu["cov"] > 0  # cafaeval drops thresholds where nothing is predicted
    if not ok.any():
        return {
            "fmax": 0.0,
            "tau": float("nan"),
            "coverage": 0.0,
            "wfmax": 0.0,
            "smin": float("nan"),
            "tau_smin": float("nan"),
        }
    i = int(np.argmax(np.where(ok, cu["f"], -1)))
    out = {
        "fmax": float(cu["f"][i]),
        "tau": float(cu["tau"][i]),
        "coverage": float(cu["cov"][i]),
        "precision": float(cu["pr"][i]),
        "recall": float(cu["rc"][i]),
    }
    if ia is not None:
        keep = np.asarray(ia) > 0
        cw = threshold_curve(scores[:, keep], truth[:, keep], np.asarray(ia)[keep], th_step)
        out["wfmax"] = float(np.max(cw["f"][ok]))
        j = int(np.argmin(np.where(ok, cw["s"], np.inf)))
        out["smin"], out["tau_smin"] = float(cw["s"][j]), float(cw["tau"][j])
    return out


def truth_matrix(
    annotations: Mapping[str, Iterable[str]], pids: list[str], terms: list[str], ontology: Ontology
) -> np.ndarray:
    """(N, T) bool: propagated annotations of ``pids`` over ``terms``."""
    col = {t: j for j, t in enumerate(terms)}
    out = np.zeros((len(pids), len(terms)), dtype=bool)
    for i, p in enumerate(pids):
        idx = [col[t] for t in ontology.propagate(annotations.get(p, ())) if t in col]
        out[i, idx] = True
    return out


def annotated_in(
    annotations: Mapping[str, Iterable[str]], pids: Iterable[str], ontology: Ontology, aspect: str
) -> list[str]:
    """The proteins of ``pids`` with at least one annotation in ``aspect`` (sorted)."""
    return sorted(
        p
        for p in pids
        if any(t in ontology and ontology.aspect(t) == aspect for t in annotations.get(p, ()))
    )


def aspect_problem(
    pred: Predictions,
    annotations: Mapping[str, Iterable[str]],
    pids: Iterable[str],
    ontology: Ontology,
    aspect: str,
    keep_roots: bool = False,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(scores, truth, terms) of one aspect, as cafaeval builds them: the proteins of ``pids``
    annotated in the aspect; the aspect's terms that are predicted or true (roots left out
    unless ``keep_roots``). ``pred`` must be propagated already (:meth:`Predictions.propagated`)."""
    rows = annotated_in(annotations, pids, ontology, aspect)
    prop = pred
    true_terms = {t for p in rows for t in ontology.propagate(annotations[p])}
    terms = sorted(
        t
        for t in true_terms | set(prop.terms)
        if ontology.aspect(t) == aspect and (keep_roots or not ontology.is_root(t))
    )
    return prop.aligned(rows, terms), truth_matrix(annotations, rows, terms, ontology), terms


def evaluate_fast(
    pred: Predictions,
    annotations: Mapping[str, Iterable[str]],
    pids: Iterable[str],
    ontology: Ontology,
    ia: Mapping[str, float] | None = None,
    aspects: Iterable[str] = ASPECTS,
    th_step: float = TH_STEP,
) -> list[dict]:
    """One dict per aspect: Fmax, tau, coverage, weighted Fmax, Smin (numpy, no cafaeval)."""
    pids = list(pids)
    prop = pred.propagated(ontology)
    rows = []
    for aspect in aspects:
        scores, truth, terms = aspect_problem(prop, annotations, pids, ontology, aspect)
        if scores.shape[0] == 0:
            continue
        w = None if ia is None else np.array([ia.get(t, 0.0) for t in terms])
        rows.append(
            {"aspect": aspect, "proteins": scores.shape[0], **fmax_smin(scores, truth, w, th_step)}
        )
    return rows


# ----------------------------------------------------------------------------------------------
# Term-centric AUC / AUPR
# ----------------------------------------------------------------------------------------------
def roc_auc(y: np.ndarray, s: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic (ties count one half)."""
    from scipy.stats import rankdata

    y = np.asarray(y, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    ranks = rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(y: np.ndarray, s: np.ndarray) -> float:
    """Step-wise AUPR: sum over distinct thresholds of (recall gain) x precision."""
    y = np.asarray(y, dtype=bool)
    order = np.argsort(-np.asarray(s), kind="stable")
    s_sorted, y_sorted = np.asarray(s)[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s_sorted)), len(s_sorted) - 1]  # end of each tie group
    tp = np.cumsum(y_sorted)[last]
    precision = tp / (last + 1)
    recall_gain = np.diff(np.r_[0, tp]) / y.sum()
    return float((recall_gain * precision).sum())


def term_centric(
    pred: Predictions,
    annotations: Mapping[str, Iterable[str]],
    pids: Iterable[str],
    ontology: Ontology,
    term_class: Mapping[str, str],
    classes: Iterable[str] = ("zero", "few"),
    per_term: list | None = None,
) -> list[dict]:
    """Mean per-term ROC AUC and AUPR for each term class and aspect.

    Per aspect, the proteins are those of ``pids`` annotated in it (an unannotated protein is
    not a known negative); truth and scores are propagated; a term counts when it has at least
    one positive and one negative among them. Unpredicted pairs score 0. ``per_term``, when
    given, receives one row per counted term (its AUC, AUPR, positives and its three
    best-scored proteins as ``pid:score:truth``)."""
    pids = list(pids)
    prop = pred.propagated(ontology)
    out = []
    for aspect in ASPECTS:
        rows = annotated_in(annotations, pids, ontology, aspect)
        if not rows:
            continue
        for cls in classes:
            terms = sorted(
                t
                for t, c in term_class.items()
                if c == cls and t in ontology and ontology.aspect(t) == aspect
            )
            truth = truth_matrix(annotations, rows, terms, ontology)
            npos = truth.sum(axis=0)
            usable = [j for j in range(len(terms)) if 0 < npos[j] < len(rows)]
            scores = prop.aligned(rows, [terms[j] for j in usable])
            aucs = [roc_auc(truth[:, j], scores[:, c]) for c, j in enumerate(usable)]
            aps = [average_precision(truth[:, j], scores[:, c]) for c, j in enumerate(usable)]
            if per_term is not None:
                for c, j in enumerate(usable):
                    top = np.argsort(-scores[:, c], kind="stable")[:3]
                    per_term.append({
                        "aspect": aspect, "class": cls, "term": terms[j],
                        "positives": int(npos[j]), "auc": aucs[c], "aupr": aps[c],
                        "top": " ".join(f"{rows[i]}:{scores[i, c]:.3f}:{int(truth[i, j])}"
                                        for i in top),
                    })  # fmt: skip
            out.append(
                {
                    "aspect": aspect,
                    "class": cls,
                    "terms": len(usable),
                    "auc": float(np.mean(aucs)) if aucs else float("nan"),
                    "aupr": float(np.mean(aps)) if aps else float("nan"),
                }
            )
    return out
