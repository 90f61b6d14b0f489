"""The searchable network: K_max cells over every edge and op, one head per candidate depth.

Each forward runs one sampled sub-network: a hard Gumbel-softmax sample picks one op per edge and
one depth, and only the picked ops run (GDAS-style), so a search step costs about one child network.
Straight-through gates (value 1, gradient of the soft sample) carry gradients to all logits. A
uniform sample (single-path one-shot) picks every op and depth with equal chance and no gates, to
train all ops' weights fairly before any of them is judged. The classifier head is shared by every
depth (``shared_head``), or one per depth: a head per depth sees only the steps that sample its
depth, an eighth of them with 8 cells, and the supernet then learns the task far later.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from adabert.genotype import Genotype
from adabert.modules import Cell, EdgeChoice, Embeddings, ProbeHeads, build_head, head_kind, masked_mean
from search_spaces import SearchSpace


@dataclass
class Sample:
    """One sub-network: an op (or nothing) per edge, a depth, and the straight-through one-hots."""

    edges: list[EdgeChoice]
    depth: int
    depth_gate: torch.Tensor | None = None
    edge_onehot: torch.Tensor | None = None  # [num_edges, num_ops]
    depth_onehot: torch.Tensor | None = None  # [max_cells]

    @property
    def ops(self) -> list[int | None]:
        """The op index of each edge (None: dropped)."""
        return [None if choice is None else choice[0] for choice in self.edges]


@dataclass
class SupernetOutput:
    logits: torch.Tensor  # [batch, num_labels] from the sampled depth's head
    probe_logits: list[torch.Tensor]  # depth + 1 entries: embedding, then each cell


def straight_through_gumbel(
    logits: torch.Tensor, tau: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard one-hot samples along the last axis with the soft sample's gradient; returns (onehot, index).

    The uniform draws come from ``generator`` (a CPU generator; the CPU's default one without it) and
    are then moved to the logits' device, so a seed gives the same draws on every device.
    """
    uniform = torch.rand(logits.shape, generator=generator).clamp_(1e-10, 1 - 1e-10).to(logits.device)
    gumbel = -torch.log(-torch.log(uniform))
    soft = torch.softmax((logits + gumbel) / tau, dim=-1)
    index = soft.argmax(dim=-1)
    hard = F.one_hot(index, logits.shape[-1]).to(soft.dtype)
    return hard - soft.detach() + soft, index


def share_kernels(ops: nn.ModuleList) -> int:
    """Single-Path NAS superkernels: on one edge, every 1-D convolution of a family (the same channels,
    dilation and groups, no bias) uses the centre of the family's widest kernel, so training conv7
    trains conv3's taps too and each kernel learns from every step that picks any of the family.

    The smaller convolutions keep no weight of their own: each forward slices the wide one, their
    ``state_dict`` entries are the slices (so a student starts from them as from any searched op),
    and loading drops those entries again. Returns the number of convolutions tied.
    """
    families: dict[tuple, list[nn.Conv1d]] = {}
    for op in ops:
        for conv in op.modules():
            if isinstance(conv, nn.Conv1d) and conv.bias is None and conv.kernel_size[0] % 2 == 1:
                key = (conv.in_channels, conv.out_channels, conv.dilation, conv.groups)
                families.setdefault(key, []).append(conv)
    tied = 0
    for convs in families.values():
        wide = max(convs, key=lambda c: c.kernel_size[0])
        for conv in convs:
            if conv is not wide and "weight" in conv._parameters:
                _tie(conv, wide)
                tied += 1
    return tied


def _tie(conv: nn.Conv1d, wide: nn.Conv1d) -> None:
    start = (wide.kernel_size[0] - conv.kernel_size[0]) // 2
    taps = slice(start, start + conv.kernel_size[0])
    del conv.weight

    def slice_weight(module: nn.Module, args: tuple) -> None:
        module.weight = wide.weight[:, :, taps]

    def save(module: nn.Module, state: dict, prefix: str, local_metadata: dict) -> None:
        state[prefix + "weight"] = wide.weight[:, :, taps].detach().clone()

    def load(state: dict, prefix: str, *args: object) -> None:
        state.pop(prefix + "weight", None)

    conv.register_forward_pre_hook(slice_weight)
    conv.weight = wide.weight[:, :, taps]
    conv._register_state_dict_hook(save)
    conv._register_load_state_dict_pre_hook(load)


class Supernet(nn.Module):
    """Every cell holds every op on every edge; the architecture logits are shared by all cells.

    ``tables``: ``word`` [V, d] and ``position`` [P, d] start the embeddings; when ``d`` is not the
    cell width a learned projection maps them (the teacher's input tables), otherwise they are used
    as they are (the distilled table). ``train_tables``: whether the search trains them.
    """

    def __init__(
        self,
        space: SearchSpace,
        num_labels: int,
        tables: dict[str, torch.Tensor],
        hidden_size: int | None = None,
        max_cells: int | None = None,
        dropout: float = 0.1,
        pair: bool = True,
        head: str = "auto",
        train_tables: bool = False,
        shared_head: bool = False,
        cell_norm: bool = True,
        superkernel: bool = False,
    ) -> None:
        super().__init__()
        self.space = space
        self.hidden_size = hidden_size or space.hidden_size
        self.max_cells = max_cells or space.max_cells
        self.num_labels = num_labels
        self.pair = pair
        self.head = head_kind(head, pair)
        word, position = tables["word"], tables["position"]
        self.embeddings = Embeddings(
            word.shape[0], position.shape[0], self.hidden_size, dim=word.shape[1], dropout=dropout, pair=pair
        )
        for table, values in ((self.embeddings.word, word), (self.embeddings.position, position)):
            table.weight.data.copy_(values)
            table.weight.requires_grad_(train_tables)
        all_ops = [space.ops] * len(space.edges)
        self.cells = nn.ModuleList(
            Cell(space, space.edges, all_ops, self.hidden_size) for _ in range(self.max_cells)
        )
        self.heads = nn.ModuleList(
            build_head(self.head, self.hidden_size, num_labels, dropout, cell_norm)
            for _ in range(1 if shared_head else self.max_cells)
        )
        if superkernel:
            for cell in self.cells:
                for edge_ops in cell.ops:
                    share_kernels(edge_ops)
        self.probes = ProbeHeads(self.max_cells + 1, self.hidden_size, num_labels)
        self.edge_logits = nn.Parameter(1e-2 * torch.randn(len(space.edges), len(space.ops)))
        self.depth_logits = nn.Parameter(1e-2 * torch.randn(self.max_cells))
        cell = self.cells[0]
        self.register_buffer(
            "parameter_free",
            torch.tensor([not any(True for _ in cell.ops[0][o].parameters()) for o in range(len(space.ops))]),
            persistent=False,
        )

    @property
    def zero_index(self) -> int:
        return self.space.ops.index(self.space.zero_op) if self.space.zero_op else -1

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.edge_logits, self.depth_logits]

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in arch]

    def _sample(self, edge_index: list[int], depth: int, edge_onehot=None, depth_onehot=None) -> Sample:
        edges: list[EdgeChoice] = [
            None if i == self.zero_index else (i, None if edge_onehot is None else edge_onehot[e, i])
            for e, i in enumerate(edge_index)
        ]
        gate = None if depth_onehot is None else depth_onehot[depth - 1]
        return Sample(edges, depth, gate, edge_onehot, depth_onehot)

    def sample(self, tau: float, generator: torch.Generator | None = None) -> Sample:
        """Draw one sub-network from the logits; the zero op drops its edge without running anything."""
        edge_onehot, edge_index = straight_through_gumbel(self.edge_logits, tau, generator)
        depth_onehot, depth_index = straight_through_gumbel(self.depth_logits, tau, generator)
        return self._sample(edge_index.tolist(), int(depth_index) + 1, edge_onehot, depth_onehot)

    def uniform_sample(self, generator: torch.Generator | None = None) -> Sample:
        """Every op of every edge, and every depth, equally likely; no gates (no architecture gradient)."""
        edges = torch.randint(len(self.space.ops), (len(self.space.edges),), generator=generator)
        depth = int(torch.randint(self.max_cells, (1,), generator=generator)) + 1
        return self._sample(edges.tolist(), depth)

    def quantile_sample(self, edge_quantiles: torch.Tensor, depth_quantile: float, uniform: bool) -> Sample:
        """The sub-network at the given quantiles (in [0, 1)) of each edge's op distribution and of the
        depth distribution: uniform ones, or the logits' softmax; ungated. The same quantiles give the
        same path while the distribution stays near uniform and move it only as the distribution
        sharpens, so sub-networks judged epoch after epoch are compared on common random numbers."""
        with torch.no_grad():
            ops, depths = self.edge_logits.detach().cpu(), self.depth_logits.detach().cpu()
            if uniform:
                ops, depths = torch.zeros_like(ops), torch.zeros_like(depths)
            op_cdf, depth_cdf = ops.softmax(-1).cumsum(-1), depths.softmax(-1).cumsum(-1)
            edges = torch.searchsorted(op_cdf, edge_quantiles.reshape(-1, 1).to(op_cdf.dtype), right=True)
            depth = torch.searchsorted(depth_cdf, torch.tensor([float(depth_quantile)]), right=True)
        edge_index = edges.squeeze(-1).clamp(max=ops.shape[-1] - 1).tolist()
        return self._sample(edge_index, int(depth.clamp(max=self.max_cells - 1)) + 1)

    def log_prob(self, sample: Sample) -> torch.Tensor:
        """log p of the sample's ops and depth under the logits' softmax, differentiable in the logits
        (the score-function estimator's)."""
        ops = [self.zero_index if op is None else op for op in sample.ops]
        index = torch.tensor(ops, device=self.edge_logits.device).unsqueeze(-1)
        edges = self.edge_logits.log_softmax(-1).gather(-1, index).sum()
        return edges + self.depth_logits.log_softmax(-1)[sample.depth - 1]

    @staticmethod
    def ungated(sample: Sample) -> Sample:
        """The same sub-network without its straight-through gates (no gradient to the logits)."""
        edges: list[EdgeChoice] = [None if c is None else (c[0], None) for c in sample.edges]
        return Sample(edges, sample.depth)

    def extreme_sample(self, largest: bool) -> Sample:
        """The sandwich rule's bounds (BigNAS): the deepest stack with each edge's op of the most
        parameters, or one cell of the op of the fewest (the zero op never: it would empty the cell)."""
        sizes = [sum(p.numel() for p in op.parameters()) for op in self.cells[0].ops[0]]
        ops = [o for o in range(len(sizes)) if o != self.zero_index]
        pick = max(ops, key=lambda o: (sizes[o], -o)) if largest else min(ops, key=lambda o: (sizes[o], o))
        return self._sample([pick] * len(self.space.edges), self.max_cells if largest else 1)

    def fixed_sample(self, genotype: Genotype) -> Sample:
        """The sub-network of a derived genotype (kept edges with their ops, its depth), ungated."""
        kept = {(e.source, e.target): self.space.op_index(e.op) for e in genotype.edges}
        edges: list[EdgeChoice] = [(kept[edge], None) if edge in kept else None for edge in self.space.edges]
        return Sample(edges, genotype.num_cells)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None,
        sample: Sample,
        skip_weight: float = 0.0,
        free_op_dropout: float = 0.0,
    ) -> SupernetOutput:
        """Run the sampled sub-network.

        ``skip_weight``: an auxiliary skip around every cell (DARTS-), so the candidate identity ops
        need not carry the gradient alone. ``free_op_dropout``: dropout on the outputs of the
        parameter-free ops (P-DARTS), so they cannot win only by being useful before anything trains.
        """
        inputs, masks = self.embeddings(input_ids, attention_mask, token_type_ids)
        levels = [inputs[0] + inputs[1] if self.pair else inputs[0]]
        states = inputs
        for cell in self.cells[: sample.depth]:
            edges = sample.edges
            if free_op_dropout > 0 and self.training:
                edges = [self._drop_free(choice, states[0], free_op_dropout) for choice in edges]
            out = cell(states, masks.all, edges)
            if skip_weight:
                out = out + skip_weight * states[-1]
            states = [states[-1], out]
            levels.append(out)
        logits = self.heads[min(sample.depth, len(self.heads)) - 1](levels, masks)
        if sample.depth_gate is not None:
            logits = logits * sample.depth_gate
        return SupernetOutput(logits, self.probes([masked_mean(x, masks.all) for x in levels]))

    def _drop_free(self, choice: EdgeChoice, like: torch.Tensor, p: float) -> EdgeChoice:
        if choice is None or not bool(self.parameter_free[choice[0]]):
            return choice
        op, gate = choice
        keep = torch.empty_like(like).bernoulli_(1 - p) / (1 - p)
        return op, keep if gate is None else gate * keep
