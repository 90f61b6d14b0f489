"""Masked self-attention, a masked bidirectional GRU and the ``attention_rnn`` space: the worked example.

This file is the whole extension (see search_spaces/README.md): two operations that must not see
padding, and a smaller space (2 intermediate nodes, up to 4 cells, 64 channels) that offers them
next to built-in ops of ``adabert_cnn.py``. Batches are right-padded and each op gets the padding
mask because its ``forward`` has a ``mask`` parameter: attention gives padded keys no weight, and
the GRU's backward direction starts at each row's last real token rather than at the padding.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from search_spaces.registry import SearchSpace, register_op, register_space


class MaskedSelfAttention(nn.Module):
    """One head of scaled dot-product self-attention over tokens; padded keys get no weight."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.query = nn.Linear(channels, channels)
        self.key = nn.Linear(channels, channels)
        self.value = nn.Linear(channels, channels)
        self.out = nn.Linear(channels, channels)
        self.scale = 1.0 / math.sqrt(channels)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = x.transpose(1, 2)  # [batch, tokens, channels]
        scores = self.query(h) @ self.key(h).transpose(1, 2) * self.scale  # [batch, queries, keys]
        if mask is not None:  # [batch, 1, keys]: the same keys hidden from every query
            scores = scores.masked_fill(mask == 0, torch.finfo(scores.dtype).min)
        return self.out(scores.softmax(-1) @ self.value(h)).transpose(1, 2)


def reverse_real_tokens(h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``h [batch, tokens, channels]`` with each row's real tokens in reverse order, padding left in place.

    Its own inverse. Relies on right padding (``mask`` is 1 on a prefix of each row).
    """
    if mask is None:
        return h.flip(1)
    lengths = mask.sum(-1).long()  # [batch, 1]
    position = torch.arange(h.shape[1], device=h.device).unsqueeze(0)
    index = torch.where(position < lengths, lengths - 1 - position, position)
    return h.gather(1, index.unsqueeze(-1).expand_as(h))


class MaskedBiGRU(nn.Module):
    """A GRU reading forward and one reading backward over each row's real tokens, outputs side by side."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        if channels < 2:
            raise ValueError(f"bigru needs at least 2 channels (one per direction), got {channels}")
        self.forward_gru = nn.GRU(channels, channels - channels // 2, batch_first=True)
        self.backward_gru = nn.GRU(channels, channels // 2, batch_first=True)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = x.transpose(1, 2)
        ahead, _ = self.forward_gru(h)  # real tokens come first: padding never reaches them
        behind, _ = self.backward_gru(reverse_real_tokens(h, mask))
        return torch.cat([ahead, reverse_real_tokens(behind, mask)], dim=-1).transpose(1, 2)


@register_op("self_attention", "single-head self-attention over the real tokens (q, k, v, out projections)")
def _self_attention(channels: int) -> nn.Module:
    return MaskedSelfAttention(channels)


@register_op("bigru", "bidirectional GRU over the real tokens, channels/2 per direction")
def _bigru(channels: int) -> nn.Module:
    return MaskedBiGRU(channels)


# conv3, dil_conv3, max_pool3, identity and zero are adabert_cnn.py's: any registered op may be named,
# whichever file defines it and in whatever order the files load.
ATTENTION_RNN = register_space(
    SearchSpace(
        name="attention_rnn",
        ops=("self_attention", "bigru", "conv3", "dil_conv3", "max_pool3", "identity", "zero"),
        num_input_nodes=2,
        num_nodes=2,
        max_cells=4,
        hidden_size=64,
        zero_op="zero",
        description="self-attention and a BiGRU beside convolutions: 2 input + 2 intermediate nodes, "
        "up to 4 cells, 64 channels",
    )
)
