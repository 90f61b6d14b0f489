"""A stage that ends no better than the trivial predictor says so: train in its log, metrics.json and the
run report; the search in its log, selection.json and the report's search paragraph. Settings that
cannot work together are refused before any work."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from test_search import search_config

from adabert.config import ConfigError, SearchConfig, TrainConfig
from adabert.search.judge import ENDED_BLIND, summary
from adabert.search.loop import run_search, supernet_evidence
from adabert.student.train import dev_fit, versus_trivial


def test_dev_fit_and_the_trivial_verdict_on_units():
    logits = np.array([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [2.0, 0.0]])
    labels = np.array([0, 1, 1, 0])
    fit = dev_fit(logits, labels, regression=False)
    assert fit["dev_accuracy"] == 0.75
    assert fit["dev_loss"] == pytest.approx(np.mean([0.1269, 0.1269, 2.1269, 0.1269]), abs=1e-3)
    train = np.array([0, 0, 0, 1])
    good = versus_trivial({"epoch": 3, **fit}, train, labels, 2)
    assert not good["no_better"] and "warning" not in good and good["majority_accuracy"] == 0.5
    bad = versus_trivial({"epoch": 3, "dev_loss": 9.0, "dev_accuracy": 0.5}, train, labels, 2)
    assert bad["no_better"]
    assert "(epoch 3) is no better than the trivial predictor (dev accuracy 0.5000, always" in bad["warning"]
    # regression: the squared error against the label variance around the training mean
    values = np.array([1.0, 3.0])
    assert dev_fit(np.array([[1.0], [3.0]]), values, regression=True) == {"dev_loss": 0.0}
    kept = {"epoch": 1, "dev_loss": 1.5}
    verdict = versus_trivial(kept, np.array([2.0, 2.0]), values, 1)
    assert verdict["trivial_loss"] == 1.0 and verdict["no_better"]
    assert "label variance 1" in verdict["warning"]
    assert not versus_trivial({"epoch": 1}, train, labels, 2)["no_better"]  # an older record: unknown


def test_a_student_no_better_than_the_majority_label_is_flagged(tiny_store, tmp_path, monkeypatch, caplog):
    import adabert.student.train as train_module
    from adabert.report.document import render_markdown, report_blocks

    search = tmp_path / "run" / "search"
    run_search(search_config(tiny_store, search, random_architecture=True))

    def constant(model, loader, device=None):  # every dev row answered with label 0, the majority
        labels = np.concatenate([batch["labels"].numpy() for batch in loader])
        return np.tile(np.array([[1.0, 0.0]], dtype=np.float32), (len(labels), 1)), labels

    monkeypatch.setattr(train_module, "predict_logits", constant)
    student = tmp_path / "run" / "student"
    settings = dict(genotype=str(search / "genotype.json"), store=str(tiny_store), output_dir=str(student))
    with caplog.at_level(logging.WARNING, logger="adabert.student.train"):
        result = train_module.train_student(TrainConfig(**settings, epochs=1, batch_size=8))
    assert result["trivial"]["no_better"]
    assert result["trivial"]["dev_accuracy"] == result["trivial"]["majority_accuracy"] == 0.5
    assert any("no better than the trivial predictor" in r.getMessage() for r in caplog.records)
    assert json.loads((student / "metrics.json").read_text())["trivial"] == result["trivial"]
    report = render_markdown(report_blocks(tmp_path / "run"))
    assert "**Warning: the student (epoch 1) is no better than the trivial predictor" in report


def test_a_search_that_ends_blind_is_flagged():
    def record(loss: float) -> dict:
        return {"phase": "search", "supernet": {"loss": loss, "trivial_loss": 0.69}}

    learned_then_lost = supernet_evidence([record(0.4), record(0.5), record(0.7)])
    assert not learned_then_lost["blind"] and learned_then_lost["ended_blind"]
    assert ENDED_BLIND in summary(learned_then_lost)
    assert not supernet_evidence([record(0.7), record(0.4)])["ended_blind"]


def test_a_search_with_a_huge_weight_rate_warns(tiny_store, tmp_path, caplog):
    out = tmp_path / "search"
    with caplog.at_level(logging.WARNING, logger="adabert.search.loop"):
        run_search(search_config(tiny_store, out, epochs=1, w_lr=1e6))
    evidence = json.loads((out / "selection.json").read_text())["supernet"]
    assert evidence["ended_blind"]
    assert any("trivial predictor" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"target_params": 1000, "target_latency_ms": 5.0}, "a budget takes one target"),
        ({"target_params": 1000, "efficiency": "paper"}, "--efficiency paper has none"),
        ({"epochs": 2, "uniform_warmup_epochs": 2}, "leaves no search phase"),
    ],
)
def test_search_settings_that_cannot_work_together_are_refused(settings, message):
    with pytest.raises(ConfigError, match=message):
        SearchConfig(**settings)


def test_the_cli_refuses_them_in_one_line_before_any_work(tmp_path, capsys):
    from adabert.cli import main

    out = tmp_path / "search"
    argv = ["search", "--store", str(tmp_path / "no-store"), "--output-dir", str(out)]
    assert main([*argv, "--efficiency", "paper", "--target-params", "1000"]) == 2
    err = capsys.readouterr().err
    assert err.count("adabert: error:") == 1 and "--target-params is a budget target" in err
    assert not out.exists()
