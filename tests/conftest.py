"""Shared fixtures: a tiny random BERT classifier and a tiny GLUE-layout SST-2 task.

Both are built in a temporary directory in well under a second, so tests of the teacher stage, the
knowledge store and everything downstream run without the network or the real teacher.
"""

from __future__ import annotations

import os
import random
import resource
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

# Nothing in the tests may reach the hub, and tiny models run fastest (and steadiest on a busy
# machine) on one thread.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

SPECIAL_TOKENS = ["[PAD]", "[unused0]", "[unused1]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
POSITIVE_WORDS = ["good", "great", "fun", "lovely", "charming", "moving", "clever", "warm"]
NEGATIVE_WORDS = ["bad", "awful", "boring", "dull", "tedious", "flat", "silly", "cold"]
NEUTRAL_WORDS = [
    "the",
    "a",
    "movie",
    "film",
    "story",
    "acting",
    "is",
    "was",
    "very",
    "and",
    "it",
    "plot",
    "cast",
    "quite",
    "really",
    "this",
    "ending",
    "script",
    ",",
    ".",
    "!",
    "'s",
    "not",
]
TINY_VOCAB = (
    SPECIAL_TOKENS + NEUTRAL_WORDS + POSITIVE_WORDS + NEGATIVE_WORDS + ["##s", "##ly", "##ing", "##ed"]
)


def write_tiny_bert(out: Path) -> Path:
    """A random 2-layer, 32-wide BERT classifier (2 labels) + its tokenizer, saved to ``out``."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    out.mkdir(parents=True)
    vocab_file = out / "vocab.txt"
    vocab_file.write_text("\n".join(TINY_VOCAB) + "\n")
    tokenizer = BertTokenizerFast(vocab=str(vocab_file))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(TINY_VOCAB),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
        num_labels=2,
    )
    BertForSequenceClassification(config).save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


@pytest.fixture
def tiny_bert_dir(tmp_path: Path) -> Path:
    return write_tiny_bert(tmp_path / "tiny_bert")


def tiny_sentence(rng: random.Random, positive: bool) -> str:
    """A short sentence from the tiny vocabulary whose polarity words give away the label."""
    polar = POSITIVE_WORDS if positive else NEGATIVE_WORDS
    words = [
        rng.choice(["the", "this", "a"]),
        rng.choice(["movie", "film", "story", "plot"]),
        rng.choice(["is", "was"]),
        rng.choice(["very", "quite", "really"]),
        rng.choice(polar),
    ]
    if rng.random() < 0.5:
        words += ["and", rng.choice(polar)]
    return " ".join(words + ["."])


def write_tiny_glue(root: Path) -> Path:
    """A GLUE root with SST-2/{train,dev}.tsv (release layout): 48 train and 16 dev rows, balanced."""
    rng = random.Random(0)
    (root / "SST-2").mkdir(parents=True)
    for split, n in (("train", 48), ("dev", 16)):
        lines = ["sentence\tlabel"] + [f"{tiny_sentence(rng, bool(i % 2))} \t{i % 2}" for i in range(n)]
        (root / "SST-2" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def tiny_glue_dir(tmp_path: Path) -> Path:
    return write_tiny_glue(tmp_path / "glue")


@pytest.fixture
def tiny_store(tmp_path: Path, tiny_bert_dir: Path, tiny_glue_dir: Path) -> Path:
    """A knowledge store from the tiny teacher fine-tuned for one epoch on the tiny SST-2 task."""
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
    store = tmp_path / "store"
    probe(ProbeConfig(teacher=str(teacher), output_dir=str(store), epochs=2))
    return store


# Small settings of every pipeline stage for the tiny teacher and task (tests and benchmarks/faults.py).
TINY_STAGES = {
    "finetune": {"epochs": 1, "max_length": 32, "batch_size": 16},
    "probe": {"epochs": 2},
    "search": {
        "hidden_size": 16,
        "max_cells": 3,
        "epochs": 1,
        "uniform_warmup_epochs": 0,
        "batch_size": 8,
        "w_lr": 3e-3,
        "arch_lr": 3e-2,
        "cost_seq_len": 16,
    },
    "train": {"epochs": 1, "batch_size": 8},
    "evaluate": {"batch_sizes": [1, 2], "seq_len": 16, "repeats": 2, "warmup": 1},
}


def tiny_finetune_argv(bert: Path, glue: Path, out: Path, *extra: str) -> list[str]:
    """Command-line arguments of ``adabert teacher finetune`` of the tiny teacher on the tiny task."""
    return ["teacher", "finetune", "--task", "sst2", "--data-dir", str(glue), "--model", str(bert),
            "--max-length", "32", "--output-dir", str(out), *extra]  # fmt: skip


def file_size_limit(limit: int) -> Callable[[], None]:
    """A ``preexec_fn``: the child's writes past ``limit`` bytes per file fail (EFBIG), as on a full disk."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply
