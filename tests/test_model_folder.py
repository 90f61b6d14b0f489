"""One strict loader: a model folder whose weights do not fit its config, or whose files are damaged, is
refused in one line (exit status 2) by every command that reads a model; it never predicts garbage.

The property tests mutate a valid student folder (keys removed or retyped, genotype ops or ``pair``
flipped, shapes changed, files truncated): ``predict`` and ``evaluate``, and ``export`` and ``compress``,
then either exit 2 with one ``adabert: error:`` line, or exit 0 with the outputs of the untouched folder
(for export, what its ONNX model predicts; for compress, the tensors it writes). Never a traceback, never
NaN.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adabert.cli import main
from adabert.model_folder import ModelFolderError, load_classifier
from search_spaces import get_space

GENOTYPE_EDGES = [(0, 2, "conv3"), (1, 2, "max_pool3"), (2, 3, "conv5"), (3, 4, "identity")]


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("adabert: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def student_on_store(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(student folder, its store, a labelled input file): a tiny student built on the tiny store."""
    from conftest import write_tiny_bert, write_tiny_glue

    from adabert.config import FinetuneConfig, ProbeConfig
    from adabert.deploy.card import update_model_card
    from adabert.genotype import make_genotype
    from adabert.search import student_tables
    from adabert.student.network import build_student
    from adabert.student.train import student_config_kwargs
    from adabert.teacher.finetuning import finetune
    from adabert.teacher.probes import probe
    from adabert.teacher.store import KnowledgeStore

    root = tmp_path_factory.mktemp("model-folder")
    glue = write_tiny_glue(root / "glue")
    finetune(
        FinetuneConfig(
            task="sst2",
            data_dir=str(glue),
            model=str(write_tiny_bert(root / "bert")),
            output_dir=str(root / "teacher"),
            epochs=1,
            max_length=32,
        )
    )
    probe(ProbeConfig(teacher=str(root / "teacher"), output_dir=str(root / "store"), epochs=1))
    store = KnowledgeStore.open(root / "store")
    torch.manual_seed(0)
    genotype = make_genotype("adabert_cnn", GENOTYPE_EDGES, 2, 16)
    model = build_student(
        genotype, 2, student_tables(store, "input", 16), pair=False, **student_config_kwargs(store)
    )
    student = root / "student"
    model.save_pretrained(student)
    store.tokenizer().save_pretrained(student)
    update_model_card(student, root / "store")  # writes adabert_task.json, as train does
    rows = root / "rows.tsv"
    shutil.copy(glue / "SST-2" / "dev.tsv", rows)
    return student, root / "store", rows


def _edit_config(folder: Path, edit) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))


def _copy(student: Path, where: Path) -> Path:
    folder = where / "student"
    shutil.copytree(student, folder)
    return folder


def test_a_student_whose_genotype_was_edited_is_refused_by_every_command(student_on_store, tmp_path, capsys):
    student, store, rows = student_on_store
    folder = _copy(student, tmp_path)
    _edit_config(folder, lambda c: c["genotype"]["edges"][2].update(op="identity"))  # conv5 -> identity
    with pytest.raises(ModelFolderError, match=r"weights do not match its config.json.*cells\.0\.ops\.2\.0"):
        load_classifier(folder)
    out = tmp_path / "predicted.tsv"
    assert main(["predict", "--model", str(folder), "--input", str(rows), "--output", str(out)]) == 2
    assert "in the weights file but not in the model" in _one_error_line(capsys) and not out.exists()
    argv = ["evaluate", "--model", str(folder), "--store", str(store), "--output-dir", str(tmp_path / "eval")]
    assert main([*argv, "--skip-latency"]) == 2
    assert str(folder) in _one_error_line(capsys) and not (tmp_path / "eval" / "report.json").exists()
    export = ["export", "--model", str(folder), "--output-dir", str(tmp_path / "onnx")]
    assert main(export) == 2 and "cells.0.ops.2.0" in _one_error_line(capsys)


def test_an_op_of_another_kernel_and_missing_tensors_are_named_with_their_shapes(student_on_store, tmp_path):
    student, _, _ = student_on_store
    folder = _copy(student, tmp_path)
    _edit_config(folder, lambda c: c["genotype"]["edges"][0].update(op="conv7"))
    with pytest.raises(
        ModelFolderError, match=r"of another shape: cells\.0\.ops\.0\.0\.1\.weight \(16x16x3 in"
    ):
        load_classifier(folder)
    _edit_config(folder, lambda c: c["genotype"]["edges"][3].update(op="conv3"))  # identity -> conv3
    with pytest.raises(ModelFolderError, match=r"missing from the weights file: cells\.0\.ops\.3\.0"):
        load_classifier(folder)


def test_a_config_edit_that_builds_the_same_tensors_is_refused(student_on_store, tmp_path, capsys):
    """The weights record the hash of the architecture they were saved with; a folder saved before they
    did is still checked against its task (pair or not, its labels)."""
    from safetensors.torch import load_file, save_file

    student, _, rows = student_on_store
    folder = _copy(student, tmp_path)
    _edit_config(folder, lambda c: c["genotype"]["edges"][1].update(op="avg_pool3"))  # max_pool3: no tensors
    with pytest.raises(ModelFolderError, match=r"not the one model.safetensors was saved with"):
        load_classifier(folder)
    _edit_config(folder, lambda c: c["genotype"]["edges"][1].update(op="max_pool3"))
    load_classifier(folder)
    _edit_config(folder, lambda c: c.update(pair=True))
    weights = folder / "model.safetensors"
    save_file(load_file(weights), weights, metadata={"format": "pt"})  # as saved before the stamp
    out = tmp_path / "predicted.tsv"
    assert main(["predict", "--model", str(folder), "--input", str(rows), "--output", str(out)]) == 2
    assert "built for sentence pairs (pair: true) but task sst2 has 1 text column" in _one_error_line(capsys)
    _edit_config(folder, lambda c: c.update(pair=False, id2label={"0": "0", "1": "bad"}))
    assert main(["predict", "--model", str(folder), "--input", str(rows), "--output", str(out)]) == 2
    assert "its labels (id2label) are 0, bad but task sst2's are negative, positive" in _one_error_line(
        capsys
    )


# ------------------------------------------------------------------------------------------ property
def _outputs(folder: Path, store: Path, rows: Path, work: Path) -> tuple[int, bytes | None, int, dict | None]:
    """(predict's exit code, its output file, evaluate's exit code, its metrics), in this process."""
    out = work / "predicted.tsv"
    code = main(["predict", "--model", str(folder), "--input", str(rows), "--output", str(out)])
    predicted = out.read_bytes() if code == 0 else None
    report = work / "eval"
    argv = ["evaluate", "--model", str(folder), "--store", str(store), "--output-dir", str(report)]
    evaluated = main([*argv, "--skip-latency", "--seq-len", "16"])
    metrics = json.loads((report / "report.json").read_text())["metrics"] if evaluated == 0 else None
    return code, predicted, evaluated, metrics


ANY_VALUE = st.sampled_from([None, True, -1, 0, 3, 1.5, "x", [], [1, 2, 3], {}, {"a": 1}])
OPS = get_space("adabert_cnn").ops


@st.composite
def mutations(draw: st.DrawFn) -> tuple[str, object, object]:
    """One mutation of a student folder: (kind, what, how)."""
    kind = draw(st.sampled_from(["remove key", "retype key", "op", "pair", "shape", "truncate", "delete"]))
    config_keys = ["genotype", "vocab_size", "max_position_embeddings", "hidden_size", "hidden_dropout_prob",
                   "pair", "pad_token_id", "norm_width", "head", "head_norm", "id2label", "label2id",
                   "problem_type", "model_type", "architectures"]  # fmt: skip
    if kind in ("remove key", "retype key"):
        return kind, draw(st.sampled_from(config_keys)), draw(ANY_VALUE)
    if kind == "op":
        return kind, draw(st.integers(0, len(GENOTYPE_EDGES) - 1)), draw(st.sampled_from(OPS))
    if kind == "shape":
        key = draw(st.sampled_from(["vocab_size", "max_position_embeddings", "hidden_size", "labels"]))
        return kind, key, draw(st.sampled_from([-1, 1, 3]))
    files = [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "adabert_task.json",
    ]
    return kind, draw(st.sampled_from(files)), draw(st.floats(0, 0.99))


def _apply(folder: Path, mutation: tuple[str, object, object]) -> None:
    kind, what, how = mutation
    if kind == "remove key":
        _edit_config(folder, lambda c: c.pop(what, None))
    elif kind == "retype key":
        _edit_config(folder, lambda c: c.update({what: how}))
    elif kind == "op":
        _edit_config(folder, lambda c: c["genotype"]["edges"][what].update(op=how))
    elif kind == "pair":
        _edit_config(folder, lambda c: c.update(pair=not c["pair"]))
    elif kind == "shape" and what == "labels":
        names = {str(i): f"label{i}" for i in range(2 + how)} if how > 0 else {"0": "only"}
        _edit_config(
            folder, lambda c: c.update(id2label=names, label2id={v: int(k) for k, v in names.items()})
        )
    elif kind == "shape":
        _edit_config(folder, lambda c: c.update({what: c[what] + how}))
    elif kind == "truncate":
        data = (folder / what).read_bytes()
        (folder / what).write_bytes(data[: int(len(data) * how)])
    else:
        (folder / what).unlink()


@pytest.fixture(scope="module")
def reference(student_on_store) -> tuple[int, bytes | None, int, dict | None]:
    student, store, rows = student_on_store
    (student.parent / "reference").mkdir()
    outputs = _outputs(student, store, rows, student.parent / "reference")
    assert outputs[0] == outputs[2] == 0
    return outputs


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutation=mutations())
def test_every_mutation_of_a_student_is_one_line_or_changes_nothing(
    student_on_store, reference, mutation, capsys
):
    student, store, rows = student_on_store
    capsys.readouterr()
    with tempfile.TemporaryDirectory(dir=student.parent) as scratch:
        work = Path(scratch)
        folder = _copy(student, work)
        _apply(folder, mutation)
        code, predicted, evaluated, metrics = _outputs(folder, store, rows, work)
        err = capsys.readouterr().err
        assert "Traceback" not in err
        errors = [line for line in err.splitlines() if line.startswith("adabert: error:")]
        assert len(errors) == (code == 2) + (evaluated == 2), err
        assert code in (0, 2) and evaluated in (0, 2)
        if code == 0:
            assert predicted == reference[1], mutation
        if evaluated == 0:
            assert metrics == reference[3], mutation


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_in_place_of_the_weights_is_refused_and_never_run(student_on_store, tmp_path):
    student, _, _ = student_on_store
    folder = _copy(student, tmp_path)
    (folder / "model.safetensors").unlink()
    torch.save({"weight": _Payload(tmp_path / "payload-ran")}, folder / "pytorch_model.bin")
    with pytest.raises(ModelFolderError, match=r"pytorch_model.bin is a pickle that holds more than plain"):
        load_classifier(folder)
    assert not (tmp_path / "payload-ran").exists()


# ------------------------------------------------------------------------------------------ writers
COMPRESS = [
    "--methods",
    "svd",
    "--kd-epochs",
    "0",
    "--retrain-epochs",
    "0",
    "--skip-latency",
    "--seq-len",
    "16",
]
TRAINING_ONLY = {"hidden_dropout_prob"}  # compress trains with the dropout its model's config asks for


def _written(
    folder: Path, store: Path, rows: Path, work: Path
) -> tuple[int, bytes | None, int, bytes | None]:
    """(export's exit code, the predictions of the ONNX model it wrote, compress's exit code, the tensors it
    wrote), in this process. (ONNX files name their nodes by a counter that runs on in a process, so the
    exported model is compared by what it predicts.)"""
    onnx = work / "onnx"
    exported = main(["export", "--model", str(folder), "--store", str(store), "--output-dir", str(onnx),
                     "--seq-len", "16"])  # fmt: skip
    predicted = None
    if exported == 0:
        out = work / "onnx-predicted.tsv"
        assert main(["predict", "--model", str(onnx), "--input", str(rows), "--output", str(out)]) == 0
        predicted = out.read_bytes()
    compressed = work / "compressed"
    code = main(["compress", "--model", str(folder), "--store", str(store), "--output-dir", str(compressed),
                 *COMPRESS])  # fmt: skip
    return exported, predicted, code, _tensors(compressed / "model.safetensors") if code == 0 else None


def _tensors(path: Path) -> bytes:
    """The weights a safetensors file holds, as bytes (its metadata, which records the config's
    architecture hash, apart: a config key that changes nothing still changes that hash)."""
    from safetensors.torch import load_file

    return b"".join(name.encode() + t.numpy().tobytes() for name, t in sorted(load_file(path).items()))


@pytest.fixture(scope="module")
def written_reference(student_on_store) -> tuple[int, bytes | None, int, bytes | None]:
    student, store, rows = student_on_store
    (student.parent / "written").mkdir()
    outputs = _written(student, store, rows, student.parent / "written")
    assert outputs[0] == outputs[2] == 0
    return outputs


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutation=mutations().filter(lambda m: m[1] not in TRAINING_ONLY))
def test_every_mutation_of_a_student_is_one_line_or_changes_nothing_for_export_and_compress(
    student_on_store, written_reference, mutation, capsys
):
    student, store, rows = student_on_store
    capsys.readouterr()
    with tempfile.TemporaryDirectory(dir=student.parent) as scratch:
        work = Path(scratch)
        folder = _copy(student, work)
        _apply(folder, mutation)
        exported, onnx, compressed, weights = _written(folder, store, rows, work)
        err = capsys.readouterr().err
        assert "Traceback" not in err
        errors = [line for line in err.splitlines() if line.startswith("adabert: error:")]
        assert len(errors) == (exported == 2) + (compressed == 2), err
        assert exported in (0, 2) and compressed in (0, 2), (mutation, err)
        if exported == 0:
            assert onnx == written_reference[1], ("export", mutation)
        if compressed == 0:
            assert weights == written_reference[3], ("compress", mutation)
