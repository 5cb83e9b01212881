"""GO vector cache (build, hit, invalidation, lookup), GoLookupCache and MemoryBank."""

from __future__ import annotations

import json
import pickle
import shutil
import threading

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from protgo.config import GoTextConfig
from protgo.data.ontology import Ontology
from protgo.encoders.text import load_text_encoder
from protgo.errors import UserError
from protgo.stores.go_encode import load_or_build
from protgo.stores.go_text import GoTextStore
from protgo.stores.go_vectors import GoLookupCache, GoVectorCache
from protgo.stores.memory_bank import MemoryBank


@pytest.fixture(scope="module")
def encoder():
    """fp32: a bf16 vector depends slightly on its batch, and these tests compare texts."""
    return load_text_encoder(dtype="fp32")


def build(tiny_obo, encoder, directory, phase=0, edit=None, cfg=None):
    onto = Ontology.from_obo(tiny_obo)
    if edit:
        edit(onto)
    store = GoTextStore(onto, cfg or GoTextConfig())
    store.update_phase_and_tokenize(phase, encoder)
    return load_or_build(store, encoder, directory, progress=False)


def test_cache_hit_and_invalidation(tiny_obo, encoder, tmp_path):
    d = tmp_path / "cache"
    first = build(tiny_obo, encoder, d)
    assert not first.from_disk and (d / "manifest.json").is_file()
    np.testing.assert_allclose(np.linalg.norm(first.vectors, axis=1), 1.0, atol=1e-5)
    again = build(tiny_obo, encoder, d)  # a new store and the same encoder: a hit
    assert again.from_disk and again.ids == first.ids
    np.testing.assert_array_equal(again.vectors, first.vectors)

    phase1 = build(tiny_obo, encoder, d, phase=1)  # changed phase: rebuilt
    on_disk = json.loads((d / "manifest.json").read_text())["text_hash"]
    assert not phase1.from_disk and on_disk == phase1.manifest["text_hash"]
    assert on_disk != first.manifest["text_hash"]
    root, child = phase1.rows(["GO:0000001", "GO:0000006"])
    assert np.allclose(phase1.vectors[root], first.vectors[root], atol=1e-5)  # same text
    assert not np.allclose(phase1.vectors[child], first.vectors[child], atol=1e-3)

    def new_definition(onto):
        onto.terms["GO:0000011"].definition = "Interacting selectively with a molecule."

    changed = build(tiny_obo, encoder, d, phase=1, edit=new_definition)  # changed text
    assert not changed.from_disk
    assert build(tiny_obo, encoder, d, phase=1, edit=new_definition).from_disk

    saved = encoder.max_length
    encoder.max_length = 64  # a changed encoder setting: rebuilt
    try:
        assert not build(tiny_obo, encoder, d, phase=1, edit=new_definition).from_disk
    finally:
        encoder.max_length = saved


def test_a_phase_reuses_the_unchanged_texts_of_another(tiny_obo, encoder, tmp_path):
    """Phase 2 adds part_of and regulates: the texts without them are phase 1's, so their
    vectors are copied from the phase-1 cache; the result equals encoding every text."""
    from protgo.stores.go_vectors import cache_dir

    def phase_dir(root, phase):
        return cache_dir(root, "tiny", GoTextConfig(), phase, ["BP", "MF", "CC"])

    build(tiny_obo, encoder, phase_dir(tmp_path / "a", 1), phase=1)
    reused = build(tiny_obo, encoder, phase_dir(tmp_path / "a", 2), phase=2)
    alone = build(tiny_obo, encoder, phase_dir(tmp_path / "b", 2), phase=2)  # no phase 1 here
    n_same = sum(
        a == b
        for a, b in zip(GoTextStore(Ontology.from_obo(tiny_obo), GoTextConfig()).texts_for_phase(1),
                        GoTextStore(Ontology.from_obo(tiny_obo), GoTextConfig()).texts_for_phase(2),
                        strict=True)
    )  # fmt: skip
    assert 0 < n_same < len(reused)  # some texts change (GO:0000006, part_of), some do not
    assert reused.manifest["reused"] == n_same and alone.manifest["reused"] == 0
    assert reused.text_keys == alone.text_keys
    np.testing.assert_allclose(reused.vectors, alone.vectors, atol=1e-5)
    # A cache reloaded from disk keeps its text keys, so it can give to the next phase.
    again = GoVectorCache.load(phase_dir(tmp_path / "a", 2))
    assert again.text_keys == reused.text_keys and all(again.text_keys)
    # ... and to another dataset's (or a bundle's) cache of the same texts: nothing encoded
    other = cache_dir(tmp_path / "a", "bundle-x", GoTextConfig(), 2, ["BP", "MF", "CC"])
    given = build(tiny_obo, encoder, other, phase=2)
    assert given.manifest["reused"] == len(given)
    np.testing.assert_array_equal(given.vectors, reused.vectors)


def test_caches_are_named_by_their_texts(tiny_obo, encoder, tmp_path):
    """A config whose phase 0 carries every relation (one text phase) and the default (plain
    phase 0, every relation at phase 2) never overwrite each other's vectors, and the same
    texts at another phase number are one cache: switching configs encodes nothing again."""
    from protgo.stores.go_vectors import cache_dir

    default, one = GoTextConfig(), GoTextConfig(phase_relations=[["is_a", "part_of", "regulates"]])
    where = lambda cfg, phase: cache_dir(tmp_path, "tiny", cfg, phase, ["MF", "BP", "CC"])  # noqa: E731
    assert where(default, 0).name == "texts-plain-BPMFCC"
    assert where(default, 1).name == "texts-is_a-max4-BPMFCC"
    assert where(one, 0) == where(default, 2) != where(default, 0)
    plain = build(tiny_obo, encoder, where(default, 0), 0, cfg=default)
    rich = build(tiny_obo, encoder, where(one, 0), 0, cfg=one)
    assert not plain.from_disk and not rich.from_disk
    assert build(tiny_obo, encoder, where(default, 0), 0, cfg=default).from_disk
    assert build(tiny_obo, encoder, where(default, 2), 2, cfg=default).from_disk
    np.testing.assert_array_equal(GoVectorCache.load(where(default, 0)).vectors, plain.vectors)
    with pytest.raises(UserError, match="text phase 3 is not configured"):
        where(default, 3)


def test_lookup_filter_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((5, 8)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    ids = [f"GO:000000{i}" for i in range(5)]
    cache = GoVectorCache(ids, ["BP", "MF", "BP", "CC", "MF"], vecs, {"phase": 0})
    np.testing.assert_array_equal(cache.lookup(["GO:0000003", "GO:0000000"]), vecs[[3, 0]])
    with pytest.raises(UserError, match="GO:9999999"):
        cache.lookup(["GO:0000001", "GO:9999999"])
    mf = cache.filter_aspect("MF")
    assert mf.ids == ["GO:0000001", "GO:0000004"]
    np.testing.assert_array_equal(mf.lookup(["GO:0000004"]), vecs[[4]])
    lc = GoLookupCache(cache)
    torch.testing.assert_close(lc.vectors(["GO:0000002"]), torch.from_numpy(vecs[[2]]))
    assert lc.rows(["GO:0000004", "GO:0000001"]).tolist() == [4, 1]

    cache.save(tmp_path / "c")
    loaded = GoVectorCache.load(tmp_path / "c")
    assert loaded.ids == ids and loaded.aspects == cache.aspects
    np.testing.assert_array_equal(loaded.vectors, vecs)
    np.save(tmp_path / "c" / "vectors.npy", vecs[:3])  # corrupt: fewer rows than ids
    with pytest.raises(UserError, match="corrupt"):
        GoVectorCache.load(tmp_path / "c")
    with pytest.raises(UserError, match="protgo embed go"):
        GoVectorCache.load(tmp_path / "missing")


def unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=-1)


@pytest.fixture
def lookup() -> GoLookupCache:
    g = torch.Generator().manual_seed(0)
    vecs = unit(torch.randn(20, 12, generator=g)).numpy()
    return GoLookupCache(GoVectorCache([f"GO:{i:07d}" for i in range(20)], ["MF"] * 20, vecs, {}))


def test_bank_fill_momentum_and_refresh(lookup, tmp_path):
    torch.manual_seed(0)
    proj = torch.nn.Linear(12, 6)
    bank = MemoryBank.from_cache(lookup, proj, momentum=0.8)
    with torch.no_grad():
        torch.testing.assert_close(bank.matrix, unit(proj(lookup.matrix)))
    before = bank.copy()
    new = torch.randn(3, 6)
    ids = ["GO:0000002", "GO:0000005", "GO:0000002"]  # a duplicate is averaged first
    bank.update(ids, new)
    r2 = unit(0.8 * before[2] + 0.2 * unit(unit(new[[0, 2]]).mean(0)))
    torch.testing.assert_close(bank.matrix[2], r2)
    torch.testing.assert_close(bank.matrix[5], unit(0.8 * before[5] + 0.2 * unit(new[1])))
    untouched = [i for i in range(20) if i not in (2, 5)]
    torch.testing.assert_close(bank.matrix[untouched], before[untouched])
    torch.testing.assert_close(bank.matrix.norm(dim=1), torch.ones(20))

    proj2 = torch.nn.Linear(12, 6)  # the model moved on: re-project the ids seen
    assert bank.refresh(["GO:0000005", "GO:0000007"], lookup, proj2) == 2
    with torch.no_grad():
        torch.testing.assert_close(bank.matrix[[5, 7]], unit(proj2(lookup.matrix[[5, 7]])))
    torch.testing.assert_close(bank.matrix[2], r2)
    with pytest.raises(UserError, match="GO:9999999"):
        bank.update(["GO:9999999"], torch.randn(1, 6))

    snap = bank.snapshot(tmp_path / "bank")
    loaded = GoVectorCache.load(tmp_path / "bank")
    assert loaded.manifest["source"] == "bank" and loaded.ids == bank.ids
    np.testing.assert_array_equal(loaded.vectors, snap.vectors)
    np.testing.assert_array_equal(loaded.vectors, bank.matrix.numpy())
    clone = pickle.loads(pickle.dumps(bank))  # what a DataLoader worker receives
    torch.testing.assert_close(clone.matrix, bank.matrix)
    clone.update(["GO:0000001"], torch.randn(1, 6))
    assert not torch.equal(clone.matrix[1], bank.matrix[1])


def test_bank_concurrent_updates_stay_consistent(lookup):
    bank = MemoryBank.from_cache(lookup, lambda x: x, momentum=0.5)
    n_threads, n_updates = 4, 50
    bad: list[int] = []

    def worker(seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        for _ in range(n_updates):
            rows = torch.randint(0, 20, (5,), generator=g).tolist()
            bank.update([bank.ids[r] for r in rows], torch.randn(5, 12, generator=g))
            copy = bank.copy()  # a reader between writes sees whole rows of unit length
            if not torch.allclose(copy.norm(dim=1), torch.ones(20), atol=1e-5):
                bad.append(seed)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not bad and bank.version == n_threads * n_updates
    torch.testing.assert_close(bank.matrix.norm(dim=1), torch.ones(20))


def test_embed_go_command(tiny_obo, tmp_path):
    from protgo.cli import app

    ds = tmp_path / "datasets" / "tiny"
    ds.mkdir(parents=True)
    shutil.copy(tiny_obo, ds / "go.obo")
    (ds / "dataset.json").write_text("{}")
    args = ["embed", "go", "--dataset", "tiny", "--phase", "1", "--aspects", "MF"]
    args += ["--data-dir", str(tmp_path)]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    d = tmp_path / "stores" / "go" / "tiny" / "all-MiniLM-L6-v2" / "texts-is_a-max4-MF"
    cache = GoVectorCache.load(d)
    assert cache.ids == ["GO:0000010", "GO:0000011"] and cache.dim == 384
    assert "encoded" in out.output
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and "cached" in again.output
    assert "INFO protgo.stores.go_encode: GO vector cache hit" in again.output  # log.info shown
    quiet = CliRunner().invoke(app, ["-q", *args])
    assert quiet.exit_code == 0 and "cached" in quiet.output and "INFO" not in quiet.output
    # 8 flipped bytes in the vectors: the checksum catches it and the command encodes again
    raw = bytearray((d / "vectors.npy").read_bytes())
    raw[-8:] = bytes(b ^ 0xFF for b in raw[-8:])
    (d / "vectors.npy").write_bytes(bytes(raw))
    with pytest.raises(UserError, match="fails its checksum"):
        GoVectorCache.load(d)
    fixed = CliRunner().invoke(app, args)
    assert fixed.exit_code == 0 and "encoded" in fixed.output
    np.testing.assert_array_equal(GoVectorCache.load(d).vectors, cache.vectors)
