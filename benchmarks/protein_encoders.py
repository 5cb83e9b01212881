"""Protein encoder speed: residues/s for each model (UniRep or ESM), fp32 against bf16 in the
same run, on the same real human proteins, through ``embed_batched`` (the residue store's
path), with the per-residue cosine of bf16 to fp32.

    python benchmarks/protein_encoders.py [--n-proteins 64] [--max-len 600] [--threads 2]
        [--models protgo-esm-small,unirep-64,unirep-256,unirep-1900] [--batch-tokens 8192]
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from protgo.config import ResiduesConfig, default_data_dir
from protgo.data.folder import DatasetFolder
from protgo.encoders.registry import protein_encoder


def run(name: str, dtype: str, seqs: list[str], args) -> tuple[float, list[torch.Tensor]]:
    enc = protein_encoder(ResiduesConfig(model=name, dtype=dtype, threads=args.threads))
    out: list[torch.Tensor | None] = [None] * len(seqs)
    t0 = time.perf_counter()
    for i, _, v in enc.embed_batched(seqs, args.batch_tokens):
        out[i] = v
    return sum(map(len, seqs)) / (time.perf_counter() - t0), out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-proteins", type=int, default=64)
    p.add_argument("--max-len", type=int, default=600)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-tokens", type=int, default=8192)
    p.add_argument("--models", default="protgo-esm-small,unirep-64,unirep-256,unirep-1900")
    args = p.parse_args()
    pool = DatasetFolder.load("human-exp", default_data_dir()).sequences
    seqs = random.Random(0).sample([s for s in pool.values() if len(s) <= args.max_len],
                                   args.n_proteins)  # fmt: skip
    torch.set_num_threads(args.threads)
    print(f"{len(seqs)} human-exp proteins <= {args.max_len} aa, {sum(map(len, seqs))} residues, "
          f"{args.threads} threads, batch_tokens {args.batch_tokens}")  # fmt: skip
    for name in args.models.split(","):
        fp32, ref = run(name, "fp32", seqs, args)
        bf16, got = run(name, "bf16", seqs, args)
        cos = torch.cat([torch.nn.functional.cosine_similarity(a, b, dim=1)
                         for a, b in zip(ref, got, strict=True)])  # fmt: skip
        print(f"{name:12s} fp32 {fp32:8.0f} res/s   bf16 {bf16:8.0f} res/s ({bf16 / fp32:.2f}x); "
              f"bf16 vs fp32 cosine min {cos.min():.5f} mean {cos.mean():.6f}")  # fmt: skip


if __name__ == "__main__":
    main()
