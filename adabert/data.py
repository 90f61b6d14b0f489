"""Batches for the search and the student: stored rows, tokenized, with the stored teacher outputs.

Everything comes from the knowledge store (rows, tokenizer, teacher and probe logits), so these
stages never need the task files or the teacher.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from adabert.store import KnowledgeStore
from adabert.tasks import encode

TEXT_KEYS = ("input_ids", "token_type_ids", "attention_mask")


class StoreSplit(Dataset):
    """Tokenized rows of one stored split (optionally plus augmented rows) with their teacher outputs."""

    def __init__(
        self, columns: dict[str, list], teacher_logits: np.ndarray, probe_logits: np.ndarray
    ) -> None:
        self.columns = columns
        self.teacher_logits = torch.as_tensor(np.asarray(teacher_logits, dtype=np.float32))
        self.probe_logits = torch.as_tensor(np.asarray(probe_logits, dtype=np.float32))
        if not len(self.columns["input_ids"]) == len(self.teacher_logits) == len(self.probe_logits):
            raise ValueError("rows and stored teacher outputs differ in length")

    def __len__(self) -> int:
        return len(self.teacher_logits)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = {key: self.columns[key][i] for key in (*TEXT_KEYS, "labels")}
        item["teacher_logits"] = self.teacher_logits[i]
        item["probe_logits"] = self.probe_logits[i]
        return item

    def subset(self, indices: Sequence[int]) -> StoreSplit:
        idx = list(indices)
        columns = {k: [v[i] for i in idx] for k, v in self.columns.items()}
        return StoreSplit(columns, self.teacher_logits[idx].numpy(), self.probe_logits[idx].numpy())


def load_split(
    store: KnowledgeStore, split: str, limit: int | None = None, with_augmented: bool = False
) -> StoreSplit:
    """Tokenize a stored split with the store's tokenizer; ``limit`` keeps its first rows."""
    tokenizer = store.tokenizer()
    parts = [split] + (["train_aug"] if with_augmented and "train_aug" in store.splits else [])
    columns: dict[str, list] = {key: [] for key in (*TEXT_KEYS, "labels")}
    teacher, probes = [], []
    for part in parts:
        rows = store.rows(part)
        n = len(rows) if limit is None or part != split else min(limit, len(rows))
        encoded = encode(rows.select(range(n)), tokenizer, store.max_length)
        for key in columns:
            columns[key].extend(encoded[key])
        teacher.append(np.asarray(store.teacher_logits(part)[:n]))
        probes.append(np.asarray(store.probe_logits(part)[:n]))
    return StoreSplit(columns, np.concatenate(teacher), np.concatenate(probes))


def collate(batch: list[dict[str, Any]], pad_token_id: int = 0) -> dict[str, torch.Tensor]:
    """Pad token columns to the batch's longest row; stack everything else."""
    length = max(len(item["input_ids"]) for item in batch)
    out: dict[str, torch.Tensor] = {}
    for key in TEXT_KEYS:
        pad = pad_token_id if key == "input_ids" else 0
        out[key] = torch.tensor([list(item[key]) + [pad] * (length - len(item[key])) for item in batch])
    labels = [item["labels"] for item in batch]
    out["labels"] = torch.tensor(labels, dtype=torch.float32 if isinstance(labels[0], float) else torch.long)
    for key in ("teacher_logits", "probe_logits"):
        if key in batch[0]:
            out[key] = torch.stack([item[key] for item in batch])
    return out


def loader(
    data: Dataset, batch_size: int, shuffle: bool, seed: int = 0, pad_token_id: int = 0, num_workers: int = 0
) -> DataLoader:
    """A DataLoader whose shuffle order depends only on ``seed`` (set a new seed per epoch)."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        data,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        collate_fn=partial(collate, pad_token_id=pad_token_id),
        num_workers=num_workers,
    )
