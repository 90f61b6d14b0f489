"""Augmentation: word replacement, masking and n-grams; streamed, teacher-labelled, resumable rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_VOCAB

from adabert.data import TokenRows
from adabert.teacher.augment import Augmenter, nearest_words, stream_augmented

TEXTS = ["the movie is very good .", "this film was dull and boring !", "a charming story"]


@pytest.fixture
def tokenizer(tiny_bert_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_bert_dir))


def _embedding(seed: int = 0) -> torch.Tensor:
    return torch.randn(len(TINY_VOCAB), 16, generator=torch.Generator().manual_seed(seed))


def _augmenter(tokenizer, texts=TEXTS, **kw) -> Augmenter:
    return Augmenter(tokenizer, kw.pop("embedding", _embedding()), texts, **kw)


def test_copies_are_deterministic_row_by_row_and_change_whole_words(tokenizer):
    aug = _augmenter(tokenizer, replace_prob=0.5, mask_prob=0.2, neighbours=3)
    a, none = aug.copies(TEXTS, None, 4, np.random.default_rng(1))
    b, _ = aug.copies(TEXTS, None, 4, np.random.default_rng(1))
    c, _ = aug.copies(TEXTS, None, 4, np.random.default_rng(2))
    assert none is None and len(a) == 12 and a == b and a != c
    changed = 0
    for new, src in zip(a, [t for t in TEXTS for _ in range(4)]):  # copies of row 0 come first
        assert len(new.split()) == len(src.split())  # n-grams are off by default
        for w_new, w_src in zip(new.split(), src.split()):
            if w_new != w_src:
                changed += 1
                assert w_new == "[MASK]" or (w_new in TINY_VOCAB and not w_new.startswith(("##", "[")))
    assert changed > 0


def test_zero_probabilities_keep_rows_and_full_masking_masks_all(tokenizer):
    same, _ = _augmenter(tokenizer, replace_prob=0.0, mask_prob=0.0).copies(
        TEXTS, None, 2, np.random.default_rng(0)
    )
    assert same == [t for t in TEXTS for _ in range(2)]
    masked, _ = _augmenter(tokenizer, replace_prob=0.0, mask_prob=1.0).copies(
        TEXTS, None, 1, np.random.default_rng(0)
    )
    assert all(set(t.split()) == {"[MASK]"} for t in masked)


def test_ngram_sampling_cuts_single_sentences_to_a_contiguous_ngram(tokenizer):
    aug = _augmenter(tokenizer, replace_prob=0.0, mask_prob=0.0, ngram_prob=1.0)
    out, _ = aug.copies(TEXTS[:2], None, 20, np.random.default_rng(0))
    for new, src in zip(out, [t for t in TEXTS[:2] for _ in range(20)]):
        assert 1 <= len(new.split()) <= 5 and f" {new} " in f" {src} "
    assert len({len(t.split()) for t in out}) > 2
    pairs, second = aug.copies(TEXTS[:2], TEXTS[1:], 3, np.random.default_rng(0))
    assert pairs == [t for t in TEXTS[:2] for _ in range(3)] and second is not None  # pairs: no n-grams


def test_replacement_uses_nearest_embedding_neighbour(tokenizer):
    emb = _embedding()
    good, great = TINY_VOCAB.index("good"), TINY_VOCAB.index("great")
    emb[great] = emb[good] + 0.01 * torch.randn(16)  # "great" is by far the closest word to "good"
    aug = _augmenter(tokenizer, ["good"], embedding=emb, replace_prob=1.0, mask_prob=0.0, neighbours=1)
    out, _ = aug.copies(["good"] * 5, None, 3, np.random.default_rng(0))
    assert set(out) == {"great"}
    nbrs = nearest_words([good], emb, torch.ones(len(TINY_VOCAB), dtype=torch.bool), k=3)
    assert nbrs[good][0] == great and good not in nbrs[good]


def test_multi_piece_words_are_kept_and_pairs_are_augmented(tokenizer):
    assert len(tokenizer.tokenize("movies")) == 2
    aug = _augmenter(tokenizer, ["movies good", "bad films"], replace_prob=1.0, mask_prob=0.0)
    a, b = aug.copies(["movies good"], ["bad films"], 20, np.random.default_rng(0))
    assert all(t.split()[0] == "movies" and t.split()[1] != "good" for t in a)
    assert all(t.split()[0] in TINY_VOCAB and t.split()[1] == "films" for t in b)


def test_bad_settings(tokenizer):
    with pytest.raises(ValueError, match="probabilities"):
        _augmenter(tokenizer, replace_prob=0.8, mask_prob=0.5)
    with pytest.raises(ValueError, match="ngram_prob"):
        _augmenter(tokenizer, ngram_prob=1.5)


class _Killed(Exception):
    pass


def _stream(workdir: Path, tokenizer, texts: list[str], calls: list[int] | None = None, kill_at: int = -1):
    """Stream 3 copies of each text, labelled by a fake teacher (logits from the token ids)."""

    def label(a, b):
        if calls is not None:
            calls.append(len(a))
            if len(calls) == kill_at:
                raise _Killed
        rows = TokenRows.tokenize(a, b, tokenizer, 32)
        first = np.array(
            [rows.ids[rows.offsets[i]] + rows.lengths[i] for i in range(len(rows))], dtype=np.float32
        )
        logits = np.stack([first, -first], 1)
        return rows, logits, np.repeat(logits[:, None], 3, 1)

    aug = _augmenter(tokenizer, texts, replace_prob=0.5, mask_prob=0.1, ngram_prob=0.3)
    return stream_augmented(
        workdir, texts, None, aug, 3, label, (2, 3), False, {"s": 1}, seed=7, chunk_rows=4
    )


def _read(workdir: Path) -> dict[str, np.ndarray]:
    names = ("ids", "offsets", "second", "source", "copy", "labels", "teacher_logits", "probe_logits")
    return {n: np.load(workdir / f"train_aug.{n}.npy") for n in names}


def test_streamed_rows_resume_after_a_kill_with_no_row_lost_or_doubled(tokenizer, tmp_path):
    texts = [f"{TEXTS[i % 3]} {'good' if i % 2 else 'bad'}" for i in range(11)]
    whole = tmp_path / "whole"
    whole.mkdir()
    entry = _stream(whole, tokenizer, texts)
    assert entry["rows"] == 33 and entry["source_rows"] == 11
    expected = _read(whole)
    assert expected["source"].tolist() == [i for i in range(11) for _ in range(3)]
    assert expected["copy"].tolist() == [0, 1, 2] * 11
    assert expected["labels"].tolist() == expected["teacher_logits"].argmax(1).tolist()
    assert len((whole / "train_aug.rows.jsonl").read_text().splitlines()) == 33
    assert not list(whole.glob("*.bin")) and not (whole / "train_aug.progress.json").exists()

    part, calls = tmp_path / "part", []
    part.mkdir()
    with pytest.raises(_Killed):  # killed while labelling the second chunk: one chunk (4 rows) on disk
        _stream(part, tokenizer, texts, calls, kill_at=2)
    assert json.loads((part / "train_aug.progress.json").read_text())["rows_done"] == 4
    calls.clear()
    _stream(part, tokenizer, texts, calls)
    assert calls == [12, 9]  # only the chunks not yet on disk were labelled again
    got = _read(part)
    for name, array in expected.items():
        np.testing.assert_array_equal(got[name], array, err_msg=name)
    assert (part / "train_aug.rows.jsonl").read_text() == (whole / "train_aug.rows.jsonl").read_text()
    # other settings start afresh instead of continuing
    assert _stream(part, tokenizer, texts[:5])["rows"] == 15
