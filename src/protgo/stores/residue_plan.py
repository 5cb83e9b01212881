"""The embedding plan of a residue store run: which sequences go to which shard, writing one
shard atomically, and merging a finished plan into the manifest.

The plan depends only on the request and on ``manifest.json`` (which changes only at a merge),
so every rank and every restart of a killed run computes the same plan, shard names included.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from protgo.encoders.protein import ProteinEncoder, sequence_hash

if TYPE_CHECKING:
    from protgo.stores.residues import ESMResidueStore


@dataclass(frozen=True)
class Plan:
    plan_id: str
    shards: list[list[tuple[str, str]]]  # per shard: [(sequence hash, cleaned sequence)]

    def name(self, k: int) -> str:
        return f"{self.plan_id}-{k:05d}"

    def sidecar(self, root: Path, k: int) -> Path:
        return root / "shards" / f"{self.name(k)}.json"

    def is_complete(self, root: Path, k: int, dim: int) -> bool:
        """Shard ``k`` was written and its files still match their checksums."""
        from protgo.stores.residues import check_shard

        side = self.sidecar(root, k)
        if not side.is_file():
            return False
        problem = check_shard(root, self.name(k), json.loads(side.read_text()), dim, deep=True)
        if problem:
            print(f"residue store: {problem}; writing it again")
        return problem is None


def make_plan(store: ESMResidueStore, cleans: dict[str, str], shard_bytes: int) -> Plan:
    """Sequences not in the manifest, unique, sorted by (length, hash), cut into shards of at
    most ``shard_bytes`` of fp16 vectors (a longer protein gets a shard of its own)."""
    store.reload()
    todo = {sequence_hash(c): c for c in cleans.values()}
    order = sorted((h for h in todo if h not in store.entries), key=lambda h: (len(todo[h]), h))
    max_rows = max(1, shard_bytes // (2 * store.dim))
    shards: list[list[tuple[str, str]]] = []
    rows = max_rows
    for h in order:
        if rows + len(todo[h]) > max_rows:
            shards.append([])
            rows = 0
        shards[-1].append((h, todo[h]))
        rows += len(todo[h])
    digest = hashlib.blake2b("\n".join(order).encode(), digest_size=6).hexdigest()
    return Plan(digest, shards)


def write_shard(root: Path, plan: Plan, k: int, encoder: ProteinEncoder, batch_tokens: int, bar):
    """Embed shard ``k`` into temp files, then rename them and write the sidecar (last)."""
    name, members = plan.name(k), plan.shards[k]
    cleans = [c for _, c in members]
    lens = np.array([len(c) for c in cleans], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lens)[:-1]])
    base = root / "shards" / name
    tmp_vec, tmp_mean = Path(f"{base}.npy.tmp"), Path(f"{base}.mean.npy.tmp")
    # Written in place through a memmap: RAM holds one batch, not the shard.
    vec = np.lib.format.open_memmap(
        tmp_vec, mode="w+", dtype=np.float16, shape=(int(lens.sum()), encoder.dim)
    )
    sums = np.zeros((len(cleans), encoder.dim), dtype=np.float64)  # (n, D) for the means
    for idx, seg, v in encoder.embed_batched(cleans, batch_tokens, progress=bar):
        v = v.numpy()  # (hi - lo, D) fp32
        vec[offsets[idx] + seg.lo : offsets[idx] + seg.hi] = v
        sums[idx] += v.sum(axis=0, dtype=np.float64)
    vec.flush()
    del vec
    with open(tmp_mean, "wb") as fh:
        np.save(fh, (sums / lens[:, None]).astype(np.float32))
    info = {"rows": int(lens.sum()), "n": len(cleans)}
    for tmp, key in ((tmp_vec, "sha256"), (tmp_mean, "mean_sha256")):
        _fsync(tmp)
        info[key] = _sha256(tmp)
        os.replace(tmp, str(tmp)[: -len(".tmp")])
    rows = offsets.tolist()
    info["entries"] = [[h, rows[i], len(c), i] for i, (h, c) in enumerate(members)]
    _atomic_json(plan.sidecar(root, k), info)


def merge_plan(store: ESMResidueStore, plan: Plan, cleans: dict[str, str]) -> bool:
    """Add the plan's shards and the request's proteins to the manifest, once every shard of
    the plan is written (by any rank). Returns whether it merged."""
    with store.locked():
        store.reload()
        if not all(plan.sidecar(store.root, k).is_file() for k in range(len(plan.shards))):
            return False  # other ranks still embedding; the last to finish merges
        for k in range(len(plan.shards)):
            info = json.loads(plan.sidecar(store.root, k).read_text())
            entries = info.pop("entries")
            store.shards[plan.name(k)] = info
            for h, row, length, mean_row in entries:
                store.entries[h] = [plan.name(k), row, length, mean_row]
        store.proteins.update({pid: sequence_hash(c) for pid, c in cleans.items()})
        store.write_manifest()
    return True


def _sha256(path: Path) -> str:
    from protgo.stores.residues import file_sha256

    return file_sha256(path)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_json(path: Path, data) -> None:
    from protgo.data.ontology import atomic_write_text

    atomic_write_text(path, json.dumps(data, sort_keys=True, separators=(",", ":")) + "\n")
