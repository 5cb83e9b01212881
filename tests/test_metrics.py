"""CAFA metrics: a case worked out by hand, agreement with cafaeval, term-centric AUC against
scikit-learn, and the errors a bad prediction file gives."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from protgo.data.ontology import Ontology, Term, write_obo
from protgo.errors import UserError
from protgo.eval.cafa import run_cafaeval, summarize_cafaeval
from protgo.eval.metrics import (
    average_precision,
    evaluate_fast,
    roc_auc,
    term_centric,
    threshold_curve,
    thresholds,
)
from protgo.eval.predictions import Predictions, read_predictions, write_ground_truth

# tiny.obo (BP): 1 root; 2 metabolic, 3 signaling, 7 regulation are children of 1;
# 4 sugar and 5 lipid are children of 2.
GO = {i: f"GO:000000{i}" for i in range(1, 10)}
TRUTH = {"P1": {GO[4]}, "P2": {GO[3]}}  # propagated, roots left out: P1 {2, 4}, P2 {3}
PRED = {"P1": {GO[4]: 0.85, GO[5]: 0.45}, "P2": {GO[3]: 0.55, GO[7]: 0.55}}
IA = {GO[2]: 1.0, GO[3]: 2.0, GO[4]: 1.5, GO[5]: 0.5, GO[7]: 3.0}


def _hand_worked() -> dict[str, float]:
    """The figures of TRUTH/PRED/IA worked out by hand. Propagation gives P1 the score 0.85 on
    GO:2 too. Thresholds tau (predicted when score >= tau):
      tau in (0.85, 1): nothing predicted, coverage 0, skipped (as cafaeval does).
      tau in (0.55, 0.85]: P1 {2,4} exact; P2 nothing. Precision 1/1 (only P1 predicts),
        recall (1 + 0)/2 = 0.5, F 0.667. S: ru = (0 + IA3=2)/2 = 1, mi = 0 -> S = 1.
      tau in (0.45, 0.55]: P1 {2,4}; P2 {3,7}. Precision (1 + 1/2)/2 = 0.75, recall 1,
        F = 2*0.75/1.75 = 6/7. Weighted precision (1 + 2/5)/2 = 0.7, weighted F 1.4/1.7.
        mi = IA7/2 = 1.5, ru 0 -> S 1.5.
      tau <= 0.45: P1 {2,4,5} adds mi 0.5: precision (2/3+1/2)/2, F 0.737; S = 3.5/2 = 1.75.
    So Fmax 6/7 at the first tau above 0.45 (0.46), coverage 1; weighted Fmax 14/17;
    Smin 1.0 at 0.56."""
    return {"fmax": 6 / 7, "tau": 0.46, "coverage": 1.0, "wfmax": 14 / 17, "smin": 1.0,
            "tau_smin": 0.56}  # fmt: skip


def _cafaeval_table(tmp: Path, obo: Path, truth, preds: dict[str, Predictions], ia):
    write_ground_truth(truth, sorted(truth), tmp / "gt.tsv")
    (tmp / "ia.tsv").write_text("".join(f"{t}\t{v}\n" for t, v in ia.items()))
    files = {}
    for name, p in preds.items():
        p.write_cafa(tmp / f"{name}.tsv")
        files[name] = tmp / f"{name}.tsv"
    table, curves = summarize_cafaeval(
        run_cafaeval(obo, tmp / "ia.tsv", tmp / "gt.tsv", files, tmp / "out")
    )
    return table, curves


def test_hand_worked_case_fast_and_cafaeval(tiny_obo, tmp_path):
    onto = Ontology.from_obo(tiny_obo)
    pred = Predictions.from_dict(PRED)
    want = _hand_worked()
    (fast,) = evaluate_fast(pred, TRUTH, ["P1", "P2"], onto, IA)
    for key, value in want.items():
        assert fast[key] == pytest.approx(value, abs=1e-9), key
    table, curves = _cafaeval_table(tmp_path, tiny_obo, TRUTH, {"m": pred}, IA)
    (row,) = table.to_dict("records")
    assert (row["method"], row["aspect"]) == ("m", "BP")
    for key, value in want.items():
        assert row[key] == pytest.approx(value, abs=1e-3), key  # cafaeval writes 3 decimals
    assert set(curves["tau"].round(2)) == {round(t, 2) for t in thresholds() if t <= 0.85}


def _random_ontology(path: Path, seed: int, n: int = 40) -> Ontology:
    """A random DAG per namespace (is_a and part_of), written as OBO for cafaeval."""
    rng = random.Random(seed)
    terms = []
    for ns, base in (("biological_process", 1000), ("molecular_function", 2000)):
        for i in range(n):
            parents: dict[str, list[str]] = {}
            if i:
                ps = rng.sample(range(i), min(i, rng.choice([1, 1, 2])))
                parents["is_a"] = [f"GO:{base + p:07d}" for p in ps[:1]]
                if len(ps) > 1:
                    parents["part_of"] = [f"GO:{base + ps[1]:07d}"]
            terms.append(Term(f"GO:{base + i:07d}", f"t{base + i}", ns, parents=parents))
    write_obo(terms, path)
    return Ontology.from_obo(path)


@pytest.mark.parametrize("seed", [0, 1])
def test_fast_metrics_agree_with_cafaeval(tmp_path, seed):
    obo = tmp_path / "rand.obo"
    onto = _random_ontology(obo, seed)
    rng = np.random.default_rng(seed)
    ids = onto.ids()
    truth = {f"Q{i}": set(rng.choice(ids, size=rng.integers(1, 4), replace=False))
             for i in range(25)}  # fmt: skip
    truth["Q0"] = {"GO:0001000"}  # root only: counted in the aspect, nothing to recall
    preds = {}
    for name in ("a", "b"):
        scores = {p: {t: round(float(rng.random()), 4) for t in rng.choice(ids, 12)}
                  for p in list(truth)[:22]}  # fmt: skip
        preds[name] = read_predictions(_write(tmp_path / f"in_{name}.tsv", scores), onto)
    ia = onto.information_accretion(truth)
    table, curves = _cafaeval_table(tmp_path, obo, truth, preds, ia)
    assert len(table) == 4
    for name, pred in preds.items():
        for fast in evaluate_fast(pred, truth, sorted(truth), onto, ia):
            row = table[(table.method == name) & (table.aspect == fast["aspect"])].iloc[0]
            for key in ("fmax", "wfmax", "smin"):
                assert row[key] == pytest.approx(fast[key], abs=1.1e-3), (name, key)
            # cafaeval's file has 3 decimals, so near-ties in F pick the first tied threshold
            curve = curves[(curves.method == name) & (curves.aspect == fast["aspect"])]
            tied = curve[(curve.f - row["fmax"]).abs() < 1e-9]
            assert fast["tau"] == pytest.approx(tied.tau.to_numpy(), abs=1e-6) or any(
                abs(fast["tau"] - t) < 1e-6 for t in tied.tau
            ), name


def _write(path: Path, scores: dict[str, dict[str, float]]) -> Path:
    path.write_text("".join(f"{p}\t{t}\t{s}\n" for p, d in scores.items() for t, s in d.items()))
    return path


def test_threshold_curve_equals_loop_over_thresholds():
    rng = np.random.default_rng(3)
    scores = rng.random((30, 50)) * (rng.random((30, 50)) < 0.4)
    truth = rng.random((30, 50)) < 0.2
    w = rng.random(50) * 3
    cu = threshold_curve(scores, truth, w)
    for i, tau in enumerate(thresholds()):
        p = scores >= tau
        n_pred, tp = (p * w).sum(1), (p & truth) @ w
        n_gt = truth @ w
        covered = n_pred > 0
        pr = (tp[covered] / n_pred[covered]).mean() if covered.any() else 0.0
        rc = (tp[n_gt > 0] / n_gt[n_gt > 0]).sum() / len(scores)
        mi, ru = (n_pred - tp).mean(), (n_gt - tp).mean()
        assert cu["pr"][i] == pytest.approx(pr)
        assert cu["rc"][i] == pytest.approx(rc)
        assert cu["s"][i] == pytest.approx(np.hypot(mi, ru))
        assert cu["cov"][i] == pytest.approx(covered.mean())


def test_auc_and_aupr_match_sklearn():
    from sklearn.metrics import average_precision_score, roc_auc_score

    rng = np.random.default_rng(0)
    for _ in range(20):
        y = rng.random(40) < 0.3
        y[:2] = [True, False]
        s = rng.integers(0, 6, 40) / 5  # many ties
        assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s))
        assert average_precision(y, s) == pytest.approx(average_precision_score(y, s))


def test_term_centric_matches_sklearn_per_term(tiny_obo):
    from sklearn.metrics import average_precision_score, roc_auc_score

    onto = Ontology.from_obo(tiny_obo)
    rng = np.random.default_rng(1)
    leaves = [GO[3], GO[4], GO[5], GO[8], "GO:0000011"]
    truth = {f"P{i}": set(rng.choice(leaves, 2, replace=False)) for i in range(30)}
    pred = Predictions.from_dict(
        {p: {t: float(rng.random()) for t in leaves} for p in truth if p != "P0"}
    )
    classes = {GO[4]: "zero", GO[2]: "zero", GO[8]: "few", GO[5]: "few", "GO:0000011": "few"}
    rows = {(r["aspect"], r["class"]): r for r in term_centric(pred, truth, truth, onto, classes)}
    prop = pred.propagated(onto)
    for (aspect, cls), r in rows.items():
        pids = sorted(p for p in truth if any(onto.aspect(t) == aspect for t in truth[p]))
        aucs, aps = [], []
        for t in (t for t, c in classes.items() if c == cls and onto.aspect(t) == aspect):
            y = np.array([t in onto.propagate(truth[p]) for p in pids])
            if 0 < y.sum() < len(y):
                s = prop.aligned(pids, [t])[:, 0]
                aucs.append(roc_auc_score(y, s))
                aps.append(average_precision_score(y, s))
        assert r["terms"] == len(aucs)
        if not aucs:
            assert np.isnan(r["auc"]) and np.isnan(r["aupr"])
            continue
        assert r["auc"] == pytest.approx(np.mean(aucs))
        assert r["aupr"] == pytest.approx(np.mean(aps))
    assert rows[("BP", "zero")]["terms"] == 2
    assert rows[("MF", "few")]["terms"] == 0  # GO:11 is on every MF protein: no negative


def test_prediction_file_errors(tiny_obo, tmp_path):
    onto = Ontology.from_obo(tiny_obo)
    f = tmp_path / "p.tsv"
    f.write_text("AUTHOR me\nP1\tGO:0000099\t0.5\nP1\tGO:0000099\t0.7\nEND\n")
    assert read_predictions(f, onto).to_dict() == {"P1": {GO[3]: pytest.approx(0.7)}}  # alt id
    f.write_text("P1\tGO:0000004\t0.5\nP1\tGO:1234567\t0.5\nP2\tGO:7654321\t0.1\n")
    with pytest.raises(UserError, match=r"p\.tsv:2: unknown .*GO:1234567.*2 such lines"):
        read_predictions(f, onto)
    f.write_text("P1\tGO:0000009\t0.5\n")
    with pytest.raises(UserError, match="obsolete"):
        read_predictions(f, onto)
    for text, msg in [
        ("", "holds no predictions"),
        ("P1\tGO:0000004\n", r"p\.tsv:1: expected"),
        ("P1\tGO:0000004\thigh\n", "not a number"),
        ("P1\tGO:0000004\t1.5\n", "outside"),
        ("P1\t0000004\t0.5\n", "GO id"),
    ]:
        f.write_text(text)
        with pytest.raises(UserError, match=msg):
            read_predictions(f, onto)
    with pytest.raises(UserError, match="not found"):
        read_predictions(tmp_path / "missing.tsv", onto)


def test_write_cafa_round_trip_keeps_order_and_threshold(tiny_obo, tmp_path):
    onto = Ontology.from_obo(tiny_obo)
    pred = Predictions.from_dict(PRED).propagated(onto)
    n = pred.write_cafa(tmp_path / "x.tsv", min_score=0.5)
    lines = (tmp_path / "x.tsv").read_text().splitlines()
    assert n == len(lines) and lines[0].startswith("P1\t")
    back = read_predictions(tmp_path / "x.tsv", onto).to_dict()
    assert back["P1"] == {GO[1]: 0.85, GO[2]: 0.85, GO[4]: 0.85}  # 0.45 dropped, parents max
    assert back["P2"][GO[1]] == 0.55


def test_fmax_interval_brackets_fmax_and_shrinks_to_it_for_identical_proteins():
    from protgo.eval.metrics import fmax_interval, fmax_smin

    rng = np.random.default_rng(0)
    truth = rng.random((200, 30)) < 0.2
    scores = np.clip(truth * 0.5 + rng.random((200, 30)) * 0.6, 0, 0.999)
    lo, hi = fmax_interval(scores, truth, n_boot=300)
    point = fmax_smin(scores, truth)["fmax"]
    assert lo < point < hi and hi - lo < 0.2
    one = np.repeat(scores[:1], 50, axis=0), np.repeat(truth[:1], 50, axis=0)
    lo1, hi1 = fmax_interval(*one, n_boot=50)
    assert lo1 == pytest.approx(hi1) == pytest.approx(fmax_smin(*one)["fmax"])


def test_propagating_twice_returns_the_same_predictions():
    child = Term("GO:0000002", "child", "molecular_function", parents={"is_a": ["GO:0000001"]})
    onto = Ontology([Term("GO:0000001", "root", "molecular_function"), child])
    pred = Predictions(["P"], ["GO:0000002"], np.array([[0.7]]))
    once = pred.propagated(onto)
    assert once.terms == ["GO:0000001", "GO:0000002"] and once.scores.tolist() == [[0.7, 0.7]]
    assert once.propagated(onto) is once and pred.propagated(onto) is not once
