"""GO texts per phase: base text, relation tokens, tokenization, phase switching."""

from __future__ import annotations

import pytest

from protgo.config import GoTextConfig
from protgo.data.ontology import Ontology
from protgo.encoders.text import load_text_encoder
from protgo.errors import UserError
from protgo.stores.go_text import RELATION_TOKENS, GoTextStore

TOKENS = [tok for tok, _ in RELATION_TOKENS.values()]


@pytest.fixture
def ontology(tiny_obo) -> Ontology:
    return Ontology.from_obo(tiny_obo)


@pytest.fixture(scope="module")
def encoder():
    return load_text_encoder()


def texts(store: GoTextStore, phase: int) -> dict[str, str]:
    store.update_phase_and_tokenize(phase)
    return dict(zip(store.ids, store.texts, strict=True))


def test_phase0_is_name_and_definition_without_relation_tokens(ontology):
    t = texts(GoTextStore(ontology, GoTextConfig()), 0)
    assert t["GO:0000006"] == "glucose metabolic process: Glucose chemistry."
    assert t["GO:0000004"] == 'sugar metabolic process: Sugar chemistry, "quoted".'
    # no definition in GO: name + synonyms
    assert t["GO:0000005"] == "lipid metabolic process: lipid metabolism"
    assert "GO:0000009" not in t  # obsolete
    assert not any(tok in s for s in t.values() for tok in TOKENS)


def test_later_phases_add_relation_tokens_where_terms_have_those_relations(ontology):
    store = GoTextStore(ontology, GoTextConfig())
    p1, p2 = texts(store, 1), texts(store, 2)
    assert p1["GO:0000006"] == (
        "glucose metabolic process: Glucose chemistry. [IS_A] sugar metabolic process"
    )
    assert "[PART_OF]" not in p1["GO:0000006"]  # part_of enters at phase 2
    assert p2["GO:0000006"].endswith("[IS_A] sugar metabolic process [PART_OF] signaling")
    assert p2["GO:0000007"].endswith("[IS_A] root process [REGULATES] metabolic process")
    assert p2["GO:0000008"].endswith("[POS_REGULATES] sugar metabolic process")
    for root in ("GO:0000001", "GO:0000010"):  # no parents: text unchanged
        assert p1[root] == p2[root] == texts(store, 0)[root]


def test_tokenizer_keeps_each_relation_token_whole(ontology, encoder):
    store = GoTextStore(ontology, GoTextConfig())
    tok = store.update_phase_and_tokenize(2, encoder)
    assert store.phase == 2 and tok is store.tokenized and tok.n_truncated == 0
    token_ids = {t: encoder.tokenizer.convert_tokens_to_ids(t) for t in store.relation_tokens()}
    assert set(token_ids) == set(TOKENS)
    seen = 0
    for text, ids in zip(store.texts, tok.input_ids, strict=True):
        for t, tid in token_ids.items():
            assert ids.count(tid) == text.count(t)
            seen += ids.count(tid)
    assert seen >= 5
    # switching back to phase 0 removes them again
    tok0 = store.update_phase_and_tokenize(0, encoder)
    assert not any(tid in ids for ids in tok0.input_ids for tid in token_ids.values())


def test_truncation_count_reported(ontology, encoder):
    store = GoTextStore(ontology, GoTextConfig())
    saved = encoder.max_length
    encoder.max_length = 8
    try:
        tok = store.update_phase_and_tokenize(2, encoder)
    finally:
        encoder.max_length = saved
    assert tok.n_truncated == sum(n > 8 for n in tok.lengths) > 0
    assert max(len(x) for x in tok.input_ids) == 8


def test_aspects_ids_phases_and_hash(ontology):
    mf = GoTextStore(ontology, GoTextConfig(), aspects=["MF"])
    assert mf.ids == ["GO:0000010", "GO:0000011"] and mf.aspects() == ["MF", "MF"]
    with pytest.raises(UserError, match="GO:1234567"):
        GoTextStore(ontology, GoTextConfig(), ids=["GO:0000001", "GO:1234567"])
    store = GoTextStore(ontology, GoTextConfig(phase_relations=[[], ["regulates"]]))
    with pytest.raises(UserError, match="phase 2"):
        store.update_phase_and_tokenize(2)
    assert set(store.relation_tokens()) == {"[REGULATES]", "[POS_REGULATES]", "[NEG_REGULATES]"}
    store.update_phase_and_tokenize(0)
    h0 = store.text_hash()
    store.update_phase_and_tokenize(1)
    assert store.text_hash() != h0
    assert "[IS_A]" not in " ".join(store.texts)


def test_max_related_caps_names_per_relation(ontology):
    ontology.terms["GO:0000006"].parents["is_a"] = ["GO:0000002", "GO:0000003", "GO:0000004"]
    store = GoTextStore(ontology, GoTextConfig(max_related=2))
    assert texts(store, 1)["GO:0000006"].count("[IS_A]") == 2
