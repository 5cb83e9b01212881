"""Masked-LM pretraining of a small ESM-2-architecture model (``protgo plm pretrain``).

ESM-2's recipe at small scale: 15% masking with 80/10/10 replacement, random crops to the
maximum length, token-budget batches, AdamW with linear warm-up then cosine decay. Mixed
precision and ``torch.compile`` only when CUDA is present; several GPUs through ``torchrun``
(DDP). Each checkpoint also exports the model in final, shippable form (fp16 safetensors,
tokenizer, TRAINING.md), so the latest export can always be committed.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import Field
from tqdm import tqdm

from protgo.config import Section, TrackingConfig, default_data_dir, dump_config
from protgo.encoders.esm_vocab import ESM2_VOCAB, make_esm2_tokenizer
from protgo.encoders.protein import resolve_model_dir
from protgo.errors import UserError
from protgo.io import atomic_write_text, progress_bar
from protgo.model.checkpoints import atomic_torch_save, safe_torch_load
from protgo.plm import corpus as mc
from protgo.train import distributed
from protgo.train.optim import adamw
from protgo.train.schedule import warmup_cosine_factor
from protgo.train.tracking import Tracker

SCHEMA_VERSION = 1


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


def build_model(cfg: PlmModelConfig):
    """A randomly initialised ``EsmForMaskedLM`` with ESM-2's vocabulary and rotary positions."""
    from transformers import EsmConfig, EsmForMaskedLM

    config = EsmConfig(
        vocab_size=len(ESM2_VOCAB), hidden_size=cfg.hidden, num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads, intermediate_size=cfg.ffn or 4 * cfg.hidden,
        max_position_embeddings=1026, position_embedding_type="rotary",
        pad_token_id=mc.PAD, mask_token_id=mc.MASK, token_dropout=True,
        emb_layer_norm_before=False, layer_norm_eps=1e-5, hidden_dropout_prob=cfg.dropout,
        attention_probs_dropout_prob=cfg.dropout,
    )  # fmt: skip
    return EsmForMaskedLM(config)


def load_init_model(source: str, cfg: PlmModelConfig):
    """A saved ``EsmForMaskedLM`` to continue from; its architecture must match ``cfg``."""
    from transformers import EsmForMaskedLM

    try:
        model = EsmForMaskedLM.from_pretrained(
            resolve_model_dir(source), dtype=torch.float32, use_safetensors=True
        )
    except OSError as err:
        msg = f"train.init_from: cannot load an ESM masked LM from '{source}' ({err})"
        raise UserError(msg) from None
    c = model.config
    have = {"layers": c.num_hidden_layers, "hidden": c.hidden_size,
            "heads": c.num_attention_heads, "ffn": c.intermediate_size}  # fmt: skip
    want = {"layers": cfg.layers, "hidden": cfg.hidden, "heads": cfg.heads,
            "ffn": cfg.ffn or 4 * cfg.hidden}  # fmt: skip
    if have != want or c.vocab_size != len(ESM2_VOCAB):
        wrong = ", ".join(f"model.{k}={have[k]}" for k in have if have[k] != want[k])
        raise UserError(
            f"train.init_from '{source}' does not match the config: set {wrong or 'its vocab'} "
            "(ESM-2 vocabulary of 33 tokens required)"
        )
    return model


def _prior_training(source: str) -> tuple[int, float]:
    """Tokens seen and wall seconds recorded in ``source/training.json`` (0, 0 if none)."""
    info = Path(source) / "training.json"
    if not info.is_file():
        return 0, 0.0
    state = json.loads(info.read_text())["state"]
    tokens = state.get("init_tokens", 0) + state["tokens_seen"]
    return int(tokens), float(state.get("init_wall_s", 0.0) + state["wall_s"])


def warmup_cosine_lr(optimizer, base_lr: float, warmup: int, total: int, min_frac: float):
    """A step function setting the lr (:func:`protgo.train.schedule.warmup_cosine_factor`)."""

    def step_fn(step: int) -> float:
        lr = base_lr * warmup_cosine_factor(step, warmup, total, min_frac)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    return step_fn


def make_optimizer(model, cfg: PlmTrainConfig) -> torch.optim.AdamW:
    return adamw(model, cfg.lr, cfg.weight_decay, tuple(cfg.betas))


@dataclass
class Corpus:
    train: mc.TokenCorpus
    heldout: mc.TokenCorpus
    n_excluded: int
    source: str
    excluded_from: list[str]


def load_corpus(cfg: PlmDataConfig, exclude_ids: Path | None = None) -> Corpus:
    """Corpus minus the excluded datasets (by id and sequence) and ids, split train/held-out."""
    data_dir = cfg.data_dir.expanduser() if cfg.data_dir else default_data_dir()
    fasta = mc.resolve_fasta(cfg.corpus, data_dir)
    excl_fastas = [mc.resolve_fasta(name, data_dir) for name in cfg.exclude_datasets]
    extra = mc.read_id_file(exclude_ids) if exclude_ids else set()
    exclusion = mc.Exclusion.build(excl_fastas, extra)
    train, held, n_ex = mc.split_corpus(
        fasta, exclusion, cfg.holdout_frac, cfg.holdout_min, cfg.train_sample_frac
    )
    sources = [_shown(p, data_dir) for p in excl_fastas]
    sources += [str(exclude_ids)] if exclude_ids else []
    return Corpus(train, held, n_ex, _shown(fasta, data_dir), sources)


def _shown(path: Path, data_dir: Path) -> str:
    """A path as the model card shows it: relative to the data directory where it lies there
    (``<data>/datasets/swissprot-2014/proteins.fasta``), so cards do not carry home folders."""
    try:
        return f"<data>/{Path(path).resolve().relative_to(data_dir.resolve())}"
    except ValueError:
        return str(path)


@dataclass
class TrainState:
    """Where training stands; with the RNG states it makes a resume exact."""

    step: int = 0
    epoch: int = 0
    pos: int = 0  # index into this epoch's sequence order
    tokens_seen: int = 0  # residue tokens (no padding) passed through the model
    wall_s: float = 0.0  # training wall time over all sessions
    last_eval: dict | None = None
    corpus_sizes: list[int] | None = None  # [train, held-out, excluded] when last saved
    init_tokens: int = 0  # tokens seen by the train.init_from model before this run
    init_wall_s: float = 0.0  # and its training wall time


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


class BatchStream:
    """Token-budget batches of cropped sequences in a seeded order, resumable by position."""

    def __init__(self, corpus: mc.TokenCorpus, cfg: PlmConfig, state: TrainState, gen):
        self.corpus, self.cfg, self.state, self.gen = corpus, cfg, state, gen
        self.order = epoch_order(len(corpus), cfg.train.seed, state.epoch)

    def next(self, rank: int = 0, world: int = 1) -> torch.Tensor:
        """(B, L) token ids; under DDP each rank takes every ``world``-th batch (the ids depend
        only on the order and position, so ranks agree without talking)."""
        for r in range(world):
            ids = self._next_ids()
            if r == rank:
                mine = ids
        return mc.pad_batch([self._crop(i) for i in mine])

    def _next_ids(self) -> list[int]:
        st, m = self.state, self.cfg.model
        if st.pos >= len(self.order):
            st.epoch, st.pos = st.epoch + 1, 0
            self.order = epoch_order(len(self.corpus), self.cfg.train.seed, st.epoch)
        ids, st.pos = mc.next_batch_ids(
            self.corpus, self.order, st.pos, m.max_len, self.cfg.train.batch_tokens
        )
        return ids

    def _crop(self, i: int) -> torch.Tensor:
        return mc.crop_and_wrap(self.corpus.residues(i), self.cfg.model.max_len, self.gen)


@torch.no_grad()
def evaluate_mlm(
    model,
    held: mc.TokenCorpus,
    unigram: np.ndarray,
    max_len: int,
    n_seqs: int,
    batch_tokens: int = 8192,
    mask_prob: float = 0.15,
) -> dict:
    """Masked-token perplexity on held-out sequences next to the unigram perplexity.

    Crops and masks come from a fixed seed, so figures from different steps compare. Every
    chosen residue becomes <mask> (no 80/10/10 at evaluation).
    """
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(1234)
    device = next(model.parameters()).device
    log_uni = torch.from_numpy(np.log(np.maximum(unigram, 1e-12)))
    n = min(n_seqs, len(held))
    order = np.arange(n)
    nll = nll_uni = count = 0.0
    pos = 0
    while pos < n:
        ids, pos = mc.next_batch_ids(held, order, pos, max_len, batch_tokens)
        tokens = mc.pad_batch([mc.crop_and_wrap(held.residues(i), max_len, gen) for i in ids])
        inputs, labels = mc.mask_tokens(tokens, gen, mask_prob, eval_mode=True)
        attn = (tokens != mc.PAD).long()
        logits = model(input_ids=inputs.to(device), attention_mask=attn.to(device)).logits
        target = labels != -100  # (B, L)
        logp = torch.log_softmax(logits.float().cpu(), dim=-1)[target]  # (T, V)
        nll += float(-logp.gather(1, labels[target][:, None]).sum())
        nll_uni += float(-log_uni[labels[target]].sum())
        count += int(target.sum())
    model.train(was_training)
    count = max(count, 1)
    return {
        "heldout_ppl": math.exp(nll / count),
        "unigram_ppl": math.exp(nll_uni / count),
        "eval_tokens": int(count),
        "eval_sequences": int(n),
    }


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, model, optimizer, state: TrainState, gen, cfg: PlmConfig) -> None:
    atomic_torch_save(
        {
            "schema_version": SCHEMA_VERSION,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": {"step": state.step},  # the lr is a pure function of the step
            "state": asdict(state),
            "data_rng": gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "config": cfg.model_dump(mode="json"),
        },
        path,
    )


def load_checkpoint(path: Path, model, optimizer, gen) -> TrainState:
    if not path.is_file():
        raise UserError(f"--resume: no checkpoint at {path}; start without --resume")
    ckpt = safe_torch_load(path, "PLM checkpoint")
    if not isinstance(ckpt, dict) or ckpt.get("schema_version") != SCHEMA_VERSION:
        raise UserError(
            f"checkpoint {path} has schema "
            f"{ckpt.get('schema_version') if isinstance(ckpt, dict) else None}, "
            f"expected {SCHEMA_VERSION}; start a new run in another out_dir"
        )
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    gen.set_state(ckpt["data_rng"])
    torch.set_rng_state(ckpt["torch_rng"])
    return TrainState(**ckpt["state"])


# ----------------------------------------------------------------------------- export


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


# ----------------------------------------------------------------------------- training


@dataclass
class Runtime:
    """Device and DDP placement: rank 0 alone logs, evaluates, checkpoints and exports."""

    device: torch.device
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_runtime(threads: int | None) -> Runtime:
    if threads:
        torch.set_num_threads(threads)
    rank, world = distributed.init()
    device = distributed.device_for("cuda" if torch.cuda.is_available() else "cpu", world)
    return Runtime(device, rank, world)


def wrap_for_speed(model, rt: Runtime, compile_model: bool | None = None):
    """DDP across ranks; ``compile_model`` None compiles on CUDA only (on CPU it costs more
    than it gives; on a short GPU run its compile time can too)."""
    fwd = distributed.wrap(model, rt.world, rt.device)
    if compile_model is None:
        compile_model = rt.device.type == "cuda"
    return torch.compile(fwd) if compile_model else fwd


def train_step(fwd, model, optimizer, tokens: torch.Tensor, gen, cfg: PlmConfig, rt: Runtime):
    """One masked-LM update on (B, L) token ids -> (loss, masked tokens, residue tokens).

    The loss comes back as a tensor on the device, unread: reading it would wait for the GPU,
    and without that wait the next batch is prepared on the CPU while this step computes."""
    inputs, labels = mc.mask_tokens(tokens, gen, cfg.data.mask_prob)
    n_mask = int((labels != -100).sum())
    n_res = int((tokens >= mc.AA_LOW).sum())
    if n_mask == 0:  # a batch of tiny sequences may draw no target; nothing to learn from
        return torch.tensor(float("nan")), 0, n_res
    attn = (tokens != mc.PAD).long()
    dev = rt.device
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
        out = fwd(input_ids=inputs.to(dev), attention_mask=attn.to(dev), labels=labels.to(dev))
    out.loss.backward()
    if cfg.train.grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return out.loss.detach(), n_mask, n_res


@dataclass
class Window:
    """Running sums between two log lines."""

    loss_sum: float | torch.Tensor = 0.0  # a device tensor until read at the log line
    n_mask: int = 0
    n_res: int = 0
    t0: float = 0.0

    def record(self, step: int, lr: float, tokens_seen: int) -> dict:
        loss = float(self.loss_sum) / max(self.n_mask, 1)
        dt = max(time.time() - self.t0, 1e-9)
        return {"step": step, "loss": loss, "ppl": math.exp(min(loss, 50.0)),
                "tokens_per_s": self.n_res / dt, "lr": lr, "tokens_seen": tokens_seen}  # fmt: skip


def pretrain(cfg: PlmConfig, exclude_ids: Path | None = None, resume: bool = False) -> TrainState:
    """Train (or resume) per ``cfg``; returns the final state. Writes into ``cfg.train.out_dir``:
    checkpoint.pt, metrics.jsonl, config.yaml; and the shippable model into the export dir."""
    rt = setup_runtime(cfg.train.threads)
    torch.manual_seed(cfg.train.seed)
    corpus = load_corpus(cfg.data, exclude_ids)
    init = None if resume else cfg.train.init_from  # a resume takes its weights from the checkpoint
    model = load_init_model(init, cfg.model) if init else build_model(cfg.model)
    model = model.to(rt.device)
    optimizer = make_optimizer(model, cfg.train)
    gen = torch.Generator().manual_seed(cfg.train.seed + rt.rank)
    out = Path(cfg.train.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint.pt"
    if resume:
        state = load_checkpoint(ckpt, model, optimizer, gen)
    else:
        state = TrainState()
        if init:
            state.init_tokens, state.init_wall_s = _prior_training(init)
    sizes = [len(corpus.train), len(corpus.heldout), corpus.n_excluded]
    if state.corpus_sizes and state.corpus_sizes != sizes and rt.main:
        # A rebuilt corpus or exclusion list changes the epoch order: the resume stays valid
        # but is no longer exact (some sequences of this epoch may be seen twice or skipped).
        tqdm.write(f"warning: corpus changed since the checkpoint ({state.corpus_sizes} -> "
                   f"{sizes} train/held-out/excluded sequences); resuming anyway")  # fmt: skip
    state.corpus_sizes = sizes
    if rt.main:
        atomic_write_text(out / "config.yaml", dump_config(cfg))
        if not resume:
            (out / "metrics.jsonl").unlink(missing_ok=True)  # a fresh run's own records only
    # the tracker both trainers log through: metrics.jsonl (a resume drops records past the
    # checkpoint, a torn last line included)
    log = Tracker(out, TrackingConfig(wandb="disabled"), rank=rt.rank,
                  resume_step=state.step if resume else None)  # fmt: skip
    fwd = wrap_for_speed(model, rt, cfg.train.compile)
    run = _Run(cfg, model, fwd, optimizer, corpus, gen, state, rt, log)
    try:
        run.loop()
    finally:
        log.close()
    return state


@dataclass
class _Run:
    cfg: PlmConfig
    model: torch.nn.Module
    fwd: torch.nn.Module
    optimizer: torch.optim.Optimizer
    corpus: Corpus
    gen: torch.Generator
    state: TrainState
    rt: Runtime
    log: Tracker

    def loop(self) -> None:
        t, st = self.cfg.train, self.state
        lr_at = warmup_cosine_lr(self.optimizer, t.lr, t.warmup_steps, t.max_steps, t.min_lr_frac)
        stream = BatchStream(self.corpus.train, self.cfg, st, self.gen)
        stop = min(t.max_steps, t.stop_at_step or t.max_steps)
        self.session_t0, self.wall0, self.last_ckpt = time.time(), st.wall_s, time.time()
        bar = progress_bar(total=stop, initial=st.step, disable=not self.rt.main,
                           desc="plm pretrain", unit="step",
                           mininterval=1.0 if os.isatty(2) else 30.0)  # fmt: skip
        win = Window(t0=time.time())
        self.model.train()
        while st.step < stop:
            lr = lr_at(st.step)
            tokens = stream.next(self.rt.rank, self.rt.world)  # (B, L)
            loss, n_mask, n_res = train_step(
                self.fwd, self.model, self.optimizer, tokens, self.gen, self.cfg, self.rt
            )
            st.step += 1
            st.tokens_seen += n_res * self.rt.world
            if n_mask:
                win.loss_sum, win.n_mask = win.loss_sum + loss * n_mask, win.n_mask + n_mask
            win.n_res += n_res
            bar.update(1)
            if st.step % t.log_every == 0 or st.step == stop:
                rec = win.record(st.step, lr, st.tokens_seen)
                bar.set_postfix(loss=f"{rec['loss']:.3f}", tok_s=f"{rec['tokens_per_s']:.0f}")
                self.log.log(rec, st.step)
                win = Window(t0=time.time())
            if self._checkpoint_due() or st.step == stop:
                self.checkpoint()
        bar.close()

    def _checkpoint_due(self) -> bool:
        t = self.cfg.train
        by_steps = (
            bool(t.checkpoint_every_steps) and self.state.step % t.checkpoint_every_steps == 0
        )
        minutes = t.checkpoint_every_minutes
        by_time = bool(minutes) and time.time() - self.last_ckpt >= 60 * minutes
        return by_steps or by_time

    def checkpoint(self) -> None:
        """Evaluate, save the resumable checkpoint, then export the shippable model."""
        self.last_ckpt = time.time()
        if not self.rt.main:
            return
        st, t = self.state, self.cfg.train
        st.wall_s = self.wall0 + time.time() - self.session_t0
        st.last_eval = evaluate_mlm(
            self.model, self.corpus.heldout, self.corpus.train.unigram(), self.cfg.model.max_len,
            t.eval_sequences, t.batch_tokens, self.cfg.data.mask_prob,
        )  # fmt: skip
        self.log.log({"tokens_seen": st.tokens_seen, **st.last_eval}, st.step, kind="valid")
        save_checkpoint(Path(t.out_dir) / "checkpoint.pt", self.model, self.optimizer, st,
                        self.gen, self.cfg)  # fmt: skip
        export_model(self.model, t.export_dir or Path(t.out_dir) / "model", self.cfg,
                     self.corpus, st)  # fmt: skip
        tqdm.write(f"step {st.step}: held-out ppl {st.last_eval['heldout_ppl']:.2f} "
                   f"(unigram {st.last_eval['unigram_ppl']:.2f}); exported")  # fmt: skip


def evaluate_model_dir(
    model_dir: Path, fasta: Path | None = None, n_seqs: int = 1000, threads: int | None = 2
) -> dict:
    """Held-out perplexity of a saved model next to the unigram perplexity.

    Without ``fasta`` the held-out split is rebuilt from the training config the export
    carries (training.json), with the unigram from the training split; with ``fasta`` all its
    sequences are scored, against their own unigram (a slightly optimistic baseline).
    """
    from transformers import EsmForMaskedLM

    model_dir = resolve_model_dir(str(model_dir))
    if threads:
        torch.set_num_threads(threads)
    model = EsmForMaskedLM.from_pretrained(model_dir, dtype=torch.float32, use_safetensors=True)
    info_path = model_dir / "training.json"
    if fasta is not None:
        records = list(mc.iter_fasta(fasta))
        held = mc.TokenCorpus.from_records(records)
        unigram, max_len = held.unigram(), 1024
    elif info_path.is_file():
        cfg = PlmConfig.model_validate(json.loads(info_path.read_text())["config"])
        corpus = load_corpus(cfg.data)
        held, unigram, max_len = corpus.heldout, corpus.train.unigram(), cfg.model.max_len
    else:
        raise UserError(f"{model_dir} has no training.json; pass --fasta with sequences to score")
    return evaluate_mlm(model, held, unigram, max_len, n_seqs)
