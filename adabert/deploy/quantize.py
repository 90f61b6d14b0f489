"""int8 ONNX: onnxruntime dynamic quantization, and the checks that fit a quantized model.

Dynamic quantization stores weights as int8 and quantizes activations on the fly, so logits move by
far more than the fp32 export's 1e-4 tolerance. What matters for a classifier is whether it still
*decides* the same: the check is the label agreement with the fp32 model on real dev rows, the largest
change of any class probability, and (regression) the largest score change and the correlation with
the fp32 scores. Size and latency are measured against the fp32 file in the same run, interleaved
call by call, so machine drift falls on both alike.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from adabert.deploy.runtime import ExportError, onnx_session, run_onnx

# ConvInteger (what Conv becomes) has no CPU kernel for int8 weights in onnxruntime, and a student's
# weights are nearly all its embedding tables (Gather) anyway: quantize the matrix products and tables.
QUANTIZED_OPS = ("MatMul", "Gemm", "Gather", "Attention")
# One scale per output channel, not per tensor: on the SST-2 MiniLM teacher (benchmarks/RESULTS.md) it
# raised the label agreement with fp32 from 94.4% to 97.8% at the same size.
PER_CHANNEL = True
# 7-bit weights: x86 int8 kernels without VNNI can saturate on full-range int8 products; on the SST-2
# MiniLM teacher it raised the agreement from 98.2% to 98.5% at the same size (benchmarks/RESULTS.md).
REDUCE_RANGE = True


def quantize_int8(fp32_path: str | Path, int8_path: str | Path) -> Path:
    """Write the dynamic int8 quantization of an fp32 ONNX file (int8 weights, one scale per channel)."""
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as e:
        raise ExportError("int8 export needs the 'export' extra: pip install 'adabert[export]'") from e
    try:
        quantize_dynamic(
            str(fp32_path),
            str(int8_path),
            weight_type=QuantType.QInt8,
            op_types_to_quantize=list(QUANTIZED_OPS),
            per_channel=PER_CHANNEL,
            reduce_range=REDUCE_RANGE,
        )
    except Exception as e:  # onnxruntime raises plain exceptions of many kinds
        raise ExportError(f"int8 quantization of {Path(fp32_path).name} failed: {e}") from e
    return Path(int8_path)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def agreement(fp32: np.ndarray, int8: np.ndarray, regression: bool) -> dict[str, float]:
    """How far int8 logits [N, C] stray from fp32 ones: agreement + max prob diff, or score diff + r."""
    fp32, int8 = np.asarray(fp32, np.float64), np.asarray(int8, np.float64)
    out: dict[str, float] = {"rows": int(len(fp32)), "max_abs_logit_diff": float(np.max(np.abs(fp32 - int8)))}
    if regression:
        a, b = fp32[:, 0], int8[:, 0]
        out["max_abs_score_diff"] = float(np.max(np.abs(a - b)))
        out["pearson"] = float(np.corrcoef(a, b)[0, 1]) if len(a) > 1 and a.std() and b.std() else math.nan
    else:
        out["label_agreement"] = float(np.mean(fp32.argmax(-1) == int8.argmax(-1)))
        out["max_abs_prob_diff"] = float(np.max(np.abs(_softmax(fp32) - _softmax(int8))))
    return out


def check_int8(
    fp32_path: Path,
    int8_path: Path,
    batches: Sequence[Mapping[str, Any]],
    task: Any,
    labels: np.ndarray,
    min_agreement: float,
) -> dict[str, Any]:
    """Run both files on the real ``batches`` and compare; ``ExportError`` when the int8 model decides
    differently on more than ``1 - min_agreement`` of the rows (regression: Pearson r below it).

    Also scores both on the rows' ``labels`` with the task's metrics (``task``: a ``TaskSpec``).
    """
    from adabert.tasks import compute_metrics, predictions_from_logits

    fp32_session, int8_session = onnx_session(fp32_path), onnx_session(int8_path)
    fp32 = np.concatenate([run_onnx(fp32_session, b, fp32_path.name) for b in batches])
    int8 = np.concatenate([run_onnx(int8_session, b, int8_path.name) for b in batches])
    result: dict[str, Any] = agreement(fp32, int8, task.is_regression)
    for name, logits in (("fp32", fp32), ("int8", int8)):
        result[f"{name}_metrics"] = compute_metrics(task, predictions_from_logits(task, logits), labels)
    measure = "pearson" if task.is_regression else "label_agreement"
    if not result[measure] >= min_agreement:  # also NaN
        main = task.main_metric
        raise ExportError(
            f"the int8 model strays from fp32 on {result['rows']} dev rows: {measure} "
            f"{result[measure]:.4f} < {min_agreement} (--min-agreement); dev {main} "
            f"{result['fp32_metrics'][main]:.4f} fp32, {result['int8_metrics'][main]:.4f} int8. Keep the "
            "fp32 export, or accept this with a lower --min-agreement"
        )
    return result


def compare_onnx_latency(
    paths: Mapping[str, Path],
    make_batch: Callable[[int], Mapping[str, Any]],
    batch_sizes: Sequence[int] = (1, 32),
    repeats: int = 20,
    warmup: int = 3,
    threads: int | None = None,
) -> dict[str, dict[str, float]]:
    """Median milliseconds per call of each file at each batch size, interleaved call by call.

    Returns ``{str(batch_size): {"<name>_ms": median, ..., "threads": n}}``.
    """
    if threads is None:
        import torch

        threads = torch.get_num_threads()
    sessions = {name: onnx_session(path, threads) for name, path in paths.items()}
    names = list(sessions)
    result: dict[str, dict[str, float]] = {}
    for bs in batch_sizes:
        batch = make_batch(bs)
        times: dict[str, list[float]] = {n: [] for n in names}
        for name in names:
            for _ in range(warmup):
                run_onnx(sessions[name], batch)
        for r in range(repeats):
            for i in range(len(names)):
                name = names[(r + i) % len(names)]
                start = time.perf_counter()
                run_onnx(sessions[name], batch)
                times[name].append(time.perf_counter() - start)
        row = {f"{n}_ms": float(np.median(times[n]) * 1000) for n in names}
        result[str(bs)] = {**row, "threads": threads, "repeats": repeats}
    return result
