"""The Debian source (``protgo data fetch``, the offline-friendly default): ``apt-get
download`` + ``dpkg-deb -x`` of GO.db, org.Hs.eg.db and metastudent-data into
``<data_dir>/raw/debian/root/`` (never ``apt-get install``, which would pull hundreds of R
packages). docs/data.md says what each package holds. ``fetch.json`` is written last and
atomically: its presence means the fetch finished and was verified; a second run only
re-verifies (seconds).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from protgo.data import godb
from protgo.errors import UserError
from protgo.io import atomic_write_text, progress_bar

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
    for package in progress_bar(DEBIAN_PACKAGES, desc="unpack", unit="pkg"):
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
