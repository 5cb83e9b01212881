"""Sequence search tools run as programs: mmseqs2 clustering (similarity-aware splits) and
DIAMOND hits (the DIAMOND baseline and the homology teacher). Both come from Debian
(``mmseqs2``, ``diamond-aligner``; ``scripts/setup.sh`` installs them)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from protgo.data.fasta import write_fasta
from protgo.errors import UserError


def _run(cmd: list[str], what: str) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise UserError(f"{what} failed (exit {res.returncode}): {res.stderr.strip()[-500:]}")


def cluster_sequences(seqs: dict[str, str], min_seq_id: float, coverage: float) -> list[list[str]]:
    """Clusters (sorted member lists) of mmseqs2 ``easy-cluster``; each cluster later goes
    to one split."""
    if shutil.which("mmseqs") is None:
        raise UserError(
            "mmseqs2 is needed for similarity-aware splits: run scripts/setup.sh "
            "(or `apt-get install mmseqs2`), or pass --split random"
        )
    with tempfile.TemporaryDirectory(prefix="protgo-mmseqs-") as tmp:
        fasta = Path(tmp) / "in.fasta"
        write_fasta(seqs.items(), fasta)
        _run(["mmseqs", "easy-cluster", str(fasta), f"{tmp}/out", f"{tmp}/work",
              "--min-seq-id", str(min_seq_id), "-c", str(coverage), "--threads", "2", "-v", "1"],
             "mmseqs2 clustering")  # fmt: skip
        clusters: dict[str, list[str]] = defaultdict(list)
        with open(f"{tmp}/out_cluster.tsv") as fh:
            for line in fh:
                rep, member = line.split()
                clusters[rep].append(member)
    return [sorted(v) for _, v in sorted(clusters.items())]


@dataclass
class DiamondOptions:
    sensitivity: str = "more-sensitive"  # DeepGOPlus uses --more-sensitive
    evalue: float = 0.001
    max_target_seqs: int = 500
    threads: int = 2
    binary: str = "diamond"


def _diamond(opts: DiamondOptions) -> str:
    exe = shutil.which(opts.binary)
    if exe is None:
        raise UserError(
            f"'{opts.binary}' not found: install DIAMOND (apt-get install "
            "diamond-aligner) or pass its path"
        )
    return exe


def make_db(database: Mapping[str, str], path: Path, opts: DiamondOptions | None = None) -> Path:
    """A DIAMOND database of ``database``'s sequences at ``path`` (``.dmnd`` added), written
    under a temporary name and renamed, so a killed build never leaves a database that looks
    whole."""
    opts = opts or DiamondOptions()
    exe = _diamond(opts)
    path = Path(path).with_suffix(".dmnd")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".diamond-db-") as tmp:
        t = Path(tmp)
        write_fasta(sorted(database.items()), t / "db.fa")
        _run([exe, "makedb", "--in", str(t / "db.fa"), "-d", str(t / "db"), "--threads",
              str(opts.threads), "--quiet"], "diamond makedb")  # fmt: skip
        (t / "db.dmnd").replace(path)
    return path


def search(
    queries: Mapping[str, str], db: Path, opts: DiamondOptions | None = None,
    workdir: Path | None = None,
) -> dict[str, list[tuple[str, float]]]:  # fmt: skip
    """``{query: [(subject, bitscore), ...]}`` best first, from ``diamond blastp`` against the
    database ``db`` (:func:`make_db`); self-hits (same id) are dropped, and a subject is kept
    once (its best bitscore)."""
    opts = opts or DiamondOptions()
    exe = _diamond(opts)
    if not queries:
        return {}
    with tempfile.TemporaryDirectory(dir=workdir, prefix="diamond-") as tmp:
        t = Path(tmp)
        write_fasta(sorted(queries.items()), t / "q.fa")
        _run([exe, "blastp", "-d", str(db), "-q", str(t / "q.fa"), "-o", str(t / "hits.tsv"),
              f"--{opts.sensitivity}", "-e", str(opts.evalue), "-k", str(opts.max_target_seqs),
              "--outfmt", "6", "qseqid", "sseqid", "bitscore", "--threads", str(opts.threads),
              "--tmpdir", tmp, "--quiet"], "diamond blastp")  # fmt: skip
        hits: dict[str, dict[str, float]] = {}
        for line in (t / "hits.tsv").read_text().splitlines():
            q, s, bits = line.split("\t")
            if q != s:
                best = hits.setdefault(q, {})
                best[s] = max(float(bits), best.get(s, 0.0))
    return {q: sorted(d.items(), key=lambda x: -x[1]) for q, d in hits.items()}


def diamond_hits(
    queries: Mapping[str, str],
    database: Mapping[str, str],
    opts: DiamondOptions | None = None,
    workdir: Path | None = None,
) -> dict[str, list[tuple[str, float]]]:
    """:func:`search` of ``queries`` against a database of ``database`` made for this call."""
    _diamond(opts or DiamondOptions())
    if not queries or not database:
        return {}
    with tempfile.TemporaryDirectory(dir=workdir, prefix="diamond-") as tmp:
        return search(queries, make_db(database, Path(tmp) / "db", opts), opts, workdir)
