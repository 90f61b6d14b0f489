"""Registry-driven tests: every registered op and space is checked here, so a new space file is tested
without writing a test (see search_spaces/README.md)."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import search_spaces
from search_spaces import MaskedBatchNorm1d, get_op, get_space, list_broken, list_ops, list_spaces, registry
from search_spaces.registry import SearchSpace, SearchSpaceError, op_cost, register_op, register_space

OPS = list_ops()
SPACES = list_spaces()
SPACE_OPS = [(s, op) for s in SPACES for op in get_space(s).ops]
ZERO_OPS = {get_space(s).zero_op for s in SPACES} - {None}
SEQ_LENS = (9, 1)  # the longer first: a length-changing op is reported by shape before length 1 breaks it
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


def _run(name: str, module: nn.Module, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Call the op as the cell does, turning any error into a message that names the op and the input."""
    try:
        out = module(x, mask) if registry.takes_mask(name, module) else module(x)
    except Exception as e:
        pytest.fail(
            f"{name} on input {tuple(x.shape)} raised {type(e).__name__}: {e}\nAn op must accept any number "
            "of tokens (1 included) and keep it: pad convolutions (padding = dilation * (k - 1) // 2)."
        )
    assert out.shape == x.shape, (
        f"{name}: output {tuple(out.shape)} for input {tuple(x.shape)}; an op must keep the shape "
        "(pad convolutions to keep the number of tokens, pool with stride 1)"
    )
    return out


def _check_module(name: str, module: nn.Module, zero: bool, channels: int) -> None:
    """Shape kept at every length; the gradient reaches the input at every length and each parameter
    at some length (at 1 token a GRU's recurrent weights and attention's query/key get none); a zero
    op outputs zeros."""
    gen = torch.Generator().manual_seed(0)
    module.train()
    reached: set[str] = set()
    for seq_len in SEQ_LENS:
        x = torch.randn(2, channels, seq_len, generator=gen, requires_grad=True)
        out = _run(name, module, x, torch.ones(2, 1, seq_len))
        if zero:
            assert torch.count_nonzero(out) == 0
            continue
        module.zero_grad()
        # A random weighting: BatchNorm makes the plain sum's gradient vanish.
        (out * torch.randn(out.shape, generator=gen)).sum().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0, f"no gradient reaches the input at {seq_len}"
        reached |= {n for n, p in module.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    if not zero:
        missing = [n for n, _ in module.named_parameters() if n not in reached]
        assert not missing, f"no gradient reaches parameter(s) {missing} at any of {SEQ_LENS} tokens"


@pytest.mark.parametrize("name", OPS)
def test_op_preserves_shape_and_passes_gradients(name: str) -> None:
    _check_module(name, get_op(name).build(CHANNELS), zero=name in ZERO_OPS, channels=CHANNELS)


def _right_padded(x: torch.Tensor, lengths: list[int], total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ``x`` cut to ``lengths`` real tokens, zero-padded on the right to ``total`` tokens."""
    mask = (torch.arange(total)[None, :] < torch.tensor(lengths)[:, None]).float().unsqueeze(1)
    padded = torch.zeros(x.shape[0], x.shape[1], total)
    padded[..., : x.shape[-1]] = x
    return padded * mask, mask


def _padding_change(name: str, module: nn.Module) -> float:
    """Largest change of a real token's output when a batch of rows (7 and 4 real tokens, zero padding,
    as the cell keeps it) is padded to 12 tokens instead of 7, in the module's current mode."""
    torch.manual_seed(0)
    x = torch.randn(2, CHANNELS, 7)
    x_short, mask_short = _right_padded(x, [7, 4], 7)
    x_long, mask_long = _right_padded(x, [7, 4], 12)
    with torch.no_grad():
        short = _run(name, module, x_short, mask_short)
        long = _run(name, module, x_long, mask_long)[..., :7]
    return (short - long)[mask_short.expand_as(short).bool()].abs().max().item()


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("name", OPS)
def test_op_ignores_padding(name: str, mode: str) -> None:
    """Every op, whatever it declares: real tokens get the same output however much the batch is padded,
    in eval and in training mode (BatchNorm statistics included), and in eval mode the same as alone."""
    module = get_op(name).build(CHANNELS).train(mode == "train")
    change = _padding_change(name, module)
    hint = (
        "give its forward a `mask` parameter and use it (attention: hide padded keys; recurrence: "
        "start the backward direction at the last real token; BatchNorm: MaskedBatchNorm1d)"
    )
    assert change <= 1e-5, f"{name} ({mode}): padding changed real tokens' outputs by {change:.2e}; {hint}"
    if mode == "eval":
        x = torch.randn(1, CHANNELS, 4)
        x_padded, mask = _right_padded(x, [4], 9)
        with torch.no_grad():
            padded = _run(name, module, x_padded, mask)[..., :4]
            alone = _run(name, module, x, torch.ones(1, 1, 4))
        torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-5)


def test_padding_check_catches_unmasked_attention_and_batchnorm(monkeypatch) -> None:
    """What the check above is for: attention registered without using the mask attends to padding, and
    a plain BatchNorm's training statistics count padded positions."""
    from search_spaces.adabert_cnn import ConvBN
    from search_spaces.attention_rnn import MaskedSelfAttention

    class UnmaskedAttention(MaskedSelfAttention):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x)

    monkeypatch.setattr(registry, "takes_mask", lambda name, module: registry.accepts_mask(module))
    assert _padding_change("attention", UnmaskedAttention(CHANNELS).eval()) > 1e-2
    conv = ConvBN(CHANNELS, 3).train()
    conv[2] = nn.BatchNorm1d(CHANNELS)
    assert _padding_change("conv", conv) > 1e-2
    assert _padding_change("conv", conv.eval()) <= 1e-5  # in eval mode the cell's zero padding suffices


def test_a_length_changing_op_fails_with_the_shape_message(monkeypatch) -> None:
    """An unpadded convolution: the check reports the shape at 9 tokens, not torch's kernel-size error."""
    monkeypatch.setattr(registry, "takes_mask", lambda name, module: False)
    shape = r"bad_conv: output \(2, 8, 7\) for input \(2, 8, 9\); an op must keep"
    with pytest.raises(AssertionError, match=shape):
        _check_module("bad_conv", nn.Conv1d(CHANNELS, CHANNELS, 3), zero=False, channels=CHANNELS)
    with pytest.raises(pytest.fail.Exception, match=r"bad_conv on input \(2, 8, 1\) raised RuntimeError"):
        _run("bad_conv", nn.Conv1d(CHANNELS, CHANNELS, 3), torch.zeros(2, CHANNELS, 1), torch.ones(2, 1, 1))


def test_masked_batchnorm_is_batchnorm_without_padding() -> None:
    """With an all-ones mask it trains like nn.BatchNorm1d, and in eval mode it is nn.BatchNorm1d, so
    checkpoints of either load into the other."""
    torch.manual_seed(0)
    plain, masked = nn.BatchNorm1d(6), MaskedBatchNorm1d(6)
    assert plain.state_dict().keys() == masked.state_dict().keys()
    masked.load_state_dict(plain.state_dict())
    x = torch.randn(3, 6, 5) * 2 + 1
    for _ in range(2):
        torch.testing.assert_close(masked(x, torch.ones(3, 1, 5)), plain(x))
    for key, value in plain.state_dict().items():
        torch.testing.assert_close(masked.state_dict()[key], value)
    plain.load_state_dict(masked.state_dict())
    plain.eval(), masked.eval()
    mask = torch.ones(3, 1, 5)
    mask[0, :, 2:] = 0
    torch.testing.assert_close(masked(x, mask), plain(x), rtol=0, atol=0)


def test_masked_batchnorm_counts_real_tokens_only() -> None:
    torch.manual_seed(0)
    bn = MaskedBatchNorm1d(4, momentum=1.0)
    x = torch.randn(2, 4, 6)
    mask = torch.ones(2, 1, 6)
    mask[1, :, 3:] = 0
    real = torch.cat([x[0], x[1, :, :3]], dim=1)  # [channels, real tokens]
    out = bn(x * mask, mask)
    std = torch.sqrt(real.var(1, unbiased=False, keepdim=True) + bn.eps)
    expected = (real - real.mean(1, keepdim=True)) / std
    torch.testing.assert_close(torch.cat([out[0], out[1, :, :3]], dim=1), expected)
    torch.testing.assert_close(bn.running_mean, real.mean(1))
    torch.testing.assert_close(bn.running_var, real.var(1, unbiased=True))


@pytest.mark.parametrize(("space", "op"), SPACE_OPS)
def test_space_builds_each_op(space: str, op: str) -> None:
    sp = get_space(space)
    _check_module(op, sp.build_op(op, 16), zero=op == sp.zero_op, channels=16)


@pytest.mark.parametrize("name", OPS)
def test_op_cost_counts_params_and_flops(name: str) -> None:
    cost = op_cost(name, CHANNELS, 16)
    assert cost.params == sum(p.numel() for p in get_op(name).build(CHANNELS).parameters())
    assert cost.flops >= 0
    assert get_op(name).description, "give the op a one-line description"


@pytest.mark.parametrize(("space", "op"), SPACE_OPS)
def test_op_cost_at_the_space_width(space: str, op: str) -> None:
    """What the efficiency loss and `adabert spaces` measure: each op at its space's own width."""
    assert op_cost(op, get_space(space).hidden_size, 32).params >= 0


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


def test_no_space_file_is_broken() -> None:
    """A space file that fails to import is skipped by the registry; here it fails the suite, by file."""
    assert not list_broken(), "\n".join(str(b) for b in list_broken())


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


@pytest.fixture
def fresh_registry(monkeypatch, tmp_path):
    """An empty registry that discovers again, re-importing this package's space files; ``add(name=source)``
    writes extra space modules that discovery imports *before* the package's own (restored afterwards)."""
    for name in ("_OPS", "_SPACES", "_SPACE_MODULES", "_UNAVAILABLE", "_PACKAGES"):
        monkeypatch.setattr(registry, name, {})
    monkeypatch.setattr(registry, "_BROKEN", [])
    monkeypatch.setattr(registry, "_attempted", set())
    monkeypatch.setattr(registry, "_discovered", False)
    for module in [m for m in sys.modules if m.startswith("search_spaces.")]:
        if module not in ("search_spaces.registry", "search_spaces.layers"):
            monkeypatch.setattr(search_spaces, module.split(".")[1], sys.modules[module], raising=False)
            monkeypatch.delitem(sys.modules, module)
    monkeypatch.syspath_prepend(str(tmp_path))
    package_modules, added = registry._space_modules, []

    def add(package: str | None = None, **sources: str) -> None:
        for name, source in sources.items():
            (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
            added.append((name, str(tmp_path / f"{name}.py"), package))
        monkeypatch.setattr(registry, "_space_modules", lambda: [*added, *package_modules()])

    yield add
    for name, _, _ in added:
        sys.modules.pop(name, None)


def test_entry_point_registers_an_outside_space(fresh_registry, monkeypatch) -> None:
    """An installed package exposing an ``adabert.search_spaces`` entry point is discovered, and its
    spaces record the distribution they come from."""
    fresh_registry()
    (Path(sys.path[0]) / "outside_space_pkg.py").write_text(
        textwrap.dedent(
            """
            from torch import nn
            from search_spaces.registry import SearchSpace, register_op, register_space

            @register_op("outside_op", "identity from another package")
            def _outside(channels):
                return nn.Identity()

            register_space(SearchSpace("outside_space", ops=("outside_op", "conv3", "zero")))
            """
        )
    )

    class Dist:
        name = "outside-dist"

    entry = importlib.metadata.EntryPoint("outside", "outside_space_pkg", "adabert.search_spaces")
    entry = type("DistEntry", (), {"module": entry.module, "dist": Dist()})()
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group=None: [entry] if group else [])
    try:
        assert "outside_space" in list_spaces()
        assert get_space("outside_space").build_op("outside_op", 4)(torch.ones(1, 4, 3)).shape == (1, 4, 3)
        source = registry.space_source("outside_space")
        assert source == {"module": "outside_space_pkg", "package": "outside-dist"}
        assert registry.space_source("adabert_cnn") == {"module": "search_spaces.adabert_cnn"}
    finally:
        sys.modules.pop("outside_space_pkg", None)


def test_a_space_may_name_ops_of_files_loaded_after_it(fresh_registry) -> None:
    """Load order does not matter: a file imported before adabert_cnn.py may use its ops."""
    fresh_registry(
        aaa_early="""
        from search_spaces.registry import SearchSpace, register_space

        register_space(SearchSpace("early", ops=("conv3", "self_attention", "zero"), num_nodes=1))
        """
    )
    assert get_space("early").ops == ("conv3", "self_attention", "zero")
    assert {"adabert_cnn", "adabert_cnn_sep", "early"} <= set(list_spaces()) and not list_broken()


def test_a_broken_space_file_is_reported_by_file_and_skipped(fresh_registry, capsys) -> None:
    fresh_registry(
        aab_broken="""
        from torch import nn
        from search_spaces.registry import SearchSpace, register_op, register_space

        @register_op("half_op", "registered before the error")
        def _half(channels):
            return nn.Identity()

        register_space(SearchSpace("half_space", ops=("half_op", "zero")))
        import no_such_module_anywhere
        """,
        aac_missing="""
        from search_spaces.registry import SearchSpace, register_space

        register_space(SearchSpace("missing_ops", ops=("conv3", "no_such_op", "zero")))
        """,
    )
    assert "adabert_cnn" in list_spaces() and "half_space" not in list_spaces()
    assert "missing_ops" not in list_spaces() and "half_op" not in list_ops()
    broken = {b.module: b for b in list_broken()}
    bad, missing = broken["aab_broken"], broken["aac_missing"]
    assert bad.file.endswith("aab_broken.py") and bad.spaces == ("half_space",)
    assert bad.error == "line 10: ModuleNotFoundError: No module named 'no_such_module_anywhere'"
    assert "no_such_op" in missing.error and missing.file.endswith("aac_missing.py")
    with pytest.raises(SearchSpaceError, match=r"'half_space' is unavailable: .*aab_broken\.py: line 10"):
        get_space("half_space")
    with pytest.raises(SearchSpaceError, match=r"'missing_ops' is unavailable: .*aac_missing\.py.*no_such"):
        get_space("missing_ops")
    with pytest.raises(SearchSpaceError, match=r"unknown search space 'nope'.*skipped .*aab_broken\.py"):
        get_space("nope")
    get_space("adabert_cnn").build_op("conv3", 4)  # every other space works as usual

    from adabert.cli import main

    assert main(["spaces", "--seq-len", "8"]) == 0
    out = capsys.readouterr().out
    assert "adabert_cnn:" in out and "dil_conv7" in out
    assert "broken (skipped):" in out and "aab_broken.py: line 10: ModuleNotFoundError" in out


def test_an_op_whose_cost_cannot_be_measured_is_named(fresh_registry, capsys) -> None:
    """A parameter view passed as a GRU's start state crashes torch's FLOP counter; the error names the op,
    its file and its space, and `adabert spaces` lists the other ops."""
    fresh_registry(
        aad_gru_h0="""
        import torch
        from torch import nn
        from search_spaces.registry import SearchSpace, register_op, register_space

        class LearnedStartGRU(nn.Module):
            def __init__(self, channels):
                super().__init__()
                self.gru = nn.GRU(channels, channels, batch_first=True)
                self.h0 = nn.Parameter(torch.zeros(channels))

            def forward(self, x):
                h0 = self.h0.view(1, 1, -1).expand(1, x.shape[0], -1).contiguous()
                return self.gru(x.transpose(1, 2), h0)[0].transpose(1, 2)

        register_op("gru_h0", "GRU with a learned start state")(LearnedStartGRU)
        register_space(SearchSpace("gru_space", ops=("gru_h0", "identity", "zero"), hidden_size=8))
        """
    )
    with pytest.raises(SearchSpaceError, match=r"'gru_h0' \(.*aad_gru_h0\.py, used by space\(s\) gru_space"):
        op_cost("gru_h0", 8, 4)
    from adabert.cli import main

    assert main(["spaces", "--seq-len", "8"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"gru_h0 +cost unavailable: .*FLOP counter raised", out) and "identity" in out


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
