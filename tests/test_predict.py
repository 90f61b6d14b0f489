"""``adabert predict`` on a plain transformers classifier: labels and probabilities that match the model,
the file's order and columns kept, and clear errors for inputs it cannot use."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from adabert.cli import main
from adabert.deploy.predict import PredictError, predict_file
from adabert.tasks import TaskDataError, get_task

ROWS = [("a", "the film was good ."), ("b", "the plot was dull and flat ."), ("c", "it is lovely")]


@pytest.fixture
def reviews(tmp_path):
    path = tmp_path / "in.csv"
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows([("id", "text"), *ROWS])
    return path


def test_predictions_match_the_model_and_keep_the_file(tiny_bert_dir, reviews, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path / "out.jsonl"
    summary = predict_file(tiny_bert_dir, reviews, out, batch_size=2, text_columns="text")
    assert summary["rows"] == 3 and summary["runtime"] == "pytorch" and summary["examples_per_s"] > 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a", "b", "c"]
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    with torch.no_grad():
        probs = model(**tokenizer([t for _, t in ROWS], padding=True, return_tensors="pt")).logits.softmax(-1)
    for row, p in zip(rows, probs.numpy()):
        assert np.allclose([row["prob_LABEL_0"], row["prob_LABEL_1"]], p, atol=1e-5)
        assert row["prediction"] == f"LABEL_{int(p.argmax())}"


def test_inputs_it_cannot_use_are_refused_clearly(tiny_bert_dir, reviews, tmp_path, capsys):
    with pytest.raises(PredictError, match=r"which column\(s\) hold the text\? pass --text-columns"):
        predict_file(tiny_bert_dir, reviews, tmp_path / "o.csv")
    with pytest.raises(PredictError, match="is the input file"):
        predict_file(tiny_bert_dir, reviews, reviews, text_columns="text")
    with pytest.raises(TaskDataError, match=r"o\.parquet: unknown file type"):
        predict_file(tiny_bert_dir, reviews, tmp_path / "o.parquet", text_columns="text")
    with pytest.raises(
        PredictError, match=r"text column\(s\) \['review'\] not usable; the file has \['id', 'text'\]"
    ):
        predict_file(tiny_bert_dir, reviews, tmp_path / "o.csv", text_columns="review")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": 3}\n')
    with pytest.raises(TaskDataError, match=r"bad\.jsonl:2: text column 'text' must be a string, found 3"):
        predict_file(tiny_bert_dir, bad, tmp_path / "o.csv")
    clash = tmp_path / "clash.csv"
    clash.write_text("text,prediction\nfine,x\n")
    with pytest.raises(PredictError, match=r"already has column\(s\) \['prediction'\]"):
        predict_file(tiny_bert_dir, clash, tmp_path / "o.csv", text_columns="text")
    assert main(["predict", "--model", str(tmp_path), "--input", str(reviews), "--output", "o.csv"]) == 2
    assert "not a model folder" in capsys.readouterr().err
    assert not (tmp_path / "o.csv").exists()


def test_what_predict_cannot_do_is_said_before_the_rows_run(tiny_bert_dir, reviews, tmp_path, caplog):
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    with pytest.raises(NotADirectoryError, match="a-file is a file, not a folder"):
        predict_file(tiny_bert_dir, reviews, blocked / "o.csv", text_columns="text")
    (tmp_path / "rows.csv").mkdir()
    with pytest.raises(TaskDataError, match=r"rows\.csv: a folder, not a data file"):
        predict_file(tiny_bert_dir, tmp_path / "rows.csv", tmp_path / "o.csv", text_columns="text")
    (tiny_bert_dir / "adabert_task.json").write_text(json.dumps({"task": get_task("sst2").to_dict()}))
    labelled = tmp_path / "labelled.csv"
    labelled.write_text("sentence,label\nthe film was good .,good\n")
    with caplog.at_level("WARNING"):
        summary = predict_file(tiny_bert_dir, labelled, tmp_path / "o.csv")
    assert "metrics" not in summary
    assert "no metrics: column 'label' holds values other than the task's labels (0, 1)" in caplog.text


def test_a_regression_model_writes_its_score(tiny_bert_dir, reviews, tmp_path):
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    config = BertConfig.from_pretrained(tiny_bert_dir, num_labels=1, problem_type="regression")
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(tmp_path / "scorer")
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(tmp_path / "scorer")
    out = tmp_path / "scores.tsv"
    predict_file(tmp_path / "scorer", reviews, out, text_columns="text")
    header, *lines = out.read_text().splitlines()
    assert header.split("\t") == ["id", "text", "prediction"] and len(lines) == 3
    assert all(np.isfinite(float(line.split("\t")[-1])) for line in lines)
