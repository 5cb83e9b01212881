"""The run report renders from files in the formats `protgo evaluate`, the trainer and
`protgo predict --attributions` write (small made-up figures)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from protgo.config import load_config

CONFIGS = Path(__file__).parent.parent / "src" / "protgo" / "configs"
METHODS = {"protgo": 0.55, "blend": 0.6, "diamond": 0.5, "knn": 0.45, "mlp": 0.4, "naive": 0.35}


def _eval_dir(path: Path) -> Path:
    """results.tsv and curves.tsv with the columns evaluate_split writes."""
    path.mkdir()
    rows, curves = [], []
    for aspect in ("MF", "CC"):
        for m, f in METHODS.items():
            zero = 0.5 if m in ("mlp", "naive") else 0.5 + f / 4
            rows.append(f"{m}\t{aspect}\t{f:.4f}\t0.3\t0.9\t{f + .05:.4f}\t{f - .05:.4f}\t9.1"
                        f"\t{f - .1:.4f}\t{12 - 10 * f:.4f}\t0.4\t{zero:.4f}\t{zero + .05:.4f}"
                        f"\t0.1\t0.2\t40\t7")  # fmt: skip
            for tau in np.arange(0.01, 1, 0.01):
                rc = (1 - tau) * (f + 0.3)
                pr = min(1.0, tau + f / 2)
                curves.append(f"{m}\t{aspect}\t{tau:.2f}\t{pr:.4f}\t{rc:.4f}\t"
                              f"{2 * pr * rc / (pr + rc):.4f}")  # fmt: skip
    head = (
        "method\taspect\tfmax\ttau\tcoverage\tprecision\trecall\tsmin_unweighted\twfmax"
        "\tsmin\ttau_smin\tzero_auc\tfew_auc\tzero_aupr\tfew_aupr\tfew_terms\tzero_terms"
    )
    (path / "results.tsv").write_text(head + "\n" + "\n".join(rows) + "\n")
    (path / "curves.tsv").write_text("method\taspect\ttau\tprecision\trecall\tf\n"
                                     + "\n".join(curves) + "\n")  # fmt: skip
    return path


def _attributions(path: Path) -> Path:
    rng = np.random.default_rng(0)
    doc = {}
    for k, n in enumerate((80, 300, 45)):
        att = rng.random(n)
        att /= att.sum()
        doc[f"P{k}"] = {
            "sequence": "M" * n,
            "attention": att.tolist(),
            "window": 9,
            "masking": {"GO:0003824": (rng.normal(size=n) / 50).tolist()},
        }
    path.write_text(json.dumps(doc))
    return path


def test_report_renders_every_section(trained, tmp_path):
    """A real training run's folder (metrics.jsonl, curriculum.tsv as the trainer wrote them)
    beside an evaluation folder."""
    from protgo.eval.report import build_report

    run = trained[0].parent.parent
    cfg = load_config(CONFIGS / "demo.yaml", ["train.epochs=3"])
    out = tmp_path / "report"
    page = build_report(run, _eval_dir(tmp_path / "eval"), cfg, out,
                        attributions=_attributions(tmp_path / "attr.json"))  # fmt: skip
    text = page.read_text()
    import base64

    for png in ("metrics", "pr_curves", "term_auc", "training", "curriculum", "attr"):
        path = out / f"{png}.png"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size > 10_000  # a real plot, not an empty canvas
        # inlined: the page is one file that can be mailed
        assert base64.b64encode(path.read_bytes()).decode() in text
    assert 'src="' not in text.replace('src="data:image/png;base64,', "")  # no file links
    assert "<table" in text and "protgo" in text and "zero_auc" in text
    assert "Provenance" in text and "config sha256" in text and "Appendix" in text
    assert not list(out.glob(".*.tmp*"))  # every file renamed into place


def test_report_without_evaluation_keeps_training(trained, tmp_path):
    from protgo.eval.report import build_report

    page = build_report(trained[0].parent.parent, None, None, tmp_path / "r")
    text = page.read_text()
    assert 'alt="Training"' in text and "Fmax, weighted Fmax" not in text


@pytest.mark.parametrize("missing", ["zero_auc", "few_auc"])
def test_term_auc_plot_uses_what_is_there(tmp_path, missing):
    import pandas as pd

    from protgo.eval.report import plot_term_auc

    res = pd.read_csv(_eval_dir(tmp_path / "e") / "results.tsv", sep="\t").drop(columns=missing)
    assert plot_term_auc(res, tmp_path / "t.png").is_file()
    assert plot_term_auc(res.drop(columns=["zero_auc", "few_auc"], errors="ignore"),
                         tmp_path / "u.png") is None  # fmt: skip
