"""Task registry and loading: every GLUE release layout, custom files, error messages, metrics, encoding."""

from __future__ import annotations

import json
import math
import pickle
import shutil
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset, Value

from adabert.tasks import (
    TASKS,
    TaskDataError,
    TaskSpec,
    compute_metrics,
    custom_task,
    encode,
    get_task,
    load_split,
    predictions_from_logits,
)

FIXTURES = Path(__file__).parent / "fixtures" / "glue"
REAL_GLUE = Path(__file__).parents[2] / "shared" / "data" / "glue"

# Label ids per split of the fixture files, in file order.
EXPECTED = {
    "sst2": {"train": [0, 0, 1, 0, 1], "dev": [1, 0, 1]},
    "mrpc": {"train": [1, 0, 1], "dev": [1, 0]},
    "qqp": {"train": [0, 1, 0], "dev": [0, 0, 1]},
    "mnli": {"train": [1, 0, 0, 2], "dev_matched": [1, 2, 0], "dev_mismatched": [2, 2]},
    "qnli": {"train": [1, 1, 0], "dev": [0, 1]},
    "rte": {"train": [1, 0, 1, 0], "dev": [1, 0]},
    "cola": {"train": [1, 1, 0, 1], "dev": [1, 0, 1]},
    "stsb": {"train": [5.0, 3.8, 3.8], "dev": [5.0, 4.75]},
}


def write_task_file(root: Path, glue_dir: str, name: str, text: str) -> Path:
    """A GLUE root under ``root`` holding one task file with the given text."""
    path = root / glue_dir / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------ registry


def test_registry_has_all_glue_tasks():
    assert set(TASKS) == {"sst2", "mrpc", "qqp", "mnli", "qnli", "rte", "cola", "stsb"}
    assert set(EXPECTED) == set(TASKS)


@pytest.mark.parametrize(
    ("alias", "name"),
    [
        ("SST-2", "sst2"),
        ("sst-2", "sst2"),
        ("sst2", "sst2"),
        ("STS-B", "stsb"),
        ("sts_b", "stsb"),
        ("MNLI", "mnli"),
        ("CoLA", "cola"),
        ("QQP", "qqp"),
    ],
)
def test_get_task_accepts_common_spellings(alias, name):
    assert get_task(alias) is TASKS[name]


def test_get_task_passes_specs_through_and_rejects_unknown_names():
    spec = TASKS["rte"]
    assert get_task(spec) is spec
    with pytest.raises(TaskDataError, match=r"unknown task 'wnli2'.*sst2.*stsb") as err:
        get_task("wnli2")
    assert err.value.path is None and err.value.line is None


def test_spec_properties():
    assert TASKS["stsb"].is_regression and TASKS["stsb"].num_labels == 1
    assert TASKS["mnli"].num_labels == 3 and TASKS["mnli"].is_pair
    assert not TASKS["sst2"].is_pair and TASKS["sst2"].main_metric == "accuracy"
    assert TASKS["mrpc"].main_metric == "f1" and TASKS["cola"].main_metric == "mcc"
    assert TASKS["mnli"].dev_splits == ("dev_matched", "dev_mismatched")
    assert TASKS["mnli"].default_dev == "dev_matched"
    assert TASKS["qnli"].dev_splits == ("dev",) and TASKS["qnli"].default_dev == "dev"


@pytest.mark.parametrize("name", sorted(TASKS))
def test_spec_round_trips_through_json(name):
    spec = TASKS[name]
    restored = TaskSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert restored == spec
    assert hash(restored) == hash(spec)


def test_from_dict_rejects_unknown_and_missing_keys():
    d = TASKS["sst2"].to_dict()
    with pytest.raises(TaskDataError, match="unknown task spec keys"):
        TaskSpec.from_dict({**d, "colour": "red"})
    del d["label_column"]
    with pytest.raises(TaskDataError, match="incomplete task spec"):
        TaskSpec.from_dict(d)


def test_spec_rejects_metrics_that_do_not_fit_the_task():
    with pytest.raises(TaskDataError, match="do not apply to a regression task"):
        TaskSpec("x", ("a",), "y", None, ("accuracy",), {"train": "t.csv"})
    with pytest.raises(TaskDataError, match="f1 needs a binary task"):
        TaskSpec("x", ("a",), "y", ("a", "b", "c"), ("f1",), {"train": "t.csv"})


# --------------------------------------------------------------------------------- GLUE fixtures


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_split_of_every_glue_layout_loads(name):
    spec = TASKS[name]
    assert set(spec.files) == set(EXPECTED[name])
    for split, labels in EXPECTED[name].items():
        ds = load_split(name, split, FIXTURES)
        text_columns = ["text_a", "text_b"] if spec.is_pair else ["text_a"]
        assert ds.column_names == [*text_columns, "label", "idx"]
        assert ds.features["text_a"] == Value("string")
        assert ds.features["label"] == Value("float32" if spec.is_regression else "int64")
        assert ds.features["idx"] == Value("int64")
        assert ds["idx"] == list(range(len(labels)))
        if spec.is_regression:
            assert ds["label"] == pytest.approx(labels)
        else:
            assert ds["label"] == labels
        assert all(t.strip() for t in ds["text_a"])
        if spec.is_pair:
            assert all(t.strip() for t in ds["text_b"])


def test_columns_come_from_the_right_fields():
    sst = load_split("sst2", "dev", FIXTURES)
    assert sst[0]["text_a"] == "it 's a charming and often affecting journey . "
    mrpc = load_split("MRPC", "dev", FIXTURES)  # header starts with a BOM: "\ufeffQuality"
    assert mrpc[1]["text_a"].startswith("Magnarelli said") and mrpc[1]["text_b"].startswith("His wife")
    mnli = load_split("mnli", "dev_matched", FIXTURES)  # gold_label is the 16th field, not label1
    assert mnli[0]["text_a"] == "The new rights are nice enough" and mnli[0]["label"] == 1
    cola = load_split("cola", "dev", FIXTURES)  # headerless: source, label, mark, sentence
    assert cola[1]["text_a"] == "The weights rode the breeze clear of the rocks."
    qqp = load_split("qqp", "train", FIXTURES)
    assert qqp[1]["text_b"] == "How do you control your horniness?"


def test_stray_quote_does_not_swallow_rows():
    ds = load_split("rte", "train", FIXTURES)
    assert len(ds) == 4
    assert ds[2]["text_a"].startswith("\"That film wasn't")
    assert ds[2]["text_b"] == 'The film "WarGames" was shot in 1983.'
    assert ds[3]["text_b"] == "Herceptin can be used to treat breast cancer."


def test_limit_takes_a_seeded_subset_in_file_order():
    full = load_split("sst2", "train", FIXTURES)
    a = load_split("sst2", "train", FIXTURES, limit=3, seed=7)
    b = load_split("sst2", "train", FIXTURES, limit=3, seed=7)
    assert len(a) == 3 and a["idx"] == b["idx"] and a["idx"] == sorted(a["idx"])
    for row in a:
        assert row == full[row["idx"]]
    assert len(load_split("sst2", "train", FIXTURES, limit=100)) == len(full)
    with pytest.raises(ValueError, match="limit"):
        load_split("sst2", "train", FIXTURES, limit=0)


def test_hub_path_maps_hub_columns(monkeypatch):
    hub = Dataset.from_dict(
        {
            "premise": ["p0", "p1", "p2"],
            "hypothesis": ["h0", "h1", "h2"],
            "label": [2, 0, 1],
            "idx": [0, 1, 2],
        }
    )
    calls = []
    monkeypatch.setattr("datasets.load_dataset", lambda *a, **kw: calls.append((a, kw)) or hub)
    ds = load_split("mnli", "dev_mismatched")
    assert calls == [(("nyu-mll/glue", "mnli"), {"split": "validation_mismatched"})]
    assert ds.column_names == ["text_a", "text_b", "label", "idx"]
    assert ds["text_b"] == ["h0", "h1", "h2"] and ds["label"] == [2, 0, 1]
    assert ds.features["label"] == Value("int64")
    subset = load_split("mnli", "train", limit=2, seed=3)
    assert len(subset) == 2 and subset["idx"] == sorted(subset["idx"])
    assert subset["text_a"] == [f"p{i}" for i in subset["idx"]]
    unlabelled = hub.map(lambda r: {"label": -1})
    monkeypatch.setattr("datasets.load_dataset", lambda *a, **kw: unlabelled)
    with pytest.raises(TaskDataError, match="outside 0..2"):
        load_split("mnli", "dev_matched")


# ------------------------------------------------------------------------------------ bad inputs


def test_missing_file_names_the_expected_path(tmp_path):
    (tmp_path / "RTE").mkdir()
    with pytest.raises(TaskDataError, match=r"GLUE release layout <data_dir>/RTE/train\.tsv") as err:
        load_split("rte", "train", tmp_path)
    assert err.value.path == str(tmp_path / "RTE" / "train.tsv") and err.value.line is None
    assert str(err.value).startswith(f"{tmp_path / 'RTE' / 'train.tsv'}: ")


def test_missing_file_hints_when_given_the_task_dir(tmp_path):
    shutil.copy(FIXTURES / "RTE" / "dev.tsv", tmp_path / "dev.tsv")
    with pytest.raises(TaskDataError, match=r"does not exist \(data_dir must be the GLUE root"):
        load_split("rte", "dev", tmp_path)


def test_missing_column_lists_the_header(tmp_path):
    path = write_task_file(tmp_path, "SST-2", "dev.tsv", "sentense\tlabel\nfine .\t1\n")
    header_msg = r"\['sentence'\] not in header; header has \['sentense', 'label'\]"
    with pytest.raises(TaskDataError, match=header_msg) as err:
        load_split("sst2", "dev", tmp_path)
    assert str(err.value).startswith(f"{path}:1: ") and err.value.line == 1


def test_unknown_label_lists_allowed_labels(tmp_path):
    path = write_task_file(
        tmp_path,
        "RTE",
        "dev.tsv",
        "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\tc\td\tcontradiction\n",
    )
    allowed = r"unknown label 'contradiction'.*\['entailment', 'not_entailment'\]"
    with pytest.raises(TaskDataError, match=allowed) as err:
        load_split("rte", "dev", tmp_path)
    assert str(err.value).startswith(f"{path}:3: ")


def test_empty_split(tmp_path):
    path = write_task_file(tmp_path, "QNLI", "dev.tsv", "index\tquestion\tsentence\tlabel\n")
    with pytest.raises(TaskDataError, match="no data rows") as err:
        load_split("qnli", "dev", tmp_path)
    assert str(err.value).startswith(f"{path}:1: ")
    write_task_file(tmp_path, "QNLI", "dev.tsv", "")
    with pytest.raises(TaskDataError, match=r"dev\.tsv:1: file is empty"):
        load_split("qnli", "dev", tmp_path)


def test_wrong_field_count(tmp_path):
    path = write_task_file(tmp_path, "SST-2", "train.tsv", "sentence\tlabel\ngood\t1\nbad\tworse\t0\n")
    with pytest.raises(TaskDataError, match="expected 2 fields, found 3") as err:
        load_split("sst2", "train", tmp_path)
    assert str(err.value).startswith(f"{path}:3: ") and err.value.line == 3


def test_wrong_field_count_headerless_and_header_sized(tmp_path):
    path = write_task_file(tmp_path, "CoLA", "dev.tsv", "gj04\t1\t\tFine.\ngj04\t0\tBroken.\n")
    with pytest.raises(TaskDataError, match="expected 4 fields, found 3") as err:
        load_split("cola", "dev", tmp_path)
    assert str(err.value).startswith(f"{path}:2: ")
    # MNLI has no fixed width: each row must match its own file's header.
    header = (FIXTURES / "MNLI" / "dev_matched.tsv").read_text().split("\n")[0]
    row = "\t".join(["x"] * 8 + ["a", "b", "neutral"])
    path = write_task_file(tmp_path, "MNLI", "dev_matched.tsv", f"{header}\n{row}\n")
    with pytest.raises(TaskDataError, match="expected 16 fields, found 11") as err:
        load_split("mnli", "dev_matched", tmp_path)
    assert str(err.value).startswith(f"{path}:2: ")


def test_bad_regression_label(tmp_path):
    header = (FIXTURES / "STS-B" / "dev.tsv").read_text().split("\n")[0]
    row = "\t".join(["0", "g", "f", "y", "0", "none", "none", "A dog.", "A cat.", "n/a"])
    path = write_task_file(tmp_path, "STS-B", "dev.tsv", f"{header}\n{row}\n")
    with pytest.raises(TaskDataError, match="label 'n/a' in column 'score' is not a finite number") as e:
        load_split("stsb", "dev", tmp_path)
    assert str(e.value).startswith(f"{path}:2: ")


def test_unknown_split():
    expected = r"unknown split 'test' for task sst2; available splits: train, dev"
    with pytest.raises(TaskDataError, match=expected) as e:
        load_split("sst2", "test", FIXTURES)
    assert e.value.path == str(FIXTURES / "SST-2")
    with pytest.raises(TaskDataError, match="unknown split 'dev'.*dev_matched, dev_mismatched"):
        load_split("mnli", "dev", FIXTURES)


def test_error_is_a_value_error_and_pickles_with_its_location():
    err = TaskDataError("bad", "a.tsv", 4)
    assert isinstance(err, ValueError) and str(err) == "a.tsv:4: bad"
    again = pickle.loads(pickle.dumps(err))
    assert (str(again), again.path, again.line) == ("a.tsv:4: bad", "a.tsv", 4)


# ---------------------------------------------------------------------------------- custom tasks


def test_custom_csv_infers_labels_and_honours_quoting(tmp_path):
    (tmp_path / "train.csv").write_text('text,extra,y\n"hello, world",1,pos\nbye,2,neg\n"say ""hi""",3,pos\n')
    (tmp_path / "dev.csv").write_text("text,extra,y\nok,4,neg\n")
    spec = custom_task("mine", {"train": tmp_path / "train.csv", "dev": tmp_path / "dev.csv"}, "text", "y")
    assert spec.labels == ("neg", "pos") and spec.metrics == ("accuracy",) and spec.default_dev == "dev"
    ds = load_split(spec, "train")
    assert ds.column_names == ["text_a", "label", "idx"]
    assert ds["text_a"] == ["hello, world", "bye", 'say "hi"'] and ds["label"] == [1, 0, 1]
    assert TaskSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_custom_tsv_pair_relative_to_data_dir(tmp_path):
    (tmp_path / "train.tsv").write_text('a\tb\tlabel\n"open quote\tx\t2\ny\tz\t10\n')
    spec = custom_task("pairs", {"train": "train.tsv"}, ["a", "b"], "label", data_dir=tmp_path)
    assert spec.labels == ("2", "10")  # integer labels sort numerically
    ds = load_split(spec, "train", tmp_path)
    assert ds["text_a"] == ['"open quote', "y"] and ds["text_b"] == ["x", "z"] and ds["label"] == [0, 1]


def test_custom_json_and_jsonl_regression(tmp_path):
    rows = [{"s1": "a b", "s2": "a c", "sim": 0.5}, {"s1": "x", "s2": "y", "sim": 4}]
    (tmp_path / "train.json").write_text(json.dumps(rows, indent=1))
    (tmp_path / "dev.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    spec = custom_task(
        "sim",
        {"train": tmp_path / "train.json", "dev": tmp_path / "dev.jsonl"},
        ("s1", "s2"),
        "sim",
        regression=True,
    )
    assert spec.is_regression and spec.metrics == ("pearson", "spearman")
    for split in ("train", "dev"):
        ds = load_split(spec, split)
        assert ds["label"] == [0.5, 4.0] and ds.features["label"] == Value("float32")
        assert ds["text_b"] == ["a c", "y"]


def test_custom_json_errors_name_line_or_record(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"t": "a", "l": 0}\n{"t": "b"}\n')
    spec = custom_task("j", {"train": tmp_path / "d.jsonl"}, "t", "l", labels=[0, 1])
    assert spec.labels == ("0", "1")
    with pytest.raises(TaskDataError, match=r"d\.jsonl:2: missing key\(s\) \['l'\]"):
        load_split(spec, "train")
    (tmp_path / "d.json").write_text(json.dumps([{"t": "a", "l": 0}, {"t": "b", "l": 7}]))
    spec = custom_task("j", {"train": tmp_path / "d.json"}, "t", "l", labels=[0, 1])
    with pytest.raises(TaskDataError, match=r"d\.json: record 1: unknown label 7"):
        load_split(spec, "train")


def test_custom_task_rejects_unknown_extension(tmp_path):
    with pytest.raises(TaskDataError, match=r"data\.parquet: unsupported file type"):
        custom_task("p", {"train": tmp_path / "data.parquet"}, "t", "l", labels=["a", "b"])


# --------------------------------------------------------------------------------------- metrics


def test_binary_metrics_by_hand():
    refs = [1, 1, 1, 0, 0, 0]
    preds = [1, 1, 0, 0, 0, 1]  # tp=2 tn=2 fp=1 fn=1
    m = compute_metrics("mrpc", preds, refs)
    assert list(m) == ["f1", "accuracy"]
    assert m["f1"] == pytest.approx(2 / 3) and m["accuracy"] == pytest.approx(4 / 6)
    assert compute_metrics("cola", preds, refs) == {"mcc": pytest.approx((2 * 2 - 1 * 1) / math.sqrt(3**4))}
    assert all(type(v) is float for v in m.values())


def test_multiclass_accuracy_and_mcc():
    assert compute_metrics("mnli", np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2])) == {"accuracy": 0.75}
    perfect = compute_metrics(
        TaskSpec("c", ("a",), "y", ("a", "b", "c"), ("mcc",), {"train": "t.csv"}), [0, 1, 2, 1], [0, 1, 2, 1]
    )
    assert perfect["mcc"] == pytest.approx(1.0)


def test_regression_metrics_by_hand():
    m = compute_metrics("stsb", [1.0, 2.0, 3.0], [1.0, 2.0, 4.0])
    assert m["pearson"] == pytest.approx(9 / math.sqrt(84)) and m["spearman"] == pytest.approx(1.0)
    # ranks 1..4 vs 2,1,4,3: sum d^2 = 4 -> 1 - 6*4/(4*15) = 0.6
    assert compute_metrics("stsb", [1, 2, 3, 4], [2, 1, 4, 3])["spearman"] == pytest.approx(0.6)


def test_degenerate_metrics_are_zero_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert compute_metrics("cola", [1, 1, 1], [1, 0, 1]) == {"mcc": 0.0}
        assert compute_metrics("qqp", [0, 0, 0], [1, 0, 1]) == {"f1": 0.0, "accuracy": pytest.approx(1 / 3)}
        assert compute_metrics("stsb", [2.0, 2.0, 2.0], [1.0, 2.0, 3.0]) == {"pearson": 0.0, "spearman": 0.0}


def test_metrics_reject_mismatched_or_non_class_inputs():
    with pytest.raises(ValueError, match="equal-length"):
        compute_metrics("sst2", [0, 1], [0])
    with pytest.raises(ValueError, match="predictions_from_logits"):
        compute_metrics("sst2", np.zeros((2, 2)), [0, 1])
    with pytest.raises(ValueError, match="class ids"):
        compute_metrics("sst2", [0.3, 1.0], [0, 1])


def test_predictions_from_logits():
    logits = np.array([[0.1, 2.0, -1.0], [3.0, 0.0, 0.5]])
    assert predictions_from_logits("mnli", logits).tolist() == [1, 0]
    assert predictions_from_logits("stsb", np.array([[4.5], [1.25]])).tolist() == [4.5, 1.25]


# -------------------------------------------------------------------------------------- encoding


@pytest.fixture
def tiny_tokenizer(tmp_path):
    from transformers import BertTokenizerFast

    words = {
        w.lower().strip(".,'\"")
        for name in ("RTE", "SST-2")
        for split in ("train", "dev")
        for line in (FIXTURES / name / f"{split}.tsv").read_text().split("\n")
        for w in line.split()
    }
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "'", '"', *sorted(w for w in words if w)]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # from_pretrained on a local folder: transformers 5 silently ignores BertTokenizerFast(vocab_file=...)
    return BertTokenizerFast.from_pretrained(tmp_path)


def test_encode_pairs_marks_second_segment(tiny_tokenizer):
    ds = load_split("rte", "dev", FIXTURES)
    enc = encode(ds, tiny_tokenizer, max_length=64)
    assert enc.column_names == ["input_ids", "token_type_ids", "attention_mask", "labels", "idx"]
    assert enc["labels"] == ds["label"] and enc["idx"] == ds["idx"]
    sep = tiny_tokenizer.sep_token_id
    for row in enc:
        ids, types = row["input_ids"], row["token_type_ids"]
        first_sep = ids.index(sep)
        assert ids[0] == tiny_tokenizer.cls_token_id and ids.count(sep) == 2
        assert set(types[: first_sep + 1]) == {0} and set(types[first_sep + 1 :]) == {1}
        assert row["attention_mask"] == [1] * len(ids)  # no padding
    assert len({len(r) for r in enc["input_ids"]}) == 2  # dynamic lengths, padded later by the collator
    assert tiny_tokenizer.unk_token_id not in enc[1]["input_ids"]


def test_encode_truncates_single_sentences(tiny_tokenizer):
    enc = encode(load_split("sst2", "train", FIXTURES), tiny_tokenizer, max_length=6)
    assert max(len(ids) for ids in enc["input_ids"]) == 6
    assert all(set(t) == {0} for t in enc["token_type_ids"])
    assert enc["labels"] == EXPECTED["sst2"]["train"]


# ------------------------------------------------------------------------------------- real files


@pytest.mark.skipif(not REAL_GLUE.is_dir(), reason="shared GLUE data not present")
@pytest.mark.parametrize(
    ("name", "split", "counts"),
    [
        ("sst2", "dev", {1: 444, 0: 428}),
        ("mrpc", "dev", {1: 279, 0: 129}),
        ("rte", "train", {0: 1249, 1: 1241}),
    ],
)
def test_real_glue_counts(name, split, counts):
    ds = load_split(name, split, REAL_GLUE)
    assert len(ds) == sum(counts.values())
    assert Counter(ds["label"]) == counts
    assert ds["idx"][-1] == len(ds) - 1
    if name == "rte":
        assert ds[2164]["text_a"].startswith('"That film')
