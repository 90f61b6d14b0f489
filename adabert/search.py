"""The architecture search loop, derivation, and its log and plots.

Alternating first-order updates (DARTS): a weight step on one half of the training rows, then an
architecture step on the other half, both on ``(1 - gamma) CE + gamma KD + beta L_E`` of a freshly
sampled sub-network. Each epoch ends with the derived genotype, its dev metric, and an atomic
checkpoint, so ``--resume`` continues from the last finished epoch with the same random state.

The same code runs in one process or under ``torchrun`` (``adabert.distributed``): the processes
split each batch, sum their weighted gradients, draw the same Gumbel samples, and so hold the same
architecture logits; rank 0 writes the checkpoint, log and genotype while the others wait.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from adabert import data, distributed
from adabert.checkpoint import CheckpointError, load_state, save_state, settings_hash
from adabert.config import SearchConfig, save_config, to_dict
from adabert.distill import hierarchical_kd, task_loss
from adabert.genotype import Genotype, derive_genotype, draw_genotype, random_genotype
from adabert.io import atomic_save, atomic_write_text
from adabert.store import KnowledgeStore
from adabert.supernet import Sample, Supernet
from adabert.tasks import compute_metrics, predictions_from_logits
from search_spaces import get_space

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.safetensors"
CHECKPOINT_KIND = "search"
GENOTYPE = "genotype.json"
LOG = "search_log.jsonl"
# Settings that may change between an interrupted run and its resumption.
RESUMABLE_CHANGES = {"resume", "epochs", "num_workers", "output_dir", "store"}


class DivergenceError(RuntimeError):
    """The loss became NaN or infinite; the last checkpoint is left as it was."""


def temperature(cfg: SearchConfig, step: int, total_steps: int) -> float:
    """Exponential anneal from tau_start to tau_end over the first ``tau_anneal_fraction`` of steps."""
    span = max(1.0, cfg.tau_anneal_fraction * total_steps)
    progress = min(1.0, step / span)
    return cfg.tau_start * (cfg.tau_end / cfg.tau_start) ** progress


def genotype_embedding(store: KnowledgeStore) -> dict[str, Any]:
    config = store.manifest["teacher"]["config"]
    return {
        "vocab_size": config["vocab_size"],
        "max_position_embeddings": config["max_position_embeddings"],
        "teacher_hidden_size": config["hidden_size"],
        "pair": store.task.is_pair,
    }


def build_supernet(cfg: SearchConfig, store: KnowledgeStore) -> Supernet:
    return Supernet(
        get_space(cfg.space),
        store.num_labels,
        store.embeddings(),
        hidden_size=cfg.hidden_size,
        max_cells=cfg.max_cells,
        dropout=cfg.dropout,
        pair=store.task.is_pair,
        cost_seq_len=cfg.cost_seq_len,
    )


def search_loss(
    net: Supernet,
    batch: dict[str, torch.Tensor],
    sample: Sample,
    cfg: SearchConfig,
    beta: float,
    regression: bool,
) -> tuple[torch.Tensor, dict[str, float]]:
    out = net(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], sample)
    ce = task_loss(out.logits, batch["labels"], regression)
    kd = (
        hierarchical_kd(
            out.probe_logits, batch["probe_logits"], batch["labels"], regression, cfg.kd_temperature
        )
        if cfg.gamma > 0
        else torch.zeros(())
    )
    eff = net.efficiency_loss(sample)
    total = (1 - cfg.gamma) * ce + cfg.gamma * kd + beta * eff
    return total, {"loss": total.item(), "ce": ce.item(), "kd": kd.item(), "efficiency": eff.item()}


@torch.no_grad()
def evaluate_genotype(
    net: Supernet, genotype: Genotype, loader: torch.utils.data.DataLoader, task: Any
) -> dict[str, float]:
    """Dev metrics of the derived sub-network, run inside the supernet with its searched weights.

    Under torchrun each rank passes the loader of its part of the dev rows; the parts are gathered
    in rank order, so every rank computes the metrics over all rows.
    """
    net.eval()
    sample = net.fixed_sample(genotype)
    logits, labels = [], []
    for batch in loader:
        out = net(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], sample)
        logits.append(out.logits.float().numpy())
        labels.append(batch["labels"].numpy())
    net.train()
    logits, labels = gather_predictions(logits, labels)
    return compute_metrics(task, predictions_from_logits(task, logits), labels)


def gather_predictions(logits: list[np.ndarray], labels: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate the batches' logits and labels of every rank, in rank order."""
    parts = distributed.all_gather_object((logits, labels))
    logits = [x for rank_logits, _ in parts for x in rank_logits]
    labels = [y for _, rank_labels in parts for y in rank_labels]
    if not logits:
        raise ValueError("no dev rows to evaluate")
    return np.concatenate(logits), np.concatenate(labels)


def check_resumable(cfg: Any, saved: dict[str, Any], path: Path, may_change: set[str]) -> None:
    """Refuse to continue a run whose settings changed (other than ``may_change``) since its checkpoint."""
    current = to_dict(cfg)
    changed = sorted(k for k in current if k not in may_change and saved.get(k) != current[k])
    if changed:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {current[k]!r}" for k in changed)
        raise ValueError(
            f"{path}: cannot resume, the settings changed ({details}); "
            "use a new --output-dir or restore the settings"
        )


def check_positions(store: KnowledgeStore) -> None:
    """Refuse a store whose rows may be longer than the teacher's position table (the model's positions)."""
    positions = store.manifest["teacher"]["config"]["max_position_embeddings"]
    if store.max_length > positions:
        raise ValueError(
            f"{store.path}: the store's rows are up to max_length={store.max_length} tokens but its teacher "
            f"has only {positions} positions; rebuild the store with --max-length {positions} or less"
        )


def remove_stale_temporaries(directory: Path, names: tuple[str, ...]) -> None:
    """Delete temp files that a killed run left beside its outputs (``.NAME.*.tmp``, see adabert.io)."""
    for name in names:
        for leftover in directory.glob(f".{name}.*.tmp"):
            leftover.unlink(missing_ok=True)
    for leftover in directory.glob(".save.*"):  # save_pretrained_atomic's temp dirs
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)


def divergence_advice(checkpoint: Path, finished_epochs: int, settings: str) -> str:
    """What is left on disk after a diverged step, and what to do next."""
    if finished_epochs:
        return (
            f"the last good checkpoint ({checkpoint}, epoch {finished_epochs}) is intact. "
            f"Lower {settings} and resume with --resume."
        )
    return f"no epoch finished, so no checkpoint was written. Lower {settings} and start again."


def load_checkpoint(path: Path, resume: bool, kind: str = CHECKPOINT_KIND) -> dict[str, Any] | None:
    """Rank 0 reads the checkpoint (if resuming and it exists) and hands it to every rank.

    Only rank 0's file system needs the output directory: the other ranks get the state over the
    process group. Checkpoints are never unpickled (:mod:`adabert.checkpoint`).
    """
    state = None
    if distributed.is_main() and resume:
        if path.exists():
            state = load_state(path, kind)
            if "config" not in state or "epoch" not in state:
                raise CheckpointError(
                    f"{path}: not an adabert {kind} checkpoint; move it away to start afresh"
                )
        else:
            legacy = path.with_suffix(".pt")
            if legacy.exists():
                log.warning(
                    "--resume: %s is a pickle-based checkpoint of an older adabert and is never read; "
                    "starting from scratch",
                    legacy,
                )
            else:
                log.warning("--resume: no %s checkpoint in %s, starting from scratch", kind, path.parent)
    return distributed.broadcast_object(state)


def gather_rng_states() -> list[torch.Tensor]:
    """Every rank's CPU random state (dropout draws differ per rank), in rank order."""
    return distributed.all_gather_object(torch.get_rng_state())


def restore_rng_state(state: dict[str, Any], seed: int) -> None:
    """Put back this rank's random state, or reseed when the checkpoint came from another world size."""
    states = state.get("rng_per_rank") or [state["rng"]]
    rank, world = distributed.rank(), distributed.world_size()
    if len(states) == world:
        torch.set_rng_state(states[rank])
    else:
        log.warning(
            "the checkpoint was written by %d process(es), this run has %d: the batches and Gumbel "
            "samples continue as before, the dropout draws do not",
            len(states),
            world,
        )
        if rank == 0:
            torch.set_rng_state(states[0])
        else:
            torch.manual_seed(seed + 7919 * rank)


TERMS = ("loss", "ce", "kd", "efficiency")


def run_search(cfg: SearchConfig) -> Genotype:
    """Search an architecture for the store's task; writes genotype, picture, log and checkpoints.

    Runs the same under ``torchrun``: each global batch is split across the processes, their gradients
    are summed with weights (see :func:`adabert.distributed.reduce_gradients`), every process draws the
    same Gumbel samples and so holds the same architecture logits; rank 0 alone writes.
    """
    ctx = distributed.setup()
    out = Path(cfg.output_dir)
    store = KnowledgeStore.open(cfg.store)
    check_positions(store)
    space = get_space(cfg.space)
    hidden = cfg.hidden_size or space.hidden_size
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(
            out,
            (
                CHECKPOINT,
                GENOTYPE,
                LOG,
                "genotype.png",
                "config.json",
                "op_probabilities.png",
                "depth_distribution.png",
            ),
        )
        save_config(cfg, out / "config.json")

    if cfg.random_architecture:
        genotype = random_genotype(space, cfg.seed, hidden_size=hidden, embedding=genotype_embedding(store))
        if ctx.is_main:
            _write_genotype(genotype, out)
            log.info("random architecture from %s:\n%s", space.name, genotype)
        distributed.barrier()
        return genotype

    torch.manual_seed(cfg.seed)
    regression = store.task.is_regression
    train = data.load_split(store, "train", cfg.train_limit, cfg.use_augmented, cfg.seed)
    dev = data.load_split(store, store.dev_split)
    order = np.random.default_rng(cfg.seed).permutation(len(train))
    n_arch = max(1, int(round(cfg.arch_fraction * len(train))))
    if n_arch >= len(train):
        raise ValueError(
            f"{cfg.store}: {len(train)} training row(s) leave none for the weight steps after "
            f"arch_fraction={cfg.arch_fraction}; use more rows or a smaller --arch-fraction"
        )
    weight_rows, arch_rows = train.subset(order[n_arch:]), train.subset(order[:n_arch])
    pad_id = store.tokenizer().pad_token_id or 0
    # each rank scores its contiguous part of the dev rows; the parts are gathered in order
    dev_lo, dev_hi = data.shard_bounds(len(dev), ctx.rank, ctx.world_size)
    dev_loader = data.loader(
        dev.subset(range(dev_lo, dev_hi)), cfg.batch_size * 2, False, pad_token_id=pad_id
    )

    net = build_supernet(cfg, store)
    # the same initial weights everywhere (the same seed builds the same net; this makes it certain)
    distributed.broadcast_parameters([*net.parameters(), *net.buffers()])
    # dropout: a stream of its own per rank, seeded after the build (whose draws may vary, e.g. the op
    # costs are measured on freshly built ops only the first time in a process)
    torch.manual_seed(cfg.seed + 7919 * ctx.rank)
    # Gumbel samples: one generator, seeded alike on every rank, so all ranks run the same sub-network
    sampler = torch.Generator().manual_seed(cfg.seed * 100_043 + 17)
    w_opt = torch.optim.Adam(net.weight_parameters(), lr=cfg.w_lr, weight_decay=cfg.w_weight_decay)
    a_opt = torch.optim.Adam(net.arch_parameters(), lr=cfg.arch_lr, weight_decay=cfg.arch_weight_decay)
    history: list[dict[str, Any]] = []
    start_epoch, step = 0, 0
    checkpoint_path = out / CHECKPOINT
    state = load_checkpoint(checkpoint_path, cfg.resume)
    if state is not None:
        check_resumable(cfg, state["config"], checkpoint_path, RESUMABLE_CHANGES)
        net.load_state_dict(state["model"])
        w_opt.load_state_dict(state["w_opt"])
        a_opt.load_state_dict(state["a_opt"])
        restore_rng_state(state, cfg.seed)
        if "sample_rng" in state:
            sampler.set_state(state["sample_rng"])
        start_epoch, step, history = state["epoch"], state["step"], state["history"]
        log.info("resuming from %s after epoch %d", checkpoint_path, start_epoch)
    del state

    steps_per_epoch = math.ceil(len(weight_rows) / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    weight_params, arch_params = net.weight_parameters(), net.arch_parameters()
    shard = {
        "rank": ctx.rank,
        "world_size": ctx.world_size,
        "pad_token_id": pad_id,
        "num_workers": cfg.num_workers,
    }
    net.train()
    for epoch in range(start_epoch, cfg.epochs):
        started = time.perf_counter()
        beta = (
            cfg.beta * min(1.0, (epoch + 1) / cfg.beta_warmup_epochs) if cfg.beta_warmup_epochs else cfg.beta
        )
        w_loader = data.loader(weight_rows, cfg.batch_size, True, cfg.seed * 100_003 + epoch, **shard)
        a_iter = _cycle(data.loader(arch_rows, cfg.batch_size, True, cfg.seed * 100_019 + epoch, **shard))
        sums = dict.fromkeys(TERMS, 0.0)
        bar = tqdm(
            data.with_shares(w_loader),
            total=len(w_loader),
            desc=f"search epoch {epoch + 1}/{cfg.epochs}",
            leave=False,
            disable=not ctx.is_main,
        )
        for w_rows in bar:
            tau = temperature(cfg, step, total_steps)
            updates = [(weight_params, w_opt, w_rows)]
            if epoch >= cfg.arch_warmup_epochs:  # judge ops only once their weights have trained
                updates.append((arch_params, a_opt, next(a_iter)))
            for params, optimizer, (rows, share) in updates:
                loss, terms = search_loss(net, rows, net.sample(tau, sampler), cfg, beta, regression)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                # the global batch's gradient and loss terms, the same on every rank
                reduced = distributed.reduce_gradients(
                    params, share, torch.tensor([terms[k] for k in TERMS], dtype=torch.float64)
                )
                terms = dict(zip(TERMS, reduced.tolist()))
                if optimizer is w_opt:  # the log reports the weight step's terms in every epoch
                    logged = terms
                if not math.isfinite(terms["loss"]):
                    raise DivergenceError(
                        f"search loss became {terms['loss']} at epoch {epoch + 1}, step {step}; "
                        + divergence_advice(checkpoint_path, epoch, "--w-lr / --arch-lr or --beta")
                    )
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                optimizer.step()
            for key, value in logged.items():
                sums[key] += value
            step += 1
            bar.set_postfix(loss=f"{logged['loss']:.3f}", tau=f"{tau:.2f}")
        n = max(1, len(w_loader))
        # every rank must hold the same architecture, or they would derive different genotypes
        distributed.check_in_sync({"edge_logits": net.edge_logits, "depth_logits": net.depth_logits})
        genotype = derive_genotype(
            space,
            net.edge_logits.detach(),
            net.depth_logits.detach(),
            hidden,
            embedding=genotype_embedding(store),
        )
        record = {
            "epoch": epoch + 1,
            "step": step,
            **{k: v / n for k, v in sums.items()},
            "tau": tau,
            "beta": beta,
            "dev": evaluate_genotype(net, genotype, dev_loader, store.task),
            "depth": genotype.num_cells,
            "op_probabilities": torch.softmax(net.edge_logits.detach(), -1).tolist(),
            "depth_probabilities": torch.softmax(net.depth_logits.detach(), -1).tolist(),
            "genotype": genotype.to_dict(),
            "seconds": time.perf_counter() - started,
        }
        history.append(record)
        log.info(
            "epoch %d: loss %.4f (ce %.4f kd %.4f eff %.4f) tau %.3f dev %s depth %d",
            epoch + 1,
            record["loss"],
            record["ce"],
            record["kd"],
            record["efficiency"],
            tau,
            record["dev"],
            genotype.num_cells,
        )
        rng_states = gather_rng_states()
        if ctx.is_main:
            state = {
                "model": net.state_dict(),
                "w_opt": w_opt.state_dict(),
                "a_opt": a_opt.state_dict(),
                "rng": rng_states[0],
                "rng_per_rank": rng_states,
                "sample_rng": sampler.get_state(),
                "world_size": ctx.world_size,
                "epoch": epoch + 1,
                "step": step,
                "history": history,
                "config": to_dict(cfg),
            }
            save_state(
                checkpoint_path, state, CHECKPOINT_KIND, settings_hash(to_dict(cfg), RESUMABLE_CHANGES)
            )
            _write_log(history, out)
            _write_genotype(genotype, out)
            del state
        distributed.barrier()  # the epoch is over everywhere once its checkpoint is on disk

    if not history:
        raise ValueError(f"{out}: nothing to search (epochs={cfg.epochs})")
    genotype = Genotype.from_dict(history[-1]["genotype"])
    if ctx.is_main:
        plot_search(history, space.ops, out)
    distributed.barrier()
    return genotype


def _cycle(batches: torch.utils.data.DataLoader):
    while True:
        yield from data.with_shares(batches)


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
    _save_figure(fig, paths[0])

    depth = np.array([r["depth_probabilities"] for r in history])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.stackplot(epochs, depth.T, labels=[f"K={k + 1}" for k in range(depth.shape[1])])
    ax.set_xlabel("epoch")
    ax.set_ylabel("probability")
    ax.set_title("depth distribution")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1, 1))
    fig.tight_layout()
    _save_figure(fig, paths[1])
    return paths


def _save_figure(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    atomic_save(path, lambda p: fig.savefig(p, format=path.suffix.lstrip("."), dpi=110))
    plt.close(fig)
