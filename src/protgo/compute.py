"""Numeric precision of the frozen encoders: one rule for the text and protein encoders.

``dtype: auto`` resolves to ``bf16`` where the hardware multiplies bfloat16 natively (a CUDA
device with bf16, or a CPU with AVX512-BF16 or AMX) and to ``fp32`` elsewhere: on a CPU
without them bf16 is emulated and slower than fp32. ``bf16`` runs the encoder under
``torch.autocast``: matrix products in bfloat16 with fp32 accumulation, layer norms, softmax
and the outputs in fp32, the weights kept in fp32.
"""

from __future__ import annotations

import contextlib
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
