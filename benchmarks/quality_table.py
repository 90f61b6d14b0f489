"""The search- and student-quality tables of RESULTS.md, generated from ``benchmarks/results/``.

    python benchmarks/quality_table.py            # print the tables
    python benchmarks/quality_table.py --write    # replace the generated block in RESULTS.md
    python benchmarks/quality_table.py --check    # exit 1 if RESULTS.md differs from the JSON

The block sits between ``<!-- quality:begin -->`` and ``<!-- quality:end -->``; tests run ``--check``,
so a figure in the table is always the one a benchmark wrote.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DOC = HERE / "RESULTS.md"
BEGIN, END = "<!-- quality:begin -->", "<!-- quality:end -->"


def _mean(values: list[float]) -> str:
    if not values:
        return "-"
    spread = f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):.4f}{spread} (n={len(values)})"


def _search_rows(result: dict[str, Any]) -> list[str]:
    rows = [
        "| variant | dev metric, mean ± sd (n) | per seed / draw |",
        "|---|---|---|",
    ]
    for name, key in (
        ("searched", "searched"),
        ("bag of embeddings", "bag_of_embeddings"),
        ("hand-made conv cell", "conv_baseline"),
        ("random, same budget", "random_same_budget"),
    ):
        values = result.get(key, [])
        rows.append(f"| {name} | {_mean(values)} | {', '.join(f'{v:.4f}' for v in values)} |")
    for name, value in result.get("peers", {}).items():
        rows.append(f"| peer: {name} | {value:.4f} | |")
    rows.append(f"| teacher | {result['teacher']:.4f} | |")
    b1 = ", ".join(f"{v:.1f}x" for v in result.get("searched_speedup_vs_teacher_b1", []))
    b32 = ", ".join(f"{v:.1f}x" for v in result.get("searched_speedup_vs_teacher_b32", []))
    ops = ", ".join(str(v) for v in result.get("searched_parametric_ops", []))
    acc = ", ".join(f"{v:.4f}" for v in result.get("searched_accuracy", []) if v is not None)
    setting = result.get("setting", {})
    rows += [
        "",
        f"Searched students: speedup over the teacher at batch 1: {b1}; at batch 32: {b32}; "
        f"parametric ops per genotype: {ops}; dev accuracy: {acc}.",
        f"Command `{result.get('command', '?')}`; device {setting.get('device', '?')}, "
        f"{setting.get('threads', '?')} thread(s) for training; seeds {setting.get('seeds')}, "
        f"baseline seeds {setting.get('baseline_seeds')}; "
        f"wall time {result.get('wall_seconds', 0) / 60:.0f} min{_reused(result)}.",
    ]
    return rows + _supernet_rows(result)


def _supernet_rows(result: dict[str, Any]) -> list[str]:
    """The supernet's held-out loss per seed: trivial predictor, end of the weight phase, each search
    epoch; the ranking fidelity, the bootstrap interval, the order-blind reference and the remedies."""
    heldout = result.get("supernet_heldout") or []
    if not heldout:
        return []
    rows = [
        "| seed | trivial loss | weight-phase epochs | end of weight phase: loss (accuracy / majority) "
        "| search epochs: loss | blind |",
        "|---|---|---|---|---|---|",
    ]
    used, blind = result.get("warmup_epochs_used", []), result.get("blind_search", [])
    for i, (seed, h) in enumerate(zip(result["setting"].get("seeds", []), heldout)):
        acc = ""
        if h.get("warmup_accuracy") is not None:
            acc = f" ({h['warmup_accuracy']:.4f} / {h['majority_accuracy']:.4f})"
        warm = f"{h['warmup_loss']:.4f}{acc}" if h.get("warmup_loss") is not None else "-"
        curve = ", ".join(f"{v:.4f}" for v in h.get("search_losses", []))
        rows.append(
            f"| {seed} | {h.get('trivial_loss', float('nan')):.4f} | {used[i] if i < len(used) else '-'} "
            f"| {warm} | {curve} | {'yes' if i < len(blind) and blind[i] else 'no'} |"
        )
    boot = result.get("searched_minus_conv_bootstrap")
    if boot:
        diff = boot["difference"]
        rows += ["", f"Searched minus hand-made conv cell, {boot['metric']} on dev: {diff:+.4f}, "
                 f"95% paired bootstrap interval over dev rows [{boot['low']:+.4f}, {boot['high']:+.4f}] "
                 f"({boot['draws']} draws)."]  # fmt: skip
    ranking = result.get("ranking")
    if ranking:
        rows += ["", f"Ranking fidelity: Kendall's tau {ranking['kendall_tau']:+.3f} between the seed-0 "
                 f"supernet's held-out loss and the dev metric trained alone, over {len(ranking['cells'])} "
                 f"cells drawn from the space (trained alone with {ranking.get('train')}"
                 + (", from the supernet's weights as every student here" if ranking.get("init") == "supernet"
                    else "") + ")."]  # fmt: skip
    blind_reference = result.get("order_blind_reference")
    if blind_reference:
        rows += ["", f"Order-blind reference (identity cell, mean head, no position table), dev accuracy "
                 f"per seed: {', '.join(f'{v:.4f}' for v in blind_reference)}."]  # fmt: skip
    remedies = result.get("remedies")
    if remedies:
        rows += ["", "| remedy (seed 0) | weight-phase epochs | end of weight phase | search losses "
                 "| search time | student |", "|---|---|---|---|---|---|"]  # fmt: skip
        for name, r in remedies.items():
            h = r["supernet_heldout"]
            warm = f"{h['warmup_loss']:.4f}" if h.get("warmup_loss") is not None else "-"
            curve = ", ".join(f"{v:.4f}" for v in h.get("search_losses", []))
            rows.append(f"| {name} | {r['warmup_epochs_used']} | {warm} | {curve} | "
                        f"{r['search_seconds'] / 60:.1f} min | {r['student']:.4f} |")  # fmt: skip
    return ["", "Supernet held-out loss (judge rows, mean over sampled paths):", "", *rows]


def _reused(result: dict[str, Any]) -> str:
    reused = result.get("reused_stage_seconds") or 0
    if not reused:
        return ""
    return f" ({reused / 60:.0f} min of it in stages reused from an earlier invocation, at their times then)"


def _stage_rows(result: dict[str, Any]) -> list[str]:
    rows = ["| stage | wall time | peak memory |", "|---|---|---|"]
    for name, stage in result.get("stages", {}).items():
        rows.append(f"| {name} | {stage['seconds'] / 60:.1f} min | {stage['peak_rss_mb']} MB |")
    return rows


def _student_rows(result: dict[str, Any]) -> list[str]:
    teacher = result["teacher"]
    rows = [
        f"Student (searched, per seed): {', '.join(f'{v:.4f}' for v in result['student'])}; "
        f"mean {statistics.mean(result['student']):.4f} = {100 * result['retention']:.1f}% of the "
        f"teacher's {teacher:.4f}.",
    ]
    ablations = result.get("ablations") or {}
    if ablations:
        rows += ["", "| ablation (one change to the student recipe) | dev metric per seed | mean |"]
        rows.append("|---|---|---|")
        for name, values in ablations.items():
            rows.append(f"| {name} | {', '.join(f'{v:.4f}' for v in values)} | {_mean(values)} |")
    return rows


def _cross_task_rows(cross: dict[str, Any]) -> list[str]:
    """Rows: the task a cell was searched on; columns: the task it was trained on (from scratch)."""
    tasks = cross["tasks"]
    seeds = ", ".join(map(str, cross.get("seeds", [])))
    rows = [f"| cells searched on \\ trained on | {' | '.join(tasks)} |", "|---" * (len(tasks) + 1) + "|"]
    for source in cross["cells_from"]:
        cells = [_mean(cross["metric"][f"{source}->{on}"]) for on in tasks]
        rows.append(f"| {source} | {' | '.join(cells)} |")
    rows.append(f"| random, same budget | {' | '.join(_mean(cross['random'][on]) for on in tasks)} |")
    verdict = []
    for on in tasks:
        w = cross["wins"][on]
        margins = ", ".join(
            f"vs {o} {m['difference']:+.4f} (SE {m['standard_error']:.4f})" for o, m in w["margins"].items()
        )
        verdict.append(f"| {on} | {margins} | {'yes' if w['beats_random'] else 'no'} | "
                       f"{'**yes**' if w['wins'] else 'no'} |")  # fmt: skip
    return [
        "### Cross-task: cells searched on one task, trained from scratch on each "
        f"(`results/cross_task.json`, seeds {seeds})",
        "",
        *rows,
        "",
        "| task | own cell minus the other tasks' cells (paired by seed) | beats random | own cell wins |",
        "|---|---|---|---|",
        *verdict,
        "",
    ]


# AdaBERT (Chen et al., IJCAI 2020), its GLUE *test* results against its BERT-base teacher, as
# summarised in the method notes (METHOD.md section 1; the AdaBERT row is marked unverified there)
PAPER = {
    "source": "Chen et al., AdaBERT (IJCAI 2020): GLUE test results and the abstract's 12.7-29.3x "
    "speedup and 6.4-9.5M parameters; BERT-base teacher of 109M parameters",
    "teacher": {"sst2": 93.5, "mrpc": 88.9, "rte": 66.4, "qnli": 90.5},
    "student": {"sst2": 91.8, "mrpc": 85.1, "rte": 64.1, "qnli": 86.8},
    "parameters": "6.4-9.5M",
    "speedup": "12.7-29.3x",
}


def _adabert_rows(results: dict[str, dict[str, Any]]) -> list[str]:
    """Our searched students (3-seed means) beside the paper's ratios, one row per results file."""
    rows = [
        "| run | teacher | searched student | retention | parameters (student / teacher) | speedup b1 "
        "| speedup b32 | peers |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        student = statistics.mean(r["searched"])
        params = r.get("searched_parameters")
        size = "-"
        if params:
            teacher = r.get("teacher_parameters")
            size = f"{statistics.mean(params) / 1e6:.2f}M" + (f" / {teacher / 1e6:.1f}M" if teacher else "")
        b1, b32 = r["searched_speedup_vs_teacher_b1"], r.get("searched_speedup_vs_teacher_b32") or []
        speed = [f"{min(v):.1f}-{max(v):.1f}x" if v else "-" for v in (b1, b32)]
        peers = ", ".join(f"{k} {v:.4f}" for k, v in r.get("peers", {}).items())
        kept = 100 * student / r["teacher"]
        rows.append(f"| ours: {name} | {r['teacher']:.4f} | {student:.4f} | {kept:.1f}% "
                    f"| {size} | {speed[0]} | {speed[1]} | {peers} |")  # fmt: skip
    for task, student in PAPER["student"].items():
        teacher = PAPER["teacher"][task]
        kept = 100 * student / teacher
        size, speed = f"{PAPER['parameters']} / 109M", f"{PAPER['speedup']} (batch not given)"
        rows.append(f"| paper: {task} (test) | {teacher} | {student} | {kept:.1f}% | {size} | {speed} | | |")
    return [
        "### AdaBERT's table beside ours (generated from `results/search_quality_*.json`)",
        "",
        *rows,
        "",
        f"Paper: {PAPER['source']}. Ours: dev sets, this project's teacher and 2-core CPU; speedups over our "
        "own teacher, measured in the benchmark's latency run (the paper's are over BERT-base on its "
        "hardware). The ratios compare; the absolute figures do not.",
        "",
    ]


def render() -> str:
    out: list[str] = []
    cross = RESULTS / "cross_task.json"
    if cross.is_file():
        out += _cross_task_rows(json.loads(cross.read_text()))
    results = {
        path.stem.removeprefix("search_quality_"): json.loads(path.read_text())
        for path in sorted(RESULTS.glob("search_quality_*.json"))
    }
    out += _adabert_rows(results)
    for name, search in results.items():
        path = RESULTS / f"search_quality_{name}.json"
        out += [f"### {name}: search quality (`{path.relative_to(HERE)}`)", "", *_search_rows(search), ""]
        student_path = RESULTS / f"student_quality_{name}.json"
        if student_path.is_file():
            student = json.loads(student_path.read_text())
            out += [f"### {name}: student quality (`{student_path.relative_to(HERE)}`)", ""]
            out += [*_student_rows(student), ""]
        out += [f"Stages of the {name} run:", "", *_stage_rows(search), ""]
    return "\n".join(out).rstrip() + "\n"


def _split(doc: str) -> tuple[str, str, str]:
    if BEGIN not in doc or END not in doc:
        raise SystemExit(f"{DOC}: no {BEGIN} ... {END} block")
    head, rest = doc.split(BEGIN, 1)
    block, tail = rest.split(END, 1)
    return head, block, tail


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="replace the generated block in RESULTS.md")
    mode.add_argument("--check", action="store_true", help="exit 1 if RESULTS.md differs from the JSON")
    args = parser.parse_args()
    table = render()
    if not (args.write or args.check):
        print(table, end="")
        return
    head, block, tail = _split(DOC.read_text())
    if args.check:
        if block.strip() != table.strip():
            sys.exit(f"{DOC}: the quality tables differ from results/; run quality_table.py --write")
        return
    DOC.write_text(f"{head}{BEGIN}\n{table}{END}{tail}")


if __name__ == "__main__":
    main()
