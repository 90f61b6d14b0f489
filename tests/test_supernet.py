"""Supernet sampling, gradients to the architecture, the efficiency loss and the KD losses."""

import pytest
import torch

from adabert.distill import hierarchical_kd, matched_layers, soft_cross_entropy
from adabert.genotype import Edge, Genotype, derive_genotype
from adabert.search.efficiency import PaperCost, normalised_op_costs
from adabert.search.supernet import Sample, Supernet, straight_through_gumbel
from search_spaces import get_space, list_spaces

VOCAB, POSITIONS, TEACHER_DIM = 50, 32, 24


def tiny_supernet(space_name: str = "adabert_cnn", pair: bool = True, labels: int = 2) -> Supernet:
    torch.manual_seed(0)
    tables = {"word": torch.randn(VOCAB, TEACHER_DIM), "position": torch.randn(POSITIONS, TEACHER_DIM)}
    space = get_space(space_name)  # each space at its own cell shape, at most 3 cells
    return Supernet(space, labels, tables, hidden_size=16, max_cells=min(3, space.max_cells), pair=pair)


def batch(size: int = 4, length: int = 10) -> dict[str, torch.Tensor]:
    ids = torch.randint(1, VOCAB, (size, length))
    mask = torch.ones(size, length, dtype=torch.long)
    mask[0, 7:] = 0
    types = torch.zeros(size, length, dtype=torch.long)
    types[:, 5:] = 1
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "token_type_ids": types,
        "labels": torch.randint(0, 2, (size,)),
    }


def test_straight_through_sample_is_one_hot_with_soft_gradient():
    logits = torch.zeros(5, 4, requires_grad=True)
    hard, index = straight_through_gumbel(logits, tau=0.5)
    assert torch.equal(hard.detach().sum(-1), torch.ones(5))
    assert torch.equal(hard.detach().argmax(-1), index)
    (hard * torch.arange(4.0)).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


@pytest.mark.parametrize("space_name", list_spaces())
def test_gradients_reach_architecture_logits(space_name):
    net = tiny_supernet(space_name)
    b = batch()
    for _ in range(3):  # a sample may pick only parameter-free ops; a few draws hit the logits
        net.zero_grad()
        sample = net.sample(tau=1.0)
        out = net(b["input_ids"], b["attention_mask"], b["token_type_ids"], sample)
        efficiency = PaperCost(net.space, 16, 16, net.max_cells).loss(sample)
        loss = torch.nn.functional.cross_entropy(out.logits, b["labels"]) + efficiency
        loss.backward()
        assert net.depth_logits.grad is not None and net.depth_logits.grad.abs().sum() > 0
        assert net.edge_logits.grad is not None and net.edge_logits.grad.abs().sum() > 0
        assert len(out.probe_logits) == sample.depth + 1


def test_only_sampled_ops_run():
    net = tiny_supernet()
    calls: list[str] = []
    for cell in net.cells:
        for edge_ops, names in zip(cell.ops, cell.candidates):
            for op, name in zip(edge_ops, names):
                op.register_forward_hook(lambda *_, n=name: calls.append(n))
    sample = net.sample(tau=1.0)
    b = batch()
    net(b["input_ids"], b["attention_mask"], b["token_type_ids"], sample)
    ran_per_cell = sum(choice is not None for choice in sample.edges)
    assert len(calls) == ran_per_cell * sample.depth
    assert "zero" not in calls


def test_padding_does_not_change_outputs():
    net = tiny_supernet().eval()
    genotype = Genotype(
        space="adabert_cnn",
        num_cells=2,
        hidden_size=16,
        edges=(
            Edge(0, 2, "conv3"),
            Edge(1, 2, "max_pool3"),
            Edge(2, 3, "dil_conv5"),
            Edge(0, 3, "identity"),
            Edge(3, 4, "avg_pool3"),
            Edge(1, 4, "conv7"),
        ),
    )
    sample = net.fixed_sample(genotype)
    b = batch(size=1, length=6)
    padded = {k: torch.cat([v, torch.zeros(1, 4, dtype=v.dtype)], 1) for k, v in b.items() if k != "labels"}
    with torch.no_grad():
        short = net(b["input_ids"], b["attention_mask"], b["token_type_ids"], sample).logits
        long = net(padded["input_ids"], padded["attention_mask"], padded["token_type_ids"], sample).logits
    torch.testing.assert_close(short, long, atol=1e-5, rtol=1e-5)


def test_efficiency_loss_orders_ops_by_cost():
    net = tiny_supernet()
    space = net.space
    costs = normalised_op_costs(space, 16, 16)
    conv = {name: costs[space.op_index(name)] for name in ("conv3", "conv5", "conv7")}
    assert conv["conv3"] < conv["conv5"] < conv["conv7"]
    cheapest = costs.min()
    assert costs[space.op_index("zero")] == cheapest and costs[space.op_index("identity")] == cheapest
    assert float(costs.sum()) == pytest.approx(1.0)
    # an all-conv7 network at full depth costs more than the same at depth 1, and than all-identity
    depth = torch.nn.functional.one_hot(torch.tensor(net.max_cells - 1), net.max_cells).float()
    shallow = torch.nn.functional.one_hot(torch.tensor(0), net.max_cells).float()

    def loss(op: str, depth_onehot: torch.Tensor) -> float:
        onehot = torch.nn.functional.one_hot(
            torch.full((len(space.edges),), space.op_index(op)), len(space.ops)
        ).float()
        return float(PaperCost(space, 16, 16, net.max_cells).loss(Sample([], 1, None, onehot, depth_onehot)))

    assert loss("conv7", depth) > loss("conv3", depth) > loss("identity", depth) > 0
    assert loss("conv7", depth) > loss("conv7", shallow)


def test_derived_subnetwork_runs_inside_supernet():
    net = tiny_supernet()
    logits = torch.zeros(len(net.space.edges), len(net.space.ops))
    logits[:, net.space.op_index("conv5")] = 3.0
    depth = torch.tensor([0.0, 5.0, 0.0])
    genotype = derive_genotype(net.space, logits, depth, hidden_size=16)
    assert genotype.num_cells == 2 and all(e.op == "conv5" for e in genotype.edges)
    b = batch()
    out = net(b["input_ids"], b["attention_mask"], b["token_type_ids"], net.fixed_sample(genotype))
    assert out.logits.shape == (4, 2) and len(out.probe_logits) == 3


def test_matched_layers_follow_round_m_l_over_k():
    assert matched_layers(4, 7) == [0, 2, 4, 6]  # K = 3 cells, L = 6 teacher layers
    assert matched_layers(2, 7) == [0, 6]
    assert matched_layers(9, 7) == [0, 1, 2, 2, 3, 4, 5, 5, 6]  # halves round up: 0.75*3=2.25 -> 2


def test_hierarchical_kd_weights_favour_right_confident_probes():
    labels = torch.tensor([0])
    good = torch.tensor([[4.0, -4.0]])
    bad = torch.tensor([[-4.0, 4.0]])
    teacher = torch.stack([bad, good], dim=1)  # probe 0 wrong, probe 1 right
    # a student matching the good probe beats one matching the bad probe
    near_good = hierarchical_kd([bad, good], teacher, labels, regression=False)
    swapped = hierarchical_kd([good, bad], teacher, labels, regression=False)
    assert near_good < swapped
    # with one pair the loss is the plain soft cross-entropy
    single = hierarchical_kd([good], teacher[:, :1], labels, regression=False)
    torch.testing.assert_close(single, soft_cross_entropy(good, bad))


def test_hierarchical_kd_regression_uses_mse():
    teacher = torch.tensor([[[1.0], [2.0]]])
    loss = hierarchical_kd(
        [torch.tensor([[1.0]]), torch.tensor([[2.0]])], teacher, torch.tensor([2.0]), regression=True
    )
    assert float(loss) == 0.0
