"""Low-rank factorization by truncated SVD: one layer becomes two smaller ones.

``W ≈ (U_r Σ_r^½)(Σ_r^½ V_rᵀ)``: the right factor becomes the first layer (no bias), the left factor
the second (with the original bias). A ``Conv1d [out, in, k]`` is factored as the ``[out, in·k]``
matrix: ``Conv1d(in, r, k)`` (same stride, padding, dilation, no bias) then ``Conv1d(r, out, 1)``.
An embedding table ``E [vocab, dim]`` becomes ``Embedding(vocab, r)`` then ``Linear(r, dim)`` (no
bias), ALBERT's factorized embedding: for an AdaBERT student the table is nearly all its weights.
Each factorized layer holds two real modules, so the parameter count (and the work) really drops;
a layer is left alone when its factorized form would not be strictly smaller.

Layered like Torch-Pruning: ``svd_factors`` / ``rank_for_energy`` / ``factorize_linear`` /
``factorize_conv1d`` work on single tensors and layers; ``factorize_model`` walks a model.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)


class Factorized(nn.Module):
    """Two layers in a row, ``x -> second(first(x))``; the first has no bias, the second the layer's."""

    first: nn.Module
    second: nn.Module

    @property
    def bias(self) -> torch.Tensor | None:
        return getattr(self.second, "bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))


class FactorizedLinear(Factorized):
    """``first = Linear(in, rank, bias=False)``, ``second = Linear(rank, out)``."""

    def __init__(self, in_features: int, rank: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.first = nn.Linear(in_features, rank, bias=False)
        self.second = nn.Linear(rank, out_features, bias=bias)

    @property
    def in_features(self) -> int:
        return self.first.in_features

    @property
    def out_features(self) -> int:
        return self.second.out_features

    @property
    def rank(self) -> int:
        return self.first.out_features

    @property
    def weight(self) -> torch.Tensor:
        """The dense ``[out, in]`` product (for inspection; the forward never builds it)."""
        return self.second.weight @ self.first.weight

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, rank={self.rank}, out_features={self.out_features}"


class FactorizedConv1d(Factorized):
    """``Conv1d(in, rank, k)`` (original stride/padding/dilation, no bias) then ``Conv1d(rank, out, 1)``."""

    def __init__(
        self,
        in_channels: int,
        rank: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int | str = 0,
        dilation: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__()
        self.first = nn.Conv1d(
            in_channels,
            rank,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            bias=False,
            padding_mode=padding_mode,
        )
        self.second = nn.Conv1d(rank, out_channels, 1, bias=bias)

    @property
    def in_channels(self) -> int:
        return self.first.in_channels

    @property
    def out_channels(self) -> int:
        return self.second.out_channels

    @property
    def rank(self) -> int:
        return self.first.out_channels

    @property
    def weight(self) -> torch.Tensor:
        """The dense ``[out, in, k]`` product (for inspection; the forward never builds it)."""
        first = self.first.weight.reshape(self.rank, -1)
        return (self.second.weight[:, :, 0] @ first).reshape(self.out_channels, self.in_channels, -1)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, rank={self.rank}, out_channels={self.out_channels}"


class FactorizedEmbedding(Factorized):
    """``first = Embedding(vocab, rank)``, ``second = Linear(rank, dim, bias=False)``."""

    def __init__(
        self, num_embeddings: int, rank: int, embedding_dim: int, padding_idx: int | None = None
    ) -> None:
        super().__init__()
        self.first = nn.Embedding(num_embeddings, rank, padding_idx=padding_idx)
        self.second = nn.Linear(rank, embedding_dim, bias=False)

    @property
    def num_embeddings(self) -> int:
        return self.first.num_embeddings

    @property
    def embedding_dim(self) -> int:
        return self.second.out_features

    @property
    def padding_idx(self) -> int | None:
        return self.first.padding_idx

    @property
    def rank(self) -> int:
        return self.first.embedding_dim

    @property
    def weight(self) -> torch.Tensor:
        """The dense ``[vocab, dim]`` table (for inspection; the forward never builds it)."""
        return self.first.weight @ self.second.weight.T

    def extra_repr(self) -> str:
        return f"num_embeddings={self.num_embeddings}, rank={self.rank}, embedding_dim={self.embedding_dim}"


FACTORIZED = (FactorizedLinear, FactorizedConv1d, FactorizedEmbedding)


# ------------------------------------------------------------------------------------------- functions
def matrix_view(weight: torch.Tensor) -> torch.Tensor:
    """A layer weight as a matrix: ``[out, in]`` as is, ``[out, in, k]`` as ``[out, in·k]``."""
    return weight.reshape(weight.shape[0], -1)


def rank_for_energy(singular_values: torch.Tensor, energy: float) -> int:
    """Smallest rank whose singular values keep at least ``energy`` of ``Σ s²`` (the spectral energy)."""
    if not 0.0 < energy <= 1.0:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    s2 = singular_values.detach().double() ** 2
    total = float(s2.sum())
    if total == 0.0:
        return 1
    kept = torch.cumsum(s2, 0) / total
    # tolerate rounding in the last place so energy=1.0 means "all non-negligible directions"
    rank = int(torch.searchsorted(kept, torch.tensor([energy - 1e-12], dtype=kept.dtype)).item()) + 1
    return max(1, min(rank, len(s2)))


def rank_for_ratio(full_rank: int, ratio: float) -> int:
    """``ceil(ratio · full_rank)``, at least 1 (``full_rank = min(out, in·k)``)."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"rank_ratio must be in (0, 1], got {ratio}")
    return max(1, min(full_rank, math.ceil(ratio * full_rank - 1e-9)))


def energy_kept(singular_values: torch.Tensor, rank: int) -> float:
    s2 = singular_values.detach().double() ** 2
    total = float(s2.sum())
    return 1.0 if total == 0.0 else float(s2[:rank].sum() / total)


def svd_factors(matrix: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(left [out, r], right [r, in], singular values)`` with ``left @ right`` the best rank-r fit."""
    u, s, vh = torch.linalg.svd(matrix.detach().double(), full_matrices=False)
    root = s[:rank].sqrt()
    left = (u[:, :rank] * root).to(matrix.dtype)
    right = (root[:, None] * vh[:rank]).to(matrix.dtype)
    return left, right, s.to(matrix.dtype)


def factorized_is_smaller(out_dim: int, in_dim: int, rank: int) -> bool:
    """Whether ``rank·(out + in)`` weights are strictly fewer than the ``out·in`` of the dense matrix."""
    return rank * (out_dim + in_dim) < out_dim * in_dim


def choose_rank(
    singular_values: torch.Tensor, rank_ratio: float | None = None, energy: float | None = None
) -> int:
    """The rank by kept spectral ``energy`` when given, else by ``rank_ratio`` of the full rank."""
    if energy is not None:
        return rank_for_energy(singular_values, energy)
    return rank_for_ratio(len(singular_values), 0.5 if rank_ratio is None else rank_ratio)


def factorize_linear(layer: nn.Linear, rank: int) -> FactorizedLinear:
    """The rank-``rank`` truncated-SVD pair of ``layer`` (exact at full rank, up to rounding)."""
    left, right, _ = svd_factors(layer.weight, rank)
    new = FactorizedLinear(layer.in_features, rank, layer.out_features, bias=layer.bias is not None)
    new.to(device=layer.weight.device, dtype=layer.weight.dtype)
    with torch.no_grad():
        new.first.weight.copy_(right)
        new.second.weight.copy_(left)
        if layer.bias is not None:
            new.second.bias.copy_(layer.bias)
    return new


def factorize_conv1d(layer: nn.Conv1d, rank: int) -> FactorizedConv1d:
    """The rank-``rank`` pair of a ``Conv1d`` factored as its ``[out, in·k]`` matrix (``groups`` = 1)."""
    if layer.groups != 1:
        raise ValueError(f"cannot factorize a grouped Conv1d (groups={layer.groups})")
    padding = layer.padding if isinstance(layer.padding, str) else layer.padding[0]
    left, right, _ = svd_factors(matrix_view(layer.weight), rank)
    new = FactorizedConv1d(
        layer.in_channels,
        rank,
        layer.out_channels,
        layer.kernel_size[0],
        stride=layer.stride[0],
        padding=padding,
        dilation=layer.dilation[0],
        bias=layer.bias is not None,
        padding_mode=layer.padding_mode,
    )
    new.to(device=layer.weight.device, dtype=layer.weight.dtype)
    with torch.no_grad():
        new.first.weight.copy_(right.reshape(new.first.weight.shape))
        new.second.weight.copy_(left.reshape(new.second.weight.shape))
        if layer.bias is not None:
            new.second.bias.copy_(layer.bias)
    return new


def factorize_embedding(layer: nn.Embedding, rank: int) -> FactorizedEmbedding:
    """The rank-``rank`` pair of an embedding table: ``first.weight = U_r Σ^½``, ``second = Σ^½ V_rᵀ``."""
    left, right, _ = svd_factors(layer.weight, rank)
    new = FactorizedEmbedding(layer.num_embeddings, rank, layer.embedding_dim, layer.padding_idx)
    new.to(device=layer.weight.device, dtype=layer.weight.dtype)
    with torch.no_grad():
        new.first.weight.copy_(left)
        new.second.weight.copy_(right.T)
    return new


def factorize_layer(layer: nn.Module, rank: int) -> nn.Module:
    """The truncated-SVD pair of a ``Linear``, ``Conv1d`` or ``Embedding``."""
    if isinstance(layer, nn.Linear):
        return factorize_linear(layer, rank)
    if isinstance(layer, nn.Conv1d):
        return factorize_conv1d(layer, rank)
    return factorize_embedding(layer, rank)


# ---------------------------------------------------------------------------------------------- models
def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule at dotted path ``name``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def compressible_layers(
    model: nn.Module, exclude: str | None = None, include_factors: bool = True, embeddings: bool = False
) -> Iterator[tuple[str, nn.Module]]:
    """``(name, layer)`` for every ``nn.Linear`` / ``nn.Conv1d`` not matched by the ``exclude`` regex.

    With ``include_factors`` the two halves of factorized layers are listed too (``name.first`` ...);
    they are what pruning works on after a factorization. ``embeddings`` adds ``nn.Embedding`` tables.
    """
    pattern = re.compile(exclude) if exclude else None
    kinds = (nn.Linear, nn.Conv1d, nn.Embedding) if embeddings else (nn.Linear, nn.Conv1d)
    for name, module in model.named_modules():
        if not isinstance(module, kinds):
            continue
        if pattern is not None and pattern.search(name):
            continue
        parent = name.rpartition(".")[0]
        if not include_factors and parent and isinstance(model.get_submodule(parent), FACTORIZED):
            continue
        yield name, module


def factorize_model(
    model: nn.Module,
    rank_ratio: float | None = 0.5,
    energy: float | None = None,
    exclude: str | None = None,
    embeddings: bool = False,
) -> dict[str, dict[str, Any]]:
    """Replace every eligible ``Linear`` / ``Conv1d`` (and ``Embedding``) by its truncated-SVD pair.

    The rank is chosen per layer (``energy`` of the spectrum kept when given, else ``rank_ratio`` of
    the full rank); a layer is skipped when its factorized form would not be strictly smaller, when
    it is a grouped convolution, or when it is already a factor. Returns per-layer stats.
    """
    stats: dict[str, dict[str, Any]] = {}
    layers = list(compressible_layers(model, exclude, include_factors=False, embeddings=embeddings))
    for name, layer in layers:
        if isinstance(layer, nn.Conv1d) and layer.groups != 1:
            stats[name] = {"factorized": False, "reason": "grouped convolution"}
            continue
        matrix = matrix_view(layer.weight)
        out_dim, in_dim = matrix.shape
        s = torch.linalg.svdvals(matrix.detach().double())
        rank = choose_rank(s, rank_ratio, energy)
        entry: dict[str, Any] = {
            "shape": list(layer.weight.shape),
            "full_rank": min(out_dim, in_dim),
            "rank": rank,
            "energy_kept": energy_kept(s, rank),
        }
        if not factorized_is_smaller(out_dim, in_dim, rank):
            stats[name] = {**entry, "factorized": False, "reason": "factorized form would not be smaller"}
            continue
        set_submodule(model, name, factorize_layer(layer, rank))
        stats[name] = {
            **entry,
            "factorized": True,
            "params_before": out_dim * in_dim,
            "params_after": rank * (out_dim + in_dim),
        }
    done = sum(1 for s in stats.values() if s["factorized"])
    log.info("factorized %d of %d layers", done, len(stats))
    return stats
