"""Model cards: a README.md in every student, compressed-model and export folder.

The card follows the usual transformers form (YAML front matter with ``model-index`` results, then
prose and tables): the task, the teacher, the data, dev metrics and loyalty to the teacher, size and
latency against the teacher, the cell picture, and how to load the model. Its figures come from the
files the stages already write (the store's manifest, ``metrics.json`` of the student training,
the ``report.json`` of ``adabert evaluate`` or ``adabert compress``, ``export.json``); the facts behind
a card are kept in ``model_card.json`` beside it, so a later command (evaluate after train, export
after either) adds what it learned without losing what the earlier ones knew.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from adabert.deploy import TASK_FILE
from adabert.report.evaluate import format_bytes, format_value

CARD_FILE = "README.md"
FACTS_FILE = "model_card.json"
PICTURE_FILE = "cell.png"
ADABERT_TYPES = ("adabert-student", "adabert-compressed")
SENTENCE_EXAMPLE = "a gripping, beautifully made film"
PAIR_TEXTS = ("A man is playing a guitar.", "A man plays the guitar.")
PAIR_EXAMPLE = f'{{"text": "{PAIR_TEXTS[0]}", "text_pair": "{PAIR_TEXTS[1]}"}}'

_KINDS = {
    "student": "AdaBERT student",
    "compressed": "compressed model",
    "teacher": "fine-tuned teacher",
}


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def is_adabert_model(model_dir: str | Path) -> bool:
    """A student or compressed model (these get cards; a teacher folder is the user's own)."""
    config = _read_json(Path(model_dir) / "config.json") or {}
    return config.get("model_type") in ADABERT_TYPES


def read_facts(folder: str | Path) -> dict[str, Any]:
    return _read_json(Path(folder) / FACTS_FILE) or {}


def task_file(model_dir: str | Path, store_dir: str | Path | None) -> dict[str, Any] | None:
    """``adabert_task.json``'s content, ``{"task": TaskSpec dict, "max_length": n}``: what ``predict`` needs
    to read a file for this model. From the store's manifest, else the model folder's own file."""
    source = _read_json(Path(store_dir) / "manifest.json") if store_dir is not None else None
    source = source or _read_json(Path(model_dir) / TASK_FILE)
    if not source or not isinstance(source.get("task"), dict):
        return None
    return {"task": source["task"], "max_length": source.get("max_length")}


# ------------------------------------------------------------------------------------------ collecting
def _kind_and_genotype(config: Mapping[str, Any]) -> tuple[str, dict[str, Any] | None, str | None]:
    """(kind, genotype dict or None, the base model's kind for a compressed model)."""
    model_type = config.get("model_type")
    if model_type == "adabert-student":
        return "student", config.get("genotype"), None
    if model_type == "adabert-compressed":
        base = config.get("base") or {}
        base_kind = "student" if base.get("model_type") == "adabert-student" else "teacher"
        return "compressed", base.get("genotype"), base_kind
    return "teacher", None, None


def _from_store(store_dir: str | Path) -> dict[str, Any]:
    manifest = _read_json(Path(store_dir) / "manifest.json") or {}
    task = manifest.get("task") or {}
    dev_split = next((s for s in task.get("files", {}) if s not in ("train", "test")), "dev")
    teacher = manifest.get("teacher") or {}
    teacher_path = teacher.get("path")
    if teacher_path:  # recorded relative to the store folder (older stores: to the working directory)
        import os

        from adabert.io import resolve_recorded

        found = resolve_recorded(str(teacher_path), store_dir, teacher.get("abspath"))
        teacher_path = os.path.normpath(found)  # shown: runs/sst2/teacher, not runs/sst2/store/../teacher
    finetuned = _read_json(Path(teacher_path) / "finetune_config.json") if teacher_path else None
    facts: dict[str, Any] = {
        "task": task or None,
        "max_length": manifest.get("max_length"),
        "data_dir": manifest.get("data_dir"),
        "rows": {s: v.get("rows") for s, v in (manifest.get("splits") or {}).items()},
        "dev_split": dev_split,
        "teacher": {
            "path": teacher_path,
            "base": (finetuned or {}).get("model"),
            "model_type": (teacher.get("config") or {}).get("model_type"),
            "layers": (teacher.get("config") or {}).get("num_hidden_layers"),
        },
    }
    teacher_dev = (manifest.get("teacher_metrics") or {}).get(dev_split)
    if teacher_dev:
        facts["metrics"] = {"teacher": teacher_dev}
    return facts


def _from_report(report: Mapping[str, Any]) -> dict[str, Any]:
    """Metrics, size and latency of the model against the teacher, from an evaluate / compress report."""
    key = "compressed" if "compressed" in report.get("size", {}) else "model"
    facts: dict[str, Any] = {}
    metrics = report.get("metrics") or {}
    if key in metrics:
        facts["metrics"] = {
            "model": metrics[key],
            **({"teacher": metrics["teacher"]} if "teacher" in metrics else {}),
        }
    size = report.get("size") or {}
    if key in size:
        model, teacher = size[key], size.get("teacher") or {}
        facts["size"] = {
            "parameters": model.get("total"),
            "non_embedding_parameters": model.get("non_embedding"),
            "file_bytes": model.get("file_bytes"),
            "teacher_parameters": teacher.get("total"),
            "teacher_file_bytes": teacher.get("file_bytes"),
        }
    latency = report.get("latency") or {}
    if key in latency and "teacher" in latency:
        facts["latency"] = {
            bs: {
                "model_ms": row["median_ms"],
                "teacher_ms": latency["teacher"][bs]["median_ms"],
                "speedup": row.get("speedup_vs_teacher"),
                "seq_len": row.get("seq_len"),
                "threads": row.get("threads"),
            }
            for bs, row in latency[key].items()
        }
    if report.get("methods"):
        facts["compression"] = report["methods"]
    return facts


def collect_facts(
    model_dir: str | Path,
    store_dir: str | Path | None = None,
    report: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What the folder, its store and (optionally) an evaluate / compress report say about a model."""
    model_dir = Path(model_dir)
    config = _read_json(model_dir / "config.json") or {}
    kind, genotype, base_kind = _kind_and_genotype(config)
    facts: dict[str, Any] = {"kind": kind, "model_type": config.get("model_type"), "base_kind": base_kind}
    if genotype is not None:
        from adabert.genotype import Genotype

        facts["genotype"] = str(Genotype.from_dict(genotype))
    labels = config.get("id2label")
    if labels and config.get("problem_type") != "regression":
        facts["labels"] = [labels[k] for k in sorted(labels, key=int)]
    if store_dir is not None:
        facts.update(_from_store(store_dir))
        if kind == "teacher" and "metrics" in facts:  # the teacher's own dev figures are this model's
            facts["metrics"] = {"model": facts["metrics"]["teacher"]}
    trained = _read_json(model_dir / "metrics.json")  # a student's training record
    if trained and isinstance(trained.get("dev"), dict):
        facts.setdefault("metrics", {})["model"] = trained["dev"]
        if trained.get("teacher_dev"):
            facts["metrics"].setdefault("teacher", trained["teacher_dev"])
        if trained.get("parameters"):
            facts["size"] = {"parameters": trained["parameters"]}
        if isinstance(trained.get("search_supernet"), dict):
            facts["search"] = trained["search_supernet"]
    weights = sorted(model_dir.glob("*.safetensors"))
    if weights:
        facts.setdefault("size", {})["file_bytes"] = sum(w.stat().st_size for w in weights)
    if report is not None:
        from_report = _from_report(report)
        for key in ("metrics", "size"):
            if key in from_report:
                facts[key] = {**facts.get(key, {}), **from_report.pop(key)}
        facts.update(from_report)
    return facts


# ------------------------------------------------------------------------------------------ writing
def update_model_card(
    model_dir: str | Path,
    store_dir: str | Path | None = None,
    report: Mapping[str, Any] | None = None,
    picture: str | Path | None = None,
    test_metrics: Mapping[str, Any] | None = None,
) -> Path | None:
    """Write or refresh the card of a student / compressed-model folder (None for any other folder).

    ``test_metrics``: the model's metrics on the task's labelled test file (``predict.score_test_file``).
    """
    from adabert.io import atomic_write_json

    model_dir = Path(model_dir)
    if not is_adabert_model(model_dir):
        return None
    task = task_file(model_dir, store_dir)
    if task is not None:
        atomic_write_json(model_dir / TASK_FILE, task)
    facts = read_facts(model_dir)
    if test_metrics is not None:
        facts["test_metrics"] = dict(test_metrics)
    for key, value in collect_facts(model_dir, store_dir, report).items():
        if isinstance(value, dict) and isinstance(facts.get(key), dict):
            facts[key] = {**facts[key], **value}
        elif value is not None:
            facts[key] = value
    return write_card(model_dir, facts, picture)


def write_export_card(
    folder: Path, model_dir: Path, store_dir: str | Path | None, export: Mapping[str, Any]
) -> Path:
    """The card of an export folder: the source model's facts (its card, else collected) plus the export's."""
    facts = read_facts(model_dir) or collect_facts(model_dir, store_dir)
    if store_dir is not None and not facts.get("task"):
        facts.update(_from_store(store_dir))
    facts = {**facts, "source_kind": facts.get("kind"), "kind": "export", "export": dict(export)}
    source_picture = model_dir / PICTURE_FILE
    return write_card(folder, facts, source_picture if source_picture.is_file() else None)


def write_card(folder: str | Path, facts: Mapping[str, Any], picture: str | Path | None = None) -> Path:
    """README.md and model_card.json (and the cell picture, copied in as cell.png), written atomically."""
    from adabert.io import atomic_path, atomic_write_json, atomic_write_text

    folder = Path(folder)
    facts = dict(facts)
    if picture is not None and Path(picture).is_file():
        target = folder / PICTURE_FILE
        if Path(picture).resolve() != target.resolve():
            with atomic_path(target) as tmp:
                shutil.copyfile(picture, tmp)
        facts["picture"] = PICTURE_FILE
    atomic_write_json(folder / FACTS_FILE, facts)
    path = folder / CARD_FILE
    atomic_write_text(path, render_card(facts))
    return path


# ------------------------------------------------------------------------------------------ rendering
def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def _task_line(task: Mapping[str, Any]) -> str:
    if task.get("glue_dir"):
        return f"GLUE {task.get('glue_dir')} (`{task.get('name')}`)"
    return f"`{task.get('name')}`, your own data"


def _front_matter(facts: Mapping[str, Any]) -> list[str]:
    """YAML (every value written as JSON, which YAML reads unchanged)."""
    task = facts.get("task") or {}
    export = facts.get("export") or {}
    tags = ["adabert"] + ([] if _source_kind(facts) == "teacher" else ["knowledge-distillation"])
    if facts.get("genotype"):
        tags.append("neural-architecture-search")
    if facts.get("kind") == "compressed" or facts.get("source_kind") == "compressed":
        tags.append("compression")
    if export:
        tags += ["onnx"] + (["int8"] if export.get("quantization") == "int8" else [])
    lines = ["---", f"library_name: {'onnx' if export.get('format') == 'onnx' else 'transformers'}"]
    lines += ["pipeline_tag: text-classification", f"tags: {json.dumps(tags)}"]
    if task.get("glue_dir"):
        lines.append('datasets: ["nyu-mll/glue"]')
    int8 = (export.get("int8") or {}).get("int8_metrics")
    metrics = int8 or (facts.get("metrics") or {}).get("model") or {}
    names = [m for m in task.get("metrics", []) if isinstance(metrics.get(m), (int, float))]
    if names:
        dataset = {
            "name": _task_line(task).replace("`", ""),
            "type": "glue" if task.get("glue_dir") else "custom",
        }
        if task.get("glue_dir"):
            dataset["config"] = task.get("name")
        results = [
            {
                "task": {"type": "text-classification"},
                "dataset": {**dataset, "split": facts.get("dev_split", "dev")},
                "metrics": [{"type": m, "value": round(float(metrics[m]), 4)} for m in names],
            }
        ]
        lines.append(f"metrics: {json.dumps(names)}")
        lines.append(f"model-index: {json.dumps([{'name': _title(facts), 'results': results}])}")
    return lines + ["---", ""]


def _this(facts: Mapping[str, Any]) -> str:
    return "the exported model (PyTorch)" if facts.get("kind") == "export" else "this model"


def _source_kind(facts: Mapping[str, Any]) -> str | None:
    """What the model is (student, compressed, teacher), for an export the model it was exported from."""
    return facts.get("source_kind") if facts.get("kind") == "export" else facts.get("kind")


def _title(facts: Mapping[str, Any]) -> str:
    task = (facts.get("task") or {}).get("name", "task")
    kind = _source_kind(facts)
    what = _KINDS.get(kind or "", "model")
    if kind == "compressed" and facts.get("base_kind"):
        what = f"compressed {facts['base_kind']}"
    export = facts.get("export") or {}
    suffix = ""
    if export:
        suffix = f" ({export.get('format', 'onnx').upper()}{' int8' if export.get('quantization') else ''})"
    return f"{task} {what}{suffix}"


def _task_section(facts: Mapping[str, Any]) -> list[str]:
    task = facts.get("task")
    if not task:
        return ["## Task", "", "Unknown: the card was written without the knowledge store.", ""]
    labels = task.get("labels")
    rows = [
        ["task", _task_line(task)],
        ["text", " + ".join(f"`{c}`" for c in task.get("text_columns", []))],
        [
            "label",
            f"`{task.get('label_column')}`: " + (", ".join(labels) if labels else "a score (regression)"),
        ],
        ["metrics", ", ".join(task.get("metrics", []))],
        ["max length", f"{facts.get('max_length')} tokens"],
    ]
    return ["## Task", "", *_table(["", ""], rows), ""]


def _data_section(facts: Mapping[str, Any]) -> list[str]:
    task, rows = facts.get("task") or {}, facts.get("rows") or {}
    teacher = facts.get("teacher") or {}
    lines = ["## Teacher and data", ""]
    if teacher.get("path"):
        base = teacher.get("base")
        base = (
            "the bundled MiniLM-L6-H384" if base == "default" else (f"`{base}`" if base else "a checkpoint")
        )
        layers = f", {teacher['layers']} layers" if teacher.get("layers") else ""
        learned = (
            "" if _source_kind(facts) == "teacher" else "; this model learned from its logits (distillation)"
        )
        lines.append(
            f"- teacher: `{teacher['path']}` ({teacher.get('model_type') or '?'}{layers}), fine-tuned "
            f"from {base}{learned}"
        )
    if rows:
        lines.append("- rows: " + ", ".join(f"{s} {format_value(n)}" for s, n in rows.items()))
    files = task.get("files") or {}
    if files and not task.get("glue_dir"):
        lines.append("- files: " + ", ".join(f"{s} `{p}`" for s, p in files.items()))
    elif facts.get("data_dir"):
        lines.append(f"- data: `{facts['data_dir']}`")
    return lines + [""]


def _results_section(facts: Mapping[str, Any]) -> list[str]:
    metrics = facts.get("metrics") or {}
    if not metrics:
        return []
    names = list((facts.get("task") or {}).get("metrics") or next(iter(metrics.values())).keys())
    loyalty = [
        k
        for k in ("label_loyalty", "probability_loyalty", "prediction_pearson")
        if k in (metrics.get("model") or {})
    ]
    header = ["", *names, *loyalty]
    rows = [
        [who, *(format_value(values.get(k)) for k in names + loyalty)]
        for who, values in ((_this(facts), metrics.get("model")), ("teacher", metrics.get("teacher")))
        if values
    ]
    int8 = ((facts.get("export") or {}).get("int8") or {}).get("int8_metrics")
    if int8:
        rows.insert(
            1, ["this int8 file", *(format_value(int8.get(k)) for k in names), *("—" for _ in loyalty)]
        )
    test = facts.get("test_metrics")
    if test:
        rows.append(
            [
                f"this model, test file ({format_value(test.get('rows'))} rows)",
                *(format_value(test.get(k)) for k in names),
                *("—" for _ in loyalty),
            ]
        )
    lines = [f"## Results ({facts.get('dev_split', 'dev')} split)", "", *_table(header, rows), ""]
    if loyalty:
        lines += [
            "Loyalty: how often this model gives the teacher's label, and how close its probabilities "
            "are (1 - sqrt(Jensen-Shannon divergence)); 1 = identical.",
            "",
        ]
    return lines


def _size_section(facts: Mapping[str, Any]) -> list[str]:
    size, latency = facts.get("size") or {}, facts.get("latency") or {}
    if not size and not latency:
        return []
    lines = ["## Size and speed", ""]
    rows = [[_this(facts), format_value(size.get("parameters")), format_bytes(size.get("file_bytes"))]]
    if size.get("teacher_parameters"):
        rows.append(
            [
                "teacher",
                format_value(size["teacher_parameters"]),
                format_bytes(size.get("teacher_file_bytes")),
            ]
        )
    header = ["", "parameters", "weights file"]
    for bs, row in latency.items():
        header.append(f"latency, batch {bs}")
        rows[0].append(f"{row['model_ms']:.2f} ms")
        if len(rows) > 1:
            rows[1].append(f"{row['teacher_ms']:.2f} ms")
    lines += _table(header, rows) + [""]
    if size.get("parameters") and size.get("teacher_parameters"):
        lines.append(
            f"- {size['teacher_parameters'] / size['parameters']:.1f}x fewer parameters than the teacher"
        )
    for bs, row in latency.items():
        speedup = row.get("speedup")
        if speedup:
            how = f"{speedup:.1f}x faster than" if speedup >= 1 else f"{1 / speedup:.1f}x slower than"
            lines.append(
                f"- {how} the teacher at batch {bs} ({row.get('seq_len')} tokens, "
                f"{row.get('threads')} CPU threads, measured side by side)"
            )
    return lines + [""]


def _architecture_section(facts: Mapping[str, Any]) -> list[str]:
    if not facts.get("genotype"):
        return []
    lines = ["## Architecture", "", "The cell found by the differentiable architecture search (AdaBERT):", ""]
    if facts.get("picture"):
        lines += [f"![the searched cell]({facts['picture']})", ""]
    lines += ["```", facts["genotype"], "```", ""]
    if facts.get("search"):
        from adabert.search.judge import summary

        lines += [summary(facts["search"]), ""]
    if facts.get("compression"):
        lines += [f"Compressed further with `{facts['compression']}`.", ""]
    return lines


def _export_section(facts: Mapping[str, Any]) -> list[str]:
    export = facts.get("export")
    if not export:
        return []
    parity = export.get("parity") or {}
    lines = ["## Export", ""]
    lines.append(
        f"- `{export.get('file')}`, {export.get('format')}"
        f"{', int8 weights (onnxruntime)' if export.get('quantization') else ''}, "
        f"{format_bytes(export.get('bytes'))}, from `{export.get('model_dir')}`"
    )
    int8 = export.get("int8")
    if int8:
        for part, how in (int8.get("method") or {}).items():
            lines.append(f"- {part}: {how}")
        if "label_agreement" in int8:
            lines.append(
                f"- against the fp32 export on {int8['rows']} dev rows: label agreement "
                f"{int8['label_agreement']:.4f}, max probability change {int8['max_abs_prob_diff']:.4f}"
            )
        else:
            lines.append(
                f"- against the fp32 export on {int8['rows']} dev rows: max score change "
                f"{int8['max_abs_score_diff']:.4f}, Pearson r {int8['pearson']:.4f}"
            )
        scores = [(k, int8[f"{k}_metrics"]) for k in ("fp32", "int8") if f"{k}_metrics" in int8]
        if scores:
            lines.append(
                "- dev "
                + ", ".join(f"{m} {v:.4f}" for m, v in scores[0][1].items())
                + " fp32; "
                + ", ".join(f"{m} {v:.4f}" for m, v in scores[-1][1].items())
                + " int8"
            )
        lines.append(
            f"- size {format_bytes(int8['int8_bytes'])} vs {format_bytes(int8['fp32_bytes'])} fp32 "
            f"({int8['size_ratio']:.2f}x)"
        )
        for bs, row in (int8.get("latency") or {}).items():
            lines.append(
                f"- latency at batch {bs}: {row['int8_ms']:.2f} ms vs {row['fp32_ms']:.2f} ms fp32 "
                f"({row['int8_vs_fp32']:.2f}x), onnxruntime, {row['threads']} threads"
            )
    else:
        lines.append(
            f"- matches PyTorch within {export.get('atol')}: max |logit difference| "
            f"{format_value(parity.get('dev_max_abs_diff'), 8)} on {parity.get('dev_rows', 'no')} dev rows, "
            f"{format_value(parity.get('dummy_max_abs_diff'), 8)} on a random batch"
        )
    return lines + [""]


def _usage_section(facts: Mapping[str, Any]) -> list[str]:
    task = facts.get("task") or {}
    columns = task.get("text_columns") or ["text"]
    here = "path/to/this/folder"
    lines = [
        "## How to use",
        "",
        "On a CSV / TSV / JSON Lines file with the column(s) " + ", ".join(f"`{c}`" for c in columns) + ":",
        "",
        "```bash",
        f"adabert predict --model {here} --input new_rows.csv --output predictions.csv",
        "```",
        "",
    ]
    pair = len(columns) == 2
    if facts.get("kind") == "export":
        if (facts.get("export") or {}).get("format") == "onnx":
            texts = ", ".join(f'["{t}"]' for t in PAIR_TEXTS) if pair else f'["{SENTENCE_EXAMPLE}"]'
            lines += [
                "In Python, with onnxruntime and the tokenizer in this folder:",
                "",
                "```python",
                "import onnxruntime as ort",
                "from transformers import AutoTokenizer",
                "",
                f'tokenizer = AutoTokenizer.from_pretrained("{here}")',
                f'session = ort.InferenceSession("{here}/model.onnx")',
                f'batch = tokenizer({texts}, return_tensors="np")',
                "names = [i.name for i in session.get_inputs()]",
                "logits = session.run(None, {n: batch[n] for n in names})[0]",
                "```",
                "",
            ]
        return lines
    regression = task["labels"] is None if "labels" in task else not facts.get("labels")
    text = PAIR_EXAMPLE if pair else f'"{SENTENCE_EXAMPLE}"'
    options = ', function_to_apply="none"' if regression else ""
    lines += [
        "In Python (importing `adabert` registers its model classes with transformers"
        + ("; a regression model's score is the raw output, hence `function_to_apply`" if regression else "")
        + "):",
        "",
        "```python",
        "import adabert",
        "from transformers import pipeline",
        "",
        f'classify = pipeline("text-classification", model="{here}"{options})',
        f"classify({text})",
        "```",
        "",
    ]
    return lines


def render_card(facts: Mapping[str, Any]) -> str:
    """The README.md text of a card."""
    kind = facts.get("kind")
    intro = {
        "student": "A compact student found by AdaBERT's differentiable architecture search for this task "
        "and "
        "trained by distillation from a fine-tuned BERT-family teacher.",
        "compressed": "A model compressed further (pruning / factorization) with distillation from the "
        "teacher; "
        "it reloads at its smaller size.",
        "teacher": "A fine-tuned BERT-family classifier.",
        "export": "A deployable export: the model file, its tokenizer, config and task, checked against the "
        "PyTorch model it came from.",
    }.get(kind or "", "")
    lines = _front_matter(facts) + [
        f"# {_title(facts)}",
        "",
        intro,
        "",
        "Written by adabert from the files of its run.",
        "",
    ]
    for section in (
        _task_section,
        _data_section,
        _results_section,
        _size_section,
        _architecture_section,
        _export_section,
        _usage_section,
    ):
        lines += section(facts)
    return "\n".join(lines).rstrip() + "\n"
