"""The aligner: residues -> pooled protein vector -> aligned space; GO vectors -> aligned space.

Both heads end L2-normalised, so a score is a cosine; logits are ``scale * cosine`` with a
learned scale (stored as its log, capped at 100 as in CLIP).

Cosines rank terms for one protein but are not comparable across terms: "protein binding"
(most human proteins) and a rare enzyme activity need different thresholds, and CAFA Fmax
uses one threshold for all. With ``model.term_bias`` each term also gets a prior, a logit bias
read from its text vector by a linear head (so unseen terms get one too), and
:meth:`ProtGoAligner.term_logits` gives per-(protein, term) binary logits
``bias_scale * cos + bias(text)``, trained with binary cross-entropy
(:func:`protgo.model.losses.binary_term_loss`) and used for prediction.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from protgo.config import ModelConfig
from protgo.model.pooling import AttentionPooling, MeanPooling

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
        self.pool = (
            AttentionPooling(residue_dim, cfg.n_queries, cfg.n_heads, cfg.dropout,
                             cfg.residue_chunk)
            if cfg.pooling == "attention" else MeanPooling()
        )  # fmt: skip
        self.protein_head = ProjectionHead(residue_dim, cfg.align_dim, cfg.dropout)
        self.go_head = ProjectionHead(go_dim, cfg.align_dim, cfg.dropout)
        self.log_scale = nn.Parameter(torch.tensor(math.log(cfg.init_logit_scale)))
        self.term_bias: nn.Linear | None = None
        if cfg.term_bias:
            # Zero weights: every term starts at the same prior, the typical share of proteins
            # carrying a term, so the first binary-loss gradients are not all "push down".
            self.term_bias = nn.Linear(go_dim, 1)
            nn.init.zeros_(self.term_bias.weight)
            nn.init.constant_(self.term_bias.bias, cfg.init_term_bias)
            self.log_bias_scale = nn.Parameter(torch.tensor(math.log(cfg.init_bias_scale)))

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

    def term_logits(
        self, protein: torch.Tensor, go: torch.Tensor, go_text: torch.Tensor
    ) -> torch.Tensor:
        """(B, A) proteins, (T, A) projected GO vectors, (T, Dt) their text vectors -> (B, T)
        binary logits ``bias_scale * cos + bias(text)``; plain cosines without a term bias."""
        cos = protein @ go.T  # (B, T)
        if self.term_bias is None:
            return cos
        bias = self.term_bias(go_text.to(self.term_bias.weight.dtype)).squeeze(-1)  # (T,)
        return self.log_bias_scale.exp().clamp(max=MAX_LOGIT_SCALE) * cos + bias

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
