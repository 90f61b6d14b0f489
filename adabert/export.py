"""Export a classifier to ONNX or TorchScript, and prove the exported file computes the same logits.

ONNX goes through PyTorch's TorchScript-based exporter (``dynamo=False``): the newer torch.export
path needs ``onnxscript``, which the ``export`` extra does not install. That exporter, like
``torch.jit.trace``, records one concrete run, so Python-side branches in a model (Hugging Face mask
code has several) can be frozen into the graph without error. Its tracer warnings are therefore
silenced and every export is instead checked against the PyTorch model on a batch of a *different*
shape, with padding, before it is moved into place: a file that exists has passed that check.
TorchScript is deprecated upstream (torch 2.13 warns on trace/save/load) but still works; it is kept
as the no-extra-dependency format and its deprecation warnings are silenced here.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from adabert.evaluate import MODEL_INPUTS, accepted_inputs, dummy_batch, extract_logits, model_device
from adabert.io import atomic_path

ONNX_SUFFIXES = (".onnx",)
TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts")
_NAMES_FILE = "input_names.json"


class ExportError(RuntimeError):
    """An export that could not be written, or whose outputs differ from the PyTorch model's."""


class LogitsOnly(nn.Module):
    """Positional tensors in, logits tensor out: the interface exporters and tracers can record."""

    def __init__(self, model: nn.Module, input_names: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.input_names = list(input_names)

    def forward(self, *inputs: Tensor) -> Tensor:
        return extract_logits(self.model(**dict(zip(self.input_names, inputs))))


def _input_names(model: nn.Module, batch: Mapping[str, Tensor]) -> list[str]:
    """Model inputs in a fixed order, so an exported file's positional inputs are always the same."""
    accepted = accepted_inputs(model, batch)
    return [name for name in MODEL_INPUTS if name in accepted]


def _verify_batch(model: nn.Module, seq_len: int, pair: bool) -> dict[str, Tensor]:
    """A batch unlike the one traced (other batch size and length, padded row) to catch frozen shapes."""
    length = max(1, (seq_len + 1) // 2)
    batch = dummy_batch(model, 3, length, pair, seed=1)
    if length > 2:
        batch["attention_mask"][-1, length // 2 :] = 0
    return batch


@contextmanager
def _quiet_tracing() -> Iterator[None]:
    """Silence tracing/legacy-exporter noise: the parity check, not these warnings, guards correctness."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", message=".*Exporting aten::index operator.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.jit")
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*is_gradient_checkpointing.*")
        yield


def _kind(path: Path) -> str:
    if path.name.endswith(ONNX_SUFFIXES):
        return "onnx"
    if path.name.endswith(TORCHSCRIPT_SUFFIXES):
        return "torchscript"
    raise ExportError(f"unknown export format for {path.name}: use {ONNX_SUFFIXES + TORCHSCRIPT_SUFFIXES}")


def export_onnx(
    model: nn.Module,
    output_path: str | Path,
    seq_len: int = 128,
    opset: int = 17,
    pair: bool = True,
    verify: bool = True,
    atol: float = 1e-4,
) -> Path:
    """Write ``model`` as ONNX with dynamic batch and sequence axes and a single ``logits`` output.

    With ``verify`` (default) the file is only moved into place after ONNX Runtime reproduces the
    model's logits within ``atol`` on a batch of another shape; otherwise ``ExportError`` is raised.
    """
    try:
        import onnx
    except ImportError as e:
        raise ExportError("ONNX export needs the 'export' extra: pip install 'adabert[export]'") from e
    output_path = Path(output_path)
    # Batch of 2, not 1: a traced batch dimension of 1 is more easily mistaken for a constant.
    batch = dummy_batch(model, 2, seq_len, pair)
    names = _input_names(model, batch)
    wrapper = LogitsOnly(model, names)
    axes: dict[str, dict[int, str]] = {name: {0: "batch", 1: "sequence"} for name in names}
    axes["logits"] = {0: "batch"}
    was_training = model.training
    wrapper.eval()  # the exporter restores the wrapper's mode afterwards, recursively
    try:
        with atomic_path(output_path) as tmp:
            try:
                with _quiet_tracing(), torch.no_grad():
                    torch.onnx.export(
                        wrapper,
                        tuple(batch[n] for n in names),
                        str(tmp),
                        dynamo=False,
                        input_names=names,
                        output_names=["logits"],
                        dynamic_axes=axes,
                        opset_version=opset,
                        do_constant_folding=True,
                    )
                onnx.checker.check_model(str(tmp))
            except Exception as e:
                raise ExportError(f"ONNX export of {type(model).__name__} failed: {e}") from e
            if verify:
                _check(model, tmp, "onnx", _verify_batch(model, seq_len, pair), atol)
    finally:
        model.train(was_training)
    return output_path


def export_torchscript(
    model: nn.Module,
    output_path: str | Path,
    seq_len: int = 128,
    pair: bool = True,
    verify: bool = True,
    atol: float = 1e-4,
) -> Path:
    """Write ``model`` traced to TorchScript, returning the logits tensor; input names ride along.

    Verified like ``export_onnx`` before the file is moved into place.
    """
    output_path = Path(output_path)
    batch = dummy_batch(model, 2, seq_len, pair)
    names = _input_names(model, batch)
    wrapper = LogitsOnly(model, names)
    was_training = model.training
    wrapper.eval()
    try:
        with atomic_path(output_path) as tmp:
            try:
                with _quiet_tracing(), torch.no_grad():
                    traced = torch.jit.trace(wrapper, tuple(batch[n] for n in names), check_trace=False)
                    torch.jit.save(traced, str(tmp), _extra_files={_NAMES_FILE: json.dumps(names)})
            except Exception as e:
                raise ExportError(f"TorchScript export of {type(model).__name__} failed: {e}") from e
            if verify:
                _check(model, tmp, "torchscript", _verify_batch(model, seq_len, pair), atol)
    finally:
        model.train(was_training)
    return output_path


def _run_onnx(path: Path, inputs: Mapping[str, Tensor]) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = [i.name for i in session.get_inputs()]
    missing = [n for n in expected if n not in inputs]
    if missing:
        raise ExportError(f"{path.name} needs inputs {missing} that the batch lacks")
    feed = {n: inputs[n].detach().cpu().numpy().astype(np.int64) for n in expected}
    return session.run(None, feed)[0]


def _run_torchscript(path: Path, inputs: Mapping[str, Tensor], device: torch.device) -> np.ndarray:
    extra = {_NAMES_FILE: ""}
    with _quiet_tracing():
        module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    names = json.loads(extra[_NAMES_FILE]) if extra[_NAMES_FILE] else [n for n in MODEL_INPUTS if n in inputs]
    missing = [n for n in names if n not in inputs]
    if missing:
        raise ExportError(f"{path.name} needs inputs {missing} that the batch lacks")
    with torch.inference_mode():
        return module(*[inputs[n].to(device) for n in names]).float().cpu().numpy()


def _check(model: nn.Module, path: Path, kind: str, batch: Mapping[str, Tensor], atol: float = 1e-4) -> float:
    inputs = accepted_inputs(model, batch)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            expected = extract_logits(model(**inputs)).float().cpu().numpy()
    finally:
        model.train(was_training)
    if kind == "onnx":
        actual = _run_onnx(path, inputs)
    else:
        actual = _run_torchscript(path, inputs, model_device(model))
    if actual.shape != expected.shape:
        raise ExportError(f"exported logits have shape {actual.shape}, the model's {expected.shape}")
    diff = float(np.max(np.abs(actual.astype(np.float64) - expected.astype(np.float64))))
    if not diff <= atol:  # also catches NaN
        raise ExportError(
            f"exported model differs from PyTorch: max |logit difference| {diff:.3g} > atol {atol:g}"
        )
    return diff


def check_parity(
    model: nn.Module, exported_path: str | Path, batch: Mapping[str, Tensor], atol: float = 1e-4
) -> float:
    """Max absolute logit difference between ``model`` and its ``.onnx`` / ``.pt`` export on ``batch``.

    Raises ``ExportError`` (with the figure) when it exceeds ``atol``, so a drifting export cannot
    slip into a benchmark unnoticed.
    """
    path = Path(exported_path)
    return _check(model, path, _kind(path), batch, atol)


def export_model(
    model_dir: str | Path,
    out: str | Path,
    store_dir: str | Path | None = None,
    fmt: str = "onnx",
    seq_len: int | None = None,
    atol: float = 1e-4,
) -> dict[str, Any]:
    """Export a saved classifier into a deployable folder, checked against PyTorch.

    ``out`` gets ``model.onnx`` (or ``model.pt``), moved into place only after its outputs matched
    PyTorch within ``atol`` on a random padded batch and, given a knowledge store, on 32 real dev rows;
    beside it the tokenizer (from the store), ``config.json`` and ``export.json`` with the figures.
    """
    from adabert.data import collate
    from adabert.evaluate import load_classifier
    from adabert.io import atomic_write_json, save_pretrained_atomic
    from adabert.store import KnowledgeStore
    from adabert.tasks import encode

    model_dir, out = Path(model_dir), Path(out)
    if fmt not in ("onnx", "torchscript"):
        raise ExportError(f"unknown export format {fmt!r}: expected onnx or torchscript")
    model = load_classifier(model_dir)
    store = KnowledgeStore.open(store_dir) if store_dir is not None else None
    pair = store.task.is_pair if store is not None else bool(getattr(model.config, "pair", True))
    length = seq_len or (store.max_length if store is not None else 128)
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions:
        length = min(length, positions)
    exporter = export_onnx if fmt == "onnx" else export_torchscript
    path = exporter(
        model, out / ("model.onnx" if fmt == "onnx" else "model.pt"), seq_len=length, pair=pair, atol=atol
    )
    parity = {"dummy_max_abs_diff": check_parity(model, path, dummy_batch(model, 4, length, pair=pair), atol)}
    to_save: list[Any] = [model.config]
    if store is not None:
        rows = store.rows(store.dev_split)
        encoded = encode(rows.select(range(min(32, len(rows)))), store.tokenizer(), store.max_length)
        columns = [c for c in MODEL_INPUTS if c in encoded.column_names]
        batch = collate([{c: encoded[c][i] for c in columns} for i in range(len(encoded))])
        parity.update(dev_rows=len(encoded), dev_max_abs_diff=check_parity(model, path, batch, atol))
        to_save.append(store.tokenizer())
    save_pretrained_atomic(out, *to_save)
    info = {
        "file": path.name,
        "bytes": path.stat().st_size,
        "source": model_dir.name,
        "model_dir": str(model_dir),
        "format": fmt,
        "seq_len": length,
        "atol": atol,
        "parity": parity,
    }
    atomic_write_json(out / "export.json", info)
    return info
