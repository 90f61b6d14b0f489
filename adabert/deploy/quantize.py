"""int8 ONNX: onnxruntime quantization of the weights, and the checks that fit a quantized model.

int8 weights, with activations quantized on the fly for the int8 products, move the logits by
far more than the fp32 export's 1e-4 tolerance. What matters for a classifier is whether it still
*decides* the same: the check is the label agreement with the fp32 model on real dev rows, the largest
change of any class probability, and (regression) the largest score change and the correlation with
the fp32 scores. Size and latency are measured against the fp32 file in the same run, interleaved
call by call, so machine drift falls on both alike.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from adabert.deploy.runtime import ExportError, onnx_session, run_onnx

# Matrix products get int8 weights with one scale per block of BLOCK_SIZE input channels (onnxruntime's
# MatMulNBits at 8 bits), computed in int8 with activations quantized per block as well (accuracy level
# 4). Plain dynamic quantization, one activation scale per tensor, strayed from fp32 on 1.5-1.8% of the
# SST-2 dev rows for the MiniLM teacher, its error spread over every layer so that no set of layers kept
# fp32 removed it; per block it agreed on 99.7% (benchmarks/RESULTS.md).
BLOCK_SIZE = 32
ACCURACY_LEVEL = 4  # int8 compute; 0 dequantizes to fp32 first (more exact, slower than fp32)
# Embedding tables get int8 rows with one scale per row (token): a lookup, no int8 arithmetic. One scale
# per table (onnxruntime's dynamic quantization of Gather) moved 1.4% of a student's SST-2 dev labels,
# whose word table is nearly all its weights; per row it moved none (benchmarks/RESULTS.md).
# ConvInteger (what Conv would become) has no CPU kernel for int8 weights in onnxruntime: convolutions
# stay fp32.
METHOD = {
    "matmul": f"int8 weights per block of {BLOCK_SIZE} input channels (MatMulNBits, accuracy level "
    f"{ACCURACY_LEVEL})",
    "gather": "int8 rows, one scale per row",
    "other": "fp32",
}


def quantize_int8(fp32_path: str | Path, int8_path: str | Path) -> Path:
    """Write the int8 version of an fp32 ONNX file: block-wise int8 matrix products, int8 table rows."""
    try:
        import onnx
        from onnxruntime.quantization.matmul_nbits_quantizer import (
            DefaultWeightOnlyQuantConfig,
            MatMulNBitsQuantizer,
        )
    except ImportError as e:
        raise ExportError("int8 export needs the 'export' extra: pip install 'adabert[export]'") from e
    blocks = {"bits": 8, "block_size": BLOCK_SIZE, "is_symmetric": True, "accuracy_level": ACCURACY_LEVEL}
    blocks.update(op_types_to_quantize=("MatMul",), quant_axes=(("MatMul", 0),))
    # the quantizer logs a line per node at INFO: hundreds for a BERT
    loggers = [
        logging.getLogger(n) for n in list(logging.root.manager.loggerDict) if n.startswith("onnxruntime")
    ]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
        model = quantize_tables(onnx.load(str(fp32_path)))
        quantizer = MatMulNBitsQuantizer(model, algo_config=DefaultWeightOnlyQuantConfig(**blocks), **blocks)
        quantizer.process()
        quantizer.model.save_model_to_file(str(int8_path), use_external_data_format=False)
    except Exception as e:  # onnxruntime raises plain exceptions of many kinds
        raise ExportError(f"int8 quantization of {Path(fp32_path).name} failed: {e}") from e
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
    return Path(int8_path)


def quantize_tables(model: Any) -> Any:
    """Replace every float table looked up by a row Gather with int8 rows times a per-row scale.

    ``Gather(table, ids)`` becomes ``Cast(Gather(table_int8, ids)) * Gather(scale, ids)``, standard ONNX
    ops only; a table that any other node also reads is left as it is.
    """
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    tables = {t.name: t for t in graph.initializer if t.data_type == TensorProto.FLOAT and len(t.dims) == 2}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    nodes = []
    for node in graph.node:
        axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 0)
        table = node.input[0] if node.op_type == "Gather" and node.input else None
        if table not in tables or readers[table] != 1 or axis != 0:
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(tables[table]).astype(np.float32)
        scale = np.abs(weight).max(axis=1, keepdims=True) / 127.0
        scale[scale == 0] = 1.0
        rows = np.clip(np.rint(weight / scale), -127, 127).astype(np.int8)
        graph.initializer.remove(tables[table])
        graph.initializer.extend(
            [numpy_helper.from_array(rows, f"{table}_int8"), numpy_helper.from_array(scale, f"{table}_scale")]
        )
        ids, out = node.input[1], node.output[0]
        name = node.name or out
        nodes += [
            helper.make_node("Gather", [f"{table}_int8", ids], [f"{out}_int8"], name=f"{name}_int8"),
            helper.make_node(
                "Cast", [f"{out}_int8"], [f"{out}_float"], name=f"{name}_cast", to=TensorProto.FLOAT
            ),
            helper.make_node("Gather", [f"{table}_scale", ids], [f"{out}_scale"], name=f"{name}_scale"),
            helper.make_node("Mul", [f"{out}_float", f"{out}_scale"], [out], name=f"{name}_dequantize"),
        ]
    del graph.node[:]
    graph.node.extend(nodes)
    return model


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
