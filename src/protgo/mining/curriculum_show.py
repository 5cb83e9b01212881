"""Showing the curriculum: a plain-text table of the parameters at chosen steps, a plot of
each parameter over training, and ``protgo curriculum show``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from protgo.data.folder import DatasetFolder
from protgo.errors import UserError
from protgo.mining.curriculum import STAGES, CurriculumParams, CurriculumScheduler
from protgo.mining.dataset import epoch_steps


def table(sched: CurriculumScheduler, steps: Sequence[int]) -> str:
    """A plain-text table, one row per step."""
    names = list(CurriculumParams.__dataclass_fields__)
    rows = [["step", *names]]
    for step in steps:
        p = sched(step).as_dict()
        rows.append([str(step), *(_fmt(p[k]) for k in names)])
    width = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(r, width, strict=True)) for r in rows)


def plot(sched: CurriculumScheduler, path: Path, n_points: int = 400) -> Path:
    """A PNG with one panel per parameter over all steps (written atomically)."""
    steps = sorted({round(i * sched.last_step / (n_points - 1)) for i in range(n_points)})
    params = [sched(s).as_dict() for s in steps]
    names = [k for k in CurriculumParams.__dataclass_fields__ if k != "stage"]
    title = (f"curriculum ({sched.cfg.schedule}; dashed: end of warm-up; "
             f"{sched.total_steps} steps)")  # fmt: skip

    def marks(panels: dict) -> None:
        for ax in panels.values():
            ax.axvline(sched.warmup_steps, color="grey", lw=0.8, ls="--")
        _mark_stages(sched, panels["lambda_attr"])

    return plot_panels(steps, {n: [p[n] for p in params] for n in names}, path, title, marks)


def plot_panels(steps: Sequence[int], columns: dict[str, list], path: Path, title: str,
                marks=None) -> Path:  # fmt: skip
    """One step-line panel per column over ``steps`` (booleans drawn off / on), 3 rows, as a
    PNG written atomically; ``marks(panels)`` may draw on the panels by name first. Used by
    `curriculum show` and by the report (from the ``curriculum.tsv`` a run wrote)."""
    from protgo.extras import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(3, (len(columns) + 2) // 3, figsize=(12, 9), sharex=True)
    panels = dict(zip(columns, axes.flat, strict=False))
    for name, ax in panels.items():
        values = columns[name]
        ax.plot(steps, [float(v) for v in values], drawstyle="steps-post")
        ax.set_title(name)
        if all(isinstance(v, bool) for v in values):
            ax.set_yticks([0, 1], ["off", "on"])
    for ax in list(axes.flat)[len(columns) :]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("step")
    if marks is not None:
        marks(panels)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(path)
    return path


def _mark_stages(sched: CurriculumScheduler, ax) -> None:
    """Stage boundaries (dotted) and letters on the lambda_attr panel."""
    edges = [0.0, *sched.stages.boundaries, 1.0]
    for k, letter in enumerate(STAGES):
        lo, hi = edges[k] * sched.last_step, edges[k + 1] * sched.last_step
        if k:
            ax.axvline(lo, color="tab:orange", lw=0.8, ls=":")
        if hi > lo:
            ax.text((lo + hi) / 2, 0.5, letter, transform=ax.get_xaxis_transform(),
                    ha="center", color="tab:orange")  # fmt: skip


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def show_schedule(
    cfg, steps_per_epoch: int | None, at: str | None, png: Path | None, data_dir: Path
) -> tuple[str, Path]:
    """``protgo curriculum show``: (header + table, plot path) for a whole ``Config``."""
    if steps_per_epoch is None:  # the training proteins with a term of the run's aspects
        folder = DatasetFolder.load(cfg.data.dataset, data_dir)
        onto, aspects = folder.ontology, set(cfg.data.aspects)
        n_train = sum(
            any(onto.aspect(t) in aspects for t in folder.annotations.get(p, ()) if t in onto)
            for p in folder.ids("train")
        )  # fmt: skip
        steps_per_epoch = max(1, epoch_steps(n_train, cfg.train.batch_size))
    sched = CurriculumScheduler(
        cfg.curriculum, cfg.stages, cfg.train.epochs * steps_per_epoch, steps_per_epoch
    )
    if at:
        try:
            steps = [int(x) for x in at.split(",") if x.strip()]
        except ValueError:
            raise UserError(f"--at takes comma-separated step numbers, got '{at}'") from None
    else:
        steps = sched.default_steps()
    head = (
        f"curriculum: {sched.total_steps} steps ({cfg.train.epochs} epochs x {steps_per_epoch}), "
        f"{cfg.curriculum.schedule}, warm-up {sched.warmup_steps} steps"
    )
    path = plot(sched, png or cfg.train.out_dir / "curriculum.png")
    return head + "\n" + table(sched, steps), path
