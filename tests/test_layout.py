"""The package's layout, read from the source (AST), never imported.

- no import cycle between adabert's modules, function-level imports included: ``from pkg import name``
  is an edge to the module ``pkg.name`` when there is one, else to ``pkg``;
- no module imports another module's private (underscore) names, or reaches them as ``module._name``;
- no two modules share a file name, so a name in a traceback or a review points at one file.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).parents[1]
PACKAGE = "adabert"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: dict[str, Path] = {module_name(p): p for p in sorted((ROOT / PACKAGE).rglob("*.py"))}


@dataclasses.dataclass(frozen=True)
class Import:
    importer: str
    line: int
    module: str  # the module the statement reads from
    name: str | None  # the name taken from it (from-imports), or None for `import module`
    alias: str  # the name bound in the importer

    @property
    def target(self) -> str:
        """The adabert module this import depends on."""
        if self.name is not None and f"{self.module}.{self.name}" in MODULES:
            return f"{self.module}.{self.name}"
        return self.module

    def __str__(self) -> str:
        where = f"{MODULES[self.importer].relative_to(ROOT)}:{self.line}"
        return f"{where}: {self.module}{'.' + self.name if self.name else ''}"


def is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def imports_of(module: str) -> list[Import]:
    """Every import of an adabert module in ``module``, at any depth (functions, methods, branches)."""
    found = []
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    bound = alias.asname or alias.name.split(".")[0]
                    found.append(Import(module, node.lineno, alias.name, None, bound))
        elif isinstance(node, ast.ImportFrom):
            source = node.module or ""
            if node.level:  # relative: resolved against the importer's package
                base = module.split(".") if is_package(module) else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join([*base, *([source] if source else [])])
            if source.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:
                found.append(Import(module, node.lineno, source, alias.name, alias.asname or alias.name))
    return found


IMPORTS = {module: imports_of(module) for module in MODULES}


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for module, imports in IMPORTS.items():
        for imp in imports:
            if imp.target in MODULES and imp.target != module:
                graph[module].add(imp.target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted({*graph, *(n for targets in graph.values() for n in targets)}):
        if node not in index:
            visit(node)
    return components


def describe_cycle(component: list[str]) -> str:
    """The component's modules and the import lines that bind them."""
    members = set(component)
    lines = [
        f"  {imp} -> {imp.target}"
        for module in component
        for imp in IMPORTS[module]
        if imp.target in members and imp.target != module
    ]
    return " <-> ".join(component) + "\n" + "\n".join(lines)


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(describe_cycle(c) for c in found)


def test_the_cycle_check_sees_function_level_imports():
    """The check reads imports inside functions: a cycle closed by a function-level import is found."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert "adabert.teacher.finetuning" in import_graph()["adabert.cli"]  # cli imports stages in handlers


def private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_no_module_imports_another_modules_private_names():
    found = [
        f"{imp} imports {imp.name}"
        for imports in IMPORTS.values()
        for imp in imports
        if imp.name is not None and private(imp.name) and imp.target != imp.importer
    ]
    for module, imports in IMPORTS.items():
        aliases = {imp.alias: imp.target for imp in imports if imp.target in MODULES and imp.target != module}
        for node in ast.walk(ast.parse(MODULES[module].read_text())):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and private(node.attr)
            ):
                where = f"{MODULES[module].relative_to(ROOT)}:{node.lineno}"
                found.append(f"{where}: {node.value.id}.{node.attr} of {aliases[node.value.id]}")
    assert not found, "private names taken from another module:\n" + "\n".join(found)


def test_no_two_modules_share_a_file_name():
    names = Counter(path.name for path in MODULES.values() if path.name != "__init__.py")
    shared = {
        name: sorted(str(p.relative_to(ROOT)) for p in MODULES.values() if p.name == name)
        for name, count in names.items()
        if count > 1
    }
    assert not shared, f"modules sharing a file name: {shared}"


def code_map() -> list[tuple[str, str]]:
    """(path, rest of the line) of each line of the README's map of the code."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Map of the code") :]
    block = re.search(r"^```\n(.*?)^```", section, flags=re.S | re.M).group(1)
    entries = [tuple(line.split(maxsplit=1)) for line in block.splitlines() if line.strip()]
    assert all(len(entry) == 2 for entry in entries), [e for e in entries if len(e) != 2]  # path, what it is
    return entries


def top_level_names(path: Path) -> set[str]:
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def test_the_readmes_code_map_names_every_module_and_what_is_there():
    """Each package and top module of adabert/ has a line; each `file.py: name, ...` it names exists."""
    entries = code_map()
    paths = [path for path, _ in entries]
    expected = {
        str(p.relative_to(ROOT)) + ("/" if p.is_dir() else "")
        for p in (ROOT / PACKAGE).iterdir()
        if (p.suffix == ".py" and p.name != "__init__.py") or (p / "__init__.py").is_file()
    }
    assert expected <= set(paths), f"not in the README's map: {sorted(expected - set(paths))}"
    assert all((ROOT / path).exists() for path in paths), [p for p in paths if not (ROOT / p).exists()]
    problems = []
    for path, rest in entries:
        refs = re.findall(r"([\w/]+\.py): (\w+(?:, \w+)*)", rest)
        if path.endswith(".py"):
            refs.append((path, rest.rsplit(": ", 1)[-1]))
        for file, names in refs:
            where = next(
                (ROOT / base / file for base in (path, PACKAGE, "") if (ROOT / base / file).is_file()), None
            )
            if where is None:
                problems.append(f"{path}: no file {file}")
                continue
            defined = top_level_names(where)
            problems += [f"{path}: {file} has no {name}" for name in names.split(", ") if name not in defined]
    assert not problems, "\n".join(problems)
