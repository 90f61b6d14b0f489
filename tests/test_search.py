"""The search stage end to end on a tiny store: outputs, resumption, ablations, and the stages after it."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from adabert.checkpoint import DivergenceError, load_state
from adabert.config import EvalConfig, SearchConfig, TrainConfig
from adabert.genotype import Genotype
from adabert.search import run_search
from adabert.search.remedies import cosine, temperature


def search_config(store: Path, out: Path, **overrides) -> SearchConfig:
    settings = dict(
        store=str(store),
        output_dir=str(out),
        hidden_size=16,
        max_cells=3,
        epochs=2,
        batch_size=8,
        w_lr=3e-3,
        arch_lr=3e-2,
        cost_seq_len=16,
        uniform_warmup_epochs=1,
        weight_phase="fixed",
        tau_start=1.0,
        seed=0,
    )
    if overrides.get("epochs", 2) < 2 and "uniform_warmup_epochs" not in overrides:
        overrides["uniform_warmup_epochs"] = 0  # one epoch: the search phase alone
    return SearchConfig(**{**settings, **overrides})


def test_search_writes_genotype_picture_log_and_plots(tiny_store, tmp_path):
    out = tmp_path / "search"
    genotype = run_search(search_config(tiny_store, out))
    assert Genotype.load(out / "genotype.json") == genotype
    for name in (
        "genotype.png",
        "op_probabilities.png",
        "depth_distribution.png",
        "checkpoint.safetensors",
        "config.json",
        "selection.json",
    ):
        assert (out / name).stat().st_size > 0, name
    log = [json.loads(line) for line in (out / "search_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    for record in log:
        assert {
            "loss",
            "ce",
            "kd",
            "efficiency",
            "tau",
            "dev",
            "heldout",
            "op_counts",
            "op_probabilities",
            "depth_probabilities",
        } <= set(record)
        assert 0.0 <= record["dev"]["accuracy"] <= 1.0
        assert len(record["op_probabilities"]) == 9 and len(record["depth_probabilities"]) == 3
    assert log[1]["tau"] < log[0]["tau"] <= 1.0
    assert 1 <= genotype.num_cells <= 3 and genotype.hidden_size == 16
    # the chosen genotype's student was built and timed at both batch sizes of the budget
    timed = json.loads((out / "selection.json").read_text())["latency_check"]
    assert Genotype.from_dict(timed[-1]["genotype"]) == genotype
    assert set(timed[-1]["batches"]) == {"1", "32"}
    # a speedup budget: the teacher is timed beside the student, and the limits follow its time now
    batches = timed[-1]["batches"]
    assert min(batches["1"]["teacher_ms"], batches["32"]["student_ms"], timed[-1]["drift"]) > 0
    assert batches["32"]["limit_ms"] == pytest.approx(
        json.loads((out / "latency_table.json").read_text())["teacher"]["32"] / 15 * timed[-1]["drift"]
    )


@pytest.mark.parametrize("gradient", ["gumbel", "reinforce"])
def test_fixed_seed_reproduces_and_resume_continues(tiny_store, tmp_path, monkeypatch, gradient):
    full = run_search(search_config(tiny_store, tmp_path / "full", epochs=3, arch_gradient=gradient))
    # an interrupted run: killed during its third epoch, after two finished epochs
    import adabert.search.loop as search_module

    real_evaluate, calls = search_module.epoch_record, []

    def dies_in_epoch_three(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(search_module, "epoch_record", dies_in_epoch_three)
    with pytest.raises(KeyboardInterrupt):
        run_search(search_config(tiny_store, tmp_path / "part", epochs=3, arch_gradient=gradient))
    monkeypatch.setattr(search_module, "epoch_record", real_evaluate)
    assert len((tmp_path / "part" / "search_log.jsonl").read_text().splitlines()) == 2
    resumed = run_search(
        search_config(tiny_store, tmp_path / "part", epochs=3, resume=True, arch_gradient=gradient)
    )
    assert resumed == full
    full_log = [
        json.loads(line) for line in (tmp_path / "full" / "search_log.jsonl").read_text().splitlines()
    ]
    part_log = [
        json.loads(line) for line in (tmp_path / "part" / "search_log.jsonl").read_text().splitlines()
    ]
    assert len(part_log) == 3
    for a, b in zip(full_log, part_log):
        assert a["op_probabilities"] == b["op_probabilities"] and a["loss"] == b["loss"]
    with pytest.raises(ValueError, match="cannot resume"):
        run_search(search_config(tiny_store, tmp_path / "part", epochs=4, resume=True, gamma=0.5))


def test_ablations_and_random_architecture(tiny_store, tmp_path):
    once = {"epochs": 1, "uniform_warmup_epochs": 0}
    no_kd = run_search(search_config(tiny_store, tmp_path / "no_kd", gamma=0.0, **once))
    no_eff = run_search(search_config(tiny_store, tmp_path / "no_eff", beta=0.0, **once))
    log = json.loads((tmp_path / "no_kd" / "search_log.jsonl").read_text().splitlines()[0])
    assert log["kd"] == 0.0
    assert no_kd.space == no_eff.space == "adabert_cnn"
    first = run_search(search_config(tiny_store, tmp_path / "rand1", random_architecture=True, seed=1))
    again = run_search(search_config(tiny_store, tmp_path / "rand2", random_architecture=True, seed=1))
    other = run_search(search_config(tiny_store, tmp_path / "rand3", random_architecture=True, seed=2))
    assert first == again != other
    assert (tmp_path / "rand1" / "genotype.png").exists()


def test_diverging_search_stops_with_a_clear_message(tiny_store, tmp_path, monkeypatch):
    import adabert.search.loop as search_module

    out = tmp_path / "nan"
    run_search(search_config(tiny_store, out, epochs=1, uniform_warmup_epochs=0))
    before = (out / "checkpoint.safetensors").read_bytes()
    monkeypatch.setattr(search_module, "task_loss", lambda logits, *_: logits.sum() * float("nan"))
    with pytest.raises(DivergenceError, match="became nan at epoch 2.*checkpoint.*intact"):
        run_search(search_config(tiny_store, out, epochs=2, uniform_warmup_epochs=0, resume=True))
    assert (out / "checkpoint.safetensors").read_bytes() == before
    assert load_state(out / "checkpoint.safetensors", "search")["epoch"] == 1


def test_weight_learning_rate_is_constant_then_cosine_annealed_over_the_search_phase(tiny_store, tmp_path):
    assert cosine(1.0, 0.1, 5, 10, 20) == 1.0  # the weight phase
    assert cosine(1.0, 0.1, 15, 10, 20) == pytest.approx(0.55)
    assert cosine(1.0, 0.1, 20, 10, 20) == pytest.approx(0.1) == cosine(1.0, 0.1, 30, 10, 20)
    run_search(search_config(tiny_store, tmp_path / "s", epochs=3, uniform_warmup_epochs=1, w_lr_min=1e-4))
    log = [json.loads(line) for line in (tmp_path / "s" / "search_log.jsonl").read_text().splitlines()]
    rates = [r["w_lr"] for r in log]
    assert rates[0] == pytest.approx(3e-3) and rates[0] > rates[1] > rates[2] >= 1e-4


def test_temperature_anneals_from_start_to_end():
    assert temperature(1.0, 0.2, 0.5, 0, 100) == 1.0
    assert temperature(1.0, 0.2, 0.5, 50, 100) == pytest.approx(0.2)
    assert temperature(1.0, 0.2, 0.5, 100, 100) == pytest.approx(0.2)
    assert 0.2 < temperature(1.0, 0.2, 0.5, 25, 100) < 1.0


def test_train_evaluate_export_from_a_searched_genotype(tiny_store, tmp_path):
    from adabert.report.evaluate import load_classifier, run_evaluation
    from adabert.student.train import train_student

    search_dir = tmp_path / "search"
    run_search(search_config(tiny_store, search_dir, epochs=1, uniform_warmup_epochs=0))
    student_dir = tmp_path / "student"
    result = train_student(
        TrainConfig(
            genotype=str(search_dir / "genotype.json"),
            store=str(tiny_store),
            output_dir=str(student_dir),
            supernet=str(search_dir),
            epochs=2,
            batch_size=8,
            probe_kd=0.5,
        )
    )
    assert result["kept_epoch"] == 2 and result["dev"] == result["history"][-1]["dev"]
    assert 0 <= result["dev"]["accuracy"] <= 1
    assert (student_dir / "model.safetensors").exists() and (student_dir / "tokenizer.json").exists()
    model = load_classifier(student_dir)
    assert model.genotype == Genotype.load(search_dir / "genotype.json")
    report = run_evaluation(
        EvalConfig(
            model=str(student_dir),
            store=str(tiny_store),
            output_dir=str(tmp_path / "eval"),
            batch_sizes=(1, 2),
            seq_len=16,
            repeats=2,
            warmup=1,
        )
    )
    metrics = report["metrics"]["model"]
    assert {"accuracy", "label_loyalty", "probability_loyalty"} <= set(metrics)
    assert report["metrics"]["teacher"]["accuracy"] == pytest.approx(
        json.loads((tiny_store / "manifest.json").read_text())["teacher_metrics"]["dev"]["accuracy"]
    )
    assert report["size"]["model"]["total"] < report["size"]["bert-base"]["total"]
    assert "speedup_vs_bert-base" in report["latency"]["model"]["1"]
    assert (tmp_path / "eval" / "report.md").read_text().count("|") > 10
    # resume from the finished state trains nothing more and keeps the result
    again = train_student(
        TrainConfig(
            genotype=str(search_dir / "genotype.json"),
            store=str(tiny_store),
            output_dir=str(student_dir),
            epochs=2,
            batch_size=8,
            probe_kd=0.5,
            supernet=str(search_dir),
            resume=True,
        )
    )
    assert again["dev"] == result["dev"]
    with pytest.raises(ValueError, match="cannot resume.*weight_decay"):  # (--lr may change: recorded)
        train_student(
            TrainConfig(
                genotype=str(search_dir / "genotype.json"),
                store=str(tiny_store),
                output_dir=str(student_dir),
                epochs=3,
                batch_size=8,
                probe_kd=0.5,
                supernet=str(search_dir),
                resume=True,
                weight_decay=0.5,
            )
        )
    # resuming from another genotype (same settings, other file content) is refused
    other = tmp_path / "other"
    run_search(search_config(tiny_store, other, random_architecture=True, seed=5))
    assert Genotype.load(other / "genotype.json") != Genotype.load(search_dir / "genotype.json")
    with pytest.raises(ValueError, match="cannot resume, the training started from another genotype"):
        train_student(
            TrainConfig(
                genotype=str(other / "genotype.json"),
                store=str(tiny_store),
                output_dir=str(student_dir),
                epochs=3,
                batch_size=8,
                probe_kd=0.5,
                resume=True,
            )
        )
    with torch.no_grad():
        assert load_classifier(student_dir).config.num_labels == 2


def test_uniform_warmup_trains_every_op_before_the_architecture_moves(tiny_store, tmp_path):
    run_search(search_config(tiny_store, tmp_path / "s", epochs=3, uniform_warmup_epochs=2, batch_size=4))
    log = [json.loads(line) for line in (tmp_path / "s" / "search_log.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in log] == ["uniform warm-up", "uniform warm-up", "search"]
    # the logits do not move during the warm-up, then they do
    assert log[0]["op_probabilities"] == log[1]["op_probabilities"] != log[2]["op_probabilities"]
    # one sampled op per edge and step is counted (48 rows: 10 judge, 10 architecture, 28 weight rows;
    # batch 4: 7 steps per epoch)
    counts = torch.tensor(log[0]["op_counts"]) + torch.tensor(log[1]["op_counts"])
    assert counts.shape == (9, 10) and counts.sum(1).tolist() == [14] * 9
    assert log[0]["beta"] == 0.0 and log[0]["efficiency"] == 0.0


def test_uniform_samples_train_every_op_and_depth_equally():
    from test_supernet import tiny_supernet

    net = tiny_supernet()
    net.edge_logits.data[:, 0] = 10.0  # the logits have no say in a uniform sample
    generator = torch.Generator().manual_seed(0)
    draws = [net.uniform_sample(generator) for _ in range(2000)]
    ops = torch.tensor([[net.zero_index if o is None else o for o in d.ops] for d in draws])
    per_op = torch.stack([(ops == o).sum(0) for o in range(len(net.space.ops))])  # [ops, edges]
    assert int(per_op.min()) > 130 and int(per_op.max()) < 270  # 200 expected (sd 13) per op and edge
    depths = torch.bincount(torch.tensor([d.depth for d in draws]))[1:]
    assert len(depths) == 3 and int(depths.min()) > 600
    assert all(d.depth_gate is None and all(c is None or c[1] is None for c in d.edges) for d in draws)


def test_selection_by_best_epoch_and_by_contribution(tiny_store, tmp_path):
    from adabert.search.selection import best_epoch

    run_search(search_config(tiny_store, tmp_path / "best", epochs=3, select="best_epoch"))
    log = [json.loads(line) for line in (tmp_path / "best" / "search_log.jsonl").read_text().splitlines()]
    chosen = json.loads((tmp_path / "best" / "selection.json").read_text())
    searched = [r for r in log if r["phase"] == "search"]  # the warm-up's genotypes are not searched
    assert searched and len(searched) < len(log)
    best = min(searched, key=lambda r: r["heldout"]["loss"])
    assert chosen["epoch"] == best["epoch"] == best_epoch(log)["epoch"]
    assert Genotype.load(tmp_path / "best" / "genotype.json") == Genotype.from_dict(best["genotype"])

    # a budget every cell meets: the contributions alone decide (the tiny teacher is as fast as a student)
    loose = search_config(tiny_store, tmp_path / "pt", epochs=2, select="contribution", target_speedup=1e-3)
    run_search(loose)
    chosen = json.loads((tmp_path / "pt" / "selection.json").read_text())
    genotype = Genotype.load(tmp_path / "pt" / "genotype.json")
    assert chosen["selection"] == "contribution" and len(chosen["edges"]) == 9
    for edge in genotype.edges:  # every kept edge runs the op with the lowest held-out loss on it
        evidence = next(e for e in chosen["edges"] if e["edge"] == [edge.source, edge.target])
        assert edge.op == min(evidence["op_loss"], key=evidence["op_loss"].get) == evidence["op"]
    for node in genotype.intermediate_nodes:  # per node, the edges whose removal costs most are kept
        kept = {(e.source, e.target) for e in genotype.node_inputs(node)}
        incoming = [e for e in chosen["edges"] if e["edge"][1] == node]
        ranked = sorted(incoming, key=lambda e: -e["removal_cost"])[:2]
        assert {tuple(e["edge"]) for e in ranked} == kept


def test_baseline_genotypes_load_and_train(tiny_store, tmp_path):
    from adabert.student.train import train_student

    root = Path(__file__).resolve().parents[1] / "benchmarks" / "genotypes"
    for name in ("bag_of_embeddings", "conv_cell"):
        genotype = Genotype.load(root / f"{name}.json")
        assert genotype.space == "adabert_cnn" and genotype.hidden_size == 128
        small = tmp_path / f"{name}.json"  # the tiny teacher is 32 wide: the same cell at width 16
        Genotype.from_dict({**genotype.to_dict(), "hidden_size": 16}).save(small)
        result = train_student(
            TrainConfig(
                genotype=str(small),
                store=str(tiny_store),
                output_dir=str(tmp_path / name),
                epochs=1,
                batch_size=8,
            )
        )
        assert result["kept_epoch"] == 1 and (tmp_path / name / "model.safetensors").exists()


def test_the_student_trains_on_every_row_plus_the_augmented_ones(tiny_store, tmp_path):
    from adabert.config import ProbeConfig
    from adabert.student.train import train_student
    from adabert.teacher.probes import probe
    from adabert.teacher.store import KnowledgeStore

    teacher = str(KnowledgeStore.open(tiny_store).teacher_path)
    store = probe(ProbeConfig(teacher=teacher, output_dir=str(tmp_path / "aug"), epochs=1, augment_factor=3))
    assert store.manifest["splits"]["train_aug"]["rows"] == 3 * 48
    run_search(search_config(tmp_path / "aug", tmp_path / "rand", random_architecture=True))
    base = dict(
        genotype=str(tmp_path / "rand" / "genotype.json"),
        store=str(tmp_path / "aug"),
        epochs=1,
        batch_size=16,
    )
    rows = {}
    for name, extra in (
        ("all", {}),
        ("one_copy", {"augment_copies": 1}),
        ("none", {"use_augmented": False}),
        ("subset", {"train_limit": 10}),
    ):
        rows[name] = train_student(TrainConfig(**base, output_dir=str(tmp_path / name), **extra))[
            "train_rows"
        ]
    assert rows == {"all": 48 + 144, "one_copy": 48 + 48, "none": 48, "subset": 10 + 30}
    assert len(KnowledgeStore.open(tmp_path / "aug").labels("train")) == 48

    # the search's weights take the next stored copies each epoch, cycling, as many rows each time
    from adabert.search.loop import weight_rows

    aug = KnowledgeStore.open(tmp_path / "aug")
    source, copy = aug.augment_sources("train_aug")
    cfg = search_config(tmp_path / "aug", tmp_path / "s", augment_copies=1)
    originals = np.arange(0, 48, 2)
    taken = []
    for epoch in range(4):
        split = weight_rows(cfg, aug, originals, epoch)
        copies = split.index[split.index >= 48] - 48
        assert len(split) == 48 and sorted(source[copies]) == originals.tolist()
        taken.append(set(copy[copies].tolist()))
    assert taken == [{0}, {1}, {2}, {0}]


def test_candidates_are_scored_on_batch_statistics_and_running_statistics_stay():
    """A supernet's running BatchNorm statistics mix every sampled path: a candidate is scored on
    its own batch statistics, and scoring leaves the running statistics (and eval mode) as they were."""
    from adabert.search.selection import batch_statistics
    from search_spaces import MaskedBatchNorm1d

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), MaskedBatchNorm1d(4)).eval()
    norm = net[1]
    norm.running_mean.fill_(5.0)  # statistics of other paths, far from this input's
    x = torch.randn(6, 4, 10)
    x_in = net[0](x.transpose(1, 2)).transpose(1, 2)
    before = {k: v.clone() for k, v in norm.state_dict().items()}
    with torch.no_grad(), batch_statistics(net):
        y = norm(x_in)
    per_channel = y.transpose(0, 1).reshape(4, -1)
    torch.testing.assert_close(per_channel.mean(1), torch.zeros(4), atol=1e-5, rtol=0)
    assert not norm.training and all(torch.equal(before[k], v) for k, v in norm.state_dict().items())


def test_the_student_keeps_its_last_epoch_unless_asked_for_the_best_on_dev(tiny_store, tmp_path):
    from adabert.student.train import train_student

    root = Path(__file__).resolve().parents[1] / "benchmarks" / "genotypes"
    small = tmp_path / "conv.json"
    Genotype.from_dict({**Genotype.load(root / "conv_cell.json").to_dict(), "hidden_size": 16}).save(small)
    kept = {}
    for keep in ("last", "best"):
        cfg = TrainConfig(
            genotype=str(small),
            store=str(tiny_store),
            output_dir=str(tmp_path / keep),
            epochs=3,
            batch_size=8,
            lr=0.05,
            keep=keep,
        )
        kept[keep] = train_student(cfg)
    last, best = kept["last"], kept["best"]
    assert last["kept"] == "last" and last["kept_epoch"] == 3 and last["dev"] == last["history"][-1]["dev"]
    scores = [h["dev"]["accuracy"] for h in best["history"]]
    # same seed, same training: only the kept weights differ
    assert [h["dev"] for h in best["history"]] == [h["dev"] for h in last["history"]]
    assert best["kept_epoch"] == 1 + scores.index(max(scores)) and best["dev"]["accuracy"] == max(scores)


def test_an_example_budget_sets_the_epochs_from_the_rows(tiny_store, tmp_path):
    from adabert.student.train import train_student

    root = Path(__file__).resolve().parents[1] / "benchmarks" / "genotypes"
    small = tmp_path / "conv.json"
    Genotype.from_dict({**Genotype.load(root / "conv_cell.json").to_dict(), "hidden_size": 16}).save(small)
    common = {"genotype": str(small), "store": str(tiny_store), "batch_size": 8, "epochs": 5}
    one = train_student(TrainConfig(**common, output_dir=str(tmp_path / "a"), examples=1))
    rows = one["train_rows"]
    two = train_student(TrainConfig(**common, output_dir=str(tmp_path / "b"), examples=rows + 1))
    assert (one["epochs"], len(one["history"])) == (1, 1)  # --examples overrides --epochs 5
    assert (two["epochs"], len(two["history"])) == (2, 2)


def test_schedules_follow_the_phases_with_every_remedy_on(tiny_store, tmp_path):
    """beta ramps by search epoch from 0 in the weight phase; temperature and the weights' rate anneal
    over the search phase only; the sandwich rule, skip and dropout run beside them."""
    out = tmp_path / "search"
    cfg = search_config(
        tiny_store,
        out,
        epochs=4,
        efficiency="paper",  # beta 4
        beta_warmup_epochs=2,
        sandwich=4,
        aux_skip=0.5,
        free_op_dropout=0.2,
        tau_start=2.0,
        tau_end=0.5,
    )
    run_search(cfg)
    log = [json.loads(line) for line in (out / "search_log.jsonl").read_text().splitlines()]
    assert [r["beta"] for r in log] == [0.0, 2.0, 4.0, 4.0]
    assert log[0]["w_lr"] == cfg.w_lr and log[0]["tau"] == cfg.tau_start
    assert log[1]["w_lr"] > log[2]["w_lr"] > log[3]["w_lr"] >= cfg.w_lr_min
    assert cfg.tau_start > log[1]["tau"] > log[3]["tau"] >= cfg.tau_end
    assert all(math.isfinite(r["loss"]) for r in log)


def test_reinforce_step_moves_the_logits_by_the_paths_loss_alone(tiny_store, tmp_path):
    """The score-function step: the path runs without gates, the weights get no gradient, and the
    logits move along (reward - baseline) x grad log p, which lowers the log-probability of a path
    whose loss is above the baseline."""
    from adabert.search.loop import Search, StepSchedule, build_search, reinforce_step, search_rows
    from adabert.teacher.store import KnowledgeStore

    cfg = search_config(tiny_store, tmp_path / "s", arch_gradient="reinforce")
    store = KnowledgeStore.open(cfg.store)
    from adabert import distributed

    ctx = distributed.setup("cpu")
    rows = search_rows(cfg, store, ctx, torch.device("cpu"))
    s: Search = build_search(cfg, store, rows, tmp_path, torch.device("cpu"), ctx)
    s.search_start = 0
    batch = next(iter(rows.heldout))
    at = StepSchedule(tau=1.0, beta=0.0, w_lr=cfg.w_lr, skip=0.0, free_dropout=0.0)
    s.arch_baseline = 0.0  # every path's loss is above it: the sampled path must lose probability
    sample = s.net.sample(1.0, torch.Generator().manual_seed(0))
    before = s.net.log_prob(sample).item()
    weights = [p.detach().clone() for p in s.net.weight_parameters()]
    values = reinforce_step(s, batch, 1.0, sample, at, cfg, False, "here")
    assert s.net.log_prob(sample).item() < before
    assert all(torch.equal(w, p) for w, p in zip(weights, s.net.weight_parameters()))
    assert all(p.grad is None for p in s.net.weight_parameters())
    assert values["reward"] > 0 and s.arch_baseline == pytest.approx(0.1 * values["reward"])
    expected = torch.log_softmax(s.net.edge_logits.detach(), -1)
    ops = [s.net.zero_index if o is None else o for o in sample.ops]
    manual = (
        sum(expected[e, o] for e, o in enumerate(ops))
        + torch.log_softmax(s.net.depth_logits.detach(), -1)[sample.depth - 1]
    )
    assert s.net.log_prob(sample).item() == pytest.approx(float(manual), rel=1e-6)


@pytest.mark.parametrize("gradient", ["gumbel", "reinforce"])
def test_a_search_phase_after_an_overfit_weight_phase_steps_the_architecture_alone(
    tiny_store, tmp_path, gradient
):
    from adabert import distributed
    from adabert.search import loop
    from adabert.teacher.store import KnowledgeStore

    cfg = search_config(tiny_store, tmp_path / "s", epochs=1, arch_gradient=gradient)
    store, device = KnowledgeStore.open(tiny_store), torch.device("cpu")
    ctx = distributed.setup(device)
    rows = loop.search_rows(cfg, store, ctx, device)
    s = loop.build_search(cfg, store, rows, tmp_path / "s", device, ctx)
    loop.plan_steps(s, cfg)
    s.frozen = True  # as the weight phase leaves it when its held-out loss rose past its best epoch
    weights = [p.detach().clone() for p in s.weights.params]
    logits = s.net.edge_logits.detach().clone()
    record = loop.run_epoch(s, 0, False, cfg, rows.weights, rows.arch, False, ctx)
    assert all(torch.equal(a, p) for a, p in zip(weights, s.weights.params))
    assert not torch.equal(logits, s.net.edge_logits) and math.isfinite(record["loss"])
    assert s.step == s.steps_per_epoch and sum(map(sum, record["op_counts"])) == 0  # no weight samples
