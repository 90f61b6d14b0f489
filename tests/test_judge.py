"""The supernet is judged before its architecture is: trivial baselines, the weight-phase rule, the
blind-search flag, on units and on two tiny tasks (one learnable in a few steps, one of random labels)."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_sentence
from test_search import search_config

from adabert.engine import WeightAverage
from adabert.search.judge import (
    BLIND,
    WeightPhaseRule,
    blind_search,
    judge_paths,
    majority_accuracy,
    summary,
    trivial_loss,
    weight_phase_verdict,
)
from adabert.search.loop import run_search


def test_trivial_loss_is_the_prior_entropy_or_the_label_variance():
    train = np.array([0] * 68 + [1] * 32)
    held = np.array([0] * 70 + [1] * 30)
    prior = np.array([69, 33]) / 102  # add-one smoothed
    assert trivial_loss(train, held, 2, False) == pytest.approx(
        -(0.7 * math.log(prior[0]) + 0.3 * math.log(prior[1]))
    )
    assert majority_accuracy(train, held) == pytest.approx(0.7)
    values = np.array([1.0, 2.0, 3.0])
    assert trivial_loss(values, np.array([2.0, 4.0]), 1, True) == pytest.approx(2.0)  # (0 + 4) / 2


def test_weight_phase_ends_once_learned_and_flat_or_at_the_cap():
    rule = WeightPhaseRule(min_epochs=2, max_epochs=5)
    assert weight_phase_verdict([0.5], 0.69, rule) == (False, "")  # below the minimum
    assert not weight_phase_verdict([0.60, 0.55], 0.69, rule)[0]  # learned, still improving
    assert not weight_phase_verdict([0.67, 0.58, 0.514, 0.519], 0.69, rule)[0]  # one noisy epoch
    ends, why = weight_phase_verdict([0.60, 0.55, 0.549, 0.552], 0.69, rule)
    assert ends and why.startswith("learned and stopped improving after 4 epoch(s)")
    assert not weight_phase_verdict([0.69, 0.69, 0.69], 0.69, rule)[0]  # flat but not learned
    ends, why = weight_phase_verdict([0.69] * 5, 0.69, rule)
    assert ends and "cap of 5 epoch(s) reached, NOT learned" in why
    ends, why = weight_phase_verdict([0.69, 0.69], 0.69, WeightPhaseRule(2, 5, fixed=True))
    assert ends and why.startswith("fixed weight phase of 2 epoch(s)")
    # a supernet that learned, then overfit its rows: its best epoch decides, not its last
    ends, why = weight_phase_verdict([0.65, 0.58, 0.61, 0.66], 0.65, rule)
    assert ends and why.startswith("learned and stopped improving after 4 epoch(s)") and "best 0.5800" in why


def test_the_weight_phase_ends_on_its_best_epoch_and_the_search_goes_on_from_its_weights():
    from adabert.config import SearchConfig
    from adabert.engine import Stepper
    from adabert.search.loop import Search, end_weight_phase, supernet_evidence

    layer = torch.nn.Linear(2, 1)
    params = list(layer.parameters())
    stepper = Stepper(params, torch.optim.SGD(params, lr=0.1), clip=1.0)
    stepper.average = WeightAverage(params, steps=4)
    s = Search(net=None, weights=stepper, arch=None, sampler=None, cost=None, steps_per_epoch=10)
    cfg = SearchConfig(store="s", output_dir="o", epochs=6, uniform_warmup_epochs=2, max_warmup_epochs=8)
    ends = {}
    for epoch, loss in enumerate([0.65, 0.50, 0.56, 0.60], start=1):  # learned by epoch 2, then overfit
        with torch.no_grad():
            for p in params:
                p.fill_(float(epoch))
        stepper.average.reset()  # the judged weights: epoch's own value
        s.step = 10 * epoch
        record = {"epoch": epoch, "step": s.step, "phase": "uniform warm-up"}
        s.history.append({**record, "supernet": {"loss": loss, "trivial_loss": 0.69, "accuracy": 1 - loss}})
        ends = end_weight_phase(s, cfg)
        s.history[-1].update(ends)
        assert bool(ends) == (epoch == 4)
    assert ends["weights_from"] == 2 and "from epoch 2's weights" in ends["weight_phase_end"]
    restored = [*params, *stepper.average.average]
    assert all(torch.all(t == 2.0) for t in restored)  # the search goes on from epoch 2, averaged too
    assert s.search_start == 40 and s.best is None
    evidence = supernet_evidence(s.history)
    assert evidence["warmup_loss"] == 0.50 and evidence["warmup_epochs_used"] == 4
    # 20% over its best epoch: it overfit its rows, and the search phase leaves the weights alone
    assert s.frozen and ends["weights_frozen"] and "it overfit its rows" in ends["weight_phase_end"]

    # a best epoch before the last one, within noise of it: its weights, still trained on
    s2 = Search(net=None, weights=stepper, arch=None, sampler=None, cost=None, steps_per_epoch=10)
    for epoch, loss in enumerate([0.65, 0.50, 0.502, 0.505], start=1):
        s2.step = 10 * epoch
        record = {"epoch": epoch, "step": s2.step, "phase": "uniform warm-up"}
        s2.history.append({**record, "supernet": {"loss": loss, "trivial_loss": 0.69}})
        ends = end_weight_phase(s2, cfg)
    assert ends["weights_from"] == 2 and not s2.frozen and "weights_frozen" not in ends


def test_blind_search_needs_a_supernet_clearly_below_the_trivial_loss():
    def record(loss):
        return {"supernet": {"loss": loss, "trivial_loss": 0.69}}

    assert blind_search([record(0.70), record(0.68)])  # within 2%: noise
    assert not blind_search([record(0.70), record(0.60)])
    assert not blind_search([{"epoch": 1}])  # a log from before the supernet was judged: unknown


def _task_store(root: Path, tiny_bert_dir: Path, rows: int, random_labels: bool) -> Path:
    """A store of a tiny single-sentence task: polarity words give the label away, or coin flips do."""
    from adabert.config import FinetuneConfig, ProbeConfig
    from adabert.teacher.finetuning import finetune
    from adabert.teacher.probes import probe

    rng = random.Random(1)
    (root / "glue" / "SST-2").mkdir(parents=True)
    for split, n in (("train", rows), ("dev", 32)):
        lines = ["sentence\tlabel"]
        for i in range(n):
            label = rng.randrange(2) if random_labels else i % 2
            lines.append(f"{tiny_sentence(rng, bool(i % 2))} \t{label}")
        (root / "glue" / "SST-2" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    finetune(
        FinetuneConfig(
            task="sst2",
            data_dir=str(root / "glue"),
            model=str(tiny_bert_dir),
            output_dir=str(root / "teacher"),
            epochs=1,
            max_length=32,
            batch_size=16,
        )
    )
    probe(ProbeConfig(teacher=str(root / "teacher"), output_dir=str(root / "store"), epochs=2))
    return root / "store"


@pytest.mark.parametrize("random_labels", [False, True], ids=["learnable", "random_labels"])
def test_the_weight_phase_rule_on_a_learnable_task_and_on_coin_flips(tmp_path, tiny_bert_dir, random_labels):
    store = _task_store(tmp_path, tiny_bert_dir, 200, random_labels)
    out = tmp_path / "search"
    cfg = search_config(
        store,
        out,
        epochs=2,
        uniform_warmup_epochs=1,
        weight_phase="learned",
        max_warmup_epochs=8,
        judge_paths=4,
        gamma=0.0,  # the tiny teacher knows little: learn from the labels
        w_lr=1e-2,
    )
    run_search(cfg)
    log = [json.loads(line) for line in (out / "search_log.jsonl").read_text().splitlines()]
    warm = [r for r in log if r["phase"] == "uniform warm-up"]
    ends = [r["weight_phase_end"] for r in warm if "weight_phase_end" in r]
    assert len(ends) == 1 and "weight_phase_end" in warm[-1]
    assert [r["phase"] for r in log[len(warm) :]] == ["search"]  # epochs - uniform_warmup_epochs of search
    supernet = json.loads((out / "selection.json").read_text())["supernet"]
    assert supernet["warmup_epochs_used"] == len(warm)
    assert supernet["trivial_loss"] == pytest.approx(log[0]["supernet"]["trivial_loss"])
    text = summary(supernet)
    assert f"the trivial predictor's is {supernet['trivial_loss']:.4f}" in text
    if random_labels:
        assert len(warm) == 8 and "NOT learned" in ends[0]
        assert supernet["blind"] and f"**Warning: {BLIND}.**" in text
    else:
        assert "learned" in ends[0] and "NOT" not in ends[0]
        assert supernet["warmup_loss"] <= 0.95 * supernet["trivial_loss"]
        assert supernet["warmup_accuracy"] > supernet["majority_accuracy"] and not supernet["blind"]
        assert "Warning" not in text


def test_weight_average_follows_the_steps_and_is_judged_then_put_back():
    layer = torch.nn.Linear(3, 2)
    params = list(layer.parameters())
    average = WeightAverage(params, steps=4)  # decay 0.75
    start = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p in params:
            p.add_(1.0)
    average.update()
    assert all(torch.allclose(a, s + 0.25) for a, s in zip(average.average, start))
    current = [p.detach().clone() for p in params]
    with average.applied():
        assert all(torch.allclose(p, a) for p, a in zip(params, average.average))
    assert all(torch.equal(p, c) for p, c in zip(params, current))
    again = WeightAverage(params, steps=4)
    again.load_state_dict(average.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(again.average, average.average))
    with pytest.raises(ValueError, match="does not fit"):
        WeightAverage(list(torch.nn.Linear(3, 5).parameters()), 4).load_state_dict(average.state_dict())


def test_blind_flag_sentence_says_the_cell_had_no_task_signal():
    assert "without task signal" in BLIND


def test_ranking_fidelity_scores_cells_inside_the_searched_supernet(tiny_store, tmp_path):
    from dataclasses import replace

    from adabert.genotype import random_genotype
    from adabert.search.ranking import kendall_tau, ranking_record, supernet_scores
    from search_spaces import get_space

    out = tmp_path / "search"
    run_search(search_config(tiny_store, out, epochs=1, uniform_warmup_epochs=0))
    space = get_space("adabert_cnn")
    cells = [replace(random_genotype(space, i, hidden_size=16), num_cells=1 + i % 3) for i in range(4)]
    scores = supernet_scores(out, cells)
    assert len(scores) == 4 and all(math.isfinite(s["loss"]) and 0 <= s["accuracy"] <= 1 for s in scores)
    assert supernet_scores(out, cells) == scores  # the same rows, weights and batch statistics
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    losses = [{"loss": v} for v in (0.4, 0.3, 0.2, 0.1)]  # a lower loss ranks a cell higher
    record = ranking_record(cells, losses, [0.6, 0.7, 0.8, 0.9])
    assert record["kendall_tau"] == pytest.approx(1.0) and len(record["cells"]) == 4


def test_judge_paths_share_their_quantiles_across_phases():
    from test_supernet import tiny_supernet

    net = tiny_supernet()
    uniform = judge_paths(net, 200, 7, uniform=True)
    ops = torch.tensor([[net.zero_index if o is None else o for o in p.ops] for p in uniform])
    per_op = torch.stack([(ops == o).sum() for o in range(len(net.space.ops))]).float()
    assert per_op.min() > 0.6 * per_op.mean()  # every op alike
    assert all(p.depth_gate is None and all(c is None or c[1] is None for c in p.edges) for p in uniform)
    # near-uniform logits, as when the search phase begins: the same paths as the weight phase judged
    net.edge_logits.data.normal_(0, 1e-3)
    assert [(p.ops, p.depth) for p in judge_paths(net, 200, 7, uniform=False)][:20] == [
        (p.ops, p.depth) for p in uniform
    ][:20]
    net.edge_logits.data[:, 2] = 20.0  # a sharp distribution: its op everywhere
    net.depth_logits.data[0] = 20.0
    assert all(set(p.ops) == {2} and p.depth == 1 for p in judge_paths(net, 20, 7, uniform=False))
