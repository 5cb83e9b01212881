"""protgo: zero-shot GO prediction from ESM residue embeddings aligned with GO text."""

__version__ = "0.1.0"
