"""The training loop.

Each step: curriculum parameters -> mine -> forward -> total loss -> backward -> clip ->
optimiser and LR-schedule step. Each epoch: memory-bank refresh, phase check, validation
(losses and retrieval Fmax on the valid split), checkpoint. See :meth:`Trainer.fit`.

Under ``torchrun`` (WORLD_SIZE > 1) ``train.batch_size`` is per rank: the sampler draws
global batches of ``world * batch_size`` proteins (the very batches of one process with that
batch size) and each rank trains on every ``world``-th protein of them (:class:`RankSlices`);
gradients are averaged with one all-reduce per step, memory-bank updates are gathered so
every rank's bank stays identical, and only rank 0 tracks and writes checkpoints.

``--resume`` continues exactly, mid-epoch too: with ``mining.backend=bank`` mining searches
a copy of the bank taken at the epoch start, so checkpoints hold that copy
(``search_matrix``) next to the bank itself and the index is rebuilt from it.

``Trainer.timings`` sums the wall time of each step part (data, mining, forward, backward,
optimizer: clip, AdamW, LR schedule, bank update); benchmarks/train_step.py reports them.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from protgo import compute
from protgo.config import Config
from protgo.data.folder import TRAINED_CLASSES, DatasetFolder
from protgo.data.seqsearch import DiamondOptions, diamond_hits
from protgo.encoders.text import load_text_encoder
from protgo.encoders.text_top import TextTop
from protgo.errors import UserError
from protgo.eval.metrics import evaluate_fast, truth_matrix
from protgo.eval.predictions import Predictions
from protgo.eval.zeroshot import complete_term_metrics
from protgo.go import scoring
from protgo.io import check_output_path, file_lock, progress_bar
from protgo.mining.collator import ContrastiveEmbCollator
from protgo.mining.curriculum import CurriculumScheduler
from protgo.mining.dataset import FewShotBatchSampler, FewZeroConfig, ProteinEmbDataset, Specificity
from protgo.model.aligner import ProtGoAligner
from protgo.model.checkpoints import CheckpointManager, load_checkpoint, rng_state, set_rng_state
from protgo.model.losses import (
    AlignmentLoss,
    EmaTeacher,
    HomologyTeacher,
    dag_pairs,
    multi_positive_info_nce,
)
from protgo.model.pooling import length_batches, pad_residues
from protgo.stores.residues import ResidueStore
from protgo.train import distributed
from protgo.train.head import refit_term_head
from protgo.train.optim import adamw, param_groups
from protgo.train.phases import PhaseManager, go_cache
from protgo.train.schedule import warmup_cosine
from protgo.train.tracking import Tracker

TENSOR_KEYS = ("residues", "mask", "cand_idx", "cand_pos", "cand_weight", "cand_valid",
               "go_pos", "go_weight")  # fmt: skip


class RankSlices:
    """This rank's share of each global batch: items ``rank::world`` of a sampler's batches of
    ``world * train.batch_size``, so N ranks see exactly the batches one process with an
    N-times larger batch sees (and as many steps per epoch)."""

    def __init__(self, sampler: FewShotBatchSampler, rank: int, world: int):
        self.sampler, self.rank, self.world = sampler, rank, world

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        for batch in self.sampler:
            yield batch[self.rank :: self.world]


class StepLoss(torch.nn.Module):
    """A step's forward and total loss as one ``forward``: the loss calls the aligner through
    several methods (pooling, GO head, term logits, the attribution pass), and
    ``DistributedDataParallel`` needs all of them inside the forward it wraps."""

    def __init__(self, model: ProtGoAligner, criterion: AlignmentLoss, text_top=None):
        super().__init__()
        self.model, self.criterion, self.text_top = model, criterion, text_top

    def forward(self, batch, go_text, live, pairs, lambda_attr, teacher, bce_terms):
        """-> (loss, logged parts, the aligner's outputs). ``live``: the texts whose vectors
        the tuned text layers give in this step (:meth:`PhaseManager.live_texts`), or None."""
        if live is not None:
            fresh = self.text_top(live["states"], live["mask"]).to(go_text.dtype)
            go_text = go_text.index_put((live["index"],), fresh)
        out = self.model(batch["residues"], batch["mask"], go_text, batch["cand_idx"])
        loss, parts = self.criterion(
            self.model, out, batch, go_text, pairs, lambda_attr, teacher, bce_terms=bce_terms
        )
        return loss, parts, out


class Trainer:
    def __init__(
        self, cfg: Config, data_dir: Path | None = None, progress: bool = True, store=None
    ):
        """``store``: a residue store to use instead of the one of ``cfg.residues``."""
        self.cfg, self.progress = cfg, progress
        self.data_dir = Path(data_dir) if data_dir else cfg.data.resolved_data_dir()
        self.rank, self.world = distributed.init()
        self.device = distributed.device_for(cfg.train.device, self.world)
        self.dtype = compute.resolve_dtype(cfg.train.dtype, self.device)  # warns if emulated
        self._residue_dtype = torch.bfloat16 if self.dtype == "bf16" else torch.float32
        _seed_everything(cfg.train.seed)
        self.folder = DatasetFolder.load(cfg.data.dataset, self.data_dir)
        self.folder.check_aspects(cfg.data.aspects, "data.aspects")
        self.ontology = self.folder.ontology
        store = store or ResidueStore.for_config(cfg.residues, self.data_dir)
        self.train_ds, self.valid_ds = self._datasets(store)
        cache0 = go_cache(cfg, self.data_dir, 0)[0]
        trained = [g for g in cache0.ids if self.folder.term_class.get(g) in TRAINED_CLASSES]
        # Seeded again here: whether the GO cache was already in memory (phases.go_cache)
        # changes how much random state the steps above used.
        _seed_everything(cfg.train.seed)
        self.model = ProtGoAligner(cfg.model, store.dim, cache0.dim, trained).to(self.device)
        self.text_top = self._text_top()
        self.criterion = AlignmentLoss(cfg.loss)
        self.step_loss = distributed.wrap(
            StepLoss(self.model, self.criterion, self.text_top), self.world, self.device,
            # a step may run no text through tuned text layers (no texts of the batch allowed)
            unused_params=(cfg.model.term_bias and cfg.loss.lambda_bce == 0)
            or cfg.go_text.tune_layers > 0,
        )  # fmt: skip
        self.optimizer = adamw(self.model, cfg.train.lr, cfg.train.weight_decay)
        if self.text_top is not None:  # the tuned text layers at their own learning rate
            for group in param_groups(self.text_top, cfg.train.weight_decay):
                self.optimizer.add_param_group(group | {"lr": cfg.go_text.tune_lr})
        self.trained_params = [*self.model.parameters(),
                               *(self.text_top.parameters() if self.text_top else ())]  # fmt: skip
        self.sampler = RankSlices(
            FewShotBatchSampler.for_dataset(
                self.train_ds, cfg.train.batch_size * self.world, seed=cfg.train.seed
            ),
            self.rank, self.world,
        )  # fmt: skip
        self.steps_per_epoch = len(self.sampler)
        if self.steps_per_epoch == 0:
            raise UserError(
                f"{len(self.train_ds)} training proteins make no batch of train.batch_size="
                f"{cfg.train.batch_size} per rank; lower the batch size"
            )
        self.total_steps = cfg.train.epochs * self.steps_per_epoch
        self.lr_schedule = warmup_cosine(self.optimizer, cfg.train.warmup_steps, self.total_steps)
        self.curriculum = CurriculumScheduler(
            cfg.curriculum, cfg.stages, self.total_steps, self.steps_per_epoch
        )
        self.collator = ContrastiveEmbCollator(
            cfg.mining, self.train_ds.fewzero.zero, self.train_ds.spec, seed=cfg.train.seed
        )
        self.teacher = self._teacher()
        self.run_dir = Path(cfg.train.out_dir)
        self.checkpoints = CheckpointManager(self.run_dir / "checkpoints", cfg.train.keep_last)
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.best: float | None = None
        self.head_done = False  # the term-head stage (train.head_epochs) has run
        self.seen: set[str] = set()
        # running sums since the last log (tensors on the device, floats after a resume)
        self.window: dict = defaultdict(float)
        self.timings: dict[str, float] = defaultdict(float)  # seconds per step part, summed

    # ---- setup --------------------------------------------------------------------------
    def _datasets(self, store) -> tuple[ProteinEmbDataset, ProteinEmbDataset]:
        """Train and valid proteins with their positives in ``data.aspects`` only."""
        onto, c = self.ontology, self.cfg
        keep = set(c.data.aspects)
        ann = {p: {g for g in a if g in onto and onto.aspect(g) in keep}
               for p, a in self.folder.annotations.items()}  # fmt: skip
        fewzero = FewZeroConfig.from_term_class(self.folder.term_class, c.mining.few_shot_share)
        train_ids = self._cap(self.folder.ids("train"))
        spec = Specificity.from_annotations(
            onto, (ann.get(p, ()) for p in train_ids), c.mining.stoplist_share
        )
        self.annotations = ann
        return tuple(
            ProteinEmbDataset(ids, ann, onto, store, c.mining, fewzero, spec)
            for ids in (train_ids, self._cap(self.folder.ids("valid")))
        )

    def _cap(self, ids: list[str]) -> list[str]:
        n = self.cfg.data.max_proteins
        if n is None or len(ids) <= n:
            return ids
        return sorted(random.Random(self.cfg.train.seed).sample(sorted(ids), n))

    def _teacher(self):
        c = self.cfg.loss
        if c.lambda_distill == 0:
            return None
        if c.teacher == "ema":
            return EmaTeacher(self.model, c.ema_decay)
        seqs = self.folder.sequences
        train = {p: seqs[p] for p in self.train_ds.pids}
        hits = diamond_hits(train, train, DiamondOptions(threads=2))
        train_ann = {p: self.annotations[p] for p in self.train_ds.pids}
        return HomologyTeacher(hits, train_ann, self.ontology)

    def _text_top(self) -> TextTop | None:
        """The text encoder's top ``go_text.tune_layers`` layers, trainable; None when 0."""
        c = self.cfg.go_text
        if c.tune_layers == 0:
            return None
        state = rng_state()  # loading draws random numbers (weight init before the load)
        encoder = load_text_encoder(c.encoder, c.max_length, c.quantize_int8, c.device, c.dtype)
        set_rng_state(state)
        return TextTop(encoder, c.tune_layers).to(self.device)

    def _project(self, text: torch.Tensor) -> torch.Tensor:
        """GO text vectors -> aligned space with the current head, dropout off (bank rows)."""
        was = self.model.training
        self.model.eval()
        with torch.no_grad():
            out = self.model.encode_go(text.to(self.device)).cpu()
        self.model.train(was)
        return out

    # ---- the loop -----------------------------------------------------------------------
    def fit(
        self, resume: Path | None = None, max_steps: int | None = None, overwrite: bool = False
    ) -> dict:
        """Train to the end (or ``max_steps`` global steps); returns the last metrics.

        A run folder that already holds a run is refused unless ``resume`` continues it or
        ``overwrite`` starts it anew (its metrics and checkpoints are removed first)."""
        saved = self._checked_resume_state(resume) if resume is not None else None
        with contextlib.ExitStack() as stack:
            if self.rank == 0:
                stack.enter_context(self._run_lock())
            if saved is None:
                self._claim_run_dir(overwrite)
            return self._fit(saved, resume, max_steps)

    @contextlib.contextmanager
    def _run_lock(self):
        """Hold ``<run>/.lock`` for the whole run: a second ``train`` (fresh or ``--resume``)
        into the same folder is refused while this one runs; the kernel drops the lock when
        the process dies, so a killed run never blocks the next."""
        check_output_path(self.run_dir, "train.out_dir", folder=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with file_lock(self.run_dir / ".lock", blocking=False) as taken:
            if not taken:
                raise UserError(
                    f"run folder {self.run_dir} is in use by another `protgo train`: wait for it "
                    "to end, or set another train.out_dir"
                )
            yield

    def _fit(self, saved: dict | None, resume: Path | None, max_steps: int | None) -> dict:
        resume_step = None if saved is None else saved["step"]
        self.tracker = Tracker(self.run_dir, self.cfg.tracking, self.cfg.model_dump(mode="json"),
                               self.rank, resume_step=resume_step)  # fmt: skip
        self.phases = PhaseManager(
            self.cfg,
            self.data_dir,
            self.ontology,
            self._project,
            self.tracker,
            self.train_ds.fewzero.zero,
            self.cfg.train.seed,
            self.text_top,
        )
        if saved is not None:
            self._resume(saved, resume)
        else:
            self._preview_curriculum()
            self.phases.maybe_refresh_phase_resources(0, 0, self._rebuild_loaders)
        last: dict = {}
        while self.epoch < self.cfg.train.epochs:
            if not self._train_epoch(max_steps):
                break  # max_steps reached
            last = self._end_epoch()
        if self.epoch >= self.cfg.train.epochs and self.rank == 0:
            if not self.head_done:
                last = self._head_stage() or last
            self.checkpoints.save(self.state(), "final")
        distributed.barrier(self.world)
        self.tracker.close()
        return last

    def _claim_run_dir(self, overwrite: bool) -> None:
        """Refuse a run folder that holds a run unless ``overwrite``. Every rank checks before
        any writes (the barrier), so all ranks agree."""
        check_output_path(self.run_dir, "train.out_dir", folder=True)
        # A run holds the folder once it has a checkpoint; records of a run that stopped
        # before its first one (a failed start) hold nothing to resume and are replaced.
        held = [p for p in (self.checkpoints.directory / "latest.json",) if p.exists()]
        if held and not overwrite:
            raise UserError(
                f"run folder {self.run_dir} already holds a run ({held[0].name}): continue it "
                f"with --resume {self.run_dir}, start it anew with --overwrite, or set another "
                "train.out_dir"
            )
        distributed.barrier(self.world)
        if self.rank == 0:  # the old run's records, log and W&B id: a new run
            for name in ("metrics.jsonl", "train.log", "wandb_id.txt"):
                (self.run_dir / name).unlink(missing_ok=True)
            shutil.rmtree(self.checkpoints.directory, ignore_errors=True)

    def _train_epoch(self, max_steps: int | None) -> bool:
        """One epoch of steps from ``batch_in_epoch``; False when stopped at ``max_steps``."""
        self.sampler.set_epoch(self.epoch)
        batches = list(self.sampler)[self.batch_in_epoch :]
        loader = torch.utils.data.DataLoader(
            self.train_ds, batch_sampler=batches, collate_fn=self.collator,
            num_workers=self.cfg.train.num_workers,
            # Its own generator: a loader draws a seed when iterated, and a resumed epoch must
            # not take it from the global stream that dropout and attribution masks use.
            generator=torch.Generator().manual_seed(self.cfg.train.seed * 100_003 + self.epoch),
        )  # fmt: skip
        self.model.train()
        bar = self._bar(len(batches))
        start = time.perf_counter()
        batches_in = iter(loader)
        for n in range(1, len(batches) + 1):
            if max_steps is not None and self.step >= max_steps:
                return False
            with self._timed("data"):
                batch = next(batches_in)
                # fp16 as stored -> fp32 on the device, once: a step reads the residues in six
                # pooling passes (forward and two attribution passes, each scoring and
                # averaging), and a cast in each took most of a step on long batches
                batch["residues"] = batch["residues"].to(self.device, self._residue_dtype)
            parts, params = self.train_step(batch)
            self.batch_in_epoch += 1
            self._log_step(parts, params, batch, n / (time.perf_counter() - start), bar)
            self._maybe_step_checkpoint()
        if bar is not None:
            bar.close()
        return True

    def train_step(self, batch: dict) -> tuple[dict, object]:
        params = self.curriculum(self.step)  # 1. curriculum parameters
        with self._timed("mining"):
            batch = self.mine(batch, params)  # 2. mine negatives
        with self._timed("forward"):
            go_text = self.phases.text_vectors(batch["go_rows"]).to(self.device)  # (U, Dt)
            live = self.phases.live_texts(batch)  # tuned text layers: texts they run for
            if live is not None:
                live = {k: v.to(self.device) for k, v in live.items()}
            teacher, terms = self._teacher_logits(batch, go_text), self._bce_terms(batch)
            with compute.autocast(self.dtype, self.device):
                loss, parts, out = self.step_loss(  # 3. forward and 4. total loss
                    batch, go_text, live, dag_pairs(batch["go_ids"], self.ontology),
                    params.lambda_attr, teacher, terms,
                )  # fmt: skip
        with self._timed("backward"):
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()  # 5. backward (DDP: gradients averaged over the ranks)
        with self._timed("optimizer"):
            if self.cfg.train.grad_clip:  # 6. clip
                norm = torch.nn.utils.clip_grad_norm_(self.trained_params, self.cfg.train.grad_clip)
                parts["grad_norm"] = norm.detach()
            self.optimizer.step()  # 7. optimiser and LR schedule
            self.lr_schedule.step()
            self.step += 1
            self._after_step(batch, out)
        parts.update({f"neg_{k}": v for k, v in batch["stats"].items()})  # negative sources
        return parts, params

    @contextlib.contextmanager
    def _timed(self, part: str):
        """Add the block's wall time to ``timings[part]`` (read by benchmarks/train_step.py)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[part] += time.perf_counter() - start

    def mine(self, batch: dict, params) -> dict:
        """Add negatives (on CPU, main process); move the tensors to the device."""
        queries = None
        if self.phases.searches_bank:  # aligned space: current protein vectors
            self.model.eval()
            with torch.no_grad():
                x, m = batch["residues"].to(self.device), batch["mask"].to(self.device)
                queries = self.model.encode_protein(x, m)["protein"].cpu()
            self.model.train()
        batch = self.phases.mine(batch, params, queries)
        return {k: (v.to(self.device) if k in TENSOR_KEYS else v) for k, v in batch.items()}

    def _teacher_logits(self, batch: dict, go_text: torch.Tensor):
        if self.teacher is None:
            return None
        if isinstance(self.teacher, EmaTeacher):
            return self.teacher.logits(batch, go_text)
        logits, rows = self.teacher.logits(batch, self.cfg.loss.tau)
        return logits.to(self.device), rows.to(self.device)

    def _bce_terms(self, batch: dict) -> dict | None:
        """The binary loss's terms: every term of the text cache but the zero-shot ones, or
        the batch's GO ids plus a random sample when there are more than
        ``loss.bce_max_terms``. Those among the batch's GO ids are given as their positions
        ``batch_cols`` (S,) in ``go_rows``, the others as ``text`` (E, Dt); ``truth``
        (B, S + E) from the propagated training annotations (:class:`TermBCELoss`). None
        when the loss is off."""
        if self.cfg.loss.lambda_bce == 0 or self.model.term_bias is None:
            return None
        cache = self.phases.cache
        if getattr(self, "_bce_cache", None) is not cache:  # a new text phase: new rows
            zero, self._prop_memo = self.train_ds.fewzero.zero, {}
            self._bce_rows = np.array([r for r, g in enumerate(cache.ids) if g not in zero])
            self._bce_col = {g: r for r, g in enumerate(cache.ids)}
            self._bce_residual = self.model.residual_rows(cache.ids)  # cache row -> residual
            self._bce_cache = cache
        rows, go_rows = self._bce_rows, np.asarray(batch["go_rows"])
        if len(rows) > self.cfg.loss.bce_max_terms:
            # seeded by step, so a resumed run draws the same sample
            rng = np.random.default_rng([self.cfg.train.seed, self.step])
            extra = rng.choice(rows, self.cfg.loss.bce_max_terms, replace=False)
            rows = np.union1d(go_rows, extra)
        shared = np.isin(rows, go_rows)
        batch_pos = np.full(len(cache.ids), -1)  # cache row -> position in go_rows
        batch_pos[go_rows] = np.arange(len(go_rows))
        others = rows[~shared]
        col = np.full(len(cache.ids), -1)  # cache row -> column of truth
        col[np.concatenate([rows[shared], others])] = np.arange(len(rows))
        truth = np.zeros((len(batch["pids"]), len(rows)), dtype=bool)
        for b, pid in enumerate(batch["pids"]):
            ks = col[self._propagated(pid)]
            truth[b, ks[ks >= 0]] = True
        order = torch.from_numpy(np.concatenate([rows[shared], others]))
        residual = None if self._bce_residual is None else self._bce_residual[order.to(
            self._bce_residual.device)]  # fmt: skip
        return {"batch_cols": torch.from_numpy(batch_pos[rows[shared]]).to(self.device),
                "truth": torch.from_numpy(truth).to(self.device),
                "text": cache.matrix[torch.from_numpy(others)].to(self.device),
                "residual_rows": residual}  # fmt: skip

    def _propagated(self, pid: str) -> np.ndarray:
        """Cache rows of a training protein's propagated annotations (memoised per phase)."""
        if pid not in self._prop_memo:
            terms = self.ontology.propagate(self.annotations.get(pid, ()))
            rows = [self._bce_col[g] for g in terms if g in self._bce_col]
            self._prop_memo[pid] = np.array(rows, dtype=np.int64)
        return self._prop_memo[pid]

    def _after_step(self, batch: dict, out: dict) -> None:
        """Bank momentum update (gathered over ranks), EMA teacher, GO ids seen."""
        ids, vecs = batch["go_ids"], out["go"].detach().cpu()
        if self.world > 1:
            gathered = [None] * self.world
            dist.all_gather_object(gathered, (ids, vecs))
            ids = [g for gi, _ in gathered for g in gi]
            vecs = torch.cat([v for _, v in gathered])
        self.phases.after_step(ids, vecs)
        self.seen.update(ids)
        if isinstance(self.teacher, EmaTeacher):
            self.teacher.update(self.model)

    # ---- epoch end ----------------------------------------------------------------------
    def _end_epoch(self) -> dict:
        if self.text_top is None:  # tuned text layers: every row is re-projected below
            self.phases.refresh_bank(self.seen, self.step, self.epoch)  # bank refresh
        self.seen.clear()
        self.epoch += 1
        self.batch_in_epoch = 0
        new_phase = self.epoch < self.cfg.train.epochs and (  # phase check for the next epoch
            self.phases.maybe_refresh_phase_resources(self.epoch, self.step, self._rebuild_loaders)
        )
        if self.text_top is not None and not new_phase:  # texts re-encoded by the tuned layers
            self.phases.retune(f"end of epoch {self.epoch - 1}: texts re-encoded by the tuned "
                               "text layers", self.step, self._rebuild_loaders)  # fmt: skip
        metrics = self.validate()  # validation
        self.tracker.log(metrics, self.step, kind="valid")
        if self.rank == 0:  # checkpoint
            score = metrics["fmax"]  # mean of the per-aspect Fmax
            improved = self.best is None or (score is not None and score > self.best)
            self.best = score if improved else self.best
            self.checkpoints.save(self.state(), "epoch")
            if improved:
                self.checkpoints.save(self.state(), "best")
        return metrics

    def _head_stage(self) -> dict | None:
        """``train.head_epochs`` passes of :func:`protgo.train.head.refit_term_head` over the
        terms of ``train.head_terms`` from the best epoch's weights, each validated;
        ``best.pt`` becomes the best pass where it beats the best epoch. Written once, at the
        end: an interrupted stage starts again from the same weights, and a best.pt that holds
        the stage's result is not refitted twice. The model is given back the last epoch's
        weights (what ``final.pt`` holds)."""
        epochs = self.cfg.train.head_epochs
        if epochs == 0 or self.model.term_residual is None:
            self.head_done = True
            return None
        best_path = self.checkpoints.directory / "best.pt"
        state = load_checkpoint(best_path, self.device) if best_path.exists() else self.state()
        self.head_done = True
        if state.get("head_done"):  # the stage ran and wrote best.pt; final.pt did not follow
            return None
        last_epoch = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(state["model"])
        if self.text_top is not None:  # the texts as the best epoch's tuned layers encode them
            self.phases.retune("term-head stage: the best epoch's text vectors", self.step,
                               None, state["text_top_at_encode"])  # fmt: skip
        self.model.eval()
        cache = self.phases.cache
        rows = self.model.residual_rows(cache.ids)
        has_row = (rows >= 0).tolist()
        classes = {"common"} if self.cfg.train.head_terms == "common" else TRAINED_CLASSES
        refit = [j for j, g in enumerate(cache.ids)
                 if has_row[j] and self.folder.term_class.get(g) in classes]  # fmt: skip
        keep = torch.tensor(refit, dtype=torch.long)
        terms = [cache.ids[j] for j in refit]
        col = {g: j for j, g in enumerate(terms)}
        pids = self.train_ds.pids
        positives = [np.array([col[g] for g in self.ontology.propagate(self.annotations.get(p, ()))
                               if g in col], dtype=np.int64) for p in pids]  # fmt: skip
        with torch.no_grad():
            _, vecs = self.encode_proteins(pids)
        kept, records = None, []
        bar = progress_bar(total=epochs, desc="term head", unit="pass", disable=not self.progress)

        def after(k: int) -> None:
            nonlocal kept
            metrics = self.validate() | {"head_epoch": k}
            self.tracker.log(metrics, self.step, kind="valid")
            records.append(metrics)
            if metrics["fmax"] is not None and (self.best is None or metrics["fmax"] > self.best):
                self.best = metrics["fmax"]
                kept = {n: v.detach().clone() for n, v in self.model.state_dict().items()}
            bar.update()
            bar.set_postfix(valid_fmax=metrics["fmax"], best=self.best)

        refit_term_head(
            self.model, vecs, positives, cache.matrix[keep].to(self.device), rows[keep],
            epochs=epochs, lr=self.cfg.train.head_lr, weight_decay=self.cfg.train.weight_decay,
            seed=self.cfg.train.seed, after_epoch=after,
        )  # fmt: skip
        bar.close()
        if kept is not None:
            self.model.load_state_dict(kept)
            self.checkpoints.save(self.state(), "best")
        self.model.load_state_dict(last_epoch)
        if self.text_top is not None:
            self.phases.retune("end of the term-head stage: the last epoch's text vectors",
                               self.step, None)  # fmt: skip
        self.model.train()
        return records[-1] if records else None

    def _rebuild_loaders(self) -> None:
        """Loaders are made per epoch from the sampler; a new collator drops worker copies."""
        state = self.collator.rng.bit_generator.state
        self.collator = ContrastiveEmbCollator(
            self.cfg.mining, self.train_ds.fewzero.zero, self.train_ds.spec,
            seed=self.cfg.train.seed,
        )  # fmt: skip
        self.collator.rng.bit_generator.state = state

    @torch.no_grad()
    def validate(self) -> dict:
        """Per-aspect Fmax on the valid split, scored as ``predict`` scores before
        calibration and evaluated as ``protgo evaluate`` does (:func:`evaluate_fast`), next to
        random scores; zero- and few-shot term AUC per aspect from the complete matrix
        (``zero_auc_MF``, ...); ``fmax`` is their mean over aspects, which picks ``best.pt``
        (:func:`protgo.go.scoring.selection_score`). InfoNCE over all scored terms."""
        self.model.eval()
        pids, vecs = self.encode_proteins(self.valid_ds.pids)
        cache, onto = self.phases.cache, self.ontology
        keep = scoring.scorable_columns(onto, cache.ids)
        terms, text = [cache.ids[j] for j in keep], cache.matrix[keep].to(self.device)
        go = self.model.encode_go(text)  # (T, A)
        cos = (vecs @ go.T).cpu()  # (N, T)
        kind = "cos" if self.model.term_bias is None else "logit"
        rows = self.model.residual_rows(terms)
        raw = cos if kind == "cos" else self.model.term_logits(vecs, go, text, rows).cpu()
        rand = np.random.default_rng(0).random(cos.shape)
        aspects, result = self.cfg.data.aspects, {"epoch": self.epoch}
        prop = scoring.propagate(scoring.to_scores(raw.numpy(), kind), terms, onto)
        for name, score in (("", prop), ("_random", rand)):
            pred = Predictions(pids, terms, score, propagated_for=onto if name == "" else None)
            rows = evaluate_fast(pred, self.annotations, pids, onto, aspects=aspects)
            result |= {f"fmax{name}_{r['aspect']}": r["fmax"] for r in rows}
            result[f"fmax{name}"] = scoring.selection_score(rows)
        truth_np = truth_matrix(self.annotations, pids, terms, onto)
        term_aspects = np.array([onto.aspect(t) for t in terms])
        for r in complete_term_metrics(prop, truth_np, terms, self.folder.term_class,
                                       term_aspects):  # fmt: skip
            result[f"{r['class']}_auc_{r['aspect']}"] = r["auc"]  # complete matrix
        truth = torch.from_numpy(truth_np)
        con = multi_positive_info_nce(self.model.logit_scale.cpu() * cos, truth)
        self.model.train()
        return result | {"con": float(con), "proteins": len(pids), "phase": self.phases.phase}

    @torch.no_grad()
    def encode_proteins(self, pids: list[str]) -> tuple[list[str], torch.Tensor]:
        """(pids, (N, A) unit vectors), in batches sorted by length (as ``predict`` pools)."""
        store, out = self.valid_ds.store, [None] * len(pids)
        for batch in length_batches([store.length(p) for p in pids]):
            x, mask = pad_residues([store.get(pids[i]) for i in batch], self.device)
            for i, v in zip(batch, self.model.encode_protein(x, mask)["protein"], strict=True):
                out[i] = v
        return pids, torch.stack(out)

    # ---- checkpoints ----------------------------------------------------------------------
    def state(self) -> dict:
        """Everything a resume needs, as a plain dict (see :mod:`protgo.model.checkpoints`)."""
        return {
            "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
            "global_batch": self.cfg.train.batch_size * self.world,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "text_top": self.text_top.state_dict() if self.text_top is not None else None,
            "lr_schedule": self.lr_schedule.state_dict(),
            **self.phases.state_dict(),
            "teacher": self.teacher.state_dict() if isinstance(self.teacher, EmaTeacher) else None,
            "rng": rng_state(), "collator_rng": self.collator.rng.bit_generator.state,
            "best": self.best, "head_done": self.head_done,
            "seen": sorted(self.seen), "window": {k: float(v) for k, v in self.window.items()},
            "config": self.cfg.model_dump(mode="json"),
        }  # fmt: skip

    def _maybe_step_checkpoint(self) -> None:
        every = self.cfg.train.checkpoint_every_steps
        if every and self.step % every == 0 and self.rank == 0:
            self.checkpoints.save(self.state(), "step")

    def _checked_resume_state(self, path: Path) -> dict:
        """The checkpoint to resume from, refused (before anything is written) when it cannot
        continue this run."""
        state = load_checkpoint(path, self.device)
        stored = {"term_residual": False, **state["config"].get("model", {})}  # absent: off
        if stored != self.cfg.model_dump(mode="json")["model"]:
            raise UserError(f"checkpoint {path} was trained with other model settings")
        have, want = set(state.get("model") or ()), set(self.model.state_dict())
        if have != want:
            odd = sorted(have ^ want)
            raise UserError(
                f"checkpoint {path} does not hold this model's weights ({len(odd)} keys differ, "
                f"e.g. {odd[0]}): resume from a checkpoint of this run"
            )
        tuned = state["config"].get("go_text", {}).get("tune_layers", 0)
        if tuned != self.cfg.go_text.tune_layers:
            raise UserError(
                f"checkpoint {path} was trained with go_text.tune_layers={tuned}, this run asks "
                f"for {self.cfg.go_text.tune_layers}: resume with the same setting, or start anew"
            )
        train = state["config"].get("train", {})
        for key in ("lr", "weight_decay"):  # the optimiser's state carries them on
            now = getattr(self.cfg.train, key)
            if key in train and train[key] != now:
                raise UserError(
                    f"checkpoint {path} was trained with train.{key}={train[key]}, this run "
                    f"asks for {now}: a resume continues the saved optimiser, so resume with "
                    f"train.{key}={train[key]}, or start anew to change it"
                )
        was = state.get("global_batch", train.get("batch_size"))
        if was != self.cfg.train.batch_size * self.world:
            raise UserError(
                f"checkpoint {path} was trained with global batches of {was} proteins, this "
                f"run makes {self.cfg.train.batch_size * self.world} (train.batch_size x "
                "processes): resume with the same batch size and process count, or start anew"
            )
        return state

    def _resume(self, state: dict, path: Path) -> None:
        self.model.load_state_dict(state["model"])
        if self.text_top is not None:
            self.text_top.load_state_dict(state["text_top"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_schedule.load_state_dict(state["lr_schedule"])
        self.step, self.epoch = state["step"], state["epoch"]
        self.batch_in_epoch, self.best = state["batch_in_epoch"], state["best"]
        self.head_done = state.get("head_done", False)  # absent: saved before the stage existed
        self.seen, self.window = set(state["seen"]), defaultdict(float, state["window"])
        if state["teacher"] is not None:
            self.teacher.load_state_dict(state["teacher"])
        reason = f"resume from {path} at step {self.step}"
        self.phases.load_state_dict(state, reason, self.step, self._rebuild_loaders)
        self.collator.rng.bit_generator.state = state["collator_rng"]
        set_rng_state(state["rng"])

    # ---- reporting ------------------------------------------------------------------------
    def _preview_curriculum(self) -> None:
        """The run's whole schedule as ``curriculum.tsv`` (and W&B): 101 evenly spaced steps
        and the end of the warm-up; the report plots it as the run wrote it."""
        names = ["step", *(k for k in self.curriculum(0).as_dict())]
        steps = self.curriculum.default_steps(101)
        rows = [[s, *self.curriculum(s).as_dict().values()] for s in steps]
        self.tracker.table("curriculum", names, rows, self.step)

    def _bar(self, total: int):
        if not self.progress or self.rank != 0:
            return None

        return progress_bar(total=total, desc=f"epoch {self.epoch + 1}/{self.cfg.train.epochs}",
                            unit="step", leave=False)  # fmt: skip

    def _log_step(self, parts: dict, params, batch: dict, rate: float, bar) -> None:
        """Running sums every step, on the device (no wait for it); one JSONL record (means)
        and a progress-bar update of the loss every ``log_every_steps``."""
        for k, v in parts.items():
            self.window[k] += v
        self.window["_n"] += 1
        if bar is not None:
            bar.update(1)
        if self.step % self.cfg.train.log_every_steps and self.batch_in_epoch < len(self.sampler):
            return
        n = self.window.pop("_n")
        record = {k: float(v) / n for k, v in self.window.items()}  # the one read of the device
        if bar is not None:
            bar.set_postfix(loss=f"{record['total']:.3f}", steps_s=f"{rate:.2f}",
                            hard=f"{params.hard_frac:.2f}", k_hard=params.k_hard,
                            stage=params.stage)  # fmt: skip
        record.update(lr=self.lr_schedule.get_last_lr()[0], steps_per_s=rate, epoch=self.epoch,
                      scale=self.model.logit_scale.item(), **params.as_dict())  # fmt: skip
        self.tracker.log(record, self.step)
        self.window.clear()


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
