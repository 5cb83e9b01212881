"""Data sources: the web fetch against a local HTTP server (never the internet), the Debian
layout checks on small hand-made files, and the real fetched Debian data."""

from __future__ import annotations

import json
import sqlite3
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from protgo.data import debian
from protgo.data import web as websrc
from protgo.errors import UserError

WEB = Path(__file__).parent / "fixtures" / "web"
SEARCH = "/uniprotkb/search?query=reviewed%3Atrue&fields=accession%2Csequence%2Cgo&format=json"


class _Handler(BaseHTTPRequestHandler):
    """Serves go-basic.obo (with Range) and two UniProt search pages linked by a cursor.
    ``server.faults`` maps 'obo', 'page1', 'page2' to 'truncate' (fewer bytes than
    Content-Length, then close), 'corrupt' (cut JSON, honest length) or 'html'."""

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        srv = self.server
        srv.requests.append((self.path, dict(self.headers)))
        url = urlsplit(self.path)
        if url.path == "/ontology/go-basic.obo":
            self._send("obo", (WEB / "go-basic.obo").read_bytes(), "text/plain", {})
        elif url.path == "/uniprotkb/search":
            second = parse_qs(url.query).get("cursor") == ["c2"]
            headers = {"X-Total-Results": str(srv.total)}
            if not second:
                next_url = f"http://127.0.0.1:{srv.server_port}{SEARCH}&cursor=c2"
                headers["Link"] = f'<{next_url}>; rel="next"'
            name = "page2" if second else "page1"
            body = (WEB / f"uniprot_{name}.json").read_bytes()
            self._send(name, body, "application/json", headers)
        else:
            self.send_error(404)

    def _send(self, name: str, body: bytes, ctype: str, headers: dict[str, str]) -> None:
        fault = self.server.faults.get(name)
        if fault == "html":
            body = b"<html><body>Service unavailable</body></html>\n"
        if fault == "corrupt":
            body = body[: len(body) // 2]
        start = 0
        rng = self.headers.get("Range")
        if rng and name == "obo":
            start = int(rng.removeprefix("bytes=").rstrip("-"))
        self.send_response(206 if start else 200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body) - start))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        cut = (len(body) + start) // 2 if fault == "truncate" else len(body)
        self.wfile.write(body[start:cut])
        self.close_connection = True


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.requests, srv.faults, srv.total = [], {}, 5
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _fetch(srv, data_dir: Path) -> websrc.WebPaths:
    base = f"http://127.0.0.1:{srv.server_port}"
    return websrc.fetch_web(
        data_dir, go_url=f"{base}/ontology/go-basic.obo", uniprot_url=base + SEARCH, retries=1
    )


def test_fetch_web_writes_verified_files_once(server, tmp_path):
    paths = _fetch(server, tmp_path)
    assert paths.root == tmp_path / "raw" / "web"
    assert paths.go_obo.read_bytes() == (WEB / "go-basic.obo").read_bytes()
    seqs, ann = websrc.read_uniprot_go_tsv(paths.uniprot_tsv)
    assert list(seqs) == ["P31946", "P62258", "Q04917", "P61981", "P31947"]
    assert seqs["P61981"] == "MVDREQLVQKARLAEQAERYDDMAAAMKNVTEL"
    assert ("P31946", "GO:0005737", "IDA") in ann
    assert ("P31946", "GO:0006468", "IEA") in ann
    assert ("Q04917", "GO:0005524", "") in ann  # no GoEvidenceType property
    assert len(ann) == 8
    record = json.loads((paths.root / "fetch.json").read_text())
    assert record["go_data_version"] == "releases/2024-01-17"
    assert record["uniprot_entries"] == 5
    assert not list(paths.root.glob("*.pages")) and not list(paths.root.glob("*.part"))
    assert websrc.web_paths(tmp_path) == paths
    # a finished fetch is not fetched again
    server.requests.clear()
    _fetch(server, tmp_path)
    assert server.requests == []


def test_web_sources_keep_experimental_evidence_unless_asked(server, tmp_path):
    from protgo.data.sources import web_sources

    paths = _fetch(server, tmp_path)
    exp = web_sources(paths, all_evidence=False)
    assert ("P31946", "GO:0005737", "IDA") in exp.rows
    assert all(ev not in ("IEA", "") for _, _, ev in exp.rows)
    assert "releases/2024-01-17" in exp.provenance["go_source"]
    every = web_sources(paths, all_evidence=True)
    assert len(every.rows) == 8 and set(exp.rows) < set(every.rows)
    assert len(every.sequences) == 5 and {t.id for t in every.terms} >= {"GO:0005737"}


def test_truncated_page_fails_then_resumes_at_that_page(server, tmp_path):
    server.faults["page2"] = "truncate"
    with pytest.raises(UserError, match="rerun"):
        _fetch(server, tmp_path)
    web = tmp_path / "raw" / "web"
    state = json.loads((web / "uniprot_sprot_go.tsv.pages" / "state.json").read_text())
    assert state["pages"] == 1 and state["rows"] == 3 and "cursor=c2" in state["next"]
    assert not (web / "uniprot_sprot_go.tsv").exists() and not (web / "fetch.json").exists()
    server.faults.clear()
    server.requests.clear()
    paths = _fetch(server, tmp_path)
    # only the unfinished page is asked for: the OBO and page 1 were kept
    assert [urlsplit(p).query.endswith("cursor=c2") for p, _ in server.requests] == [True]
    assert len(websrc.read_uniprot_go_tsv(paths.uniprot_tsv)[0]) == 5


def test_truncated_obo_resumes_with_range(server, tmp_path):
    server.faults["obo"] = "truncate"
    with pytest.raises(UserError, match="go-basic.obo failed"):
        _fetch(server, tmp_path)
    part = tmp_path / "raw" / "web" / "go-basic.obo.part"
    full = (WEB / "go-basic.obo").read_bytes()
    assert 0 < part.stat().st_size < len(full)
    server.faults.clear()
    server.requests.clear()
    paths = _fetch(server, tmp_path)
    assert server.requests[0][1]["Range"] == f"bytes={len(full) // 2}-"
    assert paths.go_obo.read_bytes() == full


@pytest.mark.parametrize("fault", ["corrupt", "html"])
def test_corrupt_page_is_detected(server, tmp_path, fault):
    server.faults["page1"] = fault
    with pytest.raises(UserError, match="JSONDecodeError"):
        _fetch(server, tmp_path)
    assert not (tmp_path / "raw" / "web" / "fetch.json").exists()


def test_non_obo_response_is_rejected_and_not_resumed(server, tmp_path):
    server.faults["obo"] = "html"
    with pytest.raises(UserError, match="did not send a GO ontology.*no \\[Term\\] stanza"):
        _fetch(server, tmp_path)
    assert not (tmp_path / "raw" / "web" / "go-basic.obo.part").exists()


def test_row_count_must_match_total_results(server, tmp_path):
    server.total = 6
    with pytest.raises(UserError, match="got 5 entries but the server announced 6"):
        _fetch(server, tmp_path)


def test_read_uniprot_native_tsv_and_bad_rows(tmp_path):
    seqs, ann = websrc.read_uniprot_go_tsv(WEB / "uniprot_native.tsv")
    assert seqs["P62258"] == "MDDREDLVYQAKLAE" and "Q04917" in seqs
    assert ann == [
        ("P31946", "GO:0005737", ""),
        ("P31946", "GO:0006468", ""),
        ("P62258", "GO:0005524", ""),
    ]
    bad = tmp_path / "bad.tsv"
    bad.write_text("protein\tsequence\tgo\nP1\tMKV\tGO:0005737 IDA\nP2\tMKV\tcytoplasm\n")
    with pytest.raises(UserError, match=r"bad.tsv:3: GO item without a GO id"):
        websrc.read_uniprot_go_tsv(bad)
    bad.write_text("id\tseq\n")
    with pytest.raises(UserError, match=r"bad.tsv:1: header needs"):
        websrc.read_uniprot_go_tsv(bad)


def _fake_debian_root(root: Path) -> dict[str, int]:
    """The files verify_debian looks at, tiny: real SQLite files with the needed tables."""
    for rels in debian.DEBIAN_PACKAGES.values():
        for rel in rels:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            if rel not in debian.SQLITE_TABLES:
                (root / rel).write_bytes(b"x" * 10)
    for rel, tables in debian.SQLITE_TABLES.items():
        with sqlite3.connect(root / rel) as con:
            for t in tables:
                con.execute(f"CREATE TABLE {t} (_id INTEGER)")
            if "metadata" in tables:
                con.execute("DROP TABLE metadata")
                con.execute("CREATE TABLE metadata (name TEXT, value TEXT)")
                con.execute("INSERT INTO metadata VALUES ('GOSOURCEDATE', '2022-07-01')")
        con.close()
    return {r: (root / r).stat().st_size for rels in debian.DEBIAN_PACKAGES.values() for r in rels}


def test_verify_debian_catches_missing_tables_and_changed_sizes(tmp_path):
    sizes = _fake_debian_root(tmp_path)
    debian.verify_debian(tmp_path, sizes)
    annot = tmp_path / debian.METASTUDENT_DIR / "CCO" / "goasp_annot.dat"
    annot.write_bytes(b"x" * 5)
    with pytest.raises(UserError, match="goasp_annot.dat is missing or not 10 bytes"):
        debian.verify_debian(tmp_path, sizes)
    annot.write_bytes(b"")
    with pytest.raises(UserError, match="goasp_annot.dat is missing or empty"):
        debian.verify_debian(tmp_path)
    annot.write_bytes(b"x" * 10)
    with sqlite3.connect(tmp_path / debian.ORGHS_SQLITE) as con:
        con.execute("DROP TABLE uniprot")
    con.close()
    with pytest.raises(UserError, match=r"lacks tables \['uniprot'\]"):
        debian.verify_debian(tmp_path)


def test_debian_paths_and_fetch_without_apt(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="run `protgo data fetch`"):
        debian.debian_paths(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    with pytest.raises(UserError, match="needs a Debian/Ubuntu machine with apt"):
        debian.fetch_debian(tmp_path)
    # a finished fetch needs no apt: it is only verified again
    base = tmp_path / "raw" / "debian"
    sizes = _fake_debian_root(base / "root")
    (base / "fetch.json").write_text(json.dumps({"files": sizes}))
    assert debian.fetch_debian(tmp_path) == debian.debian_paths(tmp_path)


def test_real_debian_layout(real_data_dir):
    paths = debian.debian_paths(real_data_dir)
    record = json.loads((paths.root.parent / "fetch.json").read_text())
    debian.verify_debian(paths.root, record["files"])
    assert record["packages"]["r-bioc-go.db"]["version"] == "3.16.0-1"
    assert record["packages"]["metastudent-data"]["version"] == "2.0.1-8"
    assert record["go_source_date"] == "2022-07-01"
    assert paths.go_sqlite.stat().st_size > 50e6 and paths.orghs_sqlite.stat().st_size > 200e6
    for aspect in ("BPO", "CCO", "MFO"):
        assert (paths.metastudent_dir / aspect / "goasp.fasta.psq").stat().st_size > 100e6
