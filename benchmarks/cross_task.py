"""Is a searched cell specific to its task? Cells searched on each task, trained from scratch on every
task, beside random cells of the same budget.

    python benchmarks/cross_task.py --run sst2=runs/bench/sst2 --run mrpc=runs/bench/mrpc \\
        --run order=runs/bench/order [--seeds 0 1 2] [--threads 1] [--work-dir runs/bench/cross]

Each ``--run TASK=DIR`` is a finished ``search_quality.py TASK`` run: its ``searches/seed<s>/`` hold
the cells searched on TASK, ``random/`` its random cells at the searched cells' latency, and
``results/search_quality_TASK.json`` its setting. For every pair (cells from A, trained on B) and seed
``s``, the cell of seed ``s`` is trained from scratch on B's store with B's student recipe and
training seed ``s`` (own cells too: the searched students of ``search_quality.py`` start from their
supernet, which another task's cell cannot). B's random cells, from scratch, are the control row.

The cell of A *wins* on A when it beats each other task's cell on A by more than the standard error of
the per-seed difference, and the random cells' mean. Writes ``results/cross_task.json``:
``{"tasks", "cells_from", "metric": {"A->B": [per seed]}, "random": {"B": [...]}, "wins": {...}}``;
``quality_table.py`` renders it into RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))

from search_quality import Runner, main_metric, train  # noqa: E402


def parse_runs(specs: list[str]) -> dict[str, Path]:
    runs: dict[str, Path] = {}
    for spec in specs:
        task, sep, folder = spec.partition("=")
        if not sep or not task or not folder:
            raise SystemExit(f"--run {spec!r}: expected TASK=RUN_DIR")
        if not (Path(folder) / "searches").is_dir():
            raise SystemExit(f"--run {spec!r}: {folder} holds no searches/ (run search_quality.py first)")
        runs[task] = Path(folder)
    if len(runs) < 2:
        raise SystemExit("--run: at least two tasks")
    return runs


def task_setting(task: str, run_dir: Path) -> tuple[Path, dict[str, Any]]:
    """The store and the benchmark setting of a ``search_quality.py`` run."""
    result = RESULTS / f"search_quality_{task}.json"
    if not result.is_file():
        raise SystemExit(f"{result}: missing; run search_quality.py {task} first")
    setting = json.loads(result.read_text())["setting"]
    config = json.loads((run_dir / "searches" / f"seed{setting['seeds'][0]}" / "config.json").read_text())
    return Path(config["store"]), setting


def wins(metric: dict[str, list[float]], random: dict[str, list[float]], tasks: list[str]) -> dict:
    """Per task: does its own cell beat every other task's cell on it by more than the standard error
    of the per-seed difference, and the random cells' mean?"""
    out = {}
    for on in tasks:
        own = metric[f"{on}->{on}"]
        margins = {}
        for other in tasks:
            if other == on:
                continue
            diff = [a - b for a, b in zip(own, metric[f"{other}->{on}"])]
            se = statistics.stdev(diff) / math.sqrt(len(diff)) if len(diff) > 1 else float("inf")
            margins[other] = {"difference": statistics.fmean(diff), "standard_error": se}
        beats_random = statistics.fmean(own) > statistics.fmean(random[on])
        out[on] = {
            "margins": margins,
            "beats_random": beats_random,
            "wins": beats_random and all(m["difference"] > m["standard_error"] for m in margins.values()),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", action="append", default=[], metavar="TASK=RUN_DIR", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each training")
    parser.add_argument("--work-dir", default="runs/bench/cross", help="where the students are written")
    args = parser.parse_args()
    runs = parse_runs(args.run)
    tasks = list(runs)
    settings = {t: task_setting(t, runs[t]) for t in tasks}
    run = Runner(Path(args.work_dir), args.threads)
    started = time.perf_counter()
    metric: dict[str, list[float]] = {}
    for source in tasks:
        for on in tasks:
            store, setting = settings[on]
            cells = [runs[source] / "searches" / f"seed{s}" / "genotype.json" for s in args.seeds]
            metric[f"{source}->{on}"] = [
                main_metric(train(run, f"{source}_on_{on}_s{s}", cell, store, setting, s))[0]
                for s, cell in zip(args.seeds, cells)
            ]
    random: dict[str, list[float]] = {}
    for on in tasks:
        store, setting = settings[on]
        cells = sorted((runs[on] / "random").glob("random*.json"))
        random[on] = [
            main_metric(train(run, f"random_on_{on}_{c.stem}", c, store, setting, 0))[0] for c in cells
        ]
    from adabert.io import atomic_write_json

    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        RESULTS / "cross_task.json",
        {
            "tasks": tasks,
            "cells_from": tasks,
            "metric": metric,
            "random": random,
            "wins": wins(metric, random, tasks),
            "seeds": args.seeds,
            "settings": {t: settings[t][1]["train"] for t in tasks},
            "stages": run.stages,
            "wall_seconds": round(time.perf_counter() - started, 1),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        },
    )
    print(json.dumps(wins(metric, random, tasks), indent=1))


if __name__ == "__main__":
    main()
