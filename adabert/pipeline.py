"""One command from task to deployable model: every stage into one run directory, then a report.

``run_pipeline(PipelineConfig)`` runs, each into its own folder of ``run_dir``::

    teacher/   fine-tuned teacher (or only a stage.json naming the given, already fine-tuned teacher)
    store/     probes + knowledge store
    search/    architecture search and the derived genotype
    student/   the student trained from the genotype (from the searched supernet's weights by default)
    compress/  optional: the compressed student (only when enabled)
    eval/      metrics, loyalty, size and latency (``eval/compressed/`` for the compressed student)
    export/    ONNX model checked against PyTorch, with the tokenizer and config beside it

then writes ``report.md`` / ``report.html`` (``adabert.report``) and ``pipeline.json`` (status and
seconds per stage).

Skipping and resuming. Each stage folder gets a ``stage.json``, written atomically after all of the
stage's outputs, with the stage's full resolved settings, their hash (``config_hash``; the paths that
connect the stages and ``resume`` are left out, so a moved run directory stays valid), the ``hash``
of every upstream stage, and a ``hash`` of its own that is new each time the stage runs. On a re-run a
stage is skipped when its ``stage.json`` has the same settings hash and the same upstream hashes;
otherwise it runs, and since its new ``hash`` differs, so does everything downstream. A stage that was
interrupted (a ``stage.started.json`` with the same settings and upstream, but no ``stage.json``) is
continued with ``resume=True`` where the stage supports it (search, train); any other stage that runs
starts from an emptied folder, so no output of an earlier run survives beside the new ones. A folder
the pipeline did not write (no stage.json / stage.started.json) is never emptied: the run stops instead.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from adabert.compress import compress
from adabert.config import (
    CompressConfig,
    ConfigError,
    EvalConfig,
    FinetuneConfig,
    PipelineConfig,
    ProbeConfig,
    SearchConfig,
    TrainConfig,
    save_config,
    to_dict,
)
from adabert.export import export_model
from adabert.io import atomic_write_json

log = logging.getLogger(__name__)

STAGE_FILE = "stage.json"
STARTED_FILE = "stage.started.json"
PIPELINE_FILE = "pipeline.json"
CONFIG_FILE = "pipeline_config.json"
STAGES = ("teacher", "store", "search", "student", "compress", "eval", "export")

# Budget presets: stage settings applied over the stage defaults and under the user's stage settings.
BUDGETS: dict[str, dict[str, dict[str, Any]]] = {
    "quick": {
        "finetune": {"train_limit": 8000, "max_length": 64, "epochs": 2},
        "probe": {"train_limit": 8000, "max_length": 64},  # only with --teacher (else: the teacher's)
        "search": {"epochs": 10, "train_limit": 4000},
        "train": {"epochs": 10},
        # a student's weights are nearly all its embedding table: SVD halves it and keeps it dense
        "compress": {"embeddings": True, "methods": "svd"},
        "evaluate": {"repeats": 10},
    },
    "paper": {
        "finetune": {"max_length": 128, "epochs": 3},
        "probe": {"epochs": 3},
        "search": {"epochs": 50},
        "train": {"epochs": 30},
        "compress": {"embeddings": True, "methods": "svd"},
        "evaluate": {"repeats": 20},
    },
    "custom": {},
}
BUDGET_SUMMARIES = {
    "quick": "a meaningful result in under an hour on a laptop CPU (SST-2: roughly 20-30 min on 2 cores)",
    "paper": "METHOD.md-like: all training rows (hours per teacher epoch on a CPU; use a GPU)",
    "custom": "every stage's own defaults (see 'adabert COMMAND --help'), changed only by your settings",
}
# Probe settings that follow the teacher's fine-tuning when the pipeline fine-tunes it.
_TEACHER_FOLLOWERS = ("train_limit", "dev_limit", "max_length")


def describe_budgets() -> str:
    """The budgets and their settings, for ``--help`` (generated, so it cannot drift from BUDGETS)."""
    lines = []
    for name, summary in BUDGET_SUMMARIES.items():
        lines.append(f"  {name}: {summary}")
        for stage, settings in BUDGETS[name].items():
            if settings:
                text = " ".join(f"{k}={v}" for k, v in settings.items())
                suffix = " (with --teacher only)" if name == "quick" and stage == "probe" else ""
                lines.append(f"      {stage + ':':<10} {text}{suffix}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ hashing
def digest(value: Any) -> str:
    """sha256 of a JSON value (keys sorted), as hex."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


# ------------------------------------------------------------------------------------------ the plan
@dataclass
class Stage:
    """One step of the plan: its folder, settings, upstream stages and how to run it."""

    name: str
    upstream: tuple[str, ...]
    config: dict[str, Any]  # the full resolved settings, recorded in stage.json
    identity: dict[str, Any]  # the settings that decide the result (hashed)
    run: Callable[[bool], Any]  # run(resume)
    resumable: bool = False
    enabled: bool = True
    why_disabled: str = ""
    keep: tuple[Path, ...] = field(default_factory=tuple)  # never emptied (a given teacher, the data)
    outputs: tuple[str, ...] = ()  # files that must exist for the stage to count as done


def _settings(cfg: PipelineConfig, stage: str, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    """Budget preset, then the user's settings, for one stage config."""
    preset = {k: v for k, v in BUDGETS[cfg.budget].get(stage, {}).items() if k not in drop}
    return {**preset, **cfg.stage_settings(stage)}


def _identity(config: Any, managed: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in to_dict(config).items() if k not in managed}


def stage_dirs(run_dir: str | Path) -> dict[str, Path]:
    return {name: Path(run_dir) / name for name in STAGES}


def plan(cfg: PipelineConfig) -> list[Stage]:
    """Resolve every stage's settings (defaults < budget < user settings < pipeline paths)."""
    d = stage_dirs(cfg.run_dir)
    keep = tuple(Path(p) for p in (cfg.data_dir,) if p)
    stages: list[Stage] = []

    # teacher: fine-tune, or record the given teacher (its weights hash decides what is downstream)
    if cfg.teacher is not None:
        from adabert.store import teacher_hash

        given = Path(cfg.teacher).expanduser()
        if not given.is_dir():
            raise ConfigError(
                f"teacher {cfg.teacher}: no such directory (a fine-tuned save_pretrained model)"
            )
        sha, kind = teacher_hash(given)
        config = {"given_teacher": str(given), "weights_sha256": sha, "hash_kind": kind}
        teacher = Stage("teacher", (), config, {"weights_sha256": sha}, _nothing, keep=(*keep, given))
        teacher_dir = given
    else:
        ft = FinetuneConfig(
            **_settings(cfg, "finetune"),
            task=cfg.task,
            data_dir=cfg.data_dir,
            model=cfg.model,
            output_dir=str(d["teacher"]),
        )
        teacher = Stage(
            "teacher",
            (),
            to_dict(ft),
            _identity(ft, ("output_dir",)),
            _runner("finetune", ft),
            keep=keep,
            outputs=("config.json", "adabert_task.json"),
        )
        teacher_dir = d["teacher"]
    stages.append(teacher)

    drop = () if cfg.teacher is not None else _TEACHER_FOLLOWERS
    pr = ProbeConfig(
        **_settings(cfg, "probe", drop),
        teacher=str(teacher_dir),
        task=cfg.task,
        data_dir=cfg.data_dir,
        output_dir=str(d["store"]),
    )
    stages.append(
        Stage(
            "store",
            ("teacher",),
            to_dict(pr),
            _identity(pr, ("teacher", "output_dir")),
            _runner("probe", pr),
            keep=keep,
            outputs=("manifest.json",),
        )
    )

    se = SearchConfig(**_settings(cfg, "search"), store=str(d["store"]), output_dir=str(d["search"]))
    stages.append(
        Stage(
            "search",
            ("store",),
            to_dict(se),
            _identity(se, ("store", "output_dir", "resume")),
            _runner("search", se),
            resumable=True,
            keep=keep,
            outputs=("genotype.json",),
        )
    )

    from_supernet = cfg.from_supernet and not se.random_architecture  # a random genotype has no supernet
    tr = TrainConfig(
        **_settings(cfg, "train"),
        genotype=str(d["search"] / "genotype.json"),
        store=str(d["store"]),
        output_dir=str(d["student"]),
        supernet=str(d["search"]) if from_supernet else None,
    )
    identity = {
        **_identity(tr, ("genotype", "store", "output_dir", "supernet", "resume")),
        "from_supernet": from_supernet,
    }
    stages.append(
        Stage(
            "student",
            ("search", "store"),
            to_dict(tr),
            identity,
            _runner("train", tr),
            resumable=True,
            keep=keep,
            outputs=("config.json", "model.safetensors"),
        )
    )

    enabled = cfg.compress is not None
    co = CompressConfig(
        **_settings(cfg, "compress"),
        model=str(d["student"]),
        store=str(d["store"]),
        output_dir=str(d["compress"]),
    )
    stages.append(
        Stage(
            "compress",
            ("student", "store"),
            to_dict(co),
            _identity(co, ("model", "store", "output_dir")),
            lambda resume: compress(co),
            enabled=enabled,
            why_disabled="not enabled: set 'compress' in the config file, or pass --compress",
            keep=keep,
            outputs=("config.json",),
        )
    )
    final = d["compress"] if enabled else d["student"]

    ev = EvalConfig(
        **_settings(cfg, "evaluate"),
        model=str(d["student"]),
        store=str(d["store"]),
        teacher=str(teacher_dir),
        output_dir=str(d["eval"]),
    )
    ev_compressed = None
    if enabled:
        ev_compressed = dataclasses.replace(
            ev, model=str(d["compress"]), output_dir=str(d["eval"] / "compressed")
        )
    managed = ("model", "store", "teacher", "output_dir")
    stages.append(
        Stage(
            "eval",
            ("student", "compress", "store"),
            {"student": to_dict(ev), "compressed": to_dict(ev_compressed) if ev_compressed else None},
            {"evaluate": _identity(ev, managed), "compressed": ev_compressed is not None},
            lambda resume: _evaluate(ev, ev_compressed),
            keep=keep,
            outputs=("report.json",) + (("compressed/report.json",) if ev_compressed else ()),
        )
    )

    ex = {
        "model": str(final),
        "source": final.name,
        "store": str(d["store"]),
        "format": "onnx",
        "seq_len": cfg.export_seq_len,
        "atol": cfg.export_atol,
    }
    stages.append(
        Stage(
            "export",
            (final.name, "store"),
            ex,
            {k: v for k, v in ex.items() if k not in ("model", "store")},
            lambda resume: export_model(
                final, d["export"], d["store"], "onnx", cfg.export_seq_len, cfg.export_atol
            ),
            keep=keep,
            outputs=("model.onnx", "export.json"),
        )
    )
    return stages


def _nothing(resume: bool) -> None:
    """The teacher stage of a given teacher: nothing to compute, its stage.json records the teacher."""


def _runner(kind: str, stage_cfg: Any) -> Callable[[bool], Any]:
    """Call the stage function, looked up at call time (so it can be swapped, e.g. in tests)."""

    def run(resume: bool) -> Any:
        if kind == "finetune":
            from adabert import teacher

            return teacher.finetune(stage_cfg)
        if kind == "probe":
            from adabert import teacher

            return teacher.probe(stage_cfg)
        if kind == "search":
            from adabert import search

            return search.run_search(dataclasses.replace(stage_cfg, resume=resume))
        if kind == "train":
            from adabert import train

            return train.train_student(dataclasses.replace(stage_cfg, resume=resume))
        raise ValueError(f"unknown stage kind {kind!r}")

    return run


def _evaluate(ev: EvalConfig, compressed: EvalConfig | None) -> None:
    from adabert import evaluate

    evaluate.run_evaluation(ev)
    if compressed is not None:
        evaluate.run_evaluation(compressed)


# ------------------------------------------------------------------------------------------ running
def _inside(path: Path, other: Path) -> bool:
    a, b = path.resolve(), other.resolve()
    return a == b or b in a.parents or a in b.parents


def _empty(folder: Path, keep: tuple[Path, ...]) -> None:
    """Remove an earlier run's outputs from a stage folder, unless it holds something to keep.

    Only a folder the pipeline wrote (it has a stage.json or stage.started.json) is ever removed; a
    non-empty folder from elsewhere (say, a teacher fine-tuned by hand into RUN_DIR/teacher) is refused.
    """
    if any(_inside(folder, k) for k in keep):
        folder.mkdir(parents=True, exist_ok=True)
        return
    if folder.is_dir() and any(folder.iterdir()):
        if not ((folder / STAGE_FILE).exists() or (folder / STARTED_FILE).exists()):
            hint = " or pass it as --teacher" if folder.name == "teacher" else ""
            raise ConfigError(
                f"{folder} exists and was not written by 'adabert pipeline'; it is not replaced: move it "
                f"away{hint}, or use another --run-dir"
            )
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)


class Progress:
    """``pipeline.json``: the run's status and, per stage, its status and seconds in this run."""

    def __init__(self, cfg: PipelineConfig, stages: list[Stage]) -> None:
        self.path = Path(cfg.run_dir) / PIPELINE_FILE
        self.t0 = time.perf_counter()
        self.value: dict[str, Any] = {
            "task": cfg.task,
            "run_dir": str(cfg.run_dir),
            "budget": cfg.budget,
            "status": "running",
            "started": _now(),
            "finished": None,
            "seconds": None,
            "stages": {s.name: {"status": "pending", "seconds": None} for s in stages},
        }
        self.write()

    def stage(self, name: str, **values: Any) -> None:
        self.value["stages"][name].update(values)
        self.write()

    def finish(self, status: str, **values: Any) -> None:
        self.value.update(
            status=status, finished=_now(), seconds=round(time.perf_counter() - self.t0, 2), **values
        )
        self.write()

    def write(self) -> None:
        atomic_write_json(self.path, self.value)


def up_to_date(
    folder: Path, config_hash: str, upstream: dict[str, str], outputs: tuple[str, ...] = ()
) -> dict[str, Any] | None:
    """The stage's ``stage.json`` if it records these settings and upstream hashes and the stage's main
    outputs are still there, else None."""
    done = _read_json(folder / STAGE_FILE)
    if not done or done.get("config_hash") != config_hash or done.get("upstream") != upstream:
        return None
    missing = [name for name in outputs if not (folder / name).exists()]
    if missing:
        log.warning(
            "%s: %s is missing although %s says the stage finished; running it again",
            folder,
            ", ".join(missing),
            STAGE_FILE,
        )
        return None
    return done if done.get("hash") else None


def _run_stage(
    stage: Stage, folder: Path, label: str, config_hash: str, upstream: dict[str, str], progress: Progress
) -> tuple[str, bool]:
    """Run one stage into ``folder`` (resuming an interrupted run of the same settings where it can);
    write its stage.json last. Returns the stage's new hash and whether it resumed."""
    from adabert import __version__

    started = _read_json(folder / STARTED_FILE)
    resume = bool(
        stage.resumable
        and started
        and started.get("config_hash") == config_hash
        and started.get("upstream") == upstream
    )
    (folder / STAGE_FILE).unlink(missing_ok=True)  # its outputs are about to change
    if not resume:
        _empty(folder, stage.keep)
    started_at, t0 = _now(), time.perf_counter()
    marker = {"config_hash": config_hash, "upstream": upstream, "started": started_at}
    atomic_write_json(folder / STARTED_FILE, marker)
    log.info("%s: %s", label, "resuming an interrupted run" if resume else "started")
    progress.stage(stage.name, status="running", resumed=resume)
    stage.run(resume)
    finished = _now()
    own_hash = digest({"config_hash": config_hash, "upstream": upstream, "finished": finished})
    # written last, after every output of the stage: its presence means the stage is complete
    atomic_write_json(
        folder / STAGE_FILE,
        {
            "stage": stage.name,
            "config": stage.config,
            "config_hash": config_hash,
            "upstream": upstream,
            "hash": own_hash,
            "resumed": resume,
            "started": started_at,
            "finished": finished,
            "seconds": round(time.perf_counter() - t0, 2),
            "adabert_version": __version__,
        },
    )
    return own_hash, resume


def run_pipeline(cfg: PipelineConfig) -> dict[str, Any]:
    """Run (or skip, or resume) every stage into ``cfg.run_dir``, then write the report.

    Returns the content of ``pipeline.json``. A stage that fails is recorded as failed there and its
    exception propagates; the stages before it stay valid for the next run.
    """
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    stages = plan(cfg)
    save_config(cfg, run_dir / CONFIG_FILE)
    progress = Progress(cfg, stages)
    hashes: dict[str, str] = {}
    active = [s for s in stages if s.enabled]
    log.info(
        "pipeline %s -> %s (budget %s): %s", cfg.task, run_dir, cfg.budget, ", ".join(s.name for s in active)
    )
    number = 0
    for stage in stages:
        folder = run_dir / stage.name
        if not stage.enabled:
            stale = " (its folder holds an earlier run's outputs, not used)" if folder.exists() else ""
            log.info("stage %s: not run (%s)%s", stage.name, stage.why_disabled, stale)
            progress.stage(stage.name, status="disabled", reason=stage.why_disabled, seconds=0.0)
            continue
        number += 1
        label = f"[{number}/{len(active)}] {stage.name}"
        upstream = {u: hashes[u] for u in stage.upstream if u in hashes}
        config_hash = digest(stage.identity)
        done = up_to_date(folder, config_hash, upstream, stage.outputs)
        if done is not None:
            hashes[stage.name] = done["hash"]
            log.info(
                "%s: skipped, up to date (it took %.1fs on %s)",
                label,
                done.get("seconds", 0.0),
                done.get("finished", "?"),
            )
            progress.stage(stage.name, status="skipped", seconds=0.0, hash=done["hash"])
            continue

        t0 = time.perf_counter()
        try:
            own_hash, resumed = _run_stage(stage, folder, label, config_hash, upstream, progress)
        except BaseException as err:
            seconds = round(time.perf_counter() - t0, 2)
            status = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
            log.error("%s: %s after %.1fs: %s", label, status, seconds, err)
            progress.stage(stage.name, status=status, seconds=seconds, error=f"{type(err).__name__}: {err}")
            progress.finish(status, failed_stage=stage.name)
            raise
        seconds = round(time.perf_counter() - t0, 2)
        hashes[stage.name] = own_hash
        log.info("%s: done in %.1fs", label, seconds)
        progress.stage(stage.name, status="resumed" if resumed else "ran", seconds=seconds, hash=own_hash)

    from adabert.report import build_report

    # pipeline.json first: the report shows the run's status from it
    progress.finish("done", report={"md": str(run_dir / "report.md"), "html": str(run_dir / "report.html")})
    t0 = time.perf_counter()
    try:
        md_path, html_path = build_report(run_dir)
    except Exception as err:
        progress.finish("failed", error=f"report: {type(err).__name__}: {err}")
        raise
    log.info(
        "pipeline done in %.1fs; report written to %s and %s (%.1fs)",
        time.perf_counter() - progress.t0,
        md_path,
        html_path,
        time.perf_counter() - t0,
    )
    return progress.value
