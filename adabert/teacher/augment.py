"""Teacher-labelled augmented rows, made in chunks and streamed into the knowledge store.

Small task datasets give a student too few examples to absorb the teacher's knowledge; AdaBERT's best
numbers, TinyBERT and distilled BiLSTMs (Tang et al. 2019) all train on perturbed copies of the
training rows labelled by the teacher. Per whitespace word of a copy: with ``replace_prob`` a word
that is one word piece becomes one of its nearest neighbours in the teacher's own word-embedding
table (no extra word vectors or language model needed), with ``mask_prob`` it becomes the mask
token; then, for single-sentence tasks, with ``ngram_prob`` the copy is cut to a random n-gram of
1-5 words (Tang et al.). Words that split into several pieces are kept: they have no single row to
take neighbours of.

:func:`stream_augmented` writes ``factor`` copies of every training row in chunks, straight into
memory-mapped arrays of the store's work folder, labelled by a callback (the teacher), with a
progress file after each chunk: a killed run continues where it stopped, with no row lost or
written twice, and the same seed gives the same rows however often it was interrupted.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

logger = logging.getLogger(__name__)

_BRACKETED = re.compile(r"^\[.*\]$")  # [PAD], [unused17], ...: never useful replacements
_CHUNK = 1024
SPLIT = "train_aug"
PROGRESS = f"{SPLIT}.progress.json"
_IDS_BIN = f"{SPLIT}.ids.bin"  # the copies' token ids, appended chunk by chunk (int32)
_ROWS_JSONL = f"{SPLIT}.rows.jsonl"  # the copies' texts, one JSON object a line


def _candidate_mask(tokenizer: Any, vocab_rows: int) -> torch.Tensor:
    """True for vocabulary ids that may be inserted: whole words, not special, subword or unused tokens."""
    tokens = tokenizer.convert_ids_to_tokens(list(range(vocab_rows)))
    special = set(tokenizer.all_special_ids)
    ok = [
        tok is not None and i not in special and not tok.startswith("##") and not _BRACKETED.match(tok)
        for i, tok in enumerate(tokens)
    ]
    return torch.tensor(ok, dtype=torch.bool)


def _word_ids(words: Iterable[str], tokenizer: Any, vocab_rows: int) -> dict[str, int]:
    """Words that are exactly one in-vocabulary word piece, with that piece's id."""
    unk = tokenizer.unk_token_id
    special = set(tokenizer.all_special_ids)
    out = {}
    for word in words:
        pieces = tokenizer.tokenize(word)
        if len(pieces) != 1:
            continue
        wid = tokenizer.convert_tokens_to_ids(pieces[0])
        if wid is not None and wid != unk and wid not in special and wid < vocab_rows:
            out[word] = wid
    return out


def nearest_words(
    ids: list[int], embedding_weight: torch.Tensor, candidates: torch.Tensor, k: int
) -> dict[int, list[int]]:
    """The ``k`` candidate ids most cosine-similar to each of ``ids`` (itself excluded), batched matmuls."""
    weight = torch.nn.functional.normalize(embedding_weight.detach().float().cpu(), dim=1)
    k = min(k, int(candidates.sum()))
    out: dict[int, list[int]] = {}
    if k <= 0:
        return {i: [] for i in ids}
    for start in range(0, len(ids), _CHUNK):
        chunk = torch.tensor(ids[start : start + _CHUNK], dtype=torch.long)
        sims = weight[chunk] @ weight.T
        sims[:, ~candidates] = float("-inf")
        sims[torch.arange(len(chunk)), chunk] = float("-inf")
        top = sims.topk(k, dim=1)
        for wid, vals, nbrs in zip(chunk.tolist(), top.values, top.indices):
            out[wid] = nbrs[torch.isfinite(vals)].tolist()
    return out


class Augmenter:
    """Perturbed copies of texts: embedding-neighbour replacement, masking, n-gram sampling."""

    def __init__(
        self,
        tokenizer: Any,
        embedding_weight: torch.Tensor,
        texts: Iterable[str],
        replace_prob: float = 0.3,
        mask_prob: float = 0.1,
        ngram_prob: float = 0.0,
        neighbours: int = 15,
    ) -> None:
        if not 0 <= replace_prob <= 1 or not 0 <= mask_prob <= 1 or replace_prob + mask_prob > 1:
            raise ValueError(
                f"bad augmentation settings: replace_prob={replace_prob}, mask_prob={mask_prob} "
                "(need probabilities summing to at most 1)"
            )
        if not 0 <= ngram_prob <= 1:
            raise ValueError(f"bad augmentation settings: ngram_prob={ngram_prob} (need 0 to 1)")
        self.replace_prob, self.ngram_prob = replace_prob, ngram_prob
        self.mask_token = tokenizer.mask_token
        self.mask_prob = mask_prob if self.mask_token is not None else 0.0
        if self.mask_token is None and mask_prob > 0:
            logger.warning("tokenizer has no mask token; masking disabled")
        vocab_rows = min(int(embedding_weight.shape[0]), len(tokenizer))
        vocab = {w for t in texts if t for w in t.split()}
        word_id = _word_ids(vocab, tokenizer, vocab_rows)
        nbr_ids = nearest_words(
            sorted(set(word_id.values())),
            embedding_weight[:vocab_rows],
            _candidate_mask(tokenizer, vocab_rows),
            neighbours,
        )
        used = sorted({n for ns in nbr_ids.values() for n in ns})
        token_of = dict(zip(used, tokenizer.convert_ids_to_tokens(used)))
        self.table = {w: [token_of[n] for n in nbr_ids[i]] for w, i in word_id.items() if nbr_ids.get(i)}
        logger.info(
            "augmentation: %d of %d distinct words have embedding neighbours", len(self.table), len(vocab)
        )

    def perturb(self, text: str | None, rng: np.random.Generator, ngrams: bool) -> str | None:
        if text is None:
            return None
        words = text.split()
        draws = rng.random(len(words))
        for j, (word, u) in enumerate(zip(words, draws)):
            if u < self.replace_prob:
                choices = self.table.get(word)
                if choices:
                    words[j] = choices[rng.integers(len(choices))]
            elif u < self.replace_prob + self.mask_prob:
                words[j] = self.mask_token
        if ngrams and len(words) > 1 and rng.random() < self.ngram_prob:
            n = int(rng.integers(1, min(5, len(words)) + 1))
            start = int(rng.integers(0, len(words) - n + 1))
            words = words[start : start + n]
        return " ".join(words)

    def copies(
        self, texts_a: Sequence[str], texts_b: Sequence[str] | None, factor: int, rng: np.random.Generator
    ) -> tuple[list[str], list[str] | None]:
        """``factor`` perturbed copies of each row, row by row (copies of row 0 first)."""
        out_a: list[str] = []
        out_b: list[str] | None = None if texts_b is None else []
        for i, text in enumerate(texts_a):
            for _ in range(factor):
                out_a.append(self.perturb(text, rng, ngrams=texts_b is None))
                if out_b is not None:
                    out_b.append(self.perturb(texts_b[i], rng, ngrams=False))
        return out_a, out_b


def _fsync_json(path: Path, value: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as fh:
        json.dump(value, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def stream_augmented(
    workdir: Path,
    texts_a: Sequence[str],
    texts_b: Sequence[str] | None,
    augmenter: Augmenter,
    factor: int,
    label: Callable[[list[str], list[str] | None], tuple[Any, np.ndarray, np.ndarray]],
    shapes: tuple[int, int],
    regression: bool,
    settings: dict[str, Any],
    seed: int = 0,
    chunk_rows: int = 512,
    progress: Callable[[int, int], None] | None = None,
    sources: np.ndarray | None = None,
) -> dict[str, Any]:
    """Write ``factor`` teacher-labelled copies of every row into ``workdir`` (split ``train_aug``).

    ``label(texts_a, texts_b)`` returns the copies' ``TokenRows``, teacher logits [n, C] and probe
    logits [n, L+1, C]; ``shapes`` is ``(C, L+1)``; ``sources`` the training row of each text (default:
    its position). The rows of chunk ``k`` come from a generator
    seeded by ``(seed, k)``, so resuming reproduces them exactly. A progress file written after each
    chunk records what is on disk; a run with the same ``settings`` continues from it, any other
    starts afresh. Returns the split's manifest entry.
    """
    n_src, total = len(texts_a), len(texts_a) * factor
    files = _array_files(total, shapes, regression)
    state, arrays, resume = _open_work(workdir, files, settings, total, n_src)
    with (
        _appending(workdir / _IDS_BIN, 4 * state["ids"], resume) as ids_fh,
        _appending(workdir / _ROWS_JSONL, state["text_bytes"], resume) as text_fh,
    ):
        for start in range(state["rows_done"], n_src, chunk_rows):
            stop = min(n_src, start + chunk_rows)
            rng = np.random.default_rng([seed, start // chunk_rows])
            a, b = augmenter.copies(
                texts_a[start:stop], None if texts_b is None else texts_b[start:stop], factor, rng
            )
            tokens, logits, probe_logits = label(a, b)
            made_from = np.arange(start, stop) if sources is None else sources[start:stop]
            columns = _chunk_columns(tokens, logits, probe_logits, made_from, factor, regression)
            _fill(arrays, slice(start * factor, stop * factor), columns)
            _append_rows(ids_fh, text_fh, tokens.ids, a, b)
            state = {
                **state,
                "rows_done": stop,
                "ids": state["ids"] + len(tokens.ids),
                "text_bytes": text_fh.tell(),
            }
            _fsync_json(workdir / PROGRESS, state)
            if progress is not None:
                progress(stop, n_src)
    _finish_split(workdir, arrays, total)
    return {"rows": total, "source_rows": n_src, "factor": factor, "settings": settings}


def _array_files(
    total: int, shapes: tuple[int, int], regression: bool
) -> dict[str, tuple[tuple[int, ...], Any]]:
    """Shape and dtype of each per-row array of the split (``shapes`` is ``(C, L+1)``): memory-mapped
    ``.npy`` files that chunks are written into in place."""
    classes, levels = shapes
    return {
        "second": ((total,), np.int32),
        "source": ((total,), np.int64),
        "copy": ((total,), np.int32),
        "lengths": ((total,), np.int64),
        "labels": ((total,), np.float32 if regression else np.int64),
        "teacher_logits": ((total, classes), np.float32),
        "probe_logits": ((total, levels, classes), np.float32),
    }


def _array_path(workdir: Path, name: str) -> Path:
    """Where the per-row array ``name`` is kept (the store reads the finished ones under the same names)."""
    return workdir / f"{SPLIT}.{name}.npy"


def _open_work(
    workdir: Path,
    files: dict[str, tuple[tuple[int, ...], Any]],
    settings: dict[str, Any],
    total: int,
    n_src: int,
) -> tuple[dict[str, Any], dict[str, np.ndarray], bool]:
    """The progress state, the memory-mapped arrays and whether they continue an earlier run: one that
    left a progress file for the same ``settings`` and all its files; otherwise all starts afresh."""
    from numpy.lib.format import open_memmap

    path = {name: _array_path(workdir, name) for name in files}
    state = {"settings": settings, "rows": total, "rows_done": 0, "ids": 0, "text_bytes": 0}
    try:
        saved = json.loads((workdir / PROGRESS).read_text())
    except (FileNotFoundError, ValueError):
        saved = None
    resume = bool(
        saved
        and (saved.get("settings"), saved.get("rows")) == (settings, total)
        and all(p.exists() for p in (workdir / _IDS_BIN, workdir / _ROWS_JSONL, *path.values()))
    )
    if resume:
        state = saved
        arrays = {name: open_memmap(path[name], mode="r+") for name in files}
        logger.info("augmentation: continuing after %d of %d rows", state["rows_done"], n_src)
    else:
        arrays = {
            name: open_memmap(path[name], mode="w+", dtype=dtype, shape=shape)
            for name, (shape, dtype) in files.items()
        }
        _fsync_json(workdir / PROGRESS, state)
    return state, arrays, resume


@contextmanager
def _appending(path: Path, size: int, resume: bool) -> Iterator[BinaryIO]:
    """``path`` open for appending after its first ``size`` bytes, which the progress file vouches for
    (a write cut short by a kill is dropped); a fresh run starts it empty."""
    with open(path, "ab" if resume else "wb") as fh:
        fh.truncate(size)
        fh.seek(0, os.SEEK_END)
        yield fh


def _chunk_columns(
    tokens: Any,
    logits: np.ndarray,
    probe_logits: np.ndarray,
    made_from: np.ndarray,
    factor: int,
    regression: bool,
) -> dict[str, np.ndarray]:
    """A chunk's values of the per-row arrays: ``factor`` consecutive copies of each source row, labelled
    with the teacher's prediction (its score for regression)."""
    return {
        "second": tokens.second,
        "lengths": tokens.lengths,
        "source": np.repeat(made_from, factor),
        "copy": np.tile(np.arange(factor), len(made_from)),
        "teacher_logits": logits,
        "probe_logits": probe_logits,
        "labels": logits[:, 0] if regression else logits.argmax(-1),
    }


def _fill(arrays: dict[str, np.ndarray], rows: slice, columns: dict[str, np.ndarray]) -> None:
    """Write a chunk's ``columns`` into its ``rows`` and flush them, before the progress file counts them."""
    for name, values in columns.items():
        arrays[name][rows] = values
    for array in arrays.values():
        array.flush()


def _append_rows(ids_fh: BinaryIO, text_fh: BinaryIO, ids: Any, a: list[str], b: list[str] | None) -> None:
    """Append a chunk's token ids and texts and fsync both, before the progress file counts them."""
    ids_fh.write(np.ascontiguousarray(ids, dtype=np.int32).tobytes())
    lines = "".join(
        json.dumps({"text_a": x, **({"text_b": b[i]} if b else {})}) + "\n" for i, x in enumerate(a)
    )
    text_fh.write(lines.encode())
    for fh in (ids_fh, text_fh):
        fh.flush()
        os.fsync(fh.fileno())


def _finish_split(workdir: Path, arrays: dict[str, np.ndarray], total: int) -> None:
    """The split as the store reads it: offsets from the lengths, the flat ids as ``.npy``, and no work
    files left (the arrays are closed first)."""
    lengths = np.asarray(arrays.pop("lengths"))
    offsets = np.zeros(total + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    with open(workdir / f"{SPLIT}.offsets.npy", "wb") as fh:
        np.save(fh, offsets)
    with open(workdir / f"{SPLIT}.ids.npy", "wb") as fh:
        np.save(fh, np.fromfile(workdir / _IDS_BIN, dtype=np.int32))
    arrays.clear()
    for leftover in (workdir / _IDS_BIN, _array_path(workdir, "lengths"), workdir / PROGRESS):
        leftover.unlink()
