"""The cross-task benchmark's verdict: a task's own cell wins only by more than the seed noise."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from cross_task import parse_runs, wins  # noqa: E402
from quality_table import _cross_task_rows  # noqa: E402


def result():
    metric = {
        "a->a": [0.90, 0.91, 0.92],  # own cell clearly ahead on a
        "b->a": [0.85, 0.86, 0.86],
        "b->b": [0.83, 0.74, 0.85],  # own cell ahead on b on average, within the seed noise
        "a->b": [0.79, 0.80, 0.79],
    }
    random = {"a": [0.84, 0.86], "b": [0.78, 0.79]}
    return metric, random


def test_own_cell_wins_only_beyond_the_standard_error_and_above_random():
    metric, random = result()
    verdict = wins(metric, random, ["a", "b"])
    assert verdict["a"]["wins"] and verdict["a"]["beats_random"]
    assert verdict["a"]["margins"]["b"]["difference"] == pytest.approx(0.0533, abs=1e-4)
    assert verdict["b"]["beats_random"] and not verdict["b"]["wins"]  # +0.0133, standard error 0.037
    random["a"] = [0.95]
    assert not wins(metric, random, ["a", "b"])["a"]["wins"]  # below the random control


def test_cross_task_table_renders_every_pair_and_the_verdict():
    metric, random = result()
    cross = {"tasks": ["a", "b"], "cells_from": ["a", "b"], "metric": metric, "random": random,
             "wins": wins(metric, random, ["a", "b"]), "seeds": [0, 1, 2]}  # fmt: skip
    text = "\n".join(_cross_task_rows(cross))
    assert "| a | 0.9100 ± 0.0100 (n=3) | 0.7933 ± 0.0058 (n=3) |" in text
    assert "| a | vs b +0.0533 (SE 0.0033) | yes | **yes** |" in text and "**yes**" in text


def test_runs_are_named_task_equals_folder(tmp_path):
    with pytest.raises(SystemExit, match="expected TASK=RUN_DIR"):
        parse_runs(["sst2"])
    with pytest.raises(SystemExit, match="holds no searches"):
        parse_runs([f"sst2={tmp_path}", f"mrpc={tmp_path}"])
