"""The learning-rate schedule both trainers use: linear warm-up, then cosine decay.

The rate is a pure function of the step, so a resumed run continues the same curve.
"""

from __future__ import annotations

import math

import torch


def warmup_cosine_factor(step: int, warmup: int, total: int, min_frac: float = 0.0) -> float:
    """Share of the base rate at ``step``: ``(step + 1) / warmup`` during warm-up, then cosine
    from 1 down to ``min_frac`` at ``total`` (and ``min_frac`` after)."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_frac + (1.0 - min_frac) * 0.5 * (1.0 + math.cos(math.pi * t))


def warmup_cosine(
    optimizer, warmup: int, total: int, min_frac: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """:func:`warmup_cosine_factor` as an LR scheduler (``step()`` after each update)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine_factor(step, warmup, total, min_frac)
    )
