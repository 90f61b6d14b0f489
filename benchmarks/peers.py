"""The models a user would pick instead of a student, trained on all of a task's training rows.

    python benchmarks/peers.py TASK [--data-dir ../shared/data/glue] [--teacher-base default]

- fastText (supervised, word n-grams; the ``fasttext-wheel`` package), settings chosen by a small grid
  on a 10% split of train (never on dev), then retrained on all of train.
- Model2Vec static embeddings distilled from the teacher's *base* checkpoint (the ``model2vec``
  package; 256 PCA dimensions, its default SIF weighting), mean-pooled per sentence, then a logistic
  regression (ridge regression for regression tasks); sentence pairs are compared with
  ``[u, v, |u - v|, u * v]``. The regularisation strength is chosen on the same train split.

Both are benchmark-only extras (``pip install -e ".[bench]"``), never runtime dependencies. Each
reports its dev metrics (no decision threshold tuned on dev), train time and batch-1 latency (median
over the dev rows, one thread), into ``benchmarks/results/peers_TASK.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
FASTTEXT_GRID = [
    {"wordNgrams": n, "epoch": e, "lr": lr} for n in (1, 2) for e in (5, 20) for lr in (0.1, 0.5)
]
C_GRID = (0.1, 1.0, 10.0)


def _rows(task: Any, split: str, data_dir: str) -> tuple[list[str], list[str] | None, np.ndarray]:
    from adabert.tasks import load_split

    rows = load_split(task, split, data_dir)
    b = list(rows["text_b"]) if task.is_pair else None
    return list(rows["text_a"]), b, np.asarray(rows["label"])


def _holdout(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    cut = max(1, n // 10)
    return order[cut:], order[:cut]


def _median_ms(fn: Any, inputs: list[Any], repeats: int = 1) -> float:
    times = []
    for x in inputs:
        t = time.perf_counter()
        for _ in range(repeats):
            fn(x)
        times.append((time.perf_counter() - t) / repeats)
    return 1000 * statistics.median(times)


# ------------------------------------------------------------------------------------------ fastText
def _ft_line(a: str, b: str | None) -> str:
    text = a if b is None else f"{a} ||| {b}"
    return " ".join(text.replace("\n", " ").split())


def _ft_train(lines: list[str], labels: np.ndarray, settings: dict[str, Any], seed: int) -> Any:
    import fasttext

    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as fh:
        for text, y in zip(lines, labels):
            fh.write(f"__label__{int(y)} {text}\n")
        path = fh.name
    try:
        return fasttext.train_supervised(path, thread=1, seed=seed, verbose=0, minCount=1, **settings)
    finally:
        os.unlink(path)


def _ft_predict(model: Any, lines: list[str]) -> np.ndarray:
    # model.f.predict: fasttext-wheel's own predict() breaks on NumPy 2 (np.array(copy=False))
    return np.array([int(model.f.predict(t + "\n", 1, 0.0, "strict")[0][1][9:]) for t in lines])


def _fasttext(task: Any, lines: list[str], y: np.ndarray, dev: tuple[list[str], Any], seed: int) -> dict:
    """fastText with the grid's best settings on a 10% split of ``lines``, retrained on all of them."""
    from adabert.tasks import compute_metrics

    fit, held = _holdout(len(lines), seed)
    scores = []
    for settings in FASTTEXT_GRID:
        model = _ft_train([lines[i] for i in fit], y[fit], settings, seed)
        pred = _ft_predict(model, [lines[i] for i in held])
        scores.append(compute_metrics(task, pred, y[held])[task.main_metric])
    best = FASTTEXT_GRID[int(np.argmax(scores))]
    t = time.perf_counter()
    model = _ft_train(lines, y, best, seed)
    train_s = time.perf_counter() - t
    dev_lines, dy = dev
    metrics = compute_metrics(task, _ft_predict(model, dev_lines), dy)
    latency = _median_ms(lambda t: model.f.predict(t + "\n", 1, 0.0, "strict"), dev_lines, repeats=20)
    return {
        "dev": metrics,
        "settings": best,
        "train_rows": len(lines),
        "train_seconds": round(train_s, 2),
        "latency_b1_ms": round(latency, 4),
        "selection": {"split": "10% of train", "scores": scores},
    }


def _lines(a: list[str], b: list[str] | None) -> list[str]:
    return [_ft_line(x, b[i] if b else None) for i, x in enumerate(a)]


def fasttext_peer(task: Any, data_dir: str, seed: int) -> dict[str, Any]:
    a, b, y = _rows(task, "train", data_dir)
    da, db, dy = _rows(task, task.default_dev, data_dir)
    return _fasttext(task, _lines(a, b), y, (_lines(da, db), dy), seed)


def fasttext_on_store(store: Any, copies: int | None, seed: int = 0) -> dict[str, Any]:
    """fastText on the rows a student of ``store`` trains on, with the teacher's labels: every training
    row and up to ``copies`` augmented copies of each (None: all). Against the student it measures the
    architecture, not the teacher's labels or the augmentation."""
    from adabert.teacher.store import AUGMENTED

    task = store.task

    def split_rows(split: str, keep: np.ndarray | None = None) -> tuple[list[str], np.ndarray]:
        rows = store.rows(split)
        a, b = list(rows["text_a"]), list(rows["text_b"]) if task.is_pair else None
        labels = store.teacher_logits(split).argmax(1)
        picked = range(len(a)) if keep is None else np.flatnonzero(keep)
        return [_ft_line(a[i], b[i] if b else None) for i in picked], labels[list(picked)]

    lines, y = split_rows("train")
    if AUGMENTED in store.splits and copies != 0:
        copy = store.augment_sources(AUGMENTED)[1]
        more, more_y = split_rows(AUGMENTED, None if copies is None else copy < copies)
        lines, y = lines + more, np.concatenate([y, more_y])
    dev = store.rows(store.dev_split)
    dev_b = list(dev["text_b"]) if task.is_pair else None
    return _fasttext(task, lines, y, (_lines(list(dev["text_a"]), dev_b), np.asarray(dev["label"])), seed)


# ------------------------------------------------------------------------------------------ Model2Vec
def _features(model: Any, a: list[str], b: list[str] | None) -> np.ndarray:
    u = model.encode(a)
    if b is None:
        return u
    v = model.encode(b)
    return np.concatenate([u, v, np.abs(u - v), u * v], axis=1)


def model2vec_peer(task: Any, data_dir: str, base: str, seed: int) -> dict[str, Any]:
    from model2vec.distill import distill
    from sklearn.linear_model import LogisticRegression, Ridge

    from adabert.tasks import compute_metrics

    t = time.perf_counter()
    static = distill(model_name=base, pca_dims=256, device="cpu")
    distill_s = time.perf_counter() - t
    a, b, y = _rows(task, "train", data_dir)
    x = _features(static, a, b)

    def make(c: float) -> Any:
        if task.is_regression:
            return Ridge(alpha=1.0 / c)
        return LogisticRegression(C=c, max_iter=2000)

    fit, held = _holdout(len(x), seed)
    scores = []
    for c in C_GRID:
        clf = make(c).fit(x[fit], y[fit])
        scores.append(compute_metrics(task, clf.predict(x[held]), y[held])[task.main_metric])
    best = C_GRID[int(np.argmax(scores))]
    t = time.perf_counter()
    clf = make(best).fit(x, y)
    fit_s = time.perf_counter() - t
    da, db, dy = _rows(task, task.default_dev, data_dir)
    metrics = compute_metrics(task, clf.predict(_features(static, da, db)), dy)
    pairs = list(zip(da, db or da))

    def one(pair: tuple[str, str]) -> Any:
        return clf.predict(_features(static, [pair[0]], [pair[1]] if db else None))

    return {
        "dev": metrics,
        "settings": {"pca_dims": 256, "C": best},
        "distill_seconds": round(distill_s, 2),
        "train_seconds": round(fit_s, 2),
        "latency_b1_ms": round(_median_ms(one, pairs), 4),
        "selection": {"split": "10% of train", "scores": scores},
    }


def run_peers(task_name: Any, data_dir: str, base: str = "default", seed: int = 0) -> dict[str, Any]:
    """Train and evaluate every peer; returns (and writes) ``peers_TASK.json``."""
    import torch

    from adabert.tasks import get_task
    from adabert.teacher.finetuning import resolve_model

    torch.set_num_threads(1)
    task = get_task(task_name)
    base_path = resolve_model(base)
    started = time.perf_counter()
    peers: dict[str, Any] = {}
    if not task.is_regression:
        peers["fasttext"] = fasttext_peer(task, data_dir, seed)
    peers["model2vec_lr"] = model2vec_peer(task, data_dir, base_path, seed)
    result = {
        "task": task.name,
        "main_metric": task.main_metric,
        "peers": {name: p["dev"][task.main_metric] for name, p in peers.items()},
        "details": peers,
        "teacher_base": base_path,
        "seed": seed,
        "device": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, 1 thread",
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    from adabert.io import atomic_write_json

    atomic_write_json(RESULTS / f"peers_{task.name}.json", result)
    return result


def load_or_run(task_name: Any, data_dir: str, seed: int = 0) -> dict[str, Any]:
    """The cached peers of a task (a name, or a ``TaskSpec`` of your own files), else run them; they
    depend on neither the teacher nor the student."""
    from adabert.tasks import get_task

    path = RESULTS / f"peers_{get_task(task_name).name}.json"
    if path.exists():
        return json.loads(path.read_text())
    return run_peers(task_name, data_dir, seed=seed)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("task")
    parser.add_argument("--data-dir", default="../shared/data/glue")
    parser.add_argument("--teacher-base", default="default", help="base checkpoint Model2Vec distils from")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    result = run_peers(args.task, args.data_dir, args.teacher_base, args.seed)
    print(json.dumps({k: result[k] for k in ("task", "peers", "wall_seconds")}, indent=2))
    for name, p in result["details"].items():
        print(f"{name}: {p['dev']} train {p['train_seconds']} s, b1 {p['latency_b1_ms']} ms, {p['settings']}")


if __name__ == "__main__":
    main()
