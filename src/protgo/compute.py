"""Numeric precision of the frozen encoders: one rule for the text and protein encoders.

``dtype: auto`` resolves to ``bf16`` where the hardware multiplies bfloat16 natively (a CUDA
device with bf16, or a CPU with AVX512-BF16 or AMX) and to ``fp32`` elsewhere: on a CPU
without them bf16 is emulated and slower than fp32. ``bf16`` runs the encoder under
``torch.autocast``: matrix products in bfloat16 with fp32 accumulation, layer norms, softmax
and the outputs in fp32, the weights kept in fp32. On a CPU, :func:`packed_bf16_copy` is the
faster bf16 path for a frozen model: the whole copy in bfloat16 and each linear layer's weight
reordered once into oneDNN's blocked layout, where autocast casts and reorders every weight on
every call (what ``torch.compile``'s weight freezing does, without compiling). The text
encoder uses it (1.2x over autocast on all of GO); the protein encoders stay on autocast:
for protgo-esm-small it was no faster (30.9k against 28.8-33.2k residues/s on 48 human
proteins) and agreed less with fp32 (worst residue cosine 0.9984 against 0.99994).
"""

from __future__ import annotations

import contextlib
import copy
import logging
from typing import Literal

import torch

log = logging.getLogger(__name__)

Dtype = Literal["auto", "fp32", "bf16"]


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 in hardware."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        cpu = torch.cpu
        return any(
            getattr(cpu, probe, lambda: False)()
            for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        )
    return False


def resolve_dtype(dtype: Dtype, device: torch.device) -> Literal["fp32", "bf16"]:
    """``auto`` -> ``bf16`` on hardware with native bf16, else ``fp32``; others as given."""
    if dtype == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if dtype == "bf16" and not native_bf16(device):
        log.warning(
            "dtype bf16 on %s, which has no native bf16: it is emulated there and much slower "
            "than fp32 (measured 17x for unirep-256 on an AVX2 CPU); use dtype auto or fp32",
            device,
        )
    return dtype


def autocast(dtype: Literal["fp32", "bf16"], device: torch.device):
    """The context a forward pass runs in: bf16 autocast, or nothing for fp32."""
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def can_pack_bf16(device: torch.device) -> bool:
    """Whether :func:`packed_bf16_copy` runs on ``device``: a CPU with native bf16 and a torch
    build with oneDNN's linear kernels."""
    return (
        device.type == "cpu"
        and native_bf16(device)
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


class PackedLinear(torch.nn.Module):
    """A frozen :class:`torch.nn.Linear` in bfloat16, its weight reordered once by oneDNN."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        weight = linear.weight.detach().to(torch.bfloat16)  # (out, in)
        self.out_features = weight.shape[0]
        self.register_buffer("weight", torch.ops.mkldnn._reorder_linear_weight(weight, None))
        bias = None if linear.bias is None else linear.bias.detach().to(torch.bfloat16)
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)  # (N, in)
        y = torch.ops.mkldnn._linear_pointwise(flat, self.weight, self.bias, "none", [], "")
        return y.reshape(*x.shape[:-1], self.out_features)


def packed_bf16_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A bfloat16 copy of a frozen ``model`` for CPU inference (see :func:`can_pack_bf16`),
    every :class:`torch.nn.Linear` a :class:`PackedLinear`; ``model`` itself is unchanged.

    Layer norms, softmax and the residual sums run in bfloat16 too (no per-layer casts). On
    MiniLM over all of GO this agrees with fp32 at cosine 0.9999 (``benchmarks/go_side.py``)."""
    packed = copy.deepcopy(model).to(torch.bfloat16).eval().requires_grad_(False)
    for parent in list(packed.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Linear):
                setattr(parent, name, PackedLinear(child))
    return packed
