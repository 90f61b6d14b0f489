"""Collect evaluation reports into the per-task results table of benchmarks/RESULTS.md.

Reads ``<run>/eval/report.json`` (written by ``adabert evaluate``; student, teacher and BERT-base
measured in one run) for every run directory given and prints a Markdown table:

    python benchmarks/collect.py runs/sst2 runs/mrpc [--report eval/report.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def row(run: Path, report_name: str) -> list[str]:
    report = json.loads((run / report_name).read_text())
    metrics, size, latency = report["metrics"], report["size"], report.get("latency", {})
    main = next(iter(metrics["teacher"]))  # the task's main metric comes first
    teacher, student = metrics["teacher"][main], metrics["model"][main]

    def speedup(batch: str, reference: str) -> str:
        value = latency.get("model", {}).get(batch, {}).get(f"speedup_vs_{reference}")
        return f"{value:.1f}x" if value else "-"

    loyalty = metrics["model"].get("label_loyalty")
    prob = metrics["model"].get("probability_loyalty")
    return [
        f"{run.name} ({report['task']})" if run.name != report["task"] else run.name,
        f"{main} {teacher:.4f}",
        f"{student:.4f}",
        f"{student / teacher:.1%}",
        f"{loyalty:.3f} / {prob:.3f}" if loyalty is not None else "-",
        f"{size['model']['total'] / 1e6:.2f}M ({size['model']['non_embedding'] / 1e6:.2f}M)",
        f"{size['teacher']['total'] / 1e6:.1f}M",
        f"{size['teacher']['total'] / size['model']['total']:.1f}x",
        speedup("1", "teacher"),
        speedup("32", "teacher"),
        speedup("1", "bert-base"),
        speedup("32", "bert-base"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (runs/<task>)")
    parser.add_argument("--report", default="eval/report.json", help="report path inside each run")
    args = parser.parse_args()
    header = [
        "run",
        "teacher (dev)",
        "student (dev)",
        "retention",
        "loyalty label / prob",
        "student params (non-emb.)",
        "teacher params",
        "smaller vs teacher",
        "speedup vs teacher b1",
        "b32",
        "speedup vs BERT-base b1",
        "b32",
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for run in args.runs:
        print("| " + " | ".join(row(run, args.report)) + " |")


if __name__ == "__main__":
    main()
