"""One dispatch from ``residues.model`` to its encoder (as fair-esm's ``pretrained.py``):
UniRep (``unirep-1900``, ``unirep-256``, ``unirep-64``; :mod:`protgo.encoders.unirep`) or an
ESM model (:mod:`protgo.encoders.protein`). Both encoders give ``settings()``, ``dim``,
``embed()`` and ``embed_batched()``; this module is the only one that knows both."""

from __future__ import annotations

from pathlib import Path

from protgo.config import ResiduesConfig
from protgo.encoders import unirep
from protgo.encoders.protein import ProteinEncoder, describe_esm


def describe_model(cfg: ResiduesConfig) -> tuple[Path, dict]:
    """(model directory or weights file, settings the vectors depend on), read from files
    without loading weights, so a residue store can be found without the model in memory."""
    return unirep.describe_unirep(cfg) if unirep.is_unirep(cfg.model) else describe_esm(cfg)


def protein_encoder(cfg: ResiduesConfig):
    """The encoder ``residues.model`` names."""
    return unirep.UniRepEncoder(cfg) if unirep.is_unirep(cfg.model) else ProteinEncoder(cfg)
