"""Fetch the raw data protgo builds its datasets from, into ``<data_dir>/raw/``.

Two sources:

* ``debian`` (offline-friendly default): ``apt-get download`` + ``dpkg-deb -x`` of GO.db,
  org.Hs.eg.db and metastudent-data into ``raw/debian/root/`` (never ``apt-get install``, which
  would pull hundreds of R packages). docs/data.md says what each package holds.
* ``web`` (for users with internet): the current ``go-basic.obo`` and reviewed UniProt entries
  with their GO annotations and evidence codes, through the UniProt REST API.

Both write ``fetch.json`` last and atomically: its presence means the fetch finished and was
verified. Re-running a finished fetch only re-verifies (seconds).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from http.client import HTTPException
from pathlib import Path

from tqdm import tqdm

from protgo.data.ontology import parse_obo
from protgo.errors import UserError
from protgo.io import atomic_write_text

# --------------------------------------------------------------------------------------------
# Debian source
# --------------------------------------------------------------------------------------------

GO_SQLITE = "usr/lib/R/site-library/GO.db/extdata/GO.sqlite"
ORGHS_SQLITE = "usr/lib/R/site-library/org.Hs.eg.db/extdata/org.Hs.eg.sqlite"
METASTUDENT_DIR = "usr/share/metastudent-data/dataset_201401"
# package -> files that must be there after unpacking (relative to root/)
DEBIAN_PACKAGES: dict[str, list[str]] = {
    "r-bioc-go.db": [GO_SQLITE],
    "r-bioc-org.hs.eg.db": [ORGHS_SQLITE],
    "metastudent-data": [
        f"{METASTUDENT_DIR}/{aspect}/{name}"
        for aspect in ("BPO", "CCO", "MFO")
        for name in ("goasp.fasta.pin", "goasp.fasta.phr", "goasp.fasta.psq", "goasp_annot.dat")
    ],
}
# SQLite file -> tables it must hold (a wrong or half-written file fails here)
SQLITE_TABLES = {
    GO_SQLITE: ("go_term", "go_bp_parents", "metadata"),
    ORGHS_SQLITE: ("go_bp", "uniprot"),
}
NO_APT = "needs a Debian/Ubuntu machine with apt (apt-get and dpkg-deb); or use --source web"


@dataclass(frozen=True)
class DebianPaths:
    root: Path  # the unpacked packages (raw/debian/root)
    go_sqlite: Path
    orghs_sqlite: Path
    metastudent_dir: Path  # .../dataset_201401 with BPO/CCO/MFO BLAST dbs and annotations

    @classmethod
    def under(cls, root: Path) -> DebianPaths:
        return cls(root, root / GO_SQLITE, root / ORGHS_SQLITE, root / METASTUDENT_DIR)

    def files(self) -> dict[str, Path]:
        """The main files, for reporting sizes."""
        out = {"GO.sqlite": self.go_sqlite, "org.Hs.eg.sqlite": self.orghs_sqlite}
        for rel in DEBIAN_PACKAGES["metastudent-data"]:
            out["metastudent/" + rel.split("dataset_201401/")[1]] = self.root / rel
        return out


def _debian_dir(data_dir: Path) -> Path:
    return Path(data_dir).expanduser() / "raw" / "debian"


def debian_paths(data_dir: Path) -> DebianPaths:
    """Paths of the fetched Debian data; a UserError tells how to fetch it when missing."""
    base = _debian_dir(data_dir)
    if not (base / "fetch.json").is_file():
        raise UserError(f"Debian data not fetched into {base}: run `protgo data fetch`")
    return DebianPaths.under(base / "root")


def verify_debian(root: Path, sizes: dict[str, int] | None = None) -> None:
    """Check the unpacked files: expected files present and non-empty, sizes equal to
    ``sizes`` (relative path -> bytes) when given, SQLite files open and hold their tables."""
    root = Path(root)
    for rel in (r for rels in DEBIAN_PACKAGES.values() for r in rels):
        f = root / rel
        if not f.is_file() or f.stat().st_size == 0:
            raise UserError(f"{f} is missing or empty: run `protgo data fetch`")
    for rel, size in (sizes or {}).items():
        f = root / rel
        if not f.is_file() or f.stat().st_size != size:
            raise UserError(f"{f} is missing or not {size} bytes: run `protgo data fetch`")
    for rel, tables in SQLITE_TABLES.items():
        try:
            con = sqlite3.connect(f"file:{root / rel}?mode=ro", uri=True)
            try:
                have = {r[0] for r in con.execute("SELECT name FROM sqlite_master")}
                for t in tables:
                    if t in have:
                        con.execute(f"SELECT * FROM {t} LIMIT 1").fetchall()
            finally:
                con.close()
        except sqlite3.DatabaseError as err:
            raise UserError(f"{root / rel} is not a readable SQLite file ({err})") from err
        if missing := [t for t in tables if t not in have]:
            raise UserError(f"{root / rel} lacks tables {missing}: run `protgo data fetch`")


def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)


def _deb_of(debs: Path, package: str) -> Path | None:
    found = sorted(debs.glob(f"{package}_*.deb"))
    return found[-1] if found else None


def _apt_download(debs: Path, packages: list[str]) -> None:
    """``apt-get download`` into a scratch dir, then move the .deb files in: a killed download
    never leaves a half .deb under its final name. Runs ``apt-get update`` once when apt has no
    package lists (fresh containers)."""
    debs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=debs, prefix=".download-") as tmp:
        res = _run(["apt-get", "download", *packages], cwd=Path(tmp))
        if res.returncode != 0 and re.search(
            r"Unable to locate|no installation candidate|Can't select", res.stderr
        ):
            upd = _run(["apt-get", "update", "-qq"])
            if upd.returncode != 0:
                raise UserError(
                    "`apt-get update` failed (run it as root, or use --source web): "
                    + upd.stderr.strip()[-300:]
                )
            res = _run(["apt-get", "download", *packages], cwd=Path(tmp))
        if res.returncode != 0:
            raise UserError(
                f"`apt-get download {' '.join(packages)}` failed: {res.stderr.strip()[-400:]}"
            )
        for deb in Path(tmp).glob("*.deb"):
            os.replace(deb, debs / deb.name)


def _deb_listing(deb: Path) -> dict[str, int]:
    """Regular files of a .deb (relative path -> size) from ``dpkg-deb -c``."""
    res = _run(["dpkg-deb", "-c", str(deb)])
    if res.returncode != 0:
        raise UserError(f"{deb} is not a readable .deb ({res.stderr.strip()}): delete it and rerun")
    out = {}
    for line in res.stdout.splitlines():
        parts = line.split(None, 5)  # perms owner size date time path
        if len(parts) == 6 and parts[0].startswith("-"):
            out[parts[5].removeprefix("./")] = int(parts[2])
    return out


def _deb_field(deb: Path, field: str) -> str:
    return _run(["dpkg-deb", "-f", str(deb), field]).stdout.strip()


def _unpack(deb: Path, root: Path, expected: list[str]) -> dict[str, int]:
    """Unpack ``deb`` into ``root``; returns its regular files (relative path -> size).

    When the ``expected`` files are there already (an earlier or manual unpack), the archive
    listing is compared with the disk first and nothing is unpacked if every size matches.
    Otherwise one ``dpkg-deb -X`` pass unpacks and names the files (no second decompression).
    """
    if all((root / r).is_file() for r in expected):
        listing = _deb_listing(deb)
        if all((root / r).is_file() and (root / r).stat().st_size == s for r, s in listing.items()):
            return listing
    root.mkdir(parents=True, exist_ok=True)
    res = _run(["dpkg-deb", "-X", str(deb), str(root)])
    if res.returncode != 0:
        raise UserError(f"`dpkg-deb -x {deb}` failed: {res.stderr.strip()[-400:]}")
    names = (line.strip().removeprefix("./") for line in res.stdout.splitlines())
    files = (root / n for n in names if n and not n.endswith("/"))
    return {
        str(f.relative_to(root)): f.stat().st_size
        for f in files
        if f.is_file() and not f.is_symlink()
    }


def fetch_debian(data_dir: Path) -> DebianPaths:
    """Download and unpack the three Debian packages, verify them, write ``fetch.json``.

    Idempotent: a finished, still valid fetch returns at once; a partial one (some .debs
    downloaded, some files unpacked) is completed without downloading what is there.
    """
    from protgo.data import godb

    base = _debian_dir(data_dir)
    paths = DebianPaths.under(base / "root")
    if _debian_done(base):
        return paths
    if not (shutil.which("apt-get") and shutil.which("dpkg-deb")):
        raise UserError(f"`protgo data fetch --source debian` {NO_APT}")
    debs = base / "debs"
    if missing := [p for p in DEBIAN_PACKAGES if _deb_of(debs, p) is None]:
        _apt_download(debs, missing)
    record: dict = {"source": "debian", "packages": {}, "files": {}}
    for package in tqdm(DEBIAN_PACKAGES, desc="unpack", unit="pkg"):
        deb = _deb_of(debs, package)
        if deb is None:
            raise UserError(f"apt-get download gave no .deb for {package} in {debs}")
        listing = _unpack(deb, paths.root, DEBIAN_PACKAGES[package])
        version = _deb_field(deb, "Version")
        record["packages"][package] = {
            "version": version,
            "deb": deb.name,
            "deb_size": deb.stat().st_size,
        }
        record["files"].update(listing)
    verify_debian(paths.root, record["files"])
    record["go_source_date"] = godb.source_date(paths.go_sqlite)
    record["fetched_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    atomic_write_text(base / "fetch.json", json.dumps(record, indent=1) + "\n")
    return paths


def _debian_done(base: Path) -> bool:
    try:
        record = json.loads((base / "fetch.json").read_text())
        verify_debian(base / "root", record["files"])
    except (OSError, ValueError, KeyError, UserError):
        return False
    return True


# --------------------------------------------------------------------------------------------
# Web source
# --------------------------------------------------------------------------------------------

GO_URL = "https://current.geneontology.org/ontology/go-basic.obo"
# JSON (not TSV) because only JSON carries the evidence code of each GO annotation
# (uniProtKBCrossReferences, database GO, property GoEvidenceType "IDA:UniProtKB").
UNIPROT_URL = (
    "https://rest.uniprot.org/uniprotkb/search?query=reviewed%3Atrue%20AND%20go%3A%2A"
    "&fields=accession%2Csequence%2Cgo&format=json&size=500"
)
USER_AGENT = "protgo/0.1 (python urllib)"
TSV_HEADER = "protein\tsequence\tgo"
GO_ID = re.compile(r"GO:\d{7}")


@dataclass(frozen=True)
class WebPaths:
    root: Path  # raw/web
    go_obo: Path
    uniprot_tsv: Path

    @classmethod
    def under(cls, root: Path) -> WebPaths:
        return cls(root, root / "go-basic.obo", root / "uniprot_sprot_go.tsv")

    @property
    def fetch_json(self) -> Path:
        return self.root / "fetch.json"

    def files(self) -> dict[str, Path]:
        return {"go-basic.obo": self.go_obo, "uniprot_sprot_go.tsv": self.uniprot_tsv}


def web_paths(data_dir: Path) -> WebPaths:
    paths = WebPaths.under(Path(data_dir).expanduser() / "raw" / "web")
    if not paths.fetch_json.is_file():
        raise UserError(
            f"web data not fetched into {paths.root}: run `protgo data fetch --source web`"
        )
    return paths


def fetch_web(
    data_dir: Path, go_url: str = GO_URL, uniprot_url: str = UNIPROT_URL, retries: int = 3
) -> WebPaths:
    """Fetch go-basic.obo and reviewed UniProt entries with GO annotations into ``raw/web/``.

    Streamed (the OBO in 1 MiB chunks, UniProt one page of 500 entries at a time), resumable
    (the OBO with an HTTP Range request on its ``.part`` file; UniProt from the last finished
    page, whose cursor URL is kept in ``uniprot.pages/state.json``) and verified (the OBO parses;
    every page is whole JSON; the row count equals ``X-Total-Results``). ``retries`` attempts per
    request, with backoff; a fetch that still fails raises a UserError and resumes when rerun.
    """
    paths = WebPaths.under(Path(data_dir).expanduser() / "raw" / "web")
    if _web_done(paths):
        return paths
    paths.root.mkdir(parents=True, exist_ok=True)
    obo_version = _fetch_obo(go_url, paths.go_obo, retries)
    n_rows = _fetch_uniprot(uniprot_url, paths.uniprot_tsv, retries)
    record = {
        "source": "web",
        "go_url": go_url,
        "go_data_version": obo_version,
        "uniprot_url": uniprot_url,
        "uniprot_entries": n_rows,
        "files": {name: p.stat().st_size for name, p in paths.files().items()},
        "fetched_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    atomic_write_text(paths.fetch_json, json.dumps(record, indent=1) + "\n")
    return paths


def _web_done(paths: WebPaths) -> bool:
    try:
        record = json.loads(paths.fetch_json.read_text())
        return all(p.stat().st_size == record["files"][n] for n, p in paths.files().items())
    except (OSError, ValueError, KeyError):
        return False


def _open(url: str, headers: dict[str, str] | None = None):
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, **(headers or {})})
    return urllib.request.urlopen(req, timeout=120)


def _retrying(url: str, retries: int, attempt) -> object:
    """Call ``attempt()`` up to ``retries`` times on network errors, truncated or corrupt
    responses (IncompleteRead, bad JSON) and HTTP 429/5xx; other HTTP errors fail at once."""
    for i in range(retries):
        try:
            return attempt()
        except urllib.error.HTTPError as err:
            if err.code != 429 and err.code < 500:
                raise UserError(f"{url}: HTTP {err.code} {err.reason}") from err
            last: Exception = err
        except (urllib.error.URLError, HTTPException, OSError, ValueError) as err:
            last = err
        if i + 1 < retries:
            time.sleep(min(60, 2 ** (i + 1)))
    raise UserError(
        f"download of {url} failed after {retries} tries ({type(last).__name__}: {last}); "
        "check the connection and rerun `protgo data fetch --source web` to resume"
    )


def _fetch_obo(url: str, dest: Path, retries: int) -> str:
    """Stream the OBO into ``dest.part`` (resuming it), parse it, then rename it to ``dest``.
    Returns the OBO's ``data-version`` header."""
    part = dest.with_name(dest.name + ".part")
    if not dest.is_file():
        _retrying(url, retries, lambda: _stream_to(url, part))
        try:
            if not parse_obo(part):
                raise UserError(f"{url} holds no [Term] stanzas")
        except UserError:
            part.unlink()  # a wrong file must not be resumed
            raise
        os.replace(part, dest)
    with dest.open(encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("data-version:"):
                return line.split(":", 1)[1].strip()
            if line.startswith("["):
                break
    return "unknown"


def _stream_to(url: str, part: Path) -> None:
    """Append the rest of ``url`` to ``part``: asks for the missing bytes with Range and falls
    back to a full download when the server answers 200. A short body raises IncompleteRead
    (http.client checks Content-Length) with the bytes so far kept for the next try."""
    have = part.stat().st_size if part.is_file() else 0
    try:
        resp = _open(url, {"Range": f"bytes={have}-"} if have else None)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:
            return  # nothing left to fetch: the last run stopped after the final byte
        raise
    with resp:
        if have and resp.status != 206:
            have = 0  # server ignored Range: start over
        total = have + int(resp.headers.get("Content-Length") or 0) or None
        with (
            part.open("ab" if have else "wb") as fh,
            tqdm(
                total=total,
                initial=have,
                unit="B",
                unit_scale=True,
                desc=part.name[:-5],
                leave=False,
            ) as bar,
        ):
            while chunk := resp.read(1 << 20):
                fh.write(chunk)
                bar.update(len(chunk))
        if total is not None and part.stat().st_size != total:
            raise HTTPException(f"{url}: got {part.stat().st_size} of {total} bytes")


def _fetch_uniprot(url: str, dest: Path, retries: int) -> int:
    """Fetch every page of the UniProt search into ``dest`` (TSV); returns the entry count.

    Each finished page goes to ``<dest>.pages/NNNNNN.tsv`` and then the cursor of the next page
    to ``state.json`` (both atomic), so a killed fetch resumes at the first unfinished page.
    """
    if dest.is_file():  # written only after the checks below passed
        with dest.open(encoding="utf-8") as fh:
            return sum(1 for _ in fh) - 1
    pages = dest.with_name(dest.name + ".pages")
    state = _page_state(pages, url)
    with tqdm(desc="uniprot", unit="entry", initial=state["rows"], total=state["total"]) as bar:
        while state["next"]:
            page_url = state["next"]
            rows, next_url, total = _retrying(page_url, retries, lambda u=page_url: _get_page(u))
            state["pages"] += 1
            atomic_write_text(pages / f"{state['pages']:06d}.tsv", "".join(r + "\n" for r in rows))
            state.update(next=next_url, rows=state["rows"] + len(rows), total=total)
            atomic_write_text(pages / "state.json", json.dumps(state, indent=1))
            bar.total = total
            bar.update(len(rows))
    if state["total"] is not None and state["rows"] != state["total"]:
        raise UserError(
            f"{url}: got {state['rows']} entries but the server announced {state['total']} "
            f"(X-Total-Results); delete {pages} and rerun to fetch again"
        )
    _join_pages(pages, state["pages"], dest)
    shutil.rmtree(pages)
    return state["rows"]


def _page_state(pages: Path, url: str) -> dict:
    """The saved cursor state, or a fresh one when none is saved or it was for another URL."""
    try:
        state = json.loads((pages / "state.json").read_text())
        if state.get("start") == url:
            return state
    except (OSError, ValueError):
        pass
    shutil.rmtree(pages, ignore_errors=True)
    pages.mkdir(parents=True)
    return {"start": url, "next": url, "pages": 0, "rows": 0, "total": None}


def _get_page(url: str) -> tuple[list[str], str | None, int | None]:
    """One search page -> (TSV rows, URL of the next page, X-Total-Results). A truncated body
    raises IncompleteRead, a corrupt one ValueError: both are retried by the caller."""
    with _open(url) as resp:
        body = resp.read()
        link = resp.headers.get("Link", "")
        total = resp.headers.get("X-Total-Results")
    page = json.loads(body)
    if not isinstance(page, dict) or not isinstance(page.get("results"), list):
        raise ValueError(f"{url}: JSON without a 'results' list")
    m = re.search(r'<([^>]+)>\s*;\s*rel="?next"?', link)
    return (
        [_entry_row(e) for e in page["results"]],
        m.group(1) if m else None,
        int(total) if total else None,
    )


def _entry_row(entry: dict) -> str:
    """One UniProt JSON entry -> ``accession<TAB>sequence<TAB>GO:0005737 IDA; ...``."""
    try:
        acc = entry["primaryAccession"]
        seq = entry["sequence"]["value"]
    except (KeyError, TypeError) as err:
        raise ValueError(
            f"UniProt entry without accession or sequence: {str(entry)[:200]}"
        ) from err
    items = []
    for xref in entry.get("uniProtKBCrossReferences", []):
        if xref.get("database") != "GO":
            continue
        props = {p.get("key"): p.get("value", "") for p in xref.get("properties", [])}
        evidence = props.get("GoEvidenceType", "").split(":", 1)[0]  # "IDA:UniProtKB" -> IDA
        items.append(f"{xref['id']} {evidence}".rstrip())
    return f"{acc}\t{seq}\t{'; '.join(items)}"


def _join_pages(pages: Path, n_pages: int, dest: Path) -> None:
    """Concatenate the page files under a header into ``dest`` (atomically); an accession seen
    twice means the pagination went wrong."""
    seen: set[str] = set()
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(TSV_HEADER + "\n")
            for i in range(1, n_pages + 1):
                for line in (pages / f"{i:06d}.tsv").open(encoding="utf-8"):
                    acc = line.split("\t", 1)[0]
                    if acc in seen:
                        raise UserError(
                            f"{acc} appears twice in the UniProt pages; delete {pages} and rerun"
                        )
                    seen.add(acc)
                    out.write(line)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_uniprot_go_tsv(path: Path) -> tuple[dict[str, str], list[tuple[str, str, str]]]:
    """Read UniProt entries with GO annotations -> ({accession: sequence},
    [(accession, go_id, evidence)]).

    Reads the file :func:`fetch_web` writes (columns ``protein, sequence, go`` with items like
    ``GO:0005737 IDA``) and UniProt's own TSV download (columns ``Entry``, ``Sequence`` and
    ``Gene Ontology (GO)`` with items like ``cytoplasm [GO:0005737]``, or ``Gene Ontology IDs``),
    which has no evidence codes: their evidence is "". Items are separated by ``;``.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"UniProt GO table {path} not found (run `protgo data fetch --source web`)")
    sequences: dict[str, str] = {}
    annotations: list[tuple[str, str, str]] = []
    with path.open(encoding="utf-8") as fh:
        cols = _tsv_columns(path, fh.readline().rstrip("\n").split("\t"))
        for lineno, line in enumerate(fh, 2):
            fields = line.rstrip("\n").split("\t")
            if len(fields) <= max(cols):
                raise UserError(
                    f"{path}:{lineno}: expected {max(cols) + 1} tab-separated columns, "
                    f"got {len(fields)}"
                )
            acc, seq, go = (fields[c].strip() for c in cols)
            if not acc or not seq.isalpha():
                raise UserError(f"{path}:{lineno}: needs an accession and a sequence of letters")
            sequences[acc] = seq
            annotations += [(acc, g, e) for g, e in _go_items(go, path, lineno)]
    return sequences, annotations


def _tsv_columns(path: Path, header: list[str]) -> tuple[int, int, int]:
    """Column indices of accession, sequence and GO items, in our header or UniProt's."""
    names = (
        ("protein", "Entry"),
        ("sequence", "Sequence"),
        ("go", "Gene Ontology (GO)", "Gene Ontology IDs"),
    )
    found = [[i for i, h in enumerate(header) if h in options] for options in names]
    if not all(found):
        raise UserError(
            f"{path}:1: header needs columns protein/Entry, sequence/Sequence and "
            f"go/'Gene Ontology (GO)'; got {header}"
        )
    return found[0][0], found[1][0], found[2][0]


def _go_items(go: str, path: Path, lineno: int) -> Iterator[tuple[str, str]]:
    for item in filter(None, (s.strip() for s in go.split(";"))):
        m = GO_ID.search(item)
        if m is None:
            raise UserError(f"{path}:{lineno}: GO item without a GO id: {item!r}")
        rest = item[m.end() :].strip(" ]")
        yield m.group(0), rest if re.fullmatch(r"[A-Z]{2,4}", rest) else ""
