"""Batches for the search and the student: stored token rows with the stored teacher outputs.

Everything comes from the knowledge store (token ids, labels, teacher and probe logits), so these
stages never need the task files, the tokenizer or the teacher. Rows are kept flat and memory-mapped
(:class:`TokenRows`: one int32 array of ids plus offsets), and a batch is cut and padded with a few
NumPy operations, so a million augmented rows cost no Python objects per row and no tokenizer pass.

Under ``torchrun`` each global batch is split across the ranks (:class:`ShardedBatchSampler`): the
batch order depends only on the seed, never on the number of processes, so one process and N
processes step through the same batches, deterministically.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

TEXT_KEYS = ("input_ids", "token_type_ids", "attention_mask")
TOKEN_FILES = ("ids", "offsets", "second")


@dataclass
class TokenRows:
    """Tokenized rows, flat: row ``i`` is ``ids[offsets[i]:offsets[i + 1]]``; its second segment
    (the second sentence of a pair) starts at position ``second[i]`` (its length when there is none)."""

    ids: np.ndarray  # int32 [total tokens]
    offsets: np.ndarray  # int64 [rows + 1]
    second: np.ndarray  # int32 [rows]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @classmethod
    def tokenize(
        cls,
        texts_a: Sequence[str],
        texts_b: Sequence[str] | None,
        tokenizer: Any,
        max_length: int,
        chunk: int = 8192,
    ) -> TokenRows:
        """Tokenize like the teacher's fine-tuning (truncation to ``max_length``, pairs as pairs)."""
        ids, lengths, second = [], [], []
        for start in range(0, len(texts_a), chunk):
            a = list(texts_a[start : start + chunk])
            b = None if texts_b is None else list(texts_b[start : start + chunk])
            enc = tokenizer(
                *((a, b) if b is not None else (a,)),
                truncation=True,
                max_length=max_length,
                return_token_type_ids=True,
                return_attention_mask=False,
            )
            for row_ids, types in zip(enc["input_ids"], enc["token_type_ids"]):
                ids.append(np.asarray(row_ids, dtype=np.int32))
                lengths.append(len(row_ids))
                ones = np.flatnonzero(np.asarray(types))
                second.append(int(ones[0]) if b is not None and len(ones) else len(row_ids))
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int32)
        return cls(flat.astype(np.int32), offsets, np.asarray(second, dtype=np.int32))

    def save(self, directory: Path, prefix: str) -> None:
        for name in TOKEN_FILES:
            with open(directory / f"{prefix}.{name}.npy", "wb") as fh:
                np.save(fh, getattr(self, name))

    @classmethod
    def load(cls, directory: Path, prefix: str) -> TokenRows:
        return cls(*(np.load(directory / f"{prefix}.{name}.npy", mmap_mode="r") for name in TOKEN_FILES))

    @staticmethod
    def concatenate(parts: Sequence[TokenRows]) -> TokenRows:
        shifts = np.cumsum([0] + [len(p.ids) for p in parts[:-1]])
        offsets = [parts[0].offsets[:1]] + [p.offsets[1:] + s for p, s in zip(parts, shifts)]
        return TokenRows(
            np.concatenate([p.ids for p in parts]),
            np.concatenate(offsets).astype(np.int64),
            np.concatenate([p.second for p in parts]),
        )

    def batch(self, rows: np.ndarray, pad_token_id: int = 0) -> dict[str, torch.Tensor]:
        """``input_ids``, ``attention_mask``, ``token_type_ids`` [len(rows), longest], right-padded."""
        rows = np.asarray(rows, dtype=np.int64)
        start = np.asarray(self.offsets[rows], dtype=np.int64)
        length = np.asarray(self.offsets[rows + 1], dtype=np.int64) - start
        width = max(1, int(length.max())) if len(rows) else 1
        positions = np.arange(width)
        mask = positions[None, :] < length[:, None]
        ids = np.full((len(rows), width), pad_token_id, dtype=np.int64)
        ids[mask] = self.ids[(start[:, None] + positions[None, :])[mask]]
        types = mask & (positions[None, :] >= np.asarray(self.second[rows])[:, None])
        return {
            "input_ids": torch.from_numpy(ids),
            "attention_mask": torch.from_numpy(mask.astype(np.int64)),
            "token_type_ids": torch.from_numpy(types.astype(np.int64)),
        }


class StoreSplit(Dataset):
    """Token rows of one stored split (optionally plus augmented rows) with their teacher outputs.

    ``__getitems__`` returns a whole padded batch (the DataLoader fetches a batch at once);
    ``__getitem__`` one row as plain lists, for code that collates rows itself.
    """

    def __init__(
        self,
        tokens: TokenRows,
        labels: np.ndarray,
        teacher_logits: np.ndarray,
        probe_logits: np.ndarray,
        index: np.ndarray | None = None,
        pad_token_id: int = 0,
    ) -> None:
        self.tokens, self.labels = tokens, labels
        self.teacher_logits, self.probe_logits = teacher_logits, probe_logits
        self.index = np.arange(len(labels)) if index is None else np.asarray(index, dtype=np.int64)
        self.pad_token_id = pad_token_id
        if not len(tokens) == len(labels) == len(teacher_logits) == len(probe_logits):
            raise ValueError("rows and stored teacher outputs differ in length")

    def __len__(self) -> int:
        return len(self.index)

    @property
    def lengths(self) -> np.ndarray:
        return self.tokens.lengths[self.index]

    @property
    def regression(self) -> bool:
        return self.labels.dtype.kind == "f"

    def subset(self, positions: Sequence[int]) -> StoreSplit:
        return StoreSplit(
            self.tokens,
            self.labels,
            self.teacher_logits,
            self.probe_logits,
            self.index[np.asarray(positions, dtype=np.int64)],
            self.pad_token_id,
        )

    def __getitems__(self, positions: Sequence[int]) -> dict[str, torch.Tensor]:
        rows = self.index[np.asarray(positions, dtype=np.int64)]
        batch = self.tokens.batch(rows, self.pad_token_id)
        labels = np.asarray(self.labels[rows])
        batch["labels"] = torch.from_numpy(labels.astype(np.float32 if self.regression else np.int64))
        batch["teacher_logits"] = torch.from_numpy(np.asarray(self.teacher_logits[rows], dtype=np.float32))
        batch["probe_logits"] = torch.from_numpy(np.asarray(self.probe_logits[rows], dtype=np.float32))
        return batch

    def __getitem__(self, position: int) -> dict[str, Any]:
        batch = self.__getitems__([position])
        mask = batch["attention_mask"][0].bool()
        item = {k: batch[k][0][mask].tolist() for k in TEXT_KEYS}
        item["labels"] = batch["labels"][0].item()
        item["teacher_logits"], item["probe_logits"] = batch["teacher_logits"][0], batch["probe_logits"][0]
        return item


def load_split(
    store: Any,
    split: str,
    limit: int | None = None,
    with_augmented: bool = False,
    seed: int = 0,
    augment_copies: int | None = None,
    rows: np.ndarray | None = None,
    first_copy: int = 0,
) -> StoreSplit:
    """A stored split with its teacher outputs, memory-mapped.

    ``limit`` keeps a seeded random subset of the split's rows (``rows``: these rows), and then only
    the augmented rows made from those rows, so a subset never leaks the other rows through
    augmentation. ``augment_copies`` keeps at most that many augmented copies of each row (all
    stored copies when None): the stored copies ``first_copy``, ``first_copy + 1``, ... (cycling), so
    a loop that moves ``first_copy`` on each epoch sees fresh copies while they last.
    """
    total = len(store.labels(split))
    keep = np.arange(total) if rows is None else np.asarray(rows, dtype=np.int64)
    if limit is not None and limit < len(keep):
        keep = np.sort(np.random.default_rng(seed).choice(keep, size=limit, replace=False))
    parts = [(split, keep)]
    if with_augmented and split == "train" and "train_aug" in store.splits:
        source, copy = store.augment_sources("train_aug")
        chosen = np.zeros(total, dtype=bool)
        chosen[keep] = True
        wanted = chosen[source]
        if augment_copies is not None:
            stored = int(copy.max()) + 1 if len(copy) else 1
            wanted &= (copy - first_copy) % stored < augment_copies
        parts.append(("train_aug", np.flatnonzero(wanted)))
    splits = [
        (store.tokens(name), store.labels(name), store.teacher_logits(name), store.probe_logits(name))
        for name, _ in parts
    ]
    pad = store.pad_token_id
    if len(parts) == 1:
        tokens, labels, teacher, probes = splits[0]
        return StoreSplit(tokens, labels, teacher, probes, keep, pad)
    tokens = TokenRows.concatenate([s[0] for s in splits])
    shift = len(splits[0][1])
    return StoreSplit(
        tokens,
        np.concatenate([s[1] for s in splits]),
        np.concatenate([s[2] for s in splits]),
        np.concatenate([s[3] for s in splits]),
        np.concatenate([keep, parts[1][1] + shift]),
        pad,
    )


def collate(batch: Sequence[Mapping[str, Any]], pad_token_id: int = 0) -> dict[str, torch.Tensor]:
    """Right-pad the token columns present to the batch's longest row; stack what else is present.

    Serves plain encoded rows (lists of ids, e.g. a ``datasets`` encoding); an attention mask is made
    from the row lengths when the rows have none. A batch a :class:`StoreSplit` already padded passes
    through unchanged.
    """
    if isinstance(batch, Mapping):
        return dict(batch)
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
            out[key] = torch.stack([torch.as_tensor(item[key]) for item in batch])
    return out


class ShardedBatchSampler(Sampler[list[int]]):
    """Global batches of ``batch_size`` rows in a seeded order, each split across ``world_size`` ranks.

    With ``lengths``, shuffled batches hold rows of similar length (rows are shuffled, cut into groups
    of ``group`` batches, sorted by length inside each group, batched, and the batches shuffled): far
    less padding, the same randomness between epochs. Rank ``r`` gets the ``r``-th contiguous part of
    every global batch (parts differ by at most one row). :attr:`shares` gives, per batch, the
    fraction of the global batch this rank holds: the weight of its gradient when the ranks' gradients
    are summed. A rank left without rows (a last batch smaller than the number of ranks) gets the
    batch's first row with share 0, so that every rank runs every step. With ``world_size`` 1 each
    batch is whole and its share is 1.

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
        lengths: np.ndarray | None = None,
        group: int = 50,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
        self.size, self.batch_size, self.shuffle = size, batch_size, shuffle
        self.rank, self.world_size = rank, world_size
        self.lengths, self.group = lengths, group
        self.generator = torch.Generator().manual_seed(seed)
        # every batch is full but the last: the shares depend on the sizes alone
        sizes = [batch_size] * (size // batch_size) + ([size % batch_size] if size % batch_size else [])
        self.shares = [share for _, share in self._parts([list(range(n)) for n in sizes])]

    def _batches(self, order: list[int]) -> list[list[int]]:
        bs = self.batch_size
        if self.lengths is None or not self.shuffle:
            return [order[i : i + bs] for i in range(0, len(order), bs)]
        lengths = np.asarray(self.lengths)
        batches = []
        for start in range(0, len(order), bs * self.group):
            chunk = np.asarray(order[start : start + bs * self.group])
            chunk = chunk[np.argsort(-lengths[chunk], kind="stable")].tolist()
            batches += [chunk[i : i + bs] for i in range(0, len(chunk), bs)]
        # a short last batch stays last: every other batch keeps the full size
        head = [b for b in batches if len(b) == bs]
        tail = [b for b in batches if len(b) != bs]
        perm = torch.randperm(len(head), generator=self.generator).tolist()
        return [head[i] for i in perm] + tail

    def _parts(self, batches: list[list[int]]) -> Iterator[tuple[list[int], float]]:
        for batch in batches:
            lo, hi = shard_bounds(len(batch), self.rank, self.world_size)
            yield (batch[lo:hi], (hi - lo) / len(batch)) if hi > lo else (batch[:1], 0.0)

    def __iter__(self) -> Iterator[list[int]]:
        order = (
            torch.randperm(self.size, generator=self.generator).tolist() if self.shuffle else range(self.size)
        )
        for part, _ in self._parts(self._batches(list(order))):
            yield part

    def __len__(self) -> int:
        return len(self.shares)


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """``[lo, hi)`` of rank ``rank``'s contiguous part of ``n`` rows (parts differ by at most one row)."""
    base, extra = divmod(n, world_size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def scoring_loader(rows: StoreSplit, batch_size: int, ctx: Any, device: torch.device) -> DataLoader:
    """This rank's contiguous part of ``rows``, in order, to score on (none when there are more ranks
    than rows); the ranks' parts are gathered in rank order afterwards."""
    lo, hi = shard_bounds(len(rows), ctx.rank, ctx.world_size)
    pin = device.type == "cuda"
    return loader(
        rows.subset(range(lo, hi)), batch_size, False, pad_token_id=rows.pad_token_id, pin_memory=pin
    )


def loader(
    data: Dataset,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    pad_token_id: int = 0,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
    group_by_length: bool = False,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader whose order depends only on ``seed`` (set a new seed per epoch).

    With ``world_size`` > 1 it yields this rank's part of each global batch of ``batch_size`` rows;
    :func:`with_shares` pairs each batch with its share of the global batch. ``group_by_length``
    batches rows of similar length (a :class:`StoreSplit` knows its lengths). ``pin_memory`` (for a
    CUDA device) puts each batch in page-locked host memory, so its copy to the GPU need not block.
    """
    lengths = getattr(data, "lengths", None) if group_by_length else None
    sampler = ShardedBatchSampler(len(data), batch_size, shuffle, seed, rank, world_size, lengths)
    return DataLoader(
        data,
        batch_sampler=sampler,
        collate_fn=partial(collate, pad_token_id=pad_token_id),
        num_workers=num_workers,
        pin_memory=pin_memory,
    )


def training_loader(
    rows: StoreSplit, batch_size: int, seed: int, ctx: Any, device: torch.device, num_workers: int = 0
) -> DataLoader:
    """This rank's part of each shuffled global batch of ``rows``, batched by similar length, in an
    order that depends only on ``seed`` (a new one per epoch)."""
    return loader(
        rows,
        batch_size,
        True,
        seed,
        rows.pad_token_id,
        num_workers,
        ctx.rank,
        ctx.world_size,
        group_by_length=True,
        pin_memory=device.type == "cuda",
    )


def with_shares(batches: DataLoader) -> Iterator[tuple[dict[str, torch.Tensor], float]]:
    """``(batch, share)`` pairs: the share of the global batch that this rank's batch holds."""
    yield from zip(batches, batches.batch_sampler.shares, strict=True)


def steps(size: int, batch_size: int) -> int:
    return math.ceil(size / batch_size)
