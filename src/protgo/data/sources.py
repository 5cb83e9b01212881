"""Where a dataset's proteins, sequences and annotations come from (``protgo data build``'s
sources): ``human-exp`` (human proteins with experimental GO from org.Hs.eg.db, sequences from
Swiss-Prot 2014), ``swissprot-2014`` (all metastudent proteins, weak labels including IEA),
``web`` (reviewed UniProt and the current GO fetched with ``--source web``, experimental
evidence by default), or the user's own FASTA + annotation TSV or GAF + OBO. Each gives a
:class:`Sources`; :mod:`protgo.data.build` cleans and splits it into a dataset folder.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from protgo.data import godb
from protgo.data.blastdb import BlastDb
from protgo.data.debian import debian_paths
from protgo.data.fasta import read_fasta, uniprot_accession
from protgo.data.ontology import Term, parse_obo
from protgo.data.web import WebPaths, read_uniprot_go_tsv, web_paths
from protgo.errors import UserError
from protgo.io import iter_text_lines, progress_bar

EXPERIMENTAL = ("EXP", "IDA", "IPI", "IMP", "IGI", "IEP", "TAS", "IC")
HIGH_THROUGHPUT = ("HTP", "HDA", "HMP", "HGI", "HEP")
KEPT_EVIDENCE = EXPERIMENTAL + HIGH_THROUGHPUT  # what "experimental" datasets keep

log = logging.getLogger(__name__)


@dataclass
class Sources:
    terms: list[Term]
    sequences: dict[str, str]
    rows: list[tuple[str, str, str]]  # (protein, GO id, evidence)
    provenance: dict = field(default_factory=dict)


def human_exp_sources(go_sqlite: Path, orghs_sqlite: Path, metastudent_dir: Path) -> Sources:
    """Human proteins with experimental GO (org.Hs.eg.db) and their Swiss-Prot 2014 sequence."""
    con = sqlite3.connect(f"file:{orghs_sqlite}?mode=ro", uri=True)
    codes = KEPT_EVIDENCE
    marks = ",".join("?" * len(codes))
    rows = []
    for aspect in ("bp", "mf", "cc"):
        q = (
            f"SELECT u.uniprot_id, g.go_id, g.evidence FROM go_{aspect} g "
            f"JOIN uniprot u ON u._id = g._id WHERE g.evidence IN ({marks})"
        )
        rows += con.execute(q, codes).fetchall()
    meta = dict(con.execute("SELECT name, value FROM metadata"))
    con.close()
    wanted = {r[0] for r in rows}
    sequences = {p: s for p, s in metastudent_sequences(metastudent_dir).items() if p in wanted}
    prov = {
        "go_source_date": godb.source_date(go_sqlite),
        "annotation_source": "org.Hs.eg.db (Entrez Gene) "
        + meta.get("EGSOURCEDATE", meta.get("GOEGSOURCEDATE", "")),
        "sequence_source": "Swiss-Prot 2014-01 (metastudent-data)",
        "evidence_codes": list(codes),
    }
    return Sources(godb.read_terms(go_sqlite), sequences, rows, prov)


def metastudent_sequences(metastudent_dir: Path) -> dict[str, str]:
    seqs: dict[str, str] = {}
    for aspect in ("BPO", "CCO", "MFO"):
        db = BlastDb(Path(metastudent_dir) / aspect / "goasp.fasta")
        for i in progress_bar(
            range(db.n), desc=f"reading {aspect} sequences", unit="seq", leave=False
        ):
            acc = db.title(i).split("|", 1)[0]
            if acc not in seqs:
                seqs[acc] = db.sequence(i)
    return seqs


def web_sources(paths: WebPaths, all_evidence: bool) -> Sources:
    """Reviewed UniProt entries and the current GO from ``protgo data fetch --source web``;
    experimental (and high-throughput) evidence only unless ``all_evidence``."""
    sequences, rows = read_uniprot_go_tsv(paths.uniprot_tsv)
    codes = KEPT_EVIDENCE
    if not all_evidence:
        rows = [r for r in rows if r[2] in codes]
    fetched = json.loads(paths.fetch_json.read_text())
    prov = {
        "go_source": f"{fetched['go_url']} ({fetched['go_data_version']})",
        "annotation_source": f"{fetched['uniprot_url']} (fetched {fetched['fetched_at']})",
        "sequence_source": "UniProtKB/Swiss-Prot (same download)",
        "evidence_codes": "all" if all_evidence else list(codes),
    }
    return Sources(parse_obo(paths.go_obo), sequences, rows, prov)


def swissprot_sources(go_sqlite: Path, metastudent_dir: Path) -> Sources:
    """All Swiss-Prot 2014 proteins with metastudent's weak labels (electronic included)."""
    rows = []
    for aspect in ("BPO", "CCO", "MFO"):
        with open(Path(metastudent_dir) / aspect / "goasp_annot.dat") as fh:
            for line in fh:
                acc, *gos = line.rstrip("\n").split("\t")
                rows += [(acc, g, "NA") for g in set(gos)]
    prov = {
        "go_source_date": godb.source_date(go_sqlite),
        "annotation_source": "metastudent-data goasp_annot.dat (Swiss-Prot 2014-01, weak labels)",
        "sequence_source": "Swiss-Prot 2014-01 (metastudent-data)",
    }
    seqs = metastudent_sequences(metastudent_dir)
    return Sources(godb.read_terms(go_sqlite), seqs, rows, prov)


def user_sources(fasta: Path, annotations: Path, obo: Path, all_evidence: bool = False) -> Sources:
    """The user's own FASTA, annotations and OBO. Annotations: the project's TSV (protein, GO
    id, optional evidence; every row kept) or GAF 2.x (``!gaf-version`` first; NOT rows
    dropped, experimental and high-throughput evidence only unless ``all_evidence``)."""
    path = Path(annotations)
    if not path.is_file():
        raise UserError(f"annotation file {path} not found")
    prov = {"sequence_source": str(fasta), "annotation_source": str(path), "go_source": str(obo)}
    sequences = read_fasta(fasta)
    if _is_gaf(path):
        rows = read_gaf(path, prov, None if all_evidence else KEPT_EVIDENCE)
        rows = _to_fasta_ids(rows, sequences)
    else:
        rows = _read_annotation_tsv(path, prov)
    return Sources(parse_obo(obo), sequences, rows, prov)


def _read_annotation_tsv(path: Path, prov: dict) -> list[tuple[str, str, str]]:
    rows = []
    for lineno, line in iter_text_lines(path, "annotation file"):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.rstrip("\n").split("\t")
        if len(parts) < 2 or not parts[1].startswith("GO:"):
            if not rows and "annotation_header" not in prov:
                # the first line that is not an annotation is taken as a header (kept on record)
                prov["annotation_header"] = line.strip()[:200]
                log.info("%s:%d taken as a header and skipped: %r", path, lineno, line.strip())
                continue
            raise UserError(
                f"{path}:{lineno}: expected 'protein<TAB>GO:xxxxxxx[<TAB>evidence]' or a GAF "
                f"file starting with '!gaf-version', got {line.strip()!r}"
            )
        rows.append((parts[0], parts[1], parts[2] if len(parts) > 2 else "NA"))
    return rows


def _is_gaf(path: Path) -> bool:
    for _, line in iter_text_lines(path, "annotation file"):
        if line.strip():
            return line.startswith("!gaf-version")
    return False


def read_gaf(path: Path, prov: dict, codes: tuple[str, ...] | None) -> list[tuple[str, str, str]]:
    """(DB object id, GO id, evidence) of a GAF 2.x file: column 2, 5 and 7; rows whose
    qualifier (column 4) holds NOT are negative annotations and dropped; ``codes``: keep only
    these evidence codes (None: all). Counts go into ``prov``."""
    rows, negative, other = [], 0, 0
    for lineno, line in iter_text_lines(path, "GAF file"):
        if line.startswith("!"):
            if line.startswith("!gaf-version"):
                prov["gaf_version"] = line.split(":", 1)[-1].strip()
            continue
        if not line.strip():
            continue
        cols = line.rstrip("\n").split("\t")
        if len(cols) < 15 or not cols[4].startswith("GO:"):
            raise UserError(f"{path}:{lineno}: not a GAF 2.x line (15-17 tab-separated "
                            f"columns, GO id in column 5): {line.strip()[:120]!r}")  # fmt: skip
        if "NOT" in cols[3].split("|"):
            negative += 1
        elif codes is not None and cols[6] not in codes:
            other += 1
        else:
            rows.append((cols[1], cols[4], cols[6]))
    prov["gaf_rows"] = {"kept": len(rows), "NOT_dropped": negative, "evidence_dropped": other}
    prov["evidence_codes"] = "all" if codes is None else list(codes)
    return rows


def _to_fasta_ids(rows, sequences: dict[str, str]) -> list[tuple[str, str, str]]:
    """GAF rows name UniProt accessions; FASTA records may be named ``sp|ACC|NAME``: map an
    accession to its record's id when the accession itself is not an id."""
    by_acc = {uniprot_accession(pid): pid for pid in sequences}
    return [(p if p in sequences else by_acc.get(p, p), g, e) for p, g, e in rows]


def select_sources(
    kind: str, data_dir: Path, own: tuple[Path | None, Path | None, Path | None],
    all_evidence: bool = False,
) -> Sources:  # fmt: skip
    """The sources of a build: the user's own (FASTA, annotations, OBO) when given, else
    ``kind`` (human-exp, swissprot-2014 or web) from the fetched data under ``data_dir``."""
    if any(own):
        if not all(own):
            raise UserError("your own data needs all three of --fasta, --annotations and --obo")
        return user_sources(*own, all_evidence=all_evidence)
    if kind in ("human-exp", "swissprot-2014"):
        p = debian_paths(data_dir)
        if kind == "human-exp":
            return human_exp_sources(p.go_sqlite, p.orghs_sqlite, p.metastudent_dir)
        return swissprot_sources(p.go_sqlite, p.metastudent_dir)
    if kind == "web":
        return web_sources(web_paths(data_dir), all_evidence)
    raise UserError(
        f"no source for dataset '{kind}': name or --source human-exp, swissprot-2014 or web, "
        "or give --fasta, --annotations and --obo"
    )
