"""Loyalty, size, FLOPs, latency, prediction and report behaviour of adabert.report.evaluate (tiny models)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification

from adabert.report.evaluate import (
    bert_base_reference,
    compare_latency,
    count_parameters,
    dummy_batch,
    evaluate_predictions,
    flops_per_example,
    loyalty,
    measure_latency,
    model_file_size,
    predict,
    write_report,
)


def tiny_bert(seed: int = 0, hidden: int = 32, layers: int = 2, num_labels: int = 2):
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=100,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=128,
        num_labels=num_labels,
    )
    return BertForSequenceClassification(config).eval()


# ------------------------------------------------------------------------------------------------ loyalty
def test_identical_logits_are_fully_loyal():
    logits = np.random.default_rng(0).normal(size=(8, 3))
    assert loyalty(logits, logits.copy()) == pytest.approx({"label_loyalty": 1.0, "probability_loyalty": 1.0})


def test_probability_loyalty_matches_hand_computed_jsd():
    # p = [0.5, 0.5], q = [0.9, 0.1], m = [0.7, 0.3]:
    # JSD = 0.5 (0.5 log2(.5/.7) + 0.5 log2(.5/.3)) + 0.5 (0.9 log2(.9/.7) + 0.1 log2(.1/.3)) = 0.146793...
    teacher = np.log(np.array([[0.5, 0.5]]))
    student = np.log(np.array([[0.9, 0.1]]))
    out = loyalty(teacher, student)
    assert out["probability_loyalty"] == pytest.approx(1 - math.sqrt(0.1467931024360521), abs=1e-9)
    assert out["label_loyalty"] == 1.0  # a tie's argmax is the first label, as the student's
    assert loyalty(np.log([[0.4, 0.6]]), student)["label_loyalty"] == 0.0


def test_probability_loyalty_with_a_zero_probability_is_finite():
    # p = [.25, .25, .5], q = [.5, .5, 0] (logit -1000 underflows to probability 0): JSD = 0.311278...
    teacher = np.log(np.array([[0.25, 0.25, 0.5]]))
    student = np.array([[0.0, 0.0, -1000.0]])
    out = loyalty(teacher, student)
    assert out["probability_loyalty"] == pytest.approx(1 - math.sqrt(0.31127812445913283), abs=1e-9)


def test_disjoint_predictions_have_zero_loyalty():
    teacher = np.array([[500.0, -500.0], [-500.0, 500.0]])
    out = loyalty(teacher, -teacher)
    assert out == pytest.approx({"label_loyalty": 0.0, "probability_loyalty": 0.0}, abs=1e-9)


def test_label_loyalty_is_the_fraction_of_agreeing_labels():
    teacher = np.array([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [0.0, 2.0]])
    student = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 3.0]])
    out = loyalty(teacher, student)
    assert out["label_loyalty"] == 0.75
    assert 0.0 <= out["probability_loyalty"] <= 1.0


def test_regression_loyalty_reports_mse_and_pearson():
    teacher = np.array([[1.0], [2.0], [3.0], [4.0]])
    out = loyalty(teacher, teacher + 1.0, regression=True)
    assert set(out) == {"prediction_mse", "prediction_pearson"}
    assert out["prediction_mse"] == pytest.approx(1.0)
    assert out["prediction_pearson"] == pytest.approx(1.0)
    assert loyalty(teacher[:, 0], -teacher[:, 0], regression=True)["prediction_pearson"] == pytest.approx(
        -1.0
    )
    assert math.isnan(loyalty(teacher, np.ones_like(teacher), regression=True)["prediction_pearson"])


def test_loyalty_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shape"):
        loyalty(np.zeros((3, 2)), np.zeros((4, 2)))


# --------------------------------------------------------------------------------------------------- size
def test_count_parameters_matches_a_manual_count():
    model = tiny_bert()
    embedding = 100 * 32 + 128 * 32 + 2 * 32  # word, position, token type tables
    layer = 4 * (32 * 32 + 32) + 2 * 64 + (32 * 64 + 64) + (64 * 32 + 32)  # attention, 2 LayerNorms, FFN
    total = embedding + 64 + 2 * layer + (32 * 32 + 32) + (32 * 2 + 2)  # + emb LayerNorm, pooler, classifier
    assert count_parameters(model) == {
        "total": total,
        "embedding": embedding,
        "non_embedding": total - embedding,
    }
    assert total == sum(p.numel() for p in model.parameters())


def test_count_parameters_counts_tied_weights_once():
    emb = nn.Embedding(10, 4)
    head = nn.Linear(4, 10, bias=False)
    head.weight = emb.weight
    counts = count_parameters(nn.ModuleDict({"emb": emb, "head": head}))
    assert counts == {"total": 40, "embedding": 40, "non_embedding": 0}


def test_model_file_size_counts_only_weight_files(tmp_path):
    tiny_bert().save_pretrained(tmp_path)
    (tmp_path / "notes.txt").write_text("x" * 1000)
    assert model_file_size(tmp_path) == (tmp_path / "model.safetensors").stat().st_size
    (tmp_path / "extra.onnx").write_bytes(b"\0" * 10)
    assert model_file_size(tmp_path) == (tmp_path / "model.safetensors").stat().st_size + 10
    with pytest.raises(FileNotFoundError):
        model_file_size(tmp_path / "missing")


def test_dummy_batch_shapes_segments_and_determinism():
    model = tiny_bert()
    batch = dummy_batch(model, 3, 10)
    assert {k: tuple(v.shape) for k, v in batch.items()} == {
        "input_ids": (3, 10),
        "attention_mask": (3, 10),
        "token_type_ids": (3, 10),
    }
    assert batch["input_ids"].max() < 100 and (batch["input_ids"][:, 0] == 0).all()  # vocab too small for 101
    assert batch["token_type_ids"][:, :5].eq(0).all() and batch["token_type_ids"][:, 5:].eq(1).all()
    assert batch["attention_mask"].eq(1).all()
    assert dummy_batch(model, 3, 10, pair=False)["token_type_ids"].eq(0).all()
    assert torch.equal(dummy_batch(model, 3, 10)["input_ids"], batch["input_ids"])


def test_dummy_batch_starts_with_cls_when_the_vocab_allows():
    model = BertForSequenceClassification(
        BertConfig(
            vocab_size=200, hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8
        )
    )
    assert (dummy_batch(model, 2, 4)["input_ids"][:, 0] == 101).all()


def test_flops_positive_growing_and_same_for_fused_and_eager_attention():
    model = tiny_bert()
    short, long = flops_per_example(model, 16), flops_per_example(model, 32)
    assert 0 < short < long
    model.set_attn_implementation("eager")  # attention as explicit matmuls, which FlopCounterMode sees
    assert flops_per_example(model, 16) == short


# ------------------------------------------------------------------------------------------------ latency
def test_measure_latency_returns_sane_numbers_and_restores_state():
    model = tiny_bert().train()
    threads_before = torch.get_num_threads()
    out = measure_latency(model, batch_size=2, seq_len=8, repeats=3, warmup=1, threads=1)
    assert set(out) == {"median_ms", "p90_ms", "mean_ms", "batch_size", "seq_len", "threads"}
    assert 0 < out["median_ms"] <= out["p90_ms"] and out["mean_ms"] > 0
    assert (out["batch_size"], out["seq_len"], out["threads"]) == (2, 8, 1)
    assert torch.get_num_threads() == threads_before
    assert model.training


def test_compare_latency_ratios_are_consistent_with_medians():
    models = {"teacher": tiny_bert(hidden=64, layers=2), "student": tiny_bert(hidden=16, layers=1)}
    out = compare_latency(models, batch_sizes=(1, 2), seq_len=8, repeats=3, warmup=1, threads=1)
    assert set(out) == {"teacher", "student"}
    for bs in ("1", "2"):
        t, s = out["teacher"][bs], out["student"][bs]
        assert t["batch_size"] == int(bs) and s["seq_len"] == 8
        assert s["speedup_vs_teacher"] == pytest.approx(t["median_ms"] / s["median_ms"])
        assert t["speedup_vs_student"] == pytest.approx(s["median_ms"] / t["median_ms"])
        assert "speedup_vs_student" not in s


def test_bert_base_reference_has_bert_base_size_and_leaves_rng_alone():
    state = torch.random.get_rng_state()
    model = bert_base_reference(num_labels=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert count_parameters(model)["total"] == 109_484_547  # BERT-base encoder + pooler + 3-way head
    assert not model.training and model.config.num_labels == 3


# -------------------------------------------------------------------------------------------- predictions
def test_predict_pads_per_batch_and_matches_unpadded_runs():
    datasets = pytest.importorskip("datasets")
    model = tiny_bert()
    rng = np.random.default_rng(0)
    rows = [rng.integers(1, 100, size=n).tolist() for n in (5, 9, 3, 7, 4)]
    dataset = datasets.Dataset.from_dict(
        {
            "input_ids": rows,
            "token_type_ids": [[0] * len(r) for r in rows],
            "attention_mask": [[1] * len(r) for r in rows],
            "labels": [0, 1, 0, 1, 0],
            "idx": list(range(5)),
        }
    )
    logits = predict(model, dataset, batch_size=2, progress=False)
    assert logits.shape == (5, 2) and logits.dtype == np.float32
    with torch.no_grad():
        for row, got in zip(rows, logits):
            ids = torch.tensor([row])
            want = model(
                input_ids=ids, attention_mask=torch.ones_like(ids), token_type_ids=torch.zeros_like(ids)
            )
            np.testing.assert_allclose(got, want.logits[0].numpy(), atol=1e-5)


def test_evaluate_predictions_adds_loyalty():
    tasks = pytest.importorskip("adabert.tasks")
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 3.0]])
    labels = np.array([0, 1, 1, 1])
    out = evaluate_predictions("sst2", logits, labels, teacher_logits=logits)
    assert out[tasks.get_task("sst2").main_metric] == pytest.approx(0.75)
    assert out["label_loyalty"] == 1.0 and out["probability_loyalty"] == pytest.approx(1.0)
    assert "label_loyalty" not in evaluate_predictions("sst2", logits, labels)
    preds = np.array([[1.0], [2.0], [3.0]])
    reg = evaluate_predictions("stsb", preds, np.array([1.0, 2.0, 3.0]), teacher_logits=preds + 1.0)
    assert reg["prediction_mse"] == pytest.approx(1.0) and "label_loyalty" not in reg


# --------------------------------------------------------------------------------------------------- report
def test_write_report_writes_json_and_markdown_with_the_numbers(tmp_path):
    report = {
        "task": "sst2",
        "seq_len": 128,
        "references": ["teacher", "bert-base"],
        "metrics": {
            "teacher": {"accuracy": 0.9125},
            "student": {"accuracy": np.float32(0.875), "label_loyalty": 0.93, "probability_loyalty": 0.9012},
        },
        "size": {
            "teacher": {
                "total": 22_713_602,
                "embedding": 11_720_448,
                "non_embedding": 10_993_154,
                "file_bytes": 90_866_186,
                "flops_per_example": 2_900_000_000,
            },
            "bert-base": {"total": 109_483_778, "embedding": 23_837_184, "non_embedding": 85_646_594},
            "student": {
                "total": 6_400_000,
                "embedding": 6_000_000,
                "non_embedding": 400_000,
                "file_bytes": 25_600_000,
                "flops_per_example": np.int64(120_000_000),
            },
        },
        "latency": {
            "teacher": {
                "1": {
                    "median_ms": 10.0,
                    "p90_ms": 11.0,
                    "mean_ms": 10.2,
                    "batch_size": 1,
                    "seq_len": 128,
                    "threads": 2,
                    "speedup_vs_student": 0.4,
                }
            },
            "student": {
                "1": {
                    "median_ms": 4.0,
                    "p90_ms": 4.5,
                    "mean_ms": 4.1,
                    "batch_size": 1,
                    "seq_len": 128,
                    "threads": 2,
                    "speedup_vs_teacher": 2.5,
                }
            },
        },
        "notes": {"machine": "2 shared CPU cores"},
    }
    json_path, md_path = write_report(report, tmp_path / "out")
    assert json.loads(json_path.read_text())["metrics"]["student"]["accuracy"] == 0.875
    md = md_path.read_text()
    for text in (
        "sst2",
        "0.9125",
        "0.9012",
        "6,400,000",
        "400,000",
        "24.41 MiB",
        "120.000 MFLOPs",
        "3.55× smaller",
        "17.11× smaller",
        "4.82× larger",  # BERT-base against the teacher
        "10.00",
        "4.50",
        "2.50×",
        "2 shared CPU cores",
    ):
        assert text in md, text
    assert "speedup vs teacher" in md and "speedup vs bert-base" in md


def test_write_report_renders_only_the_sections_present(tmp_path):
    _, md_path = write_report({"metrics": {"accuracy": 0.5}}, tmp_path)
    md = md_path.read_text()
    assert "0.5000" in md and "## Size" not in md and "## Latency" not in md


def test_one_collator_pads_store_rows_and_plain_encoded_rows():
    from adabert.data import collate

    plain = collate([{"input_ids": [5, 6, 7]}, {"input_ids": [8]}], pad_token_id=1)
    assert plain["input_ids"].tolist() == [[5, 6, 7], [8, 1, 1]]
    assert plain["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]] and set(plain) == {
        "input_ids",
        "attention_mask",
    }
    stored = collate(
        [
            {"input_ids": [5, 6], "token_type_ids": [0, 1], "attention_mask": [1, 1], "labels": 1,
             "teacher_logits": torch.tensor([0.5, -0.5])},
            {"input_ids": [7], "token_type_ids": [0], "attention_mask": [1], "labels": 0,
             "teacher_logits": torch.tensor([1.0, 2.0])},
        ]
    )
    assert stored["token_type_ids"].tolist() == [[0, 1], [0, 0]] and stored["labels"].tolist() == [1, 0]
    assert stored["teacher_logits"].shape == (2, 2) and stored["labels"].dtype == torch.long
    assert collate([{"input_ids": [1], "labels": 0.5}])["labels"].dtype == torch.float32
    with pytest.raises(ValueError, match="empty"):
        collate([])
