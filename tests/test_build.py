import json
import random
from collections import Counter

import pytest

from protgo.data import build, sources
from protgo.data.fasta import read_fasta, write_fasta
from protgo.data.folder import DATA_FILES, HELD_OUT, DatasetFolder
from protgo.errors import UserError

AA = "ACDEFGHIKLMNPQRSTVWY"
LEAVES = ["GO:0000005", "GO:0000006", "GO:0000008", "GO:0000011"]


def _family_data(tmp_path, n_families=12, per_family=4):
    """Families of near-identical sequences, each protein annotated with leaf terms."""
    rng = random.Random(0)
    seqs, rows = {}, []
    for f in range(n_families):
        base = "".join(rng.choice(AA) for _ in range(120))
        for m in range(per_family):
            s = list(base)
            for i in rng.sample(range(len(s)), 3):
                s[i] = rng.choice(AA)
            pid = f"P{f:02d}_{m}"
            seqs[pid] = "".join(s)
            rows += [(pid, t, "IDA") for t in rng.sample(LEAVES, 2)]
    rows.append(("P00_0", "GO:0000099", "IMP"))  # alt id of GO:0000003
    rows.append(("P00_0", "GO:0000009", "IMP"))  # obsolete
    rows.append(("P00_1", "GO:9999999", "IMP"))  # unknown
    rows.append(("NOSEQ", "GO:0000005", "IMP"))
    fasta = tmp_path / "in.fasta"
    write_fasta(seqs.items(), fasta)
    ann = tmp_path / "ann.tsv"
    ann.write_text("protein\tgo\tevidence\n" + "".join(f"{p}\t{g}\t{e}\n" for p, g, e in rows))
    return fasta, ann


@pytest.mark.parametrize("split", ["random", "cluster"])
def test_build_own_data(tmp_path, tiny_obo, split):
    fasta, ann = _family_data(tmp_path)
    src = sources.user_sources(fasta, ann, tiny_obo)
    opts = build.BuildOptions(split=split, min_seq_id=0.5, zero_shot_frac=0.5, zero_shot_min=3)
    out = tmp_path / "ds"
    info = build.build_dataset(out, src, opts, "mine")
    ds = DatasetFolder.load(out)

    # counts in dataset.json match the files
    assert info == json.loads((out / "dataset.json").read_text())
    emptied = info["cleaning"].pop("train_proteins_emptied_by_zero_shot", 0)
    n = 48 - emptied
    assert sum(info["proteins"][s] for s in ("train", "valid", "test")) == len(ds.sequences) == n
    assert Counter(ds.splits.values()) == {
        s: info["proteins"][s] for s in ds.info["proteins"] if s != "total"
    }
    rows = [line.split("\t") for line in (out / "annotations.tsv").read_text().splitlines()[1:]]
    for s in ("train", "valid", "test"):
        per_aspect = Counter(a for p, _, a, _ in rows if ds.splits[p] == s)
        assert per_aspect == Counter(info["annotations"][s])
    assert info["cleaning"] == {
        "mapped_alt_id": 1, "dropped_obsolete": 1, "dropped_unknown": 1,
        "proteins_without_sequence": 1,
    }  # fmt: skip
    assert "GO:0000003" in ds.annotations["P00_0"]

    # zero-shot terms: none in propagated training labels, still present in test
    zero = {t for t, v in ds.terms.items() if v["held_out"]}
    assert zero
    onto = ds.ontology
    for p in ds.ids("train"):
        assert not zero & onto.propagate(ds.annotations[p])
    test_terms = set().union(*(ds.annotations[p] for p in ds.ids("test")))
    assert zero <= test_terms
    assert all(ds.terms[t]["class"] == "zero" and ds.terms[t]["n_train"] == 0 for t in zero)
    # ... and their training annotations are kept aside, not lost
    held = [ln.split("\t") for ln in (out / "held_out_annotations.tsv").read_text().splitlines()]
    assert held[0] == ["protein", "term", "aspect", "evidence"]
    # (a training protein whose only labels were held out leaves the splits: nothing to train)
    assert held[1:] and all(ds.splits.get(p, "train") == "train" and t in zero
                            for p, t, _, _ in held[1:])  # fmt: skip
    assert set(info["files"]) == {*DATA_FILES, HELD_OUT}
    assert set(ds.ia) == set(onto.terms) and ds.ia["GO:0000001"] == 0

    if split == "cluster":  # near-identical family members never cross splits
        present = 0
        for f in range(12):
            members = {f"P{f:02d}_{m}" for m in range(4)} & set(ds.splits)
            assert len({ds.splits[p] for p in members}) <= 1
            assert len({ds.clusters[p] for p in members}) <= 1
            present += bool(members)
        assert len(set(ds.clusters.values())) == present


def test_named_zero_shot_terms_leave_training_with_their_descendants(tmp_path, tiny_obo):
    """--zero-shot-terms: a published benchmark's unseen terms, held out whatever the draw."""
    fasta, ann = _family_data(tmp_path)
    src = sources.user_sources(fasta, ann, tiny_obo)
    named = tmp_path / "zero.txt"
    named.write_text("GO:0000004\nGO:0000099\n")  # an inner term; an alt id of GO:0000003
    terms = build.read_ids(named, "--zero-shot-terms")
    opts = build.BuildOptions(split="random", zero_shot_frac=0.0, zero_shot_terms=terms)
    build.build_dataset(tmp_path / "ds", src, opts, "mine")
    ds = DatasetFolder.load(tmp_path / "ds")
    zero = {t for t, v in ds.terms.items() if v["held_out"]}
    # GO:0000006 (is_a GO:0000004, part_of GO:0000003) is annotated: held out with them
    assert zero == {"GO:0000003", "GO:0000004", "GO:0000006"}
    onto = ds.ontology
    train = ds.ids("train")
    assert train and not any(zero & onto.propagate(ds.annotations[p]) for p in train)
    assert all(ds.terms[t]["n_train"] == 0 for t in zero)
    held = (tmp_path / "ds" / HELD_OUT).read_text().splitlines()[1:]
    assert held and {line.split("\t")[1] for line in held} <= zero

    named.write_text("GO:0000004 GO:9999999\n")
    opts.zero_shot_terms = build.read_ids(named, "--zero-shot-terms")
    with pytest.raises(UserError, match="--zero-shot-terms names 1 GO ids.*GO:9999999"):
        build.build_dataset(tmp_path / "ds2", src, opts, "mine")
    with pytest.raises(UserError, match="--zero-shot-terms file"):
        build.read_ids(tmp_path / "absent.txt", "--zero-shot-terms")


def test_protein_binding_only_is_not_an_mf_target(tmp_path):
    obo = tmp_path / "pb.obo"
    obo.write_text(
        "[Term]\nid: GO:0003674\nname: molecular_function\nnamespace: molecular_function\n\n"
        "[Term]\nid: GO:0005515\nname: protein binding\nnamespace: molecular_function\n"
        "is_a: GO:0003674\n\n[Term]\nid: GO:0008150\nname: biological_process\n"
        "namespace: biological_process\n"
    )
    seqs = {f"P{i}": "MKV" * 20 for i in range(12)}
    write_fasta(seqs.items(), tmp_path / "s.fasta")
    rows = "".join(f"P{i}\tGO:0005515\n" for i in range(12)) + "P0\tGO:0008150\n"
    (tmp_path / "a.tsv").write_text(rows * 1)
    src = sources.user_sources(tmp_path / "s.fasta", tmp_path / "a.tsv", obo)
    with pytest.raises(UserError, match="only 1 proteins"):
        build.build_dataset(tmp_path / "o", src, build.BuildOptions(split="random"), "pb")
    opts = build.BuildOptions(split="random", drop_protein_binding_only=False)
    info = build.build_dataset(tmp_path / "o", src, opts, "pb")
    assert info["proteins"]["total"] == 12


def test_bad_annotation_row_names_file_and_line(tmp_path, tiny_obo):
    write_fasta([("P1", "MKV")], tmp_path / "s.fasta")
    (tmp_path / "a.tsv").write_text("P1\tGO:0000005\nP2 GO:0000005\n")
    with pytest.raises(UserError, match=r"a.tsv:2"):
        sources.user_sources(tmp_path / "s.fasta", tmp_path / "a.tsv", tiny_obo)


def test_fasta_errors(tmp_path):
    p = tmp_path / "x.fasta"
    p.write_text(">a\nMKV\n>a\nMKV\n")
    with pytest.raises(UserError, match="duplicate record id 'a'"):
        read_fasta(p)
    p.write_text("MKV\n")
    with pytest.raises(UserError, match="x.fasta:1"):
        read_fasta(p)
    p.write_text(">a\n>b\nMK\n")
    with pytest.raises(UserError, match="'a' has an empty sequence"):
        read_fasta(p)
    p.write_text("")
    with pytest.raises(UserError, match="no records"):
        read_fasta(p)


def test_missing_dataset_says_what_to_run(tmp_path):
    with pytest.raises(UserError, match="protgo data build --name nope"):
        DatasetFolder.load("nope", data_dir=tmp_path)


def test_real_human_exp_dataset(real_data_dir):
    """The set-up builds human-exp: about 14.5k proteins, splits disjoint by cluster."""
    ds = DatasetFolder.load("human-exp", data_dir=real_data_dir)
    info = ds.info
    assert 14000 < info["proteins"]["total"] < 16000
    assert len(ds.sequences) == len(ds.splits) == info["proteins"]["total"]
    assert set(ds.annotations) == set(ds.splits)
    clusters: dict[int, set[str]] = {}
    for p, c in ds.clusters.items():
        clusters.setdefault(c, set()).add(ds.splits[p])
    assert all(len(s) == 1 for s in clusters.values())
    assert info["split_method"]["min_seq_id"] == 0.3
    assert info["zero_shot_held_out"] > 100
    assert info["provenance"]["go_source_date"] == "2022-07-01"


@pytest.mark.parametrize("all_evidence", [False, True])
def test_build_from_the_web_fetch(tmp_path, tiny_obo, all_evidence):
    """`data build --source web` on the files `data fetch --source web` leaves in raw/web."""
    from typer.testing import CliRunner

    from protgo.cli import app

    fasta, ann = _family_data(tmp_path)
    seqs = read_fasta(fasta)
    items: dict[str, list[str]] = {p: [f"{LEAVES[3]} IEA"] for p in seqs}
    for line in ann.read_text().splitlines()[1:]:
        pid, go, ev = line.split("\t")
        if pid in seqs:
            items[pid].append(f"{go} {ev}")
    web = tmp_path / "data" / "raw" / "web"
    web.mkdir(parents=True)
    (web / "go-basic.obo").write_text(tiny_obo.read_text())
    (web / "uniprot_sprot_go.tsv").write_text(
        "protein\tsequence\tgo\n"
        + "".join(f"{p}\t{s}\t{'; '.join(items[p])}\n" for p, s in seqs.items())
    )
    files = {n: (web / n).stat().st_size for n in ("go-basic.obo", "uniprot_sprot_go.tsv")}
    record = {"go_url": "u", "go_data_version": "v", "uniprot_url": "u", "fetched_at": "t"}
    (web / "fetch.json").write_text(json.dumps({**record, "files": files}))
    args = ["data", "build", "--name", "web-mine", "--source", "web", "--split", "random",
            "--data-dir", str(tmp_path / "data"), "--zero-shot-frac", "0"]  # fmt: skip
    res = CliRunner().invoke(app, args + (["--all-evidence"] if all_evidence else []))
    assert res.exit_code == 0, res.output
    ds = DatasetFolder.load(tmp_path / "data" / "datasets" / "web-mine")
    evidence = {
        line.split("\t")[3]
        for line in ds.root.joinpath("annotations.tsv").read_text().splitlines()[1:]
    }
    assert ("IEA" in evidence) == all_evidence
    assert len(ds.sequences) == 48


def _gaf_line(acc, go, evidence, qualifier="enables"):
    cols = ["UniProtKB", acc, "SYM", qualifier, go, "PMID:1", evidence, "", "F", "name", "",
            "protein", "taxon:9606", "20220101", "UniProt", "", ""]  # fmt: skip
    return "\t".join(cols) + "\n"


def test_gaf_annotations_match_the_tsv(tmp_path, tiny_obo):
    """A GAF 2.2 file gives the same rows as the TSV; NOT rows and IEA are dropped (IEA kept
    with all_evidence); UniProt FASTA ids (sp|ACC|NAME) are matched by accession."""
    fasta, ann = _family_data(tmp_path)
    want = sources.user_sources(fasta, ann, tiny_obo).rows
    records = read_fasta(fasta)
    uni = tmp_path / "uni.fasta"
    write_fasta([(f"sp|{p}|{p}_HUMAN", s) for p, s in records.items()], uni)
    gaf = tmp_path / "ann.gaf"
    lines = ["!gaf-version: 2.2\n", "!generated-by: test\n"]
    lines += [_gaf_line(p, g, e) for p, g, e in want]
    lines += [_gaf_line("P01_0", "GO:0000005", "IDA", "NOT|enables"),
              _gaf_line("P01_0", "GO:0000006", "IEA")]  # fmt: skip
    gaf.write_text("".join(lines))
    src = sources.user_sources(uni, gaf, tiny_obo)
    assert [(p.split("|")[1] if "|" in p else p, g, e) for p, g, e in src.rows] == want
    assert src.provenance["gaf_version"] == "2.2"
    assert src.provenance["gaf_rows"] == {"kept": len(want), "NOT_dropped": 1,
                                          "evidence_dropped": 1}  # fmt: skip
    every = sources.user_sources(uni, gaf, tiny_obo, all_evidence=True)
    assert ("sp|P01_0|P01_0_HUMAN", "GO:0000006", "IEA") in every.rows
    gaf.write_text("!gaf-version: 2.2\nUniProtKB\tP1\tonly three columns\n")
    with pytest.raises(UserError, match="not a GAF 2.x line"):
        sources.user_sources(uni, gaf, tiny_obo)
