"""No module of the engine or of the search spaces can unpickle a file: checked on the source itself.

Walks the syntax tree of every module in ``adabert/`` and ``search_spaces/`` and fails on a
``torch.load`` call without a literal ``weights_only=True``, an import of ``pickle`` / ``dill`` /
``cloudpickle`` (or their C modules), and ``np.load`` / ``numpy.load`` with ``allow_pickle`` set to
anything but a literal ``False``. The checker is itself tested on snippets that must and must not pass.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("adabert", "search_spaces")
PICKLERS = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib"}


def _name(node: ast.expr) -> str:
    """Dotted name of a call's target: ``torch.load``, ``np.load``, ``load``."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value)}.{node.attr}"
    return ""


def _literal(call: ast.Call, keyword: str) -> object:
    for kw in call.keywords:
        if kw.arg == keyword:
            return kw.value.value if isinstance(kw.value, ast.Constant) else "<not a literal>"
    return "<absent>"


def violations(source: str, filename: str = "<snippet>") -> list[str]:
    """Every unsafe deserialisation in ``source``, as 'file:line: what'."""
    tree = ast.parse(source, filename)
    aliases = {"torch": {"torch"}, "numpy": {"numpy"}}  # module -> local names bound to it
    direct: dict[str, str] = {}  # local name -> 'torch.load' / 'numpy.load' imported by name
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                root = alias.name.split(".")[0]
                if root in PICKLERS:
                    found.append(f"{filename}:{node.lineno}: imports {alias.name}")
                if root in aliases:
                    aliases[root].add(alias.asname or root)
        elif isinstance(node, ast.ImportFrom) and node.module:
            root = node.module.split(".")[0]
            if root in PICKLERS:
                found.append(f"{filename}:{node.lineno}: imports from {node.module}")
            if node.module in ("torch", "numpy"):
                for alias in node.names:
                    if alias.name == "load":
                        direct[alias.asname or "load"] = f"{node.module}.load"
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _name(node.func)
        head, _, attr = name.rpartition(".")
        target = direct.get(name)
        if attr == "load" and head in aliases["torch"]:
            target = "torch.load"
        elif attr == "load" and head in aliases["numpy"] | {"np"}:
            target = "numpy.load"
        if target == "torch.load" and _literal(node, "weights_only") is not True:
            found.append(f"{filename}:{node.lineno}: torch.load without a literal weights_only=True")
        if target == "numpy.load" and _literal(node, "allow_pickle") not in (False, "<absent>"):
            found.append(f"{filename}:{node.lineno}: numpy.load with allow_pickle")
    return found


def _modules() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def test_every_module_is_checked():
    names = {str(p.relative_to(ROOT)) for p in _modules()}
    assert {"adabert/io.py", "adabert/checkpoint.py", "search_spaces/registry.py"} <= names
    assert len(names) > 20


def test_no_module_can_unpickle_a_file():
    found = [v for path in _modules() for v in violations(path.read_text(), str(path.relative_to(ROOT)))]
    assert not found, "\n".join(found)


@pytest.mark.parametrize(
    "source",
    [
        "import torch\ntorch.load(f)",
        "import torch\ntorch.load(f, weights_only=False)",
        "import torch\ntorch.load(f, weights_only=flag)",
        "import torch as T\nT.load(f, map_location='cpu')",
        "from torch import load\nload(f)",
        "from torch import load as L\nL(f, weights_only=False)",
        "import pickle",
        "import dill.settings",
        "from cloudpickle import loads",
        "from pickle import load",
        "import numpy as np\nnp.load(f, allow_pickle=True)",
        "import numpy\nnumpy.load(f, allow_pickle=flag)",
        "from numpy import load\nload(f, allow_pickle=True)",
    ],
)
def test_the_checker_finds_unsafe_loading(source):
    assert violations(source)


@pytest.mark.parametrize(
    "source",
    [
        "import torch\ntorch.load(f, weights_only=True)",
        "import torch as T\nT.load(f, map_location='cpu', weights_only=True)",
        "import numpy as np\nnp.load(f)\nnp.load(f, mmap_mode='r', allow_pickle=False)",
        "import json\njson.load(f)",
        "from safetensors.torch import load_file\nload_file(f)",
    ],
)
def test_the_checker_passes_safe_loading(source):
    assert violations(source) == []
