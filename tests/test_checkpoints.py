"""Checkpoints: round trip, schema check, pruning, RNG states, and kills mid-write."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from protgo.errors import UserError
from protgo.model.checkpoints import (
    SCHEMA_VERSION,
    CheckpointManager,
    load_checkpoint,
    rng_state,
    set_rng_state,
)  # fmt: skip
from protgo.train.tracking import Tracker, read_metrics


def test_round_trip_prune_and_latest(tmp_path):
    mgr = CheckpointManager(tmp_path / "checkpoints", keep_last=2)
    for step in (10, 20, 30):
        mgr.save({"step": step, "epoch": step // 10, "w": torch.full((3,), float(step))}, "step")
    names = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.pt"))
    assert names == ["step-00000020.pt", "step-00000030.pt"]
    mgr.save({"step": 30, "epoch": 3, "w": torch.zeros(3)}, "best")
    state = load_checkpoint(tmp_path)  # run folder -> latest
    assert state["kind"] == "best" and state["schema_version"] == SCHEMA_VERSION
    assert load_checkpoint(mgr.path_for("step", 20, 2))["w"][0] == 20.0


def test_schema_and_missing_files_are_user_errors(tmp_path):
    torch.save({"schema_version": 999, "step": 0}, tmp_path / "old.pt")
    with pytest.raises(UserError, match="schema version 999"):
        load_checkpoint(tmp_path / "old.pt")
    with pytest.raises(UserError, match="no checkpoint"):
        load_checkpoint(tmp_path / "nowhere")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot be read"):
        load_checkpoint(tmp_path / "junk.pt")


def test_rng_states_restore_every_generator():
    state = rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


WRITER = """
import sys, torch
from protgo.model.checkpoints import CheckpointManager
mgr = CheckpointManager(sys.argv[1], keep_last=2)
step = 0
while True:
    step += 1
    mgr.save({"step": step, "epoch": 0, "w": torch.full((4_000_000,), float(step))}, "step")
    print(step, flush=True)
"""


def test_kill_during_write_never_corrupts_latest(tmp_path):
    """SIGKILL a writer of 16 MB checkpoints at several moments; the latest always loads."""
    directory = tmp_path / "checkpoints"
    for delay in (0.0, 0.07, 0.19):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(directory)],
                                stdout=subprocess.PIPE, text=True)  # fmt: skip
        proc.stdout.readline()  # one checkpoint complete
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        state = load_checkpoint(directory)
        pointer = json.loads((directory / "latest.json").read_text())
        assert state["step"] == pointer["step"] and (state["w"] == state["step"]).all()


def test_tracker_jsonl_events_tables_and_resume(tmp_path):
    from protgo.config import TrackingConfig

    tr = Tracker(tmp_path, TrackingConfig(wandb="disabled"))
    for step in range(4):
        tr.log({"loss": 1.0 / (step + 1), "neg_hard": 3}, step)
    tr.event("bank_refresh", "end of epoch 0", step=3, rows=12)
    tr.table("curriculum", ["step", "hard_frac"], [[0, 0.2], [3, 0.8]], 0)
    tr.close()
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows if r["kind"] == "train"] == [0, 1, 2, 3]
    ev = read_metrics(tmp_path, "event")[0]
    assert ev["event"] == "bank_refresh" and ev["reason"] == "end of epoch 0" and ev["rows"] == 12
    assert "end of epoch 0" in (tmp_path / "train.log").read_text()
    assert (tmp_path / "curriculum.tsv").read_text().startswith("step\thard_frac\n")
    tr = Tracker(tmp_path, TrackingConfig(wandb="disabled"), resume_step=1)  # steps 2, 3 redone
    tr.close()
    assert [r["step"] for r in read_metrics(tmp_path)] == [0, 1]


def test_tracker_wandb_offline(tmp_path, monkeypatch):
    from protgo.config import TrackingConfig

    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    tr = Tracker(tmp_path, TrackingConfig(wandb="offline"), {"train": {"lr": 1e-3}})
    # offline, W&B's host is this machine while the run lasts (no DNS query leaves it)
    assert os.environ["WANDB_BASE_URL"] == "http://127.0.0.1"
    calls, real = [], tr.wandb.log
    tr.wandb.log = lambda data, **kw: (calls.append(kw.get("step")), real(data, **kw))
    tr.table("curriculum", ["step", "k_hard"], [[0, 4]], 0)  # the trainer's order at start
    tr.event("go_texts", "start", 0)
    tr.log({"loss": 0.5}, 1)
    tr.close()
    assert "WANDB_BASE_URL" not in os.environ  # and only then
    # W&B drops a record whose step is below one it has seen: each call names a step, in order
    assert calls == [0, 0, 1]
    run_id = (tmp_path / "wandb_id.txt").read_text().strip()
    runs = list((tmp_path / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))  # the run's records, on disk
    # a resumed run continues the same W&B run (same id), and JSONL keeps what it had
    Tracker(tmp_path, TrackingConfig(wandb="offline"), resume_step=0).close()
    assert (tmp_path / "wandb_id.txt").read_text().strip() == run_id
    assert all(run_id in d.name for d in (tmp_path / "wandb").glob("offline-run-*"))
    assert [r["step"] for r in read_metrics(tmp_path)] == [0]


def test_corrupt_newest_checkpoint_falls_back_to_the_previous(tmp_path, caplog):
    mgr = CheckpointManager(tmp_path / "checkpoints", keep_last=3)
    for step in (10, 20):
        mgr.save({"step": step, "epoch": 0, "w": torch.full((3,), float(step))}, "step")
    newest = mgr.path_for("step", 20, 0)
    newest.write_bytes(newest.read_bytes()[:100])  # cut short (full disk, bad copy)
    assert load_checkpoint(tmp_path)["step"] == 10
    assert "falling back to" in caplog.text  # a warning on stderr, not on stdout
    with pytest.raises(UserError, match="cannot be read"):
        load_checkpoint(newest)  # a file given by name must be good
    (tmp_path / "checkpoints" / "latest.json").write_text("{")  # a torn pointer
    assert load_checkpoint(tmp_path)["step"] == 10


def test_resume_drops_a_torn_last_metrics_line(tmp_path):
    from protgo.config import TrackingConfig

    tr = Tracker(tmp_path, TrackingConfig(wandb="disabled"))
    for step in range(3):
        tr.log({"loss": 1.0}, step)
    tr.close()
    with open(tmp_path / "metrics.jsonl", "a") as fh:
        fh.write('{"kind": "train", "step": 3, "lo')  # power cut mid-line
    assert [r["step"] for r in read_metrics(tmp_path)] == [0, 1, 2]
    Tracker(tmp_path, TrackingConfig(wandb="disabled"), resume_step=1).close()
    assert [r["step"] for r in read_metrics(tmp_path)] == [0, 1]
    (tmp_path / "metrics.jsonl").write_text('{"step": 0}\nnot json\n{"step": 1}\n')
    with pytest.raises(UserError, match="metrics.jsonl:2"):
        read_metrics(tmp_path)  # damage inside the file is not silently skipped
