"""The whole pipeline in one command on a tiny random teacher and task: outputs, report, skipping,
re-running what changed, resuming what was interrupted, and clear errors for bad settings."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_STAGES, write_tiny_bert, write_tiny_glue

import adabert.deploy.export
import adabert.pipeline
import adabert.report.evaluate
import adabert.search
import adabert.search.loop
import adabert.student.train
import adabert.teacher.finetuning
import adabert.teacher.probes
from adabert.cli import main
from adabert.config import ConfigError, PipelineConfig
from adabert.pipeline import STAGE_FILE, digest, plan, run_pipeline
from adabert.report.document import build_report

CARD_FILES = ("README.md", "model_card.json", "cell.png", "adabert_task.json")  # added by the evaluation
RAN = ("teacher", "store", "search", "student", "eval", "export")

TINY_COMPRESS = {
    "methods": "svd",
    "kd_epochs": 0.5,
    "retrain_epochs": 0.5,
    "batch_sizes": [1, 2],
    "seq_len": 16,
    "repeats": 2,
    "warmup": 1,
}


def _tiny_inputs(root: Path) -> dict[str, Path]:
    """The conftest tiny teacher and tiny SST-2, built once for the module."""
    return {"model": write_tiny_bert(root / "tiny_bert"), "data_dir": write_tiny_glue(root / "glue")}


def tiny_config(inputs: dict[str, Path], run_dir: Path, **changes) -> PipelineConfig:
    settings = dict(
        task="sst2",
        data_dir=str(inputs["data_dir"]),
        run_dir=str(run_dir),
        model=str(inputs["model"]),
        budget="custom",
        **{k: dict(v) for k, v in TINY_STAGES.items()},
    )
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(settings.get(key), dict):
            value = {**settings[key], **value}
        settings[key] = value
    return PipelineConfig(**settings)


@pytest.fixture(scope="module", autouse=True)
def small_reference():
    """A small stand-in for the BERT-base yardstick: building and timing the real one costs seconds per
    evaluation, and tests/test_evaluate.py covers it."""
    from transformers import BertConfig, BertForSequenceClassification

    def reference(num_labels: int):
        torch.manual_seed(0)
        config = BertConfig(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=128,
            num_labels=num_labels,
        )
        return BertForSequenceClassification(config).eval()

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(adabert.report.evaluate, "bert_base_reference", reference)
        yield


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    return _tiny_inputs(tmp_path_factory.mktemp("inputs"))


@pytest.fixture(scope="module")
def finished_run(inputs, tmp_path_factory) -> Path:
    """One complete run, through the command line and a --config file."""
    root = tmp_path_factory.mktemp("pipeline")
    run_dir = root / "run"
    config_file = root / "pipeline.json"
    settings = {
        "task": "sst2",
        "data_dir": str(inputs["data_dir"]),
        "run_dir": str(run_dir),
        "budget": "custom",
        **TINY_STAGES,
    }
    config_file.write_text(json.dumps(settings))
    assert main(["pipeline", "--config", str(config_file), "--model", str(inputs["model"])]) == 0
    return run_dir


def copy_run(run: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(run, target)
    return target


def statuses(run_dir: Path) -> dict[str, str]:
    return {k: v["status"] for k, v in json.loads((run_dir / "pipeline.json").read_text())["stages"].items()}


def stage_info(run_dir: Path, stage: str) -> dict:
    return json.loads((run_dir / stage / STAGE_FILE).read_text())


def forbid(monkeypatch, *names: str) -> None:
    """Make stage functions fail if the pipeline calls them."""
    targets = {
        "finetune": (adabert.teacher.finetuning, "finetune"),
        "probe": (adabert.teacher.probes, "probe"),
        "search": (adabert.search, "run_search"),
        "train": (adabert.student.train, "train_student"),
        "evaluate": (adabert.report.evaluate, "run_evaluation"),
        "export": (adabert.deploy.export, "export_model"),
    }
    for name in names:
        module, attr = targets[name]

        def fail(*args, _name=name, **kwargs):
            raise AssertionError(f"stage {_name} should have been skipped")

        monkeypatch.setattr(module, attr, fail)


# ------------------------------------------------------------------------------------------ a full run
def test_full_run_writes_every_stage_the_report_and_a_checked_onnx_model(finished_run):
    run = finished_run
    assert statuses(run) == {**dict.fromkeys(RAN, "ran"), "compress": "disabled"}
    assert not (run / "compress").exists()
    progress = json.loads((run / "pipeline.json").read_text())
    assert progress["status"] == "done" and all(progress["stages"][s]["seconds"] >= 0 for s in RAN)
    for stage in RAN:
        info = stage_info(run, stage)
        assert {"config", "config_hash", "upstream", "hash", "seconds"} <= set(info)
        # stage.json is written last: no output of the stage is newer
        newest = max(
            p.stat().st_mtime_ns for p in (run / stage).rglob("*") if p.name not in (STAGE_FILE, *CARD_FILES)
        )
        assert (run / stage / STAGE_FILE).stat().st_mtime_ns >= newest
    assert stage_info(run, "search")["config"]["hidden_size"] == 16
    assert stage_info(run, "student")["upstream"] == {
        "search": stage_info(run, "search")["hash"],
        "store": stage_info(run, "store")["hash"],
    }
    for name in ("model.safetensors", "tokenizer.json"):
        assert (run / "teacher" / name).exists() and (run / "student" / name).exists()
    assert (run / "store" / "manifest.json").exists() and (run / "search" / "genotype.json").exists()
    assert (run / "eval" / "report.json").exists()

    # the ONNX model runs and matches the student on real rows
    import onnxruntime as ort

    export = json.loads((run / "export" / "export.json").read_text())
    assert export["source"] == "student" and export["parity"]["dev_max_abs_diff"] <= export["atol"]
    assert (run / "export" / "tokenizer.json").exists() and (run / "export" / "config.json").exists()
    session = ort.InferenceSession(str(run / "export" / "model.onnx"), providers=["CPUExecutionProvider"])
    feed = {i.name: np.ones((2, 7), dtype=np.int64) for i in session.get_inputs()}
    assert session.run(None, feed)[0].shape == (2, 2)

    md = (run / "report.md").read_text()
    for text in (
        "accuracy",
        "label_loyalty",
        "BERT-base",
        "teacher",
        "student",
        "speedup vs teacher",
        "figures/accuracy_latency.png",
        "figures/search_curves.png",
        "search/genotype.png",
        "search/op_probabilities.png",
        "search/depth_distribution.png",
        "store/probe_metrics.png",
        "export/model.onnx",
        "the trivial predictor's is",  # the supernet judged on held-out rows, in the report
    ):
        assert text in md, text
    assert "the trivial predictor's is" in (run / "student" / "README.md").read_text()  # and the card
    html = (run / "report.html").read_text()
    images = html.split('src="data:image/png;base64,')[1:]
    assert len(images) == 6 and 'src="figures' not in html and 'src="search' not in html
    for image in images:
        assert base64.b64decode(image.split('"', 1)[0]).startswith(b"\x89PNG")


def test_rerun_skips_every_stage(finished_run, tmp_path, monkeypatch, inputs):
    run = copy_run(finished_run, tmp_path)  # a moved run directory stays up to date
    before = {s: (run / s / STAGE_FILE).stat().st_mtime_ns for s in RAN}
    forbid(monkeypatch, "finetune", "probe", "search", "train", "evaluate", "export")
    result = run_pipeline(tiny_config(inputs, run))
    assert {s: result["stages"][s]["status"] for s in RAN} == dict.fromkeys(RAN, "skipped")
    assert {s: (run / s / STAGE_FILE).stat().st_mtime_ns for s in RAN} == before
    assert (run / "report.html").stat().st_size > 10_000


def test_changed_settings_rerun_the_affected_stage_and_everything_after(
    finished_run, tmp_path, monkeypatch, inputs
):
    run = copy_run(finished_run, tmp_path)
    teacher_hash, store_hash = stage_info(run, "teacher")["hash"], stage_info(run, "store")["hash"]
    old_student = stage_info(run, "student")["hash"]
    forbid(monkeypatch, "finetune", "probe")
    run_pipeline(tiny_config(inputs, run, search={"epochs": 2}))
    assert statuses(run) == {
        "teacher": "skipped",
        "store": "skipped",
        "search": "ran",
        "student": "ran",
        "compress": "disabled",
        "eval": "ran",
        "export": "ran",
    }
    assert (
        stage_info(run, "teacher")["hash"] == teacher_hash and stage_info(run, "store")["hash"] == store_hash
    )
    assert len((run / "search" / "search_log.jsonl").read_text().splitlines()) == 2
    assert stage_info(run, "student")["hash"] != old_student
    assert stage_info(run, "student")["upstream"]["search"] == stage_info(run, "search")["hash"]
    why = {k: v.get("why") for k, v in json.loads((run / "pipeline.json").read_text())["stages"].items()}
    assert why["search"] == "epochs 1 -> 2" and why["teacher"] is None  # each stage that re-runs says why
    assert why["student"] == "the stage(s) before it ran again (search)"

    # an evaluation setting re-runs the evaluation only: the export does not depend on it
    forbid(monkeypatch, "search", "train", "export")
    run_pipeline(tiny_config(inputs, run, search={"epochs": 2}, evaluate={"repeats": 3}))
    assert statuses(run) == {**dict.fromkeys(RAN, "skipped"), "compress": "disabled", "eval": "ran"}
    assert stage_info(run, "eval")["config"]["student"]["repeats"] == 3
    eval_why = json.loads((run / "pipeline.json").read_text())["stages"]["eval"]["why"]
    assert eval_why == "evaluate.repeats 2 -> 3"


def test_compression_stage_when_enabled(finished_run, tmp_path, monkeypatch, inputs):
    run = copy_run(finished_run, tmp_path)
    forbid(monkeypatch, "finetune", "probe", "search", "train")
    run_pipeline(tiny_config(inputs, run, compress=dict(TINY_COMPRESS)))
    assert statuses(run) == {
        **dict.fromkeys(("teacher", "store", "search", "student"), "skipped"),
        "compress": "ran",
        "eval": "ran",
        "export": "ran",
    }
    assert (run / "compress" / "model.safetensors").exists()
    assert (run / "eval" / "compressed" / "report.json").exists()
    assert json.loads((run / "export" / "export.json").read_text())["source"] == "compress"
    assert "compressed student" in (run / "report.md").read_text()
    assert stage_info(run, "eval")["upstream"]["compress"] == stage_info(run, "compress")["hash"]


# ------------------------------------------------------------------------------------------ interruptions
def test_interrupted_search_resumes_and_the_pipeline_completes(finished_run, tmp_path, monkeypatch, inputs):
    run = copy_run(finished_run, tmp_path)
    cfg = tiny_config(inputs, run, search={"epochs": 2})
    real_evaluate, calls = adabert.search.loop.epoch_record, []

    def dies_in_epoch_two(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(adabert.search.loop, "epoch_record", dies_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg)
    progress = json.loads((run / "pipeline.json").read_text())
    assert progress["status"] == "interrupted" and progress["stages"]["search"]["status"] == "interrupted"
    assert not (run / "search" / STAGE_FILE).exists()
    assert (run / "search" / "checkpoint.safetensors").exists()

    monkeypatch.setattr(adabert.search.loop, "epoch_record", real_evaluate)
    real_search, resumes = adabert.search.run_search, []
    monkeypatch.setattr(adabert.search, "run_search", lambda c: resumes.append(c.resume) or real_search(c))
    forbid(monkeypatch, "finetune", "probe")
    run_pipeline(cfg)
    assert resumes == [True]
    assert statuses(run)["search"] == "resumed" and stage_info(run, "search")["resumed"] is True
    log = [json.loads(line) for line in (run / "search" / "search_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    assert all(statuses(run)[s] == "ran" for s in ("student", "eval", "export"))


def test_stage_without_stage_json_is_rerun_with_resume(finished_run, tmp_path, monkeypatch, inputs):
    run = copy_run(finished_run, tmp_path)
    (run / "student" / STAGE_FILE).unlink()  # as if killed after its last epoch, before stage.json
    real_train, resumes = adabert.student.train.train_student, []
    monkeypatch.setattr(
        adabert.student.train, "train_student", lambda c: resumes.append(c.resume) or real_train(c)
    )
    forbid(monkeypatch, "finetune", "probe", "search")
    run_pipeline(tiny_config(inputs, run))
    assert resumes == [True]
    assert statuses(run) == {
        **dict.fromkeys(("teacher", "store", "search"), "skipped"),
        "student": "resumed",
        "compress": "disabled",
        "eval": "ran",
        "export": "ran",
    }


def test_failed_stage_is_recorded_and_run_again(finished_run, tmp_path, monkeypatch, inputs):
    run = copy_run(finished_run, tmp_path)
    (run / "export" / STAGE_FILE).unlink()

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(adabert.deploy.export, "export_model", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        run_pipeline(tiny_config(inputs, run))
    progress = json.loads((run / "pipeline.json").read_text())
    assert progress["status"] == "failed" and progress["failed_stage"] == "export"
    assert "disk full" in progress["stages"]["export"]["error"]
    monkeypatch.undo()
    forbid(monkeypatch, "finetune", "probe", "search", "train", "evaluate")
    run_pipeline(tiny_config(inputs, run))
    assert statuses(run)["export"] == "ran" and (run / "export" / "model.onnx").exists()


def test_given_teacher_skips_fine_tuning(finished_run, tmp_path, monkeypatch, inputs):
    forbid(monkeypatch, "finetune")
    run = tmp_path / "run"
    given = finished_run / "teacher"
    run_pipeline(tiny_config(inputs, run, teacher=str(given)))
    assert all(statuses(run)[s] == "ran" for s in RAN)
    info = stage_info(run, "teacher")
    assert info["config"]["given_teacher"] == str(given) and len(info["config"]["weights_sha256"]) == 64
    from adabert.teacher.store import KnowledgeStore

    assert KnowledgeStore.open(run / "store").teacher_path.resolve() == given.resolve()
    assert stage_info(given.parent, "teacher")["config"]["model"] == str(inputs["model"])  # left untouched


def test_a_folder_the_pipeline_did_not_write_is_never_replaced(tmp_path, monkeypatch, inputs):
    forbid(monkeypatch, "finetune")
    run = tmp_path / "run"
    (run / "teacher").mkdir(parents=True)
    (run / "teacher" / "model.safetensors").write_bytes(b"someone's model")
    with pytest.raises(ConfigError, match="not written by 'adabert pipeline'.*--teacher"):
        run_pipeline(tiny_config(inputs, run))
    assert (run / "teacher" / "model.safetensors").read_bytes() == b"someone's model"
    assert statuses(run)["teacher"] == "failed"


# ------------------------------------------------------------------------------------------ settings
def test_budgets_and_stage_settings_resolve(inputs, tmp_path):
    stages = {s.name: s for s in plan(PipelineConfig(run_dir=str(tmp_path), search={"epochs": 5}))}
    teacher, store, search = (stages[n].config for n in ("teacher", "store", "search"))
    assert (teacher["train_limit"], teacher["max_length"], teacher["epochs"]) == (8000, 64, 2)
    assert store["max_length"] is None  # follows the teacher's
    assert store["train_limit"] == 100000  # the teacher labels more rows than it learned from
    assert (search["epochs"], search["train_limit"]) == (5, 12000)  # a stage setting beats the budget
    assert store["augment_to"] == 20000 and search["augment_copies"] == 2  # small tasks get rows
    assert stages["student"].config["supernet"] == str(tmp_path / "search")
    assert not stages["compress"].enabled

    paper = {s.name: s.config for s in plan(PipelineConfig(run_dir=str(tmp_path), budget="paper"))}
    assert paper["teacher"]["train_limit"] is None and paper["teacher"]["epochs"] == 3
    assert (paper["search"]["epochs"], paper["student"]["epochs"]) == (50, 30)

    with pytest.raises(ConfigError, match=r"evaluate.seq_len 128 is longer than the 64 positions"):
        plan(PipelineConfig(run_dir=str(tmp_path), teacher=str(inputs["model"])))  # a tiny teacher
    tiny = PipelineConfig(run_dir=str(tmp_path), teacher=str(inputs["model"]), evaluate={"seq_len": 16})
    given = {s.name: s.config for s in plan(tiny)}
    assert given["store"]["train_limit"] == 100000 and given["store"]["teacher"] == str(inputs["model"])
    scratch = {s.name: s.config for s in plan(PipelineConfig(run_dir=str(tmp_path), from_supernet=False))}
    assert scratch["student"]["supernet"] is None


@pytest.mark.parametrize(
    "settings,message",
    [
        ({"serch": {"epochs": 2}}, r"unknown setting\(s\) \['serch'\]"),
        ({"search": {"epoch": 2}}, r"search: unknown setting\(s\) \['epoch'\]"),
        ({"train": {"epochs": "many"}}, r"train: setting 'epochs' expects int"),
        ({"train": {"store": "elsewhere"}}, r"train: setting\(s\) \['store'\] are set by the pipeline"),
        ({"budget": "fast"}, r"budget must be one of \['quick', 'paper', 'custom'\]"),
        ({"evaluate": [1, 2]}, r"'evaluate' must be a JSON object"),
    ],
)
def test_bad_config_files_give_clear_errors(tmp_path, capsys, settings, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(settings))
    with pytest.raises(ConfigError, match=message) as err:
        PipelineConfig.load(path)
    assert str(path) in str(err.value)
    assert main(["pipeline", "--config", str(path), "--run-dir", str(tmp_path / "run")]) == 2
    assert "adabert: error:" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_bad_set_flags_give_clear_errors(tmp_path, capsys):
    for flag, message in (
        ("search.epoch=3", "unknown setting(s) ['epoch']"),
        ("serch.epochs=3", "unknown stage 'serch'"),
        ("epochs=3", "expected STAGE.KEY=VALUE"),
    ):
        assert main(["pipeline", "--run-dir", str(tmp_path / "run"), "--set", flag]) == 2
        assert message in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ report
def test_build_report_on_a_run_directory(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path)
    for name in ("report.md", "report.html"):
        (run / name).unlink()
    shutil.rmtree(run / "figures")
    md_path, html_path = build_report(run)
    assert md_path == run / "report.md" and html_path.read_text().count("data:image/png;base64,") == 6
    assert (run / "figures" / "accuracy_latency.png").exists()
    assert main(["report", str(run)]) == 0

    partial = tmp_path / "partial"  # only a knowledge store: the report says what is missing
    shutil.copytree(finished_run / "store", partial / "store")
    md_path, _ = build_report(partial)
    text = md_path.read_text()
    assert "store/probe_metrics.png" in text and "Not available" in text and "No evaluation yet" in text


# ------------------------------------------------------------------------------------------ faults
def test_a_second_pipeline_in_the_same_folder_exits_2_while_the_first_finishes(
    finished_run, tmp_path, monkeypatch, inputs, capsys
):
    import os
    import threading

    run = copy_run(finished_run, tmp_path)
    (run / "export" / STAGE_FILE).unlink()  # the first run has the export to do
    inside, release = threading.Event(), threading.Event()
    real_export = adabert.deploy.export.export_model

    def slow_export(*args, **kwargs):
        inside.set()
        assert release.wait(60)
        return real_export(*args, **kwargs)

    monkeypatch.setattr(adabert.deploy.export, "export_model", slow_export)
    outcome = {}
    first = threading.Thread(target=lambda: outcome.update(result=run_pipeline(tiny_config(inputs, run))))
    first.start()
    try:
        assert inside.wait(120)
        config = tmp_path / "second.json"
        config.write_text(json.dumps({**json.loads((run / "pipeline_config.json").read_text())}))
        assert main(["pipeline", "--config", str(config)]) == 2
        err = capsys.readouterr().err
        assert f"{run} is in use by another adabert process, pid {os.getpid()}" in err
        assert statuses(run)["export"] == "running"  # the refused run touched nothing
    finally:
        release.set()
        first.join(120)
    assert outcome["result"]["status"] == "done" and statuses(run)["export"] == "ran"


def test_changed_data_reruns_the_teacher_and_the_store_moved_data_does_not(
    finished_run, tmp_path, monkeypatch, inputs
):
    run = copy_run(finished_run, tmp_path)
    data = tmp_path / "glue"
    shutil.copytree(inputs["data_dir"], data)
    forbid(monkeypatch, "finetune", "probe", "search", "train", "evaluate", "export")
    run_pipeline(tiny_config(inputs, run, data_dir=str(data)))  # the same files elsewhere: all skipped
    assert set(statuses(run).values()) == {"skipped", "disabled"}

    train = data / "SST-2" / "train.tsv"
    lines = train.read_text().splitlines()
    text, label = lines[1].rsplit("\t", 1)
    lines[1] = f"{text}\t{1 - int(label)}"
    train.write_text("\n".join(lines) + "\n")
    with pytest.raises(AssertionError, match="stage finetune should have been skipped"):
        run_pipeline(tiny_config(inputs, run, data_dir=str(data)))
    assert json.loads((run / "pipeline.json").read_text())["stages"]["teacher"]["why"] == "train.tsv changed"
    # with a given teacher, the store's identity holds the data's hash too
    given = str(finished_run / "teacher")
    before = {s.name: s for s in plan(tiny_config(inputs, tmp_path / "a", teacher=given))}["store"]
    after = {s.name: s for s in plan(tiny_config(inputs, tmp_path / "b", teacher=given, data_dir=str(data)))}
    assert digest(before.identity) != digest(after["store"].identity)
    assert before.identity["data_sha256"]["dev"] == after["store"].identity["data_sha256"]["dev"]


def test_a_kill_right_after_the_store_rename_resumes_to_the_same_result(
    finished_run, tmp_path, monkeypatch, inputs
):
    """The store folder is complete but has no stage.json (the rename replaced the folder the
    pipeline had marked): the next run re-makes the store instead of refusing the folder."""
    run = copy_run(finished_run, tmp_path)
    (run / "store" / STAGE_FILE).unlink()
    for stage in ("search", "student", "eval", "export"):  # a killed run had not got further
        shutil.rmtree(run / stage)
    progress = json.loads((run / "pipeline.json").read_text())
    progress["status"] = "running"  # as a kill -9 leaves it
    progress["stages"]["store"]["status"] = "running"
    (run / "pipeline.json").write_text(json.dumps(progress))
    (run / ".store.x1.tmp").mkdir()  # what write_store and probe were writing
    (run / ".store.features.x2").mkdir()
    (run / ".pipeline.json.x3.tmp").write_text("{")
    forbid(monkeypatch, "finetune")
    result = run_pipeline(tiny_config(inputs, run))
    assert statuses(run) == {**dict.fromkeys(RAN, "ran"), "teacher": "skipped", "compress": "disabled"}
    assert result["previous_run"]["status"] == "interrupted" and "killed" in result["previous_run"]["note"]
    for name in ("search/genotype.json", "student/model.safetensors"):
        assert (run / name).read_bytes() == (finished_run / name).read_bytes(), name
    left = [p.name for p in run.rglob(".*") if p.name.endswith(".tmp") or ".features." in p.name]
    assert left == []


def test_a_failed_stage_leaves_no_temporary_file(finished_run, tmp_path, monkeypatch, inputs):
    run = copy_run(finished_run, tmp_path)
    (run / "student" / STAGE_FILE).unlink()

    def dies_while_saving(cfg):
        (Path(cfg.output_dir) / ".model.safetensors.abc.tmp").write_bytes(b"half")  # a writer cut short
        raise OSError(28, "No space left on device", str(Path(cfg.output_dir) / "model.safetensors"))

    monkeypatch.setattr(adabert.student.train, "train_student", dies_while_saving)
    with pytest.raises(OSError, match="No space left"):
        run_pipeline(tiny_config(inputs, run))
    progress = json.loads((run / "pipeline.json").read_text())
    assert progress["status"] == "failed" and progress["failed_stage"] == "student"
    assert not [p for p in run.rglob(".*") if p.name.endswith(".tmp")]


def test_the_store_follows_the_umask_like_the_rest_of_the_run(finished_run):
    from adabert.io import DIR_MODE, FILE_MODE

    for path in (finished_run / "store").rglob("*"):
        want = DIR_MODE if path.is_dir() else FILE_MODE
        assert path.stat().st_mode & 0o777 == want, path
    assert (finished_run / "store").stat().st_mode & 0o777 == DIR_MODE
