"""One code path for one process and for many: ``torchrun`` sets the environment, this module reads it.

Under ``torchrun`` (or any launcher that sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``
and ``MASTER_PORT``) :func:`setup` joins the process group; in a plain process it does nothing, and
every other function here is a no-op that hands its input back. Stage code therefore calls them
unconditionally, and one process is simply the case ``world_size == 1``.

The conventions the search and the student training follow with these helpers:

* every rank holds the same model, so every rank derives the same genotype; only rank 0
  (:func:`is_main`) logs, shows progress bars and writes files, and the others wait at a
  :func:`barrier` until it has;
* a global batch of ``batch_size`` rows is split across the ranks (``adabert.data``), each rank's
  gradient is weighted by its share of the batch and summed over ranks (:func:`reduce_gradients`), so
  N processes take the steps of one process on the same batches, up to rounding, per-rank dropout and
  BatchNorm statistics over each rank's part of the batch (so their genotype can differ);
* the random choices that shape the network (the Gumbel samples) come from a generator seeded the
  same on every rank; dropout differs per rank, like it differs per row;
* on CPUs the processes talk over gloo; on GPUs each process computes on its own GPU,
  ``cuda:LOCAL_RANK`` (one process per GPU), and they talk over nccl.

The process group lives as long as the process (it is closed at exit): one process can run several
stages, and re-creating a group on the same ``torchrun`` store is not reliable.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from adabert.errors import UserError

log = logging.getLogger(__name__)

BACKEND_ENV = "ADABERT_DIST_BACKEND"
"""Overrides the process-group backend (``gloo``, ``nccl``, ``cpu:gloo,cuda:nccl``)."""


@dataclass(frozen=True)
class Context:
    """Where this process stands: its rank among ``world_size`` processes and on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise UserError(
            f"environment variable {name}={value!r} is not an integer (torchrun sets it)"
        ) from None


def env_context() -> Context:
    """The rank, world size and local rank that the launcher put in the environment (1 process if none)."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world:
        raise UserError(f"RANK={rank} / WORLD_SIZE={world} in the environment are inconsistent")
    return Context(rank, world, local)


def default_backend(device: str | torch.device = "cpu") -> str:
    """``nccl`` for CUDA tensors, ``gloo`` for CPU tensors; ``ADABERT_DIST_BACKEND`` overrides."""
    override = os.environ.get(BACKEND_ENV, "").strip()
    if override:
        return override
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def active() -> bool:
    """True in a process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_device(device: str | torch.device, ctx: Context) -> torch.device:
    """This process's device: a CUDA device without an index is ``cuda:LOCAL_RANK`` under torchrun
    (one process per GPU; nccl refuses two ranks on one GPU) and the current GPU in one process."""
    device = torch.device(device)
    if device.type != "cuda" or device.index is not None:
        return device
    if not ctx.distributed:
        return torch.device("cuda", torch.cuda.current_device())
    count = torch.cuda.device_count()
    if ctx.local_rank >= count:
        raise UserError(
            f"LOCAL_RANK={ctx.local_rank} but this machine has {count} CUDA device(s): run one process per "
            f"GPU (torchrun --nproc-per-node {count}), or --device cpu"
        )
    return torch.device("cuda", ctx.local_rank)


def setup(device: str | torch.device = "cpu") -> Context:
    """Join the process group torchrun describes (once per process) and return this rank's context.

    ``device`` is where this process computes and the collectives' tensors live: CPU processes talk
    over gloo, CUDA processes over nccl, each on ``cuda:LOCAL_RANK`` (:func:`rank_device`), which
    becomes the current CUDA device. In a single process (no ``WORLD_SIZE`` > 1 in the environment)
    nothing is initialised. A group initialised by the caller (e.g. ``torch.multiprocessing.spawn``
    workers) is used as it is.
    """
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        return Context(rank, world, _env_int("LOCAL_RANK", rank))
    ctx = env_context()
    if not ctx.distributed:
        return ctx
    if not dist.is_available():
        raise UserError(f"WORLD_SIZE={ctx.world_size} but this torch build has no torch.distributed")
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
    if missing:
        raise UserError(
            f"WORLD_SIZE={ctx.world_size} but {', '.join(missing)} not set; launch with "
            "`torchrun --nproc-per-node N -m adabert.cli ...` (it sets them)"
        )
    backend = default_backend(device)
    if torch.device(device).type == "cuda":
        torch.cuda.set_device(rank_device(device, ctx))
    elif "nccl" in backend and torch.cuda.is_available():
        torch.cuda.set_device(ctx.local_rank % torch.cuda.device_count())
    dist.init_process_group(backend=backend, rank=ctx.rank, world_size=ctx.world_size)
    atexit.register(cleanup)
    if not ctx.is_main:
        quiet()
    log.info("process group: %d processes over %s", ctx.world_size, backend)
    return ctx


def quiet() -> None:
    """Only rank 0 tells the story: on other ranks, info logs and library progress bars go silent.

    Warnings and errors still come from every rank. (``torchrun --local-ranks-filter 0`` also hides
    what other ranks print.)
    """
    logging.getLogger("adabert").setLevel(logging.WARNING)
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def cleanup() -> None:
    """Leave the process group (registered at exit by :func:`setup`; safe to call twice)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    """Wait until every rank gets here (e.g. until rank 0 has written a checkpoint)."""
    if active():
        dist.barrier()


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Average ``tensor`` over ranks, in place; returned for chaining."""
    if active():
        dist.all_reduce(tensor)
        tensor.div_(dist.get_world_size())
    return tensor


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks, in place."""
    if active():
        dist.all_reduce(tensor)
    return tensor


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` as rank ``src`` holds it (pickled), on every rank."""
    if not active():
        return obj
    box = [obj if dist.get_rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (a one-element list in a single process)."""
    if not active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _flat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def _unflat_into(flat: torch.Tensor, tensors: Sequence[torch.Tensor]) -> None:
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset : offset + n].view_as(t))
        offset += n


@torch.no_grad()
def average_buffers(module: torch.nn.Module) -> None:
    """Average the floating-point buffers (BatchNorm running statistics) over the ranks, so every
    rank holds the same model: each rank's statistics saw only its share of every batch."""
    if not active():
        return
    buffers = [b for b in module.buffers() if b.is_floating_point()]
    if buffers:
        flat = all_reduce_mean(_flat(buffers).to(_collective_device()))
        _unflat_into(flat.to(buffers[0].device), buffers)


@torch.no_grad()
def broadcast_parameters(tensors: Iterable[torch.Tensor], src: int = 0) -> None:
    """Overwrite ``tensors`` (parameters, buffers) on every rank with rank ``src``'s values."""
    if not active():
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for group in by_dtype.values():
        flat = _flat(group)
        dist.broadcast(flat, src=src)
        _unflat_into(flat, group)


@torch.no_grad()
def reduce_gradients(
    params: Iterable[torch.nn.Parameter], share: float, stats: torch.Tensor | None = None
) -> torch.Tensor | None:
    """Make every rank's gradient the gradient of the whole global batch; return the reduced ``stats``.

    Each rank computed mean losses over its ``share`` of the global batch's rows (the shares sum to
    1), so ``sum over ranks of share * grad`` is the gradient of the mean over the whole batch, and the
    same for ``stats`` (e.g. the loss terms, for logging and the divergence check). Only parameters
    that have a gradient take part, in one flat all-reduce: the supernet runs just the sampled ops,
    and every rank runs the same sample, so every rank has gradients for the same parameters.
    A single process returns ``stats`` unchanged (its share is the whole batch).
    """
    if not active():
        return stats
    grads = [p.grad for p in params if p.grad is not None]
    parts = [g.reshape(-1) for g in grads]
    if stats is not None:  # beside the gradients, on their device (nccl reduces CUDA tensors only)
        where = grads[0].device if grads else _collective_device()
        parts.append(stats.detach().reshape(-1).to(where, grads[0].dtype if grads else torch.float32))
    if not parts:
        return stats
    flat = torch.cat(parts).mul_(share)
    dist.all_reduce(flat)
    _unflat_into(flat, grads)
    if stats is None:
        return None
    return flat[flat.numel() - stats.numel() :].view_as(stats).to(stats.device, stats.dtype)


def _collective_device() -> torch.device:
    """Where a tensor that belongs to no model goes for a collective: CUDA for nccl alone, else the CPU."""
    backend = str(dist.get_backend())
    if "nccl" in backend and "gloo" not in backend:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class OutOfSyncError(RuntimeError):
    """Ranks that must hold identical values (architecture logits, weights) do not."""


@torch.no_grad()
def check_in_sync(tensors: dict[str, torch.Tensor]) -> None:
    """Raise :class:`OutOfSyncError` unless every rank holds exactly the same ``tensors``."""
    if not active():
        return
    mine = {name: t.detach().cpu() for name, t in tensors.items()}
    for other_rank, theirs in enumerate(all_gather_object(mine)):
        for name, value in mine.items():
            if not torch.equal(value, theirs[name]):
                diff = (value - theirs[name]).abs().max().item()
                raise OutOfSyncError(
                    f"rank {rank()} and rank {other_rank} hold different {name} (max |difference| "
                    f"{diff:.3g}); the ranks diverged, which is a bug: please report it"
                )


def gather_arrays(parts: list[Any], labels: list[Any]) -> tuple[Any, Any]:
    """Concatenate the batches' outputs and labels (NumPy) of every rank, in rank order."""
    import numpy as np

    gathered = all_gather_object((parts, labels))
    outputs = [x for rank_outputs, _ in gathered for x in rank_outputs]
    targets = [y for _, rank_labels in gathered for y in rank_labels]
    if not outputs:
        raise ValueError("no rows to evaluate")
    return np.concatenate(outputs), np.concatenate(targets)
