"""Has the supernet learned the task? Evidence before any architecture is judged.

An architecture step moves the logits towards the ops whose paths predict the held-out rows best;
while the shared weights predict nothing, that is noise, and a cell derived from it is a random draw
within the budget. So the supernet itself is judged, on rows that no weight or architecture step
trains on, by its mean task loss over several sampled paths (uniform ones in the weight phase, drawn
from the architecture distribution after it), against the trivial predictor's loss: the cross-entropy
of the training label prior for classification, the variance around the training mean for
regression.

The weight phase ends on that evidence (:func:`weight_phase_verdict`): once its best loss is clearly
below the trivial one and has stopped improving, or at a cap, saying which; the search then goes on
from the weights of its best epoch (early stopping: on a small task the supernet overfits its rows,
and its held-out loss turns up while its training loss still falls), and when the phase ended well
above that epoch (``OVERFIT_MARGIN``) it keeps them fixed, stepping the architecture alone. A search
whose supernet never beat the trivial predictor is flagged (:func:`blind_search`): its cell was chosen
without task signal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from adabert.search.selection import score
from adabert.search.supernet import Sample, Supernet

BLIND_MARGIN = 0.02  # a held-out loss within 2% of the trivial one is noise, not task signal
OVERFIT_MARGIN = 0.02  # a weight phase that ended over 2% above its best epoch overfit its rows
BLIND = (
    "the cell was chosen without task signal: the supernet never predicted held-out rows better "
    "than the trivial predictor"
)
ENDED_BLIND = (
    "the search ended no better than the trivial predictor: its last epoch's supernet predicted held-out "
    "rows no better than the label prior, so the final architecture steps had no task signal (lower "
    "--w-lr / --arch-lr, or search longer)"
)


def trivial_loss(train_labels: np.ndarray, labels: np.ndarray, num_labels: int, regression: bool) -> float:
    """The task loss on ``labels`` of a constant prediction fitted to ``train_labels``: the training
    label prior's cross-entropy (add-one smoothed), or the squared error around the training mean."""
    if regression:
        return float(np.mean((labels.astype(np.float64) - float(np.mean(train_labels))) ** 2))
    counts = np.bincount(train_labels.astype(np.int64), minlength=num_labels) + 1.0
    prior = counts / counts.sum()
    return float(-np.mean(np.log(prior[labels.astype(np.int64)])))


def majority_accuracy(train_labels: np.ndarray, labels: np.ndarray) -> float:
    """Accuracy on ``labels`` of always answering the most frequent training label."""
    majority = np.bincount(train_labels.astype(np.int64)).argmax()
    return float(np.mean(labels.astype(np.int64) == majority))


def judge_paths(net: Supernet, count: int, seed: int, uniform: bool) -> list[Sample]:
    """``count`` sub-networks, the same ones for the same seed and logits: uniform draws (every op and
    depth alike) or draws from the architecture distribution (one op per edge by its softmax). Both
    are taken at the same quantiles for a seed (common random numbers): the first search epochs judge
    the paths the weight phase judged, so a change of the loss is the supernet's, not the draw's."""
    generator = torch.Generator().manual_seed(seed)
    draws = [
        (torch.rand(len(net.space.edges), generator=generator), float(torch.rand(1, generator=generator)))
        for _ in range(count)
    ]
    return [net.quantile_sample(edges, depth, uniform) for edges, depth in draws]


def supernet_score(net: Supernet, paths: list[Sample], loader: Any, task: Any) -> dict[str, float]:
    """The mean over ``paths`` of each path's held-out loss and metrics."""
    scores = [score(net, path, loader, task) for path in paths]
    return {key: float(np.mean([s[key] for s in scores])) for key in scores[0]}


@dataclass(frozen=True)
class WeightPhaseRule:
    """When the weight phase (uniform sampling, no architecture steps) may end.

    ``min_epochs``: never before; ``max_epochs``: always by then; in between it ends once the held-out
    loss is at most ``(1 - margin) x`` the trivial loss and none of the last ``patience`` epochs
    improved by ``min_improvement`` (relative) on the best before them: one noisy epoch of a supernet
    still learning does not end it. ``fixed``: exactly ``min_epochs``, whatever the evidence.
    """

    min_epochs: int
    max_epochs: int
    margin: float = 0.05
    min_improvement: float = 0.01
    patience: int = 2
    fixed: bool = False


def weight_phase_verdict(losses: list[float], trivial: float, rule: WeightPhaseRule) -> tuple[bool, str]:
    """Whether the weight phase ends after the epochs whose held-out losses are ``losses``, and why.
    Learned means its best epoch so far was clearly below the trivial loss: a supernet that has begun
    to overfit has learned, and more epochs only take it further from its best."""
    epochs, best = len(losses), min(losses)
    learned = best <= (1 - rule.margin) * trivial
    ratio = (
        f"held-out loss {losses[-1]:.4f}, best {best:.4f} = {best / trivial:.3f} x the trivial {trivial:.4f}"
    )
    if epochs < rule.min_epochs:
        return False, ""
    if rule.fixed:
        return True, f"fixed weight phase of {epochs} epoch(s); {ratio}"
    recent, before = losses[-rule.patience :], losses[: -rule.patience]
    if learned and before and min(recent) > min(before) * (1 - rule.min_improvement):
        return True, f"learned and stopped improving after {epochs} epoch(s): {ratio}"
    if epochs >= rule.max_epochs:
        state = "learned" if learned else "NOT learned: the supernet is no better than the trivial predictor"
        return True, f"cap of {rule.max_epochs} epoch(s) reached, {state}; {ratio}"
    return False, ""


def blind_search(history: list[dict[str, Any]]) -> bool:
    """True when no epoch's supernet scored clearly below the trivial loss on the held-out rows
    (records from before the supernet was judged carry no ``supernet`` entry: unknown, not blind)."""
    judged = [r["supernet"] for r in history if r.get("supernet")]
    return bool(judged) and all(j["loss"] > (1 - BLIND_MARGIN) * j["trivial_loss"] for j in judged)


def summary(evidence: dict[str, Any]) -> str:
    """One paragraph for the report and the model card, from ``selection.json``'s ``supernet``."""
    if "trivial_loss" not in evidence:
        return "The supernet was not judged on held-out rows (a search from before adabert did)."
    trivial, warm, search = evidence["trivial_loss"], evidence.get("warmup_loss"), evidence["search_losses"]
    parts = ["The supernet's held-out loss (mean over sampled paths, on rows no step trained on)"]
    if warm is not None:
        parts.append(f" was {warm:.4f} after {evidence['warmup_epochs_used']} weight-phase epoch(s)")
    if search:
        parts.append(f", {min(search):.4f} to {max(search):.4f} over the {len(search)} search epoch(s)")
    parts.append(f"; the trivial predictor's is {trivial:.4f}.")
    if evidence.get("weight_phase_end"):
        parts.append(f" Weight phase: {evidence['weight_phase_end']}.")
    if evidence.get("blind"):
        parts.append(f" **Warning: {BLIND}.**")
    elif evidence.get("ended_blind"):
        parts.append(f" **Warning: {ENDED_BLIND}.**")
    return "".join(parts)
