"""The optimiser both trainers use: AdamW with weight decay on weight matrices only.

Biases, LayerNorm weights, the logit and bias scales (stored as their logs) and every other
parameter of fewer than two dimensions take no weight decay (as nanoGPT and open_clip do):
decaying a temperature or a norm's gain pulls it towards 0, which means nothing. Matrices,
the per-term residuals of the aligner included, are decayed towards 0.
"""

from __future__ import annotations

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: parameters with ``dim() >= 2`` at ``weight_decay``, the rest at 0
    (parameters that take no gradient are left out)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def adamw(
    model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float] = (0.9, 0.999)
) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`."""
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, eps=1e-8)
