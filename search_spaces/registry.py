"""Registries of cell operations and search spaces.

An operation is a builder ``channels -> nn.Module`` whose module maps ``[batch, channels, tokens]``
to the same shape. A search space names a tuple of operations and the cell's shape. Both are plain
dict entries keyed by name, so a new one is a decorator call or a ``register_space`` call in a new
file of this package (or of any package exposing an ``adabert.search_spaces`` entry point).

Discovery imports every such file once, in any order, then checks that every space's operations
exist. A file that fails to import, or a space naming missing operations, is recorded with its file
(``list_broken``) and skipped; every other space works as usual.

This module must not import the ``adabert`` engine: the engine imports the spaces, not the reverse.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
import pkgutil
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
from torch import nn

from search_spaces.layers import accepts_mask

log = logging.getLogger(__name__)

OpBuilder = Callable[[int], nn.Module]


class SearchSpaceError(KeyError, ValueError):
    """An unknown or malformed operation or search space."""

    user_error = True  # the adabert command reports it in one line (adabert.errors.is_user_error)

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class OpSpec:
    """A named cell operation: ``build(channels)`` returns a shape-preserving module."""

    name: str
    build: OpBuilder
    description: str = ""
    takes_mask: bool = False  # force module(x, mask); a forward with a ``mask`` parameter gets it anyway
    module: str = ""  # the module that registered it


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
_SPACE_MODULES: dict[str, str] = {}  # space name -> the module that registered it
_BROKEN: list[BrokenFile] = []
_UNAVAILABLE: dict[str, BrokenFile] = {}  # space name -> why it could not be registered
_PACKAGES: dict[str, str] = {}  # module -> distribution of the entry point that named it
_attempted: set[str] = set()
_discovered = False
_discovering = False


@dataclass(frozen=True)
class BrokenFile:
    """A space file that failed to import, or whose space names operations nobody registered."""

    module: str
    file: str
    error: str
    spaces: tuple[str, ...] = ()  # the spaces it defined (as far as it got)
    package: str | None = None  # the distribution, for a file found through an entry point

    def __str__(self) -> str:
        where = f"{self.file} (package {self.package})" if self.package else self.file
        return f"{where}: {self.error}"


def _same_definition(a: OpBuilder, b: OpBuilder) -> bool:
    """True when ``b`` is ``a`` re-created by re-importing its module (a reload, a retried failed import)."""
    key = lambda f: (getattr(f, "__module__", None), getattr(f, "__qualname__", None))
    return a is b or (key(a) == key(b) and key(a) != (None, None))


def register_op(
    name: str, description: str = "", takes_mask: bool = False
) -> Callable[[OpBuilder], OpBuilder]:
    """Decorator registering ``builder(channels) -> nn.Module`` as the operation ``name``.

    The module receives the padding mask (``module(x, mask)``, ``mask [batch, 1, tokens]``, 1 on real
    tokens) when its ``forward`` has a parameter named ``mask``; ``takes_mask=True`` forces that for a
    forward whose mask parameter has another name.
    """

    def decorator(builder: OpBuilder) -> OpBuilder:
        if name in _OPS and not _same_definition(_OPS[name].build, builder):
            raise SearchSpaceError(f"operation {name!r} is already registered")
        description_ = description or (builder.__doc__ or "").strip()
        _OPS[name] = OpSpec(name, builder, description_, takes_mask, getattr(builder, "__module__", "") or "")
        return builder

    return decorator


def register_space(space: SearchSpace) -> SearchSpace:
    """Register a search space.

    Its operations may live in files not imported yet: they are checked once every space file has
    been imported (at the first lookup), whatever order the files load in. A space registered after
    that is checked at once.
    """
    if space.name in _SPACES and _SPACES[space.name] != space:
        raise SearchSpaceError(f"search space {space.name!r} is already registered")
    if _discovered and not _discovering:
        _check_ops(space)
    _SPACES[space.name] = space
    _SPACE_MODULES[space.name] = sys._getframe(1).f_globals.get("__name__", "")
    _UNAVAILABLE.pop(space.name, None)
    return space


def _check_ops(space: SearchSpace) -> None:
    missing = [op for op in space.ops if op not in _OPS]
    if missing:
        raise SearchSpaceError(f"search space {space.name!r} uses unregistered operations: {missing}")


def _space_modules() -> list[tuple[str, str | None, str | None]]:
    """(module, file, distribution) of every module of this package and every entry point of the group."""
    import search_spaces

    found = []
    for info in pkgutil.iter_modules(search_spaces.__path__):
        if info.name not in ("registry", "layers"):
            path = Path(getattr(info.module_finder, "path", ""), info.name)
            file = path / "__init__.py" if info.ispkg else path.with_name(f"{info.name}.py")
            found.append((f"search_spaces.{info.name}", str(file), None))
    for entry in importlib.metadata.entry_points(group="adabert.search_spaces"):
        dist = getattr(entry, "dist", None)
        found.append((entry.module, None, dist.name if dist is not None else None))
    return found


def _module_file(module: str) -> str:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    return spec.origin if spec is not None and spec.origin else f"module {module}"


def _describe(error: BaseException, file: str) -> str:
    """``Type: message``, with the line of ``file`` the error came from when the traceback passes it."""
    lines = [f.lineno for f in traceback.extract_tb(error.__traceback__) if f.filename == file]
    at = f"line {lines[-1]}: " if lines else ""
    return f"{at}{type(error).__name__}: {error}"


def _import(module: str, file: str | None, package: str | None) -> None:
    """Import one space module; a failure is recorded with its file and undone, never raised."""
    if module in sys.modules or module in _attempted:
        return
    _attempted.add(module)
    if package:
        _PACKAGES[module] = package
    try:
        importlib.import_module(module)
    except Exception as e:  # any error in a user's file: record it and go on with the others
        file = file or _module_file(module)
        ops = [name for name, spec in _OPS.items() if spec.module == module]
        spaces = tuple(name for name, owner in _SPACE_MODULES.items() if owner == module)
        for name in ops:
            del _OPS[name]
        broken = BrokenFile(module, file, _describe(e, file), spaces, package)
        for name in spaces:
            del _SPACES[name], _SPACE_MODULES[name]
            _UNAVAILABLE[name] = broken
        _BROKEN.append(broken)
        log.warning("search space file %s failed to import and is skipped: %s", file, broken.error)


def _import_all() -> None:
    for module, file, package in _space_modules():
        _import(module, file, package)


def _settle() -> None:
    """Drop, and record as broken, every space naming an operation that no imported file registered."""
    for name, space in list(_SPACES.items()):
        missing = [op for op in space.ops if op not in _OPS]
        if missing:
            module = _SPACE_MODULES.pop(name)
            del _SPACES[name]
            error = f"search space {name!r} uses unregistered operations: {missing}"
            broken = BrokenFile(module, _module_file(module), error, (name,), _package_of(module))
            _BROKEN.append(broken)
            _UNAVAILABLE[name] = broken
            log.warning("search space %s in %s is skipped: %s", name, broken.file, error)


def _package_of(module: str) -> str | None:
    """The distribution of an entry point whose top-level package ``module`` belongs to."""
    top = module.split(".")[0]
    return next((p for owner, p in _PACKAGES.items() if owner.split(".")[0] == top), None)


def _discover() -> None:
    """Import every module of this package and every ``adabert.search_spaces`` entry point once.

    A module that fails to import is recorded (``list_broken``), its registrations are undone and the
    others load as usual, so one broken file takes down only its own spaces.
    """
    global _discovered, _discovering
    if _discovered or _discovering:
        return
    _discovering = True
    try:
        _import_all()
        _settle()
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


def _broken_note() -> str:
    return "".join(f"; skipped {b}" for b in _BROKEN)


def get_op(name: str) -> OpSpec:
    spec = _lookup(_OPS, name)
    if not isinstance(spec, OpSpec):
        raise SearchSpaceError(
            f"unknown operation {name!r}; registered: {', '.join(sorted(_OPS))}{_broken_note()}"
        )
    return spec


def get_space(name: str) -> SearchSpace:
    space = _lookup(_SPACES, name)
    if _discovering and isinstance(space, SearchSpace) and any(op not in _OPS for op in space.ops):
        _import_all()  # a space file extends a space whose ops live in files not imported yet
    if name in _UNAVAILABLE:
        raise SearchSpaceError(f"search space {name!r} is unavailable: {_UNAVAILABLE[name]}")
    if not isinstance(space, SearchSpace):
        raise SearchSpaceError(
            f"unknown search space {name!r}; registered: {', '.join(sorted(_SPACES))}{_broken_note()}"
        )
    if _discovering:  # looked up by a space file during discovery: its ops must be there by now
        _check_ops(space)
    return space


def list_ops() -> list[str]:
    _discover()
    return sorted(_OPS)


def list_spaces() -> list[str]:
    _discover()
    return sorted(_SPACES)


def list_broken() -> list[BrokenFile]:
    """Space files that failed to import or name unregistered operations; their spaces are not listed."""
    _discover()
    return list(_BROKEN)


def space_source(name: str) -> dict[str, str]:
    """Where a registered space comes from: its ``module`` and, for an entry point, its ``package``.

    Recorded in genotypes so that a student whose space lives in another package can say which
    package to install where it is missing.
    """
    get_space(name)
    module = _SPACE_MODULES.get(name, "")
    package = _package_of(module)
    return {"module": module, **({"package": package} if package else {})}


def takes_mask(name: str, module: nn.Module) -> bool:
    """Whether the cell calls ``module`` (built from operation ``name``) as ``module(x, mask)``."""
    return get_op(name).takes_mask or accepts_mask(module)


@cache
def op_cost(name: str, channels: int, seq_len: int) -> OpCost:
    """Parameters and forward FLOPs of one instance, counted by torch's own FLOP counter.

    Measured in eval mode on zeros (with an all-ones mask for an op that takes one). An op that cannot
    be built or run so raises ``SearchSpaceError`` naming it, its file and the spaces that use it.
    """
    from torch.utils.flop_counter import FlopCounterMode

    spec = get_op(name)
    try:
        with torch.random.fork_rng(devices=[]):  # building an op must not shift the caller's random stream
            module = spec.build(channels).eval()
        params = sum(p.numel() for p in module.parameters())
        x = torch.zeros(1, channels, seq_len)
        args = (x, torch.ones(1, 1, seq_len)) if takes_mask(name, module) else (x,)
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            module(*args)
    except Exception as e:  # a user's op: say which one, whatever torch raised inside
        users = sorted(s for s, space in _SPACES.items() if name in space.ops)
        used = f", used by space(s) {', '.join(users)}" if users else ""
        raise SearchSpaceError(
            f"operation {name!r} ({_module_file(spec.module)}{used}): its cost cannot be measured: building "
            f"it at {channels} channels and running it once on {seq_len} tokens under torch's FLOP "
            f"counter raised {_describe(e, _module_file(spec.module))}"
        ) from e
    return OpCost(params=params, flops=int(counter.get_total_flops()))
