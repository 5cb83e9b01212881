"""protgo predict on a tiny trained model: real GO terms and texts (packaged MiniLM), a tiny
random ESM with 64-residue windows, families whose motif decides their GO term, one term
held out of training (zero-shot)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from protgo.errors import UserError

AA = "ACDEFGHIKLMNPQRSTVWY"


def _long_protein(n: int = 300) -> str:
    return "".join(random.Random(7).choice(AA) for _ in range(n))


def test_predict_scores_every_term_consistently(trained, tmp_path):
    from protgo.data.folder import DatasetFolder
    from protgo.infer.predict import Predictor

    ckpt, data_dir, seqs = trained
    pred = Predictor(ckpt, data_dir)
    folder = DatasetFolder.load("tinypred", data_dir)
    zero = [t for t, c in folder.term_class.items() if c == "zero"]
    assert zero, "the fixture holds one family's term out of training"
    assert set(zero) <= set(pred.go_ids)  # unseen terms are scored like any other
    assert not {"GO:0003674", "GO:0008150", "GO:0005575"} & set(pred.go_ids)  # the roots
    queries = {"long": _long_protein(), "short": seqs["F0_1"]}
    results = pred.predict(queries)
    col = {g: j for j, g in enumerate(pred.go_ids)}
    for r in results:
        assert r.scores.shape == (len(pred.go_ids),)
        for g in pred.go_ids:  # parent >= best child
            for p in pred.ontology.parents(g):
                if p in col:
                    assert r.scores[col[p]] >= r.scores[col[g]] - 1e-12
    # an unseen term is scored from the protein and its text, not a fixed prior
    zcols = [col[z] for z in zero]
    assert not np.allclose(results[0].scores[zcols], results[1].scores[zcols])


def test_unseen_terms_are_scored_under_their_parents(trained):
    """A term without a training positive scores the geometric mean of its parents' scores x
    sigmoid of the mean logit of its own score and its text neighbours' (the trained terms of
    its aspect with the nearest text vectors), capped at its least parent; the vectorised
    path equals a plain loop over the terms, and the result stays DAG-consistent."""
    from protgo.data.folder import TRAINED_CLASSES
    from protgo.go import scoring
    from protgo.infer.predict import Predictor

    ckpt, data_dir, seqs = trained
    pred = Predictor(ckpt, data_dir)
    vecs, _ = pred.protein_vectors([pred.residues({"q": s})["q"] for s in list(seqs.values())[:6]])
    got, own = pred.scores(vecs), pred.scores(vecs, propagate=False)
    base = scoring.propagate(own, pred.go_ids, pred.ontology)
    col = {g: j for j, g in enumerate(pred.go_ids)}
    text = pred.go_text.cpu().numpy()
    unit = text / np.linalg.norm(text, axis=1, keepdims=True)
    want, unseen = base.copy(), 0
    for j, g in enumerate(pred.go_ids):
        parents = [col[p] for p in pred.ontology.parents(g) if p in col]
        if pred.term_class(g) in TRAINED_CLASSES or not parents:
            continue
        unseen += 1
        donors = [d for d in pred.columns(pred.go_aspects[j])
                  if pred.term_class(pred.go_ids[d]) in TRAINED_CLASSES]  # fmt: skip
        sim = np.array([unit[j] @ unit[d] for d in donors])
        top = np.argsort(-sim)[: scoring.NEIGHBOURS]
        w = np.exp((sim[top] - sim[top].max()) / scoring.NEIGHBOUR_TEMP)
        near = base[:, [donors[i] for i in top]] @ (w / w.sum())
        logit = lambda p: np.log(p / (1 - p))  # noqa: E731
        z = (logit(own[:, j]) + logit(near)) / 2
        joint = np.exp(np.log(base[:, parents]).mean(axis=1))
        want[:, j] = np.minimum(joint / (1 + np.exp(-z)), base[:, parents].min(axis=1))
    want = scoring.propagate(want, pred.go_ids, pred.ontology)
    assert unseen > 0
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)
    assert not np.allclose(got, base)  # the unseen terms' scores changed


def test_long_protein_and_store_path_match_direct_embedding(trained):
    from protgo.infer.predict import Predictor

    ckpt, data_dir, seqs = trained
    pred = Predictor(ckpt, data_dir)
    long = _long_protein()
    assert pred.encoder.win_size == 64  # 300 residues: several windows, stitched
    res = pred.residues({"long": long})["long"]
    assert res.shape == (len(long), pred.residue_dim)
    ref = pred.encoder.embed(long).numpy().astype(np.float16)
    np.testing.assert_array_equal(res, ref)
    # A dataset sequence under another id comes from the store, and scores as if embedded now.
    stored = pred.residues({"query": seqs["F1_2"]})["query"]
    fresh = pred._embed({"query": seqs["F1_2"]}, progress=False)["query"]
    np.testing.assert_allclose(stored.astype(np.float32), fresh.astype(np.float32), atol=2e-3)
    a = pred.scores(pred.protein_vectors([stored])[0])
    b = pred.scores(pred.protein_vectors([fresh])[0])
    np.testing.assert_allclose(a, b, atol=2e-3)


def test_run_predict_writes_files_and_attributions(trained, tmp_path):
    from protgo.data.fasta import write_fasta
    from protgo.data.folder import DatasetFolder
    from protgo.eval.predictions import read_predictions
    from protgo.infer.command import run_predict

    ckpt, data_dir, seqs = trained
    fasta = tmp_path / "q.fasta"
    write_fasta([("long", _long_protein()), ("fam", seqs["F2_0"])], fasta)
    out = tmp_path / "out"
    info = run_predict(ckpt, fasta, out, top_k=3, attributions=True, threshold="auto",
                       data_dir=data_dir, progress=False)  # fmt: skip
    assert info["proteins"] == 2
    assert (ckpt.parent / "final.pt.calibration.json").is_file()
    onto = DatasetFolder.load("tinypred", data_dir).ontology
    cafa = read_predictions(out / "protgo.tsv", onto)
    assert set(cafa.pids) == {"long", "fam"}
    doc = json.loads((out / "predictions.json").read_text())
    assert doc["meta"]["calibrated"] and "MF" in doc["meta"]["threshold"]
    lines = (out / "predictions.tsv").read_text().splitlines()
    head = "protein\taspect\tgo_id\tname\tscore\tclass\tthreshold\taligner\thomology\thit"
    assert lines[0] == head
    assert doc["meta"]["method"] == "aligner"  # a checkpoint carries no homology reference
    assert "go_release" in doc["meta"] and doc["meta"]["protgo_version"]
    for p in doc["proteins"]:
        scores = [t["score"] for t in p["terms"]]
        assert scores == sorted(scores, reverse=True) and len(scores) <= 3
    attr = json.loads((out / "attributions.json").read_text())
    assert len(attr["long"]["attention"]) == 300
    assert abs(sum(attr["long"]["attention"]) - 1) < 1e-3
    for p in doc["proteins"]:
        assert set(attr[p["protein"]]["masking"]) == {t["go_id"] for t in p["terms"]}


def test_an_interrupted_predict_resumes_to_the_same_files(trained, tmp_path, monkeypatch):
    """Chunks of 2 proteins: a run killed after its first chunk keeps that chunk, the same
    command finishes the rest, and the files equal an uninterrupted run's byte for byte."""
    from protgo.data.fasta import write_fasta
    from protgo.infer.command import OUTPUT_FILES, run_predict
    from protgo.infer.predict import Predictor

    ckpt, data_dir, seqs = trained
    fasta = tmp_path / "q.fasta"
    write_fasta([(k, seqs[k]) for k in list(seqs)[:5]], fasta)
    kw = {"top_k": 3, "attributions": True, "data_dir": data_dir, "progress": False,
          "batch_size": 2}  # fmt: skip
    run_predict(ckpt, fasta, tmp_path / "whole", **kw)
    real, calls = Predictor.predict, []

    def killed_on_the_second_chunk(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    out = tmp_path / "cut"
    with monkeypatch.context() as m:
        m.setattr(Predictor, "predict", killed_on_the_second_chunk)
        with pytest.raises(KeyboardInterrupt):
            run_predict(ckpt, fasta, out, **kw)
    assert [d.name for d in sorted((out / "partial").glob("chunk-*"))] == ["chunk-000000"]
    assert not (out / "protgo.tsv").exists()
    with pytest.raises(UserError, match="unfinished run of other sequences or options"):
        run_predict(ckpt, fasta, out, **{**kw, "top_k": 4})
    from protgo.io import file_lock

    busy = pytest.raises(UserError, match="in use by another `protgo predict`")
    with file_lock(out / ".lock"), busy:  # another predict is writing into the folder
        run_predict(ckpt, fasta, out, **kw)
    info = run_predict(ckpt, fasta, out, **kw)
    assert info["resumed_chunks"] == 1 and not (out / "partial").exists()
    for name in OUTPUT_FILES:
        assert (out / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    json.loads((out / "attributions.json").read_text())  # one valid document from 3 chunks


def test_masking_attribution_finds_the_motif(trained):
    """Residues whose masking lowers a term's score most are where the model looks."""
    from protgo.infer.attribution import masking_map
    from protgo.infer.predict import Predictor

    ckpt, data_dir, seqs = trained
    pred = Predictor(ckpt, data_dir)
    res = pred.residues({"x": seqs["F3_4"]})["x"]
    go = pred.go[:4].cpu()
    occl = masking_map(pred.model, res, go, window=5)
    assert occl.shape == (4, len(res))
    # masking every residue of a window exactly reproduces a direct pooling without them
    x = torch.from_numpy(res.astype(np.float32))[None]
    mask = torch.ones(1, len(res), dtype=torch.bool)
    mask[0, :5] = False
    with torch.no_grad():
        base = pred.model.encode_protein(x, torch.ones_like(mask))["protein"] @ go.T
        cut = pred.model.encode_protein(x, mask)["protein"] @ go.T
    assert np.isclose(occl[0, 0], float((base - cut)[0, 0]), atol=1e-5)


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "holds no records"),
        (">a\nMKV\n>a\nMKL\n", "duplicate record id 'a'"),
        (">a\nMKV\n>b\nMK1L\n", "protein 'b', position 3"),
    ],
)
def test_bad_fasta_is_one_clear_error(trained, tmp_path, content, message):
    from protgo.infer.command import run_predict

    ckpt, data_dir, _ = trained
    fasta = tmp_path / "bad.fasta"
    fasta.write_text(content)
    out = tmp_path / "out"
    with pytest.raises(UserError, match=message):
        run_predict(ckpt, fasta, out, data_dir=data_dir, progress=False)
    assert not out.exists()


def test_other_schema_version_is_refused(trained, tmp_path):
    from protgo.infer.command import run_predict

    ckpt, data_dir, seqs = trained
    state = torch.load(ckpt, weights_only=False)
    state["schema_version"] = 99
    old = tmp_path / "old.pt"
    torch.save(state, old)
    fasta = tmp_path / "q.fasta"
    fasta.write_text(f">q\n{seqs['F0_0']}\n")
    with pytest.raises(UserError, match="schema version 99"):
        run_predict(old, fasta, tmp_path / "out", data_dir=data_dir, progress=False)
    assert not (tmp_path / "out").exists()
    with pytest.raises(UserError, match="--threshold"):
        run_predict(ckpt, fasta, tmp_path / "out", threshold="high", data_dir=data_dir)


def test_cli_predict(trained, tmp_path):
    from typer.testing import CliRunner

    from protgo.cli import app

    ckpt, data_dir, seqs = trained
    fasta = tmp_path / "q.fasta"
    fasta.write_text(f">q1\n{seqs['F4_1']}\n>q2\n{_long_protein(120)}\n")
    res = CliRunner().invoke(app, ["predict", "--checkpoint", str(ckpt.parent.parent),
                                   "--fasta", str(fasta), "--out", str(tmp_path / "o"),
                                   "--top-k", "2", "--no-propagate",
                                   "--data-dir", str(data_dir)])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert json.loads(res.output[res.output.rindex('{"proteins"') :])["proteins"] == 2
    assert len((tmp_path / "o" / "predictions.tsv").read_text().splitlines()) == 1 + 2 * 2


def test_only_terms_with_a_training_positive_carry_a_residual(trained):
    """Unseen (zero-shot) terms have no residual, so they are scored from their text alone;
    the trained terms' residuals have moved from zero."""
    from protgo.data.folder import DatasetFolder
    from protgo.infer.predict import Predictor

    ckpt, data_dir, _ = trained
    pred = Predictor(ckpt, data_dir)
    cls = DatasetFolder.load("tinypred", data_dir).term_class
    has = (pred.residual_rows >= 0).tolist()
    assert has == [cls.get(g) in ("common", "few") for g in pred.go_ids]
    assert any(has) and not all(has)
    assert pred.model.term_residual.abs().sum() > 0


def test_evaluate_scores_only_the_listed_proteins(trained, tmp_path):
    """`evaluate --proteins`: the split narrowed to a list; an id of another split is one
    error naming the file."""
    from protgo.data.folder import DatasetFolder

    _, data_dir, _ = trained
    folder = DatasetFolder.load("tinypred", data_dir)
    some = folder.ids("test")[:2]
    listed = tmp_path / "ids.txt"
    listed.write_text("\n".join(some) + "\n")
    view = folder.restricted("test", listed)
    assert view.ids("test") == some and view.ids("train") == folder.ids("train")
    assert len(folder.ids("test")) > 2  # the folder itself is unchanged
    listed.write_text(folder.ids("train")[0] + "\n")
    with pytest.raises(UserError, match="not 'test' proteins"):
        folder.restricted("test", listed)


def test_best_first_is_a_stable_sort_cut_short():
    """The fast top-k of the output files against a full stable sort, ties included."""
    from protgo.infer.command import best_first

    rng = np.random.default_rng(0)
    scores = np.round(rng.random(500), 2)  # many ties
    cols = np.sort(rng.choice(500, 300, replace=False))
    want = cols[np.argsort(-scores[cols], kind="stable")]
    for k in (1, 7, 20, 160, 299, 300, 1000):
        got = best_first(scores, cols, k)
        assert len(got) >= min(k, len(cols))
        np.testing.assert_array_equal(got[:k], want[:k])
        np.testing.assert_array_equal(got, want[: len(got)])
