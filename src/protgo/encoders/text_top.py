"""The top layers of the GO text encoder, trainable (``go_text.tune_layers``).

The encoder's lower layers stay frozen. Their token states for every text of a phase are
computed once (:func:`lower_states`), so a training step runs only the top ``k`` layers, and
only for the batch's texts: the text tower learns at the cost of ``k`` layers. Pooling and L2
normalisation are the encoder's own, so before any step :class:`TextTop` (in eval mode) gives
the frozen encoder's vectors. The layers are copies: the encoder itself is never changed.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from protgo.encoders.text import TextEncoder, pool
from protgo.errors import UserError
from protgo.io import progress_bar


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks of a BERT-style encoder (``model.encoder.layer``)."""
    layers = getattr(getattr(model, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList):
        raise UserError(
            f"go_text.tune_layers needs a BERT-style text encoder (blocks in encoder.layer); "
            f"{type(model).__name__} has none: set go_text.tune_layers=0"
        )
    return layers


@dataclass
class LowerStates:
    """Every text's token states below the tuned layers, one text after the other."""

    states: torch.Tensor  # (T, D) bf16: all tokens of all texts
    offsets: np.ndarray  # (N + 1,) text i is states[offsets[i]:offsets[i + 1]]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def batch(self, rows: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, D) float32 states of ``rows``, zero-padded, and the (B, L) mask."""
        rows = [int(r) for r in rows]
        n = self.lengths()[rows]
        states = torch.zeros(len(rows), int(n.max()), self.states.shape[1])
        mask = torch.zeros(len(rows), int(n.max()), dtype=torch.long)
        for b, r in enumerate(rows):
            a, z = self.offsets[r], self.offsets[r + 1]
            states[b, : z - a] = self.states[a:z].float()
            mask[b, : z - a] = 1
        return states, mask


@torch.inference_mode()
def lower_states(
    encoder: TextEncoder, input_ids: Sequence[Sequence[int]], k: int, batch_size: int = 64,
    progress: bool = True,
) -> LowerStates:  # fmt: skip
    """The token states entering the top ``k`` blocks, for every text (bf16, so all of GO's
    texts fit in a few GB)."""
    n_layers = len(encoder_layers(encoder.model))
    model, context = encoder._forward()
    lengths = np.array([len(x) for x in input_ids])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    states = torch.empty(int(offsets[-1]), encoder.dim, dtype=torch.bfloat16)
    order = np.argsort(lengths, kind="stable")[::-1]
    bar = progress_bar(total=len(order), desc="GO text states", unit="text", disable=not progress)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch = encoder.tokenizer.pad(
            {"input_ids": [list(input_ids[i]) for i in rows]}, return_tensors="pt"
        )
        batch = {key: v.to(encoder.device) for key, v in batch.items()}
        with context:
            hidden = model(**batch, output_hidden_states=True).hidden_states[n_layers - k]
        hidden = hidden.to("cpu", torch.bfloat16)
        for b, i in enumerate(rows):
            states[offsets[i] : offsets[i + 1]] = hidden[b, : lengths[i]]
        bar.update(len(rows))
    bar.close()
    return LowerStates(states, offsets)


class TextTop(nn.Module):
    """Copies of the encoder's top ``k`` blocks, its pooling and L2 normalisation."""

    def __init__(self, encoder: TextEncoder, k: int):
        super().__init__()
        layers = encoder_layers(encoder.model)
        if not 1 <= k <= len(layers):
            raise UserError(
                f"go_text.tune_layers={k}, but text encoder {encoder.name} has {len(layers)} "
                f"layers: choose 1 to {len(layers)} (or 0 to keep it frozen)"
            )
        if encoder.quantized:
            raise UserError(
                "go_text.tune_layers trains fp32 layers: set go_text.quantize_int8=false"
            )
        self.layers = nn.ModuleList(copy.deepcopy(b) for b in layers[len(layers) - k :])
        self.layers.float().requires_grad_(True)
        self.config = encoder.model.config
        self.pooling = encoder.pooling
        self.train()  # the encoder's blocks are in eval mode: dropout on while they train

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, L, D) lower states + (B, L) mask -> (B, D) L2-normalised text vectors."""
        from transformers.masking_utils import create_bidirectional_mask

        attention = create_bidirectional_mask(
            config=self.config, inputs_embeds=states, attention_mask=mask
        )
        hidden = states
        for layer in self.layers:
            hidden = layer(hidden, attention)
        return nn.functional.normalize(pool(hidden, mask, self.pooling), dim=-1)

    @torch.no_grad()
    def encode(self, lower: LowerStates, batch_size: int = 64) -> np.ndarray:
        """(N, D) float32 vectors of every text of ``lower``, in eval mode (no dropout)."""
        was = self.training
        self.eval()
        device = next(self.parameters()).device
        out = np.zeros((len(lower), self.config.hidden_size), dtype=np.float32)
        order = np.argsort(lower.lengths(), kind="stable")[::-1]
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            states, mask = lower.batch(rows)
            out[rows] = self(states.to(device), mask.to(device)).cpu().numpy()
        self.train(was)
        return out
