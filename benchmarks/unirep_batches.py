"""UniRep on long proteins: residues/s with batches as wide as the input projections of one
pass (the rule before, ``BATCH_BYTES // (16 d)`` positions) against batches as wide as their
hidden states' memory (``OUTPUT_BYTES // (4 d)``, the rule now), same proteins and run, with
the largest difference between the two readings.

    python benchmarks/unirep_batches.py [--model unirep-1900] [--min-len 1000] [--max-len 1500]
        [--n-proteins 48] [--threads 2]
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from protgo.config import ResiduesConfig, default_data_dir
from protgo.data.folder import DatasetFolder
from protgo.encoders import unirep
from protgo.encoders.registry import protein_encoder


def read_all(enc, seqs: list[str], output_bytes: int) -> tuple[float, list[torch.Tensor]]:
    unirep.OUTPUT_BYTES = output_bytes  # the batch width rule reads it at call time
    out: list[torch.Tensor | None] = [None] * len(seqs)
    t0 = time.perf_counter()
    for i, _, v in enc.embed_batched(seqs, batch_tokens=1):
        out[i] = v
    return sum(map(len, seqs)) / (time.perf_counter() - t0), out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="unirep-1900")
    p.add_argument("--min-len", type=int, default=1000)
    p.add_argument("--max-len", type=int, default=1500)
    p.add_argument("--n-proteins", type=int, default=48)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    pool = DatasetFolder.load("human-exp", default_data_dir()).sequences
    band = sorted(s for s in pool.values() if args.min_len <= len(s) <= args.max_len)
    seqs = random.Random(0).sample(band, min(args.n_proteins, len(band)))
    enc = protein_encoder(ResiduesConfig(model=args.model, threads=args.threads))
    d = enc.dim
    now = unirep.OUTPUT_BYTES
    before = unirep.BATCH_BYTES // 4  # OUTPUT_BYTES that gives BATCH_BYTES // (16 d)
    print(f"{args.model}, {len(seqs)} human-exp proteins of {args.min_len}-{args.max_len} "
          f"residues ({sum(map(len, seqs)):,}), {args.threads} threads")  # fmt: skip
    speed_before, ref = read_all(enc, seqs, before)
    speed_now, got = read_all(enc, seqs, now)
    diff = max(float((a - b).abs().max()) for a, b in zip(ref, got, strict=True))
    for name, rule, speed in (("before", before, speed_before), ("now", now, speed_now)):
        print(f"{name:>6}: batches of {rule // (4 * d):,} positions, {speed:,.0f} residues/s")
    print(f"speed-up {speed_now / speed_before:.2f}x; largest difference {diff:.2e}")


if __name__ == "__main__":
    main()
