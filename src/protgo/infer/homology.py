"""Homology inside a bundle: the aligner blended with DIAMOND label transfer, as ``predict``
gives it by default.

A bundle with homology carries its **reference set**, ``reference.tsv.gz``: the training
proteins with their sequence and direct annotations (protein, sequence, GO ids; propagated on
load), checked by sha256 (``bundle.json``: ``homology.sha256``), and per aspect
the aligner's weight ``alpha`` in the blend and the blend's threshold of best Fmax, both chosen
on the dataset's valid split (:func:`fit`). For each query, DIAMOND finds hits in the reference
(``blastp --more-sensitive``, e-value 1e-3, as the DIAMOND baseline); DeepGOPlus' DiamondScore
turns them into term scores (:func:`protgo.go.scoring.transfer_scores`), and

    score = alpha[aspect] * aligner + (1 - alpha[aspect]) * homology

(:func:`protgo.eval.baselines.blend`, the same rule ``protgo evaluate`` scores as its blend).
A query without a hit keeps ``alpha * aligner``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import random
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from protgo.data.folder import DatasetFolder
from protgo.data.ontology import Ontology
from protgo.data.seqsearch import DiamondOptions, make_db, search
from protgo.data.sequence import clean_sequence
from protgo.errors import UserError
from protgo.eval.baselines import alpha_per_term, blend, choose_alpha, diamond
from protgo.eval.metrics import evaluate_fast
from protgo.eval.predictions import Predictions
from protgo.go import scoring
from protgo.io import atomic_write, atomic_write_text, file_sha256

log = logging.getLogger(__name__)

REFERENCE = "reference.tsv.gz"


class Propagated(Mapping):
    """{protein: propagated GO ids}, each set computed on first use from the direct
    annotations (a reference of 500k proteins keeps only what the hits touch)."""

    def __init__(self, direct: Mapping[str, Iterable[str]], ontology: Ontology):
        self.direct, self.ontology = direct, ontology
        self._done: dict[str, set[str]] = {}

    def __getitem__(self, pid: str) -> set[str]:
        got = self._done.get(pid)
        if got is None:
            got = self._done[pid] = self.ontology.propagate(self.direct[pid])
        return got

    def __contains__(self, pid: object) -> bool:
        return pid in self.direct

    def __iter__(self) -> Iterator[str]:
        return iter(self.direct)

    def __len__(self) -> int:
        return len(self.direct)


@dataclass
class Reference:
    """A bundle's reference set (and any datasets added to it) and its blend settings."""

    sequences: dict[str, str]
    direct: dict[str, list[str]]  # protein -> direct GO ids
    alpha: dict[str, float]  # aspect -> the aligner's weight
    thresholds: dict[str, float]  # aspect -> the blend's threshold of best valid Fmax
    evidence: str
    ontology: Ontology
    key: str  # sha256 of what the reference holds: names its DIAMOND database
    db_dir: Path | None = None  # where DIAMOND databases are kept (None: a temp folder)

    def __post_init__(self):
        self.labels = Propagated(self.direct, self.ontology)
        self._db: Path | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._prefetched: dict[str, list] = {}  # query -> hits, searched ahead (prefetch)

    def extend(self, folder: DatasetFolder) -> None:
        """Add every annotated protein of ``folder`` (all splits) to the reference; a protein
        already in it keeps its sequence and gains the annotations."""
        added = 0
        for p, terms in folder.annotations.items():
            if p in self.direct:
                self.direct[p] = sorted(set(self.direct[p]) | terms)
            elif p in folder.sequences:
                self.sequences[p], self.direct[p] = folder.sequences[p], sorted(terms)
                added += 1
        self.labels = Propagated(self.direct, self.ontology)
        codes = folder.info.get("provenance", {}).get("annotation_source", "?")
        self.evidence += f"; + {added} proteins of dataset {folder.root.name} ({codes})"
        files = json.dumps(folder.info.get("files", {}), sort_keys=True)  # their sha256s
        self.key = hashlib.sha256(f"{self.key} {folder.root.name} {files}".encode()).hexdigest()
        self._db = None

    def database(self, opts: DiamondOptions) -> Path:
        """The DIAMOND database of the reference, made once: kept under ``db_dir`` by the
        reference's key (so later runs reuse it), else in a temp folder for this process."""
        if self._db is not None and self._db.is_file():
            return self._db
        if self.db_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="protgo-reference-")
            self._db = make_db(self.sequences, Path(self._tmp.name) / "reference", opts)
            return self._db
        path = Path(self.db_dir) / f"reference-{self.key[:16]}.dmnd"
        sums = path.with_suffix(".sha256")
        if not (path.is_file() and sums.is_file() and file_sha256(path) == sums.read_text()):
            log.info("building the DIAMOND database of %d reference proteins in %s",
                     len(self.sequences), path)  # fmt: skip
            make_db(self.sequences, path, opts)
            atomic_write_text(sums, file_sha256(path))
        self._db = path
        return path

    def prefetch(self, queries: Mapping[str, str], threads: int = 2) -> None:
        """Search ``queries`` now, in one DIAMOND run, and keep their hits for :meth:`hits`:
        a run costs about 5 s whatever its size (``--more-sensitive`` indexes the database
        each time), so streaming predict searches blocks of many chunks at once."""
        opts = DiamondOptions(threads=threads)
        found = search(queries, self.database(opts), opts) if self.sequences else {}
        self._prefetched.update((q, found.get(q, [])) for q in queries)

    def hits(self, queries: Mapping[str, str], threads: int = 2) -> dict:
        """{query: [(reference protein, bitscore), ...]} best first (queries without a hit
        left out); from :meth:`prefetch` where it searched them (and then forgotten)."""
        todo = {q: s for q, s in queries.items() if q not in self._prefetched}
        if todo:
            self.prefetch(todo, threads)
        got = {q: self._prefetched.pop(q) for q in queries}
        return {q: h for q, h in got.items() if h}

    def scores(self, hits: Mapping, pids: Sequence[str], go_ids: Sequence[str]) -> np.ndarray:
        """(N, T) DiamondScore of ``pids`` over ``go_ids`` (0 without a hit)."""
        got = scoring.transfer_scores({p: hits[p] for p in pids if p in hits}, self.labels)
        col = {g: j for j, g in enumerate(go_ids)}
        out = np.zeros((len(pids), len(go_ids)))
        for i, p in enumerate(pids):
            for t, v in got.get(p, {}).items():
                if t in col:
                    out[i, col[t]] = v
        return out

    def blend(
        self, aligner: np.ndarray, homology: np.ndarray, go_ids: Sequence[str], ontology: Ontology
    ) -> np.ndarray:
        """``alpha * aligner + (1 - alpha) * homology`` per aspect, over ``go_ids``."""
        w = alpha_per_term(self.alpha, list(go_ids), ontology)
        return w * aligner + (1 - w) * homology

    def best_hit(self, hits: Sequence[tuple[str, float]], term: str) -> str:
        """The best-scoring hit that carries ``term`` (``protein:bits``), or ''."""
        return next((f"{s}:{b:.0f}" for s, b in hits if term in self.labels.get(s, ())), "")


def write(stage: Path, folder: DatasetFolder, fitted: dict) -> dict:
    """Write the reference set of ``folder``'s training split into ``stage``; returns the
    ``homology`` entry of ``bundle.json`` (``fitted`` from :func:`fit` plus the checksum)."""
    train = [p for p in folder.ids("train") if p in folder.annotations]
    rows = ["protein\tsequence\tterms"] + [
        f"{p}\t{folder.sequences[p]}\t{' '.join(sorted(folder.annotations[p]))}" for p in train
    ]
    data = gzip.compress(("\n".join(rows) + "\n").encode(), mtime=0)
    atomic_write(stage / REFERENCE, lambda fh: fh.write(data))
    return {**fitted, "proteins": len(train), "sha256": hashlib.sha256(data).hexdigest()}


def load(
    path: Path, meta: dict | None, ontology: Ontology, db_dir: Path | None = None
) -> Reference | None:
    """The reference set of the bundle at ``path`` (None when it has none); a file that fails
    its checksum is one UserError. ``db_dir``: where its DIAMOND database is kept."""
    if not meta:
        return None
    f = path / REFERENCE
    data = f.read_bytes() if f.is_file() else b""
    if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
        why = "is missing" if not f.is_file() else "fails its checksum"
        raise UserError(f"bundle {path}: its homology reference {REFERENCE} {why}: export the "
                        "bundle again, or predict with --no-homology")  # fmt: skip
    seqs, direct = {}, {}
    for line in gzip.decompress(data).decode().splitlines()[1:]:
        p, seq, terms = line.split("\t")
        seqs[p], direct[p] = seq, terms.split()
    return Reference(seqs, direct, dict(meta["alpha"]), dict(meta["thresholds"]),
                     meta.get("evidence", ""), ontology, meta["sha256"], db_dir)  # fmt: skip


def fit(
    predictor, folder: DatasetFolder, threads: int = 2, reference: Reference | None = None,
    sample: int | None = None,
) -> dict:  # fmt: skip
    """Per aspect, the aligner's weight in the blend and the blend's threshold of best Fmax,
    chosen on ``folder``'s valid split (or ``sample`` proteins of it): the predictor's scores
    against DIAMOND transfer from the training split, or from ``reference`` when given (a
    protein's own entry is never its hit)."""
    onto = folder.ontology
    valid = {p: folder.annotations[p] for p in folder.ids("valid") if p in folder.annotations}
    if not valid:
        raise UserError(f"dataset {folder.root} has no valid proteins to choose the blend on")
    if sample is not None and sample < len(valid):
        valid = {p: valid[p] for p in sorted(random.Random(0).sample(sorted(valid), sample))}
    seqs = {p: clean_sequence(p, folder.sequences[p]) for p in valid}
    aside, predictor.homology = predictor.homology, None  # the aligner's own scores
    try:
        results = predictor.predict(seqs, progress=True)
    finally:
        predictor.homology = aside
    aligner = Predictions([r.pid for r in results], list(predictor.go_ids),
                          np.stack([r.scores for r in results]))  # fmt: skip
    if reference is None:
        train = {p: folder.annotations[p] for p in folder.ids("train") if p in folder.annotations}
        homology = diamond(folder.sequences, train, seqs, onto, DiamondOptions(threads=threads))
    else:
        pids = list(seqs)
        hom = reference.scores(reference.hits(seqs, threads), pids, predictor.go_ids)
        homology = Predictions(pids, list(predictor.go_ids), hom)
    alpha, tried = choose_alpha(aligner, homology, valid, onto, ia=folder.ia)
    rows = evaluate_fast(blend(aligner, homology, alpha, onto), valid, sorted(valid), onto)
    codes = folder.info.get("provenance", {}).get("evidence_codes")
    evidence = "all, electronic included" if codes == "all" else ", ".join(codes or ["?"])
    return {
        "alpha": alpha,
        "thresholds": {r["aspect"]: round(r["tau"], 6) for r in rows},
        "valid_fmax": {r["aspect"]: round(r["fmax"], 4) for r in rows},
        "evidence": f"{folder.root.name} training proteins; evidence codes: {evidence}",
        "tried": tried,
        "proteins": len(valid),
    }


def _checked_fit(fitted: dict, aspects: set[str]) -> dict:
    """A kept blend choice, if whole: a weight and a threshold in [0, 1] for every aspect of
    the reference (else ValueError: it is chosen again, never used damaged)."""
    for part in ("alpha", "thresholds"):
        values = {a: float(v) for a, v in fitted[part].items()}
        if set(values) != aspects or not all(0.0 <= v <= 1.0 for v in values.values()):
            raise ValueError(f"{part} {values}")
    int(fitted["proteins"])
    return fitted


def refit_for(predictor, folder: DatasetFolder, threads: int = 2, sample: int = 300) -> None:
    """After ``predictor``'s reference gained ``folder`` (``--reference``): the blend's
    weights and thresholds chosen again, on ``sample`` valid proteins of ``folder`` against
    the whole reference (weights chosen with a small reference under-weight a rich one).
    Kept under the reference's DIAMOND folder by model and reference, so this runs once."""
    ref = predictor.homology
    key = hashlib.sha256(f"{ref.key} {predictor.model_key} {sample}".encode()).hexdigest()
    where = Path(ref.db_dir or tempfile.gettempdir()) / f"blend-{key[:16]}.json"
    try:
        fitted = _checked_fit(json.loads(where.read_text()), set(ref.alpha))
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError):
        log.info("choosing the blend's weights for the reference with %s on %d of its valid "
                 "proteins (once)", folder.root.name, sample)  # fmt: skip
        fitted = fit(predictor, folder, threads, ref, sample)
        atomic_write_text(where, json.dumps(fitted, indent=1))
    ref.alpha = {a: float(w) for a, w in fitted["alpha"].items()}
    ref.thresholds = {a: float(t) for a, t in fitted["thresholds"].items()}
    weights = ", ".join(f"{a} {w:.1f}" for a, w in sorted(ref.alpha.items()))
    ref.evidence += (f"; blend weights chosen again on {fitted['proteins']} valid proteins of "
                     f"{folder.root.name}: {weights}")  # fmt: skip
