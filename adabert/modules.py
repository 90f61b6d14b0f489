"""Building blocks shared by the supernet and the compact student.

One ``Cell`` class serves both: in the supernet every edge of the full DAG holds every candidate
operation and a per-step choice picks one; in the student each kept edge holds its single chosen
operation. Sharing the class keeps the two networks numerically identical for the same choice, so
searched weights transfer to the student by name.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from search_spaces import SearchSpace, get_op

EdgeChoice = tuple[int, torch.Tensor | None] | None
"""Per edge: ``None`` drops the edge; ``(op_index, gate)`` runs that op, scaled by ``gate`` when given."""


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens of ``x [batch, channels, tokens]`` with ``mask [batch, tokens]``."""
    mask = mask.to(x.dtype).unsqueeze(1)
    return (x * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)


def segment_masks(
    attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None, pair: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks of the two cell inputs: the two sentences of a pair, or the one sentence twice."""
    mask = attention_mask.to(torch.float32)
    if not pair or token_type_ids is None:
        return mask, mask
    second = (token_type_ids > 0).to(mask.dtype) * mask
    return mask - second, second


def segment_positions(attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
    """Position ids restarting at 0 in each segment, so each sentence is embedded on its own."""
    if token_type_ids is None:
        return (attention_mask.cumsum(-1) - 1).clamp(min=0).long()
    positions = torch.zeros_like(attention_mask, dtype=torch.long)
    for segment in (0, 1):
        inside = ((token_type_ids == segment) & (attention_mask > 0)).long()
        positions = positions + inside * (inside.cumsum(-1) - 1).clamp(min=0)
    return positions


class Cell(nn.Module):
    """A DAG of nodes: input nodes, then intermediate nodes summing one op per incoming edge.

    ``edges`` lists (source, target) pairs; ``candidates[i]`` the op names edge ``i`` may run. The
    output is a learned softmax mix of the intermediate nodes. Padding stays zero after every node.
    """

    def __init__(
        self,
        space: SearchSpace,
        edges: Sequence[tuple[int, int]],
        candidates: Sequence[Sequence[str]],
        hidden_size: int,
    ) -> None:
        super().__init__()
        self.num_input_nodes = space.num_input_nodes
        self.num_nodes = space.num_nodes
        self.edges = [tuple(e) for e in edges]
        self.candidates = [tuple(c) for c in candidates]
        self.ops = nn.ModuleList(
            nn.ModuleList(space.build_op(name, hidden_size) for name in names) for names in self.candidates
        )
        self.takes_mask = [[get_op(name).takes_mask for name in names] for names in self.candidates]
        self.node_mix = nn.Parameter(torch.zeros(space.num_nodes))

    def forward(
        self,
        inputs: Sequence[torch.Tensor],
        mask: torch.Tensor,
        choices: Sequence[EdgeChoice] | None = None,
    ) -> torch.Tensor:
        states = list(inputs)
        mask = mask.unsqueeze(1)
        for node in range(self.num_input_nodes, self.num_input_nodes + self.num_nodes):
            total = None
            for index, (source, target) in enumerate(self.edges):
                if target != node:
                    continue
                choice = (0, None) if choices is None else choices[index]
                if choice is None:
                    continue
                op_index, gate = choice
                op = self.ops[index][op_index]
                out = op(states[source], mask) if self.takes_mask[index][op_index] else op(states[source])
                if gate is not None:
                    out = out * gate
                total = out if total is None else total + out
            states.append(torch.zeros_like(states[0]) if total is None else total * mask)
        weights = torch.softmax(self.node_mix, dim=0)
        return sum(w * s for w, s in zip(weights, states[self.num_input_nodes :]))


class ClassifierHead(nn.Module):
    """Mean-pool each cell output, attend over cells, tanh, dropout, linear (AdaBERT's head)."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float) -> None:
        super().__init__()
        self.score = nn.Linear(hidden_size, 1)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, num_labels)

    def forward(self, pooled: Sequence[torch.Tensor]) -> torch.Tensor:
        stacked = torch.stack(list(pooled), dim=1)  # [batch, cells, hidden]
        attention = torch.softmax(self.score(stacked), dim=1)
        summary = torch.tanh((attention * stacked).sum(dim=1))
        return self.out(self.dropout(summary))


class ProbeHeads(nn.Module):
    """Student probes for hierarchical distillation: one (tanh, linear) classifier per output level."""

    def __init__(self, count: int, hidden_size: int, num_labels: int) -> None:
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(hidden_size, num_labels) for _ in range(count))

    def forward(self, pooled: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [head(torch.tanh(p)) for head, p in zip(self.heads, pooled)]


class PrunedLayerNorm(nn.LayerNorm):
    """A LayerNorm over ``width`` features of which only ``hidden_size`` are stored; the rest are zeros.

    What a LayerNorm becomes when hidden dimensions whose inputs, scale and shift were all pruned to
    zero are removed: the statistics still count them (as zeros), so the outputs are unchanged.
    """

    def __init__(self, hidden_size: int, width: int, eps: float = 1e-5) -> None:
        if width < hidden_size:
            raise ValueError(f"width {width} must be at least hidden_size {hidden_size}")
        super().__init__(hidden_size, eps=eps)
        self.width = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.sum(-1, keepdim=True) / self.width
        centred = x - mean
        var = ((centred**2).sum(-1, keepdim=True) + (self.width - x.shape[-1]) * mean**2) / self.width
        return centred * torch.rsqrt(var + self.eps) * self.weight + self.bias

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, width={self.width}"


class Embeddings(nn.Module):
    """Word + per-segment position embeddings, projected to the cell width, LayerNorm, dropout.

    ``norm_width`` (> ``hidden_size``): hidden dimensions were pruned away; see ``PrunedLayerNorm``.

    In the search the tables are the teacher's (frozen, ``dim`` = teacher width) and a learned
    projection maps them to ``hidden_size``; the student owns ``hidden_size``-wide tables made by
    folding that projection in (``projected_tables``), so it needs no projection at all.
    """

    def __init__(
        self,
        vocab_size: int,
        max_positions: int,
        hidden_size: int,
        dim: int | None = None,
        dropout: float = 0.1,
        pair: bool = True,
        norm_width: int | None = None,
    ) -> None:
        super().__init__()
        dim = dim or hidden_size
        self.pair = pair
        self.word = nn.Embedding(vocab_size, dim)
        self.position = nn.Embedding(max_positions, dim)
        self.projection = nn.Linear(dim, hidden_size) if dim != hidden_size else None
        pruned = norm_width not in (None, hidden_size)
        self.norm = PrunedLayerNorm(hidden_size, norm_width) if pruned else nn.LayerNorm(hidden_size)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Return the two cell inputs ``[batch, hidden, tokens]`` and the float token mask."""
        positions = segment_positions(attention_mask, token_type_ids if self.pair else None)
        x = self.word(input_ids) + self.position(positions)
        if self.projection is not None:
            x = self.projection(x)
        x = self.dropout(self.norm(x)).transpose(1, 2)
        first, second = segment_masks(attention_mask, token_type_ids, self.pair)
        return [x * first.unsqueeze(1), x * second.unsqueeze(1)], attention_mask.to(x.dtype)

    @torch.no_grad()
    def projected_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Word and position tables already mapped to ``hidden_size`` (projection folded in)."""
        word, position = self.word.weight, self.position.weight
        if self.projection is None:
            return word.clone(), position.clone()
        w, b = self.projection.weight, self.projection.bias
        return word @ w.T, position @ w.T + b
