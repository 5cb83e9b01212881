"""``protgo ablate``: which parts of the pipeline earn their cost, measured.

Each variant switches one component off (or changes one choice) by config overrides on a base
config; every variant is trained and evaluated per seed on the same dataset, split, residue
store and GO caches (built once by the demo's stages, then reused). Per run
(``OUT/<variant>/seed<k>/``): the training run, ``protgo.tsv`` (test split), cafaeval's
results, and ``result.json`` (written last: a run with it is complete and skipped, a run
without it resumes from its last checkpoint). The summary (``OUT/ablation.tsv``, ``.md``,
``.png``): per variant and aspect, mean and sd over seeds of Fmax, weighted Fmax, Smin and
zero-/few-shot term AUC, the paired difference to ``full`` (same seed) and the share of seeds
whose difference has the sign of the mean; per variant the spread of the final validation
Fmax, the mean pairwise cosine of test protein vectors (near 1: collapse) and the
attribution deletion test (:func:`deletion_scores`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from protgo.config import Config, load_config
from protgo.errors import UserError
from protgo.io import atomic_write_text, read_jsonl

METRICS = ("fmax", "wfmax", "smin", "zero_auc", "few_auc")
DELETION_KS = (5, 10, 20)  # percent of a protein's residues removed
METHODS = ("attention", "masking", "random")


@dataclass(frozen=True)
class Variant:
    name: str
    claim: str  # the seed claim it tests
    overrides: Callable[[Config], list[str]]


def _pairs(cfg: Config, end: bool) -> list[str]:
    """Curriculum pairs held at their start (or end) value all along."""
    c, i = cfg.curriculum, 1 if end else 0
    keys = ("hard_frac", "shortlist_M", "k_hard", "random_k", "hier_up", "hier_down")
    out = [f"curriculum.{k}=[{getattr(c, k)[i]},{getattr(c, k)[i]}]" for k in keys]
    easy = str(c.inbatch_easy[i]).lower()
    return [*out, f"curriculum.inbatch_easy=[{easy},{easy}]",
            f"curriculum.siblings_from={0.0 if end else 1.0}"]  # fmt: skip


def _one_phase(relations: str) -> Callable[[Config], list[str]]:
    return lambda cfg: [f"go_text.phase_relations=[{relations}]", "phases.start_epochs=[0]"]


VARIANTS = {
    v.name: v
    for v in (
        Variant("full", "-", lambda cfg: []),
        Variant("curriculum-easy", "curriculum negatives: stable convergence, generalisation",
                lambda cfg: _pairs(cfg, end=False)),
        Variant("curriculum-hard", "curriculum negatives: stable convergence, generalisation",
                lambda cfg: _pairs(cfg, end=True)),
        Variant("phase0-only", "ontology text phases: richer semantics", _one_phase("[]")),
        Variant("all-relations-at-once", "phases, not everything at once: no collapse",
                _one_phase("[is_a,part_of,regulates]")),
        Variant("no-attribution", "attribution loss: faithful attributions",
                lambda cfg: ["stages.lambda_attr_start=0", "stages.lambda_attr_max=0"]),
        Variant("distill-ema", "distillation: stable early learning",
                lambda cfg: ["loss.lambda_distill=0.5", "loss.teacher=ema", "loss.tau=1.5"]),
        Variant("distill-homology", "distillation: stable early learning",
                lambda cfg: ["loss.lambda_distill=0.5", "loss.teacher=homology", "loss.tau=1.5"]),
        Variant("no-dag", "DAG regularisation: consistency", lambda cfg: ["loss.lambda_dag=0"]),
        Variant("no-text-anchor", "text anchor: unseen terms stay usable",
                lambda cfg: ["loss.lambda_vtrue=0"]),
        Variant("no-entropy", "entropy term", lambda cfg: ["loss.lambda_ent=0"]),
        Variant("infonce-only", "pure InfoNCE retrieval (no term prior, no BCE)",
                lambda cfg: ["loss.lambda_bce=0", "model.term_bias=false"]),
        Variant("no-term-residual", "per-term residuals: seen terms as a classifier scores them",
                lambda cfg: ["model.term_residual=false"]),
        Variant("no-term-head", "the term-head stage: common terms refitted at the end",
                lambda cfg: ["train.head_epochs=0"]),
        Variant("mean-pooling", "attention pooling", lambda cfg: ["model.pooling=mean"]),
    )
}  # fmt: skip


def parse_variants(text: str | None) -> list[str]:
    if not text:
        return list(VARIANTS)
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in VARIANTS]
    if bad:
        raise UserError(f"--variants: unknown '{bad[0]}'; choose from {', '.join(VARIANTS)}")
    return names if "full" in names else ["full", *names]  # differences need the full model


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        raise UserError(f"--seeds: give comma-separated integers, got '{text}'") from None
    if not seeds:
        raise UserError("--seeds: give at least one seed")
    return seeds


def variant_config(config: Path | str, overrides: Sequence[str], variant: str, seed: int,
                   run_dir: Path) -> Config:  # fmt: skip
    """The base config with the variant's overrides, the seed and the run folder."""
    base = load_config(config, list(overrides))
    more = [*VARIANTS[variant].overrides(base), f"train.seed={seed}",
            f"train.out_dir={run_dir}", "tracking.wandb=disabled"]  # fmt: skip
    return load_config(config, [*overrides, *more])


# ---- the deletion test ------------------------------------------------------------------------
@torch.no_grad()
def deletion_scores(model, residues: np.ndarray, go: torch.Tensor, rng: np.random.Generator,
                    ks: Sequence[int] = DELETION_KS) -> dict[str, list[float]]:  # fmt: skip
    """{method: [cosine drop at each k]} for one protein and one term (``go``: its (A,) unit
    vector): the top k% residues by each attribution method are removed from the pooling
    and the term's cosine recomputed. ``random`` ranks residues at random (the baseline a
    faithful method must beat)."""
    from protgo.infer.attribution import attention_map, masking_map

    L = len(residues)
    x = torch.from_numpy(np.asarray(residues, dtype=np.float32))[None]
    importance = {
        "attention": attention_map(model, residues),
        "masking": masking_map(model, residues, go[None])[0],
        "random": rng.random(L),
    }
    masks = []
    for method in METHODS:
        order = np.argsort(-importance[method], kind="stable")
        for k in ks:
            m = torch.ones(L, dtype=torch.bool)
            m[order[: max(1, round(k / 100 * L))]] = False
            masks.append(m)
    full = torch.ones(1, L, dtype=torch.bool)
    base = float(model.encode_protein(x, full)["protein"][0] @ go)
    cos = model.encode_protein(x.expand(len(masks), -1, -1), torch.stack(masks))["protein"] @ go
    drops = (base - cos).tolist()
    return {m: drops[i * len(ks) : (i + 1) * len(ks)] for i, m in enumerate(METHODS)}


def deletion_area(drops: Sequence[float], ks: Sequence[int] = DELETION_KS) -> float:
    """Area under the deletion curve (drop 0 at k=0) over k in [0, max k], per unit of k:
    the mean drop over the range; higher is more faithful."""
    xs, ys = [0, *ks], [0.0, *drops]
    return float(np.trapezoid(ys, xs) / xs[-1])


# ---- the summary --------------------------------------------------------------------------
def summarise(rows: list[dict]) -> list[dict]:
    """``rows``: one per (variant, seed, aspect) with the METRICS -> one per (variant, aspect):
    mean and sd over seeds, and for every variant but full the paired difference to full
    (seeds both have) with its sign consistency (share of seeds with the mean's sign)."""
    by = {}
    for r in rows:
        by.setdefault((r["variant"], r["aspect"]), {})[r["seed"]] = r
    out = []
    for (variant, aspect), seeds in by.items():
        row = {"variant": variant, "aspect": aspect, "seeds": len(seeds)}
        full = by.get(("full", aspect), {})
        for m in METRICS:
            vals = [s[m] for s in seeds.values() if _num(s.get(m))]
            row[m] = float(np.mean(vals)) if vals else math.nan
            row[f"{m}_sd"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else math.nan
            if variant == "full":
                continue
            diffs = [seeds[k][m] - full[k][m] for k in seeds
                     if k in full and _num(seeds[k].get(m)) and _num(full[k].get(m))]  # fmt: skip
            mean = float(np.mean(diffs)) if diffs else math.nan
            row[f"{m}_diff"] = mean
            row[f"{m}_sign"] = (float(np.mean([np.sign(d) == np.sign(mean) for d in diffs]))
                                if diffs and mean != 0 else math.nan)  # fmt: skip
        out.append(row)
    order = {v: i for i, v in enumerate(VARIANTS)}
    return sorted(out, key=lambda r: (order.get(r["variant"], 99), r["aspect"]))


def _num(v) -> bool:
    return isinstance(v, int | float) and not math.isnan(v)


def markdown(summary: list[dict], runs: dict[str, list[dict]]) -> str:
    """The README table: Fmax etc. as mean ± sd, the paired Fmax difference to full with its
    sign consistency, then stability and faithfulness per variant."""

    def pm(r, m):
        return "-" if not _num(r[m]) else (
            f"{r[m]:.3f}" + (f" ± {r[m + '_sd']:.3f}" if _num(r[m + "_sd"]) else ""))  # fmt: skip

    lines = ["| variant | aspect | seeds | Fmax | wFmax | Smin | zero-shot AUC | few-shot AUC "
             "| ΔFmax vs full (sign consistency) |", "|" + "---|" * 9]  # fmt: skip
    for r in summary:
        sign = f" ({r['fmax_sign']:.0%})" if _num(r.get("fmax_sign")) else ""
        diff = "-" if r["variant"] == "full" or not _num(r.get("fmax_diff")) else (
            f"{r['fmax_diff']:+.3f}{sign}")  # fmt: skip
        cells = [pm(r, m) for m in METRICS]
        lines.append(f"| {r['variant']} | {r['aspect']} | {r['seeds']} | "
                     + " | ".join(cells) + f" | {diff} |")  # fmt: skip
    lines += ["", "| variant | final valid Fmax (sd over seeds) | mean pairwise cosine of test "
              "proteins | deletion area: attention / masking / random |",
              "|---|---|---|---|"]  # fmt: skip
    for variant, results in runs.items():
        vf = [r["valid_fmax"] for r in results if _num(r.get("valid_fmax"))]
        spread = f"{np.mean(vf):.3f} ({np.std(vf, ddof=1):.3f})" if len(vf) > 1 else (
            f"{vf[0]:.3f}" if vf else "-")  # fmt: skip
        cos = np.mean([r["mean_cosine"] for r in results])
        areas = " / ".join(f"{np.mean([r['deletion'][m] for r in results]):.4f}"
                           for m in METHODS)  # fmt: skip
        lines.append(f"| {variant} | {spread} | {cos:.3f} | {areas} |")
    return "\n".join(lines) + "\n"


def plot(summary: list[dict], path: Path) -> None:
    """Fmax per variant and aspect with sd error bars."""
    from protgo.extras import pyplot

    plt = pyplot()
    aspects = sorted({r["aspect"] for r in summary})
    variants = list(dict.fromkeys(r["variant"] for r in summary))
    fig, axes = plt.subplots(1, len(aspects), figsize=(4 + 0.45 * len(variants) * len(aspects),
                                                      4), squeeze=False)  # fmt: skip
    for ax, aspect in zip(axes[0], aspects, strict=True):
        rows = {r["variant"]: r for r in summary if r["aspect"] == aspect}
        ys = [rows[v]["fmax"] if v in rows else math.nan for v in variants]
        err = [rows[v]["fmax_sd"] if v in rows and _num(rows[v]["fmax_sd"]) else 0
               for v in variants]  # fmt: skip
        ax.bar(range(len(variants)), ys, yerr=err, capsize=3,
               color=["tab:blue" if v == "full" else "tab:gray" for v in variants])  # fmt: skip
        ax.set_xticks(range(len(variants)), variants, rotation=60, ha="right", fontsize=8)
        ax.set_title(f"{aspect}: test Fmax (mean ± sd over seeds)")
        finite = [y for y in ys if _num(y)]
        if finite:
            ax.set_ylim(max(0.0, min(finite) - 0.05), max(finite) + 0.03)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- running -----------------------------------------------------------------------------
class Ablation:
    def __init__(self, config: Path | str, overrides: Sequence[str], out: Path,
                 variants: Iterable[str], seeds: Iterable[int], data_dir: Path,
                 deletion_proteins: int = 40):  # fmt: skip
        self.config, self.overrides = config, list(overrides)
        self.out, self.data_dir = Path(out), Path(data_dir)
        self.variants, self.seeds = list(variants), list(seeds)
        self.deletion_proteins = deletion_proteins

    def prepare(self) -> None:
        """The shared dataset, residue store and GO caches (the demo's stages 1-4)."""
        from protgo.data import debian
        from protgo.demo import Demo

        cfg = load_config(self.config, self.overrides)
        demo = Demo(cfg, self.data_dir)
        ds = self.data_dir / "datasets" / cfg.data.dataset
        demo.stage(1, "fetch", (ds / "dataset.json").is_file(),
                   lambda: debian.fetch_debian(self.data_dir))  # fmt: skip
        demo.stage(2, "build", (ds / "dataset.json").is_file(), demo.build)
        demo.stage(3, "residues", False, demo.residues)
        demo.stage(4, "go", False, demo.go)

    def run(self) -> tuple[str, Path]:
        self.prepare()
        rows, runs = [], {}
        total = len(self.variants) * len(self.seeds)
        for i, (variant, seed) in enumerate((v, s) for v in self.variants for s in self.seeds):
            print(f"[ablate {i + 1}/{total}] {variant} seed {seed}", flush=True)
            result = self.run_one(variant, seed)
            runs.setdefault(variant, []).append(result)
            rows += [{"variant": variant, "seed": seed, **r} for r in result["aspects"]]
        summary = summarise(rows)
        self.write(summary, runs)
        return markdown(summary, runs), self.out / "ablation.md"

    def run_one(self, variant: str, seed: int) -> dict:
        """Train (resuming), predict and evaluate one variant and seed; ``result.json``."""
        from protgo.model.checkpoints import CheckpointManager
        from protgo.train.trainer import Trainer

        where = self.out / variant / f"seed{seed}"
        done = where / "result.json"
        if done.is_file():
            return json.loads(done.read_text())
        cfg = variant_config(self.config, self.overrides, variant, seed, where / "run")
        ckpts = where / "run" / "checkpoints"
        if not (ckpts / "final.pt").is_file():
            latest = CheckpointManager(ckpts).latest()
            Trainer(cfg, self.data_dir).fit(resume=latest, overwrite=latest is None)
        result = {"variant": variant, "seed": seed, **self.evaluate(cfg, where)}
        atomic_write_text(done, json.dumps(result, indent=1, default=float) + "\n")
        return result

    def evaluate(self, cfg: Config, where: Path) -> dict:
        """Test-split metrics, stability figures and the deletion test of one trained run."""
        from protgo.data.folder import DatasetFolder
        from protgo.eval.cafa import evaluate_split
        from protgo.infer.command import cafa_lines
        from protgo.infer.predict import Predictor

        folder = DatasetFolder.load(cfg.data.dataset, self.data_dir)
        pred = Predictor(where / "run" / "checkpoints" / "best.pt", self.data_dir)
        test = folder.ids("test")
        results = pred.predict({p: folder.sequences[p] for p in test}, keep_residues=True)
        atomic_write_text(where / "protgo.tsv", cafa_lines(pred, results))
        table, _ = evaluate_split(folder, "test", {"protgo": where / "protgo.tsv"},
                                  where / "eval", threads=2)  # fmt: skip
        aspects = [{k: (None if k != "aspect" and not _num(r.get(k)) else r[k])
                    for k in ("aspect", *METRICS) if k in r}
                   for r in table.to_dict("records")]  # fmt: skip
        vecs, _ = pred.protein_vectors([r.residues for r in results])
        sims = (vecs @ vecs.T).numpy()
        n = len(sims)
        mean_cos = float((sims.sum() - np.trace(sims)) / max(n * (n - 1), 1))
        valid = [
            r
            for r in read_jsonl(where / "run" / "metrics.jsonl")[0]
            if r["kind"] == "valid" and "head_epoch" not in r
        ]  # per epoch
        return {
            "aspects": aspects,
            "valid_fmax": valid[-1]["fmax"] if valid else None,
            "valid_curve": [r["fmax"] for r in valid],
            "mean_cosine": mean_cos,
            "deletion": self.deletion(pred, folder, results),
        }

    def deletion(self, pred, folder, results) -> dict[str, float]:
        """Mean deletion area per method over test proteins, each on its top-scored true
        term."""
        rng = np.random.default_rng(0)
        col = {g: j for j, g in enumerate(pred.go_ids)}
        areas: dict[str, list[float]] = {m: [] for m in METHODS}
        for r in results[: self.deletion_proteins]:
            truth = [col[g] for g in folder.annotations.get(r.pid, ()) if g in col]
            if not truth or len(r.residues) < 5:
                continue
            j = max(truth, key=lambda c: r.scores[c])
            drops = deletion_scores(pred.model, r.residues, pred.go[j], rng)
            for m in METHODS:
                areas[m].append(deletion_area(drops[m]))
        return {m: float(np.mean(v)) if v else math.nan for m, v in areas.items()}

    def write(self, summary: list[dict], runs: dict[str, list[dict]]) -> None:
        import pandas as pd

        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.out / "ablation.tsv",
                          pd.DataFrame(summary).to_csv(sep="\t", index=False))  # fmt: skip
        atomic_write_text(self.out / "ablation.md", markdown(summary, runs))
        plot(summary, self.out / "ablation.png")
