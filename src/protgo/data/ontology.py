"""The Gene Ontology as a DAG: OBO parsing, ancestors/descendants, propagation, IA.

Relations are named as in OBO: ``is_a``, ``part_of``, ``regulates``,
``positively_regulates``, ``negatively_regulates``. Propagation of labels and scores for CAFA
metrics uses ``is_a`` and ``part_of`` only (as cafaeval does); the closure over every relation
equals GO.db's ``go_*_offspring`` tables.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from protgo.errors import UserError
from protgo.io import atomic_write_text, iter_text_lines

PROPAGATION = ("is_a", "part_of")
REGULATES = ("regulates", "positively_regulates", "negatively_regulates")
ALL_RELATIONS = PROPAGATION + REGULATES
NAMESPACES = {"biological_process": "BP", "molecular_function": "MF", "cellular_component": "CC"}
ASPECT_NAMESPACE = {v: k for k, v in NAMESPACES.items()}


@dataclass
class Term:
    id: str
    name: str = ""
    namespace: str = ""
    definition: str = ""
    synonyms: list[str] = field(default_factory=list)
    alt_ids: list[str] = field(default_factory=list)
    is_obsolete: bool = False
    # relation -> parent ids, e.g. {"is_a": ["GO:..."], "part_of": [...]}
    parents: dict[str, list[str]] = field(default_factory=dict)

    @property
    def aspect(self) -> str:
        return NAMESPACES.get(self.namespace, "")


def _unquote(value: str) -> str:
    """`"text" [refs]` -> text (OBO def and synonym values)."""
    if value.startswith('"'):
        end = value.find('"', 1)
        while end > 0 and value[end - 1] == "\\":
            end = value.find('"', end + 1)
        if end > 0:
            return value[1:end].replace('\\"', '"')
    return value


def parse_obo(path: Path) -> list[Term]:
    """Parse ``[Term]`` stanzas; other stanza types are skipped. Errors name file and line;
    two stanzas with one id are an error (neither silently wins)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"ontology file {path} not found (run `protgo data fetch`)")
    terms: list[Term] = []
    seen: dict[str, int] = {}  # id -> line of its stanza
    cur: Term | None = None
    in_term = False
    for lineno, raw in iter_text_lines(path, "ontology file"):
        line = raw.strip()
        if not line or line.startswith("!"):
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise UserError(f"{path}:{lineno}: malformed stanza header {line!r}")
            in_term = line == "[Term]"
            cur = None
            continue
        if not in_term:
            continue
        if ":" not in line:
            raise UserError(f"{path}:{lineno}: expected 'tag: value', got {line!r}")
        tag, value = line.split(":", 1)
        value = value.split(" ! ", 1)[0].strip()
        if tag == "id":
            if value in seen:
                raise UserError(
                    f"{path}:{lineno}: a second [Term] stanza for {value} (the first is at line "
                    f"{seen[value]}): an id names one term; merge the two stanzas"
                )
            seen[value] = lineno
            cur = Term(id=value)
            terms.append(cur)
            continue
        if cur is None:
            raise UserError(f"{path}:{lineno}: '{tag}' comes before the stanza's id")
        _apply_tag(cur, tag, value, path, lineno)
    if not terms:
        raise UserError(f"ontology file {path} holds no [Term] stanza: give a GO OBO file "
                        "(go-basic.obo)")  # fmt: skip
    return terms


def _apply_tag(term: Term, tag: str, value: str, path: Path, lineno: int) -> None:
    if tag == "name":
        term.name = value
    elif tag == "namespace":
        term.namespace = value
    elif tag == "def":
        term.definition = _unquote(value)
    elif tag == "synonym":
        term.synonyms.append(_unquote(value))
    elif tag == "alt_id":
        term.alt_ids.append(value)
    elif tag == "is_obsolete":
        term.is_obsolete = value == "true"
    elif tag == "is_a":
        term.parents.setdefault("is_a", []).append(value.split()[0])
    elif tag == "relationship":
        parts = value.split()
        if len(parts) < 2:
            raise UserError(f"{path}:{lineno}: relationship needs a type and a target: {value!r}")
        term.parents.setdefault(parts[0], []).append(parts[1])


def write_obo(terms: Iterable[Term], path: Path, header: Mapping[str, str] = ()) -> None:
    """Write terms as OBO 1.2 (atomically); parseable by cafaeval and :func:`parse_obo`."""
    lines = ["format-version: 1.2"]
    lines += [f"{k}: {v}" for k, v in dict(header).items()]
    for t in terms:
        lines += ["", "[Term]", f"id: {t.id}", f"name: {t.name}", f"namespace: {t.namespace}"]
        lines += [f"alt_id: {a}" for a in t.alt_ids]
        if t.definition:
            d = t.definition.replace('"', '\\"')
            lines.append(f'def: "{d}" []')
        for s in t.synonyms:
            s = s.replace('"', '\\"')
            lines.append(f'synonym: "{s}" EXACT []')
        if t.is_obsolete:
            lines.append("is_obsolete: true")
        for p in t.parents.get("is_a", []):
            lines.append(f"is_a: {p}")
        for rel, ps in t.parents.items():
            if rel != "is_a":
                lines += [f"relationship: {rel} {p}" for p in ps]
    atomic_write_text(Path(path), "\n".join(lines) + "\n")


class Ontology:
    """GO terms and relations with memoised closures.

    Obsolete terms are kept in ``obsolete`` (for counting dropped annotations) but not in the
    graph; alt ids map to their primary id through :meth:`canonical`.
    """

    def __init__(self, terms: Iterable[Term]):
        self.terms: dict[str, Term] = {}
        self.obsolete: set[str] = set()
        self.alt_map: dict[str, str] = {}
        for t in terms:
            if t.is_obsolete:
                self.obsolete.add(t.id)
                continue
            self.terms[t.id] = t
            for a in t.alt_ids:
                self.alt_map[a] = t.id
        self._children: dict[str, dict[str, list[str]]] = {}
        self._plans: dict[tuple[str, ...], list] = {}  # propagate_matrix's, by term list
        # Edges to terms not in the ontology (dropped; counted for dataset.json)
        self.dangling: dict[str, int] = {}
        for t in self.terms.values():
            for rel, ps in t.parents.items():
                for p in ps:
                    if p in self.terms:
                        self._children.setdefault(p, {}).setdefault(rel, []).append(t.id)
                    else:
                        self.dangling[rel] = self.dangling.get(rel, 0) + 1
        self._anc_cache: dict[tuple[str, tuple[str, ...]], frozenset[str]] = {}
        cycle = self.find_cycle()
        if cycle:
            raise UserError(
                f"the ontology has a cycle ({' -> '.join(cycle)}): GO is a DAG, so a term may "
                "not be its own ancestor; fix the relations of these terms in the OBO file"
            )

    def find_cycle(self) -> list[str] | None:
        """A cycle over every relation as [t0, t1, ..., t0] (each the next one's child), or
        None for a DAG. Iterative depth-first search, linear in terms + edges."""
        state: dict[str, int] = {}  # 1: on the current path, 2: done
        for start in self.terms:
            if start in state:
                continue
            path, stack = [start], [iter(self.parents(start, ALL_RELATIONS))]
            state[start] = 1
            while stack:
                nxt = next(stack[-1], None)
                if nxt is None:
                    state[path.pop()] = 2
                    stack.pop()
                elif state.get(nxt) == 1:
                    return [*path[path.index(nxt) :], nxt]
                elif nxt not in state:
                    state[nxt] = 1
                    path.append(nxt)
                    stack.append(iter(self.parents(nxt, ALL_RELATIONS)))
        return None

    @classmethod
    def from_obo(cls, path: Path) -> Ontology:
        return cls(parse_obo(path))

    def __len__(self) -> int:
        return len(self.terms)

    def __contains__(self, go_id: str) -> bool:
        return go_id in self.terms

    def canonical(self, go_id: str) -> str | None:
        """The primary id for ``go_id`` (itself or via alt id); None if obsolete or unknown."""
        if go_id in self.terms:
            return go_id
        return self.alt_map.get(go_id)

    def aspect(self, go_id: str) -> str:
        return self.terms[go_id].aspect

    def ids(self, aspect: str | None = None) -> list[str]:
        return [t for t, term in self.terms.items() if aspect is None or term.aspect == aspect]

    def parents(self, go_id: str, relations: Iterable[str] = PROPAGATION) -> list[str]:
        t = self.terms[go_id]
        return [p for r in relations for p in t.parents.get(r, ()) if p in self.terms]

    def children(self, go_id: str, relations: Iterable[str] = PROPAGATION) -> list[str]:
        ch = self._children.get(go_id, {})
        return [c for r in relations for c in ch.get(r, ())]

    def is_root(self, go_id: str) -> bool:
        """No ``is_a`` / ``part_of`` parent: the top of an aspect (the three GO roots in a full
        ontology). Roots are never scored (see :mod:`protgo.go.scoring`)."""
        return not self.parents(go_id)

    @property
    def roots(self) -> list[str]:
        return [t for t in self.terms if self.is_root(t)]

    def ancestors(
        self, go_id: str, relations: Iterable[str] = PROPAGATION, radius: int | None = None
    ) -> frozenset[str]:
        """Proper ancestors of ``go_id`` (all, or within ``radius`` edges)."""
        rels = tuple(relations)
        if radius is not None:
            return self._within(go_id, radius, lambda t: self.parents(t, rels))
        key = (go_id, rels)
        hit = self._anc_cache.get(key)
        if hit is not None:
            return hit
        # Iterative post-order so deep chains never hit Python's recursion limit.
        stack = [go_id]
        while stack:
            t = stack[-1]
            pending = [p for p in self.parents(t, rels) if (p, rels) not in self._anc_cache]
            if pending:
                stack.extend(pending)
                continue
            stack.pop()
            if (t, rels) in self._anc_cache:
                continue
            acc: set[str] = set()
            for p in self.parents(t, rels):
                acc.add(p)
                acc |= self._anc_cache[(p, rels)]
            self._anc_cache[(t, rels)] = frozenset(acc)
        return self._anc_cache[key]

    def descendants(
        self, go_id: str, relations: Iterable[str] = PROPAGATION, radius: int | None = None
    ) -> frozenset[str]:
        rels = tuple(relations)
        return self._within(go_id, radius, lambda t: self.children(t, rels))

    @staticmethod
    def _within(start: str, radius: int | None, step) -> frozenset[str]:
        seen: set[str] = set()
        frontier = deque([(start, 0)])
        while frontier:
            t, d = frontier.popleft()
            if radius is not None and d >= radius:
                continue
            for n in step(t):
                if n not in seen:
                    seen.add(n)
                    frontier.append((n, d + 1))
        seen.discard(start)
        return frozenset(seen)

    def siblings(self, go_id: str, relations: Iterable[str] = ("is_a",)) -> frozenset[str]:
        """Terms sharing a direct parent with ``go_id`` (excluding itself and its relatives)."""
        rels = tuple(relations)
        sib = {c for p in self.parents(go_id, rels) for c in self.children(p, rels)}
        sib -= self.ancestors(go_id, rels) | self.descendants(go_id, rels) | {go_id}
        return frozenset(sib)

    @cached_property
    def _depths(self) -> dict[str, int]:
        """Shortest is_a/part_of path length to a root."""
        depth: dict[str, int] = {}
        frontier = deque((r, 0) for r in self.terms if not self.parents(r))
        while frontier:
            t, d = frontier.popleft()
            if t in depth:
                continue
            depth[t] = d
            frontier.extend((c, d + 1) for c in self.children(t))
        return depth

    def depth(self, go_id: str) -> int:
        return self._depths[go_id]

    def propagate(self, go_ids: Iterable[str]) -> set[str]:
        """The annotation set closed upward over is_a and part_of."""
        out: set[str] = set()
        for g in go_ids:
            out.add(g)
            out |= self.ancestors(g)
        return out

    def propagate_scores(self, scores: Mapping[str, float]) -> dict[str, float]:
        """Make scores DAG-consistent: a parent gets at least the max of its descendants."""
        out: dict[str, float] = {}
        for g, s in scores.items():
            for t in (g, *self.ancestors(g)):
                if s > out.get(t, -math.inf):
                    out[t] = s
        return out

    def propagate_matrix(self, scores: np.ndarray, ids: list[str]) -> np.ndarray:
        """Vectorised :meth:`propagate_scores` for a (N, T) score matrix over terms ``ids``.

        Only edges among ``ids`` are used, so ``ids`` should be closed upward (as the terms of
        a dataset are). Edges are applied children-first by height, so one pass suffices; the
        plan of a term list is built once (:meth:`_propagation_plan`)."""
        st = np.ascontiguousarray(scores.T.copy())  # (T, N): rows are terms
        for child, parent, starts in self._propagation_plan(tuple(ids)):
            best = np.maximum.reduceat(st[child], starts, axis=0)  # per parent, its best child
            st[parent] = np.maximum(st[parent], best)
        return st.T

    def _propagation_plan(self, ids: tuple[str, ...]) -> list[tuple[np.ndarray, ...]]:
        """Per height level, children first: (child rows grouped by parent, each group's
        parent row, each group's start). A parent is above all of its children, so within a
        level no row is read after it is written."""
        plan = self._plans.get(ids)
        if plan is not None:
            return plan
        col = {g: i for i, g in enumerate(ids)}
        height = self._heights(list(ids))
        edges = sorted((height[c], col[p], col[c]) for c in ids for p in self.parents(c)
                       if p in col)  # fmt: skip
        plan = []
        for _, group in itertools.groupby(edges, key=lambda e: e[0]):
            level = np.array([(p, c) for _, p, c in group], dtype=np.int64)
            starts = np.flatnonzero(np.r_[True, level[1:, 0] != level[:-1, 0]])
            plan.append((level[:, 1], level[starts, 0], starts))
        if len(self._plans) >= 8:  # a few term lists per process: the aspects, all terms
            self._plans.clear()
        self._plans[ids] = plan
        return plan

    def _heights(self, ids: list[str]) -> dict[str, int]:
        """Longest path down to a leaf within ``ids``."""
        keep = set(ids)
        height: dict[str, int] = {}
        for g in ids:
            stack = [g]
            while stack:
                t = stack[-1]
                kids = [c for c in self.children(t) if c in keep and c not in height]
                if kids:
                    stack.extend(kids)
                    continue
                stack.pop()
                height[t] = 1 + max((height[c] for c in self.children(t) if c in keep), default=-1)
        return height

    def information_accretion(self, annotations: Mapping[str, Iterable[str]]) -> dict[str, float]:
        """IA(t) = -log2 P(t | all is_a/part_of parents of t), from propagated annotations.

        As CAFA defines it. Terms never annotated get 0.
        """
        members: dict[str, set[int]] = {}
        for i, terms in enumerate(annotations.values()):
            for t in self.propagate(terms):
                members.setdefault(t, set()).add(i)
        ia: dict[str, float] = dict.fromkeys(self.terms, 0.0)
        for t, with_t in members.items():
            parents = sorted((members[p] for p in self.parents(t)), key=len)
            if not parents:
                continue
            # Proteins carrying every parent; propagation guarantees each parent has members.
            with_parents = set.intersection(*parents) if len(parents) > 1 else parents[0]
            ia[t] = -math.log2(len(with_t) / len(with_parents))
        return ia
