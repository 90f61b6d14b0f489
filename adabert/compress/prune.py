"""Pruning: magnitude masks, block-structured group masks with reweighted group lasso, and shrinking.

Three layers, each usable alone (as in Torch-Pruning):

1. Functions on one weight: ``magnitude_masks`` (exactly ``round(sparsity · numel)`` smallest weights
   pruned), ``block_groups`` / ``block_masks`` (whole rows or columns inside fixed-size blocks, Li et
   al. 2020), ``group_norms``, ``group_lasso_penalty``, ``reweight``, ``keep_schedule`` (LadaBERT's
   ``keep_t = target^(t/T)``).
2. Functions on a model: ``apply_masks`` (a ``torch.nn.utils.parametrize`` mask on each ``weight``, so
   a pruned weight stays zero while training), ``current_masks``, ``make_permanent``,
   ``sparsity_stats`` (density and the bytes a sparse copy would take), ``GroupLasso`` (the
   regulariser over many layers), and the physical shrinking ``shrink_ffn`` / ``shrink_rank`` /
   ``shrink_model``, which rebuild layers without the rows and columns that ended up all zero.
3. The training loops live in ``adabert.compress.run``.

Weights are viewed as matrices: ``Linear [out, in]`` as is, ``Conv1d [out, in, k]`` as
``[out, in·k]`` (a column is one input channel at one tap). Masks are boolean, ``True`` = kept.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from adabert.compress.factorize import (
    FACTORIZED,
    FactorizedEmbedding,
    compressible_layers,
    matrix_view,
    set_submodule,
)

log = logging.getLogger(__name__)

GROUPS = ("row", "col")


# ----------------------------------------------------------------------------------- single-weight masks
def magnitude_masks(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-mask pruning exactly ``round(sparsity · numel)`` weights of smallest magnitude.

    Ties (e.g. weights already zero) are broken by position, so the result is deterministic and,
    for growing sparsity on the same weights, each mask is a subset of the previous one.
    """
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    flat = weight.detach().abs().flatten()
    k = int(round(sparsity * flat.numel()))
    mask = torch.ones(flat.numel(), dtype=torch.bool, device=weight.device)
    if k:
        order = torch.argsort(flat, stable=True)
        mask[order[:k]] = False
    return mask.view_as(weight)


def _layout(shape: Sequence[int], block: Sequence[int], group: str) -> tuple[int, int, int, int]:
    """(rows, cols) of the matrix view and the group length / groups per line, for a row or col grouping."""
    if group not in GROUPS:
        raise ValueError(f"group must be one of {GROUPS}, got {group!r}")
    if len(block) != 2 or any(b < 0 for b in block):
        raise ValueError(f"block must be (rows, cols) with sizes >= 0, got {tuple(block)}")
    rows, cols = shape[0], math.prod(shape[1:])
    if group == "row":  # a group: `length` consecutive entries of one row
        length = cols if block[1] <= 0 else min(block[1], cols)
        return rows, cols, length, math.ceil(cols / length)
    length = rows if block[0] <= 0 else min(block[0], rows)
    return rows, cols, length, math.ceil(rows / length)


def _lines(weight: torch.Tensor, group: str) -> torch.Tensor:
    """The matrix view with groups running along the last dimension (rows, or columns transposed)."""
    matrix = weight.reshape(weight.shape[0], -1)
    return matrix if group == "row" else matrix.transpose(0, 1)


def group_norms(weight: torch.Tensor, block: Sequence[int], group: str) -> torch.Tensor:
    """Squared Frobenius norm ``||W_g||²_F`` of every group, in ``block_groups`` order (differentiable).

    Computed by padding and reshaping (no index tensors), so it is cheap on BERT-sized weights.
    """
    _, _, length, per_line = _layout(weight.shape, block, group)
    lines = _lines(weight, group)
    pad = per_line * length - lines.shape[1]
    if pad:
        lines = torch.nn.functional.pad(lines, (0, pad))
    return (lines * lines).reshape(lines.shape[0], per_line, length).sum(-1).reshape(-1)


def _expand(values: torch.Tensor, shape: Sequence[int], block: Sequence[int], group: str) -> torch.Tensor:
    """Per-group values broadcast back to every element of a weight of ``shape``."""
    rows, cols, length, per_line = _layout(shape, block, group)
    n_lines, line_len = (rows, cols) if group == "row" else (cols, rows)
    full = values.reshape(n_lines, per_line).repeat_interleave(length, dim=1)[:, :line_len]
    return (full if group == "row" else full.transpose(0, 1)).reshape(tuple(shape))


def block_groups(shape: Sequence[int], block: Sequence[int], group: str) -> tuple[torch.Tensor, int]:
    """Group index of every element of a weight of ``shape`` (matrix view), and the number of groups.

    The matrix is tiled by blocks of ``block = (rows, cols)`` (0 = the whole dimension; edge blocks
    are smaller); a group is one row (``group="row"``) or one column (``"col"``) inside one block.
    """
    rows, cols, length, per_line = _layout(shape, block, group)
    count = (rows if group == "row" else cols) * per_line
    return _expand(torch.arange(count), shape, block, group), count


def group_lasso_penalty(
    weight: torch.Tensor, block: Sequence[int], group: str, gamma: torch.Tensor | None = None
) -> torch.Tensor:
    """``Σ_g γ_g ||W_g||²_F`` (γ = 1 when not given): the reweighted group-lasso term of one weight."""
    norms = group_norms(weight, block, group)
    return norms.sum() if gamma is None else (gamma.to(norms) * norms).sum()


@torch.no_grad()
def reweight(weight: torch.Tensor, block: Sequence[int], group: str, eps: float = 1e-6) -> torch.Tensor:
    """``γ_g = 1 / (||W_g||²_F + ε)``: groups already small are pushed harder towards zero."""
    return 1.0 / (group_norms(weight.detach(), block, group) + eps)


def block_masks(weight: torch.Tensor, block: Sequence[int], group: str, sparsity: float) -> torch.Tensor:
    """Keep-mask removing the groups of smallest mean square until ``sparsity`` of the weights is pruned.

    Every pruned element belongs to a fully pruned group (a whole row or column inside its block).
    Groups are ranked by ``||W_g||²_F / |g|`` (so smaller edge blocks are not favoured) and taken in
    order while that brings the pruned count closer to ``round(sparsity · numel)``: with equal group
    sizes the result is exact to one group, otherwise to half the largest group.
    """
    return ~_expand(weakest_groups(weight, block, group, sparsity), weight.shape, block, group)


def weakest_groups(weight: torch.Tensor, block: Sequence[int], group: str, sparsity: float) -> torch.Tensor:
    """Per group (``block_groups`` order): whether ``block_masks`` at ``sparsity`` would prune it."""
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    norms = group_norms(weight.detach().float(), block, group)
    sizes = group_norms(torch.ones_like(weight, dtype=torch.float32), block, group)
    order = torch.argsort(norms / sizes, stable=True)
    target = round(sparsity * weight.numel())
    cumulative = torch.cat([sizes.new_zeros(1), torch.cumsum(sizes[order], 0)])
    n = int(torch.argmin((cumulative - target).abs()).item())  # groups whose total is closest
    pruned = torch.zeros(norms.numel(), dtype=torch.bool, device=weight.device)
    pruned[order[:n]] = True
    return pruned


def keep_schedule(target_sparsity: float, rounds: int) -> list[float]:
    """Kept fraction after each of ``rounds`` pruning rounds: ``keep_t = keep_T^(t/T)``, t = 1..T.

    ``keep_T = 1 - target_sparsity``; the last round reaches the target exactly (LadaBERT).
    """
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    if not 0.0 <= target_sparsity < 1.0:
        raise ValueError(f"target sparsity must be in [0, 1), got {target_sparsity}")
    keep = 1.0 - target_sparsity
    return [keep ** (t / rounds) for t in range(1, rounds + 1)]


# --------------------------------------------------------------------------------------------- model masks
class WeightMask(nn.Module):
    """Parametrization ``weight -> weight · mask``; the mask is a buffer that may be updated in place."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.detach().clone().bool())

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask.to(weight.dtype)


def _mask_of(module: nn.Module, tensor: str = "weight") -> WeightMask | None:
    if not parametrize.is_parametrized(module, tensor):
        return None
    for p in getattr(module.parametrizations, tensor):
        if isinstance(p, WeightMask):
            return p
    return None


def apply_masks(
    model: nn.Module, masks: Mapping[str, torch.Tensor], combine: bool = True, tensor: str = "weight"
) -> None:
    """Mask the ``weight`` (or ``tensor``) of each named module (kept when ``True``); masked values stay
    zero in training.

    With ``combine`` a module already masked keeps the intersection of its old and new masks, so a
    weight pruned by an earlier method is never revived by a later one.
    """
    for name, mask in masks.items():
        module = model.get_submodule(name)
        values = getattr(module, tensor)
        if tuple(mask.shape) != tuple(values.shape):
            raise ValueError(f"{name}: mask shape {tuple(mask.shape)} != {tensor} {tuple(values.shape)}")
        mask = mask.to(device=values.device, dtype=torch.bool)
        existing = _mask_of(module, tensor)
        if existing is None:
            parametrize.register_parametrization(module, tensor, WeightMask(mask))
        else:
            existing.mask.copy_(existing.mask & mask if combine else mask)


def mask_hidden_dims(model: nn.Module, tensors: Iterable[tuple[str, str]], keep: torch.Tensor) -> None:
    """Mask the same hidden dimensions (``keep``: the last axis) in each ``(module, tensor)``."""
    for module, tensor in tensors:
        shape = getattr(model.get_submodule(module), tensor).shape
        apply_masks(model, {module: keep.expand(shape)}, tensor=tensor)


def current_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """The active ``weight`` mask of every masked module, by name."""
    out = {}
    for name, module in model.named_modules():
        mask = _mask_of(module)
        if mask is not None:
            out[name] = mask.mask.clone()
    return out


def make_permanent(model: nn.Module) -> int:
    """Bake every mask into its tensor (zeros stay as zeros) and drop the parametrizations."""
    done = 0
    for module in list(model.modules()):
        for tensor in list(getattr(module, "parametrizations", {}) or {}):
            parametrize.remove_parametrizations(module, tensor, leave_parametrized=True)
            done += 1
    return done


def _stored_weight(module: nn.Module) -> torch.Tensor:
    """The weight parameter itself (under a mask parametrization: the unmasked original)."""
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations.weight.original
    return module.weight


# ----------------------------------------------------------------------------------------------- stats
def csr_bytes(matrix: torch.Tensor, index_bytes: int = 4) -> int:
    """Bytes of a CSR copy of a matrix: values + column indices (int32) + row pointers."""
    nnz = int(torch.count_nonzero(matrix).item())
    return nnz * (matrix.element_size() + index_bytes) + (matrix.shape[0] + 1) * index_bytes


def compact_bytes(matrix: torch.Tensor, index_bytes: int = 4) -> int:
    """Bytes of the matrix without its all-zero rows and columns, plus an index per kept row and column.

    What row / column-structured sparsity (whole groups pruned) costs in a compact format, where CSR
    would pay an index per weight.
    """
    rows = int((matrix.abs().sum(1) != 0).sum().item())
    cols = int((matrix.abs().sum(0) != 0).sum().item())
    return rows * cols * matrix.element_size() + (rows + cols) * index_bytes


def layer_stats(weight: torch.Tensor) -> dict[str, Any]:
    """Shape, density, dense / CSR / compact bytes of one weight (and its all-zero rows / columns)."""
    w = matrix_view(weight.detach())
    nonzero = int(torch.count_nonzero(w).item())
    dense = w.numel() * w.element_size()
    return {
        "shape": list(weight.shape),
        "params": w.numel(),
        "nonzero": nonzero,
        "density": nonzero / max(1, w.numel()),
        "zero_rows": int((w.abs().sum(1) == 0).sum().item()),
        "zero_cols": int((w.abs().sum(0) == 0).sum().item()),
        "dense_bytes": dense,
        "csr_bytes": csr_bytes(w),
        "compact_bytes": compact_bytes(w) if nonzero < w.numel() else dense,
    }


def sparsity_stats(
    model: nn.Module, names: Iterable[str] | None = None, exclude: str | None = None, embeddings: bool = False
) -> dict:
    """Per-layer stats of every ``Linear`` / ``Conv1d`` (``Embedding``) weight, or of ``names``, and totals.

    Totals: weights and non-zeros over those layers, and ``sparse_bytes``: each layer in the smallest
    of dense, CSR and compact (zero rows / columns dropped) form; the saved file itself is dense.
    """
    if names is None:
        layers = dict(compressible_layers(model, exclude, embeddings=embeddings))
    else:
        layers = {n: model.get_submodule(n) for n in names}
    per_layer = {name: layer_stats(module.weight) for name, module in layers.items()}
    params = sum(s["params"] for s in per_layer.values())
    nonzero = sum(s["nonzero"] for s in per_layer.values())
    dense = sum(s["dense_bytes"] for s in per_layer.values())
    sparse = sum(min(s["dense_bytes"], s["csr_bytes"], s["compact_bytes"]) for s in per_layer.values())
    return {
        "layers": per_layer,
        "params": params,
        "nonzero": nonzero,
        "density": nonzero / max(1, params),
        "dense_bytes": dense,
        "sparse_bytes": sparse,
    }


# ------------------------------------------------------------------------------------------ group lasso
class GroupLasso:
    """``λ Σ_layers Σ_g γ_g ||W_g||²_F`` over named layers, with ``γ`` refreshed by ``reweight()``.

    ``shrink(lr)`` takes the penalty's gradient step apart from the optimiser, the way AdamW decouples
    weight decay: each group is scaled by ``1 - 2·lr·λ·γ_g``. Added to the loss instead, Adam would
    rescale its gradient weight by weight, so weights the data never reach (the embedding rows of
    tokens absent from the training rows) would shrink at the full learning rate whatever ``λ`` is.

    With ``target`` (a sparsity) only the groups that a cut at ``target`` would remove are penalised
    (``γ = 0`` for the others, chosen afresh at each reweighting): the penalty empties exactly the
    groups about to go, instead of driving more groups to zero than the target asks.
    """

    def __init__(
        self,
        model: nn.Module,
        names: Iterable[str],
        block: Sequence[int],
        group: str,
        lam: float,
        eps: float = 1e-6,
        target: float | None = None,
    ) -> None:
        self.lam, self.eps, self.target = lam, eps, target
        self.block, self.group = tuple(block), group
        self.layers = {name: model.get_submodule(name) for name in names}
        self.gamma: dict[str, torch.Tensor] = {}
        self.reweight()

    def reweight(self) -> None:
        for name, module in self.layers.items():
            gamma = reweight(module.weight, self.block, self.group, self.eps)
            if self.target is not None:
                gamma = gamma * weakest_groups(module.weight, self.block, self.group, self.target)
            self.gamma[name] = gamma

    def penalty(self) -> torch.Tensor:
        terms = [
            group_lasso_penalty(module.weight, self.block, self.group, self.gamma[name])
            for name, module in self.layers.items()
        ]
        return self.lam * torch.stack(terms).sum() if terms else torch.zeros(())

    @torch.no_grad()
    def shrink(self, lr: float) -> None:
        """One decoupled gradient step of the penalty at learning rate ``lr``."""
        for name, module in self.layers.items():
            factor = (1.0 - 2.0 * lr * self.lam * self.gamma[name]).clamp(min=0.0)
            weight = _stored_weight(module)
            weight.mul_(_expand(factor.to(weight), weight.shape, self.block, self.group))

    def masks(self, sparsity: float) -> dict[str, torch.Tensor]:
        """Hard block masks at ``sparsity`` per layer, on the current (effective) weights."""
        return {
            name: block_masks(module.weight, self.block, self.group, sparsity)
            for name, module in self.layers.items()
        }


# ------------------------------------------------------------------------------------------- shrinking
FFN_PATTERNS: dict[str, tuple[str, str, str]] = {
    "bert": ("intermediate.dense", "output.dense", "intermediate.intermediate_act_fn"),
    "distilbert": ("ffn.lin1", "ffn.lin2", "ffn.activation"),
}
"""Per family: (producer, consumer, elementwise activation) paths relative to one layer.

A hidden neuron of a feed-forward block whose producer row or consumer column is all zero can be
removed exactly; extend by adding an entry (e.g. a custom model's MLP)."""


def _rows_of(module: nn.Module) -> nn.Module:
    """The layer whose rows (output channels) are ``module``'s outputs."""
    return module.second if isinstance(module, FACTORIZED) else module


def _cols_of(module: nn.Module) -> nn.Module:
    """The layer whose columns (input channels) read ``module``'s inputs."""
    return module.first if isinstance(module, FACTORIZED) else module


def _resolve(obj: nn.Module, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def find_ffn_pairs(model: nn.Module) -> list[tuple[str, str, Callable[[torch.Tensor], torch.Tensor]]]:
    """``(producer, consumer, activation)`` of every feed-forward block matched by ``FFN_PATTERNS``."""
    modules = dict(model.named_modules())
    pairs = []
    for name in modules:
        for producer_suffix, consumer_suffix, act_path in FFN_PATTERNS.values():
            if not (name == producer_suffix or name.endswith("." + producer_suffix)):
                continue
            prefix = name[: len(name) - len(producer_suffix)]
            consumer = prefix + consumer_suffix
            if consumer not in modules:
                continue
            try:
                act = _resolve(model.get_submodule(prefix[:-1]) if prefix else model, act_path)
            except AttributeError:
                continue
            pairs.append((name, consumer, act))
    return pairs


def _linear_subset(layer: nn.Module, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None):
    """A copy of a Linear / Conv1d keeping only the given output rows and / or input columns."""
    weight = layer.weight.detach()
    if rows is not None:
        weight = weight[rows]
    if cols is not None:
        weight = weight[:, cols]
    bias = layer.bias.detach()[rows] if layer.bias is not None and rows is not None else layer.bias
    if isinstance(layer, nn.Linear):
        new = nn.Linear(weight.shape[1], weight.shape[0], bias=layer.bias is not None)
    else:
        padding = layer.padding if isinstance(layer.padding, str) else layer.padding[0]
        new = nn.Conv1d(
            weight.shape[1],
            weight.shape[0],
            layer.kernel_size[0],
            stride=layer.stride[0],
            padding=padding,
            dilation=layer.dilation[0],
            groups=layer.groups,
            bias=layer.bias is not None,
            padding_mode=layer.padding_mode,
        )
    new.to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias.detach())
    return new


def _check_unmasked(*modules: nn.Module) -> None:
    for m in modules:
        for sub in m.modules():
            if parametrize.is_parametrized(sub, "weight"):
                raise ValueError("make the pruning masks permanent (make_permanent) before shrinking")


@torch.no_grad()
def shrink_ffn(
    model: nn.Module, producer: str, consumer: str, activation: Callable[[torch.Tensor], torch.Tensor]
) -> dict[str, Any] | None:
    """Remove the hidden neurons of one feed-forward block that no longer matter, exactly.

    A neuron is removable when the consumer ignores it (its column is all zero) or when its producer
    row is all zero: then it always outputs ``activation(bias)``, a constant that is folded into the
    consumer's bias. Returns ``{"before", "after"}`` widths, or None when nothing could be removed.
    """
    prod, cons = model.get_submodule(producer), model.get_submodule(consumer)
    _check_unmasked(prod, cons)
    rows, cols = _rows_of(prod), _cols_of(cons)
    if not isinstance(rows, nn.Linear) or not isinstance(cols, nn.Linear):
        return None
    width = rows.out_features
    if cols.in_features != width:
        return None
    dead_in = cols.weight.abs().sum(0) == 0
    dead_out = rows.weight.abs().sum(1) == 0
    bias = rows.bias.detach() if rows.bias is not None else torch.zeros_like(rows.weight[:, 0])
    constant = activation(bias.float()).to(rows.weight.dtype) * dead_out
    removable = dead_in | dead_out
    fold = dead_out & ~dead_in & (constant != 0)
    if cons.bias is None:  # nowhere to fold a constant: keep those neurons
        removable &= ~fold
    if bool(removable.all()):
        removable[0] = False  # keep one neuron so that every layer keeps a valid shape
    fold &= removable
    if not removable.any():
        return None
    if fold.any():
        cons.bias.add_(cons.weight.detach()[:, fold] @ constant[fold])
    keep = torch.nonzero(~removable).flatten()
    new_rows = _linear_subset(rows, rows=keep)
    new_cols = _linear_subset(cols, cols=keep)
    if isinstance(prod, FACTORIZED):
        prod.second = new_rows
    else:
        set_submodule(model, producer, new_rows)
    if isinstance(cons, FACTORIZED):
        cons.first = new_cols
    else:
        set_submodule(model, consumer, new_cols)
    return {"before": width, "after": int(keep.numel())}


@torch.no_grad()
def shrink_rank(layer: nn.Module) -> dict[str, Any] | None:
    """Drop the rank channels of a factorized layer whose first-factor output or second-factor input is 0.

    The first factor has no bias, so such a channel contributes exactly nothing.
    """
    _check_unmasked(layer)
    rank = layer.rank
    embedding = isinstance(layer, FactorizedEmbedding)
    first = layer.first.weight.T if embedding else matrix_view(layer.first.weight)  # [rank, ...]
    dead = (first.abs().sum(1) == 0) | (matrix_view(layer.second.weight.transpose(0, 1)).abs().sum(1) == 0)
    if bool(dead.all()):
        dead[0] = False
    if not dead.any():
        return None
    keep = torch.nonzero(~dead).flatten()
    if embedding:
        table = layer.first.weight.detach()[:, keep]
        layer.first = nn.Embedding(table.shape[0], table.shape[1], padding_idx=layer.padding_idx)
        layer.first.to(device=table.device, dtype=table.dtype)
        layer.first.weight.copy_(table)
    else:
        layer.first = _linear_subset(layer.first, rows=keep)
    layer.second = _linear_subset(layer.second, cols=keep)
    return {"before": rank, "after": int(keep.numel())}


def shrink_model(model: nn.Module) -> dict[str, dict[str, dict[str, Any]]]:
    """Physically remove what pruning left all zero: factorized ranks, feed-forward neurons, and the
    hidden dimensions of a model that can remove them itself (``remove_pruned_hidden_dims``, e.g. an
    AdaBERT student with parameter-free cells).

    Exact: the model computes the same function with fewer parameters, so it applies everywhere
    (also to a layer that was itself left unpruned, e.g. the consumer of pruned neurons). Masks must
    be permanent.
    Returns ``{"rank": {factorized module: {"before", "after"}}, "ffn_width": {producer: {"consumer",
    "before", "after"}}, "hidden": {"model": {"before", "after"}}}`` for what shrank.
    """
    stats: dict[str, dict[str, dict[str, Any]]] = {"rank": {}, "ffn_width": {}, "hidden": {}}
    for name, module in list(model.named_modules()):
        if isinstance(module, FACTORIZED):
            result = shrink_rank(module)
            if result:
                stats["rank"][name] = result
    for producer, consumer, act in find_ffn_pairs(model):
        result = shrink_ffn(model, producer, consumer, act)
        if result:
            stats["ffn_width"][producer] = {"consumer": consumer, **result}
    remove_hidden = getattr(model, "remove_pruned_hidden_dims", None)
    if remove_hidden is not None:
        result = remove_hidden()
        if result:
            stats["hidden"]["model"] = result
    changed = len(stats["rank"]) + len(stats["ffn_width"]) + len(stats["hidden"])
    if changed:
        log.info("shrank %d ranks, %d feed-forward blocks, %d hidden widths", *map(len, stats.values()))
    return stats
