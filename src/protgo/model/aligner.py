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

With ``model.term_residual`` every term with a training positive also gets a learned residual
vector and logit offset on top of its text (as a per-term classifier has, and every top CAFA
system kept): ``bias_scale * protein . (go + residual) + bias(text) + offset``. Both start at
zero and are weight-decayed towards it, so a term stays near its text unless its training
proteins say otherwise; a term without a training positive has no residual at all and is scored
from its text exactly as without the option (zero-shot).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from protgo.config import ModelConfig
from protgo.errors import UserError
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

    def __init__(
        self, cfg: ModelConfig, residue_dim: int, go_dim: int, residual_terms: Sequence[str] = ()
    ):
        """``residual_terms``: the GO ids that get a residual (``model.term_residual``: the
        terms with a training positive)."""
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
        self.term_residual: nn.Parameter | None = None
        if cfg.term_residual and cfg.term_bias:
            n = len(residual_terms)
            self.register_buffer("residual_go", go_numbers(residual_terms))  # saved with it
            self.term_residual = nn.Parameter(torch.zeros(n, cfg.align_dim))
            self.term_offset = nn.Parameter(torch.zeros(n))
            self._residual_row = {t: i for i, t in enumerate(residual_terms)}

    def residual_rows(self, ids: Sequence[str]) -> torch.Tensor | None:
        """(T,) rows of ``ids`` in the residual table, -1 for a term without one; None when
        the model has no residuals."""
        if self.term_residual is None:
            return None
        rows = [self._residual_row.get(t, -1) for t in ids]
        return torch.tensor(rows, dtype=torch.long, device=self.term_residual.device)

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
        self, protein: torch.Tensor, go: torch.Tensor, go_text: torch.Tensor,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:  # fmt: skip
        """(B, A) proteins, (T, A) projected GO vectors, (T, Dt) their text vectors -> (B, T)
        binary logits ``bias_scale * cos + bias(text)``; plain cosines without a term bias.
        ``rows`` (T,) (:meth:`residual_rows`): add each term's residual and offset (none for
        -1, or when None: text only)."""
        go, bias = self.term_head(go, go_text, rows)
        cos = protein @ go.T  # (B, T)
        if bias is None:
            return cos
        return self.bias_scale() * cos + bias

    def term_head(
        self, go: torch.Tensor, go_text: torch.Tensor, rows: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
        """(T, A) projected GO vectors, (T, Dt) text vectors -> each term's vector and bias
        as :meth:`term_logits` scores them: with ``rows``, its residual and offset added (none
        for -1); (go, None) without a term bias."""
        if self.term_bias is None:
            return go, None
        bias = self.term_bias(go_text.to(self.term_bias.weight.dtype)).squeeze(-1)  # (T,)
        if self.term_residual is not None and rows is not None and len(self.term_residual):
            has = (rows >= 0).to(go.dtype)[:, None]  # (T, 1)
            go = go + self.term_residual[rows.clamp(min=0)].to(go.dtype) * has
            bias = bias + self.term_offset[rows.clamp(min=0)].to(bias.dtype) * has[:, 0]
        return go, bias

    def bias_scale(self) -> torch.Tensor:
        """The scale of the binary logits' cosines (learned, capped)."""
        return self.log_bias_scale.exp().clamp(max=MAX_LOGIT_SCALE)

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


GO_ID = re.compile(r"GO:(\d{7})")


def go_numbers(ids: Sequence[str]) -> torch.Tensor:
    """GO ids -> (T,) int64 (``GO:0003674`` -> 3674), how the residual table's terms are
    stored in the weights (a state dict holds tensors only)."""
    bad = next((t for t in ids if not GO_ID.fullmatch(t)), None)
    if bad is not None:
        raise UserError(
            f"model.term_residual keys its residuals by GO id, and '{bad}' is not one "
            "(GO:NNNNNNN): set model.term_residual=false for this ontology"
        )
    return torch.from_numpy(np.array([int(t[3:]) for t in ids], dtype=np.int64))


def residual_terms(weights: dict) -> list[str]:
    """The GO ids of a saved model's residual table (none without one)."""
    numbers = weights.get("residual_go")
    return [] if numbers is None else [f"GO:{int(n):07d}" for n in numbers.tolist()]
