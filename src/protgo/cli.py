"""The ``protgo`` command. Heavy imports (torch, transformers) happen inside commands so that
``protgo --help`` stays fast."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from protgo.errors import UserError

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="protgo: predict Gene Ontology terms by aligning ESM protein and GO text embeddings.",
)
data_app = typer.Typer(
    no_args_is_help=True, help="Fetch GO, sequences and annotations; build datasets."
)
app.add_typer(data_app, name="data")

DataDirOpt = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data directory (default: $PROTGO_DATA or ~/.cache/protgo)."),
]
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="Experiment YAML.")]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="Override a config value: section.key=value.")
]


def _data_dir(path: Path | None) -> Path:
    from protgo.config import default_data_dir

    return path.expanduser() if path else default_data_dir()


@data_app.command("fetch")
def data_fetch(
    source: Annotated[
        str, typer.Option(help="debian (GO.db, org.Hs.eg.db, metastudent) or web.")
    ] = "debian",
    data_dir: DataDirOpt = None,
) -> None:
    """Download the raw GO, sequence and annotation sources into the data directory."""
    from protgo.data import sources

    if source == "debian":
        paths = sources.fetch_debian(_data_dir(data_dir))
    elif source == "web":
        paths = sources.fetch_web(_data_dir(data_dir))
    else:
        raise UserError(f"--source must be 'debian' or 'web', got '{source}'")
    typer.echo(f"data ready in {paths.root}")


def main() -> None:
    try:
        app()
    except UserError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)
