"""Masked multi-head attention pooling over residues with learned queries.

Residue vectors ``x`` (B, L, D) -> one pooled vector per protein (B, D) and the per-residue
attention (B, L) that attributions are read from. ``Q`` learned queries, each with ``H``
heads of ``D / H`` dims, attend over the real residues (``mask``); their outputs are
concatenated (B, Q*D) and projected back to D.

Keys and values are linear in ``x``, so neither is ever materialised:

* ``score[l, q, h] = (W_k x_l)_h . q_qh = x_l . (W_k,h^T q_qh)``: the queries are mapped into
  the residue space once, (Q*H, D), and scores are one matmul (B, L, Q*H);
* ``sum_l a_l (W_v x_l + b_v) = W_v (sum_l a_l x_l) + b_v`` because the weights sum to 1, so
  the attention averages raw residues (B, Q*H, D) and the value map runs on Q*H vectors.

Residues are read in chunks of ``chunk`` rows (cast from fp16 per chunk), so the working
memory beyond the input is O(B * chunk * D) plus the scores (B, L, Q*H), for any length of
stitched sliding-window output.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from protgo.encoders.protein import pack_by_tokens


class AttentionPooling(nn.Module):
    """``forward(x, mask) -> {"pooled": (B, D), "attn": (B, L), "attn_heads": (B, Q*H, L)}``.

    ``attn`` is the mean over queries and heads (sums to 1 over a protein's real residues;
    all zero for a protein without residues).
    """

    def __init__(
        self, dim: int, n_queries: int = 4, n_heads: int = 4, dropout: float = 0.0,
        chunk: int = 4096,
    ):  # fmt: skip
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"residue dim {dim} is not divisible by model.n_heads={n_heads}")
        self.dim, self.n_queries, self.n_heads, self.chunk = dim, n_queries, n_heads, chunk
        self.head_dim = dim // n_heads
        self.queries = nn.Parameter(torch.randn(n_queries, n_heads, self.head_dim) * 0.02)
        self.key = nn.Linear(dim, dim, bias=False)  # a key bias would cancel in the softmax
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(n_queries * dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def residue_queries(self) -> torch.Tensor:
        """(Q*H, D): each query/head mapped into the residue space, scaled by 1/sqrt(dh)."""
        wk = self.key.weight.view(self.n_heads, self.head_dim, self.dim)  # (H, dh, D)
        q = torch.einsum("hjd,qhj->qhd", wk, self.queries)  # (Q, H, D)
        return q.reshape(-1, self.dim) / math.sqrt(self.head_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, chunk: int | None = None) -> dict:
        chunk = chunk or self.chunk
        B, L, _ = x.shape
        qk = self.residue_queries()  # (K, D), K = Q*H
        parts = [x[:, i : i + chunk].to(qk.dtype) @ qk.T for i in range(0, L, chunk)]
        scores = torch.cat(parts, dim=1) if parts else qk.new_zeros(B, 0, len(qk))  # (B, L, K)
        # finfo.min, not -inf: a protein without residues gets zeros instead of NaN (and NaN
        # gradients); for any other protein exp(min - max) is exactly 0.
        scores = scores.masked_fill(~mask[:, :, None], torch.finfo(scores.dtype).min)
        attn = torch.softmax(scores, dim=1) * mask[:, :, None]  # (B, L, K) over residues
        ctx = qk.new_zeros(B, len(qk), self.dim)  # (B, K, D): weighted mean residue per head
        for i in range(0, L, chunk):
            xi = x[:, i : i + chunk].to(qk.dtype)  # cast per chunk: fp16 store -> fp32 math
            ctx = ctx + torch.einsum("blk,bld->bkd", attn[:, i : i + chunk], xi)
        pooled = self._values(ctx)  # (B, D)
        attn = attn.transpose(1, 2)  # (B, K, L)
        return {"pooled": pooled, "attn": attn.mean(1), "attn_heads": attn}

    def _values(self, ctx: torch.Tensor) -> torch.Tensor:
        """(B, Q*H, D) averaged residues -> (B, D): per-head value map, concat, output map."""
        B = ctx.shape[0]
        ctx = ctx.view(B, self.n_queries, self.n_heads, self.dim)
        wv = self.value.weight.view(self.n_heads, self.head_dim, self.dim)  # (H, dh, D)
        bv = self.value.bias.view(self.n_heads, self.head_dim)
        v = torch.einsum("bqhd,hjd->bqhj", ctx, wv) + bv  # (B, Q, H, dh)
        v = v.reshape(B, self.n_queries * self.dim)  # heads concatenated per query
        return self.norm(self.out(self.dropout(v)))


class MeanPooling(nn.Module):
    """The plain masked mean of the residues (``model.pooling: mean``, the ablation of
    attention pooling): ``attn`` is uniform over the real residues."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor, chunk: int | None = None) -> dict:
        weights = mask.float() / mask.sum(1, keepdim=True).clamp(min=1)  # (B, L)
        pooled = torch.einsum("bl,bld->bd", weights, x.float())
        return {"pooled": pooled, "attn": weights, "attn_heads": weights[:, None]}


BATCH_RESIDUES = 16384  # padded residues a batch pools outside training (validation, predict)


def length_batches(lengths: Sequence[int], batch_residues: int = BATCH_RESIDUES
                   ) -> Iterator[list[int]]:  # fmt: skip
    """Protein indices sorted by length and packed up to ``batch_residues`` padded residues,
    so that pooling a batch pads little."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    return pack_by_tokens(order, batch_residues, key=lengths.__getitem__)


def pad_residues(arrays: list[np.ndarray], device) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L, D) fp32 zero-padded residues and (B, L) bool mask."""
    L = max(len(a) for a in arrays)
    x = torch.zeros(len(arrays), L, arrays[0].shape[1])
    mask = torch.zeros(len(arrays), L, dtype=torch.bool)
    for b, a in enumerate(arrays):
        x[b, : len(a)] = torch.from_numpy(np.asarray(a, dtype=np.float32))
        mask[b, : len(a)] = True
    return x.to(device), mask.to(device)
