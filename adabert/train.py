"""Train the compact student from a genotype, distilling from the knowledge store.

Loss: ``(1 - gamma) task + gamma KD(logits, stored teacher logits) + probe_kd hierarchical KD``.
The best epoch by the task's main dev metric is kept in ``output_dir`` (``save_pretrained`` layout
with the tokenizer); a training state is checkpointed atomically every epoch for ``--resume``.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from adabert import data
from adabert.config import TrainConfig, save_config, to_dict
from adabert.distill import hierarchical_kd, logits_kd, task_loss
from adabert.genotype import Genotype
from adabert.io import atomic_save, atomic_write_json, save_pretrained_atomic
from adabert.modules import ProbeHeads, masked_mean
from adabert.store import KnowledgeStore
from adabert.student import build_student
from adabert.tasks import compute_metrics, predictions_from_logits

log = logging.getLogger(__name__)

STATE = "training_state.pt"


def check_genotype_fits(genotype: Genotype, store: KnowledgeStore, path: str) -> None:
    """Refuse a genotype searched against another teacher's vocabulary or positions."""
    teacher = store.manifest["teacher"]["config"]
    for key in ("vocab_size", "max_position_embeddings"):
        have = genotype.embedding.get(key)
        if have is not None and have != teacher[key]:
            raise ValueError(
                f"{path}: genotype was searched with {key}={have} but the store's teacher has "
                f"{teacher[key]}; search again on this store or use the matching store"
            )


def load_supernet_state(path: str) -> dict[str, torch.Tensor]:
    """Model weights of a search checkpoint (a search directory or its checkpoint.pt)."""
    file = Path(path)
    if file.is_dir():
        file = file / "checkpoint.pt"
    if not file.exists():
        raise FileNotFoundError(f"{file}: no search checkpoint (run 'adabert search' first)")
    return torch.load(file, weights_only=False)["model"]


def student_config_kwargs(store: KnowledgeStore) -> dict[str, Any]:
    task = store.task
    kwargs: dict[str, Any] = {"pad_token_id": store.tokenizer().pad_token_id or 0}
    if task.is_regression:
        kwargs["problem_type"] = "regression"
    else:
        kwargs["id2label"] = dict(enumerate(task.labels))
        kwargs["label2id"] = {label: i for i, label in enumerate(task.labels)}
    return kwargs


@torch.no_grad()
def predict_logits(
    model: torch.nn.Module, loader: torch.utils.data.DataLoader
) -> tuple[np.ndarray, np.ndarray]:
    was_training = model.training
    model.eval()
    logits, labels = [], []
    for batch in loader:
        out = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            token_type_ids=batch["token_type_ids"],
        )
        logits.append(out.logits.float().numpy())
        labels.append(batch["labels"].numpy())
    model.train(was_training)
    return np.concatenate(logits), np.concatenate(labels)


def train_student(cfg: TrainConfig) -> dict[str, Any]:
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    store = KnowledgeStore.open(cfg.store)
    genotype = Genotype.load(cfg.genotype)
    check_genotype_fits(genotype, store, cfg.genotype)
    save_config(cfg, out / "train_config.json")
    torch.manual_seed(cfg.seed)
    task, regression = store.task, store.task.is_regression

    model = build_student(
        genotype,
        store.num_labels,
        store.embeddings(),
        store.task.is_pair,
        cfg.dropout,
        load_supernet_state(cfg.supernet) if cfg.supernet else None,
        **student_config_kwargs(store),
    )
    probes = (
        ProbeHeads(genotype.num_cells + 1, genotype.hidden_size, store.num_labels) if cfg.probe_kd else None
    )
    params = list(model.parameters()) + (list(probes.parameters()) if probes else [])
    train = data.load_split(store, "train", cfg.train_limit, cfg.use_augmented)
    dev = data.load_split(store, store.dev_split)
    pad_id = model.config.pad_token_id
    dev_loader = data.loader(dev, cfg.batch_size * 2, shuffle=False, pad_token_id=pad_id)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = get_linear_schedule_with_warmup(
        optimizer, int(0.06 * steps_per_epoch * cfg.epochs), steps_per_epoch * cfg.epochs
    )
    history: list[dict[str, Any]] = []
    start_epoch, best = 0, None
    state_path = out / STATE
    if cfg.resume and state_path.exists():
        state = torch.load(state_path, weights_only=False)
        model.load_state_dict(state["model"])
        if probes is not None:
            probes.load_state_dict(state["probes"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        start_epoch, history, best = state["epoch"], state["history"], state["best"]
        log.info("resuming from %s after epoch %d", state_path, start_epoch)

    tokenizer = store.tokenizer()
    main_metric = task.main_metric
    started_all = time.perf_counter()
    model.train()
    for epoch in range(start_epoch, cfg.epochs):
        started = time.perf_counter()
        sums = {"loss": 0.0, "task": 0.0, "kd": 0.0, "probe_kd": 0.0}
        bar = tqdm(
            data.loader(train, cfg.batch_size, True, cfg.seed * 100_003 + epoch, pad_id),
            desc=f"train epoch {epoch + 1}/{cfg.epochs}",
            leave=False,
        )
        for batch in bar:
            outputs = model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                token_type_ids=batch["token_type_ids"],
                output_hidden_states=probes is not None,
            )
            terms = {
                "task": task_loss(outputs.logits, batch["labels"], regression),
                "kd": logits_kd(outputs.logits, batch["teacher_logits"], regression, cfg.kd_temperature),
            }
            loss = (1 - cfg.gamma) * terms["task"] + cfg.gamma * terms["kd"]
            if probes is not None:
                mask = batch["attention_mask"]
                pooled = [masked_mean(h.transpose(1, 2), mask) for h in outputs.hidden_states]
                terms["probe_kd"] = hierarchical_kd(
                    probes(pooled), batch["probe_logits"], batch["labels"], regression, cfg.kd_temperature
                )
                loss = loss + cfg.probe_kd * terms["probe_kd"]
            if not torch.isfinite(loss):
                raise RuntimeError(
                    f"training loss became {loss.item()} at epoch {epoch + 1}; the last good "
                    f"state ({state_path}) is intact. Lower --lr and resume with --resume."
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            sums["loss"] += loss.item()
            for key, value in terms.items():
                sums[key] += value.item()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        logits, labels = predict_logits(model, dev_loader)
        metrics = compute_metrics(task, predictions_from_logits(task, logits), labels)
        n = max(1, steps_per_epoch)
        record = {
            "epoch": epoch + 1,
            **{k: v / n for k, v in sums.items()},
            "dev": metrics,
            "seconds": time.perf_counter() - started,
        }
        history.append(record)
        log.info("epoch %d: loss %.4f dev %s", epoch + 1, record["loss"], metrics)
        if best is None or metrics[main_metric] > best["dev"][main_metric]:
            best = record
            save_pretrained_atomic(out, model, tokenizer)
        state = {
            "model": model.state_dict(),
            "probes": probes.state_dict() if probes else None,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": torch.get_rng_state(),
            "epoch": epoch + 1,
            "history": history,
            "best": best,
            "config": to_dict(cfg),
        }
        atomic_save(state_path, lambda p, s=state: torch.save(s, p))

    if best is None:
        raise ValueError(f"{out}: nothing trained (epochs={cfg.epochs})")
    teacher_dev = store.manifest.get("teacher_metrics", {}).get(store.dev_split, {})
    result = {
        "task": task.name,
        "genotype": str(cfg.genotype),
        "best_epoch": best["epoch"],
        "dev": best["dev"],
        "teacher_dev": teacher_dev,
        "retention": (
            best["dev"][main_metric] / teacher_dev[main_metric] if teacher_dev.get(main_metric) else None
        ),
        "parameters": sum(p.numel() for p in model.parameters()),
        "history": history,
        "seconds": time.perf_counter() - started_all,
    }
    atomic_write_json(out / "metrics.json", result)
    return result
