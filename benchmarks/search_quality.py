"""One benchmark setting per task, two results files: is the search worth it, and is the student?

    python benchmarks/search_quality.py TASK [--run-dir runs/bench/TASK] [--seeds 0 1 2] [--ablations]
    python benchmarks/search_quality.py TASK --reuse runs/quick_TASK   # the quick budget's setting
    python benchmarks/search_quality.py TASK --train probe_kd=1.0 --tag probe_kd  # a changed recipe

On the same teacher, knowledge store and training recipe (the ``setting`` below, recorded in both
files), it trains and evaluates:

- the searched student of each seed (search, then student training);
- fixed baselines from ``benchmarks/genotypes/``: the bag-of-embeddings cell and a hand-made
  convolution cell;
- ``--random`` random genotypes at the searched students' latency budget (their predicted batch-1
  latency within 15% of the searched genotypes' mean, from the search's latency table);
- the peers a user would pick instead (``benchmarks/peers.py``: fastText, Model2Vec + logistic
  regression), trained on all the task's training rows;

then times every student and the teacher in one interleaved latency run (batch 1 and 32, sequence
128, one thread, ``repeats`` rounds, median), and writes ``benchmarks/results/search_quality_TASK.json``
(+ a Pareto plot, dev metric vs batch-1 latency) and ``benchmarks/results/student_quality_TASK.json``.
``--ablations`` adds the student-side ablations (token table, augmented copies, probe KD, head) to
the second file. Each stage runs as an ``adabert`` command in a subprocess, whose wall time and peak
memory are recorded; finished stages are reused when the run directory is kept (``--fresh`` redoes
everything).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
GENOTYPES = HERE / "genotypes"
ORDER = "order"  # the word-order diagnostic (order_task.py), built from SST-2
sys.path.insert(0, str(HERE))


# ---------------------------------------------------------------------------------------------- setting
def setting_for(task_name: str, train_rows: int, pair: bool, budget: str = "benchmark") -> dict[str, Any]:
    """The benchmark setting of a task, from general rules (no per-task tuning): how many rows the
    teacher fine-tunes on, how many rows are augmented and how often, how long search and training run.

    ``budget="quick"``: the search and student settings of the pipeline's ``quick`` budget, on the
    teacher and store of a ``quick`` pipeline run (``--reuse``)."""
    from adabert.config import TrainConfig

    # the student's weight average, named in every train command: a run directory kept from before
    # it was the default reuses no student trained without it
    average = TrainConfig().average
    common = {
        "init": "supernet",  # as the pipeline trains its student; every variant from the seed-0 search
        "latency": {"batches": [1, 32], "seq_len": 128, "threads": 1, "repeats": 5, "warmup": 2},
        "random": {"count": 5, "tolerance": 0.15, "batch": 1},
    }
    if budget == "quick":
        from adabert.pipeline import BUDGETS

        quick = BUDGETS["quick"]
        return {
            "budget": "quick",
            "teacher": quick["finetune"],
            "probe": quick["probe"],
            "search": dict(quick["search"]),
            "train": {"batch_size": 64, **quick["train"], "average": average},
            **common,
        }
    if budget == "full":
        full = full_setting(train_rows, pair)
        return {**full, "train": {**full["train"], "average": average}, **common}
    augment_factor = 20
    augment_rows = min(train_rows, 6000)  # 20 copies of at most 6000 rows: <= 120k teacher-labelled rows
    # a student epoch holds about 20k rows: a small task trains on augmented copies of its rows, a
    # large one on its own rows (its copies stay in the store for the ablations)
    copies = min(augment_factor, max(0, 20000 // train_rows - 1))
    return {
        "teacher": {
            "train_limit": 20000 if train_rows > 20000 else None,
            "max_length": 128 if pair else 64,
            "epochs": 2 if train_rows > 20000 else 3,
            "lr": 5e-5 if train_rows > 5000 else 3e-5,
            "batch_size": 32 if train_rows > 5000 else 16,
        },
        "probe": {"augment_factor": augment_factor, "augment_rows": augment_rows},
        "search": {"epochs": 4, "uniform_warmup_epochs": 2, "train_limit": 20000, "augment_copies": 2},
        "train": {"epochs": 3, "batch_size": 64, "augment_copies": copies, "average": average},
        **common,
    }


FULL_ROWS = 200_000  # the ``full`` setting's store: every train row plus augmented ones, up to this


def full_setting(train_rows: int, pair: bool) -> dict[str, Any]:
    """The ``full`` setting: the teacher a user would compress (every train row, 2 epochs fixed in
    advance, its last epoch kept), a store of every train row topped up with augmented copies to
    ``FULL_ROWS`` rows in all, and students trained for 2 passes over all of them."""
    room = max(0, FULL_ROWS - train_rows)
    factor = min(20, -(-room // max(train_rows, 1)))  # copies per augmented row (0: no room)
    probe = {"augment_factor": factor, "augment_rows": min(train_rows, room // factor)} if factor else {}
    return {
        "budget": "full",
        "teacher": {
            "max_length": 128 if pair else 64,
            "epochs": 2,
            "lr": 5e-5 if train_rows > 5000 else 3e-5,
            "batch_size": 32 if train_rows > 5000 else 16,
            "keep": "last",
        },
        "probe": probe,
        "search": {"epochs": 4, "uniform_warmup_epochs": 2, "train_limit": 20000, "augment_copies": 2},
        "train": {"epochs": 2, "batch_size": 64, "augment_copies": factor},
    }


def parse_overrides(specs: list[str], stage: str = "search") -> dict[str, Any]:
    """``--search`` (or ``--train``) ``KEY=VALUE`` pairs as that stage's settings (numbers and booleans
    parsed), each key checked against ``adabert search``'s (``train``'s) options before any stage runs."""
    import dataclasses

    from adabert.config import SearchConfig, TrainConfig

    known = {f.name for f in dataclasses.fields({"search": SearchConfig, "train": TrainConfig}[stage])}
    out: dict[str, Any] = {}
    for spec in specs:
        key, sep, text = spec.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in known:
            raise SystemExit(f"--{stage} {spec!r}: expected KEY=VALUE with KEY an 'adabert {stage}' option")
        value: Any = text
        for kind in (int, float):
            try:
                value = kind(text)
                break
            except ValueError:
                pass
        out[key] = {"true": True, "false": False}.get(text.lower(), value)
    return out


# ---------------------------------------------------------------------------------------------- running
def flags(settings: dict[str, Any]) -> list[str]:
    out = []
    for key, value in settings.items():
        if value is None:
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else f"--no-{key.replace('_', '-')}")
        elif isinstance(value, (list, tuple)):
            out += [flag, *map(str, value)]
        else:
            out += [flag, str(value)]
    return out


def resume_state(output: Path) -> Path:
    """Where an interrupted stage left the state that ``--resume`` continues from: a search's
    checkpoint in its folder, a training's in the sibling ``<folder>.resume/``."""
    from adabert.search.loop import CHECKPOINT
    from adabert.student.train import state_path

    return output / CHECKPOINT if (output / CHECKPOINT).is_file() else state_path(output)


def same_stage(recorded: list[str] | None, command: list[str]) -> bool:
    """Whether a recorded command is ``command``, wherever the benchmark's checkout was: the fixed
    genotypes are named by their path in it, and a run folder outlives a checkout."""

    def local(args: list[str]) -> list[str]:
        return [re.sub(r"^.*/benchmarks/genotypes/", "benchmarks/genotypes/", arg) for arg in args]

    return recorded is not None and local(recorded) == local(command)


class Runner:
    """Runs ``adabert`` commands in subprocesses, records each one's wall time and peak memory, and
    skips a command whose output folder already holds its ``done`` marker with the same command.
    A stage stopped part-way (a session's end) continues with ``--resume`` when the same command
    runs again, so a benchmark longer than one sitting loses at most an epoch."""

    def __init__(self, run_dir: Path, threads: int) -> None:
        self.run_dir, self.threads = run_dir, threads
        self.stages: dict[str, dict[str, Any]] = {}
        self.env = {
            **os.environ,
            "OMP_NUM_THREADS": str(threads),
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }

    def __call__(self, name: str, args: list[str], output: Path) -> dict[str, Any]:
        command = [sys.executable, "-m", "adabert.cli", "--log-level", "WARNING", *args]
        marker = output / ".benchmark_done.json"
        if marker.is_file():
            done = json.loads(marker.read_text())
            if same_stage(done.get("command"), command[3:]):
                self.stages[name] = {**done, "reused": True}
                return done
        log_path = self.run_dir / "logs" / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        started_marker = log_path.with_suffix(".started.json")
        resume = (
            started_marker.is_file()
            and same_stage(json.loads(started_marker.read_text()).get("command"), command[3:])
            and output.is_dir()  # a folder deleted by hand is a stage to redo, whatever state is beside it
            and resume_state(output).is_file()
        )
        if output.exists() and output.name not in ("store",) and not resume:
            shutil.rmtree(output)
        started_marker.write_text(json.dumps({"command": command[3:]}))
        shown = " ".join(command[3:]) + " (resumed)" * resume
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {shown}", flush=True)
        started = time.perf_counter()
        with open(log_path, "a" if resume else "w") as log:
            argv = command + ["--resume"] * resume
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env)
            _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        if status != 0:
            raise SystemExit(f"{name} failed (exit status {status >> 8}); see {log_path}")
        record = {
            "command": command[3:],
            "seconds": round(seconds, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024),
            "threads": self.threads,
            **({"resumed": True} if resume else {}),
        }
        marker.write_text(json.dumps(record))
        self.stages[name] = record
        return record


def main_metric(path: Path) -> tuple[float, dict[str, float]]:
    metrics = json.loads((path / "metrics.json").read_text())
    dev = metrics["dev"]
    return dev[next(iter(dev))], dev


# ---------------------------------------------------------------------------------------------- stages
def task_flags(task: str, data_dir: str, run_dir: Path) -> list[str]:
    """The data flags of a task: a GLUE task by name, or the word-order diagnostic's files (written
    from SST-2 into the run directory by ``order_task.py``)."""
    if task != ORDER:
        return ["--task", task, "--data-dir", data_dir]
    from order_task import build

    files = build(data_dir, run_dir / "data")
    return ["--task", ORDER, "--train-file", str(files["train"]), "--dev-file", str(files["dev"]),
            "--text-columns", "sentence", "--label-column", "label"]  # fmt: skip


def teacher_and_store(run: Runner, task: str, data_dir: str, setting: dict[str, Any], model: str) -> Path:
    teacher, store = run.run_dir / "teacher", run.run_dir / "store"
    run(
        "teacher",
        [
            "teacher",
            "finetune",
            *task_flags(task, data_dir, run.run_dir),
            "--model",
            model,
            "--output-dir",
            str(teacher),
            *flags(setting["teacher"]),
        ],
        teacher,
    )
    run(
        "store",
        ["teacher", "probe", "--teacher", str(teacher), "--output-dir", str(store), *flags(setting["probe"])],
        store,
    )
    return store


def train(
    run: Runner,
    name: str,
    genotype: Path,
    store: Path,
    setting: dict[str, Any],
    seed: int,
    extra: dict[str, Any] | None = None,
    supernet: Path | None = None,
) -> Path:
    out = run.run_dir / "students" / name
    args = [
        "train",
        "--genotype",
        str(genotype),
        "--store",
        str(store),
        "--output-dir",
        str(out),
        "--seed",
        str(seed),
        *flags({**setting["train"], **(extra or {})}),
    ]
    if supernet is not None:
        args += ["--supernet", str(supernet)]
    run(f"train_{name}", args, out)
    return out


def search(
    run: Runner,
    store: Path,
    setting: dict[str, Any],
    seed: int,
    extra: dict | None = None,
    name: str | None = None,
) -> Path:
    out = run.run_dir / "searches" / (name or f"seed{seed}")
    run(
        f"search_{out.name}",
        [
            "search",
            "--store",
            str(store),
            "--output-dir",
            str(out),
            "--seed",
            str(seed),
            *flags({**setting["search"], **(extra or {})}),
        ],
        out,
    )
    return out


def teacher_parameters(teacher: Path) -> int:
    from adabert.report.evaluate import load_classifier

    return sum(p.numel() for p in load_classifier(teacher).parameters())


def parametric_ops(genotype: Any) -> int:
    from adabert.search.ranking import parametric_ops as weighted

    ops = weighted(genotype.space)
    return sum(1 for e in genotype.edges if e.op in ops)


def latency_run(students: dict[str, Path], teacher: Path, setting: dict[str, Any], pair: bool) -> dict:
    """Every student and the teacher in one interleaved run: median milliseconds and speedups."""
    import torch

    from adabert.report.evaluate import compare_latency, load_classifier

    lat = setting["latency"]
    models = {"teacher": load_classifier(teacher), **{n: load_classifier(p) for n, p in students.items()}}
    result = compare_latency(
        models, lat["batches"], lat["seq_len"], lat["repeats"], lat["warmup"], lat["threads"], pair=pair
    )
    torch.set_num_threads(lat["threads"])
    return {
        name: {
            b: {"median_ms": v["median_ms"], "speedup_vs_teacher": v.get("speedup_vs_teacher", 1.0)}
            for b, v in by_batch.items()
        }
        for name, by_batch in result.items()
    }


def pareto_plot(path: Path, task: str, points: dict[str, tuple[float, float]], peers: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from adabert.io import atomic_save

    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = {
        "searched": ("tab:red", "o"),
        "bag": ("tab:gray", "s"),
        "conv": ("tab:blue", "^"),
        "random": ("tab:green", "x"),
        "teacher": ("black", "*"),
    }
    for name, (ms, metric) in points.items():
        kind = next((k for k in styles if name.startswith(k)), "random")
        color, marker = styles[kind]
        ax.scatter(ms, metric, c=color, marker=marker, s=60 if kind == "teacher" else 35)
        ax.annotate(name, (ms, metric), fontsize=6, xytext=(3, 3), textcoords="offset points")
    for name, peer in peers.items():
        ax.scatter(peer["latency_b1_ms"], peer["metric"], c="tab:purple", marker="D", s=35)
        ax.annotate(
            name,
            (peer["latency_b1_ms"], peer["metric"]),
            fontsize=6,
            xytext=(3, 3),
            textcoords="offset points",
        )
    ax.set_xscale("log")
    ax.set_xlabel("batch-1 latency, ms (log)")
    ax.set_ylabel("dev metric")
    ax.set_title(f"{task}: dev metric vs batch-1 latency")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_save(path, lambda p: fig.savefig(p, format="png", dpi=120))
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- main
def run_benchmark(args: argparse.Namespace) -> None:
    from peers import load_or_run

    from adabert.genotype import Genotype
    from adabert.io import atomic_write_json
    from adabert.search.baselines import random_at_budget
    from adabert.search.latency import LatencyTable
    from adabert.teacher.store import KnowledgeStore
    from search_spaces import get_space

    started = time.perf_counter()
    run_dir = Path(args.run_dir or f"runs/bench/{results_name(args.task, args)}")  # a tag: its own stages
    if args.fresh and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    train_rows, pair = task_size(args.task, args.data_dir, run_dir)
    setting = setting_for(args.task, train_rows, pair, "quick" if args.reuse else args.setting)
    setting["search"].update(parse_overrides(args.search))
    setting["train"].update(parse_overrides(args.train, "train"))  # every variant's student alike
    if args.student_examples:  # a shorter student recipe for every variant alike, recorded in the setting
        setting["train"] = {k: v for k, v in setting["train"].items() if k != "epochs"}
        setting["train"]["examples"] = args.student_examples
    run = Runner(run_dir, args.threads)
    if args.reuse:  # the teacher and store of a quick pipeline run
        store_dir = Path(args.reuse) / "store"
        setting["reused_run"] = str(args.reuse)
    else:
        store_dir = teacher_and_store(run, args.task, args.data_dir, setting, args.teacher_model)
    store = KnowledgeStore.open(store_dir)
    task = store.task
    teacher_metric = store.manifest["teacher_metrics"][store.dev_split][task.main_metric]

    students: dict[str, Path] = {}
    searched_genotypes: dict[int, Genotype] = {}
    for seed in args.seeds:
        out = search(run, store_dir, setting, seed)
        searched_genotypes[seed] = Genotype.load(out / "genotype.json")
        supernet = out if setting["init"] == "supernet" else None
        students[f"searched_s{seed}"] = train(
            run, f"searched_s{seed}", out / "genotype.json", store_dir, setting, seed, supernet=supernet
        )
    first_search = run_dir / "searches" / f"seed{args.seeds[0]}"
    init = first_search if setting["init"] == "supernet" else None
    for name, file in (("bag", "bag_of_embeddings.json"), ("conv", "conv_cell.json")):
        for seed in args.baseline_seeds:
            students[f"{name}_s{seed}"] = train(
                run, f"{name}_s{seed}", GENOTYPES / file, store_dir, setting, seed, supernet=init
            )
    # random genotypes at the searched genotypes' predicted latency, from the searches' own table
    space = get_space(searched_genotypes[args.seeds[0]].space)
    selection = json.loads((first_search / "selection.json").read_text())
    table = LatencyTable.load(first_search / "latency_table.json")
    rnd = setting["random"]
    budget = statistics.mean(table.predict(g, rnd["batch"]) for g in searched_genotypes.values())
    randoms = random_at_budget(
        space,
        table,
        budget,
        rnd["batch"],
        rnd["count"],
        seed=1234,
        hidden_size=searched_genotypes[args.seeds[0]].hidden_size,
        tolerance=rnd["tolerance"],
    )
    for i, genotype in enumerate(randoms):
        path = run_dir / "random" / f"random{i}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        genotype.save(path)
        students[f"random{i}"] = train(
            run, f"random{i}", path, store_dir, setting, args.seeds[0], supernet=init
        )
    blind = {}
    if args.task == ORDER:  # the order-blind reference: identity cell, mean head, no position table
        for seed in args.baseline_seeds:
            blind[seed] = train(
                run, f"order_blind_s{seed}", GENOTYPES / "identity_cell.json", store_dir, setting, seed,
                {"head": "paper", "positions": "none"},
            )  # fmt: skip
    ranking = ranking_check(run, store_dir, setting, first_search, args) if args.ranking else None

    peers = load_or_run(task if args.task == ORDER else task.name, args.data_dir)
    if setting.get("budget") == "full":  # fastText on the very rows (and teacher labels) the students see
        from peers import fasttext_on_store

        extra = fasttext_on_store(store, setting["train"]["augment_copies"])
        metric_of = {**peers["peers"], "fasttext_teacher_rows": extra["dev"][task.main_metric]}
        peers = {**peers, "peers": metric_of, "details": {**peers["details"], "fasttext_teacher_rows": extra}}
    print(f"[{time.strftime('%H:%M:%S')}] latency run: {len(students)} students and the teacher", flush=True)
    t = time.perf_counter()
    latency = latency_run(students, store_dir.parent / "teacher", setting, task.is_pair)
    latency_seconds = time.perf_counter() - t
    metric = {name: main_metric(path)[0] for name, path in students.items()}
    dev = {name: main_metric(path)[1] for name, path in students.items()}
    searched = [f"searched_s{s}" for s in args.seeds]

    def values(prefix: str) -> list[float]:
        return [metric[n] for n in students if n.startswith(prefix)]

    device = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (CPU)"
    common = {
        "task": task.name,
        "setting": {
            **setting,
            "seeds": args.seeds,
            "baseline_seeds": args.baseline_seeds,
            "train_rows": train_rows,
            "teacher_model": args.teacher_model,
            "device": device,
            "threads": args.threads,
        },
        "teacher": teacher_metric,
        "peers": peers["peers"],
    }
    reused = sum(stage["seconds"] for stage in run.stages.values() if stage.get("reused"))
    evidence = {
        s: json.loads((run_dir / "searches" / f"seed{s}" / "selection.json").read_text()) for s in args.seeds
    }
    search_result = {
        **common,
        "searched": [metric[n] for n in searched],
        "bag_of_embeddings": values("bag_"),
        "conv_baseline": values("conv_"),
        "random_same_budget": values("random"),
        "searched_speedup_vs_teacher_b1": [latency[n]["1"]["speedup_vs_teacher"] for n in searched],
        "searched_speedup_vs_teacher_b32": [latency[n]["32"]["speedup_vs_teacher"] for n in searched],
        "searched_accuracy": [dev[n].get("accuracy") for n in searched],
        "searched_parametric_ops": [parametric_ops(searched_genotypes[s]) for s in args.seeds],
        "searched_parameters": [
            json.loads((students[n] / "metrics.json").read_text())["parameters"] for n in searched
        ],
        "teacher_parameters": teacher_parameters(store_dir.parent / "teacher"),
        "supernet_heldout": [heldout_entry(evidence[s].get("supernet", {})) for s in args.seeds],
        "warmup_epochs_used": [evidence[s].get("supernet", {}).get("warmup_epochs_used") for s in args.seeds],
        "blind_search": [bool(evidence[s].get("supernet", {}).get("blind")) for s in args.seeds],
        "searched_minus_conv_bootstrap": paired_bootstrap(
            store, [students[n] for n in searched], [students[f"conv_s{s}"] for s in args.baseline_seeds]
        ),
        "genotypes": {
            **{f"searched_s{s}": g.to_dict() for s, g in searched_genotypes.items()},
            **{f"random{i}": g.to_dict() for i, g in enumerate(randoms)},
        },
        "random_budget_ms": {
            "batch": rnd["batch"],
            "target": budget,
            "predicted": [table.predict(g, rnd["batch"]) for g in randoms],
        },
        "selection": selection.get("selection"),
        "dev": dev,
        "latency": latency,
        "latency_seconds": round(latency_seconds, 1),
        "stages": run.stages,
        # stages reused from an earlier invocation count at the wall time they took then
        "wall_seconds": round(time.perf_counter() - started + reused, 1),
        "reused_stage_seconds": round(reused, 1),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "peak_rss_mb_benchmark": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    if ranking is not None:
        search_result["ranking"] = ranking
    if args.remedies is not None:
        search_result["remedies"] = remedy_ablation(run, store_dir, setting, args)
    if blind:
        search_result["order_blind_reference"] = [main_metric(path)[1]["accuracy"] for path in blind.values()]
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = results_name(task.name, args)
    atomic_write_json(RESULTS / f"search_quality_{name}.json", search_result)
    points = {n: (latency[n]["1"]["median_ms"], metric[n]) for n in students}
    points["teacher"] = (latency["teacher"]["1"]["median_ms"], teacher_metric)
    peer_points = {
        n: {"latency_b1_ms": d["latency_b1_ms"], "metric": peers["peers"][n]}
        for n, d in peers["details"].items()
    }
    pareto_plot(RESULTS / f"search_quality_{name}.png", name, points, peer_points)

    student = [metric[n] for n in searched]
    student_result = {
        **common,
        "student": student,
        "retention": statistics.mean(student) / teacher_metric,
        "speedup_vs_teacher_b1": search_result["searched_speedup_vs_teacher_b1"],
        "speedup_vs_teacher_b32": search_result["searched_speedup_vs_teacher_b32"],
        "accuracy": search_result["searched_accuracy"],
        "ablations": {},
        "stages": run.stages,
        "wall_seconds": search_result["wall_seconds"],
    }
    path = RESULTS / f"student_quality_{name}.json"
    if path.exists():  # keep ablations measured by an earlier --ablations run of the same setting
        old = json.loads(path.read_text())
        if old.get("setting", {}).get("teacher") == setting["teacher"]:
            student_result["ablations"] = old.get("ablations", {})
    if args.ablations:
        student_result["ablations"] = ablations(run, task, store_dir, setting, args, searched_genotypes)
    atomic_write_json(path, student_result)
    print(
        json.dumps(
            {
                k: search_result.get(k)
                for k in (
                    "teacher",
                    "searched",
                    "bag_of_embeddings",
                    "conv_baseline",
                    "random_same_budget",
                    "searched_speedup_vs_teacher_b1",
                    "searched_speedup_vs_teacher_b32",
                    "searched_parametric_ops",
                    "supernet_heldout",
                    "warmup_epochs_used",
                    "ranking",
                    "order_blind_reference",
                    "searched_minus_conv_bootstrap",
                    "peers",
                    "wall_seconds",
                )
            },
            indent=1,
        )
    )


def results_name(task_name: str, args: argparse.Namespace) -> str:
    """The results files' ``TASK[_SETTING][_TAG]``: the benchmark setting's own files keep their names."""
    setting = [args.setting] if getattr(args, "setting", "benchmark") != "benchmark" else []
    return "_".join([task_name, *setting, *([args.tag] if getattr(args, "tag", None) else [])])


def task_size(task: str, data_dir: str, run_dir: Path) -> tuple[int, bool]:
    """Training rows and whether the task is a sentence pair."""
    from adabert.tasks import get_task, load_split

    if task == ORDER:
        from order_task import build

        train = build(data_dir, run_dir / "data")["train"]
        return sum(1 for _ in open(train, encoding="utf-8")) - 1, False
    spec = get_task(task)
    return len(load_split(spec, "train", data_dir)), spec.is_pair


def heldout_entry(supernet: dict[str, Any]) -> dict[str, Any]:
    """A search's supernet evidence, in the benchmark's keys."""
    keys = ("trivial_loss", "warmup_loss", "search_losses", "warmup_accuracy", "majority_accuracy")
    return {k: supernet[k] for k in keys if k in supernet}


def dev_predictions(student: Path, store: Any) -> tuple[Any, Any]:
    """The student's predicted labels (or scores) on the store's dev rows, and the gold labels."""
    from adabert import data
    from adabert.report.evaluate import load_classifier
    from adabert.student.train import predict_logits
    from adabert.tasks import predictions_from_logits

    rows = data.load_split(store, store.dev_split)
    loader = data.loader(rows, 128, False, pad_token_id=rows.pad_token_id)
    logits, labels = predict_logits(load_classifier(student), loader)
    return predictions_from_logits(store.task, logits), labels


def paired_bootstrap(store: Any, a: list[Path], b: list[Path], draws: int = 2000, seed: int = 0) -> dict:
    """Mean main metric of students ``a`` minus that of students ``b``, with a 95% interval from a paired
    bootstrap over the dev rows (every student scored on the same resampled rows)."""
    import numpy as np

    from adabert.tasks import compute_metrics

    task = store.task
    labels = dev_predictions(a[0], store)[1]  # the same dev rows, in the same order, for every student
    preds_a = [dev_predictions(p, store)[0] for p in a]
    preds_b = [dev_predictions(p, store)[0] for p in b]

    def diff(rows: Any) -> float:
        def mean(preds: list[Any]) -> float:
            scores = [compute_metrics(task, p[rows], labels[rows])[task.main_metric] for p in preds]
            return float(np.mean(scores))

        return mean(preds_a) - mean(preds_b)

    rng = np.random.default_rng(seed)
    samples = [diff(rng.integers(0, len(labels), len(labels))) for _ in range(draws)]
    return {
        "difference": diff(np.arange(len(labels))),
        "low": float(np.percentile(samples, 2.5)),
        "high": float(np.percentile(samples, 97.5)),
        "draws": draws,
        "metric": task.main_metric,
    }


def ranking_check(run: Runner, store: Path, setting: dict[str, Any], search_dir: Path, args: Any) -> dict:
    """Kendall's tau between the seed-0 supernet's held-out score of ``--ranking`` cells drawn from the
    space and their dev metric when trained alone, as every student of the table trains: the same
    recipe and the same start. A shorter recipe from scratch is no proxy here: it ranks pooling cells,
    which converge in a few thousand steps, above convolutions, which overtake them with the full
    recipe (SST-2: 0.81 against 0.67-0.74 at a quarter of the recipe, 0.81 against 0.83-0.85 at all)."""
    from adabert.genotype import Genotype
    from adabert.search.ranking import ranking_cells, ranking_record, supernet_scores

    searched = Genotype.load(search_dir / "genotype.json")
    cells = ranking_cells(searched.space, args.ranking, 500, searched.hidden_size, searched.embedding)
    inside = supernet_scores(search_dir, cells)
    init = search_dir if setting["init"] == "supernet" else None
    alone = []
    for i, cell in enumerate(cells):
        digest = hashlib.sha256(json.dumps(cell.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
        path = run.run_dir / "ranking" / f"cell{i}_{digest}.json"  # a new draw is a new stage
        path.parent.mkdir(parents=True, exist_ok=True)
        cell.save(path)
        out = train(run, f"ranking_cell{i}", path, store, setting, args.seeds[0], supernet=init)
        alone.append(main_metric(out)[0])
    return {**ranking_record(cells, inside, alone), "train": setting["train"], "init": setting["init"]}


def remedies() -> dict[str, dict[str, dict[str, Any]]]:
    """What makes the supernet learn, each undone (or added) against the defaults, by name: the search
    settings, and the student's where the variant changes its rows too. ``default`` comes first."""
    from adabert.config import SearchConfig

    d = SearchConfig()
    flipped = {
        "shared_head": not d.shared_head,
        "superkernel": not d.superkernel,
        "cell_norm": not d.cell_norm,
        "kd_target": "probes" if d.kd_target != "probes" else "both",
        "train_embeddings": not d.train_embeddings,
        "sandwich": 0 if d.sandwich else 4,
        "weight_phase": "fixed" if d.weight_phase == "learned" else "learned",
        "judge_average": 0.0 if d.judge_average else 0.5,
        "arch_gradient": "reinforce" if d.arch_gradient == "gumbel" else "gumbel",
    }
    out = {"default": {"search": {}}, **{f"{k}={v}": {"search": {k: v}} for k, v in flipped.items()}}
    # the split before the weight steps got three quarters of the non-judge rows, on 4,000 rows
    out["rows=4000,arch_fraction=0.5"] = {"search": {"train_limit": 4000, "arch_fraction": 0.5}}
    # small tasks topped up with teacher-labelled copies: search and student on the original rows only
    out["augment_copies=0"] = {"search": {"augment_copies": 0}, "train": {"augment_copies": 0}}
    return out


def remedy_ablation(run: Runner, store: Path, setting: dict[str, Any], args: Any) -> dict[str, Any]:
    """Each remedy (``--remedies``: all, or the named ones) against the defaults, searched with the
    first seed: the supernet's held-out evidence, the search's wall time and the student's metric."""
    seed = args.seeds[0]
    chosen = remedies()
    unknown = [n for n in args.remedies if not any(k.split("=")[0] == n for k in chosen)]
    if unknown:
        raise SystemExit(f"--remedies: unknown {unknown}; choose from {[k.split('=')[0] for k in chosen]}")
    out: dict[str, Any] = {}
    for name, extra in chosen.items():
        if name != "default" and args.remedies and name.split("=")[0] not in args.remedies:
            continue
        if extra.get("train", {}).get("augment_copies") == 0 and not has_augmented(store):
            continue  # the store holds no copies to take away
        label = f"remedy_{name.replace('=', '_').replace(',', '_')}_s{seed}"
        folder = search(run, store, setting, seed, extra["search"], label if extra["search"] else None)
        student = run.run_dir / "students" / f"searched_s{seed}"
        if extra["search"]:
            init = folder if setting["init"] == "supernet" else None
            student = train(
                run, label, folder / "genotype.json", store, setting, seed, extra.get("train"), supernet=init
            )
        supernet = json.loads((folder / "selection.json").read_text()).get("supernet", {})
        out[name] = {
            "settings": extra,
            "supernet_heldout": heldout_entry(supernet),
            "warmup_epochs_used": supernet.get("warmup_epochs_used"),
            "search_seconds": run.stages[f"search_{folder.name}"]["seconds"],
            "student": main_metric(student)[0],
        }
    return out


def has_augmented(store: Path) -> bool:
    return (store / "train_aug.labels.npy").exists()


def ablations(
    run: Runner,
    task: Any,
    store: Path,
    setting: dict[str, Any],
    args: argparse.Namespace,
    genotypes: dict[int, Any],
) -> dict[str, list[float]]:
    """The student recipe with one thing changed at a time, on the searched genotype of each seed.

    Every ablation trains from scratch (searched weights fix the head and the token table, so they
    cannot start a student with another one); ``reference_copies_N`` is the default recipe from
    scratch (N augmented copies per row), the row each change is read against. Copy counts the store
    does not hold are left out."""
    from adabert.teacher.store import AUGMENTED, KnowledgeStore

    held = KnowledgeStore.open(store).manifest["splits"].get(AUGMENTED, {}).get("factor", 0)
    default_copies = setting["train"].get("augment_copies")
    default_copies = held if default_copies is None else min(default_copies, held)
    changes: dict[str, dict[str, Any]] = {
        f"reference_copies_{default_copies}": {},
        "input_embeddings": {"embeddings": "input"},
        "probe_kd_on": {"probe_kd": 1.0},
    }
    for copies in (0, 4, 20):
        if copies <= held and copies != default_copies:
            changes[f"copies_{copies}"] = {"augment_copies": copies}
    if task.is_pair:
        changes["pair_head"] = {"head": "pair"}  # no token alignment
        changes["paper_head"] = {"head": "paper"}
    out: dict[str, list[float]] = {}
    for name, extra in changes.items():
        out[name] = []
        for seed in args.seeds:
            genotype = run.run_dir / "searches" / f"seed{seed}" / "genotype.json"
            path = train(run, f"ablation_{name}_s{seed}", genotype, store, setting, seed, extra)
            out[name].append(main_metric(path)[0])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("task")
    parser.add_argument("--data-dir", default="../shared/data/glue")
    parser.add_argument(
        "--run-dir",
        help="where every stage writes (default: runs/bench/TASK, or TASK_full, TASK_TAG): every "
        "student starts from its run's first supernet, so a changed setting needs a folder of its own",
    )
    parser.add_argument(
        "--teacher-model", default="default", help="checkpoint the teacher is fine-tuned from"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--baseline-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the training stages")
    parser.add_argument("--ablations", action="store_true", help="also the student-side ablations")
    parser.add_argument(
        "--student-examples", type=int, metavar="N",
        help="train every student on about N examples instead of the setting's recipe",
    )  # fmt: skip
    parser.add_argument(
        "--remedies", nargs="*", metavar="NAME",
        help="also the supernet remedies, one undone at a time against the defaults (seed 0): all, or "
        "the NAMEs (shared_head superkernel cell_norm kd_target train_embeddings sandwich weight_phase "
        "judge_average arch_gradient rows augment_copies: the search and student without the store's "
        "augmented rows)",
    )  # fmt: skip
    parser.add_argument(
        "--ranking", type=int, default=8, metavar="N",
        help="ranking fidelity: N cells drawn from the space, scored inside the seed-0 supernet and "
        "trained alone; Kendall's tau between the two (0 = skip)",
    )  # fmt: skip
    parser.add_argument(
        "--setting", choices=("benchmark", "full"), default="benchmark",
        help="benchmark: the teacher on at most 20k rows, small tasks topped up to about 20k rows; full: "
        "the teacher on every train row (2 epochs, the last kept), the store topped up to 200k rows, "
        "students for 2 passes over them (results: search_quality_TASK_full.json)",
    )  # fmt: skip
    parser.add_argument(
        "--search", action="append", default=[], metavar="KEY=VALUE",
        help="a search setting changed for every seed (repeatable), e.g. arch_gradient=reinforce; "
        "needs --tag, so the default's results stay",
    )  # fmt: skip
    parser.add_argument(
        "--train", action="append", default=[], metavar="KEY=VALUE",
        help="a student setting changed for every variant (repeatable), e.g. probe_kd=1.0; needs --tag",
    )  # fmt: skip
    parser.add_argument("--tag", help="suffix of the results files: search_quality_TASK_TAG.json")
    parser.add_argument("--fresh", action="store_true", help="delete the run directory first")
    parser.add_argument(
        "--reuse",
        metavar="RUN_DIR",
        help="the teacher and store of an 'adabert pipeline' run with the quick budget; search and "
        "students then use that budget's settings",
    )
    args = parser.parse_args()
    if (args.search or args.train) and not args.tag:
        parser.error("--search and --train need --tag: the results of changed settings go to their own files")
    if args.reuse and args.setting != "benchmark":
        parser.error("--reuse takes the quick budget's teacher and store: it cannot go with --setting")
    if args.tag is not None and not args.tag.replace("_", "").isalnum():
        parser.error(f"--tag {args.tag!r}: letters, digits and underscores only")
    parse_overrides(args.search)  # a mistyped key stops here, before any stage
    parse_overrides(args.train, "train")
    run_benchmark(args)


if __name__ == "__main__":
    main()
