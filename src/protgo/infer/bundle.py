"""Inference bundles: a trained model as one directory that predicts anywhere, offline.

``protgo export --checkpoint C --out DIR`` writes::

    DIR/bundle.json        schema version, resolved config (its ``residues`` section names
                           the protein encoder), text phase, step, aspects, calibration
                           (Platt + threshold per aspect), the GO text recipe (encoder
                           identity, phase, texts' hash), provenance (dataset, GO release,
                           split sizes, protgo version, training time, test metrics)
    DIR/model.safetensors  the aligner's weights (fp16)
    DIR/go.obo.gz          the ontology it was trained with (gzip)
    DIR/terms.tsv          term, aspect, name, n_train, class (common | few | zero), held_out
    DIR/residue_projection.npz / .json
                           for a model trained on projected residues (residues.project_dim):
                           the residue store's PCA, applied to every sequence it embeds
    DIR/go_vectors/        the GO text vectors it scores against, as fp16 (a GO vector cache,
                           checksummed; their sha256 also in ``bundle.json``: ``go_vectors``),
                           so ``predict`` never loads the text encoder. Bundles of one text
                           recipe share one copy: when protgo ships the same vectors in
                           ``models/go-vectors/<name>/``, the bundle names them instead of
                           holding a copy. Without vectors (``--no-vectors``) they are
                           rebuilt from the recipe on first use and cached under the data dir

Nothing in a bundle is pickled: JSON, TSV, OBO, safetensors and ``.npy`` without pickle. A
bundle needs no dataset folder: ``protgo predict --model DIR_OR_NAME`` and
:func:`protgo.load_model` read everything from it (the protein encoder is named by its
settings: a shipped model, a local directory or a hub id).
"""

from __future__ import annotations

import gzip
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import protgo
from protgo.config import ASPECTS, Config
from protgo.data.folder import DatasetFolder
from protgo.data.ontology import Ontology
from protgo.encoders.text import DEFAULT_ENCODER
from protgo.errors import UserError
from protgo.infer import calibration, homology
from protgo.io import atomic_write_text, check_output_path, read_jsonl, staged_dir
from protgo.resources import models_dir, shipped_model, shipped_model_names
from protgo.stores.go_encode import encode_ontology
from protgo.stores.go_vectors import LOCK, GoVectorCache, cache_dir
from protgo.stores.projection import Projection

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
FILES = ("bundle.json", "model.safetensors", "go.obo.gz", "terms.tsv")
PROJECTION = "residue_projection.npz"
VECTORS = "go_vectors"
# int8 moved 1.4% of BP's top-10 terms against fp16 (benchmarks/go_vector_storage.py): fp16
VECTOR_STORAGE = "fp16"


def is_bundle(path: Path) -> bool:
    return (Path(path) / "bundle.json").is_file()


def resolve_model(name: str | Path) -> Path:
    """A bundle directory, or the name of a bundle shipped with protgo."""
    path = Path(name).expanduser()
    if is_bundle(path):
        return path
    shipped = shipped_model(str(name), "bundle")
    if shipped is not None:
        return shipped
    names = shipped_model_names("bundle")
    raise UserError(
        f"--model '{name}' is neither a bundle directory (with bundle.json) nor a model shipped "
        f"with protgo ({', '.join(names) or 'none'}); `protgo export` writes a bundle"
    )


@dataclass
class Bundle:
    """A loaded bundle: everything a :class:`protgo.infer.predict.Predictor` needs."""

    path: Path
    meta: dict
    cfg: Config
    weights: dict[str, torch.Tensor]
    ontology: Ontology
    terms: dict[str, dict]  # term -> {aspect, name, n_train, class, held_out}
    projection: Projection | None = None  # the residue projection of a projected store

    @property
    def phase(self) -> int:
        return int(self.meta["phase"])

    def text_vectors(
        self, data_dir: Path, aspects: list[str], ontology: Ontology | None = None
    ) -> GoVectorCache:
        """The GO text vectors of ``aspects`` at the bundle's phase: the ones it ships, else
        encoded from its recipe (once; cached under ``data_dir``). With ``ontology``
        (``--obo``): that ontology's terms, encoding only the texts the shipped vectors lack."""
        shipped = self.shipped_vectors()
        if ontology is None and shipped is not None:
            return shipped.filter_aspect(aspects)
        if self.cfg.go_text.tune_layers:
            raise UserError(
                f"bundle {self.path} was trained with tuned text layers (go_text.tune_layers), "
                "which it does not carry: it scores only the GO terms it ships vectors for"
                + ("; leave out --obo" if ontology is not None else "; export it again")
            )
        onto = ontology or self.ontology
        tag = self.meta["recipe"]["text_hash"] if ontology is None else "obo"
        name = f"bundle-{self.path.name}-{tag}"
        directory = cache_dir(data_dir, name, self.cfg.go_text, self.phase, aspects)
        cache, store = encode_ontology(onto, self.phase, aspects, self.cfg.go_text, directory,
                                       donors=shipped)  # fmt: skip
        full = set(aspects) == set(self.cfg.data.aspects)  # the recipe hashes every aspect
        if ontology is None and full and store.text_hash() != self.meta["recipe"]["text_hash"]:
            log.warning("the GO texts of bundle %s rebuilt here differ from the ones it was "
                        "trained with (another protgo version builds them differently); scores "
                        "may differ slightly", self.path)  # fmt: skip
        return cache

    def shipped_vectors(self) -> GoVectorCache | None:
        """The GO vectors the bundle ships (its own ``go_vectors/`` or the shared copy it
        names), checked against ``bundle.json``; None when it ships none (or names a shared
        copy this protgo lacks: they are then encoded from the recipe)."""
        entry = self.meta.get("go_vectors")
        own = self.path / VECTORS
        if (own / "manifest.json").is_file():
            where = own
        elif entry is not None and (shared_vectors_dir(entry["name"]) / "manifest.json").is_file():
            where = shared_vectors_dir(entry["name"])
        else:
            if entry is not None:
                log.warning("bundle %s names the shared GO vectors '%s', which this protgo "
                            "does not ship: encoding them from the recipe", self.path,
                            entry["name"])  # fmt: skip
            return None
        fix = "export the bundle again, or reinstall protgo"
        try:
            cache = GoVectorCache.load(where)
        except UserError as exc:
            raise UserError(f"bundle {self.path}: its GO vectors {where} are damaged "
                            f"({str(exc).split(': run')[0]}): {fix}") from None  # fmt: skip
        if entry is not None and cache.manifest.get("sha256") != entry.get("sha256"):
            raise UserError(f"bundle {self.path}: the GO vectors in {where} fail the checksum "
                            f"bundle.json records: {fix}")  # fmt: skip
        return cache


def shared_vectors_dir(name: str) -> Path:
    """Where protgo ships the GO vectors ``name`` that several bundles share."""
    return models_dir() / "go-vectors" / name


def vectors_name(recipe: dict) -> str:
    """The shared name of a text recipe's vectors: encoder, phase and the texts' hash (and
    the tuned text layers' hash, ``go_text.tune_layers``)."""
    encoder = "".join(c if c.isalnum() or c in "-." else "-" for c in recipe["encoder"]["name"])
    tuned = f"-tuned-{recipe['text_top']}" if recipe.get("text_top") else ""
    return f"{encoder}-phase{recipe['phase']}-{recipe['text_hash']}{tuned}"


def load(path: Path) -> Bundle:
    """Read a bundle; a missing file or another schema is one UserError with the fix."""
    from safetensors.torch import load_file

    path = Path(path)
    missing = [f for f in FILES if not (path / f).is_file()]
    if missing:
        raise UserError(f"bundle {path} lacks {', '.join(missing)}: export it again with "
                        "`protgo export`")  # fmt: skip
    try:
        meta = json.loads((path / "bundle.json").read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"bundle {path}: bundle.json is not JSON ({exc})") from None
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise UserError(
            f"bundle {path} has schema version {meta.get('schema_version')}, this protgo reads "
            f"{SCHEMA_VERSION}: use the protgo version that exported it"
        )
    cal = meta.get("calibration")
    if cal is not None:
        calibration.check(cal, f"in {path / 'bundle.json'}", "export the bundle again")
    if not isinstance(meta.get("phase"), int) or meta["phase"] < 0:
        raise UserError(f"bundle {path}: bundle.json has phase {meta.get('phase')!r}, not a "
                        "text phase (0, 1, 2, ...): export the bundle again")  # fmt: skip
    try:
        cfg = Config.model_validate(meta["config"])
        weights = {
            k: v.float() if v.is_floating_point() else v
            for k, v in load_file(path / "model.safetensors").items()
        }
    except Exception as exc:  # noqa: BLE001 - any damage has the same remedy
        raise UserError(f"bundle {path} is damaged ({type(exc).__name__}: {exc}); export it "
                        "again") from None  # fmt: skip
    _check_text_encoder(cfg.go_text.encoder, path)
    _check_vectors_entry(meta.get("go_vectors"), path)
    terms = _read_terms(path / "terms.tsv")
    proj_path = path / PROJECTION
    projection = Projection.load(proj_path) if proj_path.is_file() else None
    onto = Ontology.from_obo(path / "go.obo.gz")
    return Bundle(path, meta, cfg, weights, onto, terms, projection)


def _check_text_encoder(name: str, path: Path) -> None:
    """A bundle names its text encoder: the packaged one or a hub id (``org/name``), never a
    local path, so a bundle handed to someone cannot make protgo open their files."""
    hub_id = name.count("/") == 1 and not name.startswith((".", "/", "~")) and ".." not in name
    if name != DEFAULT_ENCODER and not hub_id:
        raise UserError(
            f"bundle {path} names the text encoder '{name}', a local path: a bundle may name "
            f"only the packaged '{DEFAULT_ENCODER}' or a hub id; export it again"
        )


def _check_vectors_entry(entry, path: Path) -> None:
    """``go_vectors`` of bundle.json: a plain name (it becomes a folder under protgo's models,
    never a path elsewhere) and the checksums of its files."""
    if entry is None:
        return
    name = entry.get("name") if isinstance(entry, dict) else None
    ok = isinstance(name, str) and name.replace("-", "").replace(".", "").isalnum()
    if not ok or name.startswith(".") or not isinstance(entry.get("sha256"), dict):
        raise UserError(f"bundle {path}: bundle.json's go_vectors entry is malformed "
                        f"({entry!r:.80}): export the bundle again")  # fmt: skip


def _read_terms(path: Path) -> dict[str, dict]:
    """terms.tsv -> {term: row}; a malformed or duplicated row is one UserError."""
    lines = path.read_text().splitlines()
    head = lines[0].split("\t") if lines else []
    terms: dict[str, dict] = {}
    for n, line in enumerate(lines[1:], start=2):
        cols = line.split("\t")
        if len(cols) != len(head) or "term" not in head:
            raise UserError(f"bundle {path}:{n}: {len(cols)} columns where the header has "
                            f"{len(head)}: export the bundle again")  # fmt: skip
        row = dict(zip(head, cols, strict=True))
        if row["term"] in terms:
            raise UserError(f"bundle {path}:{n}: {row['term']} is listed twice: export the "
                            "bundle again")  # fmt: skip
        terms[row["term"]] = row
    return terms


def export(
    predictor, out: Path, with_vectors: bool = True, metrics: dict | None = None,
    with_homology: bool = True, threads: int = 2,
) -> Path:  # fmt: skip
    """Write the bundle of a checkpoint's ``predictor`` into ``out`` (a new directory, made
    whole in a staging directory and renamed, so it is never half-written). ``with_vectors``
    ships the GO text vectors (fp16; the predictor scores with them from here on, so the
    calibration and blend below are fitted on the bundle's own scores). The calibration
    is fitted on the validation split first when the checkpoint has none. ``with_homology``
    adds the training split as the homology reference, with the blend's weights and
    thresholds chosen on the valid split (:mod:`protgo.infer.homology`)."""
    from safetensors.torch import save_file

    if not with_vectors and predictor.cfg.go_text.tune_layers:
        raise UserError(
            f"checkpoint {predictor.checkpoint} was trained with tuned text layers "
            "(go_text.tune_layers): its bundle must ship its GO vectors; leave out --no-vectors"
        )
    out = _new_dir(out)
    folder: DatasetFolder = predictor.folder
    if with_vectors:
        predictor.set_text_vectors(predictor.text_cache.stored_as(VECTOR_STORAGE))
    if predictor.calibration is None and folder.ids("valid"):
        predictor.fit_calibration()
    fitted = homology.fit(predictor, folder, threads) if with_homology else None
    info = folder.info
    meta = {
        "schema_version": SCHEMA_VERSION,
        "protgo_version": protgo.__version__,
        "exported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": predictor.cfg.model_dump(mode="json"),
        "phase": predictor.phase,
        "step": predictor.step,
        "aspects": predictor.cfg.data.aspects,
        "calibration": predictor.calibration,
        "recipe": predictor.text_recipe,
        "provenance": {
            "checkpoint": str(predictor.checkpoint),
            "dataset": info.get("name"),
            "go_release": info.get("provenance", {}).get("go_source_date"),
            "dataset_provenance": info.get("provenance"),
            "proteins_per_split": {s: len(folder.ids(s)) for s in ("train", "valid", "test")},
            "training_seconds": _training_seconds(Path(predictor.checkpoint)),
            "metrics": metrics or {},
        },
    }
    with staged_dir(out) as stage:
        state = {
            k: (v.detach().half() if v.is_floating_point() else v.detach()).contiguous()
            for k, v in predictor.model.state_dict().items()
        }  # GO numbers stay int64
        save_file(state, stage / "model.safetensors")
        with (
            folder.obo_path.open("rb") as src,
            open(stage / "go.obo.gz", "wb") as raw,
            gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as dst,  # the same bytes each time
        ):
            shutil.copyfileobj(src, dst)
        atomic_write_text(stage / "terms.tsv", _terms_table(folder))
        if with_vectors:
            meta["go_vectors"] = _write_vectors(predictor, stage)
        if predictor.projection is not None:
            predictor.projection.save(stage / PROJECTION, {})
        if fitted is not None:
            meta["homology"] = homology.write(stage, folder, fitted)
        _finish(stage, out, meta)
    return out


def _write_vectors(predictor, stage: Path) -> dict:
    """The predictor's GO vectors into ``stage/go_vectors``, left out when protgo ships the
    same files as a shared copy; returns the ``go_vectors`` entry of bundle.json."""
    name = vectors_name(predictor.text_recipe)
    manifest = predictor.text_cache.save(stage / VECTORS, VECTOR_STORAGE)
    (stage / VECTORS / LOCK).unlink(missing_ok=True)  # a writers' lock: nothing to ship
    shared = shared_vectors_dir(name) / "manifest.json"
    if shared.is_file() and json.loads(shared.read_text()).get("sha256") == manifest["sha256"]:
        shutil.rmtree(stage / VECTORS)  # protgo ships these: the bundle names them
    return {"name": name, "storage": VECTOR_STORAGE, "terms": manifest["n"],
            "sha256": manifest["sha256"]}  # fmt: skip


def _new_dir(out: Path) -> Path:
    out = Path(out)
    check_output_path(out, "--out", folder=True)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"--out {out} is not empty: give a new directory")
    return out


def _finish(stage: Path, out: Path, meta: dict) -> None:
    """Write the card and ``bundle.json`` into ``stage`` (renamed to ``out`` after)."""
    atomic_write_text(stage / "README.md", model_card(out.name, meta))
    atomic_write_text(stage / "bundle.json", json.dumps(meta, indent=1, default=str) + "\n")
    for f in stage.rglob("*"):  # mkdtemp and safetensors make owner-only files
        f.chmod(0o755 if f.is_dir() else 0o644)
    stage.chmod(0o755)


def copy_bundle(
    predictor, out: Path, folder: DatasetFolder | None = None,
    evaluations: list[dict] | None = None, threads: int = 2, costs: dict | None = None,
    zero_shot: list[dict] | None = None,
) -> Path:  # fmt: skip
    """A copy of the bundle that ``predictor`` loaded, in ``out``: with ``folder`` (the
    dataset the bundle was trained on), a homology reference of its training split, the blend
    chosen on its valid split, and the GO vectors when the bundle shipped none; with
    ``evaluations``, more measured tables for its card (``{"title", "metrics"}`` each, metrics
    as :func:`read_metrics` gives them; one of the same title is replaced); with ``costs``,
    what ``benchmarks/proteome.py`` measured of ``predict`` with it (its summary.json); with
    ``zero_shot``, the complete-matrix table of ``evaluate --model`` (:func:`read_zero_shot`)."""
    out = _new_dir(out)
    meta = dict(predictor.bundle_meta)
    vectors = fitted = None
    if folder is not None:
        predictor.check_dataset(folder, f"bundle {predictor.checkpoint}")
        vectors = "go_vectors" not in meta and not (predictor.checkpoint / VECTORS).is_dir()
        if vectors:  # the blend is then chosen on the scores of the vectors shipped
            predictor.set_text_vectors(predictor.text_cache.stored_as(VECTOR_STORAGE))
        fitted = homology.fit(predictor, folder, threads)
    if evaluations:
        titles = {e["title"] for e in evaluations}
        kept = [e for e in meta["provenance"].get("evaluations", []) if e["title"] not in titles]
        meta["provenance"] = {**meta["provenance"], "evaluations": kept + evaluations}
    if costs:
        meta["provenance"] = {**meta["provenance"], "costs": costs}
    if zero_shot:
        meta["provenance"] = {**meta["provenance"], "zero_shot": zero_shot}
    with staged_dir(out) as stage:
        shutil.copytree(predictor.checkpoint, stage, dirs_exist_ok=True)
        if vectors:
            meta["go_vectors"] = _write_vectors(predictor, stage)
        if fitted is not None:
            meta["homology"] = homology.write(stage, folder, fitted)
        _finish(stage, out, meta)
    return out


def read_metrics(path: Path) -> dict:
    """``results.tsv`` of ``protgo evaluate`` as {method: {aspect: {metric: value}}}."""
    import pandas as pd

    if not Path(path).is_file():
        raise UserError(f"--metrics {path} not found: give the results.tsv of `protgo evaluate`")
    df = pd.read_csv(path, sep="\t")
    out: dict = {}
    for row in df.to_dict("records"):
        method, aspect = row.pop("method"), row.pop("aspect")
        out.setdefault(method, {})[aspect] = {k: v for k, v in row.items() if pd.notna(v)}
    return out


def read_zero_shot(path: Path) -> list[dict]:
    """``zero_shot.tsv`` of ``protgo evaluate --model`` as its rows (method, aspect, class,
    terms, auc, aupr)."""
    import pandas as pd

    cols = ["method", "aspect", "class", "terms", "auc", "aupr"]
    try:
        df = pd.read_csv(path, sep="\t")
    except (OSError, ValueError) as exc:
        raise UserError(f"--zero-shot {path} cannot be read ({exc}): give the zero_shot.tsv "
                        "of `protgo evaluate --model`") from None  # fmt: skip
    if missing := [c for c in cols if c not in df.columns]:
        raise UserError(f"--zero-shot {path} lacks the columns {', '.join(missing)}: give the "
                        "zero_shot.tsv of `protgo evaluate --model`")  # fmt: skip
    return df[cols].to_dict("records")


CARD_COLUMNS = ("fmax", "wfmax", "smin", "coverage", "zero_auc", "few_auc")


def model_card(name: str, meta: dict) -> str:
    """The bundle's README.md: what it is, how it was made, and the test-split table."""
    prov, cfg = meta["provenance"], meta["config"]
    split = prov["proteins_per_split"]
    calibrated = sorted((meta["calibration"] or {}).get("aspects", {})) or ["none"]
    lines = [
        f"# {name}", "",
        f"A protgo aligner bundle (schema {meta['schema_version']}, protgo "
        f"{meta['protgo_version']}, exported {meta['exported']}).", "",
        f"- Dataset: {prov['dataset']} ({split['train']} train / {split['valid']} valid / "
        f"{split['test']} test proteins), GO release {prov['go_release']}",
        f"- Aspects: {', '.join(meta['aspects'])}; text phase {meta['phase']}, step "
        f"{meta['step']}, training {prov.get('training_seconds') or '?'} s",
        f"- Protein encoder: `{cfg['residues']['model']}` (layer {cfg['residues']['layer']}); "
        f"text encoder: `{cfg['go_text']['encoder']}`",
        f"- Calibrated aspects: {', '.join(calibrated)}",
        _homology_line(meta.get("homology")),
        _vectors_line(meta.get("go_vectors")),
        "", "Use: `protgo predict --model " + name + " --fasta F --out O` or "
        f"`protgo.load_model(\"{name}\")`.", "",
    ]  # fmt: skip
    tables = [{"title": "Test split (cafaeval; zero/few: term-centric AUC from the prediction "
                         "files)", "metrics": prov.get("metrics") or {}},
              *prov.get("evaluations", [])]  # fmt: skip
    for table in tables:
        if table["metrics"]:
            lines += _metrics_table(table["title"], table["metrics"])
    if prov.get("zero_shot"):
        lines += _zero_shot_table(prov["zero_shot"])
    if prov.get("costs"):
        lines += _costs(prov["costs"])
    return "\n".join(lines) + "\n"


def _zero_shot_table(rows: list[dict]) -> list[str]:
    """Mean per-term AUC per class and method (aspects as columns), from ``evaluate --model``."""
    lines = ["## Zero- and few-shot terms of the test split, complete score matrix "
             "(`protgo evaluate --model`; mean per-term ROC AUC, terms counted)", "",
             "`predict` scores a term without a training positive as text+neighbours×parents "
             "and every other term as protgo.", "",
             "| class | method | " + " | ".join(ASPECTS) + " |",
             "|" + "---|" * (len(ASPECTS) + 2)]  # fmt: skip
    cell = {(r["class"], r["method"], r["aspect"]): r for r in rows}
    for cls, method in dict.fromkeys((r["class"], r["method"]) for r in rows):
        got = [cell.get((cls, method, a)) for a in ASPECTS]
        cells = [f"{r['auc']:.3f} ({r['terms']})" if r else "-" for r in got]
        lines.append(f"| {cls} | {method} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _costs(c: dict) -> list[str]:
    """What each part of ``predict`` costs, from ``benchmarks/proteome.py``'s summary."""
    n = c["proteins"]
    stages = ", ".join(f"{k} {v / n * 1000:.0f} s" for k, v in c["stage_s"].items())
    return [
        "## Cost of predict", "",
        f"`benchmarks/proteome.py`: {n} proteins of human lengths (mean {c['mean_length']:.0f} "
        f"residues), none in a residue store, {c['cpu_count']} cores of {c['cpu']}: "
        f"{c['total_s']:.0f} s in all ({c['proteins_per_s']:.1f} proteins/s; "
        f"{c['without_homology_s']:.0f} s without homology), peak resident memory "
        f"{max(c['stage_peak_rss_mb'].values()) / 1024:.1f} GB. Per 1,000 proteins: {stages}.",
        "",
    ]  # fmt: skip


def _metrics_table(title: str, metrics: dict) -> list[str]:
    lines = [f"## {title}", "", "| aspect | method | " + " | ".join(CARD_COLUMNS) + " |",
             "|" + "---|" * (len(CARD_COLUMNS) + 2)]  # fmt: skip
    for aspect in ASPECTS:
        for method, per_aspect in metrics.items():
            row = per_aspect.get(aspect)
            if row is None:
                continue
            cells = [f"{row[c]:.3f}" if isinstance(row.get(c), float) else "-"
                     for c in CARD_COLUMNS]  # fmt: skip
            lines.append(f"| {aspect} | {method} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _homology_line(hom: dict | None) -> str:
    if not hom:
        return "- Homology: none (`predict` gives the aligner's scores alone)"
    alpha = ", ".join(f"{a} {w:.1f}" for a, w in sorted(hom["alpha"].items()))
    return (
        f"- Homology (the default output): DIAMOND transfer from {hom['proteins']} "
        f"reference proteins ({hom['evidence']}), blended with the aligner's weight per "
        f"aspect {alpha} (chosen on the valid split; `--no-homology` for the aligner alone)"
    )


def _vectors_line(entry: dict | None) -> str:
    if not entry:
        return "- GO text vectors: not shipped (encoded from the recipe on first use, then cached)"
    return (
        f"- GO text vectors: shipped ({entry['terms']} terms, {entry['storage']}, "
        f"`{entry['name']}`): `predict` never loads the text encoder"
    )


def _training_seconds(checkpoint: Path) -> float | None:
    """Wall time of the run that wrote ``checkpoint``: the last record of its run folder's
    ``metrics.jsonl`` (None when the checkpoint is not in a run folder)."""
    path = checkpoint.parent.parent / "metrics.jsonl"
    rows = read_jsonl(path)[0] if path.is_file() else []
    return rows[-1].get("time") if rows else None


def _terms_table(folder: DatasetFolder) -> str:
    onto = folder.ontology
    rows = ["term\taspect\tname\tn_train\tclass\theld_out"]
    for t, r in sorted(folder.terms.items()):
        name = onto.terms[t].name if t in onto.terms else ""
        rows.append(
            f"{t}\t{r['aspect']}\t{name}\t{r['n_train']}\t{r['class']}\t{int(r['held_out'])}"
        )
    return "\n".join(rows) + "\n"


def term_class(terms: dict[str, dict], ontology_ids: set[str], go_id: str) -> str:
    """common | few | zero (no training protein) for the bundle's terms; new for a term of a
    newer ontology (``--obo``) that the bundle's ontology does not hold."""
    if go_id in terms:
        return terms[go_id]["class"]
    return "zero" if go_id in ontology_ids else "new"
