"""Time the baselines and the two metric paths (numpy vs cafaeval) on a real dataset split.

    .venv/bin/python benchmarks/baselines.py --dataset human-exp --split test \
        --baselines naive,diamond --out runs/bench-baselines

Prints one line per step (seconds) and, per aspect, Fmax/Smin from the numpy metrics next to
cafaeval's, so the fast path used during training can be checked on real data too.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def create_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="human-exp")
    p.add_argument("--split", default="test")
    p.add_argument("--baselines", default="naive,diamond")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("runs/bench-baselines"))
    p.add_argument("--skip-cafaeval", action="store_true")
    return p


def run(args: argparse.Namespace) -> None:
    from protgo.data.folder import DatasetFolder
    from protgo.eval.cafa import run_cafaeval, summarize_cafaeval
    from protgo.eval.evaluate import parse_baselines, run_baseline
    from protgo.eval.metrics import evaluate_fast
    from protgo.eval.predictions import write_ground_truth

    folder = DatasetFolder.load(args.dataset)
    pids = folder.ids(args.split)
    onto, ann = folder.ontology, folder.annotations
    files = {}
    for name in parse_baselines(args.baselines):
        t0 = time.perf_counter()
        pred = run_baseline(name, folder, args.split, threads=args.threads)
        t1 = time.perf_counter()
        rows = evaluate_fast(pred, ann, pids, onto, folder.ia)
        t2 = time.perf_counter()
        files[name] = args.out / f"{name}.tsv"
        pred.write_cafa(files[name], min_score=0.01 if name == "naive" else 0.001)
        print(
            f"{name}: predict {t1 - t0:.1f} s, numpy metrics {t2 - t1:.1f} s "
            f"({len(pred.pids)} proteins x {len(pred.terms)} terms)"
        )
        for r in rows:
            print(
                f"  numpy    {name:8s} {r['aspect']} Fmax {r['fmax']:.3f} (tau {r['tau']:.2f}) "
                f"wFmax {r['wfmax']:.3f} Smin {r['smin']:.3f} cov {r['coverage']:.3f}"
            )
    if args.skip_cafaeval:
        return
    gt = args.out / "gt.tsv"
    write_ground_truth(ann, pids, gt)
    t0 = time.perf_counter()
    table, _ = summarize_cafaeval(
        run_cafaeval(folder.obo_path, folder.ia_path, gt, files, args.out, args.threads)
    )
    print(f"cafaeval: {time.perf_counter() - t0:.1f} s for {len(files)} prediction files")
    for r in table.to_dict("records"):
        print(
            f"  cafaeval {r['method']:8s} {r['aspect']} Fmax {r['fmax']:.3f} "
            f"(tau {r['tau']:.2f}) wFmax {r['wfmax']:.3f} Smin {r['smin']:.3f} "
            f"cov {r['coverage']:.3f}"
        )


def main() -> None:
    run(create_parser().parse_args())


if __name__ == "__main__":
    main()
