"""``protgo demo``: the whole pipeline on a small human subset, in one command.

Stages (each prints its progress and skips when its output is complete, so a killed demo
resumes where it stopped):

1. fetch      the Debian packages (GO, org.Hs.eg.db, metastudent), if not fetched;
2. build      ``datasets/<data.dataset>``: ``data.max_proteins`` random human proteins with
              experimental GO in ``data.aspects``; its ontology is cut to the terms those
              proteins carry and their ancestors, so the GO side encodes a few thousand
              texts per phase instead of every term of the aspect (the text encoder runs at
              about 60-220 texts/s on 2 idle CPU cores, depending on native bf16);
3. residues   every protein through ``residues.model`` into the residue store;
4. go         the GO texts of every text phase into the GO vector cache;
5. train      the aligner with the full curriculum and text phases (resumes mid-run);
6. predict    the valid and test splits with the best checkpoint (calibrated on valid);
7. evaluate   protgo and the baselines (naive, DIAMOND, k-NN, MLP, blend) with cafaeval;
8. report     one HTML page with plots (:mod:`protgo.eval.report`).
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from collections import defaultdict
from pathlib import Path

from protgo.config import Config
from protgo.data import debian
from protgo.data.build import PROTEIN_BINDING, BuildOptions, build_dataset
from protgo.data.fasta import write_fasta
from protgo.data.folder import DatasetFolder
from protgo.data.ontology import Ontology
from protgo.data.sources import human_exp_sources
from protgo.encoders.registry import protein_encoder
from protgo.eval.evaluate import evaluate_command, parse_baselines
from protgo.eval.report import build_report
from protgo.infer.command import run_predict
from protgo.io import atomic_write_text
from protgo.model.checkpoints import CheckpointManager
from protgo.stores.go_encode import embed_go
from protgo.stores.residues import ResidueStore
from protgo.train.trainer import Trainer

STAGES = ("fetch", "build", "residues", "go", "train", "predict", "evaluate", "report")


class Demo:
    def __init__(
        self, cfg: Config, data_dir: Path, max_proteins: int | None = None, baselines: str = "all"
    ):
        parse_baselines(baselines)  # a bad list fails now, not after training
        self.cfg, self.data_dir, self.baselines = cfg, Path(data_dir), baselines
        self.n = max_proteins or cfg.data.max_proteins or 2000
        self.run = Path(cfg.train.out_dir)
        self.timings: dict[str, float] = {}

    def stage(self, i: int, name: str, done: bool, fn) -> None:
        """Run stage ``name`` unless ``done``; print what happens and how long it took."""
        head = f"[{i}/{len(STAGES)}] {name}"
        if done:
            print(f"{head}: already complete, skipped", flush=True)
            return
        print(f"{head} ...", flush=True)
        t0 = time.perf_counter()
        fn()
        self.timings[name] = round(time.perf_counter() - t0, 1)
        print(f"{head}: done in {self.timings[name]:.0f} s", flush=True)

    def run_all(self) -> tuple[str, Path]:
        """Every stage in order; returns (results table, report path)."""
        t0 = time.perf_counter()

        ds = self.data_dir / "datasets" / self.cfg.data.dataset
        self.stage(1, "fetch", False, lambda: debian.fetch_debian(self.data_dir))
        self.stage(2, "build", (ds / "dataset.json").is_file(), self.build)
        self.stage(3, "residues", False, self.residues)  # the store skips what it holds
        self.stage(4, "go", False, self.go)  # cached per phase
        self.stage(5, "train", self._final() is not None, self.train)
        self.stage(6, "predict", self._predicted(), self.predict)
        self.stage(7, "evaluate", (self.run / "eval" / "results.tsv").is_file(), self.evaluate)
        self.stage(8, "report", self._reported(), self.report)
        self.timings["total"] = round(time.perf_counter() - t0, 1)
        self._save_timings()
        return results_table(self.run / "eval" / "results.tsv"), self.run / "report" / "index.html"

    # ---- stages ---------------------------------------------------------------------------
    def build(self) -> None:
        src = demo_sources(debian.debian_paths(self.data_dir), self.cfg.data.aspects, self.n,
                           self.cfg.train.seed)  # fmt: skip
        opts = BuildOptions(aspects=tuple(self.cfg.data.aspects), seed=self.cfg.train.seed)
        out = self.data_dir / "datasets" / self.cfg.data.dataset
        summary = build_dataset(out, src, opts, self.cfg.data.dataset)
        print(f"  {summary['proteins']} proteins, terms {summary['terms']}", flush=True)

    def residues(self) -> None:

        seqs = DatasetFolder.load(self.cfg.data.dataset, self.data_dir).sequences
        enc = protein_encoder(self.cfg.residues)
        store = ResidueStore.for_encoder(self.data_dir, enc)
        rep = store.embed(enc, seqs, shard_bytes=self.cfg.residues.shard_mb << 20)
        print(f"  {len(store)} proteins in {store.root} ({rep.residues} residues embedded now, "
              f"{rep.residues / max(rep.seconds, 1e-9):.0f} residues/s)", flush=True)  # fmt: skip

    def go(self) -> None:

        c = self.cfg
        for phase in range(len(c.go_text.phase_relations)):
            cache, _ = embed_go(c.data.dataset, phase, c.data.aspects, self.data_dir, c.go_text)
            state = "cached" if cache.from_disk else "encoded"
            print(f"  phase {phase}: {len(cache)} GO texts {state}", flush=True)

    def train(self) -> None:

        latest = CheckpointManager(self.run / "checkpoints").latest()
        trainer = Trainer(self.cfg, self.data_dir)
        if latest is not None:
            print(f"  resuming from {latest}", flush=True)
        # nothing to resume: a run killed before its first checkpoint starts anew
        last = trainer.fit(resume=latest, overwrite=latest is None)
        print(f"  last validation: {json.dumps(last)}", flush=True)

    def predict(self) -> None:

        folder = DatasetFolder.load(self.cfg.data.dataset, self.data_dir)
        ckpt = self.run / "checkpoints" / "best.pt"
        for split in ("valid", "test"):
            fasta = self.run / "predict" / f"{split}.fasta"
            write_fasta([(p, folder.sequences[p]) for p in folder.ids(split)], fasta)
            info = run_predict(ckpt, fasta, self.run / "predict" / split, top_k=20,
                               attributions=split == "test", threshold="auto",
                               data_dir=self.data_dir, overwrite=True)  # fmt: skip
            print(f"  {split}: {info['proteins']} proteins x {info['terms_scored']} terms, "
                  f"{info['proteins_per_s']:.1f} proteins/s", flush=True)  # fmt: skip

    def evaluate(self) -> None:

        folder = DatasetFolder.load(self.cfg.data.dataset, self.data_dir)
        store = ResidueStore.for_config(self.cfg.residues, self.data_dir)
        pred = self.run / "predict"
        evaluate_command(folder, "test", [pred / "test" / "protgo.tsv"], self.baselines,
                         self.run / "eval", valid_pred=pred / "valid" / "protgo.tsv",
                         store=store.root, threads=2, data_dir=self.data_dir)  # fmt: skip

    def report(self) -> None:

        attributions = self.run / "predict" / "test" / "attributions.json"
        path = build_report(self.run, self.run / "eval", self.cfg, self.run / "report",
                            attributions=attributions, data_dir=self.data_dir)  # fmt: skip
        print(f"  report: {path}", flush=True)

    # ---- completion checks ------------------------------------------------------------------
    def _final(self) -> Path | None:
        path = self.run / "checkpoints" / "final.pt"
        return path if path.is_file() else None

    def _reported(self) -> bool:
        page, results = self.run / "report" / "index.html", self.run / "eval" / "results.tsv"
        return page.is_file() and page.stat().st_mtime >= results.stat().st_mtime

    def _save_timings(self) -> None:
        """Seconds per stage; a resumed demo adds its stages to the earlier runs' record."""
        path = self.run / "demo_timings.json"
        runs = json.loads(path.read_text())["runs"] if path.is_file() else []
        runs.append(self.timings)
        stages = {k: sum(r.get(k, 0.0) for r in runs) for k in (*STAGES, "total")}
        atomic_write_text(path, json.dumps({"seconds": stages, "runs": runs}, indent=1) + "\n")

    def _predicted(self) -> bool:
        pred = self.run / "predict"
        return all((pred / s / "predictions.json").is_file() for s in ("valid", "test"))


def demo_sources(paths, aspects: list[str], n: int, seed: int):
    """human-exp sources cut to ``n`` random proteins annotated in ``aspects`` and the GO
    terms they carry (with all their ancestors, so propagation is unchanged)."""
    src = human_exp_sources(paths.go_sqlite, paths.orghs_sqlite, paths.metastudent_dir)
    onto = Ontology(src.terms)
    carried: dict[str, set[str]] = defaultdict(set)
    for pid, go, _ in src.rows:
        canon = onto.canonical(go)
        if canon is not None and onto.aspect(canon) in aspects and pid in src.sequences:
            carried[pid].add(canon)
    # CAFA rule (as the builder applies it): protein binding alone does not make an MF target
    pids = sorted(p for p, t in carried.items() if t != {PROTEIN_BINDING})
    pids = set(random.Random(seed).sample(pids, min(n, len(pids))))
    keep = onto.propagate(set().union(*(carried[p] for p in pids)))
    terms = []
    for t in src.terms:
        if t.id in keep:
            parents = {r: [p for p in ps if p in keep] for r, ps in t.parents.items()}
            terms.append(dataclasses.replace(t, parents={r: p for r, p in parents.items() if p}))
    rows = [r for r in src.rows if r[0] in pids]
    seqs = {p: src.sequences[p] for p in pids}
    prov = {**src.provenance, "demo_subset": {"proteins": len(pids), "terms": len(terms),
                                              "aspects": list(aspects), "seed": seed}}  # fmt: skip
    return dataclasses.replace(src, terms=terms, sequences=seqs, rows=rows, provenance=prov)


def results_table(path: Path) -> str:
    """protgo and every baseline side by side per aspect (the demo's printed table)."""
    import pandas as pd

    df = pd.read_csv(path, sep="\t")
    cols = [c for c in ("fmax", "wfmax", "smin", "coverage", "zero_auc", "few_auc") if c in df]
    order = {m: i for i, m in enumerate(["protgo", "blend", "diamond", "knn", "mlp", "naive"])}
    df = df.sort_values(["aspect", "method"], key=lambda s: s.map(order).fillna(99)
                        if s.name == "method" else s)  # fmt: skip
    lines = []
    for aspect, g in df.groupby("aspect", sort=True):
        lines.append(f"{aspect}:")
        lines.append(g[["method", *cols]].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return "\n".join(lines)
