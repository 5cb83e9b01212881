"""The on-disk format of one residue-store shard: writing it atomically and checking it.

A shard ``<name>`` is ``shards/<name>.npy`` ((rows, D) fp16 residue vectors of many proteins,
concatenated), ``shards/<name>.mean.npy`` ((n, D) fp32 mean per protein) and
``shards/<name>.json`` (its entries and checksums), written last: a shard whose sidecar
exists is complete. Only the holder of ``shards/<name>.lock`` writes a shard, so two
processes embedding into one store never write the same files; temp files carry unique
names, and a killed writer's leftovers are removed by the next holder of the lock.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from protgo.encoders.protein import ProteinEncoder
from protgo.io import file_sha256, fsync_path, write_json
from protgo.stores.projection import Projection

log = logging.getLogger(__name__)


def shard_paths(root: Path, name: str) -> tuple[Path, Path, Path]:
    """(vectors, means, sidecar) of shard ``name``."""
    base = Path(root) / "shards" / name
    return Path(f"{base}.npy"), Path(f"{base}.mean.npy"), Path(f"{base}.json")


def lock_path(root: Path, name: str) -> Path:
    return Path(root) / "shards" / f"{name}.lock"


def check_shard(
    root: Path, name: str, info: Mapping, dim: int, deep: bool, mean_dim: int | None = None
) -> str | None:
    """None if the shard's files exist with the recorded shape (and, if deep, checksums);
    else what is wrong with them. ``mean_dim``: the means' width when residues are projected
    (default ``dim``)."""
    vectors, means, _ = shard_paths(root, name)
    for path, shape, key in (
        (vectors, (info["rows"], dim), "sha256"),
        (means, (info["n"], mean_dim or dim), "mean_sha256"),
    ):
        if not path.is_file():
            return f"shard file {path} is missing"
        try:
            arr = np.load(path, mmap_mode="r")
        except (ValueError, EOFError, OSError):  # shorter than its header says, or empty
            return f"shard file {path} is truncated"
        if arr.shape != tuple(shape):
            return f"shard file {path} has shape {arr.shape}, expected {tuple(shape)}"
        if deep and file_sha256(path) != info[key]:
            return f"shard file {path} fails its checksum (corrupt)"
    return None


def read_sidecar(root: Path, name: str) -> dict | None:
    """The shard's sidecar, or None when it is missing or unreadable (an incomplete shard)."""
    path = shard_paths(root, name)[2]
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def is_complete(root: Path, name: str, dim: int, mean_dim: int | None = None) -> bool:
    """Shard ``name`` was written and its files still match their checksums."""
    info = read_sidecar(root, name)
    if info is None:
        return False
    problem = check_shard(root, name, info, dim, deep=True, mean_dim=mean_dim)
    if problem:
        log.warning("residue store: %s; writing it again", problem)
    return problem is None


def remove_leftovers(root: Path, name: str) -> None:
    """Temp files of shard ``name`` left by a killed writer (call with its lock held)."""
    for tmp in (Path(root) / "shards").glob(f".{name}.*.tmp"):
        tmp.unlink(missing_ok=True)


def write_shard(
    root: Path, name: str, members: Sequence[tuple[str, str]], encoder: ProteinEncoder,
    batch_tokens: int, bar, projection: Projection | None = None,
) -> None:  # fmt: skip
    """Embed ``members`` ([(sequence hash, cleaned sequence)]) into temp files, then rename
    them and write the sidecar (last). Call with the shard's lock held. With ``projection``,
    residues are stored projected and the means are of the full vectors."""
    cleans = [c for _, c in members]
    lens = np.array([len(c) for c in cleans], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lens)[:-1]])
    final_vec, final_mean, sidecar = shard_paths(root, name)
    remove_leftovers(root, name)
    tmp_vec, tmp_mean = (_temp_name(root, name, ext) for ext in ("npy", "mean.npy"))
    try:
        # Written in place through a memmap: RAM holds one batch, not the shard.
        vec = np.lib.format.open_memmap(
            tmp_vec, mode="w+", dtype=np.float16,
            shape=(int(lens.sum()), projection.dim if projection else encoder.dim),
        )  # fmt: skip
        with open(tmp_vec, "r+b") as fh:  # reserve the blocks now: a full disk is ENOSPC here,
            os.posix_fallocate(fh.fileno(), 0, os.fstat(fh.fileno()).st_size)  # not a SIGBUS
        sums = np.zeros((len(cleans), encoder.dim), dtype=np.float64)  # (n, D) for the means
        for idx, seg, v in encoder.embed_batched(cleans, batch_tokens, progress=bar):
            v = v.numpy()  # (hi - lo, D) fp32
            vec[offsets[idx] + seg.lo : offsets[idx] + seg.hi] = (
                projection.apply(v) if projection else v
            )
            sums[idx] += v.sum(axis=0, dtype=np.float64)
        vec.flush()
        del vec
        with open(tmp_mean, "wb") as fh:
            np.save(fh, (sums / lens[:, None]).astype(np.float32))
        info = {"rows": int(lens.sum()), "n": len(cleans)}
        for tmp, final, key in ((tmp_vec, final_vec, "sha256"), (tmp_mean, final_mean,
                                                                   "mean_sha256")):  # fmt: skip
            fsync_path(tmp)
            info[key] = file_sha256(tmp)
            os.replace(tmp, final)
    finally:
        tmp_vec.unlink(missing_ok=True)
        tmp_mean.unlink(missing_ok=True)
    rows = offsets.tolist()
    info["entries"] = [[h, rows[i], len(c), i] for i, (h, c) in enumerate(members)]
    write_json(sidecar, info)


def _temp_name(root: Path, name: str, ext: str) -> Path:
    fd, tmp = tempfile.mkstemp(dir=Path(root) / "shards", prefix=f".{name}.", suffix=f".{ext}.tmp")
    os.close(fd)
    return Path(tmp)
