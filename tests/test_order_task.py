"""The word-order diagnostic (benchmarks/order_task.py): its rows, and an order-blind reference that
cannot separate them by construction."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
GLUE = ROOT.parent / "shared" / "data" / "glue"
sys.path.insert(0, str(ROOT / "benchmarks"))

from order_task import LABELS, build, order_rows, read_sentences, shuffled  # noqa: E402


def test_shuffles_move_whole_words_and_never_equal_the_original():
    rng = random.Random(0)
    words = "the film 's lamer instincts are in the saddle".split()
    for _ in range(200):
        other = shuffled(words, rng)
        assert other != words and sorted(other) == sorted(words)
    assert shuffled(["so", "so"], rng) is None  # no other order exists
    rows = order_rows(["a b c d e f", "too short", "x x x x x x"], rng, min_words=6, max_words=40)
    assert [label for _, label in rows] == list(LABELS)  # one usable sentence, both versions together
    assert rows[0][0] == "a b c d e f" and sorted(rows[1][0].split()) == list("abcdef")


@pytest.mark.integration
def test_the_order_blind_reference_cannot_separate_the_order_task(tmp_path):
    """An identity cell, the mean (paper) head and a zero position table give both versions of every
    dev sentence the same logits: the reference sits at exactly one right answer per pair."""
    if not (GLUE / "SST-2" / "dev.tsv").is_file():
        pytest.skip(f"real GLUE data not found at {GLUE}")
    from transformers import AutoTokenizer

    from adabert.config import model_dir
    from adabert.genotype import Genotype
    from adabert.student.network import AdaBertStudentConfig, AdaBertStudentForSequenceClassification

    folder = model_dir("default")
    if folder is None:
        pytest.skip("the default teacher is not installed")
    files = build(GLUE, tmp_path, train_sentences=10)
    assert files["dev"].is_file() and files["train"].is_file()
    rows = order_rows(read_sentences(GLUE / "SST-2" / "dev.tsv")[:120], random.Random(0), 6, 40)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    genotype = Genotype.load(ROOT / "benchmarks" / "genotypes" / "identity_cell.json")
    config = AdaBertStudentConfig(
        genotype={**genotype.to_dict(), "hidden_size": 16},
        vocab_size=tokenizer.vocab_size,
        max_position_embeddings=64,
        hidden_size=16,
        pair=False,
        num_labels=2,
        head="paper",
    )
    torch.manual_seed(0)
    model = AdaBertStudentForSequenceClassification(config).eval()
    model.embeddings.position.weight.data.zero_()  # train --positions none
    batch = tokenizer(
        [text for text, _ in rows], padding=True, truncation=True, max_length=64, return_tensors="pt"
    )
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    original, shuffled_ = logits[0::2], logits[1::2]
    assert torch.allclose(original, shuffled_, atol=1e-5)
    # and a learned position table does see the order: the reference is blind by its settings alone
    model.embeddings.position.weight.data.normal_()
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert not torch.allclose(logits[0::2], logits[1::2], atol=1e-3)
