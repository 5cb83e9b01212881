"""A fixed linear reduction of residue vectors: PCA fitted once per residue store.

A wide protein model (unirep-1900: 3.8 kB per residue in fp16, 33 GB for human-exp) is
stored as its residues projected onto the top ``k`` principal components of a sample of the
store's own residues; the protein means stay full width. The projection is fitted once, kept
beside the store (``projection.npz`` with its sha256 in ``projection.json``) and applied to
every residue written after it, and, by ``predict``, to every sequence embedded on the fly;
bundles carry it (:mod:`protgo.infer.bundle`). Nothing here is pickled.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from protgo.errors import UserError
from protgo.io import atomic_write, file_sha256, write_json

# models wider than this are projected when residues.project_dim is "auto"
AUTO_ABOVE, AUTO_DIM = 1024, 512
SAMPLE_RESIDUES = 100_000  # residues the PCA is fitted on


def resolve_project_dim(project_dim: int | str | None, dim: int) -> int | None:
    """The stored width for a model of ``dim`` dims: None keeps every dim."""
    if project_dim == "auto":
        return AUTO_DIM if dim > AUTO_ABOVE else None
    if project_dim is not None and project_dim >= dim:
        raise UserError(
            f"residues.project_dim={project_dim} is not below the model's {dim} dims: "
            "set it lower, or to null to store every dim"
        )
    return project_dim


@dataclass
class Projection:
    mean: np.ndarray  # (D,) fp32
    components: np.ndarray  # (D, k) fp32, orthonormal columns, by falling variance
    explained: float  # share of the sample's variance the k components keep

    @property
    def dim(self) -> int:
        return int(self.components.shape[1])

    def apply(self, x: np.ndarray) -> np.ndarray:
        """(n, D) -> (n, k) fp32."""
        return (np.asarray(x, dtype=np.float32) - self.mean) @ self.components

    @classmethod
    def fit(cls, x: np.ndarray, k: int) -> Projection:
        """PCA of the rows of ``x`` (n, D), from the fp64 covariance (exact, deterministic:
        each component's sign makes its largest entry positive)."""
        if len(x) < k:
            raise UserError(
                f"the projection needs at least {k} residues to fit {k} components, got "
                f"{len(x)}: embed more proteins or lower residues.project_dim"
            )
        x = np.asarray(x, dtype=np.float64)
        mean = x.mean(axis=0)
        centred = x - mean
        values, vectors = np.linalg.eigh(centred.T @ centred / len(x))
        top = np.argsort(values)[::-1][:k]
        comps = vectors[:, top]
        comps *= np.sign(comps[np.abs(comps).argmax(axis=0), np.arange(k)])
        explained = float(values[top].sum() / max(values.sum(), 1e-300))
        return cls(mean.astype(np.float32), comps.astype(np.float32), explained)

    # ---- files ----------------------------------------------------------------------------
    def save(self, path: Path, info: Mapping) -> None:
        """``path`` (npz) and ``path.with_suffix('.json')`` (its sha256 and ``info``), both
        written atomically, the json last."""
        atomic_write(path, lambda fh: np.savez(fh, mean=self.mean, components=self.components))
        meta = {"dim": self.dim, "input_dim": len(self.mean), "explained": self.explained,
                "sha256": file_sha256(path), **info}  # fmt: skip
        write_json(path.with_suffix(".json"), meta)

    @classmethod
    def load(cls, path: Path) -> Projection:
        """Read a saved projection, checked against the sha256 beside it."""
        meta_path = Path(path).with_suffix(".json")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError):
            why = f"{meta_path} is missing or unreadable: the residue projection is incomplete"
            raise UserError(f"{why}; remove its residue store and embed again") from None
        raw = Path(path).read_bytes() if Path(path).is_file() else None
        if raw is None or hashlib.sha256(raw).hexdigest() != meta.get("sha256"):
            raise UserError(f"{path} is missing or fails its checksum: remove its residue "
                            "store (or bundle) and embed (or export) again")  # fmt: skip
        with np.load(io.BytesIO(raw), allow_pickle=False) as z:  # the bytes checked, read once
            return cls(z["mean"], z["components"], float(meta["explained"]))


def sample_for_fit(hashes_and_cleans: Sequence[tuple[str, str]], limit: int = SAMPLE_RESIDUES):
    """Proteins to fit on: by sequence hash order (so the same input gives the same sample)
    until ``limit`` residues."""
    out, total = [], 0
    for h, clean in sorted(hashes_and_cleans):
        if total >= limit:
            break
        out.append((h, clean))
        total += len(clean)
    return out
