"""Baselines on tiny data whose right answers are obvious, and `protgo evaluate` end to end."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from protgo.data.ontology import Ontology
from protgo.errors import UserError
from protgo.eval.baselines import (
    MlpOptions,
    blend,
    choose_alpha,
    diamond,
    diamond_score,
    knn,
    mlp,
    naive,
)
from protgo.eval.evaluate import parse_baselines
from protgo.eval.predictions import Predictions

# tiny.obo: BP root 1; 2 metabolic, 3 signaling, 7 regulation under 1; 4 sugar, 5 lipid under 2;
# 6 glucose under 4 (is_a) and 3 (part_of); 8 under 7. MF root 10; 11 binding under 10.
GO = {i: f"GO:{i:07d}" for i in range(1, 12)}
AMINO = "ACDEFGHIKLMNPQRSTVWY"


@pytest.fixture
def onto(tiny_obo) -> Ontology:
    return Ontology.from_obo(tiny_obo)


def _score(pred: Predictions, pid: str, term: str) -> float:
    return float(pred.aligned([pid], [term])[0, 0])


def _assert_dag_consistent(pred: Predictions, onto: Ontology) -> None:
    """Every parent scores at least as high as each of its children."""
    col = {t: j for j, t in enumerate(pred.terms)}
    for t, j in col.items():
        for parent in onto.parents(t):
            assert (pred.scores[:, col[parent]] >= pred.scores[:, j] - 1e-12).all(), (t, parent)


def test_naive_is_term_frequency_per_aspect(onto):
    train = {"A": {GO[4]}, "B": {GO[5]}, "C": {GO[3]}, "D": {GO[11]}}
    pred = naive(train, ["Q1", "Q2"], onto)
    want = {GO[1]: 1.0, GO[2]: 2 / 3, GO[3]: 1 / 3, GO[4]: 1 / 3, GO[10]: 1.0, GO[11]: 1.0}
    for q in ("Q1", "Q2"):
        for t, v in want.items():
            assert _score(pred, q, t) == pytest.approx(v), t
    assert GO[6] not in pred.terms  # never seen in training
    _assert_dag_consistent(pred, onto)


def test_diamond_score_formula(onto):
    train = {"A": {GO[4]}, "B": {GO[5]}}
    pred = diamond_score({"q": [("A", 30.0), ("B", 10.0)], "r": [("Z", 5.0)]}, train, onto)
    assert pred.pids == ["q"]  # r's only hit is not a training protein
    assert _score(pred, "q", GO[4]) == pytest.approx(0.75)
    assert _score(pred, "q", GO[5]) == pytest.approx(0.25)
    assert _score(pred, "q", GO[2]) == pytest.approx(1.0)  # both hits carry it (propagated)


def _random_seq(rng: random.Random, n: int = 160) -> str:
    return "".join(rng.choice(AMINO) for _ in range(n))


def _mutate(rng: random.Random, seq: str, share: float = 0.1) -> str:
    return "".join(rng.choice(AMINO) if rng.random() < share else a for a in seq)


def _homologs():
    rng = random.Random(7)
    train_seqs = {p: _random_seq(rng) for p in "ABCD"}
    queries = {
        "qA": _mutate(rng, train_seqs["A"]),
        "qB": _mutate(rng, train_seqs["B"]),
        "qD": _mutate(rng, train_seqs["D"]),
        "qX": _random_seq(rng),
    }
    return train_seqs, queries


def test_diamond_transfers_labels_of_a_near_copy(onto):
    train_seqs, queries = _homologs()
    train = {"A": {GO[4]}, "B": {GO[5]}, "C": {GO[3]}, "D": {GO[11]}}
    queries["A"] = train_seqs["A"]  # a query that is itself in the database: no self-hit
    pred = diamond(train_seqs, train, queries, onto)
    assert set(pred.pids) == {"qA", "qB", "qD"}  # the unrelated sequence has no hit
    assert _score(pred, "qA", GO[4]) == pytest.approx(1.0)
    assert _score(pred, "qA", GO[5]) == 0.0
    assert _score(pred, "qB", GO[5]) == pytest.approx(1.0)
    assert _score(pred, "qD", GO[11]) == pytest.approx(1.0)
    assert _score(pred, "qD", GO[2]) == 0.0
    _assert_dag_consistent(pred, onto)


def _clusters(n_per: int, seed: int, noise: float = 0.1):
    """Three clusters of 16-d vectors, labelled sugar (4), lipid (5) and signaling (3)."""
    rng = np.random.default_rng(seed)
    centres = np.eye(16)[:3] * 3
    labels = [{GO[4]}, {GO[5]}, {GO[3]}]
    emb, ann = {}, {}
    for c in range(3):
        for i in range(n_per):
            pid = f"s{seed}c{c}_{i}"
            emb[pid] = centres[c] + noise * rng.standard_normal(16)
            ann[pid] = labels[c]
    return emb, ann


def test_knn_votes_by_similarity_and_skips_itself(onto):
    emb, train = _clusters(4, seed=0)
    emb["X"] = -np.ones(16)  # a loner with a label nobody else has
    train["X"] = {GO[8]}
    query = {"q0": np.eye(16)[0] * 2, "q1": np.eye(16)[1] * 2, "X": emb["X"]}
    pred = knn(emb, train, query, onto, k=3)
    assert _score(pred, "q0", GO[4]) == pytest.approx(1.0)
    assert _score(pred, "q0", GO[5]) == 0.0
    assert _score(pred, "q1", GO[5]) == pytest.approx(1.0)
    assert _score(pred, "X", GO[8]) == 0.0  # its own label is not transferred to itself
    _assert_dag_consistent(pred, onto)


def test_mlp_learns_separable_labels_and_scores_zero_shot_zero(onto):
    emb, train = _clusters(12, seed=1, noise=0.3)
    v_emb, valid = _clusters(4, seed=2, noise=0.3)
    q_emb, truth = _clusters(3, seed=3, noise=0.3)
    opts = MlpOptions(hidden=32, max_epochs=40, patience=8, batch_size=8, lr=3e-3, threads=1)
    pred = mlp(emb, train, v_emb, valid, q_emb, onto, opts)
    assert GO[6] not in pred.terms  # closed vocabulary: zero-shot terms score 0
    for pid, labels in truth.items():
        (label,) = labels
        others = {GO[3], GO[4], GO[5]} - {label}
        assert _score(pred, pid, label) > 0.5
        assert all(_score(pred, pid, t) < 0.5 for t in others)
    _assert_dag_consistent(pred, onto)  # sigmoid outputs propagated (max)


def test_blend_and_alpha_chosen_on_validation(onto):
    good = Predictions.from_dict({"V1": {GO[4]: 0.9}, "V2": {GO[5]: 0.9}})
    bad = Predictions.from_dict({"V1": {GO[5]: 0.9}, "V2": {GO[4]: 0.8}})
    valid = {"V1": {GO[4]}, "V2": {GO[5]}}
    mixed = blend(good, bad, 0.25)
    assert _score(mixed, "V1", GO[4]) == pytest.approx(0.225)
    assert _score(mixed, "V2", GO[4]) == pytest.approx(0.6)
    alpha, tried = choose_alpha(good, bad, valid, onto)
    # Any alpha > 0.5 ranks the right term first on both proteins; ties go nearest 0.5.
    aspect = onto.aspect(GO[4])
    assert set(alpha) == set(tried) == {aspect}
    assert len(tried[aspect]) == 11 and tried[aspect][1.0] == 1.0 and tried[aspect][0.0] < 1.0
    assert alpha[aspect] == 0.6
    alpha, _ = choose_alpha(bad, good, valid, onto)
    assert alpha[aspect] == 0.4
    # one weight per aspect: a term of another aspect keeps a's score
    per = blend(good, bad, {aspect: 0.25, "XX": 0.0}, onto)
    assert _score(per, "V1", GO[4]) == pytest.approx(0.225)


def test_parse_baselines():
    assert parse_baselines("all") == ["naive", "diamond", "knn", "mlp", "blend"]
    assert parse_baselines("naive, DIAMOND") == ["naive", "diamond"]
    with pytest.raises(UserError, match="unknown 'blast'"):
        parse_baselines("naive,blast")


def _tiny_dataset(root: Path, tiny_obo: Path) -> Path:
    """A dataset folder in the layout of `protgo data build`, small enough to read."""
    train_seqs, queries = _homologs()
    rng = random.Random(3)
    seqs = {
        **train_seqs,
        "vA": _mutate(rng, train_seqs["A"]),
        "tA": queries["qA"],
        "tB": queries["qB"],
        "tD": queries["qD"],
        "tX": queries["qX"],
    }
    labels = {
        "A": [GO[4]],
        "B": [GO[5]],
        "C": [GO[3]],
        "D": [GO[11]],
        "vA": [GO[4]],
        "tA": [GO[4]],
        "tB": [GO[5]],
        "tD": [GO[11]],
        "tX": [GO[8]],
    }
    split = {p: "train" if len(p) == 1 else ("valid" if p[0] == "v" else "test") for p in seqs}
    root.mkdir()
    (root / "go.obo").write_text(tiny_obo.read_text())
    (root / "proteins.fasta").write_text("".join(f">{p}\n{s}\n" for p, s in seqs.items()))
    ann = ["protein\tterm\taspect\tevidence"]
    ann += [f"{p}\t{t}\tX\tIDA" for p, ts in labels.items() for t in ts]
    (root / "annotations.tsv").write_text("\n".join(ann) + "\n")
    rows = ["protein\tsplit\tcluster"] + [f"{p}\t{s}\t0" for p, s in split.items()]
    (root / "splits.tsv").write_text("\n".join(rows) + "\n")
    classes = {GO[8]: "zero", GO[7]: "zero", GO[4]: "few", GO[5]: "few", GO[3]: "few"}
    terms = ["term\taspect\tn_train\tclass\theld_out"]
    terms += [f"{t}\tBP\t{0 if c == 'zero' else 1}\t{c}\t0" for t, c in classes.items()]
    (root / "terms.tsv").write_text("\n".join(terms) + "\n")
    ia = {GO[2]: 1.0, GO[3]: 1.6, GO[4]: 1.0, GO[5]: 1.0, GO[7]: 2.0, GO[8]: 0.5, GO[11]: 0.1}
    (root / "ia.tsv").write_text("".join(f"{t}\t{v}\n" for t, v in ia.items()))
    (root / "dataset.json").write_text(json.dumps({"name": "tiny"}))
    return root


def test_evaluate_command_runs_baselines_and_scores_files(tiny_obo, tmp_path):
    from typer.testing import CliRunner

    from protgo.cli import app

    ds = _tiny_dataset(tmp_path / "tiny", tiny_obo)
    mine = tmp_path / "mine.tsv"
    mine.write_text(f"tA\t{GO[4]}\t0.9\ntB\t{GO[5]}\t0.8\ntX\t{GO[8]}\t0.7\ntD\t{GO[11]}\t0.6\n")
    out = tmp_path / "out"
    args = [
        "evaluate",
        "--dataset",
        str(ds),
        "--pred",
        str(mine),
        "--baselines",
        "naive,diamond",
        "--out",
        str(out),
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    import pandas as pd

    table = pd.read_csv(out / "results.tsv", sep="\t")
    assert set(table.method) == {"mine", "naive", "diamond"}
    row = table[(table.method == "mine") & (table.aspect == "BP")].iloc[0]
    assert row.fmax == pytest.approx(1.0) and row.zero_auc == pytest.approx(1.0)
    dia = table[(table.method == "diamond") & (table.aspect == "BP")].iloc[0]
    assert dia.fmax == pytest.approx(0.8)  # tA, tB exact; tX (no homolog) has no prediction
    assert (out / "curves.tsv").is_file() and (out / "timings.json").is_file()

    mine_valid = tmp_path / "mine_valid.tsv"
    mine_valid.write_text(f"vA\t{GO[4]}\t0.9\nvA\t{GO[3]}\t0.3\n")
    args = [
        "evaluate",
        "--dataset",
        str(ds),
        "--pred",
        str(mine),
        "--valid-pred",
        str(mine_valid),
        "--baselines",
        "blend",
        "--out",
        str(tmp_path / "o3"),
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    timings = json.loads((tmp_path / "o3" / "timings.json").read_text())
    alpha = timings["blend"]["alpha"]  # the aligner's weight per aspect
    assert alpha and all(a in ("BP", "MF", "CC") and 0.0 <= w <= 1.0 for a, w in alpha.items())
    blended = pd.read_csv(tmp_path / "o3" / "results.tsv", sep="\t")
    assert set(blended.method) == {"mine", "blend"}

    bad = tmp_path / "bad.tsv"
    bad.write_text(f"tA\t{GO[4]}\t0.9\ntA\tGO:7777777\t0.5\n")
    res = CliRunner().invoke(
        app, ["evaluate", "--dataset", str(ds), "--pred", str(bad), "--out", str(tmp_path / "o2")]
    )
    assert isinstance(res.exception, UserError) and "bad.tsv:2" in str(res.exception)


def test_evaluate_a_users_ground_truth_scores_as_the_dataset_split(tiny_obo, tmp_path):
    """--ground-truth with --obo/--ia: the test split written as the user's own file gives the
    dataset split's Fmax, weighted Fmax and Smin; a bad line or GO id is one error."""
    import pandas as pd
    from typer.testing import CliRunner

    from protgo.cli import app
    from protgo.data.folder import DatasetFolder

    ds = _tiny_dataset(tmp_path / "tiny", tiny_obo)
    folder = DatasetFolder.load(ds)
    truth = tmp_path / "truth.tsv"
    truth.write_text(
        "EntryID\tterm\n"
        + "".join(
            f"{p}\t{t}\tBPO\n" for p in folder.ids("test") for t in sorted(folder.annotations[p])
        )
    )
    mine = tmp_path / "mine.tsv"
    mine.write_text(f"tA\t{GO[4]}\t0.9\ntB\t{GO[3]}\t0.8\ntX\t{GO[7]}\t0.2\ntD\t{GO[11]}\t0.6\n")
    runs = {}
    for name, extra in (("split", ["--dataset", str(ds)]),
                        ("file", ["--ground-truth", str(truth), "--obo", str(ds / "go.obo"),
                                  "--ia", str(ds / "ia.tsv")])):  # fmt: skip
        res = CliRunner().invoke(
            app, ["evaluate", *extra, "--pred", str(mine), "--out", str(tmp_path / name)]
        )
        assert res.exit_code == 0, res.output
        table = pd.read_csv(tmp_path / name / "results.tsv", sep="\t").set_index("aspect")
        runs[name] = table.loc["BP", ["fmax", "wfmax", "smin"]].astype(float)
    pd.testing.assert_series_equal(runs["file"], runs["split"])
    assert 0 < runs["file"]["fmax"] < 1

    truth.write_text(f"tA\t{GO[4]}\ntB\tGO:7777777\n")
    res = CliRunner().invoke(app, ["evaluate", "--ground-truth", str(truth), "--dataset",
                                   str(ds), "--pred", str(mine)])  # fmt: skip
    assert isinstance(res.exception, UserError) and "truth.tsv:2" in str(res.exception)
    res = CliRunner().invoke(app, ["evaluate", "--ground-truth", str(truth), "--pred", str(mine)])
    assert isinstance(res.exception, UserError) and "--obo" in str(res.exception)


def test_evaluate_command_embedding_baselines_from_a_residue_store(tiny_obo, tiny_esm, tmp_path):
    import pandas as pd
    from typer.testing import CliRunner

    from protgo.cli import app
    from protgo.config import ResiduesConfig
    from protgo.data.folder import DatasetFolder
    from protgo.encoders.protein import ProteinEncoder
    from protgo.stores.residues import ResidueStore

    ds = _tiny_dataset(tmp_path / "tiny", tiny_obo)
    enc = ProteinEncoder(ResiduesConfig(model=str(tiny_esm), win_size=64, win_stride=48))
    store = ResidueStore.create(tmp_path / "data", enc.settings())
    store.embed(enc, DatasetFolder.load(ds).sequences)
    out = tmp_path / "out"
    args = [
        "evaluate",
        "--dataset",
        str(ds),
        "--baselines",
        "knn,mlp",
        "--store",
        str(store.root),
        "--knn-k",
        "2",
        "--out",
        str(out),
        "--threads",
        "1",
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    table = pd.read_csv(out / "results.tsv", sep="\t")
    assert set(table.method) == {"knn", "mlp"}
    mlp_bp = table[(table.method == "mlp") & (table.aspect == "BP")].iloc[0]
    assert mlp_bp.zero_auc == 0.5  # closed vocabulary: every zero-shot score is 0

    res = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--dataset",
            str(ds),
            "--baselines",
            "knn",
            "--store",
            str(tmp_path),
            "--out",
            str(out),
        ],
    )
    assert isinstance(res.exception, UserError) and "residue store" in str(res.exception)
