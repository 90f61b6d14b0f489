"""int8 against fp32 ONNX for a run's student and teacher: agreement, size and latency, one table.

For each model: the fp32 export (checked against PyTorch) and the int8 export (checked against fp32
on every dev row of the store; size and latency at batch 1 and 32 against fp32, interleaved call by
call in the same run), both with ``adabert.deploy.export.export_model``, as ``adabert export`` does.

    OMP_NUM_THREADS=1 python benchmarks/quantize.py --run-dir runs/sst2
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from adabert.deploy.export import export_model


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run-dir", type=Path, required=True, help="a pipeline run directory")
    parser.add_argument("--models", default="student,teacher", help="model folders of the run")
    parser.add_argument("--repeats", type=int, default=50, help="timed calls per model and batch size")
    args = parser.parse_args()
    store = args.run_dir / "store"
    rows = []
    for name in args.models.split(","):
        model = args.run_dir / name
        start = time.perf_counter()
        fp32 = export_model(model, args.run_dir / f"{name}-onnx", store)
        int8 = export_model(
            model,
            args.run_dir / f"{name}-onnx-int8",
            store,
            quantize="int8",
            min_agreement=0.0,
            latency_repeats=args.repeats,
        )["int8"]
        seconds = time.perf_counter() - start
        lat = int8["latency"]
        main = next(iter(int8["fp32_metrics"]))
        cells = [
            name,
            f"{fp32['parity']['dev_max_abs_diff']:.1e}",
            str(int8["rows"]),
            f"{int8['label_agreement']:.4f}",
            f"{int8['max_abs_prob_diff']:.4f}",
            " -> ".join(f"{int8[f'{k}_metrics'][main]:.4f}" for k in ("fp32", "int8")),
            f"{int8['fp32_bytes'] / 1e6:.2f} -> {int8['int8_bytes'] / 1e6:.2f} MB "
            f"({int8['size_ratio']:.2f}x)",
            *(
                f"{lat[bs]['fp32_ms']:.2f} -> {lat[bs]['int8_ms']:.2f} ms ({lat[bs]['int8_vs_fp32']:.2f}x)"
                for bs in ("1", "32")
            ),
            str(lat["1"]["threads"]),
            f"{seconds:.0f}",
        ]
        rows.append("| " + " | ".join(cells) + " |")
    header = [
        "model",
        "fp32 vs PyTorch, max abs logit diff (32 dev rows)",
        "dev rows",
        "int8 label agreement with fp32",
        "int8 max prob diff",
        "dev metric fp32 -> int8",
        "size fp32 -> int8",
        "latency batch 1, fp32 -> int8",
        "latency batch 32, fp32 -> int8",
        "threads",
        "seconds",
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    print("\n".join(rows))


if __name__ == "__main__":
    main()
