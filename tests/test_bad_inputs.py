"""Malformed input through the real command line: exit status 2, one ``error:`` line that
names the input and the fix, no traceback, nothing half-written. Plus crafted pickles for
every file type protgo loads: refused, and their code never runs."""

from __future__ import annotations

import gzip
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_build import _family_data

from protgo.cli import main
from protgo.config import Config, dump_config
from protgo.errors import UserError
from protgo.train.tracking import read_metrics

TINY_OBO = Path(__file__).parent / "fixtures" / "tiny.obo"


def run_cli(args: list[str], capsys, monkeypatch, cwd: Path | None = None) -> tuple[int, str]:
    """(exit status, stderr) of ``protgo ARGS`` run in this process."""
    monkeypatch.setattr(sys, "argv", ["protgo", *map(str, args)])
    if cwd is not None:
        monkeypatch.chdir(cwd)
    capsys.readouterr()
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    return code, capsys.readouterr().err


def assert_one_error(code: int, err: str, *needles: str) -> str:
    assert code == 2, err
    assert "Traceback" not in err
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


class Evil:
    """A pickle that would create ``marker`` when loaded with plain ``pickle``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ---- data build: no real data needed ---------------------------------------------------------
@pytest.fixture
def own(tmp_path):
    fasta, ann = _family_data(tmp_path)
    base = ["data", "build", "--fasta", fasta, "--annotations", ann, "--obo", TINY_OBO,
            "--split", "random", "--data-dir", tmp_path / "d"]  # fmt: skip
    return tmp_path, base


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        (["--name", "x", "--zero-shot-frac", "1.5"], ["--zero-shot-frac", "[0, 1)"]),
        (["--name", "x", "--max-proteins", "0"], ["--max-proteins", "at least 1"]),
        (["--name", "../../escape"], ["--name", "not a dataset name"]),
        (["--name", ""], ["--name", "not a dataset name"]),
        (["--name", "x", "--aspects", "XX"], ["--aspects"]),
    ],
)
def test_data_build_options(own, extra, needles, capsys, monkeypatch):
    tmp, base = own
    code, err = run_cli([*base, *extra], capsys, monkeypatch)
    assert_one_error(code, err, *needles)
    assert not (tmp / "d" / "datasets").exists() and not (tmp / "escape").exists()


def test_data_dir_under_a_file(own, capsys, monkeypatch):
    tmp, base = own
    (tmp / "afile").write_text("x")
    args = [*base[:-1], tmp / "afile" / "d", "--name", "x"]
    assert_one_error(*run_cli(args, capsys, monkeypatch), "is a file, not a folder")


def test_cycle_in_the_ontology_is_named(own, capsys, monkeypatch):
    tmp, base = own
    text = TINY_OBO.read_text().replace("id: GO:0000005\n", "id: GO:0000005\nis_a: GO:0000005\n")
    (tmp / "cyclic.obo").write_text(text)
    args = [*base, "--name", "x"]
    args[args.index(TINY_OBO)] = tmp / "cyclic.obo"
    line = assert_one_error(*run_cli(args, capsys, monkeypatch), "cycle", "GO:0000005")
    assert "GO:0000005 -> GO:0000005" in line


def test_bad_residue_letters_fail_at_build(own, capsys, monkeypatch):
    tmp, base = own
    fasta = base[base.index("--fasta") + 1]
    fasta.write_text(fasta.read_text().replace("\n", "\nJ", 1))  # first record gets a 'J'
    args = [*base, "--name", "x"]
    assert_one_error(*run_cli(args, capsys, monkeypatch), "P00_0", "position 1", "fix or remove")
    assert not (tmp / "d" / "datasets" / "x" / "dataset.json").exists()


def test_gzipped_inputs_read_like_plain_files(own, capsys, monkeypatch):
    tmp, base = own
    for flag in ("--fasta", "--annotations", "--obo"):
        i = base.index(flag) + 1
        gz = tmp / (Path(base[i]).name + ".gz")
        gz.write_bytes(gzip.compress(Path(base[i]).read_bytes()))
        base[i] = gz
    code, err = run_cli([*base, "--name", "gz"], capsys, monkeypatch)
    assert code == 0, err
    info = (tmp / "d" / "datasets" / "gz" / "dataset.json").read_text()
    assert '"annotation_header": "protein\\tgo\\tevidence"' in info  # the skipped line, on record


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["train", "--set", "model.dropout=1.5"], ["model.dropout", "less than 1"]),
        (["train", "--set", "curriculum.hard_frac=[0.2,1.5]"], ["curriculum.hard_frac"]),
        (["train", "--set", "mining.few_shot_share=2"], ["mining.few_shot_share"]),
        (["train", "--set", "loss.ema_decay=1.0"], ["loss.ema_decay"]),
        (["train", "--set", "train.device=cuda:99"], ["train.device", "not available"]),
        (["train", "--set", "train.device=gpu"], ["train.device", "not a device"]),
        (["train", "--set", "train.lr=[1,"], ["train.lr=[1,", "not valid YAML"]),
        (["embed", "residues", "--dataset", "x", "--batch-tokens", "0"], ["batch_tokens"]),
        (["embed", "residues", "--dataset", "x", "--max-proteins", "0"], ["--max-proteins"]),
        (["embed", "residues", "--dataset", "x", "--device", "cuda:99"], ["residues.device"]),
        (["evaluate", "--dataset", "x", "-c", "missing.yaml"], ["missing.yaml", "not found"]),
    ],
)
def test_config_and_option_values(args, needles, capsys, monkeypatch, tmp_path):
    code, err = run_cli([*args, "--data-dir", tmp_path], capsys, monkeypatch, cwd=tmp_path)
    assert_one_error(code, err, *needles)
    assert list(tmp_path.iterdir()) == []


# ---- with a trained checkpoint (shared, read-only) -------------------------------------------
@pytest.fixture
def world(trained, tmp_path):
    """A private copy of the trained world: (checkpoint, data_dir, a query FASTA, config)."""
    ckpt, data_dir, seqs = trained
    data = tmp_path / "data"
    shutil.copytree(data_dir, data, ignore=shutil.ignore_patterns("raw_*"))
    ckpt = data / ckpt.relative_to(data_dir)
    cfg = Config.model_validate(torch.load(ckpt, weights_only=True)["config"])
    cfg.data.data_dir = data
    cfg.train.out_dir = data / "run"
    (tmp_path / "cfg.yaml").write_text(dump_config(cfg))
    fasta = tmp_path / "q.fasta"
    fasta.write_text("".join(f">{p}\n{s}\n" for p, s in list(seqs.items())[:3]))
    return ckpt, data, fasta, tmp_path / "cfg.yaml"


def _predict(world, out, *more):
    ckpt, data, fasta, _ = world
    return ["predict", "--checkpoint", ckpt, "--fasta", fasta, "--out", out, "--data-dir", data,
            *more]  # fmt: skip


def test_outputs_under_a_regular_file(world, capsys, monkeypatch, tmp_path):
    _, data, _, cfg = world
    (tmp_path / "afile").write_text("x")
    below = tmp_path / "afile" / "out"
    for args in (
        _predict(world, below),
        ["evaluate", "--dataset", "tinypred", "--data-dir", data, "--out", below],
        ["train", "-c", cfg, "--set", f"train.out_dir={below}"],
    ):
        code, err = run_cli(args, capsys, monkeypatch)
        assert_one_error(code, err, str(tmp_path / "afile"), "is a file, not a folder")


def test_aspect_the_dataset_lacks(world, capsys, monkeypatch):
    _, _, _, cfg = world
    args = ["train", "-c", cfg, "--set", "data.aspects=[BP]", "--set", "train.out_dir=/nowhere"]
    assert_one_error(*run_cli(args, capsys, monkeypatch), "data.aspects", "BP", "MF only")
    out = world[1] / "pred"
    code, err = run_cli(_predict(world, out, "--aspects", "BP"), capsys, monkeypatch)
    assert_one_error(code, err, "no BP terms", "leave BP out")
    assert not out.exists()


def test_truncated_go_vectors(world, capsys, monkeypatch):
    _, data, _, _ = world
    vectors = next((data / "stores" / "go").rglob("vectors.npy"))
    vectors.write_bytes(vectors.read_bytes()[:-64])
    out = data / "pred"
    assert_one_error(*run_cli(_predict(world, out), capsys, monkeypatch), str(vectors.parent),
                     "protgo embed go --force")  # fmt: skip
    assert not out.exists()


def test_bit_flip_in_a_residue_shard_is_never_a_silent_drop(world, capsys, monkeypatch):
    _, data, _, _ = world
    shard = next((data / "stores" / "residues").rglob("shards/*[0-9].npy"))
    raw = bytearray(shard.read_bytes())
    raw[-9] ^= 0xFF
    shard.write_bytes(bytes(raw))
    out = data / "pred"
    code, err = run_cli(_predict(world, out), capsys, monkeypatch)
    assert_one_error(code, err, "fails its checksum", "protgo embed residues")
    assert not out.exists()


def test_checkpoint_missing_weights(world, capsys, monkeypatch, tmp_path):
    ckpt = world[0]
    state = torch.load(ckpt, weights_only=True)
    del state["model"]["protein_head.proj.weight"]
    torch.save(state, tmp_path / "broken.pt")
    args = _predict((tmp_path / "broken.pt", *world[1:]), tmp_path / "pred")
    assert_one_error(*run_cli(args, capsys, monkeypatch), "broken.pt", "no aligner weights")
    state = torch.load(ckpt, weights_only=True)
    del state["model"][next(k for k in state["model"] if k != "protein_head.proj.weight")]
    torch.save(state, tmp_path / "broken2.pt")
    args = _predict((tmp_path / "broken2.pt", *world[1:]), tmp_path / "pred")
    assert_one_error(*run_cli(args, capsys, monkeypatch), "broken2.pt", "does not fit")


def test_occupied_run_folder_and_changed_batch(world, capsys, monkeypatch):
    _, data, _, cfg = world
    run = data / "run"
    before = (run / "metrics.jsonl").read_text()
    code, err = run_cli(["train", "-c", cfg], capsys, monkeypatch)
    assert_one_error(code, err, str(run), "--resume", "--overwrite")
    assert (run / "metrics.jsonl").read_text() == before
    args = ["train", "-c", cfg, "--resume", run, "--set", "train.batch_size=4"]
    assert_one_error(*run_cli(args, capsys, monkeypatch), "global batches of 8", "makes 4")
    # --overwrite starts anew: the old run's records are gone, not appended to
    code, err = run_cli(["train", "-c", cfg, "--overwrite", "--set", "train.epochs=1"],
                        capsys, monkeypatch)  # fmt: skip
    assert code == 0, err
    valid = [r for r in read_metrics(run) if r["kind"] == "valid" and "head_epoch" not in r]
    assert [r["epoch"] for r in valid] == [1]


def test_crafted_checkpoint_never_runs_code(world, capsys, monkeypatch, tmp_path):
    marker = tmp_path / "pwned"
    state = torch.load(world[0], weights_only=True)
    state["extra"] = Evil(marker)
    torch.save(state, tmp_path / "evil.pt")
    args = _predict((tmp_path / "evil.pt", *world[1:]), tmp_path / "pred")
    assert_one_error(*run_cli(args, capsys, monkeypatch), "evil.pt", "refuses")
    args = ["train", "-c", world[3], "--resume", tmp_path / "evil.pt", "--set",
            f"train.out_dir={tmp_path / 'r'}"]  # fmt: skip
    assert_one_error(*run_cli(args, capsys, monkeypatch), "evil.pt", "refuses")
    assert not marker.exists()


def test_crafted_plm_checkpoint_and_npy_never_run_code(tmp_path):
    from protgo.plm.pretrain import load_checkpoint as load_plm
    from protgo.stores.go_vectors import GoVectorCache

    marker = tmp_path / "pwned"
    (tmp_path / "checkpoints").mkdir()
    torch.save({"schema_version": 1, "model": Evil(marker)}, tmp_path / "checkpoints" / "a.pt")
    (tmp_path / "checkpoints" / "latest.json").write_text('{"file": "a.pt"}')
    with pytest.raises(UserError, match="refuses"):
        load_plm(tmp_path, None, None, None)
    # .npy files are read with allow_pickle=False: an object array is refused, never run
    cache = GoVectorCache(["GO:1"], ["MF"], np.ones((1, 2), np.float32), {})
    cache.save(tmp_path / "c")
    evil = np.array([Evil(marker)], dtype=object)
    np.save(tmp_path / "c" / "vectors.npy", evil, allow_pickle=True)
    with pytest.raises(UserError, match="checksum"):
        GoVectorCache.load(tmp_path / "c")
    assert not marker.exists()


# ---- damaged or edited files are refused, never used ----------------------------------------
def _flip_inside_largest_member(path: Path) -> None:
    """Change one byte in the middle of the largest member (a tensor's data) of a zip file."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        info = max(archive.infolist(), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    # local header: 30 bytes, then the name and the extra field, then the member's data
    name_len, extra_len = (int.from_bytes(raw[info.header_offset + o : info.header_offset + o + 2],
                                          "little") for o in (26, 28))  # fmt: skip
    start = info.header_offset + 30 + name_len + extra_len
    raw[start + info.file_size // 2] ^= 0x01
    path.write_bytes(bytes(raw))


def test_byte_flipped_inside_a_checkpoint_tensor_is_refused(world, capsys, monkeypatch, tmp_path):
    ckpt = tmp_path / "flipped.pt"
    shutil.copy(world[0], ckpt)
    _flip_inside_largest_member(ckpt)
    torch.load(ckpt, weights_only=True)  # torch alone reads the changed values silently
    args = _predict((ckpt, *world[1:]), tmp_path / "pred")
    assert_one_error(*run_cli(args, capsys, monkeypatch), "flipped.pt", "fails its CRC-32")
    assert not (tmp_path / "pred").exists()


def test_edited_calibration_is_refused(world, capsys, monkeypatch, tmp_path):
    import json

    from protgo.infer.calibration import path_for, sealed

    code, err = run_cli(_predict(world, tmp_path / "ok", "--threshold", "auto"), capsys,
                        monkeypatch)  # fmt: skip
    assert code == 0, err
    path = path_for(world[0])
    cal = json.loads(path.read_text())
    aspect = next(iter(cal["aspects"]))
    raised = {**cal, "aspects": {**cal["aspects"], aspect: {**cal["aspects"][aspect],
                                                             "threshold": 0.95}}}  # fmt: skip
    path.write_text(json.dumps(raised))  # an edit: the content no longer matches its seal
    code, err = run_cli(_predict(world, tmp_path / "p1"), capsys, monkeypatch)
    assert_one_error(code, err, str(path), "changed after protgo wrote it", "--calibrate")
    a, b = cal["aspects"][aspect]["platt"]
    flipped = {**cal, "aspects": {**cal["aspects"], aspect: {**cal["aspects"][aspect],
                                                              "platt": [-a, b]}}}  # fmt: skip
    path.write_text(json.dumps(sealed(flipped)))  # sealed again, but no fit has a < 0
    code, err = run_cli(_predict(world, tmp_path / "p2"), capsys, monkeypatch)
    assert_one_error(code, err, str(path), f"impossible fit for {aspect}")
    assert not (tmp_path / "p1").exists() and not (tmp_path / "p2").exists()


@pytest.mark.parametrize("name", ["annotations.tsv", "splits.tsv"])
def test_truncated_dataset_file_is_refused(name, world, capsys, monkeypatch, tmp_path):
    _, data, _, cfg = world
    path = data / "datasets" / "tinypred" / name
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:-5]))  # rows dropped
    out = tmp_path / "ev"
    for args in (
        ["evaluate", "--dataset", "tinypred", "--data-dir", data, "--out", out,
         "--baselines", "naive"],
        ["train", "-c", cfg, "--overwrite", "--set", f"train.out_dir={tmp_path / 'run'}"],
    ):  # fmt: skip
        code, err = run_cli(args, capsys, monkeypatch)
        assert_one_error(code, err, str(path.parent), f"{name} fails its checksum",
                         "protgo data build --name tinypred")  # fmt: skip


def test_duplicate_term_stanza_is_named(tmp_path):
    from protgo.data.ontology import parse_obo

    text = TINY_OBO.read_text()
    first = text.index("[Term]")
    stanza = text[first : text.index("[Term]", first + 1)]
    obo = tmp_path / "dup.obo"
    obo.write_text(text + "\n" + stanza.replace("name: ", "name: other "))
    term_id = stanza.split("id: ", 1)[1].split()[0]
    with pytest.raises(UserError, match=rf"dup.obo:\d+: a second \[Term\] stanza for {term_id}"):
        parse_obo(obo)


def test_go_cache_manifest_always_describes_its_own_vectors(tmp_path, monkeypatch):
    """Two writers of one cache folder, the first paused between its files (as a slow disk or
    a busy CPU can): the manifest left on disk must describe the vectors beside it."""
    import threading
    import time

    from protgo.stores import go_vectors
    from protgo.stores.go_vectors import GoVectorCache

    real = go_vectors.atomic_write

    def slow(path, write):
        real(path, write)
        if path.name == "vectors.npy" and threading.current_thread().name == "first":
            time.sleep(0.3)

    monkeypatch.setattr(go_vectors, "atomic_write", slow)
    caches = {tag: GoVectorCache(["GO:1", "GO:2"], ["MF", "MF"],
                                 np.full((2, 3), value, np.float32), {"tag": tag})
              for tag, value in (("first", 1.0), ("second", 2.0))}  # fmt: skip
    first = threading.Thread(target=caches["first"].save, args=(tmp_path,), name="first")
    first.start()
    time.sleep(0.1)
    caches["second"].save(tmp_path)
    first.join()
    got = GoVectorCache.load(tmp_path)
    np.testing.assert_array_equal(got.vectors, caches[got.manifest["tag"]].vectors)


def test_predict_keeps_earlier_outputs_and_cleans_after_kills(world, capsys, monkeypatch, tmp_path):
    out = tmp_path / "pred"
    code, err = run_cli(_predict(world, out), capsys, monkeypatch)
    assert code == 0, err
    before = (out / "protgo.tsv").read_text()
    (out / ".staging-killed").mkdir()  # what a predict killed mid-write leaves
    (out / ".staging-killed" / "protgo.tsv").write_text("half")
    code, err = run_cli(_predict(world, out), capsys, monkeypatch)
    assert_one_error(code, err, str(out), "already holds predictions", "--overwrite")
    assert (out / "protgo.tsv").read_text() == before
    code, err = run_cli(_predict(world, out, "--overwrite"), capsys, monkeypatch)
    assert code == 0, err
    assert (out / "protgo.tsv").read_text() == before  # same model, same answer
    assert not list(out.glob(".staging-*"))


def test_uniprot_headers_are_named_by_accession(world, capsys, monkeypatch, tmp_path):
    ckpt, data, fasta, cfg = world
    records = fasta.read_text().split(">")[1:]
    named = "".join(f">sp|P{i:05d}|X{i}_HUMAN {rec}" if i else f">{rec}"
                    for i, rec in enumerate(records))  # fmt: skip
    (tmp_path / "u.fasta").write_text(named)
    out = tmp_path / "pred"
    code, err = run_cli(_predict((ckpt, data, tmp_path / "u.fasta", cfg), out), capsys,
                        monkeypatch)  # fmt: skip
    assert code == 0, err
    pids = {ln.split("\t")[0] for ln in (out / "protgo.tsv").read_text().splitlines()}
    first = records[0].split()[0]
    assert pids == {first, *(f"P{i:05d}" for i in range(1, len(records)))}
    assert not any("|" in p for p in pids)


def test_one_train_per_run_folder_and_resume_keeps_its_optimiser(world, capsys, monkeypatch):
    from protgo.io import file_lock

    _, data, _, cfg = world
    run = data / "run"
    with file_lock(run / ".lock"):  # another `protgo train` holds the folder
        for args in (["train", "-c", cfg, "--overwrite"], ["train", "-c", cfg, "--resume", run]):
            assert_one_error(*run_cli(args, capsys, monkeypatch), str(run), "in use")
    args = ["train", "-c", cfg, "--resume", run, "--set", "train.lr=0.1"]
    assert_one_error(*run_cli(args, capsys, monkeypatch), "train.lr=", "start anew")


def test_a_failed_start_does_not_block_the_folder(world, capsys, monkeypatch, tmp_path):
    _, _, _, cfg = world
    run = tmp_path / "failed"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"kind": "train", "step": 1}\n')  # a failed start's
    args = ["train", "-c", cfg, "--set", f"train.out_dir={run}", "--set", "train.epochs=1"]
    code, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    epochs = [r["epoch"] for r in read_metrics(run, "valid") if "head_epoch" not in r]
    assert epochs == [1]


def test_an_empty_ontology_and_a_non_checkpoint_are_named(world, capsys, monkeypatch, tmp_path):
    from protgo.data.ontology import parse_obo

    empty = tmp_path / "empty.obo"
    empty.write_text("format-version: 1.2\n")
    with pytest.raises(UserError, match="holds no \\[Term\\] stanza"):
        parse_obo(empty)
    other = tmp_path / "P1.pt"  # what `embed fasta` writes: tensors, no schema version
    torch.save({"label": "P1", "representations": {6: torch.zeros(3, 4)}}, other)
    args = _predict((other, *world[1:]), tmp_path / "pred")
    assert_one_error(*run_cli(args, capsys, monkeypatch), "P1.pt", "not a protgo training")


def test_crafted_weights_in_a_protein_model_dir_never_run_code(tiny_esm, tmp_path):
    from protgo.config import ResiduesConfig
    from protgo.encoders.protein import ProteinEncoder

    marker = tmp_path / "pwned"
    model = tmp_path / "esm"
    shutil.copytree(tiny_esm, model)
    (model / "model.safetensors").unlink()
    torch.save({"esm.embeddings.word_embeddings.weight": Evil(marker)}, model / "pytorch_model.bin")
    with pytest.raises(UserError, match="refuses to load") as err:
        ProteinEncoder(ResiduesConfig(model=str(model)))
    assert "weights_only=False" not in str(err.value)
    assert not marker.exists()


def test_a_full_disk_is_one_line():
    """A real ENOSPC (writing to /dev/full) becomes one message naming the fix."""
    from protgo.cli import disk_full

    try:
        with open("/dev/full", "w") as fh:
            fh.write("x" * 65536)
            fh.flush()
    except OSError as exc:
        message = disk_full(exc)
    assert message is not None and "no space left" in message and "--data-dir" in message
    assert disk_full(FileNotFoundError(2, "missing")) is None


def test_a_mistyped_option_is_three_plain_lines(capsys, monkeypatch):
    code, err = run_cli(["predict", "--fasat", "x"], capsys, monkeypatch)
    assert code == 2 and "No such option: --fasat" in err and "--fasta" in err
    assert len(err.strip().splitlines()) <= 4 and "╭" not in err, err
