"""Masked-LM pretraining speed for a PLM config: ms per step, residue tokens/s, peak memory,
and the ``train.max_steps`` that fills a given number of minutes.

Runs the real pretraining step (:func:`protgo.plm.pretrain.train_step`: masking, forward
under bf16 autocast on CUDA, backward, clipping, AdamW) on token-budget batches from
:class:`protgo.plm.pretrain.BatchStream` over random sequences with Swiss-Prot-like lengths
(log-normal, median ~300 residues), so it needs no corpus. Timing starts after ``--warmup``
steps and ends with a device sync.

    python benchmarks/plm_step.py --config plm-esm8m --minutes 7   # on a GPU
    python benchmarks/plm_step.py --config plm-small --steps 10     # on a CPU

The plm-esm8m run on one NVIDIA H200 (eager, bf16) took 131 ms per step of 131,072 padded
tokens: 0.59M residue tokens/s, 15.5 GiB peak (about 7% of the GPU's bf16 peak: torch.compile
and larger batches are the untried levers).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def create_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=Path("plm-esm8m"))
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--minutes", type=float, default=None, help="print max_steps for this long")
    return p


def random_corpus(n: int = 4000, seed: int = 0):
    from protgo.plm import corpus as mc

    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(5.7, 0.6, n).astype(int), 20, 3000)
    aa = np.array(list("LAGVSERTDIPKQNFYMHWC"))
    records = [(f"R{i}", "".join(rng.choice(aa, k))) for i, k in enumerate(lengths)]
    return mc.TokenCorpus.from_records(records)


def main(argv=None) -> None:
    from protgo.config import load_model
    from protgo.plm.config import PlmConfig
    from protgo.plm.pretrain import (
        BatchStream,
        TrainState,
        build_model,
        make_optimizer,
        setup_runtime,
        train_step,
        wrap_for_speed,
    )

    args = create_parser().parse_args(argv)
    cfg = load_model(PlmConfig, args.config, args.overrides)
    rt = setup_runtime(cfg.train.threads)
    model = build_model(cfg.model).to(rt.device)
    fwd = wrap_for_speed(model, rt, cfg.train.compile)
    optimizer = make_optimizer(model, cfg.train)
    gen = torch.Generator().manual_seed(0)
    stream = BatchStream(random_corpus(), cfg, TrainState(), gen)
    sync = torch.cuda.synchronize if rt.device.type == "cuda" else (lambda: None)
    n_res = n_pad = 0
    start = 0.0
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            sync()
            start = time.perf_counter()
        tokens = stream.next()
        loss, _, res = train_step(fwd, model, optimizer, tokens, gen, cfg, rt)
        if step >= args.warmup:
            n_res, n_pad = n_res + res, n_pad + tokens.numel()
    float(loss)  # waits for the last step
    seconds = (time.perf_counter() - start) / args.steps
    peak = torch.cuda.max_memory_allocated() / 2**30 if rt.device.type == "cuda" else None
    out = {
        "device": str(rt.device),
        "params": sum(p.numel() for p in model.parameters()),
        "ms_per_step": round(1000 * seconds, 1),
        "residue_tokens_per_s": round(n_res / args.steps / seconds),
        "padded_tokens_per_step": n_pad // args.steps,
        "peak_gib": None if peak is None else round(peak, 1),
    }
    if args.minutes:
        out["max_steps"] = int(60 * args.minutes / seconds)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
