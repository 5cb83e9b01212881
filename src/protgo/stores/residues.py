"""ResidueStore: every residue of every protein embedded once, in fp16 memory-mapped shards.

Layout of ``<data_dir>/stores/residues/<key>/`` (the key names model, weights fingerprint,
layer, window and dtype, so a changed model or setting gets a new directory, never stale
vectors)::

    store.json              settings the vectors depend on (see ProteinEncoder.settings), and
                            ``project_dim`` when residues are stored projected
    projection.npz / .json  the PCA projection of a projected store (stores.projection), fitted
                            on a sample of the first run's proteins before any shard
    manifest.json           shards {name: rows, sha256s}; entries {seq hash: [shard, row, L,
                            mean row]}; proteins {pid: seq hash}
    shards/<name>.npy       (rows, D) fp16 residue vectors of many proteins, concatenated
                            (D: ``project_dim`` if set, else the model's dim)
    shards/<name>.mean.npy  (n, dim) fp32 mean-pooled vector per protein (for the baselines),
                            always of the full vectors
    shards/<name>.json      the shard's entries and checksums; written last, so it marks the
                            shard as complete
    shards/<name>.lock      held by the one process writing the shard (see stores.shards)

A run plans the missing sequences (sorted by length, cut into shards of about ``shard_bytes``)
from ``manifest.json``, which only changes when a run is merged. So a killed run, restarted,
makes the same plan, skips the shards it completed and ends with the same files; and ranks
launched by ``torchrun`` make the same plan and each write shards ``k % world_size == rank``.
The rank that finds every shard of the plan complete merges them into the manifest.
Two runs started on the same store (by mistake or on purpose) make the same plan too and
split it: each shard is written by whichever run takes its lock first, the other waits for
the shards it could not take and merges when all are complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from protgo.data.sequence import clean_sequence, sequence_hash
from protgo.encoders.protein import ProteinEncoder, embed_arrays
from protgo.encoders.registry import describe_model
from protgo.errors import UserError
from protgo.io import atomic_write_text, file_lock, progress_bar, write_json
from protgo.stores.projection import Projection, resolve_project_dim, sample_for_fit
from protgo.stores.residue_plan import Plan, make_plan, merge_into
from protgo.stores.shards import (
    check_shard,
    is_complete,
    lock_path,
    read_sidecar,
    shard_paths,
    write_shard,
)

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


def store_key(settings: Mapping) -> str:
    """Directory name: readable model/layer/window/reduction parts plus a hash of all
    settings."""
    blob = json.dumps({"format": FORMAT_VERSION, **settings}, sort_keys=True)
    digest = hashlib.blake2b(blob.encode(), digest_size=5).hexdigest()
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(str(settings["model"])).name)[:40] or "model"
    s = settings
    reduced = f"-p{s['project_dim']}" if s.get("project_dim") else ""
    return f"{slug}-l{s['layer']}-w{s['win_size']}s{s['win_stride']}-{s['dtype']}{reduced}-{digest}"


def store_settings(encoder_settings: Mapping, project_dim: int | str | None) -> dict:
    """The store's settings: the encoder's, plus ``project_dim`` when residues are stored
    projected (``residues.project_dim``; "auto" projects models wider than 1024 dims)."""
    k = resolve_project_dim(project_dim, int(encoder_settings["dim"]))
    return {**encoder_settings, "project_dim": k} if k else dict(encoder_settings)


def store_dir(data_dir: Path, settings: Mapping) -> Path:
    return Path(data_dir) / "stores" / "residues" / store_key(settings)


@dataclass
class EmbedReport:
    proteins: int  # proteins requested
    planned_shards: int  # shards in this run's plan (all ranks)
    written_shards: int  # shards this call wrote
    residues: int  # residues this call embedded
    seconds: float
    merged: bool  # whether this call merged the plan into the manifest


class DamagedManifest(UserError):
    """An unreadable ``manifest.json``: `protgo embed residues` rebuilds it."""

    def __init__(self, what: str):
        self.what = what
        super().__init__(f"{what}: run `protgo embed residues` again to rebuild it from the "
                         "shards (their vectors are kept)")  # fmt: skip


def rebuild_manifest(root: Path) -> None:
    """A manifest holding every shard whose sidecar is readable (embed then checks each one's
    checksums). Protein ids are not in the sidecars: they come back as the proteins are
    embedded again, each found by its sequence without being computed again."""
    manifest: dict = {"shards": {}, "entries": {}, "proteins": {}}
    with file_lock(Path(root) / ".lock"):  # the lock of ResidueStore.locked
        for sidecar in sorted((Path(root) / "shards").glob("*.json")):
            info = read_sidecar(root, sidecar.stem)
            if info is None:
                continue
            for h, row, length, mean_row in info.pop("entries"):
                manifest["entries"][h] = [sidecar.stem, row, length, mean_row]
            manifest["shards"][sidecar.stem] = info
        write_json(Path(root) / "manifest.json", manifest)


class ResidueStore:
    """Read side: ``get(pid)`` -> (L, D) fp16 without loading whole shards; write side:
    ``embed(encoder, sequences)``."""

    def __init__(self, root: Path, verify: str = "checksum"):
        """Open an existing store. ``verify``: "checksum" hashes each shard the first time it
        is read in this process; "size" only checks its shape (faster, misses bit flips)."""
        self.root = Path(root)
        if not (self.root / "store.json").is_file():
            raise UserError(f"{self.root} is not a residue store; run `protgo embed residues`")
        try:
            self.settings = json.loads((self.root / "store.json").read_text())
        except ValueError as exc:
            raise UserError(
                f"{self.root / 'store.json'} is damaged ({exc}): delete the store {self.root} "
                "and run `protgo embed residues` again"
            ) from None
        self.mean_dim = int(self.settings["dim"])  # the model's width (the means')
        self.dim = int(self.settings.get("project_dim") or self.mean_dim)  # stored residues'
        self._projection: Projection | None = None
        self.verify_mode = verify
        self._maps: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.reload()

    # ----- opening -----
    @classmethod
    def create(cls, data_dir: Path, settings: Mapping, **kw) -> ResidueStore:
        """The store for these settings under ``data_dir``, made empty if it does not exist."""
        root = store_dir(data_dir, settings)
        (root / "shards").mkdir(parents=True, exist_ok=True)
        meta = root / "store.json"
        text = json.dumps(dict(settings), indent=1, sort_keys=True) + "\n"
        if not meta.is_file():
            atomic_write_text(meta, text)
        elif json.loads(meta.read_text()) != dict(settings):
            raise UserError(f"{meta} holds other settings than requested; remove {root}")
        if not (root / "manifest.json").is_file():
            write_json(root / "manifest.json", {"shards": {}, "entries": {}, "proteins": {}})
        try:
            return cls(root, **kw)
        except DamagedManifest as exc:
            log.warning("%s; rebuilding it from the shards' own records", exc.what)
            rebuild_manifest(root)
            return cls(root, **kw)

    @classmethod
    def for_encoder(cls, data_dir: Path, encoder, **kw) -> ResidueStore:
        """The store ``encoder`` (with its ``residues`` config) writes into, made if new."""
        return cls.create(data_dir, store_settings(encoder.settings(), encoder.cfg.project_dim),
                          **kw)  # fmt: skip

    @classmethod
    def for_config(cls, cfg, data_dir: Path, **kw) -> ResidueStore:
        """The store of a ``ResiduesConfig`` without loading the model (only its files)."""
        root = store_dir(data_dir, store_settings(describe_model(cfg)[1], cfg.project_dim))
        if not (root / "manifest.json").is_file():
            # Same model name, layer and window but another digest: other weights or input.
            prefix = root.name.rsplit("-", 1)[0]
            others = [d.name for d in root.parent.glob(prefix + "-*") if d != root]
            why = (
                f" (stores {', '.join(sorted(others))} hold this model name with other weights "
                "or settings: the model changed since it was embedded)"
                if others
                else ""
            )
            raise UserError(
                f"no residue store for model '{cfg.model}' with these settings at {root}{why}; "
                "run `protgo embed residues` first"
            )
        return cls(root, **kw)

    def reload(self) -> None:
        """Re-read the manifest (after a merge by this or another process)."""
        path = self.root / "manifest.json"
        try:
            m = json.loads(path.read_text())
            self.shards: dict[str, dict] = m["shards"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DamagedManifest(f"residue store manifest {path} is damaged "
                                  f"({type(exc).__name__}: {exc})") from None  # fmt: skip
        self.entries: dict[str, list] = m["entries"]
        self.proteins: dict[str, str] = m["proteins"]
        self._maps.clear()

    # ----- reading -----
    def __contains__(self, pid: str) -> bool:
        return pid in self.proteins and self.proteins[pid] in self.entries

    def __len__(self) -> int:
        return sum(1 for p in self.proteins if p in self)

    def ids(self) -> list[str]:
        return sorted(p for p in self.proteins if p in self)

    def length(self, pid: str) -> int:
        return int(self._entry(pid)[2])

    def get(self, pid: str) -> np.ndarray:
        """(L, D) fp16 residue vectors of ``pid``; reads only its rows from the shard."""
        shard, row, length, _ = self._entry(pid)
        vectors, _ = self._open(shard)
        return np.array(vectors[row : row + length])

    def get_sequence(self, seq: str) -> np.ndarray | None:
        """Vectors of a sequence by content (None if it was never embedded)."""
        h = sequence_hash(clean_sequence("query", seq))
        if h not in self.entries:
            return None
        shard, row, length, _ = self.entries[h]
        return np.array(self._open(shard)[0][row : row + length])

    def mean(self, pid: str) -> np.ndarray:
        """(D,) fp32 mean of ``pid``'s residue vectors (computed from fp32, before rounding)."""
        shard, _, _, mean_row = self._entry(pid)
        return np.array(self._open(shard)[1][mean_row])

    def means(self, pids: Iterable[str]) -> np.ndarray:
        """(N, D) fp32 mean vectors, in the order of ``pids``."""
        rows = [self.mean(p) for p in pids]
        return np.stack(rows) if rows else np.zeros((0, self.mean_dim), dtype=np.float32)

    def _entry(self, pid: str) -> list:
        if pid not in self:
            raise UserError(
                f"protein '{pid}' is not in the residue store {self.root}; "
                "run `protgo embed residues` for its dataset"
            )
        return self.entries[self.proteins[pid]]

    def _open(self, shard: str) -> tuple[np.ndarray, np.ndarray]:
        if shard not in self._maps:
            info = self.shards[shard]
            problem = check_shard(self.root, shard, info, self.dim, False, self.mean_dim)
            if problem is None and self.verify_mode == "checksum":
                problem = _verified_once(self.root, shard, info, self.dim, self.mean_dim)
            if problem:
                raise UserError(
                    f"residue store {self.root}: {problem}; run `protgo embed residues` "
                    "again to re-embed it"
                )
            vectors, means, _ = shard_paths(self.root, shard)
            self._maps[shard] = (
                np.load(vectors, mmap_mode="r"),  # (rows, D) fp16, paged in on demand
                np.load(means, mmap_mode="r"),  # (n, D) fp32
            )
        return self._maps[shard]

    def verify(self, deep: bool = True) -> dict[str, str]:
        """{shard: problem} for every manifest shard that is missing, truncated or corrupt."""
        bad = {}
        for name, info in self.shards.items():
            problem = check_shard(self.root, name, info, self.dim, deep, self.mean_dim)
            if problem:
                bad[name] = problem
        return bad

    # ----- writing -----
    def embed(
        self,
        encoder: ProteinEncoder,
        sequences: Mapping[str, str],
        batch_tokens: int | None = None,
        rank: int = 0,
        world_size: int = 1,
        shard_bytes: int = 256 << 20,
        progress: bool = True,
    ) -> EmbedReport:
        """Embed every sequence not yet stored; see the module docstring for resume and ranks.

        Every stored shard is checked against its checksum first (reads the whole store once),
        so vectors of a corrupt shard are embedded again rather than kept."""
        own = {k: v for k, v in self.settings.items() if k != "project_dim"}
        if encoder.settings() != own:
            raise UserError(f"encoder settings differ from store {self.root}'s store.json")
        if not 0 <= rank < world_size:
            raise UserError(f"rank {rank} is outside world size {world_size}")
        t0 = time.perf_counter()
        cleans = {pid: clean_sequence(pid, seq) for pid, seq in sequences.items()}
        self._drop_bad_shards()
        self.reload()
        if self.projected and not self.projection_path.is_file():
            self._fit_projection(encoder, cleans, batch_tokens or encoder.cfg.batch_tokens,
                                 progress)  # fmt: skip
        plan = make_plan(self.entries, cleans, self.dim, shard_bytes)
        mine = [k for k in range(len(plan.shards)) if k % world_size == rank]
        total = sum(len(c) for k in mine for _, c in plan.shards[k])
        bar = _progress_bar(total, f"embed rank {rank}/{world_size}", progress)
        written = self._write_plan(plan, mine, encoder, batch_tokens or encoder.cfg.batch_tokens,
                                   bar)  # fmt: skip
        bar.close()
        with self.locked():
            self.reload()
            manifest = {"shards": self.shards, "entries": self.entries, "proteins": self.proteins}
            merged = merge_into(manifest, self.root, plan, cleans)
            if merged:
                self.write_manifest()
        residues = sum(len(c) for k in written for _, c in plan.shards[k])
        return EmbedReport(
            len(cleans), len(plan.shards), len(written), residues, time.perf_counter() - t0,
            merged,
        )  # fmt: skip

    def _write_plan(self, plan: Plan, mine: list[int], encoder, batch_tokens: int, bar):
        """Write the shards of ``mine`` that are not complete; returns those written.

        A shard whose lock another process holds is being written by it: this run goes on
        with the others, then waits for that lock and writes the shard only if the other
        process did not finish it (it was killed)."""
        outcome = {k: self._write_shard(plan, k, encoder, batch_tokens, bar, False) for k in mine}
        for k in [k for k, v in outcome.items() if v == "busy"]:
            outcome[k] = self._write_shard(plan, k, encoder, batch_tokens, bar, True)
        return [k for k, v in outcome.items() if v == "written"]

    def _write_shard(self, plan: Plan, k: int, encoder, batch_tokens: int, bar, wait: bool):
        """ "written", "complete" (already), or "busy" (locked by another process)."""
        name = plan.name(k)
        with file_lock(lock_path(self.root, name), blocking=wait) as got:
            if not got:
                return "busy"
            if is_complete(self.root, name, self.dim, self.mean_dim):
                bar.update(sum(len(c) for _, c in plan.shards[k]))
                return "complete"
            write_shard(self.root, name, plan.shards[k], encoder, batch_tokens, bar,
                        self.projection)  # fmt: skip
            return "written"

    def _drop_bad_shards(self) -> None:
        """Forget entries of corrupt shards so this run re-embeds them (the reason is printed)."""
        bad = self.verify(deep=True)
        if not bad:
            return
        with self.locked():
            self.reload()
            for name, problem in sorted(bad.items()):
                log.warning("residue store: %s; its proteins will be re-embedded", problem)
                self.shards.pop(name, None)
            self.entries = {h: e for h, e in self.entries.items() if e[0] in self.shards}
            self.write_manifest()

    # ----- projection (stores.projection) -----
    @property
    def projected(self) -> bool:
        return "project_dim" in self.settings

    @property
    def projection_path(self) -> Path:
        return self.root / "projection.npz"

    @property
    def projection(self) -> Projection | None:
        """The fitted projection of a projected store (None for a full-width one)."""
        if self.projected and self._projection is None:
            self._projection = Projection.load(self.projection_path)
        return self._projection

    def _fit_projection(self, encoder, cleans: Mapping[str, str], batch_tokens: int,
                        progress: bool) -> None:  # fmt: skip
        """Fit the PCA on a sample of ``cleans`` (by sequence hash, so every rank and every
        restart picks the same) once; a second process waits for the first one's fit."""
        with file_lock(self.root / "projection.lock"):
            if self.projection_path.is_file():
                return
            sample = sample_for_fit({(sequence_hash(c), c) for c in cleans.values()})
            seqs = [c for _, c in sample]
            bar = _progress_bar(sum(map(len, seqs)), "embed the projection's sample", progress)
            full = np.concatenate(embed_arrays(encoder, seqs, batch_tokens, bar))
            bar.close()
            proj = Projection.fit(full, int(self.settings["project_dim"]))
            proj.save(self.projection_path, {"proteins": len(seqs), "residues": len(full)})
            log.info("residue store: projection %d -> %d dims fitted on %d residues keeps "
                     "%.1f%% of their variance", encoder.dim, proj.dim, len(full),
                     100 * proj.explained)  # fmt: skip

    @contextmanager
    def locked(self) -> Iterator[None]:
        """An exclusive lock on the manifest (other processes merging into the same store)."""
        with file_lock(self.root / ".lock"):
            yield

    def write_manifest(self) -> None:
        data = {"shards": self.shards, "entries": self.entries, "proteins": self.proteins}
        write_json(self.root / "manifest.json", data)


# Shards whose checksums this process has verified: (file, size, mtime, sha256) of both files.
_VERIFIED: set[tuple] = set()


def _verified_once(root: Path, name: str, info: Mapping, dim: int, mean_dim: int) -> str | None:
    """:func:`check_shard` with checksums, done once per shard file per process (a file
    rewritten since, by size or mtime, is checked again)."""
    key = tuple(
        (str(p), p.stat().st_size, p.stat().st_mtime_ns, info[k])
        for p, k in zip(shard_paths(root, name)[:2], ("sha256", "mean_sha256"), strict=True)
    )
    if key in _VERIFIED:
        return None
    problem = check_shard(root, name, info, dim, True, mean_dim)
    if problem is None:
        _VERIFIED.add(key)
    return problem


def _progress_bar(total: int, desc: str, enabled: bool):
    return progress_bar(
        total=total, desc=desc, unit="res", unit_scale=True, disable=not enabled, smoothing=0.1
    )
