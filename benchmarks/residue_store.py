"""Residue store throughput: the full store path vs. a bare model forward over the same windows.

Both paths run in fresh subprocesses (so each peak RSS is its own) on the same real proteins,
some longer than the window, with the same model and the same padded batches:

* bare:  ``model(input_ids, attention_mask)`` on batches prepared beforehand (untimed);
* store: ``ResidueStore.embed`` (cleaning, planning, tokenising, batching, forward,
  stitching, fp16 memmap writes, checksums, fsync, manifest merge).

The model is the shipped ``protgo-esm-small`` unless ``--random-init``: a random-init ESM-2 8M
architecture (6 layers, 320 dims, 20 heads), saved once and loaded through the real path.

    python benchmarks/residue_store.py [--n-proteins 150] [--win-size 256] [--model DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def create_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="human-exp")
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--n-proteins", type=int, default=150)
    p.add_argument("--win-size", type=int, default=256)
    p.add_argument("--win-stride", type=int, default=192)
    p.add_argument("--batch-tokens", type=int, default=4096)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=3, help="alternating runs of each path")
    p.add_argument("--model", default=None, help="checkpoint dir (default: see docstring)")
    p.add_argument("--random-init", action="store_true", help="random ESM-2 8M architecture")
    p.add_argument("--mode", choices=["bare", "store"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--work", type=Path, default=None, help=argparse.SUPPRESS)
    return p


def pick_proteins(args) -> dict[str, str]:
    """A fixed random sample of the dataset, with at least a quarter longer than the window."""
    from protgo.data.folder import DatasetFolder

    seqs = DatasetFolder.load(args.dataset, args.data_dir).sequences
    ids = sorted(seqs)
    random.Random(0).shuffle(ids)
    longer = [p for p in ids if len(seqs[p]) > args.win_size][: args.n_proteins // 4]
    rest = [p for p in ids if p not in set(longer)][: args.n_proteins - len(longer)]
    return {p: seqs[p] for p in sorted(longer + rest)}


def make_model(work: Path) -> str:
    """A random-init ESM-2 8M-architecture checkpoint with the ESM-2 vocabulary."""
    import torch
    from transformers import EsmConfig, EsmForMaskedLM

    from protgo.encoders.esm_vocab import ESM2_VOCAB, make_esm2_tokenizer

    torch.manual_seed(0)
    out = work / "esm2-8m-random"
    tok = make_esm2_tokenizer(out)
    cfg = EsmConfig(
        vocab_size=len(ESM2_VOCAB), hidden_size=320, num_hidden_layers=6,
        num_attention_heads=20, intermediate_size=1280, max_position_embeddings=1026,
        position_embedding_type="rotary", pad_token_id=tok.pad_token_id,
        mask_token_id=tok.mask_token_id, token_dropout=True, emb_layer_norm_before=False,
    )  # fmt: skip
    EsmForMaskedLM(cfg).eval().save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def encoder(args):
    from protgo.config import ResiduesConfig
    from protgo.encoders.protein import ProteinEncoder

    return ProteinEncoder(
        ResiduesConfig(model=args.model, win_size=args.win_size, win_stride=args.win_stride,
                       batch_tokens=args.batch_tokens, threads=args.threads)
    )  # fmt: skip


def run_bare(args) -> dict:
    import torch

    from protgo.data.sequence import clean_sequence

    enc = encoder(args)
    seqs = pick_proteins(args)
    cleans = [clean_sequence(p, s) for p, s in seqs.items()]
    pad = enc._vocab["<pad>"]
    batches = []  # (ids, mask) per batch, built before the clock starts
    for batch in enc.window_batches(cleans, args.batch_tokens):
        toks = [enc.window_tokens(cleans, w) for w in batch]
        ids = torch.full((len(toks), max(map(len, toks))), pad, dtype=torch.long)
        for i, t in enumerate(toks):
            ids[i, : len(t)] = torch.as_tensor(t)
        batches.append((ids, (ids != pad).long()))
    with torch.inference_mode():
        enc.model(input_ids=batches[0][0][:1], attention_mask=batches[0][1][:1])  # warm-up
        t0, c0 = time.perf_counter(), time.process_time()
        for ids, mask in batches:
            enc.model(input_ids=ids, attention_mask=mask)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    tokens = sum(int(m.sum()) for _, m in batches)
    return {"seconds": seconds, "cpu_seconds": cpu, "residues": sum(map(len, cleans)),
            "window_tokens": tokens}  # fmt: skip


def run_store(args) -> dict:
    import torch

    from protgo.stores.residues import ResidueStore

    enc = encoder(args)
    seqs = pick_proteins(args)
    with torch.inference_mode():  # same warm-up as the bare path
        enc.forward_windows([enc.tokenize("MKV")])
    store = ResidueStore.create(Path(tempfile.mkdtemp(dir=args.work)), enc.settings())
    t0, c0 = time.perf_counter(), time.process_time()
    report = store.embed(enc, seqs, batch_tokens=args.batch_tokens, progress=False)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    disk = sum(f.stat().st_size for f in store.root.rglob("*") if f.is_file())
    return {"seconds": seconds, "cpu_seconds": cpu, "residues": report.residues,
            "disk_bytes": disk}  # fmt: skip


def child(args) -> None:
    out = run_bare(args) if args.mode == "bare" else run_store(args)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


def spawn(args, mode: str, work: Path) -> dict:
    cmd = [sys.executable, __file__, "--mode", mode, "--work", str(work), "--model", args.model,
           "--dataset", args.dataset, "--n-proteins", str(args.n_proteins),
           "--win-size", str(args.win_size), "--win-stride", str(args.win_stride),
           "--batch-tokens", str(args.batch_tokens)]  # fmt: skip
    if args.data_dir:
        cmd += ["--data-dir", str(args.data_dir)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        sys.exit(f"{mode} run failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def run(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.random_init or args.model is None:
            args.model = "protgo-esm-small" if not args.random_init else make_model(work)
        # Alternate the paths and keep each one's fastest run: other jobs share the CPU.
        runs = {"bare": [], "store": []}
        for _ in range(args.repeats):
            for mode in runs:
                runs[mode].append(spawn(args, mode, work))
        bare = min(runs["bare"], key=lambda r: r["seconds"])
        store = min(runs["store"], key=lambda r: r["seconds"])
    n = store["residues"]
    label = args.model if Path(args.model).is_dir() else "random-init ESM-2 8M architecture"
    result = {
        "model": label, "proteins": args.n_proteins, "residues": n,
        "window_tokens": bare["window_tokens"], "win": [args.win_size, args.win_stride],
        "bare_res_per_s": round(n / bare["seconds"]),
        "store_res_per_s": round(n / store["seconds"]),
        "store_over_bare": round(bare["seconds"] / store["seconds"], 3),
        # CPU time is less disturbed than wall time when other jobs share the cores.
        "store_over_bare_cpu": round(
            min(r["cpu_seconds"] for r in runs["bare"])
            / min(r["cpu_seconds"] for r in runs["store"]), 3),
        "all_seconds": {m: [round(r["seconds"], 2) for r in rs] for m, rs in runs.items()},
        "all_cpu_seconds": {
            m: [round(r["cpu_seconds"], 2) for r in rs] for m, rs in runs.items()},
        "bytes_per_residue": round(store["disk_bytes"] / n, 1),
        "peak_rss_mb": {"bare": round(bare["peak_rss_mb"]), "store": round(store["peak_rss_mb"])},
        "load_avg_1m": os.getloadavg()[0],
    }  # fmt: skip
    for k, v in result.items():
        print(f"{k:>18}: {v}")
    return result


def main() -> None:
    args = create_parser().parse_args()
    if args.mode:
        child(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
