"""The knowledge store: everything later stages need from the teacher, computed once.

The search and the student training never run the teacher; they read teacher logits, per-layer probe
logits, the rows they belong to, the tokenizer and the teacher's embedding tables from here. Because
those arrays are only meaningful for the exact teacher and rows they were computed from, the manifest
records hashes of both, and a store that no longer matches is refused with :class:`StoreError`
rather than silently mixing knowledge from different models or data.

Layout (``format_version`` 2)::

    manifest.json                task, data_dir, max_length, num_labels, num_layers, teacher/tokenizer
                                 hashes, splits (rows + fingerprint), teacher_metrics, probe_metrics,
                                 distilled (the distilled token table's settings and sha256)
    tokenizer/                   tokenizer.save_pretrained output
    embeddings.safetensors       the teacher's input tables: word_embeddings [V, H],
                                 position_embeddings [P, H], token_type_embeddings [T, H] (fp32)
    distilled.safetensors        tokens [V, H]: the teacher's outputs per vocabulary entry, PCA-rotated
                                 (see adabert.teacher.static_embeddings); variance [H]
    probes.safetensors           the per-layer probe classifiers (weight, bias, feature mean and std)
    rows/<split>/                datasets.save_to_disk of the rows (text_a, text_b?, label, idx)
    <split>.ids.npy, .offsets.npy, .second.npy   the rows tokenized once, flat (adabert.data.TokenRows)
    <split>.labels.npy           int64 [N] (float32 for regression)
    <split>.teacher_logits.npy   float32 [N, C]
    <split>.probe_logits.npy     float32 [N, L+1, C]

The augmented split ``train_aug`` has no ``rows/`` folder: its text is in ``train_aug.rows.jsonl``
(one JSON object per row) and ``train_aug.source.npy`` / ``train_aug.copy.npy`` say which training
row each one was made from and which copy of it it is; its labels are the teacher's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset, load_from_disk
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from adabert.errors import UserError
from adabert.io import as_os_error, record_absolute, record_path, resolve_recorded, seal_tree
from adabert.tasks import TaskSpec

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2
AUGMENTED = "train_aug"
MANIFEST = "manifest.json"
ROW_COLUMNS = ("text_a", "text_b", "label", "idx")
_WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "tf_model.h5", "flax_model.msgpack")
_FINGERPRINT_CHUNK = 10_000


class StoreError(UserError):
    """A knowledge store that is missing, corrupt, or does not match the teacher or rows it is used with."""


# ---------------------------------------------------------------------------------------------- hashing


def fingerprint(dataset: Dataset) -> str:
    """sha256 over the texts and labels of ``dataset``, in order: the stored arrays are aligned by row."""
    h = hashlib.sha256()
    cols = [c for c in ("text_a", "text_b") if c in dataset.column_names]
    h.update(json.dumps({"columns": cols, "rows": len(dataset)}).encode())
    for start in range(0, len(dataset), _FINGERPRINT_CHUNK):
        batch = dataset[start : start + _FINGERPRINT_CHUNK]
        for c in cols:
            h.update(json.dumps(batch[c], ensure_ascii=False).encode())
        labels = np.asarray(batch["label"])
        labels = labels.astype("<i8") if labels.dtype.kind in "iub" else labels.astype("<f4")
        h.update(labels.tobytes())
    return h.hexdigest()


def sha256_files(files: list[Path]) -> str:
    """sha256 over files' names and contents, in the given order."""
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _sha256_state_dict(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode() + b"\0")
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def weight_files(teacher_dir: str | Path) -> list[Path]:
    """The weight files of a saved model directory (all shards), in a stable order."""
    d = Path(teacher_dir)
    for pattern in _WEIGHT_PATTERNS:
        files = sorted(d.glob(pattern))
        if files:
            return files
    return []


def teacher_hash(teacher: str | Path, model: torch.nn.Module | None = None) -> tuple[str, str]:
    """``(sha256, kind)`` of a teacher's weights.

    A local directory is hashed by its weight files (cheap, no model load); a hub id, which has no
    stable local path, by its loaded ``state_dict`` (loaded here when ``model`` is not given).
    """
    files = weight_files(teacher) if Path(teacher).is_dir() else []
    if files:
        return sha256_files(files), "files"
    if Path(teacher).is_dir():
        raise StoreError(f"{teacher}: no model weight files ({', '.join(_WEIGHT_PATTERNS)}) found")
    if model is None:
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(str(teacher))
    return _sha256_state_dict(model), "state_dict"


def vocab_hash(tokenizer: Any) -> str:
    """sha256 of the tokenizer's token -> id map: ids index the stored embedding tables."""
    items = sorted(tokenizer.get_vocab().items(), key=lambda kv: (kv[1], kv[0]))
    return hashlib.sha256(json.dumps(items, ensure_ascii=False).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------- reading


def _teacher_record(teacher_dir: str | Path, store: Path) -> dict[str, str]:
    """The manifest's teacher path, relative to the store folder (a moved run directory, or one used from
    another working directory, finds its teacher beside the store), and where it was when recorded."""
    if not Path(teacher_dir).is_dir():  # not a local folder: recorded as given
        return {"path": str(teacher_dir)}
    return {"path": record_path(teacher_dir, store), "abspath": record_absolute(teacher_dir)}


def _rerun_hint(path: Path, teacher: str | None = None) -> str:
    return f"re-run `adabert teacher probe --teacher {teacher or 'TEACHER_DIR'} --output-dir {path}`"


class KnowledgeStore:
    """A validated, read-only view of a knowledge store directory (arrays are memory-mapped)."""

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        self.path = path
        self.manifest = manifest
        self._arrays: dict[str, np.ndarray] = {}

    # -- opening and validation

    @classmethod
    def open(cls, path: str | Path) -> KnowledgeStore:
        """Open and validate a store: manifest version, files present, array shapes match row counts."""
        path = Path(path)
        hint = _rerun_hint(path)
        mf = path / MANIFEST
        if not mf.is_file():
            what = "does not exist" if not path.exists() else f"has no {MANIFEST}"
            raise StoreError(f"knowledge store {path} {what}; {hint}")
        try:
            manifest = json.loads(mf.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise StoreError(f"{mf} is corrupt ({err}); {hint}") from None
        if not isinstance(manifest, dict):
            raise StoreError(f"{mf} is corrupt (not a JSON object); {hint}")
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise StoreError(
                f"{path}: store format version {version!r}, this adabert reads version "
                f"{FORMAT_VERSION}; {hint}"
            )
        for key in ("task", "max_length", "num_labels", "num_layers", "teacher", "tokenizer", "splits"):
            if key not in manifest:
                raise StoreError(f"{mf} is missing {key!r}; {hint}")
        store = cls(path, manifest)
        store._validate()
        return store

    def _validate(self) -> None:
        recorded = self.manifest["teacher"].get("path")
        hint = _rerun_hint(self.path, str(self.teacher_path) if recorded else None)
        if not (self.path / "tokenizer").is_dir():
            raise StoreError(f"{self.path}: tokenizer/ is missing; {hint}")
        emb = self.path / "embeddings.safetensors"
        try:
            with safe_open(str(emb), framework="pt") as fh:
                keys = set(fh.keys())
                word_shape = None
                if "word_embeddings" in keys:
                    word_shape = tuple(fh.get_slice("word_embeddings").get_shape())
        except FileNotFoundError:
            raise StoreError(f"{emb} is missing; {hint}") from None
        except Exception as err:  # safetensors raises its own error types for truncated headers
            raise StoreError(f"{emb} is corrupt ({err}); {hint}") from None
        want = {"word_embeddings", "position_embeddings", "token_type_embeddings"}
        if not want <= keys:
            raise StoreError(f"{emb} lacks tables {sorted(want - keys)}; {hint}")
        cfg = self.manifest["teacher"].get("config", {})
        if word_shape != (cfg.get("vocab_size"), cfg.get("hidden_size")):
            raise StoreError(
                f"{emb}: word_embeddings shape {word_shape} does not match the manifest's "
                f"teacher config; {hint}"
            )
        c, n_layers = self.num_labels, self.num_layers
        label_dtype = np.float32 if self.task.is_regression else np.int64
        for split, info in self.manifest["splits"].items():
            n = info["rows"]
            if split != AUGMENTED and not (self.path / "rows" / split).is_dir():
                raise StoreError(f"{self.path}: rows/{split}/ is missing; {hint}")
            expected = [
                ("teacher_logits", (n, c), np.float32),
                ("probe_logits", (n, n_layers + 1, c), np.float32),
                ("labels", (n,), label_dtype),
                ("offsets", (n + 1,), np.int64),
                ("second", (n,), np.int32),
            ]
            if split == AUGMENTED:
                expected += [("source", (n,), np.int64), ("copy", (n,), np.int32)]
            for kind, shape, dtype in expected:
                arr = self._load(split, kind, hint)
                if arr.shape != shape or arr.dtype != dtype:
                    raise StoreError(
                        f"{self.path}: {split}.{kind}.npy has shape {arr.shape} {arr.dtype}, "
                        f"manifest says {shape} {np.dtype(dtype)}; {hint}"
                    )
            ids, offsets = self._load(split, "ids", hint), self._load(split, "offsets", hint)
            if ids.dtype != np.int32 or ids.ndim != 1 or (n and int(offsets[-1]) != len(ids)):
                raise StoreError(f"{self.path}: {split}.ids.npy does not match its offsets; {hint}")

    def _load(self, split: str, kind: str, hint: str | None = None) -> np.ndarray:
        key = f"{split}.{kind}"
        if key not in self._arrays:
            f = self.path / f"{key}.npy"
            try:
                self._arrays[key] = np.load(f, mmap_mode="r")
            except FileNotFoundError:
                raise StoreError(f"{f} is missing; {hint or _rerun_hint(self.path)}") from None
            except (ValueError, OSError) as err:
                raise StoreError(f"{f} is corrupt ({err}); {hint or _rerun_hint(self.path)}") from None
        return self._arrays[key]

    def _split_info(self, split: str) -> dict[str, Any]:
        try:
            return self.manifest["splits"][split]
        except KeyError:
            raise StoreError(f"{self.path}: no split {split!r}; stored splits: {self.splits}") from None

    # -- metadata

    @property
    def task(self) -> TaskSpec:
        return TaskSpec.from_dict(self.manifest["task"])

    @property
    def num_labels(self) -> int:
        return int(self.manifest["num_labels"])

    @property
    def num_layers(self) -> int:
        """Teacher encoder layers L; the store holds L+1 probes (0 = embeddings)."""
        return int(self.manifest["num_layers"])

    @property
    def max_length(self) -> int:
        return int(self.manifest["max_length"])

    @property
    def splits(self) -> list[str]:
        return list(self.manifest["splits"])

    @property
    def dev_split(self) -> str:
        """The split model selection uses: the task's default dev split (e.g. MNLI matched)."""
        name = self.task.default_dev
        if name in self.manifest["splits"]:
            return name
        devs = [s for s in self.splits if s.startswith("dev")]
        if not devs:
            raise StoreError(f"{self.path}: no dev split stored (splits: {self.splits})")
        return devs[0]

    # -- data

    def rows(self, split: str) -> Dataset:
        """The split's text rows (text_a, text_b?, label, idx); for an augmented split, label is the
        teacher's and idx that of the training row the copy was made from."""
        info = self._split_info(split)
        text = self.path / f"{split}.rows.jsonl"
        try:
            if text.is_file():
                source = np.asarray(self._load(split, "source"))
                train_idx = np.asarray(self.rows("train")["idx"])
                ds = Dataset.from_json(str(text), keep_in_memory=True)
                ds = ds.add_column("label", self.labels(split).tolist())
                ds = ds.add_column("idx", train_idx[source].tolist())
            else:
                ds = load_from_disk(str(self.path / "rows" / split))
        except Exception as err:  # datasets raises FileNotFoundError / ArrowInvalid / JSON errors
            raise StoreError(
                f"{self.path}: rows/{split} cannot be read ({err}); {_rerun_hint(self.path)}"
            ) from None
        if len(ds) != info["rows"]:
            raise StoreError(
                f"{self.path}: rows/{split} has {len(ds)} rows, manifest says {info['rows']}; "
                f"{_rerun_hint(self.path)}"
            )
        return ds

    def teacher_logits(self, split: str) -> np.ndarray:
        self._split_info(split)
        return self._load(split, "teacher_logits")

    def probe_logits(self, split: str) -> np.ndarray:
        self._split_info(split)
        return self._load(split, "probe_logits")

    def labels(self, split: str) -> np.ndarray:
        """Gold labels (the teacher's for augmented rows), int64 or float32 for regression."""
        self._split_info(split)
        return self._load(split, "labels")

    def tokens(self, split: str) -> Any:
        """The split's rows as tokenized once with the store's tokenizer (an adabert.data.TokenRows)."""
        from adabert.data import TokenRows

        self._split_info(split)
        return TokenRows(*(self._load(split, name) for name in ("ids", "offsets", "second")))

    def augment_sources(self, split: str = AUGMENTED) -> tuple[np.ndarray, np.ndarray]:
        """For each augmented row: the training row it was made from, and which copy of it it is."""
        self._split_info(split)
        return self._load(split, "source"), self._load(split, "copy")

    @property
    def pad_token_id(self) -> int:
        return int(self.manifest["tokenizer"].get("pad_token_id") or 0)

    def distilled_tokens(self, width: int | None = None) -> torch.Tensor:
        """The distilled token table [V, width] (its first ``width`` principal directions).

        Refused when the file is not the one this store's manifest recorded (another teacher's table
        copied in, or a damaged file): its sha256 and its teacher must match.
        """
        from adabert.teacher.static_embeddings import table_hash

        info = self.manifest.get("distilled")
        hint = _rerun_hint(self.path)
        if not info:
            raise StoreError(f"{self.path}: no distilled token table; {hint}")
        try:
            tables = load_file(str(self.path / "distilled.safetensors"))
        except Exception as err:
            raise StoreError(f"{self.path}/distilled.safetensors cannot be read ({err}); {hint}") from None
        same_teacher = info.get("teacher") == self.manifest["teacher"]["sha256"]
        if not same_teacher or table_hash(tables) != info.get("sha256"):
            raise StoreError(
                f"{self.path}/distilled.safetensors is not the table distilled from this "
                f"store's teacher (sha256 or teacher differ from the manifest); {hint}"
            )
        table = tables["tokens"]
        if width is not None and width > table.shape[1]:
            raise StoreError(
                f"{self.path}: the distilled table is {table.shape[1]} wide, {width} were "
                "asked; use a student width of at most the teacher's hidden size"
            )
        return table[:, : width or table.shape[1]].contiguous()

    def tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(self.path / "tokenizer"))

    def embeddings(self) -> dict[str, torch.Tensor]:
        """The teacher's input tables: word, position and token-type embeddings."""
        try:
            return load_file(str(self.path / "embeddings.safetensors"))
        except Exception as err:
            raise StoreError(
                f"{self.path}/embeddings.safetensors cannot be read ({err}); {_rerun_hint(self.path)}"
            ) from None

    @property
    def teacher_path(self) -> Path:
        """The teacher the store was built from: recorded relative to the store folder (older stores:
        as the probe command was given it, resolved against the working directory)."""
        recorded = self.manifest["teacher"]
        return resolve_recorded(str(recorded["path"]), self.path, recorded.get("abspath"))

    # -- consistency checks

    def check_teacher(self, teacher_dir: str | Path) -> None:
        """Refuse a teacher whose weights or vocabulary differ from the one this store was built from."""
        from transformers import AutoTokenizer

        recorded = self.manifest["teacher"]
        hint = _rerun_hint(self.path, str(teacher_dir))
        sha, kind = teacher_hash(teacher_dir)
        if kind != recorded.get("hash_kind", "files") or sha != recorded["sha256"]:
            raise StoreError(
                f"teacher {teacher_dir} differs from the one the store {self.path} was built "
                f"from ({self.teacher_path}): weights sha256 {sha[:12]}… != "
                f"{recorded['sha256'][:12]}…; {hint}"
            )
        vocab = vocab_hash(AutoTokenizer.from_pretrained(str(teacher_dir)))
        if vocab != self.manifest["tokenizer"]["vocab_sha256"]:
            raise StoreError(
                f"tokenizer of {teacher_dir} differs from the store's (vocab sha256 "
                f"{vocab[:12]}… != {self.manifest['tokenizer']['vocab_sha256'][:12]}…); {hint}"
            )

    def check_rows(self, split: str, dataset: Dataset) -> None:
        """Refuse rows (texts, labels or order) other than those the stored arrays were computed on."""
        info = self._split_info(split)
        fp = fingerprint(dataset)
        if fp != info["fingerprint"]:
            raise StoreError(
                f"{split} rows differ from the store {self.path} ({len(dataset)} rows, "
                f"fingerprint {fp[:12]}… vs {info['rows']} rows, {info['fingerprint'][:12]}…); "
                f"the data, train/dev limits or seed changed; {_rerun_hint(self.path)}"
            )

    def __repr__(self) -> str:
        sizes = {s: i["rows"] for s, i in self.manifest["splits"].items()}
        name = self.manifest["task"].get("name")
        return f"KnowledgeStore({str(self.path)!r}, task={name!r}, splits={sizes})"


# ---------------------------------------------------------------------------------------------- writing


def _embedding_tables(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The teacher's input tables; ones a model family lacks are written as zeros so the keys are fixed."""
    word = model.get_input_embeddings().weight.detach().float().cpu().contiguous()
    emb = getattr(model.base_model, "embeddings", None)
    hidden = word.shape[1]
    tables = {"word_embeddings": word}
    for name, rows in (
        ("position_embeddings", model.config.max_position_embeddings),
        ("token_type_embeddings", getattr(model.config, "type_vocab_size", 1) or 1),
    ):
        module = getattr(emb, name, None)
        if isinstance(module, torch.nn.Embedding):
            tables[name] = module.weight.detach().float().cpu().contiguous()
        else:
            logger.warning("teacher has no %s table; writing zeros [%d, %d]", name, rows, hidden)
            tables[name] = torch.zeros(rows, hidden)
    return tables


def _save_npy(path: Path, array: np.ndarray, dtype: Any = np.float32) -> None:
    with open(path, "wb") as fh:
        np.save(fh, np.ascontiguousarray(array, dtype=dtype))


def write_split(
    directory: Path,
    split: str,
    tokens: Any,
    labels: np.ndarray,
    teacher_logits: np.ndarray,
    probe_logits: np.ndarray,
    regression: bool,
) -> None:
    """The arrays of one split: token rows, labels, teacher and probe logits."""
    tokens.save(directory, split)
    _save_npy(directory / f"{split}.labels.npy", labels, np.float32 if regression else np.int64)
    _save_npy(directory / f"{split}.teacher_logits.npy", teacher_logits)
    _save_npy(directory / f"{split}.probe_logits.npy", probe_logits)


def write_store(
    path: str | Path,
    *,
    task: TaskSpec,
    data_dir: str | None,
    max_length: int,
    teacher_dir: str | Path,
    model: torch.nn.Module,
    tokenizer: Any,
    splits: dict[str, tuple],
    teacher_metrics: dict[str, dict[str, float]],
    probe_metrics: list[dict[str, Any]],
    extra: Callable[[Path], None] | None = None,
    workdir: Path | None = None,
    distilled: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None,
    augmented: dict[str, Any] | None = None,
) -> KnowledgeStore:
    """Write a complete store into a work dir beside ``path`` and rename it into place.

    ``splits`` maps a split name to ``(rows, teacher_logits, probe_logits)`` and optionally its
    ``TokenRows`` (else the rows are tokenized here with ``tokenizer`` and ``max_length``).
    ``workdir``: a folder beside ``path`` that already holds streamed parts of the store (the
    augmented split, whose manifest entry is ``augmented``); by default a new temporary one.
    ``distilled``: the distilled token tables and their settings. A killed run never leaves a half
    store, and an existing store at ``path`` is replaced only once the new one is complete.
    ``extra(tmp_dir)`` may add further files (reports, plots) before the rename.
    """
    from adabert.teacher.static_embeddings import table_hash

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    num_layers = int(model.config.num_hidden_layers)
    manifest = _manifest(
        path, teacher_dir, model, tokenizer, task, data_dir, max_length, teacher_metrics, probe_metrics
    )
    with _building(path, workdir) as tmp:
        tokenizer.save_pretrained(str(tmp / "tokenizer"))
        save_file(_embedding_tables(model), str(tmp / "embeddings.safetensors"))
        for split, parts in splits.items():
            manifest["splits"][split] = _write_rows(
                tmp, path, split, parts, task, tokenizer, max_length, num_layers
            )
        if augmented is not None:
            manifest["splits"][AUGMENTED] = augmented
        if distilled is not None:
            tables, settings = distilled
            save_file(tables, str(tmp / "distilled.safetensors"))
            manifest["distilled"] = {
                **settings,
                "sha256": table_hash(tables),
                "teacher": manifest["teacher"]["sha256"],
            }
        if extra is not None:
            extra(tmp)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        seal_tree(tmp)  # the usual modes (mkdtemp makes an owner-only folder), every file on disk
        _replace_dir(tmp, path)
    logger.info(
        "knowledge store written to %s (%s)",
        path,
        ", ".join(f"{s}: {i['rows']} rows" for s, i in manifest["splits"].items()),
    )
    return KnowledgeStore.open(path)


def _manifest(
    path: Path,
    teacher_dir: str | Path,
    model: torch.nn.Module,
    tokenizer: Any,
    task: TaskSpec,
    data_dir: str | None,
    max_length: int,
    teacher_metrics: dict[str, dict[str, float]],
    probe_metrics: list[dict[str, Any]],
) -> dict[str, Any]:
    """The store's manifest but for its splits (filled in as they are written) and the distilled table:
    what the store was made from, so that a reader can check the teacher, tokenizer and rows it is given."""
    sha, hash_kind = teacher_hash(teacher_dir, model)
    cfg = model.config
    return {
        "format_version": FORMAT_VERSION,
        "task": task.to_dict(),
        "data_dir": None if data_dir is None else record_absolute(data_dir),  # outside the run: where it is
        "max_length": int(max_length),
        "num_labels": int(task.num_labels),
        "num_layers": int(model.config.num_hidden_layers),
        "teacher": {
            **_teacher_record(teacher_dir, path),
            "sha256": sha,
            "hash_kind": hash_kind,
            "config": {
                "hidden_size": cfg.hidden_size,
                "vocab_size": cfg.vocab_size,
                "max_position_embeddings": cfg.max_position_embeddings,
                "num_hidden_layers": cfg.num_hidden_layers,
                "model_type": cfg.model_type,
            },
        },
        "tokenizer": {
            "name_or_path": str(teacher_dir),
            "vocab_sha256": vocab_hash(tokenizer),
            "pad_token_id": tokenizer.pad_token_id,
        },
        "splits": {},
        "teacher_metrics": teacher_metrics,
        "probe_metrics": probe_metrics,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


@contextmanager
def _building(path: Path, workdir: Path | None) -> Iterator[Path]:
    """The folder the store is built in: ``workdir``, else a new temporary one beside ``path``. On any
    failure a temporary one is removed (a caller's work dir holds resumable parts: the caller decides) and
    an OS error is reported as the store's."""
    tmp = workdir or Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
    except BaseException as err:
        if workdir is None:
            shutil.rmtree(tmp, ignore_errors=True)
        translated = as_os_error(err, path) if isinstance(err, Exception) else err
        if translated is not err:
            raise translated from err
        raise


def _check_logits(
    path: Path,
    split: str,
    n: int,
    t_logits: np.ndarray,
    p_logits: np.ndarray,
    num_labels: int,
    num_layers: int,
) -> None:
    """Refuse logits of other shapes than the split's rows and the teacher's labels and layers, and NaN or
    infinite ones: a broken teacher, from which nothing downstream could learn."""
    if t_logits.shape != (n, num_labels) or p_logits.shape != (n, num_layers + 1, num_labels):
        raise ValueError(
            f"split {split!r}: {n} rows but teacher logits {t_logits.shape} and probe "
            f"logits {p_logits.shape}; expected ({n}, {num_labels}) and "
            f"({n}, {num_layers + 1}, {num_labels})"
        )
    for kind, values in (("teacher", t_logits), ("probe", p_logits)):
        bad = np.flatnonzero(~np.isfinite(values.reshape(n, -1)).all(axis=1))
        if len(bad):
            raise StoreError(
                f"{path}: the {kind} logits of split {split!r} are NaN or infinite on "
                f"{len(bad)} of {n} rows (first: row {int(bad[0])}); the teacher or "
                "its probes diverged: fine-tune or probe again with a lower --lr"
            )


def _write_rows(
    tmp: Path,
    path: Path,
    split: str,
    parts: tuple,
    task: TaskSpec,
    tokenizer: Any,
    max_length: int,
    num_layers: int,
) -> dict[str, Any]:
    """One split's rows (their text columns) and arrays, from ``parts`` = ``(rows, teacher_logits,
    probe_logits[, TokenRows])`` (tokenized here when the tokens are not given), once its logits are
    checked; returns its manifest entry, whose fingerprint later tells whether a dataset is these rows."""
    from adabert.data import TokenRows

    rows, t_logits, p_logits, *tokens = parts
    n = len(rows)
    t_logits, p_logits = np.asarray(t_logits), np.asarray(p_logits)
    _check_logits(path, split, n, t_logits, p_logits, int(task.num_labels), num_layers)
    rows = rows.select_columns([c for c in ROW_COLUMNS if c in rows.column_names])
    texts_b = rows["text_b"] if "text_b" in rows.column_names else None
    token_rows = tokens[0] if tokens else TokenRows.tokenize(rows["text_a"], texts_b, tokenizer, max_length)
    rows.flatten_indices().save_to_disk(str(tmp / "rows" / split))
    write_split(tmp, split, token_rows, np.asarray(rows["label"]), t_logits, p_logits, task.is_regression)
    return {"rows": n, "fingerprint": fingerprint(rows)}


def _replace_dir(new: Path, path: Path) -> None:
    """Move ``new`` to ``path``, putting any old directory aside first and deleting it only afterwards."""
    if not path.exists():
        os.replace(new, path)
        return
    if not path.is_dir():
        raise StoreError(f"{path} exists and is not a directory; refusing to replace it")
    old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
    os.rmdir(old)
    os.replace(path, old)
    try:
        os.replace(new, path)
    except BaseException:
        os.replace(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)
