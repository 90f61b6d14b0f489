"""Export a classifier to ONNX or TorchScript, and prove the exported file computes the same logits.

ONNX goes through PyTorch's TorchScript-based exporter (``dynamo=False``): the newer torch.export
path needs ``onnxscript``, which the ``export`` extra does not install. That exporter, like
``torch.jit.trace``, records one concrete run, so Python-side branches in a model (Hugging Face mask
code has several) can be frozen into the graph without error. Its tracer warnings are therefore
silenced and every export is instead checked against the PyTorch model on a batch of a *different*
shape, with padding, before it is moved into place: a file that exists has passed that check.
TorchScript is deprecated upstream (torch 2.13 warns on trace/save/load) but still works; it is kept
as the no-extra-dependency format and its deprecation warnings are silenced here.

Export runs on the CPU and takes no ``--device``: the exported file is for CPU deployment (ONNX
Runtime's CPU provider, the int8 model), a trace recorded on a GPU would freeze CUDA devices into a
TorchScript file, and the parity check holds PyTorch and the exported file to 1e-4 on the same kind
of device. A student exports in seconds on a CPU, so a GPU would save nothing.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from adabert.deploy import EXPORT_FILE, TASK_FILE
from adabert.deploy.runtime import NAMES_FILE, ExportError, file_kind, quiet_tracing, run_file
from adabert.io import atomic_path
from adabert.report.evaluate import MODEL_INPUTS, accepted_inputs, dummy_batch, extract_logits, model_device

__all__ = ["ExportError", "check_parity", "export_model", "export_onnx", "export_torchscript"]


class LogitsOnly(nn.Module):
    """Positional tensors in, logits tensor out: the interface exporters and tracers can record."""

    def __init__(self, model: nn.Module, input_names: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.input_names = list(input_names)

    def forward(self, *inputs: Tensor) -> Tensor:
        return extract_logits(self.model(**dict(zip(self.input_names, inputs))))


def _input_names(model: nn.Module, batch: Mapping[str, Tensor]) -> list[str]:
    """Model inputs in a fixed order, so an exported file's positional inputs are always the same."""
    accepted = accepted_inputs(model, batch)
    return [name for name in MODEL_INPUTS if name in accepted]


def _verify_batch(model: nn.Module, seq_len: int, pair: bool) -> dict[str, Tensor]:
    """A batch unlike the one traced (other batch size and length, padded row) to catch frozen shapes."""
    length = max(1, (seq_len + 1) // 2)
    batch = dummy_batch(model, 3, length, pair, seed=1)
    if length > 2:
        batch["attention_mask"][-1, length // 2 :] = 0
    return batch


def export_onnx(
    model: nn.Module,
    output_path: str | Path,
    seq_len: int = 128,
    opset: int = 17,
    pair: bool = True,
    verify: bool = True,
    atol: float = 1e-4,
) -> Path:
    """Write ``model`` as ONNX with dynamic batch and sequence axes and a single ``logits`` output.

    With ``verify`` (default) the file is only moved into place after ONNX Runtime reproduces the
    model's logits within ``atol`` on a batch of another shape; otherwise ``ExportError`` is raised.
    """
    try:
        import onnx
    except ImportError as e:
        raise ExportError("ONNX export needs the 'export' extra: pip install 'adabert[export]'") from e
    output_path = Path(output_path)
    # Batch of 2, not 1: a traced batch dimension of 1 is more easily mistaken for a constant.
    batch = dummy_batch(model, 2, seq_len, pair)
    names = _input_names(model, batch)
    wrapper = LogitsOnly(model, names)
    axes: dict[str, dict[int, str]] = {name: {0: "batch", 1: "sequence"} for name in names}
    axes["logits"] = {0: "batch"}
    was_training = model.training
    wrapper.eval()  # the exporter restores the wrapper's mode afterwards, recursively
    try:
        with atomic_path(output_path) as tmp:
            try:
                with quiet_tracing(), torch.no_grad():
                    torch.onnx.export(
                        wrapper,
                        tuple(batch[n] for n in names),
                        str(tmp),
                        dynamo=False,
                        input_names=names,
                        output_names=["logits"],
                        dynamic_axes=axes,
                        opset_version=opset,
                        do_constant_folding=True,
                    )
                onnx.checker.check_model(str(tmp))
            except Exception as e:
                raise ExportError(f"ONNX export of {type(model).__name__} failed: {e}") from e
            if verify:
                _check(model, tmp, "onnx", _verify_batch(model, seq_len, pair), atol)
    finally:
        model.train(was_training)
    return output_path


def export_torchscript(
    model: nn.Module,
    output_path: str | Path,
    seq_len: int = 128,
    pair: bool = True,
    verify: bool = True,
    atol: float = 1e-4,
) -> Path:
    """Write ``model`` traced to TorchScript, returning the logits tensor; input names ride along.

    Verified like ``export_onnx`` before the file is moved into place.
    """
    output_path = Path(output_path)
    batch = dummy_batch(model, 2, seq_len, pair)
    names = _input_names(model, batch)
    wrapper = LogitsOnly(model, names)
    was_training = model.training
    wrapper.eval()
    try:
        with atomic_path(output_path) as tmp:
            try:
                with quiet_tracing(), torch.no_grad():
                    traced = torch.jit.trace(wrapper, tuple(batch[n] for n in names), check_trace=False)
                    torch.jit.save(traced, str(tmp), _extra_files={NAMES_FILE: json.dumps(names)})
            except Exception as e:
                raise ExportError(f"TorchScript export of {type(model).__name__} failed: {e}") from e
            if verify:
                _check(model, tmp, "torchscript", _verify_batch(model, seq_len, pair), atol)
    finally:
        model.train(was_training)
    return output_path


def _check(model: nn.Module, path: Path, kind: str, batch: Mapping[str, Tensor], atol: float = 1e-4) -> float:
    inputs = accepted_inputs(model, batch)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            expected = extract_logits(model(**inputs)).float().cpu().numpy()
    finally:
        model.train(was_training)
    actual = run_file(path, inputs, model_device(model), kind)
    if actual.shape != expected.shape:
        raise ExportError(f"exported logits have shape {actual.shape}, the model's {expected.shape}")
    diff = float(np.max(np.abs(actual.astype(np.float64) - expected.astype(np.float64))))
    if not diff <= atol:  # also catches NaN
        raise ExportError(
            f"exported model differs from PyTorch: max |logit difference| {diff:.3g} > atol {atol:g}"
        )
    return diff


def check_parity(
    model: nn.Module, exported_path: str | Path, batch: Mapping[str, Tensor], atol: float = 1e-4
) -> float:
    """Max absolute logit difference between ``model`` and its ``.onnx`` / ``.pt`` export on ``batch``.

    Raises ``ExportError`` (with the figure) when it exceeds ``atol``, so a drifting export cannot
    slip into a benchmark unnoticed.
    """
    path = Path(exported_path)
    return _check(model, path, file_kind(path), batch, atol)


FORMATS = ("onnx", "torchscript")
QUANTIZATIONS = ("int8",)
_CHECK_BATCH = 32


def default_output_dir(model_dir: str | Path, fmt: str = "onnx", quantize: str | None = None) -> Path:
    """``runs/x/student`` -> ``runs/x/student-onnx`` (``-onnx-int8``, ``-torchscript``): beside the model."""
    model_dir = Path(model_dir)
    return model_dir.parent / f"{model_dir.name}-{fmt}{'-' + quantize if quantize else ''}"


def _check_request(model_dir: Path, out: Path, store_dir: Any, fmt: str, quantize: str | None) -> None:
    """Refuse, before any work, what cannot be done."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}: expected one of {list(FORMATS)}")
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ExportError(f"unknown quantization {quantize!r}: expected one of {list(QUANTIZATIONS)}")
    if quantize and fmt != "onnx":
        raise ExportError(f"--quantize {quantize} needs --format onnx (onnxruntime quantizes ONNX files)")
    if quantize and store_dir is None:
        raise ExportError(
            f"--quantize {quantize} needs --store: the int8 model is checked against fp32 on real dev rows"
        )
    if not model_dir.is_dir():
        raise FileNotFoundError(f"{model_dir}: no model directory (expected a save_pretrained output)")
    a, b = model_dir.resolve(), out.resolve()
    if a == b or a in b.parents or b in a.parents:
        raise ExportError(
            f"--output-dir {out} overlaps the model directory {model_dir}: the export folder is replaced as "
            "a whole, so it must be a folder of its own "
            f"(default: {default_output_dir(model_dir, fmt, quantize)})"
        )


def _tokenizer(model_dir: Path, store: Any) -> Any:
    """The store's tokenizer (the teacher's), else the model folder's own: every export carries one."""
    if store is not None:
        return store.tokenizer()
    from transformers import AutoTokenizer

    if not any(
        (model_dir / name).is_file() for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json")
    ):
        raise ExportError(f"{model_dir} has no tokenizer: pass --store (its tokenizer goes into the export)")
    return AutoTokenizer.from_pretrained(str(model_dir))


def _dev_batches(store: Any, tokenizer: Any, rows: int | None) -> list[dict[str, Tensor]]:
    """Real dev rows of the store, encoded as the model saw them, in batches of 32."""
    from adabert.data import collate
    from adabert.tasks import encode

    dev = store.rows(store.dev_split)
    if rows is not None:
        dev = dev.select(range(min(rows, len(dev))))
    encoded = encode(dev, tokenizer, store.max_length)
    columns = [c for c in MODEL_INPUTS if c in encoded.column_names]
    items = [{c: encoded[c][i] for c in columns} for i in range(len(encoded))]
    pad = tokenizer.pad_token_id or 0
    return [collate(items[i : i + _CHECK_BATCH], pad) for i in range(0, len(items), _CHECK_BATCH)]


def _previous_files(out: Path) -> set[str]:
    """What an earlier export wrote into ``out`` (replaced now); anything else there is carried over."""
    try:
        return set(json.loads((out / EXPORT_FILE).read_text()).get("files", []))
    except (OSError, ValueError, AttributeError):
        return set()


def _carry_over(out: Path, tmp: Path, previous: set[str]) -> None:
    """Copy into the new folder what ``out`` holds that no export wrote (say, the pipeline's stage files)."""
    if not out.is_dir():
        return
    for item in out.iterdir():
        if item.name in previous or (tmp / item.name).exists():
            continue
        if item.is_dir():
            shutil.copytree(item, tmp / item.name, symlinks=True)
        else:
            shutil.copy2(item, tmp / item.name, follow_symlinks=False)


def export_model(
    model_dir: str | Path,
    out: str | Path | None = None,
    store_dir: str | Path | None = None,
    fmt: str = "onnx",
    seq_len: int | None = None,
    atol: float = 1e-4,
    quantize: str | None = None,
    min_agreement: float = 0.99,
    check_rows: int | None = None,
    latency_repeats: int = 20,
) -> dict[str, Any]:
    """Export a saved classifier into a deployable folder, checked, and moved into place atomically.

    ``out`` (default: ``default_output_dir``) gets ``model.onnx`` (or ``model.pt``), ``config.json``, the
    tokenizer (the store's, else the model folder's), ``adabert_task.json``, ``export.json`` and a
    ``README.md`` model card. fp32 outputs must match PyTorch within ``atol`` on a random padded batch
    and, given a knowledge store, on 32 real dev rows. ``quantize="int8"`` writes the onnxruntime
    dynamic quantization instead, checked against the fp32 export on the store's dev rows (all, or the
    first ``check_rows``): label agreement at least ``min_agreement`` (regression: Pearson r), with the
    largest probability (score) change, and size and latency against fp32 measured in the same run.

    Everything is written into a temporary sibling folder, fsynced, and renamed to ``out``: a kill
    leaves the previous export (or none), never a half folder. Files in ``out`` that no export wrote
    are carried over.
    """
    from adabert.io import atomic_dir
    from adabert.report.evaluate import load_classifier
    from adabert.teacher.store import KnowledgeStore

    model_dir = Path(model_dir)
    out = Path(out) if out is not None else default_output_dir(model_dir, fmt, quantize)
    _check_request(model_dir, out, store_dir, fmt, quantize)
    _check_numbers(min_agreement, check_rows, latency_repeats, seq_len, atol)
    store = KnowledgeStore.open(store_dir) if store_dir is not None else None
    model = load_classifier(model_dir, store.task if store is not None else None)
    tokenizer = _tokenizer(model_dir, store)
    pair = store.task.is_pair if store is not None else bool(getattr(model.config, "pair", True))
    length = _export_length(model, store, seq_len)
    dummy = lambda batch_size: dummy_batch(model, batch_size, length, pair)  # random padded rows
    exporter = export_onnx if fmt == "onnx" else export_torchscript
    name = "model.onnx" if fmt == "onnx" else "model.pt"
    previous = _previous_files(out)

    with atomic_dir(out) as tmp:
        fp32_path = tmp / (".fp32.onnx" if quantize else name)
        exporter(model, fp32_path, seq_len=length, pair=pair, atol=atol)
        parity = {"dummy_max_abs_diff": check_parity(model, fp32_path, dummy(4), atol)}
        info: dict[str, Any] = {"file": name, "format": fmt, "quantization": quantize}
        if store is not None:
            batches = _dev_batches(store, tokenizer, _CHECK_BATCH if not quantize else check_rows)
            parity.update(
                dev_rows=len(batches[0]["input_ids"]),
                dev_max_abs_diff=check_parity(model, fp32_path, batches[0], atol),
            )
        if quantize:
            info["int8"] = _quantized(
                fp32_path, tmp / name, store, batches, min_agreement, dummy, latency_repeats
            )
        info.update(
            bytes=(tmp / name).stat().st_size,
            source=model_dir.name,
            model_dir=str(model_dir),
            seq_len=length,
            atol=atol,
            parity=parity,
        )
        _write_folder(tmp, model, tokenizer, model_dir, store_dir, info)
        _carry_over(out, tmp, previous)
    return {**info, "out": str(out)}


def _check_numbers(
    min_agreement: float, check_rows: int | None, latency_repeats: int, seq_len: int | None, atol: float
) -> None:
    """Refuse, before any work, settings out of their range."""
    if not 0.0 <= min_agreement <= 1.0:
        raise ExportError(f"--min-agreement must be in [0, 1], got {min_agreement}")
    if check_rows is not None and check_rows < 1:
        raise ExportError(f"--check-rows must be a positive number of rows, got {check_rows}")
    if latency_repeats < 1:
        raise ExportError(f"--latency-repeats must be at least 1, got {latency_repeats}")
    if seq_len is not None and seq_len < 1:
        raise ExportError(f"--seq-len must be a positive number of tokens, got {seq_len}")
    if not atol >= 0:
        raise ExportError(f"--atol must be a tolerance >= 0, got {atol}")


def _export_length(model: nn.Module, store: Any, seq_len: int | None) -> int:
    """The sequence length the export is traced and checked at: ``seq_len``, else the store's, else 128;
    never more than the model has positions for."""
    length = seq_len or (store.max_length if store is not None else 128)
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions:
        length = min(length, positions)
    return length


def _quantized(
    fp32_path: Path,
    int8_path: Path,
    store: Any,
    batches: list[dict[str, Tensor]],
    min_agreement: float,
    make_batch: Callable[[int], dict[str, Tensor]],
    latency_repeats: int,
) -> dict[str, Any]:
    """Quantize the fp32 export to int8 at ``int8_path`` (the fp32 file then goes) and prove it usable:
    agreement with fp32 on the store's dev ``batches``, and size and latency against fp32 (on batches
    from ``make_batch``) measured in the same run. Returns that record."""
    from adabert.deploy.quantize import METHOD, check_int8, compare_onnx_latency, quantize_int8

    int8_path = quantize_int8(fp32_path, int8_path)
    rows = sum(len(b["input_ids"]) for b in batches)
    labels = np.asarray(store.rows(store.dev_split)["label"][:rows])
    record = {
        "min_agreement": min_agreement,
        "method": METHOD,
        **check_int8(fp32_path, int8_path, batches, store.task, labels, min_agreement),
        "fp32_bytes": fp32_path.stat().st_size,
        "int8_bytes": int8_path.stat().st_size,
        "size_ratio": int8_path.stat().st_size / fp32_path.stat().st_size,
        "latency": compare_onnx_latency(
            {"fp32": fp32_path, "int8": int8_path}, make_batch, repeats=latency_repeats
        ),
    }
    for row in record["latency"].values():
        row["int8_vs_fp32"] = row["int8_ms"] / row["fp32_ms"]
    fp32_path.unlink()
    return record


def _write_folder(
    tmp: Path, model: nn.Module, tokenizer: Any, model_dir: Path, store_dir: Any, info: dict[str, Any]
) -> None:
    """Everything beside the exported file that deployment needs: the model's config, the tokenizer, the
    task file, the model card and ``export.json`` (``info`` with the folder's file list)."""
    from adabert.deploy import card
    from adabert.io import atomic_write_json

    model.config.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    task = card.task_file(model_dir, store_dir)
    if task is not None:
        atomic_write_json(tmp / TASK_FILE, task)
    card.write_export_card(tmp, model_dir, store_dir, info)
    info["files"] = sorted([p.name for p in tmp.iterdir()] + [EXPORT_FILE])
    atomic_write_json(tmp / EXPORT_FILE, info)
