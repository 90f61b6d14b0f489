"""Where a stage computes and in what precision: one home for ``--device`` and ``--precision``.

``--device`` is ``auto`` (CUDA when available, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``; a
CUDA device on a machine without one is refused before any work. ``--precision`` (search and student
training) is ``fp32`` (default), ``bf16`` or ``fp16``: the latter two run the forward and the losses
under ``torch.autocast`` on CUDA (weights and optimizer state stay fp32; ``fp16`` adds a gradient
scaler), and are refused on the CPU, where they are not supported here. fp32 on CUDA is fp32 proper:
TensorFloat-32 (cuDNN's default for convolutions) is turned off for it.

What stays on the host whatever the device: the memory-mapped knowledge store (batches are cut
there and copied over pinned memory without blocking), the random draws that shape the search
(Gumbel and uniform samples come from a seeded CPU generator), the latency table of the search's
efficiency term (it is about the CPU the student is deployed on), and checkpoints (saved as CPU
tensors, moved to the device when loaded).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import torch

from adabert.config import PRECISIONS, ConfigError

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str, flag: str = "--device") -> torch.device:
    """'auto' -> cuda when available, else cpu; otherwise ``torch.device(name)``, which must exist here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"{flag} {name!r} is not a device ({err}); use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"{flag} {name}: no CUDA device is available here (this torch build: {torch.__version__}); "
                "use --device cpu or auto"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(f"{flag} {name}: this machine has {count} CUDA device(s), cuda:0..{count - 1}")
    elif device.type != "cpu":
        raise ConfigError(f"{flag} {name}: only cpu and cuda devices are supported")
    return device


def check_precision(device: torch.device, precision: str) -> None:
    """Refuse a precision the device cannot run: anything but fp32 needs CUDA (bf16: a GPU with bf16)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "fp32":
        return
    if device.type != "cuda":
        raise ConfigError(
            f"--precision {precision} needs a CUDA device, and this run computes on {device}: "
            "use --precision fp32 on the CPU"
        )
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"--precision bf16: {torch.cuda.get_device_name(device)} has no bf16; use fp16")


def resolve(name: str, precision: str = "fp32") -> torch.device:
    """The device of a stage's ``--device``, checked together with its ``--precision``."""
    device = resolve_device(name)
    check_precision(device, precision)
    return device


def prepare(name: str, precision: str = "fp32") -> torch.device:
    """:func:`resolve`, and on CUDA the math mode of ``precision``: fp32 turns TensorFloat-32 off for
    matrix products and cuDNN convolutions (cuDNN's default is on), so fp32 computes in fp32."""
    device = resolve(name, precision)
    if device.type == "cuda":
        tf32 = precision != "fp32"
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    return device


def check_settings(cfg: Any) -> None:
    """Refuse a stage config's ``device`` (with its ``precision``) that this machine cannot run."""
    name = getattr(cfg, "device", None)
    if name is not None:
        resolve(name, getattr(cfg, "precision", "fp32"))


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to the precision's dtype on CUDA; nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler | None:
    """A gradient scaler for fp16 (its small exponent range underflows gradients); None otherwise."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """A batch's tensors on ``device`` (asynchronous copies from pinned memory); a no-op on the CPU."""
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
    }


def describe(device: torch.device) -> str:
    """``cpu`` or ``cuda:0 (NVIDIA ...)``: for logs and reports."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return str(device)
