"""One strict loader for every saved sequence classifier adabert reads (student, compressed, teacher).

``from_pretrained`` only warns when a folder's weights do not fit its ``config.json``: tensors the config
builds but the file lacks stay uninitialised (the student's ``_init_weights`` keeps PyTorch's defaults,
so they are NaN or finite garbage), and tensors the file holds but the config does not build are
dropped. A student whose genotype was edited by one op then predicts garbage with exit status 0. So
every command that loads a model (evaluate, predict, export, compress, ``teacher probe``) goes through
:func:`load_classifier`, which refuses such a folder in one line naming the tensors, and turns every
other way a folder can be unreadable (bad JSON, a config of wrong types, a weights file that is
truncated or a pickle that is not plain weights) into a :class:`ModelFolderError`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adabert.errors import USER_ERRNOS, UserError, describe

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from adabert.tasks import TaskSpec

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
SHOWN = 4  # tensor names shown per kind of problem
STAMP = "adabert_architecture"
"""The metadata key of ``model.safetensors`` that holds the hash of the config's ``architecture()``."""


class ModelFolderError(UserError):
    """A model folder that cannot be used as it is: the message names the folder and what is wrong."""


def read_model_config(folder: str | Path) -> dict[str, Any]:
    """A model folder's ``config.json`` as a dict, refused unless it is a JSON object with a model_type."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no model directory (expected a save_pretrained output)")
    path = folder / CONFIG
    if not path.is_file():
        raise ModelFolderError(
            f"{folder}: not a model folder (no {CONFIG}); expected a student, compressed model or teacher "
            "folder (a save_pretrained output)"
        )
    try:
        value = json.loads(path.read_text())
    except (UnicodeDecodeError, ValueError) as err:
        raise ModelFolderError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(value, dict) or not isinstance(value.get("model_type"), str):
        raise ModelFolderError(
            f"{path}: not a model config (expected a JSON object with a 'model_type', found "
            f"{_preview(value)}); use the folder as adabert or save_pretrained wrote it"
        )
    return value


UNFINISHED = (  # (what a stage writes first, what it writes last, the command to run again, its outputs)
    (
        "train_config.json",
        "metrics.json",
        "adabert train (with --resume to continue it)",
        "the model there is",
    ),
    ("finetune_config.json", "adabert_task.json", "adabert teacher finetune", "the model there is"),
    ("compress_config.json", "report.json", "adabert compress", "the model there is"),
    (
        "checkpoint.safetensors",
        "selection.json",
        "adabert search (with --resume to continue it)",
        "the genotype and supernet there are",
    ),
)


def check_finished(folder: str | Path) -> None:
    """Refuse a stage's folder (a model folder, a search folder) whose stage started and never finished:
    a training or search stopped by a kill, a full disk or a divergence leaves an earlier epoch's model or
    genotype (or an older run's) beside its new settings. ``train``, ``teacher finetune``, ``compress``
    and ``search`` remove their last file when they start and write it when done; ``adabert pipeline``'s
    ``stage.json`` is written after it, so a stage it marks finished passes here too."""
    folder = Path(folder)
    for first, last, command, outputs in UNFINISHED:
        if (folder / first).is_file() and not (folder / last).is_file():
            raise ModelFolderError(
                f"{folder}: the {command.split(' (')[0]} that wrote it did not finish ({first} without "
                f"{last}): {outputs} not what its settings ask for; run {command} again"
            )


def _preview(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers' load report (a table per mismatch) says on stderr what our one-line error says."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def _names(keys: Any) -> list[str]:
    names = sorted(k if isinstance(k, str) else f"{k[0]} ({_shape(k[1])} in the file, {_shape(k[2])} in "
                   "the config)" for k in keys)  # fmt: skip
    return names[:SHOWN] + ([f"{len(names) - SHOWN} more"] if len(names) > SHOWN else [])


def _shape(size: Any) -> str:
    return "x".join(str(d) for d in size) or "scalar"


def weight_problems(info: dict[str, Any]) -> list[str]:
    """What ``from_pretrained(..., output_loading_info=True)`` reports as not fitting, one phrase a kind."""
    problems = []
    for key, what in (
        ("missing_keys", "missing from the weights file"),
        ("unexpected_keys", "in the weights file but not in the model its config builds"),
        ("mismatched_keys", "of another shape"),
    ):
        if info.get(key):
            problems.append(f"{len(info[key])} tensor(s) {what}: {', '.join(_names(info[key]))}")
    if info.get("error_msgs"):
        problems.append("; ".join(" ".join(str(m).split()) for m in info["error_msgs"][:2]))
    return problems


def load_classifier(
    path: str | Path, task: TaskSpec | None = None, *, writing: bool = False
) -> PreTrainedModel:
    """A saved sequence classifier (teacher, student, compressed model) through the Auto classes, in
    eval mode, refused (:class:`ModelFolderError`) unless the stage that wrote it finished
    (:func:`check_finished`; ``writing``: the stage writing it reloads what it saved, before it writes
    its last file) and its weights are exactly those its config builds and are finite; with ``task``,
    also unless it fits the task (:func:`check_fits_task`)."""
    from transformers import AutoModelForSequenceClassification

    from adabert import register_auto_classes

    register_auto_classes()
    folder = Path(path)
    config = read_model_config(folder)
    if not writing:
        check_finished(folder)
    try:
        with _quiet_transformers():
            model, info = AutoModelForSequenceClassification.from_pretrained(
                folder, output_loading_info=True, ignore_mismatched_sizes=True
            )
    except MemoryError:
        raise
    except OSError as err:
        if err.errno in USER_ERRNOS:
            raise
        raise ModelFolderError(f"{folder}: the model cannot be loaded ({describe(err)})") from None
    except Exception as err:  # whatever transformers, torch or safetensors raise on files they cannot use
        if any(kind.__name__ == "UnpicklingError" for kind in type(err).__mro__):  # torch's weights_only load
            files = ", ".join(p.name for p in sorted(folder.glob("*.bin"))) or "its weights file"
            raise ModelFolderError(
                f"{folder}: {files} is a pickle that holds more than plain tensors, refused as it could run "
                "code when read. Use a folder with model.safetensors"
            ) from None
        if isinstance(err, UserError):
            raise ModelFolderError(f"{folder}/{CONFIG}: {describe(err)}") from None
        raise ModelFolderError(
            f"{folder}: its {CONFIG} (model_type {config['model_type']!r}) and weights do not make a model "
            f"({type(err).__name__}: {describe(err).split('. ')[0]}); use the folder as adabert or "
            "save_pretrained wrote it"
        ) from None
    problems = weight_problems(info)
    stamped = _stamp_of(folder / WEIGHTS)
    if not problems and stamped is not None and stamped != architecture_hash(model.config):
        problems.append(
            f"the architecture it describes (genotype, head, widths) is not the one {WEIGHTS} was saved with"
        )
    if problems:
        raise ModelFolderError(
            f"{folder}: its weights do not match its {CONFIG}: {'; '.join(problems)}. The folder was "
            "edited or mixes files of two models; use it as adabert wrote it (or train it again)"
        )
    broken = [
        name for name, t in model.state_dict().items() if t.is_floating_point() and not t.isfinite().all()
    ]
    if broken:
        raise ModelFolderError(
            f"{folder}: {len(broken)} weight tensor(s) hold NaN or infinite values: "
            + ", ".join(_names(broken))
        )
    if task is not None:
        check_fits_task(model, task, folder)
    return model.eval()


def check_fits_task(model: Any, task: TaskSpec, folder: str | Path) -> None:
    """Refuse a model whose outputs or inputs do not fit ``task``: another number of labels, or a student
    built for single sentences used on pairs (or the reverse), which would run and give other outputs."""
    config = model.config
    if config.num_labels != task.num_labels:
        raise ModelFolderError(
            f"{folder}: model has {config.num_labels} labels but task {task.name} has {task.num_labels}; "
            "use it with the store or task it was trained on"
        )
    if not _built_by_adabert(config):  # a teacher's labels and inputs are its own
        return
    names = tuple(str(config.id2label[i]) for i in range(config.num_labels))
    if not task.is_regression and names not in (task.label_names, task.labels):
        raise ModelFolderError(
            f"{folder}/{CONFIG}: its labels (id2label) are {', '.join(names)} but task {task.name}'s are "
            f"{', '.join(task.label_names or ())}; use the folder as adabert wrote it"
        )
    pair = getattr(config, "pair", None)
    if pair is not None:
        if bool(pair) != task.is_pair:
            kind = "sentence pairs" if pair else "single sentences"
            raise ModelFolderError(
                f"{folder}/{CONFIG}: the model is built for {kind} (pair: {json.dumps(pair)}) but task "
                f"{task.name} has {len(task.text_columns)} text column(s); use it with the task it was "
                "trained on"
            )


def _built_by_adabert(config: Any) -> bool:
    """A student, or a compressed student: adabert built its labels and inputs from the task."""
    if config.model_type == "adabert-compressed":
        return (getattr(config, "base", None) or {}).get("model_type") == "adabert-student"
    return config.model_type == "adabert-student"


def architecture_hash(config: Any) -> str | None:
    """sha256 of what a config says the model computes (None for configs without ``architecture()``)."""
    import hashlib

    describe_architecture = getattr(config, "architecture", None)
    if describe_architecture is None:
        return None
    text = json.dumps(describe_architecture(), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def stamp_architecture(folder: str | Path, config: Any) -> None:
    """Record ``architecture_hash(config)`` in the metadata of ``folder``'s weights, which were just saved
    from a model with that config: an edited config is then told from the weights it does not fit, even
    when it builds the same tensors (one parameter-free op for another)."""
    from safetensors.torch import load_file, save_file

    path, digest = Path(folder) / WEIGHTS, architecture_hash(config)
    if digest is None or not path.is_file():
        return
    save_file(load_file(path), path, metadata={**(_metadata(path) or {}), STAMP: digest})
    _sort_metadata(path)


def _sort_metadata(path: Path) -> None:
    """Rewrite the header's metadata with its keys sorted: safetensors writes them in an order that
    varies between processes, and the same weights should be the same bytes (a resumed run is
    checked byte for byte against an uninterrupted one). The header keeps its length and padding."""
    with open(path, "r+b") as handle:
        size = int.from_bytes(handle.read(8), "little")
        raw = handle.read(size)
        header = json.loads(raw)
        header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
        text = json.dumps(header, separators=(",", ":")).encode()
        if len(text) <= size:
            handle.seek(8)
            handle.write(text + b" " * (size - len(text)))


def _metadata(path: Path) -> dict[str, str] | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return fh.metadata()
    except Exception:  # unreadable weights were refused (or not) by from_pretrained already
        return None


def _stamp_of(path: Path) -> str | None:
    return (_metadata(path) or {}).get(STAMP) if path.is_file() else None
