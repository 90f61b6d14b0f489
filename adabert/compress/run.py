"""The compression stage: methods in order, KD from the knowledge store, a reloadable model and a report.

``compress(cfg)`` runs the methods of ``cfg.methods`` in order on a copy of the model (any sequence
classifier: the fine-tuned BERT teacher or an AdaBERT student), each followed by KD training against
the stored teacher logits (``(1 - gamma) task + gamma KD``, as in ``adabert train``) plus, weighted by
``hidden_kd``, the MSE between its hidden states and the uncompressed original's (LadaBERT's
layer-wise KD; computed on the fly, since compression keeps the hidden shapes):

- ``svd``: every eligible Linear / Conv1d becomes its truncated-SVD pair, then ``kd_epochs`` of KD.
- ``magnitude``: iterative unstructured pruning, ``prune_rounds`` rounds with the kept fraction
  ``keep_t = (1 - target_sparsity)^(t/T)``, KD between the rounds (``kd_epochs`` in all), then
  ``retrain_epochs`` with the masks fixed (LadaBERT; after ``svd`` it prunes the factors).
- ``block``: the same rounds, cutting the smallest row / column groups of each block, with KD plus
  the penalty ``λ Σ γ_g ||W_g||²_F`` on the groups a cut at the target would remove, as decoupled
  shrink steps (γ refreshed every ``reweight_every`` steps and after each cut),
  then ``retrain_epochs`` with the masks fixed (Li et al. 2020; ``prune_rounds = 1``: their one cut).

With ``embeddings`` the embedding tables are compressed too (an AdaBERT student is mostly its table):
SVD makes ALBERT-style factorized embeddings, pruning prunes the table (block row groups = tokens).
Block pruning of whole columns of a student's word table (``group = "col"``) prunes whole hidden
dimensions: the position-table column and the LayerNorm scale and shift go with each word column
(the model's ``HIDDEN_TENSORS``), so a student with parameter-free cells becomes physically narrower.

Masks stay active across later methods, so nothing pruned comes back. At the end the masks are
baked in, rows / columns / ranks that ended up all zero are physically removed (exactly: the outputs
are checked), and the model is saved in the ``adabert-compressed`` wrapper that reloads at its smaller
size with ``AutoModelForSequenceClassification.from_pretrained``. The saved model is reloaded and
compared, then measured against the original model and the teacher in one latency run, and
``report.json`` / ``report.md`` are written in the same form as ``adabert evaluate``'s.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import get_linear_schedule_with_warmup

from adabert import data, optim
from adabert.checkpoint import DivergenceError
from adabert.compress import prune
from adabert.compress.factorize import FACTORIZED, compressible_layers, factorize_model
from adabert.compress.model import unwrap, wrap
from adabert.config import COMPRESS_METHODS, CompressConfig, save_config, to_dict
from adabert.distill import blend, hidden_state_kd, logits_kd, task_loss
from adabert.engine import Stepper
from adabert.errors import UserError
from adabert.io import atomic_write_text, save_pretrained_atomic
from adabert.progress import progress as progress_bar
from adabert.report.evaluate import (
    compare_latency,
    count_parameters,
    evaluate_predictions,
    flops_per_example,
    jsonable,
    load_classifier,
    model_file_size,
    render_report,
    write_report,
)
from adabert.student.train import predict_logits
from adabert.tasks import TaskSpec
from adabert.teacher.store import KnowledgeStore

log = logging.getLogger(__name__)

METHODS = COMPRESS_METHODS
STUDENT_LR, DEFAULT_LR = 1e-3, 5e-5
EXACT_ATOL = 1e-4


def parse_methods(text: str) -> list[str]:
    """``"svd,block"`` -> ``["svd", "block"]``, refusing unknown names."""
    methods = [m.strip().lower() for m in str(text).split(",") if m.strip()]
    if not methods:
        raise UserError(f"no compression methods given; choose from {', '.join(METHODS)}")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise UserError(f"unknown compression method(s) {unknown}; choose from {', '.join(METHODS)}")
    return methods


def default_lr(model: nn.Module) -> float:
    """1e-3 for an AdaBERT student (trained from scratch at that rate), 5e-5 for a transformer."""
    inner = unwrap(model)
    return STUDENT_LR if getattr(inner.config, "model_type", "") == "adabert-student" else DEFAULT_LR


# ------------------------------------------------------------------------------------------------ KD loop
class Distiller:
    """KD training against the stored teacher logits, with endless seeded batches across phases."""

    def __init__(
        self,
        model: nn.Module,
        train: data.StoreSplit,
        cfg: CompressConfig,
        regression: bool,
        device: torch.device,
        lr: float,
        reference: nn.Module | None = None,
    ) -> None:
        self.model, self.train, self.cfg = model, train, cfg
        self.regression, self.device, self.lr = regression, device, lr
        self.pad_id = getattr(model.config, "pad_token_id", None) or 0
        self.steps_per_epoch = max(1, math.ceil(len(train) / cfg.batch_size))
        self._epoch = 0
        self._batches = self._endless()
        self.reference = reference if cfg.hidden_kd > 0 and self._matches(reference) else None

    def _matches(self, reference: nn.Module | None) -> bool:
        """Whether ``reference`` returns hidden states of the model's shapes (else: logits KD only)."""
        if reference is None:
            return False
        batch = {k: v.to(self.device) for k, v in data.collate([self.train[0]]).items()}
        with torch.no_grad():
            ours, theirs = (self._forward(m, batch, hidden=True) for m in (self.model, reference))
        shapes = [[tuple(h.shape) for h in out.hidden_states or ()] for out in (ours, theirs)]
        if not shapes[0] or shapes[0] != shapes[1]:
            log.warning(
                "hidden-state KD is off: the model's hidden states %s do not match the original's %s",
                shapes[0],
                shapes[1],
            )
            return False
        return True

    @staticmethod
    def _forward(model: nn.Module, batch: dict[str, torch.Tensor], hidden: bool) -> Any:
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
        return model(**inputs, output_hidden_states=True) if hidden else model(**inputs)

    def _endless(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            seed = self.cfg.seed * 100_003 + self._epoch
            yield from data.loader(self.train, self.cfg.batch_size, True, seed, self.pad_id)
            self._epoch += 1

    def steps(self, epochs: float) -> int:
        return int(round(epochs * self.steps_per_epoch))

    def run(
        self,
        steps: int,
        desc: str,
        lasso: prune.GroupLasso | None = None,
        before_step: Callable[[int], None] | None = None,
    ) -> dict[str, float]:
        """``steps`` steps of ``(1 - gamma) task + gamma KD + hidden_kd MSE`` (+ ``lasso``); mean terms."""
        if steps <= 0:
            return {"steps": 0}
        cfg, model = self.cfg, self.model
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = optim.adam(params, decoupled=True, lr=self.lr, weight_decay=cfg.weight_decay)
        scheduler = get_linear_schedule_with_warmup(optimizer, int(0.06 * steps), steps)
        step_on = Stepper(params, optimizer, cfg.grad_clip)  # the scheduler steps after the lasso
        sums = {"loss": 0.0, "task": 0.0, "kd": 0.0, "hidden": 0.0, "penalty": 0.0}
        model.train()
        bar = progress_bar(range(steps), desc=desc, leave=False)
        for step in bar:
            if before_step is not None:
                before_step(step)
            batch = {k: v.to(self.device) for k, v in next(self._batches).items()}
            out = self._forward(model, batch, hidden=self.reference is not None)
            terms = {
                "task": task_loss(out.logits, batch["labels"], self.regression),
                "kd": logits_kd(out.logits, batch["teacher_logits"], self.regression, cfg.kd_temperature),
            }
            loss = blend(terms["task"], terms["kd"], cfg.gamma)
            if self.reference is not None:
                with torch.no_grad():
                    target = self._forward(self.reference, batch, hidden=True).hidden_states
                terms["hidden"] = hidden_state_kd(out.hidden_states, target, batch["attention_mask"])
                loss = loss + cfg.hidden_kd * terms["hidden"]
            try:
                values = step_on(loss, terms, where=f"at step {step + 1}")
            except DivergenceError as err:
                raise DivergenceError(f"{desc}: {err}; lower --lr") from None
            if lasso is not None:
                lasso.shrink(scheduler.get_last_lr()[0])
                with torch.no_grad():
                    values["penalty"] = lasso.penalty().item()
            scheduler.step()
            for key, value in values.items():
                sums[key] += value
            bar.set_postfix(loss=f"{values['loss']:.3f}")
        model.eval()
        return {"steps": steps, **{k: v / steps for k, v in sums.items()}}


# ----------------------------------------------------------------------------------------------- methods
def _prunable(model: nn.Module, cfg: CompressConfig) -> list[str]:
    return [name for name, _ in compressible_layers(model, cfg.exclude, embeddings=cfg.embeddings)]


def _density(model: nn.Module, names: list[str]) -> dict[str, Any]:
    stats = prune.sparsity_stats(model, names)
    return {
        "density": stats["density"],
        "layers": {n: {"shape": s["shape"], "density": s["density"]} for n, s in stats["layers"].items()},
    }


def run_svd(model: nn.Module, cfg: CompressConfig, distiller: Distiller) -> dict[str, Any]:
    """Factorize every eligible layer (masks on a factorized layer are baked into its factors), then KD."""
    inner = unwrap(model)
    masked = prune.current_masks(inner)
    if masked:
        log.warning(
            "factorizing %d pruned layers: their sparsity is replaced by low rank (prune after svd "
            "to keep both)",
            len(masked),
        )
        prune.make_permanent(inner)
    layers = factorize_model(inner, cfg.rank_ratio, cfg.energy, cfg.exclude, cfg.embeddings)
    if masked:  # layers that were not factorized keep their masks
        prune.apply_masks(inner, {n: m for n, m in masked.items() if _has_weight(inner, n)})
    model.to(distiller.device)
    training = distiller.run(distiller.steps(cfg.kd_epochs), "svd: KD")
    return {
        "method": "svd",
        "rank_ratio": cfg.rank_ratio,
        "energy": cfg.energy,
        "layers": layers,
        "factorized": sum(1 for s in layers.values() if s.get("factorized")),
        "training": training,
    }


def _has_weight(model: nn.Module, name: str) -> bool:
    try:
        module = model.get_submodule(name)
    except AttributeError:
        return False
    return isinstance(module, (nn.Linear, nn.Conv1d, nn.Embedding))


def prune_gradually(
    model: nn.Module,
    cfg: CompressConfig,
    distiller: Distiller,
    method: str,
    masks_at: Callable[[float], dict[str, torch.Tensor]],
    lasso: prune.GroupLasso | None = None,
    before_step: Callable[[int], None] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """T rounds of "prune to ``keep_t = keep^(t/T)``, then KD" (``kd_epochs`` in all), then retraining.

    Removing a little at a time with KD in between loses far less than one cut at the target
    (LadaBERT; Zhu & Gupta); ``prune_rounds = 1`` is the one-shot cut. Masks only ever grow.
    """
    schedule = prune.keep_schedule(cfg.target_sparsity, cfg.prune_rounds)
    total = distiller.steps(cfg.kd_epochs)
    bounds = [round(total * t / len(schedule)) for t in range(len(schedule) + 1)]
    rounds = []
    for t, keep in enumerate(schedule, 1):
        prune.apply_masks(unwrap(model), masks_at(1.0 - keep))
        desc = f"{method} round {t}/{len(schedule)}"
        training = distiller.run(bounds[t] - bounds[t - 1], desc, lasso, before_step)
        rounds.append({"round": t, "keep": keep, **training})
        log.info("%s: keep %.4f, loss %s", desc, keep, training.get("loss"))
    retrain = distiller.run(distiller.steps(cfg.retrain_epochs), f"{method}: retrain")
    return rounds, retrain


def run_magnitude(model: nn.Module, cfg: CompressConfig, distiller: Distiller) -> dict[str, Any]:
    """Iterative unstructured magnitude pruning with KD between the rounds (LadaBERT)."""
    inner = unwrap(model)
    names = _prunable(inner, cfg)

    def masks_at(sparsity: float) -> dict[str, torch.Tensor]:
        return {n: prune.magnitude_masks(inner.get_submodule(n).weight, sparsity) for n in names}

    rounds, retrain = prune_gradually(model, cfg, distiller, "magnitude", masks_at)
    return {
        "method": "magnitude",
        "target_sparsity": cfg.target_sparsity,
        "schedule": [r["keep"] for r in rounds],
        "rounds": rounds,
        "retrain": retrain,
        **_density(inner, names),
    }


def _hidden_tensors(model: nn.Module, names: list[str], cfg: CompressConfig) -> tuple[tuple[str, str], ...]:
    """The tensors of a hidden dimension (``HIDDEN_TENSORS``, first: the one pruned by columns) when
    block pruning removes whole columns of it: they are pruned together, so the dimension can go."""
    tensors = tuple(getattr(model, "HIDDEN_TENSORS", ()))
    whole_columns = cfg.group == "col" and cfg.block_size[0] == 0
    return tensors if tensors and whole_columns and tensors[0][0] in names else ()


def run_block(model: nn.Module, cfg: CompressConfig, distiller: Distiller) -> dict[str, Any]:
    """Block pruning (Li et al.): KD with the reweighted group lasso, the smallest groups cut in rounds."""
    inner = unwrap(model)
    names = _prunable(inner, cfg)
    tied = _hidden_tensors(inner, names, cfg)
    names = [n for n in names if n not in {module for module, _ in tied[1:]}]
    lasso = prune.GroupLasso(
        inner, names, cfg.block_size, cfg.group, cfg.lasso_lambda, cfg.lasso_eps, cfg.target_sparsity
    )

    def before_step(step: int) -> None:
        if step and step % cfg.reweight_every == 0:
            lasso.reweight()

    def masks_at(sparsity: float) -> dict[str, torch.Tensor]:
        masks = lasso.masks(sparsity)
        if tied:  # the other tensors of each pruned hidden dimension go with its word-table column
            prune.mask_hidden_dims(inner, tied[1:], masks[tied[0][0]].any(0))
        lasso.reweight()  # the pruned groups' weights are zero now: rebalance before training on
        return masks

    rounds, retrain = prune_gradually(model, cfg, distiller, "block", masks_at, lasso, before_step)
    return {
        "method": "block",
        "target_sparsity": cfg.target_sparsity,
        "block_size": list(cfg.block_size),
        "group": cfg.group,
        "lasso_lambda": cfg.lasso_lambda,
        "rounds": rounds,
        "retrain": retrain,
        **_density(inner, names),
    }


METHOD_RUNNERS: dict[str, Callable[[nn.Module, CompressConfig, Distiller], dict[str, Any]]] = {
    "svd": run_svd,
    "magnitude": run_magnitude,
    "block": run_block,
}


# ----------------------------------------------------------------------------------------------- helpers
def _probe_batch(split: data.StoreSplit, device: torch.device, n: int = 16) -> dict[str, torch.Tensor]:
    batch = data.collate([split[i] for i in range(min(n, len(split)))])
    return {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "token_type_ids")}


@torch.no_grad()
def _logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    model.eval()
    return model(**batch).logits.float().cpu()


def _same_path(a: str | Path, b: str | Path) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def _dev_metrics(
    store: KnowledgeStore,
    models: dict[str, nn.Module],
    batch_size: int,
    device: torch.device,
) -> dict[str, Any]:
    """Dev metrics and loyalty of each model, plus the teacher's from its stored logits (every dev split)."""
    task = store.task
    metrics: dict[str, Any] = {}
    for split in [s for s in task.dev_splits if s in store.splits] or [store.dev_split]:
        rows = data.load_split(store, split)
        labels = np.asarray(rows.labels[rows.index])
        teacher_logits = np.asarray(store.teacher_logits(split))
        suffix = "" if split == store.dev_split else f" ({split})"
        for name, model in models.items():
            pad_id = getattr(model.config, "pad_token_id", None) or 0
            loader = data.loader(rows, batch_size, shuffle=False, pad_token_id=pad_id)
            logits, _ = predict_logits(model, loader, device)
            metrics[name + suffix] = evaluate_predictions(task, logits, labels, teacher_logits)
        metrics["teacher" + suffix] = evaluate_predictions(task, teacher_logits, labels)
    return metrics


def _size(model: nn.Module, path: str | Path | None, seq_len: int, pair: bool) -> dict[str, Any]:
    file_bytes = None
    if path is not None:
        try:
            file_bytes = model_file_size(path, (".safetensors", ".bin"))
        except FileNotFoundError:
            file_bytes = None
    return {
        **count_parameters(model),
        "file_bytes": file_bytes,
        "flops_per_example": flops_per_example(model, seq_len, pair=pair),
    }


# ---------------------------------------------------------------------------------------------- the stage
def compress(cfg: CompressConfig) -> dict[str, Any]:
    """Run the methods with KD, save the compressed model, write its report and return the report."""
    methods = parse_methods(cfg.methods)  # the other settings' ranges: CompressConfig checks them
    started = time.perf_counter()
    out = _prepare_output(cfg)
    torch.manual_seed(cfg.seed)
    from adabert.device import resolve_device

    device = resolve_device(cfg.device)
    store = KnowledgeStore.open(cfg.store)
    task = store.task
    original, model, previous = _load_models(cfg.model, task, device)
    lr = cfg.lr if cfg.lr is not None else default_lr(model)

    train = data.load_split(store, "train", cfg.train_limit, cfg.use_augmented, cfg.seed)
    dev = data.load_split(store, store.dev_split)
    original.eval()
    distiller = Distiller(model, train, cfg, task.is_regression, device, lr, reference=original)
    log.info(
        "compressing %s with %s: %d training rows, %d steps per epoch, lr %g",
        cfg.model,
        ",".join(methods),
        len(train),
        distiller.steps_per_epoch,
        lr,
    )
    method_stats = _run_methods(model, cfg, distiller, methods)

    probe = _probe_batch(dev, device)
    shrunk, shrink_diff = _shrink(model, probe, previous + methods)
    reloaded, reload_diff = _save_and_reload(model, out, store.tokenizer(), probe, device)

    teacher_dir = store.teacher_path
    teacher_is_original = _same_path(teacher_dir, cfg.model)
    teacher = None if teacher_is_original else _comparison_teacher(teacher_dir, task, device)
    compared: dict[str, tuple[nn.Module, str | Path]] = {
        "compressed": (reloaded, out),
        "original": (original, cfg.model),
    }
    if teacher is not None:
        compared["teacher"] = (teacher, teacher_dir)

    pair = task.is_pair
    metrics = _dev_metrics(store, {"compressed": reloaded, "original": original}, cfg.batch_size * 2, device)
    sparsity = prune.sparsity_stats(unwrap(reloaded), exclude=cfg.exclude, embeddings=cfg.embeddings)
    report: dict[str, Any] = {
        "task": task.name,
        "model_path": str(out),
        "original_path": str(cfg.model),
        "teacher_path": str(teacher_dir),
        "teacher_is_original": teacher_is_original,
        "methods": ",".join(methods),
        "dev_rows": len(dev),
        "metrics": metrics,
        "size": _sizes(compared, sparsity, cfg.seq_len, pair),
        "references": [name for name in compared if name != "compressed"],
    }
    if not cfg.skip_latency:
        models = {name: m for name, (m, _) in compared.items()}
        report["latency"] = compare_latency(
            models, cfg.batch_sizes, cfg.seq_len, cfg.repeats, cfg.warmup, cfg.threads, pair=pair
        )
    measured = {
        "methods": method_stats,
        "shrunk": shrunk,
        "shrink_max_abs_diff": shrink_diff,
        "reload_max_abs_diff": reload_diff,
    }
    report["compression"] = _compression_record(measured, reloaded, sparsity, lr, started, cfg)
    _write_reports(report, out)
    return report


def _load_models(path: str, task: TaskSpec, device: torch.device) -> tuple[nn.Module, nn.Module, list[str]]:
    """The original model, kept as the reference, and the wrapped copy that is compressed, both on
    ``device``, with the methods the copy had already been compressed with (its spec lists them all)."""
    original = load_classifier(path, task)
    model = copy.deepcopy(original)
    model = wrap(model)
    previous = list(model.config.compression.get("methods", []))
    model.to(device)
    original.to(device)
    return original, model, previous


def _prepare_output(cfg: CompressConfig) -> Path:
    """The output folder, never the model's own, made ready: the reports that mark it finished removed
    (written last: until then the folder is unfinished), the settings recorded."""
    out = Path(cfg.output_dir)
    if _same_path(out, cfg.model):
        raise UserError(f"output_dir {out} is the model's own directory; write the result elsewhere")
    out.mkdir(parents=True, exist_ok=True)
    for last in ("report.json", "report.md"):
        (out / last).unlink(missing_ok=True)
    save_config(cfg, out / "compress_config.json")
    return out


def _run_methods(
    model: nn.Module, cfg: CompressConfig, distiller: Distiller, methods: list[str]
) -> list[dict[str, Any]]:
    """Each method in order on the same model (masks stay active), with its statistics and seconds."""
    method_stats = []
    for i, method in enumerate(methods, 1):
        log.info("method %d/%d: %s", i, len(methods), method)
        t0 = time.perf_counter()
        stats = METHOD_RUNNERS[method](model, cfg, distiller)
        stats["seconds"] = time.perf_counter() - t0
        method_stats.append(stats)
    return method_stats


def _shrink(
    model: nn.Module, probe: dict[str, torch.Tensor], methods: list[str]
) -> tuple[dict[str, Any], float]:
    """Bake the masks in and remove what ended up all zero, so the model is physically smaller; returns what
    was removed and how far the outputs on ``probe`` moved (should be rounding only: warned above
    EXACT_ATOL). The model's spec then records all its methods."""
    inner = unwrap(model)
    prune.make_permanent(inner)
    before_shrink = _logits(model, probe)
    shrunk = prune.shrink_model(inner)
    shrink_diff = float((_logits(model, probe) - before_shrink).abs().max())
    if shrink_diff > EXACT_ATOL:
        log.warning("physical shrinking changed the outputs by up to %.2e", shrink_diff)
    model.refresh_spec(methods)
    return shrunk, shrink_diff


def _save_and_reload(
    model: nn.Module, out: Path, tokenizer: Any, probe: dict[str, torch.Tensor], device: torch.device
) -> tuple[nn.Module, float]:
    """Save the model with the tokenizer and reload it as a user would: a reload with other outputs on
    ``probe`` is an error, so the report measures the model that is on disk."""
    save_pretrained_atomic(out, model, tokenizer)
    reloaded = load_classifier(out, writing=True).to(device)
    reload_diff = float((_logits(reloaded, probe) - _logits(model, probe)).abs().max())
    if reload_diff > EXACT_ATOL:
        raise RuntimeError(
            f"{out}: the saved model reloads with different outputs (max |diff| {reload_diff:.2e})"
        )
    log.info("saved %s (reload max |diff| %.2e)", out, reload_diff)
    return reloaded, reload_diff


def _comparison_teacher(teacher_dir: Path, task: TaskSpec, device: torch.device) -> nn.Module | None:
    """The store's teacher for the size and latency comparison; None (warned) when it is not there."""
    if Path(teacher_dir).is_dir():
        return load_classifier(teacher_dir, task).to(device)
    log.warning("teacher %s not found: left out of the size and latency comparison", teacher_dir)
    return None


def _sizes(
    compared: dict[str, tuple[nn.Module, str | Path]], sparsity: dict[str, Any], seq_len: int, pair: bool
) -> dict[str, Any]:
    """Parameters, file bytes and FLOPs of each compared model; for the compressed one also its layers'
    non-zero weights and the file size its pruned layers would take stored sparsely."""
    size = {name: _size(model, path, seq_len, pair) for name, (model, path) in compared.items()}
    dense_in_layers = sparsity["dense_bytes"]
    size["compressed"].update(
        {
            "nonzero_weights_in_layers": sparsity["nonzero"],
            "weights_in_layers": sparsity["params"],
            "layer_density": sparsity["density"],
            "sparse_file_bytes_estimate": (size["compressed"]["file_bytes"] or 0)
            - dense_in_layers
            + sparsity["sparse_bytes"],
        }
    )
    return size


def _compression_record(
    measured: dict[str, Any],
    reloaded: nn.Module,
    sparsity: dict[str, Any],
    lr: float,
    started: float,
    cfg: CompressConfig,
) -> dict[str, Any]:
    """The report's ``compression`` section: the ``measured`` method statistics and output checks, then
    the final model's factorized modules and sparsity, the settings and the seconds since ``started``."""
    return {
        **measured,
        "factorized_modules": sorted(
            n for n, m in unwrap(reloaded).named_modules() if isinstance(m, FACTORIZED)
        ),
        "sparsity": {k: v for k, v in sparsity.items() if k != "layers"},
        "layers": sparsity["layers"],
        "lr": lr,
        "seconds": time.perf_counter() - started,
        "notes": [
            "weights are stored densely; sparse_file_bytes_estimate is what the pruned layers would "
            "take in the smallest of CSR (float values + int32 indices) and a compact form without "
            "their all-zero rows / columns (+ int32 indices of the kept ones)",
            "FLOPs are dense counts: zeros left by unstructured pruning still cost FLOPs and time",
        ],
        "config": to_dict(cfg),
    }


def _write_reports(report: dict[str, Any], out: Path) -> None:
    """``report.json`` and ``report.md``, the files that mark the folder finished. The generic renderer
    would dump the per-layer stats as one long JSON block: the markdown has tables for them instead."""
    write_report(report, out)
    summary = {k: v for k, v in report.items() if k != "compression"}
    markdown = render_report(jsonable(summary)) + "\n" + compression_markdown(report)
    atomic_write_text(out / "report.md", markdown)
    log.info("report written to %s", out / "report.md")


def _short_stats(stats: dict[str, Any]) -> str:
    keys = ("steps", "loss", "kd", "hidden", "penalty")
    shown = [k for k in keys if isinstance(stats.get(k), (int, float)) and stats[k]]
    return ", ".join(f"{k} {stats[k]:.4g}" for k in shown)


def compression_markdown(report: dict[str, Any]) -> str:
    """Markdown tables of a compression report's methods and final per-layer state."""
    info = report["compression"]
    lines = ["## Compression", ""]
    rows = []
    for m in info["methods"]:
        if m["method"] == "svd":
            result = f"{m['factorized']} layers factorized"
        else:
            result = f"density {m['density']:.4f}"
        training = m.get("training") or {}
        if "rounds" in m:
            training = {"steps": sum(r.get("steps", 0) for r in m["rounds"])}
        retrain = m.get("retrain") or {}
        seconds = f"{m['seconds']:.1f}"
        rows.append([m["method"], result, _short_stats(training), _short_stats(retrain), seconds])
    header = ["method", "result", "KD training", "retraining (fixed masks)", "seconds"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    sparsity = info["sparsity"]
    lines += [
        "",
        f"- factorized modules: {len(info['factorized_modules'])}; physically shrunk: "
        f"{len(info['shrunk']['rank'])} ranks, {len(info['shrunk']['ffn_width'])} feed-forward widths, "
        f"{len(info['shrunk']['hidden'])} hidden widths",
        f"- weights in Linear/Conv1d layers: {sparsity['params']:,}, non-zero {sparsity['nonzero']:,} "
        f"(density {sparsity['density']:.4f})",
        f"- max |logit difference|: shrinking {info['shrink_max_abs_diff']:.2e}, "
        f"saved vs reloaded {info['reload_max_abs_diff']:.2e}",
        *[f"- {note}" for note in info["notes"]],
        "",
        "### Layers of the compressed model",
        "",
        "| layer | shape | density | non-zero | dense bytes | CSR bytes | compact bytes |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in info["layers"].items():
        shape = "×".join(map(str, s["shape"]))
        lines.append(
            f"| {name} | {shape} | {s['density']:.4f} | {s['nonzero']:,} | {s['dense_bytes']:,} | "
            f"{s['csr_bytes']:,} | {s['compact_bytes']:,} |"
        )
    shrunk = [(kind, n, s) for kind, per in info["shrunk"].items() for n, s in per.items()]
    if shrunk:
        lines += ["", "### Physically shrunk", "", "| module | what | before | after |", "|---|---|---|---|"]
        lines += [f"| {n} | {kind} | {s['before']} | {s['after']} |" for kind, n, s in shrunk]
    return "\n".join(lines) + "\n"
