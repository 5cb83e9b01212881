"""protgo plm pretrain: a tiny end-to-end masked-LM run, resume, exclusion, export, masking."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from protgo.config import ConfigError, load_model
from protgo.errors import UserError
from protgo.model.checkpoints import load_checkpoint
from protgo.plm import corpus as mc
from protgo.plm.config import PlmConfig
from protgo.plm.corpus import load_corpus
from protgo.plm.pretrain import pretrain

TINY = Path(__file__).parents[1] / "src" / "protgo" / "configs" / "plm-tiny.yaml"
SMALL = Path(__file__).parents[1] / "src" / "protgo" / "configs" / "plm-small.yaml"
AA = "LAGVSERTDIPKQNFYMHWC"
# Swiss-Prot-like residue frequencies: a model that learns them beats the uniform start.
FREQ = [9.9, 8.3, 7.1, 6.9, 6.6, 6.7, 5.5, 5.3, 5.5, 5.9, 4.7, 5.8, 3.9, 4.1, 3.9, 2.9, 2.4, 2.3,
        1.1, 1.4]  # fmt: skip


def write_corpus(path: Path, n: int = 300, seed: int = 0) -> dict[str, str]:
    rng = random.Random(seed)
    recs = {f"P{i:05d}": "".join(rng.choices(AA, FREQ, k=rng.randint(20, 150))) for i in range(n)}
    path.write_text("".join(f">{pid} protein {pid}\n{seq}\n" for pid, seq in recs.items()))
    return recs


def tiny_cfg(tmp_path: Path, corpus: Path, out: str, *extra: str) -> PlmConfig:
    sets = [f"data.corpus={corpus}", f"train.out_dir={tmp_path / out}", *extra]
    return load_model(PlmConfig, TINY, sets)


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def corpus_fasta(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("plm") / "corpus.fasta"
    write_corpus(path)
    return path


def test_tiny_run_learns_and_exports_a_loadable_esm(tmp_path, corpus_fasta):
    from transformers import EsmModel, EsmTokenizer

    state = pretrain(tiny_cfg(tmp_path, corpus_fasta, "run"))
    assert state.step == 20 and state.tokens_seen > 0
    logs = [r for r in read_metrics(tmp_path / "run") if "loss" in r]
    assert logs[-1]["loss"] < logs[0]["loss"] - 0.1  # from ~ln(33) towards the unigram entropy
    assert {"loss", "ppl", "tokens_per_s", "lr", "tokens_seen"} <= set(logs[0])
    export = tmp_path / "run" / "model"  # export_dir unset: <out_dir>/model
    evals = [r for r in read_metrics(tmp_path / "run") if "heldout_ppl" in r]
    assert [r["step"] for r in evals] == [10, 20]
    assert evals[-1]["heldout_ppl"] < 25.0 and 12.0 < evals[-1]["unigram_ppl"] < 25.0
    text = (export / "TRAINING.md").read_text()
    assert "tokens seen" in text and f"{evals[-1]['heldout_ppl']:.2f}" in text
    # The residue store's loading path: plain from_pretrained on the directory.
    tok = EsmTokenizer.from_pretrained(export)
    model = EsmModel.from_pretrained(export).eval()
    assert next(model.parameters()).dtype == torch.float32  # fp16 on disk, fp32 to compute
    enc = tok(["MKTAYIAKQR"], return_tensors="pt")
    assert enc["input_ids"][0, 0] == mc.CLS and enc["input_ids"][0, 1] == mc.BYTE_TABLE[ord("M")]
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    assert hidden.shape == (1, 12, 32) and torch.isfinite(hidden).all()
    from safetensors import safe_open

    with safe_open(export / "model.safetensors", "pt") as fh:
        assert all(fh.get_tensor(k).dtype == torch.float16 for k in list(fh.keys()))


def test_resume_equals_straight_run(tmp_path, corpus_fasta):
    pretrain(tiny_cfg(tmp_path, corpus_fasta, "straight"))
    half = tiny_cfg(tmp_path, corpus_fasta, "parts", "train.stop_at_step=10")
    assert pretrain(half).step == 10
    resumed = pretrain(tiny_cfg(tmp_path, corpus_fasta, "parts"), resume=True)
    assert resumed.step == 20
    a = load_checkpoint(tmp_path / "straight", trainer="plm")  # the aligner trainer's format
    b = load_checkpoint(tmp_path / "parts", trainer="plm")
    assert a["trainer"] == "plm" and a["step"] == b["step"] == 20
    assert a["state"]["tokens_seen"] == b["state"]["tokens_seen"]
    assert (a["state"]["epoch"], a["state"]["pos"]) == (b["state"]["epoch"], b["state"]["pos"])
    for key, val in a["model"].items():
        torch.testing.assert_close(val, b["model"][key], atol=1e-5, rtol=1e-4)
    la = [r["loss"] for r in read_metrics(tmp_path / "straight") if "loss" in r]
    lb = [r["loss"] for r in read_metrics(tmp_path / "parts") if "loss" in r]
    assert la == pytest.approx(lb, abs=1e-4)  # and the log holds each step once
    with pytest.raises(UserError, match="not of `protgo train`"):
        load_checkpoint(tmp_path / "parts")  # the aligner's loaders refuse a PLM run


def test_continue_from_an_exported_model(tmp_path, corpus_fasta):
    first = pretrain(tiny_cfg(tmp_path, corpus_fasta, "first"))
    export = tmp_path / "first" / "model"
    more = tiny_cfg(tmp_path, corpus_fasta, "more", f"train.init_from={export}")
    state = pretrain(more)
    assert state.init_tokens == first.tokens_seen and state.step == 20
    evals = [r for r in read_metrics(tmp_path / "more") if "heldout_ppl" in r]
    # A continued model goes on from where the first ended (from random weights: ppl 23 at
    # step 10 here, above the first run's final 21).
    assert evals[0]["heldout_ppl"] < first.last_eval["heldout_ppl"]
    card = (tmp_path / "more" / "model" / "TRAINING.md").read_text()
    assert f"Continued from `{export}`" in card
    assert f"{first.tokens_seen + state.tokens_seen:,} tokens in all" in card
    wrong = tiny_cfg(tmp_path, corpus_fasta, "wrong", f"train.init_from={export}", "model.layers=3")
    with pytest.raises(UserError, match="model.layers=2"):
        pretrain(wrong)


def test_resume_without_checkpoint_is_a_user_error(tmp_path, corpus_fasta):
    with pytest.raises(UserError, match="no checkpoint"):
        pretrain(tiny_cfg(tmp_path, corpus_fasta, "none"), resume=True)


def test_exclusion_by_dataset_accession_sequence_and_id_file(tmp_path):
    recs = write_corpus(tmp_path / "corpus.fasta", n=60)
    ids = list(recs)
    # An evaluated dataset: one protein under its own id, one under another accession
    # (same sequence), one whose sequence differs only in case.
    held = tmp_path / "heldset"
    held.mkdir()
    (held / "proteins.fasta").write_text(
        f">{ids[0]}\n{recs[ids[0]]}\n>Q99999\n{recs[ids[1]]}\n>sp|{ids[2]}|X_HUMAN\nMKV\n"
        f">Q88888\n{recs[ids[3]].lower()}\n"
    )
    id_file = tmp_path / "exclude.txt"
    id_file.write_text(f"# ids never to train on\n{ids[4]}\n>{ids[5]} extra words\n")
    cfg = load_model(PlmConfig, TINY, [f"data.corpus={tmp_path / 'corpus.fasta'}",
                                       f"data.exclude_datasets=[{held}]"])  # fmt: skip
    corpus = load_corpus(cfg.data, exclude_ids=id_file)
    kept = set(corpus.train.ids) | set(corpus.heldout.ids)
    assert kept == set(ids[6:])
    assert corpus.n_excluded == 6
    assert not set(corpus.train.ids) & set(corpus.heldout.ids)
    assert len(corpus.heldout) == 8  # max(ceil(10% of 54), min(holdout_min 8, 54 // 5))


def test_holdout_is_stable_when_the_corpus_grows(tmp_path):
    write_corpus(tmp_path / "a.fasta", n=200, seed=1)
    recs = write_corpus(tmp_path / "b.fasta", n=400, seed=1)
    none = mc.Exclusion(set(), set())
    _, held_a, _ = mc.split_corpus(tmp_path / "a.fasta", none, 0.05, 0)
    _, held_b, _ = mc.split_corpus(tmp_path / "b.fasta", none, 0.05, 0)
    assert len(held_a) == 10 and len(held_b) == 20 and len(recs) == 400
    # Hash-based: a protein held out of the small corpus that is still among the lowest
    # scores of the large one stays held out.
    cut = max(mc.holdout_score(p) for p in held_b.ids)
    assert {p for p in held_a.ids if mc.holdout_score(p) <= cut} <= set(held_b.ids)


def test_training_sample_keeps_the_holdout_and_is_reproducible(tmp_path):
    write_corpus(tmp_path / "c.fasta", n=1000, seed=2)
    none = mc.Exclusion(set(), set())
    train_all, held_all, _ = mc.split_corpus(tmp_path / "c.fasta", none, 0.05, 0)
    train_half, held_half, _ = mc.split_corpus(tmp_path / "c.fasta", none, 0.05, 0, 0.5)
    assert held_half.ids == held_all.ids
    assert set(train_half.ids) < set(train_all.ids)
    assert 400 < len(train_half) < 550  # about half of the 950 training sequences
    # The sample, written out with the hold-out, splits into the same two sets with no
    # sampling: a pre-filtered copy of a corpus trains exactly as the config says.
    seqs = dict(mc.iter_fasta(tmp_path / "c.fasta"))
    kept = [p for p in seqs if p in set(train_half.ids) | set(held_half.ids)]
    (tmp_path / "s.fasta").write_text("".join(f">{p}\n{seqs[p]}\n" for p in kept))
    train_s, held_s, _ = mc.split_corpus(tmp_path / "s.fasta", none, 0.0, len(held_all))
    assert (train_s.ids, held_s.ids) == (train_half.ids, held_half.ids)
    assert (train_s.tokens == train_half.tokens).all()


def test_masking_follows_esm2_80_10_10():
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(mc.AA_LOW, mc.AA_HIGH, (64, 512))
    tokens[:, 0], tokens[:, -1], tokens[:2, 100:] = mc.CLS, mc.EOS, mc.PAD
    inputs, labels = mc.mask_tokens(tokens, gen, 0.15)
    chosen = labels != -100
    residues = tokens >= mc.AA_LOW
    assert not (chosen & ~residues).any()  # cls/eos/pad are never targets
    assert abs(chosen.sum() / residues.sum() - 0.15) < 0.01
    masked = (inputs == mc.MASK) & chosen
    kept = (inputs == tokens) & chosen
    assert abs(masked.sum() / chosen.sum() - 0.8) < 0.02
    # 10% unchanged plus random replacements that drew the same residue (1 in 20).
    assert abs(kept.sum() / chosen.sum() - 0.105) < 0.02
    assert torch.equal(inputs[~chosen], tokens[~chosen])
    ev_inputs, ev_labels = mc.mask_tokens(tokens, gen, 0.15, eval_mode=True)
    assert (ev_inputs[ev_labels != -100] == mc.MASK).all()


def test_crops_stay_within_max_len_and_keep_cls_eos():
    gen = torch.Generator().manual_seed(0)
    residues = mc.BYTE_TABLE[torch.randint(65, 90, (500,)).numpy().astype("uint8")]
    out = mc.crop_and_wrap(residues, 66, gen)
    assert len(out) == 66 and out[0] == mc.CLS and out[-1] == mc.EOS
    short = mc.crop_and_wrap(residues[:10], 66, gen)
    assert short[1:-1].tolist() == residues[:10].tolist()


def test_config_rejects_unknown_keys_and_missing_corpus(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'train.max_step'"):
        load_model(PlmConfig, TINY, ["train.max_step=3"])
    assert load_model(PlmConfig, SMALL).data.exclude_datasets == ["human-exp"]
    cfg = load_model(PlmConfig, TINY, ["data.corpus=no-such-dataset", f"data.data_dir={tmp_path}"])
    with pytest.raises(UserError, match="no-such-dataset"):
        load_corpus(cfg.data)


def test_cli_pretrain_then_evaluate(tmp_path, corpus_fasta):
    from typer.testing import CliRunner

    from protgo.cli import app

    runner = CliRunner()
    sets = [f"data.corpus={corpus_fasta}", f"train.out_dir={tmp_path / 'cli'}",
            "train.max_steps=4", "train.checkpoint_every_steps=null"]  # fmt: skip
    args = ["plm", "pretrain", "--config", str(TINY)]
    for s in sets:
        args += ["--set", s]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["plm", "evaluate", "--model", str(tmp_path / "cli" / "model")])
    assert res.exit_code == 0, res.output
    figures = json.loads(res.output[res.output.index("{") :])
    assert figures["eval_sequences"] == 30 and figures["heldout_ppl"] > 1.0


def test_model_learns_context_not_just_residue_frequencies(tmp_path):
    """Each residue follows from its left neighbour 90% of the time: only a model that uses
    context (rotary attention over neighbours) gets far below the unigram perplexity."""
    rng = random.Random(2)
    succ = dict(zip(AA, rng.sample(AA, len(AA)), strict=True))
    lines = []
    for i in range(400):
        seq = [rng.choice(AA)]
        for _ in range(rng.randint(40, 60)):
            seq.append(succ[seq[-1]] if rng.random() < 0.9 else rng.choice(AA))
        lines.append(f">K{i}\n{''.join(seq)}\n")
    (tmp_path / "chain.fasta").write_text("".join(lines))
    sets = ["train.max_steps=120", "train.checkpoint_every_steps=null", "model.hidden=64"]
    cfg = tiny_cfg(tmp_path, tmp_path / "chain.fasta", "chain", *sets)
    ev = pretrain(cfg).last_eval
    assert ev["heldout_ppl"] < 0.6 * ev["unigram_ppl"], ev


def test_resume_on_a_changed_corpus_warns(tmp_path, corpus_fasta, capsys):
    pretrain(tiny_cfg(tmp_path, corpus_fasta, "run", "train.stop_at_step=10"))
    smaller = tmp_path / "smaller.fasta"
    write_corpus(smaller, n=200)
    state = pretrain(tiny_cfg(tmp_path, smaller, "run"), resume=True)
    assert state.step == 20 and state.corpus_sizes[0] == 180
    assert "corpus changed since the checkpoint" in capsys.readouterr().out
