"""Batches for the search and the student: stored rows, tokenized, with the stored teacher outputs.

Everything comes from the knowledge store (rows, tokenizer, teacher and probe logits), so these
stages never need the task files or the teacher.

Under ``torchrun`` each global batch is split across the ranks (:class:`ShardedBatchSampler`): the
batch order depends only on the seed, never on the number of processes, so one process and N
processes step through the same batches, deterministically.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

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
    store: KnowledgeStore, split: str, limit: int | None = None, with_augmented: bool = False, seed: int = 0
) -> StoreSplit:
    """Tokenize a stored split with the store's tokenizer, with its stored teacher outputs.

    ``limit`` keeps a seeded random subset of the split's rows (in stored order), and then only the
    augmented rows made from those rows, so a subset never leaks the other rows through augmentation.
    """
    tokenizer = store.tokenizer()
    rows = store.rows(split)
    keep = np.arange(len(rows))
    if limit is not None and limit < len(rows):
        keep = np.sort(np.random.default_rng(seed).choice(len(rows), size=limit, replace=False))
    parts = [(split, keep)]
    if with_augmented and "train_aug" in store.splits:
        augmented = store.rows("train_aug")
        sources = set(np.asarray(rows["idx"])[keep].tolist())
        parts.append(("train_aug", np.flatnonzero([i in sources for i in augmented["idx"]])))
    columns: dict[str, list] = {key: [] for key in (*TEXT_KEYS, "labels")}
    teacher, probes = [], []
    for part, index in parts:
        encoded = encode(store.rows(part).select(index), tokenizer, store.max_length)
        for key in columns:
            columns[key].extend(encoded[key])
        teacher.append(np.asarray(store.teacher_logits(part))[index])
        probes.append(np.asarray(store.probe_logits(part))[index])
    return StoreSplit(columns, np.concatenate(teacher), np.concatenate(probes))


def collate(batch: Sequence[Mapping[str, Any]], pad_token_id: int = 0) -> dict[str, torch.Tensor]:
    """Right-pad the token columns present to the batch's longest row; stack what else is present.

    Serves store rows (with labels and teacher outputs) and plain encoded rows alike; an attention
    mask is made from the row lengths when the rows have none.
    """
    if not batch:
        raise ValueError("cannot collate an empty batch")
    lengths = [len(item["input_ids"]) for item in batch]
    length = max(lengths)
    out: dict[str, torch.Tensor] = {}
    for key in TEXT_KEYS:
        if key not in batch[0]:
            continue
        pad = pad_token_id if key == "input_ids" else 0
        rows = [list(item[key]) + [pad] * (length - len(item[key])) for item in batch]
        out[key] = torch.tensor(rows, dtype=torch.long)
    if "attention_mask" not in out:
        out["attention_mask"] = (torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]).long()
    if "labels" in batch[0]:
        labels = [item["labels"] for item in batch]
        regression = isinstance(labels[0], float)
        out["labels"] = torch.tensor(labels, dtype=torch.float32 if regression else torch.long)
    for key in ("teacher_logits", "probe_logits"):
        if key in batch[0]:
            out[key] = torch.stack([item[key] for item in batch])
    return out


class ShardedBatchSampler(Sampler[list[int]]):
    """Global batches of ``batch_size`` rows in a seeded order, each split across ``world_size`` ranks.

    Rank ``r`` gets the ``r``-th contiguous part of every global batch (parts differ by at most one
    row). :attr:`shares` gives, per batch, the fraction of the global batch this rank holds: the
    weight of its gradient when the ranks' gradients are summed. A rank left without rows (a last
    batch smaller than the number of ranks) gets the batch's first row with share 0, so that every
    rank runs every step. With ``world_size`` 1 each batch is whole and its share is 1.

    The order is drawn from a generator seeded once with ``seed``: a second pass over the sampler
    (cycling through a small split) continues that generator, and gives a new, reproducible order.
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
        self.size, self.batch_size, self.shuffle = size, batch_size, shuffle
        self.rank, self.world_size = rank, world_size
        self.generator = torch.Generator().manual_seed(seed)
        self.shares = [share for _, share in self._parts(list(range(size)))]

    def _parts(self, order: list[int]) -> Iterator[tuple[list[int], float]]:
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            lo, hi = shard_bounds(len(batch), self.rank, self.world_size)
            yield (batch[lo:hi], (hi - lo) / len(batch)) if hi > lo else (batch[:1], 0.0)

    def __iter__(self) -> Iterator[list[int]]:
        order = (
            torch.randperm(self.size, generator=self.generator).tolist() if self.shuffle else range(self.size)
        )
        for part, _ in self._parts(list(order)):
            yield part

    def __len__(self) -> int:
        return len(self.shares)


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """``[lo, hi)`` of rank ``rank``'s contiguous part of ``n`` rows (parts differ by at most one row)."""
    base, extra = divmod(n, world_size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def loader(
    data: Dataset,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    pad_token_id: int = 0,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """A DataLoader whose order depends only on ``seed`` (set a new seed per epoch).

    With ``world_size`` > 1 it yields this rank's part of each global batch of ``batch_size`` rows;
    :func:`with_shares` pairs each batch with its share of the global batch.
    """
    sampler = ShardedBatchSampler(len(data), batch_size, shuffle, seed, rank, world_size)
    return DataLoader(
        data,
        batch_sampler=sampler,
        collate_fn=partial(collate, pad_token_id=pad_token_id),
        num_workers=num_workers,
    )


def with_shares(batches: DataLoader) -> Iterator[tuple[dict[str, torch.Tensor], float]]:
    """``(batch, share)`` pairs: the share of the global batch that this rank's batch holds."""
    yield from zip(batches, batches.batch_sampler.shares, strict=True)
