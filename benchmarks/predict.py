"""Predict throughput (proteins/s) with and without the ESM forward pass.

* excluding ESM: residues read from the residue store (the cached path), then pooling,
  projection, scoring against every GO term, calibration and DAG propagation;
* including ESM: the same proteins embedded now with the checkpoint's ESM (the path of a
  sequence never seen before), then the same steps.

Usage (after `protgo demo`):
    python benchmarks/predict.py --checkpoint runs/demo/checkpoints/best.pt --n 200
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path


def create_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, default=Path("runs/demo/checkpoints/best.pt"))
    p.add_argument("--split", default="test")
    p.add_argument("--n", type=int, default=200, help="Proteins to predict.")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-dir", type=Path, default=None)
    return p


def run(args: argparse.Namespace) -> dict:
    import torch

    from protgo.infer.predict import Predictor

    torch.set_num_threads(args.threads)
    pred = Predictor(args.checkpoint, args.data_dir)
    pids = pred.folder.ids(args.split)[: args.n]
    seqs = {p: pred.folder.sequences[p] for p in pids}
    residues = sum(len(s) for s in seqs.values())
    pred.predict(dict(list(seqs.items())[:4]))  # warm-up (threads, allocator)
    t0 = time.perf_counter()
    pred.predict(seqs)
    cached = time.perf_counter() - t0
    store, pred._store = pred._store, None  # every sequence now goes through ESM
    _ = pred.encoder  # load the model outside the timing
    t0 = time.perf_counter()
    pred.predict(seqs)
    fresh = time.perf_counter() - t0
    pred._store = store
    return {
        "proteins": len(seqs), "residues": residues, "go_terms": len(pred.go_ids),
        "excluding_esm_proteins_per_s": len(seqs) / cached,
        "including_esm_proteins_per_s": len(seqs) / fresh,
        "including_esm_residues_per_s": residues / fresh,
        "threads": args.threads, "cpu_count": os.cpu_count(),
        "load_1min": os.getloadavg()[0],
    }  # fmt: skip


def main() -> None:
    out = run(create_parser().parse_args())
    width = max(map(len, out))
    for k, v in out.items():
        print(f"{k:<{width}}  {v:.2f}" if isinstance(v, float) else f"{k:<{width}}  {v}")


if __name__ == "__main__":
    main()
