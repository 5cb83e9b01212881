"""``protgo evaluate --model``: score a dataset split with a model over every term (no top-k,
no score floor) and measure its zero- and few-shot terms from that complete matrix, beside the
two baselines that need no text training (:mod:`protgo.eval.zeroshot`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from protgo.data.folder import DatasetFolder
from protgo.data.sequence import clean_sequence
from protgo.eval.metrics import truth_matrix
from protgo.eval.zeroshot import aspect_rows, fit_conditional, zero_shot_table
from protgo.go import scoring
from protgo.infer import bundle
from protgo.infer.predict import Predictor
from protgo.io import progress_bar


def model_source(model: str | Path) -> Path:
    """A checkpoint file or run folder as is; else a bundle directory or shipped name."""
    path = Path(model).expanduser()
    if path.is_file() or (path / "checkpoints").is_dir():
        return path
    return bundle.resolve_model(str(model))


def load_for(model: str | Path, folder: DatasetFolder, data_dir: Path | None) -> Predictor:
    """The model, checked to be trained on ``folder``'s dataset (zero- and few-shot terms
    are a dataset's)."""
    pred = Predictor(model_source(model), data_dir)
    pred.check_dataset(folder, "--model")
    return pred


def complete_scores(
    pred: Predictor, folder: DatasetFolder, split: str, chunk: int = 256, progress: bool = True
) -> tuple[list[str], np.ndarray, np.ndarray]:  # fmt: skip
    """(proteins of ``split``, (N, T) propagated scores, (N, T) raw term logits) over
    ``pred.go_ids``, float32."""

    pids = folder.ids(split)
    n, t = len(pids), len(pred.go_ids)
    scores, logits = np.empty((n, t), np.float32), np.empty((n, t), np.float32)
    with progress_bar(total=n, desc=f"score {split}", unit="protein", disable=not progress) as bar:
        for i in range(0, n, chunk):
            part = pids[i : i + chunk]
            res = pred.residues({p: clean_sequence(p, folder.sequences[p]) for p in part})
            vecs, _ = pred.protein_vectors([res[p] for p in part])
            raw = pred.logits(vecs)
            logits[i : i + len(part)] = raw
            scores[i : i + len(part)] = scoring.propagate(pred.calibrate_logits(raw),
                                                          pred.go_ids, pred.ontology)  # fmt: skip
            bar.update(len(part))
    return pids, scores, logits


def _problem(pred: Predictor, folder: DatasetFolder, split: str, progress: bool):
    """(terms, scores, logits, truth) of ``split`` over the model's terms that the dataset's
    ontology holds (a bundle's own ontology may hold more)."""
    onto = folder.ontology
    pids, scores, logits = complete_scores(pred, folder, split, progress=progress)
    keep = [j for j, t in enumerate(pred.go_ids) if t in onto]
    terms = [pred.go_ids[j] for j in keep]
    truth = truth_matrix(folder.annotations, pids, terms, onto)
    return terms, keep, scores[:, keep], logits[:, keep], truth


def zero_shot_rows(
    model: str | Path, folder: DatasetFolder, split: str, data_dir: Path | None,
    min_positives: int = 1, per_term: list | None = None, progress: bool = True,
) -> tuple[list[dict], dict]:  # fmt: skip
    """(rows, conditional): mean per-term AUC / AUPR of zero- and few-shot terms per aspect,
    from the complete matrix, for the model, both structural baselines and text×parents, whose
    conditional ({aspect: (a, b)}) is fitted on the other split (valid for test, test for
    valid)."""
    pred = load_for(model, folder, data_dir)
    onto, cls = folder.ontology, folder.term_class
    other = "valid" if split == "test" else "test"
    terms, keep, scores, logits, truth = _problem(pred, folder, other, progress)
    parents = scoring.parent_scores(scores, terms, onto)
    aspects = np.array([onto.aspect(t) for t in terms])
    conditional = {}
    for aspect in np.unique(aspects):
        rows = aspect_rows(truth, aspects, aspect)
        cols = np.flatnonzero((aspects == aspect) & np.array([cls.get(t) == "zero" for t in terms]))
        if len(rows) and len(cols):
            sub = np.ix_(rows, cols)
            conditional[str(aspect)] = fit_conditional(logits[sub], parents[sub], truth[sub])
    terms, keep, scores, logits, truth = _problem(pred, folder, split, progress)
    text = pred.go_text.cpu().numpy()[keep]
    rows = zero_shot_table(scores, truth, terms, onto, cls, text, min_positives, per_term,
                           logits, conditional)  # fmt: skip
    return rows, conditional


def zero_shot_command(
    model: str | Path, folder: DatasetFolder, split: str, data_dir: Path | None, out: Path,
    min_positives: int = 1,
) -> str:  # fmt: skip
    """Write ``out/zero_shot.tsv`` (per method, aspect and class) and
    ``out/zero_shot_terms.tsv`` (per term); return the first as a printable table."""
    import pandas as pd

    from protgo.io import atomic_write_text

    per_term: list[dict] = []
    rows, conditional = zero_shot_rows(model, folder, split, data_dir, min_positives, per_term)
    table = pd.DataFrame(rows).sort_values(["class", "aspect", "method"], kind="stable")
    for name, df in (("zero_shot.tsv", table), ("zero_shot_terms.tsv", pd.DataFrame(per_term))):
        atomic_write_text(out / name, df.to_csv(sep="\t", index=False, float_format="%.4f"))
    fits = ", ".join(f"{a} a={ab[0]:.3f} b={ab[1]:.3f}" for a, ab in conditional.items())
    head = (f"zero- and few-shot terms of '{split}', complete score matrix "
            f"(terms with >= {min_positives} positives; text×parents fitted on the other "
            f"split: {fits}):")  # fmt: skip
    return head + "\n" + table.to_string(index=False, float_format=lambda v: f"{v:.3f}")
