"""Choosing the genotype with evidence: argmax of the logits, the best epoch, or measured contributions.

Every score here runs a sub-network inside the supernet with its searched weights on held-out rows
(the rows the architecture steps use, never the dev rows a student is judged on) and returns the
task loss on them beside the task metrics: the loss is smoother than accuracy on a few thousand rows.

* ``last``: the argmax genotype after the last epoch (DARTS).
* ``best_epoch``: the argmax genotype of the epoch whose derived network scored best on the held-out
  rows (the AdaBERT authors keep the best epoch's).
* ``contribution``: perturbation-based selection (DARTS-PT, Wang et al. 2021): starting from the last
  epoch's logits, for every edge of the full cell the op that gives the lowest held-out loss with the
  other edges as they are, and per node the edges whose removal costs most.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from adabert import distributed
from adabert.device import to_device
from adabert.distill import task_loss
from adabert.genotype import Edge, Genotype
from adabert.search.supernet import Sample, Supernet
from adabert.tasks import compute_metrics, predictions_from_logits

SELECTIONS = ("last", "best_epoch", "contribution")
WARM_UP = "uniform warm-up"  # the phase of the epochs with no architecture step


@contextmanager
def batch_statistics(net: torch.nn.Module) -> Iterator[None]:
    """Normalise with each batch's own statistics, leaving the running statistics as they were.

    A supernet's BatchNorm running statistics mix every sub-network that was sampled, so they fit
    none of them; a sub-network judged with them is judged wrongly (the single-path one-shot
    literature recalibrates them per candidate). The batch's own statistics fit the candidate.
    """
    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [{k: v.clone() for k, v in m.state_dict().items()} for m in norms]
    for m in norms:
        m.train()
    try:
        yield
    finally:
        for m, state in zip(norms, saved):
            m.load_state_dict(state)
            m.eval()


@torch.no_grad()
def score(net: Supernet, sample: Sample, loader: Any, task: Any) -> dict[str, float]:
    """Held-out task loss and metrics of one sub-network, over every rank's part of the rows (fp32, on
    the supernet's device; dropout off, BatchNorm on each batch's statistics)."""
    was_training = net.training
    net.eval()
    with batch_statistics(net):
        logits, labels = _outputs(net, sample, loader)
    net.train(was_training)
    parts = distributed.all_gather_object((logits, labels))
    logits = np.concatenate([x for rank_logits, _ in parts for x in rank_logits])
    labels = np.concatenate([y for _, rank_labels in parts for y in rank_labels])
    loss = task_loss(torch.from_numpy(logits), torch.from_numpy(labels), task.is_regression).item()
    return {"loss": loss, **compute_metrics(task, predictions_from_logits(task, logits), labels)}


def _outputs(net: Supernet, sample: Sample, loader: Any) -> tuple[list[np.ndarray], list[np.ndarray]]:
    device = net.edge_logits.device
    logits, labels = [], []
    for batch in loader:
        inputs = to_device({k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}, device)
        out = net(inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"], sample)
        logits.append(out.logits.float().cpu().numpy())
        labels.append(batch["labels"].numpy())
    return logits, labels


def _edges_sample(net: Supernet, ops: list[int | None], depth: int) -> Sample:
    return Sample([None if o is None else (o, None) for o in ops], depth)


def contributions(
    net: Supernet, genotype: Genotype, loader: Any, task: Any, edges_per_node: int = 2
) -> tuple[Genotype, list[dict[str, Any]]]:
    """DARTS-PT-style selection at the genotype's depth; returns the genotype and per-edge evidence.

    Pass 1, edge by edge over the full cell: the op (not zero) with the lowest held-out loss while the
    other edges keep their current op. Pass 2: per node, the loss when each edge is dropped; the
    ``edges_per_node`` edges whose removal costs most are kept.
    """
    space, depth = net.space, genotype.num_cells
    zero = net.zero_index
    logits = net.edge_logits.detach().clone()
    if zero >= 0:
        logits[:, zero] = -float("inf")
    ops: list[int | None] = logits.argmax(-1).tolist()
    evidence: list[dict[str, Any]] = []
    candidates = [o for o in range(len(space.ops)) if o != zero]
    for e in range(len(space.edges)):
        losses = {}
        for o in candidates:
            trial = list(ops)
            trial[e] = o
            losses[space.ops[o]] = score(net, _edges_sample(net, trial, depth), loader, task)["loss"]
        ops[e] = space.ops.index(min(losses, key=losses.get))
        evidence.append({"edge": list(space.edges[e]), "op_loss": losses, "op": space.ops[ops[e]]})
    full = score(net, _edges_sample(net, ops, depth), loader, task)["loss"]
    kept = []
    for node in range(space.num_input_nodes, space.num_input_nodes + space.num_nodes):
        incoming = [i for i, (_, dst) in enumerate(space.edges) if dst == node]
        cost = {}
        for i in incoming:
            trial = list(ops)
            trial[i] = None
            cost[i] = score(net, _edges_sample(net, trial, depth), loader, task)["loss"] - full
            evidence[i]["removal_cost"] = cost[i]
        for i in sorted(sorted(incoming, key=lambda i: -cost[i])[:edges_per_node]):
            kept.append(Edge(space.edges[i][0], node, space.ops[ops[i]]))
    chosen = Genotype(
        space=genotype.space,
        num_cells=depth,
        edges=tuple(kept),
        hidden_size=genotype.hidden_size,
        num_input_nodes=genotype.num_input_nodes,
        num_nodes=genotype.num_nodes,
        embedding=genotype.embedding,
    ).validate("selected genotype")
    return chosen, evidence


def best_epoch(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The epoch record whose derived network had the lowest held-out loss (the latest on ties).

    Only epochs after the uniform warm-up compete when there are any: during the warm-up no
    architecture step has run, so the derived network is the argmax of the logits' random start.
    """
    searched = [r for r in history if r.get("phase") != WARM_UP] or history
    return min(reversed(searched), key=lambda r: r["heldout"]["loss"])


def select(
    how: str,
    net: Supernet,
    history: list[dict[str, Any]],
    loader: Any,
    task: Any,
    log: Callable[..., None] | None = None,
) -> tuple[Genotype, dict[str, Any]]:
    """The genotype chosen by ``how`` and what it was chosen on."""
    last = Genotype.from_dict(history[-1]["genotype"])
    if how == "last":
        return last, {"selection": "last", "epoch": history[-1]["epoch"]}
    if how == "best_epoch":
        record = best_epoch(history)
        return Genotype.from_dict(record["genotype"]), {
            "selection": "best_epoch",
            "epoch": record["epoch"],
            "heldout": record["heldout"],
        }
    if how == "contribution":
        genotype, evidence = contributions(net, last, loader, task)
        return genotype, {"selection": "contribution", "epoch": history[-1]["epoch"], "edges": evidence}
    raise ValueError(f"unknown genotype selection {how!r}: expected one of {', '.join(SELECTIONS)}")
