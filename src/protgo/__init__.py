"""protgo: zero-shot GO prediction from protein residue embeddings aligned with GO text."""

import os

# Before torch loads OpenMP: idle threads sleep instead of spinning, so a CPU shared with other
# busy processes does not lose most of its speed (benchmarks/shared_cpu.py). Set
# OMP_WAIT_POLICY yourself to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
