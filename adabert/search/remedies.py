"""Counter-measures against the one-shot collapse onto parameter-free cells, each a small named piece.

Ops with no parameters (pooling, identity) are useful at once, get sampled more, get trained more,
and win; an efficiency term adds a constant push the same way. The search uses, by config:

* uniform warm-up (single-path one-shot, Guo et al. 2020): the first epochs sample every op and
  depth uniformly with no architecture steps, so every op's weights train equally before any is
  judged (:meth:`Supernet.uniform_sample`);
* a temperature that starts high and anneals (GDAS): samples stay close to uniform while the
  weights catch up (:func:`temperature`);
* dropout on the outputs of parameter-free ops that decays to zero over the search (P-DARTS);
* an auxiliary skip around each cell whose weight decays to zero (DARTS-), so the candidate
  identity ops need not carry the gradient alone;
* the beta-DARTS regulariser, ``lambda x mean_e logsumexp(alpha_e)`` on the edge logits, which keeps
  the logits of all ops on one scale (:func:`beta_regulariser`);
* the weights' learning rate annealed over the search phase (DARTS's cosine schedule,
  :func:`cosine`): at a constant rate the supernet's held-out loss wanders by a few percent from
  epoch to epoch, and the architecture steps follow that noise.

The decaying ones follow :func:`decayed` over the architecture phase (after the warm-up).
"""

from __future__ import annotations

import math

import torch


def temperature(start: float, end: float, anneal_fraction: float, step: int, total_steps: int) -> float:
    """Exponential anneal from ``start`` to ``end`` over the first ``anneal_fraction`` of the steps."""
    span = max(1.0, anneal_fraction * total_steps)
    progress = min(1.0, step / span)
    return start * (end / start) ** progress


def decayed(initial: float, step: int, first: int, total: int) -> float:
    """``initial`` at step ``first`` falling linearly to 0 at the last step (``initial`` before ``first``)."""
    if initial == 0 or step <= first:
        return initial
    return initial * max(0.0, 1.0 - (step - first) / max(1, total - first))


def cosine(start: float, end: float, step: int, first: int, total: int) -> float:
    """``start`` until step ``first``, then a cosine from ``start`` to ``end`` at step ``total``."""
    if step <= first:
        return start
    progress = min(1.0, (step - first) / max(1, total - first))
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * progress))


def beta_regulariser(edge_logits: torch.Tensor) -> torch.Tensor:
    """beta-DARTS (Ye et al. 2022): mean over edges of the logsumexp of the edge's op logits."""
    return torch.logsumexp(edge_logits, dim=-1).mean()
