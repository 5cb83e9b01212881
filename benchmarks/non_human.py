"""A shipped human model on proteins of other species: `protgo predict`'s outputs against
the Swiss-Prot label frequencies, scored with cafaeval.

Draws N test proteins of the swissprot-2014 dataset that human-exp does not hold (by id or by
sequence), predicts them with the bundle three ways (the aligner alone; the default blend with
the bundle's human reference; the blend with swissprot-2014 added by ``--reference``: a query's
own entry is never its hit, so the reference is Swiss-Prot minus the query), and scores the
three beside the naive (Swiss-Prot training-split frequencies) and DIAMOND (transfer from the
Swiss-Prot training split) baselines on those proteins: ``protgo evaluate --proteins``. The
truth is Swiss-Prot 2014's own annotations, electronic ones included.

Usage (after `scripts/setup.sh`):
    python benchmarks/non_human.py --model protgo-human --n 500 --out runs/non-human
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path


def create_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="protgo-human")
    p.add_argument("--n", type=int, default=500, help="Proteins.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/non-human"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-dir", type=Path, default=None)
    return p


def sample(n: int, seed: int, data_dir: Path | None) -> list[str]:
    """``n`` annotated swissprot-2014 test proteins whose id and sequence are not human-exp's."""
    from protgo.data.folder import DatasetFolder

    human = DatasetFolder.load("human-exp", data_dir).sequences
    human_seqs = set(human.values())
    sp = DatasetFolder.load("swissprot-2014", data_dir)
    pool = [p for p in sp.ids("test") if p in sp.annotations and p not in human
            and sp.sequences[p] not in human_seqs]  # fmt: skip
    return sorted(random.Random(seed).sample(pool, n))


def run(args: argparse.Namespace) -> dict:
    from protgo.data.fasta import write_fasta
    from protgo.data.folder import DatasetFolder
    from protgo.data.sequence import clean_sequence
    from protgo.eval.evaluate import evaluate_command
    from protgo.infer.bundle import resolve_model
    from protgo.infer.command import run_predict

    args.out.mkdir(parents=True, exist_ok=True)
    pids = sample(args.n, args.seed, args.data_dir)
    sp = DatasetFolder.load("swissprot-2014", args.data_dir)
    (args.out / "proteins.txt").write_text("".join(f"{p}\n" for p in pids))
    fasta = args.out / "proteins.fasta"
    write_fasta([(p, clean_sequence(p, sp.sequences[p])) for p in pids], fasta)
    variants = {"aligner": {"homology": False}, "blend_human": {},
                "blend_swissprot": {"references": ["swissprot-2014"]}}  # fmt: skip
    seconds, files = {}, []
    for name, kw in variants.items():
        t0 = time.perf_counter()
        run_predict(resolve_model(args.model), fasta, args.out / name, data_dir=args.data_dir,
                    overwrite=True, threads=args.threads, **kw)  # fmt: skip
        seconds[name] = round(time.perf_counter() - t0, 1)
        files.append(args.out / f"{name}.tsv")
        files[-1].write_bytes((args.out / name / "protgo.tsv").read_bytes())
    folder = sp.restricted("test", args.out / "proteins.txt")
    table = evaluate_command(folder, "test", files, "naive,diamond", args.out / "evaluate",
                             threads=args.threads)  # fmt: skip
    print(table)
    return {"model": args.model, "proteins": len(pids), "predict_seconds": seconds,
            "results": str(args.out / "evaluate" / "results.tsv")}  # fmt: skip


def main() -> None:
    print(json.dumps(run(create_parser().parse_args()), indent=1))


if __name__ == "__main__":
    main()
