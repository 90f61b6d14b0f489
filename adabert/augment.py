"""TinyBERT-style data augmentation by word replacement, for teacher-labelled extra training rows.

Small task datasets give a student too few examples to absorb the teacher's knowledge; the AdaBERT
paper's best numbers use augmented rows labelled by the teacher. Each new row replaces some words of a
source row by a nearest neighbour in the teacher's own word-embedding table (so no extra word vectors
or language model are needed) or by the mask token. Words that split into several word pieces are
kept as they are: they have no single embedding row to take neighbours of.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import numpy as np
import torch
from datasets import Dataset, Features
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

_BRACKETED = re.compile(r"^\[.*\]$")  # [PAD], [unused17], ...: never useful replacements
_CHUNK = 1024


def _candidate_mask(tokenizer: Any, vocab_rows: int) -> torch.Tensor:
    """True for vocabulary ids that may be inserted: whole words, not special, subword or unused tokens."""
    tokens = tokenizer.convert_ids_to_tokens(list(range(vocab_rows)))
    special = set(tokenizer.all_special_ids)
    ok = [
        tok is not None and i not in special and not tok.startswith("##") and not _BRACKETED.match(tok)
        for i, tok in enumerate(tokens)
    ]
    return torch.tensor(ok, dtype=torch.bool)


def _word_ids(words: set[str], tokenizer: Any, vocab_rows: int) -> dict[str, int]:
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


def augment_rows(
    dataset: Dataset,
    tokenizer: Any,
    embedding_weight: torch.Tensor,
    factor: int,
    replace_prob: float = 0.3,
    mask_prob: float = 0.1,
    neighbours: int = 15,
    seed: int = 0,
) -> Dataset:
    """``factor`` perturbed copies of every row, in row order; ``idx`` still names the source row.

    Per whitespace word of ``text_a`` (and ``text_b``): with ``replace_prob`` a single-word-piece word
    becomes one of its ``neighbours`` nearest words (cosine similarity in ``embedding_weight``), with
    ``mask_prob`` it becomes the mask token. Labels are copied from the source; the caller relabels the
    rows with the teacher. The same ``seed`` gives the same rows.
    """
    if factor < 0 or not 0 <= replace_prob <= 1 or not 0 <= mask_prob <= 1 or replace_prob + mask_prob > 1:
        raise ValueError(f"bad augmentation settings: factor={factor}, replace_prob={replace_prob}, "
                         f"mask_prob={mask_prob} (need factor >= 0 and probabilities summing to at most 1)")
    text_cols = [c for c in ("text_a", "text_b") if c in dataset.column_names]
    keep = [c for c in ("text_a", "text_b", "label", "idx") if c in dataset.column_names]
    features = Features({c: dataset.features[c] for c in keep})
    if factor == 0 or len(dataset) == 0:
        return Dataset.from_dict({c: [] for c in keep}, features=features)

    mask_token = tokenizer.mask_token
    if mask_token is None and mask_prob > 0:
        logger.warning("tokenizer has no mask token; masking disabled")
        mask_prob = 0.0
    vocab_rows = min(int(embedding_weight.shape[0]), len(tokenizer))
    texts = {c: list(dataset[c]) for c in text_cols}
    vocab = {w for c in text_cols for t in texts[c] if t for w in t.split()}
    word_id = _word_ids(vocab, tokenizer, vocab_rows)
    nbr_ids = nearest_words(sorted(set(word_id.values())), embedding_weight[:vocab_rows],
                            _candidate_mask(tokenizer, vocab_rows), neighbours)
    id_tokens = tokenizer.convert_ids_to_tokens(sorted({n for ns in nbr_ids.values() for n in ns}))
    token_of = dict(zip(sorted({n for ns in nbr_ids.values() for n in ns}), id_tokens))
    table = {w: [token_of[n] for n in nbr_ids[i]] for w, i in word_id.items() if nbr_ids.get(i)}
    logger.info("augmenting %d rows x%d: %d of %d distinct words have embedding neighbours",
                len(dataset), factor, len(table), len(vocab))

    rng = np.random.default_rng(seed)
    out: dict[str, list[Any]] = {c: [] for c in keep}
    labels = list(dataset["label"])
    idxs = list(dataset["idx"]) if "idx" in keep else None
    for row in tqdm(range(len(dataset)), desc="augment", unit="row", leave=False):
        for _ in range(factor):
            for c in text_cols:
                text = texts[c][row]
                if text is None:
                    out[c].append(None)
                    continue
                words = text.split()
                draws = rng.random(len(words))
                for j, (word, u) in enumerate(zip(words, draws)):
                    if u < replace_prob:
                        choices = table.get(word)
                        if choices:
                            words[j] = choices[rng.integers(len(choices))]
                    elif u < replace_prob + mask_prob:
                        words[j] = mask_token
                out[c].append(" ".join(words))
            out["label"].append(labels[row])
            if idxs is not None:
                out["idx"].append(idxs[row])
    return Dataset.from_dict(out, features=features)
