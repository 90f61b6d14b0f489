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
import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from adabert import distributed, errors
from adabert.errors import UserError
from adabert.io import atomic_save

log = logging.getLogger(__name__)

VERSION = 2
_TENSOR, _TUPLE, _ITEMS = "__tensor__", "__tuple__", "__items__"


class CheckpointError(UserError):
    """A checkpoint that cannot be used: missing, damaged, foreign, legacy, or of other settings."""


class DivergenceError(errors.DivergenceError):
    """The loss became NaN or infinite; the last checkpoint is left as it was."""


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


def _looks_like_safetensors(path: Path) -> bool:
    """A safetensors file: an 8-byte little-endian header length, then that many bytes of JSON."""
    with open(path, "rb") as fh:
        head = fh.read(9)
    if len(head) < 9:
        return False
    return 8 + int.from_bytes(head[:8], "little") <= path.stat().st_size and head[8:9] == b"{"


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
    if not _looks_like_safetensors(path):
        with open(path, "rb") as fh:
            head = fh.read(2)
        if head[:2] == b"PK" or head[:1] == b"\x80":  # a torch.save zip archive or a raw pickle
            raise CheckpointError(
                f"{path}: a pickle-based checkpoint (as torch.save writes), not a safetensors one; adabert "
                "never unpickles files, as they can run code when read. Move it away and start afresh"
            )
        raise CheckpointError(
            f"{path}: not a readable checkpoint (not a safetensors checkpoint, or a truncated one); "
            "move it away to start afresh"
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


# ------------------------------------------------------------------------------------- resuming a run
def check_resumable(current: dict[str, Any], saved: dict[str, Any], path: Path, may_change: set[str]) -> None:
    """Refuse to continue a run whose settings changed (other than ``may_change``) since its checkpoint."""
    changed = sorted(k for k in current if k not in may_change and saved.get(k) != current[k])
    if changed:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {current[k]!r}" for k in changed)
        raise CheckpointError(
            f"{path}: cannot resume, the settings changed ({details}); "
            "use a new --output-dir or restore the settings"
        )


def load_for_resume(path: Path, resume: bool, kind: str) -> dict[str, Any] | None:
    """Rank 0 reads the checkpoint (if resuming and it exists) and hands it to every rank.

    Only rank 0's file system needs the output directory: the other ranks get the state over the
    process group. Checkpoints are never unpickled.
    """
    state = None
    if distributed.is_main() and resume:
        if path.exists():
            state = load_state(path, kind)
            if "config" not in state or "epoch" not in state:
                raise CheckpointError(
                    f"{path}: not an adabert {kind} checkpoint; move it away to start afresh"
                )
        elif path.with_suffix(".pt").exists():
            log.warning(
                "--resume: %s is a pickle-based checkpoint of an older adabert and is never read; "
                "starting from scratch",
                path.with_suffix(".pt"),
            )
        else:
            log.warning("--resume: no %s checkpoint in %s, starting from scratch", kind, path.parent)
    return distributed.broadcast_object(state)


def divergence_advice(checkpoint: Path, finished_epochs: int, settings: str) -> str:
    """What is left on disk after a diverged step, and what to do next: ``settings`` are learning rates,
    which ``--resume`` accepts changed (:func:`change_learning_rates`)."""
    if finished_epochs:
        return (
            f"the last good checkpoint ({checkpoint}, epoch {finished_epochs}) is intact. "
            f"Lower {settings} and run the same command with --resume: the new rate applies from epoch "
            f"{finished_epochs + 1}, the epochs before it are kept."
        )
    return f"no epoch finished, so no checkpoint was written. Lower {settings} and start again."


def change_learning_rates(
    current: dict[str, Any],
    saved: dict[str, Any],
    optimizers: dict[str, tuple[torch.optim.Optimizer, Any]],
    epoch: int,
    path: Path,
) -> list[dict[str, Any]]:
    """After a resumed run loaded its optimizers (and schedulers): give each the learning rate its
    setting now asks for, when it changed since the checkpoint (``optimizers``: setting name -> the
    optimizer and its scheduler or None). A schedule keeps its shape, scaled to the new peak. Returns
    the changes, one ``{"epoch", "setting", "from", "to"}`` each (``epoch``: the first run with it)."""
    changes = []
    for key, (optimizer, scheduler) in optimizers.items():
        old, new = saved.get(key), current[key]
        if old is None or old == new:
            continue
        factor = new / old if old else None
        for group in optimizer.param_groups:
            group["lr"] = group["lr"] * factor if factor is not None else new
            if "initial_lr" in group:
                group["initial_lr"] = new
        if scheduler is not None:
            scheduler.base_lrs = [new for _ in scheduler.base_lrs]
            scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
        flag = "--" + key.replace("_", "-")
        log.warning("%s: resuming with %s %g (was %g) from epoch %d", path, flag, new, old, epoch + 1)
        changes.append({"epoch": epoch + 1, "setting": key, "from": old, "to": new})
    return changes


def remove_stale_temporaries(directory: Path, names: tuple[str, ...]) -> None:
    """Delete temp files that a killed run left beside its outputs (``.NAME.*.tmp``, see adabert.io)."""
    for name in names:
        for leftover in directory.glob(f".{name}.*.tmp"):
            leftover.unlink(missing_ok=True)
    for leftover in directory.glob(".save.*"):  # save_pretrained_atomic's temp dirs
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)


def gather_rng_states() -> list[torch.Tensor]:
    """Every rank's CPU random state (dropout draws differ per rank), in rank order."""
    return distributed.all_gather_object(torch.get_rng_state())


def gather_cuda_rng_states(device: torch.device) -> list[torch.Tensor] | None:
    """Every rank's random state of its CUDA device (dropout on a GPU draws there); None on the CPU."""
    if device.type != "cuda":
        return None
    return distributed.all_gather_object(torch.cuda.get_rng_state(device))


def restore_rng_state(state: dict[str, Any], seed: int, device: torch.device | None = None) -> None:
    """Put back this rank's random state, or reseed when the checkpoint came from another world size.

    On a CUDA ``device`` its generator's state too, when the checkpoint has one per rank (a run
    checkpointed on the CPU continues with the CUDA stream seeded at the start).
    """
    states = state.get("rng_per_rank") or [state["rng"]]
    rank, world = distributed.rank(), distributed.world_size()
    cuda_states = state.get("cuda_rng_per_rank")
    if device is not None and device.type == "cuda" and cuda_states and len(cuda_states) == world:
        torch.cuda.set_rng_state(cuda_states[rank], device)
    if len(states) == world:
        torch.set_rng_state(states[rank])
    else:
        log.warning(
            "the checkpoint was written by %d process(es), this run has %d: the batches and Gumbel "
            "samples continue as before, the dropout draws do not",
            len(states),
            world,
        )
        if rank == 0:
            torch.set_rng_state(states[0])
        else:
            torch.manual_seed(seed + 7919 * rank)
