"""Zero-/few-shot terms from the complete score matrix, and the two ontology baselines."""

from __future__ import annotations

import numpy as np
import pytest

from protgo.data.ontology import Ontology, Term
from protgo.eval.metrics import average_precision, roc_auc
from protgo.eval.zeroshot import (
    column_auc,
    complete_term_metrics,
    neighbour_scores,
    zero_shot_table,
)
from protgo.go.scoring import TextNeighbours, parent_scores, zero_shot_scores


def test_column_auc_equals_a_per_term_loop_with_ties():
    rng = np.random.default_rng(0)
    truth = rng.random((40, 6)) < 0.3
    scores = np.round(rng.random((40, 6)), 1)  # many ties
    truth[:, 5] = False  # no positive: not scorable
    got = column_auc(truth, scores)
    for j in range(5):
        assert np.isclose(got[j], roc_auc(truth[:, j], scores[:, j]))
    assert np.isnan(got[5])


def _onto() -> Ontology:
    mf = "molecular_function"
    return Ontology([
        Term("GO:0000001", name="root", namespace=mf),
        Term("GO:0000002", name="kinase", namespace=mf, parents={"is_a": ["GO:0000001"]}),
        Term("GO:0000003", name="transporter", namespace=mf, parents={"is_a": ["GO:0000001"]}),
        Term("GO:0000004", name="new kinase", namespace=mf, parents={"is_a": ["GO:0000002"]}),
    ])  # fmt: skip


def test_baselines_read_the_parent_and_the_nearest_trained_term():
    onto = _onto()
    terms = ["GO:0000002", "GO:0000003", "GO:0000004"]
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.1]])
    np.testing.assert_array_equal(parent_scores(scores, terms, onto)[:, 2], [0.9, 0.2])
    np.testing.assert_array_equal(parent_scores(scores, terms, onto)[:, 0], [0.0, 0.0])  # root
    text = np.array([[1.0, 0.0], [0.0, 1.0], [0.2, 1.0]])  # the new term reads like transport
    trained = np.array([True, True, False])
    near = neighbour_scores(scores, text, trained, np.array(["MF"] * 3))
    np.testing.assert_array_equal(near[:, 2], scores[:, 1])
    np.testing.assert_array_equal(near[:, 0], scores[:, 1])  # never its own score


def test_complete_term_metrics_equal_a_simple_loop_and_skip_unannotated_proteins():
    rng = np.random.default_rng(1)
    terms = [f"GO:{i:07d}" for i in range(8)]
    aspects = np.array(["MF"] * 5 + ["CC"] * 3)
    cls = {t: ("zero" if i % 2 else "few") for i, t in enumerate(terms)}
    truth = rng.random((30, 8)) < 0.4
    truth[:3, :5] = False  # three proteins without MF annotation: not MF negatives
    scores = rng.random((30, 8))
    rows = complete_term_metrics(scores, truth, terms, cls, aspects)
    got = {(r["aspect"], r["class"]): r for r in rows}
    for (aspect, c), r in got.items():
        keep = truth[:, aspects == aspect].any(axis=1)
        cols = [j for j in range(8) if aspects[j] == aspect and cls[terms[j]] == c
                and 0 < truth[keep, j].sum() < keep.sum()]  # fmt: skip
        assert r["terms"] == len(cols)
        assert np.isclose(r["auc"], np.mean([roc_auc(truth[keep, j], scores[keep, j])
                                             for j in cols]))  # fmt: skip
        assert np.isclose(r["aupr"], np.mean([average_precision(truth[keep, j], scores[keep, j])
                                              for j in cols]))  # fmt: skip


def test_zero_shot_table_names_every_method_per_class():
    onto = _onto()
    terms = ["GO:0000002", "GO:0000003", "GO:0000004"]
    cls = {"GO:0000002": "common", "GO:0000003": "few", "GO:0000004": "zero"}
    truth = np.array([[1, 0, 1], [0, 1, 0], [1, 0, 0], [0, 1, 0]], dtype=bool)
    scores = np.array([[0.9, 0.1, 0.8], [0.1, 0.9, 0.1], [0.95, 0.2, 0.3], [0.2, 0.7, 0.2]])
    text = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]])
    rows = zero_shot_table(scores, truth, terms, onto, cls, text)
    by = {(r["method"], r["class"]): r["auc"] for r in rows}
    assert set(by) == {(m, c) for m in ("protgo", "parents", "all-parents", "nearest-trained")
                       for c in ("zero", "few")}  # fmt: skip
    assert by[("protgo", "zero")] == 1.0  # its one positive ranked first
    assert by[("parents", "zero")] == 2 / 3  # the kinase score ranks protein 3 above it


def test_text_neighbours_equal_a_plain_loop_and_skip_the_term_itself():
    rng = np.random.default_rng(2)
    text = rng.normal(size=(40, 8))
    scores = rng.random((6, 40))
    cols, donors = np.arange(0, 40, 3), np.arange(1, 40, 2)  # some columns are donors too
    got = TextNeighbours(text, cols, donors, k=4, temp=0.1, chunk=5).mean(scores)
    unit = text / np.linalg.norm(text, axis=1, keepdims=True)
    for c, j in enumerate(cols):
        others = [d for d in donors if d != j]
        sim = np.array([unit[j] @ unit[d] for d in others])
        top = np.argsort(-sim)[:4]
        w = np.exp((sim[top] - sim[top].max()) / 0.1)
        want = scores[:, [others[i] for i in top]] @ (w / w.sum())
        np.testing.assert_allclose(got[:, c], want, rtol=1e-5)
    # a term that is its own only donor has no neighbour, and no NaN
    alone = TextNeighbours(text, [3], [3], k=5).mean(scores)
    np.testing.assert_array_equal(alone, np.zeros((6, 1)))


def test_zero_shot_score_never_exceeds_any_parent_and_follows_text_and_neighbours():
    rng = np.random.default_rng(3)
    own, near = rng.random((500, 7)), rng.random((500, 7))
    a, b = rng.uniform(0.0, 1.0, size=(2, 500, 7))  # two parents' scores
    joint, least = np.sqrt(a * b), np.minimum(a, b)
    for o, n in ((own, near), (np.ones_like(own), np.ones_like(near))):  # even at the extremes
        got = zero_shot_scores(o, n, joint, least)
        assert np.all(got <= least)
    base = zero_shot_scores(own, near, joint, least)
    assert np.all(zero_shot_scores(own + 0.1 * (1 - own), near, joint, least) >= base)
    assert np.all(zero_shot_scores(own, near + 0.1 * (1 - near), joint, least) >= base)
    assert zero_shot_scores(np.array([0.5]), np.array([0.5]), np.array([0.8])) == 0.4


def test_parent_lookups_equal_a_plain_loop():
    rng = np.random.default_rng(4)
    mf = "molecular_function"
    terms = [Term("GO:0000001", name="root", namespace=mf)]
    for i in range(2, 30):  # each term under one to three earlier terms
        ps = sorted({f"GO:{p:07d}" for p in rng.integers(1, i, size=rng.integers(1, 4))})
        terms.append(Term(f"GO:{i:07d}", name=f"t{i}", namespace=mf, parents={"is_a": ps}))
    onto = Ontology(terms)
    ids = [t.id for t in terms[1:]]  # the root is not a column
    scores = rng.random((5, len(ids)))
    col = {t: j for j, t in enumerate(ids)}
    for how, f in (("best", np.max), ("least", np.min),
                   ("joint", lambda m, axis: np.exp(np.log(m).mean(axis=axis)))):  # fmt: skip
        got = parent_scores(scores, ids, onto, how)
        for j, t in enumerate(ids):
            ps = [col[p] for p in onto.parents(t) if p in col]
            want = f(scores[:, ps], axis=1) if ps else np.zeros(5)
            np.testing.assert_allclose(got[:, j], want, rtol=1e-12)


def test_evaluate_model_writes_the_complete_matrix_table(trained, tmp_path, capsys, monkeypatch):
    import sys

    import pandas as pd

    from protgo.cli import main

    ckpt, data_dir, _ = trained
    out = tmp_path / "ev"
    args = ["protgo", "evaluate", "--dataset", "tinypred", "--data-dir", str(data_dir),
            "--model", str(ckpt), "--out", str(out)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", args)
    with pytest.raises(SystemExit) as done:
        main()
    assert done.value.code == 0
    table = pd.read_csv(out / "zero_shot.tsv", sep="\t")
    methods = {"protgo", "parents", "all-parents", "nearest-trained", "text+neighbours×parents"}
    assert set(table["method"]) == methods
    assert set(table["class"]) == {"zero", "few"} and set(table["aspect"]) == {"MF"}
    assert "complete score matrix" in capsys.readouterr().out


def test_a_baseline_matrix_is_read_by_protein_and_term(trained):
    """A per-term classifier's complete predictions (here the model's own scores, proteins and
    terms in another order) count on the few-shot terms they score, exactly as the model's."""
    from protgo.data.folder import DatasetFolder
    from protgo.eval.predictions import Predictions
    from protgo.infer.split_eval import complete_scores, load_for, zero_shot_rows

    ckpt, data_dir, _ = trained
    folder = DatasetFolder.load("tinypred", data_dir)
    pred = load_for(ckpt, folder, data_dir)
    pids, scores, _ = complete_scores(pred, folder, "test", progress=False)
    order, cols = np.arange(len(pids))[::-1], np.arange(len(pred.go_ids))[::-1]
    other = Predictions([pids[i] for i in order], [pred.go_ids[j] for j in cols],
                        scores[np.ix_(order, cols)].astype(np.float64))  # fmt: skip
    rows = zero_shot_rows(ckpt, folder, "test", data_dir, progress=False, others={"mlp": other})
    by = {(r["method"], r["class"], r["aspect"]): r for r in rows}
    assert ("mlp", "zero", "MF") not in by  # a per-term classifier has no zero-shot terms
    mine, its = by[("protgo", "few", "MF")], by[("mlp", "few", "MF")]
    assert its["terms"] == mine["terms"] > 0
    assert np.isclose(its["auc"], mine["auc"]) and np.isclose(its["aupr"], mine["aupr"])
