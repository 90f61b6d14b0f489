"""Building blocks shared by the supernet and the compact student.

One ``Cell`` class serves both: in the supernet every edge of the full DAG holds every candidate
operation and a per-step choice picks one; in the student each kept edge holds its single chosen
operation. Sharing the class keeps the two networks numerically identical for the same choice, so
searched weights transfer to the student by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from search_spaces import SearchSpace
from search_spaces.registry import takes_mask

EdgeChoice = tuple[int, torch.Tensor | None] | None
"""Per edge: ``None`` drops the edge; ``(op_index, gate)`` runs that op, scaled by ``gate`` when given."""


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens of ``x [batch, channels, tokens]`` with ``mask [batch, tokens]``."""
    mask = mask.to(x.dtype).unsqueeze(1)
    return (x * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)


def masked_max(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Max over real tokens of ``x [batch, channels, tokens]`` (0 for a row with no real token)."""
    real = mask.unsqueeze(1) > 0
    return x.masked_fill(~real, torch.finfo(x.dtype).min).amax(-1) * real.any(-1).to(x.dtype)


def mean_max(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[mean; max]`` over real tokens: the max finds the phrase that decides, the mean the rest."""
    return torch.cat([masked_mean(x, mask), masked_max(x, mask)], dim=-1)


class Masks(NamedTuple):
    """Float token masks ``[batch, tokens]``: all real tokens, the first and the second sentence (the
    one sentence twice for single-sentence tasks)."""

    all: torch.Tensor
    first: torch.Tensor
    second: torch.Tensor


def segment_masks(
    attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None, pair: bool, dtype: torch.dtype
) -> Masks:
    """Masks of the two cell inputs: the two sentences of a pair, or the one sentence twice."""
    mask = attention_mask.to(dtype)
    if not pair or token_type_ids is None:
        return Masks(mask, mask, mask)
    second = (token_type_ids > 0).to(dtype) * mask
    return Masks(mask, mask - second, second)


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
    output is a learned softmax mix of the intermediate nodes. Padding (``mask`` 0, at the right end of
    each row) stays zero after every node, so every op's input is zero there; ops that take a mask
    (``search_spaces.registry.takes_mask``) are called as ``op(x, mask)`` with ``mask [batch, 1, tokens]``.
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
        self.takes_mask = [
            [takes_mask(name, op) for name, op in zip(names, ops)]
            for names, ops in zip(self.candidates, self.ops)
        ]
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
    """Pool each cell output, attend over cells, tanh, dropout, linear.

    Every head takes ``levels``: the embedding output, then each cell's output, ``[batch, hidden, tokens]``.

    ``pooling="mean"`` is AdaBERT's head; ``"meanmax"`` pools ``[mean; max]`` over the tokens (a
    max over time, as in text CNNs, finds the phrase that decides a sentence). ``norm``: each cell's
    tokens are layer-normalised (no parameters) before pooling. Cells of identity and pooling edges
    add their inputs up, so a cell's scale varies 100-fold with its ops and depth; unnormalised, the
    tanh saturates on some cells and sees nothing on others, and a supernet that shares this head
    across every sampled path learns nothing at all.
    """

    def __init__(
        self, hidden_size: int, num_labels: int, dropout: float, pooling: str = "mean", norm: bool = False
    ) -> None:
        super().__init__()
        self.norm = norm
        self.pool = masked_mean if pooling == "mean" else mean_max
        width = hidden_size if pooling == "mean" else 2 * hidden_size
        self.score = nn.Linear(width, 1)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(width, num_labels)

    def forward(self, levels: Sequence[torch.Tensor], masks: Masks) -> torch.Tensor:
        cells = levels[1:]
        if self.norm:
            cells = [layer_norm_tokens(x, masks.all) for x in cells]
        stacked = torch.stack([self.pool(x, masks.all) for x in cells], dim=1)  # [batch, cells, width]
        attention = torch.softmax(self.score(stacked), dim=1)
        summary = torch.tanh((attention * stacked).sum(dim=1))
        return self.out(self.dropout(summary))


def layer_norm_tokens(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x [batch, hidden, tokens]`` layer-normalised per token, without parameters; padding stays zero."""
    centred = x - x.mean(dim=1, keepdim=True)
    normed = centred * torch.rsqrt(centred.pow(2).mean(dim=1, keepdim=True) + 1e-5)
    return normed * mask.unsqueeze(1)


class PairHead(nn.Module):
    """Compare the two sentences of a pair (InferSent / Sentence-BERT): pool each sentence from the last
    cell on its own (``[mean; max]``), then classify ``[u, v, |u - v|, u * v]`` through a tanh layer.

    AdaBERT's head pools both sentences together, which leaves a student no way to compare them.
    The last cell's tokens are layer-normalised first: cells of identity and pooling edges add their
    inputs up, so their outputs grow several-fold per cell, and products of such states would
    saturate the tanh layer (a deep cell stack then learns nothing but the majority class).
    """

    def __init__(self, hidden_size: int, num_labels: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size)
        self.mix = nn.Linear(8 * hidden_size, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, num_labels)

    def normalised(self, x: torch.Tensor, masks: Masks) -> torch.Tensor:
        """``x [batch, hidden, tokens]`` layer-normalised per token; padding stays zero."""
        return self.norm(x.transpose(1, 2)).transpose(1, 2) * masks.all.unsqueeze(1)

    def forward(self, levels: Sequence[torch.Tensor], masks: Masks) -> torch.Tensor:
        last = self.normalised(levels[-1], masks)
        u, v = mean_max(last, masks.first), mean_max(last, masks.second)
        features = torch.cat([u, v, (u - v).abs(), u * v], dim=-1)
        return self.out(self.dropout(torch.tanh(self.mix(features))))


def cross_pairs(masks: Masks) -> torch.Tensor:
    """``[batch, tokens, tokens]``: True where the two tokens are real and in different sentences."""
    first, second = masks.first > 0, masks.second > 0
    return (first.unsqueeze(2) & second.unsqueeze(1)) | (second.unsqueeze(2) & first.unsqueeze(1))


def align(x: torch.Tensor, pairs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each token's soft alignment in the other sentence, and its best cosine match there.

    ``x [batch, channels, tokens]``, ``pairs`` from ``cross_pairs``; returns ``aligned [batch, channels,
    tokens]`` (attention over the other sentence's tokens, scaled dot products) and ``best [batch,
    tokens]`` (the highest cosine similarity to a token of the other sentence; 0 where there is none).
    One token-by-token product serves both.
    """
    tokens = x.transpose(1, 2)  # [batch, tokens, channels]
    dots = tokens @ x
    norms = tokens.norm(dim=-1).clamp(min=1e-6)
    has_other = pairs.any(-1)
    low = torch.finfo(x.dtype).min
    attention = torch.softmax((dots / x.shape[1] ** 0.5).masked_fill(~pairs, low), dim=-1)
    attention = attention * has_other.unsqueeze(-1)
    # cosine = dots / (|a| |b|): the max over b of dots / |b|, divided by |a| once per token
    nearest = (dots / norms.unsqueeze(1)).masked_fill(~pairs, low).amax(-1)
    best = torch.where(has_other, nearest / norms, torch.zeros_like(norms))
    return (attention @ tokens).transpose(1, 2), best


class MatchHead(PairHead):
    """The pair head plus token alignment across the two sentences (decomposable attention, Parikh et
    al. 2016; BERTScore-style best matches): a paraphrase or an entailed sentence has, for most of its
    tokens, a close token in the other sentence, which pooled sentence vectors blur away.

    Aligns the tokens twice, as the embeddings give them (the words) and as the last cell gives them
    (the words in context, layer-normalised as in ``PairHead``), and adds, per level and sentence,
    the pooled ``|token - aligned|`` and ``token * aligned`` and the mean and min of each token's
    best cosine match in the other sentence.
    """

    def __init__(self, hidden_size: int, num_labels: int, dropout: float) -> None:
        super().__init__(hidden_size, num_labels, dropout)
        self.mix = nn.Linear(16 * hidden_size + 8, hidden_size)

    def forward(self, levels: Sequence[torch.Tensor], masks: Masks) -> torch.Tensor:
        last = self.normalised(levels[-1], masks)
        u, v = mean_max(last, masks.first), mean_max(last, masks.second)
        features = [u, v, (u - v).abs(), u * v]
        pairs = cross_pairs(masks)
        for x in (levels[0], last):
            aligned, best = align(x, pairs)
            difference, product = (x - aligned).abs(), x * aligned
            best = best.unsqueeze(1)
            for mask in (masks.first, masks.second):
                features += [
                    masked_mean(difference, mask),
                    masked_mean(product, mask),
                    masked_mean(best, mask),
                    -masked_max(-best, mask),  # the worst-matched token
                ]
        return self.out(self.dropout(torch.tanh(self.mix(torch.cat(features, dim=-1)))))


HEADS = {
    "paper": lambda h, n, d, norm=False: ClassifierHead(h, n, d, "mean", norm),
    "pooled": lambda h, n, d, norm=False: ClassifierHead(h, n, d, "meanmax", norm),
    "pair": lambda h, n, d, norm=False: PairHead(h, n, d),  # normalises its last cell always
    "match": lambda h, n, d, norm=False: MatchHead(h, n, d),
}
"""``paper``: AdaBERT's head; ``pooled``: the same with ``[mean; max]`` pooling; ``pair``: compares the two
sentences of a pair; ``match``: the pair head plus token alignment across the sentences."""

PAIR_HEADS = ("pair", "match")


def head_kind(kind: str, pair: bool) -> str:
    """``auto``: the match head for sentence-pair tasks, the pooled head otherwise."""
    if kind == "auto":
        return "match" if pair else "pooled"
    if kind not in HEADS:
        raise ValueError(f"unknown head {kind!r}: expected auto, {', '.join(HEADS)}")
    if kind in PAIR_HEADS and not pair:
        raise ValueError(f"the {kind} head compares two sentences: it needs a sentence-pair task")
    return kind


def build_head(kind: str, hidden_size: int, num_labels: int, dropout: float, norm: bool = False) -> nn.Module:
    """A ``HEADS`` head; ``norm``: the pooled heads layer-normalise each cell (the pair heads always do)."""
    return HEADS[kind](hidden_size, num_labels, dropout, norm)


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
    ) -> tuple[list[torch.Tensor], Masks]:
        """Return the two cell inputs ``[batch, hidden, tokens]`` and the float token masks."""
        positions = segment_positions(attention_mask, token_type_ids if self.pair else None)
        x = self.word(input_ids) + self.position(positions)
        if self.projection is not None:
            x = self.projection(x)
        x = self.dropout(self.norm(x)).transpose(1, 2)
        masks = segment_masks(attention_mask, token_type_ids, self.pair, x.dtype)
        if not self.pair:
            x = x * masks.all.unsqueeze(1)
            return [x, x], masks
        return [x * masks.first.unsqueeze(1), x * masks.second.unsqueeze(1)], masks

    @torch.no_grad()
    def projected_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Word and position tables already mapped to ``hidden_size`` (projection folded in)."""
        word, position = self.word.weight, self.position.weight
        if self.projection is None:
            return word.clone(), position.clone()
        w, b = self.projection.weight, self.projection.bias
        return word @ w.T, position @ w.T + b
