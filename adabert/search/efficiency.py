"""What a sampled sub-network costs, as a differentiable loss term for the architecture step.

Two terms, chosen by ``--efficiency``:

* ``budget`` (default): the user states what the student may cost (``--target-speedup`` over the
  teacher, ``--target-latency-ms`` or ``--target-params``) and the loss is TuNAS's absolute reward
  ``|cost / target - 1|``: zero at the target and growing on both sides, so the search spends the
  budget instead of driving the cost to zero. Latency comes from the measured table
  (:mod:`adabert.search.latency`).
* ``paper``: AdaBERT's ``(K / K_max) x mean over edges of sum_o y_o cost(o)``, with each op's cost the
  average of softmaxes of its size and its FLOPs; it always pushes towards cheaper ops.

The table sums parts timed alone; the selected genotype's student is then timed whole
(:meth:`BudgetCost.check`) and fitted again where the sum was too low.

Both read the straight-through one-hots of a sample, so their value is the sampled network's cost
and their gradient reaches the edge and depth logits. A cell keeps ``edges_per_node`` edges per node
after derivation, so a sample's cost counts that many edges at its mean edge cost.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from adabert.genotype import Edge, Genotype
from adabert.search.latency import LatencyTable
from adabert.search.supernet import Sample
from search_spaces import SearchSpace
from search_spaces.registry import op_cost

# AdaBERT scores an op by softmax(params / 1e5) and softmax(FLOPs / 1e7) over the ops, averaged. Those
# constants fit its 128-channel, 128-token setting, where the largest op (conv7) scores 1.15 and 2.94.
# Scaling by the space's largest op instead keeps exactly those scores there and any other width sane.
PARAM_SCALE, FLOP_SCALE = 1.15, 2.94


def normalised_op_costs(space: SearchSpace, hidden_size: int, seq_len: int) -> torch.Tensor:
    """Cost per op (sums to 1, cheapest for parameter-free ops): AdaBERT's averaged size/FLOP softmaxes."""
    costs = [op_cost(name, hidden_size, seq_len) for name in space.ops]
    params = torch.tensor([float(c.params) for c in costs])
    flops = torch.tensor([float(c.flops) for c in costs])
    by_params = torch.softmax(PARAM_SCALE * params / params.max().clamp(min=1), 0)
    by_flops = torch.softmax(FLOP_SCALE * flops / flops.max().clamp(min=1), 0)
    return 0.5 * (by_params + by_flops)


def _depths(sample: Sample) -> torch.Tensor:
    onehot = sample.depth_onehot
    k = torch.arange(1, len(onehot) + 1, dtype=onehot.dtype, device=onehot.device)
    return (sample.depth_onehot * k).sum()


class PaperCost:
    """AdaBERT's efficiency term: always lower for fewer cells and cheaper ops."""

    def __init__(self, space: SearchSpace, hidden_size: int, seq_len: int, max_cells: int) -> None:
        self.op_costs = normalised_op_costs(space, hidden_size, seq_len)
        self.max_cells = max_cells

    def to(self, device: torch.device | str) -> PaperCost:
        """The op costs on the device of the samples (the architecture logits)."""
        self.op_costs = self.op_costs.to(device)
        return self

    def loss(self, sample: Sample) -> torch.Tensor:
        per_edge = (sample.edge_onehot * self.op_costs).sum(-1)
        return _depths(sample) / self.max_cells * per_edge.mean()

    def describe(self) -> dict[str, Any]:
        return {"kind": "paper", "op_costs": self.op_costs.tolist()}


class BudgetCost:
    """``|cost / target - 1|`` of the sampled network, cost in milliseconds (table) or parameters.

    ``also``: further latency limits by batch size (milliseconds), which the derivation must meet as
    well: a student fast at batch 1 may still be slow at batch 32, where the convolutions dominate.
    """

    def __init__(
        self,
        space: SearchSpace,
        table: LatencyTable,
        target: float,
        unit: str,
        batch: int,
        edges_per_node: int = 2,
        also: dict[int, float] | None = None,
        speedup: float | None = None,
    ) -> None:
        if target <= 0 or any(t <= 0 for t in (also or {}).values()):
            raise ValueError(f"the efficiency targets must be positive, got {target} and {also}")
        self.target, self.unit, self.batch, self.table = target, unit, batch, table
        self.speedup = speedup  # the limits are the teacher's time over this: checked against it, timed
        self.also = {b: t for b, t in (also or {}).items() if b != batch} if unit == "ms" else {}
        self.edges = edges_per_node * space.num_nodes
        b = str(batch)
        if unit == "ms":
            per_op = [table.ops[name][b] for name in space.ops]
            self.fixed, self.cell = table.base[b], table.cell[b]
        else:  # parameters of the cells (the embedding table and head are the same for every sample)
            per_op = [float(table.params[name]) for name in space.ops]
            self.fixed, self.cell = 0.0, 0.0
        self.space, self.ops = space, list(space.ops)
        # measured / predicted per batch, raised by ``check`` where a built student is slower than the
        # table says (the additive table misses what deep cells cost at large batches)
        self.correction = {b: 1.0 for b in self.limits()}
        self.per_op = torch.tensor(per_op, dtype=torch.float32)
        if space.zero_op is not None:
            self.per_op[space.ops.index(space.zero_op)] = 0.0

    def to(self, device: torch.device | str) -> BudgetCost:
        """The per-op costs on the device of the samples (the table itself was measured on the CPU)."""
        self.per_op = self.per_op.to(device)
        return self

    def cost(self, sample: Sample) -> torch.Tensor:
        per_edge = (sample.edge_onehot * self.per_op).sum(-1).mean()
        return self.fixed + _depths(sample) * (self.cell + self.edges * per_edge)

    def loss(self, sample: Sample) -> torch.Tensor:
        return (self.cost(sample) / self.target - 1).abs()

    def limits(self) -> dict[int, float]:
        """Milliseconds by batch size the derived genotype must stay within (none for parameters)."""
        return {self.batch: self.target, **self.also} if self.unit == "ms" else {}

    def predicted_ms(self, genotype: Genotype, batch: int) -> float:
        """The table's milliseconds of the student of ``genotype`` at ``batch``, before any correction."""
        return self.table.predict(genotype, batch)  # derived: never the zero op

    def genotype_cost(self, genotype: Genotype) -> float:
        """The cost of a derived genotype, in the target's unit."""
        if self.unit == "ms":
            return self.correction[self.batch] * self.predicted_ms(genotype, self.batch)
        per_op = self.per_op.tolist()
        return sum(per_op[self.ops.index(e.op)] for e in genotype.edges) * genotype.num_cells

    def budget_used(self, genotype: Genotype) -> float:
        """The largest fraction of any limit the genotype spends (at most 1: within every limit)."""
        used = self.genotype_cost(genotype) / self.target
        for batch, target in self.also.items():
            used = max(used, self.correction[batch] * self.predicted_ms(genotype, batch) / target)
        return used

    def check(
        self,
        genotype: Genotype,
        edge_logits: torch.Tensor,
        depth_logits: torch.Tensor,
        measure: Callable[[Genotype], dict[int, dict[str, float]]],
        tries: int = 4,
        tolerance: float = 0.1,
    ) -> tuple[Genotype, list[dict[str, Any]]]:
        """The genotype whose built student, timed, stays within every limit, and each timing.

        The table predicts a student as a sum of parts timed alone; deep cells at batch 32 can cost
        twice that. ``measure`` times the student (``student`` ms per batch size) and, for a speedup
        budget, the teacher beside it at one batch size (``teacher``): the table may have been measured
        under another load, so its limits are scaled by the teacher's time now over the table's
        (``drift``). Where the student spends more than ``tolerance`` over its limit, the table's
        predictions at that batch are scaled by how far they fell short, and the genotype is fitted
        again, at most ``tries`` times."""
        timings = []
        for attempt in range(tries):
            measured = measure(genotype)
            now = [t["teacher"] / self.table.teacher[str(b)] for b, t in measured.items() if "teacher" in t]
            drift = now[0] if now and self.speedup else 1.0
            row: dict[str, Any] = {"genotype": genotype.to_dict(), "batches": {}, "drift": drift}
            over = False
            for batch, table_limit in self.limits().items():
                predicted, times = self.predicted_ms(genotype, batch), measured[batch]
                limit = table_limit * drift
                row["batches"][str(batch)] = {**{f"{k}_ms": v for k, v in times.items()},
                                              "predicted_ms": predicted, "limit_ms": limit}  # fmt: skip
                used, expected = times["student"] / limit, predicted / table_limit
                if used > 1 + tolerance:
                    over = True
                    self.correction[batch] = max(self.correction[batch], used / expected)
            row["within"] = not over
            timings.append(row)
            if not over or attempt == tries - 1:
                break
            fitted = self.fit(genotype, edge_logits, depth_logits)
            if fitted == genotype:
                break  # nothing cheaper left
            genotype = fitted
        return genotype, timings

    def fit(self, genotype: Genotype, edge_logits: torch.Tensor, depth_logits: torch.Tensor) -> Genotype:
        """The derived genotype brought within the target, giving up as little of the logits as it can.

        While the genotype costs more than the target, take the cheapest step in logits per unit of
        cost saved: one cell fewer, or one kept edge's op swapped for a cheaper one (never the zero op).
        The search learns which ops the task prefers; the budget decides how many of them it can have
        (a budget-constrained derivation, as hardware-aware NAS derives under a latency limit).
        """
        edge_logits, depth_logits = edge_logits.detach().cpu(), depth_logits.detach().cpu()
        index = {edge: i for i, edge in enumerate(self.space.edges)}
        cost = self.budget_used(genotype)
        while cost > 1:
            steps = []  # (logit given up per unit saved, genotype)
            if genotype.num_cells > 1:
                k = genotype.num_cells
                fewer = replace(genotype, num_cells=k - 1)
                steps.append((float(depth_logits[k - 1] - depth_logits[k - 2]), fewer))
            for n, edge in enumerate(genotype.edges):
                row = edge_logits[index[(edge.source, edge.target)]]
                now = self.ops.index(edge.op)
                for o, name in enumerate(self.ops):
                    if name == self.space.zero_op or o == now:
                        continue
                    edges = list(genotype.edges)
                    edges[n] = Edge(edge.source, edge.target, name)
                    steps.append((float(row[now] - row[o]), replace(genotype, edges=tuple(edges))))
            if not steps:
                break  # nothing cheaper left: the cheapest genotype the logits allow
            scored = []
            for given_up, candidate in steps:
                saved = cost - self.budget_used(candidate)
                if saved > 0:
                    scored.append((max(given_up, 0.0) / saved, -saved, candidate))
            if not scored:
                break
            genotype = min(scored, key=lambda t: (t[0], t[1]))[2]
            cost = self.budget_used(genotype)
        return genotype

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "budget",
            "target": self.target,
            "unit": self.unit,
            "batch": self.batch,
            "also": {str(b): t for b, t in self.also.items()},
            "per_op": self.per_op.tolist(),
            "fixed": self.fixed,
            "cell": self.cell,
            "correction": {str(b): c for b, c in self.correction.items()},
        }
