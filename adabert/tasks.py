"""GLUE task registry: columns, labels, metrics, and loading of rows into ``datasets.Dataset``.

Every later stage (teacher, knowledge store, search, evaluation) sees a task through the same four
columns (``text_a``, ``text_b``, ``label``, ``idx``), whether the rows come from the GLUE release TSVs,
from the Hugging Face hub, or from a user's own csv / tsv / json files. Parsing is done here, line by
line, so that a bad file is reported as ``path:line: what is wrong`` instead of a stack trace from deep
inside a data loader.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # datasets and scipy load in about a second: only where rows are read or scored
    from datasets import Dataset, Features

from adabert.errors import UserError

METRICS = ("accuracy", "f1", "mcc", "pearson", "spearman")
_REGRESSION_METRICS = {"pearson", "spearman"}
_HUB_SPLITS = {
    "train": "train",
    "dev": "validation",
    "dev_matched": "validation_matched",
    "dev_mismatched": "validation_mismatched",
}
_FORMATS = {".tsv": "tsv", ".csv": "csv", ".json": "json", ".jsonl": "json"}
FORMATS = ("csv", "tsv", "json")

# One parsed data row: (1-based line number or None, text fields, raw label value).
_Record = tuple[int | None, list[Any], Any]


class TaskDataError(UserError):
    """Bad task data or task definition; the message starts with ``path:line:`` when they are known."""

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None):
        self.reason = message
        self.path = None if path is None else str(path)
        self.line = line
        where = ""
        if self.path is not None:
            where = self.path + ("" if line is None else f":{line}") + ": "
        super().__init__(where + message)

    def __reduce__(self):  # keep path/line when the error crosses a process boundary
        return (type(self), (self.reason, self.path, self.line))


@dataclass(frozen=True)
class TaskSpec:
    """Everything needed to read a task's files and score predictions on it.

    ``labels`` are the raw label strings as they appear in the files, in class-id order; the GLUE
    orders follow the hub's ``ClassLabel`` names so local TSVs and ``load_dataset`` give the same ids.
    """

    name: str
    text_columns: tuple[str, ...]
    label_column: str
    labels: tuple[str, ...] | None
    metrics: tuple[str, ...]
    files: dict[str, str]
    glue_dir: str | None = None
    header: bool = True
    column_indices: dict[str, int] | None = None
    num_fields: int | None = None
    hub_name: tuple[str, str] | None = None
    hub_text_columns: tuple[str, ...] | None = None  # text columns under their hub names, if different
    format: str | None = None  # csv, tsv or json for every file of a custom task; None: by extension

    def __post_init__(self) -> None:
        for key in ("text_columns", "labels", "metrics", "hub_name", "hub_text_columns"):
            value = getattr(self, key)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, key, tuple(value))
        self._validate()

    def _validate(self) -> None:
        def bad(msg: str) -> TaskDataError:
            return TaskDataError(f"invalid task spec {self.name!r}: {msg}")

        if not self.name:
            raise bad("name must be non-empty")
        if not 1 <= len(self.text_columns) <= 2:
            raise bad(f"expected 1 or 2 text columns, got {list(self.text_columns)}")
        if self.labels is not None:
            if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
                raise bad(f"labels must be at least 2 distinct values, got {list(self.labels)}")
        if not self.metrics or any(m not in METRICS for m in self.metrics):
            raise bad(f"metrics must be a non-empty subset of {list(METRICS)}, got {list(self.metrics)}")
        wrong = [m for m in self.metrics if (m in _REGRESSION_METRICS) != self.is_regression]
        if wrong:
            kind = "regression" if self.is_regression else "classification"
            raise bad(f"metrics {wrong} do not apply to a {kind} task")
        if "f1" in self.metrics and self.num_labels != 2:
            raise bad("f1 needs a binary task (positive class id 1)")
        if not self.files:
            raise bad("files must name at least one split")
        if not self.header:
            needed = [*self.text_columns, self.label_column]
            if self.column_indices is None or any(c not in self.column_indices for c in needed):
                raise bad(f"a headerless task needs column_indices for {needed}")
        if self.hub_name is not None and len(self.hub_name) != 2:
            raise bad(f"hub_name must be (path, config), got {self.hub_name}")
        if self.format is not None and self.format not in FORMATS:
            raise bad(f"format must be one of {list(FORMATS)}, got {self.format!r}")

    def __hash__(self) -> int:  # files/column_indices are dicts; the name identifies a task
        return hash(self.name)

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def label_names(self) -> tuple[str, ...] | None:
        """What a model calls its classes (its ``id2label``): for a GLUE task whose files hold 0 / 1, the
        hub's names (SST-2: negative, positive), so that predictions read as words; else ``labels``."""
        if self.hub_name is not None and self.labels == _BINARY:
            return GLUE_LABEL_NAMES.get(self.name, self.labels)
        return self.labels

    def label_config(self) -> dict[str, Any]:
        """The label settings of a model config for this task (``id2label`` from ``label_names``)."""
        if self.labels is None:
            return {"problem_type": "regression"}
        names = self.label_names or self.labels
        return {
            "problem_type": "single_label_classification",
            "id2label": dict(enumerate(names)),
            "label2id": {label: i for i, label in enumerate(names)},
        }

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    @property
    def is_pair(self) -> bool:
        return len(self.text_columns) == 2

    @property
    def main_metric(self) -> str:
        return self.metrics[0]

    @property
    def dev_splits(self) -> tuple[str, ...]:
        return tuple(s for s in self.files if s not in ("train", "test"))

    @property
    def default_dev(self) -> str:
        if not self.dev_splits:
            raise TaskDataError(f"task {self.name!r} has no dev split; splits: {list(self.files)}")
        return self.dev_splits[0]

    def to_dict(self) -> dict[str, Any]:
        """JSON-native form (lists, not tuples) so a manifest compares equal after a JSON round trip."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Mapping):
                value = dict(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TaskSpec:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise TaskDataError(f"unknown task spec keys {unknown}; expected keys from {sorted(known)}")
        try:
            return cls(**d)
        except TypeError as exc:
            raise TaskDataError(f"incomplete task spec: {exc}") from exc


def _glue(name: str, glue_dir: str, text_columns: tuple[str, ...], label_column: str,
          labels: tuple[str, ...] | None, metrics: tuple[str, ...], num_fields: int | None,
          hub_text_columns: tuple[str, ...] | None = None, **extra: Any) -> TaskSpec:
    files = extra.pop("files", {"train": "train.tsv", "dev": "dev.tsv"})
    return TaskSpec(name=name, text_columns=text_columns, label_column=label_column, labels=labels,
                    metrics=metrics, files=files, glue_dir=glue_dir, num_fields=num_fields,
                    hub_name=("nyu-mll/glue", name), hub_text_columns=hub_text_columns, **extra)


_BINARY = ("0", "1")
# the hub's ClassLabel names of the GLUE tasks whose files hold 0 / 1 (TaskSpec.label_names)
GLUE_LABEL_NAMES = {
    "sst2": ("negative", "positive"),
    "mrpc": ("not_equivalent", "equivalent"),
    "qqp": ("not_duplicate", "duplicate"),
    "cola": ("unacceptable", "acceptable"),
}
_NLI2 = ("entailment", "not_entailment")

TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in [
        _glue("sst2", "SST-2", ("sentence",), "label", _BINARY, ("accuracy",), 2),
        _glue("mrpc", "MRPC", ("#1 String", "#2 String"), "Quality", _BINARY, ("f1", "accuracy"), 5,
              hub_text_columns=("sentence1", "sentence2")),
        _glue("qqp", "QQP", ("question1", "question2"), "is_duplicate", _BINARY, ("f1", "accuracy"), 6),
        # MNLI train has 12 fields and dev 16: the field count comes from each file's header.
        _glue("mnli", "MNLI", ("sentence1", "sentence2"), "gold_label",
              ("entailment", "neutral", "contradiction"), ("accuracy",), None,
              hub_text_columns=("premise", "hypothesis"),
              files={"train": "train.tsv", "dev_matched": "dev_matched.tsv",
                     "dev_mismatched": "dev_mismatched.tsv"}),
        _glue("qnli", "QNLI", ("question", "sentence"), "label", _NLI2, ("accuracy",), 4),
        _glue("rte", "RTE", ("sentence1", "sentence2"), "label", _NLI2, ("accuracy",), 4),
        # CoLA has no header: source, label, the original author's mark ("*" or empty), sentence.
        _glue("cola", "CoLA", ("sentence",), "label", _BINARY, ("mcc",), 4, header=False,
              column_indices={"source": 0, "label": 1, "author_mark": 2, "sentence": 3}),
        _glue("stsb", "STS-B", ("sentence1", "sentence2"), "score", None, ("pearson", "spearman"), 10),
    ]
}


def _task_key(name: str) -> str:
    return re.sub(r"[\s_-]", "", name.lower())


_CUSTOM: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> TaskSpec:
    """Make a custom task findable by name with ``get_task`` in this process (the latest one of a name wins).

    Stage configs with ``train_file`` register theirs, so a stage that looks its task up by name
    (``get_task(cfg.task)``) finds the user's task; later stages read it from the knowledge store.
    """
    if spec.glue_dir is None and _task_key(spec.name) in TASKS:
        raise TaskDataError(f"{spec.name!r} is a GLUE task name; give your own task another name")
    _CUSTOM[spec.name] = spec
    return spec


def get_task(name: str | TaskSpec) -> TaskSpec:
    """Look a GLUE task up by any common spelling ("SST-2", "sst-2", "sst2", "STS-B", "mnli"), or a
    registered custom task by its name."""
    if isinstance(name, TaskSpec):
        return name
    spec = TASKS.get(_task_key(str(name))) or _CUSTOM.get(str(name))
    if spec is None:
        raise TaskDataError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)} "
                            "(or your own files: --train-file, --dev-file, --text-columns, --label-column)")
    return spec


def custom_task(name: str, files: Mapping[str, str | Path], text_columns: str | Sequence[str],
                label_column: str, labels: Sequence[Any] | None = None, regression: bool = False,
                metrics: Sequence[str] | None = None, data_dir: str | Path | None = None,
                fmt: str | None = None) -> TaskSpec:
    """A task over the user's own csv / tsv / json / jsonl files (format by extension, or ``fmt``).

    Without ``labels`` a classification task takes the sorted distinct label values of its train file
    (or its first file), and stores them in the spec so the class ids stay fixed from then on.
    Relative paths are kept relative; ``data_dir`` is where to find them for that label scan, as in
    ``load_split``.
    """
    files = {split: str(path) for split, path in files.items()}
    if fmt is not None and fmt not in FORMATS:
        raise TaskDataError(f"unknown format {fmt!r}; expected one of {list(FORMATS)}")
    for path in files.values():
        if fmt is None and Path(path).suffix.lower() not in _FORMATS:
            raise TaskDataError(f"unsupported file type; expected one of {sorted(_FORMATS)} (or give the "
                                "format: --format csv, tsv or json)", path)
    columns = (text_columns,) if isinstance(text_columns, str) else tuple(text_columns)
    if regression and labels is not None:
        raise TaskDataError(f"task {name!r}: a regression task takes no labels, got {list(labels)}")
    label_names: tuple[str, ...] | None = None
    if not regression:
        if labels is None:
            source = files.get("train") or next(iter(files.values()), None)
            if source is not None and data_dir is not None and not Path(source).is_absolute():
                source = str(Path(data_dir) / source)
            label_names = _infer_labels(Path(source), columns, label_column, fmt) if source else None
        else:
            label_names = tuple(_label_str(x) for x in labels)
    if metrics is None:
        metrics = ("pearson", "spearman") if regression else ("accuracy",)
    if labels is None and label_names is not None and len(label_names) < 2:
        raise _too_few_labels(label_names, label_column, files.get("train"))
    return TaskSpec(name=name, text_columns=columns, label_column=label_column, labels=label_names,
                    metrics=tuple(metrics), files=files, format=fmt)


def _infer_labels(path: Path, columns: tuple[str, ...], label_column: str,
                  fmt: str | None = None) -> tuple[str, ...]:
    values = {_label_str(raw) for _, _, raw in _read_records(path, columns, label_column, fmt=fmt)}
    if all(re.fullmatch(r"-?\d+", v) for v in values):
        return tuple(sorted(values, key=int))
    return tuple(sorted(values))


def _label_str(raw: Any) -> str:
    return raw.strip() if isinstance(raw, str) else str(raw)


def _too_few_labels(labels: Sequence[str], column: str, path: Any) -> TaskDataError:
    return TaskDataError(f"only one label ({', '.join(map(repr, labels))}) in column {column!r}: a "
                         "classifier needs at least 2 (for a number to predict, use --regression)", path)


def _label_kind(raw: Any) -> str:
    if isinstance(raw, bool):
        return "true/false"
    text = raw.strip() if isinstance(raw, str) else raw
    if isinstance(text, int) or (isinstance(text, str) and re.fullmatch(r"[-+]?\d+", text)):
        return "whole numbers"
    decimal = r"[-+]?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?"
    if isinstance(text, float) or (isinstance(text, str) and re.fullmatch(decimal, text)):
        return "decimal numbers"
    return "text"


def _check_label_kinds(path: Path, records: list[_Record], column: str) -> None:
    """Refuse a label column that mixes kinds (1 and "pos", 1 and 1.0): they would become separate classes."""
    first: dict[str, tuple[int | None, Any]] = {}
    for i, (line, _, raw) in enumerate(records):
        first.setdefault(_label_kind(raw), (line if line is not None else i, raw))
    if len(first) > 1:
        (a, (la, ra)), (b, (lb, rb)) = list(first.items())[:2]
        raise TaskDataError(f"mixed label types in column {column!r}: {a} (e.g. {ra!r} at row {la}) and {b} "
                            f"(e.g. {rb!r} at row {lb}); expected one kind of label", path)


def check_task_files(spec: TaskSpec, data_dir: str | Path | None = None) -> dict[str, int]:
    """Read every file of a custom task and refuse, by file and row, what training would trip over later.

    Checks columns, empty texts and labels, label types (no mixing of kinds), at least 2 classes in the
    train file, every label known, and no dev / test label that never occurs in the train file (the
    model could not learn it). Returns the row count of each split.
    """
    counts: dict[str, int] = {}
    train_labels: set[str] | None = None
    train_path: Path | None = None
    for split in sorted(spec.files, key=lambda s: s != "train"):
        path = resolve_path(spec, split, data_dir)
        records = _read_records(path, spec.text_columns, spec.label_column, fmt=spec.format)
        if not spec.is_regression:
            _check_label_kinds(path, records, spec.label_column)
        for i, (line, texts, raw) in enumerate(records):
            where = "" if line is not None else f"record {i}: "
            for column, text in zip(spec.text_columns, texts):
                if not text.strip():
                    raise TaskDataError(f"{where}empty text in column {column!r}; every row needs text", path,
                                        line)
            if raw is None or (isinstance(raw, str) and not raw.strip()):
                raise TaskDataError(f"{where}empty label in column {spec.label_column!r}", path, line)
            _to_label(spec, raw, path, line, where)
            label = _label_str(raw)
            if split != "train" and train_labels is not None and label not in train_labels:
                raise TaskDataError(f"{where}label {label!r} never occurs in the train file {train_path}, so "
                                    f"the model cannot learn it (train labels: {sorted(train_labels)})", path,
                                    line)
        if split == "train" and not spec.is_regression:
            train_labels, train_path = {_label_str(raw) for _, _, raw in records}, path
            if len(train_labels) < 2:
                raise _too_few_labels(sorted(train_labels), spec.label_column, path)
        counts[split] = len(records)
    return counts


def _file_stamp(path: Path) -> tuple[str, int, int]:
    try:
        st = path.stat()
    except OSError:
        return (str(path), -1, -1)
    return (str(path), st.st_mtime_ns, st.st_size)


def task_from_files(name: str, train_file: str, dev_file: str | None, text_columns: str | None,
                    label_column: str | None, test_file: str | None = None, regression: bool = False,
                    label_names: str | None = None, fmt: str | None = None,
                    data_dir: str | Path | None = None) -> TaskSpec:
    """The task of the command-line flags (``--train-file`` ...), its files checked, registered by name.

    Paths are made absolute (relative ones under ``data_dir`` if given, else the working directory),
    so the saved task definition still finds them from elsewhere. Checked files are remembered by
    path, size and modification time, so building the same config twice reads them once.
    """
    missing = [flag for flag, value in (("--dev-file", dev_file), ("--text-columns", text_columns),
                                        ("--label-column", label_column)) if not value]
    if missing:
        raise TaskDataError(f"--train-file (your own task) also needs {', '.join(missing)}")
    base = Path(data_dir) if data_dir is not None else Path.cwd()
    files = {split: str((base / path).absolute()) for split, path in
             (("train", train_file), ("dev", dev_file), ("test", test_file)) if path}
    columns = tuple(c.strip() for c in str(text_columns).split(",") if c.strip())
    names = tuple(n.strip() for n in label_names.split(",")) if label_names else None
    stamps = tuple(_file_stamp(Path(p)) for p in files.values())
    return register_task(
        _checked_task(name, tuple(files.items()), columns, str(label_column), regression, names, fmt, stamps))


@functools.lru_cache(maxsize=16)
def _checked_task(name: str, files: tuple[tuple[str, str], ...], columns: tuple[str, ...], label_column: str,
                  regression: bool, labels: tuple[str, ...] | None, fmt: str | None,
                  stamps: tuple[tuple[str, int, int], ...]) -> TaskSpec:
    if regression and labels:
        raise TaskDataError(f"--label-names {','.join(labels)}: a regression task (--regression) has no "
                            "labels")
    if not 1 <= len(columns) <= 2:
        raise TaskDataError(f"--text-columns {','.join(columns) or '(empty)'}: expected one column, or two "
                            "for sentence pairs (COL or COL1,COL2)")
    spec = custom_task(name, dict(files), columns, label_column, labels=labels, regression=regression,
                       fmt=fmt)
    check_task_files(spec)
    return spec


# ----------------------------------------------------------------------------------------- reading


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise TaskDataError(f"not valid UTF-8 ({exc.reason})", path, line) from exc
    return text.removeprefix("\ufeff")  # MRPC's header starts with a byte-order mark


def _tsv_rows(text: str) -> Iterator[tuple[int, list[str]]]:
    """Split on tabs with quoting disabled: GLUE fields hold stray quotes (e.g. RTE train row 2164)."""
    lines = text.split("\n")
    while lines and not lines[-1].removesuffix("\r"):
        lines.pop()
    for number, line in enumerate(lines, start=1):
        yield number, line.removesuffix("\r").split("\t")


def _csv_rows(text: str, path: Path | None = None) -> list[tuple[int, list[str]]]:
    """The rows of a CSV text, each with the line it starts on. A quote that is never closed would take
    every line after it into one field; it is refused at the line it opened on."""
    start = [1]
    try:
        return list(_csv_scan(text, start, strict=True))
    except csv.Error as err:
        if "unexpected end of data" in str(err):
            raise TaskDataError(
                'a quoted field (starting with ") opens on this line and is never closed; close the quote '
                "or remove it",
                path,
                start[0],
            ) from None
    return list(_csv_scan(text, [1], strict=False))  # a stray quote mid-field, read as it stands


def _csv_scan(text: str, start: list[int], strict: bool) -> Iterator[tuple[int, list[str]]]:
    reader = csv.reader(io.StringIO(text), strict=strict)
    for row in reader:
        if row:
            yield start[0], row
        start[0] = reader.line_num + 1


def _table_records(path: Path, rows: Iterable[tuple[int, list[str]]], columns: tuple[str, ...],
                   label_column: str, header: bool, column_indices: Mapping[str, int] | None,
                   num_fields: int | None) -> list[_Record]:
    rows = iter(rows)
    needed = [*columns, label_column]
    expected = num_fields
    if header:
        first = next(rows, None)
        if first is None:
            raise TaskDataError("file is empty; expected a header line and data rows", path, 1)
        line, names = first
        names = [n.strip() for n in names]
        index = {n: i for i, n in enumerate(names)}
        missing = [c for c in needed if c not in index]
        if missing:
            raise TaskDataError(f"column(s) {missing} not in header; header has {names}", path, line)
        expected = num_fields or len(names)
        if len(names) != expected:
            raise TaskDataError(f"expected {expected} fields in the header, found "
                                f"{len(names)}", path, line)
    else:
        index = dict(column_indices or {})
    width = max(index[c] for c in needed) + 1
    records: list[_Record] = []
    for line, row in rows:
        if (expected is not None and len(row) != expected) or len(row) < width:
            want = expected if expected is not None else f"at least {width}"
            raise TaskDataError(f"expected {want} fields, found {len(row)}", path, line)
        records.append((line, [row[index[c]] for c in columns], row[index[label_column]]))
    return records


def _json_items(path: Path, text: str) -> list[tuple[int | None, str, dict[str, Any]]]:
    """(line or None, "record i: " or "", object) for a JSON array of objects or JSON lines."""
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TaskDataError(f"invalid JSON: {exc.msg}", path, exc.lineno) from exc
        numbered: list[tuple[int | None, str, Any]] = [
            (None, f"record {i}: ", item) for i, item in enumerate(items)]
    else:
        numbered = []
        for number, line in enumerate(text.split("\n"), start=1):
            if line.strip():
                try:
                    numbered.append((number, "", json.loads(line)))
                except json.JSONDecodeError as exc:
                    raise TaskDataError(f"invalid JSON line ({exc.msg}); expected a JSON array of objects or "
                                        "one JSON object per line", path, number) from exc
    for line, where, item in numbered:
        if not isinstance(item, dict):
            raise TaskDataError(f"{where}expected a JSON object, found {type(item).__name__}", path, line)
    return numbered


def _json_records(path: Path, text: str, columns: tuple[str, ...], label_column: str) -> list[_Record]:
    """A JSON array of objects, or JSON lines (one object per line)."""
    records: list[_Record] = []
    for line, where, item in _json_items(path, text):
        missing = [c for c in (*columns, label_column) if c not in item]
        if missing:
            raise TaskDataError(f"{where}missing key(s) {missing}; keys found: {sorted(item)}", path, line)
        texts = [item[c] for c in columns]
        for column, value in zip(columns, texts):
            if not isinstance(value, str):
                raise TaskDataError(f"{where}text column {column!r} must be a string, found "
                                    f"{json.dumps(value)}", path, line)
        records.append((line, texts, item[label_column]))
    return records


def file_format(path: str | Path, fmt: str | None = None) -> str:
    """csv, tsv or json: ``fmt`` if given, else by the file's extension."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise TaskDataError(f"unknown format {fmt!r}; expected one of {list(FORMATS)}", path)
        return fmt
    found = _FORMATS.get(Path(path).suffix.lower())
    if found is None:
        raise TaskDataError(f"unknown file type; expected one of {sorted(_FORMATS)} (or give the format: "
                            "--format csv, tsv or json)", path)
    return found


def read_table(path: str | Path, fmt: str | None = None) -> tuple[list[str], list[tuple[int | None, dict]]]:
    """Every row of a csv / tsv file with a header, or of a JSON (Lines) file, as (line, {column: value}).

    Returns the column names (the header, or the keys of the JSON objects in first-seen order) and
    the rows; a row with another number of fields than the header is refused with its line.
    """
    path = Path(path)
    kind = file_format(path, fmt)
    if not path.is_file():
        raise TaskDataError("a folder, not a data file" if path.is_dir() else "file not found", path)
    text = _read_text(path)
    rows: list[tuple[int | None, dict[str, Any]]] = []
    if kind == "json":
        columns: dict[str, None] = {}
        for line, _, item in _json_items(path, text):
            columns.update(dict.fromkeys(item))
            rows.append((line, item))
        names = list(columns)
    else:
        lines = iter(_csv_rows(text, path) if kind == "csv" else _tsv_rows(text))
        first = next(lines, None)
        if first is None:
            raise TaskDataError("file is empty; expected a header line and data rows", path, 1)
        names = [n.strip() for n in first[1]]
        for line, fields in lines:
            if len(fields) != len(names):
                raise TaskDataError(f"expected {len(names)} fields (as in the header), found {len(fields)}",
                                    path, line)
            rows.append((line, dict(zip(names, fields))))
    if not rows:
        raise TaskDataError("no data rows", path, max(text.count("\n"), 1))
    return names, rows


def _read_records(path: Path, columns: tuple[str, ...], label_column: str, header: bool = True,
                  column_indices: Mapping[str, int] | None = None, num_fields: int | None = None,
                  fmt: str | None = None) -> list[_Record]:
    fmt = fmt or _FORMATS.get(path.suffix.lower(), "tsv")
    if not path.is_file():
        raise TaskDataError("a folder, not a data file" if path.is_dir() else "file not found", path)
    text = _read_text(path)
    if fmt == "json":
        records = _json_records(path, text, columns, label_column)
    else:
        rows = _csv_rows(text, path) if fmt == "csv" else _tsv_rows(text)
        records = _table_records(path, rows, columns, label_column, header, column_indices, num_fields)
    if not records:
        raise TaskDataError("no data rows: the split is empty", path, max(text.count("\n"), 1))
    return records


def resolve_path(spec: TaskSpec, split: str, data_dir: str | Path | None) -> Path:
    """The file of one split of a task: ``data_dir/<GLUE dir>/<file>`` for a GLUE task, the task's own
    file (relative to ``data_dir`` when given) for a custom one; a TaskDataError when it is missing."""
    if spec.glue_dir is None:
        path = Path(spec.files[split])
        if data_dir is not None and not path.is_absolute():
            path = Path(data_dir) / path
        if not path.is_file():
            raise TaskDataError(f"file not found: split {split!r} of task {spec.name}", path)
        return path
    task_dir = Path(data_dir) / spec.glue_dir
    path = task_dir / spec.files[split]
    if not path.is_file():
        hint = ""
        if not task_dir.is_dir():
            hint = f"; directory {task_dir} does not exist"
            if (Path(data_dir) / spec.files[split]).is_file():
                hint += f" (data_dir must be the GLUE root that contains {spec.glue_dir}/, not the task dir)"
        raise TaskDataError(f"file not found: task {spec.name} expects the GLUE release layout "
                            f"<data_dir>/{spec.glue_dir}/{spec.files[split]}{hint}", path)
    return path


def _subset(n: int, limit: int | None, seed: int) -> np.ndarray | None:
    """Row positions of a seeded random subset, in file order; None means all rows."""
    if limit is None:
        return None
    if limit < 1:
        raise ValueError(f"limit must be a positive number of rows, got {limit}")
    if limit >= n:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def _features(spec: TaskSpec) -> Features:
    from datasets import Features, Value

    cols = {"text_a": Value("string")}
    if spec.is_pair:
        cols["text_b"] = Value("string")
    cols["label"] = Value("float32" if spec.is_regression else "int64")
    cols["idx"] = Value("int64")
    return Features(cols)


def _to_label(spec: TaskSpec, raw: Any, path: Path | str, line: int | None, where: str = "") -> int | float:
    if spec.labels is None:
        try:
            value = float(raw.strip() if isinstance(raw, str) else raw)
        except (TypeError, ValueError):
            value = math.nan
        if not math.isfinite(value) or isinstance(raw, bool):
            raise TaskDataError(f"{where}regression label {raw!r} in column {spec.label_column!r} is not a "
                                "finite number", path, line)
        return value
    try:
        return spec.labels.index(_label_str(raw))
    except ValueError:
        raise TaskDataError(f"{where}unknown label {raw!r} in column {spec.label_column!r}; expected one of "
                            f"{list(spec.labels)}", path, line) from None


def load_split(task: str | TaskSpec, split: str, data_dir: str | Path | None = None,
               limit: int | None = None, seed: int = 0) -> Dataset:
    """Rows of one split as a Dataset with ``text_a`` [, ``text_b``], ``label``, ``idx``.

    A GLUE task reads ``data_dir/<glue_dir>/<file>``, or the hub copy when ``data_dir`` is None; a
    custom task reads its own paths (relative ones under ``data_dir`` if given). ``idx`` is the 0-based
    data row number in the file, kept when ``limit`` picks a seeded random subset.
    """
    spec = get_task(task)
    if split not in spec.files:
        where = Path(data_dir) / spec.glue_dir if data_dir is not None and spec.glue_dir else None
        raise TaskDataError(f"unknown split {split!r} for task {spec.name}; available splits: "
                            f"{', '.join(spec.files)}", where)
    if data_dir is None and spec.glue_dir is not None:
        return _load_hub(spec, split, limit, seed)
    path = resolve_path(spec, split, data_dir)
    fmt = "tsv" if spec.glue_dir is not None else spec.format
    records = _read_records(path, spec.text_columns, spec.label_column, spec.header, spec.column_indices,
                            spec.num_fields, fmt)
    keep = _subset(len(records), limit, seed)
    positions = range(len(records)) if keep is None else keep.tolist()
    columns: dict[str, list[Any]] = {"text_a": [], "text_b": [], "label": [], "idx": []}
    for i in positions:
        line, texts, raw = records[i]
        columns["text_a"].append(texts[0])
        columns["text_b"].append(texts[-1])
        columns["label"].append(_to_label(spec, raw, path, line, "" if line is not None else f"record {i}: "))
        columns["idx"].append(i)
    if not spec.is_pair:
        del columns["text_b"]
    from datasets import Dataset

    return Dataset.from_dict(columns, features=_features(spec))


def _load_hub(spec: TaskSpec, split: str, limit: int | None, seed: int) -> Dataset:
    """The hub copy (``nyu-mll/glue``), renamed to the local columns; its labels are already class ids."""
    if spec.hub_name is None:
        raise TaskDataError(f"task {spec.name} has no hub dataset; pass data_dir")
    hub_split = _HUB_SPLITS[split]
    source = f"{'/'.join(spec.hub_name)}[{hub_split}]"
    from datasets import Dataset, load_dataset

    ds = load_dataset(*spec.hub_name, split=hub_split)
    if len(ds) == 0:
        raise TaskDataError("no data rows: the split is empty", source)
    keep = _subset(len(ds), limit, seed)
    positions = list(range(len(ds))) if keep is None else keep.tolist()
    if keep is not None:
        ds = ds.select(positions)
    text_columns = spec.hub_text_columns or spec.text_columns
    labels = list(ds["label"])
    if spec.is_regression:
        labels = [float(x) for x in labels]
    else:
        bad = [x for x in labels if not 0 <= int(x) < spec.num_labels]
        if bad:
            raise TaskDataError(f"hub label {bad[0]} is outside 0..{spec.num_labels - 1} (an unlabelled "
                                "split?)", source)
        labels = [int(x) for x in labels]
    columns: dict[str, list[Any]] = {"text_a": list(ds[text_columns[0]])}
    if spec.is_pair:
        columns["text_b"] = list(ds[text_columns[1]])
    columns["label"] = labels
    columns["idx"] = positions
    return Dataset.from_dict(columns, features=_features(spec))


# ----------------------------------------------------------------------------------------- metrics


def _f1(p: np.ndarray, r: np.ndarray) -> float:
    tp = int(np.sum((p == 1) & (r == 1)))
    fp = int(np.sum((p == 1) & (r != 1)))
    fn = int(np.sum((p != 1) & (r == 1)))
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def _mcc(p: np.ndarray, r: np.ndarray) -> float:
    """Matthews correlation (multi-class form, equal to the binary one for 2 classes); 0.0 if undefined."""
    k = int(max(p.max(), r.max())) + 1
    confusion = np.zeros((k, k), dtype=np.float64)
    np.add.at(confusion, (r, p), 1.0)
    s, c = confusion.sum(), np.trace(confusion)
    t, q = confusion.sum(axis=1), confusion.sum(axis=0)
    denom = math.sqrt((s * s - q @ q) * (s * s - t @ t))
    return 0.0 if denom == 0 else float((c * s - t @ q) / denom)


def _correlation(name: str, p: np.ndarray, r: np.ndarray) -> float:
    if p.size < 2 or np.ptp(p) == 0 or np.ptp(r) == 0:
        return 0.0  # undefined for constant input; 0.0 instead of scipy's NaN and warning
    from scipy import stats

    return float(getattr(stats, name)(p, r).statistic)


_METRIC_FNS = {
    "accuracy": lambda p, r: float(np.mean(p == r)),
    "f1": _f1,
    "mcc": _mcc,
    "pearson": lambda p, r: _correlation("pearsonr", p, r),
    "spearman": lambda p, r: _correlation("spearmanr", p, r),
}


def compute_metrics(task: str | TaskSpec, predictions: Any, references: Any) -> dict[str, float]:
    """The official GLUE metrics for a task, as plain floats in 0..1 (main metric first)."""
    spec = get_task(task)
    p, r = np.asarray(predictions), np.asarray(references)
    if p.ndim != 1 or p.shape != r.shape or p.size == 0:
        raise ValueError(f"predictions and references must be equal-length non-empty 1-D arrays, got shapes "
                         f"{p.shape} and {r.shape} (use predictions_from_logits for logits)")
    if spec.is_regression:
        p, r = p.astype(np.float64), r.astype(np.float64)
        if not (np.isfinite(p).all() and np.isfinite(r).all()):
            raise ValueError("predictions and references must be finite numbers")
    else:
        for name, a in (("predictions", p), ("references", r)):
            if a.dtype.kind == "f" and not np.all(np.mod(a, 1) == 0):
                raise ValueError(f"{name} must be class ids, got non-integer values")
        p, r = p.astype(np.int64), r.astype(np.int64)
        if min(p.min(), r.min()) < 0:
            raise ValueError("class ids must be non-negative")
    return {m: float(_METRIC_FNS[m](p, r)) for m in spec.metrics}


def predictions_from_logits(task: str | TaskSpec, logits: Any) -> np.ndarray:
    """Class ids by argmax, or the single regression output."""
    logits = np.asarray(logits)
    if get_task(task).is_regression:
        return logits[:, 0] if logits.ndim == 2 else logits
    return logits.argmax(axis=-1)


# ---------------------------------------------------------------------------------------- encoding


def encode(dataset: Dataset, tokenizer: Any, max_length: int) -> Dataset:
    """Tokenize without padding (``DataCollatorWithPadding`` pads each batch) and rename label -> labels."""
    pair = "text_b" in dataset.column_names

    def tokenize(batch: dict[str, list]) -> dict[str, list]:
        texts = (batch["text_a"], batch["text_b"]) if pair else (batch["text_a"],)
        return dict(tokenizer(*texts, truncation=True, max_length=max_length, return_token_type_ids=True,
                              return_attention_mask=True))

    text_columns = ["text_a", "text_b"] if pair else ["text_a"]
    out = dataset.map(tokenize, batched=True, remove_columns=text_columns, keep_in_memory=True,
                      load_from_cache_file=False)
    out = out.rename_column("label", "labels")
    return out.select_columns(["input_ids", "token_type_ids", "attention_mask", "labels", "idx"])
