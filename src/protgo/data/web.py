"""The web source (``protgo data fetch --source web``, for users with internet): the current
``go-basic.obo`` and reviewed UniProt entries with their GO annotations and evidence codes,
through the UniProt REST API, resumable page by page. ``fetch.json`` is written last.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from http.client import HTTPException
from pathlib import Path

from protgo.data.ontology import parse_obo
from protgo.errors import UserError
from protgo.io import atomic_write_text, progress_bar

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
            parse_obo(part)  # an error when it holds no [Term] stanza (a web page, say)
        except UserError as err:
            part.unlink()  # a wrong file must not be resumed
            raise UserError(f"{url} did not send a GO ontology: {err}") from None
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
            progress_bar(
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
    with progress_bar(
        desc="uniprot", unit="entry", initial=state["rows"], total=state["total"]
    ) as bar:
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
