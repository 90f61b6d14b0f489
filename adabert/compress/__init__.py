"""Further compression of any BERT-family sequence classifier (teacher or AdaBERT student).

Layered like Torch-Pruning; every layer is usable alone:

- functions on one weight or layer (``prune``: ``magnitude_masks``, ``block_groups``, ``block_masks``,
  ``group_lasso_penalty``, ``reweight``, ``keep_schedule``; ``factorize``: ``rank_for_energy``,
  ``factorize_linear``, ``factorize_conv1d``, ``factorize_embedding``),
- functions on a model (``apply_masks``, ``make_permanent``, ``sparsity_stats``, ``GroupLasso``,
  ``factorize_model``, ``shrink_model``; ``wrap`` / ``compression_spec`` for saving and reloading at
  the smaller size through ``AutoModelForSequenceClassification``),
- the stage: ``compress(CompressConfig)`` (methods in order, KD from the knowledge store, the saved
  model and its report).

The stage (``compress``, ``Distiller``, ``METHODS``, ...) is imported on first use: the model classes
must load without the training code, since they are registered with transformers' Auto classes while
other modules may still be importing.
"""

from typing import Any

from adabert.compress.factorize import (
    FactorizedConv1d,
    FactorizedEmbedding,
    FactorizedLinear,
    choose_rank,
    compressible_layers,
    factorize_conv1d,
    factorize_embedding,
    factorize_linear,
    factorize_model,
    rank_for_energy,
    rank_for_ratio,
)
from adabert.compress.model import (
    MODULE_KINDS,
    AdaBertCompressedConfig,
    AdaBertCompressedForSequenceClassification,
    apply_spec,
    compression_spec,
    unwrap,
    wrap,
)
from adabert.compress.prune import (
    FFN_PATTERNS,
    GroupLasso,
    apply_masks,
    block_groups,
    block_masks,
    current_masks,
    group_lasso_penalty,
    group_norms,
    keep_schedule,
    magnitude_masks,
    make_permanent,
    reweight,
    shrink_ffn,
    shrink_model,
    shrink_rank,
    sparsity_stats,
)

__all__ = [
    "FFN_PATTERNS",
    "METHODS",
    "METHOD_RUNNERS",
    "MODULE_KINDS",
    "AdaBertCompressedConfig",
    "AdaBertCompressedForSequenceClassification",
    "Distiller",
    "FactorizedConv1d",
    "FactorizedEmbedding",
    "FactorizedLinear",
    "GroupLasso",
    "apply_masks",
    "apply_spec",
    "block_groups",
    "block_masks",
    "choose_rank",
    "compress",
    "compressible_layers",
    "compression_spec",
    "current_masks",
    "factorize_conv1d",
    "factorize_embedding",
    "factorize_linear",
    "factorize_model",
    "group_lasso_penalty",
    "group_norms",
    "keep_schedule",
    "magnitude_masks",
    "make_permanent",
    "parse_methods",
    "rank_for_energy",
    "rank_for_ratio",
    "reweight",
    "shrink_ffn",
    "shrink_model",
    "shrink_rank",
    "sparsity_stats",
    "unwrap",
    "wrap",
]


_STAGE = ("METHOD_RUNNERS", "METHODS", "Distiller", "compress", "parse_methods")


def __getattr__(name: str) -> Any:
    if name in _STAGE:
        from adabert.compress import run

        return getattr(run, name)
    raise AttributeError(f"module 'adabert.compress' has no attribute {name!r}")
