"""Build a dataset folder from raw sources.

A dataset folder holds ``go.obo``, ``proteins.fasta``, ``annotations.tsv`` (protein, term,
aspect, evidence), ``splits.tsv`` (protein, split), ``terms.tsv`` (term, aspect, n_train,
class, held_out), ``ia.tsv`` (term, IA; cafaeval's format), ``held_out_annotations.tsv`` (the
training proteins' annotations to zero-shot terms: by design not in ``annotations.tsv``, kept
here so nothing is lost) and ``dataset.json`` (provenance, counts and every file's sha256),
written last so that a folder with ``dataset.json`` is complete.

The sources it is built from are :mod:`protgo.data.sources`.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

from protgo.config import ASPECTS
from protgo.data.fasta import write_fasta
from protgo.data.folder import HELD_OUT, files_sha256
from protgo.data.ontology import Ontology, write_obo
from protgo.data.seqsearch import cluster_sequences
from protgo.data.sequence import clean_sequence
from protgo.data.sources import Sources
from protgo.errors import UserError, first_few
from protgo.io import atomic_write_text

log = logging.getLogger(__name__)

PROTEIN_BINDING = "GO:0005515"
SPLITS = ("train", "valid", "test")


def read_ids(path: Path | None, option: str) -> frozenset[str]:
    """The ids in the file of ``option`` (``--exclude-ids``, ``--zero-shot-terms``;
    whitespace-separated), none without a file."""
    if path is None:
        return frozenset()
    if not path.is_file():
        raise UserError(f"{option} file {path} not found")
    return frozenset(path.read_text().split())


@dataclass
class BuildOptions:
    aspects: tuple[str, ...] = ASPECTS
    max_proteins: int | None = None
    seed: int = 0
    split: str = "cluster"  # cluster | random
    min_seq_id: float = 0.3  # mmseqs2 identity threshold for similarity-aware splits
    coverage: float = 0.5
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    exclude_ids: frozenset[str] = frozenset()
    zero_shot_frac: float = 0.1
    zero_shot_min: int = 5  # zero-shot terms are drawn from terms with this many proteins
    zero_shot_terms: frozenset[str] = frozenset()  # held out besides the draw
    few_max: int = 10  # terms with 1..few_max training proteins are few-shot
    # CAFA rule: an MF annotation to protein binding alone does not make an MF target.
    drop_protein_binding_only: bool = True

    def __post_init__(self):
        checks = [
            (self.max_proteins is None or self.max_proteins >= 1, "--max-proteins",
             f"must be at least 1, got {self.max_proteins}"),
            (0.0 <= self.zero_shot_frac < 1.0, "--zero-shot-frac",
             f"must be in [0, 1), got {self.zero_shot_frac}"),
            (0.0 < self.min_seq_id <= 1.0, "--min-seq-id",
             f"must be in (0, 1], got {self.min_seq_id}"),
            (self.split in ("cluster", "random"), "--split",
             f"must be 'cluster' or 'random', got '{self.split}'"),
        ]  # fmt: skip
        for ok, flag, why in checks:
            if not ok:
                raise UserError(f"{flag} {why}")


def check_dataset_name(name: str) -> str:
    """A dataset name (a folder under ``<data_dir>/datasets/``), never a path."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", name or ""):
        raise UserError(
            f"--name {name!r} is not a dataset name: use letters, digits, '.', '_' and '-' "
            "(starting with a letter or digit), e.g. --name my-data; the dataset is written "
            "to <data_dir>/datasets/<name>"
        )
    return name


def check_residues(sequences: dict[str, str], pids: list[str]) -> None:
    """Every kept protein's residues are ones the protein encoder accepts (one error listing
    the first offenders), so a bad record fails the build, not the embedding hours later."""
    bad = []
    for p in pids:
        try:
            clean_sequence(p, sequences[p])
        except UserError as err:
            bad.append(str(err).split(";")[0])
    if bad:
        raise UserError(
            f"{len(bad)} sequences hold residues the protein encoder cannot read: "
            f"{first_few(bad, '; ')}. It accepts the 20 amino acids and X B Z U O "
            "(lowercase allowed, a trailing '*' stripped): fix or remove these records"
        )


def build_dataset(out_dir: Path, src: Sources, opts: BuildOptions, name: str) -> dict:
    """Write the dataset folder; returns the summary written to ``dataset.json``."""
    onto = Ontology(src.terms)
    labels, counts = _clean_annotations(onto, src, opts)
    pids = sorted(labels)
    if opts.max_proteins and len(pids) > opts.max_proteins:
        pids = sorted(random.Random(opts.seed).sample(pids, opts.max_proteins))
        labels = {p: labels[p] for p in pids}
    if len(pids) < 10:
        raise UserError(f"only {len(pids)} proteins have a sequence and usable GO annotations")
    check_residues(src.sequences, pids)
    if onto.dangling:
        counts["dangling_parent_edges"] = sum(onto.dangling.values())
        log.warning(
            "%d parent links of the ontology name terms it does not hold (%s); they are dropped",
            counts["dangling_parent_edges"], onto.dangling,
        )  # fmt: skip
    splits, split_info = _split(pids, src.sequences, opts)
    train_labels = {p: set(labels[p]) for p in pids if splits[p] == "train"}
    ia = onto.information_accretion(train_labels)
    zero = _pick_zero_shot(onto, labels, splits, opts) | _named_zero_shot(onto, labels, opts)
    held = ["protein\tterm\taspect\tevidence"]  # training annotations of zero-shot terms
    for p in train_labels:
        for t in sorted(zero & set(labels[p])):
            held.append(f"{p}\t{t}\t{onto.aspect(t)}\t{','.join(sorted(labels[p].pop(t)))}")
        if not labels[p]:  # its only labels were held out: nothing left to train on
            del labels[p]
            counts["train_proteins_emptied_by_zero_shot"] += 1
    cluster_of = split_info.pop("cluster_of")
    summary = _write_folder(out_dir, onto, src, labels, (splits, cluster_of), zero, ia, opts)
    atomic_write_text(out_dir / HELD_OUT, "\n".join(held) + "\n")
    summary.update(
        files=files_sha256(out_dir),
        held_out_annotations=f"{HELD_OUT}: the {len(held) - 1} annotations of training proteins "
        "to zero-shot terms, left out of annotations.tsv so no model trains on them",
        name=name,
        provenance=src.provenance,
        options={
            k: (sorted(v) if isinstance(v, frozenset) else v) for k, v in asdict(opts).items()
        },
        split_method=split_info,
        cleaning=dict(counts),
    )
    text = json.dumps(summary, indent=2) + "\n"
    atomic_write_text(out_dir / "dataset.json", text)
    return json.loads(text)


def _clean_annotations(onto: Ontology, src: Sources, opts: BuildOptions):
    """Map alt ids, drop obsolete/unknown ids (counted), keep chosen aspects."""
    counts = Counter()
    labels: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for pid, go, ev in src.rows:
        if pid in opts.exclude_ids:
            counts["excluded_protein_rows"] += 1
            continue
        canon = onto.canonical(go)
        if canon is None:
            counts["dropped_obsolete" if go in onto.obsolete else "dropped_unknown"] += 1
            continue
        if canon != go:
            counts["mapped_alt_id"] += 1
        if onto.aspect(canon) not in opts.aspects:
            continue
        labels[pid][canon].add(ev)
    out = {}
    for pid, terms in labels.items():
        if pid not in src.sequences:
            counts["proteins_without_sequence"] += 1
            continue
        mf = [t for t in terms if onto.aspect(t) == "MF"]
        if opts.drop_protein_binding_only and mf == [PROTEIN_BINDING]:
            del terms[PROTEIN_BINDING]
            counts["protein_binding_only_dropped"] += 1
        if terms:
            out[pid] = dict(terms)
        else:
            counts["proteins_left_without_annotation"] += 1
    return out, counts


def _split(pids: list[str], sequences: dict[str, str], opts: BuildOptions):
    if opts.split == "random":
        groups = [[p] for p in pids]
        info = {"method": "random"}
    else:
        groups = cluster_sequences({p: sequences[p] for p in pids}, opts.min_seq_id, opts.coverage)
        info = {
            "method": "mmseqs2 easy-cluster",
            "min_seq_id": opts.min_seq_id,
            "coverage": opts.coverage,
            "clusters": len(groups),
        }
    rng = random.Random(opts.seed)
    rng.shuffle(groups)
    target = [f * len(pids) for f in opts.fractions]
    size = [0, 0, 0]
    splits, cluster_of = {}, {}
    for ci, g in enumerate(groups):
        # Give each cluster to the split furthest below its target share.
        k = max(range(3), key=lambda i: (target[i] - size[i]) / max(target[i], 1))
        size[k] += len(g)
        splits.update(dict.fromkeys(g, SPLITS[k]))
        cluster_of.update(dict.fromkeys(g, ci))
    info["cluster_of"] = cluster_of
    return splits, info


def _pick_zero_shot(onto: Ontology, labels, splits, opts: BuildOptions) -> set[str]:
    """Per aspect, ``zero_shot_frac`` of the terms with >= ``zero_shot_min`` proteins.

    Only terms with no annotated descendant are eligible, so that removing their training
    annotations removes them from propagated training labels too; each must keep at least one
    test protein so it stays evaluable.
    """
    n_prot: Counter = Counter()
    n_test: Counter = Counter()
    annotated: set[str] = set()
    for p, terms in labels.items():
        for t in terms:
            n_prot[t] += 1
            n_test[t] += splits[p] == "test"
            annotated.add(t)
    has_desc = {a for t in annotated for a in onto.ancestors(t)}
    rng = random.Random(opts.seed + 1)
    zero: set[str] = set()
    for aspect in opts.aspects:
        frequent = sorted(
            t for t in annotated if onto.aspect(t) == aspect and n_prot[t] >= opts.zero_shot_min
        )
        eligible = [t for t in frequent if t not in has_desc and n_test[t] > 0]
        want = min(len(eligible), round(opts.zero_shot_frac * len(frequent)))
        zero |= set(rng.sample(eligible, want))
    return zero


def _named_zero_shot(onto: Ontology, labels, opts: BuildOptions) -> set[str]:
    """``--zero-shot-terms``: each named term (alt ids mapped) and every annotated descendant,
    so that no training protein carries it after propagation either."""
    unknown = sorted(t for t in opts.zero_shot_terms if onto.canonical(t) is None)
    if unknown:
        raise UserError(
            f"--zero-shot-terms names {len(unknown)} GO ids this dataset's ontology does not "
            f"hold (unknown or obsolete): {first_few(unknown)}; remove them or "
            "build with the GO release they come from"
        )
    annotated = {t for terms in labels.values() for t in terms}
    zero: set[str] = set()
    for t in map(onto.canonical, opts.zero_shot_terms):
        zero |= {t} | (onto.descendants(t) & annotated)
    return zero


def _write_folder(out_dir, onto, src, labels, split_and_cluster, zero, ia, opts) -> dict:
    splits, cluster_of = split_and_cluster
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "dataset.json").unlink(missing_ok=True)  # incomplete until rewritten last
    write_obo(list(onto.terms.values()), out_dir / "go.obo", {"data-version": "protgo"})
    pids = sorted(labels)
    write_fasta(((p, src.sequences[p]) for p in pids), out_dir / "proteins.fasta")
    lines = ["protein\tterm\taspect\tevidence"]
    for p in pids:
        lines += [
            f"{p}\t{t}\t{onto.aspect(t)}\t{','.join(sorted(ev))}"
            for t, ev in sorted(labels[p].items())
        ]
    atomic_write_text(out_dir / "annotations.tsv", "\n".join(lines) + "\n")
    lines = ["protein\tsplit\tcluster"] + [f"{p}\t{splits[p]}\t{cluster_of[p]}" for p in pids]
    atomic_write_text(out_dir / "splits.tsv", "\n".join(lines) + "\n")
    prop = {p: onto.propagate(labels[p]) for p in pids}
    n_train: Counter = Counter()
    all_terms: set[str] = set()
    for p in pids:
        all_terms |= prop[p]
        if splits[p] == "train":
            n_train.update(prop[p])
    classes = {}
    lines = ["term\taspect\tn_train\tclass\theld_out"]
    for t in sorted(all_terms):
        n = n_train[t]
        classes[t] = "zero" if n == 0 else ("few" if n <= opts.few_max else "common")
        lines.append(f"{t}\t{onto.aspect(t)}\t{n}\t{classes[t]}\t{int(t in zero)}")
    atomic_write_text(out_dir / "terms.tsv", "\n".join(lines) + "\n")
    ia_lines = [f"{t}\t{v:.6f}" for t, v in sorted(ia.items())]
    atomic_write_text(out_dir / "ia.tsv", "\n".join(ia_lines) + "\n")
    return _counts(onto, labels, splits, classes, zero)


def _counts(onto, labels, splits, classes, zero) -> dict:
    proteins = Counter(splits[p] for p in labels)
    annots: dict[str, Counter] = defaultdict(Counter)
    targets: dict[str, Counter] = defaultdict(Counter)
    for p, terms in labels.items():
        aspects = {onto.aspect(t) for t in terms}
        for t in terms:
            annots[splits[p]][onto.aspect(t)] += 1
        for a in aspects:
            targets[splits[p]][a] += 1
    term_classes: dict[str, Counter] = defaultdict(Counter)
    for t, c in classes.items():
        term_classes[onto.aspect(t)][c] += 1
    return {
        "proteins": {s: proteins[s] for s in SPLITS} | {"total": len(labels)},
        "annotations": {s: dict(annots[s]) for s in SPLITS},
        "proteins_per_aspect": {s: dict(targets[s]) for s in SPLITS},
        "terms": {a: dict(c) for a, c in sorted(term_classes.items())},
        "zero_shot_held_out": len(zero),
        "go_terms_in_ontology": len(onto),
    }
