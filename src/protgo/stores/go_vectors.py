"""GO vectors: the text-space cache on disk, its lookup wrapper, and the aligned-space bank.

* :class:`GoVectorCache`: one L2-normalised float32 vector per GO term for one text phase and
  one encoder, with id<->row maps. On disk (``<data_dir>/stores/go/<dataset>/<encoder>/
  phase<P>-<aspects>/``): ``vectors.npy`` (N, D), ``ids.tsv`` (id, aspect, text key: a hash
  of the term's token ids) and ``manifest.json`` (encoder identity, phase, text hash), written
  last so a crash mid-write never leaves a cache that looks complete. :func:`load_or_build`
  re-encodes only when the manifest differs, and then only the texts no other phase's cache
  of the same encoder holds (65% of GO's texts are the same in phases 1 and 2).
* :class:`GoLookupCache`: torch access to a cache (``vectors(ids)``, ``rows(ids)``).
* :class:`MemoryBank`: the cache mirrored in the aligned space (the model's projected GO
  vectors, possibly another dimension), updated with momentum during training.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from protgo.config import ASPECTS, GoTextConfig
from protgo.data.folder import DatasetFolder
from protgo.encoders.text import load_text_encoder
from protgo.errors import UserError
from protgo.io import atomic_write, atomic_write_text, file_lock
from protgo.stores.go_text import GoTextStore

log = logging.getLogger(__name__)

# 2: manifest.json holds the sha256 of vectors.npy and ids.tsv; 3: ids.tsv holds text keys
MANIFEST_VERSION = 3
Projection = Callable[[torch.Tensor], torch.Tensor]  # (B, D_text) -> (B, D_aligned)
STORAGE = {"fp32": np.float32, "fp16": np.float16, "int8": np.int8}  # vectors.npy on disk


def quantize(vectors: np.ndarray, storage: str) -> np.ndarray:
    """Unit vectors as ``storage`` keeps them: fp32, fp16, or int8 (each row scaled so its
    largest component is +-127; the scale is not kept: :func:`dequantize` renormalises)."""
    if storage not in STORAGE:
        raise ValueError(f"storage must be one of {', '.join(STORAGE)}, got {storage!r}")
    if storage != "int8":
        return np.ascontiguousarray(vectors, dtype=STORAGE[storage])
    peak = np.maximum(np.abs(vectors).max(axis=1, keepdims=True), 1e-12)
    return np.rint(vectors / peak * 127).astype(np.int8)


def dequantize(stored: np.ndarray) -> np.ndarray:
    """float32 unit rows from :func:`quantize`'s output (fp32 rows are returned as they are)."""
    if stored.dtype == np.float32:
        return stored
    out = stored.astype(np.float32)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def _row_map(ids: Sequence[str]) -> dict[str, int]:
    return {g: i for i, g in enumerate(ids)}


def _rows(row: dict[str, int], ids: Iterable[str], what: str) -> np.ndarray:
    ids = list(ids)
    missing = [g for g in ids if g not in row]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise UserError(
            f"GO ids not in the {what}: {', '.join(missing[:5])}{more} (they are not in the "
            "dataset's ontology or aspects; rebuild with `protgo embed go` for those aspects)"
        )
    return np.fromiter((row[g] for g in ids), dtype=np.int64, count=len(ids))


class GoVectorCache:
    """(N, D) float32 unit vectors, ``ids[i]`` <-> row i, ``aspects[i]`` its GO aspect,
    ``text_keys[i]`` the hash of its token ids (:func:`text_key`; empty when not known)."""

    def __init__(
        self, ids: Sequence[str], aspects: Sequence[str], vectors, manifest: dict,
        text_keys: Sequence[str] | None = None,
    ):  # fmt: skip
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(ids) != len(vectors) or len(aspects) != len(ids):
            raise ValueError(f"{len(ids)} ids, {len(aspects)} aspects, vectors {vectors.shape}")
        self.ids = list(ids)
        self.aspects = list(aspects)
        self.text_keys = list(text_keys) if text_keys is not None else [""] * len(self.ids)
        self.vectors = vectors
        self.manifest = dict(manifest)
        self.row = _row_map(self.ids)
        self.from_disk = False  # True when load_or_build found it unchanged on disk

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, go_id: str) -> bool:
        return go_id in self.row

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def rows(self, ids: Iterable[str]) -> np.ndarray:
        """Row of each id (int64); an unknown id raises UserError naming it."""
        return _rows(self.row, ids, "GO vector cache")

    def lookup(self, ids: Iterable[str]) -> np.ndarray:
        return self.vectors[self.rows(ids)]  # (B, D)

    def filter_aspect(self, aspects: str | Iterable[str]) -> GoVectorCache:
        """A new cache holding only the terms of ``aspects`` (rows renumbered)."""
        keep = {aspects} if isinstance(aspects, str) else set(aspects)
        idx = [i for i, a in enumerate(self.aspects) if a in keep]
        sub = GoVectorCache(
            [self.ids[i] for i in idx], [self.aspects[i] for i in idx], self.vectors[idx],
            {**self.manifest, "aspects": sorted(keep)}, [self.text_keys[i] for i in idx],
        )  # fmt: skip
        sub.from_disk = self.from_disk
        return sub

    def stored_as(self, storage: str) -> GoVectorCache:
        """A copy whose vectors are what :meth:`save` with ``storage`` would give back."""
        vectors = dequantize(quantize(self.vectors, storage))
        return GoVectorCache(self.ids, self.aspects, vectors, self.manifest, self.text_keys)

    def save(self, directory: Path, storage: str = "fp32") -> dict:
        """``vectors.npy`` (as ``storage`` keeps them: :func:`quantize`) and ``ids.tsv``, then
        ``manifest.json`` with their checksums, under the folder's lock; returns the manifest.
        The checksums are of the bytes this call writes, so a manifest can only ever describe
        its own vectors: were another writer's files to land between, the cache fails its
        check on load and is encoded again instead of being trusted."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.save(buf, quantize(self.vectors, storage))
        raw = {
            "vectors.npy": buf.getvalue(),
            "ids.tsv": "".join(
                f"{g}\t{a}\t{k}\n"
                for g, a, k in zip(self.ids, self.aspects, self.text_keys, strict=True)
            ).encode(),
        }
        sums = {f: hashlib.sha256(b).hexdigest() for f, b in raw.items()}
        manifest = {**self.manifest, "version": MANIFEST_VERSION, "n": len(self), "dim": self.dim,
                    "storage": storage, "sha256": sums}  # fmt: skip
        with file_lock(directory / LOCK):
            (directory / "manifest.json").unlink(missing_ok=True)  # incomplete until rewritten
            for name, data in raw.items():
                atomic_write(directory / name, lambda fh, data=data: fh.write(data))
            atomic_write_text(directory / "manifest.json", json.dumps(manifest, indent=1))
        return manifest

    @classmethod
    def load(cls, directory: Path) -> GoVectorCache:
        """The cache in ``directory``, its files checked against the manifest's checksums
        (about 0.1 s for all of GO); a damaged cache is one UserError with the fix."""
        directory = Path(directory)
        if not (directory / "manifest.json").is_file():
            raise UserError(f"no GO vector cache in {directory}: run `protgo embed go` first")
        manifest = json.loads((directory / "manifest.json").read_text())
        problem, raw = _read_checked(directory, manifest)
        if problem:
            raise UserError(
                f"GO vector cache {directory} is {problem}: run `protgo embed go --force` for "
                "its dataset, phase and aspects (or delete the folder) to encode it again"
            )
        pairs = [ln.split("\t") for ln in raw["ids.tsv"].decode("utf-8").splitlines()]
        try:  # the bytes that were checksummed, read once; allow_pickle=False: data only
            vectors = dequantize(np.load(io.BytesIO(raw["vectors.npy"])))
        except (ValueError, EOFError, OSError) as exc:
            raise UserError(
                f"GO vector cache {directory}: vectors.npy cannot be read ({exc}); run "
                "`protgo embed go --force` to encode it again"
            ) from None
        if vectors.shape != (manifest["n"], manifest["dim"]) or len(pairs) != manifest["n"]:
            raise UserError(
                f"GO vector cache {directory} is corrupt (shape {vectors.shape}, "
                f"{len(pairs)} ids, manifest says {manifest['n']}x{manifest['dim']}): "
                "run `protgo embed go --force` to encode it again"
            )
        cols = list(zip(*pairs, strict=True)) if pairs else [(), (), ()]
        cache = cls(cols[0], cols[1], vectors, manifest, cols[2])
        cache.from_disk = True
        return cache


CACHE_FILES = ("vectors.npy", "ids.tsv")
LOCK = ".lock"  # held by a writer of the cache (and by load_or_build from check to save)


def _read_checked(directory: Path, manifest: dict) -> tuple[str | None, dict[str, bytes]]:
    """(None, {file: bytes}) when the cache's files match the manifest's checksums, else
    (what is wrong, {}). Each file is read once: the bytes checked are the bytes used."""
    if manifest.get("version") != MANIFEST_VERSION:
        return f"from another protgo version (manifest version {manifest.get('version')})", {}
    sums = manifest.get("sha256") or {}
    raw = {}
    for name in CACHE_FILES:
        path = directory / name
        if not path.is_file():
            return f"incomplete ({name} is missing)", {}
        raw[name] = path.read_bytes()
        if hashlib.sha256(raw[name]).hexdigest() != sums.get(name):
            return f"corrupt ({name} fails its checksum)", {}
    return None, raw


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip("_") or "encoder"


def cache_dir(data_dir: Path, dataset: str, cfg: GoTextConfig, phase: int, aspects) -> Path:
    """``<data_dir>/stores/go/<dataset>/<encoder>/phase<P>-<ASPECTS>[-int8]``."""
    tag = "".join(a for a in ASPECTS if a in set(aspects))
    tag += "-int8" if cfg.quantize_int8 else ""
    return (
        Path(data_dir)
        / "stores"
        / "go"
        / _slug(dataset)
        / _slug(cfg.encoder)
        / f"phase{phase}-{tag}"
    )


def text_key(input_ids: Sequence[int]) -> str:
    """A term's text as the encoder sees it (its token ids), hashed: equal keys under the same
    encoder give the same vector, whatever the phase."""
    return hashlib.blake2b(np.asarray(input_ids, np.int64).tobytes(), digest_size=8).hexdigest()


def _donor_vectors(directory: Path, manifest: dict) -> dict[str, np.ndarray]:
    """text key -> vector from the other complete caches of this encoder under the same
    ``stores/go`` (other phases or aspects, other datasets and bundles: a text key is the
    text's token ids, so equal keys mean equal vectors wherever they were encoded) whose
    encoder is this one but for the added relation tokens (which change the ids of the texts
    that use them, and nothing else)."""

    def base(identity: dict) -> dict:
        return {k: v for k, v in identity.items() if k != "added_tokens"}

    found: dict[str, np.ndarray] = {}
    directory = Path(directory)
    for other in sorted(directory.parents[2].glob(f"*/{directory.parent.name}/phase*")):
        path = other / "manifest.json"
        if other == Path(directory) or not path.is_file():
            continue
        try:
            old = json.loads(path.read_text())
            if base(old.get("encoder", {})) != base(manifest["encoder"]):
                continue
            cache = GoVectorCache.load(other)
        except (json.JSONDecodeError, UserError):
            continue  # unreadable or damaged: nothing to reuse from it
        found.update((k, v) for k, v in zip(cache.text_keys, cache.vectors, strict=True) if k)
    return found


def encode_missing(
    store, encoder, directory: Path, manifest: dict, batch_size, progress, reuse: bool = True,
    extra: GoVectorCache | None = None,
):  # fmt: skip
    """(N, D) vectors of ``store``'s texts: those another cache of this encoder holds (or
    ``extra``, e.g. a bundle's shipped vectors) are copied (unless not ``reuse``), the others
    encoded. ``manifest["reused"]`` says how many were copied."""
    keys = [text_key(x) for x in store.tokenized.input_ids]
    donors = _donor_vectors(directory, manifest) if reuse else {}
    if reuse and extra is not None:
        donors.update((k, v) for k, v in zip(extra.text_keys, extra.vectors, strict=True) if k)
    todo = [i for i, k in enumerate(keys) if k not in donors]
    vectors = np.zeros((len(keys), encoder.dim), dtype=np.float32)
    if todo:
        ids = store.tokenized.input_ids
        vectors[todo] = encoder.encode_ids([ids[i] for i in todo], batch_size, progress)
    for i, k in enumerate(keys):
        if k in donors:
            vectors[i] = donors[k]
    manifest["reused"] = len(keys) - len(todo)
    return vectors, keys


def cache_manifest(store, encoder) -> dict:
    """What the vectors depend on: the encoder's identity, the phase and the texts' hash."""
    return {
        "version": MANIFEST_VERSION,
        "encoder": encoder.identity(),
        "phase": store.phase,
        "text_hash": store.text_hash(),
        "aspects": sorted(set(store.aspects())),
    }


def _stale_reason(directory: Path, manifest: dict) -> str | None:
    """None when the cache on disk matches ``manifest``; else what changed."""
    path = Path(directory) / "manifest.json"
    if not path.is_file():
        return "no cache yet"
    try:
        old = json.loads(path.read_text())
    except json.JSONDecodeError:
        return "unreadable manifest"
    changed = [k for k in manifest if old.get(k) != manifest[k]]
    return f"changed: {', '.join(changed)}" if changed else None


def load_or_build(
    store, encoder, directory: Path, batch_size: int = 64, force: bool = False,
    progress: bool = True, donors: GoVectorCache | None = None,
) -> GoVectorCache:  # fmt: skip
    """The cache for ``store``'s current phase: loaded when unchanged, else encoded and saved.

    ``store`` must have been through ``update_phase_and_tokenize(phase, encoder)``.
    ``force`` encodes every text anyway, copying nothing from other phases; ``donors``: more
    vectors to copy from by text key (:func:`encode_missing`).
    """
    if store.tokenized is None:
        store.update_phase_and_tokenize(store.phase if store.phase is not None else 0, encoder)
    manifest = cache_manifest(store, encoder)
    reason = "forced" if force else _stale_reason(directory, manifest)
    if reason is None:
        try:
            cache = GoVectorCache.load(directory)
        except UserError as err:  # damaged on disk: encode it again
            log.warning("%s; encoding it again", err)
            reason = "damaged"
        else:
            if cache.ids == store.ids:
                log.info("GO vector cache hit: %s", directory)
                return cache
            reason = "ids differ"
    vectors, keys = encode_missing(
        store, encoder, directory, manifest, batch_size, progress, not force, donors
    )
    log.info(
        "encoded %d GO texts (phase %s) into %s (%s); %d more copied from other phases",
        len(store.ids) - manifest["reused"], store.phase, directory, reason, manifest["reused"],
    )  # fmt: skip
    manifest["n_truncated"] = store.tokenized.n_truncated
    cache = GoVectorCache(store.ids, store.aspects(), vectors, manifest, keys)
    cache.save(directory)
    return cache


def embed_go(
    dataset: str, phase: int, aspects: Iterable[str], data_dir: Path, cfg: GoTextConfig,
    force: bool = False, progress: bool = True,
) -> tuple[GoVectorCache, Path]:  # fmt: skip
    """Encode (or find cached) the GO texts of a dataset's ontology for one phase."""
    aspects = list(aspects)
    ontology = DatasetFolder.load(dataset, data_dir).ontology
    empty = [a for a in aspects if not ontology.ids(a)]
    if empty:
        raise UserError(
            f"the ontology of dataset '{Path(dataset).name}' has no {', '.join(empty)} terms "
            f"(it holds {', '.join(a for a in ('BP', 'MF', 'CC') if ontology.ids(a))}): leave "
            f"{', '.join(empty)} out of the aspects"
        )
    directory = cache_dir(data_dir, Path(dataset).name, cfg, phase, aspects)
    cache, _ = encode_ontology(ontology, phase, aspects, cfg, directory, force, progress)
    return cache, directory


def encode_ontology(
    ontology, phase: int, aspects: Iterable[str], cfg: GoTextConfig, directory: Path,
    force: bool = False, progress: bool = True, donors: GoVectorCache | None = None,
) -> tuple[GoVectorCache, GoTextStore]:  # fmt: skip
    """The GO vector cache of ``ontology``'s terms of ``aspects`` at ``phase`` in
    ``directory`` (:func:`cache_dir`), and the text store behind it; ``donors``: vectors to
    copy from where a text is the same (:func:`encode_missing`)."""
    encoder = load_text_encoder(
        cfg.encoder, cfg.max_length, cfg.quantize_int8, cfg.device, cfg.dtype
    )
    store = GoTextStore(ontology, cfg, aspects=list(aspects))
    store.update_phase_and_tokenize(phase, encoder)
    cache = load_or_build(store, encoder, directory, cfg.batch_size, force, progress, donors)
    return cache, store


class GoLookupCache:
    """Torch view of a :class:`GoVectorCache` (shares memory on CPU)."""

    def __init__(self, cache: GoVectorCache, device: str | torch.device = "cpu"):
        self.cache = cache
        self.matrix = torch.from_numpy(cache.vectors).to(device)  # (N, D)

    @property
    def ids(self) -> list[str]:
        return self.cache.ids

    @property
    def dim(self) -> int:
        return self.cache.dim

    def __len__(self) -> int:
        return len(self.cache)

    def __contains__(self, go_id: str) -> bool:
        return go_id in self.cache

    def rows(self, ids: Iterable[str]) -> torch.Tensor:
        """(B,) int64 rows; unknown ids raise UserError."""
        return torch.from_numpy(self.cache.rows(ids)).to(self.matrix.device)

    def vectors(self, ids: Iterable[str]) -> torch.Tensor:
        return self.matrix[self.rows(ids)]  # (B, D)


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.float(), dim=-1)


class MemoryBank:
    """The GO vectors in the aligned space: row i is the model's current vector for ``ids[i]``.

    Filled by projecting every cache row (:meth:`from_cache`), then updated with momentum from
    each batch's GO vectors (:meth:`update`: ``row <- normalise(m * row + (1 - m) * new)``) and
    partly re-projected between epochs (:meth:`refresh`). Rows stay unit length.

    Thread-safety model: one lock guards every write (``update``, ``refresh``,
    ``load_state_dict``) and every copy (``copy``, ``snapshot``), so a copy never holds half an
    update. ``matrix`` is the live tensor, for the training process only. DataLoader workers
    are other processes: they get a pickled copy (the lock is dropped and made anew), taken
    when the workers start, and never see later updates; mining that must see the current
    bank happens in the main process through ``VectorResources.set_backends("bank")``.
    """

    def __init__(
        self, ids: Sequence[str], vectors: torch.Tensor, momentum: float = 0.9,
        aspects: Sequence[str] | None = None,
    ):  # fmt: skip
        if not 0.0 <= momentum < 1.0:
            raise UserError(f"phases.bank_momentum must be in [0, 1), got {momentum}")
        if len(ids) != len(vectors):
            raise ValueError(f"{len(ids)} ids but {len(vectors)} vectors")
        self.ids = list(ids)
        self.aspects = list(aspects) if aspects is not None else [""] * len(self.ids)
        self.row = _row_map(self.ids)
        self.matrix = _normalize(vectors.detach()).contiguous().clone()  # (N, D')
        self.momentum = momentum
        self.version = 0  # bumped on every write; VectorResources uses it to spot staleness
        self._lock = threading.RLock()

    @classmethod
    def from_cache(
        cls, cache: GoLookupCache, project: Projection, momentum: float = 0.9,
        batch_size: int = 4096,
    ) -> MemoryBank:  # fmt: skip
        """Project every cache row through ``project`` (e.g. the model's GO head)."""
        with torch.no_grad():
            parts = [
                project(cache.matrix[i : i + batch_size]) for i in range(0, len(cache), batch_size)
            ]
        return cls(cache.ids, torch.cat(parts), momentum, cache.cache.aspects)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])

    def rows(self, ids: Iterable[str]) -> torch.Tensor:
        return torch.from_numpy(_rows(self.row, ids, "memory bank")).to(self.matrix.device)

    def vectors(self, ids: Iterable[str]) -> torch.Tensor:
        with self._lock:
            return self.matrix[self.rows(ids)].clone()  # (B, D')

    def update(self, ids: Sequence[str], new: torch.Tensor) -> None:
        """Momentum update of the rows of ``ids`` with ``new`` (B, D'); duplicates averaged."""
        rows = self.rows(ids)
        new = _normalize(new.detach().to(self.matrix.device))
        uniq, inv = torch.unique(rows, return_inverse=True)
        summed = torch.zeros(len(uniq), self.dim, device=new.device).index_add_(0, inv, new)
        # Renormalised mean, so a repeated id takes the same step as a single one.
        mean = _normalize(summed)  # (U, D')
        with self._lock:
            mixed = self.momentum * self.matrix[uniq] + (1 - self.momentum) * mean
            self.matrix[uniq] = _normalize(mixed)
            self.version += 1

    def refresh(
        self, ids: Iterable[str], cache: GoLookupCache, project: Projection,
        batch_size: int = 4096,
    ) -> int:  # fmt: skip
        """Replace the rows of ``ids`` with ``project(cache vectors)`` (no momentum)."""
        ids = list(dict.fromkeys(ids))
        rows = self.rows(ids)
        with torch.no_grad():
            parts = [
                project(cache.vectors(ids[i : i + batch_size]))
                for i in range(0, len(ids), batch_size)
            ]
        if not parts:
            return 0
        fresh = _normalize(torch.cat(parts).to(self.matrix.device))
        with self._lock:
            self.matrix[rows] = fresh
            self.version += 1
        return len(ids)

    def copy(self) -> torch.Tensor:
        with self._lock:
            return self.matrix.clone()

    def snapshot(self, directory: Path, manifest: dict | None = None) -> GoVectorCache:
        """Write the bank as a GO vector cache file (source "bank") and return it."""
        with self._lock:
            vecs, version = self.matrix.detach().cpu().numpy().copy(), self.version
        meta = {"version": MANIFEST_VERSION, "source": "bank", "bank_version": version}
        cache = GoVectorCache(self.ids, self.aspects, vecs, {**meta, **(manifest or {})})
        cache.save(directory)
        return cache

    def state_dict(self) -> dict:
        with self._lock:
            return {"ids": list(self.ids), "matrix": self.matrix.clone(), "version": self.version}

    def load_state_dict(self, state: dict) -> None:
        if list(state["ids"]) != self.ids:
            raise UserError("memory bank in the checkpoint covers other GO ids than this run's")
        with self._lock:
            self.matrix = state["matrix"].to(self.matrix.device).clone()
            self.version = state["version"]

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["matrix"] = self.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()
