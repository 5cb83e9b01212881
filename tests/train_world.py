"""The tiny training world shared by test_trainer.py and test_ddp.py (fixture ``tiny_world``
in conftest.py): real GO terms and texts (packaged MiniLM), a tiny random ESM, sequences
whose family motif decides their GO term.

Sized for speed: two text phases, GO texts cut to ``TEXT_MAX_TOKENS`` tokens, a few dozen
distractor terms. ``python tests/train_world.py DIR TINY_ESM`` builds it outside pytest (for
a manual ``torchrun`` run) and prints the overrides.
"""

from __future__ import annotations

import dataclasses
import json
import random
import sys
from pathlib import Path

CONFIGS = Path(__file__).parent.parent / "src" / "protgo" / "configs"
AA = "ACDEFGHIKLMNPQRSTVWY"
N_FAMILIES, PER_FAMILY, N_DISTRACTORS = 12, 12, 30
TEXT_MAX_TOKENS = 32  # MiniLM cost grows with text length; names + definition starts suffice
PHASES = "go_text.phase_relations=[[],[is_a]]"  # two phases: every phase test needs only one switch


FIXTURE = Path(__file__).parent / "fixtures" / "go-mf-subset"  # .obo and .json
WORLDS = {"train": (N_FAMILIES, N_DISTRACTORS, 0), "predict": (6, 20, 3)}  # targets, more, seed


def pick_terms(terms, n_targets: int, n_more: int, seed: int = 0):
    """``n_targets`` specific MF terms, ``n_more`` unannotated ones (retrieval distractors),
    and every ancestor: a couple of hundred real GO terms (parents cut to those)."""
    from protgo.data.ontology import Ontology

    onto = Ontology(terms)
    leaves = sorted(t for t in onto.ids("MF") if onto.depth(t) >= 4 and not onto.children(t))
    picked = random.Random(seed).sample(leaves, n_targets + n_more)
    keep = set(picked).union(*(onto.ancestors(t) for t in picked))
    return _cut(terms, keep), picked[:n_targets]


def _cut(terms, keep: set[str]):
    out = []
    for t in terms:
        if t.id in keep:
            parents = {r: [p for p in ps if p in keep] for r, ps in t.parents.items()}
            out.append(dataclasses.replace(t, parents={r: p for r, p in parents.items() if p}))
    return out


def subset_terms(world: str):
    """(terms, target terms) of a world (``train`` or ``predict``), read from the committed
    real-GO fixture, so the worlds need no Debian data."""
    from protgo.data.ontology import parse_obo

    info = json.loads(FIXTURE.with_suffix(".json").read_text())[world]
    return _cut(parse_obo(FIXTURE.with_suffix(".obo")), set(info["terms"])), info["targets"]


def make_fixture(real_data_dir: Path) -> None:
    """Write the fixture from GO.db (``python tests/train_world.py --make-fixture``)."""
    from protgo.data import godb
    from protgo.data.ontology import write_obo

    go = real_data_dir / "raw/debian/root/usr/lib/R/site-library/GO.db/extdata/GO.sqlite"
    terms = godb.read_terms(go)
    worlds = {}
    for name, args in WORLDS.items():
        sub, targets = pick_terms(terms, *args)
        worlds[name] = {"targets": targets, "terms": [t.id for t in sub]}
    keep = {g for w in worlds.values() for g in w["terms"]}
    header = {"data-version": f"GO.db {godb.source_date(go)} (MF subset for tests)",
              "remark": "made by `python tests/train_world.py --make-fixture`"}  # fmt: skip
    write_obo(_cut(terms, keep), FIXTURE.with_suffix(".obo"), header)
    FIXTURE.with_suffix(".json").write_text(json.dumps(worlds, indent=1) + "\n")


def family_sequences(targets: list[str]) -> tuple[dict[str, str], list[str]]:
    """PER_FAMILY sequences per target term, each holding its family's motif three times."""
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
    return seqs, rows


def build_tiny_world(data_dir: Path, tiny_esm: Path) -> list[str]:
    """Dataset ``tiny`` in ``data_dir`` with its residue store and GO caches (every phase);
    returns the config overrides (for configs/tiny.yaml) that point at it."""
    from protgo.config import load_config
    from protgo.data.build import BuildOptions, build_dataset
    from protgo.data.fasta import write_fasta
    from protgo.data.ontology import write_obo
    from protgo.data.sources import user_sources
    from protgo.encoders.protein import ProteinEncoder
    from protgo.stores.go_encode import embed_go
    from protgo.stores.residues import ResidueStore

    raw = Path(data_dir) / "raw_tiny"
    raw.mkdir(parents=True, exist_ok=True)
    terms, targets = subset_terms("train")
    seqs, rows = family_sequences(targets)
    write_obo(terms, raw / "go.obo")
    write_fasta(sorted(seqs.items()), raw / "seqs.fasta")
    (raw / "ann.tsv").write_text("\n".join(rows) + "\n")
    src = user_sources(raw / "seqs.fasta", raw / "ann.tsv", raw / "go.obo")
    opts = BuildOptions(aspects=("MF",), split="random", zero_shot_frac=0.0, seed=0)
    build_dataset(Path(data_dir) / "datasets" / "tiny", src, opts, "tiny")
    overrides = [f"residues.model={tiny_esm}", "data.dataset=tiny", "data.aspects=[MF]",
                 f"data.data_dir={data_dir}", "mining.few_shot_share=null", PHASES,
                 "phases.start_epochs=[0,1]", f"go_text.max_length={TEXT_MAX_TOKENS}"]  # fmt: skip
    cfg = load_config(CONFIGS / "tiny.yaml", overrides)
    enc = ProteinEncoder(cfg.residues)
    store = ResidueStore.create(Path(data_dir), enc.settings())
    store.embed(enc, seqs, progress=False)
    for phase in range(len(cfg.go_text.phase_relations)):
        embed_go("tiny", phase, ["MF"], Path(data_dir), cfg.go_text, progress=False)
    return overrides


def build_predict_world(data_dir: Path, tiny_esm: Path, name: str):
    """Dataset ``name`` (6 motif families, one term held out as zero-shot) under
    ``data_dir``; returns (overrides for configs/tiny.yaml (64-residue windows), sequences)."""
    from protgo.data.build import BuildOptions, build_dataset
    from protgo.data.fasta import write_fasta
    from protgo.data.ontology import write_obo
    from protgo.data.sources import user_sources

    raw = data_dir / f"raw_{name}"
    raw.mkdir(parents=True)
    terms, targets = subset_terms("predict")
    rng = random.Random(1)
    seqs, rows = {}, []
    for f, term in enumerate(targets):
        motif = "".join(rng.choice(AA) for _ in range(10))
        for i in range(10):
            bg = [rng.choice(AA) for _ in range(rng.randint(30, 50))]
            bg[5:5] = motif
            seqs[f"F{f}_{i}"] = "".join(bg)
            rows.append(f"F{f}_{i}\t{term}\tIDA")
    write_obo(terms, raw / "go.obo")
    write_fasta(sorted(seqs.items()), raw / "seqs.fasta")
    (raw / "ann.tsv").write_text("\n".join(rows) + "\n")
    src = user_sources(raw / "seqs.fasta", raw / "ann.tsv", raw / "go.obo")
    opts = BuildOptions(aspects=("MF",), split="random", zero_shot_frac=0.2, seed=0)
    build_dataset(data_dir / "datasets" / name, src, opts, name)
    overrides = [f"residues.model={tiny_esm}", "residues.win_size=64", f"data.dataset={name}",
                 "data.aspects=[MF]", f"data.data_dir={data_dir}", "mining.few_shot_share=null",
                 "go_text.max_length=32", "train.lr=3e-3", "train.batch_size=8"]  # fmt: skip
    return overrides, seqs


if __name__ == "__main__":
    from protgo.config import default_data_dir

    if sys.argv[1:] == ["--make-fixture"]:
        make_fixture(default_data_dir())
    else:
        print(" ".join(f"--set {o}" for o in build_tiny_world(Path(sys.argv[1]),
                                                              Path(sys.argv[2]))))  # fmt: skip
