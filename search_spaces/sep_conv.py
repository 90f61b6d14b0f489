"""Depthwise-separable convolutions and the ``adabert_cnn_sep`` space: the worked example of extending.

This file is the whole extension: two operations and one space, found by the registry's discovery
and tested by the registry-driven tests. A separable convolution (ReLU -> depthwise conv -> pointwise
conv -> BatchNorm, as in DARTS) sees as wide a window as ``conv{k}`` at roughly ``1/channels`` of its
weights (C*k + C*C instead of C*C*k), so the search can buy context cheaply under the efficiency loss.
"""

from __future__ import annotations

import dataclasses

from torch import nn

from search_spaces.layers import MaskedBatchNorm1d, MaskedSequential
from search_spaces.registry import SearchSpace, get_space, register_op, register_space


class SepConvBN(MaskedSequential):
    """ReLU -> depthwise Conv1d of width ``kernel_size`` -> pointwise Conv1d -> BatchNorm over real tokens."""

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__(
            nn.ReLU(),
            nn.Conv1d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels, bias=False),
            nn.Conv1d(channels, channels, 1, bias=False),
            MaskedBatchNorm1d(channels),
        )


@register_op("sep_conv3", "ReLU, depthwise 1-D convolution of width 3, pointwise convolution, BatchNorm")
def _sep_conv3(channels: int) -> nn.Module:
    return SepConvBN(channels, 3)


@register_op("sep_conv5", "ReLU, depthwise 1-D convolution of width 5, pointwise convolution, BatchNorm")
def _sep_conv5(channels: int) -> nn.Module:
    return SepConvBN(channels, 5)


def _extend(base: SearchSpace) -> SearchSpace:
    """The base space's cell and operations plus the two separable convolutions."""
    return dataclasses.replace(
        base,
        name=f"{base.name}_sep",
        ops=(*base.ops, "sep_conv3", "sep_conv5"),
        description=f"{base.name} plus depthwise-separable convolutions of width 3 and 5",
    )


# Looked up through the registry (not imported) so this file depends on nothing but the registry.
ADABERT_CNN_SEP = register_space(_extend(get_space("adabert_cnn")))
