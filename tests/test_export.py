"""ONNX and TorchScript exports reproduce the PyTorch logits, at shapes other than the traced one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from adabert.deploy.export import ExportError, check_parity, export_onnx, export_torchscript
from adabert.report.evaluate import dummy_batch

pytest.importorskip("onnxruntime")


def tiny_bert(seed: int = 0) -> BertForSequenceClassification:
    # A large init range gives logits of order 1, so a 1e-4 tolerance is a real test.
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        initializer_range=0.5,
    )
    return BertForSequenceClassification(config).eval()


def padded_batch(model, batch_size: int, seq_len: int) -> dict[str, torch.Tensor]:
    batch = dummy_batch(model, batch_size, seq_len, seed=batch_size * 1000 + seq_len)
    batch["attention_mask"][0, seq_len // 3 :] = 0  # one padded row exercises the mask path
    return batch


def test_onnx_export_has_dynamic_axes_and_matches_pytorch(tmp_path):
    import onnxruntime as ort

    model = tiny_bert()
    path = export_onnx(model, tmp_path / "model.onnx", seq_len=16)
    assert path.is_file() and not list(tmp_path.glob(".*.tmp"))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    assert all(isinstance(d, str) for i in session.get_inputs() for d in i.shape)  # symbolic batch and length
    for batch_size, seq_len in ((1, 7), (5, 40)):
        batch = padded_batch(model, batch_size, seq_len)
        with torch.no_grad():
            assert model(**batch).logits.abs().max() > 0.1
        assert check_parity(model, path, batch, atol=1e-4) <= 1e-4


def test_torchscript_export_matches_pytorch_at_other_shapes(tmp_path):
    model = tiny_bert()
    path = export_torchscript(model, tmp_path / "model.pt", seq_len=16)
    assert path.is_file()
    for batch_size, seq_len in ((1, 7), (3, 33)):
        assert check_parity(model, path, padded_batch(model, batch_size, seq_len)) <= 1e-4


def test_check_parity_reports_a_drifted_model(tmp_path):
    model = tiny_bert()
    path = export_onnx(model, tmp_path / "model.onnx", seq_len=8)
    with torch.no_grad():
        model.classifier.bias += 0.5
    with pytest.raises(ExportError, match=r"max \|logit difference\| 0\.5"):
        check_parity(model, path, dummy_batch(model, 2, 8))


def test_export_keeps_the_model_mode_and_rejects_unknown_formats(tmp_path):
    model = tiny_bert().train()
    export_torchscript(model, tmp_path / "model.pt", seq_len=8)
    assert model.training
    with pytest.raises(ExportError, match="unknown export format"):
        check_parity(model, tmp_path / "model.xyz", dummy_batch(model, 1, 8))


# ------------------------------------------------------------------------------ the export folder
def folder_state(path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def test_export_folder_carries_tokenizer_card_and_is_replaced_whole(tiny_bert_dir, tmp_path):
    from adabert.deploy.export import export_model

    out = tmp_path / "export"
    info = export_model(tiny_bert_dir, out)
    names = {p.name for p in out.iterdir()}
    assert {"model.onnx", "config.json", "tokenizer.json", "export.json", "README.md"} <= names
    assert sorted(names) == json.loads((out / "export.json").read_text())["files"] == info["files"]
    (out / "notes.txt").write_text("mine")  # a file no export wrote survives the next one
    export_model(tiny_bert_dir, out, fmt="torchscript")
    names = {p.name for p in out.iterdir()}
    assert "model.pt" in names and "model.onnx" not in names and (out / "notes.txt").read_text() == "mine"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_failed_export_leaves_the_previous_folder_untouched(tiny_bert_dir, tmp_path, monkeypatch):
    import adabert.deploy.card
    from adabert.deploy.export import export_model

    out = tmp_path / "export"
    export_model(tiny_bert_dir, out)
    before = folder_state(out)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(adabert.deploy.card, "write_export_card", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_model(tiny_bert_dir, out, fmt="torchscript")
    assert folder_state(out) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


KILLED_EXPORT = """
import sys, time
from pathlib import Path
import adabert.deploy.card as card
from adabert.deploy.export import export_model

def stall(folder, *args, **kwargs):
    Path(sys.argv[3]).write_text(str(folder))  # the model file is written: now wait to be killed
    time.sleep(600)

card.write_export_card = stall
export_model(sys.argv[1], sys.argv[2], fmt="torchscript")
"""


def test_a_killed_export_leaves_the_previous_folder_and_the_next_one_tidies_up(tiny_bert_dir, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from adabert.deploy.export import export_model

    out, marker = tmp_path / "export", tmp_path / "marker"
    export_model(tiny_bert_dir, out)
    before = folder_state(out)
    script = tmp_path / "killed.py"
    script.write_text(KILLED_EXPORT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.Popen([sys.executable, str(script), str(tiny_bert_dir), str(out), str(marker)], env=env)
    try:
        deadline = time.monotonic() + 300
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert marker.exists(), "the export did not get to its model card"
        half = Path(marker.read_text())
        assert (half / "model.pt").exists() and half.parent == tmp_path
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert folder_state(out) == before and half.exists()
    export_model(tiny_bert_dir, out, fmt="torchscript")  # sweeps the half-written folder
    assert (out / "model.pt").exists() and not half.exists()


def test_a_kill_between_the_two_renames_is_undone_by_the_next_write(tmp_path):
    from adabert.io import atomic_dir

    old = tmp_path / ".export.old-123"  # what a kill after "move the old folder aside" leaves
    old.mkdir()
    (old / "model.onnx").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "export"):
        raise RuntimeError("fails before renaming")
    assert (tmp_path / "export" / "model.onnx").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["export"]


def test_export_refuses_what_it_cannot_do_before_any_work(tiny_bert_dir, tmp_path):
    from adabert.deploy.export import export_model

    with pytest.raises(ExportError, match="overlaps the model directory"):
        export_model(tiny_bert_dir, tiny_bert_dir)
    with pytest.raises(ExportError, match="overlaps the model directory"):
        export_model(tiny_bert_dir, tiny_bert_dir / "onnx")
    with pytest.raises(ExportError, match="needs --store"):
        export_model(tiny_bert_dir, tmp_path / "x", quantize="int8")
    with pytest.raises(ExportError, match="needs --format onnx"):
        export_model(tiny_bert_dir, tmp_path / "x", fmt="torchscript", quantize="int8")
    with pytest.raises(ExportError, match="--seq-len must be a positive"):
        export_model(tiny_bert_dir, tmp_path / "x", seq_len=0)
    assert not (tmp_path / "x").exists()


def _onnx_file(path, nodes, outputs, tensors):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [None, None])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outputs],
        [numpy_helper.from_array(array, name) for name, array in tensors.items()],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_int8_tables_keep_one_scale_per_row(tmp_path):
    import numpy as np
    import onnx
    from onnx import helper

    from adabert.deploy.quantize import quantize_tables
    from adabert.deploy.runtime import onnx_session

    table = np.random.default_rng(0).normal(size=(50, 64)).astype(np.float32)
    table[3] *= 100  # one wide row must not coarsen the others, as one scale per table would
    lookup = [helper.make_node("Gather", ["table", "ids"], ["rows"], name="lookup")]
    fp32 = _onnx_file(tmp_path / "fp32.onnx", lookup, ["rows"], {"table": table})
    int8 = tmp_path / "int8.onnx"
    onnx.save(quantize_tables(onnx.load(str(fp32))), str(int8))
    assert {t.name for t in onnx.load(str(int8)).graph.initializer} == {"table_int8", "table_scale"}
    ids = np.arange(50, dtype=np.int64)[None]
    rows = onnx_session(int8).run(None, {"ids": ids})[0][0]
    step = np.abs(table).max(axis=1) / 127
    assert (np.abs(rows - table).max(axis=1) <= step / 2 + 1e-6).all()
    assert np.abs(rows[0] - table[0]).max() < step[3] / 50


def test_int8_export_quantizes_products_by_block_and_leaves_shared_tables(tmp_path):
    import numpy as np
    import onnx
    from onnx import helper

    from adabert.deploy.quantize import quantize_int8
    from adabert.deploy.runtime import onnx_session

    rng = np.random.default_rng(1)
    tensors = {
        n: rng.normal(size=s).astype(np.float32) for n, s in (("table", (50, 64)), ("weight", (64, 32)))
    }
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["rows"], name="lookup"),
        helper.make_node("Add", ["table", "table"], ["twice"]),  # a second reader of the table
        helper.make_node("MatMul", ["rows", "weight"], ["out"], name="product"),
    ]
    fp32 = _onnx_file(tmp_path / "fp32.onnx", nodes, ["out", "twice"], tensors)
    int8 = quantize_int8(fp32, tmp_path / "int8.onnx")
    model = onnx.load(str(int8))
    assert {n.op_type for n in model.graph.node} == {"Gather", "Add", "MatMulNBits"}
    assert "table" in {t.name for t in model.graph.initializer}  # shared: kept as it is
    ids = np.array([[0, 3, 7, 49]], dtype=np.int64)
    exact, approx = (onnx_session(p).run(None, {"ids": ids})[0] for p in (fp32, int8))
    assert np.abs(approx - exact).max() < 0.02 * np.abs(exact).max()


def test_a_pair_student_with_the_match_head_exports_with_parity(tmp_path):
    from adabert.genotype import make_genotype
    from adabert.student.network import build_student
    from search_spaces import get_space

    space = get_space("adabert_cnn")
    genotype = make_genotype(space, [(0, 2, "conv3"), (1, 3, "max_pool3"), (2, 4, "identity")], 1, 16)
    torch.manual_seed(0)
    tables = {"word": torch.randn(100, 16), "position": torch.randn(128, 16)}
    model = build_student(genotype, 2, tables, pair=True, head="match").eval()
    onnx = export_onnx(model, tmp_path / "model.onnx", seq_len=16)
    script = export_torchscript(model, tmp_path / "model.pt", seq_len=16)
    for batch_size, seq_len in ((1, 7), (4, 40)):
        batch = padded_batch(model, batch_size, seq_len)
        assert check_parity(model, onnx, batch, atol=1e-4) <= 1e-4
        assert check_parity(model, script, batch) <= 1e-4
