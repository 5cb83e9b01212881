"""Per-residue importance of a protein's top GO terms.

Two views, both on residue vectors already embedded (the protein encoder is not run again):

* ``attention``: the pooling attention (mean over queries and heads), one map per protein;
  it says where the model looks, whatever the term;
* ``masking`` (occlusion): each window of ``window`` residues is removed from the pooling mask
  in turn, and a residue's importance for a term is the mean drop of that term's cosine over
  the windows covering it. Term-specific, and the same operation the attribution loss trains
  (masking what matters must lower the positive score).

A protein of L residues costs about ``L / stride`` pooling passes; ``stride`` grows with L so
that at most ``max_windows`` windows are tried.
"""

from __future__ import annotations

import numpy as np
import torch

from protgo.model.aligner import ProtGoAligner


@torch.no_grad()
def attention_map(model: ProtGoAligner, residues: np.ndarray) -> np.ndarray:
    """(L,) pooling attention of one protein (sums to 1)."""
    x = torch.from_numpy(np.asarray(residues, dtype=np.float32))[None]  # (1, L, D)
    mask = torch.ones(1, len(residues), dtype=torch.bool)
    return model.encode_protein(x, mask)["attn"][0].numpy()


@torch.no_grad()
def masking_map(
    model: ProtGoAligner, residues: np.ndarray, go: torch.Tensor, window: int = 9,
    max_windows: int = 200, batch: int = 32,
) -> np.ndarray:  # fmt: skip
    """(K, L) drop of each term's cosine when the residues around each position are masked.

    ``go``: (K, A) projected unit GO vectors of the terms to explain."""
    L = len(residues)
    x = torch.from_numpy(np.asarray(residues, dtype=np.float32))[None]  # (1, L, D)
    full = torch.ones(1, L, dtype=torch.bool)
    base = model.encode_protein(x, full)["protein"] @ go.T  # (1, K)
    window = max(1, min(window, L - 1)) if L > 1 else 1
    stride = max(1, -(-(L - window + 1) // max_windows))
    starts = list(range(0, max(1, L - window + 1), stride))
    drop_sum = torch.zeros(len(go), L)
    count = torch.zeros(L)
    for i in range(0, len(starts), batch):
        chunk = starts[i : i + batch]
        mask = full.repeat(len(chunk), 1)  # (W, L)
        for b, s in enumerate(chunk):
            mask[b, s : s + window] = False
        prot = model.encode_protein(x.expand(len(chunk), -1, -1), mask)["protein"]  # (W, A)
        drop = base - prot @ go.T  # (W, K): positive where masking lowered the score
        for b, s in enumerate(chunk):
            drop_sum[:, s : s + window] += drop[b, :, None]
            count[s : s + window] += 1
    return (drop_sum / count.clamp(min=1)).numpy()


def explain(
    model: ProtGoAligner, residues: np.ndarray, go: torch.Tensor, go_ids: list[str],
    window: int = 9,
) -> dict:  # fmt: skip
    """JSON-ready attributions of one protein: attention and masking map per term."""
    attn = attention_map(model, residues)
    occl = masking_map(model, residues, go, window)
    return {
        # 4 significant digits: attention is ~1/L, so fixed decimals would flatten long proteins
        "attention": [float(f"{v:.4g}") for v in attn],
        "masking": {g: [float(f"{v:.4g}") for v in occl[k]] for k, g in enumerate(go_ids)},
        "window": window,
    }
