"""The ``adabert`` command: one sub-command per pipeline stage.

Every stage's flags are generated from its dataclass config (``adabert/config.py``), and every stage
accepts ``--config FILE`` (a JSON object of the same settings; flags override it).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import textwrap
from collections.abc import Callable
from typing import Any

from adabert import config as cfgmod
from adabert.progress import quiet_library_bars

EPILOG = textwrap.dedent(
    """\
    The pipeline, one stage per command, each reading the previous stage's directory:
      adabert teacher finetune --task sst2 --data-dir GLUE --output-dir runs/sst2/teacher
      adabert teacher probe    --teacher runs/sst2/teacher --output-dir runs/sst2/store
      adabert search           --store runs/sst2/store --output-dir runs/sst2/search
      adabert genotype show    runs/sst2/search/genotype.json
      adabert train            --genotype runs/sst2/search/genotype.json --store runs/sst2/store
      adabert evaluate         --model runs/sst2/student --store runs/sst2/store
      adabert compress         --model runs/sst2/student --store runs/sst2/store --methods svd,magnitude
      adabert export           --model runs/sst2/student --store runs/sst2/store --output-dir runs/sst2/export
      adabert predict          --model runs/sst2/export --input new_rows.csv --output predictions.csv
    Or every stage in one run directory, skipping stages already done:
      adabert pipeline         --task sst2 --data-dir GLUE --run-dir runs/sst2
      adabert pipeline         --train-file train.csv --dev-file dev.csv --text-columns review \
                               --label-column sentiment --run-dir runs/reviews   # your own data
    Run 'adabert COMMAND --help' for a command's settings.
    """
)


def _stage(
    subparsers: Any,
    name: str,
    cls: type,
    run: Callable[[Any], Any],
    help_text: str,
    examples: str | None = None,
) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        name,
        help=help_text,
        description=f"{help_text}\n\n{(cls.__doc__ or '').strip()}",
        epilog=textwrap.dedent(examples) if examples else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", metavar="FILE", help="JSON file of settings (flags override it)")
    cfgmod.add_arguments(parser, cls)
    parser.set_defaults(handler=lambda ns: _run_locked(run, _config(cls, ns)))
    return parser


def _config(cls: type, ns: argparse.Namespace) -> Any:
    """The stage's settings (file, then flags), their ranges and cheap cross-checks done before any work."""
    base = cfgmod.load_config(cls, ns.config) if ns.config else None
    cfg = cfgmod.from_args(cls, ns, base)
    cfgmod.check_files(cfg)
    return cfg


def _run_locked(run: Callable[[Any], Any], cfg: Any) -> None:
    """Run a stage holding its output folder's lock (a second command into it exits 2), after removing
    what a killed run of it left behind and checking that the folder can be written."""
    from pathlib import Path

    from adabert.io import ensure_writable, folder_lock, remove_stale_temporaries

    out = Path(cfg.output_dir)
    with folder_lock(out) as held:
        if not held:  # another rank of a torchrun job writes
            run(cfg)
            return
        created = not out.exists()
        remove_stale_temporaries(out)
        ensure_writable(out)
        try:
            run(cfg)
        except BaseException:
            if created and out.is_dir() and not any(out.iterdir()):
                out.rmdir()  # a stage that failed before writing anything leaves no empty folder
            raise


def _finetune(cfg: cfgmod.FinetuneConfig) -> None:
    from adabert.teacher.finetuning import finetune

    _print_json(finetune(cfg))


def _probe(cfg: cfgmod.ProbeConfig) -> None:
    from adabert.teacher.probes import probe

    store = probe(cfg)
    print(f"knowledge store written to {store.path}")


def _search(cfg: cfgmod.SearchConfig) -> None:
    from adabert.distributed import is_main
    from adabert.search import run_search

    genotype = run_search(cfg)
    if is_main():
        print(genotype)
        print(f"genotype written to {cfg.output_dir}/genotype.json")


def _train(cfg: cfgmod.TrainConfig) -> None:
    from pathlib import Path

    from adabert.deploy.card import update_model_card
    from adabert.distributed import is_main
    from adabert.student.train import train_student

    result = train_student(cfg)
    if is_main():
        picture = Path(cfg.genotype).with_suffix(".png")  # the search draws genotype.png beside genotype.json
        update_model_card(cfg.output_dir, cfg.store, picture=picture)
        _print_json(result)


def _evaluate(cfg: cfgmod.EvalConfig) -> None:
    from adabert.deploy.card import update_model_card
    from adabert.report.evaluate import run_evaluation

    report = run_evaluation(cfg)
    if update_model_card(cfg.model, cfg.store, report):
        print(f"model card updated: {cfg.model}/README.md")
    print(f"report written to {cfg.output_dir}/report.md")
    _print_json(report.get("metrics", {}))


def _compress(cfg: cfgmod.CompressConfig) -> None:
    from pathlib import Path

    from adabert.compress import compress
    from adabert.deploy.card import update_model_card

    report = compress(cfg)
    update_model_card(cfg.output_dir, cfg.store, report, Path(cfg.model) / "cell.png")
    print(f"compressed model, report and model card written to {cfg.output_dir}")
    _print_json(report.get("metrics", {}))


def _genotype_show(ns: argparse.Namespace) -> None:
    from adabert.genotype import Genotype
    from adabert.report.draw import draw_genotype

    genotype = Genotype.load(ns.file)
    print(genotype)
    if not ns.no_draw:
        path = ns.output or str(ns.file).rsplit(".", 1)[0] + ".png"
        print(f"picture written to {draw_genotype(genotype, path)}")


def _genotype_new(ns: argparse.Namespace) -> None:
    from adabert.genotype import make_genotype

    edges = []
    for src, dst, op in ns.edge:
        if not (src.isdigit() and dst.isdigit()):
            raise ValueError(f"--edge {src} {dst} {op}: expected SRC and DST node numbers, then an op name")
        edges.append((int(src), int(dst), op))
    embedding = None
    if ns.store:
        from adabert.search import genotype_embedding
        from adabert.teacher.store import KnowledgeStore

        embedding = genotype_embedding(KnowledgeStore.open(ns.store))
    genotype = make_genotype(ns.space, edges, ns.cells, ns.hidden_size, embedding, source="genotype new")
    genotype.save(ns.output)
    print(genotype)
    print(f"genotype written to {ns.output}")


def _spaces(ns: argparse.Namespace) -> None:
    from search_spaces import get_op, get_space, list_broken, list_spaces
    from search_spaces.registry import SearchSpaceError, op_cost

    if ns.seq_len < 1:
        raise ValueError(f"--seq-len: expected a positive number of tokens, got {ns.seq_len}")
    if ns.profile:
        _profile(ns)
        return
    for name in list_spaces():
        space = get_space(name)
        print(f"{space.name}: {space.description}")
        print(
            f"  {space.num_input_nodes} input + {space.num_nodes} intermediate nodes, "
            f"{len(space.edges)} edges, up to {space.max_cells} cells, hidden {space.hidden_size}"
        )
        for op in space.ops:
            try:
                cost = op_cost(op, space.hidden_size, ns.seq_len)
            except SearchSpaceError as err:  # one unmeasurable op must not hide the rest
                print(f"  {op:<14} cost unavailable: {err}")
                continue
            print(
                f"  {op:<14} {cost.params:>9,d} params {cost.flops:>13,d} FLOPs@{ns.seq_len}  "
                f"{get_op(op).description}"
            )
    broken = list_broken()
    if broken:
        print("broken (skipped):")
        for file in broken:
            print(f"  {file}")


def _profile(ns: argparse.Namespace) -> None:
    """The measured latency table of one space on this machine (cached, see adabert.search.latency)."""
    from adabert.modules import head_kind
    from adabert.search.latency import latency_table
    from adabert.search.loop import genotype_embedding
    from adabert.teacher.store import KnowledgeStore
    from search_spaces import get_space

    if ns.store is None:
        raise ValueError("--profile needs --store STORE: its teacher is timed beside the ops, its vocabulary "
                         "and positions size the student")
    if ns.threads < 1:
        raise ValueError(f"--threads: expected at least 1, got {ns.threads}")
    store = KnowledgeStore.open(ns.store)
    space = get_space(ns.space)
    teacher = store.manifest["teacher"]
    seq_len = min(ns.seq_len, teacher["config"]["max_position_embeddings"])
    table = latency_table(space, space.hidden_size, seq_len, str(store.teacher_path), teacher["sha256"],
                          genotype_embedding(store), store.num_labels, (1, 32), ns.threads, ns.refresh,
                          head=head_kind("auto", store.task.is_pair))
    print(f"{space.name}: milliseconds per call at batch 1 and 32, length {seq_len}")
    print(table.format())


def _export(ns: argparse.Namespace) -> None:
    from adabert.deploy.export import export_model

    info = export_model(
        ns.model, ns.output_dir, ns.store, ns.format, ns.seq_len, ns.atol, ns.quantize, ns.min_agreement,
        ns.check_rows,
        ns.latency_repeats,
    )
    out = info["out"]
    int8 = info.get("int8")
    if int8:
        measure = (
            f"label agreement {int8['label_agreement']:.4f}, "
            f"max probability change {int8['max_abs_prob_diff']:.4f}"
            if "label_agreement" in int8
            else f"Pearson r {int8['pearson']:.4f}, max score change {int8['max_abs_score_diff']:.4f}"
        )
        speed = ", ".join(f"batch {bs} {row['int8_vs_fp32']:.2f}x" for bs, row in int8["latency"].items())
        print(
            f"exported int8 {info['file']} to {out}: against fp32 on {int8['rows']} dev rows {measure}; "
            f"size {int8['size_ratio']:.2f}x of fp32; latency {speed} of fp32"
        )
        return
    checked = ", ".join(
        f"{k} {v:.2e}" if isinstance(v, float) else f"{k} {v}" for k, v in info["parity"].items()
    )
    print(f"exported {info['file']} to {out} (parity vs PyTorch: {checked})")


def _predict(ns: argparse.Namespace) -> None:
    from adabert.deploy.predict import predict_file

    summary = predict_file(
        ns.model, ns.input, ns.output, ns.batch_size, ns.max_length, ns.text_columns, ns.format
    )
    rate = summary["examples_per_s"]
    print(
        f"{summary['rows']} rows predicted in {summary['seconds']:.2f}s ({rate} examples/s, "
        f"{summary['runtime']}) -> {summary['output']}"
    )
    if "metrics" in summary:
        scores = ", ".join(f"{k} {v:.4f}" for k, v in summary["metrics"].items())
        print(f"metrics on the input's labels: {scores}")


PIPELINE_DESCRIPTION = """\
Run every stage, task to deployable model, into one run directory (one folder per stage):
  teacher/   fine-tune the teacher (--teacher DIR: use an already fine-tuned one instead)
  store/     per-layer probes and the knowledge store
  search/    architecture search and the derived genotype
  student/   the student, trained from the searched supernet's weights (--no-from-supernet: scratch)
  compress/  optional compression (--compress, or a "compress" object in --config)
  eval/      metrics, loyalty, size and latency against the teacher and BERT-base
  export/    ONNX model checked against PyTorch, with its tokenizer and config
then RUN_DIR/report.md and the self-contained RUN_DIR/report.html, and RUN_DIR/pipeline.json (status
and seconds per stage).

Running it again skips every stage whose settings and upstream stages are unchanged (each folder's
stage.json records them), re-runs a changed stage and everything after it, and continues an
interrupted search or student training where it stopped.

Budgets (--budget; your stage settings override them):
{budgets}

Stage settings: --set STAGE.KEY=VALUE (repeatable; STAGE is finetune, probe, search, train, compress
or evaluate; KEY is a setting of that stage, as in its --help with underscores; VALUE is JSON or
plain text), or per-stage objects in --config FILE, e.g.
  {{"task": "sst2", "data_dir": "GLUE", "run_dir": "runs/sst2", "budget": "quick",
   "search": {{"epochs": 8}}, "train": {{"epochs": 12}}, "compress": {{"methods": "svd"}}}}
The paths between stages are set by the pipeline.

Your own data instead of a GLUE task: --train-file, --dev-file, --text-columns, --label-column (see
"your own data" below); the task's definition goes into the store, so the later stages need nothing.

Examples:
  adabert pipeline --task sst2 --data-dir GLUE --run-dir runs/sst2
  adabert pipeline --train-file train.csv --dev-file dev.csv --text-columns review \
      --label-column sentiment --run-dir runs/reviews
  adabert pipeline --config sst2.json --set search.beta=0 --compress
  adabert pipeline --task sst2 --data-dir GLUE --run-dir runs/sst2-b --teacher runs/sst2/teacher
  adabert report runs/sst2
"""


def _parse_stage_setting(text: str) -> tuple[str, str, Any]:
    """'search.epochs=3' -> ('search', 'epochs', 3); the value is JSON when it parses, else text."""
    target, sep, raw = text.partition("=")
    stage, dot, key = target.strip().partition(".")
    if not sep or not dot or not key:
        raise cfgmod.ConfigError(f"--set {text!r}: expected STAGE.KEY=VALUE, e.g. search.epochs=8")
    if stage not in cfgmod.PIPELINE_STAGE_FIELDS:
        raise cfgmod.ConfigError(
            f"--set {text!r}: unknown stage {stage!r}; stages: {', '.join(cfgmod.PIPELINE_STAGE_FIELDS)}"
        )
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return stage, key.strip().replace("-", "_"), value


def _pipeline_config(ns: argparse.Namespace) -> cfgmod.PipelineConfig:
    import dataclasses

    base = cfgmod.PipelineConfig.load(ns.config) if ns.config else None
    cfg = cfgmod.from_args(cfgmod.PipelineConfig, ns, base)
    stages: dict[str, dict[str, Any] | None] = {}
    if ns.enable_compress is not None:
        stages["compress"] = (cfg.compress or {}) if ns.enable_compress else None
    for text in ns.stage_settings:
        stage, key, value = _parse_stage_setting(text)
        current = stages.get(stage, getattr(cfg, stage))
        stages[stage] = {**(current or {}), key: value}
    return dataclasses.replace(cfg, **stages) if stages else cfg


def _pipeline(ns: argparse.Namespace) -> None:
    from adabert.pipeline import run_pipeline

    result = run_pipeline(_pipeline_config(ns))
    width = max(len(name) for name in result["stages"])
    for name, info in result["stages"].items():
        seconds = f"{info['seconds']:.1f}s" if info.get("seconds") is not None else ""
        print(f"  {name:<{width}}  {info['status']:<9} {seconds}")
    print(f"report: {result['report']['md']} and {result['report']['html']}")


def _report(ns: argparse.Namespace) -> None:
    from adabert.report.document import build_report

    md_path, html_path = build_report(ns.run_dir)
    print(f"report written to {md_path} and {html_path}")


def _add_pipeline(commands: Any) -> None:
    from adabert.pipeline import describe_budgets

    parser = commands.add_parser(
        "pipeline",
        help="every stage, task to deployable model, into one run directory, with a report",
        description=PIPELINE_DESCRIPTION.format(budgets=describe_budgets()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="JSON file of pipeline settings with per-stage objects (flags override it)",
    )
    cfgmod.add_arguments(parser, cfgmod.PipelineConfig, skip=cfgmod.PIPELINE_STAGE_FIELDS)
    parser.add_argument(
        "--set",
        dest="stage_settings",
        action="append",
        default=[],
        metavar="STAGE.KEY=VALUE",
        help="a setting of one stage, e.g. search.epochs=8 or compress.methods=svd (repeatable)",
    )
    parser.add_argument(
        "--compress",
        dest="enable_compress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run the compression stage on the student (default: only when the config file has 'compress')",
    )
    parser.set_defaults(handler=_pipeline)

    report = commands.add_parser(
        "report",
        help="(re)build a run directory's report.md and report.html",
        description="Build RUN_DIR/report.md and the self-contained RUN_DIR/report.html from a pipeline run "
        "directory (works on partial runs: missing parts are marked as such).",
    )
    report.add_argument("run_dir", metavar="RUN_DIR", help="the pipeline's run directory")
    report.set_defaults(handler=_report)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adabert",
        description="Compress a BERT-family model into a small task-specific student by "
        "differentiable architecture search (AdaBERT), distillation and compression.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    teacher = commands.add_parser(
        "teacher",
        help="fine-tune a teacher, train probes, write the store",
        description="Teacher stages: 'finetune', then 'probe'.",
    )
    teacher_commands = teacher.add_subparsers(dest="teacher_command", metavar="STAGE", required=True)
    _stage(
        teacher_commands,
        "finetune",
        cfgmod.FinetuneConfig,
        _finetune,
        "fine-tune a BERT-family checkpoint on a task",
    )
    _stage(
        teacher_commands,
        "probe",
        cfgmod.ProbeConfig,
        _probe,
        "train per-layer probes and write the knowledge store",
    )

    _stage(
        commands,
        "search",
        cfgmod.SearchConfig,
        _search,
        "search a student architecture (genotype) from a knowledge store",
    )
    _stage(
        commands,
        "train",
        cfgmod.TrainConfig,
        _train,
        "train a compact student from a genotype with distillation",
    )
    _stage(
        commands,
        "evaluate",
        cfgmod.EvalConfig,
        _evaluate,
        "task metrics, loyalty, size, FLOPs and latency against the teacher and BERT-base",
    )

    _stage(
        commands,
        "compress",
        cfgmod.CompressConfig,
        _compress,
        "prune / factorize a model (student or teacher) with distillation from the store",
        examples="""\
        Examples:
          # LadaBERT on a searched student: SVD at half rank (its embedding table too), then
          # magnitude pruning of the factors to 50% over 10 rounds, KD from the store throughout
          adabert compress --model runs/sst2/student --store runs/sst2/store \\
              --output-dir runs/sst2/compressed --methods svd,magnitude --embeddings
          # half a searched student's hidden dimensions (embedding columns with their LayerNorm
          # entries), removed physically: a student half as wide
          adabert compress --model runs/sst2/student --store runs/sst2/store \\
              --output-dir runs/sst2/student-narrow --methods block --embeddings --group col
          # half the teacher's feed-forward neurons, cut gradually under the group lasso, then
          # removed physically (the model really shrinks and gets faster)
          adabert compress --model runs/sst2/teacher --store runs/sst2/store \\
              --output-dir runs/sst2/teacher-ffn --methods block \\
              --exclude '(classifier|pooler|attention|output\\.dense)' --kd-epochs 2
          # block-sparse weights: 1 x 32 row segments of every layer, 75% pruned
          adabert compress --model runs/sst2/teacher --store runs/sst2/store \\
              --output-dir runs/sst2/teacher-block --methods block --block-size 32 32 \\
              --target-sparsity 0.75
        The output folder reloads with AutoModelForSequenceClassification.from_pretrained and holds
        report.md / report.json: metric, loyalty, size and latency before and after, in one run.
        """,
    )

    _add_pipeline(commands)

    genotype = commands.add_parser("genotype", help="inspect genotype files, or write one by hand")
    genotype_commands = genotype.add_subparsers(dest="genotype_command", metavar="ACTION", required=True)
    show = genotype_commands.add_parser(
        "show",
        help="print a genotype and draw its cell",
        description="Print a genotype and draw its cell (PNG or SVG).",
    )
    show.add_argument("file", help="genotype JSON file")
    show.add_argument("--output", help="picture path, .png or .svg (default: beside the file)")
    show.add_argument("--no-draw", action="store_true", help="only print")
    show.set_defaults(handler=_genotype_show)
    new = genotype_commands.add_parser(
        "new",
        help="write a hand-made genotype that 'adabert train' accepts",
        description=textwrap.dedent(
            """\
            Write a genotype by hand: the space, the depth and each kept edge of the cell (one cell,
            repeated --cells times). Nodes are numbered as 'adabert genotype show' prints them: the
            space's input nodes first (0 and 1: the two previous cells), then its intermediate nodes.
            Every intermediate node needs an incoming edge, edges go forward (SRC < DST), and the
            space's zero op is no edge. 'adabert spaces' lists each space's nodes and ops."""
        ),
        epilog="Example (adabert_cnn: inputs 0, 1; intermediate nodes 2, 3, 4):\n"
        "  adabert genotype new --space adabert_cnn --cells 3 --edge 0 2 conv3 --edge 1 2 max_pool3 \\\n"
        "      --edge 2 3 dil_conv5 --edge 1 4 conv7 --edge 3 4 identity --output my_cell.json\n"
        "  adabert train --genotype my_cell.json --store runs/sst2/store --output-dir runs/sst2/mine",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    new.add_argument("--space", required=True, help="search space name (see 'adabert spaces')")
    new.add_argument("--cells", type=int, required=True, help="depth: number of stacked cells")
    new.add_argument(
        "--edge",
        nargs=3,
        action="append",
        required=True,
        metavar=("SRC", "DST", "OP"),
        help="a kept edge: node DST sums OP(node SRC) (repeat for each edge)",
    )
    new.add_argument("--hidden-size", type=int, help="cell width (default: the space's)")
    new.add_argument(
        "--store",
        help="knowledge store: record its teacher's vocabulary and positions, which 'train' then checks",
    )
    new.add_argument("--output", required=True, help="genotype JSON file to write")
    new.set_defaults(handler=_genotype_new)

    spaces = commands.add_parser(
        "spaces",
        help="list search spaces, their ops and costs",
        description="List the registered search spaces with each op's cost.",
    )
    spaces.add_argument("--seq-len", type=int, default=128, help="sequence length for FLOPs (default: 128)")
    spaces.add_argument(
        "--profile",
        action="store_true",
        help="measure (or show the cached) latency table of --space on this machine: every op, the "
        "student's fixed and per-cell costs and the store's teacher, at batch 1 and 32 (the costs the "
        "search's budget uses)",
    )
    spaces.add_argument("--space", default="adabert_cnn", help="space to profile (default: adabert_cnn)")
    spaces.add_argument("--store", help="knowledge store whose teacher and vocabulary the profile uses")
    spaces.add_argument("--threads", type=int, default=1, help="torch threads to measure with (default: 1)")
    spaces.add_argument("--refresh", action="store_true", help="measure again even when a table is cached")
    spaces.set_defaults(handler=_spaces)

    export = commands.add_parser(
        "export",
        help="export a model to ONNX (fp32 or int8) or TorchScript",
        description="Export a saved model into a deployable folder: the model file, its tokenizer, config, "
        "task, export.json with the checks' figures, and a README.md model card. fp32 must match PyTorch "
        "(max |logit difference| <= --atol); int8 (onnxruntime dynamic quantization) must agree with the "
        "fp32 export on real dev rows. The folder is written beside its final place and renamed into it "
        "only when complete, so an interrupted export leaves the previous one (or none).",
    )
    export.add_argument("--model", required=True, help="model directory (save_pretrained layout)")
    export.add_argument("--format", choices=["onnx", "torchscript"], default="onnx", help="(default: onnx)")
    export.add_argument(
        "--quantize", choices=["int8"], help="int8 weights (onnxruntime dynamic quantization; needs --store)"
    )
    export.add_argument(
        "--output-dir",
        help="the export folder, replaced as a whole (default: MODEL-onnx, MODEL-onnx-int8, ...)",
    )
    export.add_argument(
        "--store", help="knowledge store: parity (int8: agreement) on real dev rows; ships its tokenizer"
    )
    export.add_argument(
        "--seq-len", type=int, help="example sequence length (default: the store's, else 128)"
    )
    export.add_argument("--atol", type=float, default=1e-4, help="fp32 parity tolerance (default: 1e-4)")
    export.add_argument(
        "--min-agreement",
        type=float,
        default=0.99,
        help="int8: least fraction of dev rows labelled as by fp32 (regression: Pearson r) (default: 0.99)",
    )
    export.add_argument(
        "--check-rows", type=int, help="int8: compare on the first N dev rows (default: all of them)"
    )
    export.add_argument(
        "--latency-repeats",
        type=int,
        default=20,
        help="int8: timed calls per model and batch size, fp32 and int8 interleaved (default: 20)",
    )
    export.set_defaults(handler=_export)

    predict = commands.add_parser(
        "predict",
        help="run a model on a CSV / TSV / JSON Lines file",
        description="Predict every row of a file with a student, compressed model, teacher or export folder. "
        "The output keeps the input's columns and adds 'prediction' (the label, or the score) and one "
        "'prob_<label>' column per class; formats follow the file extensions. When the input has the "
        "task's label column, the task's metrics are printed too.",
        epilog="Example: adabert predict --model runs/reviews/export --input new.csv --output predicted.csv",
    )
    predict.add_argument("--model", required=True, help="model or export folder")
    predict.add_argument("--input", required=True, help="rows to predict: .csv, .tsv, .jsonl or .json")
    predict.add_argument("--output", required=True, help="where to write them: .csv, .tsv or .jsonl")
    predict.add_argument(
        "--text-columns", metavar="COL[,COL2]", help="text column(s) (default: the model's task's)"
    )
    predict.add_argument(
        "--format", choices=["csv", "tsv", "json"], help="input format (default: by extension)"
    )
    predict.add_argument("--batch-size", type=int, default=32, help="rows per batch (default: 32)")
    predict.add_argument(
        "--max-length",
        type=int,
        help="maximum tokens per row (default: the model's task's, else the model's)",
    )
    predict.set_defaults(handler=_predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command. A user error (adabert.errors) is one line on stderr and exit status 2; a bug
    keeps its traceback (so does every error with --log-level DEBUG)."""
    from adabert.errors import describe, is_user_error

    parser = build_parser()
    ns = parser.parse_args(argv)
    logging.basicConfig(level=ns.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_library_bars()
    try:
        ns.handler(ns)
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM in the pipeline: what was done is kept
        print(f"adabert: {str(err) or 'interrupted'}", file=sys.stderr)
        return 130
    except Exception as err:
        if ns.log_level == "DEBUG" or not is_user_error(err):
            raise
        print(f"adabert: error: {describe(err)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
