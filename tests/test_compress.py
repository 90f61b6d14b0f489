"""Further compression: masks, group lasso, SVD, physical shrinking, reloading, and the stage end to end."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from transformers import AutoModelForSequenceClassification

from adabert.compress import (
    AdaBertCompressedForSequenceClassification,
    GroupLasso,
    apply_masks,
    block_groups,
    block_masks,
    compress,
    compressible_layers,
    current_masks,
    factorize_conv1d,
    factorize_embedding,
    factorize_linear,
    factorize_model,
    group_lasso_penalty,
    group_norms,
    keep_schedule,
    magnitude_masks,
    make_permanent,
    parse_methods,
    rank_for_energy,
    reweight,
    shrink_model,
    sparsity_stats,
    wrap,
)
from adabert.compress.factorize import energy_kept
from adabert.compress.run import Distiller, run_block, run_magnitude
from adabert.config import STAGE_CONFIGS, CompressConfig, from_dict
from adabert.data import StoreSplit, TokenRows
from adabert.distill import hidden_state_kd
from adabert.genotype import random_genotype
from adabert.student.network import build_student
from search_spaces import get_space

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def batch(vocab: int, size: int = 3, length: int = 9) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    mask = torch.ones(size, length, dtype=torch.long)
    mask[0, 6:] = 0
    return {
        "input_ids": torch.randint(1, vocab, (size, length), generator=generator),
        "attention_mask": mask,
        "token_type_ids": (torch.arange(length) >= 4).long().expand(size, -1).clone(),
    }


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------------------- masks
@pytest.mark.parametrize("shape", [(7, 13), (5, 4, 3), (1, 1), (64, 37)])
@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.37, 0.5, 0.9, 1.0])
def test_magnitude_masks_hit_the_sparsity_and_prune_the_smallest(shape, sparsity):
    weight = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    mask = magnitude_masks(weight, sparsity)
    assert mask.shape == weight.shape and mask.dtype == torch.bool
    pruned = int((~mask).sum())
    assert abs(pruned - sparsity * weight.numel()) <= 1
    if 0 < pruned < weight.numel():
        assert weight[~mask].abs().max() <= weight[mask].abs().min()


def test_magnitude_masks_grow_monotonically_on_masked_weights():
    weight = torch.randn(20, 30, generator=torch.Generator().manual_seed(0))
    previous = torch.ones_like(weight, dtype=torch.bool)
    for sparsity in (0.2, 0.5, 0.8):
        mask = magnitude_masks(weight * previous, sparsity)
        assert not (mask & ~previous).any()  # nothing pruned comes back
        previous = mask


@pytest.mark.parametrize("shape", [(12, 20), (16, 6, 3)])
@pytest.mark.parametrize("block", [(4, 5), (0, 0), (5, 7), (3, 0)])
@pytest.mark.parametrize("group", ["row", "col"])
@pytest.mark.parametrize("sparsity", [0.25, 0.5, 0.8])
def test_block_masks_prune_whole_groups_inside_blocks(shape, block, group, sparsity):
    weight = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    mask = block_masks(weight, block, group, sparsity)
    ids, count = block_groups(shape, block, group)
    # every group is either entirely kept or entirely pruned
    for g in range(count):
        values = mask[ids == g]
        assert values.all() or not values.any()
    # a group is one row (or column) segment inside one block of the matrix view
    matrix = mask.reshape(shape[0], -1)
    rows, cols = matrix.shape
    br = rows if block[0] == 0 else block[0]
    bc = cols if block[1] == 0 else block[1]
    for r0 in range(0, rows, br):
        for c0 in range(0, cols, bc):
            tile = matrix[r0 : r0 + br, c0 : c0 + bc]
            lines = tile if group == "row" else tile.T
            for line in lines:
                assert line.all() or not line.any()
    sizes = torch.bincount(ids.flatten(), minlength=count)
    # the fast reshaped norms agree with a plain scatter over the group index map
    scattered = torch.zeros(count).index_add(0, ids.flatten(), weight.flatten() ** 2)
    assert torch.allclose(group_norms(weight, block, group), scattered, atol=1e-5)
    pruned = int((~mask).sum())
    assert abs(pruned - sparsity * weight.numel()) <= int(sizes.max()) / 2 + 1
    if int(sizes.min()) == int(sizes.max()):  # equal groups: exact up to one group
        assert abs(pruned - sparsity * weight.numel()) <= int(sizes.max())


def test_block_masks_remove_the_weakest_groups():
    weight = torch.ones(6, 8)
    weight[[1, 4]] *= 0.01
    mask = block_masks(weight, (0, 0), "row", 2 / 6)
    assert (~mask).all(1).tolist() == [False, True, False, False, True, False]


def test_reweighted_group_lasso_zeroes_small_groups_and_keeps_large_ones():
    torch.manual_seed(0)
    truth = torch.randn(8, 16)
    truth[4:] *= 0.05  # four weak output rows, four strong ones
    x = torch.randn(256, 16)
    y = x @ truth.T + 0.01 * torch.randn(256, 8)
    layer = nn.Linear(16, 8, bias=False)
    with torch.no_grad():  # the "trained" model
        layer.weight.copy_(torch.linalg.lstsq(x, y).solution.T)
    rows = ((0, 0), "row")  # groups: whole rows
    start = group_norms(layer.weight.detach(), *rows).sqrt()
    gamma = reweight(layer.weight, *rows, eps=1e-6)
    # right after reweighting each group's term is ~1: the penalty counts the groups
    assert float(group_lasso_penalty(layer.weight.detach(), *rows, gamma)) == pytest.approx(8, rel=1e-4)
    lasso = GroupLasso(nn.Sequential(layer), ["0"], *rows, lam=1.0)
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.01)
    for step in range(600):
        if step % 20 == 0:
            lasso.reweight()
        loss = ((layer(x) - y) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        lasso.shrink(0.01)  # the penalty's own step, decoupled from Adam's per-weight scaling
    norms = group_norms(layer.weight.detach(), *rows).sqrt()
    assert (norms[4:] < 0.05 * start[4:]).all(), norms
    assert torch.allclose(norms[:4], start[:4], rtol=0.05), (norms, start)


def test_targeted_group_lasso_empties_only_the_groups_a_cut_would_remove():
    torch.manual_seed(0)
    layer = nn.Linear(10, 12, bias=False)
    with torch.no_grad():
        layer.weight.mul_(torch.linspace(0.1, 1.0, 12)[:, None])  # rows of rising strength
    lasso = GroupLasso(nn.Sequential(layer), ["0"], (0, 0), "row", lam=1.0, target=0.25)
    for step in range(200):
        if step % 10 == 0:
            lasso.reweight()
        lasso.shrink(0.05)
    norms = layer.weight.detach().norm(dim=1)
    assert bool((norms[:3] < 1e-3).all()) and bool((norms[3:] > 0.1).all()), norms
    mask = block_masks(layer.weight, (0, 0), "row", 0.25)  # the cut then removes exactly those rows
    assert (~mask).all(1).tolist() == [True] * 3 + [False] * 9


def test_group_lasso_does_not_shrink_untouched_weights_at_the_learning_rate():
    """Weights no data reaches (unseen tokens' embedding rows) shrink by the penalty's size, not Adam's."""
    table = nn.Embedding(100, 8)
    start = table.weight.detach().clone()
    lasso = GroupLasso(nn.Sequential(table), ["0"], (0, 0), "row", lam=1e-4)
    optimizer = torch.optim.Adam(table.parameters(), lr=1e-2)
    for _ in range(50):
        loss = table(torch.tensor([0, 1])).pow(2).sum() * 0  # rows 2.. never get a gradient
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        lasso.shrink(1e-2)
    kept = table.weight.detach()[2:].norm(dim=1) / start[2:].norm(dim=1)
    assert bool((kept > 0.99).all()), kept.min()


def test_sparse_size_counts_pruned_rows_and_columns_compactly():
    from adabert.compress.prune import layer_stats

    weight = torch.randn(8, 6)
    weight[:, :3] = 0  # whole columns pruned: a compact copy keeps an 8 x 3 matrix and 11 indices
    stats = layer_stats(weight)
    assert stats["compact_bytes"] == 8 * 3 * 4 + (8 + 3) * 4 < stats["csr_bytes"] < stats["dense_bytes"] + 64
    checkerboard = (torch.arange(8)[:, None] + torch.arange(6)[None, :]) % 2
    scattered = torch.randn(8, 6) * checkerboard  # half the weights zero, but no zero row or column
    assert layer_stats(scattered)["compact_bytes"] >= layer_stats(scattered)["dense_bytes"]


def test_masks_survive_training_and_become_permanent():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    apply_masks(model, {"0": magnitude_masks(model[0].weight, 0.5)})
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(4, 6)).sum().backward()
        optimizer.step()
    assert int((model[0].weight == 0).sum()) == 24
    assert set(current_masks(model)) == {"0"}
    assert make_permanent(model) == 1
    assert not current_masks(model) and int((model[0].weight == 0).sum()) == 24
    assert isinstance(model[0].weight, nn.Parameter)


# ----------------------------------------------------------------------------------------------- SVD
def test_svd_at_full_rank_reproduces_linear_and_conv1d():
    torch.manual_seed(0)
    linear = nn.Linear(12, 7)
    x = torch.randn(5, 12)
    factored = factorize_linear(linear, 7)
    assert torch.allclose(factored(x), linear(x), atol=1e-5)
    assert factored.first.bias is None and factored.rank == 7

    conv = nn.Conv1d(6, 5, 3, padding=2, dilation=2, bias=True)
    x = torch.randn(2, 6, 11)
    factored = factorize_conv1d(conv, 5)
    assert torch.allclose(factored(x), conv(x), atol=1e-5)
    assert factored.first.kernel_size == (3,) and factored.second.kernel_size == (1,)
    assert torch.allclose(factored.weight, conv.weight, atol=1e-5)
    no_bias = nn.Conv1d(4, 4, 5, padding=2, bias=False)
    x = torch.randn(2, 4, 9)
    assert torch.allclose(factorize_conv1d(no_bias, 4)(x), no_bias(x), atol=1e-5)


@pytest.mark.parametrize("energy", [0.5, 0.8, 0.95, 0.999])
def test_lower_ranks_keep_at_least_the_requested_energy(energy):
    torch.manual_seed(0)
    layer = nn.Linear(24, 16)
    s = torch.linalg.svdvals(layer.weight.detach())
    rank = rank_for_energy(s, energy)
    assert energy_kept(s, rank) >= energy
    assert rank == 1 or energy_kept(s, rank - 1) < energy  # and it is the smallest such rank
    factored = factorize_linear(layer, rank)
    error = (factored.weight - layer.weight).detach().norm() ** 2 / layer.weight.detach().norm() ** 2
    assert float(error) <= 1 - energy + 1e-5
    conv = nn.Conv1d(8, 8, 3, padding=1)
    s = torch.linalg.svdvals(conv.weight.detach().reshape(8, -1))
    rank = rank_for_energy(s, energy)
    error = (
        factorize_conv1d(conv, rank).weight - conv.weight
    ).detach().norm() ** 2 / conv.weight.detach().norm() ** 2
    assert float(error) <= 1 - energy + 1e-5


def test_factorized_embedding_is_exact_at_full_rank_and_keeps_the_requested_energy():
    torch.manual_seed(0)
    table = nn.Embedding(50, 12, padding_idx=0)
    ids = torch.randint(0, 50, (3, 7))
    full = factorize_embedding(table, 12)
    assert torch.allclose(full(ids), table(ids), atol=1e-5)
    assert full.padding_idx == 0 and full.first.padding_idx == 0
    s = torch.linalg.svdvals(table.weight.detach())
    rank = rank_for_energy(s, 0.8)
    low = factorize_embedding(table, rank)
    error = (low.weight - table.weight).detach().norm() ** 2 / table.weight.detach().norm() ** 2
    assert float(error) <= 0.2 + 1e-5
    assert sum(p.numel() for p in low.parameters()) == rank * (50 + 12)


def test_embeddings_are_compressed_only_when_asked():
    model = nn.Sequential(nn.Embedding(100, 16), nn.Linear(16, 16))
    assert [n for n, _ in compressible_layers(model)] == ["1"]
    assert [n for n, _ in compressible_layers(model, embeddings=True)] == ["0", "1"]
    stats = factorize_model(model, rank_ratio=0.5, embeddings=True)
    assert stats["0"]["factorized"] and model[0].rank == 8
    # the factor halves are what pruning sees afterwards, the table's first half included
    assert {"0.first", "0.second"} <= {n for n, _ in compressible_layers(model, embeddings=True)}


def test_factorize_model_skips_layers_that_would_not_shrink():
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 64), nn.Conv1d(4, 4, 3, groups=2))
    stats = factorize_model(model, rank_ratio=0.5)
    assert isinstance(model[0], nn.Linear) and not stats["0"]["factorized"]  # 4 * 16 == 64: not smaller
    assert stats["1"]["factorized"] and model[1].rank == 4
    assert not stats["2"]["factorized"]  # grouped convolution


# ----------------------------------------------------------------------------------- reloading, shrinking
def _randomise_biases(model: nn.Module) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.5)


def test_factorized_and_shrunk_bert_reloads_smaller_with_identical_outputs(tiny_bert_dir, tmp_path):
    original = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir).eval()
    _randomise_biases(original)  # so that removing FFN neurons must fold act(bias) into the next bias
    x = batch(original.config.vocab_size)
    model = wrap(original)
    before = n_params(model)
    factorize_model(model.model, rank_ratio=0.25, exclude="classifier")
    layer0 = "bert.encoder.layer.0"
    # whole rank channels of every factor pair, and whole FFN neurons of layer 0 (rows of its producer)
    masks = {
        name: block_masks(module.weight, (0, 0), "row", 0.5)
        for name, module in compressible_layers(model.model, "classifier")
        if name.endswith(".first") or name == f"{layer0}.intermediate.dense.second"
    }
    apply_masks(model.model, masks)
    with pytest.raises(ValueError, match="permanent"):
        model.save_pretrained(tmp_path / "refused")
    make_permanent(model.model)
    model.eval()
    expected = model(**x).logits
    shrunk = shrink_model(model.model)
    assert shrunk["ffn_width"][f"{layer0}.intermediate.dense"]["after"] < 37
    assert shrunk["rank"][f"{layer0}.intermediate.dense"] == {"before": 8, "after": 4}
    assert torch.allclose(model(**x).logits, expected, atol=1e-5)

    out = tmp_path / "compressed"
    model.save_pretrained(out)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "adabert-compressed" and config["base"]["model_type"] == "bert"
    spec = config["compression"]["modules"][f"{layer0}.intermediate.dense"]
    assert spec["type"] == "factorized_linear" and spec["out_features"] < 37
    reloaded = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert isinstance(reloaded, AdaBertCompressedForSequenceClassification)
    assert torch.allclose(reloaded(**x).logits, expected, atol=1e-6)
    assert n_params(reloaded) == n_params(model) < before
    assert reloaded.config.num_labels == 2 and reloaded.config.vocab_size == original.config.vocab_size


def test_unfactorized_ffn_shrinks_to_plain_smaller_linears(tiny_bert_dir, tmp_path):
    model = wrap(AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir).eval())
    _randomise_biases(model)
    x = batch(model.config.vocab_size)
    name = "bert.encoder.layer.1.output.dense"
    apply_masks(model.model, {name: block_masks(model.model.get_submodule(name).weight, (0, 0), "col", 0.4)})
    make_permanent(model.model)
    expected = model(**x).logits
    assert shrink_model(model.model)["ffn_width"]["bert.encoder.layer.1.intermediate.dense"]["after"] == 22
    model.save_pretrained(tmp_path / "m")
    spec = json.loads((tmp_path / "m" / "config.json").read_text())["compression"]["modules"]
    assert spec[name] == {"type": "linear", "in_features": 22, "out_features": 32, "bias": True}
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "m").eval()
    assert torch.allclose(reloaded(**x).logits, expected, atol=1e-6)


def _student(num_labels: int = 2, seed: int = 3):
    space = get_space("adabert_cnn")
    for s in range(seed, seed + 50):  # a genotype with at least one convolution
        genotype = random_genotype(space, s, hidden_size=16)
        if any("conv" in e.op for e in genotype.edges):
            break
    generator = torch.Generator().manual_seed(0)
    tables = {
        "word": torch.randn(60, 24, generator=generator),
        "position": torch.randn(40, 24, generator=generator),
    }
    return build_student(genotype, num_labels, tables, pair=True)


def test_factorized_student_reloads_smaller_with_identical_outputs(tmp_path):
    torch.manual_seed(0)
    student = _student().eval()
    x = batch(60)
    model = wrap(student)
    before = n_params(model)
    stats = factorize_model(model.model, rank_ratio=0.5, exclude=r"(^|\.)head(\.|$)")
    convs = [n for n, s in stats.items() if s["factorized"]]
    assert convs and all(".ops." in n for n in convs)
    # prune half the rank channels of each factorized conv: the ranks shrink physically
    firsts = {f"{n}.first": model.model.get_submodule(f"{n}.first") for n in convs}
    apply_masks(model.model, {n: block_masks(m.weight, (0, 0), "row", 0.5) for n, m in firsts.items()})
    make_permanent(model.model)
    expected = model(**x).logits
    shrunk = shrink_model(model.model)
    assert {shrunk["rank"][n]["after"] for n in convs} == {4} and not shrunk["ffn_width"]
    assert torch.allclose(model(**x).logits, expected, atol=1e-6)
    model.save_pretrained(tmp_path / "student")
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "student").eval()
    assert torch.allclose(reloaded(**x).logits, expected, atol=1e-6)
    assert n_params(reloaded) < before
    spec = reloaded.config.compression["modules"]
    assert {spec[n]["type"] for n in convs} == {"factorized_conv1d"} and spec[convs[0]]["rank"] == 4
    assert reloaded.config.pair is True


POOLING_CELL = [
    (0, 2, "max_pool3"),
    (1, 2, "avg_pool3"),
    (0, 3, "max_pool3"),
    (2, 3, "identity"),
    (0, 4, "max_pool3"),
    (1, 4, "identity"),
]


def _pooling_student(seed: int = 0):
    """A student with a parameter-free cell, like the searched SST-2 one: all but its head is embeddings."""
    from adabert.genotype import Edge, Genotype

    edges = tuple(Edge(*e) for e in POOLING_CELL)
    genotype = Genotype("adabert_cnn", 2, edges, hidden_size=16)
    generator = torch.Generator().manual_seed(seed)
    tables = {
        "word": torch.randn(60, 24, generator=generator),
        "position": torch.randn(40, 24, generator=generator),
    }
    return build_student(genotype, 2, tables, pair=True, cell_norm=False).eval()


def test_pruned_hidden_dimensions_are_removed_exactly_and_reload(tmp_path):
    from adabert.compress.prune import mask_hidden_dims

    torch.manual_seed(0)
    student = _pooling_student()
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.1 * torch.randn_like(p))  # no zero by chance, no LayerNorm at its identity init
    x = batch(60)
    keep = torch.arange(16) % 3 != 0  # 10 of 16 dimensions
    mask_hidden_dims(student, student.HIDDEN_TENSORS, keep)
    make_permanent(student)
    expected = student(**x).logits
    shrunk = shrink_model(student)
    assert shrunk["hidden"] == {"model": {"before": 16, "after": 10}}
    assert student.config.hidden_size == 10 and student.config.norm_width == 16
    assert student.embeddings.word.weight.shape == (60, 10) and student.head.out.weight.shape == (2, 10)
    assert torch.allclose(student(**x).logits, expected, atol=1e-5)
    student.save_pretrained(tmp_path / "narrow")
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "narrow").eval()
    assert torch.allclose(reloaded(**x).logits, expected, atol=1e-5)
    # a dimension zero in the tables but not in the LayerNorm shift still carries a signal: kept
    other = _pooling_student()
    with torch.no_grad():
        other.embeddings.word.weight[:, 0] = 0
        other.embeddings.position.weight[:, 0] = 0
    assert other.remove_pruned_hidden_dims() is None
    assert _student().remove_pruned_hidden_dims() is None  # convolutions mix the dimensions


def test_block_pruning_of_word_table_columns_takes_whole_hidden_dimensions(tmp_path):
    student = _pooling_student()
    cfg = CompressConfig(
        target_sparsity=0.5, prune_rounds=2, group="col", embeddings=True, exclude=r"(^|\.)head(\.|$)"
    )
    stats = run_block(student, cfg, RecordingDistiller(student))
    assert "embeddings.position" not in stats["layers"]  # pruned with the word table, not on its own
    make_permanent(student)
    expected = student(**batch(60)).logits
    assert shrink_model(student)["hidden"]["model"] == {"before": 16, "after": 8}
    assert torch.allclose(student(**batch(60)).logits, expected, atol=1e-5)


# ------------------------------------------------------------------------------------- iterative schedule
def test_keep_schedule_follows_target_to_the_power_t_over_T():
    schedule = keep_schedule(0.75, 4)
    assert schedule == pytest.approx([0.25 ** (t / 4) for t in range(1, 5)])
    assert schedule[-1] == pytest.approx(0.25)
    assert all(a > b for a, b in zip(schedule, schedule[1:]))
    with pytest.raises(ValueError):
        keep_schedule(0.5, 0)


class RecordingDistiller:
    """Stands in for the KD loop: records each layer's sparsity whenever training would run."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.seen = model, []

    def steps(self, epochs: float) -> int:
        return int(round(epochs * 10))

    def run(self, steps: int, desc: str, *args, **kwargs) -> dict:
        if steps:
            self.seen.append((desc, {n: float((m.weight == 0).float().mean()) for n, m in self._layers()}))
        return {"steps": steps}

    def _layers(self):
        return [(n, m) for n, m in self.model.named_modules() if isinstance(m, nn.Linear)]


def test_iterative_magnitude_pruning_follows_the_schedule():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 30), nn.Linear(30, 10))
    cfg = CompressConfig(target_sparsity=0.8, prune_rounds=5, kd_epochs=1.0, retrain_epochs=0.5, exclude="")
    distiller = RecordingDistiller(model)
    stats = run_magnitude(model, cfg, distiller)
    rounds = [seen for desc, seen in distiller.seen if desc.startswith("magnitude round")]
    assert len(rounds) == 5 and distiller.seen[-1][0] == "magnitude: retrain"
    for t, seen in enumerate(rounds, 1):
        keep = 0.2 ** (t / 5)
        for name, module in distiller._layers():
            assert abs(seen[name] - (1 - keep)) <= 1 / module.weight.numel() + 1e-9
    assert stats["density"] == pytest.approx(0.2, abs=0.01)
    assert [r["keep"] for r in stats["rounds"]] == pytest.approx(keep_schedule(0.8, 5))


def test_block_pruning_cuts_whole_groups_in_rounds_under_the_group_lasso():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 30), nn.Linear(30, 10))
    cfg = CompressConfig(
        target_sparsity=0.5, prune_rounds=4, kd_epochs=1.0, retrain_epochs=0.5, exclude="", block_size=(0, 5)
    )
    distiller = RecordingDistiller(model)
    stats = run_block(model, cfg, distiller)
    rounds = [seen for desc, seen in distiller.seen if desc.startswith("block round")]
    assert len(rounds) == 4 and distiller.seen[-1][0] == "block: retrain"
    sparsities = [seen["0"] for seen in rounds]
    assert sparsities == sorted(sparsities) and sparsities[-1] == pytest.approx(0.5, abs=0.05)
    assert [r["keep"] for r in stats["rounds"]] == pytest.approx(keep_schedule(0.5, 4))
    for _, module in distiller._layers():  # every pruned weight lies in a fully pruned row segment of 5
        zero = (module.weight == 0).reshape(module.weight.shape[0], -1, 5)
        assert bool((zero.all(-1) | ~zero.any(-1)).all())
    assert stats["density"] == pytest.approx(0.5, abs=0.05)


def test_methods_and_config():
    assert parse_methods("svd, block") == ["svd", "block"]
    with pytest.raises(ValueError, match="unknown"):
        parse_methods("svd,quantize")
    assert STAGE_CONFIGS["compress"] is CompressConfig
    cfg = from_dict(CompressConfig, {"methods": "block", "block_size": [32, 32], "energy": 0.9})
    assert cfg.block_size == (32, 32) and cfg.energy == 0.9


# ------------------------------------------------------------------------------------- hidden-state KD
def test_hidden_state_kd_is_the_mean_token_mse_and_ignores_padding():
    torch.manual_seed(0)
    student = [torch.randn(2, 5, 4) for _ in range(3)]
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert hidden_state_kd(student, [s.clone() for s in student], mask) == 0
    teacher = [s + 1.0 for s in student]
    assert hidden_state_kd(student, teacher, mask).item() == pytest.approx(1.0)
    for t in teacher:  # what stands at padded positions does not count
        t[0, 3:] += 100.0
    assert hidden_state_kd(student, teacher, mask).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="levels"):
        hidden_state_kd(student, teacher[:2], mask)


def _rows(model: nn.Module, n: int = 32, length: int = 10) -> StoreSplit:
    """Random token rows labelled with ``model``'s own logits, as a knowledge store holds them."""
    ids = torch.randint(7, model.config.vocab_size, (n, length), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    tokens = TokenRows(
        ids=ids.numpy().astype(np.int32).ravel(),
        offsets=np.arange(n + 1, dtype=np.int64) * length,
        second=np.full(n, length, dtype=np.int32),
    )
    labels = logits.argmax(-1).numpy()
    return StoreSplit(tokens, labels, logits.numpy(), logits[:, None].numpy())


def _hidden_gap(model: nn.Module, original: nn.Module, rows: StoreSplit) -> float:
    rows_batch = rows.__getitems__(range(len(rows)))
    batch = {k: rows_batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        ours, theirs = (m.eval()(**batch, output_hidden_states=True).hidden_states for m in (model, original))
    return hidden_state_kd(ours, theirs, batch["attention_mask"]).item()


def test_distiller_pulls_the_hidden_states_back_to_the_original(tiny_bert_dir):
    """LadaBERT's layer-wise KD: a damaged copy trains back towards the original's hidden states."""
    import copy

    original = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir).eval()
    rows = _rows(original)
    torch.manual_seed(0)
    damaged = copy.deepcopy(original)
    with torch.no_grad():
        for name, p in damaged.named_parameters():
            if "intermediate" in name:
                p.add_(0.5 * torch.randn_like(p))
    before = _hidden_gap(damaged, original, rows)
    gaps = {}
    for weight in (0.0, 1.0):
        model = copy.deepcopy(damaged)
        cfg = CompressConfig(batch_size=8, hidden_kd=weight, device="cpu")
        distiller = Distiller(model, rows, cfg, False, torch.device("cpu"), 1e-3, reference=original)
        stats = distiller.run(40, "test")
        assert (distiller.reference is original) == (weight > 0) and (stats["hidden"] > 0) == (weight > 0)
        gaps[weight] = _hidden_gap(model, original, rows)
    assert gaps[1.0] < 0.5 * before and gaps[1.0] < 0.5 * gaps[0.0]
    # an original of other shapes cannot teach hidden states: logits KD only, with a warning
    other = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_hidden_layers=1).eval()
    assert Distiller(model, rows, cfg, False, torch.device("cpu"), 1e-3, other).reference is None


# ------------------------------------------------------------------------------------------- end to end
def _settings(store: Path, out: Path, **overrides) -> CompressConfig:
    values = dict(
        store=str(store),
        output_dir=str(out),
        kd_epochs=1.0,
        retrain_epochs=0.5,
        batch_size=16,
        prune_rounds=2,
        reweight_every=2,
        batch_sizes=(1,),
        seq_len=16,
        repeats=2,
        warmup=1,
        device="cpu",
    )
    return CompressConfig(**{**values, **overrides})


def test_compress_end_to_end_teacher_and_student(tiny_store, tmp_path):
    from adabert.teacher.store import KnowledgeStore

    teacher_dir = str(KnowledgeStore.open(tiny_store).teacher_path)
    out = tmp_path / "bert_compressed"
    report = compress(_settings(tiny_store, out, model=teacher_dir, methods="svd,block"))
    for name in ("model.safetensors", "config.json", "tokenizer.json", "report.json", "report.md"):
        assert (out / name).exists(), name
    assert (out / "compress_config.json").exists()
    assert report["teacher_is_original"] and report["references"] == ["original"]
    assert {"compressed", "original", "teacher"} <= set(report["metrics"])
    assert {"accuracy", "label_loyalty", "probability_loyalty"} <= set(report["metrics"]["compressed"])
    size = report["size"]
    assert size["compressed"]["total"] < size["original"]["total"]
    assert size["compressed"]["file_bytes"] < size["original"]["file_bytes"]
    assert "speedup_vs_original" in report["latency"]["compressed"]["1"]
    methods = report["compression"]["methods"]
    assert [m["method"] for m in methods] == ["svd", "block"]
    assert methods[0]["factorized"] > 0 and methods[1]["density"] == pytest.approx(0.5, abs=0.05)
    assert report["compression"]["reload_max_abs_diff"] <= 1e-5
    assert report["compression"]["shrunk"]["rank"]  # whole rows of the factors went: the ranks shrank
    reloaded = AutoModelForSequenceClassification.from_pretrained(out)
    assert reloaded.config.compression["methods"] == ["svd", "block"]
    assert sum(p.numel() for p in reloaded.parameters()) == size["compressed"]["total"]
    assert "# Evaluation report" in (out / "report.md").read_text()

    # half the feed-forward neurons only (their consumer excluded from pruning): removed physically
    out = tmp_path / "bert_ffn"
    ffn_only = r"(classifier|pooler|attention|output\.dense)"
    report = compress(_settings(tiny_store, out, model=teacher_dir, methods="block", exclude=ffn_only))
    widths = report["compression"]["shrunk"]["ffn_width"]
    assert len(widths) == 2 and all(w["after"] <= 0.55 * w["before"] for w in widths.values())
    assert report["size"]["compressed"]["total"] < report["size"]["original"]["total"]

    # an AdaBERT student, LadaBERT style: factorize, then prune the factors iteratively
    from adabert.io import save_pretrained_atomic
    from adabert.search import student_tables
    from adabert.student.train import student_config_kwargs
    from adabert.teacher.store import KnowledgeStore

    store = KnowledgeStore.open(tiny_store)
    genotype = random_genotype(get_space("adabert_cnn"), 5, hidden_size=16)
    tables = student_tables(store, "input", 16)
    student = build_student(genotype, 2, tables, False, **student_config_kwargs(store))
    student_dir = tmp_path / "student"
    save_pretrained_atomic(student_dir, student, store.tokenizer())
    out = tmp_path / "student_compressed"
    report = compress(
        _settings(tiny_store, out, model=str(student_dir), methods="svd,magnitude", target_sparsity=0.6)
    )
    assert report["references"] == ["original", "teacher"]
    assert set(report["latency"]) == {"compressed", "original", "teacher"}
    magnitude = report["compression"]["methods"][-1]
    assert magnitude["method"] == "magnitude" and magnitude["density"] == pytest.approx(0.4, abs=0.01)
    size = report["size"]["compressed"]
    assert size["sparse_file_bytes_estimate"] < size["file_bytes"]
    reloaded = AutoModelForSequenceClassification.from_pretrained(out)
    assert reloaded.config.base["model_type"] == "adabert-student"
    stats = sparsity_stats(reloaded.model, exclude=r"(^|\.)head(\.|$)")
    assert stats["density"] == pytest.approx(0.4, abs=0.01)

    # the embedding table too (most of a student's weights): ALBERT-style factorized embeddings
    out = tmp_path / "student_embeddings"
    report = compress(_settings(tiny_store, out, model=str(student_dir), methods="svd", embeddings=True))
    word = "embeddings.word"
    assert report["compression"]["methods"][0]["layers"][word]["factorized"]
    reloaded = AutoModelForSequenceClassification.from_pretrained(out)
    assert reloaded.config.compression["modules"][word]["type"] == "factorized_embedding"
    assert report["size"]["compressed"]["total"] < 0.7 * report["size"]["original"]["total"]

    # half the hidden dimensions of a student with parameter-free cells whose head does not normalise
    # the cells: a narrower student
    from adabert.genotype import Edge, Genotype

    edges = tuple(Edge(*e) for e in POOLING_CELL)
    pooling = Genotype("adabert_cnn", 1, edges, hidden_size=16)
    student = build_student(pooling, 2, tables, False, **{**student_config_kwargs(store), "cell_norm": False})
    save_pretrained_atomic(tmp_path / "pooling", student, store.tokenizer())
    out = tmp_path / "student_narrow"
    settings = _settings(tiny_store, out, model=str(tmp_path / "pooling"), methods="block", group="col")
    report = compress(dataclasses.replace(settings, embeddings=True))
    assert report["compression"]["shrunk"]["hidden"]["model"] == {"before": 16, "after": 8}
    assert report["compression"]["shrink_max_abs_diff"] <= 1e-4
    reloaded = AutoModelForSequenceClassification.from_pretrained(out)
    assert reloaded.config.base["hidden_size"] == 8 and reloaded.config.base["norm_width"] == 16
    assert report["size"]["compressed"]["total"] < 0.55 * report["size"]["original"]["total"]


def test_a_compression_that_failed_over_a_finished_one_leaves_no_model_to_use(
    tiny_store, tmp_path, monkeypatch
):
    """The old compressed model beside the new run's settings is refused, naming the command to run."""
    import adabert.compress.run as compress_module
    from adabert.model_folder import ModelFolderError, load_classifier
    from adabert.teacher.store import KnowledgeStore

    teacher_dir = str(KnowledgeStore.open(tiny_store).teacher_path)
    out = tmp_path / "compressed"
    compress(_settings(tiny_store, out, model=teacher_dir, methods="svd", kd_epochs=0.0, skip_latency=True))
    load_classifier(out)  # finished: usable

    def fails(model):
        raise RuntimeError("stopped mid-way")

    monkeypatch.setattr(compress_module, "wrap", fails)
    with pytest.raises(RuntimeError, match="stopped mid-way"):
        compress(_settings(tiny_store, out, model=teacher_dir, methods="svd", kd_epochs=0.0, rank_ratio=0.25))
    with pytest.raises(ModelFolderError, match=r"the adabert compress that wrote it did not finish"):
        load_classifier(out)
