import math

import numpy as np
import pytest

from protgo.data import godb
from protgo.data.ontology import ALL_RELATIONS, Ontology, Term, parse_obo, write_obo
from protgo.errors import UserError


@pytest.fixture
def onto(tiny_obo):
    return Ontology.from_obo(tiny_obo)


def test_parse_fields(onto):
    t = onto.terms["GO:0000004"]
    assert t.name == "sugar metabolic process"
    assert t.definition == 'Sugar chemistry, "quoted".'
    assert t.aspect == "BP"
    assert onto.terms["GO:0000002"].synonyms == ["metabolism"]
    assert onto.terms["GO:0000006"].parents == {"is_a": ["GO:0000004"], "part_of": ["GO:0000003"]}
    assert "GO:0000009" in onto.obsolete and "GO:0000009" not in onto
    assert onto.canonical("GO:0000099") == "GO:0000003"
    assert onto.canonical("GO:0000009") is None
    assert sorted(onto.roots) == ["GO:0000001", "GO:0000010"]


def test_ancestors_by_relation_and_radius(onto):
    assert onto.ancestors("GO:0000006") == {"GO:0000004", "GO:0000002", "GO:0000003", "GO:0000001"}
    assert onto.ancestors("GO:0000006", ("is_a",)) == {"GO:0000004", "GO:0000002", "GO:0000001"}
    assert onto.ancestors("GO:0000006", radius=1) == {"GO:0000004", "GO:0000003"}
    # regulates edges only count when asked for
    assert "GO:0000004" not in onto.ancestors("GO:0000008")
    assert "GO:0000004" in onto.ancestors("GO:0000008", ALL_RELATIONS)
    assert onto.descendants("GO:0000002") == {"GO:0000004", "GO:0000005", "GO:0000006"}
    assert onto.descendants("GO:0000002", radius=1) == {"GO:0000004", "GO:0000005"}


def test_siblings_depth(onto):
    assert onto.siblings("GO:0000004") == {"GO:0000005"}
    assert onto.siblings("GO:0000002") == {"GO:0000003", "GO:0000007"}
    assert onto.depth("GO:0000001") == 0
    assert onto.depth("GO:0000006") == 2  # via part_of signaling


def test_propagation(onto):
    assert onto.propagate({"GO:0000005"}) == {"GO:0000005", "GO:0000002", "GO:0000001"}
    scores = onto.propagate_scores({"GO:0000006": 0.9, "GO:0000002": 0.3, "GO:0000005": 0.5})
    assert scores["GO:0000002"] == 0.9 and scores["GO:0000003"] == 0.9
    assert scores["GO:0000005"] == 0.5 and "GO:0000007" not in scores


def test_propagate_matrix_equals_reference(onto):
    ids = onto.ids()
    rng = np.random.default_rng(0)
    for _ in range(2):  # the second call reuses the term list's propagation plan
        m = rng.random((5, len(ids)))
        fast = onto.propagate_matrix(m, ids)
        for row, out in zip(m, fast, strict=True):
            ref = onto.propagate_scores(dict(zip(ids, row, strict=True)))
            np.testing.assert_allclose(out, [ref[g] for g in ids])
        assert not np.shares_memory(fast, m) and (m <= fast).all()  # the input is left as is


def test_information_accretion_by_hand(onto):
    ann = {"p1": {"GO:0000004"}, "p2": {"GO:0000005"}, "p3": {"GO:0000003"}, "p4": {"GO:0000006"}}
    ia = onto.information_accretion(ann)
    # P(metabolic | root) = 3/4; P(sugar | metabolic) = 2/3 (p1, p4);
    # glucose needs sugar AND signaling: p4 only has both -> P = 1/1.
    assert ia["GO:0000001"] == 0
    assert ia["GO:0000002"] == pytest.approx(-math.log2(3 / 4))
    assert ia["GO:0000004"] == pytest.approx(-math.log2(2 / 3))
    assert ia["GO:0000006"] == 0
    assert ia["GO:0000007"] == 0  # never annotated


def test_write_then_parse_roundtrip(onto, tmp_path):
    out = tmp_path / "go.obo"
    write_obo(list(onto.terms.values()), out)
    again = Ontology.from_obo(out)
    assert again.terms == onto.terms


def test_malformed_obo_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.obo"
    bad.write_text("[Term]\nid: GO:1\nname x\n")
    with pytest.raises(UserError, match=r"bad.obo:3"):
        parse_obo(bad)
    with pytest.raises(UserError, match="not found"):
        parse_obo(tmp_path / "missing.obo")


@pytest.mark.parametrize(
    ("edges", "cycle"),
    [
        ({"A": {"is_a": ["A"]}}, "A -> A"),  # a self-loop
        ({"A": {"is_a": ["B"]}, "B": {"part_of": ["C"]}, "C": {"regulates": ["A"]}},
         "A -> B -> C -> A"),  # across relations
    ],
)  # fmt: skip
def test_cycle_is_one_error_naming_its_terms(edges, cycle):
    terms = [Term(t, parents=ps) for t, ps in edges.items()] + [Term("R")]
    with pytest.raises(UserError, match=cycle):
        Ontology(terms)


def test_dag_with_dangling_parents_counts_them(onto):
    assert onto.find_cycle() is None and onto.dangling == {}
    o = Ontology([Term("A", parents={"is_a": ["GONE"], "part_of": ["B"]}), Term("B")])
    assert o.dangling == {"is_a": 1} and o.ancestors("A") == {"B"}


def test_real_go_closure_equals_godb_offspring(real_data_dir):
    """Ancestors over every relation type reproduce GO.db's transitive closure exactly."""
    sqlite = real_data_dir / "raw/debian/root/usr/lib/R/site-library/GO.db/extdata/GO.sqlite"
    onto = Ontology(godb.read_terms(sqlite))
    assert len(onto) == 43558
    desc: dict[str, set] = {}
    for g in onto.terms:
        for a in onto.ancestors(g, ALL_RELATIONS):
            desc.setdefault(a, set()).add(g)
    off = godb.offspring(sqlite)
    assert all(desc.get(g, set()) == off.get(g, set()) for g in onto.terms)
    # is_a + part_of alone is a smaller closure for many BP terms
    partial = sum(
        1 for g in onto.ids("BP") if onto.ancestors(g) != onto.ancestors(g, ALL_RELATIONS)
    )
    assert partial > 5000
