"""Zero-/few-shot terms from the complete score matrix, and the two ontology baselines."""

from __future__ import annotations

import numpy as np
import pytest

from protgo.data.ontology import Ontology, Term
from protgo.eval.metrics import average_precision, roc_auc
from protgo.eval.zeroshot import (
    column_auc,
    complete_term_metrics,
    fit_conditional,
    nearest_trained_scores,
    zero_shot_table,
)
from protgo.go.scoring import parent_scores, text_times_parents


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
    near = nearest_trained_scores(scores, text, trained, np.array(["MF"] * 3))
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
    assert set(by) == {(m, c) for m in ("protgo", "parents", "nearest-trained")
                       for c in ("zero", "few")}  # fmt: skip
    assert by[("protgo", "zero")] == 1.0  # its one positive ranked first
    assert by[("parents", "zero")] == 2 / 3  # the kinase score ranks protein 3 above it


def test_text_times_parents_recovers_its_conditional_and_never_exceeds_the_parent():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(4000, 5))
    parent = rng.uniform(0.05, 1.0, size=(4000, 5))
    a, b = 1.5, -0.5
    truth = rng.random((4000, 5)) < text_times_parents(logits, parent, a, b)
    got_a, got_b = fit_conditional(logits, parent, truth)
    assert abs(got_a - a) < 0.2 and abs(got_b - b) < 0.2
    both = text_times_parents(logits * 50, parent, got_a, got_b)  # even for extreme logits
    assert np.all(both <= parent)


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
    assert set(table["method"]) == {"protgo", "parents", "nearest-trained", "text×parents"}
    assert set(table["class"]) == {"zero", "few"} and set(table["aspect"]) == {"MF"}
    assert "complete score matrix" in capsys.readouterr().out
