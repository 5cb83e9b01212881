"""Calibration of a checkpoint's scores (``predict --calibrate`` / ``--threshold auto``).

Per aspect, logistic ``sigmoid(a * logit + b)`` (Platt scaling) on the validation split's
(protein, term) pairs, the threshold that gives the best validation Fmax on the calibrated,
propagated scores. Stored next to the checkpoint as
``<checkpoint>.calibration.json``, keyed by the checkpoint's sha256 and the score input, and
sealed by the sha256 of its own content (``sha256``): a calibration edited or damaged after
protgo wrote it (a threshold raised, a Platt slope's sign flipped) is refused, in a run folder
and in a bundle, instead of silently emptying or inverting every prediction.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np

from protgo.errors import UserError
from protgo.eval.metrics import annotated_in, fmax_smin, truth_matrix
from protgo.go import scoring
from protgo.io import atomic_write_text, file_sha256


def path_for(checkpoint: Path) -> Path:
    return checkpoint.with_name(checkpoint.name + ".calibration.json")


def content_sha256(cal: dict) -> str:
    """The sha256 of a calibration's content: its canonical JSON without the ``sha256`` key."""
    body = {k: v for k, v in cal.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def sealed(cal: dict) -> dict:
    """``cal`` with its content checksum (:func:`content_sha256`) under ``sha256``."""
    return {**cal, "sha256": content_sha256(cal)}


def check(cal, where: str, fix: str) -> dict:
    """``cal`` when it is a calibration as protgo wrote it: sealed by its checksum, each
    aspect a finite Platt ``[a, b]`` with ``a > 0`` and a threshold in (0, 1); else one
    UserError naming ``where`` and the ``fix``."""
    problem = None
    if not isinstance(cal, dict) or not isinstance(cal.get("aspects"), dict):
        problem = "is not a calibration (no 'aspects')"
    elif cal.get("sha256") != content_sha256(cal):
        problem = "was changed after protgo wrote it (its content fails its sha256)"
    else:
        for aspect, fitted in cal["aspects"].items():
            ab, tau = fitted.get("platt"), fitted.get("threshold")
            ok_ab = _finite_pair(ab) and ab[0] > 0
            ok_tau = isinstance(tau, int | float) and 0 < tau < 1
            if not (ok_ab and ok_tau):
                problem = f"holds an impossible fit for {aspect} (platt {ab}, threshold {tau})"
                break
    if problem:
        raise UserError(f"calibration {where} {problem}: {fix}")
    return cal


def _finite_pair(v) -> bool:
    return (isinstance(v, list) and len(v) == 2
            and all(isinstance(x, int | float) and math.isfinite(x) for x in v))  # fmt: skip


def read(checkpoint: Path, logit_input: str) -> dict | None:
    """The saved calibration of ``checkpoint`` (None when absent or for other bytes/input);
    one that fails :func:`check` is a UserError."""
    path = path_for(checkpoint)
    if not path.is_file():
        return None
    fix = "delete it and fit it again (`protgo predict --calibrate`)"
    try:
        cal = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"calibration {path} is not JSON ({exc}): {fix}") from None
    check(cal, str(path), fix)
    same = cal.get("checkpoint_sha256") == file_sha256(checkpoint)
    return cal if same and cal.get("input", "cos") == logit_input else None


def fit(pred, max_proteins: int = 2000) -> dict:
    """Platt scaling and best-Fmax thresholds per aspect of a ``Predictor`` on its dataset's
    validation split (from the residue store), saved next to the checkpoint."""
    ann, onto, store = pred.folder.annotations, pred.ontology, pred._store
    valid = pred.folder.ids("valid")
    if store is None or not all(p in store for p in valid):
        raise UserError(
            f"calibration needs the valid proteins of '{pred.cfg.data.dataset}' in the "
            "residue store: run `protgo embed residues` for that dataset first"
        )
    result = {"checkpoint_sha256": file_sha256(pred.checkpoint), "input": pred.logit_input,
              "aspects": {}}  # fmt: skip
    for aspect in sorted(set(pred.go_aspects)):
        pids = annotated_in(ann, valid, onto, aspect)[:max_proteins]
        if len(pids) < 5:
            continue
        cols = np.flatnonzero(pred.go_aspects == aspect)
        terms = [pred.go_ids[j] for j in cols]
        vecs, _ = pred.protein_vectors([store.get(p) for p in pids])
        logit = pred.logits(vecs, cols)  # (N, Ta)
        truth = truth_matrix(ann, pids, terms, onto)
        a, b = platt(logit, truth, init=(10.0, -5.0) if pred.logit_input == "cos" else (1, 0))
        probs = scoring.propagate(scoring.to_scores(a * logit + b, "logit"), terms, onto)
        best = fmax_smin(probs, truth)
        result["aspects"][aspect] = {"platt": [a, b], "threshold": best["tau"],
                                     "fmax": best["fmax"], "proteins": len(pids)}  # fmt: skip
    result = sealed(result)
    atomic_write_text(path_for(pred.checkpoint), json.dumps(result, indent=1) + "\n")
    return result


def platt(
    cos: np.ndarray, truth: np.ndarray, steps: int = 200, init: tuple[float, float] = (10, -5)
) -> tuple[float, float]:
    """(a, b) of ``sigmoid(a * cos + b)`` fitted to ``truth`` by logistic regression
    (``cos``: cosines or term logits; ``init``: the starting (a, b)); see
    :func:`protgo.go.scoring.fit_sigmoid`."""
    return scoring.fit_sigmoid(cos, truth, init=init, steps=steps)
