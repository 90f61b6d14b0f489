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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import get_linear_schedule_with_warmup

from adabert import data, distributed, engine, optim
from adabert.checkpoint import (
    CheckpointError,
    DivergenceError,
    divergence_advice,
    load_for_resume,
    load_state,
    remove_stale_temporaries,
)
from adabert.config import TrainConfig, save_config, to_dict
from adabert.device import autocast, describe, grad_scaler, prepare, to_device
from adabert.distill import blend, hierarchical_kd, logits_kd, task_loss
from adabert.engine import Stepper
from adabert.errors import UserError
from adabert.genotype import Genotype
from adabert.io import atomic_write_json, save_pretrained_atomic
from adabert.model_folder import check_finished
from adabert.modules import ProbeHeads, head_kind, masked_mean
from adabert.search import CHECKPOINT, CHECKPOINT_KIND, student_tables
from adabert.search.judge import majority_accuracy, trivial_loss
from adabert.student.network import build_student
from adabert.tasks import compute_metrics, predictions_from_logits
from adabert.teacher.store import KnowledgeStore

log = logging.getLogger(__name__)

STATE = "training_state.safetensors"
STATE_KIND = "training"
STATE_DIR_SUFFIX = ".resume"
AVERAGE_SHARE = 0.25  # the weight average spans at most this share of all the training's steps
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


@dataclass
class Training:
    """What the loop carries from epoch to epoch."""

    model: torch.nn.Module
    probes: ProbeHeads | None
    step: Stepper
    device: torch.device
    ctx: Any
    metric: str  # the dev metric --keep best keeps by
    epoch: int = 0  # epochs finished
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None  # the kept epoch's record
    lr_changes: list[dict[str, Any]] = field(default_factory=list)  # --lr changed on --resume

    @property
    def average(self) -> engine.WeightAverage | None:
        """``--average``: the weights scored and saved, kept by the stepper (None: the current ones)."""
        return self.step.average

    def averaged(self) -> Any:
        """The weights the student is scored and saved with, for a ``with`` block."""
        return engine.averaged(self.average)


def train_student(cfg: TrainConfig) -> dict[str, Any]:
    """Train the student; under ``torchrun`` the processes split each batch and rank 0 writes."""
    device = prepare(cfg.device, cfg.precision)
    ctx = distributed.setup(device)
    device = distributed.rank_device(device, ctx)
    out, store = Path(cfg.output_dir), KnowledgeStore.open(cfg.store)
    genotype = load_genotype(cfg, store)
    start = starting_point(cfg, genotype, store)
    state_file, legacy_state = prepare_output(cfg, out, ctx)
    torch.manual_seed(cfg.seed)
    model, probes = build_model(cfg, genotype, store, start, device)
    del start
    params = [p for p in model.parameters() if p.requires_grad]  # not a frozen position table
    params += list(probes.parameters()) if probes else []
    distributed.broadcast_parameters([*params, *model.buffers()])
    # dropout: a stream of its own per rank, seeded after the build (whose draws may vary, e.g. the op
    # costs are measured on freshly built ops only the first time in a process)
    torch.manual_seed(cfg.seed + 7919 * ctx.rank)
    train = data.load_split(store, "train", cfg.train_limit, cfg.use_augmented, cfg.seed, cfg.augment_copies)
    dev = data.load_split(store, store.dev_split)
    dev_loader = data.scoring_loader(dev, cfg.batch_size * 2, ctx, device)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    epochs = cfg.epochs if cfg.examples is None else max(1, math.ceil(cfg.examples / max(1, len(train))))
    step = stepper(cfg, params, steps_per_epoch * epochs, device)
    if cfg.average:  # over at most the last quarter of a short training, not mostly its first steps
        window = min(cfg.average * steps_per_epoch, AVERAGE_SHARE * steps_per_epoch * epochs)
        step.average = engine.WeightAverage(list(model.parameters()), window)
    t = Training(model, probes, step, device, ctx, store.task.main_metric)
    resume_from = resume(t, cfg, genotype, state_file, legacy_state)
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
    started_all, first = time.perf_counter(), t.epoch
    model.train()
    for epoch in range(first, epochs):
        started = time.perf_counter()
        try:
            record = train_epoch(t, cfg, train, epoch, epochs, store.task.is_regression)
        except DivergenceError as err:
            advice = divergence_advice(
                resume_from if epoch == first else state_file, epoch, f"--lr (now {cfg.lr:g})"
            )
            raise DivergenceError(f"{err}; {advice}") from None
        with t.averaged():
            record.update(score_dev(t, dev_loader, store.task), seconds=time.perf_counter() - started)
        log.info(
            "epoch %d: loss %.4f dev %s (%.0fs)", epoch + 1, record["loss"], record["dev"], record["seconds"]
        )
        save_epoch(t, cfg, record, genotype, out, tokenizer, state_file, legacy_state)
    return finish(t, cfg, store, out, train, dev, epochs, time.perf_counter() - started_all)


def stepper(cfg: TrainConfig, params: list[torch.nn.Parameter], steps: int, device: torch.device) -> Stepper:
    """AdamW at ``--lr`` with a linear warm-up over 6% of the ``steps`` and a linear decay to 0."""
    optimizer = optim.adam(params, decoupled=True, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(0.06 * steps), steps)
    return Stepper(
        params, optimizer, cfg.grad_clip, "training", grad_scaler(device, cfg.precision), scheduler
    )


def load_genotype(cfg: TrainConfig, store: KnowledgeStore) -> Genotype:
    """The genotype to train, refused unless a finished search (or a hand) wrote it for this store."""
    if not Path(cfg.genotype).is_file():
        raise FileNotFoundError(f"{cfg.genotype}: no genotype file (run 'adabert search' first)")
    check_finished(Path(cfg.genotype).parent)  # a genotype an unfinished search left: not the chosen one
    genotype = Genotype.load(cfg.genotype)
    check_genotype_fits(genotype, store, cfg.genotype)
    check_positions_fit(store, store.manifest["teacher"]["config"]["max_position_embeddings"])
    return genotype


def prepare_output(cfg: TrainConfig, out: Path, ctx: Any) -> tuple[Path, Path]:
    """The student folder and its resume folder, without what a killed run left; the resume state's
    path and the one older adabert kept in the student folder."""
    state_file, legacy_state = state_path(out), out / STATE
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        state_file.parent.mkdir(exist_ok=True)
        remove_stale_temporaries(out, (STATE, "metrics.json", "train_config.json"))
        remove_stale_temporaries(state_file.parent, (STATE,))
        if not cfg.resume:  # a fresh training: an earlier run's state no longer fits what is trained here
            state_file.unlink(missing_ok=True)
    return state_file, legacy_state


def build_model(
    cfg: TrainConfig, genotype: Genotype, store: KnowledgeStore, start: dict[str, Any], device: torch.device
) -> tuple[torch.nn.Module, ProbeHeads | None]:
    """The student from its starting point, and the probe heads of ``--probe-kd``, on ``device``."""
    model = build_student(
        genotype,
        store.num_labels,
        start["tables"],
        store.task.is_pair,
        cfg.dropout,
        start["supernet_state"],
        start["head"],
        cell_norm=start["cell_norm"],
        **student_config_kwargs(store),
    )
    if cfg.positions == "none":
        model.embeddings.position.weight.data.zero_()
        model.embeddings.position.weight.requires_grad_(False)
    probes = (
        ProbeHeads(genotype.num_cells + 1, genotype.hidden_size, store.num_labels) if cfg.probe_kd else None
    )
    model.to(device)
    if probes is not None:
        probes.to(device)
    return model, probes


def resume(t: Training, cfg: TrainConfig, genotype: Genotype, state_file: Path, legacy_state: Path) -> Path:
    """Continue from the resume state when ``--resume`` finds one; returns where it was looked for."""
    resume_from = state_file
    if not state_file.exists() and any(legacy_state.with_suffix(x).exists() for x in (".safetensors", ".pt")):
        resume_from = legacy_state  # an older layout (or a pickle .pt, which is named and never read)
    state = load_for_resume(resume_from, cfg.resume, STATE_KIND)
    if state is None:
        return resume_from
    if state.get("genotype") != genotype.to_dict():
        raise CheckpointError(
            f"{resume_from}: cannot resume, the training started from another genotype than "
            f"{cfg.genotype}; use a new --output-dir or pass the genotype it started with"
        )
    step = t.step
    parts = {"optimizer": step.optimizer, "scheduler": step.scheduler, "scaler": step.scaler}
    rates = {"lr": (step.optimizer, step.scheduler)}
    t.lr_changes = engine.restore_loop(
        state, resume_from, to_dict(cfg), RESUMABLE_CHANGES, parts, rates, cfg.seed, t.device
    )
    t.model.load_state_dict(state["model"])
    if t.average is not None:  # a checkpoint without one (--average is not resumable): from its weights
        t.average.reset()
        if "weight_average" in state:
            t.average.load_state_dict(state["weight_average"])
    if t.probes is not None:
        t.probes.load_state_dict(state["probes"])
    t.epoch, t.history, t.best = state["epoch"], state["history"], state["best"]
    log.info("resuming from %s after epoch %d", resume_from, t.epoch)
    return resume_from


def student_loss(
    t: Training, batch: dict[str, torch.Tensor], cfg: TrainConfig, regression: bool
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(1 - gamma) task + gamma KD`` on the stored teacher logits, plus ``probe_kd x`` the
    hierarchical KD of the probe heads on the student's cells against the stored probe logits."""
    with autocast(t.device, cfg.precision):
        outputs = t.model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            token_type_ids=batch["token_type_ids"],
            output_hidden_states=t.probes is not None,
        )
        terms = {
            "task": task_loss(outputs.logits, batch["labels"], regression),
            "kd": logits_kd(outputs.logits, batch["teacher_logits"], regression, cfg.kd_temperature),
        }
        loss = blend(terms["task"], terms["kd"], cfg.gamma)
        if t.probes is not None:
            mask = batch["attention_mask"]
            pooled = [masked_mean(h.transpose(1, 2), mask) for h in outputs.hidden_states]
            terms["probe_kd"] = hierarchical_kd(
                t.probes(pooled), batch["probe_logits"], batch["labels"], regression, cfg.kd_temperature
            )
            loss = loss + cfg.probe_kd * terms["probe_kd"]
    return loss, terms


def train_epoch(
    t: Training, cfg: TrainConfig, train: data.StoreSplit, epoch: int, epochs: int, regression: bool
) -> dict[str, Any]:
    """One pass over the training rows; the record of its mean loss terms."""
    ctx = t.ctx
    batches = data.training_loader(train, cfg.batch_size, cfg.seed * 100_003 + epoch, ctx, t.device)
    bar = engine.batches(batches, f"train epoch {epoch + 1}/{epochs}", ctx)
    sums = dict.fromkeys(TERMS, 0.0)
    for batch, share in bar:
        loss, terms = student_loss(t, to_device(batch, t.device), cfg, regression)
        values = t.step(loss, terms, share, f"at epoch {epoch + 1}")
        for key, value in values.items():
            sums[key] += value
        bar.set_postfix(loss=f"{values['loss']:.3f}")
    distributed.average_buffers(t.model)
    n = max(1, math.ceil(len(train) / cfg.batch_size))
    return {"epoch": epoch + 1, **{k: v / n for k, v in sums.items()}}


def score_dev(t: Training, dev_loader: Any, task: Any) -> dict[str, Any]:
    """The epoch's dev metrics, loss and (classification) accuracy, gathered over the ranks."""
    mine = [predict_logits(t.model, dev_loader)] if len(dev_loader) else []
    logits, labels = distributed.gather_arrays([x for x, _ in mine], [y for _, y in mine])
    metrics = compute_metrics(task, predictions_from_logits(task, logits), labels)
    return {"dev": metrics, **dev_fit(logits, labels, task.is_regression)}


def save_epoch(
    t: Training,
    cfg: TrainConfig,
    record: dict[str, Any],
    genotype: Genotype,
    out: Path,
    tokenizer: Any,
    state_file: Path,
    legacy_state: Path,
) -> None:
    """Keep the epoch (``--keep``), save the student when it is kept, and checkpoint the loop."""
    t.history.append(record)
    t.epoch = record["epoch"]
    metric = t.metric  # --keep best keeps by it
    improved = cfg.keep == "last" or t.best is None or record["dev"][metric] > t.best["dev"][metric]
    if improved:
        t.best = record
    if t.ctx.is_main and improved:
        with t.averaged():
            save_pretrained_atomic(out, t.model, tokenizer)
    state = {
        "model": t.model,
        "weight_average": t.average,
        "probes": t.probes,
        "optimizer": t.step.optimizer,
        "scheduler": t.step.scheduler,
        "scaler": t.step.scaler,
        "epoch": t.epoch,
        "history": t.history,
        "best": t.best,
        "genotype": genotype.to_dict(),
        "lr_changes": t.lr_changes,
    }
    engine.save_loop(state_file, STATE_KIND, state, to_dict(cfg), RESUMABLE_CHANGES, t.device, t.ctx)
    if t.ctx.is_main:
        legacy_state.unlink(missing_ok=True)  # resumed from an older layout: the student folder sheds it
    distributed.barrier()  # the epoch is over everywhere once its state is on disk


def finish(
    t: Training,
    cfg: TrainConfig,
    store: KnowledgeStore,
    out: Path,
    train: data.StoreSplit,
    dev: data.StoreSplit,
    epochs: int,
    seconds: float,
) -> dict[str, Any]:
    """``metrics.json``, written last (it marks the training finished): the kept epoch beside the
    teacher and the trivial predictor, and how the search that chose the cell went."""
    best, main_metric = t.best, t.metric
    if best is None:
        raise UserError(f"{out}: nothing trained (epochs={epochs})")
    teacher_dev = store.manifest.get("teacher_metrics", {}).get(store.dev_split, {})
    result = {
        "task": store.task.name,
        "genotype": str(cfg.genotype),
        "kept_epoch": best["epoch"],
        "kept": cfg.keep,
        "dev": best["dev"],
        "teacher_dev": teacher_dev,
        "retention": (
            best["dev"][main_metric] / teacher_dev[main_metric] if teacher_dev.get(main_metric) else None
        ),
        "parameters": sum(p.numel() for p in t.model.parameters()),
        "train_rows": len(train),
        "epochs": epochs,
        "history": t.history,
        "seconds": seconds,
    }
    if t.lr_changes:
        result["lr_changes"] = t.lr_changes
    train_labels, dev_labels = train.labels[train.index], dev.labels[dev.index]
    result["trivial"] = versus_trivial(best, train_labels, dev_labels, store.num_labels)
    if result["trivial"]["no_better"]:
        log.warning("%s: %s", out, result["trivial"]["warning"])
    searched = _read_selection(Path(cfg.genotype).parent / "selection.json")
    if searched is not None:  # how the search that chose this cell went, for the model card
        result["search_supernet"] = searched
    if t.ctx.is_main:
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
