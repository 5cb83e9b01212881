"""Mining + collation time per batch vs a model step, with the real GO vocabulary.

* Vocabulary and positives: every GO term of the dataset's ontology (``--aspects``) and the
  real training annotations (zero-shot terms masked, DAG expansion as configured).
* GO vectors: random unit vectors of ``--go-dim`` (384, the MiniLM width) unless ``--cache``
  names a real GO vector cache folder (``protgo embed go``); search cost depends on N and D,
  not on the values, but hard-negative overlap with masks does, so say which was used.
* Residues: fp16 rows read from a memory-mapped pool (``--res-dim`` 320, ESM-2 8M's width)
  at random offsets, one contiguous slice per protein with the protein's real length, so
  collation does the same reads, padding and copies as from the residue store.
* Mining is timed at three curriculum points of the default schedule (start, middle, end).
* Model step stand-in (forward + backward + AdamW step, same threads): attention pooling
  (4 learned queries, 4 heads) over random (B, L=400, D=320) residues, projection to 768,
  the batch's unique GO vectors (U, 384) through a 768 projection, and a multi-positive
  InfoNCE over the (B, C) candidates. It is a fair lower bound of the real model's step.

    python benchmarks/mining.py [--batch-sizes 32,128] [--repeats 5] [--index exact]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def create_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="human-exp")
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--aspects", default="BP,MF,CC")
    p.add_argument("--batch-sizes", default="32,128")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--go-dim", type=int, default=384)
    p.add_argument("--res-dim", type=int, default=320)
    p.add_argument("--cache", type=Path, default=None, help="a real GO vector cache folder")
    p.add_argument("--index", default="exact", help="mining.index: exact, hnsw, ivf, torch")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-ancestors", type=int, default=0)
    return p


class PooledResidues:
    """Store-like reader: each protein is a contiguous fp16 slice of one memory-mapped pool."""

    def __init__(self, lengths: dict[str, int], dim: int, work: Path, pool_rows: int = 200_000):
        path = work / "pool.npy"
        pool = np.lib.format.open_memmap(path, "w+", np.float16, (pool_rows, dim))
        pool[:] = np.random.default_rng(0).standard_normal((pool_rows, dim), dtype=np.float32)
        pool.flush()
        self.pool = np.load(path, mmap_mode="r")
        rng = np.random.default_rng(1)
        self.slices = {}
        for pid, n in lengths.items():
            n = min(n, pool_rows)
            start = int(rng.integers(0, pool_rows - n + 1))
            self.slices[pid] = (start, n)

    def __contains__(self, pid: str) -> bool:
        return pid in self.slices

    def length(self, pid: str) -> int:
        return self.slices[pid][1]

    def get(self, pid: str) -> np.ndarray:
        start, n = self.slices[pid]
        return np.array(self.pool[start : start + n])


def go_resources(folder, aspects, args):
    from protgo.config import MiningConfig
    from protgo.stores.go_vectors import GoLookupCache, GoVectorCache
    from protgo.stores.vector_resources import VectorResources

    cfg = MiningConfig(index=args.index, faiss_threads=args.threads)
    if args.cache:
        cache = GoVectorCache.load(args.cache)
        return VectorResources(GoLookupCache(cache), cfg=cfg), "real GO text vectors"
    onto = folder.ontology
    ids = [g for a in aspects for g in onto.ids(a)]
    v = np.random.default_rng(2).standard_normal((len(ids), args.go_dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    cache = GoVectorCache(ids, [onto.aspect(g) for g in ids], v, {})
    return VectorResources(GoLookupCache(cache), cfg=cfg), "random unit vectors"


def model_step_ms(B: int, C: int, U: int, args, repeats: int) -> float:
    """Forward + backward + AdamW of the stand-in model (see the module docstring)."""
    import torch
    from torch import nn

    D, A, L, Q = args.res_dim, 768, 400, 4
    torch.manual_seed(0)
    queries = nn.Parameter(torch.randn(Q, D) * 0.02)
    attn = nn.MultiheadAttention(D, 4, batch_first=True)
    prot_proj, go_proj = nn.Linear(Q * D, A), nn.Linear(args.go_dim, A)
    params = [queries, *attn.parameters(), *prot_proj.parameters(), *go_proj.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-4)
    x = torch.randn(B, L, D)
    pad = torch.zeros(B, L, dtype=torch.bool)
    go = torch.randn(U, args.go_dim)
    cand = torch.randint(0, U, (B, C))
    pos = torch.zeros(B, C)
    pos[:, :4] = 0.25

    def step():
        pooled, _ = attn(queries.expand(B, Q, D), x, x, key_padding_mask=pad)  # (B, Q, D)
        p = nn.functional.normalize(prot_proj(pooled.reshape(B, Q * D)), dim=-1)  # (B, A)
        g = nn.functional.normalize(go_proj(go), dim=-1)  # (U, A)
        logits = 14.0 * torch.einsum("ba,bca->bc", p, g[cand])  # (B, C)
        loss = -(pos * logits.log_softmax(-1)).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def run(args) -> None:
    import torch

    from protgo.config import Config
    from protgo.data.folder import DatasetFolder
    from protgo.mining.batch_builder import BatchBuilder
    from protgo.mining.collator import ContrastiveEmbCollator
    from protgo.mining.curriculum import CurriculumScheduler
    from protgo.mining.dataset import FewShotBatchSampler, FewZeroConfig, ProteinEmbDataset

    torch.set_num_threads(args.threads)
    cfg = Config()
    mcfg = cfg.mining.model_copy(update={"max_ancestors": args.max_ancestors})
    aspects = [a.strip() for a in args.aspects.split(",")]
    folder = DatasetFolder.load(args.dataset, args.data_dir)
    res, what = go_resources(folder, aspects, args)
    fz = FewZeroConfig.from_term_class(folder.term_class, mcfg.few_shot_share)
    work = Path(tempfile.mkdtemp(prefix="protgo-mining-bench-"))
    train = folder.ids("train")
    store = PooledResidues({p: len(folder.sequences[p]) for p in train}, args.res_dim, work)
    t0 = time.perf_counter()
    ds = ProteinEmbDataset.from_folder(folder, "train", store, mcfg, fz)
    print(f"dataset: {len(ds)} training proteins, {len(res.ids)} GO terms ({what}, dim "
          f"{res.matrix.shape[1]}, index {args.index}), set-up {time.perf_counter() - t0:.1f} s; "
          f"{args.threads} threads")  # fmt: skip
    builder = BatchBuilder(res, folder.ontology, mcfg, fz.zero, seed=0)
    coll = ContrastiveEmbCollator(mcfg, fz.zero, ds.spec)
    sched = CurriculumScheduler(cfg.curriculum, cfg.stages, 10_000, 1000)
    points = {"start": 0, "middle": 5000, "end": 9999}
    head = " ".join(f"{'mine ' + k + ' ms':>15}" for k in points)
    print(f"{'B':>4} {'collate ms':>11} {'L pad':>6} {head} {'U':>6} {'model step ms':>14}")
    for B in [int(b) for b in args.batch_sizes.split(",")]:
        sampler = FewShotBatchSampler.for_dataset(ds, B, seed=0)
        batches = [b for _, b in zip(range(args.repeats), sampler, strict=False)]
        t_col, t_mine, lpad, us = [], {k: [] for k in points}, [], []
        for idx in batches:
            t0 = time.perf_counter()
            batch = coll([ds[i] for i in idx])
            t_col.append(time.perf_counter() - t0)
            lpad.append(batch["residues"].shape[1])
            for k, step in points.items():
                t0 = time.perf_counter()
                out = builder.build(batch, sched(step))
                t_mine[k].append(time.perf_counter() - t0)
                us.append(len(out["go_ids"]))
        step_ms = model_step_ms(B, mcfg.n_candidates, int(np.median(us)), args, args.repeats)
        med = {k: 1000 * statistics.median(v) for k, v in t_mine.items()}
        print(f"{B:>4} {1000 * statistics.median(t_col):>11.1f} {int(np.median(lpad)):>6} "
              + " ".join(f"{med[k]:>15.1f}" for k in points)
              + f" {int(np.median(us)):>6} {step_ms:>14.1f}")  # fmt: skip
    for f in work.iterdir():
        f.unlink()
    os.rmdir(work)


def main() -> None:
    run(create_parser().parse_args())


if __name__ == "__main__":
    main()
