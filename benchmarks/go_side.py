"""GO side speed: text encoding per phase, index build, search latency and throughput.

Encoding is timed on a random sample of GO terms (all aspects) and extrapolated to every GO
term by token count (the encoder's cost grows with tokens, and later phases have longer
texts). Search is timed against as many random unit vectors as GO has terms, at the text
dimension (cache backend) and the alignment dimension (bank backend): FAISS exact, HNSW, IVF
and a plain torch matmul + topk, for batches of 64 and 256 queries.

    python benchmarks/go_side.py                   # sample 1000, phases 0-2, int8 on phase 0
    python benchmarks/go_side.py --skip-encode     # search timings only
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from protgo.config import GoTextConfig, MiningConfig, default_data_dir
from protgo.stores.go_vectors import GoLookupCache, GoVectorCache
from protgo.stores.vector_resources import VectorResources, exact_search

GO_SQLITE = "raw/debian/root/usr/lib/R/site-library/GO.db/extdata/GO.sqlite"


def create_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sample", type=int, default=1000, help="GO terms encoded per phase")
    p.add_argument("--phases", default="0,1,2")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--no-int8", action="store_true", help="skip the int8 timing")
    p.add_argument("--skip-encode", action="store_true")
    p.add_argument("--skip-search", action="store_true")
    p.add_argument("--k", type=int, default=64, help="neighbours per query (a shortlist)")
    p.add_argument("--dims", default="384,768", help="vector dims: text cache, aligned bank")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", help="also write the figures as JSON here")
    return p


def bench_encode(args, n_terms_out: dict) -> list[dict]:
    from protgo.data.godb import read_terms
    from protgo.data.ontology import Ontology
    from protgo.encoders.text import load_text_encoder
    from protgo.stores.go_text import GoTextStore

    onto = Ontology(read_terms(default_data_dir() / GO_SQLITE))
    all_ids = onto.ids()
    n_terms_out["n"] = len(all_ids)
    sample = sorted(np.random.default_rng(0).choice(all_ids, args.sample, replace=False))
    rows = []
    runs = [(int(p), False) for p in args.phases.split(",")]
    runs += [] if args.no_int8 else [(int(args.phases.split(",")[0]), True)]
    for phase, int8 in runs:
        enc = load_text_encoder(max_length=args.max_length, quantize_int8=int8)
        full = GoTextStore(onto, GoTextConfig(), ids=all_ids)
        tok_all = full.update_phase_and_tokenize(phase, enc)
        part = GoTextStore(onto, GoTextConfig(), ids=sample)
        tok = part.update_phase_and_tokenize(phase, enc)
        start = time.perf_counter()
        enc.encode_ids(tok.input_ids, args.batch_size, progress=True)
        sec = time.perf_counter() - start
        n_tok = sum(len(x) for x in tok.input_ids)
        n_tok_all = sum(len(x) for x in tok_all.input_ids)
        rows.append({
            "phase": phase, "int8": int8, "sample": len(sample), "seconds": round(sec, 1),
            "texts_per_s": round(len(sample) / sec, 1), "tokens_per_s": round(n_tok / sec),
            "mean_tokens": round(n_tok_all / len(all_ids), 1),
            "truncated_all": tok_all.n_truncated,
            "all_terms_min_est": round(n_tok_all / (n_tok / sec) / 60, 1),
        })  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_search(args, n: int) -> list[dict]:
    rows = []
    for d in (int(x) for x in args.dims.split(",")):
        g = torch.Generator().manual_seed(0)
        vecs = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1).numpy()
        lc = GoLookupCache(GoVectorCache([f"GO:{i:07d}" for i in range(n)], ["BP"] * n, vecs, {}))
        queries = {b: torch.nn.functional.normalize(torch.randn(b, d, generator=g), dim=1)
                   for b in (64, 256)}  # fmt: skip
        truth = {b: exact_search(q, lc.matrix, args.k)[0] for b, q in queries.items()}
        for kind in ("exact", "hnsw", "ivf", "matmul"):
            start = time.perf_counter()
            res = None
            if kind != "matmul":
                res = VectorResources(lc, cfg=MiningConfig(index=kind, faiss_threads=2))
            build = time.perf_counter() - start
            for b, q in queries.items():
                if res is None:
                    search = lambda q=q, m=lc.matrix: exact_search(q, m, args.k)  # noqa: E731
                else:
                    search = lambda q=q, res=res: res.search(q, args.k)  # noqa: E731
                sec = _time(search, args.repeats)
                got = search()[0]
                hits = [
                    len(set(a) & set(e))
                    for a, e in zip(got.tolist(), truth[b].tolist(), strict=True)
                ]
                rows.append({
                    "dim": d, "index": kind, "batch": b, "build_s": round(build, 2),
                    "latency_ms": round(sec * 1e3, 1), "queries_per_s": round(b / sec),
                    f"recall@{args.k}": round(float(np.mean(hits)) / args.k, 3),
                })  # fmt: skip
                print(json.dumps(rows[-1]), flush=True)
    return rows


def run(args) -> dict:
    torch.set_num_threads(2)
    n_terms = {"n": 43558}
    out = {"torch_threads": torch.get_num_threads()}
    if not args.skip_encode:
        out["encode"] = bench_encode(args, n_terms)
    out["n_terms"] = n_terms["n"]
    if not args.skip_search:
        out["search"] = bench_search(args, n_terms["n"])
    return out


def main() -> None:
    args = create_parser().parse_args()
    out = run(args)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
