"""Registry-driven tests: every registered op and space is checked here, so a new space file is tested
without writing a test (see search_spaces/README.md)."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from search_spaces import get_op, get_space, list_ops, list_spaces, register_op, register_space, registry
from search_spaces.registry import SearchSpace, SearchSpaceError, op_cost

OPS = list_ops()
SPACES = list_spaces()
SPACE_OPS = [(s, op) for s in SPACES for op in get_space(s).ops]
ZERO_OPS = {get_space(s).zero_op for s in SPACES} - {None}
SEQ_LENS = (1, 9)
CHANNELS = 8


def _is_conv(name: str) -> bool:
    return any(isinstance(m, nn.modules.conv._ConvNd) for m in get_op(name).build(4).modules())


def _is_param_free(name: str) -> bool:
    return not any(True for _ in get_op(name).build(4).parameters())


def _kernel_families() -> list[tuple[str, list[str]]]:
    """Convolution ops named ``<family><k>`` grouped by family, ordered by ``k`` (only families of 2+)."""
    families: dict[str, list[tuple[int, str]]] = {}
    for name in OPS:
        m = re.fullmatch(r"(.*?)(\d+)", name)
        if m and _is_conv(name):
            families.setdefault(m.group(1), []).append((int(m.group(2)), name))
    return [(f, [n for _, n in sorted(v)]) for f, v in sorted(families.items()) if len(v) > 1]


def _check_module(module: nn.Module, zero: bool, channels: int) -> None:
    """Shape preserved at every length; gradients reach the input and every parameter (zero: zeros out)."""
    gen = torch.Generator().manual_seed(0)
    module.train()
    for seq_len in SEQ_LENS:
        x = torch.randn(2, channels, seq_len, generator=gen, requires_grad=True)
        out = module(x)
        assert out.shape == x.shape, f"output {tuple(out.shape)} for input {tuple(x.shape)}"
        if zero:
            assert torch.count_nonzero(out) == 0
            continue
        module.zero_grad()
        # A random weighting: BatchNorm makes the plain sum's gradient vanish.
        (out * torch.randn(out.shape, generator=gen)).sum().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0, "no gradient reaches the input"
        for pname, p in module.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches parameter {pname}"


@pytest.mark.parametrize("name", OPS)
def test_op_preserves_shape_and_passes_gradients(name: str) -> None:
    _check_module(get_op(name).build(CHANNELS), zero=name in ZERO_OPS, channels=CHANNELS)


@pytest.mark.parametrize("name", [op for op in OPS if get_op(op).takes_mask])
def test_masked_op_ignores_padding(name: str) -> None:
    """A ``takes_mask`` op gives real tokens the same output however the batch is padded."""
    gen = torch.Generator().manual_seed(0)
    module = get_op(name).build(CHANNELS).eval()
    x = torch.randn(2, CHANNELS, 7, generator=gen)
    mask = torch.ones(2, 1, 7)
    assert torch.allclose(module(x, mask), module(x), atol=1e-6), "an all-ones mask must change nothing"
    mask[1, :, 4:] = 0
    noisy = x.clone()
    noisy[1, :, 4:] = 100 * torch.randn(CHANNELS, 3, generator=gen)
    out, out_noisy = module(x, mask), module(noisy, mask)
    assert torch.allclose(out[0], out_noisy[0], atol=1e-5)
    assert torch.allclose(out[1, :, :4], out_noisy[1, :, :4], atol=1e-5)
    assert torch.allclose(out[1, :, :4], module(x[1:, :, :4])[0], atol=1e-5), "as if the padding were absent"


@pytest.mark.parametrize(("space", "op"), SPACE_OPS)
def test_space_builds_each_op(space: str, op: str) -> None:
    sp = get_space(space)
    _check_module(sp.build_op(op, 16), zero=op == sp.zero_op, channels=16)


@pytest.mark.parametrize("name", OPS)
def test_op_cost_counts_params_and_flops(name: str) -> None:
    cost = op_cost(name, CHANNELS, 16)
    assert cost.params == sum(p.numel() for p in get_op(name).build(CHANNELS).parameters())
    assert cost.flops >= 0
    assert get_op(name).description, "give the op a one-line description"


@pytest.mark.parametrize("conv", [op for op in OPS if _is_conv(op)])
def test_convolutions_cost_more_than_parameter_free_ops(conv: str) -> None:
    c = op_cost(conv, 32, 64)
    for free in (op for op in OPS if _is_param_free(op)):
        f = op_cost(free, 32, 64)
        assert c.params > f.params and c.flops > f.flops, f"{conv} {c} vs {free} {f}"


@pytest.mark.parametrize(("family", "ops"), _kernel_families(), ids=[f for f, _ in _kernel_families()])
def test_larger_kernels_cost_more(family: str, ops: list[str]) -> None:
    costs = [op_cost(op, 32, 64) for op in ops]
    for (small, a), (large, b) in zip(zip(ops, costs), zip(ops[1:], costs[1:])):
        assert b.params > a.params and b.flops > a.flops, f"{large} {b} should cost more than {small} {a}"


def test_kernel_families_found() -> None:
    families = dict(_kernel_families())
    assert families["conv"] == ["conv3", "conv5", "conv7"]
    assert families["dil_conv"] == ["dil_conv3", "dil_conv5", "dil_conv7"]


@pytest.mark.parametrize("space", SPACES)
def test_space_shape_and_names(space: str) -> None:
    sp = get_space(space)
    first, last = sp.num_input_nodes, sp.num_input_nodes + sp.num_nodes
    assert len(sp.edges) == sum(range(first, last))
    assert len(set(sp.edges)) == len(sp.edges)
    assert all(0 <= src < dst and first <= dst < last for src, dst in sp.edges)
    assert sp.zero_op is None or sp.zero_op in sp.ops
    assert set(sp.ops) <= set(OPS)
    assert [sp.op_index(op) for op in sp.ops] == list(range(len(sp.ops)))
    with pytest.raises(SearchSpaceError, match=f"not in search space '{space}'"):
        sp.op_index("no_such_op")
    with pytest.raises(SearchSpaceError, match="no_such_op"):
        sp.build_op("no_such_op")


def test_adabert_cnn_is_the_papers_space() -> None:
    sp = get_space("adabert_cnn")
    assert len(sp.edges) == 9 and sp.edges[:2] == [(0, 2), (1, 2)]
    assert sp.ops == (
        "conv3", "conv5", "conv7", "dil_conv3", "dil_conv5", "dil_conv7",
        "avg_pool3", "max_pool3", "identity", "zero",
    )  # fmt: skip
    assert (sp.zero_op, sp.max_cells, sp.hidden_size) == ("zero", 8, 128)


def test_sep_conv_space_extends_adabert_cnn() -> None:
    base, sep = get_space("adabert_cnn"), get_space("adabert_cnn_sep")
    assert sep.ops == (*base.ops, "sep_conv3", "sep_conv5")
    assert (sep.num_input_nodes, sep.num_nodes, sep.max_cells, sep.zero_op) == (
        base.num_input_nodes, base.num_nodes, base.max_cells, base.zero_op,
    )  # fmt: skip
    # Separable convolutions are the cheap wide window: fewer weights than the dense conv3.
    assert op_cost("sep_conv5", 128, 128).params < op_cost("conv3", 128, 128).params


def test_unknown_names_raise_with_the_registered_ones() -> None:
    with pytest.raises(SearchSpaceError, match="unknown search space 'nope'.*adabert_cnn"):
        get_space("nope")
    with pytest.raises(SearchSpaceError, match="unknown operation 'nope'.*conv3"):
        get_op("nope")
    with pytest.raises(KeyError):  # also a KeyError for dict-style callers
        get_space("nope")


def test_registration_errors_leave_the_registry_unchanged() -> None:
    before = (list_ops(), list_spaces())
    with pytest.raises(SearchSpaceError, match="already registered"):
        register_op("conv3")(lambda channels: nn.Identity())
    with pytest.raises(SearchSpaceError, match="unregistered operations"):
        register_space(SearchSpace("test_bad_space", ops=("conv3", "no_such_op", "zero")))
    with pytest.raises(SearchSpaceError, match="already registered"):
        register_space(SearchSpace("adabert_cnn", ops=("conv3", "zero")))
    with pytest.raises(SearchSpaceError, match="zero_op"):
        SearchSpace("test_bad_space", ops=("conv3",))
    with pytest.raises(SearchSpaceError, match="twice"):
        SearchSpace("test_bad_space", ops=("conv3", "conv3", "zero"))
    with pytest.raises(SearchSpaceError, match="no operations"):
        SearchSpace("test_bad_space", ops=())
    assert (list_ops(), list_spaces()) == before


def test_entry_point_registers_an_outside_space(tmp_path, monkeypatch) -> None:
    """An installed package exposing an ``adabert.search_spaces`` entry point is discovered."""
    (tmp_path / "outside_space_pkg.py").write_text(
        textwrap.dedent(
            """
            from torch import nn
            from search_spaces.registry import SearchSpace, register_op, register_space

            @register_op("outside_op", "identity from another package")
            def _outside(channels):
                return nn.Identity()

            register_space(SearchSpace("outside_space", ops=("outside_op", "zero")))
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    entry = importlib.metadata.EntryPoint("outside", "outside_space_pkg", "adabert.search_spaces")
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group=None: [entry] if group else [])
    monkeypatch.setattr(registry, "_discovered", False)
    try:
        assert "outside_space" in list_spaces()
        assert get_space("outside_space").build_op("outside_op", 4)(torch.ones(1, 4, 3)).shape == (1, 4, 3)
    finally:
        registry._OPS.pop("outside_op", None)
        registry._SPACES.pop("outside_space", None)
        sys.modules.pop("outside_space_pkg", None)


def test_spaces_never_import_the_engine_and_load_in_any_order() -> None:
    """A fresh interpreter: importing the extension file first still finds adabert_cnn, and nothing in
    search_spaces pulls in the adabert engine (the engine imports the spaces, not the reverse)."""
    code = (
        "import sys, search_spaces.sep_conv, search_spaces as s;"
        "assert {'adabert_cnn', 'adabert_cnn_sep'} <= set(s.list_spaces());"
        "bad = sorted(m for m in sys.modules if m == 'adabert' or m.startswith('adabert.'));"
        "assert not bad, bad"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
