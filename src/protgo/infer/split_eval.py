"""``protgo evaluate --model``: score a dataset split with a model over every term (no top-k,
no score floor) and measure its zero- and few-shot terms from that complete matrix, beside the
two baselines that need no text training (:mod:`protgo.eval.zeroshot`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from protgo.data.folder import DatasetFolder
from protgo.data.sequence import clean_sequence
from protgo.eval.metrics import truth_matrix
from protgo.eval.predictions import Predictions
from protgo.eval.zeroshot import complete_term_metrics, zero_shot_table
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
    """(proteins of ``split``, (N, T) propagated scores, (N, T) scores before propagation)
    over ``pred.go_ids``, float32."""

    pids = folder.ids(split)
    n, t = len(pids), len(pred.go_ids)
    scores, own = np.empty((n, t), np.float32), np.empty((n, t), np.float32)
    with progress_bar(total=n, desc=f"score {split}", unit="protein", disable=not progress) as bar:
        for i in range(0, n, chunk):
            part = pids[i : i + chunk]
            res = pred.residues({p: clean_sequence(p, folder.sequences[p]) for p in part})
            vecs, _ = pred.protein_vectors([res[p] for p in part])
            plain = pred.calibrate_logits(pred.logits(vecs))
            own[i : i + len(part)] = plain
            scores[i : i + len(part)] = scoring.propagate(plain, pred.go_ids, pred.ontology)
            bar.update(len(part))
    return pids, scores, own


def zero_shot_rows(
    model: str | Path, folder: DatasetFolder, split: str, data_dir: Path | None,
    min_positives: int = 1, per_term: list | None = None, progress: bool = True,
    others: Mapping[str, Predictions] | None = None,
) -> list[dict]:  # fmt: skip
    """Mean per-term AUC / AUPR of zero- and few-shot terms per aspect, from the complete
    matrix of ``split``'s proteins over the model's terms that the dataset's ontology holds (a
    bundle's own ontology may hold more), for the model, the structural baselines and what
    ``predict`` scores an unseen term (:mod:`protgo.eval.zeroshot`); and for each of
    ``others`` (a baseline's complete predictions of the split, e.g. the MLP's) over the
    same terms that it scores."""
    pred = load_for(model, folder, data_dir)
    onto = folder.ontology
    pids, scores, own = complete_scores(pred, folder, split, progress=progress)
    keep = [j for j, t in enumerate(pred.go_ids) if t in onto]
    terms = [pred.go_ids[j] for j in keep]
    truth = truth_matrix(folder.annotations, pids, terms, onto)
    text = pred.go_text.cpu().numpy()[keep]
    cls = folder.term_class
    rows = zero_shot_table(scores[:, keep], truth, terms, onto, cls, text,
                           min_positives, per_term, own[:, keep])  # fmt: skip
    aspects = np.array([onto.aspect(t) for t in terms])
    for name, other in (others or {}).items():
        scored = set(other.terms)
        have = [j for j, t in enumerate(terms) if t in scored]
        mat = other.aligned(pids, [terms[j] for j in have])  # a protein it left out scores 0
        # (a protein annotated in an aspect carries its trained top terms, so the rows that
        # count per aspect are the model's)
        rows += complete_term_metrics(mat, truth[:, have], [terms[j] for j in have], cls,
                                      aspects[have], ("few",), min_positives, per_term,
                                      name)  # fmt: skip
    return rows


def zero_shot_command(
    model: str | Path, folder: DatasetFolder, split: str, data_dir: Path | None, out: Path,
    min_positives: int = 1, others: Mapping[str, Predictions] | None = None,
) -> str:  # fmt: skip
    """Write ``out/zero_shot.tsv`` (per method, aspect and class) and
    ``out/zero_shot_terms.tsv`` (per term); return the first as a printable table."""
    import pandas as pd

    from protgo.io import atomic_write_text

    per_term: list[dict] = []
    rows = zero_shot_rows(model, folder, split, data_dir, min_positives, per_term,
                          others=others)  # fmt: skip
    table = pd.DataFrame(rows).sort_values(["class", "aspect", "method"], kind="stable")
    for name, df in (("zero_shot.tsv", table), ("zero_shot_terms.tsv", pd.DataFrame(per_term))):
        atomic_write_text(out / name, df.to_csv(sep="\t", index=False, float_format="%.4f"))
    head = (f"zero- and few-shot terms of '{split}', complete score matrix "
            f"(terms with >= {min_positives} positives):")  # fmt: skip
    return head + "\n" + table.to_string(index=False, float_format=lambda v: f"{v:.3f}")
