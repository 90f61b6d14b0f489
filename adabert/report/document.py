"""The run report: one Markdown and one self-contained HTML page summarising a pipeline run directory.

``build_report(run_dir)`` reads only files the stages wrote (``eval/report.json``, ``search/``,
``store/``, ``export/export.json``, ``pipeline.json``, each stage's ``stage.json``), draws two plots of
its own into ``run_dir/figures/`` (search curves from ``search/search_log.jsonl``; accuracy against
latency of every model of the run) and writes ``run_dir/report.md`` (pictures by relative path) and
``run_dir/report.html`` (the same content, pictures embedded as base64 PNG). A section whose inputs
are missing says so instead of failing, so the report also works on a partial or hand-made run.
"""

from __future__ import annotations

import base64
import contextlib
import html
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adabert.io import atomic_save, atomic_write_text
from adabert.report.evaluate import format_bytes, format_value

FIGURES = "figures"
LOYALTY_KEYS = ("label_loyalty", "probability_loyalty", "prediction_mse", "prediction_pearson")
DISPLAY = {"model": "student", "teacher": "teacher", "bert-base": "BERT-base"}
SOURCES = {"student": "the student", "compress": "the compressed student"}


# ------------------------------------------------------------------------------------------ blocks
@dataclass
class Block:
    """One piece of the report, rendered to both Markdown and HTML."""

    kind: str  # h1, h2, p, list, table, image, code
    value: Any


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_text().splitlines()
    except (FileNotFoundError, NotADirectoryError):
        return []
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a torn last line of an interrupted run
    return records


def _count(n: float | None) -> str:
    if n is None:
        return "—"
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


# ------------------------------------------------------------------------------------------ inputs
@dataclass
class RunFiles:
    """What the stages left in a run directory (None / empty where a stage has not finished)."""

    run_dir: Path
    pipeline: dict[str, Any] | None
    manifest: dict[str, Any] | None
    evaluation: dict[str, Any] | None
    compressed: dict[str, Any] | None
    search_log: list[dict[str, Any]]
    selection: dict[str, Any] | None
    export: dict[str, Any] | None
    stages: dict[str, dict[str, Any]]
    student: dict[str, Any] | None = None  # train's metrics.json

    @classmethod
    def read(cls, run_dir: Path) -> RunFiles:
        stages = {}
        for folder in sorted(p for p in run_dir.iterdir() if p.is_dir()):
            info = _read_json(folder / "stage.json")
            if isinstance(info, dict):
                stages[folder.name] = info
        return cls(
            run_dir=run_dir,
            pipeline=_read_json(run_dir / "pipeline.json"),
            manifest=_read_json(run_dir / "store" / "manifest.json"),
            evaluation=_read_json(run_dir / "eval" / "report.json"),
            compressed=_read_json(run_dir / "eval" / "compressed" / "report.json"),
            search_log=_read_jsonl(run_dir / "search" / "search_log.jsonl"),
            selection=_read_json(run_dir / "search" / "selection.json"),
            export=_read_json(run_dir / "export" / "export.json"),
            stages=stages,
            student=_read_json(run_dir / "student" / "metrics.json"),
        )

    @property
    def task_name(self) -> str:
        for source in (self.evaluation, self.pipeline):
            if isinstance(source, dict) and source.get("task"):
                return str(source["task"])
        if self.manifest:
            return str(self.manifest.get("task", {}).get("name", "?"))
        return "?"

    @property
    def main_metric(self) -> str | None:
        if self.manifest and isinstance(self.manifest.get("task"), dict):
            from adabert.tasks import TaskSpec

            # an older or hand-made manifest: fall back to the first metric below
            with contextlib.suppress(Exception):
                return TaskSpec.from_dict(self.manifest["task"]).main_metric
        metrics = (self.evaluation or {}).get("metrics", {}).get("model")
        if metrics:
            return next((k for k in metrics if k not in LOYALTY_KEYS), None)
        return None


@dataclass
class ModelPoint:
    """One model of the run in the accuracy-latency picture and the summary tables."""

    name: str
    metrics: dict[str, Any]
    size: dict[str, Any]
    latency: dict[str, dict[str, Any]]  # batch size -> stats (speedups from its own measurement)
    note: str = ""


def _models(run: RunFiles) -> list[ModelPoint]:
    """Teacher, student and (when present) compressed student, then BERT-base (size and speed only)."""
    ev = run.evaluation or {}
    metrics, size, latency = ev.get("metrics", {}), ev.get("size", {}), ev.get("latency", {})
    points = []
    for key in ("teacher", "model"):
        if key in metrics or key in size:
            points.append(
                ModelPoint(DISPLAY[key], metrics.get(key, {}), size.get(key, {}), latency.get(key, {}))
            )
    if run.compressed:
        c = run.compressed
        points.append(
            ModelPoint(
                "compressed student",
                c.get("metrics", {}).get("model", {}),
                c.get("size", {}).get("model", {}),
                c.get("latency", {}).get("model", {}),
                note="latency measured in its own run beside the teacher; compare speedups",
            )
        )
    if "bert-base" in size or "bert-base" in latency:
        points.append(ModelPoint("BERT-base", {}, size.get("bert-base", {}), latency.get("bert-base", {})))
    return points


# ------------------------------------------------------------------------------------------ figures
def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    plt = _pyplot()
    atomic_save(path, lambda p: fig.savefig(p, format="png", dpi=110))
    plt.close(fig)
    return path


def plot_search_curves(log: Sequence[Mapping[str, Any]], metric: str | None, path: Path) -> Path | None:
    """Loss terms and the derived architecture's dev metric (and depth) per search epoch."""
    if not log:
        return None
    plt = _pyplot()
    epochs = [r.get("epoch", i + 1) for i, r in enumerate(log)]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for key, style in (("loss", "-"), ("ce", "--"), ("kd", "-."), ("efficiency", ":")):
        values = [r.get(key) for r in log]
        if all(isinstance(v, (int, float)) for v in values):
            left.plot(epochs, values, style, marker="o", markersize=3, label=key)
    judged = [r.get("supernet") or {} for r in log]
    if all("loss" in j for j in judged):
        held_out = [j["loss"] for j in judged]
        left.plot(epochs, held_out, "-", marker="^", markersize=3, label="supernet held-out")
        left.plot(epochs, [j["trivial_loss"] for j in judged], ":", color="black", label="trivial predictor")
    left.set_xlabel("epoch")
    left.set_ylabel("mean over the epoch's weight steps")
    left.set_title("search loss terms")
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    dev = [r.get("dev", {}) for r in log]
    metric = metric or next(iter(dev[0]), None)
    if metric:
        right.plot(epochs, [d.get(metric, float("nan")) for d in dev], marker="o", color="tab:green")
        right.set_ylabel(f"dev {metric} of the derived architecture")
    right.set_xlabel("epoch")
    right.set_title("derived architecture per epoch")
    right.grid(alpha=0.3)
    depths = [r.get("depth") for r in log]
    if all(isinstance(d, int) for d in depths):
        twin = right.twinx()
        twin.plot(
            epochs, depths, drawstyle="steps-mid", marker="s", markersize=4, color="tab:gray", alpha=0.6
        )
        twin.set_ylabel("depth (cells)", color="tab:gray")
        twin.set_ylim(0, max(depths) + 1)
    for ax in (left, right):
        if len(epochs) < 12:
            ax.set_xticks(epochs)
    fig.tight_layout()
    return _save(fig, path)


def _ms(stats: Mapping[str, Any] | None) -> float | None:
    value = (stats or {}).get("median_ms")
    return float(value) if isinstance(value, (int, float)) else None


def _first_batch(points: Iterable[ModelPoint]) -> str | None:
    sizes = sorted(
        {bs for p in points for bs in p.latency},
        key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0),
    )
    return sizes[0] if sizes else None


def comparable_latency(point: ModelPoint, teacher: ModelPoint | None, batch: str) -> float | None:
    """Milliseconds on the main evaluation's clock: a model timed in another run (the compressed one) is
    placed by its speedup over the teacher, which was timed in both runs."""
    stats = point.latency.get(batch)
    if not point.note or teacher is None:
        return _ms(stats)
    speedup = (stats or {}).get("speedup_vs_teacher")
    teacher_ms = _ms(teacher.latency.get(batch))
    if isinstance(speedup, (int, float)) and speedup > 0 and teacher_ms:
        return teacher_ms / speedup
    return _ms(stats)


def plot_accuracy_latency(
    points: Sequence[ModelPoint], metric: str, batch: str, path: Path, task: str
) -> Path | None:
    """Dev metric against median latency for every model of the run; BERT-base as a vertical line."""
    teacher = next((p for p in points if p.name == "teacher"), None)
    placed = []
    for p in points:
        ms = comparable_latency(p, teacher, batch)
        value = p.metrics.get(metric)
        if p.name != "BERT-base" and ms is not None and isinstance(value, (int, float)):
            placed.append((p.name, ms, float(value)))
    bert = next((p for p in points if p.name == "BERT-base"), None)
    bert_ms = _ms(bert.latency.get(batch)) if bert else None
    if not placed:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    colours = {"teacher": "tab:red", "student": "tab:blue", "compressed student": "tab:purple"}
    offsets = [(6, 6), (6, -14), (6, 18), (6, -26)]  # models that land on one spot keep readable labels
    for i, (name, ms, value) in enumerate(placed):
        ax.scatter([ms], [value], s=60, color=colours.get(name, "tab:gray"), zorder=3, alpha=0.85)
        ax.annotate(
            name, (ms, value), textcoords="offset points", xytext=offsets[i % len(offsets)], fontsize=9
        )
    if bert_ms is not None:
        ax.axvline(bert_ms, color="black", linestyle="--", linewidth=1)
        ax.annotate(
            "BERT-base latency",
            (bert_ms, 0.02),
            xycoords=("data", "axes fraction"),
            xytext=(-4, 0),
            textcoords="offset points",
            rotation=90,
            ha="right",
            fontsize=8,
        )
    xs = [ms for _, ms, _ in placed] + ([bert_ms] if bert_ms else [])
    if max(xs) / max(min(xs), 1e-9) > 8:
        ax.set_xscale("log")
    ax.set_xlim(min(xs) / 1.6, max(xs) * 1.6)
    ys = [v for _, _, v in placed]
    pad = max(0.02, (max(ys) - min(ys)) * 0.25)
    ax.set_ylim(min(ys) - pad, max(ys) + pad)
    ax.set_xlabel(f"median latency per batch of {batch} (ms)")
    ax.set_ylabel(f"dev {metric}")
    ax.set_title(f"{task}: {metric} against latency")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return _save(fig, path)


# ------------------------------------------------------------------------------------------ sections
def _summary(run: RunFiles, points: list[ModelPoint], metric: str | None, batch: str | None) -> list[Block]:
    by_name = {p.name: p for p in points}
    student, teacher = by_name.get("student"), by_name.get("teacher")
    if not student or not metric or metric not in student.metrics:
        return [Block("p", "No evaluation yet: the `eval` stage has not finished.")]
    parts = [f"The student reaches dev {metric} {format_value(student.metrics[metric])}"]
    if teacher and isinstance(teacher.metrics.get(metric), (int, float)) and teacher.metrics[metric]:
        ratio = student.metrics[metric] / teacher.metrics[metric]
        parts[0] += f" (teacher {format_value(teacher.metrics[metric])}: {ratio:.1%} of it)"
    if "label_loyalty" in student.metrics:
        parts.append(
            f"it agrees with the teacher on {student.metrics['label_loyalty']:.1%} of the dev labels"
        )
    bert = by_name.get("BERT-base")
    s_total, b_total = student.size.get("total"), (bert.size.get("total") if bert else None)
    if s_total and b_total:
        parts.append(f"it has {b_total / s_total:.1f}x fewer parameters than BERT-base ({_count(s_total)})")
    stats = student.latency.get(batch or "", {})
    speed = []
    for ref, label in (("bert-base", "BERT-base"), ("teacher", "the teacher")):
        ratio = stats.get(f"speedup_vs_{ref}")
        if isinstance(ratio, (int, float)) and ratio > 0:
            speed.append(
                f"{ratio:.1f}x faster than {label}" if ratio >= 1 else f"{1 / ratio:.1f}x slower than {label}"
            )
    if speed:
        parts.append(f"it runs {' and '.join(speed)} at batch {batch}")
    text = "; ".join(parts)
    return [Block("p", text + ".")]


def _quality_table(run: RunFiles, points: list[ModelPoint]) -> list[Block]:
    ev = run.evaluation or {}
    rows_by_name: dict[str, dict[str, Any]] = {}
    for key, values in ev.get("metrics", {}).items():
        rows_by_name[key.replace("model", "student", 1) if key.startswith("model") else key] = values
    if run.compressed:
        for key, values in run.compressed.get("metrics", {}).items():
            if key.startswith("model"):
                rows_by_name["compressed student" + key[len("model") :]] = values
    if not rows_by_name:
        return []
    keys: list[str] = []
    for values in rows_by_name.values():
        keys += [k for k in values if k not in keys]
    order = sorted(rows_by_name, key=lambda n: (not n.startswith("teacher"), n.startswith("compressed"), n))
    rows = [[name] + [format_value(rows_by_name[name].get(k)) for k in keys] for name in order]
    dev_rows = ev.get("dev_rows")
    title = "Task metrics and loyalty to the teacher" + (f" ({dev_rows:,} dev rows)" if dev_rows else "")
    return [Block("h2", title), Block("table", (["model", *keys], rows))]


def _speed_table(points: list[ModelPoint]) -> list[Block]:
    if not points:
        return []
    batches = sorted({bs for p in points for bs in p.latency}, key=lambda s: int(s) if s.isdigit() else 0)
    header = ["model", "parameters", "non-embedding", "weights on disk", "FLOPs / example"]
    header += [f"ms (batch {bs})" for bs in batches]
    header += [
        f"speedup vs teacher (batch {'/'.join(batches)})",
        f"speedup vs BERT-base (batch {'/'.join(batches)})",
    ]
    rows = []
    for p in points:
        row = [
            p.name + (" *" if p.note else ""),
            _count(p.size.get("total")),
            _count(p.size.get("non_embedding")),
            format_bytes(p.size.get("file_bytes")),
            _count(p.size.get("flops_per_example")),
        ]
        row += [format_value(_ms(p.latency.get(bs)), 2) for bs in batches]
        for ref, own in (("teacher", "teacher"), ("bert-base", "BERT-base")):
            if p.name == own:
                row.append("1x")
                continue
            cells = [p.latency.get(bs, {}).get(f"speedup_vs_{ref}") for bs in batches]
            row.append(" / ".join(f"{c:.2f}x" if isinstance(c, (int, float)) else "—" for c in cells))
        rows.append(row)
    settings = next((s for p in points for s in p.latency.values()), {})
    title = "Size and latency"
    if settings:
        title += (
            f" (sequence length {settings.get('seq_len', '?')}, torch threads {settings.get('threads', '?')})"
        )
    blocks = [Block("h2", title), Block("table", (header, rows))]
    notes = ["BERT-base is a randomly initialised BERT-base classifier: a yardstick for size and speed only."]
    if any(p.note for p in points):
        notes.append(
            "* the compressed student was timed in its own evaluation run (beside the teacher and "
            "BERT-base), so compare its speedups rather than its milliseconds."
        )
    blocks.append(Block("p", " ".join(notes)))
    return blocks


def _image(run_dir: Path, rel: str, caption: str) -> Block | None:
    return Block("image", (rel, caption)) if (run_dir / rel).is_file() else None


def _missing(what: str) -> Block:
    return Block("p", f"Not available: {what}.")


def _search_section(run: RunFiles, metric: str | None) -> list[Block]:
    blocks = [Block("h2", "Derived architecture")]
    genotype_file = run.run_dir / "search" / "genotype.json"
    picture = _image(
        run.run_dir, "search/genotype.png", "The derived cell (shared by every layer of the stack)"
    )
    if picture:
        blocks.append(picture)
    if genotype_file.is_file():
        try:
            from adabert.genotype import Genotype

            blocks.append(Block("code", str(Genotype.load(genotype_file))))
        except Exception as err:  # a stale or hand-edited file: show the problem, not a traceback
            blocks.append(Block("p", f"`search/genotype.json` could not be read: {err}"))
    else:
        blocks.append(_missing("the search stage has not written `search/genotype.json`"))

    blocks.append(Block("h2", "Search"))
    curves = None
    if run.search_log:
        curves = plot_search_curves(run.search_log, metric, run.run_dir / FIGURES / "search_curves.png")
        last = run.search_log[-1]
        blocks.append(
            Block(
                "p",
                f"{len(run.search_log)} search epoch(s); final temperature "
                f"{format_value(last.get('tau'), 3)}, derived depth {last.get('depth', '?')} cell(s).",
            )
        )
    evidence = (run.selection or {}).get("supernet")
    if isinstance(evidence, dict):
        from adabert.search.judge import summary

        blocks.append(Block("p", summary(evidence)))
    if curves:
        blocks.append(
            Block(
                "image",
                (
                    f"{FIGURES}/search_curves.png",
                    "Search loss terms, and the derived architecture's dev metric and depth, "
                    "per epoch (from search/search_log.jsonl)",
                ),
            )
        )
    for rel, caption in (
        ("search/op_probabilities.png", "Operation probabilities per edge over the search"),
        ("search/depth_distribution.png", "Depth distribution over the search"),
    ):
        image = _image(run.run_dir, rel, caption)
        if image:
            blocks.append(image)
    if len(blocks) == 1:
        blocks.append(_missing("no search log or plots (a random-architecture run has none)"))
    return blocks


def _probe_section(run: RunFiles) -> list[Block]:
    blocks = [Block("h2", "Knowledge store: per-layer probes")]
    image = _image(
        run.run_dir, "store/probe_metrics.png", "Dev metric of a linear probe on each teacher layer"
    )
    blocks.append(image or _missing("the probe stage has not written `store/probe_metrics.png`"))
    if run.manifest:
        splits = ", ".join(
            f"{s} {i.get('rows', '?'):,} rows" for s, i in run.manifest.get("splits", {}).items()
        )
        blocks.append(Block("p", f"Store rows: {splits}; max_length {run.manifest.get('max_length', '?')}."))
    return blocks


def _compress_section(run: RunFiles) -> list[Block]:
    report = _read_json(run.run_dir / "compress" / "report.json")
    status = (run.pipeline or {}).get("stages", {}).get("compress", {}).get("status")
    in_this_run = status in ("ran", "resumed", "skipped") if status else "compress" in run.stages
    if not report or not in_this_run:  # a compress/ folder left by an earlier run is not this run's
        return []
    blocks = [Block("h2", "Compression")]
    info = report.get("compression", {})
    methods = report.get("methods") or ",".join(m.get("method", "?") for m in info.get("methods", []))
    blocks.append(Block("p", f"Methods {methods}; details in `compress/report.md`."))
    return blocks


def _export_section(run: RunFiles) -> list[Block]:
    blocks = [Block("h2", "Deployable model")]
    ex = run.export
    if not ex:
        return blocks + [_missing("the export stage has not finished")]
    parity = ex.get("parity", {})
    dev_diff = format_value(parity.get("dev_max_abs_diff"), 8)
    dummy_diff = format_value(parity.get("dummy_max_abs_diff"), 8)
    file_line = (
        f"ONNX file `export/{ex.get('file', 'model.onnx')}` ({format_bytes(ex.get('bytes'))}), exported from "
        f"{SOURCES.get(ex.get('source'), ex.get('source', '?'))}, with its tokenizer and config beside it"
    )
    parity_line = (
        f"parity with PyTorch: max |logit difference| {dev_diff} on {parity.get('dev_rows', '?')} dev rows, "
        f"{dummy_diff} on a random batch (tolerance {ex.get('atol', '?')})"
    )
    blocks.append(Block("list", [file_line, parity_line]))
    return blocks


def _stages_section(run: RunFiles) -> list[Block]:
    status = (run.pipeline or {}).get("stages", {})
    names = list(status) or list(run.stages)
    if not names:
        return []
    rows = []
    for name in names:
        entry = status.get(name, {})
        info = {} if entry.get("status") == "disabled" else run.stages.get(name, {})
        rows.append(
            [
                name,
                str(entry.get("status", "done" if info else "—")),
                format_value(entry.get("seconds"), 1),
                format_value(info.get("seconds"), 1),
                str(info.get("finished", "—")),
                str(info.get("config_hash", "—"))[:12],
            ]
        )
    header = [
        "stage",
        "last pipeline run",
        "seconds (last run)",
        "seconds (when computed)",
        "finished",
        "config",
    ]
    return [
        Block("h2", "Stages"),
        Block("table", (header, rows)),
        Block("p", "Each stage's full settings are in its folder's `stage.json`."),
    ]


def report_blocks(run_dir: str | Path) -> list[Block]:
    """The report's content: read the run directory, draw the run's own plots, return the blocks."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no run directory")
    run = RunFiles.read(run_dir)
    metric = run.main_metric
    points = _models(run)
    batch = _first_batch(points)
    pipe = run.pipeline or {}
    intro = f"Run directory `{run_dir}`"
    if pipe.get("budget"):
        intro += f", budget `{pipe['budget']}`"
    if pipe.get("status"):
        intro += f", pipeline {pipe['status']}"
        if pipe.get("finished"):
            intro += f" at {pipe['finished']}"
    blocks = [Block("h1", f"AdaBERT run: {run.task_name}"), Block("p", intro + ".")]
    trivial = (run.student or {}).get("trivial")
    if isinstance(trivial, dict) and trivial.get("no_better"):
        warning = trivial.get("warning") or "the student is no better than the trivial predictor"
        blocks.append(Block("p", f"**Warning: {warning}.**"))
    blocks += _summary(run, points, metric, batch)
    blocks += _quality_table(run, points)
    blocks += _speed_table(points)
    if metric and batch:
        scatter = plot_accuracy_latency(
            points, metric, batch, run_dir / FIGURES / "accuracy_latency.png", run.task_name
        )
        if scatter:
            blocks += [
                Block("h2", "Accuracy against latency"),
                Block(
                    "image",
                    (
                        f"{FIGURES}/accuracy_latency.png",
                        f"Dev {metric} against median latency at batch {batch} for every model "
                        "of the run; the dashed line is BERT-base's latency (it has no accuracy)",
                    ),
                ),
            ]
    blocks += _search_section(run, metric)
    blocks += _probe_section(run)
    blocks += _compress_section(run)
    blocks += _export_section(run)
    blocks += _stages_section(run)
    return blocks


# ------------------------------------------------------------------------------------------ rendering
def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: Sequence[Block]) -> str:
    lines: list[str] = []
    for b in blocks:
        if b.kind == "h1":
            lines += [f"# {b.value}", ""]
        elif b.kind == "h2":
            lines += [f"## {b.value}", ""]
        elif b.kind == "p":
            lines += [str(b.value), ""]
        elif b.kind == "list":
            lines += [f"- {item}" for item in b.value] + [""]
        elif b.kind == "code":
            lines += ["```", str(b.value), "```", ""]
        elif b.kind == "table":
            header, rows = b.value
            lines.append("| " + " | ".join(_md_cell(h) for h in header) + " |")
            lines.append("|" + "|".join("---" for _ in header) + "|")
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
            lines.append("")
        elif b.kind == "image":
            rel, caption = b.value
            lines += [f"![{caption}]({rel})", "", f"*{caption}*", ""]
    return "\n".join(lines)


_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1100px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .3em; }
h2 { border-bottom: 1px solid #eee; padding-bottom: .2em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .92em; }
th, td { border: 1px solid #ccc; padding: .3em .6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f4f4f4; }
code, pre { background: #f6f8fa; font-family: Menlo, Consolas, monospace; font-size: .9em; }
pre { padding: .8em; overflow-x: auto; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: .9em; }
"""


def _inline(text: str) -> str:
    """Escape, then turn `code` spans into <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(str(text), quote=False))


def render_html(blocks: Sequence[Block], run_dir: Path) -> str:
    title = next((str(b.value) for b in blocks if b.kind == "h1"), "AdaBERT run")
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
    ]
    for b in blocks:
        if b.kind in ("h1", "h2"):
            out.append(f"<{b.kind}>{_inline(b.value)}</{b.kind}>")
        elif b.kind == "p":
            out.append(f"<p>{_inline(b.value)}</p>")
        elif b.kind == "list":
            out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b.value) + "</ul>")
        elif b.kind == "code":
            out.append(f"<pre>{html.escape(str(b.value))}</pre>")
        elif b.kind == "table":
            header, rows = b.value
            out.append(
                "<table><thead><tr>"
                + "".join(f"<th>{_inline(h)}</th>" for h in header)
                + "</tr></thead><tbody>"
            )
            out += ["<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in rows]
            out.append("</tbody></table>")
        elif b.kind == "image":
            rel, caption = b.value
            data = base64.b64encode((run_dir / rel).read_bytes()).decode("ascii")
            out.append(
                f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{_inline(caption)}</figcaption></figure>"
            )
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def build_report(run_dir: str | Path) -> tuple[Path, Path]:
    """Write ``run_dir/report.md`` and the self-contained ``run_dir/report.html``; return their paths."""
    run_dir = Path(run_dir)
    blocks = report_blocks(run_dir)
    md_path, html_path = run_dir / "report.md", run_dir / "report.html"
    atomic_write_text(md_path, render_markdown(blocks))
    atomic_write_text(html_path, render_html(blocks, run_dir))
    return md_path, html_path
