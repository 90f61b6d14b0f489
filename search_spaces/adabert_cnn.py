"""The AdaBERT CNN cell space (Chen et al., IJCAI 2020).

Ten 1-D operations over tokens, each ``[batch, channels, tokens] -> [batch, channels, tokens]``:
standard and dilated convolutions (ReLU -> conv -> BatchNorm), pooling with window 3 and stride 1,
identity and zero. A cell has 2 input nodes and 3 intermediate nodes (9 edges); at most 8 cells.
Every op that mixes tokens or takes batch statistics takes the padding mask, so padding never
changes what real tokens see (in training mode too).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from search_spaces.layers import MaskedBatchNorm1d, MaskedSequential
from search_spaces.registry import SearchSpace, register_op, register_space


class ConvBN(MaskedSequential):
    """ReLU -> Conv1d (same length) -> BatchNorm over real tokens, the AdaBERT convolution block."""

    def __init__(self, channels: int, kernel_size: int, dilation: int = 1) -> None:
        padding = dilation * (kernel_size - 1) // 2
        super().__init__(
            nn.ReLU(),
            nn.Conv1d(channels, channels, kernel_size, padding=padding, dilation=dilation, bias=False),
            MaskedBatchNorm1d(channels),
        )


class Zero(nn.Module):
    """Drops the edge: outputs zeros of the input's shape."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


for _k in (3, 5, 7):
    register_op(f"conv{_k}", f"ReLU, 1-D convolution of width {_k}, BatchNorm")(
        lambda channels, k=_k: ConvBN(channels, k)
    )
    register_op(f"dil_conv{_k}", f"ReLU, 1-D convolution of width {_k} with dilation 2, BatchNorm")(
        lambda channels, k=_k: ConvBN(channels, k, dilation=2)
    )


class MaskedAvgPool(nn.Module):
    """Average over the real tokens of a window of 3 (padding never counts)."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None:
            return F.avg_pool1d(x, 3, stride=1, padding=1, count_include_pad=False)
        total = F.avg_pool1d(x * mask, 3, stride=1, padding=1)
        count = F.avg_pool1d(mask, 3, stride=1, padding=1)
        return total / count.clamp(min=1e-6)


class MaskedMaxPool(nn.Module):
    """Max over the real tokens of a window of 3 (padding never wins)."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is not None:
            x = x.masked_fill(mask == 0, -1e4)
        return F.max_pool1d(x, 3, stride=1, padding=1)


@register_op("avg_pool3", "average pooling over 3 tokens, stride 1")
def _avg_pool(channels: int) -> nn.Module:
    return MaskedAvgPool()


@register_op("max_pool3", "max pooling over 3 tokens, stride 1")
def _max_pool(channels: int) -> nn.Module:
    return MaskedMaxPool()


@register_op("identity", "skip connection")
def _identity(channels: int) -> nn.Module:
    return nn.Identity()


@register_op("zero", "no connection")
def _zero(channels: int) -> nn.Module:
    return Zero()


ADABERT_CNN = register_space(
    SearchSpace(
        name="adabert_cnn",
        ops=(
            "conv3",
            "conv5",
            "conv7",
            "dil_conv3",
            "dil_conv5",
            "dil_conv7",
            "avg_pool3",
            "max_pool3",
            "identity",
            "zero",
        ),
        num_input_nodes=2,
        num_nodes=3,
        max_cells=8,
        hidden_size=128,
        zero_op="zero",
        description="AdaBERT's CNN cell: 10 ops, 2 input + 3 intermediate nodes, up to 8 cells, 128 channels",
    )
)
