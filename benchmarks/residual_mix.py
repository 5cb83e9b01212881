"""Per-term residuals mixed with the text: does a share of the residual (WiSE-FT-style, one
lambda for all terms) or a gate by training count (lambda_t = n_t / (n_t + k)) beat the full
residual (lambda = 1) that training learned?

A term's logit is linear in its residual, so mixing the text-only and the full logits,
``text + lambda_t * (full - text)``, is the model with each residual scaled by lambda_t.
Scores are ``sigmoid`` of that, propagated; Fmax per aspect over the proteins annotated in it,
every term scored (no top-k). The setting with the best mean valid Fmax is the one to keep;
the test split shows whether the choice holds. Terms without a training positive have no
residual and score the same under every setting.

Usage (a checkpoint trained with ``model.term_residual``, its residue store built):
    python benchmarks/residual_mix.py --checkpoint runs/full-residual/checkpoints/best.pt
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

LAMBDAS = (0.0, 0.5, 0.75, 1.0, 1.25)
GATES = (1.0, 3.0, 10.0)


def create_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--chunk", type=int, default=256)
    return p


def both_logits(pred, folder, split: str, chunk: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(proteins, text-only logits, full logits), each (N, T) float32 over ``pred.go_ids``."""
    import torch

    from protgo.data.sequence import clean_sequence

    pids = folder.ids(split)
    text = np.empty((len(pids), len(pred.go_ids)), np.float32)
    full = np.empty_like(text)
    for i in range(0, len(pids), chunk):
        part = pids[i : i + chunk]
        res = pred.residues({p: clean_sequence(p, folder.sequences[p]) for p in part})
        vecs, _ = pred.protein_vectors([res[p] for p in part])
        full[i : i + len(part)] = pred.logits(vecs)
        with torch.no_grad():
            text[i : i + len(part)] = (
                pred.model.term_logits(vecs.to(pred.device), pred.go, pred.go_text, None)
                .cpu()
                .numpy()
            )
    return pids, text, full


def fmax_by_aspect(pred, folder, pids: list[str], logits: np.ndarray) -> dict[str, float]:
    from protgo.eval.metrics import annotated_in, fmax_smin, truth_matrix
    from protgo.go import scoring

    onto, ann = pred.ontology, folder.annotations
    scores = scoring.propagate(scoring.to_scores(logits, "logit"), pred.go_ids, onto)
    row = {p: i for i, p in enumerate(pids)}
    out = {}
    for aspect in pred.aspects:
        rows = [row[p] for p in annotated_in(ann, pids, onto, aspect)]
        cols = pred.columns(aspect)
        truth = truth_matrix(ann, [pids[r] for r in rows], [pred.go_ids[c] for c in cols], onto)
        out[aspect] = fmax_smin(scores[np.ix_(rows, cols)], truth)["fmax"]
    return out


def settings(pred, folder) -> dict[str, np.ndarray]:
    """{name: (T,) lambda per term}: one lambda for all, or the count gate."""
    n = np.array([folder.terms.get(t, {}).get("n_train", 0) for t in pred.go_ids], np.float64)
    out = {f"lambda={lam}": np.full(len(n), lam) for lam in LAMBDAS}
    out |= {f"gate k={k:g}": n / (n + k) for k in GATES}
    return out


def run(args: argparse.Namespace) -> dict:
    from protgo.data.folder import DatasetFolder
    from protgo.infer.predict import Predictor

    pred = Predictor(args.checkpoint, args.data_dir, homology=False)
    if pred.residual_rows is None:
        raise SystemExit(f"{args.checkpoint} has no per-term residuals (model.term_residual)")
    folder = DatasetFolder.load(pred.cfg.data.dataset, pred.data_dir)
    t0 = time.perf_counter()
    splits = {s: both_logits(pred, folder, s, args.chunk) for s in ("valid", "test")}
    table = {}
    for name, lam in settings(pred, folder).items():
        lam = lam.astype(np.float32)[None, :]
        table[name] = {s: fmax_by_aspect(pred, folder, pids, text + lam * (full - text))
                       for s, (pids, text, full) in splits.items()}  # fmt: skip
        print(name, json.dumps(table[name]), flush=True)
    best = max(table, key=lambda k: np.mean(list(table[k]["valid"].values())))
    return {"checkpoint": str(args.checkpoint), "chosen_on_valid": best, "table": table,
            "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip


def main() -> None:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = run(create_parser().parse_args())
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
