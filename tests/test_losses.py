"""Every loss against a plain Python-loop reference on small tensors, values and gradients."""

from __future__ import annotations

import math

import pytest
import torch

from protgo.config import LossConfig
from protgo.model import losses as L


@pytest.fixture(autouse=True)
def _double():
    """float64 here, so loop and vectorised sums agree to 1e-9; restored afterwards."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _rand_masks(R, K, seed):
    g = torch.Generator().manual_seed(seed)
    valid = torch.rand(R, K, generator=g) > 0.2
    pos = (torch.rand(R, K, generator=g) > 0.6) & valid
    pos[0, :] = False  # a row without positives is skipped
    valid[1, :] = True
    pos[1, 0] = True
    weight = torch.rand(R, K, generator=g) + 0.1
    return valid, pos, weight


def _check(fn, ref, *tensors):
    """Same value and same gradients for every input tensor."""
    a = [t.clone().requires_grad_(True) for t in tensors]
    b = [t.clone().requires_grad_(True) for t in tensors]
    va, vb = fn(*a), ref(*b)
    assert va.item() == pytest.approx(vb.item(), rel=1e-9, abs=1e-12)
    va.backward()
    vb.backward()
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x.grad, y.grad, rtol=1e-8, atol=1e-10)


def test_info_nce_matches_loop():
    R, K = 5, 7
    valid, pos, weight = _rand_masks(R, K, 0)
    logits = torch.randn(R, K) * 3

    def ref(lg):
        rows = []
        for r in range(R):
            idx = [k for k in range(K) if valid[r, k]]
            lse = torch.logsumexp(torch.stack([lg[r, k] for k in idx]), 0)
            ps = [k for k in idx if pos[r, k]]
            if not ps:
                continue
            wsum = sum(weight[r, k] for k in ps)
            rows.append(-sum(weight[r, k] * (lg[r, k] - lse) for k in ps) / wsum)
        return sum(rows) / len(rows)

    _check(lambda lg: L.multi_positive_info_nce(lg, pos, weight, valid), ref, logits)
    # unweighted, everything valid (the GO->protein direction)
    p2 = pos.clone()
    p2[0, 0] = True

    def ref2(lg):
        rows = [-sum(lg[r, k] - torch.logsumexp(lg[r], 0) for k in range(K) if p2[r, k])
                / p2[r].sum() for r in range(R) if p2[r].any()]  # fmt: skip
        return sum(rows) / len(rows)

    _check(lambda lg: L.multi_positive_info_nce(lg, p2), ref2, logits)


def test_distill_kl_matches_loop():
    R, K, tau = 4, 6, 1.5
    valid, _, _ = _rand_masks(R, K, 1)
    student, teacher = torch.randn(R, K) * 2, torch.randn(R, K) * 2
    rows = torch.tensor([True, True, False, True])

    def ref(s):
        kls = []
        for r in range(R):
            if not rows[r] or not valid[r].any():
                continue
            idx = [k for k in range(K) if valid[r, k]]
            ls = torch.log_softmax(torch.stack([s[r, k] / tau for k in idx]), 0)
            lt = torch.log_softmax(torch.stack([teacher[r, k] / tau for k in idx]), 0)
            kls.append(sum(lt[i].exp() * (lt[i] - ls[i]) for i in range(len(idx))))
        return tau**2 * sum(kls) / len(kls)

    _check(lambda s: L.distill_kl(s, teacher, valid, tau, rows), ref, student)
    same = L.distill_kl(teacher, teacher, valid, tau)
    assert same.item() == pytest.approx(0.0, abs=1e-12)


def test_attribution_margin_and_masks():
    B, C, m = 3, 4, 0.05
    _, pos, _ = _rand_masks(B, C, 2)
    top, rand = torch.randn(B, C) * 0.1, torch.randn(B, C) * 0.1

    def ref(t, r):
        vals = [torch.relu(m + t[b, c] - r[b, c]) for b in range(B) for c in range(C) if pos[b, c]]
        return sum(vals) / len(vals)

    _check(lambda t, r: L.attribution_margin(t, r, pos, m), ref, top, rand)

    attn = torch.tensor([[0.1, 0.5, 0.2, 0.2, 0.0], [0.3, 0.7, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    keep_top, keep_rand = L.attribution_masks(attn, mask, 0.5, torch.Generator().manual_seed(0))
    # protein 0: 4 residues, drop round(2)=2 most attended (1, then 2 before 3: stable order)
    assert keep_top[0].tolist() == [True, False, False, True, False]
    # protein 1: 2 residues, drop 1 (never all)
    assert keep_top[1].tolist() == [True, False, False, False, False]
    assert keep_rand.sum(1).tolist() == [2, 1] and not (keep_rand & ~mask).any()


def test_entropy_matches_loop():
    R, K = 4, 5
    valid, _, _ = _rand_masks(R, K, 3)
    valid[0] = False  # a row without slots is skipped
    logits = torch.randn(R, K) * 2

    def ref(lg):
        ents = []
        for r in range(1, R):
            idx = [k for k in range(K) if valid[r, k]]
            p = torch.softmax(torch.stack([lg[r, k] for k in idx]), 0)
            ents.append(-sum(p[i] * torch.log(p[i]) for i in range(len(idx))))
        return sum(ents) / len(ents)

    _check(lambda lg: L.score_entropy(lg, valid), ref, logits)
    flat = L.score_entropy(torch.zeros(1, 8), torch.ones(1, 8, dtype=torch.bool))
    assert flat.item() == pytest.approx(math.log(8))


def test_dag_consistency_matches_loop():
    B, U, A = 3, 5, 4
    protein = torch.nn.functional.normalize(torch.randn(B, A), dim=1)
    go = torch.nn.functional.normalize(torch.randn(U, A), dim=1)
    pairs = torch.tensor([[0, 1], [2, 1], [3, 4]])

    def ref(p, g):
        close = sum(1 - (g[c] * g[q]).sum() for c, q in pairs.tolist()) / len(pairs)
        hinge = sum(torch.relu((p[b] * g[c]).sum() - (p[b] * g[q]).sum() + 0.1)
                    for b in range(B) for c, q in pairs.tolist()) / (B * len(pairs))  # fmt: skip
        return close + hinge

    _check(lambda p, g: sum(L.dag_consistency(p, g, pairs, 0.1)), ref, protein, go)
    empty = L.dag_consistency(protein, go, torch.zeros(0, 2, dtype=torch.long))
    assert [v.item() for v in empty] == [0.0, 0.0]


def test_dag_pairs(tiny_obo):
    from protgo.data.ontology import Ontology

    onto = Ontology.from_obo(tiny_obo)
    child = next(t for t in onto.ids() if onto.parents(t))
    parent = onto.parents(child)[0]
    pairs = L.dag_pairs(["GO:none", parent, child], onto)
    assert [1, 2] not in pairs.tolist() and [2, 1] in pairs.tolist()


def test_vtrue_anchor_matches_loop():
    U, A, D = 4, 3, 6
    go, text = torch.randn(U, A), torch.randn(U, D)

    def ref(g, t):
        g = g / g.norm(dim=1, keepdim=True)
        t = t / t.norm(dim=1, keepdim=True)
        vals = [((g[i] * g[j]).sum() - (t[i] * t[j]).sum()) ** 2
                for i in range(U) for j in range(U) if i != j]  # fmt: skip
        return sum(vals) / len(vals)

    _check(L.vtrue_anchor, ref, go, text)
    assert L.vtrue_anchor(text, text).item() == pytest.approx(0.0, abs=1e-12)


def test_homology_teacher_transfers_labels(tiny_obo):
    from protgo.data.ontology import Ontology

    onto = Ontology.from_obo(tiny_obo)
    child = next(t for t in onto.ids() if onto.parents(t))
    parent = onto.parents(child)[0]
    unrelated = [t for t in onto.ids() if parent not in onto.propagate([t])]
    other = next(t for t in unrelated if t not in onto.propagate([child]))
    hits = {"q": [("q", 999.0), ("a", 30.0), ("b", 10.0)], "lonely": [("q", 5.0)]}
    teacher = L.HomologyTeacher(hits, {"a": {child}, "b": {other}}, onto)
    s = teacher.scores(["q", "lonely"], [child, parent, other])
    torch.testing.assert_close(s, torch.tensor([[0.75, 0.75, 0.25], [0.0, 0.0, 0.0]]),
                               check_dtype=False)  # fmt: skip
    batch = {"pids": ["q", "lonely"], "go_ids": [child, parent, other],
             "cand_idx": torch.tensor([[0, 2, -1], [1, 2, 0]])}  # fmt: skip
    logits, rows = teacher.logits(batch, tau=1.5)
    assert rows.tolist() == [True, False]
    p = torch.softmax(logits[0, :2] / 1.5, 0)  # proportional to score + eps
    assert p[0].item() == pytest.approx(0.751 / (0.751 + 0.251), rel=1e-6)


def test_binary_term_loss_matches_loop():
    B, K = 4, 6
    g = torch.Generator().manual_seed(3)
    truth = torch.rand(B, K, generator=g) > 0.7
    truth[0, 0] = True
    logits = torch.randn(B, K, generator=g) * 2

    def ref(lg):
        total = 0.0
        for b in range(B):
            for k in range(K):
                p = 1 / (1 + torch.exp(-lg[b, k]))
                total = total - (torch.log(p) if truth[b, k] else torch.log(1 - p))
        return total / truth.sum()

    _check(lambda lg: L.binary_term_loss(lg, truth), ref, logits)
    # no positive at all: summed over pairs, not divided by zero
    none = torch.zeros(B, K, dtype=torch.bool)
    assert torch.isfinite(L.binary_term_loss(logits, none))


def test_alignment_loss_total_is_weighted_sum():
    from protgo.config import ModelConfig
    from protgo.model.aligner import ProtGoAligner

    torch.manual_seed(0)
    model = ProtGoAligner(ModelConfig(align_dim=8, n_queries=2, n_heads=2, dropout=0.0), 8, 6)
    B, Lr, C, U = 3, 5, 4, 6
    x, mask = torch.randn(B, Lr, 8), torch.ones(B, Lr, dtype=torch.bool)
    go_text = torch.randn(U, 6)
    cand = torch.tensor([[0, 1, 2, 3], [1, 4, 5, -1], [2, 3, 0, 5]])
    pos = torch.zeros(B, C, dtype=torch.bool)
    pos[:, 0] = True
    go_pos = torch.zeros(U, B, dtype=torch.bool)
    go_pos[0, 0] = go_pos[1, 1] = go_pos[2, 2] = True
    batch = {"residues": x, "mask": mask, "cand_idx": cand, "cand_pos": pos,
             "cand_weight": pos.float(), "cand_valid": cand >= 0, "go_pos": go_pos,
             "go_weight": go_pos.float()}  # fmt: skip
    out = model(x, mask, go_text, cand)
    cfg = LossConfig(lambda_dag=0.3, lambda_distill=0.5)
    crit = L.AlignmentLoss(cfg)
    pairs = torch.tensor([[1, 0]])
    teacher = (torch.randn(B, C), torch.ones(B, dtype=torch.bool))
    bce = {"batch_cols": torch.arange(U), "text": go_text[:0], "truth": go_pos.T}  # (B, U)
    total, parts = crit(model, out, batch, go_text, pairs, 0.2, teacher, bce_terms=bce)
    weights = {"con": cfg.lambda_con, "ent": cfg.lambda_ent, "dag": 0.3,
               "vtrue": cfg.lambda_vtrue, "attr": 0.2, "distill": 0.5,
               "bce": cfg.lambda_bce}  # fmt: skip
    want = sum(w * float(parts[k]) for k, w in weights.items())  # parts stay on the device
    assert total.item() == pytest.approx(want, rel=1e-9)
    total.backward()
    assert model.pool.queries.grad is not None and model.log_scale.grad is not None
    assert model.term_bias.weight.grad.abs().sum() > 0 and model.log_bias_scale.grad is not None
    _, parts0 = crit(model, out, batch, go_text, pairs, 0.0)
    assert "attr" not in parts0 and "distill" not in parts0 and "bce" not in parts0


def test_term_bce_reuses_the_batch_projection():
    """The batch's own terms are read from the forward's projection, the others projected
    here: the same loss and gradients as projecting every scored term afresh."""
    from protgo.config import ModelConfig
    from protgo.model.aligner import ProtGoAligner

    torch.manual_seed(0)
    model = ProtGoAligner(ModelConfig(align_dim=8, n_queries=2, n_heads=2, dropout=0.0), 8, 6)
    x, mask = torch.randn(3, 5, 8), torch.ones(3, 5, dtype=torch.bool)
    go_text, others = torch.randn(4, 6), torch.randn(2, 6)
    cols = torch.tensor([2, 0])  # batch terms 2 and 0 are scored, then the two others
    truth = torch.rand(3, 4, generator=torch.Generator().manual_seed(1)) > 0.5

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    out = model(x, mask, go_text)
    terms = {"batch_cols": cols, "text": others, "truth": truth}
    fast, _ = L.TermBCELoss()(model, out, go_text, terms)
    fast_grads = grads(fast)
    scored = torch.cat([go_text[cols], others])
    protein = model.encode_protein(x, mask)["protein"]
    ref = L.binary_term_loss(model.term_logits(protein, model.encode_go(scored), scored), truth)
    assert fast.item() == pytest.approx(ref.item(), rel=1e-6)
    for a, b in zip(fast_grads, grads(ref), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
