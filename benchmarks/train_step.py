"""Training speed on CPU for a config (default: the demo): steps/s, proteins/s, the share of
step time in data loading, mining, forward (model + losses), backward and the optimiser part
(clip, AdamW, LR schedule, bank update), and the peak RSS.

Runs the real :class:`protgo.train.trainer.Trainer` (its ``timings`` per step part) for
``--steps`` steps after ``--warmup`` untimed ones, one process, ``--threads`` torch threads.

Residues, in order of preference (the script prints which it used):

1. the store of ``residues.model`` with the config's settings;
2. ``--store DIR``, or else another store of the same model name under the data dir
   (e.g. one from an earlier export of the same architecture: same shapes, other weights);
3. ``--random-residues`` (or when none exists): random fp16 vectors of the model's width,
   one row per residue of the real sequence.

The GO vectors of text phase 0 are encoded on first use (cached under the data dir).

    python benchmarks/train_step.py [--config demo] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

PARTS = ("data", "mining", "forward", "backward", "optimizer")


def create_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=Path("demo"))
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--store", type=Path, default=None, help="a residue store folder")
    p.add_argument("--random-residues", action="store_true")
    return p


class RandomResidues:
    """Store stand-in: random fp16 (L, dim) per protein, L = its sequence length (fixed seed)."""

    def __init__(self, sequences: dict[str, str], dim: int):
        self.lengths = {p: len(s) for p, s in sequences.items()}
        self.dim = dim

    def __contains__(self, pid: str) -> bool:
        return pid in self.lengths

    def get(self, pid: str) -> np.ndarray:
        rng = np.random.default_rng(abs(hash(pid)) % 2**32)
        return rng.standard_normal((self.lengths[pid], self.dim), dtype=np.float32).astype(
            np.float16
        )


def pick_store(cfg, data_dir: Path, args) -> tuple[object, str]:
    """(store, description) following the order in the module docstring."""
    from protgo.data.folder import DatasetFolder
    from protgo.errors import UserError
    from protgo.stores.residues import ResidueStore

    if not args.random_residues:
        if args.store is not None:
            return ResidueStore(args.store), f"residue store {args.store}"
        try:
            store = ResidueStore.for_config(cfg.residues, data_dir)
            return store, f"residue store {store.root.name} (this model's)"
        except UserError:
            name = Path(cfg.residues.model).name
            others = sorted((data_dir / "stores" / "residues").glob(f"{name}-*/manifest.json"))
            if others:
                root = others[-1].parent
                return ResidueStore(root), (
                    f"residue store {root.name} (an earlier export of {name}: same shapes; the "
                    "current export has no store yet)"
                )
    folder = DatasetFolder.load(cfg.data.dataset, data_dir)
    dim = _hidden_size(cfg)
    return RandomResidues(folder.sequences, dim), f"random fp16 residue vectors (dim {dim})"


def _hidden_size(cfg) -> int:
    from protgo.encoders.registry import describe_model

    return describe_model(cfg.residues)[1]["dim"]


def main() -> None:
    args = create_parser().parse_args()
    import torch

    from protgo.config import load_config
    from protgo.train.trainer import Trainer

    torch.set_num_threads(args.threads)
    out = Path(tempfile.mkdtemp(prefix="train_step_"))
    fixed = [f"train.out_dir={out}", "tracking.wandb=disabled", "train.log_every_steps=1000"]
    cfg = load_config(args.config, [*args.overrides, *fixed])
    data_dir = cfg.data.resolved_data_dir()
    store, what = pick_store(cfg, data_dir, args)
    print(f"config {args.config} ({' '.join(args.overrides) or 'as is'}); {what}")
    trainer = Trainer(cfg, data_dir, progress=False, store=store)
    if args.warmup + args.steps > trainer.steps_per_epoch:
        raise SystemExit(f"only {trainer.steps_per_epoch} steps in an epoch; ask for fewer")
    trainer.fit(max_steps=args.warmup)  # start-up: phase 0 resources, first (untimed) steps
    trainer.timings.clear()
    start = time.perf_counter()
    trainer._train_epoch(args.warmup + args.steps)  # the timed steps, same epoch, no start-up
    wall = time.perf_counter() - start
    report(trainer, args, wall)


def report(trainer, args, wall: float) -> None:
    t = trainer.timings
    step_time = sum(t[p] for p in PARTS)
    b = trainer.cfg.train.batch_size
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    figures = {
        "steps": args.steps, "batch_size": b, "threads": args.threads,
        "steps_per_s": args.steps / wall, "proteins_per_s": args.steps * b / wall,
        "step_ms": 1000 * wall / args.steps,
        **{f"share_{p}": t[p] / step_time for p in PARTS},
        "unaccounted_ms_per_step": 1000 * (wall - step_time) / args.steps,
        "peak_rss_mb": rss_mb,
    }  # fmt: skip
    print(f"{figures['steps_per_s']:.2f} steps/s, {figures['proteins_per_s']:.1f} proteins/s "
          f"({figures['step_ms']:.0f} ms/step, batch {b}, {args.threads} threads)")  # fmt: skip
    print("  " + ", ".join(f"{p} {100 * figures[f'share_{p}']:.0f}%" for p in PARTS))
    print(f"  peak RSS {rss_mb:.0f} MB")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
