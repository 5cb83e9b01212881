"""BatchBuilder invariants on random DAGs (hypothesis) and a worked example on tiny.obo."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protgo.config import MiningConfig
from protgo.data.ontology import Ontology, Term
from protgo.mining.batch_builder import BatchBuilder
from protgo.mining.collator import (
    HARD,
    INBATCH,
    PAD,
    POSITIVE,
    RANDOM,
    SIBLING,
    ContrastiveEmbCollator,
)
from protgo.mining.curriculum import CurriculumParams
from protgo.stores.go_vectors import GoLookupCache, GoVectorCache
from protgo.stores.vector_resources import VectorResources

DIM = 8


@st.composite
def dag_batches(draw):
    """A random DAG (term i has parents among terms < i), vectors, a batch and parameters."""
    n = draw(st.integers(12, 60))
    terms = [Term(id=f"GO:{0:07d}", name="t0", namespace="biological_process")]
    for i in range(1, n):
        ps = draw(st.lists(st.integers(0, i - 1), min_size=1, max_size=3, unique=True))
        rels = draw(st.lists(st.sampled_from(["is_a", "part_of"]), min_size=len(ps),
                             max_size=len(ps)))  # fmt: skip
        parents: dict[str, list[str]] = {}
        for p, r in zip(ps, rels, strict=True):
            parents.setdefault(r, []).append(f"GO:{p:07d}")
        terms.append(Term(id=f"GO:{i:07d}", name=f"t{i}", namespace="biological_process",
                          parents=parents))  # fmt: skip
    ids = [t.id for t in terms]
    zero = frozenset(draw(st.lists(st.sampled_from(ids[1:]), max_size=n // 5)))
    live = [g for g in ids if g not in zero]
    B = draw(st.integers(1, 6))
    pos = [draw(st.lists(st.sampled_from(live), min_size=1, max_size=6, unique=True))
           for _ in range(B)]  # fmt: skip
    params = CurriculumParams(
        hard_frac=draw(st.floats(0, 1)), shortlist_M=draw(st.integers(1, n)),
        k_hard=draw(st.integers(0, n)), random_k=draw(st.integers(0, 12)),
        inbatch_easy=draw(st.booleans()), hier_up=draw(st.integers(0, 2)),
        hier_down=draw(st.integers(0, 2)), siblings=draw(st.booleans()), stage="A",
        lambda_attr=0.0,
    )  # fmt: skip
    C = draw(st.integers(8, 24))
    max_pos = draw(st.integers(1, min(6, C - 1)))
    seed = draw(st.integers(0, 2**16))
    return terms, zero, pos, params, C, max_pos, seed


def make_resources(ids: list[str], seed: int) -> VectorResources:
    v = np.random.default_rng(seed).normal(size=(len(ids), DIM)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    cache = GoVectorCache(ids, ["BP"] * len(ids), v, {})
    return VectorResources(GoLookupCache(cache), cfg=MiningConfig(index="exact"))


def within(terms: list[Term], start: str, radius: int, up: bool) -> set[str]:
    """Reference BFS over the Term lists themselves (independent of Ontology)."""
    nbr: dict[str, set[str]] = {t.id: set() for t in terms}
    for t in terms:
        for ps in t.parents.values():
            for p in ps:
                if up:
                    nbr[t.id].add(p)
                else:
                    nbr[p].add(t.id)
    seen, q = set(), deque([(start, 0)])
    while q:
        g, d = q.popleft()
        if d < radius:
            for h in nbr[g] - seen:
                seen.add(h)
                q.append((h, d + 1))
    return seen


def collate(pos_lists, C_pos: int, zero, seed=0) -> dict:
    cfg = MiningConfig(max_positives=C_pos)
    items = [{"pid": f"P{b}", "residues": np.ones((3 + b, 4), np.float16),
              "positives": {g: 1.0 for g in pos}} for b, pos in enumerate(pos_lists)]  # fmt: skip
    return ContrastiveEmbCollator(cfg, zero, seed=seed)(items)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dag_batches())
def test_mining_invariants_on_random_dags(case):
    terms, zero, pos, p, C, max_pos, seed = case
    ids = [t.id for t in terms]
    res = make_resources(ids, seed)
    cfg = MiningConfig(n_candidates=C, max_positives=max_pos, sibling_share=0.5)
    builder = BatchBuilder(res, Ontology(terms), cfg, zero, seed=seed)
    out = builder.build(collate(pos, max_pos, zero, seed), p)
    B = len(pos)
    for key in ("cand_idx", "cand_pos", "cand_weight", "cand_source", "cand_valid"):
        assert out[key].shape == (B, C)  # fixed C: batches stack
    go_ids = out["go_ids"]
    assert not zero & set(go_ids)  # zero-shot terms never appear while training
    queries = builder.default_queries(out)
    top = res.search(queries, p.shortlist_M)[0]
    for b in range(B):
        full = set(out["positives"][b])
        assert full == set(pos[b]) - zero
        banned = set(full)
        for g in full:
            banned |= within(terms, g, p.hier_up, up=True) | within(terms, g, p.hier_down, False)
        valid = out["cand_valid"][b]
        src = out["cand_source"][b]
        cands = [go_ids[i] for i in out["cand_idx"][b][valid].tolist()]
        assert len(set(cands)) == len(cands)
        negs = [g for g, s in zip(cands, src[valid].tolist(), strict=True) if s != POSITIVE]
        assert not banned & set(negs)  # no positive, no relative within the radii
        assert set(cands) - set(negs) == set(out["pos_ids"][b]) <= full
        assert len(out["pos_ids"][b]) == min(max_pos, len(full))
        assert ((out["cand_weight"][b] > 0) == out["cand_pos"][b]).all()
        # Fill: every slot is used unless the allowed, unbanned vocabulary is smaller.
        room = len(set(ids) - zero - banned) + len(out["pos_ids"][b])
        assert int(valid.sum()) == min(C, room)
        assert (src[~valid] == PAD).all()
        n_neg = C - len(out["pos_ids"][b])
        n_hard = int(((src == HARD) | (src == SIBLING)).sum())
        assert n_hard <= round(p.hard_frac * n_neg) and int((src == HARD).sum()) <= p.k_hard
        shortlist = {res.ids[r] for r in top[b].tolist()}
        hard = [g for g, s in zip(cands, src[valid].tolist(), strict=True) if s == HARD]
        assert set(hard) <= shortlist
        sib = [g for g, s in zip(cands, src[valid].tolist(), strict=True) if s == SIBLING]
        assert not sib or p.siblings
        onto = Ontology(terms)
        assert all(any(g in onto.siblings(q) for q in out["pos_ids"][b]) for g in sib)
        inb = [g for g, s in zip(cands, src[valid].tolist(), strict=True) if s == INBATCH]
        others = set().union(*(out["positives"][k] for k in range(B) if k != b))
        assert set(inb) <= others and (not inb or p.inbatch_easy)
    # GO -> protein direction agrees with the positive sets.
    for u, g in enumerate(go_ids):
        want = [g in out["positives"][b] for b in range(B)]
        assert out["go_pos"][u].tolist() == want
    assert out["go_rows"].tolist() == [res.row[g] for g in go_ids]


@pytest.fixture
def tiny_builder(tiny_obo):
    onto = Ontology.from_obo(tiny_obo)
    ids = onto.ids()
    res = make_resources(ids, 0)
    cfg = MiningConfig(n_candidates=8, max_positives=2)
    return onto, res, BatchBuilder(res, onto, cfg, frozenset(), seed=0)


def test_sources_follow_the_parameters(tiny_builder):
    onto, res, builder = tiny_builder
    leaf = next(g for g in onto.ids() if not onto.children(g) and onto.parents(g))
    batch = collate([[leaf], [onto.parents(leaf)[0]]], 2, frozenset())
    easy = CurriculumParams(0.0, 4, 0, 3, True, 1, 1, False, "A", 0.0)
    out = builder.build(batch, easy)
    assert not (out["cand_source"] == HARD).any()
    assert int((out["cand_source"][0] == RANDOM).sum()) >= 3
    hard = CurriculumParams(1.0, len(res.ids), 64, 0, False, 0, 0, False, "D", 0.0)
    out = builder.build(batch, hard)
    # hier radius 0: only the positive itself is masked, all other slots come from the shortlist
    n_hard = int((out["cand_source"][0] == HARD).sum())
    assert n_hard == min(7, len(res.ids) - 1)
    assert out["stats"]["hard"] == int((out["cand_source"] == HARD).sum())


def test_bank_backend_needs_queries_and_uses_them(tiny_builder):
    onto, res, builder = tiny_builder
    g = onto.ids()[3]
    batch = collate([[g]], 2, frozenset())
    far = -res.vectors([g])  # query pointing away from the positive: its nearest are others
    p = CurriculumParams(1.0, 3, 3, 0, False, 0, 0, False, "D", 0.0)
    out = builder.build(batch, p, queries=far)
    top = {res.ids[r] for r in res.search(far, 3)[0][0].tolist()} - {g}
    hard = {out["go_ids"][i] for i, s in zip(out["cand_idx"][0].tolist(),
            out["cand_source"][0].tolist(), strict=True) if s == HARD}  # fmt: skip
    assert hard == top
    res.source = "bank"
    with pytest.raises(ValueError, match="projected vectors"):
        builder.build(batch, p)


def test_bad_candidate_budget_is_refused(tiny_builder):
    onto, res, _ = tiny_builder
    with pytest.raises(ValueError, match="max_positives"):
        BatchBuilder(res, onto, MiningConfig(n_candidates=4, max_positives=4))


def test_mining_is_deterministic_for_a_seed(tiny_builder):
    onto, res, _ = tiny_builder
    cfg = MiningConfig(n_candidates=8, max_positives=2)
    batch = collate([[onto.ids()[5]], [onto.ids()[2]]], 2, frozenset())
    p = CurriculumParams(0.5, 6, 4, 2, True, 1, 1, True, "B", 0.05)
    a = BatchBuilder(res, onto, cfg, seed=3).build(batch, p)
    b = BatchBuilder(res, onto, cfg, seed=3).build(batch, p)
    assert a["go_ids"] == b["go_ids"]
    assert torch.equal(a["cand_idx"], b["cand_idx"])
