"""Torch thread settings on a shared CPU: a real protgo workload under competing load.

The workload (a fresh subprocess per run, so the OpenMP settings take effect at start) is one
of the project's hot paths on real inputs:

* ``text``: the GO text encoder (MiniLM, the default dtype) on ``--texts`` GO term texts;
* ``residues``: the shipped ``protgo-esm-small`` on the first ``--proteins`` human-exp proteins;
* ``train``: ``--n`` training steps of ``--config`` (``benchmarks/train_step.py``: the
  residue store of the config's model, or random vectors of the real lengths without one).

Each thread setting runs idle, then beside ``--load`` busy processes (one core each, pure
Python loops, as another user's single-thread job would be). Settings: torch threads (1, all
cores) x OpenMP wait policy: libgomp's own (``OMP_WAIT_POLICY`` unset: spin a while, then
sleep) and ``PASSIVE`` (protgo's default, see ``protgo/__init__.py``).

    python benchmarks/shared_cpu.py [--workload text|residues|train] [--load 0,1,2] [--repeats 2]
        [--threads 1,2] [--policies unset,PASSIVE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

# torch is imported before protgo, so an unset OMP_WAIT_POLICY reaches libgomp as unset
# (protgo's own default, PASSIVE, is set only when protgo loads first).
CHILD = r"""
import json, sys, time, torch
workload, n = sys.argv[1], int(sys.argv[2])
if workload == "text":
    import numpy as np
    from protgo.config import GoTextConfig, default_data_dir
    from protgo.data.godb import read_terms
    from protgo.data.ontology import Ontology
    from protgo.encoders.text import load_text_encoder
    from protgo.stores.go_text import GoTextStore
    sql = "raw/debian/root/usr/lib/R/site-library/GO.db/extdata/GO.sqlite"
    onto = Ontology(read_terms(default_data_dir() / sql))
    ids = sorted(np.random.default_rng(0).choice(onto.ids(), n, replace=False))
    enc = load_text_encoder()
    tok = GoTextStore(onto, GoTextConfig(), ids=ids).update_phase_and_tokenize(0, enc)
    work = lambda: enc.encode_ids(tok.input_ids, 64, progress=False)
    units = n
else:
    from protgo.config import ResiduesConfig, default_data_dir
    from protgo.data.fasta import read_fasta
    from protgo.encoders.protein import ProteinEncoder
    seqs = read_fasta(default_data_dir() / "datasets/human-exp/proteins.fasta")
    cleans = [s for _, s in zip(range(n), seqs.values())]
    enc = ProteinEncoder(ResiduesConfig())
    work = lambda: list(enc.embed_batched(cleans, 8192))
    units = sum(map(len, cleans))
work()  # warm-up
start = time.perf_counter()
work()
print(json.dumps({"units_per_s": units / (time.perf_counter() - start),
                  "threads": torch.get_num_threads()}))
"""


def create_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workload", choices=("text", "residues", "train"), default="text")
    p.add_argument("--n", type=int, default=None, help="texts (300), proteins (60), steps (20)")
    p.add_argument("--config", default="default", help="the train workload's config")
    p.add_argument("--load", default="0,1,2", help="competing busy processes")
    p.add_argument("--threads", default=None, help="torch thread counts (default: 1,all cores)")
    p.add_argument("--policies", default="unset,PASSIVE", help="OMP_WAIT_POLICY settings")
    p.add_argument("--repeats", type=int, default=2)
    return p


def _busy(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def _run(workload: str, n: int, threads: str, policy: str, config: str) -> dict:
    env = dict(os.environ, OMP_WAIT_POLICY=policy, OMP_NUM_THREADS=threads)
    if policy == "unset":
        del env["OMP_WAIT_POLICY"]
    if workload == "train":
        cmd = [sys.executable, str(Path(__file__).with_name("train_step.py")), "--config",
               config, "--steps", str(n), "--threads", threads]  # fmt: skip
    else:
        cmd = [sys.executable, "-c", CHILD, workload, str(n)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    if workload == "train":
        return {"units_per_s": got["steps_per_s"], "threads": got["threads"]}
    return got


def main() -> None:
    args = create_parser().parse_args()
    n = args.n or {"text": 300, "residues": 60, "train": 20}[args.workload]
    threads = (args.threads or f"1,{os.cpu_count() or 1}").split(",")
    settings = [(t, p) for p in args.policies.split(",") for t in threads]
    unit = {"text": "texts/s", "residues": "residues/s", "train": "steps/s"}[args.workload]
    for load in (int(x) for x in args.load.split(",")):
        busy = _busy(load)
        time.sleep(1.0)
        try:
            for threads, policy in settings:
                rates = [
                    _run(args.workload, n, threads, policy, args.config)
                    for _ in range(args.repeats)
                ]
                best = max(r["units_per_s"] for r in rates)
                print(json.dumps({"load": load, "threads": threads,
                                  "used": rates[0]["threads"], "wait_policy": policy,
                                  unit: round(best, 2)}), flush=True)  # fmt: skip
        finally:
            for p in busy:
                p.kill()


if __name__ == "__main__":
    main()
