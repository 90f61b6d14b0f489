"""Knowledge store: exact round trip, and refusal of stale, mismatched or damaged stores."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from adabert.tasks import get_task, load_split
from adabert.teacher.store import KnowledgeStore, StoreError, fingerprint, write_store


@pytest.fixture
def written(tiny_bert_dir, tiny_glue_dir, tmp_path):
    """A store written from known random arrays, plus those arrays."""
    task = get_task("sst2")
    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_bert_dir))
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_bert_dir))
    rng = np.random.default_rng(0)
    layers = model.config.num_hidden_layers + 1
    splits, arrays = {}, {}
    for split in ("train", "dev"):
        rows = load_split(task, split, tiny_glue_dir)
        arrays[split] = (
            rng.normal(size=(len(rows), 2)).astype(np.float32),
            rng.normal(size=(len(rows), layers, 2)).astype(np.float32),
        )
        splits[split] = (rows, *arrays[split])
    path = tmp_path / "store"
    store = write_store(
        path,
        task=task,
        data_dir=str(tiny_glue_dir),
        max_length=32,
        teacher_dir=tiny_bert_dir,
        model=model,
        tokenizer=tokenizer,
        splits=splits,
        teacher_metrics={"dev": {"accuracy": 0.5}},
        probe_metrics=[{"layer": j, "accuracy": 0.5} for j in range(layers)],
    )
    return store, arrays, splits, model


def test_round_trip(written, tiny_bert_dir):
    store, arrays, splits, model = written
    again = KnowledgeStore.open(store.path)
    assert again.manifest == store.manifest
    assert again.task == get_task("sst2")
    assert (again.num_labels, again.num_layers, again.max_length) == (2, 2, 32)
    assert again.splits == ["train", "dev"] and again.dev_split == "dev"
    for split, (teacher, probes) in arrays.items():
        assert isinstance(again.teacher_logits(split), np.memmap)
        np.testing.assert_array_equal(again.teacher_logits(split), teacher)
        np.testing.assert_array_equal(again.probe_logits(split), probes)
        assert again.rows(split)[:] == splits[split][0][:]
        assert again.manifest["splits"][split]["fingerprint"] == fingerprint(splits[split][0])
    emb = again.embeddings()
    torch.testing.assert_close(emb["word_embeddings"], model.bert.embeddings.word_embeddings.weight)
    assert emb["position_embeddings"].shape == (64, 32) and emb["token_type_embeddings"].shape == (2, 32)
    assert again.tokenizer().get_vocab() == AutoTokenizer.from_pretrained(str(tiny_bert_dir)).get_vocab()
    teacher = again.manifest["teacher"]
    assert teacher["config"] == {
        "hidden_size": 32,
        "vocab_size": model.config.vocab_size,
        "max_position_embeddings": 64,
        "num_hidden_layers": 2,
        "model_type": "bert",
    }
    again.check_teacher(tiny_bert_dir)
    again.check_rows("dev", splits["dev"][0])
    tokenizer = again.tokenizer()
    for split, (rows, *_) in splits.items():  # the rows tokenized once, as the teacher's tokenizer does
        tokens = again.tokens(split)
        assert isinstance(tokens.ids, np.memmap) and len(tokens) == len(rows)
        for i in (0, len(rows) - 1):
            expected = tokenizer(rows[i]["text_a"], truncation=True, max_length=32)["input_ids"]
            assert tokens.ids[tokens.offsets[i] : tokens.offsets[i + 1]].tolist() == expected
        np.testing.assert_array_equal(again.labels(split), np.asarray(rows["label"]))
    assert again.pad_token_id == tokenizer.pad_token_id


def test_distilled_table_is_deterministic_rotated_and_tied_to_its_teacher(
    tiny_bert_dir, tiny_glue_dir, tmp_path
):
    from adabert.config import FinetuneConfig, ProbeConfig
    from adabert.teacher.finetuning import finetune
    from adabert.teacher.probes import probe

    teacher = tmp_path / "teacher"
    finetune(
        FinetuneConfig(
            task="sst2",
            data_dir=str(tiny_glue_dir),
            model=str(tiny_bert_dir),
            output_dir=str(teacher),
            epochs=1,
            max_length=32,
            batch_size=16,
        )
    )
    a = probe(ProbeConfig(teacher=str(teacher), output_dir=str(tmp_path / "a"), epochs=1))
    b = probe(ProbeConfig(teacher=str(teacher), output_dir=str(tmp_path / "b"), epochs=1))
    vocab, width = (
        a.manifest["teacher"]["config"]["vocab_size"],
        a.manifest["teacher"]["config"]["hidden_size"],
    )
    table = a.distilled_tokens()
    assert table.shape == (vocab, width) and a.distilled_tokens(8).shape == (vocab, 8)
    torch.testing.assert_close(
        table, b.distilled_tokens(), rtol=0, atol=0
    )  # the same teacher, the same table
    torch.testing.assert_close(a.distilled_tokens(8), table[:, :8])
    plain = probe(ProbeConfig(teacher=str(teacher), output_dir=str(tmp_path / "p"), epochs=1, distill_sif=0))
    variance = plain.distilled_tokens().var(0)  # PCA-rotated: columns by falling variance
    assert bool((variance[:-1] >= variance[1:] - 1e-6).all())
    assert not torch.equal(plain.distilled_tokens(), table)  # SIF weighting scales the rows
    assert a.manifest["distilled"]["teacher"] == a.manifest["teacher"]["sha256"]
    with pytest.raises(StoreError, match=f"{width} wide, {width + 1} were asked"):
        a.distilled_tokens(width + 1)

    # another teacher's table copied into the store is refused
    other = tmp_path / "other"
    shutil.copytree(tiny_bert_dir, other)
    model = AutoModelForSequenceClassification.from_pretrained(str(other))
    with torch.no_grad():
        model.bert.embeddings.word_embeddings.weight.mul_(2.0)
    model.save_pretrained(str(other))
    finetune(
        FinetuneConfig(
            task="sst2",
            data_dir=str(tiny_glue_dir),
            model=str(other),
            output_dir=str(tmp_path / "teacher2"),
            epochs=1,
            max_length=32,
            batch_size=16,
        )
    )
    c = probe(ProbeConfig(teacher=str(tmp_path / "teacher2"), output_dir=str(tmp_path / "c"), epochs=1))
    assert not torch.equal(c.distilled_tokens(), table)
    shutil.copy(c.path / "distilled.safetensors", a.path / "distilled.safetensors")
    with pytest.raises(StoreError, match="not the table distilled from this store's teacher"):
        KnowledgeStore.open(a.path).distilled_tokens()


def test_refuses_a_different_teacher(written, tiny_bert_dir, tmp_path):
    store = written[0]
    other = tmp_path / "other_teacher"
    shutil.copytree(tiny_bert_dir, other)
    model = AutoModelForSequenceClassification.from_pretrained(str(other))
    with torch.no_grad():
        model.classifier.bias.add_(0.1)
    model.save_pretrained(str(other))
    with pytest.raises(StoreError, match="weights sha256.*re-run `adabert teacher probe"):
        store.check_teacher(other)


def test_refuses_a_different_vocabulary(written, tiny_bert_dir, tmp_path):
    store = written[0]
    other = tmp_path / "other_vocab"
    shutil.copytree(tiny_bert_dir, other)
    tok = AutoTokenizer.from_pretrained(str(other))
    tok.add_tokens(["brandnewword"])
    tok.save_pretrained(str(other))
    with pytest.raises(StoreError, match="vocab sha256"):
        store.check_teacher(other)


def test_refuses_changed_rows(written, tiny_glue_dir):
    store, _, splits, _ = written
    rows = splits["train"][0]
    with pytest.raises(StoreError, match="rows differ"):
        store.check_rows("train", rows.select(range(len(rows) - 1)))
    flipped = rows.map(lambda r: {"label": 1 - r["label"]} if r["idx"] == 0 else {})
    with pytest.raises(StoreError, match="rows differ"):
        store.check_rows("train", flipped)
    with pytest.raises(StoreError, match="rows differ"):
        store.check_rows("train", load_split("sst2", "train", tiny_glue_dir, limit=40, seed=1))
    with pytest.raises(StoreError, match="no split 'test'"):
        store.check_rows("test", rows)


@pytest.mark.parametrize(
    "damage",
    [
        "truncate_npy",
        "delete_npy",
        "delete_rows",
        "bad_manifest",
        "old_version",
        "delete_embeddings",
        "truncate_embeddings",
        "wrong_rows",
        "truncate_ids",
        "wrong_labels",
    ],
)
def test_damaged_store_is_refused(written, damage):
    path = written[0].path
    if damage == "truncate_npy":
        f = path / "dev.probe_logits.npy"
        f.write_bytes(f.read_bytes()[:-40])
    elif damage == "delete_npy":
        (path / "train.teacher_logits.npy").unlink()
    elif damage == "delete_rows":
        shutil.rmtree(path / "rows" / "dev")
    elif damage == "bad_manifest":
        (path / "manifest.json").write_text("{not json")
    elif damage == "old_version":
        manifest = json.loads((path / "manifest.json").read_text())
        manifest["format_version"] = 0
        (path / "manifest.json").write_text(json.dumps(manifest))
    elif damage == "delete_embeddings":
        (path / "embeddings.safetensors").unlink()
    elif damage == "truncate_embeddings":
        f = path / "embeddings.safetensors"
        f.write_bytes(f.read_bytes()[:100])
    elif damage == "truncate_ids":
        f = path / "train.ids.npy"
        f.write_bytes(f.read_bytes()[:-8])
    elif damage == "wrong_labels":
        np.save(path / "dev.labels.npy", np.zeros(3, dtype=np.int64))
    elif damage == "wrong_rows":
        manifest = json.loads((path / "manifest.json").read_text())
        manifest["splits"]["dev"]["rows"] += 1
        (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="adabert teacher probe"):
        KnowledgeStore.open(path)


def test_missing_store_is_refused(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        KnowledgeStore.open(tmp_path / "nowhere")


def test_failed_write_keeps_the_old_store(written, tiny_bert_dir):
    store, arrays, splits, model = written
    before = (store.path / "manifest.json").read_text()
    rows = splits["dev"][0]
    bad = {"dev": (rows, arrays["dev"][0][:-1], arrays["dev"][1])}  # one teacher row short
    with pytest.raises(ValueError, match="expected"):
        write_store(
            store.path,
            task=get_task("sst2"),
            data_dir=None,
            max_length=32,
            teacher_dir=tiny_bert_dir,
            model=model,
            tokenizer=store.tokenizer(),
            splits=bad,
            teacher_metrics={},
            probe_metrics=[],
        )
    assert (store.path / "manifest.json").read_text() == before
    assert sorted(p.name for p in store.path.parent.iterdir() if p.name.startswith(".")) == []
    KnowledgeStore.open(store.path)


def test_rewrite_replaces_the_store(written, tiny_bert_dir):
    store, arrays, splits, model = written
    only_dev = {"dev": splits["dev"]}
    new = write_store(
        store.path,
        task=get_task("sst2"),
        data_dir=None,
        max_length=16,
        teacher_dir=tiny_bert_dir,
        model=model,
        tokenizer=store.tokenizer(),
        splits=only_dev,
        teacher_metrics={},
        probe_metrics=[],
    )
    assert new.splits == ["dev"] and new.max_length == 16
    assert not (store.path / "train.teacher_logits.npy").exists()
    assert [p.name for p in store.path.parent.iterdir() if p.name.startswith(".")] == []
