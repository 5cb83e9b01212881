"""The Python API: ``protgo.load_model(NAME_OR_DIR).predict_fasta(PATH)`` -> a DataFrame.

    from protgo import load_model
    m = load_model("protgo-human")        # a shipped model's name, or a bundle directory
    df = m.predict_fasta("queries.fasta")  # protein, aspect, go_id, name, score, class, threshold
    df = m.predict({"my_protein": "MKT..."})

The rows are those of ``protgo predict``'s ``predictions.tsv``: per protein and aspect the best
``top_k`` terms at or above ``threshold`` (``"auto"``: the bundle's per-aspect threshold of the
best validation Fmax), scores calibrated and DAG-consistent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd

from protgo.data.fasta import read_query_fasta
from protgo.data.sequence import clean_sequence
from protgo.infer.bundle import resolve_model
from protgo.infer.command import ROW_KEYS, parse_threshold, top_terms
from protgo.infer.predict import Predictor


class Model:
    """A loaded bundle; :meth:`predict` and :meth:`predict_fasta` return DataFrames."""

    def __init__(self, predictor: Predictor):
        self.predictor = predictor

    @property
    def go_ids(self) -> list[str]:
        """Every GO term the model scores (those of its aspects, roots left out)."""
        return self.predictor.go_ids

    def predict(
        self, sequences: Mapping[str, str], top_k: int = 20, threshold: str | float | None = None,
        most_specific: bool = False, keep_general: bool = False,
    ) -> pd.DataFrame:  # fmt: skip
        """{protein id: sequence} -> one row per reported (protein, term), best first."""
        cut = None if threshold is None else parse_threshold(str(threshold))  # checks range
        cleans = {pid: clean_sequence(pid, seq) for pid, seq in sequences.items()}
        results = self.predictor.predict(cleans)
        rows = [
            row
            for r in results
            for row in top_terms(self.predictor, r, top_k, cut, keep_general, most_specific)
        ]
        return pd.DataFrame(rows, columns=list(ROW_KEYS))  # fmt: skip

    def predict_fasta(self, path: str | Path, **kw) -> pd.DataFrame:
        """:meth:`predict` on every record of a FASTA file."""
        return self.predict(read_query_fasta(Path(path)), **kw)


def load_model(
    name: str | Path, device: str = "cpu", aspects: Iterable[str] | None = None,
    data_dir: Path | None = None, obo: Path | None = None,
) -> Model:  # fmt: skip
    """A shipped model by name or a bundle directory; ``obo`` scores a newer ontology."""
    return Model(Predictor(resolve_model(name), data_dir, aspects, device, obo))
