"""protgo: zero-shot GO prediction from protein residue embeddings aligned with GO text."""

import os

# Before torch loads OpenMP: idle threads sleep instead of spinning, so a CPU shared with other
# busy processes does not lose most of its speed (benchmarks/shared_cpu.py). Set
# OMP_WAIT_POLICY yourself to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"


def __getattr__(name: str):
    """``protgo.load_model`` (:mod:`protgo.infer.api`), imported on first use: ``import
    protgo`` stays light (no torch) for the command line."""
    if name == "load_model":
        from protgo.infer.api import load_model

        return load_model
    raise AttributeError(f"module 'protgo' has no attribute {name!r}")


__all__ = ["load_model"]
