"""The text of each GO term, per ontology phase.

Phase 0 is ``name: definition``; where GO has no definition (about 19% of terms, mostly BP)
it is ``name: synonym; synonym`` (or the name alone). Later phases append one relation token
and the related term's name per direct relation, e.g.::

    glucose metabolic process: Glucose chemistry. [IS_A] sugar metabolic process [PART_OF] signaling

Which relations enter at which phase is ``go_text.phase_relations``. The group ``regulates``
covers the three regulation relations, each with its own token (``[REGULATES]``,
``[POS_REGULATES]``, ``[NEG_REGULATES]``): the direction of regulation is what tells
"positive regulation of X" from "negative regulation of X" apart, so it is kept. Relation
tokens are registered as special tokens of the text tokenizer (see
:meth:`protgo.encoders.text.TextEncoder.add_special_tokens`), so each stays one token.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable

from protgo.config import ASPECTS, GoTextConfig
from protgo.data.ontology import Ontology, Term
from protgo.errors import UserError

log = logging.getLogger(__name__)

# relation -> (special token, words whose embeddings initialise the token's row)
RELATION_TOKENS: dict[str, tuple[str, str]] = {
    "is_a": ("[IS_A]", "is a"),
    "part_of": ("[PART_OF]", "part of"),
    "regulates": ("[REGULATES]", "regulates"),
    "positively_regulates": ("[POS_REGULATES]", "positively regulates"),
    "negatively_regulates": ("[NEG_REGULATES]", "negatively regulates"),
}
# config group -> relations it brings in, in the order they are appended
RELATION_GROUPS: dict[str, tuple[str, ...]] = {
    "is_a": ("is_a",),
    "part_of": ("part_of",),
    "regulates": ("regulates", "positively_regulates", "negatively_regulates"),
}


def base_text(term: Term) -> str:
    """Phase-0 text: ``name: definition``, synonyms where there is no definition."""
    if term.definition:
        return f"{term.name}: {term.definition}"
    if term.synonyms:
        return f"{term.name}: {'; '.join(term.synonyms)}"
    return term.name


def phase_groups(cfg: GoTextConfig, phase: int) -> tuple[str, ...]:
    """The relation groups phase ``phase`` of ``go_text.phase_relations`` appends, in the
    order their tokens are appended."""
    n = len(cfg.phase_relations)
    if not 0 <= phase < n:
        raise UserError(
            f"text phase {phase} is not configured: go_text.phase_relations has {n} phases "
            f"(0..{n - 1})"
        )
    return tuple(g for g in RELATION_GROUPS if g in cfg.phase_relations[phase])


def text_recipe(cfg: GoTextConfig, phase: int) -> str:
    """What a phase's texts are made of, as a name: ``plain`` (``name: definition``), or the
    relation groups appended and how many related names each brings (``is_a+part_of-max4``).
    Phases with the same recipe have the same texts, whatever their number or config."""
    groups = phase_groups(cfg, phase)
    return "+".join(groups) + f"-max{cfg.max_related}" if groups else "plain"


def term_text(
    ontology: Ontology, go_id: str, relations: Iterable[str], max_related: int = 4
) -> str:
    """The text of ``go_id`` with ``[TOKEN] related name`` appended for each relation."""
    term = ontology.terms[go_id]
    parts = [base_text(term)]
    for rel in relations:
        token = RELATION_TOKENS[rel][0]
        related = sorted(p for p in term.parents.get(rel, ()) if p in ontology.terms)
        parts += [f"{token} {ontology.terms[p].name}" for p in related[:max_related]]
    return " ".join(parts)


class GoTextStore:
    """GO texts for one phase over a fixed list of terms (all of ``aspects``, sorted by id).

    ``texts[i]`` belongs to ``ids[i]``. After :meth:`update_phase_and_tokenize` with an
    encoder, ``tokenized.input_ids[i]`` holds its token ids and ``tokenized.n_truncated``
    how many texts were cut at the encoder's ``max_length``.
    """

    def __init__(
        self,
        ontology: Ontology,
        cfg: GoTextConfig,
        aspects: Iterable[str] | None = None,
        ids: Iterable[str] | None = None,
    ):
        self.ontology = ontology
        self.cfg = cfg
        if ids is None:
            keep = set(aspects) if aspects is not None else set(ASPECTS)
            ids = [t for t in ontology.ids() if ontology.aspect(t) in keep]
        else:
            ids = list(ids)
            missing = [t for t in ids if t not in ontology.terms]
            if missing:
                raise UserError(
                    f"GO ids not in the ontology: {', '.join(missing[:5])}"
                    f"{' ...' if len(missing) > 5 else ''} (check the dataset's go.obo)"
                )
        self.ids: list[str] = sorted(ids)
        self.phase: int | None = None
        self.texts: list[str] = []
        self.tokenized = None

    @property
    def n_phases(self) -> int:
        return len(self.cfg.phase_relations)

    def relations(self, phase: int) -> tuple[str, ...]:
        """The relations (OBO names) whose tokens phase ``phase`` appends."""
        groups = phase_groups(self.cfg, phase)
        return tuple(r for g in groups for r in RELATION_GROUPS[g])

    def relation_tokens(self) -> dict[str, str]:
        """Special token -> init words, for every relation of every configured phase."""
        rels = {r for p in range(self.n_phases) for r in self.relations(p)}
        return {tok: words for r, (tok, words) in RELATION_TOKENS.items() if r in rels}

    def texts_for_phase(self, phase: int) -> list[str]:
        rels = self.relations(phase)
        return [term_text(self.ontology, t, rels, self.cfg.max_related) for t in self.ids]

    def aspects(self) -> list[str]:
        return [self.ontology.aspect(t) for t in self.ids]

    def update_phase_and_tokenize(self, phase: int, encoder=None):
        """Rebuild the texts for ``phase``; with an encoder, register the relation tokens and
        tokenize (truncation count logged). Returns the :class:`Tokenized` texts or None."""
        self.texts = self.texts_for_phase(phase)
        self.phase = phase
        self.tokenized = None
        if encoder is None:
            return None
        encoder.add_special_tokens(self.relation_tokens())
        self.tokenized = encoder.tokenize(self.texts)
        n = self.tokenized.n_truncated
        log.info(
            "GO texts phase %d: %d terms, %d truncated at %d tokens",
            phase, len(self.ids), n, encoder.max_length,
        )  # fmt: skip
        return self.tokenized

    def text_hash(self) -> str:
        """Hash of the (id, text) pairs of the current phase; keys the vector cache."""
        if self.phase is None:
            raise RuntimeError("call update_phase_and_tokenize(phase) first")
        h = hashlib.sha256()
        for t, s in zip(self.ids, self.texts, strict=True):
            h.update(f"{t}\t{s}\n".encode())
        return h.hexdigest()[:16]
