"""The knowledge store: everything later stages need from the teacher, computed once.

The search and the student training never run the teacher; they read teacher logits, per-layer probe
logits, the rows they belong to, the tokenizer and the teacher's embedding tables from here. Because
those arrays are only meaningful for the exact teacher and rows they were computed from, the manifest
records hashes of both, and a store that no longer matches is refused with :class:`StoreError`
rather than silently mixing knowledge from different models or data.

Layout (``format_version`` 1)::

    manifest.json                task, data_dir, max_length, num_labels, num_layers, teacher/tokenizer
                                 hashes, splits (rows + fingerprint), teacher_metrics, probe_metrics
    tokenizer/                   tokenizer.save_pretrained output
    embeddings.safetensors       word_embeddings [V, H], position_embeddings [P, H],
                                 token_type_embeddings [T, H] (fp32)
    rows/<split>/                datasets.save_to_disk of the rows (text_a, text_b?, label, idx)
    <split>.teacher_logits.npy   float32 [N, C]
    <split>.probe_logits.npy     float32 [N, L+1, C]
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset, load_from_disk
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from adabert.tasks import TaskSpec

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ROW_COLUMNS = ("text_a", "text_b", "label", "idx")
_WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "tf_model.h5", "flax_model.msgpack")
_FINGERPRINT_CHUNK = 10_000


class StoreError(ValueError):
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


def _sha256_files(files: list[Path]) -> str:
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
        return _sha256_files(files), "files"
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
            raise StoreError(f"{path}: store format version {version!r}, this adabert reads version "
                             f"{FORMAT_VERSION}; {hint}")
        for key in ("task", "max_length", "num_labels", "num_layers", "teacher", "tokenizer", "splits"):
            if key not in manifest:
                raise StoreError(f"{mf} is missing {key!r}; {hint}")
        store = cls(path, manifest)
        store._validate()
        return store

    def _validate(self) -> None:
        hint = _rerun_hint(self.path, self.manifest["teacher"].get("path"))
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
            raise StoreError(f"{emb}: word_embeddings shape {word_shape} does not match the manifest's "
                             f"teacher config; {hint}")
        c, n_layers = self.num_labels, self.num_layers
        for split, info in self.manifest["splits"].items():
            n = info["rows"]
            if not (self.path / "rows" / split).is_dir():
                raise StoreError(f"{self.path}: rows/{split}/ is missing; {hint}")
            for kind, shape in (("teacher_logits", (n, c)), ("probe_logits", (n, n_layers + 1, c))):
                arr = self._load(split, kind, hint)
                if arr.shape != shape or arr.dtype != np.float32:
                    raise StoreError(f"{self.path}: {split}.{kind}.npy has shape {arr.shape} {arr.dtype}, "
                                     f"manifest says {shape} float32; {hint}")

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
        info = self._split_info(split)
        try:
            ds = load_from_disk(str(self.path / "rows" / split))
        except Exception as err:  # datasets raises FileNotFoundError / ArrowInvalid / JSON errors
            raise StoreError(f"{self.path}: rows/{split} cannot be read ({err}); "
                             f"{_rerun_hint(self.path)}") from None
        if len(ds) != info["rows"]:
            raise StoreError(f"{self.path}: rows/{split} has {len(ds)} rows, manifest says {info['rows']}; "
                             f"{_rerun_hint(self.path)}")
        return ds

    def teacher_logits(self, split: str) -> np.ndarray:
        self._split_info(split)
        return self._load(split, "teacher_logits")

    def probe_logits(self, split: str) -> np.ndarray:
        self._split_info(split)
        return self._load(split, "probe_logits")

    def tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(self.path / "tokenizer"))

    def embeddings(self) -> dict[str, torch.Tensor]:
        try:
            return load_file(str(self.path / "embeddings.safetensors"))
        except Exception as err:
            raise StoreError(f"{self.path}/embeddings.safetensors cannot be read ({err}); "
                             f"{_rerun_hint(self.path)}") from None

    # -- consistency checks

    def check_teacher(self, teacher_dir: str | Path) -> None:
        """Refuse a teacher whose weights or vocabulary differ from the one this store was built from."""
        from transformers import AutoTokenizer

        recorded = self.manifest["teacher"]
        hint = _rerun_hint(self.path, str(teacher_dir))
        sha, kind = teacher_hash(teacher_dir)
        if kind != recorded.get("hash_kind", "files") or sha != recorded["sha256"]:
            raise StoreError(f"teacher {teacher_dir} differs from the one the store {self.path} was built "
                             f"from ({recorded['path']}): weights sha256 {sha[:12]}… != "
                             f"{recorded['sha256'][:12]}…; {hint}")
        vocab = vocab_hash(AutoTokenizer.from_pretrained(str(teacher_dir)))
        if vocab != self.manifest["tokenizer"]["vocab_sha256"]:
            raise StoreError(f"tokenizer of {teacher_dir} differs from the store's (vocab sha256 "
                             f"{vocab[:12]}… != {self.manifest['tokenizer']['vocab_sha256'][:12]}…); {hint}")

    def check_rows(self, split: str, dataset: Dataset) -> None:
        """Refuse rows (texts, labels or order) other than those the stored arrays were computed on."""
        info = self._split_info(split)
        fp = fingerprint(dataset)
        if fp != info["fingerprint"]:
            raise StoreError(f"{split} rows differ from the store {self.path} ({len(dataset)} rows, "
                             f"fingerprint {fp[:12]}… vs {info['rows']} rows, {info['fingerprint'][:12]}…); "
                             f"the data, train/dev limits or seed changed; {_rerun_hint(self.path)}")

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
    for name, rows in (("position_embeddings", model.config.max_position_embeddings),
                       ("token_type_embeddings", getattr(model.config, "type_vocab_size", 1) or 1)):
        module = getattr(emb, name, None)
        if isinstance(module, torch.nn.Embedding):
            tables[name] = module.weight.detach().float().cpu().contiguous()
        else:
            logger.warning("teacher has no %s table; writing zeros [%d, %d]", name, rows, hidden)
            tables[name] = torch.zeros(rows, hidden)
    return tables


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.save(fh, np.ascontiguousarray(array, dtype=np.float32))


def write_store(
    path: str | Path,
    *,
    task: TaskSpec,
    data_dir: str | None,
    max_length: int,
    teacher_dir: str | Path,
    model: torch.nn.Module,
    tokenizer: Any,
    splits: dict[str, tuple[Dataset, np.ndarray, np.ndarray]],
    teacher_metrics: dict[str, dict[str, float]],
    probe_metrics: list[dict[str, Any]],
    extra: Callable[[Path], None] | None = None,
) -> KnowledgeStore:
    """Write a complete store into a temp dir beside ``path`` and rename it into place.

    A killed run never leaves a half store, and an existing store at ``path`` is replaced only once the
    new one is complete. ``extra(tmp_dir)`` may add further files (reports, plots) before the rename.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    num_labels = int(task.num_labels)
    num_layers = int(model.config.num_hidden_layers)
    sha, hash_kind = teacher_hash(teacher_dir, model)
    cfg = model.config
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "task": task.to_dict(),
        "data_dir": None if data_dir is None else str(data_dir),
        "max_length": int(max_length),
        "num_labels": num_labels,
        "num_layers": num_layers,
        "teacher": {
            "path": str(teacher_dir),
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
        "tokenizer": {"name_or_path": str(teacher_dir), "vocab_sha256": vocab_hash(tokenizer)},
        "splits": {},
        "teacher_metrics": teacher_metrics,
        "probe_metrics": probe_metrics,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        tokenizer.save_pretrained(str(tmp / "tokenizer"))
        save_file(_embedding_tables(model), str(tmp / "embeddings.safetensors"))
        for split, (rows, t_logits, p_logits) in splits.items():
            n = len(rows)
            t_logits, p_logits = np.asarray(t_logits), np.asarray(p_logits)
            if t_logits.shape != (n, num_labels) or p_logits.shape != (n, num_layers + 1, num_labels):
                raise ValueError(f"split {split!r}: {n} rows but teacher logits {t_logits.shape} and probe "
                                 f"logits {p_logits.shape}; expected ({n}, {num_labels}) and "
                                 f"({n}, {num_layers + 1}, {num_labels})")
            rows = rows.select_columns([c for c in ROW_COLUMNS if c in rows.column_names])
            rows.flatten_indices().save_to_disk(str(tmp / "rows" / split))
            _save_npy(tmp / f"{split}.teacher_logits.npy", t_logits)
            _save_npy(tmp / f"{split}.probe_logits.npy", p_logits)
            manifest["splits"][split] = {"rows": n, "fingerprint": fingerprint(rows)}
        if extra is not None:
            extra(tmp)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        _replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("knowledge store written to %s (%s)", path,
                ", ".join(f"{s}: {i['rows']} rows" for s, i in manifest["splits"].items()))
    return KnowledgeStore.open(path)


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
