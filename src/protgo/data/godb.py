"""Read the Gene Ontology from Bioconductor's GO.db SQLite (Debian `r-bioc-go.db`).

GO.db 3.16 holds go-basic.obo of 2022-07-01: terms, definitions, synonyms (with alt ids in
``go_synonym.secondary``), obsolete terms, and direct parents per aspect with the relation type.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from protgo.data.ontology import ASPECT_NAMESPACE, Term

# GO.db's relationship_type -> OBO relation name
RELATIONS = {
    "isa": "is_a",
    "part of": "part_of",
    "regulates": "regulates",
    "positively regulates": "positively_regulates",
    "negatively regulates": "negatively_regulates",
}


def connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def source_date(path: Path) -> str:
    with connect(path) as con:
        row = con.execute("SELECT value FROM metadata WHERE name='GOSOURCEDATE'").fetchone()
    return row[0] if row else "unknown"


def read_terms(path: Path) -> list[Term]:
    """All GO terms of GO.db (live and obsolete) as :class:`Term` objects."""
    con = connect(path)
    try:
        terms: dict[int, Term] = {}
        for _id, go_id, name, ont, definition in con.execute(
            "SELECT _id, go_id, term, ontology, definition FROM go_term"
        ):
            terms[_id] = Term(
                id=go_id, name=name, namespace=ASPECT_NAMESPACE.get(ont, ""),
                definition=definition or "",
            )  # fmt: skip
        for _id, synonym, secondary, like_go_id in con.execute(
            "SELECT _id, synonym, secondary, like_go_id FROM go_synonym"
        ):
            t = terms.get(_id)
            if t is None:
                continue
            if secondary:
                t.alt_ids.append(secondary)
            elif not like_go_id:
                t.synonyms.append(synonym)
        for aspect in ("bp", "mf", "cc"):
            for _id, parent, rel in con.execute(
                f"SELECT _id, _parent_id, relationship_type FROM go_{aspect}_parents"
            ):
                if _id in terms and parent in terms:
                    rel_name = RELATIONS.get(rel, rel.replace(" ", "_"))
                    terms[_id].parents.setdefault(rel_name, []).append(terms[parent].id)
        out = [t for _, t in sorted(terms.items()) if t.namespace]  # drops the 'all' root row
        for go_id, name, ont, definition in con.execute(
            "SELECT go_id, term, ontology, definition FROM go_obsolete"
        ):
            out.append(
                Term(
                    id=go_id,
                    name=name,
                    namespace=ASPECT_NAMESPACE.get(ont, ""),
                    definition=definition or "",
                    is_obsolete=True,
                )  # fmt: skip
            )
        return out
    finally:
        con.close()


def offspring(path: Path) -> dict[str, set[str]]:
    """GO.db's transitive closure (all relation types): term -> all its descendants."""
    con = connect(path)
    try:
        ids = dict(con.execute("SELECT _id, go_id FROM go_term"))
        out: dict[str, set[str]] = {}
        for aspect in ("bp", "mf", "cc"):
            for a, o in con.execute(f"SELECT _id, _offspring_id FROM go_{aspect}_offspring"):
                out.setdefault(ids[a], set()).add(ids[o])
        return out
    finally:
        con.close()
