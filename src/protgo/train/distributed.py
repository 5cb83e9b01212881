"""Several processes under ``torchrun``: one process group for both trainers.

The aligner trainer averages gradients itself (one all-reduce of the flattened gradients per
step, :func:`average_gradients`) rather than through ``DistributedDataParallel``, because a
step calls the model through several methods (protein pooling, GO head, term logits, the
attribution pass) and not through one ``forward``; the result is the same as DDP's mean of
gradients. PLM pretraining calls one ``forward`` and uses DDP.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init() -> tuple[int, int]:
    """(rank, world size), starting the process group (NCCL with CUDA, else gloo) when
    ``WORLD_SIZE`` > 1."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def average_gradients(model: torch.nn.Module, world: int) -> None:
    """Replace every gradient by its mean over the ranks (one all-reduce)."""
    if world == 1:
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    i = 0
    for g in grads:
        g.copy_(flat[i : i + g.numel()].view_as(g))
        i += g.numel()


def broadcast_parameters(model: torch.nn.Module, world: int) -> None:
    """Rank 0's parameters on every rank (so all start from the same model)."""
    if world > 1:
        for p in model.parameters():
            dist.broadcast(p.data, 0)


def barrier(world: int) -> None:
    if world > 1:
        dist.barrier()
