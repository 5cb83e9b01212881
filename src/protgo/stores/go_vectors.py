"""GO vectors: the text-space cache on disk and its lookup wrapper.

* :class:`GoVectorCache`: one L2-normalised float32 vector per GO term for one phase's texts
  and one encoder, with id<->row maps. On disk (``<data_dir>/stores/go/<dataset>/<encoder>/
  texts-<recipe>-<aspects>/``, :func:`cache_dir`): ``vectors.npy`` (N, D), ``ids.tsv`` (id,
  aspect, text key: a hash of the term's token ids) and ``manifest.json`` (encoder identity,
  text hash), written last so a crash mid-write never leaves a cache that looks complete;
  stored as fp32, or as fp16 / int8 (:func:`quantize`) where size matters (bundles).
  Encoding is :mod:`protgo.stores.go_encode`.
* :class:`GoLookupCache`: torch access to a cache (``vectors(ids)``, ``rows(ids)``).
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from protgo.config import ASPECTS, GoTextConfig
from protgo.errors import UserError, first_few
from protgo.io import atomic_write, atomic_write_text, file_lock
from protgo.stores.go_text import text_recipe

# 2: manifest.json holds the sha256 of vectors.npy and ids.tsv; 3: ids.tsv holds text keys
MANIFEST_VERSION = 3
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
        raise UserError(
            f"GO ids not in the {what}: {first_few(missing)} (they are not in the "
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
LOCK = ".lock"  # held by a writer of the cache (and by go_encode.load_or_build from check to save)


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
    """``<data_dir>/stores/go/<dataset>/<encoder>/texts-<recipe>-<ASPECTS>[-int8]``, named by
    what the phase's texts are made of (:func:`protgo.stores.go_text.text_recipe`), not by
    the phase's number: configs whose phases differ never overwrite each other's vectors, and
    the same texts at another phase number find the same cache."""
    tag = "".join(a for a in ASPECTS if a in set(aspects))
    tag += "-int8" if cfg.quantize_int8 else ""
    return (
        Path(data_dir)
        / "stores"
        / "go"
        / _slug(dataset)
        / _slug(cfg.encoder)
        / f"texts-{text_recipe(cfg, phase)}-{tag}"
    )


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
