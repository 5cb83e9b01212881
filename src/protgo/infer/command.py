"""``protgo predict``: check every input, score in chunks (each finished chunk kept, so an
interrupted run resumes: :mod:`protgo.infer.stream`), and write the output files (all at
once, through a staging folder): ``protgo.tsv`` (CAFA format), ``predictions.tsv`` /
``predictions.json`` (readable, best first) and, with ``--attributions``,
``attributions.json``."""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

import protgo
from protgo.data.fasta import read_query_fasta
from protgo.errors import UserError
from protgo.infer.attribution import explain
from protgo.infer.predict import Predictor, ProteinResult
from protgo.infer.stream import ChunkedRun, run_key
from protgo.io import check_output_path, file_lock, progress_bar

log = logging.getLogger(__name__)

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
HOMOLOGY_BLOCK = 16  # chunks whose DIAMOND search is one run (a run costs ~5 s fixed)
CAFA_MIN_SCORE = 0.001  # lower scores are left out of protgo.tsv


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


# score is the blend when the model carries a homology reference (aligner and homology its
# parts, hit the best reference protein carrying the term, as protein:bitscore)
ROW_KEYS = ("protein", "aspect", "go_id", "name", "score", "class", "threshold", "aligner",
            "homology", "hit")  # fmt: skip


def top_terms(
    pred: Predictor, result: ProteinResult, top_k: int, threshold: str | float | None,
    keep_general: bool = False, most_specific: bool = False,
) -> list[dict]:  # fmt: skip
    """The readable rows of one protein: best ``top_k`` per aspect at or above the threshold;
    ``most_specific`` drops a term when a descendant of it is reported too (after
    propagation a parent scores at least its best child, so the list fills with ancestors)."""
    cut = pred.thresholds() if threshold == "auto" else {}
    rows = []
    for aspect in pred.aspects:
        cols = pred.columns(aspect, frozenset() if keep_general else GENERAL)
        t = cut.get(aspect, 0.0) if threshold == "auto" else (threshold or 0.0)
        order = best_first(result.scores, cols, 8 * top_k)
        kept, ran_out = _walk(pred, result.scores, order, top_k, t, most_specific)
        if ran_out and len(order) < len(cols):  # past the best candidates: all, in order
            order = best_first(result.scores, cols, len(cols))
            kept, _ = _walk(pred, result.scores, order, top_k, t, most_specific)
        for j in kept:
            g = pred.go_ids[j]
            rows.append({"protein": result.pid, "aspect": aspect, "go_id": g,
                         "name": pred.ontology.terms[g].name,
                         "score": round(float(result.scores[j]), 4),
                         "class": pred.term_class(g), "threshold": round(t, 4),
                         **_parts(pred, result, j)})  # fmt: skip
    return rows


def best_first(scores: np.ndarray, cols: np.ndarray, k: int) -> np.ndarray:
    """The columns ``cols`` (ascending) by score, best first, ties in column order (a stable
    sort's order), keeping only the best ``k`` and those tied with the ``k``-th."""
    s = scores[cols]
    if k < len(cols):
        kth = -np.partition(-s, k - 1)[k - 1]
        keep = np.flatnonzero(s >= kth)
        cols, s = cols[keep], s[keep]
    return cols[np.lexsort((cols, -s))]


def _walk(
    pred: Predictor, scores: np.ndarray, order: np.ndarray, top_k: int, t: float,
    most_specific: bool,
) -> tuple[list[int], bool]:  # fmt: skip
    """(the reported columns of one aspect from ``order`` (best first): up to ``top_k`` at or
    above ``t``; whether ``order`` ran out before either limit was met)."""
    kept: list[int] = []
    for j in order:
        if len(kept) == top_k or scores[j] < t:
            return kept, False
        g = pred.go_ids[j]
        if most_specific:
            if g in _ancestors_of(pred, [pred.go_ids[k] for k in kept]):
                continue  # a descendant of it is already in: the descendant says more
            up = pred.ontology.ancestors(g)
            kept = [k for k in kept if pred.go_ids[k] not in up]  # g is more specific
        kept.append(j)
    return kept, True


def _parts(pred: Predictor, result: ProteinResult, j: int) -> dict:
    """A row's aligner and homology parts and the best hit carrying its term ('' without
    homology)."""
    if result.aligner is None:
        return {"aligner": round(float(result.scores[j]), 4), "homology": "", "hit": ""}
    return {"aligner": round(float(result.aligner[j]), 4),
            "homology": round(float(result.homology[j]), 4),
            "hit": pred.homology.best_hit(result.hits or [], pred.go_ids[j])}  # fmt: skip


def _ancestors_of(pred: Predictor, ids: list[str]) -> set[str]:
    out: set[str] = set()
    for g in ids:
        out |= pred.ontology.ancestors(g)
    return out


OUTPUT_FILES = ("protgo.tsv", "predictions.tsv", "predictions.json", "attributions.json")


def check_out(out: Path, overwrite: bool) -> None:
    """Before any work: ``out`` can be written, and holds no earlier predictions unless
    ``overwrite``."""
    check_output_path(out, "--out", folder=True)
    old = [f for f in OUTPUT_FILES if (Path(out) / f).exists()]
    if old and not overwrite:
        raise UserError(f"--out {out} already holds predictions ({', '.join(old)}): give a new "
                        "folder, or --overwrite to replace them")  # fmt: skip
    # an unwritable place is found now, not after all the scoring (nothing is created yet)
    here = next(p for p in (Path(out), *Path(out).absolute().parents) if p.exists())
    if not os.access(here, os.W_OK | os.X_OK):
        raise UserError(f"--out {out} cannot be written ({here} is not writable): choose "
                        "another folder")  # fmt: skip


def write_outputs(out: Path, files: Mapping[str, Iterable[str]]) -> None:
    """Write every file (its text in pieces) into a staging folder first, then move them in:
    nothing half-written. The earlier run's files go first, so a kill between the moves
    leaves a set with files missing, never new files beside old ones; staging folders a
    killed run left are removed."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for left in out.glob(".staging-*"):
        shutil.rmtree(left, ignore_errors=True)
    stage = Path(tempfile.mkdtemp(dir=out, prefix=".staging-"))
    try:
        for name, pieces in files.items():
            with (stage / name).open("w") as fh:
                fh.writelines(pieces)
        for name in OUTPUT_FILES:
            (out / name).unlink(missing_ok=True)
        for name in files:
            os.replace(stage / name, out / name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def cafa_lines(
    pred: Predictor, results: list[ProteinResult], min_score: float = CAFA_MIN_SCORE
) -> str:
    """``protein<TAB>GO<TAB>score``, best first, at most CAFA's 1500 terms per protein."""
    lines = []
    every = np.arange(len(pred.go_ids))
    for r in results:
        order = best_first(r.scores, every, CAFA_MAX_TERMS)[:CAFA_MAX_TERMS]
        lines += [f"{r.pid}\t{pred.go_ids[j]}\t{r.scores[j]:.4f}\n" for j in order
                  if r.scores[j] >= min_score]  # fmt: skip
    return "".join(lines)


def _one_run_per_out(run):
    """``run`` with its ``out`` folder claimed: ``out/.lock`` held throughout, so a second
    `protgo predict` into the same folder is refused while one runs (the kernel drops the lock
    when the process dies); a folder made here is removed again when the run leaves nothing."""

    @functools.wraps(run)
    def claimed(checkpoint, fasta, out, *args, **kwargs):
        out = Path(out)
        check_out(out, kwargs.get("overwrite", False))
        created = not out.exists()
        out.mkdir(parents=True, exist_ok=True)
        try:
            with file_lock(out / ".lock", blocking=False) as taken:
                if not taken:
                    raise UserError(f"--out {out} is in use by another `protgo predict`: wait "
                                    "for it to end, or give another --out")  # fmt: skip
                return run(checkpoint, fasta, out, *args, **kwargs)
        finally:
            if created and [p.name for p in out.iterdir()] == [".lock"]:
                shutil.rmtree(out, ignore_errors=True)

    return claimed


@_one_run_per_out
def run_predict(
    checkpoint: Path, fasta: Path, out: Path, top_k: int = 20,
    aspects: Iterable[str] | None = None, attributions: bool = False, propagate: bool = True,
    threshold: str | None = None, data_dir: Path | None = None, calibrate: bool = False,
    keep_general: bool = False, progress: bool = True, most_specific: bool = False,
    obo: Path | None = None, device: str = "cpu", batch_size: int = 256, overwrite: bool = False,
    homology: bool = True, threads: int = 2, references: Iterable[str] = (),
) -> dict:  # fmt: skip
    """`protgo predict`: checks every input first, then scores the proteins in chunks of
    ``batch_size``, each finished chunk kept in ``out/partial/`` (:mod:`protgo.infer.stream`:
    the same command resumes an interrupted run), and assembles ``out/`` at the end (see the
    CLI help). ``checkpoint``: a training checkpoint or run folder, or a bundle directory."""
    if top_k < 1 or batch_size < 1:
        raise UserError(f"--top-k and --batch-size must be at least 1, got {top_k}, {batch_size}")
    cut = parse_threshold(threshold)
    seqs = read_query_fasta(fasta)
    pred = Predictor(checkpoint, data_dir, aspects, device, obo, homology, threads,
                     list(references))  # fmt: skip
    if pred.homology is not None and shutil.which("diamond") is None:
        raise UserError(
            f"{checkpoint} blends its scores with DIAMOND homology, and DIAMOND is not "
            "installed: `apt-get install diamond-aligner` (scripts/setup.sh does it), or pass "
            "--no-homology for the aligner's scores alone"
        )
    if calibrate or (cut == "auto" and not pred.calibration and pred.folder is not None):
        pred.fit_calibration()
    if cut == "auto":
        pred.thresholds()  # fails now, before any work, when there is no calibration
    pids = list(seqs)
    chunks = [pids[i : i + batch_size] for i in range(0, len(pids), batch_size)]
    options = {"top_k": top_k, "aspects": pred.aspects, "attributions": attributions,
               "propagate": propagate, "threshold": cut, "keep_general": keep_general,
               "most_specific": most_specific, "batch_size": batch_size}  # fmt: skip
    key = run_key({"sequences": list(seqs.items()), "model": _model_identity(pred),
                   "options": options, "version": protgo.__version__})  # fmt: skip
    run = ChunkedRun.open(Path(out), key, len(chunks), overwrite)
    done = run.finished()
    if done:
        log.info("resuming: %d of %d chunks were done in %s", len(done), len(chunks), run.root)
    t0 = time.perf_counter()
    todo = sorted(set(range(len(chunks))) - set(done))
    try:
        first = sum(len(chunks[k]) for k in done)
        with progress_bar(total=len(pids), initial=first, desc="predict", unit="protein",
                          disable=not progress, smoothing=0.1) as bar:  # fmt: skip
            for n, k in enumerate(todo):
                if pred.homology is not None and n % HOMOLOGY_BLOCK == 0:
                    block = [p for c in todo[n : n + HOMOLOGY_BLOCK] for p in chunks[c]]
                    pred.homology.prefetch({p: seqs[p] for p in block}, threads)
                part = {p: seqs[p] for p in chunks[k]}
                results = pred.predict(part, propagate=propagate, chunk=batch_size,
                                       keep_residues=attributions)  # fmt: skip
                run.write(k, *_chunk_files(pred, results, top_k, cut, keep_general,
                                           most_specific, attributions))  # fmt: skip
                bar.update(len(part))
    except BaseException:
        if not run.finished():  # nothing worth resuming: leave no trace of this run
            run.remove()
        raise
    seconds = time.perf_counter() - t0
    files = {"protgo.tsv": run.pieces("protgo.tsv"),
             "predictions.tsv": ("\t".join(ROW_KEYS) + "\n", *run.pieces("predictions.tsv")),
             "predictions.json": _joined_json(run.pieces("predictions.json"), "[", "]",
                                              readable_meta(pred, cut))}  # fmt: skip
    if attributions:
        files["attributions.json"] = _joined_json(run.pieces("attributions.json"), "{", "}")
    write_outputs(out, files)
    silent = [p for k in range(len(chunks)) for p in run.info(k)["silent"]]
    run.remove()
    if silent:
        log.warning("%d proteins score no term at or above %s and have no line in protgo.tsv: "
                    "%s", len(silent), CAFA_MIN_SCORE, ", ".join(silent[:10]))  # fmt: skip
    scored = sum(len(chunks[k]) for k in todo)
    return {"proteins": len(pids), "terms_scored": len(pred.go_ids), "seconds": seconds,
            "proteins_without_cafa_lines": len(silent), "resumed_chunks": len(done),
            "proteins_per_s": scored / max(seconds, 1e-9), "out": str(out),
            "files": sorted(files)}  # fmt: skip


def _model_identity(pred: Predictor) -> dict:
    """What the scores depend on besides the options: the model's files and what was fitted
    on them (calibration, blend), and the ontology scored."""
    path = Path(pred.checkpoint)
    main = path / "bundle.json" if path.is_dir() else path
    return {"file": str(path.resolve()), "size": main.stat().st_size,
            "mtime_ns": main.stat().st_mtime_ns, "calibration": pred.calibration,
            "homology": pred.homology.key if pred.homology is not None else None,
            "terms": run_key({"ids": pred.go_ids}),
            "go_release": pred.go_release}  # fmt: skip


def _chunk_files(
    pred: Predictor, results: list[ProteinResult], top_k: int, cut, keep_general: bool,
    most_specific: bool, attributions: bool,
) -> tuple[dict[str, str], dict]:  # fmt: skip
    """(the output files' text for one chunk, its info: proteins without a CAFA line)."""
    rows = [row for r in results
            for row in top_terms(pred, r, top_k, cut, keep_general, most_specific)]  # fmt: skip
    files = {"protgo.tsv": cafa_lines(pred, results),
             "predictions.tsv": "".join("\t".join(str(r[c]) for c in ROW_KEYS) + "\n"
                                        for r in rows),
             "predictions.json": readable_proteins(results, rows)}  # fmt: skip
    if attributions:
        files["attributions.json"] = attributions_json(pred, results, rows)
    silent = [r.pid for r in results if not (r.scores >= CAFA_MIN_SCORE).any()]
    return files, {"silent": silent}


def _joined_json(pieces: Iterable[str], open_: str, close: str, meta: dict | None = None):
    """One JSON document from chunk fragments (the inside of an array or object), piece by
    piece: ``{"meta": ..., "proteins": [...]}`` with ``meta``, else ``{...}``."""
    if meta is not None:
        yield '{"meta": ' + json.dumps(meta, indent=1) + ', "proteins": ' + open_ + "\n"
    else:
        yield open_
    for i, piece in enumerate(pieces):
        yield ("," if i else "") + piece
    yield close + ("}" if meta is not None else "") + "\n"


def readable_meta(pred: Predictor, cut) -> dict:
    """The ``meta`` of ``predictions.json``: the model, its method, versions, thresholds."""
    thresholds = pred.thresholds() if cut == "auto" else cut
    if isinstance(thresholds, dict):
        thresholds = {a: round(v, 6) for a, v in thresholds.items()}
    hom = pred.homology
    method = ({"method": "blend", "alpha": hom.alpha, "reference": hom.evidence,
               "reference_proteins": len(hom.sequences)} if hom is not None
              else {"method": "aligner"})  # fmt: skip
    return {"checkpoint": str(pred.checkpoint), "step": pred.step, "phase": pred.phase,
            **method, "protgo_version": protgo.__version__, "go_release": pred.go_release,
            "aspects": pred.aspects, "calibrated": bool(pred.calibration),
            "threshold": thresholds}  # fmt: skip


def readable_proteins(results: list[ProteinResult], rows: list[dict]) -> str:
    """The ``proteins`` entries of ``predictions.json`` for ``results``, comma-separated."""
    by_pid: dict[str, list[dict]] = {r.pid: [] for r in results}
    for row in rows:
        by_pid[row["protein"]].append(
            {k: row[k] for k in ROW_KEYS if k not in ("protein", "threshold")}
        )
    return ",\n".join(
        json.dumps({"protein": r.pid, "length": len(r.sequence), "terms": by_pid[r.pid]},
                   indent=1)
        for r in results
    )  # fmt: skip


def attributions_json(pred: Predictor, results: list[ProteinResult], rows: list[dict]) -> str:
    """Per-residue importance of each protein's reported terms (see infer.attribution)."""
    col = {g: j for j, g in enumerate(pred.go_ids)}
    out = {}
    for r in results:
        terms = [row["go_id"] for row in rows if row["protein"] == r.pid]
        res = r.residues if r.residues is not None else pred.residues({r.pid: r.sequence})[r.pid]
        go = pred.go[[col[g] for g in terms]].cpu()  # (K, A)
        out[r.pid] = {"sequence": r.sequence, **explain(pred.model, res, go, terms)}
    return json.dumps(out)[1:-1]  # the inside of the object: chunks are joined by commas
