"""Load a dataset folder written by :mod:`protgo.data.build`.

``dataset.json`` records the sha256 of every file of the folder (``files``); each file is
checked the first time it is read, so a file cut short or edited after the build (which would
drop proteins or annotations silently) is one UserError that says to rebuild the dataset.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from protgo.config import ASPECTS, default_data_dir
from protgo.data.fasta import read_fasta
from protgo.data.ontology import Ontology
from protgo.errors import UserError
from protgo.io import file_sha256

log = logging.getLogger(__name__)
TRAINED_CLASSES = frozenset({"common", "few"})  # terms.tsv classes with a training positive
HELD_OUT = "held_out_annotations.tsv"  # zero-shot terms' training annotations (not trained on)
DATA_FILES = ("go.obo", "proteins.fasta", "annotations.tsv", "splits.tsv", "terms.tsv", "ia.tsv")


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


def files_sha256(root: Path) -> dict[str, str]:
    """The checksums ``dataset.json`` records: {file: sha256} of the folder's data files."""
    return {name: file_sha256(root / name) for name in (*DATA_FILES, HELD_OUT)}


@dataclass
class DatasetFolder:
    root: Path
    _checked: set[str] = field(default_factory=set, init=False, repr=False)  # files verified

    @classmethod
    def load(cls, name_or_path: str | Path, data_dir: Path | None = None) -> DatasetFolder:
        return cls(resolve_dataset(name_or_path, data_dir))

    @cached_property
    def info(self) -> dict:
        path = self.root / "dataset.json"
        try:
            return json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{path} is damaged ({exc}): rebuild the dataset with "
                            f"`protgo data build --name {self.root.name}`") from None  # fmt: skip

    def path(self, name: str) -> Path:
        """The path of data file ``name``, its checksum checked against ``dataset.json``
        (once per folder object; about 0.1 s per 100 MB)."""
        checked = self._checked
        path = self.root / name
        if name in checked:
            return path
        want = self.info.get("files", {}).get(name)
        if not path.is_file():
            raise UserError(f"dataset {self.root} lacks {name}: rebuild it with "
                            f"`protgo data build --name {self.root.name}`")  # fmt: skip
        if want is None:
            if not checked:
                log.warning("dataset %s records no checksums (built by an older protgo): "
                            "rebuild it so its files are checked", self.root)  # fmt: skip
        elif file_sha256(path) != want:
            raise UserError(
                f"dataset {self.root}: {name} fails its checksum (cut short or edited since "
                f"`protgo data build` wrote it): rebuild it with `protgo data build --name "
                f"{self.root.name}`"
            )
        checked.add(name)
        return path

    @cached_property
    def ontology(self) -> Ontology:
        return Ontology.from_obo(self.path("go.obo"))

    @cached_property
    def sequences(self) -> dict[str, str]:
        return read_fasta(self.path("proteins.fasta"))

    @cached_property
    def annotations(self) -> dict[str, set[str]]:
        """Direct (unpropagated) annotations: protein -> GO ids."""
        out: dict[str, set[str]] = {}
        for pid, term, *_ in _read_tsv(self.path("annotations.tsv")):
            out.setdefault(pid, set()).add(term)
        return out

    @cached_property
    def splits(self) -> dict[str, str]:
        return {p: s for p, s, _ in _read_tsv(self.path("splits.tsv"))}

    @cached_property
    def clusters(self) -> dict[str, int]:
        """protein -> sequence cluster (one per protein for random splits)."""
        return {p: int(c) for p, _, c in _read_tsv(self.path("splits.tsv"))}

    @cached_property
    def terms(self) -> dict[str, dict]:
        """term -> {aspect, n_train, class, held_out}."""
        return {
            t: {"aspect": a, "n_train": int(n), "class": c, "held_out": h == "1"}
            for t, a, n, c, h in _read_tsv(self.path("terms.tsv"))
        }

    @cached_property
    def term_class(self) -> dict[str, str]:
        return {t: v["class"] for t, v in self.terms.items()}

    @cached_property
    def ia(self) -> dict[str, float]:
        with self.path("ia.tsv").open() as fh:
            return {t: float(v) for t, v in (line.split() for line in fh if line.strip())}

    @property
    def aspects(self) -> list[str]:
        """The aspects the dataset was built with (``data build --aspects``)."""
        return list(self.info.get("options", {}).get("aspects", ASPECTS))

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

    def restricted(self, split: str, proteins: Path) -> DatasetFolder:
        """A view of this folder whose ``split`` holds only the proteins listed in the file
        ``proteins`` (one id per line; ``--proteins``); the other splits are unchanged."""
        keep = {ln.split()[0] for ln in Path(proteins).read_text().splitlines() if ln.strip()}
        unknown = sorted(p for p in keep if self.splits.get(p) != split)
        if unknown or not keep:
            raise UserError(
                f"--proteins {proteins}: {len(unknown)} of its {len(keep)} ids are not "
                f"'{split}' proteins of {self.root.name} (e.g. {', '.join(unknown[:3]) or '-'}):"
                f" list ids of that split, one per line"
            )
        view = copy.copy(self)
        view.__dict__["splits"] = {p: s for p, s in self.splits.items() if s != split or p in keep}
        return view

    @property
    def obo_path(self) -> Path:
        return self.path("go.obo")

    @property
    def ia_path(self) -> Path:
        return self.path("ia.tsv")

    @property
    def fasta_path(self) -> Path:
        return self.path("proteins.fasta")
