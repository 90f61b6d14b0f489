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
    Or every stage in one run directory, skipping stages already done:
      adabert pipeline         --task sst2 --data-dir GLUE --run-dir runs/sst2
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
    parser.set_defaults(handler=lambda ns: run(_config(cls, ns)))
    return parser


def _config(cls: type, ns: argparse.Namespace) -> Any:
    base = cfgmod.load_config(cls, ns.config) if ns.config else None
    return cfgmod.from_args(cls, ns, base)


def _finetune(cfg: cfgmod.FinetuneConfig) -> None:
    from adabert.teacher import finetune

    _print_json(finetune(cfg))


def _probe(cfg: cfgmod.ProbeConfig) -> None:
    from adabert.teacher import probe

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
    from adabert.distributed import is_main
    from adabert.train import train_student

    result = train_student(cfg)
    if is_main():
        _print_json(result)


def _evaluate(cfg: cfgmod.EvalConfig) -> None:
    from adabert.evaluate import run_evaluation

    report = run_evaluation(cfg)
    print(f"report written to {cfg.output_dir}/report.md")
    _print_json(report.get("metrics", {}))


def _compress(cfg: cfgmod.CompressConfig) -> None:
    from adabert.compress import compress

    report = compress(cfg)
    print(f"compressed model and report written to {cfg.output_dir}")
    _print_json(report.get("metrics", {}))


def _genotype_show(ns: argparse.Namespace) -> None:
    from adabert.genotype import Genotype, draw_genotype

    genotype = Genotype.load(ns.file)
    print(genotype)
    if not ns.no_draw:
        path = ns.output or str(ns.file).rsplit(".", 1)[0] + ".png"
        print(f"picture written to {draw_genotype(genotype, path)}")


def _spaces(ns: argparse.Namespace) -> None:
    from search_spaces import get_op, get_space, list_spaces
    from search_spaces.registry import op_cost

    for name in list_spaces():
        space = get_space(name)
        print(f"{space.name}: {space.description}")
        print(
            f"  {space.num_input_nodes} input + {space.num_nodes} intermediate nodes, "
            f"{len(space.edges)} edges, up to {space.max_cells} cells, hidden {space.hidden_size}"
        )
        for op in space.ops:
            cost = op_cost(op, space.hidden_size, ns.seq_len)
            print(
                f"  {op:<12} {cost.params:>9,d} params {cost.flops:>13,d} FLOPs@{ns.seq_len}  "
                f"{get_op(op).description}"
            )


def _export(ns: argparse.Namespace) -> None:
    from adabert.export import export_model

    out = ns.output_dir or ns.model
    info = export_model(ns.model, out, ns.store, ns.format, ns.seq_len, ns.atol)
    checked = ", ".join(
        f"{k} {v:.2e}" if isinstance(v, float) else f"{k} {v}" for k, v in info["parity"].items()
    )
    print(f"exported {info['file']} to {out} (parity vs PyTorch: {checked})")


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

Examples:
  adabert pipeline --task sst2 --data-dir GLUE --run-dir runs/sst2
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
    from adabert.report import build_report

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

    genotype = commands.add_parser("genotype", help="inspect genotype files")
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

    spaces = commands.add_parser(
        "spaces",
        help="list search spaces, their ops and costs",
        description="List the registered search spaces with each op's cost.",
    )
    spaces.add_argument("--seq-len", type=int, default=128, help="sequence length for FLOPs (default: 128)")
    spaces.set_defaults(handler=_spaces)

    export = commands.add_parser(
        "export",
        help="export a model to ONNX or TorchScript",
        description="Export a saved model into a deployable folder (model file, tokenizer, config, "
        "export.json), moved into place only once its outputs match PyTorch's.",
    )
    export.add_argument("--model", required=True, help="model directory (save_pretrained layout)")
    export.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    export.add_argument("--output-dir", help="output folder (default: the model directory)")
    export.add_argument(
        "--store", help="knowledge store: also check parity on 32 real dev rows; ships its tokenizer"
    )
    export.add_argument(
        "--seq-len", type=int, help="example sequence length (default: the store's, else 128)"
    )
    export.add_argument("--atol", type=float, default=1e-4, help="parity tolerance (default: 1e-4)")
    export.set_defaults(handler=_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    logging.basicConfig(level=ns.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        ns.handler(ns)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        if ns.log_level == "DEBUG":
            raise
        print(f"adabert: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
