"""Prediction sets (proteins x GO terms) and their files: CAFA-format reading and writing,
and the ground-truth files cafaeval reads."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from protgo.data.ontology import Ontology
from protgo.errors import UserError
from protgo.io import atomic_write_text

# Header/footer keywords of CAFA submission files; lines starting with them are not predictions.
CAFA_KEYWORDS = ("AUTHOR", "MODEL", "KEYWORDS", "ACCURACY", "END")


@dataclass
class Predictions:
    """Scores of proteins x GO terms: ``scores[i, j]`` for ``pids[i]``, ``terms[j]`` (0: none)."""

    pids: list[str]
    terms: list[str]
    scores: np.ndarray  # (N, T); float64 when read from a file, so thresholds compare as
    # they do in cafaeval (float32 0.07 > float64 0.07)
    # the ontology these scores were propagated with (set by propagated(): propagating
    # again with it changes nothing, so it returns the same object)
    propagated_for: Ontology | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_dict(cls, scores: Mapping[str, Mapping[str, float]]) -> Predictions:
        pids = sorted(scores)
        terms = sorted({t for d in scores.values() for t in d})
        col = {t: j for j, t in enumerate(terms)}
        mat = np.zeros((len(pids), len(terms)), dtype=np.float64)
        for i, p in enumerate(pids):
            for t, s in scores[p].items():
                mat[i, col[t]] = s
        return cls(pids, terms, mat)

    def to_dict(self, min_score: float = 0.0) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for i, p in enumerate(self.pids):
            nz = np.flatnonzero(self.scores[i] > min_score)
            out[p] = {self.terms[j]: float(self.scores[i, j]) for j in nz}
        return out

    def propagated(self, ontology: Ontology) -> Predictions:
        """Scores made DAG-consistent (max over descendants), over the terms' upward closure;
        ``self`` when it is already the propagation with ``ontology``."""
        if self.propagated_for is ontology:
            return self
        terms = sorted(ontology.propagate(self.terms))
        col = {t: j for j, t in enumerate(terms)}
        mat = np.zeros((len(self.pids), len(terms)), dtype=self.scores.dtype)
        mat[:, [col[t] for t in self.terms]] = self.scores
        scores = ontology.propagate_matrix(mat, terms)
        return Predictions(list(self.pids), terms, scores, propagated_for=ontology)

    def aligned(self, pids: list[str], terms: list[str]) -> np.ndarray:
        """(len(pids), len(terms)) float64 scores in that order; 0 where absent."""
        row = {p: i for i, p in enumerate(self.pids)}
        col = {t: j for j, t in enumerate(self.terms)}
        out = np.zeros((len(pids), len(terms)), dtype=np.float64)
        ri = [(a, row[p]) for a, p in enumerate(pids) if p in row]
        ci = [(b, col[t]) for b, t in enumerate(terms) if t in col]
        if ri and ci:
            (ra, rb), (ca, cb) = zip(*ri, strict=True), zip(*ci, strict=True)
            out[np.ix_(ra, ca)] = self.scores[np.ix_(rb, cb)]
        return out

    def write_cafa(self, path: Path, min_score: float = 0.001, decimals: int = 4) -> int:
        """Write ``protein<TAB>GO<TAB>score`` lines (best first per protein), atomically.

        Scores below ``min_score`` are left out (cafaeval's lowest threshold is 0.01).
        Returns the number of lines written."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        n = 0
        try:
            with os.fdopen(fd, "w") as fh:
                for i, p in enumerate(self.pids):
                    row = self.scores[i]
                    keep = np.flatnonzero(row >= min_score)
                    for j in keep[np.argsort(-row[keep], kind="stable")]:
                        fh.write(f"{p}\t{self.terms[j]}\t{row[j]:.{decimals}f}\n")
                    n += len(keep)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return n


def read_predictions(path: Path, ontology: Ontology) -> Predictions:
    """Read a CAFA-format prediction file, checked against ``ontology``.

    Alt ids map to their primary id; a protein/term given twice keeps its highest score.
    Malformed lines, scores outside [0, 1], unknown or obsolete GO ids and empty files are
    :class:`UserError` s naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"prediction file {path} not found")
    scores: dict[str, dict[str, float]] = {}
    unknown: list[tuple[int, str]] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, raw in enumerate(fh, 1):
            parts = raw.split()
            if not parts or parts[0] in CAFA_KEYWORDS:
                continue
            pid, term, score = _parse_line(path, lineno, parts)
            canon = ontology.canonical(term)
            if canon is None:
                unknown.append((lineno, term))
                continue
            d = scores.setdefault(pid, {})
            d[canon] = max(score, d.get(canon, 0.0))
    if unknown:
        line, term = unknown[0]
        raise UserError(
            f"{path}:{line}: unknown or obsolete GO id '{term}' ({len(unknown)} such lines in "
            f"all); predictions must use the GO ids of the dataset's go.obo: map them to "
            "current ids or drop those lines"
        )
    if not scores:
        raise UserError(
            f"prediction file {path} holds no predictions (expected lines "
            "'protein<TAB>GO:id<TAB>score')"
        )
    return Predictions.from_dict(scores)


def _parse_line(path: Path, lineno: int, parts: list[str]) -> tuple[str, str, float]:
    where = f"{path}:{lineno}"
    if len(parts) != 3:
        raise UserError(
            f"{where}: expected 'protein<TAB>GO:id<TAB>score', got {len(parts)} "
            f"fields: {' '.join(parts)[:80]!r}"
        )
    pid, term, text = parts
    if not term.startswith("GO:"):
        raise UserError(f"{where}: second field must be a GO id like GO:0003674, got {term!r}")
    try:
        score = float(text)
    except ValueError:
        raise UserError(f"{where}: score {text!r} is not a number") from None
    if not 0.0 <= score <= 1.0:
        raise UserError(f"{where}: score {score} is outside [0, 1]; rescale the scores")
    return pid, term, score


def write_ground_truth(
    annotations: Mapping[str, Iterable[str]], pids: Iterable[str], path: Path
) -> int:
    """``protein<TAB>GO`` lines of the direct annotations of ``pids`` (cafaeval propagates)."""
    lines = [f"{p}\t{t}" for p in sorted(pids) for t in sorted(annotations.get(p, ()))]
    if not lines:
        raise UserError(f"no annotated proteins to write to the ground truth {path}")
    atomic_write_text(Path(path), "\n".join(lines) + "\n")
    return len(lines)
