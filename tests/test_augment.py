"""Word-replacement augmentation: deterministic, row-preserving, neighbours drawn from the embeddings."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_VOCAB
from datasets import Dataset

from adabert.augment import augment_rows, nearest_words


@pytest.fixture
def tokenizer(tiny_bert_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_bert_dir))


@pytest.fixture
def rows() -> Dataset:
    return Dataset.from_dict(
        {
            "text_a": ["the movie is very good .", "this film was dull and boring !", "a charming story"],
            "label": [1, 0, 1],
            "idx": [10, 11, 12],
        }
    )


def _embedding(seed: int = 0) -> torch.Tensor:
    return torch.randn(len(TINY_VOCAB), 16, generator=torch.Generator().manual_seed(seed))


def test_rows_counts_idx_and_determinism(tokenizer, rows):
    emb = _embedding()
    a = augment_rows(rows, tokenizer, emb, factor=4, replace_prob=0.5, mask_prob=0.2, neighbours=3, seed=1)
    b = augment_rows(rows, tokenizer, emb, factor=4, replace_prob=0.5, mask_prob=0.2, neighbours=3, seed=1)
    c = augment_rows(rows, tokenizer, emb, factor=4, replace_prob=0.5, mask_prob=0.2, neighbours=3, seed=2)
    assert len(a) == 4 * len(rows)
    assert a.column_names == rows.column_names
    assert a["idx"] == [10] * 4 + [11] * 4 + [12] * 4
    assert a["label"] == [1] * 4 + [0] * 4 + [1] * 4
    assert a[:] == b[:]
    assert a["text_a"] != c["text_a"]
    # Same number of words; some changed, none changed into a subword piece or a special token.
    changed = 0
    for new, src in zip(a["text_a"], [t for t in rows["text_a"] for _ in range(4)]):
        new_words, src_words = new.split(), src.split()
        assert len(new_words) == len(src_words)
        for w_new, w_src in zip(new_words, src_words):
            if w_new != w_src:
                changed += 1
                assert w_new == "[MASK]" or (w_new in TINY_VOCAB and not w_new.startswith(("##", "[")))
    assert changed > 0


def test_no_change_when_probabilities_are_zero_and_all_masked_at_one(tokenizer, rows):
    emb = _embedding()
    same = augment_rows(rows, tokenizer, emb, factor=2, replace_prob=0.0, mask_prob=0.0, seed=0)
    assert same["text_a"] == [t for t in rows["text_a"] for _ in range(2)]
    masked = augment_rows(rows, tokenizer, emb, factor=1, replace_prob=0.0, mask_prob=1.0, seed=0)
    assert all(set(t.split()) == {"[MASK]"} for t in masked["text_a"])


def test_replacement_uses_nearest_embedding_neighbour(tokenizer):
    emb = _embedding()
    good, great = TINY_VOCAB.index("good"), TINY_VOCAB.index("great")
    emb[great] = emb[good] + 0.01 * torch.randn(16)  # "great" is by far the closest word to "good"
    ds = Dataset.from_dict({"text_a": ["good"] * 5, "label": [1] * 5, "idx": list(range(5))})
    out = augment_rows(ds, tokenizer, emb, factor=3, replace_prob=1.0, mask_prob=0.0, neighbours=1, seed=0)
    assert set(out["text_a"]) == {"great"}
    nbrs = nearest_words([good], emb, torch.ones(len(TINY_VOCAB), dtype=torch.bool), k=3)
    assert nbrs[good][0] == great and good not in nbrs[good]


def test_multi_piece_words_are_kept_and_pairs_are_augmented(tokenizer):
    assert len(tokenizer.tokenize("movies")) == 2
    ds = Dataset.from_dict({"text_a": ["movies good"], "text_b": ["bad films"], "label": [0], "idx": [0]})
    out = augment_rows(ds, tokenizer, _embedding(), factor=20, replace_prob=1.0, mask_prob=0.0, seed=0)
    assert all(t.split()[0] == "movies" and t.split()[1] != "good" for t in out["text_a"])
    assert all(t.split()[0] in TINY_VOCAB and t.split()[1] == "films" for t in out["text_b"])


def test_bad_settings_and_zero_factor(tokenizer, rows):
    with pytest.raises(ValueError, match="probabilities"):
        augment_rows(rows, tokenizer, _embedding(), factor=1, replace_prob=0.8, mask_prob=0.5)
    empty = augment_rows(rows, tokenizer, _embedding(), factor=0)
    assert len(empty) == 0 and empty.column_names == rows.column_names
