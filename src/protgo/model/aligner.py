"""The aligner: residues -> pooled protein vector -> aligned space; GO vectors -> aligned space.

Both heads end L2-normalised, so a score is a cosine; logits are ``scale * cosine`` with a
learned scale (stored as its log, capped at 100 as in CLIP).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from protgo.config import ModelConfig
from protgo.model.pooling import AttentionPooling

MAX_LOGIT_SCALE = 100.0


class ProjectionHead(nn.Module):
    """``in_dim -> out_dim``: a linear map plus a GELU MLP residual, LayerNorm, L2 norm.

    Starting close to linear keeps the text geometry of GO vectors at the start of training.
    """

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.0):
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim)
        self.mlp = nn.Sequential(nn.GELU(), nn.Dropout(dropout), nn.Linear(out_dim, out_dim))
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x.to(self.proj.weight.dtype))  # (N, A)
        return F.normalize(self.norm(h + self.mlp(h)), dim=-1)


class ProtGoAligner(nn.Module):
    """Residue vectors (B, L, Dr) and GO text vectors (U, Dt) -> unit vectors (., A)."""

    def __init__(self, cfg: ModelConfig, residue_dim: int, go_dim: int):
        super().__init__()
        self.cfg = cfg
        self.pool = AttentionPooling(
            residue_dim, cfg.n_queries, cfg.n_heads, cfg.dropout, cfg.residue_chunk
        )
        self.protein_head = ProjectionHead(residue_dim, cfg.align_dim, cfg.dropout)
        self.go_head = ProjectionHead(go_dim, cfg.align_dim, cfg.dropout)
        self.log_scale = nn.Parameter(torch.tensor(math.log(cfg.init_logit_scale)))

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.log_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def encode_protein(self, residues: torch.Tensor, mask: torch.Tensor) -> dict:
        """``{"protein": (B, A) unit, "attn": (B, L)}``."""
        pooled = self.pool(residues, mask)
        return {"protein": self.protein_head(pooled["pooled"]), "attn": pooled["attn"]}

    def encode_go(self, go_vectors: torch.Tensor) -> torch.Tensor:
        """(U, Dt) text vectors -> (U, A) unit vectors."""
        return self.go_head(go_vectors)

    def forward(
        self, residues: torch.Tensor, mask: torch.Tensor, go_vectors: torch.Tensor,
        cand_idx: torch.Tensor | None = None,
    ) -> dict:  # fmt: skip
        """``protein`` (B, A), ``attn`` (B, L), ``go`` (U, A), ``scale``, ``cos_all`` (B, U)
        and ``logits_all`` (B, U); with ``cand_idx`` (B, C) (-1 = padding) also ``cos``
        and ``logits`` (B, C) over each protein's candidates (0 where padded)."""
        out = self.encode_protein(residues, mask)
        out["go"] = self.encode_go(go_vectors)
        out["scale"] = self.logit_scale
        out["cos_all"] = out["protein"] @ out["go"].T  # (B, U)
        out["logits_all"] = out["scale"] * out["cos_all"]
        if cand_idx is not None:
            out["cos"] = candidate_scores(out["cos_all"], cand_idx)
            out["logits"] = out["scale"] * out["cos"]
        return out


def candidate_scores(all_scores: torch.Tensor, cand_idx: torch.Tensor) -> torch.Tensor:
    """(B, U) scores, (B, C) indices into U (-1: padding) -> (B, C), 0 where padded."""
    got = all_scores.gather(1, cand_idx.clamp(min=0))
    return got.masked_fill(cand_idx < 0, 0.0)
