"""End-to-end training on a tiny dataset: real GO terms and texts (packaged MiniLM), a tiny
random ESM, sequences whose family motif decides their GO term."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest
import torch

from protgo.config import load_config
from protgo.train.phases import RELOAD_ORDER

CONFIGS = Path(__file__).parent.parent / "configs"
AA = "ACDEFGHIKLMNPQRSTVWY"
N_FAMILIES, PER_FAMILY, N_DISTRACTORS = 12, 12, 60


def _subset_terms(real_data_dir: Path, n_targets: int, n_more: int):
    """``n_targets`` specific MF terms, ``n_more`` unannotated ones (retrieval distractors),
    and every ancestor: a few hundred real GO terms."""
    from protgo.data import godb
    from protgo.data.ontology import Ontology

    go_sqlite = real_data_dir / "raw/debian/root/usr/lib/R/site-library/GO.db/extdata/GO.sqlite"
    terms = godb.read_terms(go_sqlite)
    onto = Ontology(terms)
    leaves = sorted(t for t in onto.ids("MF") if onto.depth(t) >= 4 and not onto.children(t))
    picked = random.Random(0).sample(leaves, n_targets + n_more)
    targets = picked[:n_targets]
    keep = set(picked).union(*(onto.ancestors(t) for t in picked))
    out = []
    for t in terms:
        if t.id in keep:
            parents = {r: [p for p in ps if p in keep] for r, ps in t.parents.items()}
            out.append(dataclasses.replace(t, parents={r: p for r, p in parents.items() if p}))
    return out, targets


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory, tiny_esm, real_data_dir):
    """(data_dir, overrides): dataset ``tiny``, its residue store and GO caches (3 phases)."""
    from protgo.data.build import BuildOptions, build_dataset, user_sources
    from protgo.data.fasta import write_fasta
    from protgo.data.ontology import write_obo
    from protgo.encoders.protein import ProteinEncoder
    from protgo.stores.go_vectors import embed_go
    from protgo.stores.residues import ESMResidueStore

    data_dir = tmp_path_factory.mktemp("train_data")
    raw = data_dir / "raw_tiny"
    raw.mkdir()
    terms, targets = _subset_terms(real_data_dir, N_FAMILIES, N_DISTRACTORS)
    rng = random.Random(1)
    seqs, rows = {}, []
    for f, term in enumerate(targets):
        motif = "".join(rng.choice(AA) for _ in range(12))
        for i in range(PER_FAMILY):
            bg = [rng.choice(AA) for _ in range(rng.randint(20, 40))]
            for _ in range(3):
                at = rng.randint(0, len(bg))
                bg[at:at] = motif
            pid = f"F{f:02d}_{i}"
            seqs[pid] = "".join(bg)
            rows.append(f"{pid}\t{term}\tIDA")
    write_obo(terms, raw / "go.obo")
    write_fasta(sorted(seqs.items()), raw / "seqs.fasta")
    (raw / "ann.tsv").write_text("\n".join(rows) + "\n")
    src = user_sources(raw / "seqs.fasta", raw / "ann.tsv", raw / "go.obo")
    opts = BuildOptions(aspects=("MF",), split="random", zero_shot_frac=0.0, seed=0)
    build_dataset(data_dir / "datasets" / "tiny", src, opts, "tiny")
    overrides = [f"residues.model={tiny_esm}", "data.dataset=tiny", "data.aspects=[MF]",
                 f"data.data_dir={data_dir}", "mining.few_shot_share=null"]  # fmt: skip
    cfg = load_config(CONFIGS / "tiny.yaml", overrides)
    enc = ProteinEncoder(cfg.residues)
    store = ESMResidueStore.create(data_dir, enc.settings())
    store.embed(enc, seqs, progress=False)
    for phase in range(len(cfg.go_text.phase_relations)):
        embed_go("tiny", phase, ["MF"], data_dir, cfg.go_text, progress=False)
    return data_dir, overrides


def _cfg(world, tmp_path, *more):
    data_dir, overrides = world
    return load_config(CONFIGS / "tiny.yaml", [*overrides, f"train.out_dir={tmp_path}", *more])


def test_tiny_run_learns(tiny_world, tmp_path):
    from protgo.train.tracking import read_metrics
    from protgo.train.trainer import Trainer

    cfg = _cfg(tiny_world, tmp_path / "run", "train.epochs=4", "train.lr=3e-3",
               "train.log_every_steps=1", "phases.start_epochs=[0,2,3]")  # fmt: skip
    trainer = Trainer(cfg, progress=False)
    last = trainer.fit()
    train = read_metrics(tmp_path / "run", "train")
    n = max(3, len(train) // 4)
    first = sum(r["total"] for r in train[:n]) / n
    final = sum(r["total"] for r in train[-n:]) / n
    print(f"loss {first:.3f} -> {final:.3f}; valid {last}")
    assert final < first - 0.2
    assert last["fmax"] > last["fmax_random"] + 0.15
    assert (tmp_path / "run" / "checkpoints" / "final.pt").is_file()
    events = [r for r in read_metrics(tmp_path / "run", "event") if r["event"] == "refresh"]
    phase1 = [r for r in events if "starts text phase 1" in r["reason"]]
    assert [r["resource"] for r in phase1] == list(RELOAD_ORDER)
    assert phase1[0]["step"] == 2 * trainer.steps_per_epoch
    assert "phase 1" in (tmp_path / "run" / "train.log").read_text()


def test_exact_resume(tiny_world, tmp_path):
    from protgo.train.tracking import read_metrics
    from protgo.train.trainer import Trainer

    more = ("train.epochs=2", "train.checkpoint_every_steps=5", "train.log_every_steps=1",
            "phases.start_epochs=[0,1,2]", "loss.lambda_distill=0.5")  # fmt: skip
    straight = Trainer(_cfg(tiny_world, tmp_path / "a", *more), progress=False)
    straight.fit()
    cfg_b = _cfg(tiny_world, tmp_path / "b", *more)
    Trainer(cfg_b, progress=False).fit(max_steps=10)  # stops mid-epoch after checkpoint 10
    resumed = Trainer(cfg_b, progress=False)
    resumed.fit(resume=tmp_path / "b")
    assert resumed.step == straight.step
    for (name, p), q in zip(straight.model.state_dict().items(),
                            resumed.model.state_dict().values(), strict=True):  # fmt: skip
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6, msg=name)
    sa, sb = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    for k in sa:
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(sa[k][key], sb[k][key], rtol=1e-6, atol=1e-6)
    ma, mb = read_metrics(tmp_path / "a", "train"), read_metrics(tmp_path / "b", "train")
    assert [r["step"] for r in ma] == [r["step"] for r in mb]
    assert [r["total"] for r in ma] == pytest.approx([r["total"] for r in mb], rel=1e-5)


def test_forced_faiss_failure_falls_back(tiny_world, tmp_path, monkeypatch):
    import faiss

    from protgo.train.tracking import read_metrics
    from protgo.train.trainer import Trainer

    def broken(*args, **kwargs):
        raise RuntimeError("forced FAISS failure")

    monkeypatch.setattr(faiss, "IndexFlatIP", broken)
    cfg = _cfg(tiny_world, tmp_path, "train.epochs=2", "phases.start_epochs=[0,1]",
               "mining.index=exact")  # fmt: skip
    last = Trainer(cfg, progress=False).fit()
    events = read_metrics(tmp_path, "event")
    assert sum(r["event"] == "faiss_fallback" for r in events) == 2  # start and phase 1
    assert last["epoch"] == 2 and (tmp_path / "checkpoints" / "final.pt").is_file()
