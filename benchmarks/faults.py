"""Fault injection against the ``adabert`` command: hostile files, bad options, kills, locks, full disks.

Every case runs the command as a user would, on a tiny random BERT teacher and a tiny SST-2 task
built in a temporary folder (``tests/conftest.py``), and prints one line: the case, the exit code and
the outcome (``ok`` or ``FAIL`` with what went wrong). Cases about processes (kills, locks, a file-size
limit, read-only folders, hostile checkpoints) start ``python -m adabert.cli`` in a subprocess; the
option checks, which stop before any work, call the same ``adabert.cli.main`` in this process.

    OMP_NUM_THREADS=1 python benchmarks/faults.py                  # every case
    OMP_NUM_THREADS=1 python benchmarks/faults.py --only kill       # the cases whose name contains "kill"
    python benchmarks/faults.py --list

The exit status is 1 when a case fails. Linux only (flock, rlimits, capabilities).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from conftest import TINY_STAGES, file_size_limit, tiny_finetune_argv, write_tiny_bert, write_tiny_glue  # noqa: E402

# the tests' tiny stage settings, with two search epochs (a kill can land between them) and no latency
TINY = {
    **TINY_STAGES,
    "search": {**TINY_STAGES["search"], "epochs": 2},
    "evaluate": {"skip_latency": True, "seq_len": 16},
}
TEMPORARY = (".tmp", ".old")  # what adabert.io / adabert.teacher.store name their temporaries


@dataclass
class Result:
    code: int | None
    problems: list[str] = field(default_factory=list)
    note: str = ""

    def expect(self, condition: bool, problem: str) -> Result:
        if not condition:
            self.problems.append(problem)
        return self


@dataclass
class Work:
    """The shared inputs: a tiny teacher, tiny data, and a finished reference pipeline run."""

    root: Path
    bert: Path = field(init=False)
    glue: Path = field(init=False)

    def __post_init__(self) -> None:
        self.bert = write_tiny_bert(self.root / "inputs" / "bert")
        self.glue = write_tiny_glue(self.root / "inputs" / "glue")
        self._reference: Path | None = None
        self._building = threading.Lock()

    def config(self, run_dir: Path, data_dir: Path | None = None) -> Path:
        path = run_dir.parent / f"{run_dir.name}.json"
        settings = {
            "task": "sst2",
            "data_dir": str(data_dir or self.glue),
            "run_dir": str(run_dir),
            "model": str(self.bert),
            "budget": "custom",
            **TINY,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings))
        return path

    def reference(self) -> Path:
        """A pipeline run that nothing interrupted (made once, by the first case that needs it)."""
        with self._building:
            if self._reference is None:
                run = self.root / "reference"
                done = cli("pipeline", "--config", str(self.config(run)))
                if done.returncode != 0:
                    raise RuntimeError(f"the reference pipeline failed:\n{done.stderr[-3000:]}")
                self._reference = run
        return self._reference


# ------------------------------------------------------------------------------------------ running
def env() -> dict[str, str]:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TQDM_DISABLE": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }


def cli(
    *args: str,
    preexec: Callable[[], None] | None = None,
    code: str | None = None,
    timeout: float = 600,
    cwd: Path = ROOT,
    extra_env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """``python -m adabert.cli ARGS`` (or ``python -c CODE ARGS``, a wrapper that injects a fault)."""
    command = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "adabert.cli", *args]
    return subprocess.run(
        command,
        cwd=cwd,
        env={**env(), **(extra_env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=preexec,
    )


def in_process(*args: str) -> tuple[int, str]:
    """``adabert.cli.main(ARGS)`` here, for checks that stop before any work: (exit code, stderr)."""
    from adabert.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(list(args))
        except SystemExit as stop:  # argparse
            code = int(stop.code or 0)
    return code, err.getvalue()


def one_line_error(result: Result, stderr: str, *needles: str) -> Result:
    """Exit 2, exactly one ``adabert: error:`` line naming every needle, and no traceback."""
    lines = [line for line in stderr.splitlines() if line.startswith("adabert: error:")]
    result.expect(result.code == 2, f"exit code {result.code}, expected 2")
    result.expect("Traceback" not in stderr, "a traceback was printed: " + _tail(stderr))
    result.expect(len(lines) == 1, f"{len(lines)} 'adabert: error:' lines: " + _tail(stderr))
    for needle in needles:
        result.expect(any(needle in line for line in lines), f"the error does not name {needle!r}")
    if lines:
        result.note = lines[0][len("adabert: error: ") :]
    return result


def leftovers(folder: Path) -> list[str]:
    """Temporary files and folders (``.NAME.*.tmp``, ``.NAME.*.old``, ``.save.*``, ``.NAME.features.*``)."""
    found = []
    for path in folder.rglob(".*"):
        name = path.name
        if name.endswith(TEMPORARY) or name.startswith(".save.") or ".features." in name:
            found.append(str(path.relative_to(folder)))
    return found


def _tail(text: str, n: int = 300) -> str:
    return " ".join(text.strip().split())[-n:]


def _statuses(run_dir: Path) -> dict[str, str]:
    return {k: v["status"] for k, v in json.loads((run_dir / "pipeline.json").read_text())["stages"].items()}


# ------------------------------------------------------------------------------------------ faults
def kill_wrapper(point: str) -> str:
    """Python code that runs the adabert command (its arguments follow) and SIGKILLs itself at ``point``.

    ``after-store-rename``: right after the finished store folder is renamed into place;
    ``before-stage-json:STAGE`` / ``after-stage-json:STAGE``: around the write of that stage's
    stage.json (the stage boundary).
    """
    return textwrap.dedent(
        f"""
        import os, signal, sys
        import adabert.pipeline as pipeline, adabert.teacher.store as store
        point = {point!r}
        die = lambda: os.kill(os.getpid(), signal.SIGKILL)
        if point == "after-store-rename":
            replace = store._replace_dir
            def replace_and_die(new, path):
                replace(new, path)
                die()
            store._replace_dir = replace_and_die
        else:
            when, stage = point.split(":")
            write = pipeline.atomic_write_json
            def write_and_die(path, value):
                boundary = path.name == "stage.json" and path.parent.name == stage
                if boundary and when == "before-stage-json":
                    die()
                write(path, value)
                if boundary:
                    die()
            pipeline.atomic_write_json = write_and_die
        from adabert.cli import main
        sys.exit(main(sys.argv[1:]))
        """
    )


def without_root_override() -> None:
    """A child that file permissions apply to, even when it runs as root (drops CAP_DAC_OVERRIDE and
    CAP_DAC_READ_SEARCH from its bounding set; the exec then leaves them out)."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


class Payload:
    """Unpickled, it runs a shell command: what a hostile checkpoint from a shared run folder carries."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def hostile_checkpoint(path: Path, marker: Path) -> None:
    """A torch.save file (a pickle inside a zip) whose loading without weights_only creates ``marker``."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": {}, "epoch": 1, "model": Payload(f"touch {marker}")}, path)


# ------------------------------------------------------------------------------------------ cases
CASES: dict[str, Callable[[Work], Result]] = {}
IN_PROCESS: set[str] = set()  # cases that call adabert.cli.main here: run one at a time, before the others


def case(name: str) -> Callable[[Callable[[Work], Result]], Callable[[Work], Result]]:
    def register(fn: Callable[[Work], Result]) -> Callable[[Work], Result]:
        CASES[name] = fn
        return fn

    return register


def _option_case(name: str, args: tuple[str, ...], *needles: str) -> None:
    def run(work: Work) -> Result:
        code, stderr = in_process(*(a.format(bert=work.bert, root=work.root) for a in args))
        return one_line_error(Result(code), stderr, *needles)

    case(name)(run)
    IN_PROCESS.add(name)


_option_case("option --tau-start 0", ("search", "--tau-start", "0"), "--tau-start must be > 0")
_option_case("option --batch-size 0", ("train", "--batch-size", "0"), "--batch-size must be >= 1")
_option_case("option --epochs 0", ("search", "--epochs", "0"), "--epochs must be >= 1")
_option_case("option --hidden-size 0", ("search", "--hidden-size", "0"), "--hidden-size must be >= 1")
_option_case("option --hidden-size 100000", ("search", "--hidden-size", "100000"), "--hidden-size must be <=")
_option_case("option --exclude '('", ("compress", "--exclude", "("), "--exclude is not a valid regular")
_option_case(
    "option --max-length 100 (64 positions)",
    ("teacher", "finetune", "--model", "{bert}", "--max-length", "100", "--output-dir", "{root}/t100"),
    "--max-length 100",
    "64 positions",
)
_option_case(
    "option --set search.epochs=0", ("pipeline", "--set", "search.epochs=0"), "'epochs' must be >= 1"
)
_option_case(
    "teacher finetune --device cuda:3 (no such GPU)",
    ("teacher", "finetune", "--model", "{bert}", "--max-length", "32", "--output-dir", "{root}/t-cuda3",
     "--device", "cuda:3"), "--device cuda:3",
)  # fmt: skip
_option_case(
    "teacher probe --device cuda:3 (no such GPU)",
    ("teacher", "probe", "--teacher", "{bert}", "--task", "sst2", "--output-dir", "{root}/s-cuda3",
     "--device", "cuda:3"), "--device cuda:3",
)  # fmt: skip
_option_case(
    "option --uniform-warmup-epochs 3 --epochs 3",
    ("search", "--uniform-warmup-epochs", "3", "--epochs", "3"), "leaves no search phase",
)  # fmt: skip
_option_case(
    "option --target-params with --target-latency-ms",
    ("search", "--target-params", "1000", "--target-latency-ms", "5"), "a budget takes one target",
)  # fmt: skip
_option_case(
    "option --efficiency paper --target-params 1000",
    ("search", "--efficiency", "paper", "--target-params", "1000"), "--efficiency paper has none",
)  # fmt: skip


@case("teacher --lr 1e30 (loss becomes NaN)")
def teacher_diverges(work: Work) -> Result:
    out = work.root / "diverged" / "teacher"
    done = cli(*tiny_finetune_argv(work.bert, work.glue, out, "--epochs", "2", "--lr", "1e30"))
    result = one_line_error(Result(done.returncode), done.stderr, "diverged", "--lr")
    result.expect(not list(out.glob("*.safetensors")), "a teacher was saved")
    return result.expect(not leftovers(out.parent), f"temporary files left: {leftovers(out.parent)}")


@case("disk full (file-size limit) in teacher finetune")
def disk_full(work: Work) -> Result:
    out = work.root / "full" / "teacher"
    done = cli(
        *tiny_finetune_argv(work.bert, work.glue, out, "--epochs", "1"), preexec=file_size_limit(16_000)
    )
    result = one_line_error(Result(done.returncode), done.stderr, str(out), "too large")
    return result.expect(not leftovers(out.parent), f"temporary files left: {leftovers(out.parent)}")


@case("read-only output folder")
def read_only(work: Work) -> Result:
    parent = work.root / "read-only"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        done = cli(
            "teacher",
            "probe",
            "--teacher",
            str(work.bert),
            "--task",
            "sst2",
            "--data-dir",
            str(work.glue),
            "--output-dir",
            str(parent / "store"),
            preexec=without_root_override,
        )
    finally:
        parent.chmod(0o755)
    return one_line_error(Result(done.returncode), done.stderr, str(parent / "store"), "Permission denied")


@case("second pipeline in the same run folder")
def second_pipeline(work: Work) -> Result:
    run = work.root / "locked"
    config = str(work.config(run))
    lock = run / ".pipeline.lock"
    # the second starts with the first and imports adabert meanwhile, then waits for the first's lock
    waiter = textwrap.dedent(
        """
        import pathlib, sys, time
        import adabert.pipeline
        from adabert.cli import main
        lock = pathlib.Path(sys.argv[1])
        while not (lock.exists() and lock.read_text().strip()):
            time.sleep(0.02)
        sys.exit(main(sys.argv[2:]))
        """
    )
    second = subprocess.Popen(
        [sys.executable, "-c", waiter, str(lock), "pipeline", "--config", config],
        cwd=ROOT,
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    first = subprocess.Popen(
        [sys.executable, "-m", "adabert.cli", "pipeline", "--config", config],
        cwd=ROOT,
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    _, second_err = second.communicate(timeout=600)
    first_running = first.poll() is None
    _, first_err = first.communicate(timeout=600)
    result = one_line_error(Result(second.returncode), second_err, f"pid {first.pid}")
    result.expect(first_running, "the first pipeline had finished before the second was refused")
    result.expect(
        first.returncode == 0, f"the first pipeline failed ({first.returncode}): {_tail(first_err)}"
    )
    if first.returncode == 0:
        statuses = _statuses(run)
        result.expect(set(statuses.values()) <= {"ran", "disabled"}, f"first run: {statuses}")
    return result


@case("changed train label re-runs teacher, store and all after")
def changed_label(work: Work) -> Result:
    reference = work.reference()
    run, data = work.root / "relabelled", work.root / "relabelled-glue"
    shutil.copytree(reference, run)
    shutil.copytree(work.glue, data)
    same = cli("pipeline", "--config", str(work.config(run, data)))  # the same data elsewhere: all skipped
    result = Result(same.returncode).expect(same.returncode == 0, f"re-run failed: {_tail(same.stderr)}")
    if same.returncode == 0:
        skipped = {k: v for k, v in _statuses(run).items() if v not in ("skipped", "disabled")}
        result.expect(not skipped, f"moved, unchanged data re-ran {skipped}")
    train = data / "SST-2" / "train.tsv"
    lines = train.read_text().splitlines()
    text, label = lines[1].rsplit("\t", 1)
    lines[1] = f"{text}\t{1 - int(label)}"
    train.write_text("\n".join(lines) + "\n")
    done = cli("pipeline", "--config", str(work.config(run, data)))
    result.code = done.returncode
    result.expect(done.returncode == 0, f"exit {done.returncode}: {_tail(done.stderr)}")
    if done.returncode == 0:
        statuses = _statuses(run)
        rerun = [k for k, v in statuses.items() if v == "ran"]
        result.expect(set(rerun) == set(statuses) - {"compress"}, f"statuses after the change: {statuses}")
        stages = json.loads((run / "pipeline.json").read_text())["stages"]
        why = {k: v.get("why") for k, v in stages.items() if v.get("why")}
        result.expect(
            why.get("teacher") == "train.tsv changed", f"why the teacher re-ran: {why.get('teacher')}"
        )
        result.note = (
            "re-ran " + ", ".join(rerun) + f"; teacher: {why.get('teacher')}, store: {why.get('store')}"
        )
    return result


KILL_POINTS = (  # in pipeline order: each run is killed one step further than the one before
    "after-stage-json:teacher",
    "after-store-rename",
    "after-stage-json:store",
    "before-stage-json:search",
    "after-stage-json:search",
    "after-stage-json:student",
    "after-stage-json:eval",
    "before-stage-json:export",
)


@case("kill at each stage boundary, then resume")
def kill_points(work: Work) -> Result:
    reference = work.reference()
    run = work.root / "killed"
    config = str(work.config(run))
    result = Result(None)
    for point in KILL_POINTS:
        killed = cli("pipeline", "--config", config, code=kill_wrapper(point))
        if killed.returncode != -signal.SIGKILL:
            return result.expect(
                False, f"{point}: exit {killed.returncode}, not killed: {_tail(killed.stderr)}"
            )
    done = cli("pipeline", "--config", config)
    result.code = done.returncode
    result.expect(done.returncode == 0, f"final run: exit {done.returncode}: {_tail(done.stderr)}")
    if done.returncode != 0:
        return result
    progress = json.loads((run / "pipeline.json").read_text())
    result.expect(progress["status"] == "done", f"pipeline.json says {progress['status']}")
    result.expect(
        progress.get("previous_run", {}).get("status") == "interrupted", "the killed run is not recorded"
    )
    for name in ("search/genotype.json", "student/model.safetensors", "export/model.onnx"):
        result.expect((run / name).read_bytes() == (reference / name).read_bytes(), f"{name} differs")
    metrics = [json.loads((r / "eval" / "report.json").read_text())["metrics"] for r in (run, reference)]
    result.expect(metrics[0] == metrics[1], "eval metrics differ from the uninterrupted run")
    result.expect(not leftovers(run), f"temporary files left: {leftovers(run)}")
    result.note = (
        f"{len(KILL_POINTS)} kills ({', '.join(KILL_POINTS)}); same genotype, weights, ONNX, metrics"
    )
    return result


@case("SIGTERM during search marks the run interrupted")
def sigterm(work: Work) -> Result:
    run = work.root / "terminated"
    shutil.copytree(work.reference(), run)
    (run / "search" / "stage.json").unlink()
    shutil.rmtree(run / "search")  # the search runs again, and is stopped in it
    command = [sys.executable, "-m", "adabert.cli", "pipeline", "--config", str(work.config(run))]
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 300
    while (
        not (run / "search" / "config.json").exists() and proc.poll() is None and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    result = Result(proc.returncode).expect(
        proc.returncode == 130, f"exit {proc.returncode}: {_tail(stderr)}"
    )
    progress = json.loads((run / "pipeline.json").read_text())
    result.expect(progress["status"] == "interrupted", f"pipeline.json says {progress['status']}")
    result.expect("Traceback" not in stderr, "a traceback was printed")
    return result.expect(not leftovers(run), f"temporary files left: {leftovers(run)}")


def _pickle_case(name: str, stage: str, target: str, expected: int) -> None:
    """A crafted torch.save pickle as ``target`` of a copied ``stage`` folder (the real checkpoint
    removed): refused with exit 2 naming the file, or, for a legacy ``.pt`` never read, ignored (exit 0).
    Either way its payload never runs."""

    def run(work: Work) -> Result:
        slug = name.split(":")[0] + "-" + target.replace(".", "-") + ("-old" if "older" in name else "")
        folder, marker = work.root / slug / stage, work.root / f"{slug}.payload-ran"
        reference = work.reference()
        shutil.copytree(reference / stage, folder)
        if stage == "student.resume":  # train's resume state, in the sibling of the student folder
            shutil.copytree(reference / "student", work.root / slug / "student")
        for old in folder.glob(Path(target).stem + ".*"):
            old.unlink()
        hostile_checkpoint(folder / target, marker)
        store = ["--store", str(reference / "store")]
        if name.startswith("train-supernet"):
            genotype = str(folder / "genotype.json")
            out = str(work.root / slug / "student")
            args = ["train", "--genotype", genotype, *store, "--supernet", str(folder), "--output-dir", out]
            args += ["--epochs", "1", "--batch-size", "8"]
        elif stage == "search":
            args = ["search", "--config", str(folder / "config.json"), *store, "--output-dir", str(folder)]
            args.append("--resume")
        else:
            genotype, student = str(reference / "search" / "genotype.json"), work.root / slug / "student"
            args = ["train", "--config", str(student / "train_config.json"), "--genotype", genotype, *store]
            args += ["--output-dir", str(student), "--epochs", "2", "--resume"]
        done = cli(*args)
        if expected == 2:
            result = one_line_error(Result(done.returncode), done.stderr, target)
        else:
            result = Result(done.returncode).expect(done.returncode == 0, f"exit {done.returncode}")
            result.expect("never read" in done.stderr, "no warning that the legacy file is ignored")
            result.note = "ignored with a warning; trained afresh"
        return result.expect(not marker.exists(), "THE PAYLOAD RAN")

    case(name)(run)


_pickle_case("search-resume: crafted pickle as checkpoint.safetensors", "search", "checkpoint.safetensors", 2)
_pickle_case(
    "train-supernet: crafted pickle as checkpoint.safetensors", "search", "checkpoint.safetensors", 2
)
_pickle_case("train-supernet: crafted pickle checkpoint.pt (legacy name)", "search", "checkpoint.pt", 2)
_pickle_case(
    "train-resume: crafted pickle as training_state.safetensors",
    "student.resume",
    "training_state.safetensors",
    2,
)
_pickle_case(
    "train-resume: crafted pickle as training_state.safetensors (older layout, in the student folder)",
    "student",
    "training_state.safetensors",
    2,
)
_pickle_case(
    "train-resume: crafted pickle training_state.pt (legacy name)", "student", "training_state.pt", 0
)


@case("train --resume with another genotype")
def resume_other_genotype(work: Work) -> Result:
    from adabert.genotype import Genotype, random_genotype

    reference = work.reference()
    student = work.root / "other-genotype" / "student"
    shutil.copytree(reference / "student", student)
    shutil.copytree(reference / "student.resume", student.parent / "student.resume")  # its resume state
    searched = Genotype.load(reference / "search" / "genotype.json")
    other = work.root / "other-genotype" / "genotype.json"
    for seed in range(1, 50):  # another genotype of the same space and size
        candidate = random_genotype(
            searched.space, seed, hidden_size=searched.hidden_size, embedding=searched.embedding
        )
        if candidate != searched:
            candidate.save(other)
            break
    done = cli(
        "train",
        "--config",
        str(student / "train_config.json"),
        "--genotype",
        str(other),
        "--store",
        str(reference / "store"),
        "--output-dir",
        str(student),
        "--epochs",
        "2",
        "--resume",
    )
    return one_line_error(Result(done.returncode), done.stderr, "genotype")


KILL_AFTER_FIRST_CHECKPOINT = textwrap.dedent(
    """
    import os, signal, sys
    import adabert.search.loop as search, adabert.student.train as train
    for module in (search, train):
        def save_and_die(*args, _save=module.save_state, **kwargs):
            _save(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)
        module.save_state = save_and_die
    from adabert.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)  # the adabert command, SIGKILLed right after its first epoch's checkpoint (as a kill or full disk would)


def _killed_case(name: str, stage: str) -> None:
    """A search or train of two epochs into a copy of the reference run's finished folder, killed after
    epoch 1: what it leaves is refused by the next stage (train, evaluate), naming the stage to re-run."""

    def run(work: Work) -> Result:
        reference = work.reference()
        folder = work.root / f"killed-{stage}-after-epoch-1" / stage  # one parent per case: they run at once
        shutil.copytree(reference / stage, folder)
        store = ["--store", str(reference / "store"), "--output-dir", str(folder)]
        if stage == "search":
            args = ["search", "--config", str(folder / "config.json"), *store, "--epochs", "2"]
            after = [
                "train",
                "--genotype",
                str(folder / "genotype.json"),
                "--store",
                str(reference / "store"),
                "--output-dir",
                str(folder.parent / "student"),
                "--epochs",
                "1",
                "--batch-size",
                "8",
            ]
            needles = ("adabert search that wrote it did not finish", "--resume")
        else:
            genotype = str(reference / "search" / "genotype.json")
            args = [
                "train",
                "--config",
                str(folder / "train_config.json"),
                "--genotype",
                genotype,
                *store,
                "--epochs",
                "2",
            ]
            after = [
                "evaluate",
                "--model",
                str(folder),
                "--store",
                str(reference / "store"),
                "--output-dir",
                str(folder.parent / "eval"),
                "--skip-latency",
                "--seq-len",
                "16",
            ]
            needles = ("adabert train that wrote it did not finish", "--resume")
        killed = cli(*args, code=KILL_AFTER_FIRST_CHECKPOINT)
        result = Result(killed.returncode)
        if killed.returncode != -signal.SIGKILL:
            return result.expect(False, f"not killed: exit {killed.returncode}: {_tail(killed.stderr)}")
        done = cli(*after)
        result.code = done.returncode
        return one_line_error(result, done.stderr, str(folder), *needles)

    case(name)(run)


_killed_case("search killed after epoch 1 over a finished one, then train", "search")
_killed_case("train killed after epoch 1 over a finished one, then evaluate", "student")


@case("train on an unfinished search (genotype.json and checkpoint, no selection.json)")
def train_unfinished_search(work: Work) -> Result:
    """What a diverged, killed or full-disk search leaves: epoch 1's genotype and checkpoint, for
    --resume, and no selection.json (the search's last file). train refuses both, naming the search."""
    reference = work.reference()
    search = work.root / "unfinished-search" / "search"
    shutil.copytree(reference / "search", search)
    (search / "selection.json").unlink()
    (search / "stage.json").unlink()
    result = Result(None)
    for extra in ((), ("--supernet", str(search))):
        out = search.parent / "student"
        done = cli("train", "--genotype", str(search / "genotype.json"), "--store", str(reference / "store"),
                   "--output-dir", str(out), "--epochs", "1", "--batch-size", "8", *extra)  # fmt: skip
        result.code = done.returncode
        one_line_error(result, done.stderr, str(search), "adabert search that wrote it did not finish")
        result.expect(not out.exists(), "a student folder was written")
    return result


DIVERGE = textwrap.dedent(
    """
    import sys
    import adabert.search.loop as search, adabert.student.train as train
    search.task_loss = train.task_loss = lambda logits, *_: logits.sum() * float("nan")
    from adabert.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)  # the adabert command, whose every loss becomes NaN: a divergence on the first step it runs


def _advice_case(name: str, stage: str, lowered: tuple[str, ...], *advice: str) -> None:
    """A finished ``stage`` (search or student, copied from the reference run) continued for one more
    epoch with --resume, and diverging: exit 2 with advice naming the rates and --resume. Following it
    (the same command with lower rates) continues from the last epoch and records the change."""

    def run(work: Work) -> Result:
        reference = work.reference()
        folder = work.root / "advice" / stage
        shutil.copytree(reference / stage, folder)
        store = ["--store", str(reference / "store"), "--output-dir", str(folder), "--resume"]
        if stage == "search":
            args = ["search", "--config", str(folder / "config.json"), *store]
            args += ["--epochs", str(TINY["search"]["epochs"] + 1)]
            record = folder / "selection.json"
        else:
            shutil.copytree(reference / "student.resume", folder.parent / "student.resume")
            genotype = str(reference / "search" / "genotype.json")
            args = ["train", "--config", str(folder / "train_config.json"), "--genotype", genotype, *store]
            args += ["--epochs", str(TINY["train"]["epochs"] + 1)]
            record = folder / "metrics.json"
        diverged = cli(*args, code=DIVERGE)
        result = one_line_error(Result(diverged.returncode), diverged.stderr, *advice, "--resume")
        advised = result.note
        done = cli(*args, *lowered)
        result.code = done.returncode
        result.expect(
            done.returncode == 0, f"following the advice: exit {done.returncode}: {_tail(done.stderr)}"
        )
        if done.returncode == 0:
            changes = json.loads(record.read_text()).get("lr_changes")
            result.expect(bool(changes), f"{record.name} records no learning-rate change")
            result.note = (
                f"advised: ...{advised[advised.index('Lower') :]} Followed ({' '.join(lowered)}): exit 0, "
            )
            result.note += f"{record.name} lr_changes {json.dumps(changes)}"
        return result

    case(name)(run)


_advice_case(
    "search diverges on --resume; the advice (lower --w-lr/--arch-lr, --resume) followed", "search",
    ("--w-lr", "1e-3", "--arch-lr", "1e-2"), "--w-lr", "--arch-lr",
)  # fmt: skip
_advice_case(
    "train diverges on --resume; the advice (lower --lr, --resume) followed",
    "student",
    ("--lr", "1e-5"),
    "--lr",
)


def _trivial_case(name: str, stage: str, *args: str) -> None:
    """A stage run with an absurd learning rate: it finishes (exit 0), and says, in its log and in the
    file it records its result in, that it is no better than the trivial predictor."""

    def run(work: Work) -> Result:
        reference = work.reference()
        out = work.root / "trivial" / stage
        store = ["--store", str(reference / "store"), "--output-dir", str(out)]
        if stage == "search":
            done = cli("search", "--config", str(reference / "search" / "config.json"), *store, *args)
            verdict = (
                json.loads((out / "selection.json").read_text())["supernet"] if done.returncode == 0 else {}
            )
            flagged = verdict.get("ended_blind") or verdict.get("blind")
        else:
            genotype = str(reference / "search" / "genotype.json")
            done = cli("train", "--config", str(reference / "student" / "train_config.json"), "--genotype",
                       genotype, *store, *args)  # fmt: skip
            verdict = (
                json.loads((out / "metrics.json").read_text())["trivial"] if done.returncode == 0 else {}
            )
            flagged = verdict.get("no_better")
        result = Result(done.returncode).expect(
            done.returncode == 0, f"exit {done.returncode}: {_tail(done.stderr)}"
        )
        warnings = [line for line in done.stderr.splitlines() if "trivial predictor" in line]
        result.expect(bool(warnings), "no warning in the log")
        result.expect(bool(flagged), "the result file does not record it")
        if warnings:
            result.note = "warned: " + warnings[0].split(": ", 1)[-1].replace(str(work.root), "$TMP")
        return result

    case(name)(run)


_trivial_case("search --w-lr 1e6 ends no better than the trivial predictor", "search", "--w-lr", "1e6")
_trivial_case("train --lr 1e4 ends no better than the trivial predictor", "student", "--lr", "1e4")


@case("run directory moved, every later command from another folder")
def moved_run(work: Work) -> Result:
    """``adabert pipeline`` into ``runs/sst2`` relative to one folder, the folder ``runs`` moved away, then
    each later command (a search in a new space, which times the store's teacher, among them) from a
    third folder, with paths relative to it."""
    root = work.root / "moved"
    first, other = root / "work", root / "other"
    first.mkdir(parents=True)
    other.mkdir()
    config = first / "pipeline.json"
    settings = json.loads(work.config(root / "unused").read_text())
    config.write_text(json.dumps({**settings, "run_dir": "runs/sst2"}))
    built = cli("pipeline", "--config", str(config), cwd=first)
    result = Result(built.returncode)
    if built.returncode != 0:
        return result.expect(False, f"the pipeline failed: {_tail(built.stderr)}")
    shutil.move(str(first / "runs"), root / "moved-runs")
    run, store = "../moved-runs/sst2", ["--store", "../moved-runs/sst2/store"]
    student = ["--model", f"{run}/student"]
    dev = str(work.glue / "SST-2" / "dev.tsv")
    commands = {
        "evaluate": ["evaluate", *student, *store, "--output-dir", "eval", "--skip-latency", "--seq-len",
                     "16"],
        "teacher probe": ["teacher", "probe", "--teacher", f"{run}/teacher", "--output-dir", "store2",
                          "--epochs", "1"],
        "search (new space)": ["search", *store, "--output-dir", "search", "--space", "attention_rnn",
                               "--hidden-size", "16", "--max-cells", "2", "--epochs", "1",
                               "--uniform-warmup-epochs", "0", "--batch-size", "8", "--cost-seq-len", "16"],
        "train": ["train", "--genotype", f"{run}/search/genotype.json", *store, "--supernet",
                  f"{run}/search", "--output-dir", "student", "--epochs", "1", "--batch-size", "8"],
        "compress": ["compress", *student, *store, "--output-dir", "compressed", "--methods", "svd",
                     "--kd-epochs", "0.5", "--batch-sizes", "1", "--seq-len", "16", "--repeats", "1"],
        "export": ["export", *student, *store, "--output-dir", "export", "--seq-len", "16"],
        "predict": ["predict", "--model", f"{run}/export", "--input", dev, "--output", "predictions.tsv"],
        "report": ["report", run],
    }  # fmt: skip
    cache = {"ADABERT_CACHE": str(root / "cache")}  # no latency table yet: the search times the teacher
    ran = []
    for name, args in commands.items():
        done = cli(*args, cwd=other, extra_env=cache)
        result.expect(done.returncode == 0, f"{name}: exit {done.returncode}: {_tail(done.stderr)}")
        result.expect("Traceback" not in done.stderr, f"{name}: a traceback")
        ran.append(f"{name} {done.returncode}")
    result.code = 0 if not result.problems else 1
    result.note = "exit codes: " + ", ".join(ran)
    return result


@case("README transformers example on a student, in a fresh process")
def readme_example(work: Work) -> Result:
    """The README's pipeline() example, its single-sentence part verbatim but for the model path, run by
    a fresh interpreter outside the repository (there only ``import adabert`` registers the student)."""
    block = next(b for b in re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
                 if "runs/sst2/student" in b)  # fmt: skip
    lines = block.split("\n")
    last = next(i for i, line in enumerate(lines) if line.startswith("classify("))
    code = "\n".join(lines[:last]) + f"\nprint({lines[last].split('  #')[0]})\n"
    code = code.replace("runs/sst2/student", str(work.reference() / "student"))
    folder = work.root / "readme"
    folder.mkdir()
    done = subprocess.run([sys.executable, "-c", code], cwd=folder, env=env(), capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    result = Result(done.returncode).expect(
        done.returncode == 0, f"exit {done.returncode}: {_tail(done.stderr)}"
    )
    printed = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    result.expect(
        "'label': 'positive'" in printed or "'label': 'negative'" in printed, f"printed {printed!r}"
    )
    result.note = f"printed {printed}"
    return result


@case("diverged finetune over a good teacher, then teacher probe")
def diverged_over_teacher(work: Work) -> Result:
    """A fine-tuning with --lr 1e30 into a copy of the reference run's finished teacher: it stops with
    exit 2, and the probe then refuses the folder (whose old weights sit beside the new settings)."""
    teacher = work.root / "diverged-over" / "teacher"
    shutil.copytree(work.reference() / "teacher", teacher)
    diverged = cli(*tiny_finetune_argv(work.bert, work.glue, teacher, "--epochs", "1", "--lr", "1e30"))
    result = one_line_error(Result(diverged.returncode), diverged.stderr, "diverged")
    store = teacher.parent / "store"
    done = cli("teacher", "probe", "--teacher", str(teacher), "--output-dir", str(store))
    result.code = done.returncode
    one_line_error(result, done.stderr, str(teacher), "adabert teacher finetune that wrote it did not finish")
    return result.expect(not store.exists(), "a store was written")


@case("the student folder holds no optimizer state; sizes in KiB/MiB")
def deployable_student(work: Work) -> Result:
    reference = work.reference()
    student = sorted(p.name for p in (reference / "student").iterdir())
    result = Result(0).expect(not any("training_state" in n for n in student), f"student folder: {student}")
    result.expect((reference / "student.resume" / "training_state.safetensors").is_file(), "no resume state")
    report = (reference / "eval" / "report.md").read_text()
    sizes = sorted(set(re.findall(r"\d+(?:\.\d+)? (?:KiB|MiB|GiB|MB|kB)", report)))
    result.expect(bool(sizes) and not any(u.endswith(("MB", "kB")) for u in sizes), f"sizes: {sizes}")
    result.note = f"student/: {', '.join(student)}; resume state in student.resume/; report sizes {sizes}"
    return result


@case("predict into a read-only folder")
def predict_read_only(work: Work) -> Result:
    parent = work.root / "predict-read-only"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        done = cli("predict", "--model", str(work.reference() / "student"), "--input",
                   str(work.glue / "SST-2" / "dev.tsv"), "--output", str(parent / "predictions.tsv"),
                   preexec=without_root_override)  # fmt: skip
    finally:
        parent.chmod(0o755)
    result = one_line_error(Result(done.returncode), done.stderr, str(parent), "Permission denied")
    result.expect(".tmp" not in result.note, "the error names a temporary file")
    return result.expect(
        "predict " not in done.stderr.split("adabert: error:")[0], "rows were predicted first"
    )


@case("evaluate --output-dir . whose report.json may not be replaced (chattr +i)")
def report_not_permitted(work: Work) -> Result:
    folder = work.root / "immutable"
    folder.mkdir()
    (folder / "report.json").write_text("{}\n")
    locked = subprocess.run(["chattr", "+i", str(folder / "report.json")], capture_output=True, text=True)
    if locked.returncode != 0:
        return Result(None, [f"chattr +i failed (needs ext2/3/4 and root): {_tail(locked.stderr)}"])
    try:
        reference = work.reference()
        done = cli("evaluate", "--model", str(reference / "student"), "--store", str(reference / "store"),
                   "--output-dir", ".", "--skip-latency", "--seq-len", "16", cwd=folder)  # fmt: skip
    finally:
        subprocess.run(["chattr", "-i", str(folder / "report.json")], check=False)
    return one_line_error(
        Result(done.returncode), done.stderr, f"{folder}/report.json", "Operation not permitted"
    )


def _input_case(name: str, write: Callable[[Path], Path], code: int, *needles: str) -> None:
    """``predict`` on the reference student with an input file ``write`` makes: exit 2 with one line
    naming each needle, or exit 0 with a warning naming each."""

    def run(work: Work) -> Result:
        folder = work.root / ("input-" + "".join(c if c.isalnum() else "-" for c in name).strip("-"))
        folder.mkdir()
        data = write(folder)
        out = folder / "predictions.tsv"
        done = cli("predict", "--model", str(work.reference() / "student"), "--input", str(data), "--output",
                   str(out))  # fmt: skip
        if code == 2:
            result = one_line_error(Result(done.returncode), done.stderr, str(data), *needles)
            return result.expect(not out.exists(), "predictions were written")
        result = Result(done.returncode).expect(
            done.returncode == 0, f"exit {done.returncode}: {_tail(done.stderr)}"
        )
        warnings = [line for line in done.stderr.splitlines() if all(n in line for n in needles)]
        result.expect(bool(warnings), f"no warning naming {needles}: {_tail(done.stderr)}")
        if warnings:
            result.note = "warned: " + warnings[0].split(": ", 1)[-1].replace(str(work.root), "$TMP")
        return result

    case(name)(run)


def _write(name: str, text: str) -> Callable[[Path], Path]:
    def write(folder: Path) -> Path:
        (folder / name).write_text(text)
        return folder / name

    return write


def _a_folder(folder: Path) -> Path:
    (folder / "rows.csv").mkdir()
    return folder / "rows.csv"


_input_case(
    "predict: a CSV quote opened on line 3 and never closed",
    _write("rows.csv", 'sentence,label\ngood film,1\n"bad film,0\nok film,1\nfine film,1\n'), 2,
    "rows.csv:3:", "never closed",
)  # fmt: skip
_input_case("predict: a folder given as the input file", _a_folder, 2, "a folder, not a data file")
_input_case(
    "predict: a label the model does not know (metrics skipped, said)",
    _write("rows.csv", "sentence,label\na good film .,1\na bad film .,maybe\n"), 0, "no metrics", "label",
)  # fmt: skip


# ------------------------------------------------------------------------------------------ model folders
def _edit_json(path: Path, edit: Callable[[dict], object]) -> None:
    value = json.loads(path.read_text())
    edit(value)
    path.write_text(json.dumps(value))


def _pickle_weights(folder: Path, marker: Path) -> None:
    """The safetensors weights replaced by a crafted pickle ``pytorch_model.bin``."""
    for weights in folder.glob("*.safetensors"):
        weights.unlink()
    hostile_checkpoint(folder / "pytorch_model.bin", marker)


def _torchscript_pickle(folder: Path, marker: Path) -> None:
    """An export folder whose model file is a torch.save zip (a pickle) named ``model.pt``."""
    (folder / "model.onnx").unlink()
    _edit_json(folder / "export.json", lambda e: e.update(file="model.pt", format="torchscript"))
    hostile_checkpoint(folder / "model.pt", marker)


def _swap_first_op(folder: Path, marker: Path) -> None:
    """The issue's edit: the first edge's op of the student's genotype changed (identity -> conv3)."""
    path = folder / "config.json"
    config = json.loads(path.read_text())
    edge = config["genotype"]["edges"][0]
    edge["op"] = "conv3" if edge["op"] != "conv3" else "identity"
    path.write_text(json.dumps(config))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _no_model(folder: Path, marker: Path) -> None:
    shutil.rmtree(folder)
    folder.mkdir()
    (folder / "notes.txt").write_text("no model here\n")


def _model_case(
    name: str, stage: str, command: str, damage: Callable[[Path, Path], None], *needles: str
) -> None:
    """A copy of the reference run's ``stage`` folder, damaged, given to ``command`` (predict, evaluate or
    teacher probe): exit 2, one line naming the folder and each needle, no output, no payload run."""

    def run(work: Work) -> Result:
        reference = work.reference()
        slug = "model-" + "".join(c if c.isalnum() else "-" for c in name).strip("-")
        folder, out, marker = (work.root / slug / stage, work.root / slug / "out", work.root / f"{slug}.ran")
        shutil.copytree(reference / stage, folder)
        damage(folder, marker)
        if command == "probe":
            args = ["teacher", "probe", "--teacher", str(folder), "--output-dir", str(out)]
        elif command == "evaluate":
            args = ["evaluate", "--model", str(folder), "--store", str(reference / "store")]
            args += ["--output-dir", str(out), "--skip-latency", "--seq-len", "16"]
        else:
            args = ["predict", "--model", str(folder), "--input", str(work.glue / "SST-2" / "dev.tsv")]
            args += ["--output", f"{out}.tsv"]
        done = cli(*args)
        result = one_line_error(Result(done.returncode), done.stderr, str(folder), *needles)
        result.expect(not out.exists() and not Path(f"{out}.tsv").exists(), "an output was written")
        return result.expect(not marker.exists(), "THE PAYLOAD RAN")

    case(name)(run)


_model_case(
    "student: genotype op edited (identity -> conv3), predict", "student", "predict", _swap_first_op,
    "weights do not match its config.json", "cells.0.ops.0",
)  # fmt: skip
_model_case(
    "student: genotype op edited (identity -> conv3), evaluate", "student", "evaluate", _swap_first_op,
    "weights do not match its config.json", "cells.0.ops.0",
)  # fmt: skip
_model_case(
    "student: config.json not valid JSON", "student", "predict",
    lambda f, _: (f / "config.json").write_text('{"model_type": "adabert-student",'), "not valid JSON",
)  # fmt: skip
_model_case(
    "student: config.json with wrong types", "student", "evaluate",
    lambda f, _: _edit_json(f / "config.json", lambda c: c.update(hidden_size="wide", pair="yes")),
    "config.json", "TypeError",
)  # fmt: skip
_model_case(
    "student: model_type bert", "student", "evaluate",
    lambda f, _: _edit_json(f / "config.json", lambda c: c.update(model_type="bert")), "model_type 'bert'",
)  # fmt: skip
_model_case(
    "student: id2label of 5 labels (2-label model)", "student", "evaluate",
    lambda f, _: _edit_json(f / "config.json", lambda c: c.update(
        id2label={str(i): f"l{i}" for i in range(5)}, label2id={f"l{i}": i for i in range(5)})),
    "of another shape", "head.",
)  # fmt: skip
_model_case(
    "student: config.json holding [1,2,3]", "student", "predict",
    lambda f, _: (f / "config.json").write_text("[1, 2, 3]"), "not a model config",
)  # fmt: skip
_model_case(
    "student: pickle pytorch_model.bin",
    "student",
    "predict",
    _pickle_weights,
    "pytorch_model.bin is a pickle",
)
_model_case(
    "teacher: pickle pytorch_model.bin", "teacher", "probe", _pickle_weights, "pytorch_model.bin is a pickle"
)
_model_case(
    "export: truncated model.onnx", "export", "predict", lambda f, _: _truncate(f / "model.onnx"),
    "model.onnx: not a usable ONNX model",
)  # fmt: skip
_model_case(
    "export: torch.save zip as model.pt", "export", "predict", _torchscript_pickle,
    "model.pt: not a TorchScript model",
)  # fmt: skip
_model_case(
    'student: adabert_task.json holding {"task": 5}', "student", "predict",
    lambda f, _: (f / "adabert_task.json").write_text('{"task": 5}'), "adabert_task.json",
)  # fmt: skip
_model_case(
    "evaluate --model at a folder holding no model", "student", "evaluate", _no_model, "not a model folder"
)
_model_case(
    "student: its train did not finish (no metrics.json)", "student", "evaluate",
    lambda f, _: (f / "metrics.json").unlink(), "adabert train that wrote it did not finish", "--resume",
)  # fmt: skip
_model_case(
    "teacher: its finetune did not finish (no adabert_task.json)", "teacher", "probe",
    lambda f, _: (f / "adabert_task.json").unlink(), "adabert teacher finetune that wrote it did not finish",
)  # fmt: skip


# ------------------------------------------------------------------------------------------ main
def run_case(name: str, work: Work) -> tuple[Result, float]:
    started = time.perf_counter()
    try:
        result = CASES[name](work)
    except Exception as err:  # a broken case is a failure, not the end of the run
        result = Result(None, [f"{type(err).__name__}: {err}"])
    return result, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only", nargs="+", default=[], help="run the cases whose name contains one of these"
    )
    parser.add_argument("--list", action="store_true", help="list the cases")
    parser.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (default: a temporary folder)")
    parser.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1), help="cases run at once")
    parser.add_argument(
        "--markdown",
        metavar="FILE",
        help="also write the results as RESULTS.md's markdown table (the work folder written as $TMP)",
    )
    args = parser.parse_args()
    names = [n for n in CASES if not args.only or any(o in n for o in args.only)]
    if args.list:
        print("\n".join(names))
        return 0
    os.environ.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
    with _workdir(args.keep) as root:
        work = Work(root)
        width = max(len(n) for n in names)
        print(f"{'case':<{width}}  exit  outcome", flush=True)
        t0 = time.perf_counter()
        results = {n: run_case(n, work) for n in names if n in IN_PROCESS}
        with ThreadPoolExecutor(max(1, args.jobs)) as pool:  # each of these cases waits on subprocesses
            futures = {n: pool.submit(run_case, n, work) for n in names if n not in IN_PROCESS}
            failed = 0
            rows = ["| case | exit | outcome | s |", "|---|---:|---|---:|"]
            for name in names:
                result, seconds = results[name] if name in results else futures[name].result()
                failed += bool(result.problems)
                outcome = "ok" if not result.problems else "FAIL: " + "; ".join(result.problems)
                if result.note and not result.problems:
                    outcome += f": {result.note}"
                code = "-" if result.code is None else str(result.code)
                print(f"{name:<{width}}  {code:>4}  {outcome}  ({seconds:.0f}s)", flush=True)
                cells = [name, code, outcome.replace(str(root), "$TMP"), f"{seconds:.0f}"]
                rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        summary = f"{len(names) - failed}/{len(names)} cases ok in {time.perf_counter() - t0:.0f}s"
        print(summary, flush=True)
        if args.markdown:
            Path(args.markdown).write_text("\n".join([*rows, "", summary]) + "\n")
    return 1 if failed else 0


@contextlib.contextmanager
def _workdir(keep: str | None) -> Iterator[Path]:
    if keep:
        path = Path(keep)
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="adabert-faults-") as tmp:
        yield Path(tmp)


if __name__ == "__main__":
    sys.exit(main())
