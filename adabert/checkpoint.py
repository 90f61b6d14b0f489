"""Resumable state without pickle: tensors in a safetensors file, everything else as JSON in its header.

A checkpoint shared with a run folder must never be able to run code when it is read, so nothing here
unpickles. ``save_state`` walks a nested value of dicts, lists, tuples, numbers, strings and tensors
(model and optimizer state dicts, random generator states, histories), stores each tensor under its
path and the rest as JSON in the safetensors metadata, with a format name, a version and the hash of
the run's settings. ``load_state`` rebuilds the value and refuses anything else with a clear
:class:`CheckpointError`: another format, another version, a damaged file, or a legacy pickle.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from adabert.io import atomic_save

VERSION = 2
_TENSOR, _TUPLE, _ITEMS = "__tensor__", "__tuple__", "__items__"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, damaged, foreign, legacy, or of other settings."""


def settings_hash(settings: dict[str, Any], ignore: set[str] = frozenset()) -> str:
    """sha256 of the settings that decide a run (those resume may change are left out)."""
    kept = {k: v for k, v in settings.items() if k not in ignore}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _encode(value: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        key = path or "root"
        tensors[key] = value.detach().cpu().contiguous()
        return {_TENSOR: key}
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: _encode(v, _join(path, k), tensors) for k, v in value.items()}
        return {_ITEMS: [[k, _encode(v, _join(path, k), tensors)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {_TUPLE: [_encode(v, _join(path, i), tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, _join(path, i), tensors) for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(
        f"checkpoint value at {path or 'root'!r} has type {type(value).__name__}; "
        "only tensors, numbers, strings, lists, tuples and dicts are stored"
    )


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if _TENSOR in value:
        return tensors[value[_TENSOR]]
    if _TUPLE in value:
        return tuple(_decode(v, tensors) for v in value[_TUPLE])
    if _ITEMS in value:
        return {_key(k): _decode(v, tensors) for k, v in value[_ITEMS]}
    return {k: _decode(v, tensors) for k, v in value.items()}


def _key(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key


def save_state(path: str | Path, state: dict[str, Any], kind: str, config_hash: str) -> None:
    """Write ``state`` atomically as a ``kind`` checkpoint of a run whose settings hash to ``config_hash``."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(state, "", tensors)
    # tensors that share memory (tied weights) must be separate copies for safetensors
    seen: set[int] = set()
    for key, tensor in tensors.items():
        if tensor.untyped_storage().data_ptr() in seen:
            tensors[key] = tensor.clone()
        seen.add(tensors[key].untyped_storage().data_ptr())
    metadata = {
        "format": kind,
        "version": str(VERSION),
        "config_hash": config_hash,
        "state": json.dumps(tree),
    }
    atomic_save(path, lambda p: save_file(tensors, str(p), metadata=metadata))


def load_state(path: str | Path, kind: str, config_hash: str | None = None) -> dict[str, Any]:
    """Read a ``kind`` checkpoint written by :func:`save_state`; refuse anything else, never unpickle.

    With ``config_hash`` the checkpoint must come from a run with the same settings.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head[:2] == b"PK" or head[:1] == b"\x80":  # a torch.save zip archive or a raw pickle
        raise CheckpointError(
            f"{path}: a pickle-based checkpoint (torch.save); adabert never unpickles files, as they can "
            "run code when read. Move it away and start afresh"
        )
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
            tensors = {key: fh.get_tensor(key) for key in fh.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(
            f"{path}: not a readable checkpoint ({err}); move it away to start afresh"
        ) from None
    if metadata.get("format") != kind:
        raise CheckpointError(
            f"{path}: not an adabert {kind} checkpoint (format {metadata.get('format')!r}); "
            "move it away to start afresh"
        )
    if metadata.get("version") != str(VERSION):
        raise CheckpointError(
            f"{path}: checkpoint version {metadata.get('version')!r}, this adabert reads version {VERSION}; "
            "start afresh"
        )
    if config_hash is not None and metadata.get("config_hash") != config_hash:
        raise CheckpointError(
            f"{path}: the checkpoint was written by a run with other settings; use a new --output-dir "
            "or restore the settings"
        )
    try:
        return _decode(json.loads(metadata["state"]), tensors)
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: damaged checkpoint ({err}); move it away to start afresh") from None
