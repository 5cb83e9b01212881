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
   calibrated per aspect (Platt scaling fitted on the validation split) when a calibration
   is available, else ``sigmoid(logit)`` (``(cos + 1) / 2`` without a term bias), as the
   trainer's validation scores;
4. consistency: a parent scores at least its best child (:meth:`Ontology.propagate_matrix`),
   unless ``propagate=False``; roots are never reported.

Calibration (``--threshold auto``): logistic ``sigmoid(a * logit + b)`` per aspect on the
validation split's (protein, term) pairs, and the threshold that gives the best validation
Fmax on the calibrated, propagated scores. It is stored next to the checkpoint
(``<checkpoint>.calibration.json``, keyed by the checkpoint's bytes).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from protgo.errors import UserError
from protgo.infer import scoring
from protgo.io import atomic_write_text, check_output_path, file_sha256
from protgo.model.pooling import pad_residues

# Terms so general that nearly every protein carries them; left out of the readable output by
# default (still in the CAFA file: evaluators score them, and they are real annotations).
GENERAL = frozenset({
    "GO:0005488",  # binding
    "GO:0005515",  # protein binding
    "GO:0009987",  # cellular process
    "GO:0008152",  # metabolic process
    "GO:0110165",  # cellular anatomical entity
    "GO:0005622",  # intracellular anatomical structure
})  # fmt: skip
CAFA_MAX_TERMS = 1500  # CAFA's cap of terms per protein
CAFA_MIN_SCORE = 0.001  # lower scores are left out of protgo.tsv


@dataclass
class ProteinResult:
    """One protein's scores: ``scores[j]`` for ``Predictor.go_ids[j]`` (propagated)."""

    pid: str
    sequence: str
    scores: np.ndarray  # (T,)
    residues: np.ndarray | None = None  # (L, D) fp16, kept when asked (for attributions)


class Predictor:
    """A trained aligner with its GO vectors, ready to score sequences."""

    def __init__(
        self, checkpoint: Path, data_dir: Path | None = None,
        aspects: Iterable[str] | None = None, device: str = "cpu",
    ):  # fmt: skip
        from protgo.model.checkpoints import load_checkpoint, resolve_checkpoint

        self.checkpoint = resolve_checkpoint(Path(checkpoint))
        state = load_checkpoint(self.checkpoint, "cpu")
        self.cfg = _config_of(state, self.checkpoint)
        self.data_dir = Path(data_dir) if data_dir else self.cfg.data.resolved_data_dir()
        self.device = torch.device(device)
        self.phase = int(state.get("phase") or 0)
        self.step = int(state.get("step", 0))
        self._load_dataset()
        self.aspects = _check_aspects(aspects, self.cfg.data.aspects)
        self._load_model(state)
        self.calibration = self._read_calibration()
        self._encoder = None
        self._store = self._open_store()

    # ---- loading ---------------------------------------------------------------------------
    def _load_dataset(self) -> None:
        from protgo.data.folder import DatasetFolder

        self.folder = DatasetFolder.load(self.cfg.data.dataset, self.data_dir)
        self.ontology = self.folder.ontology

    def _load_model(self, state: dict) -> None:
        from protgo.model.aligner import ProtGoAligner

        ids, aspects, text = go_text_vectors(self.cfg, self.phase, self.aspects, self.data_dir)
        keep = scoring.scorable_columns(self.ontology, ids)
        self.go_ids = [ids[i] for i in keep]
        self.go_aspects = np.array([aspects[i] for i in keep])
        weights = state.get("model")
        if not isinstance(weights, dict) or "pool.key.weight" not in weights:
            raise UserError(
                f"checkpoint {self.checkpoint} holds no aligner weights (no 'model' entry with "
                "pool.key.weight): give a checkpoint written by `protgo train`"
            )
        residue_dim = int(weights["pool.key.weight"].shape[1])
        self.model = ProtGoAligner(self.cfg.model, residue_dim, text.shape[1])
        try:
            self.model.load_state_dict(weights)
        except RuntimeError as exc:
            raise UserError(
                f"checkpoint {self.checkpoint} does not fit its own config's model "
                f"({str(exc).splitlines()[0]}); was the file edited?"
            ) from None
        self.model.to(self.device).eval()
        self.residue_dim = residue_dim
        with torch.no_grad():
            self.go_text = torch.from_numpy(text[keep]).to(self.device)  # (T, Dt)
            self.go = self.model.encode_go(self.go_text)  # (T, A) unit vectors
        self.logit_input = "cos" if self.model.term_bias is None else "logit"

    def _open_store(self):
        """The residue store of the checkpoint's ESM settings, or None if there is none."""
        from protgo.stores.residues import ESMResidueStore

        try:
            # Each shard read is checked against its checksum once per process.
            return ESMResidueStore.for_config(self.cfg.residues, self.data_dir)
        except UserError:
            return None

    @property
    def encoder(self):
        """The ESM encoder, loaded on first use (only for sequences not in the store)."""
        if self._encoder is None:
            from protgo.encoders.protein import protein_encoder

            self._encoder = protein_encoder(self.cfg.residues)
            if self._encoder.dim != self.residue_dim:
                raise UserError(
                    f"ESM model '{self.cfg.residues.model}' gives {self._encoder.dim}-dim "
                    f"residues, the checkpoint expects {self.residue_dim}: is it the same model?"
                )
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
        from tqdm import tqdm

        enc = self.encoder
        pids, seqs = list(todo), list(todo.values())
        arrays = [np.empty((len(s), enc.dim), dtype=np.float16) for s in seqs]
        bar = tqdm(total=sum(map(len, seqs)), desc="embed (ESM)", unit="res", unit_scale=True,
                   disable=not progress, leave=False)  # fmt: skip
        for idx, seg, vec in enc.embed_batched(seqs, enc.cfg.batch_tokens, bar):
            arrays[idx][seg.lo : seg.hi] = vec.numpy()  # fp16 as the store keeps them
        bar.close()
        return dict(zip(pids, arrays, strict=True))

    @torch.no_grad()
    def protein_vectors(
        self, arrays: list[np.ndarray], batch_residues: int = 16384
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """((N, A) unit vectors, per-protein attention (L,)), in the order of ``arrays``.

        Proteins are sorted by length and packed up to ``batch_residues`` padded residues."""
        from protgo.encoders.protein import pack_by_tokens

        order = sorted(range(len(arrays)), key=lambda i: len(arrays[i]))
        vecs = torch.empty(len(arrays), self.go.shape[1])
        attn: list[torch.Tensor | None] = [None] * len(arrays)
        for batch in pack_by_tokens(order, batch_residues, key=lambda i: len(arrays[i])):
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
        go, text = (self.go, self.go_text) if cols is None else (self.go[cols], self.go_text[cols])
        out = self.model.term_logits(vecs.to(self.device), go, text)
        return out.cpu().numpy().astype(np.float64)

    def scores(self, vecs: torch.Tensor, propagate: bool = True) -> np.ndarray:
        """(N, A) protein vectors -> (N, T) scores in [0, 1] over ``go_ids``."""
        out = self.calibrate_logits(self.logits(vecs))
        return scoring.propagate(out, self.go_ids, self.ontology) if propagate else out

    def calibrate_logits(self, logit: np.ndarray) -> np.ndarray:
        """Scores in [0, 1]: Platt-calibrated for the aspects the calibration covers, else
        ``sigmoid(logit)`` (``(cos + 1) / 2`` without a term bias)."""
        plain = scoring.to_scores(logit, self.logit_input)
        fitted = (self.calibration or {}).get("aspects", {})
        for aspect in np.unique(self.go_aspects):
            if aspect in fitted:
                cols = self.go_aspects == aspect
                a, b = fitted[aspect]["platt"]
                plain[:, cols] = _sigmoid(a * logit[:, cols] + b)
        return plain

    def thresholds(self) -> dict[str, float]:
        """{aspect: score threshold of the best validation Fmax} (needs a calibration of
        every aspect asked for)."""
        fitted = (self.calibration or {}).get("aspects", {})
        missing = [a for a in self.aspects if a not in fitted]
        if missing:
            why = f"has no calibration for {', '.join(missing)}" + (
                " (its validation split has too few proteins there)" if fitted else ""
            )
            raise UserError(
                f"checkpoint {self.checkpoint} {why}, so --threshold auto has nothing to use: "
                "run `protgo predict --calibrate` (needs the dataset's valid split in the "
                "residue store), leave those aspects out, or give --threshold 0.5"
            )
        return {a: fitted[a]["threshold"] for a in self.aspects}

    def predict(
        self, sequences: Mapping[str, str], propagate: bool = True, chunk: int = 256,
        progress: bool = False, keep_residues: bool = False,
    ) -> list[ProteinResult]:  # fmt: skip
        """Scores of every sequence ({pid: cleaned sequence}), in chunks of ``chunk``;
        ``keep_residues`` keeps each protein's residue vectors (ESM runs once per query)."""
        from tqdm import tqdm

        pids, out = list(sequences), []
        with tqdm(total=len(pids), desc="predict", unit="protein", disable=not progress) as bar:
            for i in range(0, len(pids), chunk):
                part = {p: sequences[p] for p in pids[i : i + chunk]}
                res = self.residues(part, progress)
                vecs, _ = self.protein_vectors([res[p] for p in part])
                sc = self.scores(vecs, propagate)
                _check_finite(sc, list(part))
                out += [ProteinResult(p, part[p], sc[k], res[p] if keep_residues else None)
                        for k, p in enumerate(part)]  # fmt: skip
                bar.update(len(part))
        return out

    # ---- calibration --------------------------------------------------------------------------
    def _calibration_path(self) -> Path:
        return self.checkpoint.with_name(self.checkpoint.name + ".calibration.json")

    def _read_calibration(self) -> dict | None:
        path = self._calibration_path()
        if not path.is_file():
            return None
        cal = json.loads(path.read_text())
        same = cal.get("checkpoint_sha256") == file_sha256(self.checkpoint)
        return cal if same and cal.get("input", "cos") == self.logit_input else None

    def fit_calibration(self, max_proteins: int = 2000) -> dict:
        """Platt scaling and best-Fmax thresholds per aspect on the validation split; saved
        next to the checkpoint and used from then on."""
        from protgo.eval.metrics import annotated_in, fmax_smin, truth_matrix

        self.calibration = None
        ann, onto = self.folder.annotations, self.ontology
        valid = self.folder.ids("valid")
        if self._store is None or not all(p in self._store for p in valid):
            raise UserError(
                f"calibration needs the valid proteins of '{self.cfg.data.dataset}' in the "
                "residue store: run `protgo embed residues` for that dataset first"
            )
        result = {"checkpoint_sha256": file_sha256(self.checkpoint), "input": self.logit_input,
                  "aspects": {}}  # fmt: skip
        for aspect in sorted(set(self.go_aspects)):
            pids = annotated_in(ann, valid, onto, aspect)[:max_proteins]
            if len(pids) < 5:
                continue
            cols = np.flatnonzero(self.go_aspects == aspect)
            terms = [self.go_ids[j] for j in cols]
            vecs, _ = self.protein_vectors([self._store.get(p) for p in pids])
            logit = self.logits(vecs, cols)  # (N, Ta)
            truth = truth_matrix(ann, pids, terms, onto)
            a, b = platt(logit, truth, init=(10.0, -5.0) if self.logit_input == "cos" else (1, 0))
            probs = scoring.propagate(_sigmoid(a * logit + b), terms, onto)
            best = fmax_smin(probs, truth)
            result["aspects"][aspect] = {"platt": [a, b], "threshold": best["tau"],
                                         "fmax": best["fmax"], "proteins": len(pids)}  # fmt: skip
        atomic_write_text(self._calibration_path(), json.dumps(result, indent=1) + "\n")
        self.calibration = result
        return result


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


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def platt(
    cos: np.ndarray, truth: np.ndarray, steps: int = 200, init: tuple[float, float] = (10, -5)
) -> tuple[float, float]:
    """(a, b) of ``sigmoid(a * cos + b)`` fitted to ``truth`` by logistic regression
    (``cos``: cosines or term logits; ``init``: the starting (a, b)).

    Positives are few (a protein has ~10 of thousands of terms), but the plain likelihood is
    what makes scores probabilities, so the classes are not reweighted."""
    x = torch.from_numpy(cos.ravel()).double()
    y = torch.from_numpy(truth.ravel().astype(np.float64))
    ab = torch.tensor([float(v) for v in init], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([ab], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(ab[0] * x + ab[1], y)
        loss.backward()
        return loss

    opt.step(closure)
    a, b = ab.detach().tolist()
    return float(a), float(b)


def go_text_vectors(
    cfg, phase: int, aspects: list[str], data_dir: Path
) -> tuple[list[str], list[str], np.ndarray]:
    """(ids, aspects, (T, Dt) text vectors) of the checkpoint's phase: the cache written in
    training when it covers ``aspects``, else encoded now (and cached)."""
    from protgo.stores.go_vectors import GoVectorCache, cache_dir, embed_go

    name = Path(cfg.data.dataset).name
    for trained in (cfg.data.aspects, aspects):
        d = cache_dir(data_dir, name, cfg.go_text.encoder, phase, trained)
        if cfg.go_text.quantize_int8:
            d = d.with_name(d.name + "-int8")
        if set(aspects) <= set(trained) and (d / "manifest.json").is_file():
            cache = GoVectorCache.load(d)
            if cache.manifest.get("phase") == phase:
                break
    else:
        cache, _ = embed_go(cfg.data.dataset, phase, aspects, data_dir, cfg.go_text)
    cache = cache.filter_aspect(aspects)
    return cache.ids, cache.aspects, cache.vectors


def _config_of(state: dict, path: Path):
    from protgo.config import Config

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
    bad = [a for a in out if a not in ("BP", "MF", "CC")]
    if bad or not out:
        raise UserError(f"--aspects takes BP, MF and/or CC, got {', '.join(bad) or 'nothing'}")
    return sorted(set(out), key=("BP", "MF", "CC").index)


# ---- reading input, writing output ------------------------------------------------------------
def read_query_fasta(path: Path) -> dict[str, str]:
    """{pid: cleaned sequence}; every record checked before anything runs."""
    from protgo.data.fasta import read_fasta
    from protgo.encoders.protein import clean_sequence

    return {pid: clean_sequence(pid, seq) for pid, seq in read_fasta(Path(path)).items()}


def parse_threshold(text: str | None) -> str | float | None:
    if text is None or text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"--threshold takes 'auto' or a number in [0, 1], got '{text}'") from None
    if not 0.0 <= value <= 1.0:
        raise UserError(f"--threshold must be in [0, 1], got {value}")
    return value


def top_terms(
    pred: Predictor, result: ProteinResult, top_k: int, threshold: str | float | None,
    keep_general: bool = False,
) -> list[dict]:  # fmt: skip
    """The readable rows of one protein: best ``top_k`` per aspect at or above the threshold."""
    cut = pred.thresholds() if threshold == "auto" else {}
    rows = []
    for aspect in pred.aspects:
        cols = np.flatnonzero(pred.go_aspects == aspect)
        if not keep_general:
            cols = np.array([j for j in cols if pred.go_ids[j] not in GENERAL], dtype=np.int64)
        sc = result.scores[cols]
        order = cols[np.argsort(-sc, kind="stable")]
        t = cut.get(aspect, 0.0) if threshold == "auto" else (threshold or 0.0)
        for j in order[:top_k]:
            if result.scores[j] < t:
                break
            g = pred.go_ids[j]
            rows.append({"protein": result.pid, "aspect": aspect, "go_id": g,
                         "name": pred.ontology.terms[g].name,
                         "score": round(float(result.scores[j]), 4)})  # fmt: skip
    return rows


def write_outputs(out: Path, files: Mapping[str, str]) -> None:
    """Write every file into a staging folder first, then move them in: nothing half-written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=out, prefix=".staging-"))
    try:
        for name, text in files.items():
            (stage / name).write_text(text)
        for name in files:
            os.replace(stage / name, out / name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def cafa_lines(
    pred: Predictor, results: list[ProteinResult], min_score: float = CAFA_MIN_SCORE
) -> str:
    """``protein<TAB>GO<TAB>score``, best first, at most CAFA's 1500 terms per protein."""
    lines = []
    for r in results:
        order = np.argsort(-r.scores, kind="stable")[:CAFA_MAX_TERMS]
        lines += [f"{r.pid}\t{pred.go_ids[j]}\t{r.scores[j]:.4f}" for j in order
                  if r.scores[j] >= min_score]  # fmt: skip
    return "\n".join(lines) + "\n"


def run_predict(
    checkpoint: Path, fasta: Path, out: Path, top_k: int = 20,
    aspects: Iterable[str] | None = None, attributions: bool = False, propagate: bool = True,
    threshold: str | None = None, data_dir: Path | None = None, calibrate: bool = False,
    keep_general: bool = False, progress: bool = True,
) -> dict:  # fmt: skip
    """`protgo predict`: checks every input first, then writes ``out/`` (see the CLI help)."""
    import time

    if top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {top_k}")
    check_output_path(out, "--out", folder=True)
    cut = parse_threshold(threshold)
    seqs = read_query_fasta(fasta)
    pred = Predictor(checkpoint, data_dir, aspects)
    if calibrate or (cut == "auto" and not pred.calibration):
        pred.fit_calibration()
    if cut == "auto":
        pred.thresholds()  # fails now, before any work, when there is no calibration
    t0 = time.perf_counter()
    results = pred.predict(seqs, propagate=propagate, progress=progress,
                           keep_residues=attributions)  # fmt: skip
    seconds = time.perf_counter() - t0
    rows = [row for r in results for row in top_terms(pred, r, top_k, cut, keep_general)]
    files = {"protgo.tsv": cafa_lines(pred, results), "predictions.tsv": readable_tsv(rows),
             "predictions.json": readable_json(pred, results, rows, cut)}  # fmt: skip
    if attributions:
        files["attributions.json"] = attributions_json(pred, results, rows)
    write_outputs(out, files)
    silent = [r.pid for r in results if not (r.scores >= CAFA_MIN_SCORE).any()]
    if silent:
        print(f"note: {len(silent)} proteins score no term at or above {CAFA_MIN_SCORE} and "
              f"have no line in protgo.tsv: {', '.join(silent[:10])}")  # fmt: skip
    return {"proteins": len(results), "terms_scored": len(pred.go_ids), "seconds": seconds,
            "proteins_without_cafa_lines": len(silent),
            "proteins_per_s": len(results) / max(seconds, 1e-9), "out": str(out),
            "files": sorted(files)}  # fmt: skip


def readable_tsv(rows: list[dict]) -> str:
    cols = ("protein", "aspect", "go_id", "name", "score")
    body = ["\t".join(str(r[c]) for c in cols) for r in rows]
    return "\n".join(["\t".join(cols), *body]) + "\n"


def readable_json(pred: Predictor, results: list[ProteinResult], rows: list[dict], cut) -> str:
    by_pid: dict[str, list[dict]] = {r.pid: [] for r in results}
    for row in rows:
        by_pid[row["protein"]].append({k: row[k] for k in ("aspect", "go_id", "name", "score")})
    thresholds = pred.thresholds() if cut == "auto" else cut
    meta = {"checkpoint": str(pred.checkpoint), "step": pred.step, "phase": pred.phase,
            "aspects": pred.aspects, "calibrated": bool(pred.calibration),
            "threshold": thresholds}  # fmt: skip
    proteins = [{"protein": r.pid, "length": len(r.sequence), "terms": by_pid[r.pid]}
                for r in results]  # fmt: skip
    return json.dumps({"meta": meta, "proteins": proteins}, indent=1) + "\n"


def attributions_json(pred: Predictor, results: list[ProteinResult], rows: list[dict]) -> str:
    """Per-residue importance of each protein's reported terms (see infer.attribution)."""
    from protgo.infer.attribution import explain

    col = {g: j for j, g in enumerate(pred.go_ids)}
    out = {}
    for r in results:
        terms = [row["go_id"] for row in rows if row["protein"] == r.pid]
        res = r.residues if r.residues is not None else pred.residues({r.pid: r.sequence})[r.pid]
        go = pred.go[[col[g] for g in terms]].cpu()  # (K, A)
        out[r.pid] = {"sequence": r.sequence, **explain(pred.model, res, go, terms)}
    return json.dumps(out) + "\n"
