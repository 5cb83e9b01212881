"""`protgo demo` end to end on a tiny world (the fetched Debian data linked in, a tiny built
dataset, a tiny ESM, two text phases), then again to check that finished stages are skipped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from train_world import CONFIGS, build_predict_world

from protgo.errors import UserError


def test_demo_end_to_end_and_resume(tmp_path, tiny_esm, real_data_dir, capsys):
    from protgo.config import load_config
    from protgo.demo import STAGES, Demo

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "raw").symlink_to(real_data_dir / "raw")  # stage 1 finds it fetched
    overrides, _ = build_predict_world(data_dir, tiny_esm, "tinydemo")  # stage 2 done
    more = ["go_text.phase_relations=[[],[is_a]]", "phases.start_epochs=[0,1]",
            "train.epochs=2", f"train.out_dir={tmp_path / 'run'}"]  # fmt: skip
    cfg = load_config(CONFIGS / "tiny.yaml", overrides + more)
    table, report = Demo(cfg, data_dir).run_all()
    out = capsys.readouterr().out
    for i, name in enumerate(STAGES, 1):
        assert f"[{i}/{len(STAGES)}] {name}" in out
    rows = {ln.split()[0]: ln.split()[1:] for ln in table.splitlines()[2:] if ln.strip()}
    head = table.splitlines()[1].split()[1:]
    assert table.startswith("MF:") and set(rows) == {"protgo", "blend", "diamond", "knn", "mlp",
                                                     "naive"}  # fmt: skip
    col = {name: head.index(name) for name in ("fmax", "zero_auc", "coverage")}
    for method, values in rows.items():
        assert 0 < float(values[col["fmax"]]) <= 1, method
    # closed-vocabulary baselines cannot rank a term held out of training; protgo can
    for method in ("naive", "diamond", "knn", "mlp"):
        assert rows[method][col["zero_auc"]] == "0.500", method
    assert rows["protgo"][col["zero_auc"]] != "0.500"
    assert float(rows["diamond"][col["coverage"]]) < 1 == float(rows["protgo"][col["coverage"]])
    assert report.is_file() and (report.parent / "metrics.png").is_file()
    run = Path(tmp_path / "run")
    assert (run / "predict" / "test" / "attributions.json").is_file()
    assert json.loads((run / "demo_timings.json").read_text())["seconds"]["train"] > 0

    Demo(cfg, data_dir).run_all()  # again: the expensive stages are complete
    out = capsys.readouterr().out
    for name in ("build", "train", "predict", "evaluate", "report"):
        assert f"{name}: already complete, skipped" in out

    # evaluate again with a chosen list: only those baselines run beside protgo
    (run / "eval" / "results.tsv").unlink()
    table, _ = Demo(cfg, data_dir, baselines="naive").run_all()
    assert {ln.split()[0] for ln in table.splitlines()[2:] if ln.strip()} == {"protgo", "naive"}
    with pytest.raises(UserError, match="nope"):
        Demo(cfg, data_dir, baselines="naive,nope")
