"""Teacher stage, second half: decompose the fine-tuned teacher's knowledge with probes.

``probe`` runs that teacher once over the rows, trains one linear probe per layer on the cached
features (METHOD.md §1.1), and writes the knowledge store that the search and the student training read
instead of running the teacher again (with the distilled token table and, on request, teacher-labelled
augmented rows).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from safetensors.torch import save_file
from torch import nn
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from adabert.config import FinetuneConfig, ProbeConfig, save_config
from adabert.data import TokenRows
from adabert.device import resolve_device
from adabert.errors import DivergenceError
from adabert.io import atomic_save, atomic_write_json, resolve_recorded
from adabert.progress import progress as progress_bar
from adabert.tasks import TaskSpec, get_task, load_split
from adabert.teacher.augment import Augmenter, stream_augmented
from adabert.teacher.finetuning import (
    CONFIG_FILE,
    TASK_FILE,
    TeacherError,
    logit_metrics,
    resolve_model,
    run_teacher,
    seed_everything,
)
from adabert.teacher.static_embeddings import distill_token_table, token_counts
from adabert.teacher.store import AUGMENTED, KnowledgeStore, fingerprint, teacher_hash, write_store

logger = logging.getLogger(__name__)

MAX_TOP_UP = 20  # --augment-to adds at most this many copies per row
_IN_MEMORY_FEATURE_BYTES = 2 << 30  # larger feature caches go to a temporary memory-mapped file


class LayerProbes(nn.Module):
    """L+1 independent linear probes evaluated in one einsum; features are standardised per layer.

    Standardisation (a fixed affine map, so each probe stays linear in the raw features) puts the
    embedding mean and the [CLS] vectors of all layers on one scale, so one learning rate suits all.
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, num_labels: int) -> None:
        super().__init__()
        self.register_buffer("mean", mean.float())
        self.register_buffer("std", std.float().clamp(min=1e-6))
        probes, hidden = mean.shape
        self.weight = nn.Parameter(torch.zeros(probes, hidden, num_labels))
        self.bias = nn.Parameter(torch.zeros(probes, num_labels))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        z = (features - self.mean) / self.std
        return torch.einsum("bph,phc->bpc", z, self.weight) + self.bias


def _feature_stats(features: np.ndarray, chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    total = np.zeros(features.shape[1:], dtype=np.float64)
    sq = np.zeros(features.shape[1:], dtype=np.float64)
    for i in range(0, len(features), chunk):
        x = np.asarray(features[i : i + chunk], dtype=np.float64)
        total += x.sum(0)
        sq += (x * x).sum(0)
    mean = total / len(features)
    std = np.sqrt(np.maximum(sq / len(features) - mean * mean, 0.0))
    return torch.from_numpy(mean).float(), torch.from_numpy(std).float()


def train_probes(
    task: TaskSpec,
    features: np.ndarray,
    labels: np.ndarray,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
) -> LayerProbes:
    """Fit one linear probe per layer on cached features [N, L+1, H] (CE, or MSE for regression)."""
    mean, std = _feature_stats(features)
    probes = LayerProbes(mean, std, task.num_labels)
    y_all = torch.as_tensor(np.asarray(labels), dtype=torch.float32 if task.is_regression else torch.long)
    if task.is_regression:  # start at the label mean so the probes only have to learn the variation
        probes.bias.data.fill_(float(y_all.mean()))
    optimizer = torch.optim.Adam(probes.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    n, num_probes = len(features), features.shape[1]
    for epoch in range(1, epochs + 1):
        perm = rng.permutation(n)
        running = 0.0
        bar = progress_bar(range(0, n, batch_size), desc=f"probes epoch {epoch}/{epochs}", unit="batch")
        for i, start in enumerate(bar, 1):
            idx = np.sort(perm[start : start + batch_size])
            x = torch.from_numpy(np.asarray(features[idx], dtype=np.float32))
            out, y = probes(x), y_all[idx]
            if task.is_regression:
                per_probe = ((out[..., 0] - y[:, None]) ** 2).mean(0)
            else:
                per_probe = (
                    nn.functional.cross_entropy(
                        out.reshape(-1, out.shape[-1]), y.repeat_interleave(num_probes), reduction="none"
                    )
                    .view(-1, num_probes)
                    .mean(0)
                )
            loss = per_probe.sum()  # disjoint parameters: each probe gets exactly its own gradient
            if not torch.isfinite(loss):
                raise DivergenceError(
                    f"probe training diverged, the loss became {loss.item()} at epoch {epoch}, step {i}; "
                    f"lower --lr (now {lr}) and run again"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running += loss.item() / num_probes
            bar.set_postfix(loss=f"{running / i:.4f}")
    return probes.eval()


@torch.inference_mode()
def _apply_probes(probes: LayerProbes, features: np.ndarray, chunk: int = 4096) -> np.ndarray:
    out = [
        probes(torch.from_numpy(np.asarray(features[i : i + chunk], dtype=np.float32))).numpy()
        for i in range(0, len(features), chunk)
    ]
    return np.concatenate(out).astype(np.float32)


def _feature_buffer(shape: tuple[int, ...], scratch: Path) -> np.ndarray:
    if int(np.prod(shape)) * 4 <= _IN_MEMORY_FEATURE_BYTES:
        return np.zeros(shape, dtype=np.float32)
    return np.lib.format.open_memmap(
        scratch / f"features-{len(list(scratch.iterdir()))}.npy", mode="w+", dtype=np.float32, shape=shape
    )


def _read_task_file(teacher_dir: str) -> dict[str, Any]:
    f = Path(teacher_dir) / TASK_FILE
    if not f.is_file():
        return {}
    try:
        info = json.loads(f.read_text())
    except (UnicodeDecodeError, ValueError) as err:
        raise TeacherError(f"{f} is not valid JSON ({err}); re-run the fine-tuning or pass --task") from None
    if not isinstance(info, dict) or not isinstance(info.get("task", {}), dict):
        raise TeacherError(
            f'{f}: expected {{"task": {{...}}, ...}} as adabert writes it; re-run the '
            "fine-tuning or pass --task"
        )
    return info


def _plot_probes(
    path: Path, task: TaskSpec, layer_scores: list[float], teacher_score: float, split: str
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    layers = list(range(len(layer_scores)))
    ax.plot(layers, layer_scores, marker="o", label="linear probe")
    ax.axhline(teacher_score, color="tab:red", linestyle="--", label="teacher")
    ax.set_xticks(layers, ["emb"] + [str(i) for i in layers[1:]])
    ax.set_xlabel("teacher layer")
    ax.set_ylabel(f"{split} {task.main_metric}")
    ax.set_title(f"{task.name}: probe {task.main_metric} per layer")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_save(path, lambda p: fig.savefig(p, format="png", dpi=120))
    plt.close(fig)


def probe(cfg: ProbeConfig) -> KnowledgeStore:
    """Run the frozen teacher once, train per-layer probes, write the knowledge store (``cfg.output_dir``).

    The store holds every training row (``--train-limit`` for a subset), even when the teacher was
    fine-tuned on fewer, plus the distilled token table and, with ``--augment-factor``, the
    teacher-labelled augmented rows. The augmentation is streamed into a work folder beside the store
    (``.NAME.partial``) and continues there after a kill; the store appears by one rename at the end.
    """
    t0 = time.perf_counter()
    device = resolve_device(cfg.device)  # a device that is not here is refused before any work
    teacher_path = resolve_model(cfg.teacher)
    info = _teacher_info(teacher_path)
    task = _probe_task(cfg, teacher_path, info)
    data = _data_settings(cfg, teacher_path, info)
    seed_everything(cfg.seed)
    model, tokenizer = _load_teacher(teacher_path, task, device)
    num_layers = model.config.num_hidden_layers

    splits, tokens = _load_rows(task, data, cfg.train_limit, tokenizer)
    dev_split = task.default_dev
    sizes = {s: len(r) for s, r in splits.items()}
    logger.info("probing %s (%d layers) on %s: %s", teacher_path, num_layers, task.name, sizes)

    timings: dict[str, float] = {}
    out_dir = Path(cfg.output_dir)
    teacher_logits, probes, probe_logits = _teacher_pass_and_probes(
        cfg, task, model, tokenizer, splits, tokens, out_dir, timings
    )
    teacher_metrics = {s: logit_metrics(task, teacher_logits[s], r) for s, r in splits.items()}
    probe_metrics = _probe_metrics(task, splits, probe_logits, num_layers)
    _log_table(task, probe_metrics, teacher_metrics[dev_split], dev_split)

    work, key = _work_for(out_dir, teacher_path, model, splits["train"], data.max_length, probes)
    with _timed(timings, "distilled_table_s"):
        distilled = _distilled_table(cfg, teacher_path, info, model, tokenizer, tokens["train"])
    augmented = _augment(
        cfg, task, model, tokenizer, splits["train"], probes, data.max_length, work, key, timings
    )

    store_splits = {s: (r, teacher_logits[s], probe_logits[s], tokens[s]) for s, r in splits.items()}
    report = _probe_report(task, teacher_path, teacher_metrics, probe_metrics, store_splits, augmented)
    store = write_store(
        out_dir,
        task=task,
        data_dir=data.data_dir,
        max_length=data.max_length,
        teacher_dir=teacher_path,
        model=model,
        tokenizer=tokenizer,
        workdir=work,
        extra=_reports_writer(cfg, task, data, report, timings, t0),
        splits=store_splits,
        teacher_metrics=teacher_metrics,
        probe_metrics=probe_metrics,
        distilled=distilled,
        augmented=augmented,
    )
    logger.info(
        "probe stage done in %.1fs (%s)",
        time.perf_counter() - t0,
        ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()),
    )
    return store


@contextmanager
def _timed(timings: dict[str, float], name: str) -> Iterator[None]:
    """Record the seconds the block took as ``timings[name]`` (only when it finishes)."""
    t = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - t


def _teacher_info(teacher_path: str) -> dict[str, Any]:
    """What a teacher folder records of its fine-tuning (``{}`` for a hub model). A folder whose fine-tuning
    diverged or was killed holds no teacher: it is refused here."""
    if Path(teacher_path).is_dir():
        from adabert.model_folder import check_finished

        check_finished(teacher_path)
    return _read_task_file(teacher_path)


def _probe_task(cfg: ProbeConfig, teacher_path: str, info: dict[str, Any]) -> TaskSpec:
    """The task: ``--task``, else the one the teacher was fine-tuned on (as its task file records it)."""
    if cfg.task is not None:
        return get_task(cfg.task)
    if "task" in info:
        try:
            return TaskSpec.from_dict(info["task"])
        except (TypeError, ValueError) as err:
            raise TeacherError(
                f"{Path(teacher_path) / TASK_FILE}: not a task definition ({err}); re-run the "
                "fine-tuning or pass --task"
            ) from None
    raise TeacherError(
        f"{teacher_path} has no {TASK_FILE} (it was not fine-tuned by adabert): pass the "
        "task (--task) and, for local data, --data-dir"
    )


@dataclass(frozen=True)
class _DataSettings:
    """Which rows the store is made of and how long they are tokenized."""

    data_dir: str | None
    max_length: int
    dev_limit: int | None
    seed: int  # picks the row subsets


def _data_settings(cfg: ProbeConfig, teacher_path: str, info: dict[str, Any]) -> _DataSettings:
    """The user's data settings, with what they leave out taken from the teacher's fine-tuning: the store
    then holds the dev rows (and subset) the teacher was measured on."""
    data_dir = cfg.data_dir
    if data_dir is None and isinstance(info.get("data_dir"), str):  # older teachers: as finetune was given it
        data_dir = str(resolve_recorded(info["data_dir"], teacher_path))
    max_length = cfg.max_length or info.get("max_length") or FinetuneConfig.max_length
    dev_limit = cfg.dev_limit if cfg.dev_limit is not None else info.get("dev_limit")
    data_seed = info.get("seed", cfg.seed)  # the teacher's seed picks the same dev subset it saw
    return _DataSettings(data_dir, max_length, dev_limit, data_seed)


def _load_teacher(teacher_path: str, task: TaskSpec, device: torch.device) -> tuple[nn.Module, Any]:
    """The frozen teacher on ``device`` and its tokenizer; a teacher with another number of outputs than the
    task's labels is refused (it was fine-tuned on another task)."""
    if Path(teacher_path).is_dir():  # a finished teacher: refused unless its weights fit its config
        from adabert.model_folder import load_classifier

        model = load_classifier(teacher_path)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(teacher_path).eval()
    tokenizer = AutoTokenizer.from_pretrained(teacher_path)
    model.to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    if model.config.num_labels != task.num_labels:
        raise TeacherError(
            f"teacher {teacher_path} has {model.config.num_labels} outputs but task "
            f"{task.name} has {task.num_labels} labels; fine-tune it on this task first"
        )
    return model, tokenizer


def _load_rows(
    task: TaskSpec, data: _DataSettings, train_limit: int | None, tokenizer: Any
) -> tuple[dict[str, Dataset], dict[str, TokenRows]]:
    """The training rows (the first ``train_limit`` of a seeded shuffle) and every dev split's, and each
    split tokenized once: the teacher pass and the store share the tokens."""
    splits = {"train": load_split(task, "train", data.data_dir, limit=train_limit, seed=data.seed)}
    for s in task.dev_splits:
        splits[s] = load_split(task, s, data.data_dir, limit=data.dev_limit, seed=data.seed)
    tokens = {
        s: TokenRows.tokenize(r["text_a"], r["text_b"] if task.is_pair else None, tokenizer, data.max_length)
        for s, r in splits.items()
    }
    return splits, tokens


def _teacher_pass_and_probes(
    cfg: ProbeConfig,
    task: TaskSpec,
    model: nn.Module,
    tokenizer: Any,
    splits: dict[str, Dataset],
    tokens: dict[str, TokenRows],
    out_dir: Path,
    timings: dict[str, float],
) -> tuple[dict[str, np.ndarray], LayerProbes, dict[str, np.ndarray]]:
    """One teacher pass over every split, caching each layer's features, then the probes trained on the
    training rows' features: the teacher's logits, the probes and their logits per split. The features
    (memory-mapped beside the store when large) are gone afterwards."""
    num_layers, hidden = model.config.num_hidden_layers, model.config.hidden_size
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.features.", dir=out_dir.parent) as scratch:
        with _timed(timings, "teacher_pass_s"):
            teacher_logits, features = {}, {}
            for s, rows in splits.items():
                features[s] = _feature_buffer((len(rows), num_layers + 1, hidden), Path(scratch))
                teacher_logits[s], _ = run_teacher(
                    model, tokens[s], tokenizer, cfg.batch_size, f"teacher {s}", features_out=features[s]
                )
        with _timed(timings, "probe_training_s"):
            labels = np.asarray(splits["train"]["label"])
            probes = train_probes(
                task, features["train"], labels, cfg.epochs, cfg.batch_size, cfg.lr, cfg.seed
            )
            probe_logits = {s: _apply_probes(probes, f) for s, f in features.items()}
        del features
    return teacher_logits, probes, probe_logits


def _probe_metrics(
    task: TaskSpec, splits: dict[str, Dataset], probe_logits: dict[str, np.ndarray], num_layers: int
) -> list[dict[str, Any]]:
    """Each layer's probe measured on the main dev split, the training rows and (when the task has
    several) every dev split: how much of the task each layer holds."""
    dev_split = task.default_dev
    probe_metrics = []
    for j in range(num_layers + 1):
        entry: dict[str, Any] = {
            "layer": j,
            **logit_metrics(task, probe_logits[dev_split][:, j], splits[dev_split]),
        }
        entry["train"] = logit_metrics(task, probe_logits["train"][:, j], splits["train"])
        if len(task.dev_splits) > 1:
            entry["by_split"] = {
                s: logit_metrics(task, probe_logits[s][:, j], splits[s]) for s in task.dev_splits
            }
        probe_metrics.append(entry)
    return probe_metrics


def _work_for(
    out_dir: Path, teacher_path: str, model: nn.Module, train: Dataset, max_length: int, probes: LayerProbes
) -> tuple[Path, dict[str, Any]]:
    """The store's work folder for this teacher, training rows, length and probes (kept from an interrupted
    run that had the same), with the probes saved in it; and that key."""
    sha, _ = teacher_hash(teacher_path, model)
    key = {
        "teacher": sha,
        "train": fingerprint(train),
        "max_length": max_length,
        "probes": _tensor_digest(probes.state_dict()),
    }
    work = _work_dir(out_dir, key)
    save_file({k: v.contiguous() for k, v in probes.state_dict().items()}, str(work / "probes.safetensors"))
    return work, key


def _distilled_table(
    cfg: ProbeConfig,
    teacher_path: str,
    info: dict[str, Any],
    model: nn.Module,
    tokenizer: Any,
    train: TokenRows,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The distilled token table (weighted by the tokens' counts in the training rows) and its settings."""
    source = _distill_source(cfg, teacher_path, info, model)
    counts = token_counts(train.ids, model.config.vocab_size)
    distilled = distill_token_table(source, tokenizer, counts, cfg.distill_sif or None)
    return distilled, {"source": cfg.distill_source, "sif": cfg.distill_sif, "counted_on": "train"}


def _probe_report(
    task: TaskSpec,
    teacher_path: str,
    teacher_metrics: dict[str, dict[str, float]],
    probe_metrics: list[dict[str, Any]],
    store_splits: dict[str, tuple],
    augmented: dict[str, Any] | None,
) -> dict[str, Any]:
    """``probe_metrics.json`` but for the timings, which are added as the store is written."""
    rows = {s: len(v[0]) for s, v in store_splits.items()}
    if augmented is not None:
        rows[AUGMENTED] = augmented["rows"]
    return {
        "task": task.name,
        "teacher": teacher_path,
        "split": task.default_dev,
        "main_metric": task.main_metric,
        "teacher_metrics": teacher_metrics,
        "probes": probe_metrics,
        "rows": rows,
        "augmentation": augmented,
    }


def _reports_writer(
    cfg: ProbeConfig,
    task: TaskSpec,
    data: _DataSettings,
    report: dict[str, Any],
    timings: dict[str, float],
    t0: float,
) -> Callable[[Path], None]:
    """What ``write_store`` calls on its work folder before the rename: the report completed with the
    timings up to then (the stage's wall time since ``t0`` too), its plot and the resolved settings."""

    def write(tmp: Path) -> None:
        timings["wall_time_s"] = time.perf_counter() - t0
        report["timings"] = {k: round(v, 2) for k, v in timings.items()}
        _write_reports(tmp, cfg, task, data, report)

    return write


def _write_reports(
    tmp: Path, cfg: ProbeConfig, task: TaskSpec, data: _DataSettings, report: dict[str, Any]
) -> None:
    """The report, the plot of each layer's probe against the teacher, and the settings as resolved (what a
    re-run needs to make the same store); the work folder's key goes, since the folder becomes the store."""
    atomic_write_json(tmp / "probe_metrics.json", report)
    dev_split = report["split"]
    _plot_probes(
        tmp / "probe_metrics.png",
        task,
        [m[task.main_metric] for m in report["probes"]],
        report["teacher_metrics"][dev_split][task.main_metric],
        dev_split,
    )
    resolved = replace(
        cfg, task=task.name, data_dir=data.data_dir, max_length=data.max_length, dev_limit=data.dev_limit
    )
    save_config(resolved, tmp / "config.json")
    (tmp / WORK_KEY).unlink(missing_ok=True)


WORK_KEY = "work.json"


def _work_dir(out_dir: Path, key: dict[str, Any]) -> Path:
    """The store's work folder beside it: kept (for resumption) if it was made for the same teacher,
    rows and probes, else emptied."""
    work = out_dir.parent / f".{out_dir.name}.partial"
    try:
        same = json.loads((work / WORK_KEY).read_text()) == key
    except (OSError, ValueError):
        same = False
    if not same and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_json(work / WORK_KEY, key)
    return work


def _tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode() + tensors[name].detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()


def _distill_source(cfg: ProbeConfig, teacher_path: str, info: dict[str, Any], model: nn.Module) -> nn.Module:
    """The model whose outputs give the distilled token table: the teacher, or its base checkpoint."""
    if cfg.distill_source == "teacher":
        return model
    base = info.get("model") or _read_finetune_model(teacher_path)
    if base is None:
        raise TeacherError(
            f"{teacher_path}: its base checkpoint is not recorded; use --distill-source teacher"
        )
    from transformers import AutoModel

    return AutoModel.from_pretrained(resolve_model(base)).eval().to(next(model.parameters()).device)


def _read_finetune_model(teacher_path: str) -> str | None:
    try:
        return json.loads((Path(teacher_path) / CONFIG_FILE).read_text()).get("model")
    except (OSError, ValueError):
        return None


def augment_factor(cfg: ProbeConfig, rows: int) -> int:
    """Copies per training row: ``--augment-factor``, or more to top a small task up to ``--augment-to``."""
    if cfg.augment_to is None or rows >= cfg.augment_to:
        return cfg.augment_factor
    return max(cfg.augment_factor, min(MAX_TOP_UP, math.ceil(cfg.augment_to / max(rows, 1)) - 1))


def _augment(
    cfg: ProbeConfig,
    task: TaskSpec,
    model: nn.Module,
    tokenizer: Any,
    train: Dataset,
    probes: LayerProbes,
    max_length: int,
    work: Path,
    key: dict[str, Any],
    timings: dict[str, float],
) -> dict[str, Any] | None:
    """Teacher-labelled copies of the training rows, streamed into the work folder (resumable), when asked
    for (``--augment-factor``, or ``--augment-to`` topping a small task up); None when not. The seconds
    they took go into ``timings``."""
    factor = augment_factor(cfg, len(train))
    if factor <= 0:
        return None
    t = time.perf_counter()
    cfg = replace(cfg, augment_factor=factor)
    sources, texts_a, texts_b = _augment_sources(cfg, train, task.is_pair)
    augmenter = Augmenter(
        tokenizer,
        model.get_input_embeddings().weight,
        texts_a + (texts_b or []),
        cfg.augment_replace_prob,
        cfg.augment_mask_prob,
        cfg.augment_ngram_prob,
        cfg.augment_neighbours,
    )

    def label(a: list[str], b: list[str] | None) -> tuple[TokenRows, np.ndarray, np.ndarray]:
        rows = TokenRows.tokenize(a, b, tokenizer, max_length)
        logits, probe_logits = run_teacher(
            model, rows, tokenizer, cfg.batch_size, "teacher train_aug", probes=probes
        )
        return rows, logits, probe_logits

    bar = progress_bar(total=len(texts_a), desc=f"augment x{cfg.augment_factor}", unit="row")

    def progress(done: int, total: int) -> None:
        bar.update(done - bar.n)

    entry = stream_augmented(
        work,
        texts_a,
        texts_b,
        augmenter,
        cfg.augment_factor,
        label,
        (task.num_labels, model.config.num_hidden_layers + 1),
        task.is_regression,
        _augment_settings(cfg, key),
        cfg.seed,
        sources=sources,
        progress=progress,
    )
    bar.close()
    labels = np.load(work / f"{AUGMENTED}.labels.npy", mmap_mode="r")
    if not task.is_regression:
        source = np.load(work / f"{AUGMENTED}.source.npy", mmap_mode="r")
        agree = float(np.mean(np.asarray(labels) == np.asarray(train["label"])[np.asarray(source)]))
        entry["teacher_keeps_source_label"] = round(agree, 4)
        logger.info(
            "augmented rows: %d (the teacher keeps the source label on %.1f%%)", len(labels), 100 * agree
        )
    timings["augmentation_s"] = time.perf_counter() - t
    return entry


def _augment_sources(
    cfg: ProbeConfig, train: Dataset, pair: bool
) -> tuple[np.ndarray, list[str], list[str] | None]:
    """The training rows the copies are made from (every one, or ``--augment-rows`` of them: a seeded
    choice, in row order) and their texts. The rows are stored with each copy: a search or student
    that trains on some rows takes the copies of those rows alone."""
    sources = np.arange(len(train))
    if cfg.augment_rows is not None and cfg.augment_rows < len(train):
        sources = np.sort(np.random.default_rng(cfg.seed).choice(len(train), cfg.augment_rows, replace=False))
    chosen = train.select(sources)
    return sources, list(chosen["text_a"]), list(chosen["text_b"]) if pair else None


def _augment_settings(cfg: ProbeConfig, key: dict[str, Any]) -> dict[str, Any]:
    """What decides the augmented rows besides the work folder's ``key``: an interrupted augmentation
    continues only under the same settings, any change starts it afresh."""
    return {
        **key,
        "factor": cfg.augment_factor,
        "rows": cfg.augment_rows,
        "replace_prob": cfg.augment_replace_prob,
        "mask_prob": cfg.augment_mask_prob,
        "ngram_prob": cfg.augment_ngram_prob,
        "neighbours": cfg.augment_neighbours,
        "seed": cfg.seed,
    }


def _log_table(
    task: TaskSpec, probe_metrics: list[dict[str, Any]], teacher: dict[str, float], split: str
) -> None:
    names = list(task.metrics)
    lines = [f"probe metrics on {split}:", "layer  " + "  ".join(f"{m:>9}" for m in names)]
    for entry in probe_metrics:
        label = "emb" if entry["layer"] == 0 else str(entry["layer"])
        lines.append(f"{label:>5}  " + "  ".join(f"{entry[m]:9.4f}" for m in names))
    lines.append("teach  " + "  ".join(f"{teacher[m]:9.4f}" for m in names))
    logger.info("\n".join(lines))
