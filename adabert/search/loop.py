"""The architecture search loop: weight step, architecture step, epoch record, checkpoint.

First-order alternating updates (DARTS) on ``(1 - gamma) CE + gamma KD`` of a freshly sampled
sub-network, plus ``beta x`` the efficiency term (:mod:`adabert.search.efficiency`) in the
architecture step. Two phases:

* the weight phase samples every op and depth uniformly and takes no architecture step, so every op
  is trained before any is judged; it lasts at least ``uniform_warmup_epochs`` and ends once the
  supernet has learned the task (:mod:`adabert.search.judge`: its best mean held-out loss over
  sampled paths is clearly below the trivial predictor's and has stopped improving), at most
  ``max_warmup_epochs`` (``weight_phase="fixed"``: exactly ``uniform_warmup_epochs``), with the
  weights of its best epoch;
* the search phase, ``epochs - uniform_warmup_epochs`` epochs of alternating steps.

Three disjoint sets of training rows: weight rows (with their augmented copies), architecture rows,
and judge rows that no step trains on. Each epoch ends with the supernet judged on the judge rows
beside the trivial predictor, the derived genotype scored on them (and on dev, for the log), an
atomic checkpoint, and the log; the search ends with the genotype chosen by ``select``
(:mod:`adabert.search.selection`), flagged when the supernet never learned the task.

The same code runs in one process or under ``torchrun`` (``adabert.distributed``): the processes
split each batch, sum their weighted gradients, draw the same samples, and so hold the same
architecture logits; rank 0 writes the checkpoint, log and genotype while the others wait.

``--device`` puts the supernet, its architecture logits and each batch on a GPU (``adabert.device``);
``--precision bf16|fp16`` runs the steps under autocast there. The store, the samples' random draws
and the latency table stay on the host; held-out and dev scores are computed in fp32.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adabert import data, distributed, engine, optim
from adabert.checkpoint import (
    DivergenceError,
    divergence_advice,
    load_for_resume,
    remove_stale_temporaries,
)
from adabert.config import SearchConfig, save_config, to_dict
from adabert.device import autocast, describe, grad_scaler, prepare, to_device
from adabert.distill import blend, hierarchical_kd, logits_kd, task_loss
from adabert.engine import Stepper
from adabert.errors import UserError
from adabert.genotype import Genotype, derive_genotype, random_genotype
from adabert.io import atomic_write_json, atomic_write_text
from adabert.modules import head_kind
from adabert.report.draw import draw_genotype
from adabert.search import judge, remedies
from adabert.search.efficiency import BudgetCost, PaperCost
from adabert.search.selection import WARM_UP, score, select
from adabert.search.supernet import Sample, Supernet
from adabert.teacher.store import KnowledgeStore
from search_spaces import SearchSpace, get_space

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.safetensors"
CHECKPOINT_KIND = "search"
GENOTYPE = "genotype.json"
LOG = "search_log.jsonl"
SELECTION = "selection.json"
LATENCY_TABLE = "latency_table.json"
OUTPUTS = (
    CHECKPOINT,
    GENOTYPE,
    LOG,
    SELECTION,
    LATENCY_TABLE,
    "genotype.png",
    "config.json",
    "op_probabilities.png",
    "depth_distribution.png",
)
# Settings that may change between an interrupted run and its resumption.
RESUMABLE_CHANGES = {"resume", "epochs", "num_workers", "output_dir", "store", "device", "precision"}
RESUMABLE_CHANGES |= {"w_lr", "arch_lr"}  # the divergence advice: lower them and resume (recorded)
TERMS = ("loss", "ce", "kd", "efficiency")


# ------------------------------------------------------------------------------------------ set-up
def genotype_embedding(store: KnowledgeStore) -> dict[str, Any]:
    config = store.manifest["teacher"]["config"]
    return {
        "vocab_size": config["vocab_size"],
        "max_position_embeddings": config["max_position_embeddings"],
        "teacher_hidden_size": config["hidden_size"],
        "pair": store.task.is_pair,
    }


def student_tables(store: KnowledgeStore, kind: str, hidden: int) -> dict[str, torch.Tensor]:
    """The tables a supernet or student starts from: ``distilled`` (the distilled token table at the
    cell width, positions learned from zero) or ``input`` (the teacher's input tables, to be projected)."""
    if kind == "distilled":
        word = store.distilled_tokens(hidden).float()
        positions = store.manifest["teacher"]["config"]["max_position_embeddings"]
        return {"word": word, "position": torch.zeros(positions, hidden)}
    if kind == "input":
        tables = store.embeddings()
        return {"word": tables["word_embeddings"], "position": tables["position_embeddings"]}
    raise UserError(f"unknown embeddings {kind!r}: expected distilled or input")


def build_supernet(cfg: SearchConfig, store: KnowledgeStore) -> Supernet:
    space = get_space(cfg.space)
    hidden = cfg.hidden_size or space.hidden_size
    return Supernet(
        space,
        store.num_labels,
        student_tables(store, cfg.embeddings, hidden),
        hidden_size=hidden,
        max_cells=cfg.max_cells,
        dropout=cfg.dropout,
        pair=store.task.is_pair,
        head=cfg.head,
        train_tables=cfg.train_embeddings,
        shared_head=cfg.shared_head,
        cell_norm=cfg.cell_norm,
        superkernel=cfg.superkernel,
    )


def build_efficiency(cfg: SearchConfig, store: KnowledgeStore, net: Supernet) -> BudgetCost | PaperCost:
    """The efficiency term; a budget in milliseconds comes from the measured latency table."""
    if cfg.efficiency == "paper":
        return PaperCost(net.space, net.hidden_size, cfg.cost_seq_len, net.max_cells)
    table = load_latency_table(cfg, store, net.space, net.hidden_size)
    if cfg.target_params is not None:
        return BudgetCost(net.space, table, float(cfg.target_params), "params", cfg.target_batch)
    if cfg.target_latency_ms is not None:
        return BudgetCost(net.space, table, cfg.target_latency_ms, "ms", cfg.target_batch)
    # a speedup holds at every batch size of the table, the target batch's being the loss's
    limits = {int(b): ms / cfg.target_speedup for b, ms in table.teacher.items()}
    target, batch = limits[cfg.target_batch], cfg.target_batch
    return BudgetCost(net.space, table, target, "ms", batch, also=limits, speedup=cfg.target_speedup)


def load_latency_table(cfg: SearchConfig, store: KnowledgeStore, space: SearchSpace, hidden: int) -> Any:
    from adabert.search.latency import latency_table

    teacher = store.manifest["teacher"]
    batches = tuple(sorted({1, 32, cfg.target_batch}))
    seq_len = min(cfg.cost_seq_len, teacher["config"]["max_position_embeddings"])
    embedding = genotype_embedding(store)
    return latency_table(
        space,
        hidden,
        seq_len,
        str(store.teacher_path),
        teacher["sha256"],
        embedding,
        store.num_labels,
        batches,
        cfg.latency_threads,
        head=head_kind(cfg.head, store.task.is_pair),
    )


def split_rows(
    cfg: SearchConfig, store: KnowledgeStore
) -> tuple[data.StoreSplit, data.StoreSplit, data.StoreSplit]:
    """Rows for the weight steps (with their augmented copies), for the architecture steps, and judge
    rows that no step trains on (they judge the supernet and select the epoch). The last two are
    original rows only, none of whose copies the weights see."""
    total = len(store.labels("train"))
    rng = np.random.default_rng(cfg.seed)
    rows = np.arange(total)
    if cfg.train_limit is not None and cfg.train_limit < total:
        rows = np.sort(rng.choice(total, size=cfg.train_limit, replace=False))
    order = rng.permutation(rows)
    n_judge = max(1, min(cfg.selection_rows, int(round(cfg.judge_fraction * len(order)))))
    judge, order = order[:n_judge], order[n_judge:]
    n_arch = max(1, int(round(cfg.arch_fraction * len(order))))
    if n_arch >= len(order):
        raise UserError(
            f"{cfg.store}: {len(order) + n_judge} training row(s) leave none for the weight steps after "
            f"judge_fraction={cfg.judge_fraction} and arch_fraction={cfg.arch_fraction}; use more rows or "
            "smaller fractions"
        )
    weights = weight_rows(cfg, store, np.sort(order[n_arch:]), epoch=0)
    arch = data.load_split(store, "train", rows=np.sort(order[:n_arch]))
    return weights, arch, data.load_split(store, "train", rows=np.sort(judge))


def weight_rows(cfg: SearchConfig, store: KnowledgeStore, rows: np.ndarray, epoch: int) -> data.StoreSplit:
    """The weight steps' rows of an epoch: ``rows`` and ``--augment-copies`` of their stored copies,
    the next ones each epoch (a small task's store holds up to 20 per row: the weights see them all
    in turn instead of overfitting the same few)."""
    copies = cfg.augment_copies
    return data.load_split(
        store,
        "train",
        rows=rows,
        with_augmented=cfg.use_augmented,
        augment_copies=copies,
        first_copy=epoch * copies if copies else 0,
    )


@dataclass
class Search:
    """What the loop carries from step to step."""

    net: Supernet
    weights: Stepper  # the weight steps' optimizer (and fp16 scaler)
    arch: Stepper  # the architecture steps'
    sampler: torch.Generator
    cost: BudgetCost | PaperCost
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    steps_per_epoch: int = 1
    search_start: int | None = None  # the step the search phase began at (None: in the weight phase)
    total_steps: int = 1  # planned steps, the weight phase's as run so far
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    lr_changes: list[dict[str, Any]] = field(default_factory=list)  # rates changed on --resume
    arch_baseline: float | None = None  # --arch-gradient reinforce: the moving average of the reward
    best: list[torch.Tensor] | None = None  # the weight phase's best judged weights, until it ends
    frozen: bool = False  # the weights overfit their rows: the search phase steps the architecture alone

    @property
    def average(self) -> engine.WeightAverage | None:
        """The weights judged (None: the current ones), kept by the weight steps' stepper."""
        return self.weights.average

    def judged(self) -> contextlib.AbstractContextManager:
        """The weights the supernet is judged and the epoch selected with, for a ``with`` block."""
        return engine.averaged(self.average)


@dataclass(frozen=True)
class StepSchedule:
    """Every scheduled value of one step, computed once (:func:`step_schedule`)."""

    tau: float  # the Gumbel temperature of the architecture samples
    beta: float  # the efficiency term's weight (0 in the weight phase)
    w_lr: float  # the weights' learning rate
    skip: float  # the auxiliary skip's weight
    free_dropout: float  # dropout on parameter-free ops' outputs


def step_schedule(s: Search, cfg: SearchConfig) -> StepSchedule:
    """The schedules at step ``s.step``: constant through the weight phase, then annealed over the
    search phase's steps (temperature, learning rate, skip, dropout) or ramped by epoch (beta)."""
    first = s.step if s.search_start is None else s.search_start
    beta = 0.0
    if s.search_start is not None:
        beta = max(0.0, effective_beta(cfg))
        if cfg.beta_warmup_epochs:
            searched = (s.step - s.search_start) // s.steps_per_epoch
            beta *= min(1.0, (searched + 1) / cfg.beta_warmup_epochs)
    span = (s.step, first, s.total_steps)
    return StepSchedule(
        tau=remedies.temperature(
            cfg.tau_start, cfg.tau_end, cfg.tau_anneal_fraction, s.step - first, s.total_steps - first
        ),
        beta=beta,
        w_lr=remedies.cosine(cfg.w_lr, min(cfg.w_lr, cfg.w_lr_min), *span),
        skip=remedies.decayed(cfg.aux_skip, *span),
        free_dropout=remedies.decayed(cfg.free_op_dropout, *span),
    )


# ------------------------------------------------------------------------------------------ steps
def search_loss(
    net: Supernet,
    batch: dict[str, torch.Tensor],
    sample: Sample,
    cfg: SearchConfig,
    regression: bool,
    skip: float = 0.0,
    free_dropout: float = 0.0,
    targets: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(1 - gamma) CE + gamma KD`` of one sampled sub-network on one batch (on the batch's device,
    under autocast with ``--precision bf16|fp16``); with ``targets`` (another path's logits), in-place
    distillation from them alone. ``terms["logits"]`` holds the path's logits."""
    with autocast(batch["input_ids"].device, cfg.precision):
        out = net(
            batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], sample, skip, free_dropout
        )
        if targets is not None:
            kd = logits_kd(out.logits, targets, regression, cfg.kd_temperature)
            return kd, {"ce": torch.zeros((), device=kd.device), "kd": kd, "logits": out.logits}
        ce = task_loss(out.logits, batch["labels"], regression)
        kd = torch.zeros((), device=ce.device)
        if cfg.gamma > 0 and cfg.kd_target in ("probes", "both"):
            kd = kd + hierarchical_kd(
                out.probe_logits, batch["probe_logits"], batch["labels"], regression, cfg.kd_temperature
            )
        if cfg.gamma > 0 and cfg.kd_target in ("logits", "both"):
            kd = kd + logits_kd(out.logits, batch["teacher_logits"], regression, cfg.kd_temperature)
        if cfg.kd_target == "both":
            kd = kd / 2
    return blend(ce, kd, cfg.gamma), {"ce": ce, "kd": kd, "logits": out.logits}


def weight_step(
    s: Search,
    batch: dict,
    share: float,
    sample: Sample,
    at: StepSchedule,
    cfg: SearchConfig,
    regression: bool,
    where: str,
) -> dict[str, float]:
    """Train the sampled sub-network's weights on a batch of the weight rows."""
    for group in s.weights.optimizer.param_groups:
        group["lr"] = at.w_lr
    if cfg.sandwich:
        loss, terms = sandwich_loss(s, batch, sample, at, cfg, regression)
    else:
        loss, terms = search_loss(s.net, batch, sample, cfg, regression, at.skip, at.free_dropout)
    terms["efficiency"] = torch.zeros(())
    return s.weights(loss, {k: terms[k] for k in TERMS[1:]}, share, where)


def sandwich_loss(
    s: Search, batch: dict, sample: Sample, at: StepSchedule, cfg: SearchConfig, regression: bool
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The sandwich rule with in-place distillation (BigNAS, Yu et al. 2020): the largest path learns
    the task; the smallest, ``sample`` and ``cfg.sandwich - 3`` more paths drawn like it learn the
    largest's predictions. The largest path is trained at every step, so the shared weights and head
    learn the task early, and every other path is pulled towards one consistent function."""
    net, skip, drop = s.net, at.skip, at.free_dropout
    loss, terms = search_loss(net, batch, net.extreme_sample(True), cfg, regression, skip, drop)
    targets = terms["logits"].detach()
    paths = [net.extreme_sample(False), sample]
    for _ in range(cfg.sandwich - 3):
        warm = sample.edge_onehot is None
        paths.append(net.uniform_sample(s.sampler) if warm else net.sample(at.tau, s.sampler))
    for path in paths:
        loss = loss + search_loss(net, batch, path, cfg, regression, skip, drop, targets)[0]
    return loss / (len(paths) + 1), terms


def effective_beta(cfg: SearchConfig) -> float:
    """The efficiency term's weight: as set, else 0 for a budget (which bounds the derivation: with
    Adam, any constant push on the logits outweighs the task's noisy signal, whatever its weight,
    and empties the cells) and AdaBERT's 4 for its own term."""
    if cfg.beta is not None:
        return cfg.beta
    return 0.0 if cfg.efficiency == "budget" else 4.0


def arch_step(
    s: Search, batch: dict, share: float, at: StepSchedule, cfg: SearchConfig, regression: bool, where: str
) -> dict[str, float]:
    """Move the architecture logits on a held-out batch: task loss + efficiency + regulariser."""
    sample = s.net.sample(at.tau, s.sampler)
    if cfg.arch_gradient == "reinforce":
        return reinforce_step(s, batch, share, sample, at, cfg, regression, where)
    loss, terms = search_loss(s.net, batch, sample, cfg, regression)
    terms["efficiency"] = s.cost.loss(sample)
    loss = loss + at.beta * terms["efficiency"]
    if cfg.beta_reg:
        loss = loss + cfg.beta_reg * remedies.beta_regulariser(s.net.edge_logits)
    return s.arch(loss, {k: terms[k] for k in TERMS[1:]}, share, where)


BASELINE_MOMENTUM = 0.9  # the reward's moving average, over about 10 architecture steps


def reinforce_step(
    s: Search,
    batch: dict,
    share: float,
    sample: Sample,
    at: StepSchedule,
    cfg: SearchConfig,
    regression: bool,
    where: str,
) -> dict[str, float]:
    """The score-function estimator (REINFORCE with a moving-average baseline, as in TuNAS): the
    sampled path runs without gates, and its held-out task loss plus ``beta x`` its cost, less the
    baseline, weighs the gradient of its log-probability. In expectation this lowers the loss of the
    paths drawn, which is what the judge measures; the straight-through gates instead ask whether
    scaling a path's output would lower the loss, a question of calibration that can favour worse
    paths (a shallower depth whose logits want to be larger)."""
    with torch.no_grad():  # the weights take no gradient here
        loss, terms = search_loss(s.net, batch, Supernet.ungated(sample), cfg, regression)
    terms["efficiency"] = s.cost.loss(sample).detach()
    reward = loss.detach().float() + at.beta * terms["efficiency"]
    baseline = reward if s.arch_baseline is None else torch.tensor(s.arch_baseline, device=reward.device)
    surrogate = (reward - baseline) * s.net.log_prob(sample)
    if cfg.beta_reg:
        surrogate = surrogate + cfg.beta_reg * remedies.beta_regulariser(s.net.edge_logits)
    values = s.arch(surrogate, {**{k: terms[k] for k in TERMS[1:]}, "reward": reward}, share, where)
    previous = values["reward"] if s.arch_baseline is None else s.arch_baseline
    s.arch_baseline = BASELINE_MOMENTUM * previous + (1 - BASELINE_MOMENTUM) * values["reward"]
    return values


# ------------------------------------------------------------------------------------------ epoch
def run_epoch(
    s: Search,
    epoch: int,
    warm: bool,
    cfg: SearchConfig,
    weight_rows: data.StoreSplit,
    arch_rows: data.StoreSplit,
    regression: bool,
    ctx: Any,
) -> dict[str, Any]:
    """One pass over the weight rows: a weight step per batch, then (``warm``: none) an arch step."""
    w_loader = data.training_loader(
        weight_rows, cfg.batch_size, cfg.seed * 100_003 + epoch, ctx, s.device, cfg.num_workers
    )
    a_loader = data.training_loader(
        arch_rows, cfg.batch_size, cfg.seed * 100_019 + epoch, ctx, s.device, cfg.num_workers
    )
    a_batches = _cycle(a_loader)
    sums = dict.fromkeys(TERMS, 0.0)
    counts = np.zeros(tuple(s.net.edge_logits.shape), dtype=np.int64)
    at = step_schedule(s, cfg)
    bar = engine.batches(
        w_loader, f"search epoch {epoch + 1} ({'weight phase' if warm else 'search phase'})", ctx
    )
    for batch, share in bar:
        where = f"at epoch {epoch + 1}, step {s.step}"
        at = step_schedule(s, cfg)
        if not s.frozen:
            sample = s.net.uniform_sample(s.sampler) if warm else s.net.sample(at.tau, s.sampler)
            for e, op in enumerate(sample.ops):
                counts[e, s.net.zero_index if op is None else op] += 1
            terms = weight_step(s, to_device(batch, s.device), share, sample, at, cfg, regression, where)
        if not warm:
            a_batch, a_share = next(a_batches)
            arch = arch_step(s, to_device(a_batch, s.device), a_share, at, cfg, regression, where)
            terms = {k: arch[k] for k in TERMS} if s.frozen else {**terms, "efficiency": arch["efficiency"]}
        for key, value in terms.items():
            sums[key] += value
        s.step += 1
        bar.set_postfix(loss=f"{terms['loss']:.3f}", tau=f"{at.tau:.2f}")
    n = max(1, len(w_loader))
    return {
        **{k: v / n for k, v in sums.items()},
        "tau": at.tau,
        "w_lr": s.weights.optimizer.param_groups[0]["lr"],
        "beta": at.beta,
        "phase": WARM_UP if warm else "search",
        "op_counts": counts.tolist(),
    }


def judge_supernet(s: Search, cfg: SearchConfig, heldout: Any, task: Any, baseline: dict) -> dict[str, Any]:
    """The supernet's mean held-out loss and metrics over ``judge_paths`` sampled paths (uniform in the
    weight phase, from the architecture distribution after it), beside the trivial predictor's."""
    warm = s.search_start is None
    paths = judge.judge_paths(s.net, cfg.judge_paths, cfg.seed * 100_057 + 3, uniform=warm)
    return {
        **judge.supernet_score(s.net, paths, heldout, task),
        **baseline,
        "paths": "uniform" if warm else "sampled",
    }


def epoch_record(
    s: Search,
    epoch: int,
    terms: dict[str, Any],
    genotype: Genotype,
    heldout: Any,
    dev: Any,
    task: Any,
    started: float,
    supernet: dict[str, Any],
) -> dict[str, Any]:
    """Everything the log keeps of an epoch: losses, schedule, scores, distributions, the genotype."""
    net = s.net
    sample = net.fixed_sample(genotype)
    return {
        "epoch": epoch + 1,
        "step": s.step,
        **terms,
        "supernet": supernet,
        "heldout": score(net, sample, heldout, task),
        "dev": score(net, sample, dev, task),
        "depth": genotype.num_cells,
        "op_probabilities": torch.softmax(net.edge_logits.detach(), -1).tolist(),
        "depth_probabilities": torch.softmax(net.depth_logits.detach(), -1).tolist(),
        "genotype": genotype.to_dict(),
        "seconds": time.perf_counter() - started,
    }


def save_checkpoint(s: Search, cfg: SearchConfig, path: Path, epoch: int, ctx: Any) -> None:
    """Everything needed to continue after ``epoch``; tensors in safetensors, never a pickle."""
    frozen = {name for name, p in s.net.named_parameters() if not p.requires_grad}
    state = {
        "model": {k: v for k, v in s.net.state_dict().items() if k not in frozen},
        **_parts(s),
        "weight_average": s.average,
        "sample_rng": s.sampler.get_state(),
        "arch_baseline": s.arch_baseline,
        "best_weights": None if s.best is None else {str(i): t for i, t in enumerate(s.best)},
        "epoch": epoch + 1,
        "step": s.step,
        "history": s.history,
        "lr_changes": s.lr_changes,
        "costs": _costs(s),
    }
    engine.save_loop(path, CHECKPOINT_KIND, state, to_dict(cfg), RESUMABLE_CHANGES, s.device, ctx)


def restore(s: Search, state: dict[str, Any], cfg: SearchConfig, path: Path) -> int:
    """Continue from a checkpoint: the same settings (and costs) or a clear refusal."""
    rates = {"w_lr": (s.weights.optimizer, None), "arch_lr": (s.arch.optimizer, None)}
    s.lr_changes = engine.restore_loop(
        state, path, to_dict(cfg), RESUMABLE_CHANGES, _parts(s), rates, cfg.seed, s.device
    )
    if state.get("costs") != _costs(s):
        log.warning(
            "%s: the efficiency costs changed since the checkpoint (another latency table: a new "
            "machine, torch or op code); the search continues with the new costs",
            path,
        )
    load_weights(s.net, state["model"], path)
    if s.average is not None and "weight_average" in state:
        try:
            s.average.load_state_dict(state["weight_average"])
        except ValueError as err:
            raise UserError(f"{path}: {err}") from None
    elif s.average is not None:  # a checkpoint without one: the average starts at its weights
        s.average.reset()
    s.sampler.set_state(state["sample_rng"])
    s.arch_baseline = state.get("arch_baseline")
    if state.get("best_weights") is not None:
        best = state["best_weights"]
        s.best = [best[str(i)].to(p.device, p.dtype) for i, p in enumerate(s.weights.params)]
    s.step, s.history = state["step"], state["history"]
    s.frozen = any(r.get("weights_frozen") for r in s.history)
    log.info("resuming from %s after epoch %d", path, state["epoch"])
    return state["epoch"]


def _costs(s: Search) -> str:
    """The efficiency costs, as a checkpoint records them (a resumed search warns when they changed)."""
    return json.dumps(s.cost.describe(), sort_keys=True)


def _parts(s: Search) -> dict[str, Any]:
    """The optimizers and scalers a checkpoint keeps, by their names in it."""
    return {
        "w_opt": s.weights.optimizer,
        "a_opt": s.arch.optimizer,
        "w_scaler": s.weights.scaler,
        "a_scaler": s.arch.scaler,
    }


def load_weights(net: Supernet, weights: dict[str, torch.Tensor], path: Path) -> None:
    """A checkpoint's weights into ``net``, refused unless every trained tensor fits (the frozen
    tables are not saved)."""
    missing, unexpected = net.load_state_dict(weights, strict=False)
    frozen = {name for name, p in net.named_parameters() if not p.requires_grad}
    if unexpected or set(missing) - frozen:
        raise UserError(f"{path}: the checkpoint does not fit this supernet ({(missing, unexpected)})")


# ------------------------------------------------------------------------------------------ the search
def run_search(cfg: SearchConfig) -> Genotype:
    """Search an architecture for the store's task; writes genotype, selection, log, plots, checkpoints."""
    device = prepare(cfg.device, cfg.precision)
    ctx = distributed.setup(device)
    device = distributed.rank_device(device, ctx)
    out, store = Path(cfg.output_dir), KnowledgeStore.open(cfg.store)
    check_positions(store)
    space = get_space(cfg.space)
    hidden = cfg.hidden_size or space.hidden_size
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out, OUTPUTS)
        save_config(cfg, out / "config.json")
    if cfg.random_architecture:
        return _random_architecture(cfg, store, space, hidden, out, ctx)

    torch.manual_seed(cfg.seed)
    rows = search_rows(cfg, store, ctx, device)
    s = build_search(cfg, store, rows, out, device, ctx)
    path = out / CHECKPOINT
    state = load_for_resume(path, cfg.resume, CHECKPOINT_KIND)
    epoch = restore(s, state, cfg, path) if state is not None else 0
    del state
    if ctx.is_main:  # written last: from here on the folder is unfinished until the search is done
        (out / SELECTION).unlink(missing_ok=True)
    plan_steps(s, cfg)
    _log_start(s, cfg, rows)
    s.net.train()
    while not finished(s, cfg):
        genotype = search_epoch(s, cfg, epoch, rows, store, ctx, path)
        save_checkpoint(s, cfg, path, epoch, ctx)
        if ctx.is_main:
            _write_log(s.history, out)
            _write_genotype(genotype, out)
        distributed.barrier()  # the epoch is over everywhere once its checkpoint is on disk
        epoch += 1
    return finish_search(s, cfg, rows, store, out, ctx)


@dataclass
class SearchRows:
    """The search's rows: weight and architecture rows to train on, judge and dev loaders to score on."""

    weights: data.StoreSplit  # the first epoch's (:func:`weight_rows` gives each epoch's)
    arch: data.StoreSplit
    judge: data.StoreSplit
    heldout: Any  # this rank's loader of the judge rows
    dev: Any  # this rank's loader of the dev rows
    baseline: dict[str, float]  # the trivial predictor on the judge rows
    originals: np.ndarray  # the weight rows without their copies


def search_rows(cfg: SearchConfig, store: KnowledgeStore, ctx: Any, device: torch.device) -> SearchRows:
    weights, arch, judge_rows = split_rows(cfg, store)
    dev = data.load_split(store, store.dev_split)
    return SearchRows(
        weights,
        arch,
        judge_rows,
        data.scoring_loader(judge_rows, cfg.batch_size * 2, ctx, device),
        data.scoring_loader(dev, cfg.batch_size * 2, ctx, device),
        trivial_baseline(store, weights, judge_rows),
        weights.index[weights.index < len(store.labels("train"))],  # copies follow the originals
    )


def build_search(
    cfg: SearchConfig, store: KnowledgeStore, rows: SearchRows, out: Path, device: torch.device, ctx: Any
) -> Search:
    """The supernet (the same start on every rank and device), its costs, its two steppers."""
    net = build_supernet(cfg, store).to(device)  # built on the CPU: the same start on every device
    distributed.broadcast_parameters([*net.parameters(), *net.buffers()])  # the same start everywhere
    cost = build_efficiency(cfg, store, net).to(device)
    if ctx.is_main and isinstance(cost, BudgetCost):
        atomic_write_json(out / LATENCY_TABLE, {**cost.table.to_dict(), "sha256": cost.table.sha256})
    torch.manual_seed(cfg.seed + 7919 * ctx.rank)  # dropout: a stream of its own per rank
    w_params, a_params = net.weight_parameters(), net.arch_parameters()
    s = Search(
        net,
        _stepper(w_params, cfg.w_lr, cfg.w_weight_decay, cfg, device),
        _stepper(a_params, cfg.arch_lr, cfg.arch_weight_decay, cfg, device),
        torch.Generator().manual_seed(cfg.seed * 100_043 + 17),  # the same samples on every rank, device
        cost,
        device=device,
        steps_per_epoch=data.steps(len(rows.weights), cfg.batch_size),
    )
    if cfg.judge_average > 0:
        s.weights.average = engine.WeightAverage(w_params, cfg.judge_average * s.steps_per_epoch)
    return s


def _stepper(
    params: list, lr: float, weight_decay: float, cfg: SearchConfig, device: torch.device
) -> Stepper:
    """Adam at a constant rate (the weight phase's; the search phase anneals the weights' rate)."""
    optimizer = optim.adam(params, lr=lr, weight_decay=weight_decay)
    return Stepper(params, optimizer, cfg.grad_clip, "search", grad_scaler(device, cfg.precision))


def search_epoch(
    s: Search, cfg: SearchConfig, epoch: int, rows: SearchRows, store: KnowledgeStore, ctx: Any, path: Path
) -> Genotype:
    """One epoch's steps, then the supernet judged, the genotype derived and the epoch recorded."""
    started = time.perf_counter()
    weights = weight_rows(cfg, store, rows.originals, epoch)
    try:
        terms = run_epoch(
            s, epoch, s.search_start is None, cfg, weights, rows.arch, store.task.is_regression, ctx
        )
    except DivergenceError as err:
        rates = f"--w-lr (now {cfg.w_lr:g}) or --arch-lr (now {cfg.arch_lr:g})"
        raise DivergenceError(f"{err}; {divergence_advice(path, epoch, rates)}") from None
    distributed.check_in_sync({"edge_logits": s.net.edge_logits, "depth_logits": s.net.depth_logits})
    genotype = derive(s, store)
    with s.judged():
        supernet = judge_supernet(s, cfg, rows.heldout, store.task, rows.baseline)
        record = epoch_record(
            s, epoch, terms, genotype, rows.heldout, rows.dev, store.task, started, supernet
        )
    s.history.append(record)
    record.update(end_weight_phase(s, cfg))
    _log_epoch(record)
    return genotype


def finish_search(
    s: Search, cfg: SearchConfig, rows: SearchRows, store: KnowledgeStore, out: Path, ctx: Any
) -> Genotype:
    """The selected genotype and its evidence, flagged when the supernet never learned the task;
    ``selection.json`` is written last (it marks the search finished)."""
    if not s.history:
        raise UserError(f"{out}: nothing to search (epochs={cfg.epochs})")
    with s.judged():
        genotype, evidence = select(cfg.select, s.net, s.history, rows.heldout, store.task)
    if isinstance(s.cost, BudgetCost) and s.cost.limits():
        genotype, evidence["latency_check"] = checked_latency(s, cfg, store, genotype, ctx)
    evidence["supernet"] = supernet_evidence(s.history)
    evidence["lr_changes"] = s.lr_changes
    if evidence["supernet"]["blind"]:
        log.warning("%s: %s", out, judge.BLIND)
    elif evidence["supernet"].get("ended_blind"):
        log.warning("%s: %s", out, judge.ENDED_BLIND)
    if ctx.is_main:
        _write_genotype(genotype, out)
        plot_search(s.history, s.net.space.ops, out)
        atomic_write_json(  # last: it marks the search finished (model_folder.check_finished)
            out / SELECTION, {**evidence, "genotype": genotype.to_dict(), "costs": s.cost.describe()}
        )
        log.info("selected (%s) genotype:\n%s", cfg.select, genotype)
    distributed.barrier()
    return genotype


def checked_latency(
    s: Search, cfg: SearchConfig, store: KnowledgeStore, genotype: Genotype, ctx: Any
) -> tuple[Genotype, list[dict[str, Any]]]:
    """The selected genotype, its student built and timed at every limit's batch size (beside the
    teacher under a speedup budget; on the main process, shared with the others) and fitted again
    where it is slower than the table predicted."""
    from adabert.model_folder import load_classifier
    from adabert.report.evaluate import compare_latency
    from adabert.search.latency import build_student

    cost = s.cost
    embedding, batches = genotype_embedding(store), tuple(cost.limits())
    head = head_kind(cfg.head, store.task.is_pair)
    teacher = load_classifier(store.teacher_path).eval() if cost.speedup and ctx.is_main else None

    def measure(g: Genotype) -> dict[int, dict[str, float]]:
        times = None
        if ctx.is_main:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                student = build_student(g, embedding, store.num_labels, head)
            seq_len, pair, threads = cost.table.info["seq_len"], bool(embedding["pair"]), cfg.latency_threads
            times = {}
            for i, batch in enumerate(sorted(batches)):
                # the teacher beside it at the smallest batch only: at batch 32 it takes a second a call
                models = {"student": student, **({"teacher": teacher} if teacher and i == 0 else {})}
                ms = compare_latency(models, (batch,), seq_len, repeats=10 if i == 0 else 5, warmup=1,
                                     threads=threads, pair=pair)  # fmt: skip
                times[batch] = {name: ms[name][str(batch)]["median_ms"] for name in models}
        return distributed.broadcast_object(times)

    checked, timings = cost.check(genotype, s.net.edge_logits, s.net.depth_logits, measure)
    for row in timings:
        times = [
            f"batch {b} {t['student_ms']:.2f} ms (table {t['predicted_ms']:.2f}, limit {t['limit_ms']:.2f})"
            for b, t in row["batches"].items()
        ]
        log.info("the student of %d cell(s), timed: %s", row["genotype"]["num_cells"], ", ".join(times))
    if checked != genotype:
        log.warning("the selected genotype's student was slower than the budget; fitted again:\n%s", checked)
    if not timings[-1]["within"]:
        log.warning("the selected genotype's student is slower than the budget, and nothing cheaper is left")
    return checked, timings


def _log_start(s: Search, cfg: SearchConfig, rows: SearchRows) -> None:
    log.info(
        "search on %s (%s): %d weight rows, %d architecture rows, %d judge rows (trivial loss %.4f); "
        "weight phase %s; %s",
        describe(s.device),
        cfg.precision,
        len(rows.weights),
        len(rows.arch),
        len(rows.judge),
        rows.baseline["trivial_loss"],
        _describe_weight_phase(cfg),
        s.cost.describe()["kind"],
    )


def trivial_baseline(
    store: KnowledgeStore, weight_rows: data.StoreSplit, judge_rows: data.StoreSplit
) -> dict:
    """The trivial predictor on the judge rows: its loss, and (classification) the majority's accuracy."""
    train, held = weight_rows.labels[weight_rows.index], judge_rows.labels[judge_rows.index]
    task = store.task
    out = {"trivial_loss": judge.trivial_loss(train, held, store.num_labels, task.is_regression)}
    if not task.is_regression:
        out["majority_accuracy"] = judge.majority_accuracy(train, held)
    return out


def plan_steps(s: Search, cfg: SearchConfig) -> None:
    """Where the search phase starts (once the weight phase has ended) and the steps planned."""
    ended = [r for r in s.history if r.get("phase") != WARM_UP or r.get("weight_phase_end")]
    if s.search_start is None and cfg.uniform_warmup_epochs == 0:
        s.search_start = 0
    elif s.search_start is None and ended:
        first = ended[0]
        s.search_start = first["step"] if first.get("weight_phase_end") else first["step"] - s.steps_per_epoch
    searched = (cfg.epochs - cfg.uniform_warmup_epochs) * s.steps_per_epoch
    s.total_steps = (s.step if s.search_start is None else s.search_start) + searched


def finished(s: Search, cfg: SearchConfig) -> bool:
    return s.search_start is not None and s.step >= s.total_steps


def end_weight_phase(s: Search, cfg: SearchConfig) -> dict[str, Any]:
    """After a weight-phase epoch: whether the phase ends now, on the supernet's held-out evidence."""
    if s.search_start is not None:
        return {}
    rule = judge.WeightPhaseRule(
        min_epochs=cfg.uniform_warmup_epochs,
        max_epochs=cfg.max_warmup_epochs,
        fixed=cfg.weight_phase == "fixed",
    )
    warm = [r for r in s.history if r.get("phase") == WARM_UP]
    losses = [r["supernet"]["loss"] for r in warm]
    if not rule.fixed and losses[-1] == min(losses):
        s.best = [t.detach().clone() for t in judged_weights(s)]
    ends, why = judge.weight_phase_verdict(losses, s.history[-1]["supernet"]["trivial_loss"], rule)
    if not ends:
        plan_steps(s, cfg)
        return {}
    end = {"weight_phase_end": why}
    best = warm[losses.index(min(losses))]["epoch"]
    if s.best is not None and best != warm[-1]["epoch"]:
        load_judged_weights(s, s.best)
        why = f"{why}; the search goes on from epoch {best}'s weights"
        end = {"weight_phase_end": why, "weights_from": best}
        if losses[-1] > (1 + judge.OVERFIT_MARGIN) * min(losses):
            s.frozen = True  # more weight steps on these rows would only take the supernet further off
            end.update(weight_phase_end=f"{why}, kept fixed: it overfit its rows", weights_frozen=True)
    s.best = None
    s.search_start = s.step
    plan_steps(s, cfg)
    log.info("weight phase ended: %s", end["weight_phase_end"])
    return end


def judged_weights(s: Search) -> list[torch.Tensor]:
    """The weights the supernet is judged with: their moving average, or the current ones."""
    return s.average.average if s.average is not None else [p.detach() for p in s.weights.params]


@torch.no_grad()
def load_judged_weights(s: Search, tensors: list[torch.Tensor]) -> None:
    """Put judged weights back in the supernet, as its current weights and its average's start."""
    for param, value in zip(s.weights.params, tensors):
        param.copy_(value)
    if s.average is not None:
        s.average.reset()


def supernet_evidence(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The supernet's held-out losses through the search (for selection.json, the report and card)."""
    judged = [r for r in history if r.get("supernet")]
    if not judged:
        return {"blind": False}
    warm = [r for r in judged if r.get("phase") == WARM_UP]
    search = [r for r in judged if r.get("phase") != WARM_UP]
    # the weights the search phase started from: the weight phase's last epoch, or the best it went back to
    ended = next((r for r in warm if r.get("weight_phase_end")), warm[-1] if warm else None)
    start = next((r for r in warm if r["epoch"] == ended.get("weights_from")), ended) if ended else None
    out = {
        "trivial_loss": judged[-1]["supernet"]["trivial_loss"],
        "warmup_loss": start["supernet"]["loss"] if start else None,
        "warmup_epochs_used": len(warm),
        "weight_phase_end": next((r["weight_phase_end"] for r in warm if r.get("weight_phase_end")), None),
        "search_losses": [r["supernet"]["loss"] for r in search],
        "blind": judge.blind_search(history),
        "ended_blind": judge.blind_search(judged[-1:]),  # the last judged epoch's supernet
    }
    if "majority_accuracy" in judged[-1]["supernet"]:
        out["majority_accuracy"] = judged[-1]["supernet"]["majority_accuracy"]
        out["warmup_accuracy"] = start["supernet"].get("accuracy") if start else None
    return out


def derive(s: Search, store: KnowledgeStore) -> Genotype:
    """The argmax genotype of the logits, brought within the budget when there is one."""
    net = s.net
    genotype = derive_genotype(
        net.space,
        net.edge_logits.detach(),
        net.depth_logits.detach(),
        net.hidden_size,
        embedding=genotype_embedding(store),
    )
    if isinstance(s.cost, BudgetCost):  # the budget bounds what is derived
        genotype = s.cost.fit(genotype, net.edge_logits, net.depth_logits)
    return genotype


def _describe_weight_phase(cfg: SearchConfig) -> str:
    if cfg.weight_phase == "fixed" or cfg.uniform_warmup_epochs == 0:
        return f"{cfg.uniform_warmup_epochs} epoch(s)"
    return f"{cfg.uniform_warmup_epochs} to {cfg.max_warmup_epochs} epochs, until the supernet has learned"


def _random_architecture(
    cfg: SearchConfig, store: KnowledgeStore, space: SearchSpace, hidden: int, out: Path, ctx: Any
) -> Genotype:
    genotype = random_genotype(space, cfg.seed, hidden_size=hidden, embedding=genotype_embedding(store))
    if ctx.is_main:
        _write_genotype(genotype, out)
        atomic_write_json(out / SELECTION, {"select": "random", "genotype": genotype.to_dict()})
        log.info("random architecture from %s:\n%s", space.name, genotype)
    distributed.barrier()
    return genotype


def check_positions(store: KnowledgeStore) -> None:
    """Refuse a store whose rows may be longer than the teacher's position table (the model's positions)."""
    positions = store.manifest["teacher"]["config"]["max_position_embeddings"]
    if store.max_length > positions:
        raise UserError(
            f"{store.path}: the store's rows are up to max_length={store.max_length} tokens but its teacher "
            f"has only {positions} positions; rebuild the store with --max-length {positions} or less"
        )


def _cycle(batches: torch.utils.data.DataLoader):
    while True:
        yield from data.with_shares(batches)


def _log_epoch(r: dict[str, Any]) -> None:
    log.info(
        "epoch %d (%s): loss %.4f (ce %.4f kd %.4f eff %.4f) tau %.3f supernet held-out loss %.4f (trivial "
        "%.4f) derived held-out loss %.4f dev %s depth %d",
        r["epoch"],
        r["phase"],
        r["loss"],
        r["ce"],
        r["kd"],
        r["efficiency"],
        r["tau"],
        r["supernet"]["loss"],
        r["supernet"]["trivial_loss"],
        r["heldout"]["loss"],
        {k: round(v, 4) for k, v in r["dev"].items()},
        r["depth"],
    )


def _write_log(history: list[dict[str, Any]], out: Path) -> None:
    atomic_write_text(out / LOG, "".join(json.dumps(r) + "\n" for r in history))


def _write_genotype(genotype: Genotype, out: Path) -> None:
    genotype.save(out / GENOTYPE)
    draw_genotype(genotype, out / "genotype.png")


def plot_search(history: list[dict[str, Any]], ops: tuple[str, ...], out: Path) -> list[Path]:
    """Op probabilities per edge and the depth distribution over epochs, as PNG files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from adabert.io import atomic_save

    epochs = [r["epoch"] for r in history]
    probs = np.array([r["op_probabilities"] for r in history])  # [epochs, edges, ops]
    n_edges = probs.shape[1]
    cols = 3
    rows = math.ceil(n_edges / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(4 * cols, 2.6 * rows), sharex=True, sharey=True, squeeze=False
    )
    for e in range(rows * cols):
        ax = axes[e // cols][e % cols]
        if e >= n_edges:
            ax.axis("off")
            continue
        for o, name in enumerate(ops):
            ax.plot(epochs, probs[:, e, o], label=name)
        ax.set_title(f"edge {e}", fontsize=9)
    axes[0][0].legend(fontsize=6, ncol=2)
    fig.suptitle("operation probabilities per edge")
    fig.supxlabel("epoch")
    fig.tight_layout()
    paths = [out / "op_probabilities.png", out / "depth_distribution.png"]
    atomic_save(paths[0], lambda p: fig.savefig(p, format="png", dpi=110))
    plt.close(fig)

    depth = np.array([r["depth_probabilities"] for r in history])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.stackplot(epochs, depth.T, labels=[f"K={k + 1}" for k in range(depth.shape[1])])
    ax.set_xlabel("epoch")
    ax.set_ylabel("probability")
    ax.set_title("depth distribution")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1, 1))
    fig.tight_layout()
    atomic_save(paths[1], lambda p: fig.savefig(p, format="png", dpi=110))
    plt.close(fig)
    return paths
