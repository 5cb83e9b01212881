"""Which text encoder ranks unseen GO terms better, measured without retraining the aligner.

For the zero-shot terms of a dataset's valid and test splits (no training positive, at least
one positive and one negative among the split's proteins annotated in the aspect), each
encoder given embeds the phase-0 texts (``name: definition``) of those terms and of the
trained ones, and two scorers read its space:

* ``neighbours``: the mean score of the :data:`~protgo.go.scoring.NEIGHBOURS` trained terms
  with the nearest texts (the part of ``predict``'s unseen-term score that the text space
  decides), alone and inside that score (:func:`protgo.go.scoring.zero_shot_scores`, with the
  model's own text score and the parents' joint score);
* ``ridge``: a ridge map from the text vectors to the model's learned term head (vector with
  its residual, and bias) fitted on the trained terms, applied to the unseen ones: what a
  head trained on that encoder's vectors could at best read from them, alone and inside
  ``predict``'s score in place of the model's own text score.

``model`` rows use the text vectors the model was trained with (its last text phase). Mean
per-term ROC AUC per aspect (the columns of ``protgo evaluate --model``'s ``zero`` rows).

Usage (a model trained on the dataset, its residue store built):
    python benchmarks/text_space.py --model protgo-human --encoder all-MiniLM-L6-v2 \
        --encoder /path/to/all-mpnet-base-v2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

RIDGE = 1.0


def create_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="protgo-human", help="Bundle, checkpoint or run folder.")
    p.add_argument("--dataset", default="human-exp")
    p.add_argument("--encoder", action="append", default=[],
                   help="Text encoder (packaged name, local directory); repeatable.")  # fmt: skip
    p.add_argument("--data-dir", type=Path, default=None)
    return p


def split_problem(pred, folder, split: str) -> dict:
    """Protein vectors, propagated scores, own scores and truth of ``split`` over the model's
    terms."""
    from protgo.data.sequence import clean_sequence
    from protgo.eval.metrics import truth_matrix
    from protgo.go import scoring

    pids = folder.ids(split)
    res = pred.residues({p: clean_sequence(p, folder.sequences[p]) for p in pids})
    vecs, _ = pred.protein_vectors([res[p] for p in pids])
    own = pred.calibrate_logits(pred.logits(vecs))
    truth = truth_matrix(folder.annotations, pids, pred.go_ids, folder.ontology)
    scores = scoring.propagate(own, pred.go_ids, pred.ontology)
    return {"vecs": vecs.numpy().astype(np.float64), "own": own, "scores": scores, "truth": truth}


def term_head(pred) -> tuple[np.ndarray, np.ndarray, float]:
    """((T, A) term vectors with their residuals, (T,) biases over the logit scale, the
    logit scale), as the model scores them."""
    import torch

    with torch.no_grad():
        go, bias = pred.model.term_head(pred.go, pred.go_text, pred.residual_rows)
        scale = float(pred.model.bias_scale())
    return go.numpy().astype(np.float64), bias.numpy().astype(np.float64) / scale, scale


def ridge_scores(text: np.ndarray, fit: np.ndarray, apply: np.ndarray, head, vecs):
    """sigmoid(scale * (protein . w_hat + b_hat)) for the ``apply`` columns, with (w, b) of
    :func:`term_head` regressed on ``text`` over the ``fit`` columns."""
    w, b, scale = head
    x = np.hstack([text[fit], np.ones((len(fit), 1))])
    reg = RIDGE * np.eye(x.shape[1])
    reg[-1, -1] = 0.0  # the intercept is not shrunk
    coef = np.linalg.solve(x.T @ x + reg, x.T @ np.hstack([w[fit], b[fit, None]]))
    out = np.hstack([text[apply], np.ones((len(apply), 1))]) @ coef
    return 1.0 / (1.0 + np.exp(-scale * (vecs @ out[:, :-1].T + out[:, -1])))


def measure(pred, folder, problems: dict, spaces: dict[str, np.ndarray]) -> dict:
    from protgo.data.folder import TRAINED_CLASSES
    from protgo.eval.zeroshot import aspect_rows, column_auc
    from protgo.go.scoring import ParentIndex, TextNeighbours, zero_shot_scores

    cls = folder.term_class
    trained = np.array([cls.get(t) in TRAINED_CLASSES for t in pred.go_ids])
    zero = np.array([cls.get(t) == "zero" for t in pred.go_ids])
    head = term_head(pred)
    table: dict = {}
    for split, pb in problems.items():
        for aspect in pred.aspects:
            cols = pred.columns(aspect)
            rows = aspect_rows(pb["truth"], pred.go_aspects, aspect)
            index = ParentIndex(pred.go_ids, pred.ontology, cols[zero[cols]])
            y = pb["truth"][np.ix_(rows, index.cols)]
            ok = (y.sum(0) > 0) & (y.sum(0) < len(rows))
            zc, y = index.cols[ok], y[:, ok]
            s = pb["scores"][rows]
            joint, least = index.joint(s)[:, ok], index.least(s)[:, ok]
            own = pb["own"][np.ix_(rows, zc)]
            donors = cols[trained[cols]]

            def auc(x, name, _split=split, _aspect=aspect, _y=y):
                table.setdefault(name, {}).setdefault(_split, {})[_aspect] = round(
                    float(np.nanmean(column_auc(_y, x))), 4)  # fmt: skip

            auc(joint, "all-parents")
            for space, text in spaces.items():
                near = TextNeighbours(text, zc, donors).mean(s)
                ridge = ridge_scores(text, donors, zc, head, pb["vecs"][rows])
                auc(near, f"{space}: neighbours")
                auc(zero_shot_scores(own, near, joint, least), f"{space}: predict's score")
                auc(ridge, f"{space}: ridge")
                auc(zero_shot_scores(ridge, near, joint, least), f"{space}: predict's, ridge own")
    return table


def run(args: argparse.Namespace) -> dict:
    from protgo.data.folder import TRAINED_CLASSES, DatasetFolder
    from protgo.encoders.text import load_text_encoder
    from protgo.infer.split_eval import load_for
    from protgo.stores.go_text import base_text

    folder = DatasetFolder.load(args.dataset, args.data_dir)
    pred = load_for(args.model, folder, args.data_dir)
    t0 = time.perf_counter()
    problems = {s: split_problem(pred, folder, s) for s in ("valid", "test")}
    cls = folder.term_class
    need = [j for j, t in enumerate(pred.go_ids)
            if cls.get(t) in TRAINED_CLASSES or cls.get(t) == "zero"]  # fmt: skip
    spaces = {"model": pred.go_text.cpu().numpy().astype(np.float64)}
    seconds = {}
    for name in args.encoder:
        enc = load_text_encoder(name)
        texts = [base_text(pred.ontology.terms[pred.go_ids[j]]) for j in need]
        t1 = time.perf_counter()
        vec = enc.encode(texts)
        seconds[name] = round(time.perf_counter() - t1, 1)
        space = np.zeros((len(pred.go_ids), vec.shape[1]))
        space[need] = vec
        spaces[name] = space
    table = measure(pred, folder, problems, spaces)
    for name, by in table.items():
        print(f"{name:50s}", " | ".join(
            f"{s} " + " ".join(f"{by[s][a]:.3f}" for a in pred.aspects) for s in by))  # fmt: skip
    return {"model": str(args.model), "aspects": list(pred.aspects), "texts": len(need),
            "encode_seconds": seconds, "table": table,
            "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip


def main() -> None:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(json.dumps(run(create_parser().parse_args()), indent=1))


if __name__ == "__main__":
    main()
