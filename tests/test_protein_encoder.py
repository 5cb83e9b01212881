"""The ESM protein encoder: residue rules, window stitching, layers, loading errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from protgo.config import ResiduesConfig
from protgo.data.sequence import clean_sequence
from protgo.encoders.protein import (
    ProteinEncoder,
    resolve_model_dir,
    stitch_segments,
    window_starts,
)
from protgo.errors import UserError

AA = "ACDEFGHIKLMNPQRSTVWY"


def random_seq(rng: np.random.Generator, length: int) -> str:
    return "".join(rng.choice(list(AA), size=length))


@pytest.fixture(scope="module")
def plain(tiny_esm):
    """The reference: transformers' own EsmModel and tokenizer, no protgo code involved."""
    from transformers import AutoTokenizer, EsmModel

    model = EsmModel.from_pretrained(tiny_esm, add_pooling_layer=False).eval()
    tok = AutoTokenizer.from_pretrained(tiny_esm)

    def forward(seq: str, hidden_layer: int | None = None) -> torch.Tensor:
        ids = tok(seq, return_tensors="pt")
        with torch.no_grad():
            out = model(**ids, output_hidden_states=hidden_layer is not None)
        h = out.last_hidden_state if hidden_layer is None else out.hidden_states[hidden_layer]
        return h[0, 1:-1]  # (L, D) without BOS/EOS

    return forward


def encoder(tiny_esm, **kw) -> ProteinEncoder:
    """fp32, the reference (``auto`` is bf16 where the CPU has it)."""
    return ProteinEncoder(ResiduesConfig(model=str(tiny_esm), **{"dtype": "fp32", **kw}))


# ----- residues -----
def test_clean_sequence_documented_rules():
    assert clean_sequence("p", "acdXuOBZ") == "ACDXUOBZ"
    assert clean_sequence("p", "MKV*") == "MKV"
    for bad, pos in [("MK*V", 3), ("MK1V", 3), ("MK-V", 3), ("MK V", 3), ("MJ", 2), ("MK.", 3)]:
        with pytest.raises(UserError, match=rf"protein 'p', position {pos}:"):
            clean_sequence("p", bad)
    for empty in ["", "*"]:
        with pytest.raises(UserError, match="protein 'p': empty sequence"):
            clean_sequence("p", empty)


def test_rare_residues_get_their_own_tokens(tiny_esm):
    from transformers import AutoTokenizer

    enc = encoder(tiny_esm)
    vocab = AutoTokenizer.from_pretrained(tiny_esm).get_vocab()
    ids = enc.tokenize(clean_sequence("p", "uobzx"))
    assert ids[1:-1] == [vocab[c] for c in "UOBZX"]
    assert vocab["<unk>"] not in ids


# ----- windows -----
def brute_force_choice(length: int, win: int, stride: int) -> list[int]:
    """Per residue, the start of the window where it is farthest from an edge (first on ties)."""
    starts = window_starts(length, win, stride)
    size = min(win, length)
    choice = []
    for i in range(length):
        best = max(
            (min(i - s, s + size - 1 - i), -s) for s in starts if s <= i < s + size
        )  # largest distance, then the smallest start
        choice.append(-best[1])
    return choice


@pytest.mark.parametrize("win,stride", [(8, 8), (8, 6), (8, 1), (9, 4), (5, 3)])
def test_stitch_segments_follow_the_rule(win, stride):
    for length in range(1, 40):
        segs = stitch_segments(length, win, stride)
        got = [None] * length
        for s in segs:
            assert s.start <= s.lo < s.hi <= s.start + win  # kept rows lie in their window
            for i in range(s.lo, s.hi):
                assert got[i] is None  # each residue exactly once
                got[i] = s.start
        assert got == brute_force_choice(length, win, stride)


def test_window_edge_cases():
    assert window_starts(16, 16, 16) == [0]  # L = W: one window
    assert window_starts(17, 16, 16) == [0, 1]  # L = W + 1: the last window is end-aligned
    assert window_starts(48, 16, 16) == [0, 16, 32]  # stride = size: no overlap
    assert window_starts(50, 16, 12) == [0, 12, 24, 34]


# ----- against plain forward passes -----
def test_one_window_equals_plain_forward(tiny_esm, plain):
    enc = encoder(tiny_esm, win_size=64, batch_tokens=300)
    rng = np.random.default_rng(0)
    seqs = [random_seq(rng, n) for n in (1, 7, 30, 63, 64)]
    got = [torch.empty(len(s), enc.dim) for s in seqs]
    for idx, seg, vec in enc.embed_batched(seqs, batch_tokens=300):  # padded batches
        got[idx][seg.lo : seg.hi] = vec
    for seq, vec in zip(seqs, got, strict=True):
        torch.testing.assert_close(vec, plain(seq), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "length,win,stride",
    [(50, 16, 12), (45, 16, 16), (16, 16, 8), (17, 16, 16), (17, 16, 5), (61, 16, 15)],
)
def test_long_protein_takes_each_residue_from_the_chosen_window(
    tiny_esm, plain, length, win, stride
):
    enc = encoder(tiny_esm, win_size=win, win_stride=stride, batch_tokens=64)
    seq = random_seq(np.random.default_rng(length), length)
    got = enc.embed(seq)
    assert got.shape == (length, enc.dim)
    windows = {s: plain(seq[s : s + win]) for s in window_starts(length, win, stride)}
    want = torch.stack(
        [windows[s][i - s] for i, s in enumerate(brute_force_choice(length, win, stride))]
    )
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    if length > win:  # windows really differ from one long forward pass
        assert not torch.allclose(got, plain(seq), atol=1e-3)


# ----- layers and loading -----
def test_layer_choice_matches_hidden_states(tiny_esm, plain):
    seq = random_seq(np.random.default_rng(1), 40)
    for layer, hidden in [(0, 0), (1, 1)]:
        torch.testing.assert_close(
            encoder(tiny_esm, layer=layer).embed(seq), plain(seq, hidden), atol=1e-5, rtol=0
        )
    last = encoder(tiny_esm, layer=-1)
    assert last.layer == 2
    torch.testing.assert_close(last.embed(seq), plain(seq), atol=1e-5, rtol=0)
    with pytest.raises(UserError, match="layer=3 is out of range"):
        encoder(tiny_esm, layer=3)


def test_window_limits(tiny_esm):
    enc = encoder(tiny_esm)
    assert (enc.win_size, enc.win_stride) == (1022, 766)  # ESM-2's limit and 3/4 stride
    with pytest.raises(UserError, match="win_size=1023"):
        encoder(tiny_esm, win_size=1023)
    with pytest.raises(UserError, match="win_stride=20"):
        encoder(tiny_esm, win_size=10, win_stride=20)


def test_default_window_is_the_pretraining_crop(tiny_esm, tmp_path):
    """A protgo-trained ESM runs in windows of the crops it was trained on by default (its
    training.json), and still takes any window up to its position limit when asked."""
    import json
    import shutil

    model = shutil.copytree(tiny_esm, tmp_path / "trained")
    (model / "training.json").write_text(json.dumps({"config": {"model": {"max_len": 66}}}))
    assert (encoder(model).win_size, encoder(model).win_stride) == (64, 48)
    assert encoder(model, win_size=1022).win_size == 1022
    (model / "training.json").write_text('{"config": {"model": {')
    with pytest.raises(UserError, match="training.json is damaged"):
        encoder(model)


def test_missing_model_says_how_to_get_one(tmp_path):
    with pytest.raises(UserError, match="protgo plm pretrain") as err:
        resolve_model_dir(str(tmp_path / "no-such-model"))
    assert "facebook/esm2_t6_8M_UR50D" in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no config.json"):
        resolve_model_dir(str(tmp_path / "empty"))


def test_shipped_model_resolves_from_any_folder_without_network(tmp_path, monkeypatch):
    """The shipped models (``protgo-esm-small``, its pre-0.2 name ``models/...``, and
    ``protgo-esm-8m``) come from the installed package, whatever the working directory, with
    the hub never asked."""
    import socket

    from protgo.config import ResiduesConfig
    from protgo.encoders.registry import describe_model
    from protgo.resources import models_dir

    def no_network(*args, **kwargs):
        raise AssertionError(f"network used: {args}")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.chdir(tmp_path)
    for name in ("protgo-esm-small", "models/protgo-esm-small"):
        assert resolve_model_dir(name) == models_dir() / "protgo-esm-small"
    model_dir, settings = describe_model(ResiduesConfig(model="protgo-esm-small"))
    assert (model_dir / "model.safetensors").is_file() and settings["dim"] == 128
    assert settings["win_size"] == 256  # its pretraining crops
    model_dir, settings = describe_model(ResiduesConfig(model="protgo-esm-8m"))
    assert model_dir == models_dir() / "protgo-esm-8m" and settings["dim"] == 320
    assert settings["win_size"] == 512
    with pytest.raises(UserError, match="shipped with protgo"):
        resolve_model_dir("models/no-such-model/x")  # a path, not a hub id: never the hub


UBIQUITIN = "MQIFVKTLTGKTITLEVEPSDTIENVKAKIQDKEGIPPDQQRLIFAGKQLEDGRTLSDYNIQKESTLHLVLRLRGG"
INSULIN = ("MALWMRLLPLLALLALWGPDPAAAFVNQHLCGSHLVEALYLVCGERGFFYTPKTRREAEDLQVGQVELGGGPGAGSLQPL"
           "ALEGSLQKRGIVEQCCTSICSLYQLENYCN")  # fmt: skip


def test_bf16_residues_agree_with_fp32():
    """The shipped model under bf16 autocast: every residue within cosine 0.999 of fp32
    (human-exp proteins: benchmarks/protein_encoders.py)."""
    from protgo import compute

    ref = ProteinEncoder(ResiduesConfig(model="protgo-esm-small", dtype="fp32"))
    fast = ProteinEncoder(ResiduesConfig(model="protgo-esm-small", dtype="bf16"))
    for seq in (UBIQUITIN, INSULIN):
        cos = torch.nn.functional.cosine_similarity(ref.embed(seq), fast.embed(seq), dim=1)
        assert cos.min() > 0.999, cos.min()
    assert fast.settings()["dtype"] == "bf16" != ref.settings()["dtype"]  # separate stores
    auto = ProteinEncoder(ResiduesConfig(model="protgo-esm-small")).settings()["dtype"]
    assert auto == ("bf16" if compute.native_bf16(torch.device("cpu")) else "fp32")


def test_an_unknown_esm_model_lists_only_language_models(monkeypatch):
    """The ESM error names the shipped protein language models, not the aligner bundles."""
    from protgo.encoders.protein import resolve_model_dir
    from protgo.errors import UserError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="protgo-esm-8m") as err:
        resolve_model_dir("no-such-model")
    assert "protgo-human" not in str(err.value)
    with pytest.raises(UserError, match="HF_HUB_OFFLINE is set"):
        resolve_model_dir("nobody/no-such-esm")
