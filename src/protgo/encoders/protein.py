"""The protein encoder: an ESM model (transformers) that turns sequences into per-residue vectors.

Long proteins are cut into overlapping windows of ``win_size`` residues every ``win_stride``
residues (the last window is aligned to the protein's end, so every window is full). Each
window is embedded with its own BOS/EOS tokens; then every residue takes its vector from the
window where it sits farthest from a window edge (ties: the earlier window). BOS/EOS and the
overlaps are trimmed, so a protein of L residues gives exactly L vectors, and a protein that
fits one window gives the same vectors as one plain forward pass.

Residues are checked and cleaned by :func:`protgo.data.sequence.clean_sequence` first.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from protgo import compute
from protgo.config import ResiduesConfig
from protgo.data.sequence import ESM_RESIDUES, clean_sequence
from protgo.errors import UserError
from protgo.resources import shipped_model, shipped_model_names


def window_starts(length: int, win_size: int, win_stride: int) -> list[int]:
    """Start residue of each window: every ``win_stride`` residues, the last aligned to the end."""
    if length <= win_size:
        return [0]
    starts = list(range(0, length - win_size, win_stride))
    starts.append(length - win_size)
    return starts


@dataclass(frozen=True)
class Segment:
    """Residues ``[lo, hi)`` of a protein, taken from the window that starts at ``start``."""

    start: int
    lo: int
    hi: int


@dataclass(frozen=True)
class Window:
    """One model input: ``n_tokens`` (residues + BOS/EOS) of sequence ``idx`` from ``start``,
    keeping ``segments`` of it."""

    n_tokens: int
    idx: int
    start: int
    segments: list[Segment]


def stitch_segments(length: int, win_size: int, win_stride: int) -> list[Segment]:
    """Which window each residue comes from: the one whose centre is nearest.

    For windows of equal size W, a residue's distance to the nearest edge of window k is
    ``(W-1)/2 - |i - centre_k|``, so "farthest from an edge" is "nearest centre", and each
    window keeps one contiguous run of residues. ``argmin`` breaks ties towards the earlier one.
    """
    starts = window_starts(length, win_size, win_stride)
    if len(starts) == 1:
        return [Segment(0, 0, length)]
    size = min(win_size, length)
    centres = np.asarray(starts, dtype=np.float64) + (size - 1) / 2
    best = np.abs(np.arange(length)[:, None] - centres[None, :]).argmin(axis=1)  # (L,)
    cuts = np.flatnonzero(np.diff(best)) + 1
    bounds = [0, *cuts.tolist(), length]
    return [
        Segment(starts[best[lo]], lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)
    ]


def resolve_model_dir(model: str) -> Path:
    """The directory of an ESM model given as a local directory, a model shipped with protgo
    (by name, e.g. ``protgo-esm-small``; see :mod:`protgo.resources`) or a hub id
    (``owner/name``: the local Hugging Face cache first, the network only when online).

    Nothing but an explicit ``owner/name`` ever reaches the hub, so a shipped model resolves
    the same from any working directory."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"model directory {path} has no config.json; is it a checkpoint?")
        return path.resolve()
    shipped = shipped_model(model, "plm")
    if shipped is not None:
        return shipped
    if not _is_hub_id(model):
        raise UserError(
            f"ESM model '{model}' not found: no such directory, and not a protein language "
            f"model shipped with protgo ({', '.join(shipped_model_names('plm')) or 'none'}; "
            "or unirep-64, unirep-256, unirep-1900). Pass a local checkpoint directory, a "
            "shipped model's name, a hub id such as facebook/esm2_t6_8M_UR50D, or train the "
            "project's own model with `protgo plm pretrain`."
        )
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.txt", "*.safetensors"]
    try:
        return Path(snapshot_download(model, local_files_only=True, allow_patterns=patterns))
    except Exception:
        pass
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")
    why = "HF_HUB_OFFLINE is set"
    if not offline:
        try:
            return Path(snapshot_download(model, allow_patterns=patterns))
        except Exception as exc:  # noqa: BLE001 - named in the error below
            why = f"fetching it failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    raise UserError(
        f"ESM model '{model}' not found: it is not a local directory, not a shipped model and "
        f"not in the Hugging Face cache ({why}). Pass a local checkpoint directory "
        "(--model DIR), a hub id such as facebook/esm2_t6_8M_UR50D with internet access "
        "(HF_HUB_OFFLINE unset), or train the project's own model with `protgo plm pretrain`."
    )


def _is_hub_id(model: str) -> bool:
    """``owner/name`` (one slash, no path-like start): what a hub id looks like."""
    parts = model.split("/")
    return len(parts) == 2 and all(parts) and not model.startswith((".", "~"))


def model_fingerprint(model_dir: Path) -> str:
    """Hash of config, vocabulary and weights, so a retrained model never reuses old vectors.

    Weight files contribute their size and first and last MiB (any retraining changes those
    bytes; hashing gigabytes of weights on every run would be slow)."""
    h = hashlib.sha256()
    for f in sorted(model_dir.iterdir()):
        if f.suffix not in (".json", ".txt", ".safetensors", ".bin") or not f.is_file():
            continue
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with f.open("rb") as fh:
            h.update(fh.read(1 << 20))
            if size > 2 << 20:
                fh.seek(size - (1 << 20))
                h.update(fh.read())
    return h.hexdigest()[:16]


def model_window(config) -> int:
    """Residues per window the model's positions allow: ESM-2 (1026 positions) gives 1022.

    Positions start at ``pad_token_id + 1``, and BOS and EOS take one position each."""
    return config.max_position_embeddings - config.pad_token_id - 1 - 2


def trained_window(model_dir: Path, limit: int) -> int:
    """The default window: the residues per crop a protgo-trained ESM saw in pretraining
    (``training.json`` beside its weights), else the model's whole ``limit``."""
    record = model_dir / "training.json"
    if not record.is_file():
        return limit
    try:
        max_len = json.loads(record.read_text())["config"]["model"]["max_len"]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{record} is damaged: copy the model folder again") from None
    return min(limit, int(max_len) - 2)


def describe_esm(cfg: ResiduesConfig) -> tuple[Path, dict]:
    """(ESM model directory, settings the vectors depend on), read from files without loading
    weights (:func:`protgo.encoders.registry.describe_model` dispatches here)."""
    from transformers import EsmConfig

    model_dir = resolve_model_dir(cfg.model)
    config = EsmConfig.from_pretrained(model_dir)
    limit = model_window(config)
    win_size, win_stride = resolve_window(cfg, limit, trained_window(model_dir, limit))
    return model_dir, {
        "model": cfg.model,
        "fingerprint": model_fingerprint(model_dir),
        "layer": resolve_layer(cfg.layer, config.num_hidden_layers),
        "win_size": win_size,
        "win_stride": win_stride,
        "dtype": compute.resolve_dtype(cfg.dtype, torch.device(cfg.device)),
        "dim": config.hidden_size,
    }


class ProteinEncoder:
    """An ESM model from a local directory or hub id, returning one layer's residue vectors.

    ``layer`` counts like fair-esm's ``repr_layers``: 0 is the embedding output, n (or -1) the
    last layer after the final layer norm. Layers above the chosen one are dropped, so an early
    layer costs less."""

    def __init__(self, cfg: ResiduesConfig):
        from transformers import EsmModel
        from transformers.utils import logging as hf_logging

        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.cfg = cfg
        self.model_dir, self._settings = describe_esm(cfg)
        self.layer, self.dim = self._settings["layer"], self._settings["dim"]
        self.win_size, self.win_stride = self._settings["win_size"], self._settings["win_stride"]
        verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()  # the dropped LM head is expected, not news
        hf_logging.disable_progress_bar()
        try:
            # safetensors only: a .bin weights file is a pickle, which could run code
            model = EsmModel.from_pretrained(
                self.model_dir, add_pooling_layer=False, use_safetensors=True
            )
        except (OSError, ValueError, RuntimeError) as exc:
            raise UserError(
                f"protein model {self.model_dir} cannot be loaded ({type(exc).__name__}): protgo "
                "refuses to load weights that are not safetensors (a .bin file is a pickle, "
                "which could run code) or that are damaged; use a checkpoint saved as "
                "safetensors"
            ) from None
        finally:
            hf_logging.set_verbosity(verbosity)
            if bars:
                hf_logging.enable_progress_bar()
        if self.layer < model.config.num_hidden_layers:
            model.encoder.layer = model.encoder.layer[: self.layer]
            model.encoder.emb_layer_norm_after = None  # fair-esm applies it to the last only
        self.dtype = self._settings["dtype"]
        self.device = torch.device(cfg.device)
        self.model = model.to(self.device).eval()  # fp32 weights; bf16 through autocast
        self._vocab = _load_vocab(self.model_dir)

    @property
    def model_id(self) -> str:
        return self.cfg.model

    def settings(self) -> dict:
        """What the vectors depend on; the residue store keys its directory on these."""
        return dict(self._settings)

    def tokenize(self, clean: str) -> list[int]:
        """Token ids of a cleaned sequence with BOS and EOS (ids from the model's vocab)."""
        v = self._vocab
        return [v["<cls>"], *(v[c] for c in clean), v["<eos>"]]

    def forward_windows(self, windows: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        """One padded batch of token windows -> each window's residue vectors (len-2, D), fp32."""
        lengths = [len(w) for w in windows]
        ids = torch.full((len(windows), max(lengths)), self._vocab["<pad>"], dtype=torch.long)
        for i, w in enumerate(windows):
            ids[i, : len(w)] = torch.as_tensor(w)
        mask = (ids != self._vocab["<pad>"]).long()
        with torch.inference_mode(), compute.autocast(self.dtype, self.device):
            out = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device))
        hidden = out.last_hidden_state.float().cpu()  # (B, T, D)
        return [hidden[i, 1 : n - 1] for i, n in enumerate(lengths)]  # BOS/EOS trimmed

    def embed(self, seq: str, pid: str = "sequence") -> torch.Tensor:
        """Stitched residue vectors of one sequence, (L, D) fp32 (the reference for the store)."""
        clean = clean_sequence(pid, seq)
        out = torch.empty(len(clean), self.dim)
        for _, seg, vec in self.embed_batched([clean], batch_tokens=self.cfg.batch_tokens):
            out[seg.lo : seg.hi] = vec
        return out

    def window_batches(self, cleans: Sequence[str], batch_tokens: int) -> list[list[Window]]:
        """Every window that keeps residues, sorted by length and packed up to ``batch_tokens``
        padded tokens per batch (sorting keeps padding small)."""
        jobs = []
        for idx, clean in enumerate(cleans):
            by_start: dict[int, list[Segment]] = {}
            for seg in stitch_segments(len(clean), self.win_size, self.win_stride):
                by_start.setdefault(seg.start, []).append(seg)
            n_tokens = min(self.win_size, len(clean)) + 2
            jobs += [Window(n_tokens, idx, start, segs) for start, segs in by_start.items()]
        jobs.sort(key=lambda w: w.n_tokens)
        return list(pack_by_tokens(jobs, batch_tokens, key=lambda w: w.n_tokens))

    def window_tokens(self, cleans: Sequence[str], w: Window) -> list[int]:
        return self.tokenize(cleans[w.idx][w.start : w.start + w.n_tokens - 2])

    def embed_batched(
        self, cleans: Sequence[str], batch_tokens: int, progress=None
    ) -> Iterator[tuple[int, Segment, torch.Tensor]]:
        """Yield (sequence index, segment, (hi-lo, D) vectors) covering every residue once."""
        for batch in self.window_batches(cleans, batch_tokens):
            vectors = self.forward_windows([self.window_tokens(cleans, w) for w in batch])
            for w, vecs in zip(batch, vectors, strict=True):
                for seg in w.segments:
                    yield w.idx, seg, vecs[seg.lo - w.start : seg.hi - w.start]
            if progress is not None:
                progress.update(sum(s.hi - s.lo for w in batch for s in w.segments))


def embed_arrays(encoder, cleans: Sequence[str], batch_tokens: int, progress=None) -> list:
    """Each cleaned sequence's (L, D) fp32 vectors, assembled from the segments any encoder's
    ``embed_batched`` yields (stitched windows for ESM, whole proteins for UniRep)."""
    arrays = [np.empty((len(c), encoder.dim), dtype=np.float32) for c in cleans]
    for idx, seg, vec in encoder.embed_batched(cleans, batch_tokens, progress):
        arrays[idx][seg.lo : seg.hi] = vec.numpy()
    return arrays


def pack_by_tokens(items: Sequence, batch_tokens: int, key, padded: bool = True) -> Iterator[list]:
    """Consecutive batches whose padded size (count x longest) stays within ``batch_tokens``,
    or with ``padded=False`` their summed size (for models that read packed batches).

    ``items`` are sorted by ``key`` ascending; an item longer than the budget goes alone."""
    batch: list = []
    total = 0
    for item in items:
        k = key(item)
        if batch and ((len(batch) + 1) * k if padded else total + k) > batch_tokens:
            yield batch
            batch, total = [], 0
        batch.append(item)
        total += k
    if batch:
        yield batch


def resolve_layer(layer: int, n_layers: int) -> int:
    resolved = layer + n_layers + 1 if layer < 0 else layer
    if not 0 <= resolved <= n_layers:
        raise UserError(
            f"residues.layer={layer} is out of range: the model has {n_layers} layers "
            f"(use 0..{n_layers}, or -1 for the last)"
        )
    return resolved


def resolve_window(cfg: ResiduesConfig, limit: int, default: int) -> tuple[int, int]:
    size = cfg.win_size or default
    if not 1 <= size <= limit:
        raise UserError(f"residues.win_size={size} must be between 1 and the model's {limit}")
    stride = cfg.win_stride or max(1, size * 3 // 4)
    if not 1 <= stride <= size:
        raise UserError(f"residues.win_stride={stride} must be between 1 and win_size={size}")
    return size, stride


def _load_vocab(model_dir: Path) -> dict[str, int]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    vocab = tok.get_vocab()
    missing = [t for t in ["<cls>", "<eos>", "<pad>", *sorted(ESM_RESIDUES)] if t not in vocab]
    if missing:
        raise UserError(f"tokenizer of {model_dir} lacks ESM tokens {missing}; is it an ESM model?")
    return vocab
