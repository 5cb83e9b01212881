"""The residue store: agreement with the encoder, resume, ranks, corruption, stale keys."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from protgo.config import ResiduesConfig
from protgo.encoders.protein import ProteinEncoder
from protgo.errors import UserError
from protgo.stores.residues import ResidueStore, store_dir

AA = "ACDEFGHIKLMNPQRSTVWY"
SHARD_BYTES = 2 * 32 * 120  # about 120 residues per shard: several shards from a few proteins


@pytest.fixture(scope="module")
def enc(tiny_esm) -> ProteinEncoder:
    return ProteinEncoder(
        # fp32: the reference embeds one protein at a time, the store in batches
        ResiduesConfig(
            model=str(tiny_esm), win_size=24, win_stride=16, batch_tokens=160, dtype="fp32"
        )  # fmt: skip
    )


@pytest.fixture(scope="module")
def seqs() -> dict[str, str]:
    rng = np.random.default_rng(7)
    out = {
        f"P{i:02d}": "".join(rng.choice(list(AA), size=int(rng.integers(3, 80)))) for i in range(24)
    }
    out["DUP"] = out["P03"].lower() + "*"  # same protein after cleaning: stored once
    return out


def embed(data_dir: Path, enc, seqs, **kw) -> tuple[ResidueStore, object]:
    store = ResidueStore.create(data_dir, enc.settings())
    report = store.embed(enc, seqs, shard_bytes=SHARD_BYTES, progress=False, **kw)
    store.reload()
    return store, report


def tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def reference(tmp_path_factory, enc, seqs) -> ResidueStore:
    """One uninterrupted single-process run: the store every other way must reproduce."""
    store, report = embed(tmp_path_factory.mktemp("ref"), enc, seqs)
    assert report.merged and report.written_shards == report.planned_shards > 3
    return store


def test_store_matches_encoder_and_means(reference, enc, seqs):
    for pid, seq in seqs.items():
        vec = reference.get(pid)
        want = enc.embed(seq)  # (L, D) fp32 stitched reference
        assert vec.dtype == np.float16 and vec.shape == (len(seq.rstrip("*")), enc.dim)
        np.testing.assert_allclose(vec.astype(np.float32), want.numpy(), atol=4e-3, rtol=1e-3)
        np.testing.assert_allclose(reference.mean(pid), want.mean(0).numpy(), atol=1e-5)
    assert reference.proteins["DUP"] == reference.proteins["P03"]
    assert len(reference.entries) == len(seqs) - 1
    assert reference.means(["P00", "P01"]).shape == (2, enc.dim)
    np.testing.assert_array_equal(reference.get_sequence(seqs["P05"]), reference.get("P05"))
    # Reads come from memory maps, not from shards loaded into RAM.
    assert all(isinstance(m, np.memmap) for m, _ in reference._maps.values())
    with pytest.raises(UserError, match="'nope' is not in the residue store"):
        reference.get("nope")


def test_second_run_embeds_nothing(reference, enc, seqs):
    report = reference.embed(enc, seqs, shard_bytes=SHARD_BYTES, progress=False)
    assert report.planned_shards == 0 and report.residues == 0 and report.merged


def test_resume_after_interruption_gives_identical_store(tmp_path, enc, seqs, reference):
    store = ResidueStore.create(tmp_path, enc.settings())
    real_forward, calls = enc.forward_windows, []

    def dies_after_five_batches(windows):
        calls.append(1)
        if len(calls) > 5:
            raise KeyboardInterrupt  # as if the user pressed ctrl-c mid-shard
        return real_forward(windows)

    enc.forward_windows = dies_after_five_batches
    try:
        with pytest.raises(KeyboardInterrupt):
            store.embed(enc, seqs, shard_bytes=SHARD_BYTES, progress=False)
    finally:
        del enc.forward_windows
    assert any(store.root.glob("shards/*.json"))  # some shards finished before the kill
    assert json.loads((store.root / "manifest.json").read_text())["entries"] == {}
    report = store.embed(enc, seqs, shard_bytes=SHARD_BYTES, progress=False)
    assert 0 < report.written_shards < report.planned_shards
    assert tree(store.root) == tree(reference.root)


def test_damaged_manifest_is_rebuilt_by_embed_without_recomputing(tmp_path, enc, seqs, reference):
    """A cut manifest.json is one error for readers; `embed` rebuilds it from the shards'
    records, keeps every vector and gives the reference store's manifest back."""
    root = store_dir(tmp_path, enc.settings())
    shutil.copytree(reference.root, root)
    manifest = root / "manifest.json"
    manifest.write_text(manifest.read_text()[:50])
    with pytest.raises(UserError, match="embed residues"):
        ResidueStore(root)
    store, report = embed(tmp_path, enc, seqs)
    assert report.written_shards == 0 and report.merged
    assert tree(store.root) == tree(reference.root)


def test_two_ranks_give_the_single_process_store(tmp_path, enc, seqs, reference):
    _, r0 = embed(tmp_path, enc, seqs, rank=0, world_size=2)
    assert not r0.merged  # rank 1's shards are still missing
    _, r1 = embed(tmp_path, enc, seqs, rank=1, world_size=2)
    assert r1.merged and r0.written_shards + r1.written_shards == r1.planned_shards
    assert tree(store_dir(tmp_path, enc.settings())) == tree(reference.root)


def test_corrupt_or_truncated_shard_is_detected_and_re_embedded(tmp_path, enc, seqs, reference):
    root = store_dir(tmp_path, enc.settings())
    shutil.copytree(reference.root, root)
    shard, row, *_ = reference.entries[reference.proteins["P10"]]
    path = root / "shards" / f"{shard}.npy"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # one flipped bit pattern in the vectors, same size
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="fails its checksum"):
        ResidueStore(root).get("P10")
    assert set(ResidueStore(root).verify()) == {shard}
    other, *_ = reference.entries[reference.proteins["P20"]]
    other_path = root / "shards" / f"{other}.npy"
    other_path.write_bytes(other_path.read_bytes()[:-100])
    with pytest.raises(UserError, match="truncated"):
        ResidueStore(root, verify="size").get("P20")
    # A new run drops both shards from the manifest and embeds their proteins again.
    store, report = embed(tmp_path, enc, seqs)
    assert report.written_shards >= 1 and store.verify() == {}
    for pid in ("P10", "P20"):
        np.testing.assert_array_equal(store.get(pid), reference.get(pid))


def test_changed_model_or_layer_never_reuses_vectors(tmp_path, tiny_esm, enc, seqs):
    from transformers import EsmForMaskedLM

    base = ResiduesConfig(model=str(tiny_esm), win_size=24, win_stride=16)
    layer1 = ProteinEncoder(base.model_copy(update={"layer": 1}))
    narrow = ProteinEncoder(base.model_copy(update={"win_size": 20}))
    dirs = {store_dir(tmp_path, e.settings()) for e in (enc, layer1, narrow)}
    assert len(dirs) == 3
    # Same directory name, retrained weights: a different fingerprint, so a different store.
    retrained = tmp_path / "retrained"
    shutil.copytree(tiny_esm, retrained)
    model = EsmForMaskedLM.from_pretrained(retrained)
    with torch.no_grad():
        model.esm.encoder.layer[0].intermediate.dense.weight.add_(0.01)
    model.save_pretrained(retrained)
    a = ProteinEncoder(ResiduesConfig(model=str(tiny_esm)))
    b = ProteinEncoder(ResiduesConfig(model=str(retrained)))
    assert a.settings()["fingerprint"] != b.settings()["fingerprint"]
    # A store opened for one encoder refuses another's vectors.
    store = ResidueStore.create(tmp_path, enc.settings())
    with pytest.raises(UserError, match="encoder settings differ"):
        store.embed(layer1, seqs, progress=False)


def test_for_config_finds_the_store_without_the_model(reference, tiny_esm, tmp_path):
    data_dir = reference.root.parents[2]
    cfg = ResiduesConfig(model=str(tiny_esm), win_size=24, win_stride=16, dtype="fp32")
    assert ResidueStore.for_config(cfg, data_dir).root == reference.root
    with pytest.raises(UserError, match="run `protgo embed residues` first") as err:
        ResidueStore.for_config(cfg.model_copy(update={"layer": 1}), data_dir)
    assert "model changed" not in str(err.value)  # another layer is not another model
    # The same model directory retrained since it was embedded: the error says so.
    from transformers import EsmForMaskedLM

    changed = tmp_path / "retrained" / tiny_esm.name
    shutil.copytree(tiny_esm, changed)
    model = EsmForMaskedLM.from_pretrained(changed)
    with torch.no_grad():
        model.esm.encoder.layer[0].intermediate.dense.weight.add_(0.01)
    model.save_pretrained(changed)
    with pytest.raises(UserError, match="the model changed since it was embedded"):
        ResidueStore.for_config(cfg.model_copy(update={"model": str(changed)}), data_dir)


def test_bad_sequence_fails_before_any_work(tmp_path, enc):
    store = ResidueStore.create(tmp_path, enc.settings())
    with pytest.raises(UserError, match=r"protein 'bad', position 4:"):
        store.embed(enc, {"ok": "MKVL", "bad": "MKV1L"}, progress=False)
    assert not any(store.root.glob("shards/*"))


CONCURRENT = """
import json, sys, time
from pathlib import Path
from protgo.config import ResiduesConfig
from protgo.encoders.protein import ProteinEncoder
from protgo.stores.residues import ResidueStore
model, data_dir, seqs_file, go, shard_bytes = sys.argv[1:]
enc = ProteinEncoder(ResiduesConfig(model=model, win_size=24, win_stride=16, batch_tokens=160,
                                    dtype="fp32"))
seqs = json.loads(Path(seqs_file).read_text())
while not Path(go).exists():  # start both runs at the same moment
    time.sleep(0.005)
store = ResidueStore.create(Path(data_dir), enc.settings())
print(json.dumps(store.embed(enc, seqs, shard_bytes=int(shard_bytes), progress=False).__dict__))
"""


def test_two_concurrent_runs_on_one_store_end_valid(tmp_path, tiny_esm, enc, seqs, reference):
    """Two `embed residues` on the same store at once: both succeed, they split the shards
    (each written once), and the store is the single-process one."""
    import subprocess
    import sys

    (tmp_path / "seqs.json").write_text(json.dumps(seqs))
    args = [str(tiny_esm), str(tmp_path / "d"), str(tmp_path / "seqs.json"), str(tmp_path / "go"),
            str(SHARD_BYTES)]  # fmt: skip
    procs = [subprocess.Popen([sys.executable, "-c", CONCURRENT, *args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]  # fmt: skip
    (tmp_path / "go").touch()
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]
    reports = [json.loads(o.strip().splitlines()[-1]) for o, _ in outs]
    # each shard written once: by either run (a run that starts after the other merged plans
    # nothing and writes nothing)
    assert sum(r["written_shards"] for r in reports) == max(r["planned_shards"] for r in reports)
    store = ResidueStore(store_dir(tmp_path / "d", enc.settings()))
    assert store.verify() == {} and len(store) == len(reference)
    assert tree(store.root) == tree(reference.root)


def test_zero_length_shard_is_reported_and_repaired(tmp_path, enc, seqs, reference):
    root = store_dir(tmp_path, enc.settings())
    shutil.copytree(reference.root, root)
    shard, *_ = reference.entries[reference.proteins["P05"]]
    (root / "shards" / f"{shard}.npy").write_bytes(b"")
    with pytest.raises(UserError, match="truncated"):
        ResidueStore(root).get("P05")
    store, report = embed(tmp_path, enc, seqs)  # the command that repairs it
    assert report.written_shards == 1 and store.verify() == {}
    np.testing.assert_array_equal(store.get("P05"), reference.get("P05"))


def test_checksum_is_verified_once_per_process_and_again_after_a_rewrite(tmp_path, enc, reference):
    """The once-per-process shortcut (predict's reads) against the plain check: a shard
    changed after it was verified is caught on the next open."""
    root = store_dir(tmp_path, enc.settings())
    shutil.copytree(reference.root, root)
    shard, *_ = reference.entries[reference.proteins["P07"]]
    np.testing.assert_array_equal(ResidueStore(root).get("P07"), reference.get("P07"))
    path = root / "shards" / f"{shard}.npy"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    time.sleep(0.01)  # a later mtime, as any real rewrite has
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="fails its checksum"):
        ResidueStore(root).get("P07")


def test_projection_fit_matches_a_reference_pca():
    from sklearn.decomposition import PCA

    from protgo.stores.projection import Projection

    rng = np.random.default_rng(3)
    x = rng.normal(size=(500, 12)) @ rng.normal(size=(12, 12)) + rng.normal(size=12)
    proj = Projection.fit(x, 4)
    ref = PCA(n_components=4, svd_solver="full").fit(x)
    np.testing.assert_allclose(proj.mean, ref.mean_, atol=1e-5)
    # the same subspace, component by component (up to sign)
    np.testing.assert_allclose(np.abs(proj.components.T @ ref.components_.T), np.eye(4), atol=1e-4)
    assert proj.explained == pytest.approx(ref.explained_variance_ratio_.sum(), rel=1e-5)
    with pytest.raises(UserError, match="at least 20 residues"):
        Projection.fit(x[:10], 20)


def test_projected_store_keeps_full_means_and_projects_residues(tmp_path, tiny_esm, seqs):
    from protgo.stores.projection import Projection

    cfg = ResiduesConfig(model=str(tiny_esm), win_size=24, win_stride=16, batch_tokens=160,
                         dtype="fp32", project_dim=8)  # fmt: skip
    enc = ProteinEncoder(cfg)
    store = ResidueStore.for_encoder(tmp_path, enc)
    assert "-p8-" in store.root.name and store.dim == 8 and store.mean_dim == enc.dim
    store.embed(enc, seqs, shard_bytes=SHARD_BYTES, progress=False)
    store.reload()
    proj = Projection.load(store.projection_path)
    for pid, seq in seqs.items():
        full = enc.embed(seq).numpy()
        assert store.get(pid).shape == (len(full), 8)
        np.testing.assert_allclose(store.get(pid).astype(np.float32), proj.apply(full),
                                   atol=5e-3, rtol=2e-3)  # fmt: skip
        np.testing.assert_allclose(store.mean(pid), full.mean(0), atol=1e-5)
    # found again from the config; a second run neither refits nor re-embeds
    again = ResidueStore.for_config(cfg, tmp_path)
    assert again.root == store.root
    before = store.projection_path.read_bytes()
    assert again.embed(enc, seqs, shard_bytes=SHARD_BYTES, progress=False).residues == 0
    assert store.projection_path.read_bytes() == before
    # a damaged projection is refused with the fix
    store.projection_path.write_bytes(before[:-8] + b"\0" * 8)
    with pytest.raises(UserError, match="fails its checksum"):
        Projection.load(store.projection_path)
    with pytest.raises(UserError, match="not below the model's"):
        ResidueStore.for_encoder(tmp_path, ProteinEncoder(cfg.model_copy(
            update={"project_dim": enc.dim})))  # fmt: skip
