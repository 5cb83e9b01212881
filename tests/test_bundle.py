"""Inference bundles: export -> load gives the checkpoint's scores, predict from another folder
with an empty data dir, a newer ontology (--obo), the Python API, and a malicious bundle."""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from protgo.errors import UserError
from protgo.infer.bundle import export
from protgo.infer.predict import Predictor


@pytest.fixture(scope="module")
def bundles(trained, tmp_path_factory):
    """(checkpoint predictor, bundle with vectors and a homology reference, bundle with
    neither)."""
    ckpt, data_dir, _ = trained
    pred = Predictor(ckpt, data_dir)
    root = tmp_path_factory.mktemp("bundles")
    plain = export(pred, root / "plain", with_vectors=False, with_homology=False)
    return pred, export(pred, root / "with"), plain


def _scores(pred: Predictor, seqs: dict) -> np.ndarray:
    return np.stack([r.scores for r in pred.predict(seqs)])


def test_bundle_scores_equal_the_checkpoints(trained, bundles, tmp_path):
    _, _, seqs = trained
    ref, with_vectors, plain = bundles
    queries = {k: seqs[k] for k in list(seqs)[:6]}
    want = _scores(ref, queries)
    for path in (with_vectors, plain):  # plain: GO vectors rebuilt from the recipe
        got = Predictor(path, tmp_path / f"empty-{path.name}", homology=False)
        assert got.go_ids == ref.go_ids and got.folder is None
        # fp16 weights in the bundle: scores within fp16 rounding of the checkpoint's (which
        # the unseen terms' logit mean can stretch a little)
        np.testing.assert_allclose(_scores(got, queries), want, atol=3e-3)
    assert not list((tmp_path / "empty-with").glob("stores/go/*"))  # vectors were in the bundle
    assert list((tmp_path / "empty-plain").glob("stores/go/bundle-plain-*"))  # rebuilt, cached


def test_predict_from_another_folder_with_an_empty_data_dir(trained, bundles, tmp_path):
    from typer.testing import CliRunner

    from protgo.cli import app

    _, _, seqs = trained
    fasta = tmp_path / "q.fasta"
    fasta.write_text("".join(f">{k}\n{seqs[k]}\n" for k in list(seqs)[:3]))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cwd = os.getcwd()
    os.chdir(elsewhere)
    try:
        res = CliRunner().invoke(app, [
            "predict", "--model", str(bundles[1]), "--fasta", str(fasta), "--out", "out",
            "--data-dir", str(tmp_path / "empty"), "--most-specific", "--threshold", "auto",
        ])  # fmt: skip
    finally:
        os.chdir(cwd)
    assert res.exit_code == 0, res.output
    lines = (elsewhere / "out" / "predictions.tsv").read_text().splitlines()
    assert lines[0].split("\t") == ["protein", "aspect", "go_id", "name", "score", "class",
                                    "threshold", "aligner", "homology", "hit"]  # fmt: skip
    rows = [ln.split("\t") for ln in lines[1:]]
    assert rows and {r[5] for r in rows} <= {"common", "few", "zero"}
    # --most-specific: no reported term is an ancestor of another reported for the protein
    pred = bundles[0]
    for pid in {r[0] for r in rows}:
        ids = {r[2] for r in rows if r[0] == pid}
        for g in ids:
            assert not (pred.ontology.ancestors(g) & ids), g


def test_a_newer_ontology_scores_a_term_the_model_never_saw(trained, bundles, tmp_path):
    _, _, seqs = trained
    path = bundles[2]
    pred = bundles[0]
    parent = next(g for g in pred.go_ids if pred.ontology.aspect(g) == "MF")
    new_obo = tmp_path / "newer.obo"
    new_obo.write_text(gzip.decompress((path / "go.obo.gz").read_bytes()).decode() + (
        "\n[Term]\nid: GO:9999999\nname: sugar kinase activity from a newer release\n"
        "namespace: molecular_function\ndef: \"Catalysis of the phosphorylation of a sugar.\" []\n"
        f"is_a: {parent}\n"
    ))  # fmt: skip
    newer = Predictor(path, tmp_path / "data", obo=new_obo)
    assert "GO:9999999" in newer.go_ids and "GO:9999999" not in pred.go_ids
    assert newer.term_class("GO:9999999") == "new" and newer.term_class(parent) != "new"
    scores = _scores(newer, {"q": seqs[next(iter(seqs))]})
    assert np.isfinite(scores).all() and scores[0, newer.go_ids.index("GO:9999999")] > 0


def test_shipped_vectors_mean_no_text_encoder_and_a_newer_ontology_encodes_only_new_texts(
    trained, bundles, tmp_path, monkeypatch
):
    import protgo.stores.go_encode as gv

    _, _, seqs = trained
    query = {"q": seqs[next(iter(seqs))]}

    def no_encoder(*args, **kwargs):
        raise AssertionError("the text encoder was loaded")

    with monkeypatch.context() as m:
        m.setattr(gv, "load_text_encoder", no_encoder)
        got = Predictor(bundles[1], tmp_path / "data", homology=False)
        assert np.isfinite(_scores(got, query)).all()
    manifest = (bundles[1] / "go_vectors" / "manifest.json").read_text()
    assert '"storage": "fp16"' in manifest
    parent = next(g for g in got.go_ids if got.ontology.aspect(g) == "MF")
    new_obo = tmp_path / "newer.obo"
    new_obo.write_text(gzip.decompress((bundles[1] / "go.obo.gz").read_bytes()).decode() + (
        f"\n[Term]\nid: GO:9999999\nname: a newer kinase\nnamespace: molecular_function\n"
        f"is_a: {parent}\n"
    ))  # fmt: skip
    newer = Predictor(bundles[1], tmp_path / "data", obo=new_obo, homology=False)
    assert "GO:9999999" in newer.go_ids
    # every text but the new term's was the bundle's: copied, not encoded
    assert newer.text_cache.manifest["reused"] == len(newer.text_cache) - 1


def test_a_bundle_names_the_shared_vectors_and_refuses_other_ones(trained, bundles, tmp_path,
                                                                  monkeypatch):  # fmt: skip
    """When protgo ships a recipe's vectors, an export names them instead of copying; vectors
    that are not the ones bundle.json records are refused with one line."""
    import json

    import protgo.infer.bundle as bundle_mod

    ckpt, data_dir, seqs = trained
    meta = json.loads((bundles[1] / "bundle.json").read_text())
    recipe = f"all-MiniLM-L6-v2-phase{meta['phase']}-{meta['recipe']['text_hash']}"
    assert meta["go_vectors"]["name"] == recipe  # the name protgo ships them under
    shared = tmp_path / "shipped" / meta["go_vectors"]["name"]
    shutil.copytree(bundles[1] / "go_vectors", shared)
    monkeypatch.setattr(bundle_mod, "shared_vectors_dir", lambda name: tmp_path / "shipped" / name)
    slim = export(Predictor(ckpt, data_dir), tmp_path / "slim", with_homology=False)
    assert not (slim / "go_vectors").exists()
    query = {"q": seqs[next(iter(seqs))]}
    want = _scores(Predictor(bundles[1], tmp_path / "d", homology=False), query)
    np.testing.assert_allclose(_scores(Predictor(slim, tmp_path / "d"), query), want)
    other = tmp_path / "other"  # other vectors under the shared name, with their own manifest
    shutil.copytree(shared, other)
    from protgo.stores.go_vectors import GoVectorCache

    cache = GoVectorCache.load(other)
    cache.vectors[0] = -cache.vectors[0]
    shutil.rmtree(shared)
    cache.save(shared, "fp16")
    with pytest.raises(UserError, match="fail the checksum bundle.json records"):
        Predictor(slim, tmp_path / "d")


def test_python_api_returns_the_documented_columns(trained, bundles, tmp_path):
    from protgo import load_model

    _, _, seqs = trained
    m = load_model(bundles[1], data_dir=tmp_path)
    df = m.predict({k: seqs[k] for k in list(seqs)[:2]}, top_k=3)
    assert list(df.columns) == ["protein", "aspect", "go_id", "name", "score", "class",
                                "threshold", "aligner", "homology", "hit"]  # fmt: skip
    assert (df["homology"] != "").all()  # the bundle's default output is the blend
    assert len(df) and set(df["protein"]) == set(list(seqs)[:2])
    assert (df.groupby(["protein", "aspect"]).size() <= 3).all()
    fasta = tmp_path / "q.fasta"
    fasta.write_text(f">a\n{seqs[next(iter(seqs))]}\n")
    assert set(m.predict_fasta(fasta)["protein"]) == {"a"}
    with pytest.raises(UserError, match="--threshold"):
        m.predict({"a": seqs[next(iter(seqs))]}, threshold=1.5)


class Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_bundle_does_not_execute(bundles, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(bundles[1], bad)
    marker = tmp_path / "pwned"
    (bad / "model.safetensors").write_bytes(pickle.dumps(Evil(marker)))
    with pytest.raises(UserError, match="damaged"):
        Predictor(bad, tmp_path / "data")
    assert not marker.exists()
    # A pickled vectors.npy in the bundle's GO vectors: refused by its checksum, never loaded.
    bad2 = tmp_path / "bad2"
    shutil.copytree(bundles[1], bad2)
    (bad2 / "go_vectors" / "vectors.npy").write_bytes(pickle.dumps(Evil(marker)))
    with pytest.raises(UserError, match="vectors.npy"):
        Predictor(bad2, tmp_path / "data")
    assert not marker.exists()


def test_unknown_model_names_the_choices(tmp_path):
    from protgo.infer.bundle import resolve_model

    with pytest.raises(UserError, match="neither a bundle directory"):
        resolve_model(tmp_path / "nothing")


def test_model_card_tables_the_evaluate_results(bundles, tmp_path, capsys, monkeypatch):
    import json

    from protgo.infer.bundle import model_card, read_metrics

    results = tmp_path / "results.tsv"
    results.write_text("method\taspect\tfmax\ttau\tcoverage\twfmax\tsmin\tzero_auc\n"
                       "protgo\tMF\t0.5\t0.3\t1.0\t0.4\t2.0\t0.7\n"
                       "naive\tMF\t0.4\t0.2\t1.0\t0.3\t2.5\t\n")  # fmt: skip
    meta = json.loads((bundles[1] / "bundle.json").read_text())
    meta["provenance"]["metrics"] = read_metrics(results)
    card = model_card("x", meta)
    assert "| MF | protgo | 0.500 | 0.400 | 2.000 | 1.000 | 0.700 | - |" in card
    assert "| MF | naive | 0.400 | 0.300 | 2.500 | 1.000 | - | - |" in card
    assert (bundles[1] / "README.md").read_text().startswith("# with")
    # export --model B --results 'TITLE=results.tsv': a copy whose card has one more table
    from test_bad_inputs import run_cli

    summary = tmp_path / "summary.json"  # as benchmarks/proteome.py writes it
    summary.write_text(json.dumps({
        "proteins": 2000, "mean_length": 600.0, "cpu_count": 2, "cpu": "a CPU", "total_s": 400.0,
        "proteins_per_s": 5.0, "without_homology_s": 300.0, "stage_s": {"residues": 200.0},
        "stage_peak_rss_mb": {"residues": 2048}}))  # fmt: skip
    zero = tmp_path / "zero_shot.tsv"  # as `evaluate --model` writes it
    zero.write_text("method\taspect\tclass\tterms\tauc\taupr\n"
                    "parents\tMF\tzero\t12\t0.7\t0.1\nprotgo\tMF\tzero\t12\t0.8\t0.2\n"
                    "protgo\tCC\tzero\t3\t0.6\t0.1\n")  # fmt: skip
    code, err = run_cli(["export", "--model", bundles[1], "--out", tmp_path / "noted",
                         "--results", f"Other species={results}", "--costs", summary,
                         "--zero-shot", zero], capsys, monkeypatch)  # fmt: skip
    assert code == 0, err
    card = (tmp_path / "noted" / "README.md").read_text()
    assert "## Other species" in card and card.count("| MF | naive | 0.400 |") == 1
    assert "5.0 proteins/s" in card and "residues 100 s" in card and "2.0 GB" in card
    assert "| zero | protgo | - | 0.800 (12) | 0.600 (3) |" in card  # BP, MF, CC
    assert "| zero | parents | - | 0.700 (12) | - |" in card
    code, err = run_cli(["export", "--model", bundles[1], "--out", tmp_path / "bad",
                         "--zero-shot", results], capsys, monkeypatch)  # fmt: skip
    assert code != 0 and "lacks the columns class, terms, auc, aupr" in err


@pytest.mark.parametrize(
    ("name", "encoder"), [("protgo-human", "unirep-1900"), ("protgo-human-esm8m", "protgo-esm-8m")]
)
def test_the_shipped_model_loads_from_its_name(name, encoder):
    """The shipped bundles are package data: found by name, readable without a dataset, and
    their protein encoder is one that ships too."""
    from protgo.infer.bundle import load, resolve_model

    path = resolve_model(name)
    b = load(path)
    assert b.cfg.residues.model == encoder
    assert b.cfg.data.aspects == ["BP", "MF", "CC"] and b.weights["pool.key.weight"].ndim == 2
    assert b.meta["calibration"]["aspects"].keys() == {"BP", "MF", "CC"}
    assert {"protgo", "naive", "diamond"} <= set(b.meta["provenance"]["metrics"])
    assert len(b.ontology.terms) > 40_000 and b.terms
    card = (path / "README.md").read_text()
    assert all(card.count(f"| {a} | protgo |") == 1 for a in ("BP", "MF", "CC"))  # test table
    assert card.startswith(f"# {name}\n") and f"--model {name} " in card  # its own name


def test_a_model_on_projected_residues_predicts_new_sequences_from_its_bundle(tiny_esm, tmp_path):
    """A store with residues.project_dim: training reads the projected residues; the bundle
    carries the projection, so a machine without the store embeds and projects the same."""
    from train_world import CONFIGS, build_predict_world

    from protgo.config import load_config
    from protgo.encoders.protein import ProteinEncoder
    from protgo.stores.go_encode import embed_go
    from protgo.stores.residues import ResidueStore
    from protgo.train.trainer import Trainer

    data_dir = tmp_path / "data"
    overrides, seqs = build_predict_world(data_dir, tiny_esm, "tinyproj")
    more = ["phases.start_epochs=[0]", "train.epochs=1", f"train.out_dir={tmp_path / 'run'}",
            "residues.project_dim=8", "residues.dtype=fp32"]  # fmt: skip
    cfg = load_config(CONFIGS / "tiny.yaml", overrides + more)
    enc = ProteinEncoder(cfg.residues)
    store = ResidueStore.for_encoder(data_dir, enc)
    store.embed(enc, seqs, progress=False)
    embed_go("tinyproj", 0, ["MF"], data_dir, cfg.go_text, progress=False)
    Trainer(cfg, progress=False).fit()
    ref = Predictor(tmp_path / "run" / "checkpoints" / "final.pt", data_dir)
    assert ref.residue_dim == 8 and ref.projection is not None  # the store's
    path = export(ref, tmp_path / "bundle")
    assert (path / "residue_projection.npz").is_file()
    got = Predictor(path, tmp_path / "empty", homology=False)  # no store: embeds, projects
    assert got._store is None and got.projection is not None
    queries = {k: seqs[k] for k in list(seqs)[:5]}
    np.testing.assert_allclose(_scores(got, queries), _scores(ref, queries), atol=3e-3)
    (path / "residue_projection.npz").unlink()
    (path / "residue_projection.json").unlink()
    with pytest.raises(UserError, match="projection is not here"):
        Predictor(path, tmp_path / "empty").predict(queries)


def test_the_blend_is_the_formula_over_its_parts(trained, bundles, tmp_path):
    """score = alpha[aspect] * aligner + (1 - alpha[aspect]) * DiamondScore of the hits, the
    rule `protgo evaluate` scores as its blend."""
    from protgo.go.scoring import transfer_scores

    _, _, seqs = trained
    pred = Predictor(bundles[1], tmp_path / "d")
    ref = pred.homology
    assert ref is not None and set(ref.alpha) == {"MF"} and 0 <= ref.alpha["MF"] <= 1
    queries = {k: seqs[k] for k in list(seqs)[:4]}
    alone = Predictor(bundles[1], tmp_path / "d", homology=False)
    for r, a in zip(pred.predict(queries), alone.predict(queries), strict=True):
        np.testing.assert_allclose(r.aligner, a.scores)  # the aligner part is the aligner
        assert r.hits, "family members of the training split are found"
        want = transfer_scores({r.pid: r.hits}, ref.labels)[r.pid]
        hom = np.array([want.get(g, 0.0) for g in pred.go_ids])
        np.testing.assert_allclose(r.homology, hom)
        w = ref.alpha["MF"]
        np.testing.assert_allclose(r.scores, w * a.scores + (1 - w) * hom)


def test_a_dataset_added_to_the_reference_is_searched_and_its_database_kept(trained, bundles,
                                                                           tmp_path):  # fmt: skip
    """--reference adds a built dataset's proteins (here the valid and test proteins the
    bundle's training-split reference lacks); the DIAMOND database is made once and kept."""
    from protgo.data.folder import DatasetFolder

    _, data_dir, seqs = trained
    test = DatasetFolder.load("tinypred", data_dir).ids("test")[0]
    query = {"query": seqs[test]}  # another id: its own entry is a hit, not a self-hit
    plain = Predictor(bundles[1], data_dir)
    assert test not in dict(plain.predict(query)[0].hits)
    wide = Predictor(bundles[1], data_dir, references=["tinypred"])
    assert "tinypred" in wide.homology.evidence and wide.homology.key != plain.homology.key
    assert wide.predict(query)[0].hits[0][0] == test
    db = next((data_dir / "stores" / "diamond").glob(f"reference-{wide.homology.key[:16]}.dmnd"))
    # the blend's weights chosen again for the wider reference, on its dataset's valid split
    assert "blend weights chosen again" in wide.homology.evidence
    fitted = next((data_dir / "stores" / "diamond").glob("blend-*.json"))
    made, chosen = db.stat().st_mtime_ns, fitted.stat().st_mtime_ns
    again = Predictor(bundles[1], data_dir, references=["tinypred"])
    assert again.predict(query)[0].hits[0][0] == test and db.stat().st_mtime_ns == made
    assert fitted.stat().st_mtime_ns == chosen and again.homology.alpha == wide.homology.alpha
    # a kept choice that was edited (here: a weight for an aspect the model lacks, out of
    # [0, 1]) is chosen again, never used
    fitted.write_text(fitted.read_text().replace('"alpha": {', '"alpha": {"x": 5.0, ', 1))
    third = Predictor(bundles[1], data_dir, references=["tinypred"])
    assert third.homology.alpha == wide.homology.alpha and '"x"' not in fitted.read_text()
    with pytest.raises(UserError, match="--reference"):
        Predictor(bundles[1], data_dir, homology=False, references=["tinypred"])


def test_a_damaged_reference_or_missing_diamond_is_one_line(trained, bundles, tmp_path,
                                                            capsys, monkeypatch):  # fmt: skip
    from test_bad_inputs import assert_one_error, run_cli

    _, _, seqs = trained
    fasta = tmp_path / "q.fasta"
    fasta.write_text(f">q\n{seqs[next(iter(seqs))]}\n")
    bad = tmp_path / "bad"
    shutil.copytree(bundles[1], bad)
    raw = bytearray((bad / "reference.tsv.gz").read_bytes())
    raw[len(raw) // 2] ^= 0x01
    (bad / "reference.tsv.gz").write_bytes(bytes(raw))
    args = ["predict", "--model", bad, "--fasta", fasta, "--data-dir", tmp_path / "d"]
    code, err = run_cli([*args, "--out", tmp_path / "o1"], capsys, monkeypatch)
    assert_one_error(code, err, "reference.tsv.gz fails its checksum", "--no-homology")
    code, err = run_cli([*args, "--out", tmp_path / "o2", "--no-homology"], capsys, monkeypatch)
    assert code == 0, err
    monkeypatch.setenv("PATH", str(tmp_path))  # no diamond on the PATH
    args = ["predict", "--model", bundles[1], "--fasta", fasta, "--data-dir", tmp_path / "d"]
    code, err = run_cli([*args, "--out", tmp_path / "o3"], capsys, monkeypatch)
    assert_one_error(code, err, "DIAMOND is not installed", "--no-homology")


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        (lambda b: _edit_json(b, lambda m: m.update(phase="two")), "not a text phase"),
        (lambda b: _edit_json(b, lambda m: m["config"]["go_text"].update(encoder="../../etc")),
         "a local path"),
        (lambda b: _edit_json(b, lambda m: m["calibration"]["aspects"]["MF"].update(
            threshold=0.95)), "changed after protgo wrote it"),
        (lambda b: (b / "terms.tsv").write_text((b / "terms.tsv").read_text() + "GO:1\tMF\n"),
         "2 columns where the header has 6"),
        (lambda b: _edit_json(b, lambda m: m.update(go_vectors={"name": "../../x", "sha256": {}})),
         "go_vectors entry is malformed"),
        (lambda b: (b / "terms.tsv").write_text((b / "terms.tsv").read_text() + "\n".join(
            (b / "terms.tsv").read_text().splitlines()[1:2]) + "\n"), "is listed twice"),
    ],
)  # fmt: skip
def test_a_malformed_bundle_is_one_error(bundles, tmp_path, damage, needle):
    from protgo.infer.bundle import load

    bad = tmp_path / "bad"
    shutil.copytree(bundles[2], bad)
    damage(bad)
    with pytest.raises(UserError, match=needle):
        load(bad)


def _edit_json(bundle: Path, change) -> None:
    import json

    meta = json.loads((bundle / "bundle.json").read_text())
    change(meta)
    (bundle / "bundle.json").write_text(json.dumps(meta))


def test_quiet_predict_shows_no_progress_bar(trained, bundles, tmp_path, capsys, monkeypatch):
    from test_bad_inputs import run_cli

    _, _, seqs = trained
    fasta = tmp_path / "q.fasta"
    fasta.write_text(f">q\n{seqs[next(iter(seqs))]}\n")
    args = ["predict", "--model", bundles[1], "--fasta", fasta, "--no-homology",
            "--data-dir", tmp_path / "d"]  # fmt: skip
    code, err = run_cli([*args, "--out", tmp_path / "loud"], capsys, monkeypatch)
    assert code == 0 and "predict: 100%" in err, err
    code, err = run_cli(["-q", *args, "--out", tmp_path / "quiet"], capsys, monkeypatch)
    assert code == 0 and "%|" not in err and "predict" not in err, err
