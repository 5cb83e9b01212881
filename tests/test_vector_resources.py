"""VectorResources: FAISS vs exact top-k, HNSW recall on real GO vectors, cache/bank
consistency between search and scoring, and the exact fallback when FAISS fails."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from protgo.config import GoTextConfig, MiningConfig
from protgo.errors import UserError
from protgo.stores.go_vectors import GoLookupCache, GoVectorCache
from protgo.stores.memory_bank import MemoryBank
from protgo.stores.vector_resources import VectorResources, exact_search

GO_SQLITE = "raw/debian/root/usr/lib/R/site-library/GO.db/extdata/GO.sqlite"
N_REAL = 1000  # MF terms encoded from GO.db; enough for a real neighbour structure, ~15 s


@pytest.fixture(scope="session")
def real_go(real_data_dir) -> GoLookupCache:
    """Phase-0 text vectors of the first 1,000 MF terms of GO.db (texts cut at 32 tokens to
    keep the test short; the vectors still have GO's real neighbourhood structure)."""
    from protgo.data.godb import read_terms
    from protgo.data.ontology import Ontology
    from protgo.encoders.text import load_text_encoder
    from protgo.stores.go_text import GoTextStore

    onto = Ontology(read_terms(real_data_dir / GO_SQLITE))
    encoder = load_text_encoder(max_length=32)
    store = GoTextStore(onto, GoTextConfig(), ids=onto.ids("MF")[:N_REAL])
    tok = store.update_phase_and_tokenize(0, encoder)
    vecs = encoder.encode_ids(tok.input_ids, batch_size=128, progress=False)
    return GoLookupCache(GoVectorCache(store.ids, store.aspects(), vecs, {"phase": 0}))


def random_cache(n: int, d: int, seed: int = 0) -> GoLookupCache:
    g = torch.Generator().manual_seed(seed)
    vecs = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1).numpy()
    return GoLookupCache(GoVectorCache([f"GO:{i:07d}" for i in range(n)], ["BP"] * n, vecs, {}))


def test_faiss_exact_equals_torch_topk():
    lc = random_cache(3000, 48)
    res = VectorResources(lc, cfg=MiningConfig(index="exact"))
    assert res.index is not None
    q = torch.nn.functional.normalize(torch.randn(64, 48), dim=1)
    rows, scores = res.search(q, 20)
    ref_scores, ref_rows = torch.topk(q @ lc.matrix.T, 20, dim=1)
    assert rows.shape == (64, 20) and rows.dtype == torch.long
    assert torch.equal(rows, ref_rows)  # continuous random scores: no ties
    torch.testing.assert_close(scores, ref_scores, atol=1e-5, rtol=1e-5)
    by_torch = VectorResources(lc, cfg=MiningConfig(index="torch"))
    assert by_torch.index is None and torch.equal(by_torch.search(q, 20)[0], ref_rows)
    ids, _ = res.search_ids(q[:2], 3)
    assert ids[0] == [lc.ids[r] for r in ref_rows[0, :3].tolist()]
    assert res.search(q, 10_000)[0].shape == (64, 3000)  # k capped at the vocabulary


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_recall_on_real_go_vectors(real_go, kind):
    res = VectorResources(real_go, cfg=MiningConfig(index=kind))
    assert res.index is not None
    # Queries: real term vectors moved off their term (a protein-like mix of two terms).
    g = torch.Generator().manual_seed(1)
    a, b = torch.randint(0, N_REAL, (2, 200), generator=g)
    q = torch.nn.functional.normalize(real_go.matrix[a] + 0.5 * real_go.matrix[b], dim=1)
    rows, scores = res.search(q, 10)
    ref_rows = exact_search(q, real_go.matrix, 10)[0]
    pairs = zip(rows.tolist(), ref_rows.tolist(), strict=True)
    recall = np.mean([len(set(r) & set(e)) / 10 for r, e in pairs])
    assert recall >= 0.95, recall
    # Scores are exact inner products with the returned rows, whatever the index.
    torch.testing.assert_close(
        scores, (q.unsqueeze(1) * real_go.matrix[rows]).sum(-1), atol=1e-5, rtol=0
    )


def test_search_and_scoring_use_the_same_vectors(real_go):
    torch.manual_seed(0)
    proj = torch.nn.Linear(real_go.dim, 32)
    bank = MemoryBank.from_cache(real_go, proj, momentum=0.5)
    res = VectorResources(real_go, bank, MiningConfig(index="hnsw"), source="cache")
    ids = real_go.ids[:100]
    bank.update(ids, torch.randn(100, 32))  # the bank moves away from the projection
    res.set_backends("bank")
    assert not res.stale
    q = torch.nn.functional.normalize(torch.randn(16, 32), dim=1)
    rows, scores = res.search(q, 25)
    hit_ids = [res.ids[r] for r in rows.flatten().tolist()]
    torch.testing.assert_close(res.vectors(hit_ids), bank.vectors(hit_ids))
    torch.testing.assert_close(res.matrix[rows.flatten()], bank.matrix[rows.flatten()])
    full = res.score(q)  # (16, N): scoring reads the searched matrix
    torch.testing.assert_close(scores, full.gather(1, rows), atol=1e-5, rtol=0)
    torch.testing.assert_close(res.score(q, hit_ids[:5]), q @ bank.vectors(hit_ids[:5]).T)

    bank.update(ids[:3], torch.randn(3, 32))
    assert res.stale  # searched copy is older than the bank until refreshed
    res.refresh()
    torch.testing.assert_close(res.matrix, bank.matrix)

    res.set_backends("cache")
    qc = real_go.matrix[:8]
    rows, _ = res.search(qc, 10)
    hit_ids = [res.ids[r] for r in rows.flatten().tolist()]
    torch.testing.assert_close(res.vectors(hit_ids), real_go.vectors(hit_ids))
    with pytest.raises(ValueError, match="dim"):
        res.search(q, 5)  # aligned-space queries against the text space


def test_bank_backend_needs_a_bank():
    with pytest.raises(UserError, match="MemoryBank"):
        VectorResources(random_cache(10, 4), cfg=MiningConfig(backend="bank"))


def test_forced_faiss_failures_fall_back_to_exact(monkeypatch, caplog):
    import faiss

    lc = random_cache(500, 16)
    q = torch.nn.functional.normalize(torch.randn(8, 16), dim=1)
    ref_rows, ref_scores = exact_search(q, lc.matrix, 5)

    def broken(*args, **kwargs):
        raise RuntimeError("simulated FAISS fault")

    caplog.set_level(logging.WARNING, logger="protgo.stores.vector_resources")
    with monkeypatch.context() as m:  # the build fails
        m.setattr(faiss, "IndexFlatIP", broken)
        res = VectorResources(lc, cfg=MiningConfig(index="exact"))
    assert res.index is None
    for _ in range(3):
        rows, scores = res.search(q, 5)
        assert torch.equal(rows, ref_rows) and torch.allclose(scores, ref_scores)
    res = VectorResources(lc, cfg=MiningConfig(index="exact"))
    assert res.index is not None
    monkeypatch.setattr(faiss.IndexFlatIP, "search", broken)  # now every search fails
    for _ in range(3):
        rows, scores = res.search(q, 5)
        assert torch.equal(rows, ref_rows) and torch.allclose(scores, ref_scores)
    warnings = [r.getMessage() for r in caplog.records]
    assert sum("build failed" in w for w in warnings) == 1
    assert sum("search failed" in w for w in warnings) == 1  # logged once, not per search
    assert all("simulated FAISS fault" in w for w in warnings)
