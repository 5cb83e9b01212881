"""The sections of a pretraining config (``protgo plm pretrain --config``): model, data,
train."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from protgo.config import Section


class PlmModelConfig(Section):
    layers: int = 4
    hidden: int = 128
    heads: int = 4
    ffn: int | None = None  # None: 4 * hidden, as in ESM-2
    max_len: int = 258  # tokens per crop, <cls> and <eos> included
    dropout: float = 0.0  # ESM-2 trains without dropout


class PlmDataConfig(Section):
    corpus: str = "swissprot-2014"  # dataset name, dataset folder or FASTA file
    exclude_datasets: list[str] = ["human-exp"]  # every protein of these, by id and sequence
    data_dir: Path | None = None  # None: $PROTGO_DATA or ~/.cache/protgo
    holdout_frac: float = Field(0.005, ge=0.0, lt=0.5)
    holdout_min: int = 300
    mask_prob: float = Field(0.15, gt=0.0, lt=1.0)
    # Train on this hash-chosen share of the training split (the hold-out is unchanged):
    # for a run too short to see the whole corpus, or a copy of the corpus that must be small.
    train_sample_frac: float = Field(1.0, gt=0.0, le=1.0)


class PlmTrainConfig(Section):
    max_steps: int = 10000
    stop_at_step: int | None = None  # stop early (schedule unchanged), e.g. to train in parts
    batch_tokens: int = 8192  # token budget per batch (padding included)
    lr: float = 1e-3
    min_lr_frac: float = 0.1  # cosine decay ends at lr * min_lr_frac
    warmup_steps: int = 200
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float | None = 1.0
    seed: int = 0
    threads: int | None = 2  # torch CPU threads; None leaves torch's default
    out_dir: Path = Path("runs/plm-small")
    export_dir: Path | None = None  # None: <out_dir>/model
    checkpoint_every_steps: int | None = None
    checkpoint_every_minutes: float | None = 10.0
    keep_last: int = 2  # step checkpoints kept in <out_dir>/checkpoints
    log_every: int = 20
    eval_sequences: int = 300  # held-out sequences scored at each checkpoint
    # Continue pretraining a saved EsmForMaskedLM (a directory or hub id) instead of starting
    # from random weights; the model section must describe its architecture.
    init_from: str | None = None
    compile: bool | None = None  # torch.compile the model; None: on CUDA only


class PlmConfig(Section):
    model: PlmModelConfig = Field(default_factory=PlmModelConfig)
    data: PlmDataConfig = Field(default_factory=PlmDataConfig)
    train: PlmTrainConfig = Field(default_factory=PlmTrainConfig)
