"""cafaeval, the CAFA evaluator (PyPI ``cafaeval``, GPL-3), run as a separate process (never
imported): :func:`run_cafaeval`, :func:`summarize_cafaeval` (its ``evaluation_all.tsv`` as one
row per method x aspect plus curve points), and :func:`evaluate_split`, a whole evaluation of
a dataset split (cafaeval + term-centric AUC)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from protgo.config import ASPECTS
from protgo.errors import UserError
from protgo.eval.metrics import TH_STEP, aspect_problem, fmax_interval, term_centric
from protgo.eval.predictions import read_predictions, write_ground_truth
from protgo.extras import need
from protgo.io import atomic_write_text

NS_ASPECT = {"biological_process": "BP", "molecular_function": "MF", "cellular_component": "CC"}


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
    need("cafaeval", "eval", "evaluation (cafaeval)", load=False)
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
def _intervals(name: str, pred, folder, pids: list[str]) -> list[dict]:
    """Per aspect: the proteins scored (annotated in the aspect) and a 95% bootstrap interval
    of the method's Fmax over them (:func:`protgo.eval.metrics.fmax_interval`)."""
    onto, rows = folder.ontology, []
    prop = pred.propagated(onto)
    for aspect in ASPECTS:
        scores, truth, _ = aspect_problem(prop, folder.annotations, pids, onto, aspect)
        if scores.shape[0]:
            lo, hi = fmax_interval(scores, truth)
            rows.append({"method": name, "aspect": aspect, "proteins": scores.shape[0],
                         "fmax_lo": lo, "fmax_hi": hi})  # fmt: skip
    return rows


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
    cafaeval figures plus zero/few-shot term AUC/AUPR), ``curves.tsv`` and ``terms.tsv`` (each
    zero/few-shot term's AUC and best-scored proteins, per method) under ``out_dir``;
    returns (results, curves) DataFrames."""
    import pandas as pd

    out_dir = Path(out_dir)
    pids = folder.ids(split)
    if not pids:
        raise UserError(f"dataset {folder.root} has no '{split}' proteins (train, valid or test)")
    onto = folder.ontology
    gt = out_dir / f"ground_truth_{split}.tsv"
    write_ground_truth(folder.annotations, pids, gt)
    term_rows, per_term, intervals = [], [], []
    for name, path in pred_files.items():
        pred = read_predictions(path, onto)  # checks every file before cafaeval runs
        if not set(pred.pids) & set(pids):
            raise UserError(
                f"prediction file {path} names none of the {len(pids)} '{split}' "
                f"proteins of {folder.root.name}; was it made for another split?"
            )
        pred = pred.propagated(onto)  # once: term_centric and _intervals reuse it
        terms_of_method: list[dict] = []
        for r in term_centric(pred, folder.annotations, pids, onto, folder.term_class,
                              per_term=terms_of_method):  # fmt: skip
            term_rows.append({"method": name, **r})
        per_term += [{"method": name, **r} for r in terms_of_method]
        intervals += _intervals(name, pred, folder, pids)
    result = run_cafaeval(
        folder.obo_path, folder.ia_path, gt, pred_files, out_dir, threads, th_step
    )
    table, curves = summarize_cafaeval(result)
    ci = pd.DataFrame(intervals, columns=["method", "aspect", "proteins", "fmax_lo", "fmax_hi"])
    table = table.merge(ci, on=["method", "aspect"], how="left")
    if term_rows:
        tc = pd.DataFrame(term_rows).pivot_table(
            index=["method", "aspect"], columns="class", values=["auc", "aupr", "terms"]
        )
        tc.columns = [f"{cls}_{stat}" for stat, cls in tc.columns]
        table = table.merge(tc.reset_index(), on=["method", "aspect"], how="left")
        for col in [c for c in table.columns if c.endswith("_terms")]:
            table[col] = table[col].astype("Int64")  # counts, not floats
    terms = pd.DataFrame(per_term, columns=["method", "aspect", "class", "term", "positives",
                                            "auc", "aupr", "top"])  # fmt: skip
    for name, df in (("results.tsv", table), ("curves.tsv", curves), ("terms.tsv", terms)):
        text = df.to_csv(sep="\t", index=False, float_format="%.4f")
        atomic_write_text(out_dir / name, text)
    return table, curves
