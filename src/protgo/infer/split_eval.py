"""``protgo evaluate --model``: score a dataset split with a model over every term (no top-k,
no score floor) and measure its zero- and few-shot terms from that complete matrix, beside the
two baselines that need no text training (:mod:`protgo.eval.zeroshot`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from protgo.data.folder import DatasetFolder
from protgo.encoders.protein import clean_sequence
from protgo.errors import UserError
from protgo.eval.metrics import truth_matrix
from protgo.eval.zeroshot import zero_shot_table
from protgo.infer import bundle
from protgo.infer.predict import Predictor


def model_source(model: str | Path) -> Path:
    """A checkpoint file or run folder as is; else a bundle directory or shipped name."""
    path = Path(model).expanduser()
    if path.is_file() or (path / "checkpoints").is_dir():
        return path
    return bundle.resolve_model(str(model))


def complete_scores(
    model: str | Path, folder: DatasetFolder, split: str, data_dir: Path | None,
    progress: bool = True,
) -> tuple[Predictor, list[str], np.ndarray]:  # fmt: skip
    """(predictor, proteins, (N, T) propagated scores over ``predictor.go_ids``) of every
    protein of ``split``."""
    pred = Predictor(model_source(model), data_dir)
    trained_on = Path(str(pred.cfg.data.dataset)).name
    if trained_on != folder.root.name:
        raise UserError(
            f"--model was trained on dataset '{trained_on}', not '{folder.root.name}': its zero- "
            "and few-shot terms are those of its own dataset, so evaluate it there"
        )
    pids = folder.ids(split)
    seqs = {p: clean_sequence(p, folder.sequences[p]) for p in pids}
    results = pred.predict(seqs, progress=progress)
    return pred, pids, np.stack([r.scores for r in results]).astype(np.float32)


def zero_shot_rows(
    model: str | Path, folder: DatasetFolder, split: str, data_dir: Path | None,
    min_positives: int = 1, per_term: list | None = None, progress: bool = True,
) -> list[dict]:  # fmt: skip
    """Mean per-term AUC / AUPR of zero- and few-shot terms per aspect, from the complete
    matrix, for the model and both structural baselines."""
    pred, pids, scores = complete_scores(model, folder, split, data_dir, progress)
    onto, terms = folder.ontology, pred.go_ids
    keep = [j for j, t in enumerate(terms) if t in onto]  # a bundle's own ontology may differ
    terms = [terms[j] for j in keep]
    truth = truth_matrix(folder.annotations, pids, terms, onto)
    text = pred.go_text.cpu().numpy()[keep]
    return zero_shot_table(scores[:, keep], truth, terms, onto, folder.term_class, text,
                           min_positives, per_term)  # fmt: skip


def zero_shot_command(
    model: str | Path, folder: DatasetFolder, split: str, data_dir: Path | None, out: Path,
    min_positives: int = 1,
) -> str:  # fmt: skip
    """Write ``out/zero_shot.tsv`` (per method, aspect and class) and
    ``out/zero_shot_terms.tsv`` (per term); return the first as a printable table."""
    import pandas as pd

    from protgo.io import atomic_write_text

    per_term: list[dict] = []
    rows = zero_shot_rows(model, folder, split, data_dir, min_positives, per_term)
    table = pd.DataFrame(rows).sort_values(["class", "aspect", "method"], kind="stable")
    for name, df in (("zero_shot.tsv", table), ("zero_shot_terms.tsv", pd.DataFrame(per_term))):
        atomic_write_text(out / name, df.to_csv(sep="\t", index=False, float_format="%.4f"))
    head = (f"zero- and few-shot terms of '{split}', complete score matrix "
            f"(terms with >= {min_positives} positives):")  # fmt: skip
    return head + "\n" + table.to_string(index=False, float_format=lambda v: f"{v:.3f}")
