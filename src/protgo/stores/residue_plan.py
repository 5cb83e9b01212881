"""The embedding plan of a residue store run: which sequences go to which shard, and merging
a finished plan into the manifest. Pure functions of the request and the manifest.

The plan depends only on the request and on ``manifest.json`` (which changes only at a merge),
so every rank, every restart of a killed run and every concurrent run on the same store
computes the same plan, shard names included.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from protgo.data.sequence import sequence_hash
from protgo.stores.shards import read_sidecar


@dataclass(frozen=True)
class Plan:
    plan_id: str
    shards: list[list[tuple[str, str]]]  # per shard: [(sequence hash, cleaned sequence)]

    def name(self, k: int) -> str:
        return f"{self.plan_id}-{k:05d}"


def make_plan(
    entries: Mapping[str, list], cleans: Mapping[str, str], dim: int, shard_bytes: int
) -> Plan:
    """Sequences not in ``entries`` (the manifest's), unique, sorted by (length, hash), cut
    into shards of at most ``shard_bytes`` of fp16 vectors (a longer protein gets a shard of
    its own)."""
    todo = {sequence_hash(c): c for c in cleans.values()}
    order = sorted((h for h in todo if h not in entries), key=lambda h: (len(todo[h]), h))
    max_rows = max(1, shard_bytes // (2 * dim))
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


def merge_into(manifest: dict, root: Path, plan: Plan, cleans: Mapping[str, str]) -> bool:
    """Add the plan's shards and the request's proteins to ``manifest`` (in place) when every
    shard of the plan is written (by any process); returns whether it did."""
    infos = [read_sidecar(root, plan.name(k)) for k in range(len(plan.shards))]
    if any(info is None for info in infos):
        return False  # other ranks still embedding; the last to finish merges
    for k, info in enumerate(infos):
        entries = info.pop("entries")
        manifest["shards"][plan.name(k)] = info
        for h, row, length, mean_row in entries:
            manifest["entries"][h] = [plan.name(k), row, length, mean_row]
    manifest["proteins"].update({pid: sequence_hash(c) for pid, c in cleans.items()})
    return True
