"""Experiment configuration: one YAML file, typed sections, loud errors.

Each component takes its own section (``cfg.mining``, ``cfg.model``, ...), never the whole
config. Unknown keys and wrong types fail with a message naming the key and the file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from protgo.errors import UserError
from protgo.resources import shipped_config, shipped_config_names


class ConfigError(UserError):
    """A config file or override that cannot be used; the message names the key and file."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def default_data_dir() -> Path:
    """Where fetched data, datasets and stores live: ``$PROTGO_DATA`` or ``~/.cache/protgo``."""
    env = os.environ.get("PROTGO_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "protgo"


def resolve_data_dir(given: Path | None) -> Path:
    """The data directory a config or option names, else :func:`default_data_dir`."""
    return Path(given).expanduser() if given else default_data_dir()


Aspect = Literal["BP", "MF", "CC"]
ASPECTS: tuple[str, ...] = get_args(Aspect)  # the one home of the three GO aspects
Prob = Annotated[float, Field(ge=0.0, le=1.0)]  # a probability or share, in [0, 1]
Rate = Annotated[float, Field(ge=0.0, lt=1.0)]  # dropout, decay, momentum: in [0, 1)
Pos = Annotated[int, Field(ge=1)]  # a count or size that must be at least 1
NonNeg = Annotated[float, Field(ge=0.0)]  # a loss weight or scale


def check_device(name: str) -> str:
    """``cpu``, ``cuda``, ``cuda:N`` or ``mps``, and only one this torch build can use."""
    if name == "cpu":
        return name
    if not re.fullmatch(r"cuda(:\d+)?|mps", name):
        raise ValueError(f"'{name}' is not a device: use cpu, cuda, cuda:N or mps")
    import torch  # only for a non-CPU device: keeps config loading light

    if name.startswith("cuda"):
        index = int(name.split(":")[1]) if ":" in name else 0
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise ValueError(f"'{name}' is not available (this torch sees "
                             f"{torch.cuda.device_count()} CUDA devices): use cpu")  # fmt: skip
    elif not torch.backends.mps.is_available():
        raise ValueError("'mps' is not available on this machine: use cpu")
    return name


Device = Annotated[str, AfterValidator(check_device)]


class DataConfig(Section):
    dataset: str = "human-exp"
    data_dir: Path | None = None  # None: $PROTGO_DATA or ~/.cache/protgo
    aspects: list[Aspect] = list(ASPECTS)
    max_proteins: Pos | None = None

    def resolved_data_dir(self) -> Path:
        return resolve_data_dir(self.data_dir)


class ResiduesConfig(Section):
    # unirep-1900 | unirep-256 | unirep-64 (weights CC BY-NC 4.0), or an ESM checkpoint: a model
    # shipped with protgo (protgo-esm-small, protgo-esm-8m), a local directory or a hub id.
    # unirep-1900 (stored projected to 512 dims) won on full human-exp: protgo and every
    # baseline, all three aspects (docs/results.md); unirep-256 is the faster choice.
    model: str = "unirep-1900"
    layer: int = -1  # hidden layer to store; -1 is the last
    win_size: int | None = None  # None: the model's own window (1022 residues for ESM-2)
    win_stride: int | None = None  # None: three quarters of the window
    batch_tokens: Pos = 8192
    # auto: ESM under bf16 autocast where the hardware multiplies bf16 natively, else fp32;
    # UniRep fp32 (its bf16 path drifts on long proteins). Measured: docs/architecture.md.
    dtype: Literal["auto", "fp32", "bf16"] = "auto"
    device: Device = "cpu"
    threads: Pos | None = None
    # fp16 vectors per store shard; shards are the unit of resume and of work split across ranks
    shard_mb: Pos = 256
    # Store residues projected onto this many principal components (a PCA fitted once per
    # store on ~100k of its residues; protein means stay full width). "auto": 512 for models
    # wider than 1024 dims (unirep-1900: 3.8 kB -> 1 kB per residue), else every dim; null:
    # every dim. Measured: README "UniRep".
    project_dim: Pos | Literal["auto"] | None = "auto"


class GoTextConfig(Section):
    encoder: str = "all-MiniLM-L6-v2"  # the packaged encoder, or a path / hub id
    max_length: Pos = 128
    batch_size: Pos = 64
    quantize_int8: bool = False  # dynamic int8 on CPU; checked for agreement in tests
    device: Device = "cpu"
    # auto: bf16 where the hardware multiplies bf16 natively (AVX512-BF16, AMX, CUDA), else
    # fp32; on a CPU a oneDNN-packed bf16 copy of the encoder, on CUDA autocast. Measured on
    # all of GO against fp32 (benchmarks/go_side.py): see docs/architecture.md.
    dtype: Literal["auto", "fp32", "bf16"] = "auto"
    # Relation tokens that each text phase adds (phase 0 is always `name: definition`).
    # "regulates" brings in regulates, positively_regulates and negatively_regulates, each
    # with its own token ([REGULATES], [POS_REGULATES], [NEG_REGULATES]).
    phase_relations: list[list[Literal["is_a", "part_of", "regulates"]]] = [
        [],
        ["is_a"],
        ["is_a", "part_of", "regulates"],
    ]
    max_related: Pos = 4  # at most this many related names per relation, so texts stay short
    # Fine-tune the encoder's top layers on the alignment (0: frozen). Their input states are
    # computed once per text phase; a step runs them for up to tune_max_texts of the batch's
    # texts (its positives first; zero-shot terms never), the others come from the vectors
    # re-encoded with the tuned layers at the end of each epoch.
    tune_layers: Annotated[int, Field(ge=0)] = 0
    tune_lr: Annotated[float, Field(gt=0.0)] = 2e-5
    tune_max_texts: Pos = 256


class MiningConfig(Section):
    n_candidates: Pos = 64  # fixed candidate count per protein, so batches stack
    max_positives: Pos = 16  # positives kept per protein (sampled by specificity when more)
    max_ancestors: Annotated[int, Field(ge=0)] = 0  # DAG expansion of positives (0: off)
    gamma: Prob = 0.5  # weight decay per level of expansion
    stoplist_share: Prob = 0.5  # ancestors annotated to more than this share are not expanded to
    # Target share of few-shot terms among a batch's positive (protein, term) pairs; the
    # sampler over- or under-samples proteins carrying few-shot terms to meet it (None: off).
    few_shot_share: Prob | None = 0.2
    sibling_share: Prob = 0.25  # share of the hard slots given to siblings when siblings are on
    sibling_temp: Annotated[float, Field(gt=0.0)] = (
        0.1  # softmax temperature of sibling sampling over current scores
    )
    max_residues: Pos | None = None  # crop longer proteins to a random window (None: keep all)
    backend: Literal["cache", "bank"] = "cache"
    # torch: exact matmul + topk, no FAISS; the default because on CPU it beat FAISS's flat
    # index 2.5-3.5x over all of GO at 384 dims (benchmarks/go_side.py). exact: FAISS flat;
    # hnsw / ivf: approximate FAISS indexes for vocabularies far larger than GO.
    index: Literal["exact", "hnsw", "ivf", "torch"] = "torch"
    faiss_threads: Pos = 2
    hnsw_m: Pos = 32  # graph degree of the HNSW index
    hnsw_ef_construction: Pos = 80
    hnsw_ef_search: Pos = 128  # raise for recall, lower for speed
    ivf_nlist: Pos = 256  # IVF cells; needs at least this many GO vectors to train
    ivf_nprobe: Pos = 16
    sibling_queue_size: Pos = 256


class CurriculumConfig(Section):
    schedule: Literal["cosine", "linear"] = "cosine"
    warmup_epochs: NonNeg = 1.0
    hard_frac: tuple[Prob, Prob] = (0.2, 0.8)
    shortlist_M: tuple[Pos, Pos] = (64, 256)
    k_hard: tuple[Annotated[int, Field(ge=0)], Annotated[int, Field(ge=0)]] = (16, 64)
    random_k: tuple[Annotated[int, Field(ge=0)], Annotated[int, Field(ge=0)]] = (32, 8)
    inbatch_easy: tuple[bool, bool] = (True, False)
    inbatch_until: Prob = 0.5  # share of training after which in-batch easy negatives stop
    hier_up: tuple[int, int] = (3, 1)  # ancestor mask radius: strict -> relaxed
    hier_down: tuple[int, int] = (3, 1)
    siblings_from: Prob = 0.6  # share of training after which siblings are mined


class ModelConfig(Section):
    align_dim: Pos = 768
    # attention: learned multi-query attention over residues; mean: their plain mean (the
    # ablation of attention pooling; its attributions are uniform)
    pooling: Literal["attention", "mean"] = "attention"
    n_queries: Pos = 4
    n_heads: Pos = 4
    dropout: Rate = 0.1
    init_logit_scale: float = 14.3  # exp(scale) caps at 100 as in CLIP; 1/0.07 at start
    residue_chunk: Pos = 4096  # pooling chunk over residues, bounds memory for long proteins
    # A per-term prior logit from the GO text vector (a linear head, so unseen terms get one):
    # prediction scores are sigmoid(bias_scale * cos + bias(text)), comparable across terms.
    term_bias: bool = True
    init_term_bias: float = -5.0  # log-odds of a typical term's share of proteins at start
    init_bias_scale: float = 10.0  # bias_scale at start (learned; cosines span [-1, 1])
    # A learned residual vector and logit offset per term with a training positive, on top of
    # its text (zero at start, weight-decayed; unseen terms have none): needs term_bias. On
    # full human-exp it beat the text-only head on every Fmax, weighted Fmax and Smin
    # (docs/results.md); models saved without it load as text-only.
    term_residual: bool = True


class LossConfig(Section):
    lambda_con: NonNeg = 1.0
    lambda_distill: NonNeg = 0.0
    tau: Annotated[float, Field(gt=0.0)] = 1.5
    teacher: Literal["homology", "ema"] = "ema"
    ema_decay: Rate = 0.999
    attr_top_frac: Annotated[float, Field(gt=0.0, le=1.0)] = 0.1
    attr_margin: NonNeg = 0.05
    lambda_ent: NonNeg = 0.01
    lambda_dag: NonNeg = 0.1
    lambda_vtrue: NonNeg = 0.2
    # Binary cross-entropy of model.term_logits against each protein's propagated annotations
    # over the aspect's terms (zero-shot terms left out); needs model.term_bias.
    lambda_bce: NonNeg = 1.0
    bce_max_terms: Pos = 4096  # more terms than this: the batch's GO ids plus a random sample


class StagesConfig(Section):
    # Stage boundaries as shares of training; λ_attr ramps start->max over A-B, holds in C,
    # is off in D.
    boundaries: tuple[Prob, Prob, Prob] = (0.1, 0.3, 0.5)
    lambda_attr_start: NonNeg = 0.0
    lambda_attr_max: NonNeg = 0.1


class PhasesConfig(Section):
    # Epoch at which each text phase starts; phase i starts at start_epochs[i].
    start_epochs: list[Annotated[int, Field(ge=0)]] = [0, 2, 4]
    bank_momentum: Rate = 0.9
    partial_refresh: bool = True


class TrainConfig(Section):
    # Each epoch ends with validation: Fmax per aspect of data.aspects, scored and evaluated as
    # `protgo predict` / `protgo evaluate` do; best.pt is the epoch with the best mean of them.
    epochs: Pos = 10
    batch_size: Pos = 32
    lr: Annotated[float, Field(gt=0.0)] = 3e-4
    weight_decay: NonNeg = 0.01
    warmup_steps: Annotated[int, Field(ge=0)] = 100
    grad_clip: Annotated[float, Field(gt=0.0)] | None = 1.0
    seed: int = 0
    num_workers: Annotated[int, Field(ge=0)] = 0
    out_dir: Path = Path("runs/default")
    keep_last: Pos = 3
    checkpoint_every_steps: Pos | None = None
    log_every_steps: Pos = 10  # one metrics.jsonl record (window means) per this many steps
    device: Device = "cpu"
    # bf16: the training forward pass under bf16 autocast (weights, optimiser and gradients
    # stay fp32). Measured faster where the hardware has native bf16, not yet checked for
    # quality on full data, so fp32 is the default (docs/architecture.md, "Step cost").
    dtype: Literal["fp32", "bf16"] = "fp32"
    # After the last epoch: passes of the term-head stage (protgo.train.head), the residuals
    # and offsets of head_terms refitted on the best epoch's frozen protein vectors, each pass
    # validated; 0 turns it off. Needs model.term_residual. head_terms: "common" (more
    # training proteins than data's few-shot limit; few-shot terms keep the residuals learnt
    # with the encoders, nearer their text) or "trained" (every term with a positive).
    head_epochs: Annotated[int, Field(ge=0)] = 6
    head_lr: Annotated[float, Field(gt=0.0)] = 1e-3
    head_terms: Literal["common", "trained"] = "common"


class TrackingConfig(Section):
    wandb: Literal["offline", "online", "disabled"] = "offline"
    project: str = "protgo"
    run_name: str | None = None


class Config(Section):
    data: DataConfig = Field(default_factory=DataConfig)
    residues: ResiduesConfig = Field(default_factory=ResiduesConfig)
    go_text: GoTextConfig = Field(default_factory=GoTextConfig)
    mining: MiningConfig = Field(default_factory=MiningConfig)
    curriculum: CurriculumConfig = Field(default_factory=CurriculumConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    stages: StagesConfig = Field(default_factory=StagesConfig)
    phases: PhasesConfig = Field(default_factory=PhasesConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)


def _format_errors(err: ValidationError, source: str, prefix: str = "") -> str:
    """One line: the source, then each bad key with what is wrong and the value given."""
    parts = []
    for e in err.errors():
        key = prefix + ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            parts.append(
                f"unknown key '{key}' (check the spelling against the shipped config "
                "src/protgo/configs/default.yaml)"
            )
        else:
            parts.append(f"'{key}': {e['msg']} (got {e.get('input')!r})")
    return f"invalid config {source}: " + "; ".join(parts)


def updated(section: Section, name: str, **values) -> Section:
    """A copy of ``section`` (the config section ``name``) with the values that are not None,
    validated like the YAML: command-line options pass the same checks as config keys."""
    raw = {**section.model_dump(), **{k: v for k, v in values.items() if v is not None}}
    try:
        return type(section).model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, "(command-line options)", f"{name}.")) from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """``section.key=value`` -> (["section", "key"], value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value")
    key, raw = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if len(path) < 2:
        raise ConfigError(f"override '{text}' must name a section and a key, e.g. train.lr=1e-4")
    try:
        return path, yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0]
        raise ConfigError(
            f"override '{text}': the value is not valid YAML ({first}); quote strings and "
            "close lists, e.g. --set 'train.lr=1e-4' or --set 'data.aspects=[MF, BP]'"
        ) from None


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{text}': '{part}' is not a section")
        node[path[-1]] = value
    return raw


def load_model(cls: type[BaseModel], path: Path | None, overrides: list[str] = ()) -> BaseModel:
    """Load ``path`` (YAML) into ``cls`` with ``--set`` overrides; errors name key and file."""
    raw: dict = {}
    source = "(defaults)"
    if path is not None:
        path = resolve_config_path(path)
        source = str(path)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections")
    raw = apply_overrides(raw, list(overrides))
    try:
        return cls.model_validate(raw)
    except ValidationError as err:
        # a bad value that came from --set is the option's fault, not the file's
        given = {o.split("=", 1)[0].strip() for o in overrides}
        keys = {".".join(str(p) for p in e["loc"]) for e in err.errors()}
        if keys and keys <= given:
            source = "from --set " + ", ".join(o for o in overrides if o.split("=", 1)[0].strip()
                                               in keys)  # fmt: skip
        raise ConfigError(_format_errors(err, source)) from None


def resolve_config_path(path: Path | str) -> Path:
    """A YAML file, else the name of a config shipped with protgo (``-c demo``)."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    shipped = shipped_config(str(path))
    if shipped is not None:
        return shipped
    raise ConfigError(
        f"config file {path} not found; give a YAML file or the name of a shipped config "
        f"({', '.join(shipped_config_names())})"
    )


def load_config(path: Path | None, overrides: list[str] = ()) -> Config:
    return load_model(Config, path, overrides)


def dump_config(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
