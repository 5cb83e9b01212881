"""File I/O every layer shares: atomic writes (temp file, fsync, rename), reading text that
may be gzip-compressed, sha256 of a file, exclusive locks, JSON Lines that tolerate a torn
last line, and progress bars (silent under ``protgo -q``).

Nothing here imports another protgo module but :mod:`protgo.errors`.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from protgo.errors import UserError

QUIET = "PROTGO_QUIET"  # set to 1 by `protgo -q`: no progress bars


def progress_bar(*args, **kwargs):
    """A tqdm progress bar (on stderr), or a silent one under ``protgo -q``."""
    from tqdm import tqdm

    if os.environ.get(QUIET) == "1":
        kwargs["disable"] = True
    return tqdm(*args, **kwargs)


def check_output_path(path: Path, what: str, folder: bool = False) -> Path:
    """``path`` if it can be written: no regular file sits where one of its folders (or,
    with ``folder``, the path itself) should be. ``what`` names the input in the error."""
    path = Path(path).expanduser()
    for p in ((path,) if folder else ()) + tuple(path.parents):
        if p.exists() and not p.is_dir():
            raise UserError(f"{what} {path}: {p} is a file, not a folder; choose another path")
    return path


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write(fh)`` on a temp file beside ``path``, fsync, then rename it over ``path``:
    a crash never leaves half a file, and a reader sees the old file or the new one."""
    path = Path(path)
    check_output_path(path, "output file")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file normal permissions
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def staged_dir(final: Path) -> Iterator[Path]:
    """A new folder beside ``final`` to fill; when the block ends without an error it is
    renamed to ``final`` (which must be missing or an empty folder), else removed: a reader
    sees the whole folder or none of it."""
    import shutil

    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}-"))
    try:
        yield stage
        if final.exists():
            final.rmdir()
        stage.rename(final)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def write_json(path: Path, data, indent: int | None = None) -> None:
    """JSON, atomically; compact unless ``indent`` is given."""
    seps = None if indent is not None else (",", ":")
    text = json.dumps(data, indent=indent, sort_keys=indent is None, separators=seps)
    atomic_write_text(path, text + "\n")


def open_text(path: Path) -> IO[str]:
    """A text file for reading, gunzipped on the fly when it starts with gzip's magic bytes
    (whatever its name), so ``.fasta.gz``, ``.obo.gz`` and ``.tsv.gz`` read like plain files."""
    path = Path(path)
    with path.open("rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return path.open(encoding="utf-8")


def iter_text_lines(path: Path, what: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, line) of a text file that may be gzipped; unreadable bytes end
    in one error naming the file."""
    try:
        with open_text(path) as fh:
            yield from enumerate(fh, 1)
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError) as exc:
        raise UserError(
            f"{what} {path} is not readable text ({type(exc).__name__}: {exc}); give a plain "
            "or gzip-compressed UTF-8 file"
        ) from None


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(8 << 20):
            h.update(block)
    return h.hexdigest()


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def file_lock(path: Path, blocking: bool = True) -> Iterator[bool]:
    """An exclusive ``flock`` on ``path`` (created if needed), released on exit; yields
    whether it was taken (always True when ``blocking``). The kernel drops the lock when the
    holder dies, so a killed process never leaves a stale lock."""
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def read_jsonl(path: Path) -> tuple[list[dict], bool]:
    """(records, torn): the lines of a JSON Lines file; a last line that does not parse (a
    write cut by a crash or a full disk) is dropped and reported as ``torn``. A bad line
    anywhere else is an error naming the file and line."""
    lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    rows, torn = [], False
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if any(rest.strip() for rest in lines[i:]):
                raise UserError(
                    f"{path}:{i}: not a JSON record; the file is damaged (restore it or "
                    "remove the line)"
                ) from None
            torn = True
    return rows, torn


def truncate_jsonl(path: Path, step: int) -> bool:
    """Keep the records of a JSON Lines log up to ``step`` (a resumed run redoes the rest),
    rewritten atomically; returns whether a torn last line was dropped."""
    rows, torn = read_jsonl(path)
    keep = [json.dumps(r, default=float) for r in rows if r.get("step", 0) <= step]
    atomic_write_text(path, "".join(f"{line}\n" for line in keep))
    return torn
