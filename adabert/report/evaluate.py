"""Evaluation: task metrics, loyalty to the teacher, size, FLOPs and measured latency, and the report.

Everything here is generic over Hugging Face style sequence classifiers (teacher, searched student,
compressed student): a module whose forward takes ``input_ids`` / ``attention_mask`` /
``token_type_ids`` and returns logits (a tensor, a dict or a ``ModelOutput`` with ``.logits``).
Speed and size are only meaningful next to the teacher measured the same way in the same run
(METHOD.md, "Evaluation conventions"), so latency is measured for all models together: on the CPU
always, and with ``--device cuda`` on that GPU too, in a section of its own (CUDA timings are
synchronised). Dev predictions run on the CPU, so the metrics do not depend on the machine's GPU.
"""

from __future__ import annotations

import inspect
import json
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from scipy.special import log_softmax, xlogy
from torch import Tensor, nn
from torch.utils import flop_counter

from adabert import data
from adabert.errors import UserError
from adabert.io import atomic_write_json, atomic_write_text
from adabert.model_folder import load_classifier
from adabert.progress import progress as progress_bar

if TYPE_CHECKING:
    from transformers import PreTrainedModel

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".onnx", ".onnx.data", ".pt")
NOT_WEIGHTS = ("training_state.safetensors", "checkpoint.safetensors")  # resume states, not the model
CLS_TOKEN_ID = 101
DUMMY_SEED = 0


# ----------------------------------------------------------------------------------------------- loyalty
def loyalty(
    teacher_logits: np.ndarray, student_logits: np.ndarray, regression: bool = False
) -> dict[str, float]:
    """How faithfully the student reproduces its teacher, beyond accuracy (METHOD.md §5).

    Classification: ``label_loyalty`` (fraction of equal argmax labels) and ``probability_loyalty``
    (mean of ``1 - sqrt(JSD)`` with base-2 JSD between softmax distributions, so each term is in [0, 1]).
    Regression has no labels or distributions, so it reports ``prediction_mse`` and
    ``prediction_pearson`` against the teacher's predictions instead (Pearson is NaN when either side
    is constant, where it is undefined).
    """
    t = np.asarray(teacher_logits, dtype=np.float64)
    s = np.asarray(student_logits, dtype=np.float64)
    if t.shape != s.shape:
        raise ValueError(f"teacher logits {t.shape} and student logits {s.shape} differ in shape")
    if t.size == 0:
        raise ValueError("loyalty needs at least one example")
    if regression:
        if t.ndim == 2 and t.shape[1] == 1:
            t, s = t[:, 0], s[:, 0]
        if t.ndim != 1:
            raise ValueError(f"regression predictions must be [N] or [N, 1], got {tuple(t.shape)}")
        mse = float(np.mean((t - s) ** 2))
        if np.std(t) == 0 or np.std(s) == 0:
            pearson = float("nan")
        else:
            pearson = float(np.corrcoef(t, s)[0, 1])
        return {"prediction_mse": mse, "prediction_pearson": pearson}
    if t.ndim != 2 or t.shape[1] < 2:
        raise ValueError(f"classification logits must be [N, num_labels >= 2], got {tuple(t.shape)}")
    label = float(np.mean(t.argmax(axis=1) == s.argmax(axis=1)))
    jsd = jensen_shannon_divergence(np.exp(log_softmax(t, axis=1)), np.exp(log_softmax(s, axis=1)))
    prob = float(np.mean(1.0 - np.sqrt(jsd)))
    return {"label_loyalty": label, "probability_loyalty": prob}


def jensen_shannon_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Row-wise base-2 JSD of probability rows; ``xlogy`` makes zero-probability terms exactly 0."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    m = 0.5 * (p + q)
    kl_pm = np.sum(xlogy(p, p) - xlogy(p, m), axis=-1)
    kl_qm = np.sum(xlogy(q, q) - xlogy(q, m), axis=-1)
    # Rounding can push the value a hair outside [0, 1]; sqrt of a tiny negative would be NaN.
    return np.clip(0.5 * (kl_pm + kl_qm) / math.log(2.0), 0.0, 1.0)


# ------------------------------------------------------------------------------------------------- size
def count_parameters(model: nn.Module) -> dict[str, int]:
    """Total, embedding and non-embedding parameter counts (tied weights counted once).

    Embedding tables dominate small students' size but cost almost nothing at run time, so the
    non-embedding count is the fairer measure of a compact model's compute.
    """
    params = {id(p): p.numel() for p in model.parameters()}
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))}
    total = sum(params.values())
    embedding = sum(n for pid, n in params.items() if pid in embedding_ids)
    return {"total": total, "embedding": embedding, "non_embedding": total - embedding}


def model_file_size(directory: str | Path, suffixes: Sequence[str] = WEIGHT_SUFFIXES) -> int:
    """Bytes on disk of the weight files directly in ``directory`` (or of one weight file).

    Only the model's weights count, not tokenizer or config files, nor the resume state a folder of
    an older adabert holds beside them (``NOT_WEIGHTS``), so sizes compare across formats. Raises
    ``FileNotFoundError`` when there are none, so a wrong path never reports a size of 0.
    """
    path = Path(directory)
    if path.is_file():
        return path.stat().st_size
    if not path.is_dir():
        raise FileNotFoundError(f"no such directory: {path}")
    files = [f for f in path.iterdir() if f.is_file() and f.name.endswith(tuple(suffixes))]
    files = [f for f in files if f.name not in NOT_WEIGHTS]
    if not files:
        raise FileNotFoundError(f"no weight files ({', '.join(suffixes)}) in {path}")
    return sum(f.stat().st_size for f in files)


# ------------------------------------------------------------------------------------------ model calls
def model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def accepted_inputs(model: nn.Module, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The entries of ``batch`` that ``model.forward`` accepts (e.g. no token_type_ids for DistilBERT)."""
    params = inspect.signature(model.forward).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(batch)
    return {k: v for k, v in batch.items() if k in params}


def extract_logits(output: Any) -> Tensor:
    """Logits from a ``ModelOutput``, a dict, a tuple (first item: called without labels) or a tensor."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping):
        return output["logits"]
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise TypeError(f"cannot find logits in a {type(output).__name__}")


def dummy_batch(
    model: nn.Module, batch_size: int, seq_len: int, pair: bool = True, seed: int = DUMMY_SEED
) -> dict[str, Tensor]:
    """A fixed, seeded batch of the model's input shape, on the model's device.

    Seeded so that every model (and every run) is timed on identical inputs. With ``pair`` the second
    half is segment 1, as in a sentence-pair task, unless the model has a single token type.
    """
    if batch_size < 1 or seq_len < 1:
        raise ValueError(f"batch_size and seq_len must be positive, got {batch_size}, {seq_len}")
    config = getattr(model, "config", None)
    vocab_size = getattr(config, "vocab_size", None)
    if vocab_size is None:
        embeddings = [m for m in model.modules() if isinstance(m, nn.Embedding)]
        if not embeddings:
            raise ValueError("cannot infer vocab_size: model has no config.vocab_size and no nn.Embedding")
        vocab_size = embeddings[0].num_embeddings
    max_positions = getattr(config, "max_position_embeddings", None)
    if max_positions is not None and seq_len > max_positions:
        raise UserError(f"seq_len {seq_len} exceeds the model's max_position_embeddings {max_positions}")
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, vocab_size, (batch_size, seq_len), generator=generator)
    input_ids[:, 0] = CLS_TOKEN_ID if vocab_size > CLS_TOKEN_ID else 0
    token_type_ids = torch.zeros_like(input_ids)
    if pair and getattr(config, "type_vocab_size", 2) >= 2:
        token_type_ids[:, seq_len // 2 :] = 1
    device = model_device(model)
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": torch.ones_like(input_ids).to(device),
        "token_type_ids": token_type_ids.to(device),
    }


def _sdpa_flops(
    query_shape: Sequence[int],
    key_shape: Sequence[int],
    value_shape: Sequence[int],
    *args: Any,
    **kwargs: Any,
) -> int:
    """The two batched matmuls of attention, ``q @ k^T`` and ``attn @ v`` (softmax not counted)."""
    *batch, q_len, qk_dim = query_shape
    k_len, v_dim = key_shape[-2], value_shape[-1]
    heads = math.prod(batch)
    return 2 * heads * q_len * k_len * qk_dim + 2 * heads * q_len * k_len * v_dim


def _flop_formulas() -> dict[Any, Callable[..., int]]:
    """Count PyTorch's CPU fused attention, which FlopCounterMode misses (it knows only the GPU kernels).

    Without this an SDPA model would be credited with no attention FLOPs on CPU while an eager one
    would, and FLOPs would not compare across models.
    """
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    return {op: _sdpa_flops} if op is not None else {}


def _count_flops(model: nn.Module, seq_len: int, pair: bool) -> flop_counter.FlopCounterMode:
    """A FLOP counter that has seen one eval-mode forward of one example of ``seq_len`` tokens."""
    batch = accepted_inputs(model, dummy_batch(model, 1, seq_len, pair))
    was_training = model.training
    model.eval()
    try:
        counter = flop_counter.FlopCounterMode(display=False, custom_mapping=_flop_formulas())
        with torch.no_grad(), counter:
            model(**batch)
    finally:
        model.train(was_training)
    return counter


def flops_per_example(model: nn.Module, seq_len: int, pair: bool = True) -> int:
    """Forward FLOPs for one example of ``seq_len`` tokens (multiply-add = 2 FLOPs, as PyTorch counts)."""
    return int(_count_flops(model, seq_len, pair).get_total_flops())


def cell_op_costs(model: nn.Module, seq_len: int, pair: bool = True) -> list[dict[str, Any]] | None:
    """Per kept edge of a searched student's cell: its op, and the parameters and FLOPs per example of
    that edge summed over every cell, measured on the model's own modules (compressed ones included).

    Shows which ops a student's size and compute go to; None for a model without genotype cells.
    """
    genotype, cells = getattr(getattr(model, "config", None), "genotype", None), getattr(model, "cells", None)
    if not isinstance(genotype, Mapping) or cells is None:
        return None
    counts = _count_flops(model, seq_len, pair).get_flop_counts()
    root = type(model).__name__
    rows = []
    for i, edge in enumerate(genotype["edges"]):
        names = [f"{root}.cells.{k}.ops.{i}.0" for k in range(len(cells))]
        rows.append(
            {
                "edge": f"{edge['source']} -> {edge['target']}",
                "op": edge["op"],
                "cells": len(cells),
                "params": sum(p.numel() for cell in cells for p in cell.ops[i].parameters()),
                "flops_per_example": sum(sum(counts.get(name, {}).values()) for name in names),
            }
        )
    return rows


# ------------------------------------------------------------------------------------------------ latency
def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _latency_stats(times_s: Sequence[float], batch_size: int, seq_len: int, threads: int) -> dict[str, float]:
    ms = np.asarray(times_s, dtype=np.float64) * 1000.0
    return {
        "median_ms": float(np.median(ms)),
        "p90_ms": float(np.percentile(ms, 90)),
        "mean_ms": float(np.mean(ms)),
        "batch_size": batch_size,
        "seq_len": seq_len,
        "threads": threads,
    }


def time_calls(
    calls: Mapping[str, Callable[[], Any]],
    repeats: int,
    warmup: int,
    devices: Mapping[str, torch.device] | None = None,
) -> dict[str, list[float]]:
    """Per-call seconds of each callable, alternating them call by call.

    Alternating (and rotating which one goes first each round) spreads machine drift, turbo and
    neighbours' load evenly over all of them instead of penalising whichever ran last.
    """
    names = list(calls)
    devices = devices or {}
    cpu = torch.device("cpu")
    times: dict[str, list[float]] = {n: [] for n in names}
    with torch.inference_mode():
        for name in names:
            for _ in range(warmup):
                calls[name]()
            _synchronize(devices.get(name, cpu))
        for r in range(repeats):
            for i in range(len(names)):
                name = names[(r + i) % len(names)]
                _synchronize(devices.get(name, cpu))
                start = time.perf_counter()
                calls[name]()
                _synchronize(devices.get(name, cpu))
                times[name].append(time.perf_counter() - start)
    return times


def _time_interleaved(
    models: Mapping[str, nn.Module],
    batch_size: int,
    seq_len: int,
    repeats: int,
    warmup: int,
    pair: bool,
) -> dict[str, list[float]]:
    """Per-call seconds for each model on the same seeded batch, alternating models call by call."""
    batches = {n: accepted_inputs(m, dummy_batch(m, batch_size, seq_len, pair)) for n, m in models.items()}
    calls = {n: (lambda m=m, b=batches[n]: m(**b)) for n, m in models.items()}
    return time_calls(calls, repeats, warmup, {n: model_device(m) for n, m in models.items()})


class EvalMode:
    """Put models in eval mode and fix torch's thread count for a measurement; restore both afterwards."""

    def __init__(self, models: Iterable[nn.Module], threads: int | None) -> None:
        self.models = list(models)
        self.threads = threads

    def __enter__(self) -> int:
        self.saved_threads = torch.get_num_threads()
        self.saved_modes = [m.training for m in self.models]
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        for m in self.models:
            m.eval()
        return torch.get_num_threads()

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.saved_threads)
        for m, mode in zip(self.models, self.saved_modes):
            m.train(mode)


def measure_latency(
    model: nn.Module,
    batch_size: int,
    seq_len: int,
    repeats: int = 20,
    warmup: int = 3,
    threads: int | None = None,
    pair: bool = True,
) -> dict[str, float]:
    """Wall-clock milliseconds per forward call of one model (median, p90, mean over ``repeats`` calls).

    For speedups, use ``compare_latency``: numbers from separate calls are only comparable when the
    machine did not change in between.
    """
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    with EvalMode([model], threads) as used_threads:
        times = _time_interleaved({"model": model}, batch_size, seq_len, repeats, warmup, pair)
    return _latency_stats(times["model"], batch_size, seq_len, used_threads)


def compare_latency(
    models: Mapping[str, nn.Module],
    batch_sizes: Sequence[int] = (1, 32),
    seq_len: int = 128,
    repeats: int = 20,
    warmup: int = 3,
    threads: int | None = None,
    pair: bool = True,
) -> dict[str, dict[str, dict[str, float]]]:
    """Latency of every model at every batch size in one interleaved run, with pairwise speedups.

    Returns ``{name: {str(batch_size): latency}}``; each latency dict also holds
    ``speedup_vs_<other>`` = other's median / this median for every other model, so > 1 means faster.
    """
    if not models:
        raise ValueError("compare_latency needs at least one model")
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    result: dict[str, dict[str, dict[str, float]]] = {name: {} for name in models}
    with EvalMode(models.values(), threads) as used_threads:
        for bs in batch_sizes:
            times = _time_interleaved(models, bs, seq_len, repeats, warmup, pair)
            for name in models:
                result[name][str(bs)] = _latency_stats(times[name], bs, seq_len, used_threads)
    for bs in map(str, batch_sizes):
        for name in models:
            for other in models:
                if other != name:
                    ratio = result[other][bs]["median_ms"] / result[name][bs]["median_ms"]
                    result[name][bs][f"speedup_vs_{other}"] = ratio
    return result


def bert_base_reference(num_labels: int) -> PreTrainedModel:
    """A randomly initialised BERT-base classifier: the fixed yardstick for size and speed.

    Its speed does not depend on its weights, so nothing is downloaded; the seed is fixed (without
    touching the caller's RNG) so that repeated builds are identical.
    """
    from transformers import BertConfig, BertForSequenceClassification

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = BertForSequenceClassification(BertConfig(num_labels=num_labels))
    return model.eval()


# -------------------------------------------------------------------------------------------- predictions
def evaluate_predictions(
    task: Any, logits: np.ndarray, labels: np.ndarray, teacher_logits: np.ndarray | None = None
) -> dict[str, float]:
    """The task's GLUE metrics for ``logits``, plus loyalty to the teacher when its logits are given."""
    from adabert.tasks import compute_metrics, get_task, predictions_from_logits

    logits = np.asarray(logits)
    predictions = predictions_from_logits(task, logits)
    metrics = dict(compute_metrics(task, predictions, np.asarray(labels)))
    if teacher_logits is not None:
        regression = getattr(task, "is_regression", None)
        if regression is None:
            regression = get_task(task).is_regression
        metrics.update(loyalty(np.asarray(teacher_logits), logits, regression=bool(regression)))
    return metrics


def predict(
    model: nn.Module,
    dataset: Any,
    batch_size: int = 64,
    collator: Callable[[list[dict[str, Any]]], Mapping[str, Tensor]] | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Float32 logits ``[N, num_labels]`` of ``model`` over an encoded ``datasets.Dataset``, in row order.

    Only the model-input columns are read, so labels never trigger a loss computation. Rows are padded
    per batch (``data.collate`` unless a collator such as ``DataCollatorWithPadding`` is given).
    """
    columns = [c for c in MODEL_INPUTS if c in dataset.column_names]
    if "input_ids" not in columns:
        raise ValueError(f"dataset has no input_ids column (columns: {dataset.column_names})")
    rows = dataset.select_columns(columns).with_format(None)
    collate = collator or data.collate
    device = model_device(model)
    outputs: list[np.ndarray] = []
    was_training = model.training
    model.eval()
    try:
        with (
            torch.inference_mode(),
            progress_bar(total=len(rows), desc="predict", unit="ex", disable=not progress) as bar,
        ):
            for start in range(0, len(rows), batch_size):
                chunk = rows[start : start + batch_size]
                n = len(chunk["input_ids"])
                features = [{c: chunk[c][i] for c in columns} for i in range(n)]
                batch = {k: v.to(device) for k, v in collate(features).items() if k in MODEL_INPUTS}
                logits = extract_logits(model(**accepted_inputs(model, batch)))
                outputs.append(logits.float().cpu().numpy())
                bar.update(n)
    finally:
        model.train(was_training)
    if not outputs:
        return np.zeros((0, getattr(getattr(model, "config", None), "num_labels", 0)), dtype=np.float32)
    return np.concatenate(outputs).astype(np.float32, copy=False)


# -------------------------------------------------------------------------------------------------- report
def jsonable(value: Any) -> Any:
    """Plain JSON types for numpy scalars/arrays, tensors and paths found anywhere in a report."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return value


def format_value(value: Any, digits: int = 4) -> str:
    """A report cell: thousands separators for counts, fixed digits for floats, a dash for missing."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def format_bytes(n: float | None) -> str:
    """A size in binary units, labelled as such (1 MiB = 1024 KiB = 1048576 B)."""
    if n is None:
        return "—"
    for unit in ("B", "KiB", "MiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"


def _fmt_flops(n: float) -> str:
    for scale, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.3f} {unit}FLOPs"
    return f"{n:.0f} FLOPs"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _per_model(section: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """A section is ``{model: {key: value}}``; a flat ``{key: value}`` is one unnamed model."""
    if section and all(isinstance(v, Mapping) for v in section.values()):
        return dict(section)
    return {"model": section}


def _references(report: Mapping[str, Any], name: str, candidates: Iterable[str]) -> list[str]:
    refs = report.get("references")
    names = list(refs) if refs is not None else list(candidates)
    return [r for r in names if r != name]


def _metrics_section(metrics: Mapping[str, Any]) -> list[str]:
    per_model = _per_model(metrics)
    keys: list[str] = []
    for values in per_model.values():
        keys += [k for k in values if k not in keys]
    rows = [[name] + [format_value(values.get(k)) for k in keys] for name, values in per_model.items()]
    return ["## Task metrics and loyalty to the teacher", "", *_table(["model", *keys], rows), ""]


def _size_section(report: Mapping[str, Any], size: Mapping[str, Any]) -> list[str]:
    per_model = _per_model(size)
    refs = [r for r in (report.get("references") or per_model) if r in per_model]
    header = ["model", "params (total)", "params (non-embedding)", "file size", "FLOPs / example"]
    header += [f"params vs {r}" for r in refs]
    rows = []
    for name, s in per_model.items():
        row = [
            name,
            format_value(s.get("total")),
            format_value(s.get("non_embedding")),
            format_bytes(s["file_bytes"]) if s.get("file_bytes") is not None else "—",
            _fmt_flops(s["flops_per_example"]) if s.get("flops_per_example") is not None else "—",
        ]
        for r in refs:
            ref_total, total = per_model[r].get("total"), s.get("total")
            ok = r != name and ref_total and total
            if not ok:
                row.append("—")
            elif total <= ref_total:
                row.append(f"{ref_total / total:.2f}× smaller")
            else:
                row.append(f"{total / ref_total:.2f}× larger")
        rows.append(row)
    return ["## Size", "", *_table(header, rows), ""]


def _latency_section(
    report: Mapping[str, Any], latency: Mapping[str, Any], device: str | None = None
) -> list[str]:
    refs = _references(report, "", latency)
    header = ["model", "batch", "median ms", "p90 ms", *[f"speedup vs {r}" for r in refs]]
    rows, settings = [], ""
    for name, per_bs in latency.items():
        for bs, stats in per_bs.items():
            if device is None:
                settings = f" (seq_len {stats.get('seq_len', '?')}, {stats.get('threads', '?')} threads)"
            else:
                settings = f" on {device} (seq_len {stats.get('seq_len', '?')})"
            row = [name, str(bs), f"{stats['median_ms']:.2f}", f"{stats['p90_ms']:.2f}"]
            for r in refs:
                ratio = stats.get(f"speedup_vs_{r}")
                row.append(f"{ratio:.2f}×" if ratio is not None else "—")
            rows.append(row)
    return [f"## Latency per batch{settings}", "", *_table(header, rows), ""]


def _cell_ops_section(rows: Sequence[Mapping[str, Any]], seq_len: Any) -> list[str]:
    total = sum(r["flops_per_example"] for r in rows) or 1
    body = [
        [r["edge"], r["op"], format_value(r["params"]), _fmt_flops(r["flops_per_example"]),
         f"{100 * r['flops_per_example'] / total:.1f}%"]
        for r in rows
    ]  # fmt: skip
    cells = rows[0]["cells"] if rows else 0
    return [
        f"## Cell operations (each edge summed over the {cells} cell(s); FLOPs at seq_len {seq_len})",
        "",
        *_table(["edge", "op", "params", "FLOPs / example", "share of cell FLOPs"], body),
        "",
    ]


def render_report(report: Mapping[str, Any]) -> str:
    """Markdown for a report dict: top-level scalars, then the metrics / size / latency sections present.

    Expected sections (all optional): ``metrics`` ``{model: evaluate_predictions(...)}``; ``size``
    ``{model: count_parameters(...) + file_bytes + flops_per_example}``; ``latency``
    (``compare_latency`` output); ``references`` (model names to compare against; default: all others).
    Any other dict section is shown as JSON so nothing in the report is hidden.
    """
    known = {"metrics", "size", "latency", "latency_device", "references", "cell_ops"}
    lines = [f"# Evaluation report{': ' + str(report['task']) if 'task' in report else ''}", ""]
    scalars = [(k, v) for k, v in report.items() if k not in known and not isinstance(v, (Mapping, list))]
    lines += [f"- {k}: {format_value(v)}" for k, v in scalars]
    if scalars:
        lines.append("")
    if report.get("metrics"):
        lines += _metrics_section(report["metrics"])
    if report.get("size"):
        lines += _size_section(report, report["size"])
    if report.get("latency"):
        lines += _latency_section(report, report["latency"])
    if report.get("latency_device"):
        on = report["latency_device"]
        lines += _latency_section(report, on.get("latency", {}), str(on.get("device", "?")))
    if report.get("cell_ops"):
        lines += _cell_ops_section(report["cell_ops"], report.get("seq_len", "?"))
    for key, value in report.items():
        if key not in known and isinstance(value, (Mapping, list)):
            lines += [f"## {key}", "", "```json", json.dumps(jsonable(value), indent=2), "```", ""]
    return "\n".join(lines)


def write_report(report: Mapping[str, Any], output_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.json`` (the numbers) and ``report.md`` (tables for people) atomically."""
    output_dir = Path(output_dir)
    json_path, md_path = output_dir / "report.json", output_dir / "report.md"
    plain = jsonable(report)
    atomic_write_json(json_path, plain)
    atomic_write_text(md_path, render_report(plain))
    return json_path, md_path


# --------------------------------------------------------------------------------------------------- stage
def run_evaluation(cfg: Any) -> dict[str, Any]:
    """The ``evaluate`` stage: dev metrics and loyalty from the store, size, FLOPs and latency.

    The model is compared in one run with the store's teacher and a BERT-base-sized model, on the same
    inputs, thread count and batch sizes (``cfg`` is an ``EvalConfig``).
    """
    from adabert.device import describe, resolve_device
    from adabert.tasks import encode
    from adabert.teacher.store import KnowledgeStore

    device = resolve_device(getattr(cfg, "device", "cpu"))  # refused before any work if it is not here
    store = KnowledgeStore.open(cfg.store)
    task = store.task
    if cfg.teacher:  # refused up front: a teacher other than the store's would skew every comparison
        if not Path(cfg.teacher).is_dir():
            raise FileNotFoundError(f"{cfg.teacher}: no teacher directory (a save_pretrained output)")
        store.check_teacher(cfg.teacher)
    model = load_classifier(cfg.model, task)
    teacher_dir = cfg.teacher or store.teacher_path
    teacher = load_classifier(teacher_dir, task)
    reference = bert_base_reference(store.num_labels)
    tokenizer = store.tokenizer()
    metrics: dict[str, Any] = {}
    for split in [s for s in task.dev_splits if s in store.splits]:
        rows = store.rows(split)
        labels = np.asarray(rows["label"])
        teacher_logits = np.asarray(store.teacher_logits(split))
        logits = predict(model, encode(rows, tokenizer, store.max_length))
        if not np.isfinite(logits).all():  # never a report of NaN metrics with exit status 0
            raise UserError(
                f"{cfg.model}: the model gave NaN or infinite outputs on {split} rows; no report was written"
            )
        suffix = "" if split == store.dev_split else f" ({split})"
        metrics["model" + suffix] = evaluate_predictions(task, logits, labels, teacher_logits)
        metrics["teacher" + suffix] = evaluate_predictions(task, teacher_logits, labels)
    models = {"model": model, "teacher": teacher, "bert-base": reference}
    size: dict[str, Any] = {}
    for name, m in models.items():
        size[name] = {
            **count_parameters(m),
            "file_bytes": model_file_size(
                cfg.model if name == "model" else teacher_dir, (".safetensors", ".bin")
            )
            if name != "bert-base"
            else None,
            "flops_per_example": flops_per_example(m, cfg.seq_len, pair=task.is_pair),
        }
    report: dict[str, Any] = {
        "task": task.name,
        "model_path": str(cfg.model),
        "teacher_path": str(teacher_dir),
        "dev_rows": len(store.rows(store.dev_split)),
        "metrics": metrics,
        "size": size,
        "references": ["teacher", "bert-base"],
    }
    cell_ops = cell_op_costs(model, cfg.seq_len, pair=task.is_pair)
    if cell_ops is not None:
        report["cell_ops"], report["seq_len"] = cell_ops, cfg.seq_len
    if not cfg.skip_latency:
        report["latency"] = compare_latency(
            models, cfg.batch_sizes, cfg.seq_len, cfg.repeats, cfg.warmup, cfg.threads, pair=task.is_pair
        )
        if device.type == "cuda":  # the same comparison on the GPU, beside the CPU figures
            on_device = {name: m.to(device) for name, m in models.items()}
            report["latency_device"] = {
                "device": describe(device),
                "latency": compare_latency(
                    on_device, cfg.batch_sizes, cfg.seq_len, cfg.repeats, cfg.warmup, pair=task.is_pair
                ),
            }
    write_report(report, cfg.output_dir)
    return report
