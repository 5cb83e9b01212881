"""What the projected residue store costs: full unirep-1900 vectors against their PCA projection.

    python benchmarks/projection.py [--dataset human-exp] [--train 600] [--test 200] [--dim 512]

Embeds ``--train`` training, ``--test`` test and ``--test / 2`` valid proteins (random) of a
dataset with the
protein model (fp32), fits the store's projection (``stores.projection``: PCA on the first
~100k residues by sequence hash, as a projected store does) and compares, on the same
proteins, k-NN and MLP (the project's baselines) on the full mean vectors against the means of
the projected residues (the information a model reading the projected store can pool: the
mean of projected residues is the projection of the mean). Prints the share of residue
variance kept, per-residue reconstruction cosine, disk per residue, and test Fmax per aspect
(numpy twin of cafaeval, ``eval.metrics.evaluate_fast``) for both.
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np

from protgo.config import ResiduesConfig, default_data_dir
from protgo.data.folder import DatasetFolder
from protgo.data.sequence import sequence_hash
from protgo.encoders.registry import protein_encoder
from protgo.eval.baselines import MlpOptions, knn, mlp
from protgo.eval.metrics import evaluate_fast
from protgo.stores.projection import SAMPLE_RESIDUES, Projection, sample_for_fit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="human-exp")
    ap.add_argument("--model", default="unirep-1900")
    ap.add_argument("--train", type=int, default=600, help="training proteins (random)")
    ap.add_argument("--test", type=int, default=200, help="test proteins (random)")
    ap.add_argument("--dim", type=int, default=512)
    args = ap.parse_args()

    folder = DatasetFolder.load(args.dataset, default_data_dir())
    rng = random.Random(0)
    train_ids, valid_ids, test = (
        sorted(rng.sample(folder.ids(s), min(n, len(folder.ids(s)))))
        for s, n in (("train", args.train), ("valid", args.test // 2), ("test", args.test))
    )
    pids = train_ids + valid_ids + test
    seqs = {p: folder.sequences[p] for p in pids}
    enc = protein_encoder(ResiduesConfig(model=args.model, dtype="fp32"))
    sample = {h for h, _ in sample_for_fit([(sequence_hash(s), s) for s in seqs.values()])}
    t0 = time.perf_counter()
    means, kept = {}, []
    order = list(seqs)
    for idx, _, vec in enc.embed_batched([seqs[p] for p in order], 8192):
        v = vec.numpy()
        means[order[idx]] = v.mean(0)
        if sequence_hash(seqs[order[idx]]) in sample:
            kept.append(v)
    seconds = time.perf_counter() - t0
    residues = sum(map(len, seqs.values()))
    sample_x = np.concatenate(kept)
    proj = Projection.fit(sample_x, args.dim)
    recon = proj.apply(sample_x) @ proj.components.T + proj.mean
    cos = (recon * sample_x).sum(1) / (
        np.linalg.norm(recon, axis=1) * np.linalg.norm(sample_x, axis=1)
    )
    print(f"{args.model}: {len(seqs)} proteins, {residues} residues embedded in {seconds:.0f} s "
          f"({residues / seconds:.0f} residues/s); projection fitted on {len(sample_x)} residues "
          f"(target {SAMPLE_RESIDUES})")  # fmt: skip
    print(f"projection {enc.dim} -> {args.dim}: variance kept {proj.explained:.4f}; residue "
          f"reconstruction cosine mean {cos.mean():.4f}, min {cos.min():.4f}; fp16 disk "
          f"{2 * enc.dim} -> {2 * args.dim} bytes per residue")  # fmt: skip

    onto, ann = folder.ontology, folder.annotations
    train = {p: ann[p] for p in train_ids if p in ann}
    valid = {p: ann[p] for p in valid_ids if p in ann}
    forms = {"full": means, "projected": {p: proj.apply(m[None])[0] for p, m in means.items()}}
    print("form       method  " + "  ".join(f"{a:>5}" for a in folder.aspects))
    for form, emb in forms.items():
        q = {p: emb[p] for p in test}
        for name in ("knn", "mlp"):
            if name == "knn":
                pred = knn(emb, train, q, onto)
            else:
                pred = mlp(emb, train, emb, valid, q, onto, MlpOptions(threads=2), ia=folder.ia)
            rows = {r["aspect"]: r["fmax"] for r in evaluate_fast(pred, ann, test, onto)}
            cells = "  ".join(f"{rows.get(a, float('nan')):.3f}" for a in folder.aspects)
            print(f"{form:10} {name:6}  {cells}")


if __name__ == "__main__":
    main()
