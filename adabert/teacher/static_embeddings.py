"""Static token embeddings distilled from the teacher's outputs, to start the student's token table.

A student's token table decides most of what it knows before training. The teacher's *input* table
only says which word piece is which; its *outputs* carry what the teacher makes of a word. Each
vocabulary entry is run through the teacher alone (``[CLS] token [SEP]``) and its last-layer states
are averaged (Model2Vec, Tulkens & van Dongen 2024); a PCA then rotates the table onto its principal
directions, so its first ``k`` columns are the best ``k``-wide table for any student width ``k``.
Optional SIF weighting (Arora et al. 2017) scales each row by ``a / (a + p(token))`` with token
frequencies counted on the task's own training rows, so frequent, uninformative pieces weigh less.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch
from torch import nn


@torch.inference_mode()
def token_outputs(encoder: nn.Module, tokenizer: Any, batch_size: int = 512, desc: str = "") -> torch.Tensor:
    """[V, H]: the mean last-layer state of ``[CLS] token [SEP]`` for every vocabulary id."""
    from adabert.progress import progress as progress_bar

    vocab = encoder.get_input_embeddings().weight.shape[0]
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    device = next(encoder.parameters()).device
    ids = torch.arange(vocab)
    out = []
    starts = range(0, vocab, batch_size)
    for start in progress_bar(starts, desc=desc or "token outputs", unit="batch"):
        chunk = ids[start : start + batch_size]
        parts = [chunk[:, None]]
        if cls is not None:
            parts.insert(0, torch.full_like(chunk[:, None], cls))
        if sep is not None:
            parts.append(torch.full_like(chunk[:, None], sep))
        batch = torch.cat(parts, 1).to(device)
        states = encoder(input_ids=batch, attention_mask=torch.ones_like(batch)).last_hidden_state
        out.append(states.float().mean(1).cpu())
    return torch.cat(out)


def pca_rotate(table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The centred table in its principal directions (columns by falling variance), and those variances."""
    centred = table.double() - table.double().mean(0)
    _, s, v = torch.linalg.svd(centred, full_matrices=False)
    return (centred @ v.T).float(), (s**2 / max(1, len(table) - 1)).float()


def sif_weights(counts: np.ndarray, a: float = 1e-3) -> torch.Tensor:
    """``a / (a + p(token))`` per vocabulary id from token counts (unseen tokens get weight 1)."""
    p = counts.astype(np.float64) / max(1.0, float(counts.sum()))
    return torch.from_numpy(a / (a + p)).float()


def token_counts(token_ids: np.ndarray, vocab_size: int) -> np.ndarray:
    """Occurrences of each vocabulary id in a flat array of token ids."""
    return np.bincount(np.asarray(token_ids, dtype=np.int64), minlength=vocab_size)[:vocab_size]


def distill_token_table(
    model: nn.Module, tokenizer: Any, counts: np.ndarray | None = None, sif: float | None = 1e-3
) -> dict[str, torch.Tensor]:
    """The distilled table of a (fine-tuned) teacher: ``tokens`` [V, H] PCA-rotated, ``variance`` [H].

    ``counts``: token frequencies for SIF weighting (``sif`` = its ``a``; None = no weighting).
    The table is scaled so its rows have unit mean norm: one scale for every teacher.
    """
    encoder = getattr(model, "base_model", model)
    table = token_outputs(encoder, tokenizer)
    rotated, variance = pca_rotate(table)
    if sif is not None and counts is not None:
        rotated = rotated * sif_weights(counts, sif)[:, None]
    scale = rotated.norm(dim=1).mean().clamp(min=1e-6)
    return {"tokens": (rotated / scale).contiguous(), "variance": (variance / scale**2).contiguous()}


def table_hash(tables: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tables):
        h.update(name.encode() + b"\0" + tables[name].contiguous().numpy().tobytes())
    return h.hexdigest()
