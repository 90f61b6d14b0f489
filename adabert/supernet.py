"""The searchable network: K_max cells over every edge and op, one head per candidate depth.

Each forward runs one sampled sub-network: a hard Gumbel-softmax sample picks one op per edge and
one depth, and only the picked ops run (GDAS-style), so a search step costs about one child network.
Straight-through gates (value 1, gradient of the soft sample) carry gradients to all logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from adabert.genotype import Genotype
from adabert.modules import Cell, ClassifierHead, EdgeChoice, Embeddings, ProbeHeads, masked_mean
from search_spaces import SearchSpace
from search_spaces.registry import op_cost


@dataclass
class Sample:
    """One sub-network: an op (or nothing) per edge, a depth, and the straight-through one-hots."""

    edges: list[EdgeChoice]
    depth: int
    depth_gate: torch.Tensor | None = None
    edge_onehot: torch.Tensor | None = None  # [num_edges, num_ops]
    depth_onehot: torch.Tensor | None = None  # [max_cells]


@dataclass
class SupernetOutput:
    logits: torch.Tensor  # [batch, num_labels] from the sampled depth's head
    probe_logits: list[torch.Tensor]  # depth + 1 entries: embedding, then each cell


def straight_through_gumbel(
    logits: torch.Tensor, tau: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard one-hot samples along the last axis with the soft sample's gradient; returns (onehot, index)."""
    uniform = torch.rand(logits.shape, generator=generator, device=logits.device).clamp_(1e-10, 1 - 1e-10)
    gumbel = -torch.log(-torch.log(uniform))
    soft = torch.softmax((logits + gumbel) / tau, dim=-1)
    index = soft.argmax(dim=-1)
    hard = F.one_hot(index, logits.shape[-1]).to(soft.dtype)
    return hard - soft.detach() + soft, index


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


class Supernet(nn.Module):
    def __init__(
        self,
        space: SearchSpace,
        num_labels: int,
        tables: dict[str, torch.Tensor],
        hidden_size: int | None = None,
        max_cells: int | None = None,
        dropout: float = 0.1,
        pair: bool = True,
        cost_seq_len: int = 128,
    ) -> None:
        super().__init__()
        self.space = space
        self.hidden_size = hidden_size or space.hidden_size
        self.max_cells = max_cells or space.max_cells
        self.num_labels = num_labels
        self.pair = pair
        word, position = tables["word_embeddings"], tables["position_embeddings"]
        self.embeddings = Embeddings(
            word.shape[0], position.shape[0], self.hidden_size, dim=word.shape[1], dropout=dropout, pair=pair
        )
        self.embeddings.word.weight.data.copy_(word)
        self.embeddings.position.weight.data.copy_(position)
        self.embeddings.word.weight.requires_grad_(False)
        self.embeddings.position.weight.requires_grad_(False)
        all_ops = [space.ops] * len(space.edges)
        self.cells = nn.ModuleList(
            Cell(space, space.edges, all_ops, self.hidden_size) for _ in range(self.max_cells)
        )
        self.heads = nn.ModuleList(
            ClassifierHead(self.hidden_size, num_labels, dropout) for _ in range(self.max_cells)
        )
        self.probes = ProbeHeads(self.max_cells + 1, self.hidden_size, num_labels)
        self.edge_logits = nn.Parameter(1e-2 * torch.randn(len(space.edges), len(space.ops)))
        self.depth_logits = nn.Parameter(1e-2 * torch.randn(self.max_cells))
        self.register_buffer("op_costs", normalised_op_costs(space, self.hidden_size, cost_seq_len))

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.edge_logits, self.depth_logits]

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in arch]

    def sample(self, tau: float, generator: torch.Generator | None = None) -> Sample:
        """Draw one sub-network; the zero op drops its edge without running anything."""
        edge_onehot, edge_index = straight_through_gumbel(self.edge_logits, tau, generator)
        depth_onehot, depth_index = straight_through_gumbel(self.depth_logits, tau, generator)
        zero = self.space.ops.index(self.space.zero_op) if self.space.zero_op else -1
        edges: list[EdgeChoice] = [
            None if int(i) == zero else (int(i), edge_onehot[e, int(i)]) for e, i in enumerate(edge_index)
        ]
        depth = int(depth_index) + 1
        return Sample(edges, depth, depth_onehot[depth - 1], edge_onehot, depth_onehot)

    def fixed_sample(self, genotype: Genotype) -> Sample:
        """The sub-network of a derived genotype (kept edges with their ops, its depth), ungated."""
        kept = {(e.source, e.target): self.space.op_index(e.op) for e in genotype.edges}
        edges: list[EdgeChoice] = [(kept[edge], None) if edge in kept else None for edge in self.space.edges]
        return Sample(edges, genotype.num_cells)

    def efficiency_loss(self, sample: Sample) -> torch.Tensor:
        """(K / K_max) x mean over edges of the sampled op's cost; differentiable through the gates."""
        depths = torch.arange(1, self.max_cells + 1, dtype=sample.depth_onehot.dtype)
        depth = (sample.depth_onehot * depths).sum()
        per_edge = (sample.edge_onehot * self.op_costs).sum(-1)
        return depth / self.max_cells * per_edge.mean()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None,
        sample: Sample,
    ) -> SupernetOutput:
        inputs, mask = self.embeddings(input_ids, attention_mask, token_type_ids)
        pooled = [masked_mean(inputs[0] + inputs[1] if self.pair else inputs[0], mask)]
        states = inputs
        for cell in self.cells[: sample.depth]:
            out = cell(states, mask, sample.edges)
            states = [states[-1], out]
            pooled.append(masked_mean(out, mask))
        logits = self.heads[sample.depth - 1](pooled[1:])
        if sample.depth_gate is not None:
            logits = logits * sample.depth_gate
        return SupernetOutput(logits, self.probes(pooled))
