"""One command from task to deployable model: every stage into one run directory, then a report.

``run_pipeline(PipelineConfig)`` runs, each into its own folder of ``run_dir``::

    teacher/   fine-tuned teacher (or only a stage.json naming the given, already fine-tuned teacher)
    store/     probes + knowledge store
    search/    architecture search and the derived genotype
    student/   the student trained from the genotype (from the searched supernet's weights by default)
    compress/  optional: the compressed student (only when enabled)
    eval/      metrics, loyalty, size and latency (``eval/compressed/`` for the compressed student)
    export/    ONNX model checked against PyTorch, with the tokenizer and config beside it

then writes ``report.md`` / ``report.html`` (``adabert.report.document``) and ``pipeline.json``
(status and seconds per stage).

Skipping and resuming. Each stage folder gets a ``stage.json``, written atomically after all of the
stage's outputs, with the stage's full resolved settings, their hash (``config_hash``; the paths that
connect the stages and ``resume`` are left out, so a moved run directory stays valid; the sha256 of the
task's data files and of a local base model are in, so an edited label re-runs the teacher, the store
and everything after them), the ``hash`` of every upstream stage, and a ``hash`` of its own that is new
each time the stage runs. On a re-run a stage is skipped when its ``stage.json`` has the same settings
hash and the same upstream hashes; otherwise it runs, and since its new ``hash`` differs, so does
everything downstream. A stage that was interrupted (its entry in ``stages.started.json`` of the run
directory has the same settings and upstream, but its folder has no ``stage.json``) is continued with
``resume=True`` where the stage supports it (search, train); any other stage that runs starts from an
emptied folder, so no output of an earlier run survives beside the new ones. A folder the pipeline did
not write (no stage.json, and not started by an earlier run) is never emptied: the run stops instead.

Faults. One pipeline at a time per run directory: it holds ``RUN_DIR/.pipeline.lock`` for the run
(and each stage folder's lock while the stage runs, so a stage command writing into the same folder
stops), and a second one exits naming the holder's pid. A run killed at any point continues on the
next start: temporary files the killed run left are removed, a stage killed after its outputs but
before its ``stage.json`` runs again (or resumes), and ``pipeline.json``, which a killed run leaves
"running", is recorded as interrupted (``previous_run``). SIGTERM stops a run like Ctrl-C does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from adabert.config import (
    CompressConfig,
    ConfigError,
    EvalConfig,
    FinetuneConfig,
    PipelineConfig,
    ProbeConfig,
    SearchConfig,
    TrainConfig,
    check_files,
    check_positions,
    save_config,
    to_dict,
)
from adabert.io import atomic_write_json, folder_lock, lock_file, remove_stale_temporaries

log = logging.getLogger(__name__)

STAGE_FILE = "stage.json"
STARTED_FILE = "stages.started.json"  # in the run directory: stage -> settings and upstream it started with
LEGACY_STARTED_FILE = "stage.started.json"  # in the stage folder (runs of adabert 0.1.0)
PIPELINE_FILE = "pipeline.json"
LOCK_FILE = ".pipeline.lock"
CONFIG_FILE = "pipeline_config.json"
STAGES = ("teacher", "store", "search", "student", "compress", "eval", "export")

# Budget presets: stage settings applied over the stage defaults and under the user's stage settings.
BUDGETS: dict[str, dict[str, dict[str, Any]]] = {
    "quick": {
        "finetune": {"train_limit": 8000, "max_length": 64, "epochs": 2},
        # the teacher labels more rows than it learned from (up to 100k: minutes of teacher passes), and
        # the student sees 120k examples over all of them: distinct rows teach it more than repeats (on
        # SST-2, 2 epochs of 67k rows 0.838 against 6 epochs of 20k 0.804, benchmarks/RESULTS.md)
        # a task of fewer than 20k rows is topped up with teacher-labelled copies (search and student)
        "probe": {"train_limit": 100000, "max_length": 64, "augment_to": 20000},
        # the weight phase lasts until the supernet has learned the task (3 to 16 epochs), then 5
        # search epochs; the search sees at most 2 copies of each row. Its weights train on 8,250 of
        # 12,000 rows: on 1,600 the supernet overfit and stayed near the trivial loss (RESULTS.md)
        "search": {"epochs": 8, "train_limit": 12000, "uniform_warmup_epochs": 3, "augment_copies": 2},
        "train": {"examples": 120000},
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
    "quick": "a meaningful result in under an hour on a laptop CPU (SST-2: under 20 min on 2 cores)",
    "paper": "METHOD.md-like: all training rows (hours per teacher epoch on a CPU; use a GPU)",
    "custom": "every stage's own defaults (see 'adabert COMMAND --help'), changed only by your settings",
}
# Probe settings that follow the teacher's fine-tuning when the pipeline fine-tunes it.
_TEACHER_FOLLOWERS = ("dev_limit", "max_length")


def describe_budgets() -> str:
    """The budgets and their settings, for ``--help`` (generated, so it cannot drift from BUDGETS)."""
    lines = []
    for name, summary in BUDGET_SUMMARIES.items():
        lines.append(f"  {name}: {summary}")
        for stage, settings in BUDGETS[name].items():
            if settings:
                text = " ".join(f"{k}={v}" for k, v in settings.items())
                lines.append(f"      {stage + ':':<10} {text}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ hashing
def digest(value: Any) -> str:
    """sha256 of a JSON value (keys sorted), as hex."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def data_fingerprint(task_name: str, data_dir: str | None) -> dict[str, str] | None:
    """sha256 of each local file the task's stages read (train and dev splits), None for hub data.

    Part of the teacher's and the store's identity: one changed label in a file re-runs them and
    everything after. A missing file is reported here, before any stage starts.
    """
    if data_dir is None:
        return None
    from adabert.tasks import get_task, resolve_path
    from adabert.teacher.store import sha256_files

    task = get_task(task_name)
    return {
        split: sha256_files([resolve_path(task, split, data_dir)])
        for split in ("train", *task.dev_splits)
        if split in task.files
    }


def _model_fingerprint(model: str) -> str | None:
    """sha256 of a local base model's weight files (the bundled default too); None for a hub id."""
    from adabert.config import model_dir
    from adabert.teacher.store import teacher_hash

    folder = model_dir(model)
    return teacher_hash(folder)[0] if folder is not None else None


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
    data = data_fingerprint(cfg.task, cfg.data_dir)
    teacher, teacher_dir, ft = _teacher_stage(cfg, d, keep, data)
    store, pr = _store_stage(cfg, d, keep, data, teacher_dir)
    search, se = _search_stage(cfg, d, keep)
    from_supernet = cfg.from_supernet and not se.random_architecture  # a random genotype has no supernet
    student, tr = _student_stage(cfg, d, keep, from_supernet)
    compress, co = _compress_stage(cfg, d, keep)
    enabled = compress.enabled
    evaluation, ev = _eval_stage(cfg, d, keep, teacher_dir, co if enabled else None)
    export = _export_stage(cfg, d, keep, d["compress"] if enabled else d["student"])
    on_machine = {"probe": pr, "search": se, "train": tr, "evaluate": ev, "finetune": ft}
    _check_on_machine({**on_machine, "compress": co if enabled else None})
    return [teacher, store, search, student, compress, evaluation, export]


def _by_content(data: dict[str, str] | None) -> tuple[str, ...]:
    """Settings left out of a stage's identity because the data's hashes stand for them: local files are
    known by their content, not their path."""
    return ("data_dir",) if data is not None else ()


def _teacher_stage(
    cfg: PipelineConfig, d: dict[str, Path], keep: tuple[Path, ...], data: dict[str, str] | None
) -> tuple[Stage, Path, FinetuneConfig | None]:
    """The teacher stage, its folder and its fine-tuning settings: fine-tune, or record the given teacher
    (its weights hash decides what is downstream; it is never emptied)."""
    if cfg.teacher is not None:
        from adabert.teacher.store import teacher_hash

        given = Path(cfg.teacher).expanduser()
        if not given.is_dir():
            raise ConfigError(
                f"teacher {cfg.teacher}: no such directory (a fine-tuned save_pretrained model)"
            )
        sha, kind = teacher_hash(given)
        config = {"given_teacher": str(given), "weights_sha256": sha, "hash_kind": kind}
        return (
            Stage("teacher", (), config, {"weights_sha256": sha}, _nothing, keep=(*keep, given)),
            given,
            None,
        )
    ft = FinetuneConfig(
        **_settings(cfg, "finetune"),
        task=cfg.task,
        data_dir=cfg.data_dir,
        model=cfg.model,
        output_dir=str(d["teacher"]),
        **cfg.task_files(),
    )
    check_files(ft)
    teacher = Stage(
        "teacher",
        (),
        to_dict(ft),
        {
            **_identity(ft, ("output_dir", *_by_content(data))),
            "data_sha256": data,
            "model_sha256": _model_fingerprint(ft.model),
        },
        _runner("finetune", ft),
        keep=keep,
        outputs=("config.json", "adabert_task.json"),
    )
    return teacher, d["teacher"], ft


def _store_stage(
    cfg: PipelineConfig,
    d: dict[str, Path],
    keep: tuple[Path, ...],
    data: dict[str, str] | None,
    teacher_dir: Path,
) -> tuple[Stage, ProbeConfig]:
    """The probes and the knowledge store; a teacher fine-tuned here sets their length and dev rows."""
    drop = () if cfg.teacher is not None else _TEACHER_FOLLOWERS
    pr = ProbeConfig(
        **_settings(cfg, "probe", drop),
        teacher=str(teacher_dir),
        task=cfg.task,
        data_dir=cfg.data_dir,
        output_dir=str(d["store"]),
        **cfg.task_files(),
    )
    store = Stage(
        "store",
        ("teacher",),
        to_dict(pr),
        {**_identity(pr, ("teacher", "output_dir", *_by_content(data))), "data_sha256": data},
        _runner("probe", pr),
        keep=keep,
        outputs=("manifest.json",),
    )
    return store, pr


def _search_stage(
    cfg: PipelineConfig, d: dict[str, Path], keep: tuple[Path, ...]
) -> tuple[Stage, SearchConfig]:
    """The architecture search over the store (resumable: an interrupted search continues)."""
    se = SearchConfig(**_settings(cfg, "search"), store=str(d["store"]), output_dir=str(d["search"]))
    search = Stage(
        "search",
        ("store",),
        to_dict(se),
        _identity(se, ("store", "output_dir", "resume")),
        _runner("search", se),
        resumable=True,
        keep=keep,
        outputs=("genotype.json",),
    )
    return search, se


def _student_stage(
    cfg: PipelineConfig, d: dict[str, Path], keep: tuple[Path, ...], from_supernet: bool
) -> tuple[Stage, TrainConfig]:
    """The student trained from the searched genotype (resumable), from the supernet's weights or not."""
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
    student = Stage(
        "student",
        ("search", "store"),
        to_dict(tr),
        identity,
        _runner("train", tr),
        resumable=True,
        keep=keep,
        outputs=("config.json", "model.safetensors"),
    )
    return student, tr


def _compress_stage(
    cfg: PipelineConfig, d: dict[str, Path], keep: tuple[Path, ...]
) -> tuple[Stage, CompressConfig]:
    """The compression of the student; planned always (its settings are checked), run only when enabled."""
    co = CompressConfig(
        **_settings(cfg, "compress"),
        model=str(d["student"]),
        store=str(d["store"]),
        output_dir=str(d["compress"]),
    )
    compress = Stage(
        "compress",
        ("student", "store"),
        to_dict(co),
        _identity(co, ("model", "store", "output_dir")),
        lambda resume: _compress(co),
        enabled=cfg.compress is not None,
        why_disabled="not enabled: set 'compress' in the config file, or pass --compress",
        keep=keep,
        outputs=("config.json",),
    )
    return compress, co


def _eval_stage(
    cfg: PipelineConfig,
    d: dict[str, Path],
    keep: tuple[Path, ...],
    teacher_dir: Path,
    co: CompressConfig | None,
) -> tuple[Stage, EvalConfig]:
    """The evaluation of the student and, given compression settings ``co``, of the compressed student."""
    ev = EvalConfig(
        **_settings(cfg, "evaluate"),
        model=str(d["student"]),
        store=str(d["store"]),
        teacher=str(teacher_dir),
        output_dir=str(d["eval"]),
    )
    ev_compressed = None
    if co is not None:
        ev_compressed = dataclasses.replace(
            ev, model=str(d["compress"]), output_dir=str(d["eval"] / "compressed")
        )
    _check_lengths(cfg, ev, co)
    managed = ("model", "store", "teacher", "output_dir")
    evaluation = Stage(
        "eval",
        ("student", "compress", "store"),
        {"student": to_dict(ev), "compressed": to_dict(ev_compressed) if ev_compressed else None},
        {"evaluate": _identity(ev, managed), "compressed": ev_compressed is not None},
        lambda resume: _evaluate(ev, ev_compressed, co, d["search"]),
        keep=keep,
        outputs=("report.json",) + (("compressed/report.json",) if ev_compressed else ()),
    )
    return evaluation, ev


def _check_lengths(cfg: PipelineConfig, ev: EvalConfig, co: CompressConfig | None) -> None:
    """Every model of the run has the teacher's positions: lengths are checked against them before any
    work."""
    base_model = cfg.teacher if cfg.teacher is not None else cfg.model
    lengths = {"evaluate.seq_len": ev.seq_len, "--export-seq-len": cfg.export_seq_len}
    if co is not None:
        lengths["compress.seq_len"] = co.seq_len
    for what, length in lengths.items():
        check_positions(base_model, length, what)


def _export_stage(cfg: PipelineConfig, d: dict[str, Path], keep: tuple[Path, ...], final: Path) -> Stage:
    """The ONNX export of the run's final model (the compressed student when there is one)."""
    ex = {
        "model": str(final),
        "source": final.name,
        "store": str(d["store"]),
        "format": "onnx",
        "seq_len": cfg.export_seq_len,
        "atol": cfg.export_atol,
    }
    return Stage(
        "export",
        (final.name, "store"),
        ex,
        {k: v for k, v in ex.items() if k not in ("model", "store")},
        lambda resume: _export(final, d["export"], d["store"], cfg.export_seq_len, cfg.export_atol),
        keep=keep,
        outputs=("model.onnx", "export.json"),
    )


def _check_on_machine(stage_cfgs: dict[str, Any]) -> None:
    """A device or precision this machine lacks is refused now, not when its stage comes (maybe hours on).

    A stage config of None (a given teacher is not fine-tuned, compression not enabled) is not checked.
    """
    from adabert.device import check_settings

    for name, stage_cfg in stage_cfgs.items():
        if stage_cfg is None:
            continue
        try:
            check_settings(stage_cfg)
        except ConfigError as err:
            raise ConfigError(f"{name}: {err}") from None


def _nothing(resume: bool) -> None:
    """The teacher stage of a given teacher: nothing to compute, its stage.json records the teacher."""


def _runner(kind: str, stage_cfg: Any) -> Callable[[bool], Any]:
    """Call the stage function, looked up at call time (so it can be swapped, e.g. in tests)."""

    def run(resume: bool) -> Any:
        if kind == "finetune":
            from adabert.teacher import finetuning

            return finetuning.finetune(stage_cfg)
        if kind == "probe":
            from adabert.teacher import probes

            return probes.probe(stage_cfg)
        if kind == "search":
            from adabert import search

            return search.run_search(dataclasses.replace(stage_cfg, resume=resume))
        if kind == "train":
            from adabert.student import train

            return train.train_student(dataclasses.replace(stage_cfg, resume=resume))
        raise ValueError(f"unknown stage kind {kind!r}")

    return run


def _compress(co: CompressConfig) -> Any:
    from adabert.compress import compress

    return compress(co)


def _evaluate(
    ev: EvalConfig, compressed: EvalConfig | None, co: CompressConfig | None, search_dir: Path
) -> None:
    """Evaluate the student (and the compressed student), then write their model cards with the figures."""
    from adabert.deploy.card import update_model_card
    from adabert.deploy.predict import score_test_file
    from adabert.report import evaluate

    report = evaluate.run_evaluation(ev)
    test = score_test_file(ev.model, ev.store)
    update_model_card(ev.model, ev.store, report, search_dir / "genotype.png", test)
    if compressed is not None and co is not None:
        report = evaluate.run_evaluation(compressed)
        test = score_test_file(compressed.model, compressed.store)
        update_model_card(compressed.model, compressed.store, _read_json(Path(co.output_dir) / "report.json"))
        update_model_card(compressed.model, compressed.store, report, Path(ev.model) / "cell.png", test)


def _export(model: Path, out: Path, store: Path, seq_len: int | None, atol: float) -> Any:
    from adabert.deploy import export

    return export.export_model(model, out, store, "onnx", seq_len, atol)


# ------------------------------------------------------------------------------------------ running
def _inside(path: Path, other: Path) -> bool:
    a, b = path.resolve(), other.resolve()
    return a == b or b in a.parents or a in b.parents


def _empty(folder: Path, keep: tuple[Path, ...], started_before: bool) -> None:
    """Remove an earlier run's outputs from a stage folder, unless it holds something to keep.

    Only a folder the pipeline wrote (it has a stage.json, or an earlier run started the stage: a folder
    replaced whole by a rename, like the store, loses its own markers) is ever removed; a non-empty
    folder from elsewhere (say, a teacher fine-tuned by hand into RUN_DIR/teacher) is refused.
    """
    if any(_inside(folder, k) for k in keep):
        folder.mkdir(parents=True, exist_ok=True)
        return
    if folder.is_dir() and any(folder.iterdir()):
        if not ((folder / STAGE_FILE).exists() or started_before):
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
        previous = _read_json(self.path)
        if previous and previous.get("status") == "running":  # we hold the lock: its run was killed
            running = [n for n, v in (previous.get("stages") or {}).items() if v.get("status") == "running"]
            previous.update(status="interrupted", note="ended without recording its end (killed)")
            log.warning(
                "%s: the previous run (started %s) was killed%s; continuing where it stopped",
                self.path,
                previous.get("started", "?"),
                f" during stage {running[0]}" if running else "",
            )
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
        if previous and previous.get("status") in ("interrupted", "failed"):
            keys = ("status", "note", "started", "finished", "failed_stage")
            self.value["previous_run"] = {k: previous[k] for k in keys if k in previous}
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


def rerun_reason(
    cfg: PipelineConfig, folder: Path, stage: Stage, config_hash: str, upstream: dict[str, str]
) -> str | None:
    """Why a stage that finished in an earlier run runs again (None: it never finished here, or only
    its outputs went missing, which :func:`up_to_date` says): which settings changed, which data file
    (by its content), or which stage before it ran again."""
    done = _read_json(folder / STAGE_FILE)
    if done is None:
        return None
    before = done.get("upstream") if isinstance(done.get("upstream"), dict) else {}
    if done.get("config_hash") == config_hash:
        changed = sorted(k for k in {*upstream, *before} if upstream.get(k) != before.get(k))
        return f"the stage(s) before it ran again ({', '.join(changed)})" if changed else None
    old, new = done.get("identity"), json.loads(json.dumps(stage.identity, default=str))
    if not isinstance(old, dict):  # a stage.json from before adabert recorded what it hashed
        return "its settings or data changed"
    reasons = []
    for key in sorted({*old, *new}):
        if old.get(key) == new.get(key):
            continue
        if key == "data_sha256" and isinstance(old.get(key), dict) and isinstance(new.get(key), dict):
            splits = sorted(k for k in {*old[key], *new[key]} if old[key].get(k) != new[key].get(k))
            reasons += [f"{_data_file_name(cfg, split)} changed" for split in splits]
        elif key in ("model_sha256", "weights_sha256"):
            reasons.append("the weights of its base model changed" if key == "model_sha256" else
                           "the given teacher's weights changed")  # fmt: skip
        else:
            reasons += _differences(old.get(key), new.get(key), key)
    return ", ".join(reasons) or "its settings changed"


def _differences(old: Any, new: Any, name: str) -> list[str]:
    """``name.key OLD -> NEW`` for each setting that differs, nested settings by their dotted name."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted({*old, *new}) if old.get(k) != new.get(k)
                for d in _differences(old.get(k), new.get(k), f"{name}.{k}")]  # fmt: skip
    return [f"{name} {json.dumps(old)} -> {json.dumps(new)}"]


def _data_file_name(cfg: PipelineConfig, split: str) -> str:
    try:
        from adabert.tasks import get_task, resolve_path

        return Path(resolve_path(get_task(cfg.task), split, cfg.data_dir)).name
    except Exception:  # a task or file that no longer resolves: the split's name says enough
        return f"the {split} data file"


def _started(folder: Path) -> dict[str, Any] | None:
    """The settings and upstream an earlier run started this stage with, if one did."""
    entry = (_read_json(folder.parent / STARTED_FILE) or {}).get(folder.name)
    return entry if isinstance(entry, dict) else _read_json(folder / LEGACY_STARTED_FILE)


def _mark_started(folder: Path, marker: dict[str, Any]) -> None:
    path = folder.parent / STARTED_FILE
    atomic_write_json(path, {**(_read_json(path) or {}), folder.name: marker})


def _run_stage(
    stage: Stage, folder: Path, label: str, config_hash: str, upstream: dict[str, str], progress: Progress
) -> tuple[str, bool]:
    """Run one stage into ``folder`` (resuming an interrupted run of the same settings where it can);
    write its stage.json last. Returns the stage's new hash and whether it resumed."""
    from adabert import __version__

    started = _started(folder)
    resume = bool(
        stage.resumable
        and started
        and started.get("config_hash") == config_hash
        and started.get("upstream") == upstream
    )
    (folder / STAGE_FILE).unlink(missing_ok=True)  # its outputs are about to change
    if not resume:
        _empty(folder, stage.keep, started is not None)
    started_at, t0 = _now(), time.perf_counter()
    _mark_started(folder, {"config_hash": config_hash, "upstream": upstream, "started": started_at})
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
            "identity": stage.identity,  # what the hash is of: a later run says which of it changed
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
    exception propagates; the stages before it stay valid for the next run. A second pipeline in the
    same run directory stops at once with :class:`adabert.errors.LockedError`.
    """
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with folder_lock(run_dir, lock=run_dir / LOCK_FILE), _sigterm_interrupts():
        return _run_locked(cfg, run_dir)


class Terminated(KeyboardInterrupt):
    """SIGTERM: stop like Ctrl-C, recording the run as interrupted and removing temporary files."""


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise Terminated(f"stopped by signal {signum} (SIGTERM)")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_locked(cfg: PipelineConfig, run_dir: Path) -> dict[str, Any]:
    remove_stale_temporaries(run_dir, deep=False)  # the run directory's own files (pipeline.json, ...)
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

        why = rerun_reason(cfg, folder, stage, config_hash, upstream)
        if why:
            log.info("%s: runs again: %s", label, why)
            progress.stage(stage.name, why=why)
        t0 = time.perf_counter()
        try:
            # the stage folder's own lock too: a stage command writing into it meanwhile is refused
            with folder_lock(folder, lock=lock_file(folder)):
                remove_stale_temporaries(folder)  # what a killed run left in and beside the folder
                try:
                    own_hash, resumed = _run_stage(stage, folder, label, config_hash, upstream, progress)
                finally:
                    remove_stale_temporaries(folder)
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

    from adabert.report.document import build_report

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
