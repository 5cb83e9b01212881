"""A pretrained model in shippable form: fp16 safetensors, the ESM-2 tokenizer, ``TRAINING.md``
(the model card) and ``training.json``, replaced whole at each checkpoint."""

from __future__ import annotations

import json
import os
import platform
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from protgo.encoders.esm_vocab import make_esm2_tokenizer
from protgo.io import atomic_write_text
from protgo.plm.config import PlmConfig
from protgo.plm.corpus import Corpus

if TYPE_CHECKING:
    from protgo.plm.pretrain import TrainState


def _hardware() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    threads = torch.get_num_threads()
    return f"CPU ({platform.processor() or platform.machine()}), {threads} thread(s)"


def training_md(cfg: PlmConfig, corpus: Corpus, state: TrainState, n_params: int) -> str:
    ev = state.last_eval or {}
    ppl = f"{ev['heldout_ppl']:.2f}" if ev else "n/a"
    uni = f"{ev['unigram_ppl']:.2f}" if ev else "n/a"
    m = cfg.model
    return f"""# protgo-esm (masked-LM pretrained by `protgo plm pretrain`)

ESM-2 architecture (transformers `EsmForMaskedLM`, rotary positions, ESM-2 vocabulary and
tokenizer): {m.layers} layers, {m.hidden} dims, {m.heads} heads, {n_params / 1e6:.2f}M parameters.
Weights are stored in fp16; load with `EsmModel.from_pretrained(dir)` or `EsmForMaskedLM`.

## Data
- Corpus: `{corpus.source}` (`<data>`: $PROTGO_DATA or ~/.cache/protgo):
  {len(corpus.train)} training sequences{_sampled(cfg)},
  {len(corpus.heldout)} held out (fixed hash-based share {cfg.data.holdout_frac}).
- Excluded by accession and by exact sequence ({corpus.n_excluded} removed):
  {", ".join(f"`{s}`" for s in corpus.excluded_from) or "nothing"}.
- Masking: {cfg.data.mask_prob:.0%} of residues, 80% <mask> / 10% random / 10% unchanged;
  random crops of {m.max_len - 2} residues.

## Training
- Steps: {state.step} of {cfg.train.max_steps}; tokens seen: {state.tokens_seen:,}
  (residues, padding excluded); epoch {state.epoch}.{_continued(cfg, state)}
- Optimiser: AdamW lr {cfg.train.lr}, betas {tuple(cfg.train.betas)}, weight decay
  {cfg.train.weight_decay}, {cfg.train.warmup_steps} warm-up steps then cosine decay to
  {cfg.train.min_lr_frac} x lr; token budget {cfg.train.batch_tokens} per batch.
- Hardware: {_hardware()}; wall time {state.wall_s / 3600:.2f} h
  ({(state.init_wall_s + state.wall_s) / 3600:.2f} h in all).

## Held-out masked-token perplexity
- Model: {ppl}; amino-acid unigram: {uni}
  ({ev.get("eval_tokens", 0)} masked tokens in {ev.get("eval_sequences", 0)} held-out sequences;
  every masked residue replaced by <mask>).

Reproduce: `protgo plm pretrain --config <config>`; evaluate: `protgo plm evaluate --model DIR`.
"""


def _sampled(cfg: PlmConfig) -> str:
    frac = cfg.data.train_sample_frac
    return "" if frac >= 1.0 else f" (a hash-chosen {frac:.0%} of the training split)"


def _continued(cfg: PlmConfig, state: TrainState) -> str:
    if not cfg.train.init_from:
        return ""
    return (
        f"\n- Continued from `{cfg.train.init_from}`, which had seen {state.init_tokens:,} "
        f"tokens:\n  {state.init_tokens + state.tokens_seen:,} tokens in all."
    )


def export_model(model, directory: Path, cfg: PlmConfig, corpus: Corpus, state: TrainState) -> None:
    """Write the shippable directory next to the old one, then swap it in (never half-written)."""
    import copy

    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    half = copy.deepcopy(model).to("cpu", torch.float16)
    half.save_pretrained(tmp)
    # Weights stay fp16 on disk, but the config says fp32 so a plain from_pretrained computes
    # in fp32 on CPU (fp16 matmuls on CPU are slow and lossy).
    conf = json.loads((tmp / "config.json").read_text())
    conf["dtype"] = "float32"
    atomic_write_text(tmp / "config.json", json.dumps(conf, indent=2) + "\n")
    make_esm2_tokenizer(tmp).save_pretrained(tmp)
    n_params = sum(p.numel() for p in model.parameters())
    card = training_md(cfg, corpus, state, n_params)
    size_mb = (tmp / "model.safetensors").stat().st_size / 1e6
    card += f"\nFiles: model.safetensors {size_mb:.1f} MB (fp16).\n"
    atomic_write_text(tmp / "TRAINING.md", card)
    info = {"config": cfg.model_dump(mode="json"), "state": asdict(state), "corpus": corpus.source,
            "excluded_from": corpus.excluded_from, "n_params": n_params}  # fmt: skip
    atomic_write_text(tmp / "training.json", json.dumps(info, indent=2) + "\n")
    old = directory.with_name(directory.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)
