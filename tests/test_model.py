"""Attention pooling and the aligner: a per-protein loop reference, chunking, masks, shapes."""

from __future__ import annotations

import math

import pytest
import torch

from protgo.config import ModelConfig
from protgo.errors import UserError
from protgo.model.aligner import ProtGoAligner, candidate_scores
from protgo.model.pooling import AttentionPooling


def _reference_pool(pool: AttentionPooling, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Textbook multi-head attention for one protein x (L, D): keys and values materialised."""
    H, dh, Q = pool.n_heads, pool.head_dim, pool.n_queries
    k = pool.key(x).view(-1, H, dh)  # (L, H, dh)
    v = pool.value(x).view(-1, H, dh)
    outs, attns = [], []
    for q in range(Q):
        heads = []
        for h in range(H):
            a = torch.softmax(k[:, h] @ pool.queries[q, h] / math.sqrt(dh), 0)  # (L,)
            attns.append(a)
            heads.append(a @ v[:, h])  # (dh,)
        outs.append(torch.cat(heads))
    pooled = pool.norm(pool.out(torch.cat(outs)))
    return pooled, torch.stack(attns).mean(0)


def test_pooling_matches_reference_and_ignores_padding():
    torch.manual_seed(0)
    pool = AttentionPooling(12, n_queries=3, n_heads=4).eval()
    lengths = [7, 3, 1]
    x = torch.randn(3, 7, 12)
    mask = torch.arange(7)[None] < torch.tensor(lengths)[:, None]
    x_noisy = x.clone()
    x_noisy[~mask] = 1e3  # padding content must not matter
    out = pool(x_noisy, mask)
    assert out["pooled"].shape == (3, 12) and out["attn"].shape == (3, 7)
    for b, n in enumerate(lengths):
        ref, ref_attn = _reference_pool(pool, x[b, :n])
        torch.testing.assert_close(out["pooled"][b], ref, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(out["attn"][b, :n], ref_attn, rtol=1e-4, atol=1e-6)
        assert out["attn"][b, n:].abs().sum() == 0
    torch.testing.assert_close(out["attn"].sum(1), torch.ones(3))


def test_chunked_equals_unchunked_with_gradients():
    torch.manual_seed(1)
    pool = AttentionPooling(16, n_queries=2, n_heads=2).eval()
    x = torch.randn(2, 103, 16).half()  # fp16 as the store gives it; cast chunk by chunk
    mask = torch.ones(2, 103, dtype=torch.bool)
    mask[1, 60:] = False
    results = []
    for chunk in (1000, 17):
        pool.zero_grad()
        out = pool(x, mask, chunk=chunk)
        out["pooled"].square().sum().backward()
        results.append((out, [p.grad.clone() for p in pool.parameters()]))
    (a, ga), (b, gb) = results
    torch.testing.assert_close(a["pooled"], b["pooled"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a["attn"], b["attn"], rtol=1e-5, atol=1e-7)
    for u, v in zip(ga, gb, strict=True):
        torch.testing.assert_close(u, v, rtol=1e-3, atol=1e-5)  # fp32 sums, reordered


def test_protein_without_residues_gives_finite_values():
    pool = AttentionPooling(8, 2, 2)
    x = torch.randn(2, 4, 8, requires_grad=True)
    mask = torch.tensor([[True] * 4, [False] * 4])
    out = pool(x, mask)
    out["pooled"].sum().backward()
    assert torch.isfinite(out["pooled"]).all() and torch.isfinite(x.grad).all()
    assert out["attn"][1].abs().sum() == 0


def test_aligner_forward_dict_and_scores():
    torch.manual_seed(2)
    cfg = ModelConfig(align_dim=10, n_queries=2, n_heads=2, dropout=0.0, init_logit_scale=14.3)
    model = ProtGoAligner(cfg, residue_dim=8, go_dim=6).eval()
    x, mask = torch.randn(3, 5, 8), torch.ones(3, 5, dtype=torch.bool)
    go = torch.randn(4, 6)
    cand = torch.tensor([[0, 1, -1], [3, 2, 1], [2, -1, -1]])
    out = model(x, mask, go, cand)
    assert out["protein"].shape == (3, 10) and out["go"].shape == (4, 10)
    torch.testing.assert_close(out["protein"].norm(dim=1), torch.ones(3))
    assert out["scale"].item() == pytest.approx(14.3, rel=1e-5)
    torch.testing.assert_close(out["cos"][1], out["cos_all"][1, [3, 2, 1]])
    assert out["logits"][0, 2] == 0 and (out["logits"] == out["scale"] * out["cos"]).all()
    with torch.no_grad():
        model.log_scale.fill_(10.0)
    assert model.logit_scale.item() == pytest.approx(100.0)  # capped as in CLIP
    all_scores = torch.arange(12.0).view(3, 4)
    torch.testing.assert_close(candidate_scores(all_scores, cand)[2], torch.tensor([10.0, 0, 0]))


def test_term_logits_add_a_text_prior_to_scaled_cosines():
    torch.manual_seed(3)
    cfg = ModelConfig(align_dim=10, n_queries=2, n_heads=2, dropout=0.0, init_term_bias=-4.0,
                      init_bias_scale=8.0)  # fmt: skip
    model = ProtGoAligner(cfg, residue_dim=8, go_dim=6).eval()
    x, mask = torch.randn(3, 5, 8), torch.ones(3, 5, dtype=torch.bool)
    text = torch.randn(4, 6)
    protein = model.encode_protein(x, mask)["protein"]
    go = model.encode_go(text)
    cos = protein @ go.T
    # at start every term has the same prior, so logits rank terms as cosines do
    torch.testing.assert_close(model.term_logits(protein, go, text), 8.0 * cos - 4.0)
    with torch.no_grad():
        model.term_bias.weight.copy_(torch.arange(6.0))
    want = 8.0 * cos + (text @ torch.arange(6.0) - 4.0)  # the prior comes from the text
    torch.testing.assert_close(model.term_logits(protein, go, text), want)
    plain = ProtGoAligner(cfg.model_copy(update={"term_bias": False}), 8, 6)
    assert plain.term_bias is None
    torch.testing.assert_close(plain.term_logits(protein, go, text), cos)


def test_term_residual_is_a_superset_of_the_text_head():
    """Residuals start at zero, move only the terms they belong to, and a term without one
    (no training positive) scores from its text alone, whatever the residuals learn."""
    from protgo.model.aligner import residual_terms

    torch.manual_seed(4)
    cfg = ModelConfig(align_dim=10, n_queries=2, n_heads=2, dropout=0.0, term_residual=True)
    trained = ["GO:0000002", "GO:0000003"]
    model = ProtGoAligner(cfg, residue_dim=8, go_dim=6, residual_terms=trained).eval()
    text_only = ProtGoAligner(cfg.model_copy(update={"term_residual": False}), 8, 6).eval()
    text_only.load_state_dict(
        {k: v for k, v in model.state_dict().items() if not k.startswith(("term_res", "term_off",
                                                                            "residual"))}
    )  # fmt: skip
    ids = ["GO:0000001", "GO:0000002", "GO:0000003"]  # GO:0000001 is unseen in training
    x, mask, text = torch.randn(3, 5, 8), torch.ones(3, 5, dtype=torch.bool), torch.randn(3, 6)
    protein, go = model.encode_protein(x, mask)["protein"], model.encode_go(text)
    rows = model.residual_rows(ids)
    assert rows.tolist() == [-1, 0, 1]
    base = text_only.term_logits(protein, go, text)
    torch.testing.assert_close(model.term_logits(protein, go, text, rows), base)  # zero at start
    with torch.no_grad():
        model.term_residual.normal_()
        model.term_offset.fill_(2.0)
    moved = model.term_logits(protein, go, text, rows)
    assert torch.equal(moved[:, 0], base[:, 0])  # the unseen term: text only, exactly
    assert not torch.allclose(moved[:, 1:], base[:, 1:])
    scale = model.log_bias_scale.exp()
    want = base[:, 1] + scale * protein @ model.term_residual[0] + 2.0
    torch.testing.assert_close(moved[:, 1], want)
    assert residual_terms(model.state_dict()) == trained  # the table's terms travel with it
    with pytest.raises(UserError, match="not one"):
        ProtGoAligner(cfg, 8, 6, residual_terms=["MY:1"])


def test_weight_decay_only_on_matrices():
    from protgo.train.optim import param_groups

    cfg = ModelConfig(align_dim=10, n_queries=2, n_heads=2, dropout=0.0, term_residual=True)
    model = ProtGoAligner(cfg, 8, 6, residual_terms=["GO:0000002"])
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    kept = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert {"log_scale", "log_bias_scale", "term_offset", "term_bias.bias",
            "protein_head.norm.weight", "protein_head.proj.bias"} <= kept  # fmt: skip
    assert {"term_residual", "protein_head.proj.weight", "go_head.proj.weight"} <= decayed
    assert decayed | kept == set(names.values()) and not decayed & kept


@pytest.mark.parametrize(
    ("requested", "world", "local", "want"),
    [("cpu", 1, None, "cpu"), ("cpu", 2, "1", "cpu"), ("cuda", 2, "1", "cuda:1"),
     ("cuda:0", 2, "1", "cuda:0"), ("cuda", 1, None, "cuda")],
)  # fmt: skip
def test_each_rank_takes_the_gpu_of_its_local_rank(requested, world, local, want, monkeypatch):
    from protgo.train import distributed

    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)  # no GPU here
    if local is None:
        monkeypatch.delenv("LOCAL_RANK", raising=False)
    else:
        monkeypatch.setenv("LOCAL_RANK", local)
    assert distributed.device_for(requested, world) == torch.device(want)


def test_term_head_refit_fits_only_the_residual_table():
    """The head stage lowers the binary loss of the refitted terms, touches nothing but the
    residuals and offsets, and leaves a term without a residual scored from its text."""
    from protgo.model.losses import binary_term_loss
    from protgo.train.head import refit_term_head

    torch.manual_seed(5)
    cfg = ModelConfig(align_dim=10, n_queries=2, n_heads=2, dropout=0.0, term_residual=True)
    trained = ["GO:0000002", "GO:0000003", "GO:0000004", "GO:0000005"]  # 5: not refitted
    model = ProtGoAligner(cfg, residue_dim=8, go_dim=6, residual_terms=trained).eval()
    with torch.no_grad():
        model.term_residual[3] = 1.0
    ids = ["GO:0000001", *trained[:3]]  # GO:0000001: no training positive
    text = torch.randn(4, 6)
    proteins = torch.nn.functional.normalize(torch.randn(96, 10), dim=-1)
    truth = proteins[:, :3] > 0.1  # learnable from the protein vectors
    positives = [torch.nonzero(t).squeeze(1).numpy() for t in truth]
    rows = model.residual_rows(ids)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def loss() -> float:
        with torch.no_grad():
            go = model.encode_go(text[1:])
            return float(binary_term_loss(model.term_logits(proteins, go, text[1:], rows[1:]),
                                          truth))  # fmt: skip

    with torch.no_grad():
        unseen = model.term_logits(proteins, model.encode_go(text), text, rows)[:, 0]
    start, passes = loss(), []
    refit_term_head(model, proteins, positives, text[1:], rows[1:], epochs=30, lr=0.05,
                    weight_decay=0.01, batch_size=32, after_epoch=passes.append)  # fmt: skip
    assert passes == list(range(1, 31))
    assert loss() < 0.8 * start
    for name, value in model.state_dict().items():
        changed = not torch.equal(value, before[name])
        assert changed == (name in ("term_residual", "term_offset")), name
    assert torch.equal(model.term_residual[3], before["term_residual"][3])  # decayed? no
    assert model.term_offset[3] == before["term_offset"][3]
    assert all(p.requires_grad for p in model.parameters())  # given back trainable
    with torch.no_grad():
        again = model.term_logits(proteins, model.encode_go(text), text, rows)[:, 0]
    assert torch.equal(again, unseen)
    with pytest.raises(ValueError, match="row in the residual table"):
        refit_term_head(model, proteins, positives, text, rows, epochs=1, lr=0.05,
                        weight_decay=0.0)  # fmt: skip
