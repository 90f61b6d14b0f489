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
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

_BRACKETED = re.compile(r"^\[.*\]$")  # [PAD], [unused17], ...: never useful replacements
_CHUNK = 1024
SPLIT = "train_aug"
PROGRESS = f"{SPLIT}.progress.json"


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
    from numpy.lib.format import open_memmap

    n_src, total = len(texts_a), len(texts_a) * factor
    classes, levels = shapes
    files = {
        "second": ((total,), np.int32),
        "source": ((total,), np.int64),
        "copy": ((total,), np.int32),
        "lengths": ((total,), np.int64),
        "labels": ((total,), np.float32 if regression else np.int64),
        "teacher_logits": ((total, classes), np.float32),
        "probe_logits": ((total, levels, classes), np.float32),
    }
    path = {name: workdir / f"{SPLIT}.{name}.npy" for name in files}
    ids_path, text_path, progress_path = (
        workdir / f"{SPLIT}.ids.bin",
        workdir / f"{SPLIT}.rows.jsonl",
        workdir / PROGRESS,
    )
    state = {"settings": settings, "rows": total, "rows_done": 0, "ids": 0, "text_bytes": 0}
    try:
        saved = json.loads(progress_path.read_text())
    except (FileNotFoundError, ValueError):
        saved = None
    resume = bool(
        saved
        and (saved.get("settings"), saved.get("rows")) == (settings, total)
        and all(p.exists() for p in (ids_path, text_path, *path.values()))
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
        _fsync_json(progress_path, state)
    with (
        open(ids_path, "ab" if resume else "wb") as ids_fh,
        open(text_path, "ab" if resume else "wb") as text_fh,
    ):
        ids_fh.truncate(4 * state["ids"])
        text_fh.truncate(state["text_bytes"])
        ids_fh.seek(0, os.SEEK_END)
        text_fh.seek(0, os.SEEK_END)
        for start in range(state["rows_done"], n_src, chunk_rows):
            stop = min(n_src, start + chunk_rows)
            rng = np.random.default_rng([seed, start // chunk_rows])
            a, b = augmenter.copies(
                texts_a[start:stop], None if texts_b is None else texts_b[start:stop], factor, rng
            )
            tokens, logits, probe_logits = label(a, b)
            lo, hi = start * factor, stop * factor
            arrays["second"][lo:hi] = tokens.second
            arrays["lengths"][lo:hi] = tokens.lengths
            made_from = np.arange(start, stop) if sources is None else sources[start:stop]
            arrays["source"][lo:hi] = np.repeat(made_from, factor)
            arrays["copy"][lo:hi] = np.tile(np.arange(factor), stop - start)
            arrays["teacher_logits"][lo:hi] = logits
            arrays["probe_logits"][lo:hi] = probe_logits
            arrays["labels"][lo:hi] = logits[:, 0] if regression else logits.argmax(-1)
            for array in arrays.values():
                array.flush()
            ids_fh.write(np.ascontiguousarray(tokens.ids, dtype=np.int32).tobytes())
            lines = "".join(
                json.dumps({"text_a": x, **({"text_b": b[i]} if b else {})}) + "\n" for i, x in enumerate(a)
            )
            text_fh.write(lines.encode())
            for fh in (ids_fh, text_fh):
                fh.flush()
                os.fsync(fh.fileno())
            state = {
                **state,
                "rows_done": stop,
                "ids": state["ids"] + len(tokens.ids),
                "text_bytes": text_fh.tell(),
            }
            _fsync_json(progress_path, state)
            if progress is not None:
                progress(stop, n_src)
    # finish: offsets from the lengths, the flat ids as .npy, and no work files left
    lengths = np.asarray(arrays.pop("lengths"))
    offsets = np.zeros(total + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    with open(workdir / f"{SPLIT}.offsets.npy", "wb") as fh:
        np.save(fh, offsets)
    with open(workdir / f"{SPLIT}.ids.npy", "wb") as fh:
        np.save(fh, np.fromfile(ids_path, dtype=np.int32))
    del arrays
    for leftover in (ids_path, path["lengths"], progress_path):
        leftover.unlink()
    return {"rows": total, "source_rows": n_src, "factor": factor, "settings": settings}
