"""Registries of cell operations and search spaces.

An operation is a builder ``channels -> nn.Module`` whose module maps ``[batch, channels, tokens]``
to the same shape. A search space names a tuple of operations and the cell's shape. Both are plain
dict entries keyed by name, so a new one is a decorator call or a ``register_space`` call in a new
file of this package (or of any package exposing an ``adabert.search_spaces`` entry point).

This module must not import the ``adabert`` engine: the engine imports the spaces, not the reverse.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import torch
from torch import nn

OpBuilder = Callable[[int], nn.Module]


class SearchSpaceError(KeyError, ValueError):
    """An unknown or malformed operation or search space."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class OpSpec:
    """A named cell operation: ``build(channels)`` returns a shape-preserving module."""

    name: str
    build: OpBuilder
    description: str = ""
    takes_mask: bool = False  # forward(x, mask) with mask [batch, 1, tokens], 1 = real token


@dataclass(frozen=True)
class OpCost:
    """Size and compute of one operation instance at a reference sequence length."""

    params: int
    flops: int


@dataclass(frozen=True)
class SearchSpace:
    """A cell search space: the candidate operations and the shape of the cell and the stack.

    Nodes are numbered ``0 .. num_input_nodes + num_nodes - 1``; the first ``num_input_nodes`` are
    the cell inputs (outputs of the two previous cells), every later node sums one operation per
    incoming edge from each earlier node, and the cell output mixes the intermediate nodes.
    """

    name: str
    ops: tuple[str, ...]
    num_input_nodes: int = 2
    num_nodes: int = 3
    max_cells: int = 8
    hidden_size: int = 128
    zero_op: str | None = "zero"
    description: str = ""

    def __post_init__(self) -> None:
        if not self.ops:
            raise SearchSpaceError(f"search space {self.name!r} has no operations")
        if len(set(self.ops)) != len(self.ops):
            raise SearchSpaceError(f"search space {self.name!r} lists an operation twice: {self.ops}")
        if self.zero_op is not None and self.zero_op not in self.ops:
            raise SearchSpaceError(f"search space {self.name!r}: zero_op {self.zero_op!r} is not in its ops")
        if self.num_input_nodes < 1 or self.num_nodes < 1 or self.max_cells < 1 or self.hidden_size < 1:
            raise SearchSpaceError(f"search space {self.name!r}: node, cell and hidden sizes must be >= 1")

    @property
    def edges(self) -> list[tuple[int, int]]:
        """Every (source, target) pair of the full cell DAG, in a fixed order."""
        first = self.num_input_nodes
        return [(src, dst) for dst in range(first, first + self.num_nodes) for src in range(dst)]

    def op_index(self, name: str) -> int:
        try:
            return self.ops.index(name)
        except ValueError:
            raise SearchSpaceError(
                f"operation {name!r} is not in search space {self.name!r} (its ops: {', '.join(self.ops)})"
            ) from None

    def build_op(self, name: str, channels: int | None = None) -> nn.Module:
        self.op_index(name)
        return get_op(name).build(channels or self.hidden_size)


_OPS: dict[str, OpSpec] = {}
_SPACES: dict[str, SearchSpace] = {}
_discovered = False
_discovering = False


def _same_definition(a: OpBuilder, b: OpBuilder) -> bool:
    """True when ``b`` is ``a`` re-created by re-importing its module (a reload, a retried failed import)."""
    key = lambda f: (getattr(f, "__module__", None), getattr(f, "__qualname__", None))
    return a is b or (key(a) == key(b) and key(a) != (None, None))


def register_op(
    name: str, description: str = "", takes_mask: bool = False
) -> Callable[[OpBuilder], OpBuilder]:
    """Decorator registering ``builder(channels) -> nn.Module`` as the operation ``name``.

    With ``takes_mask`` the module is called as ``module(x, mask)``, ``mask`` being ``[batch, 1,
    tokens]`` with 1 on real tokens and 0 on padding: ops that mix neighbours in a way zero padding
    would bias (pooling, attention) use it so that outputs do not depend on how a batch is padded.
    """

    def decorator(builder: OpBuilder) -> OpBuilder:
        if name in _OPS and not _same_definition(_OPS[name].build, builder):
            raise SearchSpaceError(f"operation {name!r} is already registered")
        _OPS[name] = OpSpec(name, builder, description or (builder.__doc__ or "").strip(), takes_mask)
        return builder

    return decorator


def register_space(space: SearchSpace) -> SearchSpace:
    """Register a search space; its operations must already be registered."""
    missing = [op for op in space.ops if op not in _OPS]
    if missing:
        raise SearchSpaceError(f"search space {space.name!r} uses unregistered operations: {missing}")
    if space.name in _SPACES and _SPACES[space.name] != space:
        raise SearchSpaceError(f"search space {space.name!r} is already registered")
    _SPACES[space.name] = space
    return space


def _import_all() -> None:
    import search_spaces

    for info in pkgutil.iter_modules(search_spaces.__path__):
        if info.name != "registry":
            importlib.import_module(f"search_spaces.{info.name}")
    for entry in importlib.metadata.entry_points(group="adabert.search_spaces"):
        entry.load()


def _discover() -> None:
    """Import every module of this package and every ``adabert.search_spaces`` entry point once.

    A failed import propagates and discovery is retried on the next lookup, so a broken space file is
    reported every time instead of once and then silently missing.
    """
    global _discovered, _discovering
    if _discovered or _discovering:
        return
    _discovering = True
    try:
        _import_all()
        _discovered = True
    finally:
        _discovering = False


def _lookup(table: dict, name: str) -> object | None:
    _discover()
    if name not in table and _discovering:
        # A module being discovered (e.g. a space extending another) asked for something that may live
        # in a module not imported yet: import the rest now. Modules mid-import are returned as they are.
        _import_all()
    return table.get(name)


def get_op(name: str) -> OpSpec:
    spec = _lookup(_OPS, name)
    if not isinstance(spec, OpSpec):
        raise SearchSpaceError(f"unknown operation {name!r}; registered: {', '.join(sorted(_OPS))}")
    return spec


def get_space(name: str) -> SearchSpace:
    space = _lookup(_SPACES, name)
    if not isinstance(space, SearchSpace):
        raise SearchSpaceError(f"unknown search space {name!r}; registered: {', '.join(sorted(_SPACES))}")
    return space


def list_ops() -> list[str]:
    _discover()
    return sorted(_OPS)


def list_spaces() -> list[str]:
    _discover()
    return sorted(_SPACES)


@cache
def op_cost(name: str, channels: int, seq_len: int) -> OpCost:
    """Parameters and forward FLOPs of one instance, counted by torch's own FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.random.fork_rng(devices=[]):  # building an op must not shift the caller's random stream
        module = get_op(name).build(channels).eval()
    params = sum(p.numel() for p in module.parameters())
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        module(torch.zeros(1, channels, seq_len))
    return OpCost(params=params, flops=int(counter.get_total_flops()))
