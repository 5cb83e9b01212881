"""protgo ablate: each variant switches its component off, the summary statistics, the
attribution deletion test on a model whose answer is known, and a tiny run end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from train_world import CONFIGS

from protgo.ablate import (
    deletion_area,
    deletion_scores,
    markdown,
    parse_variants,
    summarise,
    variant_config,
)
from protgo.config import ModelConfig
from protgo.errors import UserError
from protgo.model.aligner import ProtGoAligner
from protgo.model.pooling import MeanPooling

TINY = CONFIGS / "tiny.yaml"


def _cfg(variant, tmp_path, overrides=()):
    return variant_config(TINY, list(overrides), variant, 3, tmp_path / variant)


def test_every_variant_switches_its_component_off(tmp_path):
    full = _cfg("full", tmp_path)
    assert full.train.seed == 3 and full.tracking.wandb == "disabled"
    c = _cfg("curriculum-easy", tmp_path).curriculum
    assert c.k_hard == (full.curriculum.k_hard[0],) * 2 and c.inbatch_easy == (True, True)
    assert c.siblings_from == 1.0 and c.shortlist_M[0] == c.shortlist_M[1]
    c = _cfg("curriculum-hard", tmp_path).curriculum
    assert c.hard_frac == (full.curriculum.hard_frac[1],) * 2 and c.siblings_from == 0.0
    assert c.inbatch_easy == (False, False) and c.random_k == (full.curriculum.random_k[1],) * 2
    one = _cfg("phase0-only", tmp_path)
    assert one.go_text.phase_relations == [[]] and one.phases.start_epochs == [0]
    rel = _cfg("all-relations-at-once", tmp_path).go_text.phase_relations
    assert rel == [["is_a", "part_of", "regulates"]]
    st = _cfg("no-attribution", tmp_path).stages
    assert st.lambda_attr_start == st.lambda_attr_max == 0
    for name, teacher in (("distill-ema", "ema"), ("distill-homology", "homology")):
        loss = _cfg(name, tmp_path).loss
        assert loss.lambda_distill > 0 and loss.teacher == teacher and loss.tau == 1.5
    assert _cfg("no-dag", tmp_path).loss.lambda_dag == 0
    assert _cfg("no-text-anchor", tmp_path).loss.lambda_vtrue == 0
    assert _cfg("no-entropy", tmp_path).loss.lambda_ent == 0
    pure = _cfg("infonce-only", tmp_path)
    assert pure.loss.lambda_bce == 0 and not pure.model.term_bias
    mean = _cfg("mean-pooling", tmp_path)
    assert isinstance(ProtGoAligner(mean.model, 32, 16).pool, MeanPooling)
    assert parse_variants("no-dag") == ["full", "no-dag"]
    with pytest.raises(UserError, match="unknown 'nope'"):
        parse_variants("nope")


def test_switched_off_loss_parts_are_not_computed(tiny_world, tmp_path):
    """Two training steps per variant: the part its switch turns off is never computed."""
    from protgo.io import read_jsonl
    from protgo.train.trainer import Trainer

    data_dir, overrides = tiny_world
    more = [*overrides, "train.log_every_steps=1", "stages.boundaries=[0.0,0.0,1.0]",
            "stages.lambda_attr_start=0.1"]  # fmt: skip
    gone = {"full": None, "no-dag": "dag", "no-text-anchor": "vtrue", "no-entropy": "ent",
            "no-attribution": "attr", "infonce-only": "bce"}  # fmt: skip
    seen = {}
    for variant, part in gone.items():
        cfg = _cfg(variant, tmp_path, more)
        Trainer(cfg, data_dir, progress=False).fit(max_steps=2)
        rows = [r for r in read_jsonl(cfg.train.out_dir / "metrics.jsonl")[0]
                if r["kind"] == "train"]  # fmt: skip
        seen[variant] = set().union(*rows)
        if part is not None:
            assert part in seen["full"] and part not in seen[variant], variant


def test_summary_statistics_on_a_known_case():
    rows = []
    for seed, (full, var) in enumerate([(0.50, 0.40), (0.60, 0.55), (0.40, 0.42)]):
        for variant, f in (("full", full), ("no-dag", var)):
            row = {"fmax": f, "wfmax": f, "smin": 1.0, "zero_auc": math.nan, "few_auc": 0.6}
            rows.append({"variant": variant, "seed": seed, "aspect": "MF", **row})
    full, nodag = summarise(rows)
    assert full["variant"] == "full" and full["fmax"] == pytest.approx(0.5)
    assert full["fmax_sd"] == pytest.approx(0.1)  # sample sd of 0.5, 0.6, 0.4
    # paired differences -0.10, -0.05, +0.02: mean -0.0433, two of three seeds negative
    assert nodag["fmax_diff"] == pytest.approx(-0.13 / 3)
    assert nodag["fmax_sign"] == pytest.approx(2 / 3)
    assert math.isnan(nodag["zero_auc"]) and nodag["smin_sd"] == 0
    runs = {v: [{"valid_fmax": 0.5, "mean_cosine": 0.2,
                 "deletion": {"attention": 0.1, "masking": 0.2, "random": 0.0}}] * 3
            for v in ("full", "no-dag")}  # fmt: skip
    text = markdown([full, nodag], runs)
    assert "| no-dag | MF | 3 | 0.457 ± 0.081" in text and "-0.043 (67%)" in text


def _one_residue_model(dim: int = 8) -> ProtGoAligner:
    """Attention pooling that looks only at residues whose first feature is high."""
    torch.manual_seed(0)
    cfg = ModelConfig(align_dim=8, n_queries=1, n_heads=1, dropout=0.0)
    model = ProtGoAligner(cfg, dim, dim).eval()
    with torch.no_grad():
        model.pool.key.weight.copy_(torch.eye(dim))
        model.pool.queries.zero_()
        model.pool.queries[0, 0, 0] = 200.0
        for lin in (model.pool.value, model.pool.out, model.protein_head.proj):
            lin.bias.zero_()  # the pooled vector is the residue's own, not a bias
    return model


def test_deletion_test_finds_the_one_residue_a_model_looks_at():
    model = _one_residue_model()
    rng = np.random.default_rng(0)
    residues = rng.normal(size=(40, 8)).astype(np.float32)
    residues[:, 0] = -1.0
    residues[17, 0] = 1.0  # the residue the model reads
    x = torch.from_numpy(residues)[None]
    with torch.no_grad():
        go = model.encode_protein(x, torch.ones(1, 40, dtype=torch.bool))["protein"][0]
    drops = deletion_scores(model, residues, go, rng)
    # removing 5% (2 residues) by attention or masking removes residue 17: the score falls far
    assert drops["attention"][0] > 0.2 and drops["masking"][0] > 0.2
    areas = {m: deletion_area(d) for m, d in drops.items()}
    assert areas["attention"] > 3 * max(areas["random"], 1e-3)
    assert areas["masking"] > 3 * max(areas["random"], 1e-3)
    assert deletion_area([0.1, 0.1, 0.1]) == pytest.approx((0.5 * 5 * 0.1 + 15 * 0.1) / 20)


def test_ablate_runs_end_to_end_and_resumes(tiny_world, tmp_path):
    from typer.testing import CliRunner

    from protgo.cli import app

    data_dir, overrides = tiny_world
    args = ["ablate", "-c", str(TINY), *[a for o in overrides for a in ("--set", o)],
            "--set", "train.epochs=2", "--variants", "no-dag", "--seeds", "0",
            "--out", str(tmp_path / "abl"), "--data-dir", str(data_dir),
            "--deletion-proteins", "5"]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    out = tmp_path / "abl"
    for name in ("ablation.tsv", "ablation.md", "ablation.png"):
        assert (out / name).stat().st_size > 0
    result = json.loads((out / "no-dag" / "seed0" / "result.json").read_text())
    assert result["aspects"][0]["aspect"] == "MF" and 0 <= result["aspects"][0]["fmax"] <= 1
    assert set(result["deletion"]) == {"attention", "masking", "random"}
    assert -1 <= result["mean_cosine"] <= 1 and len(result["valid_curve"]) == 2
    stamp = (out / "full" / "seed0" / "result.json").stat().st_mtime_ns
    again = CliRunner().invoke(app, args)  # finished runs are skipped
    assert again.exit_code == 0, again.output
    assert (out / "full" / "seed0" / "result.json").stat().st_mtime_ns == stamp
    assert "| full | MF | 1 |" in again.output
