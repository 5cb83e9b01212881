"""The ``protgo`` command. Heavy imports (torch, transformers) happen inside commands so that
``protgo --help`` stays fast."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from protgo.errors import UserError

# rich_markup_mode=None: plain help and errors (a mistyped option is three lines naming the
# close match; help wraps at words; rich's boxes broke sentences and showed <bool> on flags)
app = typer.Typer(
    rich_markup_mode=None,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="protgo: predict Gene Ontology terms by aligning protein and GO text embeddings.",
)
data_app = typer.Typer(
    rich_markup_mode=None,
    no_args_is_help=True,
    help="Fetch GO, sequences and annotations; build datasets.",
)
app.add_typer(data_app, name="data")
embed_app = typer.Typer(
    rich_markup_mode=None,
    no_args_is_help=True,
    help="Embed once, store for training: ESM residues, GO texts.",
)
app.add_typer(embed_app, name="embed")
plm_app = typer.Typer(
    rich_markup_mode=None,
    no_args_is_help=True,
    help="Pretrain and evaluate protgo's own small ESM (masked LM).",
)
app.add_typer(plm_app, name="plm")
curriculum_app = typer.Typer(
    rich_markup_mode=None,
    no_args_is_help=True,
    help="Inspect the mining curriculum and loss-weight stages.",
)
app.add_typer(curriculum_app, name="curriculum")


def _print_version(value: bool) -> None:
    if value:
        from protgo import __version__

        typer.echo(f"protgo {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version."
        ),
    ] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Also show debug messages.")
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Show warnings and errors only, no progress bars.")
    ] = False,
) -> None:
    """protgo: predict Gene Ontology terms by aligning protein and GO text embeddings.

    Exit status: 0 done; 2 a problem with the input or set-up (one line on stderr says
    which input and the fix); 1 an unexpected error (a traceback: please report it)."""
    import logging

    from protgo.io import QUIET

    os.environ[QUIET] = "1" if quiet else "0"  # -q: no progress bars either
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logger = logging.getLogger("protgo")
    logger.setLevel(level)
    handler = next((h for h in logger.handlers if getattr(h, "_protgo_cli", False)), None)
    if handler is None:
        handler = logging.StreamHandler()  # stderr, so stdout stays the command's output
        handler._protgo_cli = True
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
    handler.setLevel(level)
    handler.stream = sys.stderr  # the current stderr (a test runner swaps it per call)


DataDirOpt = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data directory (default: $PROTGO_DATA or ~/.cache/protgo)."),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Experiment YAML, or a shipped config's name (demo)."),
]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="Override a config value: section.key=value.")
]


def _aspects(text: str) -> list[str]:
    """``--aspects``: comma-separated BP, MF and/or CC (any case), checked."""
    from protgo.config import ASPECTS

    chosen = [a.strip().upper() for a in text.split(",") if a.strip()]
    bad = [a for a in chosen if a not in ASPECTS]
    if not chosen or bad:
        raise UserError(f"--aspects takes BP, MF and/or CC separated by commas, got '{text}'")
    return chosen


def _data_dir(path: Path | None, cfg=None) -> Path:
    """The data directory: --data-dir, else the config's data.data_dir, else $PROTGO_DATA or
    ~/.cache/protgo; a regular file in its place is an error."""
    from protgo.config import default_data_dir
    from protgo.io import check_output_path

    if path is not None:
        root = path.expanduser()
    else:
        root = cfg.data.resolved_data_dir() if cfg is not None else default_data_dir()
    return check_output_path(root, "data directory", folder=True)


@data_app.command("fetch")
def data_fetch(
    source: Annotated[
        str, typer.Option(help="debian (GO.db, org.Hs.eg.db, metastudent) or web.")
    ] = "debian",
    data_dir: DataDirOpt = None,
) -> None:
    """Download the raw GO, sequence and annotation sources into the data directory."""
    from protgo.data import debian, web

    if source == "debian":
        paths = debian.fetch_debian(_data_dir(data_dir))
    elif source == "web":
        paths = web.fetch_web(_data_dir(data_dir))
    else:
        raise UserError(f"--source must be 'debian' or 'web', got '{source}'")
    typer.echo(f"data ready in {paths.root}")
    for name, path in paths.files().items():
        typer.echo(f"  {path.stat().st_size / 1e6:9.1f} MB  {name}")


@data_app.command("build")
def data_build(
    name: Annotated[
        str, typer.Option(help="Dataset name: human-exp, swissprot-2014, or a name of yours.")
    ] = "human-exp",
    source: Annotated[
        str | None,
        typer.Option(
            help="human-exp, swissprot-2014 or web (default: the name); web needs "
            "`protgo data fetch --source web` first."
        ),
    ] = None,
    aspects: Annotated[str, typer.Option(help="Comma-separated aspects to keep.")] = "BP,MF,CC",
    max_proteins: Annotated[int | None, typer.Option(help="Random subset of this size.")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    split: Annotated[
        str | None,
        typer.Option(
            help="cluster (mmseqs2) or random; default cluster, random for swissprot-2014."
        ),
    ] = None,
    min_seq_id: Annotated[float, typer.Option(help="Identity threshold of the clusters.")] = 0.3,
    exclude_ids: Annotated[
        Path | None, typer.Option(help="File of protein ids removed from every split.")
    ] = None,
    zero_shot_frac: Annotated[
        float, typer.Option(help="Share of terms (>=5 proteins) held out as zero-shot.")
    ] = 0.1,
    zero_shot_terms: Annotated[
        Path | None,
        typer.Option(
            help="File of GO ids also held out as zero-shot, with their annotated "
            "descendants (a published benchmark's unseen terms, say)."
        ),  # fmt: skip
    ] = None,
    keep_protein_binding_only: Annotated[
        bool, typer.Option(help="Keep MF targets whose only MF term is protein binding.")
    ] = False,
    fasta: Annotated[
        Path | None, typer.Option(help="Your own sequences (with --annotations, --obo).")
    ] = None,
    annotations: Annotated[
        Path | None,
        typer.Option(
            help="Your own annotations: a TSV (protein, GO id, optional evidence) or "
            "a GAF 2.x file (.gaf, .gaf.gz)."
        ),  # fmt: skip
    ] = None,
    obo: Annotated[Path | None, typer.Option(help="The ontology for your own data.")] = None,
    all_evidence: Annotated[
        bool,
        typer.Option(help="--source web or a GAF: keep every evidence code, IEA included."),
    ] = False,
    data_dir: DataDirOpt = None,
) -> None:
    """Build a dataset folder (go.obo, proteins.fasta, annotations, splits, terms, IA)."""
    from protgo.data import build, sources

    build.check_dataset_name(name)
    root = _data_dir(data_dir)
    default_split = "random" if (source or name) == "swissprot-2014" else "cluster"
    opts = build.BuildOptions(
        aspects=tuple(_aspects(aspects)),
        max_proteins=max_proteins, seed=seed, split=split or default_split,
        min_seq_id=min_seq_id, exclude_ids=build.read_ids(exclude_ids, "--exclude-ids"),
        zero_shot_frac=zero_shot_frac,
        zero_shot_terms=build.read_ids(zero_shot_terms, "--zero-shot-terms"),
        drop_protein_binding_only=not keep_protein_binding_only,
    )  # fmt: skip
    src = sources.select_sources(source or name, root, (fasta, annotations, obo), all_evidence)
    out = root / "datasets" / name
    summary = build.build_dataset(out, src, opts, name)
    typer.echo(f"dataset '{name}' written to {out}")
    typer.echo(json.dumps({k: summary[k] for k in ("proteins", "terms")}, indent=1))


@plm_app.command("pretrain")
def plm_pretrain(
    config: Annotated[
        Path, typer.Option("--config", "-c", help="PLM YAML, or a shipped one's name (plm-small).")
    ],
    overrides: SetOpt = None,
    exclude_ids: Annotated[
        Path | None, typer.Option(help="File of protein ids never to train on (one per line).")
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue from <out_dir>/checkpoints (the latest).")
    ] = False,
) -> None:
    """Masked-LM pretraining of a small ESM-2-architecture model on Swiss-Prot 2014."""
    from protgo.config import load_model
    from protgo.plm.config import PlmConfig
    from protgo.plm.pretrain import pretrain

    cfg = load_model(PlmConfig, config, overrides or [])
    state = pretrain(cfg, exclude_ids=exclude_ids, resume=resume)
    typer.echo(json.dumps({"step": state.step, "tokens_seen": state.tokens_seen,
                           **(state.last_eval or {})}))  # fmt: skip


@plm_app.command("evaluate")
def plm_evaluate(
    model: Annotated[
        str, typer.Option("--model", help="A saved model directory or a shipped model's name.")
    ],
    fasta: Annotated[
        Path | None, typer.Option(help="Score these sequences instead of the held-out split.")
    ] = None,
    max_sequences: Annotated[int, typer.Option(help="Sequences to score at most.")] = 1000,
) -> None:
    """Held-out masked-token perplexity next to the amino-acid unigram perplexity."""
    from protgo.plm.evaluate import evaluate_model_dir

    typer.echo(json.dumps(evaluate_model_dir(model, fasta, max_sequences), indent=1))


@embed_app.command("residues")
def embed_residues(
    dataset: Annotated[str, typer.Option(help="Dataset name or folder (datasets/<name>).")],
    model: Annotated[
        str | None,
        typer.Option(help="protgo-esm-small|8m, unirep-1900|256|64, an ESM directory or a hub id."),
    ] = None,
    layer: Annotated[int | None, typer.Option(help="Layer to store (-1: last).")] = None,
    win_size: Annotated[int | None, typer.Option(help="Residues per window.")] = None,
    win_stride: Annotated[int | None, typer.Option(help="Residues between windows.")] = None,
    batch_tokens: Annotated[int | None, typer.Option(help="Padded tokens per batch.")] = None,
    max_proteins: Annotated[
        int | None, typer.Option(help="Embed only the first N proteins (sorted ids).")
    ] = None,
    device: Annotated[str | None, typer.Option(help="cpu or cuda.")] = None,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Embed every residue of a dataset's proteins with the protein model (ESM or UniRep) into the
    residue store.

    Resumable (run again after a kill). Under torchrun each rank embeds its share
    (RANK, WORLD_SIZE, LOCAL_RANK), and the last rank to finish merges the manifest."""
    import os

    from protgo.config import load_config, updated
    from protgo.data.folder import DatasetFolder
    from protgo.encoders.registry import protein_encoder
    from protgo.stores.residues import ResidueStore

    if max_proteins is not None and max_proteins < 1:
        raise UserError(f"--max-proteins must be at least 1, got {max_proteins}")
    full = load_config(config, overrides or [])
    cfg = updated(full.residues, "residues", model=model, layer=layer, win_size=win_size,
                  win_stride=win_stride, batch_tokens=batch_tokens, device=device)  # fmt: skip
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if cfg.device == "cuda" and world > 1:
        cfg = updated(cfg, "residues", device=f"cuda:{os.environ.get('LOCAL_RANK', 0)}")
    root = _data_dir(data_dir, full)
    seqs = DatasetFolder.load(dataset, root).sequences
    if max_proteins is not None:
        seqs = {pid: seqs[pid] for pid in sorted(seqs)[:max_proteins]}
    encoder = protein_encoder(cfg)
    store = ResidueStore.for_encoder(root, encoder)
    shard_bytes = cfg.shard_mb << 20
    report = store.embed(encoder, seqs, rank=rank, world_size=world, shard_bytes=shard_bytes)
    typer.echo(f"residue store {store.root}")
    typer.echo(json.dumps(report.__dict__ | {"residues_per_s": round(
        report.residues / max(report.seconds, 1e-9))}))  # fmt: skip


@embed_app.command("fasta", context_settings={"allow_extra_args": True})
def embed_fasta(
    ctx: typer.Context,
    fasta: Annotated[Path, typer.Argument(help="Protein sequences (FASTA).")],
    out_dir: Annotated[Path, typer.Argument(help="Folder for one <label>.pt per protein.")],
    model: Annotated[
        str | None,
        typer.Option(help="unirep-1900/256/64, a shipped ESM, a directory or a hub id."),
    ] = None,
    layer: Annotated[
        int | None,
        typer.Option(
            "--layer", "--repr-layers", "--repr_layers", help="ESM layer (-1: the last); one layer."
        ),
    ] = None,  # fmt: skip
    include: Annotated[
        list[str] | None,
        typer.Option(help="mean and/or per_tok: --include mean per_tok, or mean,per_tok."),
    ] = None,
    toks_per_batch: Annotated[
        int | None,
        typer.Option(
            "--toks-per-batch",
            "--toks_per_batch",
            help="Residues per batch (residues.batch_tokens).",
        ),
    ] = None,  # fmt: skip
    device: Annotated[str | None, typer.Option(help="cpu or cuda.")] = None,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
) -> None:
    """Per-protein embedding files in the layout of ESM's extract.py (`representations`,
    `mean_representations` by layer), for use outside protgo; any length (stitched windows).
    ESM's spellings work too (--repr_layers, --toks_per_batch, --include mean per_tok).
    Read them with torch.load(path, weights_only=True). Resumes: existing files are kept."""
    from protgo.config import load_config, updated
    from protgo.encoders.extract import extract_fasta

    full = load_config(config, overrides or [])
    cfg = updated(full.residues, "residues", model=model, layer=layer,
                  batch_tokens=toks_per_batch, device=device)  # fmt: skip
    # ESM's `--include mean per_tok`: the second value arrives as an extra argument
    given = [*(include or []), *ctx.args]
    parts = [x.strip() for item in given for x in item.split(",") if x.strip()]
    info = extract_fasta(fasta, out_dir, cfg, parts or ["mean", "per_tok"])
    typer.echo(json.dumps(info))


@embed_app.command("go")
def embed_go_texts(
    dataset: Annotated[str, typer.Option(help="Dataset name or folder (datasets/<name>).")],
    phase: Annotated[int, typer.Option(help="Text phase (go_text.phase_relations index).")] = 0,
    aspects: Annotated[
        str | None, typer.Option(help="Comma-separated aspects (default: data.aspects).")
    ] = None,
    force: Annotated[bool, typer.Option(help="Re-encode even if the cache is current.")] = False,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Encode the GO texts of a dataset's ontology for one phase into the GO vector cache.

    Only the aspects asked for are encoded (on 2 CPU cores about 220 texts/s with native bf16,
    60 without); an unchanged
    cache (same encoder, phase and texts) is reused."""
    import time

    from protgo.config import load_config
    from protgo.stores.go_encode import embed_go

    cfg = load_config(config, overrides or [])
    asp = _aspects(aspects) if aspects else cfg.data.aspects
    start = time.perf_counter()
    cache, directory = embed_go(dataset, phase, asp, _data_dir(data_dir, cfg), cfg.go_text, force)
    state = "cached" if cache.from_disk else "encoded"
    typer.echo(f"GO vectors {state}: {len(cache)} terms x {cache.dim} dims in {directory}")
    info = {"phase": phase, "aspects": asp, "n_truncated": cache.manifest.get("n_truncated"),
            "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip
    typer.echo(json.dumps(info))


@app.command("evaluate")
def evaluate(
    dataset: Annotated[
        str | None, typer.Option(help="Dataset name or folder (datasets/<name>).")
    ] = None,
    ground_truth: Annotated[
        Path | None,
        typer.Option(
            help="Your own benchmark instead of a dataset split: protein<TAB>GO:id "
            "lines; scores --pred files on every protein listed."
        ),
    ] = None,  # fmt: skip
    obo: Annotated[
        Path | None,
        typer.Option(help="With --ground-truth: its GO release (default: the --dataset's)."),
    ] = None,
    ia: Annotated[
        Path | None,
        typer.Option(
            help="With --ground-truth: information accretion (term<TAB>value) for "
            "weighted Fmax and Smin (default: the --dataset's, else none)."
        ),
    ] = None,  # fmt: skip
    split: Annotated[str, typer.Option(help="Split to score: test or valid.")] = "test",
    pred: Annotated[
        list[Path] | None,
        typer.Option("--pred", help="CAFA-format prediction file (repeatable); named by stem."),
    ] = None,
    baselines: Annotated[
        str, typer.Option(help="Comma list of naive,diamond,knn,mlp,blend, or 'all' or ''.")
    ] = "",
    valid_pred: Annotated[
        Path | None,
        typer.Option(help="The first --pred's method on the valid split (for the blend's alpha)."),
    ] = None,
    store: Annotated[
        Path | None, typer.Option(help="Residue store folder (mean protein vectors for knn, mlp).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder.")] = None,
    threads: Annotated[int, typer.Option(help="Threads for DIAMOND, cafaeval, torch.")] = 2,
    knn_k: Annotated[int, typer.Option(help="Neighbours of the k-NN baseline.")] = 10,
    model: Annotated[
        str | None,
        typer.Option(
            help="A bundle, shipped model or checkpoint: zero-/few-shot AUC from its "
            "complete score matrix, beside the ontology baselines."
        ),
    ] = None,
    min_positives: Annotated[
        int, typer.Option(help="With --model: terms need this many positives to count.")
    ] = 1,
    proteins: Annotated[
        Path | None,
        typer.Option(help="Score only these proteins of the split (a file, one id per line)."),
    ] = None,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Score predictions (and baselines) with cafaeval: Fmax, weighted Fmax, Smin, coverage
    per aspect, plus zero-/few-shot term AUC from the files (pairs a file leaves out score 0).
    Writes results.tsv and curves.tsv. With --model, also zero_shot.tsv: zero-/few-shot term
    AUC from the model's complete score matrix, and the same for baselines that need no text
    training (a term's best parent; all its parents; the trained term with the nearest text)
    and, with --baselines knn or mlp, for theirs on the terms they score (trained terms).
    With --ground-truth (and --obo, optionally --ia): --pred files on your own benchmark."""
    from protgo.config import load_config
    from protgo.data.folder import DatasetFolder
    from protgo.eval.evaluate import evaluate_command
    from protgo.infer.split_eval import zero_shot_command
    from protgo.io import check_output_path

    cfg = load_config(config, overrides or [])  # fails now on a bad -c or --set
    root = _data_dir(data_dir, cfg)
    if ground_truth is not None:
        asked = bool(baselines or model or proteins or valid_pred)
        typer.echo(_evaluate_truth(ground_truth, obo, ia, dataset, root, pred, out, threads,
                                   asked))  # fmt: skip
        return
    if dataset is None:
        raise UserError("give --dataset (a built dataset's split) or --ground-truth (a file)")
    if obo is not None or ia is not None:
        raise UserError("--obo and --ia go with --ground-truth (a dataset has its own)")
    folder = DatasetFolder.load(dataset, root)
    if proteins is not None:
        folder = folder.restricted(split, proteins)
    out = check_output_path(out or Path("runs") / f"evaluate-{folder.root.name}-{split}",
                            "--out", folder=True)  # fmt: skip
    if min_positives < 1:
        raise UserError(f"--min-positives must be at least 1, got {min_positives}")
    made: dict = {}
    if pred or baselines:
        table = evaluate_command(
            folder, split, list(pred or []), baselines, out, valid_pred=valid_pred,
            store=store, threads=threads, knn_k=knn_k, residues=cfg.residues, data_dir=root,
            made=made,
        )  # fmt: skip
        typer.echo(table)
    elif model is None:
        raise UserError("nothing to evaluate: give --pred files, --baselines and/or --model")
    if model is not None:
        others = {n: p for n, p in made.items() if n in ("knn", "mlp")}  # per-term classifiers
        typer.echo(zero_shot_command(model, folder, split, root, out, min_positives, others))
    typer.echo(f"results in {out}")


def _evaluate_truth(truth, obo, ia, dataset, root, pred, out, threads, asked: bool) -> str:
    """`evaluate --ground-truth`: --pred files on a user's benchmark; the GO release and IA
    from --obo / --ia, else from --dataset."""
    from protgo.data.folder import DatasetFolder
    from protgo.eval.evaluate import evaluate_truth
    from protgo.eval.truth import GroundTruth
    from protgo.io import check_output_path

    if asked:
        raise UserError("--ground-truth scores --pred files only: baselines, --model, "
                        "--proteins and --valid-pred need a dataset's splits")  # fmt: skip
    if dataset is not None:
        folder = DatasetFolder.load(dataset, root)
        obo, ia = obo or folder.obo_path, ia or folder.ia_path
    if obo is None:
        raise UserError("--ground-truth needs the GO release it was made with: --obo go.obo "
                        "(or --dataset NAME to use that dataset's)")  # fmt: skip
    out = check_output_path(out or Path("runs") / f"evaluate-{Path(truth).stem}", "--out",
                            folder=True)  # fmt: skip
    table = evaluate_truth(GroundTruth(truth, obo, ia), list(pred or []), out, threads)
    return f"{table}\nresults in {out}"


@app.command("predict")
def predict(
    fasta: Annotated[Path, typer.Option(help="Query sequences (FASTA, unique ids).")],
    out: Annotated[Path, typer.Option(help="Output folder.")],
    model: Annotated[
        str | None,
        typer.Option(help="A shipped model's name or a bundle directory (`protgo export`)."),
    ] = None,
    checkpoint: Annotated[
        Path | None, typer.Option(help="Or: a training checkpoint or run folder (latest).")
    ] = None,
    top_k: Annotated[int, typer.Option(help="Terms per protein and aspect (readable files).")] = 20,
    aspects: Annotated[
        str | None, typer.Option(help="Comma-separated aspects (default: the checkpoint's).")
    ] = None,
    attributions: Annotated[
        bool, typer.Option(help="Also write per-residue importance of each reported term.")
    ] = False,
    propagate: Annotated[
        bool, typer.Option(help="Make scores DAG-consistent (a parent >= its best child).")
    ] = True,
    threshold: Annotated[
        str | None,
        typer.Option(help="'auto' (per-aspect best validation Fmax) or a score in [0, 1]."),
    ] = None,
    calibrate: Annotated[
        bool, typer.Option(help="Refit the calibration on the validation split first.")
    ] = False,
    keep_general: Annotated[
        bool, typer.Option(help="Keep very general terms (binding, ...) in readable files.")
    ] = False,
    most_specific: Annotated[
        bool, typer.Option(help="Readable files: leave out a term when a descendant is listed.")
    ] = False,
    obo: Annotated[
        Path | None,
        typer.Option(help="With --model: score the terms of this (newer) ontology instead."),
    ] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")] = "cpu",
    batch_size: Annotated[int, typer.Option(help="Proteins scored per chunk.")] = 256,
    overwrite: Annotated[
        bool, typer.Option(help="Replace the prediction files already in --out.")
    ] = False,
    homology: Annotated[
        bool,
        typer.Option(
            help="Blend with DIAMOND transfer from the bundle's reference set (when it "
            "carries one); --no-homology: the aligner alone."
        ),
    ] = True,
    threads: Annotated[int, typer.Option(help="Threads for DIAMOND.")] = 2,
    reference: Annotated[
        list[str] | None,
        typer.Option(
            help="Add a built dataset's annotated proteins (e.g. swissprot-2014) to the "
            "homology reference; repeatable."
        ),
    ] = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Score every GO term of the chosen aspects for each sequence (unseen terms included).

    Writes protgo.tsv (CAFA format, for `protgo evaluate`), predictions.tsv and
    predictions.json (protein, aspect, GO id, name, score, class, threshold; best first) and,
    with --attributions, attributions.json. Proteins are scored in chunks of --batch-size;
    finished chunks are kept in OUT/partial/, and the same command run again after an
    interruption goes on from there."""
    from protgo.config import check_device
    from protgo.infer.bundle import resolve_model
    from protgo.infer.command import run_predict

    if (model is None) == (checkpoint is None):
        raise UserError("give one of --model (a shipped model or bundle) and --checkpoint")
    try:
        check_device(device)
    except ValueError as exc:
        raise UserError(f"--device: {exc}") from None
    source = resolve_model(model) if model is not None else checkpoint
    asp = _aspects(aspects) if aspects else None
    info = run_predict(
        source, fasta, out, top_k, asp, attributions, propagate, threshold,
        data_dir.expanduser() if data_dir else None, calibrate, keep_general,
        most_specific=most_specific, obo=obo, device=device, batch_size=batch_size,
        overwrite=overwrite, homology=homology, threads=threads, references=reference or (),
    )  # fmt: skip
    typer.echo(json.dumps({k: round(v, 2) if isinstance(v, float) else v
                           for k, v in info.items()}))  # fmt: skip


@app.command("export")
def export(
    out: Annotated[Path, typer.Option(help="New bundle directory.")],
    checkpoint: Annotated[
        Path | None, typer.Option(help="Checkpoint file or run folder (latest).")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="Or: a bundle (or shipped model) to copy, with a homology reference from "
            "--dataset (and GO vectors, when it ships none) and/or tables from --results."
        ),
    ] = None,
    dataset: Annotated[
        str | None, typer.Option(help="With --model: the dataset the bundle was trained on.")
    ] = None,
    results: Annotated[
        list[str] | None,
        typer.Option(
            help="With --model: 'TITLE=results.tsv' of `protgo evaluate`, a table for the "
            "card (repeatable)."
        ),
    ] = None,
    costs: Annotated[
        Path | None,
        typer.Option(help="With --model: summary.json of benchmarks/proteome.py, for the card."),
    ] = None,
    zero_shot: Annotated[
        Path | None,
        typer.Option(help="With --model: zero_shot.tsv of `evaluate --model`, for the card."),
    ] = None,
    vectors: Annotated[
        bool,
        typer.Option(help="Ship the GO text vectors (fp16), so predict never encodes GO texts."),
    ] = True,
    homology: Annotated[
        bool, typer.Option(help="Carry the training split as a DIAMOND homology reference.")
    ] = True,
    metrics: Annotated[
        Path | None, typer.Option(help="A results.tsv of `protgo evaluate` to record.")
    ] = None,
    threads: Annotated[int, typer.Option(help="Threads for DIAMOND.")] = 2,
    data_dir: DataDirOpt = None,
) -> None:
    """Write an inference bundle: weights (fp16 safetensors), config, ontology, term table,
    calibration, the homology reference with its blend weights, and provenance, for
    `protgo predict --model DIR` anywhere, offline."""
    from protgo.data.folder import DatasetFolder
    from protgo.infer.bundle import copy_bundle, read_metrics, read_zero_shot, resolve_model
    from protgo.infer.bundle import export as export_bundle
    from protgo.infer.predict import Predictor

    root = data_dir.expanduser() if data_dir else None
    if (model is None) == (checkpoint is None):
        raise UserError("give one of --checkpoint (a training run) and --model (a bundle)")
    if model is not None:
        if dataset is None and not results and costs is None and zero_shot is None:
            raise UserError("--model needs --dataset (the dataset the bundle was trained on), "
                            "--results, --costs and/or --zero-shot")  # fmt: skip
        evaluations = [_titled_results(r) for r in results or []]
        summary = _read_json(costs, "--costs") if costs is not None else None
        table = read_zero_shot(zero_shot) if zero_shot is not None else None
        pred = Predictor(resolve_model(model), root, homology=False)
        folder = DatasetFolder.load(dataset, root) if dataset else None
        path = copy_bundle(pred, out, folder, evaluations, threads, summary, table)
    else:
        pred = Predictor(checkpoint, root, homology=False)
        path = export_bundle(pred, out, vectors, read_metrics(metrics) if metrics else None,
                             homology, threads)  # fmt: skip
    typer.echo(f"bundle written to {path}")


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{what} {path} cannot be read as JSON ({exc})") from None


def _titled_results(text: str) -> dict:
    """``TITLE=results.tsv`` -> {"title", "metrics"}."""
    from protgo.infer.bundle import read_metrics

    title, sep, path = text.rpartition("=")
    if not sep or not title.strip():
        raise UserError(f"--results takes 'TITLE=results.tsv', got '{text}'")
    return {"title": title.strip(), "metrics": read_metrics(Path(path))}


@app.command("demo")
def demo(
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    max_proteins: Annotated[
        int | None, typer.Option(help="Proteins in the subset (default: data.max_proteins).")
    ] = None,
    baselines: Annotated[
        str, typer.Option(help="Baselines to evaluate beside protgo: a comma list or 'all'.")
    ] = "all",
    data_dir: DataDirOpt = None,
) -> None:
    """The whole pipeline on a small human subset (shipped config `demo`): fetch, build, embed,
    encode GO, train, predict, evaluate against the baselines, report. Run it again after an
    interruption: finished stages are skipped."""
    from protgo.config import load_config
    from protgo.demo import Demo

    if max_proteins is not None and max_proteins < 1:
        raise UserError(f"--max-proteins must be at least 1, got {max_proteins}")
    cfg = load_config(config or Path("demo"), overrides or [])
    root = _data_dir(data_dir, cfg)
    table, report = Demo(cfg, root, max_proteins, baselines).run_all()
    typer.echo(table)
    typer.echo(f"report: {report}")


@app.command("ablate")
def ablate(
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    seeds: Annotated[str, typer.Option(help="Comma-separated training seeds.")] = "0,1,2",
    variants: Annotated[
        str | None,
        typer.Option(help="Comma-separated variants (default: all; full is always added)."),
    ] = None,
    out: Annotated[Path, typer.Option(help="Folder of the runs and the tables.")] = Path(
        "runs/ablate"
    ),
    deletion_proteins: Annotated[
        int, typer.Option(help="Test proteins in the attribution deletion test.")
    ] = 40,
    data_dir: DataDirOpt = None,
) -> None:
    """Train and evaluate each variant (one component off) per seed on the same data and
    caches; write OUT/ablation.tsv, .md and .png. Resumes: finished runs are skipped.
    Variants: `protgo.ablate.VARIANTS` (README, "What the evidence says")."""
    from protgo.ablate import Ablation, parse_seeds, parse_variants
    from protgo.config import load_config

    cfg_path = config or Path("ablate")
    cfg = load_config(cfg_path, overrides or [])
    root = _data_dir(data_dir, cfg)
    run = Ablation(cfg_path, overrides or [], out, parse_variants(variants), parse_seeds(seeds),
                   root, deletion_proteins)  # fmt: skip
    table, path = run.run()
    typer.echo(table)
    typer.echo(f"tables: {path} (and .tsv, .png)")


@curriculum_app.command("show")
def curriculum_show(
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    steps_per_epoch: Annotated[
        int | None,
        typer.Option(help="Steps per epoch (default: training proteins / train.batch_size)."),
    ] = None,
    at: Annotated[
        str | None,
        typer.Option(help="Comma-separated steps for the table (default: 11 + warm-up)."),
    ] = None,
    png: Annotated[
        Path | None,
        typer.Option(help="Plot of every parameter (default: <train.out_dir>/curriculum.png)."),
    ] = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Print the curriculum (mining parameters, stage, lambda_attr) at chosen steps; plot it."""
    from protgo.config import load_config
    from protgo.mining.curriculum_show import show_schedule

    cfg = load_config(config, overrides or [])
    text, path = show_schedule(cfg, steps_per_epoch, at, png, _data_dir(data_dir, cfg))
    typer.echo(text)
    typer.echo(f"plot written to {path}")


@app.command("train")
def train(
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    resume: Annotated[
        Path | None,
        typer.Option(help="Checkpoint file or run folder (its latest checkpoint) to resume."),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Start anew in a run folder that holds a run (removes it).")
    ] = False,
    data_dir: DataDirOpt = None,
) -> None:
    """Train the aligner (curriculum mining, text phases, checkpoints, metrics.jsonl).

    For several processes: torchrun --nproc-per-node N -m protgo train --config C."""
    from protgo.config import load_config
    from protgo.train.trainer import Trainer

    cfg = load_config(config, overrides or [])
    trainer = Trainer(cfg, data_dir.expanduser() if data_dir else None)
    last = trainer.fit(resume=resume, overwrite=overwrite)
    if trainer.rank == 0:
        typer.echo(json.dumps(last))
        typer.echo(f"run folder {trainer.run_dir}")


def disk_full(exc: BaseException) -> str | None:
    """The one-line message for a write that failed because the disk (or quota) is full,
    else None. torch reports a full disk as a RuntimeError carrying the OS's words."""
    import errno

    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" writing {exc.filename}" if exc.filename else ""
    elif isinstance(exc, RuntimeError) and "No space left on device" in str(exc):
        where = ""
    else:
        return None
    return (f"no space left on the device{where}: free some space, or write elsewhere "
            "(--out, --data-dir or $PROTGO_DATA); finished work is kept and the command "
            "resumes")  # fmt: skip


def main() -> None:
    try:
        app()
    except UserError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)
    except (OSError, RuntimeError) as exc:
        message = disk_full(exc)
        if message is None:
            raise
        typer.echo(f"error: {message}", err=True)
        sys.exit(2)
