"""Pretraining protgo's own small ESM-2 (masked LM): the corpus and the training loop."""
