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
import os
import time
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


# ---- threads on a shared CPU ------------------------------------------------------------------
def _cpu_busy() -> tuple[float, float, float] | None:
    """(wall seconds, busy core-seconds of the whole machine, of this process), or None where
    ``/proc/stat`` does not describe the cores this process may use (not Linux, or a
    container that sees the host's)."""
    try:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    cores = sum(line.startswith("cpu") and line[3:4].isdigit() for line in lines)
    if cores != len(os.sched_getaffinity(0)):
        return None
    # user nice system idle iowait irq softirq steal: all but idle and iowait are taken
    ticks = [int(v) for v in lines[0].split()[1:9]]
    taken = sum(ticks) - ticks[3] - ticks[4]
    own = os.times()
    return time.monotonic(), taken / os.sysconf("SC_CLK_TCK"), own.user + own.system


class ThreadGovernor:
    """Torch threads from the cores other processes leave free, re-read every ``every_s``.

    Torch starts one thread per core. Beside another busy process, a 2-thread step waits on
    whichever thread lost its core (measured 2.7x slower training beside one single-thread
    job on 2 cores). :meth:`tick`, called between batches, counts the core-seconds the rest of
    the machine took since the last check and sets ``cores - busy`` threads (at least one;
    all cores again once the other work ends). Off where the count is not available, and when
    ``threads`` is set (``residues.threads``) or ``OMP_NUM_THREADS`` is.
    """

    def __init__(self, threads: int | None = None, every_s: float = 10.0, sample=_cpu_busy):
        """``sample``: the reading of :func:`_cpu_busy` (another in tests)."""
        self.cores = len(os.sched_getaffinity(0))
        self.every_s, self.sample = every_s, sample
        if threads:
            torch.set_num_threads(threads)
        fixed = threads or os.environ.get("OMP_NUM_THREADS")
        self._last = None if fixed else sample()

    def tick(self) -> None:
        """Set the thread count when ``every_s`` have passed since the last check."""
        if self._last is None:
            return
        now = self.sample()
        if now is None or now[0] - self._last[0] < self.every_s:
            return
        wall, taken, own = (a - b for a, b in zip(now, self._last, strict=True))
        self._last = now
        others = max(0.0, taken - own) / wall  # cores kept busy by other processes
        want = max(1, min(self.cores, round(self.cores - others)))
        if want != torch.get_num_threads():
            log.info("%.1f of %d cores busy with other processes: %d torch threads",
                     others, self.cores, want)  # fmt: skip
            torch.set_num_threads(want)
