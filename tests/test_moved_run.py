"""A run directory built by ``adabert pipeline`` and then moved works for every later command, run from
another working directory: the files that record paths record them relative to themselves (the store's
manifest names its teacher relative to the store folder), and older records (relative to the working
directory of the command that wrote them) are still read."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import TINY_STAGES, write_tiny_bert, write_tiny_glue

from adabert.cli import main


@pytest.fixture
def moved_run(tmp_path, monkeypatch) -> Path:
    """``adabert pipeline`` into ``runs/sst2`` relative to one working directory, then the whole
    ``runs`` folder moved elsewhere; the working directory is a third folder."""
    write_tiny_bert(tmp_path / "inputs" / "bert")
    write_tiny_glue(tmp_path / "inputs" / "glue")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    settings = {
        "task": "sst2",
        "data_dir": "../inputs/glue",
        "run_dir": "runs/sst2",
        "model": "../inputs/bert",
        "budget": "custom",
        **TINY_STAGES,
    }
    Path("pipeline.json").write_text(json.dumps(settings))
    assert main(["pipeline", "--config", "pipeline.json"]) == 0
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    shutil.move(str(work / "runs"), moved)
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.chdir(other)
    monkeypatch.setenv("ADABERT_CACHE", str(tmp_path / "cache"))  # a new latency table: the teacher is timed
    return moved / "sst2"


def _ok(*argv: str) -> None:
    assert main(list(argv)) == 0, argv


def test_a_moved_run_directory_works_for_every_later_command_from_another_folder(moved_run, capsys):
    run = Path("..") / "elsewhere" / "moved" / "sst2"  # relative to this working directory
    assert run.resolve() == moved_run.resolve()
    manifest = json.loads((run / "store" / "manifest.json").read_text())
    assert manifest["teacher"]["path"] == "../teacher"  # relative to the store folder
    store = ["--store", str(run / "store")]
    _ok(
        "evaluate",
        "--model",
        str(run / "student"),
        *store,
        "--output-dir",
        "eval",
        "--skip-latency",
        "--seq-len",
        "16",
    )
    assert json.loads(Path("eval/report.json").read_text())["metrics"]
    _ok("teacher", "probe", "--teacher", str(run / "teacher"), "--output-dir", "store2", "--epochs", "1")
    search = TINY_STAGES["search"]
    _ok(
        "search",
        *store,
        "--output-dir",
        "search",
        "--space",
        "attention_rnn",
        "--hidden-size",
        str(search["hidden_size"]),
        "--max-cells",
        "2",
        "--epochs",
        "1",
        "--uniform-warmup-epochs",
        "0",
        "--batch-size",
        "8",
        "--cost-seq-len",
        "16",
    )
    _ok(
        "train",
        "--genotype",
        str(run / "search" / "genotype.json"),
        *store,
        "--supernet",
        str(run / "search"),
        "--output-dir",
        "student",
        "--epochs",
        "1",
        "--batch-size",
        "8",
    )
    _ok(
        "compress",
        "--model",
        str(run / "student"),
        *store,
        "--output-dir",
        "compressed",
        "--methods",
        "svd",
        "--kd-epochs",
        "0.5",
        "--batch-size",
        "16",
        "--batch-sizes",
        "1",
        "--seq-len",
        "16",
        "--repeats",
        "1",
        "--warmup",
        "0",
    )
    _ok("export", "--model", str(run / "student"), *store, "--output-dir", "export", "--seq-len", "16")
    dev = str(Path("..") / "inputs" / "glue" / "SST-2" / "dev.tsv")
    for model in (run / "student", run / "export", Path("export")):
        _ok("predict", "--model", str(model), "--input", dev, "--output", f"{model.name}.tsv")
    _ok("report", str(run))
    # the pipeline, given its moved folder, finds every stage up to date
    config = json.loads((run.parent.parent.parent / "work" / "pipeline.json").read_text())
    config.update(data_dir=str(Path("..") / "inputs" / "glue"), model=str(Path("..") / "inputs" / "bert"))
    Path("again.json").write_text(json.dumps({**config, "run_dir": str(run)}))
    _ok("pipeline", "--config", "again.json")
    stages = json.loads((run / "pipeline.json").read_text())["stages"]
    assert {s["status"] for s in stages.values()} <= {"skipped", "disabled"}, stages
    assert "Traceback" not in capsys.readouterr().err


def test_an_older_store_that_recorded_its_teacher_relative_to_the_working_directory_is_still_read(
    tiny_store, tmp_path, monkeypatch
):
    from adabert.teacher.store import KnowledgeStore

    teacher = KnowledgeStore.open(tiny_store).teacher_path.resolve()
    manifest_file = tiny_store / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    monkeypatch.chdir(teacher.parent)
    manifest["teacher"] = {k: v for k, v in manifest["teacher"].items() if k != "abspath"}
    manifest["teacher"]["path"] = teacher.name  # as older adabert wrote it: the probe command's own path
    manifest_file.write_text(json.dumps(manifest))
    assert KnowledgeStore.open(tiny_store).teacher_path.resolve() == teacher
    manifest["teacher"]["path"] = str(teacher)  # or absolute
    manifest_file.write_text(json.dumps(manifest))
    assert KnowledgeStore.open(tiny_store).teacher_path == teacher


def test_recorded_paths_resolve_relative_to_their_file_then_where_they_were(tmp_path, monkeypatch):
    from adabert.io import record_path, resolve_recorded

    run = tmp_path / "run"
    (run / "teacher").mkdir(parents=True)
    (run / "store").mkdir()
    assert record_path(run / "teacher", run / "store") == "../teacher"
    assert resolve_recorded("../teacher", run / "store") == run / "store" / "../teacher"
    elsewhere = tmp_path / "models" / "teacher"  # a given teacher outside the run: found where it was
    elsewhere.mkdir(parents=True)
    assert (
        resolve_recorded(record_path(elsewhere, run / "store"), tmp_path / "moved", str(elsewhere))
        == elsewhere
    )
    monkeypatch.chdir(run)
    assert resolve_recorded("teacher", run / "store") == Path("teacher")  # older: the working directory's
    assert resolve_recorded("owner/model", run / "store") == Path("owner/model")  # a hub id, as it stands
    missing = resolve_recorded("../gone", run / "store", str(tmp_path / "gone"))
    assert missing == run / "store" / "../gone"  # named in the caller's error
