"""Run tracking: ``metrics.jsonl`` in the run folder always, Weights & Biases when enabled.

Each JSONL line is one record: ``{"kind": "train" | "valid" | "event", "step": ..., ...}``.
Events (``kind == "event"``) are refreshes, phase changes and fallbacks with their reason;
they also go to the run log (``train.log``). W&B runs offline by default
(``tracking.wandb``: offline / online / disabled) with the curriculum preview as a table,
per-loss curves, negative-source counts and events. Only rank 0 tracks.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from protgo.config import TrackingConfig
from protgo.extras import need
from protgo.io import read_jsonl, truncate_jsonl

log = logging.getLogger("protgo.train")

BASE_URL = "WANDB_BASE_URL"
OFFLINE_BASE_URL = "http://127.0.0.1"  # offline runs: any W&B host lookup stays here


class Tracker:
    """``log(record, step)``, ``event(name, reason, **info)``, ``table(name, cols, rows)``."""

    def __init__(
        self, run_dir: Path, cfg: TrackingConfig, config: dict | None = None,
        rank: int = 0, resume_step: int | None = None,
    ):  # fmt: skip
        self.run_dir, self.cfg, self.rank = Path(run_dir), cfg, rank
        self.path = self.run_dir / "metrics.jsonl"
        self.wandb = None
        self._own_base_url = False  # WANDB_BASE_URL set by this tracker (offline), unset at close
        self.start = time.time()
        if rank != 0:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            self._drop_after(resume_step)
            # a record's time counts the run's training seconds, summed over its resumes
            rows = read_jsonl(self.path)[0] if self.path.is_file() else []
            self.start -= float(rows[-1].get("time", 0.0)) if rows else 0.0
        self._fh = self.path.open("a")
        self._add_log_file()
        if cfg.wandb != "disabled":
            self._init_wandb(config or {}, resume_step is not None)

    def _drop_after(self, step: int) -> None:
        """On resume, forget records written after the checkpoint (they will be redone)."""
        if not self.path.is_file():
            return
        if truncate_jsonl(self.path, step):
            log.warning("%s: dropped a torn last line (a write cut short)", self.path)

    def _add_log_file(self) -> None:
        target = str(self.run_dir / "train.log")
        if not any(getattr(h, "baseFilename", None) == target for h in log.handlers):
            handler = logging.FileHandler(target)
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            log.addHandler(handler)
            log.setLevel(logging.INFO)
        self._log_target = target

    def _init_wandb(self, config: dict, resume: bool) -> None:
        wandb = need("wandb", "train", f"tracking.wandb={self.cfg.wandb} (or set "
                     "tracking.wandb=disabled)")  # fmt: skip
        if self.cfg.wandb == "offline" and BASE_URL not in os.environ:
            # An offline run still looked up W&B's default host (a DNS query; seen with
            # strace, wandb 0.31); with the base URL on this machine nothing leaves it. The
            # offline files do not record it, so `wandb sync` later uses its own.
            os.environ[BASE_URL] = OFFLINE_BASE_URL
            self._own_base_url = True

        self.wandb = wandb.init(
            project=self.cfg.project, name=self.cfg.run_name, mode=self.cfg.wandb,
            dir=str(self.run_dir), config=config, resume="allow" if resume else None,
            id=self._run_id(), settings=wandb.Settings(console="off", x_disable_stats=True),
        )  # fmt: skip

    def _run_id(self) -> str:
        """One W&B run per run folder, so a resume continues the same run."""
        path = self.run_dir / "wandb_id.txt"
        if not path.is_file():
            import uuid

            path.write_text(uuid.uuid4().hex[:12])
        return path.read_text().strip()

    def log(self, record: dict, step: int, kind: str = "train") -> None:
        if self.rank != 0:
            return
        row = {"kind": kind, "step": step, "time": round(time.time() - self.start, 3), **record}
        self._fh.write(json.dumps(row, default=float) + "\n")
        self._fh.flush()
        if self.wandb is not None:
            flat = {f"{kind}/{k}": v for k, v in record.items() if isinstance(v, int | float)}
            self.wandb.log(flat, step=step)

    def event(self, name: str, reason: str, step: int, **info) -> None:
        """A refresh / phase change / fallback: JSONL, run log and W&B."""
        if self.rank != 0:
            return
        log.info("%s at step %d: %s %s", name, step, reason, json.dumps(info, default=str))
        self.log({"event": name, "reason": reason, **info}, step, kind="event")

    def table(self, name: str, columns: list[str], rows: list[list], step: int) -> None:
        """A table (e.g. the curriculum preview): ``<name>.tsv`` in the run folder and W&B,
        at ``step`` (W&B drops records whose step is below one it has seen: every call gives
        its step, so none is)."""
        if self.rank != 0:
            return
        text = "\t".join(columns) + "\n" + "".join("\t".join(map(str, r)) + "\n" for r in rows)
        (self.run_dir / f"{name}.tsv").write_text(text)
        if self.wandb is not None:
            import wandb

            self.wandb.log({name: wandb.Table(columns=columns, data=rows)}, step=step)

    def close(self) -> None:
        if self.rank != 0:
            return
        self._fh.close()
        for h in list(log.handlers):
            if getattr(h, "baseFilename", None) == self._log_target:
                log.removeHandler(h)
                h.close()
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None
        if self._own_base_url:
            os.environ.pop(BASE_URL, None)
            self._own_base_url = False


def read_metrics(run_dir: Path, kind: str | None = None) -> list[dict]:
    """The records of ``metrics.jsonl`` (of one ``kind`` when given)."""
    rows, _ = read_jsonl(Path(run_dir) / "metrics.jsonl")
    return [r for r in rows if kind is None or r["kind"] == kind]
