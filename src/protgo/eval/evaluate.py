"""``protgo evaluate``: run the chosen baselines on a dataset split, score them beside the
given prediction files with cafaeval, and print one table (also ``results.tsv``)."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from protgo.config import ResiduesConfig
from protgo.data.seqsearch import DiamondOptions
from protgo.errors import UserError
from protgo.eval.baselines import (
    MlpOptions,
    blend,
    choose_alpha,
    diamond,
    knn,
    mlp,
    naive,
)
from protgo.eval.cafa import evaluate_split
from protgo.eval.predictions import Predictions, read_predictions
from protgo.eval.truth import GroundTruth
from protgo.io import atomic_write_text
from protgo.stores.residues import ResidueStore

BASELINES = ("naive", "diamond", "knn", "mlp")


def run_baseline(
    name: str,
    folder,
    split: str,
    embeddings: Mapping[str, np.ndarray] | None = None,
    threads: int = 2,
    knn_k: int = 10,
) -> Predictions:
    """One baseline trained on the ``train`` split of a dataset folder, predicting ``split``.

    ``embeddings`` ({pid: mean vector}) is needed by knn and mlp."""
    onto = folder.ontology
    train = {p: folder.annotations[p] for p in folder.ids("train") if p in folder.annotations}
    queries = folder.ids(split)
    if name == "naive":
        return naive(train, queries, onto)
    if name == "diamond":
        seqs = folder.sequences
        return diamond(
            {p: seqs[p] for p in train},
            train,
            {p: seqs[p] for p in queries},
            onto,
            DiamondOptions(threads=threads),
        )
    if name not in ("knn", "mlp"):
        raise UserError(f"unknown baseline '{name}'; choose from {', '.join(BASELINES)}")
    if embeddings is None:
        raise UserError(
            f"baseline '{name}' needs mean protein vectors: give a residue store "
            "(--store) embedded with `protgo embed residues`"
        )
    q_emb = {p: embeddings[p] for p in queries if p in embeddings}
    if name == "knn":
        return knn(embeddings, train, q_emb, onto, k=knn_k)
    valid = {p: folder.annotations[p] for p in folder.ids("valid") if p in folder.annotations}
    return mlp(
        embeddings, train, embeddings, valid, q_emb, onto, MlpOptions(threads=threads), ia=folder.ia
    )


def run_blend(
    folder,
    split: str,
    protgo_split: Predictions,
    protgo_valid: Predictions,
    diamond_split: Predictions | None = None,
    threads: int = 2,
) -> tuple[Predictions, dict[str, float], dict[str, dict[float, float]]]:
    """protgo blended with DIAMOND on ``split``, alpha chosen per aspect on the validation
    split.

    Returns (blended predictions, {aspect: alpha}, {aspect: {alpha: validation Fmax}})."""
    onto = folder.ontology
    valid = {p: folder.annotations[p] for p in folder.ids("valid") if p in folder.annotations}
    alpha, tried = choose_alpha(
        protgo_valid,
        run_baseline("diamond", folder, "valid", threads=threads),
        valid,
        onto,
        ia=folder.ia,
    )
    if diamond_split is None:
        diamond_split = run_baseline("diamond", folder, split, threads=threads)
    a, b = protgo_split.propagated(onto), diamond_split.propagated(onto)
    return blend(a, b, alpha, onto), alpha, tried


def parse_baselines(text: str) -> list[str]:
    """'all' -> every baseline (blend only when it can run); 'naive,knn' -> that list."""
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    if names == ["all"]:
        return [*BASELINES, "blend"]
    bad = [n for n in names if n not in (*BASELINES, "blend")]
    if bad:
        raise UserError(
            f"--baselines: unknown '{bad[0]}'; choose from "
            f"{', '.join((*BASELINES, 'blend'))} or 'all'"
        )
    return names


def _mean_embeddings(
    store: Path | None, residues, data_dir: Path, pids: list[str]
) -> dict[str, np.ndarray]:
    """Mean vectors of ``pids`` from the store folder ``store``, else the store of the
    ``ResiduesConfig`` ``residues``."""
    if store is not None:
        st = ResidueStore(store)
    else:
        st = ResidueStore.for_config(residues or ResiduesConfig(), data_dir)
    have = [p for p in pids if p in st]
    if len(have) < len(pids):
        raise UserError(
            f"residue store {st.root} lacks {len(pids) - len(have)} of the dataset's "
            f"{len(pids)} proteins; run `protgo embed residues` for it"
        )
    return dict(zip(have, st.means(have), strict=True))


def evaluate_command(
    folder, split: str, preds: list[Path], baselines: str, out: Path,
    valid_pred: Path | None = None, store: Path | None = None, threads: int = 2,
    knn_k: int = 10, residues=None, data_dir: Path | None = None,
    made: dict[str, Predictions] | None = None,
) -> str:  # fmt: skip
    """`protgo evaluate`: run the chosen baselines into ``out/baselines/``, score them with the
    given prediction files, and return a printable results table (also ``out/results.tsv``).
    ``made``, when given, receives the baselines' complete predictions of ``split``."""
    if split not in ("valid", "test"):
        raise UserError(f"--split must be valid or test (baselines train on train), got '{split}'")
    names = _checked_names(baselines, preds, valid_pred)
    emb = None
    if {"knn", "mlp"} & set(names):
        emb = _mean_embeddings(store, residues, data_dir, folder.ids())
    timings, made = {}, ({} if made is None else made)
    for name in [n for n in names if n != "blend"]:
        t0 = time.perf_counter()
        made[name] = run_baseline(name, folder, split, emb, threads, knn_k)
        timings[name] = round(time.perf_counter() - t0, 1)
    if "blend" in names:
        t0 = time.perf_counter()
        onto = folder.ontology
        made["blend"], alpha, _ = run_blend(
            folder, split, read_predictions(preds[0], onto), read_predictions(valid_pred, onto),
            made.get("diamond"), threads,
        )  # fmt: skip
        timings["blend"] = {"seconds": round(time.perf_counter() - t0, 1), "alpha": alpha}
    files = {p.stem: p for p in preds}
    for name, p in made.items():
        # naive gives every protein every term: keep only what cafaeval can see (>= 0.01)
        path = out / "baselines" / f"{name}.tsv"
        p.write_cafa(path, min_score=0.01 if name == "naive" else 0.001)
        files.setdefault(name, path)
    if not files:
        raise UserError("nothing to evaluate: give --pred files and/or --baselines")
    t0 = time.perf_counter()
    table, _ = evaluate_split(folder, split, files, out, threads)
    timings["evaluation"] = round(time.perf_counter() - t0, 1)
    atomic_write_text(out / "timings.json", json.dumps(timings, indent=1) + "\n")
    return _printable(table)


def evaluate_truth(truth: GroundTruth, preds: list[Path], out: Path, threads: int = 2) -> str:
    """`protgo evaluate --ground-truth`: score prediction files on a user's own benchmark
    (every protein of the truth file); returns the printable table (also ``results.tsv``)."""
    files = {p.stem: p for p in preds}
    if not files or len(files) < len(preds):
        raise UserError("--ground-truth scores --pred files: give one or more, with distinct "
                        "names (methods are named by file stem)")  # fmt: skip
    table, _ = evaluate_split(truth, "truth", files, out, threads)
    return _printable(table)


def _printable(table) -> str:
    cols = [c for c in ("method", "aspect", "fmax", "tau", "coverage", "wfmax", "smin",
                        "zero_auc", "few_auc") if c in table]  # fmt: skip
    return table[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}")


def _checked_names(baselines: str, preds: list[Path], valid_pred: Path | None) -> list[str]:
    """The baselines to run; the blend only with both prediction files (left out of 'all'
    without them)."""
    names = parse_baselines(baselines)
    files = {p.stem: p for p in preds}
    if len(files) < len(preds) or set(files) & set(names):
        raise UserError(
            "--pred files must have distinct names, none of them a baseline's "
            "(methods are named by file stem): rename the files"
        )
    if "blend" in names and (not preds or valid_pred is None):
        if baselines.strip().lower() != "all":
            raise UserError(
                "the blend baseline needs --pred (protgo on the split) and "
                "--valid-pred (protgo on the valid split)"
            )
        names.remove("blend")
    return names
