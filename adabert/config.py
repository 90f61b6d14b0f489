"""Dataclass configs: the single source of truth for every stage.

Each stage's config is saved as ``config.json`` beside that stage's outputs, and the command line is
generated from these classes (field ``help`` metadata becomes ``--help`` text), so a flag, a config
file key and a saved value are always the same name.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from adabert.io import atomic_write_text

C = TypeVar("C")

DEFAULT_TEACHER = "default"


class ConfigError(ValueError):
    """A config file or value that cannot be used."""


def _f(default: Any, help: str, **kw: Any) -> Any:
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class FinetuneConfig:
    """Fine-tune a BERT-family teacher on a task."""

    task: str = _f("sst2", "GLUE task name (sst2, mrpc, qqp, mnli, qnli, rte, cola, stsb)")
    data_dir: str | None = _f(None, "local GLUE directory (release layout); omit to load from the hub")
    model: str = _f(DEFAULT_TEACHER, "checkpoint directory or hub id; 'default' = bundled MiniLM-L6-H384")
    output_dir: str = _f("runs/sst2/teacher", "where the fine-tuned teacher and its metrics are written")
    max_length: int = _f(128, "maximum tokens per example (pairs: both sentences together)")
    epochs: int = _f(3, "training epochs")
    batch_size: int = _f(32, "training batch size")
    lr: float = _f(5e-5, "AdamW learning rate")
    weight_decay: float = _f(0.01, "AdamW weight decay")
    warmup_ratio: float = _f(0.1, "fraction of steps with linear learning-rate warm-up")
    train_limit: int | None = _f(None, "use a seeded random subset of this many training rows")
    dev_limit: int | None = _f(None, "evaluate on a seeded random subset of this many dev rows")
    group_by_length: bool = _f(True, "batch rows of similar length together: less padding, faster steps")
    device: str = _f("auto", "torch device (cpu, cuda, cuda:1, ...); auto = cuda when available, else cpu")
    seed: int = _f(0, "random seed")


@dataclass
class ProbeConfig:
    """Train per-layer probes on a frozen teacher and write the knowledge store."""

    teacher: str = _f("runs/sst2/teacher", "fine-tuned teacher directory (output of 'teacher finetune')")
    task: str | None = _f(None, "task name; default: the task the teacher was fine-tuned on")
    data_dir: str | None = _f(None, "local GLUE directory; default: the one the teacher was trained on")
    max_length: int | None = _f(None, "maximum tokens per example; default: the teacher's fine-tuning value")
    output_dir: str = _f("runs/sst2/store", "knowledge store directory")
    epochs: int = _f(3, "probe training epochs")
    batch_size: int = _f(64, "batch size for feature extraction and probe training")
    lr: float = _f(1e-3, "probe learning rate (Adam)")
    train_limit: int | None = _f(None, "seeded random subset of training rows (default: the teacher's)")
    dev_limit: int | None = _f(None, "seeded random subset of dev rows (default: the teacher's)")
    augment_factor: int = _f(0, "augmented rows per training row (0 = no augmentation)")
    augment_replace_prob: float = _f(0.3, "per-word probability of replacement by an embedding neighbour")
    augment_mask_prob: float = _f(0.1, "per-word probability of replacement by [MASK]")
    augment_neighbours: int = _f(15, "nearest neighbours in the teacher's embedding table to draw from")
    device: str = _f("auto", "torch device for the teacher pass; auto = cuda when available, else cpu")
    seed: int = _f(0, "random seed")


@dataclass
class SearchConfig:
    """Differentiable architecture search over a cell space, distilled from the knowledge store."""

    store: str = _f("runs/sst2/store", "knowledge store directory (output of 'teacher probe')")
    output_dir: str = _f("runs/sst2/search", "search directory: log, checkpoints, genotype, plots")
    space: str = _f("adabert_cnn", "search space name (see 'adabert spaces')")
    hidden_size: int | None = _f(None, "cell channels (default: the space's)")
    max_cells: int | None = _f(None, "maximum depth K_max (default: the space's)")
    epochs: int = _f(10, "search epochs")
    batch_size: int = _f(64, "batch size")
    w_lr: float = _f(5e-4, "Adam learning rate of the network weights")
    w_weight_decay: float = _f(3e-4, "weight decay of the network weights")
    # Adam moves each logit by at most ~lr per step: the paper's 1e-4 suits its ~100k-step searches;
    # a search of a few thousand steps needs ~3e-3 for the logits to leave their N(0, 0.01) start.
    arch_lr: float = _f(3e-3, "Adam learning rate of the architecture logits (paper: 1e-4, far more steps)")
    arch_weight_decay: float = _f(1e-3, "weight decay of the architecture logits")
    grad_clip: float = _f(5.0, "gradient norm clipping")
    gamma: float = _f(0.8, "weight of the knowledge-distillation loss (0 = no KD)")
    beta: float = _f(4.0, "weight of the efficiency loss (0 = no efficiency loss)")
    beta_warmup_epochs: int = _f(
        5, "ramp beta linearly from 0 over this many epochs, so untrained convolutions are not pruned "
        "for their cost before they can show their use (0 = full beta from the start)")
    arch_warmup_epochs: int = _f(0, "train only the network weights for the first N epochs (no arch steps)")
    tau_start: float = _f(1.0, "initial Gumbel-softmax temperature")
    tau_end: float = _f(0.2, "final Gumbel-softmax temperature")
    tau_anneal_fraction: float = _f(0.8, "fraction of steps over which the temperature is annealed")
    kd_temperature: float = _f(1.0, "softmax temperature of the KD soft targets")
    arch_fraction: float = _f(0.5, "fraction of training rows held out for architecture steps")
    cost_seq_len: int = _f(128, "reference sequence length for op FLOPs in the efficiency loss")
    dropout: float = _f(0.1, "dropout on embeddings and classifier")
    train_limit: int | None = _f(None, "seeded random subset of N stored train rows (+ their augmented rows)")
    use_augmented: bool = _f(True, "also train on the store's augmented rows when present")
    random_architecture: bool = _f(False, "ablation: skip the search, draw a random genotype from the space")
    seed: int = _f(0, "random seed")
    resume: bool = _f(False, "continue from the last checkpoint in output_dir")
    num_workers: int = _f(0, "data loader worker processes")


@dataclass
class TrainConfig:
    """Train a compact student from a genotype with distillation from the knowledge store."""

    genotype: str = _f("runs/sst2/search/genotype.json", "genotype JSON (output of 'search')")
    store: str = _f("runs/sst2/store", "knowledge store directory")
    output_dir: str = _f("runs/sst2/student", "student directory (save_pretrained layout)")
    supernet: str | None = _f(None, "search checkpoint to initialise the cells from (default: scratch)")
    epochs: int = _f(10, "training epochs")
    batch_size: int = _f(64, "batch size")
    lr: float = _f(1e-3, "AdamW learning rate")
    weight_decay: float = _f(1e-4, "AdamW weight decay")
    gamma: float = _f(0.8, "weight of the KD loss on logits against the stored teacher logits")
    probe_kd: float = _f(0.0, "weight of the hierarchical probe KD loss")
    kd_temperature: float = _f(1.0, "softmax temperature of the KD soft targets")
    dropout: float = _f(0.1, "dropout on embeddings and classifier")
    grad_clip: float = _f(5.0, "gradient norm clipping")
    train_limit: int | None = _f(None, "seeded random subset of N stored train rows (+ their augmented rows)")
    use_augmented: bool = _f(True, "also train on the store's augmented rows when present")
    seed: int = _f(0, "random seed")
    resume: bool = _f(False, "continue from the last checkpoint in output_dir")


@dataclass
class EvalConfig:
    """Evaluate a model on the dev split: task metrics, loyalty, size, FLOPs and latency."""

    model: str = _f("runs/sst2/student", "model directory (student, teacher or compressed model)")
    store: str = _f("runs/sst2/store", "knowledge store directory (dev rows and teacher predictions)")
    teacher: str | None = _f(None, "teacher directory for the latency comparison (default: the store's)")
    output_dir: str = _f("runs/sst2/eval", "where report.json and report.md are written")
    batch_sizes: tuple[int, ...] = _f((1, 32), "latency batch sizes")
    seq_len: int = _f(128, "latency sequence length")
    repeats: int = _f(20, "timed repeats per latency measurement")
    warmup: int = _f(3, "untimed warm-up runs per latency measurement")
    threads: int | None = _f(None, "torch threads for latency (default: torch's)")
    skip_latency: bool = _f(False, "skip latency measurement")


@dataclass
class CompressConfig:
    """Compress a fine-tuned classifier (teacher or student): prune, factorize, distil from the store."""

    model: str = _f("runs/sst2/student", "model directory to compress (student, teacher or compressed model)")
    store: str = _f("runs/sst2/store", "knowledge store directory (rows and teacher logits for KD)")
    output_dir: str = _f("runs/sst2/compressed", "compressed model (save_pretrained layout) and its report")
    methods: str = _f("svd,magnitude", "comma-separated methods, applied in order: magnitude, block, svd")
    target_sparsity: float = _f(0.5, "fraction of each layer's weights pruned (magnitude and block)")
    block_size: tuple[int, ...] = _f((0, 0), "block (rows, cols) of block pruning; 0 = the whole dimension")
    group: str = _f("row", "block-pruning group inside each block: row or col")
    lasso_lambda: float = _f(
        1.0, "strength of the reweighted group lasso of block pruning (a decoupled shrink after each step)"
    )
    lasso_eps: float = _f(1e-6, "epsilon of the reweighting gamma = 1 / (||W_g||^2 + eps)")
    reweight_every: int = _f(20, "training steps between group-lasso reweightings")
    prune_rounds: int = _f(10, "pruning rounds T (magnitude, block): keep_t = (1 - target_sparsity)^(t/T)")
    rank_ratio: float = _f(0.5, "SVD rank as a fraction of each layer's full rank")
    energy: float | None = _f(None, "choose each SVD rank to keep this fraction of spectral energy instead")
    exclude: str = _f(r"(^|\.)(classifier|head)(\.|$)", "regex of module names never pruned or factorized")
    embeddings: bool = _f(False, "also compress embedding tables (SVD: ALBERT-style factorized embeddings)")
    kd_epochs: float = _f(1.0, "KD epochs per method (magnitude, block: over all pruning rounds)")
    retrain_epochs: float = _f(1.0, "KD epochs with the masks fixed after magnitude / block pruning")
    batch_size: int = _f(32, "training batch size")
    lr: float | None = _f(None, "AdamW learning rate (default: 1e-3 for an AdaBERT student, else 5e-5)")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    gamma: float = _f(0.8, "weight of the KD loss on logits against the stored teacher logits")
    kd_temperature: float = _f(1.0, "softmax temperature of the KD soft targets")
    hidden_kd: float = _f(
        1.0, "weight of the MSE between the hidden states and the original model's (LadaBERT); 0 = off"
    )
    grad_clip: float = _f(5.0, "gradient norm clipping")
    train_limit: int | None = _f(None, "seeded random subset of N stored train rows (+ their augmented rows)")
    use_augmented: bool = _f(True, "also train on the store's augmented rows when present")
    device: str = _f("auto", "torch device for training (auto = cuda when available, else cpu)")
    seed: int = _f(0, "random seed")
    batch_sizes: tuple[int, ...] = _f((1, 32), "latency batch sizes")
    seq_len: int = _f(128, "latency and FLOPs sequence length")
    repeats: int = _f(20, "timed repeats per latency measurement")
    warmup: int = _f(3, "untimed warm-up runs per latency measurement")
    threads: int | None = _f(None, "torch threads for latency (default: torch's)")
    skip_latency: bool = _f(False, "skip latency measurement")


STAGE_CONFIGS: dict[str, type] = {
    "finetune": FinetuneConfig,
    "probe": ProbeConfig,
    "search": SearchConfig,
    "train": TrainConfig,
    "evaluate": EvalConfig,
    "compress": CompressConfig,
}


def _unwrap(tp: Any) -> tuple[type, bool]:
    """(base type, optional?) of a field annotation such as ``int | None``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def add_arguments(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """Add one ``--flag`` per field of the dataclass ``cls``, with its help text and default."""
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        base, _ = _unwrap(hints[f.name])
        help_text = f.metadata.get("help", "")
        shown = " ".join(map(str, f.default)) if isinstance(f.default, tuple) else f.default
        if not (f.default is None and "default" in help_text):  # else the help says what None means
            help_text = f"{help_text} (default: {shown})"
        if base is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif typing.get_origin(base) is tuple:
            item = typing.get_args(base)[0]
            parser.add_argument(flag, type=item, nargs="+", default=None, help=help_text)
        else:
            parser.add_argument(flag, type=base, default=None, metavar=base.__name__.upper(), help=help_text)


def from_dict(cls: type[C], values: dict[str, Any], source: str = "config") -> C:
    """Build ``cls`` from a mapping, refusing unknown keys and values of the wrong type."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: expected a JSON object of settings, got {type(values).__name__}")
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"{source}: unknown setting(s) {unknown}; known: {sorted(names)}")
    kwargs = {}
    for name, value in values.items():
        base, optional = _unwrap(hints[name])
        if value is None:
            if not optional:
                raise ConfigError(f"{source}: setting {name!r} cannot be null")
            kwargs[name] = None
            continue
        kwargs[name] = _coerce(value, base, f"{source}: setting {name!r}")
    return cls(**kwargs)


def _coerce(value: Any, base: Any, where: str) -> Any:
    if typing.get_origin(base) is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} expects a list, got {_short(value)}")
        item = typing.get_args(base)[0]
        return tuple(_coerce(v, item, where) for v in value)
    if base is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} expects true or false, got {_short(value)}")
        return value
    if base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise ConfigError(f"{where} expects a finite number, got {_short(value)}")
        return number
    if base is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if base is str and isinstance(value, str):
        return value
    raise ConfigError(f"{where} expects {base.__name__}, got {_short(value)}")


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def from_args(cls: type[C], ns: argparse.Namespace, base: C | None = None) -> C:
    """Overlay parsed flags (those given) on ``base`` (or the defaults)."""
    cfg = base if base is not None else cls()
    given = {
        f.name: getattr(ns, f.name) for f in dataclasses.fields(cls) if getattr(ns, f.name, None) is not None
    }
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in given.items()}
    return dataclasses.replace(cfg, **given)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    atomic_write_text(Path(path), json.dumps(to_dict(cfg), indent=2) + "\n")


def load_config(cls: type[C], path: str | Path) -> C:
    """Read a JSON config file; anything wrong with it raises ConfigError naming the file."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as err:  # a directory, no permission, ...
        raise ConfigError(f"{path}: config file cannot be read ({err.strerror or err})") from None
    except UnicodeDecodeError as err:
        line = err.object[: err.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    try:
        values = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
    except ValueError as err:  # e.g. an integer longer than Python converts
        raise ConfigError(f"{path}: not valid JSON ({err})") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid JSON (nested too deeply)") from None
    return from_dict(cls, values, source=str(path))


PIPELINE_STAGE_FIELDS = ("finetune", "probe", "search", "train", "compress", "evaluate")


@dataclass
class PipelineConfig:
    """Every stage, task to deployable model, into one run directory (see 'adabert pipeline --help').

    The per-stage fields (``finetune``, ``probe``, ``search``, ``train``, ``compress``, ``evaluate``)
    are JSON objects of that stage config's settings; they override the budget's settings, which
    override the stage defaults. Paths between stages are set by the pipeline and cannot be overridden.
    ``compress`` is null (no compression stage) or an object (compress, with those settings).
    """

    task: str = _f("sst2", "GLUE task name (sst2, mrpc, qqp, mnli, qnli, rte, cola, stsb)")
    data_dir: str | None = _f(None, "local GLUE directory (release layout); omit to load from the hub")
    run_dir: str = _f("runs/sst2", "run directory: one folder per stage, pipeline.json, report.md/.html")
    teacher: str | None = _f(None, "an already fine-tuned teacher directory: skip fine-tuning and use it")
    model: str = _f(DEFAULT_TEACHER, "checkpoint to fine-tune as the teacher; 'default' = bundled MiniLM-L6")
    budget: str = _f("quick", "settings preset: quick, paper or custom (stage defaults), see above")
    from_supernet: bool = _f(True, "initialise the student's cells from the searched supernet's weights")
    export_seq_len: int | None = _f(None, "ONNX export example length; unset = the store's max_length")
    export_atol: float = _f(1e-4, "largest |logit difference| allowed between ONNX Runtime and PyTorch")
    finetune: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "FinetuneConfig settings for the teacher stage"}
    )
    probe: dict[str, Any] = field(default_factory=dict, metadata={"help": "ProbeConfig settings"})
    search: dict[str, Any] = field(default_factory=dict, metadata={"help": "SearchConfig settings"})
    train: dict[str, Any] = field(default_factory=dict, metadata={"help": "TrainConfig settings"})
    compress: dict[str, Any] | None = field(
        default=None, metadata={"help": "CompressConfig settings; null = no compression stage"}
    )
    evaluate: dict[str, Any] = field(default_factory=dict, metadata={"help": "EvalConfig settings"})

    BUDGETS: typing.ClassVar[tuple[str, ...]] = ("quick", "paper", "custom")
    # settings the pipeline sets itself: the paths that connect the stages, and resumption
    MANAGED: typing.ClassVar[dict[str, tuple[str, ...]]] = {
        "finetune": ("task", "data_dir", "model", "output_dir"),
        "probe": ("teacher", "task", "data_dir", "output_dir"),
        "search": ("store", "output_dir", "resume"),
        "train": ("genotype", "store", "output_dir", "supernet", "resume"),
        "compress": ("model", "store", "output_dir"),
        "evaluate": ("model", "store", "teacher", "output_dir"),
    }

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, source: str = "pipeline config") -> None:
        """Refuse an unknown budget and stage settings that are unknown, mistyped or set by the pipeline."""
        if self.budget not in self.BUDGETS:
            raise ConfigError(f"{source}: budget must be one of {list(self.BUDGETS)}, got {self.budget!r}")
        for name in PIPELINE_STAGE_FIELDS:
            values = getattr(self, name)
            if values is None and name == "compress":
                continue
            if not isinstance(values, dict):
                kind = "a JSON object of settings" + (" or null" if name == "compress" else "")
                raise ConfigError(f"{source}: {name!r} must be {kind}, got {values!r}")
            managed = sorted(set(values) & set(self.MANAGED[name]))
            if managed:
                raise ConfigError(
                    f"{source}: {name}: setting(s) {managed} are set by the pipeline (the paths between "
                    "stages, resumption, and the top-level task/data_dir/model); remove them"
                )
            from_dict(STAGE_CONFIGS[name], values, source=f"{source}: {name}")

    def stage_settings(self, name: str) -> dict[str, Any]:
        """The overrides of one stage, coerced to the stage config's types (lists become tuples, ...)."""
        values = getattr(self, name) or {}
        parsed = from_dict(STAGE_CONFIGS[name], values, source=f"pipeline config: {name}")
        return {key: getattr(parsed, key) for key in values}

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> PipelineConfig:
        """Like :func:`from_dict`, with the per-stage objects validated against their stage configs."""
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: expected a JSON object of settings, got {type(values).__name__}")
        if "budget" in values and values["budget"] not in cls.BUDGETS:
            budget = values["budget"]
            raise ConfigError(f"{source}: budget must be one of {list(cls.BUDGETS)}, got {budget!r}")
        stages = {k: v for k, v in values.items() if k in PIPELINE_STAGE_FIELDS}
        base = from_dict(cls, {k: v for k, v in values.items() if k not in PIPELINE_STAGE_FIELDS}, source)
        cfg = dataclasses.replace(base, **{k: {} if k != "compress" else None for k in stages})
        for key, value in stages.items():
            setattr(cfg, key, value)
        cfg.validate(source)
        return cfg

    @classmethod
    def load(cls, path: str | Path) -> PipelineConfig:
        """Read a JSON pipeline config file; anything wrong with it raises ConfigError naming the file."""
        path = Path(path)
        try:
            values = json.loads(path.read_bytes().decode("utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except OSError as err:  # a directory, no permission, ...
            raise ConfigError(f"{path}: config file cannot be read ({err.strerror or err})") from None
        except UnicodeDecodeError as err:
            raise ConfigError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
        except (ValueError, RecursionError) as err:  # huge integers, deep nesting
            raise ConfigError(f"{path}: not valid JSON ({type(err).__name__})") from None
        return cls.from_dict(values, source=str(path))
