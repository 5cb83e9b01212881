"""The term-head stage: per-term residuals and offsets refitted on frozen proteins.

During the main epochs the binary loss scores ``loss.bce_max_terms`` terms a step (the batch's
own and a random sample of the rest), so a term's residual is pushed towards its negatives in a
fraction of the steps only. After the last epoch, with the encoders frozen at the best epoch,
the protein vectors of the training proteins are fixed: this stage then fits the residuals and
offsets (:class:`protgo.model.aligner.ProtGoAligner`) of the chosen terms (the trainer's
``train.head_terms``) with binary cross-entropy over all of them at every step, a few passes
of Adam, their residuals decayed towards zero as AdamW would. It is a linear probe on the
aligned space, started from the jointly trained head. Every other row of the table is left as
it is, and terms without a training positive have no row, so zero-shot scores do not change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from protgo.model.aligner import ProtGoAligner
from protgo.model.losses import binary_term_loss


def refit_term_head(
    model: ProtGoAligner,
    proteins: torch.Tensor,
    positives: Sequence[np.ndarray],
    go_text: torch.Tensor,
    rows: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    weight_decay: float,
    batch_size: int = 256,
    seed: int = 0,
    after_epoch: Callable[[int], None] | None = None,
) -> None:
    """Fit ``model``'s residuals and offsets in place.

    ``proteins`` (N, A): the training proteins' aligned vectors (eval mode); ``positives``:
    per protein, the columns of its propagated annotations among the terms; ``go_text``
    (T, Dt): the terms' text vectors; ``rows`` (T,): their rows in the residual table (every
    one >= 0). ``after_epoch(k)`` runs after pass ``k`` (1-based)."""
    if model.term_residual is None:
        raise ValueError("the model has no per-term residuals (model.term_residual)")
    if bool((rows < 0).any()):
        raise ValueError("every refitted term needs a row in the residual table")
    device = model.term_residual.device
    frozen = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(p is model.term_residual or p is model.term_offset)
    rows = rows.to(device)
    # AdamW's decay, applied by hand to the refitted rows only (the optimiser's own would
    # shrink every row of the table, the terms left out included); none on the offsets
    optimizer = torch.optim.AdamW([model.term_residual, model.term_offset], lr=lr,
                                  weight_decay=0.0)  # fmt: skip
    decay = 1.0 - lr * weight_decay
    gen = torch.Generator().manual_seed(seed)
    try:
        with torch.no_grad():
            go = model.encode_go(go_text.to(device))  # (T, A), fixed: the GO head is frozen
        for k in range(1, epochs + 1):
            for idx in torch.randperm(len(proteins), generator=gen).split(batch_size):
                truth = torch.zeros(len(idx), len(rows), dtype=torch.bool)
                for b, i in enumerate(idx.tolist()):
                    truth[b, positives[i]] = True
                logits = model.term_logits(proteins[idx].to(device), go, go_text, rows)
                loss = binary_term_loss(logits, truth.to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    model.term_residual[rows] *= decay
            if after_epoch is not None:
                after_epoch(k)
    finally:
        for p, was in frozen.items():
            p.requires_grad_(was)
