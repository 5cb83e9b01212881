"""FASTA reading and writing with errors that name the file, line and record."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from protgo.data.sequence import clean_sequence
from protgo.errors import UserError
from protgo.io import atomic_write_text, iter_text_lines


def iter_fasta(path: Path) -> Iterator[tuple[str, str]]:
    """Yield (id, sequence); the id is the header's first word. The file may be gzipped.
    Residues are not validated here (``encoders.protein.clean_sequence`` does that)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"FASTA file {path} is a folder: give the path of a FASTA file")
    if not path.is_file():
        raise UserError(f"FASTA file {path} not found")
    pid: str | None = None
    chunks: list[str] = []
    start = 0
    for lineno, raw in iter_text_lines(path, "FASTA file"):
        line = raw.rstrip("\r\n")
        if line.startswith(">"):
            if pid is not None:
                yield _record(path, start, pid, chunks)
            header = line[1:].strip()
            if not header:
                raise UserError(f"{path}:{lineno}: empty FASTA header")
            pid, chunks, start = header.split()[0], [], lineno
        elif line.strip():
            if pid is None:
                raise UserError(f"{path}:{lineno}: sequence line before any '>' header")
            chunks.append(line.strip())
    if pid is not None:
        yield _record(path, start, pid, chunks)


def _record(path: Path, lineno: int, pid: str, chunks: list[str]) -> tuple[str, str]:
    seq = "".join(chunks)
    if not seq:
        raise UserError(f"{path}:{lineno}: record '{pid}' has an empty sequence")
    return pid, seq


def read_fasta(path: Path) -> dict[str, str]:
    """All records as {id: sequence}; duplicate ids are an error, and so is an empty file."""
    out: dict[str, str] = {}
    for pid, seq in iter_fasta(path):
        if pid in out:
            raise UserError(f"{path}: duplicate record id '{pid}'; ids must be unique")
        out[pid] = seq
    if not out:
        raise UserError(f"FASTA file {path} holds no records")
    return out


def uniprot_accession(pid: str) -> str:
    """``sp|P00533|EGFR_HUMAN`` (a UniProt header: db|accession|name) -> ``P00533``; any
    other id as is."""
    parts = pid.split("|")
    return parts[1] if len(parts) == 3 and parts[0] in ("sp", "tr") and parts[1] else pid


def read_query_fasta(path: Path, by_accession: bool = True) -> dict[str, str]:
    """{pid: cleaned sequence}; every record checked before anything runs. With
    ``by_accession``, UniProt headers (``sp|P00533|EGFR_HUMAN``) are named by their accession,
    as in every dataset and in CAFA files, unless two records would then share a name."""
    seqs = {pid: clean_sequence(pid, seq) for pid, seq in read_fasta(Path(path)).items()}
    short = {uniprot_accession(pid): seq for pid, seq in seqs.items()}
    return short if by_accession and len(short) == len(seqs) else seqs


def write_fasta(records: Iterable[tuple[str, str]], path: Path, width: int = 60) -> None:
    lines = []
    for pid, seq in records:
        lines.append(f">{pid}")
        lines += [seq[i : i + width] for i in range(0, len(seq), width)]
    atomic_write_text(Path(path), "\n".join(lines) + "\n")
