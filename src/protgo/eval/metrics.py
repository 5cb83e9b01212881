"""CAFA metrics: cafaeval as the reference, a fast numpy twin, term-centric AUC/AUPR.

- :func:`run_cafaeval` runs the CAFA evaluator (PyPI ``cafaeval``, GPL-3) as a separate
  process, so protgo never imports it, and :func:`summarize_cafaeval` turns its
  ``evaluation_all.tsv`` into one row per method x aspect (Fmax and its threshold, weighted
  Fmax, IA-weighted Smin, coverage) plus precision-recall curve points.
- :func:`fmax_smin` computes the same figures in numpy (for validation during training);
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

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from protgo.data.ontology import Ontology
from protgo.errors import UserError
from protgo.io import atomic_write_text

TH_STEP = 0.01
ASPECTS = ("BP", "MF", "CC")
NS_ASPECT = {"biological_process": "BP", "molecular_function": "MF", "cellular_component": "CC"}
# Header/footer keywords of CAFA submission files; lines starting with them are not predictions.
CAFA_KEYWORDS = ("AUTHOR", "MODEL", "KEYWORDS", "ACCURACY", "END")


# ----------------------------------------------------------------------------------------------
# Prediction sets and files
# ----------------------------------------------------------------------------------------------
@dataclass
class Predictions:
    """Scores of proteins x GO terms: ``scores[i, j]`` for ``pids[i]``, ``terms[j]`` (0: none)."""

    pids: list[str]
    terms: list[str]
    scores: np.ndarray  # (N, T); float64 when read from a file, so thresholds compare as
    # they do in cafaeval (float32 0.07 > float64 0.07)

    @classmethod
    def from_dict(cls, scores: Mapping[str, Mapping[str, float]]) -> Predictions:
        pids = sorted(scores)
        terms = sorted({t for d in scores.values() for t in d})
        col = {t: j for j, t in enumerate(terms)}
        mat = np.zeros((len(pids), len(terms)), dtype=np.float64)
        for i, p in enumerate(pids):
            for t, s in scores[p].items():
                mat[i, col[t]] = s
        return cls(pids, terms, mat)

    def to_dict(self, min_score: float = 0.0) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for i, p in enumerate(self.pids):
            nz = np.flatnonzero(self.scores[i] > min_score)
            out[p] = {self.terms[j]: float(self.scores[i, j]) for j in nz}
        return out

    def propagated(self, ontology: Ontology) -> Predictions:
        """Scores made DAG-consistent (max over descendants), over the terms' upward closure."""
        terms = sorted(ontology.propagate(self.terms))
        col = {t: j for j, t in enumerate(terms)}
        mat = np.zeros((len(self.pids), len(terms)), dtype=self.scores.dtype)
        mat[:, [col[t] for t in self.terms]] = self.scores
        return Predictions(list(self.pids), terms, ontology.propagate_matrix(mat, terms))

    def aligned(self, pids: list[str], terms: list[str]) -> np.ndarray:
        """(len(pids), len(terms)) float64 scores in that order; 0 where absent."""
        row = {p: i for i, p in enumerate(self.pids)}
        col = {t: j for j, t in enumerate(self.terms)}
        out = np.zeros((len(pids), len(terms)), dtype=np.float64)
        ri = [(a, row[p]) for a, p in enumerate(pids) if p in row]
        ci = [(b, col[t]) for b, t in enumerate(terms) if t in col]
        if ri and ci:
            (ra, rb), (ca, cb) = zip(*ri, strict=True), zip(*ci, strict=True)
            out[np.ix_(ra, ca)] = self.scores[np.ix_(rb, cb)]
        return out

    def write_cafa(self, path: Path, min_score: float = 0.001, decimals: int = 4) -> int:
        """Write ``protein<TAB>GO<TAB>score`` lines (best first per protein), atomically.

        Scores below ``min_score`` are left out (cafaeval's lowest threshold is 0.01).
        Returns the number of lines written."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        n = 0
        try:
            with os.fdopen(fd, "w") as fh:
                for i, p in enumerate(self.pids):
                    row = self.scores[i]
                    keep = np.flatnonzero(row >= min_score)
                    for j in keep[np.argsort(-row[keep], kind="stable")]:
                        fh.write(f"{p}\t{self.terms[j]}\t{row[j]:.{decimals}f}\n")
                    n += len(keep)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return n


def read_predictions(path: Path, ontology: Ontology) -> Predictions:
    """Read a CAFA-format prediction file, checked against ``ontology``.

    Alt ids map to their primary id; a protein/term given twice keeps its highest score.
    Malformed lines, scores outside [0, 1], unknown or obsolete GO ids and empty files are
    :class:`UserError` s naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"prediction file {path} not found")
    scores: dict[str, dict[str, float]] = {}
    unknown: list[tuple[int, str]] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, raw in enumerate(fh, 1):
            parts = raw.split()
            if not parts or parts[0] in CAFA_KEYWORDS:
                continue
            pid, term, score = _parse_line(path, lineno, parts)
            canon = ontology.canonical(term)
            if canon is None:
                unknown.append((lineno, term))
                continue
            d = scores.setdefault(pid, {})
            d[canon] = max(score, d.get(canon, 0.0))
    if unknown:
        line, term = unknown[0]
        raise UserError(
            f"{path}:{line}: unknown or obsolete GO id '{term}' ({len(unknown)} such lines in "
            f"all); predictions must use the GO ids of the dataset's go.obo: map them to "
            "current ids or drop those lines"
        )
    if not scores:
        raise UserError(
            f"prediction file {path} holds no predictions (expected lines "
            "'protein<TAB>GO:id<TAB>score')"
        )
    return Predictions.from_dict(scores)


def _parse_line(path: Path, lineno: int, parts: list[str]) -> tuple[str, str, float]:
    where = f"{path}:{lineno}"
    if len(parts) != 3:
        raise UserError(
            f"{where}: expected 'protein<TAB>GO:id<TAB>score', got {len(parts)} "
            f"fields: {' '.join(parts)[:80]!r}"
        )
    pid, term, text = parts
    if not term.startswith("GO:"):
        raise UserError(f"{where}: second field must be a GO id like GO:0003674, got {term!r}")
    try:
        score = float(text)
    except ValueError:
        raise UserError(f"{where}: score {text!r} is not a number") from None
    if not 0.0 <= score <= 1.0:
        raise UserError(f"{where}: score {score} is outside [0, 1]; rescale the scores")
    return pid, term, score


def write_ground_truth(
    annotations: Mapping[str, Iterable[str]], pids: Iterable[str], path: Path
) -> int:
    """``protein<TAB>GO`` lines of the direct annotations of ``pids`` (cafaeval propagates)."""
    lines = [f"{p}\t{t}" for p in sorted(pids) for t in sorted(annotations.get(p, ()))]
    if not lines:
        raise UserError(f"no annotated proteins to write to the ground truth {path}")
    atomic_write_text(Path(path), "\n".join(lines) + "\n")
    return len(lines)


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
    k = len(tau)
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
) -> list[dict]:
    """Mean per-term ROC AUC and AUPR for each term class and aspect.

    Per aspect, the proteins are those of ``pids`` annotated in it (an unannotated protein is
    not a known negative); truth and scores are propagated; a term counts when it has at least
    one positive and one negative among them. Unpredicted pairs score 0."""
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


# ----------------------------------------------------------------------------------------------
# cafaeval, in its own process
# ----------------------------------------------------------------------------------------------
def run_cafaeval(
    obo: Path,
    ia: Path | None,
    ground_truth: Path,
    pred_files: Mapping[str, Path],
    out_dir: Path,
    threads: int = 2,
    th_step: float = TH_STEP,
) -> Path:
    """Evaluate each prediction file (named by its key) with cafaeval; returns the path of
    ``evaluation_all.tsv``. cafaeval is GPL-3, so it runs as a program, never imported."""
    out_dir = Path(out_dir)
    pred_dir = out_dir / "cafaeval_input"
    pred_dir.mkdir(parents=True, exist_ok=True)
    for old in pred_dir.iterdir():
        old.unlink()
    for name, path in pred_files.items():
        # cafaeval names each method after its file; a symlink avoids copying large files.
        os.symlink(Path(path).resolve(), pred_dir / name)
    cmd = [
        sys.executable,
        "-m",
        "cafaeval",
        str(obo),
        str(pred_dir),
        str(ground_truth),
        "-out_dir",
        str(out_dir / "cafaeval"),
        "-no_orphans",
        "-prop",
        "max",
        "-th_step",
        str(th_step),
        "-threads",
        str(threads),
        "-log_level",
        "warning",
    ]
    if ia is not None:
        cmd += ["-ia", str(ia)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    result = out_dir / "cafaeval" / "evaluation_all.tsv"
    if res.returncode != 0 or not result.is_file():
        tail = (res.stderr or res.stdout).strip().splitlines()[-5:]
        raise UserError(
            f"cafaeval failed on {list(pred_files)} (exit {res.returncode}); do the predictions "
            f"name proteins of the ground truth {ground_truth}? cafaeval said: " + " | ".join(tail)
        )
    return result


def summarize_cafaeval(evaluation_all: Path):
    """(table, curves) DataFrames from cafaeval's ``evaluation_all.tsv``.

    table: one row per method x aspect with fmax, tau, coverage, precision, recall, wfmax,
    smin (CAFA's IA-weighted S: the minimum of ``s_w``), tau_smin and smin_unweighted.
    curves: method, aspect, tau, precision, recall, f (for plots)."""
    import pandas as pd

    df = pd.read_csv(evaluation_all, sep="\t")
    df["aspect"] = df["ns"].map(NS_ASPECT)
    rows = []
    for (method, aspect), g in df.groupby(["filename", "aspect"], sort=True):
        best = g.loc[g["f"].idxmax()]
        row = {
            "method": method,
            "aspect": aspect,
            "fmax": best["f"],
            "tau": best["tau"],
            "coverage": best["cov"],
            "precision": best["pr"],
            "recall": best["rc"],
            "smin_unweighted": g["s"].min(),
        }
        if "s_w" in g:
            best_s = g.loc[g["s_w"].idxmin()]
            row.update(wfmax=g["f_w"].max(), smin=best_s["s_w"], tau_smin=best_s["tau"])
        rows.append(row)
    curves = df.rename(columns={"filename": "method", "pr": "precision", "rc": "recall"})
    curves = curves[["method", "aspect", "tau", "precision", "recall", "f"]]
    return pd.DataFrame(rows), curves.reset_index(drop=True)


# ----------------------------------------------------------------------------------------------
# A whole evaluation: cafaeval + term-centric, for a dataset split
# ----------------------------------------------------------------------------------------------
def evaluate_split(
    folder,
    split: str,
    pred_files: Mapping[str, Path],
    out_dir: Path,
    threads: int = 2,
    th_step: float = TH_STEP,
):
    """Score prediction files (``{method: path}``) on ``split`` of a dataset folder.

    Writes ``ground_truth_<split>.tsv``, cafaeval's output, ``results.tsv`` (method x aspect:
    cafaeval figures plus zero/few-shot term AUC/AUPR) and ``curves.tsv`` under ``out_dir``;
    returns (results, curves) DataFrames."""
    import pandas as pd

    out_dir = Path(out_dir)
    pids = folder.ids(split)
    if not pids:
        raise UserError(f"dataset {folder.root} has no '{split}' proteins (train, valid or test)")
    onto = folder.ontology
    gt = out_dir / f"ground_truth_{split}.tsv"
    write_ground_truth(folder.annotations, pids, gt)
    term_rows = []
    for name, path in pred_files.items():
        pred = read_predictions(path, onto)  # checks every file before cafaeval runs
        if not set(pred.pids) & set(pids):
            raise UserError(
                f"prediction file {path} names none of the {len(pids)} '{split}' "
                f"proteins of {folder.root.name}; was it made for another split?"
            )
        for r in term_centric(pred, folder.annotations, pids, onto, folder.term_class):
            term_rows.append({"method": name, **r})
    result = run_cafaeval(
        folder.obo_path, folder.ia_path, gt, pred_files, out_dir, threads, th_step
    )
    table, curves = summarize_cafaeval(result)
    if term_rows:
        tc = pd.DataFrame(term_rows).pivot_table(
            index=["method", "aspect"], columns="class", values=["auc", "aupr", "terms"]
        )
        tc.columns = [f"{cls}_{stat}" for stat, cls in tc.columns]
        table = table.merge(tc.reset_index(), on=["method", "aspect"], how="left")
        for col in [c for c in table.columns if c.endswith("_terms")]:
            table[col] = table[col].astype("Int64")  # counts, not floats
    for name, df in (("results.tsv", table), ("curves.tsv", curves)):
        text = df.to_csv(sep="\t", index=False, float_format="%.4f")
        atomic_write_text(out_dir / name, text)
    return table, curves
