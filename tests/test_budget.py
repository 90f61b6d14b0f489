"""The efficiency budget: the measured latency table, its cache, the budget loss, same-budget baselines."""

from __future__ import annotations

import json

import pytest
import torch

from adabert.genotype import Edge, Genotype
from adabert.search import latency
from adabert.search.baselines import random_at_budget
from adabert.search.efficiency import BudgetCost
from adabert.search.latency import LatencyTable, latency_table
from adabert.search.supernet import Sample
from search_spaces import get_space

EMBEDDING = {"vocab_size": 50, "max_position_embeddings": 64, "pair": False}


def _table(space) -> LatencyTable:
    """A hand-made table: convolutions cost 1 ms per unit of width, the rest 0.1 ms (batch 1)."""
    ops = {op: {"1": (int(op[-1]) if "conv" in op else 0.1), "32": 10.0} for op in space.ops}
    return LatencyTable(
        ops,
        {"1": 1.0, "32": 5.0},
        {"1": 0.5, "32": 1.0},
        {"1": 40.0, "32": 400.0},
        dict.fromkeys(space.ops, 0),
        {"space": space.name},
    )


def _sample(space, op: str, depth: int, max_cells: int = 3) -> Sample:
    onehot = torch.nn.functional.one_hot(torch.full((len(space.edges),), space.op_index(op)), len(space.ops))
    depth_onehot = torch.nn.functional.one_hot(torch.tensor(depth - 1), max_cells).float()
    return Sample([], depth, None, onehot.float().requires_grad_(), depth_onehot)


def test_budget_loss_is_zero_at_the_target_and_grows_on_both_sides():
    space = get_space("adabert_cnn")
    table = _table(space)
    # one cell of conv3 everywhere: 1.0 + 1 x (0.5 + 6 edges x 3 ms) = 19.5 ms
    assert BudgetCost(space, table, 19.5, "ms", 1).cost(_sample(space, "conv3", 1)).item() == pytest.approx(
        19.5
    )
    cost = BudgetCost(space, table, 19.5, "ms", 1)
    at = cost.loss(_sample(space, "conv3", 1)).item()
    cheaper = cost.loss(_sample(space, "identity", 1)).item()
    dearer = cost.loss(_sample(space, "conv7", 1)).item()
    deeper = cost.loss(_sample(space, "conv3", 3)).item()
    assert at == pytest.approx(0.0, abs=1e-6) and cheaper > 0 and dearer > 0 and deeper > dearer
    # the gradient pushes a too-cheap network up and a too-dear one down
    for op, sign in (("identity", -1), ("conv7", 1)):
        sample = _sample(space, op, 1)
        cost.loss(sample).backward()
        conv7 = space.op_index("conv7")
        assert sign * sample.edge_onehot.grad[0, conv7].item() > 0
    # a parameter budget counts the cells' parameters
    params = BudgetCost(space, table, 100.0, "params", 1)
    assert params.loss(_sample(space, "identity", 1)).item() == pytest.approx(1.0)


def test_the_derivation_fits_the_budget_giving_up_as_little_of_the_logits_as_it_can():
    space = get_space("adabert_cnn")
    table = _table(space)
    kept = ((0, 2), (1, 2), (0, 3), (2, 3), (2, 4), (3, 4))
    edges = tuple(Edge(s, t, "conv7") for s, t in space.edges if (s, t) in kept)
    wide = Genotype(space.name, 3, edges, 16, embedding=EMBEDDING)
    edge_logits = torch.zeros(len(space.edges), len(space.ops))
    edge_logits[:, space.op_index("conv7")] = 3.0
    edge_logits[:, space.op_index("conv3")] = 2.5  # the next best, much cheaper
    depth_logits = torch.tensor([0.0, 0.1, 0.2])  # depth barely preferred: cut cells first
    # 3 cells of 6 conv7 edges: 1.0 + 3 x (0.5 + 42) = 128.5 ms
    cost = BudgetCost(space, table, 30.0, "ms", 1)
    assert cost.genotype_cost(wide) == pytest.approx(table.predict(wide, 1)) == pytest.approx(128.5)
    fitted = cost.fit(wide, edge_logits, depth_logits)
    assert cost.genotype_cost(fitted) <= 30.0 and fitted.num_cells == 1
    assert all(e.op in ("conv7", "conv3") for e in fitted.edges)  # the cheap, weak ops stay unused
    assert [(e.source, e.target) for e in fitted.edges] == [(e.source, e.target) for e in wide.edges]
    fitted.validate()
    assert cost.fit(fitted, edge_logits, depth_logits) == fitted  # within the budget: unchanged
    # an impossible budget ends at the cheapest genotype the ops allow, never at the zero op
    cheapest = BudgetCost(space, table, 0.1, "ms", 1).fit(wide, edge_logits, depth_logits)
    assert cheapest.num_cells == 1
    assert {e.op for e in cheapest.edges} <= {"identity", "max_pool3", "avg_pool3"}


def test_random_genotypes_at_the_same_budget():
    space = get_space("adabert_cnn")
    table = _table(space)
    target = 12.0
    found = random_at_budget(space, table, target, 1, 5, seed=0, hidden_size=16, tolerance=0.15)
    assert len(found) == 5 == len(set(found))
    assert all(abs(table.predict(g, 1) / target - 1) <= 0.15 for g in found)
    assert found == random_at_budget(space, table, target, 1, 5, seed=0, hidden_size=16, tolerance=0.15)
    with pytest.raises(ValueError, match="widen the tolerance"):
        random_at_budget(space, table, 0.001, 1, 1, seed=0, hidden_size=16, max_draws=50)


def test_the_table_predicts_a_student_and_is_cached_per_machine_and_torch(
    tiny_bert_dir, tmp_path, monkeypatch
):
    monkeypatch.setenv("ADABERT_CACHE", str(tmp_path / "cache"))
    space = get_space("adabert_cnn")
    measured = []
    real = latency.measure_table

    def counting(*args, **kwargs):
        measured.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(latency, "measure_table", counting)

    def table() -> LatencyTable:
        return latency_table(space, 16, 16, tiny_bert_dir, "sha", EMBEDDING, 2, (1, 2), threads=1)

    first = table()
    assert set(first.ops) == set(space.ops) and set(first.base) == {"1", "2"} and first.teacher["1"] > 0
    assert all(first.ops[op]["1"] > 0 for op in space.ops) and first.params["conv3"] == 3 * 16 * 16 + 32
    genotype = Genotype(
        "adabert_cnn",
        2,
        (
            Edge(0, 2, "conv3"),
            Edge(1, 2, "identity"),
            Edge(0, 3, "conv5"),
            Edge(2, 3, "max_pool3"),
            Edge(2, 4, "identity"),
            Edge(3, 4, "dil_conv3"),
        ),
        hidden_size=16,
    )
    expected = first.base["1"] + 2 * (first.cell["1"] + sum(first.ops[e.op]["1"] for e in genotype.edges))
    assert first.predict(genotype, 1) == pytest.approx(expected)
    assert table() == first and len(measured) == 1  # reused from the cache
    files = list((tmp_path / "cache" / "latency").glob("*.json"))
    assert (
        len(files) == 1 and json.loads(files[0].read_text())["info"]["machine"]["torch"] == torch.__version__
    )
    machine = latency.machine_description()
    monkeypatch.setattr(latency, "machine_description", lambda: {**machine, "cpu": "another processor"})
    table()
    assert len(measured) == 2  # another machine: measured again
    monkeypatch.setattr(latency, "machine_description", lambda: {**machine, "torch": "9.9.9"})
    table()
    assert len(measured) == 3 and len(list((tmp_path / "cache" / "latency").glob("*.json"))) == 3
    assert first.sha256 == LatencyTable.from_dict(json.loads(files[0].read_text())).sha256


def test_a_speedup_budget_holds_at_batch_32_too():
    space = get_space("adabert_cnn")
    table = _table(space)  # batch 32: every op 10 ms, base 5, cell 1 -> one cell of 6 edges: 66 ms
    kept = ((0, 2), (1, 2), (0, 3), (2, 3), (2, 4), (3, 4))
    wide = Genotype(space.name, 3, tuple(Edge(s, t, "conv3") for s, t in space.edges if (s, t) in kept), 16)
    logits = torch.zeros(len(space.edges), len(space.ops))
    depth_logits = torch.tensor([0.0, 0.1, 0.2])
    # batch 1: 1 + 3 x (0.5 + 18) = 56.5 ms is within 60; batch 32: 5 + 3 x 61 = 188 ms is not within 100
    alone = BudgetCost(space, table, 60.0, "ms", 1)
    assert alone.fit(wide, logits, depth_logits) == wide
    both = BudgetCost(space, table, 60.0, "ms", 1, also={1: 60.0, 32: 100.0})
    fitted = both.fit(wide, logits, depth_logits)
    assert both.budget_used(fitted) <= 1 and fitted.num_cells == 1
    assert table.predict(fitted, 32) <= 100.0 and table.predict(fitted, 1) <= 60.0
    assert both.describe()["also"] == {"32": 100.0}


def test_the_latency_table_times_students_with_the_head_they_will_have(tiny_bert_dir, tmp_path, monkeypatch):
    from adabert.student.network import AdaBertStudentConfig

    monkeypatch.setenv("ADABERT_CACHE", str(tmp_path / "cache"))
    heads = []
    real_init = AdaBertStudentConfig.__init__

    def recording(self, *args, **kwargs):
        heads.append(kwargs.get("head"))
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(AdaBertStudentConfig, "__init__", recording)
    pair = {**EMBEDDING, "pair": True}
    space = get_space("adabert_cnn")
    table = latency_table(space, 16, 16, tiny_bert_dir, "sha", pair, 2, (1,), threads=1, head="match")
    assert table.info["head"] == "match" and heads == ["match", "match"]  # the depth-1 and depth-2 students
    keys = {latency.table_key(space, 16, 16, (1,), 1, "sha", True, head) for head in ("match", "paper")}
    assert len(keys) == 2  # another head: another table


def test_a_student_slower_than_the_table_says_is_fitted_again_until_its_timing_holds():
    space = get_space("adabert_cnn")
    table = _table(space)
    kept = ((0, 2), (1, 2), (0, 3), (2, 3), (2, 4), (3, 4))
    wide = Genotype(space.name, 3, tuple(Edge(s, t, "conv3") for s, t in space.edges if (s, t) in kept), 16)
    logits = torch.zeros(len(space.edges), len(space.ops))
    depth_logits = torch.tensor([0.0, 0.1, 0.2])
    # the table: 56.5 ms at batch 1 and 188 ms at batch 32, within 60 and 200 ms
    cost = BudgetCost(space, table, 60.0, "ms", 1, also={1: 60.0, 32: 200.0})
    assert cost.fit(wide, logits, depth_logits) == wide

    def slow(g):  # batch 32 costs twice what the table says per cell
        deep = table.base["32"] + 2 * (table.predict(g, 32) - table.base["32"])
        return {1: {"student": table.predict(g, 1)}, 32: {"student": deep}}

    checked, timings = cost.check(wide, logits, depth_logits, slow)
    assert checked != wide and slow(checked)[32]["student"] <= 200.0 and slow(checked)[1]["student"] <= 60.0
    assert [t["within"] for t in timings] == [False] * (len(timings) - 1) + [True]
    assert timings[0]["batches"]["32"]["student_ms"] == pytest.approx(371.0)  # 5 + 2 x 183
    assert timings[0]["batches"]["32"]["predicted_ms"] == pytest.approx(188.0)
    assert cost.describe()["correction"]["32"] > 1.9
    # a student as fast as the table says is left as it is, timed once
    honest = BudgetCost(space, table, 60.0, "ms", 1, also={1: 60.0, 32: 200.0})
    as_said = lambda g: {b: {"student": table.predict(g, b)} for b in (1, 32)}  # noqa: E731
    same, once = honest.check(wide, logits, depth_logits, as_said)
    assert same == wide and len(once) == 1 and once[0]["within"]
    # a parameter budget is exact: there is nothing to time
    assert BudgetCost(space, table, 100.0, "params", 1).limits() == {}


def test_a_speedup_budget_is_checked_against_the_teacher_timed_beside_the_student():
    space = get_space("adabert_cnn")
    table = _table(space)  # the teacher: 40 ms at batch 1, 400 at batch 32
    kept = ((0, 2), (1, 2), (0, 3), (2, 3), (2, 4), (3, 4))
    wide = Genotype(space.name, 3, tuple(Edge(s, t, "conv3") for s, t in space.edges if (s, t) in kept), 16)
    logits, depth_logits = torch.zeros(len(space.edges), len(space.ops)), torch.tensor([0.0, 0.1, 0.2])
    limits = {1: 40.0 / 0.5, 32: 400.0 / 0.5}  # 2x slower than the teacher: the wide cell fits
    cost = BudgetCost(space, table, limits[1], "ms", 1, also=limits, speedup=0.5)

    def loaded(g):  # the machine now runs everything 3x slower than on the table's day
        return {b: {"student": 3 * table.predict(g, b), "teacher": 3 * table.teacher[str(b)]}
                for b in (1, 32)}

    same, timings = cost.check(wide, logits, depth_logits, loaded)
    assert same == wide and timings[0]["within"]  # 169.5 ms against 240: the speedup holds
    assert timings[0]["batches"]["1"]["limit_ms"] == pytest.approx(240.0)
    assert timings[0]["batches"]["1"]["teacher_ms"] == pytest.approx(120.0)


def test_a_student_is_built_from_its_genotype_with_the_head_asked_for():
    space = get_space("adabert_cnn")
    kept = ((0, 2), (1, 2), (0, 3), (2, 3), (2, 4), (3, 4))
    cell = Genotype(space.name, 2, tuple(Edge(s, t, "conv3") for s, t in space.edges if (s, t) in kept), 16)
    student = latency.build_student(cell, EMBEDDING, 2, "pooled")
    assert not student.training and student.config.head == "pooled"
    out = student(input_ids=torch.randint(0, 50, (2, 8)), attention_mask=torch.ones(2, 8, dtype=torch.long))
    assert out.logits.shape == (2, 2)


def test_edited_student_code_is_timed_anew(tmp_path, monkeypatch):
    space = get_space("adabert_cnn")
    module = tmp_path / "student_code_under_test.py"
    module.write_text("CELLS = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(latency, "STUDENT_MODULES", ("student_code_under_test",))
    key = lambda: latency.table_key(space, 16, 16, (1,), 1, "sha", False)  # noqa: E731
    before = key()
    assert key() == before
    module.write_text("CELLS = 2\n")
    assert key() != before
