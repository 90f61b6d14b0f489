"""The user's own labelled CSV, with its own column names, from the command line to predictions:
``adabert pipeline --train-file ... --dev-file ...`` on a tiny random teacher, then ``adabert predict``
and an int8 export; every check of the files names the file, the row and what was expected."""

from __future__ import annotations

import csv
import json
import os
import random
from pathlib import Path

import pytest
from conftest import tiny_sentence, write_tiny_bert
from test_pipeline import TINY_COMPRESS, TINY_STAGES, small_reference  # noqa: F401  (autouse fixture)

from adabert.cli import main
from adabert.config import ConfigError, FinetuneConfig, PipelineConfig, ProbeConfig
from adabert.tasks import TaskDataError, get_task

pytest.importorskip("onnxruntime")

FLAGS = ["--text-columns", "review", "--label-column", "sentiment"]


def write_reviews(path: Path, n: int, seed: int, labelled: bool = True) -> Path:
    """A CSV with the user's own columns: id, review, sentiment (neg / pos)."""
    rng = random.Random(seed)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "review", "sentiment"] if labelled else ["id", "review"])
        for i in range(n):
            positive = bool(i % 2)
            row = [f"r{seed}-{i}", tiny_sentence(rng, positive)]
            writer.writerow(row + (["pos" if positive else "neg"] if labelled else []))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("reviews")
    return {
        "train": write_reviews(root / "train.csv", 48, 0),
        "dev": write_reviews(root / "dev.csv", 16, 1),
        "test": write_reviews(root / "test.csv", 12, 3),
        "new": write_reviews(root / "new.csv", 10, 2, labelled=False),
        "teacher": write_tiny_bert(root / "tiny_bert"),
        "root": root,
    }


@pytest.fixture(scope="module")
def run(data, tmp_path_factory) -> Path:
    """The pipeline on the user's CSV, flags only (stage sizes from a config file)."""
    root = tmp_path_factory.mktemp("run")
    config = root / "tiny.json"
    config.write_text(json.dumps({"budget": "custom", **TINY_STAGES}))
    run_dir = root / "reviews"
    argv = ["pipeline", "--config", str(config), *files(data), *FLAGS, "--model", str(data["teacher"])]
    argv += ["--run-dir", str(run_dir)]
    assert main(argv) == 0
    return run_dir


def files(data: dict[str, Path]) -> list[str]:
    return [
        "--train-file",
        str(data["train"]),
        "--dev-file",
        str(data["dev"]),
        "--test-file",
        str(data["test"]),
    ]


def predict(model: Path, source: Path, out: Path) -> int:
    return main(["predict", "--model", str(model), "--input", str(source), "--output", str(out)])


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_own_csv_runs_through_the_pipeline_to_a_report(run, data, capsys):
    manifest = json.loads((run / "store" / "manifest.json").read_text())
    task = manifest["task"]
    assert task["name"] == "custom" and task["labels"] == ["neg", "pos"]
    assert task["text_columns"] == ["review"] and task["label_column"] == "sentiment"
    assert task["files"] == {split: str(data[split]) for split in ("train", "dev", "test")}
    assert manifest["splits"]["train"]["rows"] == 48 and manifest["splits"]["dev"]["rows"] == 16
    assert (run / "report.md").exists() and "custom" in (run / "report.md").read_text()
    saved = PipelineConfig.load(run / "pipeline_config.json")
    assert saved.train_file == str(data["train"]) and saved.task == "custom"

    card = (run / "student" / "README.md").read_text()
    assert "`review`" in card and "neg, pos" in card and "label_loyalty" in card and "cell.png" in card
    test = json.loads((run / "student" / "model_card.json").read_text())["test_metrics"]
    assert test["rows"] == 12 and 0 <= test["accuracy"] <= 1 and "test file (12 rows)" in card
    assert "faster than the teacher" in card or "slower than the teacher" in card
    assert (run / "student" / "cell.png").read_bytes().startswith(b"\x89PNG")
    export = run / "export"
    for name in ("model.onnx", "tokenizer.json", "config.json", "adabert_task.json", "README.md"):
        assert (export / name).is_file(), name
    assert json.loads((export / "adabert_task.json").read_text())["task"]["name"] == "custom"

    # a second run needs the same flags only to find the same task: every stage is up to date
    config = run.parent / "tiny.json"
    argv = ["pipeline", "--config", str(config), *files(data), *FLAGS, "--model", str(data["teacher"])]
    argv += ["--run-dir", str(run)]
    capsys.readouterr()
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("skipped") == 6 and "disabled" in out


def test_predict_with_the_export_and_the_student_gives_the_same_labels(run, data, tmp_path, capsys):
    onnx_out, torch_out = tmp_path / "onnx.csv", tmp_path / "torch.tsv"
    assert predict(run / "export", data["new"], onnx_out) == 0
    assert "10 rows predicted" in capsys.readouterr().out
    assert predict(run / "student", data["new"], torch_out) == 0
    onnx_rows = read_csv(onnx_out)
    with open(torch_out, newline="") as fh:
        torch_rows = list(csv.DictReader(fh, delimiter="\t"))
    assert list(onnx_rows[0]) == ["id", "review", "prediction", "prob_neg", "prob_pos"]
    assert [r["id"] for r in onnx_rows] == [r["id"] for r in read_csv(data["new"])]  # file order kept
    for a, b in zip(onnx_rows, torch_rows):
        assert a["prediction"] == b["prediction"] in ("neg", "pos")
        assert abs(float(a["prob_pos"]) - float(b["prob_pos"])) < 1e-4
        assert abs(float(a["prob_neg"]) + float(a["prob_pos"]) - 1) < 1e-5

    # on a labelled file, predict also scores: the student's dev accuracy, as the evaluation found it
    assert predict(run / "student", data["dev"], tmp_path / "dev.jsonl") == 0
    accuracy = json.loads((run / "eval" / "report.json").read_text())["metrics"]["model"]["accuracy"]
    assert f"accuracy {accuracy:.4f}" in capsys.readouterr().out
    lines = (tmp_path / "dev.jsonl").read_text().splitlines()
    assert len(lines) == 16 and json.loads(lines[0])["sentiment"] in ("neg", "pos")


def test_int8_export_of_the_student_is_checked_against_fp32(run, data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "int8"
    argv = ["export", "--model", str(run / "student"), "--store", str(run / "store"), "--quantize", "int8"]
    assert main(argv + ["--min-agreement", "0", "--output-dir", str(out)]) == 0
    assert "label agreement" in capsys.readouterr().out
    info = json.loads((out / "export.json").read_text())
    int8 = info["int8"]
    assert info["quantization"] == "int8" and int8["rows"] == 16 and 0 <= int8["label_agreement"] <= 1
    assert 0 <= int8["max_abs_prob_diff"] <= 1 and int8["fp32_bytes"] > 0 and int8["int8_bytes"] > 0
    assert set(int8["latency"]) == {"1", "32"} and int8["latency"]["1"]["fp32_ms"] > 0
    accuracy = json.loads((run / "eval" / "report.json").read_text())["metrics"]["model"]["accuracy"]
    assert int8["fp32_metrics"]["accuracy"] == pytest.approx(accuracy) and "accuracy" in int8["int8_metrics"]
    assert not (out / ".fp32.onnx").exists() and "int8" in (out / "README.md").read_text()
    predicted = tmp_path / "p.csv"
    assert predict(out, data["new"], predicted) == 0
    assert {r["prediction"] for r in read_csv(predicted)} <= {"neg", "pos"}

    # an int8 model that decides differently too often is refused, and nothing is written
    import adabert.deploy.quantize as quantize

    strays = {"rows": 16, "max_abs_logit_diff": 2.0, "label_agreement": 0.5, "max_abs_prob_diff": 0.6}
    monkeypatch.setattr(quantize, "agreement", lambda *a: dict(strays))
    assert main(argv + ["--output-dir", str(tmp_path / "refused")]) == 2
    assert "label_agreement 0.5000 < 0.99 (--min-agreement)" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()


def test_single_stages_take_the_same_flags_and_later_ones_need_none(data, tmp_path):
    teacher, store = tmp_path / "teacher", tmp_path / "store"
    argv = [
        "teacher",
        "finetune",
        "--train-file",
        "train.csv",
        "--dev-file",
        "dev.csv",
        *FLAGS,
        "--data-dir",
        str(data["root"]),
        "--task",
        "reviews",
        "--model",
        str(data["teacher"]),
        "--epochs",
        "1",
        "--max-length",
        "32",
        "--output-dir",
        str(teacher),
    ]
    assert main(argv) == 0
    assert (
        main(["teacher", "probe", "--teacher", str(teacher), "--output-dir", str(store), "--epochs", "1"])
        == 0
    )
    task = json.loads((store / "manifest.json").read_text())["task"]
    assert task["name"] == "reviews" and task["files"]["train"] == str(data["train"])


# ------------------------------------------------------------------------------------ clear errors
def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def custom(tmp_path: Path, train: str, dev: str = "review,sentiment\nfine,pos\nbad,neg\n", **kw):
    files = {
        "train_file": str(write(tmp_path / "train.csv", train)),
        "dev_file": str(write(tmp_path / "dev.csv", dev)),
    }
    return FinetuneConfig(**{**files, "text_columns": "review", "label_column": "sentiment", **kw})


@pytest.mark.parametrize(
    "train, dev, pattern",
    [
        ("text,sentiment\nfine,pos\n", None, r"train\.csv:1: column\(s\) \['review'\] not in header"),
        ("review,sentiment\nfine,pos\n  ,neg\n", None, r"train\.csv:3: empty text in column 'review'"),
        ("review,sentiment\nfine,pos\nbad,1\n", None, r"train\.csv: mixed label types in column 'sentiment'"),
        ("review,sentiment\nfine,pos\nok,pos\n", None, r"train\.csv: only one label \('pos'\)"),
        (
            "review,sentiment\nfine,pos\nbad,neg\n",
            "review,sentiment\nmeh,mixed\n",
            r"dev\.csv:2: unknown label 'mixed' in column 'sentiment'; expected one of \['neg', 'pos'\]",
        ),
        (
            "review,sentiment\nfine,pos\nbad,neg\n",
            "review,sentiment\nok,pos\nmeh,\n",
            r"dev\.csv:3: empty label in column 'sentiment'",
        ),
        ("review,sentiment\nfine,pos\nbad,neg,x\n", None, r"train\.csv:3: expected 2 fields, found 3"),
    ],
)
def test_bad_files_are_refused_naming_file_row_and_expectation(tmp_path, train, dev, pattern):
    with pytest.raises(TaskDataError, match=pattern):
        custom(tmp_path, train, *([dev] if dev else []))


def test_a_dev_label_unseen_in_train_is_refused(tmp_path):
    with pytest.raises(TaskDataError, match=r"dev\.csv:3: label 'meh' never occurs in the train file"):
        custom(
            tmp_path,
            "review,sentiment\nfine,pos\nbad,neg\n",
            "review,sentiment\nok,pos\nhm,meh\n",
            label_names="neg,pos,meh",
        )


def test_json_lines_regression_and_mixed_json_types(tmp_path):
    rows = [{"q": "a", "score": 0.5}, {"q": "b", "score": 3}]
    train = write(tmp_path / "t.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    cfg = PipelineConfig(
        train_file=str(train),
        dev_file=str(train),
        text_columns="q",
        label_column="score",
        regression=True,
        task="scores",
    )
    spec = get_task(cfg.task)
    assert spec.is_regression and spec.metrics == ("pearson", "spearman") and spec.name == "scores"
    write(tmp_path / "m.jsonl", '{"q": "a", "y": 1}\n{"q": "b", "y": "pos"}\n')
    with pytest.raises(TaskDataError, match=r"m\.jsonl: mixed label types .*whole numbers .* and text"):
        ProbeConfig(
            train_file=str(tmp_path / "m.jsonl"),
            dev_file=str(tmp_path / "m.jsonl"),
            text_columns="q",
            label_column="y",
        )


def test_task_settings_need_a_train_file_and_a_glue_name_becomes_custom(tmp_path):
    with pytest.raises(ConfigError, match=r"--dev-file, --label-column: .* need --train-file"):
        FinetuneConfig(dev_file="d.csv", label_column="y")
    with pytest.raises(TaskDataError, match=r"also needs --dev-file"):
        FinetuneConfig(train_file="t.csv", text_columns="review", label_column="y")
    cfg = custom(tmp_path, "review,sentiment\nfine,pos\nbad,neg\n", task="mrpc")
    assert cfg.task == "custom" and get_task("custom").labels == ("neg", "pos")
    assert get_task("mrpc").glue_dir == "MRPC"  # the GLUE task is untouched
    with pytest.raises(TaskDataError, match=r"--text-columns a,b,c: expected one column, or two"):
        custom(tmp_path, "review,sentiment\nfine,pos\nbad,neg\n", text_columns="a,b,c")
    with pytest.raises(ConfigError, match=r"setting\(s\) \['train_file'\] are set by the pipeline"):
        PipelineConfig(finetune={"train_file": "x.csv"})


# ------------------------------------------------------------------------------ the default teacher
# the shared GLUE copy beside the repository (ADABERT_GLUE_DIR: elsewhere, e.g. from a git worktree)
GLUE = Path(os.environ.get("ADABERT_GLUE_DIR") or Path(__file__).parents[2] / "shared" / "data" / "glue")


def sst2_as_reviews(split: str, path: Path, start: int, n: int, labelled: bool = True) -> Path:
    """Real SST-2 rows under the user's own names: review, sentiment = neg / pos."""
    lines = (GLUE / "SST-2" / f"{split}.tsv").read_text().splitlines()[1 + start : 1 + start + n]
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["review", "sentiment"] if labelled else ["review"])
        for line in lines:
            text, label = line.rsplit("\t", 1)
            writer.writerow([text.strip()] + ([("neg", "pos")[int(label)]] if labelled else []))
    return path


@pytest.mark.integration
def test_real_reviews_csv_with_the_default_teacher(tmp_path, capsys):
    if not (GLUE / "SST-2" / "train.tsv").is_file():
        pytest.skip(f"real GLUE data not found at {GLUE}")
    train = sst2_as_reviews("train", tmp_path / "train.csv", 0, 300)
    dev = sst2_as_reviews("dev", tmp_path / "dev.csv", 0, 100)
    new = sst2_as_reviews("dev", tmp_path / "new.csv", 100, 50, labelled=False)
    stages = {
        "finetune": {"epochs": 1, "max_length": 64},
        "probe": {"epochs": 1},
        "search": {"epochs": 1, "uniform_warmup_epochs": 0, "batch_size": 32},
        "train": {"epochs": 1, "batch_size": 32},
        "evaluate": {"batch_sizes": [1, 8], "seq_len": 64, "repeats": 3, "warmup": 1},
    }
    config = tmp_path / "small.json"
    config.write_text(json.dumps({"budget": "custom", **stages}))
    run = tmp_path / "run"
    argv = ["pipeline", "--config", str(config), "--train-file", str(train), "--dev-file", str(dev)]
    assert main(argv + [*FLAGS, "--model", "default", "--run-dir", str(run)]) == 0
    manifest = json.loads((run / "store" / "manifest.json").read_text())
    assert manifest["task"]["labels"] == ["neg", "pos"] and manifest["splits"]["train"]["rows"] == 300
    assert manifest["teacher"]["config"]["num_hidden_layers"] == 6  # the bundled MiniLM
    assert "the bundled MiniLM-L6-H384" in (run / "student" / "README.md").read_text()

    out = tmp_path / "predicted.csv"
    assert predict(run / "export", new, out) == 0
    assert "50 rows predicted" in capsys.readouterr().out
    assert {r["prediction"] for r in read_csv(out)} <= {"neg", "pos"} and len(read_csv(out)) == 50
    # the export scores the labelled dev file as the evaluation scored the student
    assert predict(run / "export", dev, out) == 0
    accuracy = json.loads((run / "eval" / "report.json").read_text())["metrics"]["model"]["accuracy"]
    assert f"accuracy {accuracy:.4f}" in capsys.readouterr().out


def test_compress_writes_a_card_and_predict_runs_the_compressed_model(run, data, tmp_path):
    out = tmp_path / "compressed"
    settings = {k.replace("_", "-"): v for k, v in TINY_COMPRESS.items() if k != "batch_sizes"}
    argv = [
        "compress",
        "--model",
        str(run / "student"),
        "--store",
        str(run / "store"),
        "--output-dir",
        str(out),
    ]
    argv += [f"--{k}={v}" for k, v in settings.items()] + ["--batch-sizes", "1", "2"]
    assert main(argv) == 0
    card = (out / "README.md").read_text()
    assert "compressed student" in card and "`review`" in card and "cell.png" in card
    assert (out / "adabert_task.json").is_file()
    assert predict(out, data["new"], tmp_path / "p.csv") == 0
    assert len(read_csv(tmp_path / "p.csv")) == 10
