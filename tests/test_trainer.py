"""End-to-end training on the tiny world of tests/train_world.py (fixture ``tiny_world`` in
conftest.py): real GO terms and texts, a tiny random ESM, motif-defined families."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from protgo.config import load_config
from protgo.errors import UserError
from protgo.train.phases import RELOAD_ORDER

CONFIGS = Path(__file__).parent.parent / "src" / "protgo" / "configs"


def _cfg(world, tmp_path, *more):
    data_dir, overrides = world
    return load_config(CONFIGS / "tiny.yaml", [*overrides, f"train.out_dir={tmp_path}", *more])


def test_tiny_run_learns(tiny_world, tmp_path):
    from protgo.train.tracking import read_metrics
    from protgo.train.trainer import Trainer

    cfg = _cfg(tiny_world, tmp_path / "run", "train.epochs=4", "train.lr=3e-3",
               "train.log_every_steps=1", "phases.start_epochs=[0,2]")  # fmt: skip
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


@pytest.mark.parametrize("backend", ["cache", "bank"])
def test_exact_resume(tiny_world, tmp_path, backend):
    """Stopped mid-epoch 1 (text phase 1); with the ``bank`` backend mining searches the bank
    as at the epoch start while the bank itself has moved on: both come back."""
    from protgo.train.tracking import read_metrics
    from protgo.train.trainer import Trainer

    more = ("train.epochs=2", "train.checkpoint_every_steps=5", "train.log_every_steps=1",
            "phases.start_epochs=[0,1]", "loss.lambda_distill=0.5",
            f"mining.backend={backend}")  # fmt: skip
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
    times = [r["time"] for r in read_metrics(tmp_path / "b")]  # summed over the resume
    assert times == sorted(times)


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


@pytest.mark.parametrize("max_terms", [4096, 5])  # every non-zero-shot term; a sample of 5
def test_binary_loss_terms_and_truth(tiny_world, tmp_path, max_terms):
    """The scored terms (the batch's own ones by position, then the others) and their truth:
    a protein is positive for a term exactly when its propagated annotations hold it."""
    from protgo.train.trainer import Trainer

    trainer = Trainer(_cfg(tiny_world, tmp_path, f"loss.bce_max_terms={max_terms}"),
                      progress=False)  # fmt: skip
    trainer.fit(max_steps=1)
    batch = trainer.collator([trainer.train_ds[i] for i in range(4)])
    batch = trainer.mine(batch, trainer.curriculum(trainer.step))
    terms = trainer._bce_terms(batch)
    cache = trainer.phases.cache
    go_rows = batch["go_rows"].tolist()
    text_row = {tuple(v.tolist()): r for r, v in enumerate(cache.matrix)}
    scored = [go_rows[c] for c in terms["batch_cols"].tolist()]
    scored += [text_row[tuple(v.tolist())] for v in terms["text"]]
    assert len(set(scored)) == len(scored) == terms["truth"].shape[1]
    zero = trainer.train_ds.fewzero.zero
    assert not any(cache.ids[r] in zero for r in scored)
    if max_terms == 5:  # the batch's terms plus a sample
        assert len(trainer._bce_rows) > 5  # the sampled branch is the one tested
        assert set(go_rows) - {r for r in go_rows if cache.ids[r] in zero} <= set(scored)
        assert len(scored) <= len(go_rows) + 5
    else:
        assert set(scored) == set(trainer._bce_rows.tolist())
    for b, pid in enumerate(batch["pids"]):
        held = trainer.ontology.propagate(trainer.annotations.get(pid, ()))
        want = [cache.ids[r] in held for r in scored]
        assert terms["truth"][b].tolist() == want


def test_bf16_training_step_agrees_with_fp32(tiny_world, tmp_path):
    """``train.dtype: bf16`` (the forward under bf16 autocast): on the same first batch the
    loss and the gradients are those of fp32 up to bf16 rounding; the weights stay fp32."""
    from protgo.train.trainer import Trainer

    grads, losses = {}, {}
    for dtype in ("fp32", "bf16"):
        trainer = Trainer(_cfg(tiny_world, tmp_path / dtype, f"train.dtype={dtype}"),
                          progress=False)  # fmt: skip
        trainer.fit(max_steps=0)  # sets the run up, takes no step
        batch = trainer.collator([trainer.train_ds[i] for i in range(8)])
        batch["residues"] = batch["residues"].to(trainer._residue_dtype)  # as the loop casts
        torch.manual_seed(0)  # the same mined negatives for both
        parts, _ = trainer.train_step(batch)
        losses[dtype] = float(parts["total"])
        grads[dtype] = torch.cat([p.grad.flatten() for p in trainer.model.parameters()
                                  if p.grad is not None])  # fmt: skip
        assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.02)
    cos = torch.nn.functional.cosine_similarity(grads["fp32"], grads["bf16"], dim=0)
    assert cos > 0.99, cos


def test_head_stage_keeps_the_best_pass_and_runs_once(tiny_world, tmp_path):
    """After the last epoch the term-head stage validates each pass; best.pt is the best of
    epochs and passes, final.pt keeps the last epoch's weights, and resuming the finished run
    does not refit again."""
    from protgo.model.aligner import residual_terms
    from protgo.model.checkpoints import load_checkpoint
    from protgo.train.tracking import read_metrics
    from protgo.train.trainer import Trainer

    run = tmp_path / "run"
    cfg = _cfg(tiny_world, run, "train.epochs=2", "train.head_epochs=3", "train.lr=3e-3",
               "train.head_lr=3e-2", "phases.start_epochs=[0]")  # fmt: skip
    trainer = Trainer(cfg, progress=False)
    trainer.fit()
    valid = read_metrics(run, "valid")
    assert [r.get("head_epoch") for r in valid] == [None, None, 1, 2, 3]
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    final = load_checkpoint(run / "checkpoints" / "final.pt")
    assert best["best"] == max(r["fmax"] for r in valid)
    assert final["head_done"] and best["head_done"] == (best["best"] > max(
        r["fmax"] for r in valid[:2]))  # fmt: skip
    last_epoch = load_checkpoint(run / "checkpoints" / "epoch-0002.pt")["model"]
    for name, value in final["model"].items():
        assert torch.equal(value, last_epoch[name]), name
    # train.head_terms "common": few-shot terms keep the residuals learnt in the epochs
    k = max((1, 2), key=lambda e: valid[e - 1]["fmax"])
    epoch = load_checkpoint(run / "checkpoints" / f"epoch-{k:04d}.pt")["model"]
    classes = trainer.folder.term_class
    table = residual_terms(best["model"])
    few = [i for i, g in enumerate(table) if classes.get(g) == "few"]
    common = [i for i, g in enumerate(table) if classes.get(g) == "common"]
    assert few and common
    moved = (best["model"]["term_residual"] != epoch["term_residual"]).any(dim=1)
    assert not moved[few].any() and moved[common].any() == best["head_done"]
    Trainer(cfg, progress=False).fit(resume=run)
    assert len(read_metrics(run, "valid")) == len(valid)


def test_tuned_text_layers_train_resume_exactly_and_skip_zero_shot(tiny_world, tmp_path):
    """``go_text.tune_layers=1``: the top text layer trains (the texts' vectors move off the
    frozen encoder's), a resume mid-epoch gives the uninterrupted run's weights and losses,
    and no zero-shot term's text ever runs through the tuned layers."""
    from protgo.train.tracking import read_metrics
    from protgo.train.trainer import Trainer

    more = ("train.epochs=2", "train.checkpoint_every_steps=5", "train.log_every_steps=1",
            "phases.start_epochs=[0,1]", "go_text.tune_layers=1", "go_text.tune_lr=1e-4",
            "go_text.tune_max_texts=12")  # fmt: skip
    straight = Trainer(_cfg(tiny_world, tmp_path / "a", *more), progress=False)
    base = {k: v.clone() for k, v in straight.text_top.state_dict().items()}
    straight.fit()
    moved = [k for k, v in straight.text_top.state_dict().items() if not torch.equal(v, base[k])]
    assert moved, "the tuned text layer did not train"
    phases = straight.phases
    cos = (phases.cache.matrix * torch.from_numpy(phases.frozen.vectors)).sum(1)
    assert cos.min() < 0.9999  # the vectors mining and scoring use are the tuned ones
    # a tuned checkpoint scores with its own vectors; its bundle must ship them
    from protgo.infer.bundle import export
    from protgo.infer.predict import Predictor
    from protgo.stores.go_encode import _donor_vectors
    from protgo.stores.go_vectors import GoVectorCache

    pred = Predictor(tmp_path / "a" / "checkpoints" / "final.pt", tiny_world[0], homology=False)
    rows = phases.cache.rows(pred.text_cache.ids)
    np.testing.assert_allclose(pred.text_cache.vectors, phases.cache.matrix[rows], atol=1e-6)
    tuned_dirs = list((tiny_world[0] / "stores" / "go").glob("*/*/*-tuned-*"))
    assert len(tuned_dirs) == 1  # written once, then read
    again = Predictor(tmp_path / "a" / "checkpoints" / "final.pt", tiny_world[0], homology=False)
    np.testing.assert_array_equal(again.text_cache.vectors, pred.text_cache.vectors)
    # tuned vectors never stand in for the frozen encoder's when a cache is (re)encoded
    frozen = GoVectorCache.load(str(tuned_dirs[0]).split("-tuned-")[0])
    donors = _donor_vectors(tuned_dirs[0].parent / "texts-new", frozen.manifest)
    keys = [k for k in frozen.text_keys if k in donors]
    assert keys and all(np.array_equal(donors[k], frozen.vectors[frozen.text_keys.index(k)])
                        for k in keys)  # fmt: skip
    with pytest.raises(UserError, match="must ship its GO vectors"):
        export(pred, tmp_path / "bundle", with_vectors=False, with_homology=False)
    cfg_b = _cfg(tiny_world, tmp_path / "b", *more)
    Trainer(cfg_b, progress=False).fit(max_steps=10)
    resumed = Trainer(cfg_b, progress=False)
    resumed.fit(resume=tmp_path / "b")
    for a, b in ((straight.model, resumed.model), (straight.text_top, resumed.text_top)):
        for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6, msg=name)
    ma, mb = read_metrics(tmp_path / "a", "train"), read_metrics(tmp_path / "b", "train")
    assert [r["total"] for r in ma] == pytest.approx([r["total"] for r in mb], rel=1e-5)
    ids = phases.cache.ids[:6]
    phases.zero = frozenset(ids[:1])  # as a split that holds ids[0] out makes it
    batch = {"go_ids": ids, "pos_ids": [[ids[0], ids[3]]], "go_rows": phases.cache.rows(ids)}
    live = phases.live_texts(batch)
    assert live["index"].tolist() == [3, 1, 2, 4, 5]  # the positive first, the zero-shot never
    states, mask = phases.lower.batch(batch["go_rows"][[3, 1, 2, 4, 5]])
    torch.testing.assert_close(live["states"], states)
