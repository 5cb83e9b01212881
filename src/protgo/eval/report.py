"""One HTML page plus PNG files per run.

Inputs are the files other stages write: ``results.tsv`` and ``curves.tsv`` of
``protgo evaluate`` (method x aspect figures; precision-recall points), the run's
``metrics.jsonl`` (training and validation records, refresh events), its config (for the
curriculum schedule) and ``attributions.json`` of ``protgo predict --attributions``.
Each plot is a function of those data, so a missing input drops its section, not the page.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from protgo.extras import pyplot
from protgo.io import atomic_write_text
from protgo.mining.curriculum_show import plot_panels

# protgo first, then the baselines; colours fixed per method across every plot
METHOD_ORDER = ("protgo", "blend", "diamond", "knn", "mlp", "naive")
COLOURS = {"protgo": "tab:red", "blend": "tab:purple", "diamond": "tab:blue",
           "knn": "tab:green", "mlp": "tab:orange", "naive": "tab:gray"}  # fmt: skip
# One distinct colour per loss part (the default cycle repeats similar hues past six lines).
LOSS_COLOURS = {"total": "black", "con": "tab:blue", "bce": "tab:orange", "attr": "tab:green",
                "ent": "tab:purple", "dag": "tab:brown", "vtrue": "tab:pink",
                "distill": "tab:olive"}  # fmt: skip


def _save(fig, path: Path) -> Path:
    """Write a figure atomically (temp name, then rename)."""
    plt = pyplot()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(path)
    return path


def _methods(names) -> list[str]:
    names = list(dict.fromkeys(names))
    known = [m for m in METHOD_ORDER if m in names]
    return known + sorted(m for m in names if m not in METHOD_ORDER)


def _grouped_bars(ax, results, column: str, aspects: list[str], methods: list[str]) -> None:
    """One group of bars per aspect, one bar per method, for one results column."""
    width = 0.8 / len(methods)
    for k, m in enumerate(methods):
        sub = results[results["method"] == m].set_index("aspect")
        vals = [float(sub[column].get(a, np.nan)) for a in aspects]
        x = np.arange(len(aspects)) + (k - (len(methods) - 1) / 2) * width
        ax.bar(x, vals, width, label=m, color=COLOURS.get(m))
    ax.set_xticks(range(len(aspects)), aspects)


def plot_metric_bars(results, path: Path) -> Path:
    """Fmax, weighted Fmax and Smin per aspect: one bar per method."""
    plt = pyplot()
    metrics = [m for m in ("fmax", "wfmax", "smin") if m in results]
    aspects = sorted(results["aspect"].unique())
    methods = _methods(results["method"])
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.8), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        _grouped_bars(ax, results, metric, aspects, methods)
        better = "lower is better" if metric == "smin" else "higher is better"
        ax.set_title(f"{metric} ({better})")
    axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    return _save(fig, path)


def plot_pr_curves(curves, results, path: Path) -> Path:
    """Precision-recall over thresholds per aspect; a dot marks each method's Fmax point."""
    plt = pyplot()
    aspects = sorted(curves["aspect"].unique())
    fig, axes = plt.subplots(1, len(aspects), figsize=(4.5 * len(aspects), 4), squeeze=False)
    for ax, aspect in zip(axes[0], aspects, strict=True):
        for m in _methods(curves["method"]):
            c = curves[(curves["method"] == m) & (curves["aspect"] == aspect)]
            c = c[c["recall"].notna() & c["precision"].notna()].sort_values("tau")
            if c.empty:
                continue
            ax.plot(c["recall"], c["precision"], label=m, color=COLOURS.get(m), lw=1.5)
            best = results[(results["method"] == m) & (results["aspect"] == aspect)]
            if not best.empty and "recall" in best:
                ax.plot(best["recall"], best["precision"], "o", color=COLOURS.get(m))
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="recall", ylabel="precision",
               title=f"{aspect}: precision-recall (dot: Fmax)")  # fmt: skip
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    return _save(fig, path)


def plot_term_auc(results, path: Path) -> Path | None:
    """Mean per-term ROC AUC of zero-shot and few-shot terms per method (0.5 = chance)."""
    cols = [c for c in ("zero_auc", "few_auc") if c in results]
    if not cols:
        return None
    plt = pyplot()
    aspects = sorted(results["aspect"].unique())
    methods = _methods(results["method"])
    fig, axes = plt.subplots(1, len(cols), figsize=(4.8 * len(cols), 3.8), squeeze=False)
    for ax, col in zip(axes[0], cols, strict=True):
        _grouped_bars(ax, results, col, aspects, methods)
        ax.axhline(0.5, color="black", lw=0.8, ls="--")
        ax.set(ylim=(0, 1), title=f"{col.split('_')[0]}-shot terms: mean ROC AUC")
    axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))  # off the bars
    return _save(fig, path)


def plot_training(records: list[dict], path: Path) -> Path | None:
    """Loss parts over steps, validation Fmax per epoch (and per pass of the term-head
    stage, at the last step), text-phase changes as lines."""
    train = [r for r in records if r["kind"] == "train"]
    valid = [r for r in records if r["kind"] == "valid" and "head_epoch" not in r]
    head = [r for r in records if r["kind"] == "valid" and "head_epoch" in r]
    if not train:
        return None
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    steps = [r["step"] for r in train]
    for key, colour in LOSS_COLOURS.items():
        vals = [r.get(key) for r in train]
        if any(v is not None for v in vals):
            ax1.plot(steps, [np.nan if v is None else v for v in vals], label=key, color=colour,
                     lw=2 if key == "total" else 1)  # fmt: skip
    phase_steps = sorted({r["step"] for r in records if r["kind"] == "event"
                          and "text phase" in r.get("reason", "") and r["step"] > 0})  # fmt: skip
    for ax in (ax1, ax2):
        for s in phase_steps:
            ax.axvline(s, color="grey", ls=":", lw=1)
    ax1.set(xlabel="step", ylabel="loss (window mean)", title="training losses (dotted: phase)")
    ax1.legend(fontsize=8)
    if valid:
        vs = [r["step"] for r in valid]
        ax2.plot(vs, [r["fmax"] for r in valid], "o-", color="tab:red", label="valid Fmax")
        if "fmax_random" in valid[0]:
            ax2.plot(vs, [r["fmax_random"] for r in valid], "s--", color="grey",
                     label="random scores")  # fmt: skip
        if head:
            ax2.plot([r["step"] for r in head], [r["fmax"] for r in head], "x", color="tab:blue",
                     label="term-head passes")  # fmt: skip
        ax2.legend(fontsize=8)
    ax2.set(xlabel="step", ylabel="Fmax", title="validation (retrieval over all GO terms)")
    return _save(fig, path)


def plot_attributions(attributions: dict, path: Path, n: int = 3,
                      names: dict[str, str] | None = None) -> Path | None:  # fmt: skip
    """Per-residue importance for ``n`` proteins: pooling attention and the masking drop of
    the protein's top term (a residue matters when hiding it lowers the term's score). The
    eight strongest residues (at least 9 apart) are marked with their letters."""
    names = names or {}
    items = [(p, a) for p, a in attributions.items() if a.get("masking")][:n]
    if not items:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(len(items), 1, figsize=(11, 2.6 * len(items)), squeeze=False)
    for ax, (pid, a) in zip(axes[:, 0], items, strict=True):
        term, drop = next(iter(a["masking"].items()))
        x = np.arange(1, len(a["attention"]) + 1)
        label = f"{term} {names.get(term, '')}".strip()
        ax.plot(x, drop, color="tab:red", lw=1, label=f"masking drop: {label[:70]}")
        ax.axhline(0, color="black", lw=0.5)
        seq = a.get("sequence", "")
        for i in _peaks(np.asarray(drop), 8, 9) if seq else []:
            ax.annotate(f"{seq[i]}{i + 1}", (x[i], drop[i]), fontsize=7, color="tab:red",
                        textcoords="offset points", xytext=(0, 3), ha="center")  # fmt: skip
        ax.set(ylabel="score drop", xlim=(1, len(x)))
        twin = ax.twinx()
        # attention x L: 1 where the weight is uniform, so peaks stand out at any length
        rel = np.asarray(a["attention"]) * len(x)
        twin.plot(x, rel, color="tab:blue", alpha=0.6, lw=1, label="attention x L (1: uniform)")
        twin.set_ylabel("attention x L")
        ax.set_title(f"{pid} ({len(x)} residues)", fontsize=10)
        lines = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
        ax.legend(lines, [h.get_label() for h in lines], fontsize=8, loc="upper right")
    axes[-1, 0].set_xlabel("residue")
    return _save(fig, path)


def _peaks(values: np.ndarray, n: int, apart: int) -> list[int]:
    """The ``n`` highest positions at least ``apart`` from each other (readable labels)."""
    picked: list[int] = []
    for i in np.argsort(-values, kind="stable"):
        if all(abs(int(i) - j) >= apart for j in picked):
            picked.append(int(i))
        if len(picked) == n:
            break
    return picked


def plot_curriculum(run_dir: Path | None, path: Path) -> Path | None:
    """The curriculum the run followed, from the ``curriculum.tsv`` it wrote (one panel per
    parameter over the steps; None when the run wrote none)."""
    table = Path(run_dir) / "curriculum.tsv" if run_dir else None
    if table is None or not table.is_file():
        return None
    head, *rows = [ln.split("\t") for ln in table.read_text().splitlines() if ln.strip()]
    cols = {name: [_cell(r[i]) for r in rows] for i, name in enumerate(head) if name != "stage"}
    steps = [int(s) for s in cols.pop("step")]
    title = f"curriculum as the run wrote it ({table.name}, {steps[-1]} steps)"
    return plot_panels(steps, cols, Path(path), title)


def _cell(text: str):
    """A curriculum.tsv value: True / False, else a number."""
    return text == "True" if text in ("True", "False") else float(text)


def _read_records(run_dir: Path | None) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl" if run_dir else None
    if path is None or not path.is_file():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def _table_html(results) -> str:
    df = results.copy()
    if {"fmax_lo", "fmax_hi"} <= set(df):
        pairs = zip(df["fmax_lo"], df["fmax_hi"], strict=True)
        df["fmax 95% CI"] = [f"{lo:.3f}-{hi:.3f}" if lo == lo else "-" for lo, hi in pairs]
    df = df.rename(columns={"tau": "threshold"})
    cols = [c for c in ("method", "aspect", "proteins", "fmax", "fmax 95% CI", "threshold",
                        "wfmax", "smin", "coverage", "zero_auc", "zero_aupr", "few_auc",
                        "zero_terms") if c in df]  # fmt: skip
    df = df[cols]
    df["_o"] = df["method"].map({m: i for i, m in enumerate(METHOD_ORDER)}).fillna(99)
    df = df.sort_values(["aspect", "_o"]).drop(columns="_o")
    return df.to_html(index=False, float_format=lambda v: f"{v:.3f}", na_rep="-", border=0)


def provenance(cfg, data_dir: Path | None, run_dir: Path | None) -> dict[str, str]:
    """What the page was made from: protgo version, date, dataset and GO release, checkpoint,
    protein and text encoders, and a hash of the resolved config."""
    import hashlib
    import time

    import protgo

    out = {"protgo": protgo.__version__, "made": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                time.gmtime())}  # fmt: skip
    if cfg is not None:
        dump = json.dumps(cfg.model_dump(mode="json"), sort_keys=True)
        out |= {"dataset": cfg.data.dataset, "aspects": ", ".join(cfg.data.aspects),
                "protein encoder": cfg.residues.model, "text encoder": cfg.go_text.encoder,
                "config sha256": hashlib.sha256(dump.encode()).hexdigest()[:16]}  # fmt: skip
        info = Path(data_dir or cfg.data.resolved_data_dir()) / "datasets" / cfg.data.dataset
        if (info / "dataset.json").is_file():
            meta = json.loads((info / "dataset.json").read_text())
            prov = meta.get("provenance", {})
            out["GO release"] = str(prov.get("go_source_date") or prov.get("go_source", "?"))
            counts = meta.get("proteins", {})
            out["proteins (train/valid/test)"] = "/".join(
                str(counts.get(k, "?")) for k in ("train", "valid", "test")
            )
    if run_dir is not None:
        best = Path(run_dir) / "checkpoints" / "best.pt"
        if best.is_file():
            out["checkpoint"] = str(best)
    return out


def term_names(cfg, data_dir: Path | None) -> dict[str, str]:
    """GO id -> name from the run's dataset ontology ({} when it is not here)."""
    if cfg is None:
        return {}
    obo = Path(data_dir or cfg.data.resolved_data_dir()) / "datasets" / cfg.data.dataset
    if not (obo / "go.obo").is_file():
        return {}
    from protgo.data.ontology import Ontology

    return {t: v.name for t, v in Ontology.from_obo(obo / "go.obo").terms.items()}


def zero_shot_table(eval_dir: Path, names: dict[str, str], n: int = 15) -> str:
    """protgo's zero-shot terms (never seen in training): each term's own AUC on the test
    split and its three best-scored proteins (true ones in bold)."""
    import pandas as pd

    path = Path(eval_dir) / "terms.tsv"
    if not path.is_file():
        return ""
    df = pd.read_csv(path, sep="\t")
    df = df[(df["method"] == "protgo") & (df["class"] == "zero")]
    if df.empty:
        return ""
    # terms with at least 3 test positives first: an AUC from one positive says little
    df = df.assign(_few=df["positives"] < 3)
    df = df.sort_values(["aspect", "_few", "auc"], ascending=[True, True, False])
    rows = []
    for r in df.groupby("aspect").head(n).itertuples():
        tops = []
        for item in str(r.top).split():
            pid, score, truth = item.rsplit(":", 2)
            cell = f"{html.escape(pid)} ({float(score):.2f})"
            tops.append(f"<b>{cell}</b>" if truth == "1" else cell)
        rows.append(f"<tr><td>{r.aspect}</td><td>{r.term}</td><td style='text-align:left'>"
                    f"{html.escape(names.get(r.term, ''))}</td><td>{r.positives}</td>"
                    f"<td>{r.auc:.3f}</td><td style='text-align:left'>{', '.join(tops)}</td>"
                    "</tr>")  # fmt: skip
    head = ("<tr><th>aspect</th><th>term</th><th style='text-align:left'>name</th>"
            "<th>test positives</th><th>AUC</th>"
            "<th>best-scored proteins (bold: annotated)</th></tr>")  # fmt: skip
    note = (f"<p>{len(df)} zero-shot terms scored; per aspect the {n} with the highest AUC "
            "are shown, those with at least 3 test positives first.</p>")  # fmt: skip
    return f"{note}<table>{head}{''.join(rows)}</table>"


def _inline(png: Path, alt: str) -> str:
    """An <img> holding the PNG itself, so the page is one file that can be mailed."""
    import base64

    data = base64.b64encode(Path(png).read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def build_report(
    run_dir: Path | None, eval_dir: Path | None, cfg=None, out_dir: Path | None = None,
    attributions: Path | None = None, title: str = "protgo run report",
    data_dir: Path | None = None,
) -> Path:  # fmt: skip
    """Write ``out_dir/index.html`` (one self-contained file: images inlined) and its PNGs;
    returns the HTML path.

    ``eval_dir`` holds ``results.tsv``, ``curves.tsv`` and ``terms.tsv`` (``protgo
    evaluate``); ``run_dir`` the training run (``metrics.jsonl``); either may be None.
    ``data_dir`` (default: the config's) gives the dataset's provenance and GO term names."""
    import pandas as pd

    out = Path(out_dir or Path(run_dir or eval_dir) / "report")
    out.mkdir(parents=True, exist_ok=True)
    records = _read_records(run_dir)
    names = term_names(cfg, data_dir)
    prov = provenance(cfg, data_dir, run_dir)
    left = "style='text-align:left'"
    rows = "".join(f"<tr><th {left}>{html.escape(k)}</th><td {left}>{html.escape(v)}</td></tr>"
                   for k, v in prov.items())  # fmt: skip
    sections: list[tuple[str, str, Path | None]] = [("Provenance", f"<table>{rows}</table>", None)]
    if eval_dir is not None and (Path(eval_dir) / "results.tsv").is_file():
        results = pd.read_csv(Path(eval_dir) / "results.tsv", sep="\t")
        curves = pd.read_csv(Path(eval_dir) / "curves.tsv", sep="\t")
        ci = ("<p>Fmax 95% CI: percentile bootstrap over the test proteins (1,000 resamples); "
              "threshold: the score cut at Fmax.</p>")  # fmt: skip
        sections += [
            ("Results (test split, cafaeval)", ci + _table_html(results), None),
            ("Fmax, weighted Fmax, Smin", "", plot_metric_bars(results, out / "metrics.png")),
            ("Precision-recall", "", plot_pr_curves(curves, results, out / "pr_curves.png")),
            ("Zero- and few-shot terms", zero_shot_table(Path(eval_dir), names),
             plot_term_auc(results, out / "term_auc.png")),
        ]  # fmt: skip
    if attributions is not None and Path(attributions).is_file():
        attr = json.loads(Path(attributions).read_text())
        sections.append(("Residue attributions", "",
                         plot_attributions(attr, out / "attr.png", names=names)))  # fmt: skip
    sections += [
        ("Training", "", plot_training(records, out / "training.png")),
        ("Appendix: the curriculum", "", plot_curriculum(run_dir, out / "curriculum.png")),
    ]
    body = [f"<h1>{html.escape(title)}</h1>"]
    for name, text, png in sections:
        if not text and png is None:
            continue
        body.append(f"<h2>{html.escape(name)}</h2>{text}")
        if png is not None:
            body.append(_inline(png, name))
    style = ("body{font-family:sans-serif;max-width:1100px;margin:auto}img{max-width:100%}"
             "table{border-collapse:collapse}td,th{padding:2px 8px;text-align:right}")  # fmt: skip
    head = f"<meta charset='utf-8'><title>{html.escape(title)}</title><style>{style}</style>"
    page = f"<!doctype html><html><head>{head}</head><body>{''.join(body)}</body></html>\n"
    atomic_write_text(out / "index.html", page)
    return out / "index.html"
