"""Train the compact student from a genotype, distilling from the knowledge store.

Loss: ``(1 - gamma) task + gamma KD(logits, stored teacher logits) + probe_kd hierarchical KD``.
The last epoch (``--keep best``: the best by the task's main dev metric) is kept in ``output_dir``
(``save_pretrained`` layout with the tokenizer, nothing else that deploys); a training state is
checkpointed atomically every epoch for ``--resume`` into the sibling folder ``<output_dir>.resume/``
(:func:`state_path`; a state in the student folder, where older versions kept it, is resumed from and
then moved out).

Runs the same under ``torchrun`` as in one process (``adabert.distributed``): the processes split each
batch and sum their weighted gradients, so they hold the same weights; rank 0 writes.

``--device`` trains on a GPU (batches copied from the memory-mapped store over pinned memory),
``--precision bf16|fp16`` under autocast there; the student is built on the CPU (the same start on
every device), scored in fp32 and saved with CPU tensors.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import get_linear_schedule_with_warmup

from adabert import data, distributed, optim
from adabert.checkpoint import (
    CheckpointError,
    DivergenceError,
    change_learning_rates,
    check_resumable,
    divergence_advice,
    gather_cuda_rng_states,
    gather_rng_states,
    load_for_resume,
    load_state,
    remove_stale_temporaries,
    restore_rng_state,
    save_state,
    settings_hash,
)
from adabert.config import TrainConfig, save_config, to_dict
from adabert.device import autocast, describe, grad_scaler, prepare, to_device
from adabert.distill import hierarchical_kd, logits_kd, task_loss
from adabert.errors import UserError
from adabert.genotype import Genotype
from adabert.io import atomic_write_json, save_pretrained_atomic
from adabert.model_folder import check_finished
from adabert.modules import ProbeHeads, head_kind, masked_mean
from adabert.progress import progress as progress_bar
from adabert.search import CHECKPOINT, CHECKPOINT_KIND, student_tables
from adabert.search.judge import majority_accuracy, trivial_loss
from adabert.student.network import build_student
from adabert.tasks import compute_metrics, predictions_from_logits
from adabert.teacher.store import KnowledgeStore

log = logging.getLogger(__name__)

STATE = "training_state.safetensors"
STATE_KIND = "training"
STATE_DIR_SUFFIX = ".resume"
# Settings that may change between an interrupted training run and its resumption.
RESUMABLE_CHANGES = {
    "resume",
    "lr",  # the divergence advice: lower it and resume (the change is recorded)
    "epochs",
    "examples",
    "output_dir",
    "store",
    "genotype",
    "supernet",
    "device",
    "precision",
}
TERMS = ("loss", "task", "kd", "probe_kd")


def state_path(output_dir: str | Path) -> Path:
    """Where the resume state of a training into ``output_dir`` lives: ``<output_dir>.resume/``, a sibling
    folder, so that the student folder holds only what deploys (the state, with the optimizer's moments,
    is three times the model's size)."""
    out = Path(output_dir)
    return out.with_name(out.name + STATE_DIR_SUFFIX) / STATE


def check_genotype_fits(genotype: Genotype, store: KnowledgeStore, path: str) -> None:
    """Refuse a genotype searched against another teacher's vocabulary or positions."""
    teacher = store.manifest["teacher"]["config"]
    for key in ("vocab_size", "max_position_embeddings"):
        have = genotype.embedding.get(key)
        if have is not None and have != teacher[key]:
            raise UserError(
                f"{path}: genotype was searched with {key}={have} but the store's teacher has "
                f"{teacher[key]}; search again on this store or use the matching store"
            )


def load_supernet_state(path: str) -> dict[str, torch.Tensor]:
    """Model weights of a search checkpoint (a search directory or its checkpoint file)."""
    return load_supernet_checkpoint(path)["model"]


def load_supernet_checkpoint(path: str) -> dict[str, Any]:
    """A search checkpoint (a search directory or its checkpoint file), refused clearly if unusable."""
    file = Path(path)
    if file.is_dir():
        file = file / CHECKPOINT
    if not file.exists():
        legacy = (
            " (its checkpoint.pt is from an older adabert and is never read)"
            if (file.with_suffix(".pt").exists())
            else ""
        )
        raise FileNotFoundError(f"{file}: no search checkpoint{legacy}; run 'adabert search' first")
    check_finished(file.parent)
    state = load_state(file, CHECKPOINT_KIND)
    if not isinstance(state.get("model"), dict):
        raise CheckpointError(f"{file}: not a search checkpoint (no model weights); pass a search directory")
    return state


def check_supernet_fits(
    state: dict[str, Any], genotype: Genotype, store: KnowledgeStore, path: str, genotype_path: str
) -> None:
    """Refuse searched weights that cannot initialise this genotype's student on this store's task."""
    weights = state["model"]
    searched = state.get("config", {})
    if searched.get("space") not in (None, genotype.space):
        raise UserError(
            f"{path}: the search checkpoint is from search space {searched['space']!r} but the genotype "
            f"{genotype_path} is from {genotype.space!r}; pass the genotype that search wrote, "
            "or drop --supernet"
        )
    head = weights.get("heads.0.out.weight")
    if head is not None and head.shape[0] != store.num_labels:
        raise UserError(
            f"{path}: the search checkpoint has {head.shape[0]} output label(s) but task {store.task.name} "
            f"has {store.num_labels}; search on this task's store, or drop --supernet to train from scratch"
        )
    projection = weights.get("embeddings.projection.weight")
    if projection is not None and projection.shape[0] != genotype.hidden_size:
        raise UserError(
            f"{path}: the search checkpoint's cells are {projection.shape[0]} wide but the genotype "
            f"{genotype_path} has hidden_size {genotype.hidden_size}; pass the genotype that search wrote"
        )
    cells = sum(1 for key in weights if key.startswith("cells.") and key.endswith(".node_mix"))
    if cells and genotype.num_cells > cells:
        raise UserError(
            f"{path}: the search checkpoint has {cells} cell(s) but the genotype {genotype_path} has "
            f"{genotype.num_cells}; pass the genotype that search wrote"
        )


def check_positions_fit(store: KnowledgeStore, max_positions: int) -> None:
    """Refuse a store whose rows may be longer than the student's position table."""
    if store.max_length > max_positions:
        raise UserError(
            f"{store.path}: the store's rows are up to max_length={store.max_length} tokens but the student "
            f"has {max_positions} positions (its teacher's); rebuild the store with --max-length "
            f"{max_positions} or less"
        )


def student_config_kwargs(store: KnowledgeStore) -> dict[str, Any]:
    return {"pad_token_id": store.pad_token_id, **store.task.label_config()}


@torch.no_grad()
def predict_logits(
    model: torch.nn.Module, loader: torch.utils.data.DataLoader, device: torch.device | str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Float32 logits and labels of ``model`` over a store loader, in loader order, on ``device``
    (default: the model's)."""
    if device is None:
        device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    logits, labels = [], []
    for batch in loader:
        inputs = to_device({k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}, device)
        out = model(**inputs)
        logits.append(out.logits.float().cpu().numpy())
        labels.append(batch["labels"].numpy())
    model.train(was_training)
    return np.concatenate(logits), np.concatenate(labels)


def starting_point(cfg: TrainConfig, genotype: Genotype, store: KnowledgeStore) -> dict[str, Any]:
    """What the student starts from: its tables, its head and (with ``--supernet``) searched weights.

    With ``--supernet`` the student keeps the search's head and token table kind, which its cells
    were trained with; ``--head`` / ``--embeddings`` must then agree (or stay at their defaults).
    """
    head, embeddings, state = head_kind(cfg.head, store.task.is_pair), cfg.embeddings, None
    cell_norm = True
    if cfg.supernet:
        checkpoint = load_supernet_checkpoint(cfg.supernet)
        check_supernet_fits(checkpoint, genotype, store, cfg.supernet, cfg.genotype)
        searched = checkpoint.get("config", {})
        searched_head = head_kind(searched.get("head", "paper"), store.task.is_pair)
        if cfg.head != "auto" and cfg.head != searched_head:
            raise UserError(
                f"--head {cfg.head}: the search in {cfg.supernet} used the {searched_head} head; "
                "drop --head or --supernet"
            )
        head, embeddings, state = searched_head, searched.get("embeddings", "input"), checkpoint["model"]
        cell_norm = bool(searched.get("cell_norm", False))  # a search from before the norm had none
        log.info(
            "the student starts from the searched weights in %s (head %s, %s token table)",
            cfg.supernet,
            head,
            embeddings,
        )
    else:
        log.info("the student starts from scratch (head %s, %s token table)", head, embeddings)
    tables = student_tables(store, embeddings, genotype.hidden_size)
    return {"tables": tables, "head": head, "supernet_state": state, "cell_norm": cell_norm}


def train_student(cfg: TrainConfig) -> dict[str, Any]:
    """Train the student; under ``torchrun`` the processes split each batch and rank 0 writes."""
    device = prepare(cfg.device, cfg.precision)
    ctx = distributed.setup(device)
    device = distributed.rank_device(device, ctx)
    out = Path(cfg.output_dir)
    store = KnowledgeStore.open(cfg.store)
    if not Path(cfg.genotype).is_file():
        raise FileNotFoundError(f"{cfg.genotype}: no genotype file (run 'adabert search' first)")
    check_finished(Path(cfg.genotype).parent)  # a genotype an unfinished search left: not the chosen one
    genotype = Genotype.load(cfg.genotype)
    check_genotype_fits(genotype, store, cfg.genotype)
    check_positions_fit(store, store.manifest["teacher"]["config"]["max_position_embeddings"])
    start = starting_point(cfg, genotype, store)
    state_file, legacy_state = state_path(out), out / STATE  # older adabert kept it in the student folder
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        state_file.parent.mkdir(exist_ok=True)
        remove_stale_temporaries(out, (STATE, "metrics.json", "train_config.json"))
        remove_stale_temporaries(state_file.parent, (STATE,))
        if not cfg.resume:  # a fresh training: an earlier run's state no longer fits what is trained here
            state_file.unlink(missing_ok=True)
    torch.manual_seed(cfg.seed)
    task, regression = store.task, store.task.is_regression
    model = build_student(
        genotype,
        store.num_labels,
        start["tables"],
        task.is_pair,
        cfg.dropout,
        start["supernet_state"],
        start["head"],
        cell_norm=start["cell_norm"],
        **student_config_kwargs(store),
    )
    del start
    if cfg.positions == "none":
        model.embeddings.position.weight.data.zero_()
        model.embeddings.position.weight.requires_grad_(False)
    probes = (
        ProbeHeads(genotype.num_cells + 1, genotype.hidden_size, store.num_labels) if cfg.probe_kd else None
    )
    model.to(device)
    if probes is not None:
        probes.to(device)
    params = [p for p in model.parameters() if p.requires_grad]  # not a frozen position table
    params += list(probes.parameters()) if probes else []
    distributed.broadcast_parameters([*params, *model.buffers()])
    # dropout: a stream of its own per rank, seeded after the build (whose draws may vary, e.g. the op
    # costs are measured on freshly built ops only the first time in a process)
    torch.manual_seed(cfg.seed + 7919 * ctx.rank)
    train = data.load_split(store, "train", cfg.train_limit, cfg.use_augmented, cfg.seed, cfg.augment_copies)
    dev = data.load_split(store, store.dev_split)
    pad_id = store.pad_token_id
    dev_lo, dev_hi = data.shard_bounds(len(dev), ctx.rank, ctx.world_size)
    pin = device.type == "cuda"
    dev_loader = data.loader(
        dev.subset(range(dev_lo, dev_hi)), cfg.batch_size * 2, False, pad_token_id=pad_id, pin_memory=pin
    )
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    epochs = cfg.epochs if cfg.examples is None else max(1, math.ceil(cfg.examples / max(1, len(train))))
    optimizer = optim.adam(params, decoupled=True, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = get_linear_schedule_with_warmup(
        optimizer, int(0.06 * steps_per_epoch * epochs), steps_per_epoch * epochs
    )
    scaler = grad_scaler(device, cfg.precision)
    history: list[dict[str, Any]] = []
    start_epoch, best = 0, None
    lr_changes: list[dict[str, Any]] = []  # --lr changed on --resume, where and how
    resume_from = state_file
    if not state_file.exists() and any(legacy_state.with_suffix(x).exists() for x in (".safetensors", ".pt")):
        resume_from = legacy_state  # an older layout (or a pickle .pt, which is named and never read)
    state = load_for_resume(resume_from, cfg.resume, STATE_KIND)
    if state is not None:
        check_resumable(to_dict(cfg), state["config"], resume_from, RESUMABLE_CHANGES)
        if state.get("genotype") != genotype.to_dict():
            raise CheckpointError(
                f"{resume_from}: cannot resume, the training started from another genotype than "
                f"{cfg.genotype}; use a new --output-dir or pass the genotype it started with"
            )
        model.load_state_dict(state["model"])
        if probes is not None:
            probes.load_state_dict(state["probes"])
        optimizer.load_state_dict(state["optimizer"])  # moved to the parameters' device
        scheduler.load_state_dict(state["scheduler"])
        lr_changes = state.get("lr_changes", []) + change_learning_rates(
            to_dict(cfg), state["config"], {"lr": (optimizer, scheduler)}, state["epoch"], resume_from
        )
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        restore_rng_state(state, cfg.seed, device)
        start_epoch, history, best = state["epoch"], state["history"], state["best"]
        log.info("resuming from %s after epoch %d", resume_from, start_epoch)
    del state
    log.info(
        "training on %s (%s): %d rows, %d epochs of %d steps, %d dev rows",
        describe(device),
        cfg.precision,
        len(train),
        epochs,
        steps_per_epoch,
        len(dev),
    )

    tokenizer = store.tokenizer()
    if ctx.is_main:  # written last: from here on the folder is unfinished until the training is done
        (out / "metrics.json").unlink(missing_ok=True)
        save_config(cfg, out / "train_config.json")  # after the resume checks: refused settings stay out
    main_metric = task.main_metric
    started_all = time.perf_counter()
    model.train()
    for epoch in range(start_epoch, epochs):
        started = time.perf_counter()
        sums = dict.fromkeys(TERMS, 0.0)
        batches = data.loader(
            train,
            cfg.batch_size,
            True,
            cfg.seed * 100_003 + epoch,
            pad_id,
            0,
            ctx.rank,
            ctx.world_size,
            group_by_length=True,
            pin_memory=pin,
        )
        bar = progress_bar(
            data.with_shares(batches),
            total=len(batches),
            desc=f"train epoch {epoch + 1}/{epochs}",
            leave=False,
            disable=not ctx.is_main,
        )
        for batch, share in bar:
            batch = to_device(batch, device)
            with autocast(device, cfg.precision):
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
            terms["loss"] = loss
            optimizer.zero_grad(set_to_none=True)
            (loss if scaler is None else scaler.scale(loss)).backward()
            # the global batch's gradient and loss terms, the same on every rank
            stats = torch.tensor([terms[k].item() if k in terms else 0.0 for k in TERMS], dtype=torch.float64)
            values = dict(zip(TERMS, distributed.reduce_gradients(params, share, stats).tolist()))
            if not math.isfinite(values["loss"]):
                raise DivergenceError(
                    f"training loss became {values['loss']} at epoch {epoch + 1}; "
                    + divergence_advice(
                        resume_from if epoch == start_epoch else state_file, epoch, f"--lr (now {cfg.lr:g})"
                    )
                )
            if scaler is not None:  # fp16: the ranks summed scaled gradients; unscale before clipping
                scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            if scaler is None:
                optimizer.step()
            else:
                scaler.step(optimizer)  # skipped (on every rank alike) when the gradients overflowed
                scaler.update()
            scheduler.step()
            for key, value in values.items():
                sums[key] += value
            bar.set_postfix(loss=f"{values['loss']:.3f}")
        distributed.average_buffers(model)
        # each rank scores its part of the dev rows (none when there are more ranks than rows)
        mine = [predict_logits(model, dev_loader)] if len(dev_loader) else []
        logits, labels = distributed.gather_arrays([x for x, _ in mine], [y for _, y in mine])
        metrics = compute_metrics(task, predictions_from_logits(task, logits), labels)
        n = max(1, steps_per_epoch)
        record = {
            "epoch": epoch + 1,
            **{k: v / n for k, v in sums.items()},
            "dev": metrics,
            **dev_fit(logits, labels, regression),
            "seconds": time.perf_counter() - started,
        }
        history.append(record)
        log.info("epoch %d: loss %.4f dev %s (%.0fs)", epoch + 1, record["loss"], metrics, record["seconds"])
        improved = cfg.keep == "last" or best is None or metrics[main_metric] > best["dev"][main_metric]
        if improved:
            best = record
        rng_states = gather_rng_states()
        cuda_rng_states = gather_cuda_rng_states(device)
        if ctx.is_main:
            if improved:
                save_pretrained_atomic(out, model, tokenizer)
            state = {
                "model": model.state_dict(),
                "probes": probes.state_dict() if probes else None,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": rng_states[0],
                "rng_per_rank": rng_states,
                "world_size": ctx.world_size,
                "epoch": epoch + 1,
                "history": history,
                "best": best,
                "config": to_dict(cfg),
                "genotype": genotype.to_dict(),
                "lr_changes": lr_changes,
            }
            if cuda_rng_states is not None:
                state["cuda_rng_per_rank"] = cuda_rng_states
            if scaler is not None:
                state["scaler"] = scaler.state_dict()
            save_state(state_file, state, STATE_KIND, settings_hash(to_dict(cfg), RESUMABLE_CHANGES))
            legacy_state.unlink(missing_ok=True)  # resumed from an older layout: the student folder sheds it
            del state
        distributed.barrier()  # the epoch is over everywhere once its state is on disk

    if best is None:
        raise UserError(f"{out}: nothing trained (epochs={epochs})")
    teacher_dev = store.manifest.get("teacher_metrics", {}).get(store.dev_split, {})
    result = {
        "task": task.name,
        "genotype": str(cfg.genotype),
        "kept_epoch": best["epoch"],
        "kept": cfg.keep,
        "dev": best["dev"],
        "teacher_dev": teacher_dev,
        "retention": (
            best["dev"][main_metric] / teacher_dev[main_metric] if teacher_dev.get(main_metric) else None
        ),
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_rows": len(train),
        "epochs": epochs,
        "history": history,
        "seconds": time.perf_counter() - started_all,
    }
    if lr_changes:
        result["lr_changes"] = lr_changes
    train_labels, dev_labels = train.labels[train.index], dev.labels[dev.index]
    result["trivial"] = versus_trivial(best, train_labels, dev_labels, store.num_labels)
    if result["trivial"]["no_better"]:
        log.warning("%s: %s", out, result["trivial"]["warning"])
    searched = _read_selection(Path(cfg.genotype).parent / "selection.json")
    if searched is not None:  # how the search that chose this cell went, for the model card
        result["search_supernet"] = searched
    if ctx.is_main:
        atomic_write_json(out / "metrics.json", result)
    distributed.barrier()
    return result


def dev_fit(logits: np.ndarray, labels: np.ndarray, regression: bool) -> dict[str, float]:
    """The dev loss of ``logits`` (cross-entropy; regression: mean squared error) and, for
    classification, their accuracy: what :func:`versus_trivial` weighs against the trivial predictor."""
    if regression:
        return {"dev_loss": float(np.mean((logits.reshape(-1).astype(np.float64) - labels) ** 2))}
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    picked = log_probs[np.arange(len(labels)), labels.astype(np.int64)]
    return {
        "dev_loss": float(-np.mean(picked)),
        "dev_accuracy": float(np.mean(logits.argmax(-1) == labels.astype(np.int64))),
    }


def versus_trivial(
    kept: dict[str, Any], train_labels: np.ndarray, dev_labels: np.ndarray, num_labels: int
) -> dict[str, Any]:
    """The kept epoch's dev loss and accuracy against the trivial predictor's (the training label
    prior; regression: the training mean), and whether the student is no better: for classification
    its accuracy is at most the majority label's, for regression its squared error at least the label
    variance. ``warning`` says so in one line."""
    regression = "dev_accuracy" not in kept
    loss = trivial_loss(train_labels, dev_labels, num_labels, regression)
    out: dict[str, Any] = {"dev_loss": kept.get("dev_loss"), "trivial_loss": loss}
    if kept.get("dev_loss") is None:  # an epoch recorded before adabert measured it
        return {**out, "no_better": False}
    if regression:
        out["no_better"] = not kept["dev_loss"] < loss
        what = f"dev mean squared error {kept['dev_loss']:.4g}, the label variance {loss:.4g}"
    else:
        out["majority_accuracy"] = majority = majority_accuracy(train_labels, dev_labels)
        out["dev_accuracy"] = kept["dev_accuracy"]
        out["no_better"] = not kept["dev_accuracy"] > majority
        what = (
            f"dev accuracy {kept['dev_accuracy']:.4f}, always the majority label {majority:.4f}; dev loss "
            f"{kept['dev_loss']:.4g}, the label prior's {loss:.4g}"
        )
    if out["no_better"]:
        out["warning"] = (
            f"the student (epoch {kept['epoch']}) is no better than the trivial predictor ({what}); it "
            "learned nothing usable: check the data and the store, or train again with other settings "
            "(--lr, --epochs)"
        )
    return out


def _read_selection(path: Path) -> dict[str, Any] | None:
    """The supernet evidence of the search that wrote ``path`` (None: a hand-made genotype, or an
    unreadable file, which only the card would have shown)."""
    try:
        evidence = json.loads(path.read_text()).get("supernet")
    except (OSError, ValueError, AttributeError):
        return None
    return evidence if isinstance(evidence, dict) else None
