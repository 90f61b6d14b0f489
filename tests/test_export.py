"""ONNX and TorchScript exports reproduce the PyTorch logits, at shapes other than the traced one."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from adabert.evaluate import dummy_batch
from adabert.export import ExportError, check_parity, export_onnx, export_torchscript

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
