"""Curriculum: step -> mining parameters and the loss-weight stage.

Mining parameters (``curriculum`` config, each a (start, end) pair) hold their start values
through the warm-up (``warmup_epochs``), then move to their end values at the last step along
a linear or cosine curve (cosine: ``s = (1 - cos(pi t)) / 2``, slow at both ends).
Integers are rounded; ``inbatch_easy`` switches from its start to its end value at
``inbatch_until`` (share of training) and ``siblings`` turns on at ``siblings_from``.

Loss-weight stages (``stages`` config) split training at ``boundaries`` (shares of training)
into A, B, C, D: ``lambda_attr`` ramps linearly from ``lambda_attr_start`` to
``lambda_attr_max`` over A and B, holds in C and is 0 in D.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from protgo.config import CurriculumConfig, StagesConfig
from protgo.errors import UserError

STAGES = "ABCD"


@dataclass(frozen=True)
class CurriculumParams:
    """Everything the curriculum sets at one step."""

    hard_frac: float
    shortlist_M: int
    k_hard: int
    random_k: int
    inbatch_easy: bool
    hier_up: int
    hier_down: int
    siblings: bool
    stage: str
    lambda_attr: float

    def as_dict(self) -> dict:
        return asdict(self)


class CurriculumScheduler:
    """``scheduler(step)`` -> :class:`CurriculumParams`; stateless, so resuming only needs
    the step."""

    def __init__(
        self, cfg: CurriculumConfig, stages: StagesConfig, total_steps: int, steps_per_epoch: int
    ):
        if total_steps < 1 or steps_per_epoch < 1:
            raise UserError(
                f"curriculum needs at least one step (total {total_steps}, per epoch "
                f"{steps_per_epoch}); check train.epochs and the dataset size"
            )
        b = stages.boundaries
        if not 0 <= b[0] <= b[1] <= b[2] <= 1:
            raise UserError(f"stages.boundaries must rise within [0, 1], got {list(b)}")
        self.cfg, self.stages = cfg, stages
        self.total_steps = total_steps
        self.warmup_steps = min(round(cfg.warmup_epochs * steps_per_epoch), total_steps - 1)

    @property
    def last_step(self) -> int:
        return self.total_steps - 1

    def progress(self, step: int) -> float:
        """0 through the warm-up, 1 at the last step, shaped by the schedule."""
        span = self.last_step - self.warmup_steps
        t = 1.0 if span <= 0 else min(max((step - self.warmup_steps) / span, 0.0), 1.0)
        if self.cfg.schedule == "cosine":
            return (1.0 - math.cos(math.pi * t)) / 2.0
        return t

    def share(self, step: int) -> float:
        """Share of training done (for the switch points and stages)."""
        return min(max(step / max(self.last_step, 1), 0.0), 1.0)

    def __call__(self, step: int) -> CurriculumParams:
        c, s, f = self.cfg, self.progress(step), self.share(step)

        def lerp(pair):
            return pair[0] + s * (pair[1] - pair[0])

        stage, lam = self.stage(f)
        return CurriculumParams(
            hard_frac=lerp(c.hard_frac), shortlist_M=round(lerp(c.shortlist_M)),
            k_hard=round(lerp(c.k_hard)), random_k=round(lerp(c.random_k)),
            inbatch_easy=c.inbatch_easy[0] if f < c.inbatch_until else c.inbatch_easy[1],
            hier_up=round(lerp(c.hier_up)), hier_down=round(lerp(c.hier_down)),
            siblings=f >= c.siblings_from, stage=stage, lambda_attr=lam,
        )  # fmt: skip

    def stage(self, share: float) -> tuple[str, float]:
        """(stage letter, lambda_attr) at a share of training."""
        b, st = self.stages.boundaries, self.stages
        k = sum(share >= x for x in b)
        if k == 3:
            return "D", 0.0
        if k == 2:
            return "C", st.lambda_attr_max
        ramp = share / b[1] if b[1] > 0 else 1.0
        return STAGES[k], st.lambda_attr_start + ramp * (st.lambda_attr_max - st.lambda_attr_start)

    def default_steps(self, n: int = 11) -> list[int]:
        """``n`` evenly spaced steps plus the end of the warm-up."""
        steps = {round(i * self.last_step / (n - 1)) for i in range(n)} | {self.warmup_steps}
        return sorted(steps)

    def table(self, steps: Sequence[int]) -> str:
        """A plain-text table, one row per step."""
        names = list(CurriculumParams.__dataclass_fields__)
        rows = [["step", *names]]
        for step in steps:
            p = self(step).as_dict()
            rows.append([str(step), *(_fmt(p[k]) for k in names)])
        width = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        return "\n".join("  ".join(v.rjust(w) for v, w in zip(r, width, strict=True)) for r in rows)

    def plot(self, path: Path, n_points: int = 400) -> Path:
        """A PNG with one panel per parameter over all steps (written atomically)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps = sorted({round(i * self.last_step / (n_points - 1)) for i in range(n_points)})
        params = [self(s).as_dict() for s in steps]
        names = [k for k in CurriculumParams.__dataclass_fields__ if k != "stage"]
        fig, axes = plt.subplots(3, 3, figsize=(12, 9), sharex=True)
        for ax, name in zip(axes.flat, names, strict=True):
            ax.plot(steps, [float(p[name]) for p in params], drawstyle="steps-post")
            ax.axvline(self.warmup_steps, color="grey", lw=0.8, ls="--")
            ax.set_title(name)
            if isinstance(params[0][name], bool):
                ax.set_yticks([0, 1], ["off", "on"])
        self._mark_stages(axes.flat[names.index("lambda_attr")])
        for ax in axes[-1]:
            ax.set_xlabel("step")
        fig.suptitle(f"curriculum ({self.cfg.schedule}; dashed: end of warm-up; "
                     f"{self.total_steps} steps)")  # fmt: skip
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp.png")
        fig.savefig(tmp, dpi=90)
        plt.close(fig)
        tmp.replace(path)
        return path

    def _mark_stages(self, ax) -> None:
        """Stage boundaries (dotted) and letters on the lambda_attr panel."""
        edges = [0.0, *self.stages.boundaries, 1.0]
        for k, letter in enumerate(STAGES):
            lo, hi = edges[k] * self.last_step, edges[k + 1] * self.last_step
            if k:
                ax.axvline(lo, color="tab:orange", lw=0.8, ls=":")
            if hi > lo:
                ax.text((lo + hi) / 2, 0.5, letter, transform=ax.get_xaxis_transform(),
                        ha="center", color="tab:orange")  # fmt: skip


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def show_schedule(
    cfg, steps_per_epoch: int | None, at: str | None, png: Path | None, data_dir: Path
) -> tuple[str, Path]:
    """``protgo curriculum show``: (header + table, plot path) for a whole ``Config``."""
    if steps_per_epoch is None:
        from protgo.data.folder import DatasetFolder

        n_train = len(DatasetFolder.load(cfg.data.dataset, data_dir).ids("train"))
        steps_per_epoch = max(1, n_train // cfg.train.batch_size)
    sched = CurriculumScheduler(
        cfg.curriculum, cfg.stages, cfg.train.epochs * steps_per_epoch, steps_per_epoch
    )
    if at:
        try:
            steps = [int(x) for x in at.split(",") if x.strip()]
        except ValueError:
            raise UserError(f"--at takes comma-separated step numbers, got '{at}'") from None
    else:
        steps = sched.default_steps()
    head = (
        f"curriculum: {sched.total_steps} steps ({cfg.train.epochs} epochs x {steps_per_epoch}), "
        f"{cfg.curriculum.schedule}, warm-up {sched.warmup_steps} steps"
    )
    path = sched.plot(png or cfg.train.out_dir / "curriculum.png")
    return head + "\n" + sched.table(steps), path
