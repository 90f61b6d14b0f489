"""Compare compression methods on one model, each with KD from its knowledge store.

On copies of the same model (an AdaBERT student or the fine-tuned teacher) it runs, by default:

- ``block``: block-structured pruning with reweighted group lasso to ``--sparsity`` (50%),
- ``svd``: truncated-SVD factorization at half rank (``--rank-ratio``),
- ``hybrid``: SVD at half rank, then iterative magnitude pruning of the factors (LadaBERT),

(``hybrid-block``, SVD then block pruning of the factors, is available with ``--runs``). Each run is
one ``adabert.compress.compress`` call that writes a reloadable model and its report under
``OUTPUT_DIR/<run>``. Then the original model, every compressed model (reloaded from disk) and the
teacher are timed together in ONE interleaved ``compare_latency`` run, so the speedups are measured
on the same machine, inputs and threads. The table (dev metric before / after, loyalty, parameters,
density, file size, FLOPs, latency) is printed and written to ``OUTPUT_DIR/results.{json,md}``.

    python benchmarks/compress.py --model runs/sst2/student --store runs/sst2/store \\
        --output-dir runs/sst2/compress_bench [--runs block svd hybrid] [--kd-epochs 1] \\
        [--retrain-epochs 1] [--hidden-kd 1] [--train-limit N] [--embeddings] [--exclude REGEX]
        [--batch-sizes 1 32] [--seq-len 128] [--threads N] [--reuse]
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import torch

from adabert.compress import compress
from adabert.config import CompressConfig
from adabert.io import atomic_write_json, atomic_write_text
from adabert.report.evaluate import compare_latency, load_classifier
from adabert.teacher.store import KnowledgeStore

RUNS: dict[str, dict[str, Any]] = {
    "block": {"methods": "block"},
    "svd": {"methods": "svd"},
    "hybrid": {"methods": "svd,magnitude"},
    "hybrid-block": {"methods": "svd,block"},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Example: python benchmarks/compress.py --model runs/sst2/student --store runs/sst2/store "
        "--output-dir runs/sst2/compress_bench",
    )
    parser.add_argument("--model", required=True, help="model directory to compress (student or teacher)")
    parser.add_argument("--store", required=True, help="knowledge store directory")
    parser.add_argument("--output-dir", required=True, help="one sub-directory per run, plus results.*")
    parser.add_argument("--runs", nargs="+", choices=list(RUNS), default=["block", "svd", "hybrid"])
    parser.add_argument("--sparsity", type=float, default=0.5, help="target sparsity (default: 0.5)")
    parser.add_argument("--rank-ratio", type=float, default=0.5, help="SVD rank fraction (default: 0.5)")
    parser.add_argument("--block-size", type=int, nargs=2, default=(0, 0), help="block rows cols (0 = all)")
    parser.add_argument("--group", choices=["row", "col"], default="row")
    parser.add_argument(
        "--lasso-lambda", type=float, default=CompressConfig.lasso_lambda, help="group-lasso weight (block)"
    )
    parser.add_argument("--kd-epochs", type=float, default=1.0, help="KD epochs per method (default: 1)")
    parser.add_argument("--retrain-epochs", type=float, default=1.0, help="fixed-mask KD epochs (default: 1)")
    parser.add_argument("--prune-rounds", type=int, default=10, help="pruning rounds (default: 10)")
    parser.add_argument(
        "--hidden-kd",
        type=float,
        default=CompressConfig.hidden_kd,
        help="weight of the hidden-state MSE against the original model; 0 = logits KD only "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--exclude",
        default=CompressConfig.exclude,
        help="regex of module names left alone, e.g. to block-prune only feed-forward neurons: "
        r"'(classifier|pooler|attention|output\.dense)' (default: %(default)s)",
    )
    parser.add_argument(
        "--embeddings", action="store_true", help="compress the embedding tables too (an AdaBERT student)"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="training batch size (default: 32)")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default: per model kind)")
    parser.add_argument("--train-limit", type=int, default=None, help="first N training rows only")
    parser.add_argument("--device", default="auto", help="training device (default: auto)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32], help="latency batch sizes")
    parser.add_argument("--seq-len", type=int, default=128, help="latency / FLOPs sequence length")
    parser.add_argument("--repeats", type=int, default=20, help="timed repeats per measurement")
    parser.add_argument("--warmup", type=int, default=3, help="untimed warm-up calls")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="do not compress: time again the models already under OUTPUT_DIR (e.g. on a quiet machine)",
    )
    return parser.parse_args(argv)


def load_report(out: Path, run: str) -> dict[str, Any]:
    path = out / run / "report.json"
    if not path.is_file():
        raise SystemExit(f"--reuse: {path} not found; run without --reuse first to compress {run!r}")
    return json.loads(path.read_text())


def run_config(args: argparse.Namespace, run: str) -> CompressConfig:
    return CompressConfig(
        model=args.model,
        store=args.store,
        output_dir=str(Path(args.output_dir) / run),
        target_sparsity=args.sparsity,
        rank_ratio=args.rank_ratio,
        block_size=tuple(args.block_size),
        group=args.group,
        lasso_lambda=args.lasso_lambda,
        kd_epochs=args.kd_epochs,
        retrain_epochs=args.retrain_epochs,
        prune_rounds=args.prune_rounds,
        hidden_kd=args.hidden_kd,
        exclude=args.exclude,
        embeddings=args.embeddings,
        batch_size=args.batch_size,
        lr=args.lr,
        train_limit=args.train_limit,
        device=args.device,
        seed=args.seed,
        seq_len=args.seq_len,
        skip_latency=True,  # timed below, all models in one run
        **RUNS[run],
    )


def markdown(results: dict[str, Any]) -> str:
    metric, bs = results["metric"], results["batch_sizes"]
    header = ["model", "methods", f"dev {metric}", "label loyalty", "params", "non-emb params"]
    header += ["density", "file size", "sparse estimate", "MFLOPs/ex"]
    header += [f"ms (bs {b})" for b in bs] + [f"speedup vs original (bs {b})" for b in bs]
    lines = [
        f"# Compression benchmark: {results['task']} ({results['model']})",
        "",
        f"Latency: seq_len {results['seq_len']}, one interleaved run of all models "
        f"({results['threads']} threads). Dev {metric} before compression: {results['before']:.4f}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for name, row in results["rows"].items():
        cells = [
            name,
            row.get("methods", "—"),
            f"{row['metric']:.4f}" if row.get("metric") is not None else "—",
            f"{row['label_loyalty']:.4f}" if row.get("label_loyalty") is not None else "—",
            f"{row['params']:,}" if row.get("params") is not None else "—",
            f"{row['non_embedding']:,}" if row.get("non_embedding") is not None else "—",
            f"{row['density']:.3f}" if row.get("density") is not None else "—",
            f"{row['file_bytes'] / 1024:.1f} KB" if row.get("file_bytes") else "—",
            f"{row['sparse_bytes'] / 1024:.1f} KB" if row.get("sparse_bytes") else "—",
            f"{row['flops'] / 1e6:.2f}" if row.get("flops") else "—",
        ]
        cells += [f"{row['latency'][str(b)]['median_ms']:.2f}" if row.get("latency") else "—" for b in bs]
        cells += [
            f"{row['latency'][str(b)].get('speedup_vs_original', 1.0):.2f}×" if row.get("latency") else "—"
            for b in bs
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    store = KnowledgeStore.open(args.store)
    metric = store.task.main_metric
    if args.reuse:
        reports = {run: load_report(out, run) for run in args.runs}
    else:
        reports = {run: compress(run_config(args, run)) for run in args.runs}

    first = next(iter(reports.values()))
    before = first["metrics"]["original"]
    rows: dict[str, dict[str, Any]] = {
        "original": {
            "methods": "—",
            "metric": before[metric],
            "label_loyalty": before.get("label_loyalty"),
            "params": first["size"]["original"]["total"],
            "non_embedding": first["size"]["original"]["non_embedding"],
            "density": 1.0,
            "file_bytes": first["size"]["original"]["file_bytes"],
            "flops": first["size"]["original"]["flops_per_example"],
        }
    }
    for run, report in reports.items():
        size = report["size"]["compressed"]
        rows[run] = {
            "methods": report["methods"],
            "metric": report["metrics"]["compressed"][metric],
            "label_loyalty": report["metrics"]["compressed"].get("label_loyalty"),
            "params": size["total"],
            "non_embedding": size["non_embedding"],
            "density": size["layer_density"],
            "file_bytes": size["file_bytes"],
            "sparse_bytes": size["sparse_file_bytes_estimate"],
            "flops": size["flops_per_example"],
        }

    models = {"original": load_classifier(args.model)}
    models.update({run: load_classifier(report["model_path"]) for run, report in reports.items()})
    teacher_dir = first["teacher_path"]
    if not first["teacher_is_original"] and Path(teacher_dir).is_dir():
        models["teacher"] = load_classifier(teacher_dir)
        rows["teacher"] = {"methods": "—", "metric": first["metrics"]["teacher"][metric]}
    latency = compare_latency(
        models, args.batch_sizes, args.seq_len, args.repeats, args.warmup, args.threads, store.task.is_pair
    )
    for name, per_bs in latency.items():
        rows[name]["latency"] = per_bs
    results = {
        "task": store.task.name,
        "model": args.model,
        "metric": metric,
        "before": before[metric],
        "batch_sizes": args.batch_sizes,
        "seq_len": args.seq_len,
        "threads": next(iter(latency["original"].values()))["threads"],
        "rows": rows,
        "settings": vars(args),
    }
    atomic_write_json(out / "results.json", results)
    text = markdown(results)
    atomic_write_text(out / "results.md", text)
    print(text)
    print(f"written to {out / 'results.json'} and {out / 'results.md'}")
    return results


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
