"""GO text vectors stored as fp16 or int8 (:func:`protgo.stores.go_vectors.quantize`): how
far do a bundle's scores move, on real queries?

For the test proteins of the bundle's dataset (residues from the residue store), each
aspect's top-10 terms by score are compared between vectors kept as fp16 and as int8 (and
fp32 as the reference): the mean share of the top-10 that two storages agree on, and the
largest score difference. Bundles ship int8 when it keeps top-10 overlap >= 0.99 against fp16.

Usage (after `scripts/setup.sh` and `protgo embed residues` for human-exp):
    python benchmarks/go_vector_storage.py --model protgo-human --n 500
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np


def create_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="protgo-human")
    p.add_argument("--dataset", default="human-exp")
    p.add_argument("--split", default="test")
    p.add_argument("--n", type=int, default=500, help="Query proteins.")
    p.add_argument("--data-dir", type=Path, default=None)
    return p


def _scores(pred, vecs, text: np.ndarray) -> np.ndarray:
    import torch

    pred.go_text = torch.from_numpy(text)
    with torch.no_grad():
        pred.go = pred.model.encode_go(pred.go_text)
    return pred.calibrate_logits(pred.logits(vecs))


def _overlap(a: np.ndarray, b: np.ndarray, cols: np.ndarray, k: int = 10) -> float:
    top_a = np.argsort(-a[:, cols], axis=1)[:, :k]
    top_b = np.argsort(-b[:, cols], axis=1)[:, :k]
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(top_a, top_b, strict=True)]))


def run(args: argparse.Namespace) -> dict:
    from protgo.data.folder import DatasetFolder
    from protgo.infer.bundle import resolve_model
    from protgo.infer.predict import Predictor
    from protgo.stores.go_vectors import dequantize, quantize

    pred = Predictor(resolve_model(args.model), args.data_dir, homology=False)
    folder = DatasetFolder.load(args.dataset, pred.data_dir)
    pids = folder.ids(args.split)[: args.n]
    res = pred.residues({p: folder.sequences[p] for p in pids})
    vecs, _ = pred.protein_vectors([res[p] for p in pids])
    full = pred.go_text.cpu().numpy().copy()
    storages = ("fp32", "fp16", "int8")
    scores = {s: _scores(pred, vecs, dequantize(quantize(full, s))) for s in storages}
    out = {"model": args.model, "proteins": len(pids), "terms": len(pred.go_ids),
           "bytes": {s: int(quantize(full, s).nbytes) for s in scores}}  # fmt: skip
    for aspect in pred.aspects:
        cols = np.flatnonzero(pred.go_aspects == aspect)
        diff = np.abs(scores["int8"] - scores["fp16"])[:, cols]
        out[aspect] = {
            "top10_int8_vs_fp16": round(_overlap(scores["int8"], scores["fp16"], cols), 4),
            "top10_fp16_vs_fp32": round(_overlap(scores["fp16"], scores["fp32"], cols), 4),
            "max_abs_diff_int8_vs_fp16": round(float(diff.max()), 4),
        }
    out["cpu_count"] = os.cpu_count()
    return out


def main() -> None:
    print(json.dumps(run(create_parser().parse_args()), indent=1))


if __name__ == "__main__":
    main()
