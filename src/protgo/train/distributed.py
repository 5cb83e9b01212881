"""Several processes under ``torchrun``: one process group and one DDP wrapper for both
trainers.

Both trainers compute a step's whole loss in one ``forward`` of the wrapped module (the aligner
trainer through :class:`protgo.train.trainer.StepLoss`), so ``DistributedDataParallel``
averages the gradients of everything the step used and starts every rank from rank 0's
parameters.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist


def init() -> tuple[int, int]:
    """(rank, world size), starting the process group (NCCL with CUDA, else gloo) when
    ``WORLD_SIZE`` > 1."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not dist.is_initialized():
        # rank 0 runs the term-head stage (a validation each pass) alone while the others
        # wait at a barrier: that can outlast NCCL's 10-minute default, so wait up to 2 hours
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo",
                                timeout=timedelta(hours=2))  # fmt: skip
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def device_for(requested: str | torch.device, world: int) -> torch.device:
    """The device of this process: under torchrun (``world`` > 1) a CUDA request without an
    index becomes ``cuda:LOCAL_RANK``, so each rank of a machine takes its own GPU (and is
    made the current one); anything else as requested (as open_clip's
    ``init_distributed_device``)."""
    device = torch.device(requested)
    if world > 1 and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def wrap(
    module: torch.nn.Module, world: int, device: torch.device, unused_params: bool = False
) -> torch.nn.Module:
    """``module`` under ``DistributedDataParallel`` when ``world`` > 1, else itself.

    ``unused_params``: some parameters take no gradient in a step (e.g. the term bias under
    ``loss.lambda_bce=0``), so DDP must walk the graph to find them (a cost, so only then)."""
    if world == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [device] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=unused_params)


def barrier(world: int) -> None:
    if world > 1:
        dist.barrier()
