"""GO side speed: text encoding per phase, index build, search latency and throughput.

Encoding is timed per encoder variant (fp32 reference, bf16 as the encoder runs it by default,
which on a CPU is a oneDNN-packed bf16 copy, bf16 under autocast, dynamic int8) on the same
texts: a random sample of GO terms (all aspects), or every GO term with ``--all-go``, which
also reports how many of the fp32 top-10 terms each variant keeps for real protein queries
(the mean text vector of a human-exp protein's annotated terms). Search is timed against as
many random unit vectors as GO has terms, at the text dimension (cache backend) and the
alignment dimension (bank backend): FAISS exact, HNSW, IVF and a plain torch matmul + topk, for
batches of 64 and 256 queries.

    python benchmarks/go_side.py                   # sample 1000, phases 0-2: fp32, bf16, int8
    python benchmarks/go_side.py --all-go --phases 0 --no-int8 --skip-search  # all of GO
    python benchmarks/go_side.py --skip-encode     # search timings only
    python benchmarks/go_side.py --phases 0 --dtypes fp32 --no-int8 --onnx --skip-search
                                                   # ONNX Runtime fp32/int8 beside torch fp32
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

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
    p.add_argument(
        "--encoder",
        default="all-MiniLM-L6-v2",
        help="text encoder: the packaged default, a local directory or a hub id",
    )
    p.add_argument(
        "--dtypes",
        default="fp32,bf16-autocast,bf16",
        help="encoder dtypes, fp32 the reference; bf16-autocast: bf16 under autocast even where "
        "the default bf16 path is the packed copy",
    )
    p.add_argument("--no-int8", action="store_true", help="skip the int8 timing")
    p.add_argument(
        "--onnx",
        action="store_true",
        help="also time ONNX Runtime, fp32 and dynamic int8 (pip install onnx onnxruntime)",
    )
    p.add_argument(
        "--all-go",
        action="store_true",
        help="encode every GO term (not a sample); adds top-10 retrieval overlap",
    )
    p.add_argument("--queries", type=int, default=1000, help="real protein queries (--all-go)")
    p.add_argument("--skip-encode", action="store_true")
    p.add_argument("--skip-search", action="store_true")
    p.add_argument("--k", type=int, default=64, help="neighbours per query (a shortlist)")
    p.add_argument("--dims", default="384,768", help="vector dims: text cache, aligned bank")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", help="also write the figures as JSON here")
    return p


def _encode_variant(onto, ids, phase: int, dtype: str, int8: bool, batch_size: int, max_length,
                    encoder: str):  # fmt: skip
    """(vectors, seconds, tokens) for ``ids`` at ``phase`` with one encoder variant."""
    from protgo.encoders.text import load_text_encoder
    from protgo.stores.go_text import GoTextStore

    enc = load_text_encoder(
        encoder, max_length=max_length, quantize_int8=int8, dtype=dtype.removesuffix("-autocast")
    )
    if dtype.endswith("-autocast"):
        enc.bf16_path = "autocast"
    tok = GoTextStore(onto, GoTextConfig(), ids=ids).update_phase_and_tokenize(phase, enc)
    enc.encode_ids(tok.input_ids[:batch_size], batch_size, progress=False)  # warm-up
    start = time.perf_counter()
    vecs = enc.encode_ids(tok.input_ids, batch_size, progress=True)
    return vecs, time.perf_counter() - start, sum(len(x) for x in tok.input_ids)


def _encode_onnx(onto, ids, phase: int, int8: bool, batch_size: int, max_length, encoder: str):
    """(vectors, seconds, tokens) as :func:`_encode_variant`, with the fp32 encoder's
    transformer exported to ONNX and run by ONNX Runtime on the CPU (2 threads), optionally
    after ONNX Runtime's dynamic int8 quantisation (per channel) of every MatMul but the
    ``output.dense`` ones, which stay fp32 as in ``quantize_int8_dynamic``. Batching, padding
    and pooling are the encoder's own (``TextEncoder.encode_ids``)."""
    import onnxruntime as ort

    from protgo.encoders.text import load_text_encoder
    from protgo.stores.go_text import GoTextStore

    enc = load_text_encoder(encoder, max_length=max_length, dtype="fp32")
    tok = GoTextStore(onto, GoTextConfig(), ids=ids).update_phase_and_tokenize(phase, enc)

    class Hidden(torch.nn.Module):  # the transformer's token states, for the export
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    class OnnxModel(torch.nn.Module):  # what encode_ids calls, answered by ONNX Runtime
        def __init__(self, model, session):
            super().__init__()
            self.model, self.config, self.session = model, model.config, session

        def forward(self, input_ids, attention_mask, **_):
            feed = {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()}
            return SimpleNamespace(
                last_hidden_state=torch.from_numpy(self.session.run(None, feed)[0])
            )

    with tempfile.TemporaryDirectory(prefix="protgo-onnx-") as scratch:
        path = Path(scratch) / "model.onnx"
        example = enc.tokenizer.pad(
            {"input_ids": [list(x) for x in tok.input_ids[:4]]}, return_tensors="pt"
        )
        names = ("input_ids", "attention_mask", "hidden")
        torch.onnx.export(
            Hidden(enc.model).eval(), (example["input_ids"], example["attention_mask"]), path,
            input_names=list(names[:2]), output_names=[names[2]],
            dynamic_axes={n: {0: "batch", 1: "length"} for n in names},
            opset_version=17, dynamo=False,
        )  # fmt: skip
        if int8:
            import onnx
            from onnxruntime.quantization import QuantType, quantize_dynamic

            graph = onnx.load(path).graph  # output.dense stays fp32, as in quantize_int8_dynamic
            keep = [
                n.name for n in graph.node if n.op_type == "MatMul" and "output/dense" in n.name
            ]
            quantize_dynamic(
                path, path.with_name("model-int8.onnx"), weight_type=QuantType.QInt8,
                per_channel=True, nodes_to_exclude=keep,
            )  # fmt: skip
            path = path.with_name("model-int8.onnx")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = 2, 1
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    enc.model = OnnxModel(enc.model, session)
    enc.encode_ids(tok.input_ids[:batch_size], batch_size, progress=False)  # warm-up
    start = time.perf_counter()
    vecs = enc.encode_ids(tok.input_ids, batch_size, progress=True)
    return vecs, time.perf_counter() - start, sum(len(x) for x in tok.input_ids)


def _protein_queries(ids: list[str], n: int) -> list[list[int]]:
    """Rows of ``ids`` annotated to each of ``n`` human-exp training proteins (real queries:
    the cache backend searches from a protein's positive term vectors)."""
    import pandas as pd

    folder = default_data_dir() / "datasets" / "human-exp"
    ann = pd.read_csv(folder / "annotations.tsv", sep="\t")
    row = {g: i for i, g in enumerate(ids)}
    groups = [[row[t] for t in g["term"] if t in row] for _, g in ann.groupby("protein")]
    groups = [g for g in groups if g]
    pick = np.random.default_rng(0).choice(len(groups), min(n, len(groups)), replace=False)
    return [groups[i] for i in pick]


def _top10_overlap(ref: np.ndarray, got: np.ndarray, queries: list[list[int]]) -> float:
    """Mean share of the fp32 top-10 that ``got`` also ranks top-10, per protein query (the
    mean of its terms' vectors, searched against every term)."""

    def top(m: np.ndarray) -> np.ndarray:
        q = np.stack([m[g].mean(0) for g in queries])
        return np.argsort(-(q @ m.T), axis=1)[:, :10]

    a, b = top(ref), top(got)
    return float(np.mean([len(set(x) & set(y)) / 10 for x, y in zip(a, b, strict=True)]))


def bench_encode(args, n_terms_out: dict) -> list[dict]:
    """Each variant (fp32 reference first) on the same texts: speed and agreement."""
    from protgo.data.godb import read_terms
    from protgo.data.ontology import Ontology

    onto = Ontology(read_terms(default_data_dir() / GO_SQLITE))
    all_ids = onto.ids()
    n_terms_out["n"] = len(all_ids)
    ids = all_ids if args.all_go else sorted(
        np.random.default_rng(0).choice(all_ids, args.sample, replace=False)
    )  # fmt: skip
    queries = _protein_queries(ids, args.queries) if args.all_go else None
    variants = [("fp32", False)] + [(d, False) for d in args.dtypes.split(",") if d != "fp32"]
    variants += [] if args.no_int8 else [("fp32", True)]
    variants += [("onnx-fp32", False), ("onnx-fp32", True)] if args.onnx else []
    rows = []
    for phase in (int(p) for p in args.phases.split(",")):
        ref = None
        for dtype, int8 in variants:
            if dtype.startswith("onnx"):
                vecs, sec, n_tok = _encode_onnx(
                    onto, ids, phase, int8, args.batch_size, args.max_length, args.encoder
                )
            else:
                vecs, sec, n_tok = _encode_variant(
                    onto, ids, phase, dtype, int8, args.batch_size, args.max_length, args.encoder
                )
            ref = vecs if ref is None else ref
            cos = (vecs * ref).sum(1)
            row = {
                "phase": phase, "dtype": dtype, "int8": int8, "texts": len(ids),
                "seconds": round(sec, 1), "texts_per_s": round(len(ids) / sec, 1),
                "mean_tokens": round(n_tok / len(ids), 1),
                "all_go_min_est": round(n_terms_out["n"] / (len(ids) / sec) / 60, 1),
                "cos_min": round(float(cos.min()), 6), "cos_mean": round(float(cos.mean()), 6),
            }  # fmt: skip
            if queries is not None:
                row["top10_overlap"] = round(_top10_overlap(ref, vecs, queries), 4)
            rows.append(row)
            print(json.dumps(row), flush=True)
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
