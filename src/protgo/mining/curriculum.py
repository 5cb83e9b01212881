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
from dataclasses import asdict, dataclass

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
