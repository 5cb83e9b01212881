"""Load a dataset folder written by :mod:`protgo.data.build`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from protgo.config import default_data_dir
from protgo.data.fasta import read_fasta
from protgo.data.ontology import Ontology
from protgo.errors import UserError


def resolve_dataset(name_or_path: str | Path, data_dir: Path | None = None) -> Path:
    """A dataset path, or a name under ``<data_dir>/datasets/``."""
    p = Path(name_or_path)
    if (p / "dataset.json").is_file():
        return p
    root = (data_dir or default_data_dir()) / "datasets" / str(name_or_path)
    if not (root / "dataset.json").is_file():
        raise UserError(
            f"dataset '{name_or_path}' not found at {root}: build it with "
            f"`protgo data build --name {p.name}` (after `protgo data fetch`)"
        )
    return root


def _read_tsv(path: Path) -> list[list[str]]:
    with path.open() as fh:
        next(fh, None)  # header
        return [line.rstrip("\n").split("\t") for line in fh if line.strip()]


@dataclass
class DatasetFolder:
    root: Path

    @classmethod
    def load(cls, name_or_path: str | Path, data_dir: Path | None = None) -> DatasetFolder:
        return cls(resolve_dataset(name_or_path, data_dir))

    @cached_property
    def info(self) -> dict:
        return json.loads((self.root / "dataset.json").read_text())

    @cached_property
    def ontology(self) -> Ontology:
        return Ontology.from_obo(self.root / "go.obo")

    @cached_property
    def sequences(self) -> dict[str, str]:
        return read_fasta(self.root / "proteins.fasta")

    @cached_property
    def annotations(self) -> dict[str, set[str]]:
        """Direct (unpropagated) annotations: protein -> GO ids."""
        out: dict[str, set[str]] = {}
        for pid, term, *_ in _read_tsv(self.root / "annotations.tsv"):
            out.setdefault(pid, set()).add(term)
        return out

    @cached_property
    def splits(self) -> dict[str, str]:
        return {p: s for p, s, _ in _read_tsv(self.root / "splits.tsv")}

    @cached_property
    def clusters(self) -> dict[str, int]:
        """protein -> sequence cluster (one per protein for random splits)."""
        return {p: int(c) for p, _, c in _read_tsv(self.root / "splits.tsv")}

    @cached_property
    def terms(self) -> dict[str, dict]:
        """term -> {aspect, n_train, class, held_out}."""
        return {
            t: {"aspect": a, "n_train": int(n), "class": c, "held_out": h == "1"}
            for t, a, n, c, h in _read_tsv(self.root / "terms.tsv")
        }

    @cached_property
    def term_class(self) -> dict[str, str]:
        return {t: v["class"] for t, v in self.terms.items()}

    @cached_property
    def ia(self) -> dict[str, float]:
        with (self.root / "ia.tsv").open() as fh:
            return {t: float(v) for t, v in (line.split() for line in fh if line.strip())}

    @property
    def aspects(self) -> list[str]:
        """The aspects the dataset was built with (``data build --aspects``)."""
        return list(self.info.get("options", {}).get("aspects", ("BP", "MF", "CC")))

    def check_aspects(self, aspects, what: str) -> None:
        """Training needs annotations: every aspect asked for must be one of the dataset's."""
        missing = [a for a in aspects if a not in self.aspects]
        if missing:
            raise UserError(
                f"{what} asks for {', '.join(missing)} but dataset '{self.root.name}' holds "
                f"annotations of {', '.join(self.aspects)} only: set {what} to those, or "
                f"rebuild the dataset with `protgo data build --aspects ...`"
            )

    def ids(self, split: str | None = None) -> list[str]:
        return sorted(p for p, s in self.splits.items() if split is None or s == split)

    @property
    def obo_path(self) -> Path:
        return self.root / "go.obo"

    @property
    def ia_path(self) -> Path:
        return self.root / "ia.tsv"

    @property
    def fasta_path(self) -> Path:
        return self.root / "proteins.fasta"
