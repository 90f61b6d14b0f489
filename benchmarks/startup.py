"""Start-up time of the ``adabert`` command: wall and CPU seconds of ``--help``, and what it imports.

Each command runs ``--repeats`` times in a fresh interpreter (``python -m adabert.cli``, what the
``adabert`` console script runs). With ``--before DIR`` (a checkout of another version) the two
trees run alternately, so machine load falls on both alike. The ``-X importtime`` entries with the
largest cumulative time are listed, and whether torch, transformers, datasets, matplotlib,
onnxruntime or scipy were imported at all.

    python benchmarks/startup.py --repeats 5 --before /tmp/adabert-before
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = (["--help"], ["pipeline", "--help"])
HEAVY = ("torch", "transformers", "datasets", "matplotlib", "onnxruntime", "scipy")


def run(tree: Path, args: list[str]) -> tuple[float, float]:
    """(wall, CPU) seconds of one ``python -m adabert.cli ARGS`` run from ``tree``."""
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "adabert.cli", *args], cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def importtime(tree: Path, top: int) -> tuple[list[tuple[int, str]], list[str]]:
    """The ``top`` largest cumulative import times (microseconds, module) and the heavy modules loaded."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import adabert.cli"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    rows = []
    for line in done.stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)", line)
        if match:
            rows.append((int(match.group(2)), match.group(4)))
    loaded = {name.split(".")[0] for _, name in rows}
    return sorted(rows, reverse=True)[:top], [m for m in HEAVY if m in loaded]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--before", type=Path, help="another checkout to compare with (e.g. the previous version)"
    )
    parser.add_argument("--top", type=int, default=8, help="import-time entries to list")
    args = parser.parse_args()
    trees = {"this tree": ROOT, **({"before": args.before.resolve()} if args.before else {})}
    times: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for _ in range(args.repeats):
        for command in COMMANDS:
            for name, tree in trees.items():
                times.setdefault((name, " ".join(command)), []).append(run(tree, command))
    print("| tree | command | median wall s | median CPU s | runs |\n|---|---|---|---|---|")
    for (name, command), values in times.items():
        wall = statistics.median(v[0] for v in values)
        cpu = statistics.median(v[1] for v in values)
        print(f"| {name} | `adabert {command}` | {wall:.2f} | {cpu:.2f} | {len(values)} |")
    for name, tree in trees.items():
        rows, heavy = importtime(tree, args.top)
        print(
            f"\n{name}: `python -X importtime -c 'import adabert.cli'`, largest cumulative times "
            f"(heavy modules imported: {', '.join(heavy) or 'none'})\n"
        )
        print("| cumulative ms | module |\n|---|---|")
        for micros, module in rows:
            print(f"| {micros / 1000:.1f} | {module} |")


if __name__ == "__main__":
    main()
