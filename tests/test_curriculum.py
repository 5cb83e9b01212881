"""Curriculum scheduler: start and end values, monotonicity, linear vs cosine, stages, CLI."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from protgo.cli import app
from protgo.config import CurriculumConfig, StagesConfig
from protgo.errors import UserError
from protgo.mining.curriculum import CurriculumScheduler

RISING = ("hard_frac", "shortlist_M", "k_hard")
FALLING = ("random_k", "hier_up", "hier_down")


def sched(schedule="cosine", total=1000, per_epoch=100, **kw) -> CurriculumScheduler:
    return CurriculumScheduler(CurriculumConfig(schedule=schedule, **kw), StagesConfig(),
                               total, per_epoch)  # fmt: skip


def test_start_values_through_warmup_and_end_values_at_last_step():
    s = sched()
    c = s.cfg
    assert s.warmup_steps == 100  # one epoch
    for step in (0, 50, 100):
        p = s(step)
        assert p.hard_frac == c.hard_frac[0] and p.k_hard == c.k_hard[0]
        assert p.shortlist_M == c.shortlist_M[0] and p.random_k == c.random_k[0]
        assert (p.hier_up, p.hier_down) == (c.hier_up[0], c.hier_down[0])
        assert p.inbatch_easy is c.inbatch_easy[0] and p.siblings is False
    end = s(999)
    assert end.hard_frac == pytest.approx(0.8) and end.k_hard == 64
    assert (end.shortlist_M, end.random_k, end.hier_up, end.hier_down) == (256, 8, 1, 1)
    assert end.inbatch_easy is False and end.siblings is True
    assert s(5000) == end  # past the end: held


@settings(max_examples=30, deadline=None)
@given(
    st.sampled_from(["cosine", "linear"]), st.integers(2, 5000), st.integers(1, 800),
    st.floats(0, 3),
)  # fmt: skip
def test_monotone_where_it_should_be(schedule, total, per_epoch, warmup):
    s = sched(schedule, total, per_epoch, warmup_epochs=warmup)
    steps = sorted({0, *range(0, total, max(1, total // 50)), total - 1})
    ps = [s(i) for i in steps]
    for a, b in zip(ps, ps[1:], strict=False):
        assert all(getattr(b, k) >= getattr(a, k) for k in RISING)
        assert all(getattr(b, k) <= getattr(a, k) for k in FALLING)
        assert b.siblings >= a.siblings and b.inbatch_easy <= a.inbatch_easy
        assert "ABCD".index(b.stage) >= "ABCD".index(a.stage)
    assert ps[-1].hard_frac == pytest.approx(0.8)


def test_linear_and_cosine_differ_as_they_should():
    lin, cos = sched("linear"), sched("cosine")
    mid = (lin.warmup_steps + lin.last_step) / 2
    quarter = round(lin.warmup_steps + (lin.last_step - lin.warmup_steps) / 4)
    assert lin.progress(round(mid)) == pytest.approx(0.5, abs=0.01)
    assert cos.progress(round(mid)) == pytest.approx(0.5, abs=0.01)  # both cross at the middle
    # cosine moves slowly at first: at a quarter it is (1 - cos(pi/4))/2 ~ 0.146, linear 0.25
    assert cos.progress(quarter) == pytest.approx((1 - math.cos(math.pi / 4)) / 2, abs=0.01)
    assert lin.progress(quarter) == pytest.approx(0.25, abs=0.01)
    assert cos(quarter).hard_frac < lin(quarter).hard_frac


def test_stages_ramp_hold_and_switch_off_lambda_attr():
    s = CurriculumScheduler(CurriculumConfig(), StagesConfig(boundaries=(0.1, 0.3, 0.5),
                            lambda_attr_start=0.02, lambda_attr_max=0.1), 1001, 100)  # fmt: skip
    assert s(0).stage == "A" and s(0).lambda_attr == pytest.approx(0.02)
    assert s(150).stage == "B" and s(150).lambda_attr == pytest.approx(0.02 + 0.5 * 0.08)
    assert s(300).stage == "C" and s(400).lambda_attr == pytest.approx(0.1)
    assert s(500).stage == "D" and s(1000).lambda_attr == 0.0
    with pytest.raises(UserError, match="boundaries"):
        CurriculumScheduler(CurriculumConfig(), StagesConfig(boundaries=(0.5, 0.3, 0.9)), 10, 1)


def test_table_and_plot(tmp_path):
    s = sched()
    from protgo.mining.curriculum_show import plot, table

    text = table(s, [0, 100, 999])
    assert text.splitlines()[0].split()[:3] == ["step", "hard_frac", "shortlist_M"]
    assert len(text.splitlines()) == 4 and "0.800" in text.splitlines()[-1]
    png = plot(s, tmp_path / "c.png", n_points=50)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_show(tmp_path):
    png = tmp_path / "curr.png"
    r = CliRunner().invoke(app, ["curriculum", "show", "--steps-per-epoch", "50",
                                 "--set", "train.epochs=4", "--at", "0,50,199",
                                 "--png", str(png)])  # fmt: skip
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].startswith("curriculum: 200 steps")
    assert [ln.split()[0] for ln in lines[2:5]] == ["0", "50", "199"]
    assert png.is_file()
