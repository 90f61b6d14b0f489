"""The benchmark's settings: the ``full`` setting's rules, and search overrides checked before any stage."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from search_quality import FULL_ROWS, parse_overrides, results_name, setting_for  # noqa: E402


@pytest.mark.parametrize("rows,pair", [(67349, False), (3668, True), (250_000, False), (1, False)])
def test_full_setting_labels_every_row_and_tops_up_to_the_row_budget(rows, pair):
    setting = setting_for("any", rows, pair, "full")
    teacher, probe = setting["teacher"], setting["probe"]
    assert "train_limit" not in teacher and teacher["epochs"] == 2 and teacher["keep"] == "last"
    assert teacher["max_length"] == (128 if pair else 64)
    if rows >= FULL_ROWS:  # no room: no copies
        assert probe == {} and setting["train"]["augment_copies"] == 0
        return
    total = rows + probe["augment_rows"] * probe["augment_factor"]
    assert total <= FULL_ROWS and probe["augment_rows"] <= rows and 1 <= probe["augment_factor"] <= 20
    if rows < FULL_ROWS and rows * 21 >= FULL_ROWS:
        assert total >= 0.99 * FULL_ROWS  # the budget is used, not left half empty
    assert setting["train"]["augment_copies"] == probe["augment_factor"]  # students see every stored row


def test_sst2_full_setting_is_the_issue_s_teacher_and_store():
    setting = setting_for("sst2", 67349, False, "full")
    assert setting["probe"] == {"augment_factor": 2, "augment_rows": 66325}  # 199,999 rows in all


def test_search_overrides_parse_values_and_refuse_unknown_keys():
    assert parse_overrides(["arch_gradient=reinforce", "epochs=6", "judge-average=0.25", "sandwich=0"]) == {
        "arch_gradient": "reinforce", "epochs": 6, "judge_average": 0.25, "sandwich": 0,
    }  # fmt: skip
    assert parse_overrides(["superkernel=false"]) == {"superkernel": False}
    for bad in ("no_such_setting=1", "epochs"):
        with pytest.raises(SystemExit, match="KEY=VALUE"):
            parse_overrides([bad])
    assert parse_overrides(["probe_kd=1.0", "epochs=4"], "train") == {"probe_kd": 1.0, "epochs": 4}
    with pytest.raises(SystemExit, match="--train 'arch_gradient=reinforce'.*'adabert train' option"):
        parse_overrides(["arch_gradient=reinforce"], "train")  # a search setting, not a student's


def test_results_files_keep_the_benchmark_setting_s_names():
    ns = argparse.Namespace
    assert results_name("sst2", ns(setting="benchmark", tag=None)) == "sst2"
    assert results_name("sst2", ns(setting="full", tag=None)) == "sst2_full"
    assert results_name("order", ns(setting="benchmark", tag="reinforce")) == "order_reinforce"


def test_runner_resumes_a_stage_stopped_part_way_and_only_the_same_command(tmp_path, monkeypatch):
    import search_quality

    calls: list[list[str]] = []
    outcome = {"status": 1}

    class Process:
        def __init__(self, argv, **_):
            calls.append(argv)
            output = Path(argv[argv.index("--output-dir") + 1])
            output.mkdir(parents=True, exist_ok=True)
            (output / "checkpoint.safetensors").write_bytes(b"state")  # an epoch's checkpoint
            self.pid = 0

    monkeypatch.setattr(search_quality.subprocess, "Popen", Process)
    monkeypatch.setattr(search_quality.os, "wait4", lambda pid, _: (pid, outcome["status"] << 8, _Usage()))
    run = search_quality.Runner(tmp_path, threads=1)
    output = tmp_path / "searches" / "seed0"
    args = ["search", "--output-dir", str(output), "--seed", "0"]
    with pytest.raises(SystemExit, match="search_seed0 failed"):
        run("search_seed0", args, output)  # stopped part-way: its checkpoint stays
    assert "--resume" not in calls[-1] and (output / "checkpoint.safetensors").is_file()
    outcome["status"] = 0
    record = run("search_seed0", args, output)
    assert calls[-1][-1] == "--resume" and record["resumed"] and record["command"][-1] == "0"
    run("search_seed0", args, output)
    assert run.stages["search_seed0"]["reused"] and len(calls) == 2  # done: not run again
    (output / ".benchmark_done.json").unlink()
    (output / "stale").write_text("")
    run("search_seed0", [*args[:-1], "1"], output)  # another command: a fresh start, nothing resumed
    assert "--resume" not in calls[-1] and not (output / "stale").exists()
    (output / ".benchmark_done.json").unlink()
    shutil.rmtree(output)  # deleted by hand to redo it: its state elsewhere is not resumed
    (tmp_path / "searches" / "seed0.resume").mkdir()
    (tmp_path / "searches" / "seed0.resume" / "training_state.safetensors").write_bytes(b"state")
    run("search_seed0", [*args[:-1], "1"], output)
    assert "--resume" not in calls[-1]


class _Usage:
    ru_maxrss = 1024


def test_a_stage_is_the_same_whichever_checkout_names_the_fixed_genotypes():
    from search_quality import same_stage

    def command(genotype: str) -> list[str]:
        return ["train", "--genotype", f"{genotype}/benchmarks/genotypes/conv_cell.json", "--seed", "0"]

    old = command("/work/a")
    assert same_stage(old, command("/elsewhere"))
    assert not same_stage(old, [*old[:2], "/work/a/benchmarks/genotypes/bag.json", *old[3:]])
    assert not same_stage(old, [*old[:-1], "1"]) and not same_stage(None, old)
