"""ProteinEmbDataset (DAG expansion, stoplist, zero-shot), the few-shot sampler, and the
dataset -> DataLoader -> BatchBuilder path on a real residue store."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from protgo.config import MiningConfig, ResiduesConfig
from protgo.data.ontology import Ontology, Term
from protgo.errors import UserError
from protgo.mining.batch_builder import BatchBuilder
from protgo.mining.collator import ContrastiveEmbCollator
from protgo.mining.curriculum import CurriculumParams
from protgo.mining.dataset import (
    FewShotBatchSampler,
    FewZeroConfig,
    ProteinEmbDataset,
    Specificity,
    expand_positives,
)
from protgo.stores.go_vectors import GoLookupCache, GoVectorCache
from protgo.stores.vector_resources import VectorResources


@st.composite
def dags(draw):
    n = draw(st.integers(6, 40))
    terms = [Term(id="T0", namespace="biological_process")]
    for i in range(1, n):
        ps = draw(st.lists(st.integers(0, i - 1), min_size=1, max_size=3, unique=True))
        terms.append(Term(id=f"T{i}", namespace="biological_process",
                          parents={"is_a": [f"T{p}" for p in ps]}))  # fmt: skip
    ids = [t.id for t in terms]
    ann = [draw(st.lists(st.sampled_from(ids), min_size=1, max_size=4)) for _ in range(8)]
    zero = frozenset(draw(st.lists(st.sampled_from(ids), max_size=4)))
    return terms, ann, zero


def levels_up(terms: list[Term], direct: set[str]) -> dict[str, int]:
    """Reference: distance from the nearest direct term to each proper ancestor."""
    parents = {t.id: t.parents.get("is_a", []) for t in terms}
    dist, q = {}, deque((g, 0) for g in direct)
    while q:
        g, d = q.popleft()
        for p in parents[g]:
            if p not in direct and p not in dist:
                dist[p] = d + 1
                q.append((p, d + 1))
    return dist


@settings(max_examples=50, deadline=None)
@given(dags(), st.integers(0, 6), st.floats(0.1, 0.9), st.floats(0.2, 1.0))
def test_expansion_invariants(case, max_anc, gamma, share):
    terms, ann, zero = case
    onto = Ontology(terms)
    spec = Specificity.from_annotations(onto, ann, share)
    assert "T0" in spec.stoplist  # the root is never an expansion target
    n = len(ann)
    for t in spec.stoplist - {"T0"}:
        assert sum(t in onto.propagate(a) for a in ann) > share * n
    cfg = MiningConfig(max_ancestors=max_anc, gamma=gamma)
    for direct in ann:
        pos = expand_positives(direct, onto, cfg, spec, zero)
        keep = set(direct) - zero
        assert not zero & set(pos)  # zero-shot terms are never positives
        assert all(pos[g] == 1.0 for g in keep)
        added = set(pos) - keep
        assert len(added) <= max_anc and not added & spec.stoplist
        level = levels_up(terms, keep)
        for g in added:
            assert pos[g] == pytest.approx(gamma ** level[g])
        eligible = [g for g in level if g not in spec.stoplist and g not in zero]
        left = set(eligible) - added
        if added and left:  # nearest first: nothing left out is nearer than what was added
            assert min(level[g] for g in left) >= max(level[g] for g in added)
        if not added:
            assert max_anc == 0 or not eligible


@settings(max_examples=25, deadline=None)
@given(st.integers(300, 900), st.floats(0.05, 0.6), st.integers(8, 64), st.integers(0, 99))
def test_few_shot_sampler_meets_its_share(n, share, batch, seed):
    rng = np.random.default_rng(seed)
    total = rng.integers(1, 12, size=n)
    few = np.where(rng.random(n) < 0.3, rng.integers(1, 4, size=n), 0).clip(max=total)
    pairs = np.stack([few, total], 1)
    reachable = few[few > 0].sum() / total[few > 0].sum()
    s = FewShotBatchSampler(pairs, batch, share, seed=seed)
    got = [i for b in s for i in b]
    assert all(len(b) == batch for b in s) and len(list(s)) == len(s) == n // batch
    achieved = pairs[got, 0].sum() / pairs[got, 1].sum()
    want = min(share, reachable)
    assert achieved == pytest.approx(want, abs=0.06 + 0.6 * batch / n)


def test_few_shot_sampler_on_human_exp(real_data_dir):
    from protgo.data.folder import DatasetFolder

    folder = DatasetFolder.load("human-exp", real_data_dir)
    fz = FewZeroConfig.from_term_class(folder.term_class)
    ann = folder.annotations
    pids = [p for p in folder.ids("train") if set(ann[p]) - fz.zero]
    pairs = [(len(set(ann[p]) & fz.few), len(set(ann[p]) - fz.zero)) for p in pids]
    natural = sum(a for a, _ in pairs) / sum(b for _, b in pairs)
    for share in (0.1, 0.23):  # below and above the natural share (~0.19; at most ~0.24)
        s = FewShotBatchSampler(pairs, 32, share, seed=0)
        s.set_epoch(1)
        got = [i for b in s for i in b]
        achieved = sum(pairs[i][0] for i in got) / sum(pairs[i][1] for i in got)
        assert achieved == pytest.approx(share, abs=0.02), (share, natural)


@pytest.fixture
def small_world(tiny_esm, tmp_path, tiny_obo):
    """A real residue store of a few proteins and annotations on tiny.obo."""
    from protgo.encoders.protein import ProteinEncoder
    from protgo.stores.residues import ResidueStore

    onto = Ontology.from_obo(tiny_obo)
    ids = sorted(onto.ids())
    rng = np.random.default_rng(0)
    seqs = {f"P{i}": "".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), 10 + 3 * i))
            for i in range(8)}  # fmt: skip
    enc = ProteinEncoder(ResiduesConfig(model=str(tiny_esm), batch_tokens=512))
    store = ResidueStore.create(tmp_path, enc.settings())
    store.embed(enc, seqs, progress=False)
    store.reload()
    ann = {p: set(rng.choice(ids, size=2, replace=False)) for p in seqs}
    ann["P7"] = {ids[-1]}  # annotated only to a zero-shot term: dropped
    return onto, store, ann, ids


def test_dataset_items_and_loader_to_builder(small_world):
    onto, store, ann, ids = small_world
    cfg = MiningConfig(max_ancestors=2, n_candidates=6, max_positives=3)
    fz = FewZeroConfig(zero=frozenset({ids[-1]}), few=frozenset(ids[:3]), few_share=0.3)
    spec = Specificity.from_annotations(onto, ann.values(), cfg.stoplist_share)
    ds = ProteinEmbDataset(sorted(ann), ann, onto, store, cfg, fz, spec)
    assert "P7" not in ds.pids and len(ds) == 7
    it = ds[0]
    assert it["residues"].shape == (store.length(it["pid"]), store.dim)
    assert it["residues"].dtype == np.float16 and not fz.zero & set(it["positives"])
    sampler = FewShotBatchSampler.for_dataset(ds, 3, seed=0)
    loader = torch.utils.data.DataLoader(
        ds, batch_sampler=sampler, collate_fn=ContrastiveEmbCollator(cfg, fz.zero)
    )
    v = np.random.default_rng(1).normal(size=(len(ids), 4)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    res = VectorResources(GoLookupCache(GoVectorCache(ids, ["BP"] * len(ids), v, {})))
    builder = BatchBuilder(res, onto, cfg, fz.zero)
    p = CurriculumParams(0.5, 6, 4, 2, True, 1, 1, True, "A", 0.0)
    for batch in loader:
        out = builder.build(batch, p)
        B, L = out["mask"].shape
        assert out["residues"].shape == (B, L, store.dim) and out["cand_idx"].shape == (B, 6)
        assert ids[-1] not in out["go_ids"]
    with pytest.raises(UserError, match="not in the residue store"):
        ProteinEmbDataset(["nope"], {"nope": {ids[0]}}, onto, store, cfg, fz, spec)
