"""Proteome-scale `protgo predict`: proteins/s and peak memory per stage.

Runs the real ``protgo predict`` (:func:`protgo.infer.command.run_predict`) of a shipped
bundle on N proteins with human lengths (each length drawn from the human-exp proteins, each
sequence a Swiss-Prot 2014 protein of that length, none in the residue store: every one is
embedded), with an empty data dir, and times its stages by wrapping them:

* start: loading the bundle (weights, ontology, GO vectors, homology reference);
* residues: the protein language model's forward pass;
* aligner: pooling, projection, scoring every GO term, calibration, propagation;
* homology: DIAMOND against the bundle's reference and the blend;
* writing: each chunk's output files, then the final files assembled from the chunks.

A sampler thread reads the process's resident memory every 50 ms and keeps the peak of each
stage. Without homology costs the same run less its homology stage.

Usage (after `scripts/setup.sh`):
    python benchmarks/proteome.py --model protgo-human --n 20000 --out runs/bench-proteome
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import threading
import time
from collections import defaultdict
from pathlib import Path


def create_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="protgo-human")
    p.add_argument("--n", type=int, default=20000, help="Proteins.")
    p.add_argument("--out", type=Path, default=Path("runs/bench-proteome"))
    p.add_argument("--no-homology", action="store_true")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", type=Path, default=None, help="Where the datasets are built.")
    return p


class Stages:
    """Wall time and peak resident memory per stage, from wrapped functions."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.peak_mb: dict[str, float] = defaultdict(float)
        self.current = "other"
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _rss_mb(self) -> float:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * self._page / 2**20

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            stage = self.current
            self.peak_mb[stage] = max(self.peak_mb[stage], self._rss_mb())

    def wrap(self, owner, name: str, stage: str) -> None:
        real = getattr(owner, name)

        def timed(*args, **kwargs):
            outer, self.current = self.current, stage
            t0 = time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                self.seconds[stage] += time.perf_counter() - t0
                self.current = outer

        setattr(owner, name, timed)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def human_length_sample(n: int, seed: int, data_dir: Path | None) -> dict[str, str]:
    """``n`` Swiss-Prot 2014 proteins (not in human-exp) whose lengths follow human-exp's."""
    import bisect

    from protgo.data.folder import DatasetFolder
    from protgo.data.sequence import clean_sequence

    human = DatasetFolder.load("human-exp", data_dir).sequences
    pool = sorted(
        (len(s), p, s)
        for p, s in DatasetFolder.load("swissprot-2014", data_dir).sequences.items()
        if p not in human
    )
    lengths, human_lengths = [x[0] for x in pool], [len(s) for s in human.values()]
    rng = random.Random(seed)
    taken: dict[str, str] = {}
    while len(taken) < min(n, len(pool)):  # each draw: a human length, a protein near it
        i = bisect.bisect_left(lengths, rng.choice(human_lengths)) + rng.randrange(200)
        _, pid, seq = pool[min(i, len(pool) - 1)]
        taken.setdefault(pid, clean_sequence(pid, seq))
    return taken


def run(args: argparse.Namespace) -> dict:
    import torch

    from protgo.data.fasta import write_fasta
    from protgo.infer import command, stream
    from protgo.infer.bundle import resolve_model
    from protgo.infer.predict import Predictor

    torch.set_num_threads(os.cpu_count() or 1)
    seqs = human_length_sample(args.n, args.seed, args.data_dir)
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    fasta = args.out / "proteins.fasta"
    write_fasta(seqs.items(), fasta)
    empty = args.out / "empty-data-dir"  # no residue store: every protein is embedded
    stages = Stages()
    stages.wrap(Predictor, "__init__", "start")
    stages.wrap(Predictor, "residues", "residues")
    stages.wrap(Predictor, "protein_vectors", "aligner")
    stages.wrap(Predictor, "scores", "aligner")
    stages.wrap(Predictor, "_homology_parts", "homology")
    stages.wrap(command, "_chunk_files", "writing")
    stages.wrap(stream.ChunkedRun, "write", "writing")
    stages.wrap(command, "write_outputs", "writing")
    t0 = time.perf_counter()
    info = command.run_predict(
        resolve_model(args.model), fasta, args.out / "predictions", data_dir=empty,
        batch_size=args.batch_size, homology=not args.no_homology, progress=True,
        threads=os.cpu_count() or 1,
    )  # fmt: skip
    total = time.perf_counter() - t0
    stages.stop()
    residues = sum(map(len, seqs.values()))
    return {
        "model": args.model, "proteins": len(seqs), "residues": residues,
        "mean_length": round(residues / len(seqs), 1), "homology": not args.no_homology,
        "total_s": round(total, 1), "proteins_per_s": round(len(seqs) / total, 2),
        "stage_s": {k: round(v, 1) for k, v in stages.seconds.items()},
        "stage_peak_rss_mb": {k: round(v) for k, v in stages.peak_mb.items()},
        "without_homology_s": round(total - stages.seconds.get("homology", 0.0), 1),
        "protgo_tsv_mb": round((args.out / "predictions" / "protgo.tsv").stat().st_size / 2**20),
        "cpu_count": os.cpu_count(), "load_1min": os.getloadavg()[0],
        "proteins_without_cafa_lines": info["proteins_without_cafa_lines"],
        "cpu": _cpu_name(),
    }  # fmt: skip


def _cpu_name() -> str:
    """The CPU's model name and whether it has native bf16 (speeds differ by both)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines()
                 if ln.startswith("model name")), "unknown CPU")  # fmt: skip
    family = next((ln.split(":", 1)[1].strip() for ln in info.splitlines()
                   if ln.startswith("cpu family")), "?")  # fmt: skip
    bf16 = "avx512_bf16" in info
    return f"{name} (family {family}, {'AVX512-BF16' if bf16 else 'no native bf16'})"


def main() -> None:
    args = create_parser().parse_args()
    summary = run(args)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")  # for cards
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
