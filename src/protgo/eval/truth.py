"""A user's own benchmark for ``protgo evaluate --ground-truth``: a ground-truth TSV scored
against a GO release (``--obo``) and, optionally, information accretion (``--ia``).

:class:`GroundTruth` offers what :func:`protgo.eval.cafa.evaluate_split` reads from a dataset
folder; every protein of the file counts, whatever the split asked for, and no term has a
zero-/few-shot class (that needs a training set)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from protgo.data.ontology import Ontology
from protgo.errors import UserError


@dataclass
class GroundTruth:
    truth: Path
    obo_path: Path
    ia_path: Path | None = None
    term_class: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        for what, path in (("--ground-truth", self.truth), ("--obo", self.obo_path),
                           ("--ia", self.ia_path)):  # fmt: skip
            if path is not None and not Path(path).is_file():
                raise UserError(f"{what} {path}: no such file")

    @property
    def root(self) -> Path:
        """Named like a dataset folder in messages: the file's own name."""
        return Path(self.truth)

    @cached_property
    def ontology(self) -> Ontology:
        return Ontology.from_obo(Path(self.obo_path))

    @cached_property
    def annotations(self) -> dict[str, set[str]]:
        """protein -> GO ids of the file (alt ids mapped to primary ones); lines are
        ``protein<TAB>GO:id`` with any further columns ignored, one header line allowed."""
        out: dict[str, set[str]] = {}
        with Path(self.truth).open(encoding="utf-8") as fh:
            for lineno, raw in enumerate(fh, 1):
                parts = raw.split()
                if not parts:
                    continue
                if len(parts) < 2 or not parts[1].startswith("GO:"):
                    if lineno == 1:
                        continue  # a header
                    raise UserError(f"{self.truth}:{lineno}: expected 'protein<TAB>GO:id', "
                                    f"got {raw.strip()[:80]!r}")  # fmt: skip
                canon = self.ontology.canonical(parts[1])
                if canon is None:
                    raise UserError(
                        f"{self.truth}:{lineno}: GO id {parts[1]} is unknown or obsolete in "
                        f"{self.obo_path}: give the GO release the truth was made with (--obo)"
                        " or map the id to a current one"
                    )
                out.setdefault(parts[0], set()).add(canon)
        if not out:
            raise UserError(f"{self.truth} holds no 'protein<TAB>GO:id' lines")
        return out

    def ids(self, split: str | None = None) -> list[str]:
        return sorted(self.annotations)
