"""Running exported models: onnxruntime sessions and TorchScript modules on a batch of token ids.

One home for "give this exported file a batch, get float32 logits", used by the export checks, the
int8 comparison, latency timing and ``adabert predict``.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from adabert.errors import UserError

NAMES_FILE = "input_names.json"  # rides inside a TorchScript file: its positional input names
ONNX_SUFFIXES = (".onnx",)
TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts")


class ExportError(UserError, RuntimeError):
    """An export that could not be written, or whose outputs differ from the model it came from."""


@contextmanager
def quiet_tracing() -> Iterator[None]:
    """Silence tracing/legacy-exporter noise: the parity check, not these warnings, guards correctness."""
    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", message=".*Exporting aten::index operator.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.jit")
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*is_gradient_checkpointing.*")
        yield


def file_kind(path: Path) -> str:
    """'onnx' or 'torchscript', by file name."""
    if path.name.endswith(ONNX_SUFFIXES):
        return "onnx"
    if path.name.endswith(TORCHSCRIPT_SUFFIXES):
        return "torchscript"
    raise ExportError(f"unknown export format for {path.name}: use {ONNX_SUFFIXES + TORCHSCRIPT_SUFFIXES}")


def onnx_session(path: str | Path, threads: int | None = None) -> Any:
    """A CPU onnxruntime session; ``threads`` intra-op threads (default: torch's, i.e. OMP_NUM_THREADS)."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ExportError("running ONNX needs the 'export' extra: pip install 'adabert[export]'") from e
    if threads is None:
        import torch

        threads = torch.get_num_threads()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: the quantized graphs' shape-inference notes are noise
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime's own classes (InvalidProtobuf, Fail, ...): a file it cannot use
        if isinstance(err, OSError) and err.errno is not None:
            raise
        reason = _first_line(err)
        raise ExportError(f"{path}: not a usable ONNX model ({reason}); export the model again") from None


def _first_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text[:200] + ("..." if len(text) > 200 else "")


def _numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.int64)


def run_onnx(session: Any, inputs: Mapping[str, Any], name: str = "model.onnx") -> np.ndarray:
    """Float32 logits of an onnxruntime session on a batch of tensors or arrays (extra inputs ignored)."""
    expected = [i.name for i in session.get_inputs()]
    missing = [n for n in expected if n not in inputs]
    if missing:
        raise ExportError(f"{name} needs inputs {missing} that the batch lacks")
    return np.asarray(session.run(None, {n: _numpy(inputs[n]) for n in expected})[0], dtype=np.float32)


def load_torchscript(path: str | Path, device: Any = "cpu") -> tuple[Any, list[str] | None]:
    """A traced module and the input names saved with it (None for a file without them)."""
    import torch

    extra = {NAMES_FILE: ""}
    try:
        with quiet_tracing():
            module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
        names = json.loads(extra[NAMES_FILE]) if extra[NAMES_FILE] else None
    except (RuntimeError, ValueError) as err:  # not a TorchScript archive (e.g. a torch.save file), or torn
        raise ExportError(
            f"{path}: not a TorchScript model saved by adabert export ({_first_line(err)}); export the model "
            "again"
        ) from None
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise ExportError(f"{path}: its {NAMES_FILE} is not a list of input names; export the model again")
    return module, names


def run_torchscript(
    module: Any,
    names: list[str] | None,
    inputs: Mapping[str, Any],
    name: str = "model.pt",
    device: Any = "cpu",
) -> np.ndarray:
    """Float32 logits of a traced module (from ``load_torchscript``) on a batch."""
    import torch

    from adabert.report.evaluate import MODEL_INPUTS

    names = names or [n for n in MODEL_INPUTS if n in inputs]
    missing = [n for n in names if n not in inputs]
    if missing:
        raise ExportError(f"{name} needs inputs {missing} that the batch lacks")
    tensors = [torch.as_tensor(_numpy(inputs[n])).to(device) for n in names]
    with torch.inference_mode():
        return module(*tensors).float().cpu().numpy()


def run_file(
    path: Path, inputs: Mapping[str, Any], device: Any = "cpu", kind: str | None = None
) -> np.ndarray:
    """Logits of an exported file (``kind`` 'onnx' or 'torchscript'; default: by its name) on one batch."""
    if (kind or file_kind(path)) == "onnx":
        return run_onnx(onnx_session(path), inputs, path.name)
    module, names = load_torchscript(path, device)
    return run_torchscript(module, names, inputs, path.name, device)
