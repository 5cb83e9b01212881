"""Prediction: FASTA -> residue vectors -> protein vectors -> scores for every GO term.

:class:`Predictor` loads a training checkpoint (its resolved config names the dataset, the
ESM model, the GO text encoder and the text phase it ended in) and scores proteins against
every GO term of the chosen aspects, terms never seen in training included: a GO term's
vector comes from its text, not from training labels.

1. residues: a sequence already in the residue store (looked up by content, so a query id
   may differ from the dataset's) is read from it; any other is embedded with the same ESM
   and window settings, in memory (the training store is never written by ``predict``);
2. pooling + projection: the model's attention pooling and protein head, (N, A) unit vectors;
3. scores: the model's term logits, ``bias_scale * cos + bias(text)`` with the projected GO
   vectors (T, A) and each term's prior (plain cosines for a model without ``term_bias``);
   calibrated per aspect (:mod:`protgo.infer.calibration`) when a calibration is available,
   else as :mod:`protgo.go.scoring` says (the trainer's validation scores);
4. consistency: a parent scores at least its best child, unless ``propagate=False``; roots
   are never scored.

The ``protgo predict`` command and its output files are :mod:`protgo.infer.command`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from protgo.config import ASPECTS, Config, default_data_dir
from protgo.data.folder import TRAINED_CLASSES, DatasetFolder
from protgo.data.ontology import Ontology
from protgo.encoders.protein import embed_arrays
from protgo.encoders.registry import describe_model, protein_encoder
from protgo.errors import UserError
from protgo.go import scoring
from protgo.infer import bundle, calibration, homology
from protgo.infer.homology import Reference, refit_for
from protgo.io import progress_bar
from protgo.model.aligner import ProtGoAligner, residual_terms
from protgo.model.checkpoints import load_checkpoint, resolve_checkpoint
from protgo.model.pooling import BATCH_RESIDUES, length_batches, pad_residues
from protgo.stores.go_encode import embed_go, tuned_text_cache
from protgo.stores.go_vectors import GoVectorCache, cache_dir
from protgo.stores.projection import Projection, resolve_project_dim
from protgo.stores.residues import ResidueStore


@dataclass
class ProteinResult:
    """One protein's scores: ``scores[j]`` for ``Predictor.go_ids[j]`` (propagated)."""

    pid: str
    sequence: str
    scores: np.ndarray  # (T,)
    residues: np.ndarray | None = None  # (L, D) fp16, kept when asked (for attributions)
    aligner: np.ndarray | None = None  # (T,) the aligner's part of a blended score
    homology: np.ndarray | None = None  # (T,) the homology part (DiamondScore)
    hits: list | None = None  # [(reference protein, bitscore), ...] best first


class Predictor:
    """A trained aligner with its GO vectors, ready to score sequences."""

    def __init__(
        self, source: Path, data_dir: Path | None = None,
        aspects: Iterable[str] | None = None, device: str = "cpu", obo: Path | None = None,
        homology: bool = True, threads: int = 2, references: Sequence[str] = (),
    ):  # fmt: skip
        """``source``: a training checkpoint or run folder (its dataset folder under
        ``data_dir`` gives the ontology and GO vectors), or a bundle directory
        (:mod:`protgo.infer.bundle`), which needs no dataset. ``obo`` (bundles only): score
        the terms of this ontology instead, e.g. a newer GO release. ``homology``: blend with
        DIAMOND transfer from the bundle's reference set when it has one
        (:mod:`protgo.infer.homology`), with the annotated proteins of the built datasets
        ``references`` added to it; ``threads`` for DIAMOND."""
        self.device = torch.device(device)
        self._encoder = None
        self.homology: Reference | None = None
        self.threads = threads
        self.projection: Projection | None = None  # a projected store's PCA (bundles carry it)
        if bundle.is_bundle(source):
            self._from_bundle(bundle.load(Path(source)), data_dir, aspects, obo, homology)
        else:
            if obo is not None or references:
                what = "--obo" if obo is not None else "--reference"
                raise UserError(f"{what} needs a bundle (--model); `protgo export` makes one "
                                "from a checkpoint")  # fmt: skip
            self._from_checkpoint(Path(source), data_dir, aspects)
        if references and self.homology is None:
            raise UserError(f"--reference: model {source} carries no homology reference to add "
                            "to (or --no-homology was given)")  # fmt: skip
        self._store = self._open_store()
        if self.projection is None and self._store is not None and self._store.projected:
            self.projection = self._store.projection
        added = [DatasetFolder.load(name, self.data_dir) for name in references]
        for folder in added:
            self.homology.extend(folder)
        if added:  # weights for this reference, chosen on the last dataset's valid split
            refit_for(self, added[-1], threads)

    # ---- loading ---------------------------------------------------------------------------
    def _from_checkpoint(self, path: Path, data_dir: Path | None, aspects) -> None:
        self.checkpoint = resolve_checkpoint(path)
        state = load_checkpoint(self.checkpoint, "cpu")
        self.cfg = _config_of(state, self.checkpoint)
        # Given, else $PROTGO_DATA, else the training run's: a copied checkpoint must not
        # write caches into the path of the machine it was trained on.
        env = os.environ.get("PROTGO_DATA")
        self.data_dir = (Path(data_dir) if data_dir else default_data_dir() if env
                         else self.cfg.data.resolved_data_dir())  # fmt: skip
        self.phase = int(state.get("phase") or 0)
        self.step = int(state.get("step", 0))
        self.folder = DatasetFolder.load(self.cfg.data.dataset, self.data_dir)
        self.ontology = self.folder.ontology
        self.go_release = self.folder.info.get("provenance", {}).get("go_source_date")
        self.terms = self.folder.terms
        self.trained_ids = set(self.ontology.terms)
        self.aspects = _check_aspects(aspects, self.cfg.data.aspects)
        cache = go_text_cache(self.cfg, self.phase, self.aspects, self.data_dir)
        if state.get("text_top_at_encode") is not None:  # trained with go_text.tune_layers
            where = cache_dir(self.data_dir, Path(self.cfg.data.dataset).name, self.cfg.go_text,
                              self.phase, self.aspects)  # fmt: skip
            cache = tuned_text_cache(self.ontology, self.phase, self.cfg.go_text, cache,
                                     state["text_top_at_encode"], where)  # fmt: skip
        self._load_model(state.get("model"), cache)
        self.calibration = calibration.read(self.checkpoint, self.logit_input)

    def _from_bundle(
        self, b: bundle.Bundle, data_dir: Path | None, aspects, obo, homology_on: bool
    ) -> None:
        self.checkpoint = b.path
        self.bundle_meta = b.meta
        self.model_key = hashlib.sha256((b.path / "bundle.json").read_bytes()).hexdigest()
        self.cfg = b.cfg
        describe_model(self.cfg.residues)  # missing protein-encoder weights: said before any work
        # The exporting machine's data dir means nothing here: only caches go there.
        self.data_dir = Path(data_dir) if data_dir else default_data_dir()
        self.phase, self.step = b.phase, int(b.meta.get("step", 0))
        self.folder = None
        self.ontology = Ontology.from_obo(Path(obo)) if obo is not None else b.ontology
        self.go_release = (b.meta.get("provenance", {}).get("go_release") if obo is None
                           else f"{Path(obo).name} (--obo)")  # fmt: skip
        self.terms = b.terms
        self.trained_ids = set(b.ontology.terms)
        self.aspects = _check_aspects(aspects, self.cfg.data.aspects)
        new = self.ontology if obo is not None else None
        cache = b.text_vectors(self.data_dir, self.aspects, new)
        self._load_model(b.weights, cache)
        self.calibration = b.meta.get("calibration")
        self.projection = b.projection
        if homology_on:
            db_dir = self.data_dir / "stores" / "diamond"
            self.homology = homology.load(b.path, b.meta.get("homology"), self.ontology, db_dir)

    def _load_model(self, weights, cache: GoVectorCache) -> None:
        if not isinstance(weights, dict) or "protein_head.proj.weight" not in weights:
            raise UserError(
                f"checkpoint {self.checkpoint} holds no aligner weights (no 'model' entry with "
                "protein_head.proj.weight): give a checkpoint written by `protgo train`"
            )
        # weights from before model.term_residual have no residual table: text-only terms
        self.cfg.model.term_residual = "residual_go" in weights
        residue_dim = int(weights["protein_head.proj.weight"].shape[1])
        self.model = ProtGoAligner(self.cfg.model, residue_dim, cache.dim,
                                   residual_terms(weights))  # fmt: skip
        try:
            self.model.load_state_dict(weights)
        except RuntimeError as exc:
            raise UserError(
                f"checkpoint {self.checkpoint} does not fit its own config's model "
                f"({str(exc).splitlines()[0]}); was the file edited?"
            ) from None
        self.model.to(self.device).eval()
        self.residue_dim = residue_dim
        self.logit_input = "cos" if self.model.term_bias is None else "logit"
        self.set_text_vectors(cache)

    def set_text_vectors(self, cache: GoVectorCache) -> None:
        """Score against the GO text vectors of ``cache`` (its terms that can be scored)."""
        self.text_cache = cache
        self.text_recipe = {"encoder": cache.manifest.get("encoder"), "phase": self.phase,
                            "text_hash": cache.manifest.get("text_hash")}  # fmt: skip
        if "text_top" in cache.manifest:  # tuned text layers (go_text.tune_layers)
            self.text_recipe["text_top"] = cache.manifest["text_top"]
        keep = scoring.scorable_columns(self.ontology, cache.ids)
        self.go_ids = [cache.ids[i] for i in keep]
        self.go_aspects = np.array([cache.aspects[i] for i in keep])
        with torch.no_grad():
            self.go_text = torch.from_numpy(cache.vectors[keep]).to(self.device)  # (T, Dt)
            self.go = self.model.encode_go(self.go_text)  # (T, A) unit vectors
        self.residual_rows = self.model.residual_rows(self.go_ids)  # None without residuals
        self._columns: dict[tuple[str, frozenset[str]], np.ndarray] = {}
        self._unseen: dict | None = None

    def columns(self, aspect: str, leave_out: frozenset[str] = frozenset()) -> np.ndarray:
        """The columns of ``aspect``'s terms (ascending), but those in ``leave_out``."""
        key = (aspect, leave_out)
        if key not in self._columns:
            cols = np.flatnonzero(self.go_aspects == aspect)
            self._columns[key] = np.array(
                [j for j in cols if self.go_ids[j] not in leave_out], dtype=np.int64
            )
        return self._columns[key]

    def check_dataset(self, folder: DatasetFolder, what: str) -> None:
        """``folder`` must be the dataset this model was trained on (its zero- and few-shot
        terms and its splits are that dataset's); ``what`` names the input in the error."""
        trained_on = Path(str(self.cfg.data.dataset)).name
        if trained_on != folder.root.name:
            raise UserError(
                f"{what} was trained on dataset '{trained_on}', not '{folder.root.name}': give "
                "the dataset it was trained on"
            )

    def term_class(self, go_id: str) -> str:
        """common | few | zero (no training protein) | new (not in the trained ontology)."""
        return bundle.term_class(self.terms, self.trained_ids, go_id)

    def _open_store(self):
        """The residue store of the checkpoint's ESM settings, or None if there is none."""
        try:
            # Each shard read is checked against its checksum once per process.
            return ResidueStore.for_config(self.cfg.residues, self.data_dir)
        except UserError:
            return None

    @property
    def encoder(self):
        """The ESM encoder, loaded on first use (only for sequences not in the store)."""
        if self._encoder is None:
            enc = protein_encoder(self.cfg.residues)
            dim = self.projection.dim if self.projection is not None else enc.dim
            wanted = resolve_project_dim(self.cfg.residues.project_dim, enc.dim)
            if self.projection is None and wanted == self.residue_dim != enc.dim:
                raise UserError(
                    f"checkpoint {self.checkpoint} was trained on projected residues of "
                    f"'{self.cfg.residues.model}' and the projection is not here: embed its "
                    "dataset (`protgo embed residues`) or predict with an exported bundle"
                )
            if dim != self.residue_dim:
                raise UserError(
                    f"protein model '{self.cfg.residues.model}' gives {dim}-dim residues, the "
                    f"checkpoint expects {self.residue_dim}: is it the same model?"
                )
            self._encoder = enc
        return self._encoder

    # ---- residues and protein vectors -------------------------------------------------------
    def residues(self, cleans: Mapping[str, str], progress: bool = False) -> dict[str, np.ndarray]:
        """{pid: (L, D) fp16 residue vectors}: from the store by content, else embedded."""
        out, todo = {}, {}
        for pid, seq in cleans.items():
            got = self._store.get_sequence(seq) if self._store is not None else None
            if got is not None:
                out[pid] = got
            else:
                todo[pid] = seq
        if todo:
            out.update(self._embed(todo, progress))
        return out

    def _embed(self, todo: Mapping[str, str], progress: bool) -> dict[str, np.ndarray]:

        enc = self.encoder
        pids, seqs = list(todo), list(todo.values())
        proj = self.projection
        bar = progress_bar(total=sum(map(len, seqs)), desc=f"embed ({self.cfg.residues.model})",
                           unit="res", unit_scale=True, disable=not progress,
                           leave=False)  # fmt: skip
        full = embed_arrays(enc, seqs, enc.cfg.batch_tokens, bar)
        bar.close()
        # projected (if the store is) and rounded to fp16, as the store keeps them
        arrays = [(proj.apply(a) if proj is not None else a).astype(np.float16) for a in full]
        return dict(zip(pids, arrays, strict=True))

    @torch.no_grad()
    def protein_vectors(
        self, arrays: list[np.ndarray], batch_residues: int = BATCH_RESIDUES
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """((N, A) unit vectors, per-protein attention (L,)), in the order of ``arrays``.

        Proteins are sorted by length and packed up to ``batch_residues`` padded residues."""
        vecs = torch.empty(len(arrays), self.go.shape[1])
        attn: list[torch.Tensor | None] = [None] * len(arrays)
        for batch in length_batches([len(a) for a in arrays], batch_residues):
            x, mask = pad_residues([arrays[i] for i in batch], self.device)
            out = self.model.encode_protein(x, mask)
            vecs[batch] = out["protein"].float().cpu()
            for b, i in enumerate(batch):
                attn[i] = out["attn"][b, : len(arrays[i])].cpu()
        return vecs, attn

    # ---- scores -----------------------------------------------------------------------------
    @torch.no_grad()
    def logits(self, vecs: torch.Tensor, cols: np.ndarray | None = None) -> np.ndarray:
        """(N, A) protein vectors -> (N, T) float64 term logits (cosines without a term
        bias) over ``go_ids`` (or its columns ``cols``)."""
        go, text, rows = self.go, self.go_text, self.residual_rows
        if cols is not None:
            idx = torch.as_tensor(cols, device=self.device)
            go, text = go[idx], text[idx]
            rows = None if rows is None else rows[idx]
        out = self.model.term_logits(vecs.to(self.device), go, text, rows)
        return out.cpu().numpy().astype(np.float64)

    def scores(self, vecs: torch.Tensor, propagate: bool = True) -> np.ndarray:
        """(N, A) protein vectors -> (N, T) scores in [0, 1] over ``go_ids``; propagated, a
        term without a training positive scored under its parents and beside its text
        neighbours (:func:`protgo.go.scoring.under_parents`)."""
        own = self.calibrate_logits(self.logits(vecs))
        if not propagate:
            return own
        out = scoring.propagate(own, self.go_ids, self.ontology)
        unseen = self._unseen_terms()
        if unseen:
            out = scoring.under_parents(out, own, self.go_ids, self.ontology, unseen)
        return out

    def _unseen_terms(self) -> dict[str, tuple[scoring.ParentIndex, scoring.TextNeighbours]]:
        """{aspect: (the parents of its terms without a training positive, their trained text
        neighbours)} for the aspects with both kinds of term; built once."""
        if self._unseen is None:
            self._unseen = {}
            text = self.go_text.cpu().numpy()
            for aspect in np.unique(self.go_aspects):
                cols = self.columns(aspect)
                trained = np.array([self.term_class(self.go_ids[j]) in TRAINED_CLASSES
                                    for j in cols], dtype=bool)  # fmt: skip
                if trained.all() or not trained.any():
                    continue
                index = scoring.ParentIndex(self.go_ids, self.ontology, cols[~trained])
                near = scoring.TextNeighbours(text, index.cols, cols[trained])
                self._unseen[str(aspect)] = (index, near)
        return self._unseen

    def calibrate_logits(self, logit: np.ndarray) -> np.ndarray:
        """Scores in [0, 1]: Platt-calibrated for the aspects the calibration covers, else
        ``sigmoid(logit)`` (``(cos + 1) / 2`` without a term bias)."""
        plain = scoring.to_scores(logit, self.logit_input)
        fitted = (self.calibration or {}).get("aspects", {})
        for aspect in np.unique(self.go_aspects):
            if aspect in fitted:
                cols = self.go_aspects == aspect
                a, b = fitted[aspect]["platt"]
                plain[:, cols] = scoring.to_scores(a * logit[:, cols] + b, "logit")
        return plain

    def thresholds(self) -> dict[str, float]:
        """{aspect: score threshold of the best validation Fmax} (needs a calibration of
        every aspect asked for)."""
        if self.homology is not None:  # the blend's own thresholds, chosen on valid
            missing = [a for a in self.aspects if a not in self.homology.thresholds]
            if missing:
                raise UserError(
                    f"bundle {self.checkpoint} has no blend threshold for {', '.join(missing)}: "
                    "give --threshold 0.5 or --no-homology"
                )
            return {a: self.homology.thresholds[a] for a in self.aspects}
        fitted = (self.calibration or {}).get("aspects", {})
        missing = [a for a in self.aspects if a not in fitted]
        if missing:
            why = f"has no calibration for {', '.join(missing)}" + (
                " (its validation split has too few proteins there)" if fitted else ""
            )
            fix = ("export the bundle again from its checkpoint (export fits the calibration)"
                   if self.folder is None else "run `protgo predict --calibrate` (needs the "
                   "dataset's valid split in the residue store)")  # fmt: skip
            raise UserError(
                f"checkpoint {self.checkpoint} {why}, so --threshold auto has nothing to use: "
                f"{fix}, leave those aspects out, or give --threshold 0.5"
            )
        return {a: fitted[a]["threshold"] for a in self.aspects}

    def predict(
        self, sequences: Mapping[str, str], propagate: bool = True, chunk: int = 256,
        progress: bool = False, keep_residues: bool = False,
    ) -> list[ProteinResult]:  # fmt: skip
        """Scores of every sequence ({pid: cleaned sequence}), in chunks of ``chunk``;
        ``keep_residues`` keeps each protein's residue vectors (ESM runs once per query)."""

        pids, out = list(sequences), []
        with progress_bar(
            total=len(pids), desc="predict", unit="protein", disable=not progress
        ) as bar:
            for i in range(0, len(pids), chunk):
                part = {p: sequences[p] for p in pids[i : i + chunk]}
                res = self.residues(part, progress)
                vecs, _ = self.protein_vectors([res[p] for p in part])
                sc = self.scores(vecs, propagate)
                _check_finite(sc, list(part))
                mixed = self._homology_parts(part, sc)
                for k, p in enumerate(part):
                    r = ProteinResult(p, part[p], sc[k], res[p] if keep_residues else None)
                    if mixed is not None:
                        r.scores, r.aligner, r.homology = mixed[0][k], sc[k], mixed[1][k]
                        r.hits = mixed[2].get(p, [])
                    out.append(r)
                bar.update(len(part))
        return out

    def _homology_parts(self, part: Mapping[str, str], aligner: np.ndarray):
        """(blended (N, T), homology (N, T), hits) of a chunk; None without homology."""
        if self.homology is None:
            return None
        hits = self.homology.hits(part, self.threads)
        hom = self.homology.scores(hits, list(part), self.go_ids)
        return self.homology.blend(aligner, hom, self.go_ids, self.ontology), hom, hits

    # ---- calibration --------------------------------------------------------------------------
    def fit_calibration(self, max_proteins: int = 2000) -> dict:
        """Fit and save the calibration (:func:`protgo.infer.calibration.fit`); used from
        then on."""
        if self.folder is None:
            raise UserError(f"bundle {self.checkpoint} carries its calibration and no dataset "
                            "to fit another: leave out --calibrate")  # fmt: skip
        self.calibration = calibration.fit(self, max_proteins)
        return self.calibration


def _check_finite(scores: np.ndarray, pids: list[str]) -> None:
    """Scores that are NaN or infinite mean damaged inputs (residue vectors, GO vectors or
    weights): fail naming the proteins, never drop them from the output."""
    bad = [p for p, row in zip(pids, np.isfinite(scores).all(axis=1), strict=True) if not row]
    if bad:
        raise UserError(
            f"non-finite scores for {len(bad)} proteins ({', '.join(bad[:5])}): their residue "
            "vectors, the GO vectors or the checkpoint are damaged; run `protgo embed "
            "residues` and `protgo embed go --force` again, or use another checkpoint"
        )


def go_text_cache(cfg, phase: int, aspects: list[str], data_dir: Path) -> GoVectorCache:
    """The GO text vectors of ``aspects`` at the checkpoint's phase: the cache written in
    training when it covers ``aspects`` (its directory names the phase's texts), else encoded
    now (and cached)."""
    name = Path(cfg.data.dataset).name
    for trained in (cfg.data.aspects, aspects):
        d = cache_dir(data_dir, name, cfg.go_text, phase, trained)
        if set(aspects) <= set(trained) and (d / "manifest.json").is_file():
            cache = GoVectorCache.load(d)
            break
    else:
        cache, _ = embed_go(cfg.data.dataset, phase, aspects, data_dir, cfg.go_text)
    return cache.filter_aspect(aspects)


def _config_of(state: dict, path: Path):

    try:
        cfg = Config.model_validate(state["config"])
    except Exception as exc:  # noqa: BLE001 - any mismatch has the same remedy
        raise UserError(
            f"checkpoint {path} holds a config this protgo cannot read ({type(exc).__name__}); "
            "use the protgo version that trained it"
        ) from None
    # checkpoints from before model.term_bias have no term-bias head: plain cosine scores
    cfg.model.term_bias = "term_bias.weight" in state["model"]
    return cfg


def _check_aspects(aspects: Iterable[str] | None, trained: list[str]) -> list[str]:
    if aspects is None:
        return list(trained)
    out = [a.strip().upper() for a in aspects if a.strip()]
    bad = [a for a in out if a not in ASPECTS]
    if bad or not out:
        raise UserError(f"--aspects takes BP, MF and/or CC, got {', '.join(bad) or 'nothing'}")
    return sorted(set(out), key=ASPECTS.index)
