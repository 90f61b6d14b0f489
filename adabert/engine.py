"""One training engine for every loop: the step, and a loop's checkpoint and resume.

The search (its weights and its architecture), the student's training and compression's distillation
each compute their loss their own way (the CE/KD blend is :func:`adabert.distill.blend`); what comes
after the loss is the same for all of them, and lives here once:

* :class:`Stepper`: backward, the sum of the ranks' weighted gradients, the finite-loss guard, fp16
  loss scaling, clipping, the optimizer's step and the scheduler's, and a :class:`WeightAverage` of
  the weights where the loop keeps one;
* :func:`save_loop` and :func:`restore_loop`: a loop's state after an epoch (its optimizers,
  schedulers, scalers, every rank's random state, its settings) in a safetensors checkpoint, and
  back, refusing settings that changed and applying learning rates that ``--resume`` may change.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from adabert import distributed
from adabert.checkpoint import (
    DivergenceError,
    change_learning_rates,
    check_resumable,
    gather_cuda_rng_states,
    gather_rng_states,
    restore_rng_state,
    save_state,
    settings_hash,
)
from adabert.data import with_shares
from adabert.progress import progress


def batches(loader: Any, desc: str, ctx: Any) -> Any:
    """A loop's batches with their shares of the global batch, under a progress bar on rank 0."""
    return progress(with_shares(loader), total=len(loader), desc=desc, leave=False, disable=not ctx.is_main)


class WeightAverage:
    """An exponential moving average of a network's weights (Polyak averaging), updated by the
    :class:`Stepper` after each step: the weights a supernet is judged with, and those a student is
    scored and saved with. The current weights' held-out loss wanders by several percent from one
    epoch to the next (a search judged on them ends its weight phase on a low point, and its first
    search epoch reads as a rise that is noise); the average moves only with what the steps keep
    doing.
    """

    def __init__(self, params: list[torch.nn.Parameter], steps: float) -> None:
        self.params = params
        self.decay = 1.0 - 1.0 / max(1.0, steps)  # an average over about ``steps`` steps
        self.reset()

    def reset(self) -> None:
        """Start the average at the current weights."""
        self.average = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        for average, param in zip(self.average, self.params):
            average.lerp_(param.detach(), 1.0 - self.decay)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The averaged weights in the network for the ``with`` block, the current ones after it."""
        current = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for param, average in zip(self.params, self.average):
                param.copy_(average)
        try:
            yield
        finally:
            with torch.no_grad():
                for param, value in zip(self.params, current):
                    param.copy_(value)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {str(i): average for i, average in enumerate(self.average)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        shapes = [tuple(p.shape) for p in self.params]
        if len(state) != len(shapes) or any(tuple(state[str(i)].shape) != s for i, s in enumerate(shapes)):
            raise ValueError("the checkpoint's weight average does not fit this network")
        self.average = [state[str(i)].to(p.device, p.dtype).clone() for i, p in enumerate(self.params)]


def averaged(average: WeightAverage | None) -> Any:
    """A ``with`` block under ``average``'s weights, or under the current ones when there is none."""
    return contextlib.nullcontext() if average is None else average.applied()


@dataclass
class Stepper:
    """The step of one optimizer over ``params``; ``name`` says whose loss diverged."""

    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    clip: float
    name: str = "training"
    scaler: torch.amp.GradScaler | None = None  # fp16 only
    scheduler: Any = None  # stepped after the optimizer
    average: WeightAverage | None = None  # updated after each step

    def __call__(
        self, loss: torch.Tensor, terms: dict[str, torch.Tensor], share: float = 1.0, where: str = ""
    ) -> dict[str, float]:
        """Backward ``loss``, sum the ranks' gradients weighted by their ``share`` of the global batch,
        refuse a non-finite loss (:class:`DivergenceError`, before the weights move), clip, step.
        Returns ``loss`` and the scalar ``terms`` of the global batch, the same on every rank.

        With an fp16 scaler the scaled gradients are summed (a sum commutes with the scale) and
        unscaled before clipping; a step whose gradients overflowed is skipped, on every rank alike.
        """
        self.optimizer.zero_grad(set_to_none=True)
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()
        names = ["loss", *terms]
        numbers = [v.item() if isinstance(v, torch.Tensor) else float(v) for v in terms.values()]
        values = torch.tensor([loss.item(), *numbers], dtype=torch.float64)
        reduced = dict(zip(names, distributed.reduce_gradients(self.params, share, values).tolist()))
        if not math.isfinite(reduced["loss"]):
            raise DivergenceError(f"{self.name} loss became {reduced['loss']}{' ' + where if where else ''}")
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        if self.scaler is None:
            self.optimizer.step()
        else:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        if self.scheduler is not None:
            self.scheduler.step()
        if self.average is not None:
            self.average.update()
        return reduced


def save_loop(
    path: Path,
    kind: str,
    state: dict[str, Any],
    settings: dict[str, Any],
    resumable: set[str],
    device: torch.device,
    ctx: Any,
) -> None:
    """Write a ``kind`` checkpoint of a loop: ``state`` (an object with a ``state_dict`` is stored as
    it; a ``None`` entry is left out) with every rank's random state and the run's ``settings``.
    Every rank calls it (the random states are gathered); rank 0 writes."""
    rng_states = gather_rng_states()
    cuda_rng_states = gather_cuda_rng_states(device)
    if not ctx.is_main:
        return
    full = {k: v.state_dict() if hasattr(v, "state_dict") else v for k, v in state.items() if v is not None}
    full.update(rng=rng_states[0], rng_per_rank=rng_states, world_size=ctx.world_size, config=settings)
    if cuda_rng_states is not None:
        full["cuda_rng_per_rank"] = cuda_rng_states
    save_state(path, full, kind, settings_hash(settings, resumable))


def restore_loop(
    state: dict[str, Any],
    path: Path,
    settings: dict[str, Any],
    resumable: set[str],
    parts: dict[str, Any],
    rates: dict[str, tuple[torch.optim.Optimizer, Any]],
    seed: int,
    device: torch.device,
) -> list[dict[str, Any]]:
    """Continue a loop from its checkpoint ``state``: refuse changed ``settings`` (other than
    ``resumable``), load each of ``parts`` (optimizers, schedulers, scalers: name -> object, ``None``
    for one this run does not have) from its entry, give the optimizers of ``rates`` the learning
    rates their settings now ask for, and put back this rank's random state. The model is the
    caller's to load (its own checks). Returns every learning-rate change, the earlier ones first."""
    check_resumable(settings, state["config"], path, resumable)
    for key, part in parts.items():
        if part is not None and state.get(key) is not None:
            part.load_state_dict(state[key])
    changes = state.get("lr_changes", []) + change_learning_rates(
        settings, state["config"], rates, state["epoch"], path
    )
    restore_rng_state(state, seed, device)
    return changes
