"""``adabert predict``: batch inference over a CSV / TSV / JSON Lines file with any saved model.

The model folder can be a student, a compressed model or a teacher (``save_pretrained`` layout, run
with PyTorch), or an export folder (``export.json`` beside ``model.onnx``, run with onnxruntime, or
``model.pt``, TorchScript). Each carries its tokenizer; ``adabert_task.json`` (written by the pipeline's
stages and by ``adabert export``) names the text columns and the maximum length, so a file in the
task's own layout needs no flags. The output holds every input column, then ``prediction`` (the label
name, or the score of a regression task) and one ``prob_<label>`` column per class.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from adabert.deploy import EXPORT_FILE, TASK_FILE
from adabert.errors import UserError
from adabert.model_folder import read_model_config
from adabert.tasks import TaskDataError, TaskSpec, file_format, read_table

log = logging.getLogger(__name__)


class PredictError(UserError):
    """A model folder or an input that ``predict`` cannot use."""


@dataclass
class Predictor:
    """A loaded model of any kind, its tokenizer, and what it needs to read a file."""

    folder: Path
    kind: str  # "pytorch", "onnx" or "torchscript"
    tokenizer: Any
    labels: list[str] | None  # None: regression
    max_length: int
    text_columns: list[str] | None  # from the task, when the folder knows it
    run: Any  # callable: {name: int64 array} -> float32 logits [B, C]
    task: TaskSpec | None = None  # the folder's task (adabert_task.json), when it has one

    def logits(self, texts: Sequence[Sequence[str]]) -> np.ndarray:
        """Logits for a batch of rows, each one text or a pair of texts; refused unless there is one
        finite output per label (a model whose config names other labels, or that outputs NaN)."""
        columns = [list(column) for column in zip(*texts)]
        encoded = self.tokenizer(
            *columns, padding=True, truncation=True, max_length=self.max_length, return_tensors="np"
        )
        logits = self.run({k: np.asarray(v, dtype=np.int64) for k, v in encoded.items()})
        width = len(self.labels or [None])
        if logits.ndim != 2 or logits.shape[1] != width:
            raise PredictError(
                f"{self.folder}: the model gives {logits.shape[-1]} output(s) per row but its config.json "
                f"names {width} label(s) (id2label); use the folder as adabert wrote it"
            )
        if not np.isfinite(logits).all():
            raise PredictError(
                f"{self.folder}: the model gave NaN or infinite outputs; nothing was written. The folder is "
                "damaged or its model diverged: export or train it again"
            )
        return logits


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        raise PredictError(f"{path}: cannot be read as JSON ({err})") from None
    if not isinstance(value, dict):
        raise PredictError(f"{path}: expected a JSON object, found {type(value).__name__}")
    return value


def read_task_file(folder: Path) -> tuple[TaskSpec | None, int | None]:
    """The task and maximum length of a model folder's ``adabert_task.json`` (None, None without one),
    refused in one line when the file is not what adabert writes there."""
    path = folder / TASK_FILE
    info = _read_json(path)
    if not info:
        return None, None
    task, length = info.get("task"), info.get("max_length")
    if not isinstance(task, dict) or not (length is None or (type(length) is int and length >= 2)):
        raise PredictError(
            f'{path}: expected {{"task": {{...}}, "max_length": N}} as adabert writes it, found '
            f"task {json.dumps(task)[:40]}, max_length {json.dumps(length)[:20]}; delete it and pass "
            "--text-columns, or export the model again"
        )
    try:
        return TaskSpec.from_dict(task), length
    except (TaskDataError, TypeError, ValueError) as err:
        raise PredictError(f"{path}: not a task definition ({err})") from None


def _pytorch_runner(folder: Path, task: TaskSpec | None) -> Any:
    import torch

    from adabert.report.evaluate import accepted_inputs, load_classifier

    model = load_classifier(folder, task)

    def run(batch: Mapping[str, np.ndarray]) -> np.ndarray:
        tensors = {k: torch.from_numpy(v) for k, v in batch.items()}
        with torch.inference_mode():
            return model(**accepted_inputs(model, tensors)).logits.float().numpy()

    return run, model.config


def _export_runner(folder: Path, info: Mapping[str, Any]) -> tuple[Any, str]:
    from adabert.deploy.runtime import file_kind, load_torchscript, onnx_session, run_onnx, run_torchscript

    path = folder / str(info.get("file", "model.onnx"))
    if not path.is_file():
        raise PredictError(f"{folder}: {EXPORT_FILE} names {path.name}, which is missing")
    kind = file_kind(path)
    if kind == "onnx":
        session = onnx_session(path)
        return (lambda batch: run_onnx(session, batch, path.name)), kind
    module, names = load_torchscript(path)
    return (lambda batch: run_torchscript(module, names, batch, path.name)), kind


def load_predictor(folder: str | Path, max_length: int | None = None) -> Predictor:
    """Load a model folder (PyTorch model or export) with its tokenizer and task information."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise PredictError(
            f"{folder}: not a model folder (no config.json); expected a student, compressed "
            "model, teacher or export folder"
        )
    task, task_length = read_task_file(folder)
    export = _read_json(folder / EXPORT_FILE)
    if export:
        config = read_model_config(folder)
        if not isinstance(config.get("id2label", {}), dict):
            raise PredictError(f"{folder}/config.json: id2label must be a JSON object of label names")
        run, kind = _export_runner(folder, export)
    else:
        run, model_config = _pytorch_runner(folder, task)
        kind, config = "pytorch", model_config.to_dict()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except MemoryError:
        raise
    except Exception as err:  # the tokenizers library raises plain Exceptions on a damaged tokenizer.json
        reason = " ".join(str(err).split())[:200]
        raise PredictError(f"{folder}: no tokenizer to read text with ({reason})") from None
    _check_tokenizer(tokenizer, config, folder)
    regression = config.get("problem_type") == "regression" or config.get("num_labels") == 1
    id2label = config.get("id2label") or {}
    labels = (
        None if regression else [str(id2label.get(str(i), id2label.get(i, i))) for i in range(len(id2label))]
    )
    positions = config.get("max_position_embeddings") or 512
    length = max_length or task_length or min(positions, tokenizer.model_max_length or positions)
    return Predictor(
        folder,
        kind,
        tokenizer,
        labels,
        int(min(length, positions)),
        list(task.text_columns) if task is not None else None,
        run,
        task,
    )


def _check_tokenizer(tokenizer: Any, config: Mapping[str, Any], folder: Path) -> None:
    """Refuse a tokenizer rebuilt from what is left of damaged files: transformers then builds one from
    the special tokens alone (every word unknown) or without a padding token, and it would run."""
    problem = None
    vocab = config.get("vocab_size")
    if len(tokenizer) <= len(set(tokenizer.all_special_tokens)):
        problem = f"has no vocabulary beyond its {len(tokenizer)} special tokens (tokenizer.json missing?)"
    elif isinstance(vocab, int) and len(tokenizer) > vocab:
        problem = f"has {len(tokenizer)} tokens, more than the model's {vocab} (vocab_size)"
    elif tokenizer.pad_token is None:
        problem = "has no padding token (tokenizer_config.json missing or damaged?)"
    if problem:
        raise PredictError(
            f"{folder}: its tokenizer {problem}; copy the tokenizer files back from the model's store, or "
            "export the model again"
        )


def _text_columns(predictor: Predictor, columns: list[str], given: str | None, path: Path) -> list[str]:
    if given:
        wanted = [c.strip() for c in given.split(",") if c.strip()]
    elif predictor.text_columns and all(c in columns for c in predictor.text_columns):
        wanted = predictor.text_columns
    elif len(columns) == 1:
        wanted = columns
    else:
        known = f" (the model's task reads {predictor.text_columns})" if predictor.text_columns else ""
        raise PredictError(
            f"{path}: which column(s) hold the text{known}? pass --text-columns COL[,COL2]; "
            f"the file has {columns}"
        )
    missing = [c for c in wanted if c not in columns]
    if missing or not 1 <= len(wanted) <= 2:
        raise PredictError(
            f"{path}: text column(s) {missing or wanted} not usable; the file has {columns} "
            "(expected one text column, or two for sentence pairs)"
        )
    return wanted


def _texts(rows: list[tuple[int | None, dict[str, Any]]], columns: list[str], path: Path) -> list[list[str]]:
    texts = []
    for i, (line, row) in enumerate(rows):
        where = "" if line is not None else f"record {i}: "
        values = []
        for column in columns:
            value = row.get(column)
            if not isinstance(value, str):
                found = "nothing" if column not in row else json.dumps(value)
                raise TaskDataError(
                    f"{where}text column {column!r} must be a string, found {found}", path, line
                )
            values.append(value)
        texts.append(values)
    return texts


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _output_columns(predictor: Predictor, columns: list[str], path: Path) -> list[str]:
    added = ["prediction"] + [f"prob_{label}" for label in predictor.labels or []]
    clash = [c for c in added if c in columns]
    if clash:
        raise PredictError(
            f"{path}: the input already has column(s) {clash}, which the output adds; rename them"
        )
    return added


def _write(path: Path, fmt: str, columns: list[str], rows: list[dict[str, Any]]) -> None:
    from adabert.io import atomic_write_text

    if fmt == "json":
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    else:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, columns, delimiter="," if fmt == "csv" else "\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        text = buffer.getvalue()
    atomic_write_text(path, text)


def _score(
    rows: list[tuple[int | None, dict[str, Any]]], logits: np.ndarray, spec: TaskSpec | None
) -> dict[str, float] | None:
    """The task's metrics when the input carries the task's label column (e.g. a labelled test file)."""
    from adabert.tasks import compute_metrics, predictions_from_logits

    if spec is None or any(spec.label_column not in row for _, row in rows):
        return None
    column = spec.label_column
    try:
        if spec.is_regression:
            refs = [float(row[column]) for _, row in rows]
        else:
            refs = [spec.labels.index(str(row[column]).strip()) for _, row in rows]
    except (ValueError, TypeError):  # labels the task does not know: predictions only, and why
        known = "numbers" if spec.is_regression else ", ".join(spec.labels or ())
        log.warning("no metrics: column %r holds values other than the task's labels (%s)", column, known)
        return None
    return compute_metrics(spec, predictions_from_logits(spec, logits), refs)


def _run(predictor: Predictor, texts: list[list[str]], batch_size: int) -> tuple[np.ndarray, float]:
    """Logits of every row, in row order, computed in batches of rows of similar length; and the seconds."""
    from adabert.progress import progress

    order = np.argsort([sum(len(t) for t in row) for row in texts], kind="stable")
    logits = np.zeros((len(texts), len(predictor.labels or [None])), dtype=np.float32)
    start = time.perf_counter()
    with progress(desc="predict", total=len(texts), unit="ex") as bar:
        for i in range(0, len(order), batch_size):
            chunk = order[i : i + batch_size]
            logits[chunk] = predictor.logits([texts[j] for j in chunk])
            bar.update(len(chunk))
    return logits, time.perf_counter() - start


def score_test_file(model: str | Path, store_dir: str | Path, batch_size: int = 32) -> dict[str, Any] | None:
    """The task's metrics of a model folder on its task's labelled test file (None when there is none)."""
    task = _read_json(Path(store_dir) / "manifest.json").get("task") or {}
    path = (task.get("files") or {}).get("test")
    if not path or task.get("glue_dir"):
        return None
    predictor = load_predictor(model)
    columns, rows = read_table(path, task.get("format"))
    texts = _texts(
        rows, _text_columns(predictor, columns, ",".join(task["text_columns"]), Path(path)), Path(path)
    )
    logits, _ = _run(predictor, texts, batch_size)
    metrics = _score(rows, logits, TaskSpec.from_dict(task))
    return None if metrics is None else {"file": str(path), "rows": len(rows), **metrics}


def predict_file(
    model: str | Path,
    input_path: str | Path,
    output_path: str | Path,
    batch_size: int = 32,
    max_length: int | None = None,
    text_columns: str | None = None,
    fmt: str | None = None,
) -> dict[str, Any]:
    """Predict every row of ``input_path`` with the model folder ``model`` into ``output_path``.

    Formats follow the file extensions (``fmt`` overrides the input's). Rows are batched by length (less
    padding) and written back in file order. Returns the counts, the time, examples/s and, when the
    input has the task's label column, the task's metrics.
    """
    if batch_size < 1:
        raise PredictError(f"--batch-size must be a positive number, got {batch_size}")
    if max_length is not None and max_length < 2:
        raise PredictError(f"--max-length must be at least 2 tokens, got {max_length}")
    input_path, output_path = Path(input_path), Path(output_path)
    out_fmt = file_format(output_path)
    if input_path.resolve() == output_path.resolve():
        raise PredictError(f"--output {output_path} is the input file; write the predictions elsewhere")
    from adabert.io import ensure_writable

    ensure_writable(output_path.parent)  # an unwritable folder stops the command before the predictions
    predictor = load_predictor(model, max_length)
    columns, rows = read_table(input_path, fmt)
    used = _text_columns(predictor, columns, text_columns, input_path)
    texts = _texts(rows, used, input_path)
    added = _output_columns(predictor, columns, input_path)

    logits, seconds = _run(predictor, texts, batch_size)
    out_rows = []
    probs = _softmax(logits) if predictor.labels else None
    for j, (_, row) in enumerate(rows):
        result = dict(row)
        if probs is None:
            result["prediction"] = float(logits[j, 0])
        else:
            result["prediction"] = predictor.labels[int(probs[j].argmax())]
            result.update(
                {f"prob_{label}": round(float(p), 6) for label, p in zip(predictor.labels, probs[j])}
            )
        out_rows.append(result)
    _write(output_path, out_fmt, columns + added, out_rows)
    summary: dict[str, Any] = {
        "rows": len(rows),
        "model": str(model),
        "runtime": predictor.kind,
        "output": str(output_path),
        "seconds": round(seconds, 3),
        "examples_per_s": round(len(rows) / seconds, 1) if seconds > 0 else None,
        "text_columns": used,
    }
    metrics = _score(rows, logits, predictor.task)
    if metrics is not None:
        summary["metrics"] = metrics
    return summary
