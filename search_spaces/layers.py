"""Building blocks for operations that must not see padding: a masked BatchNorm and a masked Sequential.

Batches are right-padded: ``mask [batch, 1, tokens]`` is 1 on real tokens, 0 on padding, and the
cell keeps padded positions of every op's input at zero. An op whose ``forward`` has a parameter
named ``mask`` is called as ``op(x, mask)``; every other op as ``op(x)``.
"""

from __future__ import annotations

import inspect
from functools import cache

import torch
from torch import nn


def accepts_mask(module: nn.Module) -> bool:
    """True when ``module.forward`` has a parameter named ``mask`` (the op wants the padding mask)."""
    forward = module.__dict__.get("forward")  # a forward set on the instance, else the class's
    return _has_mask(forward) if forward is not None else _has_mask(type(module).forward)


@cache
def _has_mask(forward: object) -> bool:
    try:
        return "mask" in inspect.signature(forward).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return False


class MaskedBatchNorm1d(nn.BatchNorm1d):
    """``nn.BatchNorm1d`` over ``[batch, channels, tokens]`` whose batch statistics count real tokens only.

    In training mode a plain BatchNorm averages over every position, padding included, so how much a
    batch is padded changes what its real tokens see. Given ``mask``, this one takes mean and variance
    over the real tokens and updates the running statistics from them. Without a mask, or in eval mode
    with running statistics, it is ``nn.BatchNorm1d`` itself: same outputs, same parameter and buffer
    names, so checkpoints load either way.
    """

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        batch_stats = self.training or not self.track_running_stats
        if mask is None or not batch_stats:
            return super().forward(x)
        mask = mask.to(x.dtype)
        count = mask.sum()  # real tokens in the batch
        mean = (x * mask).sum((0, 2)) / count.clamp(min=1.0)
        centred = (x - mean[:, None]) * mask  # two passes: no cancellation when |mean| >> std
        var = (centred * centred).sum((0, 2)) / count.clamp(min=1.0)
        if self.training and self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                unbiased = var * count / (count - 1).clamp(min=1.0)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        scale = torch.rsqrt(var + self.eps)
        shift = -mean * scale
        if self.affine:
            scale, shift = scale * self.weight, shift * self.weight + self.bias
        return torch.addcmul(shift[:, None], x, scale[:, None])  # one pass over x: x * scale + shift


class MaskedSequential(nn.Sequential):
    """``nn.Sequential`` that passes ``mask`` on to the children that take one (see ``accepts_mask``)."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        for module in self:
            x = module(x, mask) if mask is not None and accepts_mask(module) else module(x)
        return x
