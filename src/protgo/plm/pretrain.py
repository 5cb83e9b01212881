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
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from protgo.config import TrackingConfig, dump_config
from protgo.encoders.esm_vocab import ESM2_VOCAB
from protgo.encoders.protein import resolve_model_dir
from protgo.errors import UserError
from protgo.io import atomic_write_text, progress_bar
from protgo.model.checkpoints import CheckpointManager, rng_state, set_rng_state
from protgo.model.checkpoints import load_checkpoint as read_checkpoint
from protgo.plm import corpus as mc
from protgo.plm.config import PlmConfig, PlmModelConfig, PlmTrainConfig
from protgo.plm.corpus import Corpus, load_corpus
from protgo.plm.evaluate import evaluate_mlm
from protgo.plm.export import export_model
from protgo.train import distributed
from protgo.train.optim import adamw
from protgo.train.schedule import warmup_cosine_factor
from protgo.train.tracking import Tracker


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


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(
    manager: CheckpointManager, model, optimizer, state: TrainState, gen, cfg: PlmConfig
) -> Path:
    """The run's resumable state in the aligner trainer's checkpoint format
    (:class:`protgo.model.checkpoints.CheckpointManager`: ``checkpoints/step-N.pt`` and
    ``latest.json``), plus the PLM's own ``state`` and data-order generator."""
    return manager.save(
        {
            "trainer": "plm",
            "step": state.step,
            "epoch": state.epoch,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": {"step": state.step},  # the lr is a pure function of the step
            "rng": rng_state(),
            "data_rng": gen.get_state(),
            "state": asdict(state),
            "config": cfg.model_dump(mode="json"),
        },
        "step",
    )


def load_checkpoint(out_dir: Path, model, optimizer, gen) -> TrainState:
    """Resume from the run folder's latest readable checkpoint (an unreadable newest one is
    skipped for the one before, as for the aligner)."""
    if not (Path(out_dir) / "checkpoints" / "latest.json").is_file():
        old = (
            " (its checkpoint.pt is an older protgo's: continue it with train.init_from="
            f"{Path(out_dir) / 'model'})"
            if (Path(out_dir) / "checkpoint.pt").is_file()
            else ""
        )
        raise UserError(f"--resume: no checkpoint in {out_dir}{old}; start without --resume")
    ckpt = read_checkpoint(out_dir, trainer="plm")
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    gen.set_state(ckpt["data_rng"])
    set_rng_state(ckpt["rng"])
    return TrainState(**ckpt["state"])


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
    checkpoints/ (the aligner's format), metrics.jsonl, config.yaml; and the shippable model
    into the export dir."""
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
    if resume:
        state = load_checkpoint(out, model, optimizer, gen)
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
    manager = CheckpointManager(out / "checkpoints", cfg.train.keep_last)
    run = _Run(cfg, model, fwd, optimizer, corpus, gen, state, rt, log, manager)
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
    manager: CheckpointManager

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
        save_checkpoint(self.manager, self.model, self.optimizer, st, self.gen, self.cfg)
        export_model(self.model, t.export_dir or Path(t.out_dir) / "model", self.cfg,
                     self.corpus, st)  # fmt: skip
        tqdm.write(f"step {st.step}: held-out ppl {st.last_eval['heldout_ppl']:.2f} "
                   f"(unigram {st.last_eval['unigram_ppl']:.2f}); exported")  # fmt: skip
