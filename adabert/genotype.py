"""The searched architecture as data: a small, versioned, validated value.

A genotype names its search space, the searched depth and the kept edges of the one cell shared by
every layer of the stack, and nothing else the student cannot rebuild from the space. It is JSON on
disk (one edge per line, so two searches diff line by line), a networkx graph for analysis (drawn by
``adabert/report/draw.py``), and it is validated whenever it is read, so a hand-edited or stale file
fails at load with the file, the field and what was expected, not deep inside the student builder. It also
records where its space was defined (``space_source``), so that where the space is missing the error
says which module or package to install.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx
import torch

from adabert.errors import UserError
from adabert.io import atomic_write_text
from search_spaces.registry import SearchSpace, SearchSpaceError, get_space, space_source

GENOTYPE_VERSION = 1

_KEYS = (
    "version",
    "space",
    "num_cells",
    "hidden_size",
    "num_input_nodes",
    "num_nodes",
    "edges",
    "embedding",
    "space_source",
)
_OPTIONAL_KEYS = frozenset({"embedding", "space_source"})
_EDGE_KEYS = ("source", "target", "op")
OUTPUT_NODE = "output"


class GenotypeError(UserError):
    """A genotype that is malformed or does not fit its search space; says where and what was expected."""


@dataclass(frozen=True)
class Edge:
    """A kept edge of the cell: ``target`` sums ``op(source)`` over its incoming edges."""

    source: int
    target: int
    op: str


@dataclass(frozen=True)
class Genotype:
    """A derived architecture. Edges are kept sorted by (target, source) so equal cells compare equal.

    Nodes ``0 .. num_input_nodes-1`` are the cell inputs (the two previous cells' outputs), nodes
    ``num_input_nodes .. num_input_nodes+num_nodes-1`` the intermediate nodes; the cell output mixes
    every intermediate node. Construction does not validate (so invalid values can be built and
    reported); everything that reads or derives a genotype calls :meth:`validate`.
    """

    space: str
    num_cells: int
    edges: tuple[Edge, ...]
    hidden_size: int
    num_input_nodes: int = 2
    num_nodes: int = 3
    embedding: dict = field(default_factory=dict, hash=False)
    version: int = GENOTYPE_VERSION
    # where the space was registered: {"module": ..., "package": ...}; provenance, not architecture
    space_source: dict = field(default_factory=dict, hash=False, compare=False)

    def __post_init__(self) -> None:
        edges = self.edges
        if isinstance(edges, (list, tuple)):
            edges = tuple(edges)
            if all(_is_edge(e) for e in edges):
                edges = tuple(sorted(edges, key=lambda e: (e.target, e.source, e.op)))
            object.__setattr__(self, "edges", edges)

    # ----------------------------------------------------------------------------------- validation
    @property
    def intermediate_nodes(self) -> range:
        return range(self.num_input_nodes, self.num_input_nodes + self.num_nodes)

    @property
    def search_space(self) -> SearchSpace:
        """The registered space this genotype's op names refer to."""
        try:
            return get_space(self.space)
        except SearchSpaceError as e:
            raise GenotypeError(f"genotype: space: {e}{_install_hint(self.space_source)}") from None

    def validate(self, source: str = "genotype") -> Genotype:
        """Return ``self`` if it is a well-formed architecture of its space, else raise GenotypeError."""

        def fail(where: str, message: str) -> GenotypeError:
            return GenotypeError(f"{source}: {where}: {message}")

        space = self._check_fields(fail)
        self._check_edges(space, fail)
        self._check_wiring(fail)
        return self

    def _check_fields(self, fail: Callable[[str, str], GenotypeError]) -> SearchSpace:
        """Every field but the edges has its type and fits the space, which is found (and returned) first
        so that the cell shape can be checked against it."""
        if not _is_int(self.version) or self.version != GENOTYPE_VERSION:
            raise fail(
                "version",
                f"expected {GENOTYPE_VERSION}, got {_short(self.version)}{_version_hint(self.version)}",
            )
        if not isinstance(self.space, str):
            raise fail("space", f"expected a search space name, got {_short(self.space)}")
        if not isinstance(self.space_source, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.space_source.items()
        ):
            raise fail("space_source", f"expected an object of strings, got {_short(self.space_source)}")
        try:
            space = get_space(self.space)
        except SearchSpaceError as e:
            raise fail("space", f"{e}{_install_hint(self.space_source)}") from None
        for name in ("num_input_nodes", "num_nodes"):
            value, expected = getattr(self, name), getattr(space, name)
            if not _is_int(value) or value != expected:
                raise fail(
                    name, f"expected {expected} (the cell shape of space {space.name!r}), got {_short(value)}"
                )
        if not _is_int(self.num_cells) or not 1 <= self.num_cells <= space.max_cells:
            raise fail(
                "num_cells", f"expected an integer in 1..{space.max_cells}, got {_short(self.num_cells)}"
            )
        if not _is_int(self.hidden_size) or self.hidden_size < 1:
            raise fail("hidden_size", f"expected a positive integer, got {_short(self.hidden_size)}")
        if not isinstance(self.embedding, dict) or not all(isinstance(k, str) for k in self.embedding):
            raise fail("embedding", f"expected an object with string keys, got {_short(self.embedding)}")
        try:
            json.dumps(self.embedding, allow_nan=False)
        except (TypeError, ValueError, RecursionError) as e:
            raise fail("embedding", f"expected JSON-serialisable values: {e}") from None
        if not isinstance(self.edges, tuple):
            raise fail("edges", f"expected a sequence of edges, got {_short(self.edges)}")
        return space

    def _check_edges(self, space: SearchSpace, fail: Callable[[str, str], GenotypeError]) -> None:
        """Each edge on its own: well-typed, between nodes of the cell into an intermediate node, with an
        operation of the space (not the zero op), and at most one per pair of nodes."""
        total = self.num_input_nodes + self.num_nodes
        allowed = [op for op in space.ops if op != space.zero_op]
        seen: set[tuple[int, int]] = set()
        for i, e in enumerate(self.edges):
            if not _is_edge(e):
                raise fail(
                    f"edges[{i}]", f"expected Edge(source: int, target: int, op: str), got {_short(e)}"
                )
            where = f"edge {e.source} -> {e.target} ({e.op})"
            for end in ("source", "target"):
                if not 0 <= getattr(e, end) < total:
                    raise fail(where, f"{end} node out of range: the cell has nodes 0..{total - 1}")
            if e.target < self.num_input_nodes:
                raise fail(
                    where,
                    f"target {e.target} is a cell input; targets must be intermediate nodes "
                    f"{self.intermediate_nodes.start}..{total - 1}",
                )
            if e.op == space.zero_op:
                raise fail(where, f"the zero op {e.op!r} means 'no edge': drop the edge instead")
            if e.op not in space.ops:
                raise fail(
                    where,
                    f"operation {e.op!r} is not in search space {space.name!r} "
                    f"(expected one of: {', '.join(allowed)})",
                )
            if (e.source, e.target) in seen:
                raise fail(where, "duplicate edge: each (source, target) pair may carry one op")
            seen.add((e.source, e.target))

    def _check_wiring(self, fail: Callable[[str, str], GenotypeError]) -> None:
        """The edges together: no cycle (named, which says more than a backward edge), only forward edges,
        and an input into every intermediate node, so the cell computes in node order."""
        graph = nx.DiGraph((e.source, e.target) for e in self.edges)
        try:
            cycle = nx.find_cycle(graph)
        except nx.NetworkXNoCycle:
            cycle = None
        if cycle:
            path = " -> ".join(str(u) for u, _ in cycle) + f" -> {cycle[0][0]}"
            raise fail("edges", f"the edges form a cycle: {path}")
        for e in self.edges:
            if e.source >= e.target:
                raise fail(
                    f"edge {e.source} -> {e.target} ({e.op})",
                    "edges must go forward (source < target): a node reads only earlier nodes",
                )
        fed = {e.target for e in self.edges}
        missing = [n for n in self.intermediate_nodes if n not in fed]
        if missing:
            raise fail("edges", f"intermediate node(s) {missing} have no incoming edge")

    # ---------------------------------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "space": self.space,
            "num_cells": self.num_cells,
            "hidden_size": self.hidden_size,
            "num_input_nodes": self.num_input_nodes,
            "num_nodes": self.num_nodes,
            "edges": [{"source": e.source, "target": e.target, "op": e.op} for e in self.edges],
            "embedding": dict(self.embedding),
            **({"space_source": dict(self.space_source)} if self.space_source else {}),
        }

    @classmethod
    def from_dict(cls, d: Any, source: str = "genotype") -> Genotype:
        """Build and validate a genotype from its JSON structure; any defect raises GenotypeError."""

        def fail(where: str, message: str) -> GenotypeError:
            return GenotypeError(f"{source}: {where}: {message}")

        if not isinstance(d, dict):
            raise fail("top level", f"expected a JSON object with keys {', '.join(_KEYS)}, got {_short(d)}")
        unknown = [k for k in d if k not in _KEYS]
        if unknown:
            raise fail(repr(unknown[0]), f"unknown key (expected keys: {', '.join(_KEYS)})")
        for key in _KEYS:
            if key not in d and key not in _OPTIONAL_KEYS:
                raise fail(key, "missing")
        for key in ("version", "num_cells", "hidden_size", "num_input_nodes", "num_nodes"):
            if not _is_int(d[key]):
                raise fail(key, f"expected an integer, got {_short(d[key])}")
        if d["version"] != GENOTYPE_VERSION:  # checked first: another version may differ anywhere
            raise fail(
                "version", f"expected {GENOTYPE_VERSION}, got {d['version']}{_version_hint(d['version'])}"
            )
        if not isinstance(d["space"], str):
            raise fail("space", f"expected a search space name (string), got {_short(d['space'])}")
        embedding, origin = d.get("embedding", {}), d.get("space_source", {})
        for key, value in (("embedding", embedding), ("space_source", origin)):
            if not isinstance(value, dict):
                raise fail(key, f"expected an object, got {_short(value)}")
        if not isinstance(d["edges"], list):
            raise fail(
                "edges", f"expected a list of {{source, target, op}} objects, got {_short(d['edges'])}"
            )
        edges = []
        for i, e in enumerate(d["edges"]):
            if not isinstance(e, dict):
                raise fail(f"edges[{i}]", f"expected an object {{source, target, op}}, got {_short(e)}")
            for key in _EDGE_KEYS:
                if key not in e:
                    raise fail(f"edges[{i}].{key}", "missing")
            for key in e:
                if key not in _EDGE_KEYS:
                    raise fail(f"edges[{i}].{key}", "unknown key (expected source, target, op)")
            for key in ("source", "target"):
                if not _is_int(e[key]):
                    raise fail(f"edges[{i}].{key}", f"expected a node index (integer), got {_short(e[key])}")
            if not isinstance(e["op"], str):
                raise fail(f"edges[{i}].op", f"expected an operation name (string), got {_short(e['op'])}")
            edges.append(Edge(e["source"], e["target"], e["op"]))
        genotype = cls(
            space=d["space"],
            num_cells=d["num_cells"],
            edges=tuple(edges),
            hidden_size=d["hidden_size"],
            num_input_nodes=d["num_input_nodes"],
            num_nodes=d["num_nodes"],
            embedding=dict(embedding),
            version=d["version"],
            space_source=dict(origin),
        )
        return genotype.validate(source)

    def to_json(self) -> str:
        """Pretty JSON with one edge per line, so two genotypes diff edge by edge."""
        d = self.to_dict()
        lines = []
        for key, value in d.items():
            if key == "edges" and value:
                body = ",\n".join(f"    {json.dumps(e)}" for e in value)
                lines.append(f'  "edges": [\n{body}\n  ]')
            else:
                lines.append(f"  {json.dumps(key)}: {json.dumps(value)}")
        return "{\n" + ",\n".join(lines) + "\n}\n"

    @classmethod
    def from_json(cls, text: str, source: str = "genotype") -> Genotype:
        try:
            d = json.loads(text, object_pairs_hook=lambda pairs: _no_duplicate_keys(pairs, source))
        except json.JSONDecodeError as e:
            raise GenotypeError(f"{source}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from None
        except RecursionError:
            raise GenotypeError(f"{source}: invalid JSON: nested too deeply") from None
        return cls.from_dict(d, source)

    def save(self, path: str | Path) -> Path:
        """Validate, then write atomically: an invalid genotype is never written, a killed run leaves none."""
        path = Path(path)
        self.validate(str(path))
        atomic_write_text(path, self.to_json())
        return path

    @classmethod
    def load(cls, path: str | Path) -> Genotype:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise GenotypeError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        return cls.from_json(text, str(path))

    # ------------------------------------------------------------------------------------ networkx
    def to_networkx(self) -> nx.DiGraph:
        """The cell as a DAG: inputs, intermediate nodes and an ``"output"`` node fed by each (op "mix").

        Nodes carry ``kind`` and a ``label`` (``c_{k-2}``, ``c_{k-1}``, the node number, ``c_{k}``);
        edges carry ``op``; the graph carries the remaining genotype fields so it round-trips alone.
        """
        g = nx.DiGraph(
            space=self.space,
            num_cells=self.num_cells,
            hidden_size=self.hidden_size,
            embedding=dict(self.embedding),
            version=self.version,
            space_source=dict(self.space_source),
        )
        for n in range(self.num_input_nodes):
            g.add_node(n, kind="input", label=f"c_{{k-{self.num_input_nodes - n}}}")
        for n in self.intermediate_nodes:
            g.add_node(n, kind="intermediate", label=str(n))
        g.add_node(OUTPUT_NODE, kind="output", label="c_{k}")
        for e in self.edges:
            g.add_edge(e.source, e.target, op=e.op)
        for n in self.intermediate_nodes:
            g.add_edge(n, OUTPUT_NODE, op="mix")
        return g

    @classmethod
    def from_networkx(
        cls,
        g: nx.DiGraph,
        space: str | SearchSpace | None = None,
        num_cells: int | None = None,
        hidden_size: int | None = None,
        embedding: dict | None = None,
    ) -> Genotype:
        """Read a cell graph back; fields not given come from ``g.graph`` (as written by to_networkx)."""
        meta = g.graph

        def pick(value: Any, key: str) -> Any:
            if value is not None:
                return value
            if key not in meta:
                raise GenotypeError(f"networkx graph: {key}: not given and not in the graph's attributes")
            return meta[key]

        space_name = space.name if isinstance(space, SearchSpace) else pick(space, "space")
        kinds = dict(g.nodes(data="kind"))
        num_input_nodes = sum(k == "input" for k in kinds.values())
        num_nodes = sum(k == "intermediate" for k in kinds.values())
        if not num_input_nodes or not num_nodes:
            try:  # a bare graph without kinds: trust the space's cell shape
                sp = space if isinstance(space, SearchSpace) else get_space(space_name)
            except (SearchSpaceError, TypeError):
                raise GenotypeError(f"networkx graph: space: unknown search space {space_name!r}") from None
            num_input_nodes, num_nodes = sp.num_input_nodes, sp.num_nodes
        edges = []
        for u, v, op in g.edges(data="op"):
            if v == OUTPUT_NODE or kinds.get(v) == "output":
                continue
            if op is None:
                raise GenotypeError(f"networkx graph: edge {u} -> {v}: missing the 'op' attribute")
            edges.append(Edge(u, v, op))
        return cls(
            space=space_name,
            num_cells=pick(num_cells, "num_cells"),
            edges=tuple(edges),
            hidden_size=pick(hidden_size, "hidden_size"),
            num_input_nodes=num_input_nodes,
            num_nodes=num_nodes,
            embedding=dict(embedding if embedding is not None else meta.get("embedding", {})),
            version=meta.get("version", GENOTYPE_VERSION),
            space_source=dict(meta.get("space_source", {})),
        ).validate("networkx graph")

    # -------------------------------------------------------------------------------------- reading
    def node_inputs(self, node: int) -> list[Edge]:
        """The kept incoming edges of intermediate node ``node``, by source: what the student sums there."""
        if node not in self.intermediate_nodes:
            raise GenotypeError(
                f"node {node!r} is not an intermediate node (expected {self.intermediate_nodes.start}.."
                f"{self.intermediate_nodes.stop - 1})"
            )
        return sorted((e for e in self.edges if e.target == node), key=lambda e: e.source)

    def __str__(self) -> str:
        lines = [
            f"Genotype v{self.version}: space {self.space}, {self.num_cells} cell(s), "
            f"hidden {self.hidden_size}",
        ]
        for n in self.intermediate_nodes:
            inputs = ", ".join(f"{e.op}({e.source})" for e in self.node_inputs(n))
            lines.append(f"  node {n} <- {inputs or '(none)'}")
        lines.append(f"  output <- mix({', '.join(str(n) for n in self.intermediate_nodes)})")
        if self.embedding:
            lines.append("  embedding: " + ", ".join(f"{k}={v}" for k, v in self.embedding.items()))
        return "\n".join(lines)


def _version_hint(version: Any) -> str:
    return " (written by a newer adabert?)" if _is_int(version) and version > GENOTYPE_VERSION else ""


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_edge(e: Any) -> bool:
    return isinstance(e, Edge) and _is_int(e.source) and _is_int(e.target) and isinstance(e.op, str)


def _short(x: Any, limit: int = 60) -> str:
    text = repr(x)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _no_duplicate_keys(pairs: list[tuple[str, Any]], source: str) -> dict[str, Any]:
    """json object hook: a key given twice is an editing mistake, not 'the last one wins'."""
    d: dict[str, Any] = {}
    for k, v in pairs:
        if k in d:
            raise GenotypeError(f"{source}: {k!r}: key given twice")
        d[k] = v
    return d


def _install_hint(source: dict) -> str:
    """What to install for a space that is not registered here, from the genotype's ``space_source``."""
    module, package = source.get("module"), source.get("package")
    if package:
        return f" (the genotype's space comes from package {package!r}, module {module!r}: install {package})"
    if module:
        return f" (the genotype's space was defined in module {module!r}, which did not register it here)"
    return ""


def _resolve(space: str | SearchSpace) -> SearchSpace:
    try:
        return space if isinstance(space, SearchSpace) else get_space(space)
    except SearchSpaceError as e:
        raise GenotypeError(str(e)) from None


def _of_space(
    space: SearchSpace,
    edges: tuple[Edge, ...],
    num_cells: int,
    hidden_size: int | None,
    embedding: dict | None,
    what: str,
) -> Genotype:
    """A validated genotype of ``space``: its cell shape and, when it is registered, where it comes from."""
    try:
        source = space_source(space.name)
    except SearchSpaceError:  # a space object that was never registered
        source = {}
    return Genotype(
        space=space.name,
        num_cells=num_cells,
        edges=edges,
        hidden_size=space.hidden_size if hidden_size is None else hidden_size,
        num_input_nodes=space.num_input_nodes,
        num_nodes=space.num_nodes,
        embedding=dict(embedding or {}),
        space_source=source,
    ).validate(what)


def make_genotype(
    space: str | SearchSpace,
    edges: Any,
    num_cells: int,
    hidden_size: int | None = None,
    embedding: dict | None = None,
    source: str = "hand-made genotype",
) -> Genotype:
    """A genotype written by hand: ``edges`` are ``(source, target, op)`` triples (or ``Edge``s), the cell
    shape is the space's, ``hidden_size`` defaults to the space's; validated like any other."""
    space = _resolve(space)
    parsed = []
    for i, e in enumerate(edges):
        if not _is_edge(e):
            if not isinstance(e, (tuple, list)) or len(e) != 3:
                raise GenotypeError(f"{source}: edges[{i}]: expected (source, target, op), got {_short(e)}")
            e = Edge(*e)
        parsed.append(e)
    return _of_space(space, tuple(parsed), num_cells, hidden_size, embedding, source)


def derive_genotype(
    space: str | SearchSpace,
    edge_logits: torch.Tensor,
    depth_logits: torch.Tensor,
    hidden_size: int | None = None,
    embedding: dict | None = None,
    edges_per_node: int = 2,
) -> Genotype:
    """DARTS derivation from the shared architecture logits.

    Depth is ``argmax(depth_logits) + 1``; ``depth_logits`` has one entry per candidate depth
    (``K_max <= space.max_cells``). Each edge's strength is its largest softmax weight over the
    ops other than the zero op (so a strong "zero" never makes its edge look strong), and each
    intermediate node keeps its ``edges_per_node`` strongest incoming edges (ties: earlier in
    ``space.edges``), each with its argmax non-zero op. ``hidden_size`` defaults to the space's.
    """
    space = _resolve(space)
    edge_logits = torch.as_tensor(edge_logits).detach().cpu().double()
    depth_logits = torch.as_tensor(depth_logits).detach().cpu().double()
    edges = space.edges
    if tuple(edge_logits.shape) != (len(edges), len(space.ops)):
        raise GenotypeError(
            f"edge_logits: expected shape ({len(edges)} edges, {len(space.ops)} ops) for space "
            f"{space.name!r}, got {tuple(edge_logits.shape)}"
        )
    if depth_logits.dim() != 1 or not 1 <= len(depth_logits) <= space.max_cells:
        # Shorter than the space's max_cells when the search capped K_max lower (config.max_cells).
        raise GenotypeError(
            f"depth_logits: expected shape (K_max,) with 1 <= K_max <= {space.max_cells}, "
            f"got {tuple(depth_logits.shape)}"
        )
    for name, t in (("edge_logits", edge_logits), ("depth_logits", depth_logits)):
        if not torch.isfinite(t).all():  # a diverged search must not yield a silently arbitrary cell
            raise GenotypeError(f"{name}: contains NaN or infinite values")
    if edges_per_node < 1:
        raise GenotypeError(f"edges_per_node: expected >= 1, got {edges_per_node}")
    keep = [i for i, op in enumerate(space.ops) if op != space.zero_op]
    if not keep:
        raise GenotypeError(f"space {space.name!r} has no operation other than its zero op")

    weights = edge_logits.softmax(dim=-1)[:, keep]
    strength, best = weights.max(dim=-1)
    kept = []
    for node in range(space.num_input_nodes, space.num_input_nodes + space.num_nodes):
        incoming = [i for i, (_, dst) in enumerate(edges) if dst == node]
        ranked = sorted(incoming, key=lambda i: -strength[i].item())  # stable: ties keep edge order
        for i in sorted(ranked[:edges_per_node]):
            kept.append(Edge(edges[i][0], node, space.ops[keep[best[i].item()]]))
    depth = int(depth_logits.argmax().item()) + 1
    return _of_space(space, tuple(kept), depth, hidden_size, embedding, "derived genotype")


def random_genotype(
    space: str | SearchSpace,
    generator: random.Random | int,
    hidden_size: int | None = None,
    embedding: dict | None = None,
    edges_per_node: int = 2,
) -> Genotype:
    """A uniformly random architecture of the space: the ablation baseline a searched cell must beat.

    Depth is uniform in ``1..max_cells``; each intermediate node draws ``edges_per_node`` distinct
    earlier nodes (all of them if it has fewer) and a uniform non-zero op per edge.
    """
    space = _resolve(space)
    rng = generator if isinstance(generator, random.Random) else random.Random(generator)
    if edges_per_node < 1:
        raise GenotypeError(f"edges_per_node: expected >= 1, got {edges_per_node}")
    ops = [op for op in space.ops if op != space.zero_op]
    if not ops:
        raise GenotypeError(f"space {space.name!r} has no operation other than its zero op")
    depth = rng.randint(1, space.max_cells)
    edges = []
    for node in range(space.num_input_nodes, space.num_input_nodes + space.num_nodes):
        for src in sorted(rng.sample(range(node), min(edges_per_node, node))):
            edges.append(Edge(src, node, rng.choice(ops)))
    return _of_space(space, tuple(edges), depth, hidden_size, embedding, "random genotype")


__all__ = [
    "GENOTYPE_VERSION",
    "Edge",
    "Genotype",
    "GenotypeError",
    "derive_genotype",
    "make_genotype",
    "random_genotype",
]
