"""Text phases and the resources tied to them.

Everything that depends on the GO texts is (re)built here, always in one order, each step
written to the run log with its reason:

1. ``go_texts``: the GO texts of the phase and their vector cache (encoded once, then cached
   on disk by :func:`protgo.stores.go_encode.embed_go`);
2. ``faiss_index``: the FAISS index over the cache (exact torch search takes over, with an
   event, when FAISS fails);
3. ``memory_bank``: every cache row through the model's GO head;
4. ``vector_resources``: the searched source (``mining.backend``) and the BatchBuilder;
5. ``dataloaders``: rebuilt by the trainer's callback (workers hold copies of old state).

Between epochs :meth:`PhaseManager.refresh_bank` re-projects the rows of the GO ids seen in
the last epoch (``phases.partial_refresh``).

With ``go_text.tune_layers`` the vectors are the tuned top layers' (:mod:`protgo.encoders.
text_top`) over token states computed once per phase: each step runs the layers for the
batch's texts (:meth:`PhaseManager.live_texts`), and between epochs :meth:`PhaseManager.
retune` re-encodes every text with them and rebuilds steps 2 to 5.
"""

from __future__ import annotations

import bisect
import copy
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

from protgo.config import Config
from protgo.encoders.text_top import LowerStates, TextTop
from protgo.mining.batch_builder import BatchBuilder
from protgo.model.checkpoints import rng_state, set_rng_state
from protgo.stores.go_encode import embed_go, tuned_cache, tuned_lower_states
from protgo.stores.go_vectors import GoLookupCache, GoVectorCache
from protgo.stores.memory_bank import MemoryBank
from protgo.stores.vector_resources import VectorResources

log = logging.getLogger(__name__)

RELOAD_ORDER = ("go_texts", "faiss_index", "memory_bank", "vector_resources", "dataloaders")
_GO_CACHES: dict[tuple, tuple] = {}  # (dataset, phase, aspects, data dir, go_text) -> embed_go
_LOWER: dict[tuple, LowerStates] = {}  # the same key -> the states under the tuned layers


def _key(c: Config, data_dir: Path, phase: int) -> tuple:
    return (c.data.dataset, phase, tuple(c.data.aspects), str(Path(data_dir).resolve()),
            c.go_text.model_dump_json())  # fmt: skip


def go_cache(cfg: Config, data_dir: Path, phase: int):
    """:func:`embed_go` for one phase, remembered for the process: finding a cache on disk
    loads the text encoder and tokenises every text (seconds), and a run asks for the same
    phase several times (model size, start, resume)."""
    c = cfg
    key = _key(c, data_dir, phase)
    if key not in _GO_CACHES:
        # Loading the encoder draws random numbers (weight init before the weights load);
        # keep the run's random streams as if the cache had been in memory.
        state = rng_state()
        _GO_CACHES[key] = embed_go(c.data.dataset, phase, c.data.aspects, data_dir, c.go_text,
                                   progress=False)  # fmt: skip
        set_rng_state(state)
    return _GO_CACHES[key]


def phase_lower_states(cfg: Config, data_dir: Path, ontology, phase: int, ids) -> LowerStates:
    """The token states entering the tuned layers for every text of ``phase`` (rows as
    ``ids``, the phase's cache), remembered for the process like :func:`go_cache`, one phase
    at a time (all of GO's texts take about 2 GB)."""
    key = _key(cfg, data_dir, phase)
    if key not in _LOWER:
        _LOWER.clear()
        log.info("text phase %d: token states below the tuned text layers for %d texts (a "
                 "pass of the encoder's lower layers)", phase, len(ids))  # fmt: skip
        state = rng_state()
        _LOWER[key] = tuned_lower_states(ontology, phase, cfg.data.aspects, cfg.go_text, ids,
                                         progress=False)[1]  # fmt: skip
        set_rng_state(state)
    return _LOWER[key]


class PhaseManager:
    """Owns ``cache``, ``bank``, ``resources`` and ``builder`` for the current text phase."""

    def __init__(
        self, cfg: Config, data_dir: Path, ontology,
        project: Callable[[torch.Tensor], torch.Tensor],
        tracker, zero: frozenset[str] = frozenset(), seed: int = 0, text_top: TextTop | None = None,
    ):  # fmt: skip
        """``text_top``: the tuned text layers (``go_text.tune_layers``), None when frozen."""
        self.cfg, self.data_dir, self.ontology = cfg, Path(data_dir), ontology
        self.project, self.tracker, self.zero, self.seed = project, tracker, zero, seed
        self.text_top = text_top
        self.lower: LowerStates | None = None
        self.frozen: GoVectorCache | None = None  # the phase's cache from the frozen encoder
        self.top_at_encode: dict | None = None  # the tuned layers' weights behind self.cache
        self.phase: int | None = None
        self.cache: GoLookupCache | None = None
        self.bank: MemoryBank | None = None
        self.resources: VectorResources | None = None
        self.builder: BatchBuilder | None = None

    def phase_for_epoch(self, epoch: int) -> int:
        """The last phase whose start epoch is at or before ``epoch``."""
        starts = self.cfg.phases.start_epochs
        return max(0, bisect.bisect_right(starts, epoch) - 1)

    def maybe_refresh_phase_resources(
        self, epoch: int, step: int, rebuild_loaders: Callable[[], None]
    ) -> bool:
        """Load the phase of ``epoch`` if it is not the current one; True when it did."""
        phase = self.phase_for_epoch(epoch)
        if phase == self.phase:
            return False
        if self.phase is None:
            reason = f"start of training at epoch {epoch}: text phase {phase}"
        else:
            reason = (f"epoch {epoch} starts text phase {phase} "
                      f"(phases.start_epochs={self.cfg.phases.start_epochs})")  # fmt: skip
        self.load_phase(phase, reason, step, rebuild_loaders)
        return True

    def load_phase(
        self, phase: int, reason: str, step: int, rebuild_loaders: Callable[[], None] | None,
        top_weights: dict | None = None,
    ) -> None:  # fmt: skip
        """The phase's texts and everything built on them; with tuned layers, the vectors
        come from them (``top_weights``, else their current weights)."""
        self.phase = phase
        cache, directory = go_cache(self.cfg, self.data_dir, phase)
        if self.text_top is not None:
            self.frozen = cache
            self.lower = phase_lower_states(self.cfg, self.data_dir, self.ontology, phase,
                                            cache.ids)  # fmt: skip
            cache = self._tuned_cache(top_weights)
        self._install(cache, reason, step, rebuild_loaders, phase=phase, cache=str(directory))

    def retune(self, reason: str, step: int, rebuild_loaders, top_weights: dict | None = None):
        """Re-encode every text of the phase with the tuned layers (``top_weights``, else
        their current weights) and rebuild the resources on the new vectors."""
        self._install(self._tuned_cache(top_weights), reason, step, rebuild_loaders,
                      phase=self.phase, tuned=True)  # fmt: skip

    def _tuned_cache(self, top_weights: dict | None) -> GoVectorCache:
        top = self.text_top
        if top_weights is not None:
            top = copy.deepcopy(top)
            top.load_state_dict(top_weights)
        self.top_at_encode = {k: v.detach().clone() for k, v in top.state_dict().items()}
        return tuned_cache(self.frozen, self.lower, top, self.cfg.go_text.batch_size)

    def _install(self, vectors: GoVectorCache, reason, step, rebuild_loaders, **info) -> None:
        c = self.cfg
        self.cache = GoLookupCache(vectors)
        self._done("go_texts", reason, step, terms=len(vectors), **info)
        resources = VectorResources(self.cache, None, c.mining, source="cache")
        if c.mining.index != "torch" and resources.index is None:
            self.tracker.event("faiss_fallback", "FAISS index build failed; exact search on "
                               "the matrix takes over", step, index=c.mining.index)  # fmt: skip
        kind = "torch" if resources.index is None else type(resources.index).__name__
        self._done("faiss_index", reason, step, index=kind)
        self.bank = MemoryBank.from_cache(self.cache, self.project, c.phases.bank_momentum)
        self._done("memory_bank", reason, step, rows=len(self.bank))
        resources.set_bank(self.bank)
        if c.mining.backend == "bank":
            resources.set_backends("bank")
        self.resources = resources
        if self.builder is None:
            self.builder = BatchBuilder(resources, self.ontology, c.mining, self.zero, self.seed)
        else:
            self.builder.set_resources(resources)
        self._done("vector_resources", reason, step, source=resources.source)
        if rebuild_loaders is not None:
            rebuild_loaders()
        self._done("dataloaders", reason, step)

    # ---- what the trainer calls ----------------------------------------------------------
    @property
    def searches_bank(self) -> bool:
        """Mining searches the aligned-space bank (``mining.backend: bank``), not the cache."""
        return self.resources.source == "bank"

    def mine(self, batch: dict, params, queries: torch.Tensor | None = None) -> dict:
        """The batch with its negatives (``queries``: the batch's current protein vectors,
        needed when searching the bank)."""
        return self.builder.build(batch, params, queries)

    def text_vectors(self, rows) -> torch.Tensor:
        """(U, Dt) GO text vectors of cache ``rows``."""
        return self.cache.matrix[rows]

    def live_texts(self, batch: dict) -> dict | None:
        """With tuned text layers, the batch's texts a step runs through them: ``index``
        (S,) positions in ``go_ids``, the positives first, at most ``go_text.tune_max_texts``,
        never a zero-shot term; ``states`` (S, L, D) and ``mask`` (S, L) their lower states.
        None when the text encoder is frozen."""
        if self.text_top is None:
            return None
        position = {g: u for u, g in enumerate(batch["go_ids"])}
        first = [position[g] for ids in batch["pos_ids"] for g in ids if g in position]
        order = dict.fromkeys([*first, *range(len(position))])
        keep = [u for u in order if batch["go_ids"][u] not in self.zero]
        keep = keep[: self.cfg.go_text.tune_max_texts]
        if not keep:
            return None
        states, mask = self.lower.batch(np.asarray(batch["go_rows"])[keep])
        return {"index": torch.tensor(keep), "states": states, "mask": mask}

    def after_step(self, ids: list[str], vectors: torch.Tensor) -> None:
        """Momentum update of the bank with the step's GO vectors (all ranks' ids)."""
        self.bank.update(ids, vectors)

    def state_dict(self) -> dict:
        """Phase, bank, the builder's random stream and (bank search) the matrix mining
        searched, as at the start of the epoch; plain data for a checkpoint."""
        return {
            "phase": self.phase, "bank": self.bank.state_dict(),
            "builder_rng": self.builder.rng.bit_generator.state,
            "search_matrix": self.resources.matrix if self.searches_bank else None,
            "text_top_at_encode": self.top_at_encode,
        }  # fmt: skip

    def load_state_dict(self, state: dict, reason: str, step: int, rebuild_loaders) -> None:
        """Rebuild the phase's resources as :meth:`state_dict` saw them."""
        self.load_phase(state["phase"], reason, step, rebuild_loaders,
                        state.get("text_top_at_encode"))  # fmt: skip
        if self.searches_bank:
            # Mining searched the bank as it was at the start of the epoch: rebuild the index
            # from that copy, then restore the bank as saved (momentum updates since).
            self.bank.load_state_dict({**state["bank"], "matrix": state["search_matrix"]})
            self.resources.refresh()
            self.builder.set_resources(self.resources)
        self.bank.load_state_dict(state["bank"])
        self.builder.rng.bit_generator.state = state["builder_rng"]

    def _done(self, name: str, reason: str, step: int, **info) -> None:
        self.tracker.event("refresh", reason, step, resource=name, **info)

    def refresh_bank(self, ids_seen: Iterable[str], step: int, epoch: int) -> int:
        """Re-project the bank rows of the GO ids seen in the last epoch (or all rows)."""
        ids = sorted(set(ids_seen)) if self.cfg.phases.partial_refresh else list(self.bank.ids)
        n = self.bank.refresh(ids, self.cache, self.project)
        if self.resources.source == "bank":
            self.resources.refresh()
            self.builder.set_resources(self.resources)
        what = "GO ids seen" if self.cfg.phases.partial_refresh else "all GO ids"
        self.tracker.event("bank_refresh", f"end of epoch {epoch}: re-project the {what}", step,
                           rows=n)  # fmt: skip
        return n
