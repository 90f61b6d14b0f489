"""Search spaces for adabert: operations and cell spaces, registered by name.

Every module in this package is imported on first use of the registry, so adding an
operation or a whole space is one new file here and nothing else.
"""

from search_spaces.layers import MaskedBatchNorm1d, MaskedSequential, accepts_mask
from search_spaces.registry import (
    BrokenFile,
    OpSpec,
    SearchSpace,
    get_op,
    get_space,
    list_broken,
    list_ops,
    list_spaces,
    register_op,
    register_space,
)

__all__ = [
    "BrokenFile",
    "MaskedBatchNorm1d",
    "MaskedSequential",
    "OpSpec",
    "SearchSpace",
    "accepts_mask",
    "get_op",
    "get_space",
    "list_broken",
    "list_ops",
    "list_spaces",
    "register_op",
    "register_space",
]
