"""The student folder holds only what deploys: the resume state lives in ``<output_dir>.resume/``,
``--resume`` with more epochs continues from it (and from the student folder, where older versions
kept it), and sizes count the model's own weights."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from adabert.config import TrainConfig
from adabert.report.evaluate import format_bytes, model_file_size
from adabert.search import run_search
from adabert.student.train import STATE, state_path, train_student

sys.path.insert(0, str(Path(__file__).parent))
from test_search import search_config  # noqa: E402

DEPLOYS = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md",
           "model_card.json", "adabert_task.json", "cell.png", "metrics.json",
           "train_config.json"}  # fmt: skip


def _train(genotype: Path, store: Path, out: Path, epochs: int, resume: bool = False) -> dict:
    return train_student(
        TrainConfig(
            genotype=str(genotype),
            store=str(store),
            output_dir=str(out),
            epochs=epochs,
            batch_size=8,
            resume=resume,
        )
    )


def test_the_resume_state_lives_beside_the_student_and_more_epochs_resume(tiny_store, tmp_path):
    run_search(search_config(tiny_store, tmp_path / "search", epochs=1))
    genotype, student = tmp_path / "search" / "genotype.json", tmp_path / "student"
    _train(genotype, tiny_store, student, 1)
    assert {p.name for p in student.iterdir()} <= DEPLOYS
    assert state_path(student) == tmp_path / "student.resume" / STATE and state_path(student).is_file()

    first = load_file(student / "model.safetensors")
    resumed = _train(genotype, tiny_store, student, 2, resume=True)  # more epochs than it was started with
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    second = load_file(student / "model.safetensors")
    assert any((first[k] != second[k]).any() for k in first)  # it trained on from the state

    # the layout of older versions: the state inside the student folder resumes, then moves out
    shutil.move(state_path(student), student / STATE)
    shutil.rmtree(tmp_path / "student.resume")
    assert model_file_size(student) == (student / "model.safetensors").stat().st_size  # not the state
    again = _train(genotype, tiny_store, student, 3, resume=True)
    assert [h["epoch"] for h in again["history"]] == [1, 2, 3]
    assert not (student / STATE).exists() and state_path(student).is_file()


def test_sizes_are_labelled_in_the_units_they_are_computed_in():
    assert format_bytes(17 * 2**20) == "17.00 MiB" and format_bytes(1536) == "1.50 KiB"
    assert format_bytes(3 * 2**30) == "3.00 GiB" and format_bytes(512) == "512 B"


def _averaged(genotype: Path, store: Path, out: Path, epochs: int, resume: bool = False, average=0.5) -> dict:
    cfg = TrainConfig(genotype=str(genotype), store=str(store), output_dir=str(out), epochs=epochs,
                      batch_size=8, resume=resume, average=average)  # fmt: skip
    return train_student(cfg)


def test_the_student_is_saved_as_its_weight_average_which_resumes(tiny_store, tmp_path, monkeypatch):
    from adabert import engine
    from adabert.checkpoint import load_state
    from adabert.student.train import STATE_KIND

    run_search(search_config(tiny_store, tmp_path / "search", epochs=1))
    genotype, student = tmp_path / "search" / "genotype.json", tmp_path / "student"
    _averaged(genotype, tiny_store, student, 1)
    saved = load_file(student / "model.safetensors")
    state = load_state(state_path(student), STATE_KIND)
    names = [n for n, _ in _model(student).named_parameters()]
    average = [state["weight_average"][str(i)] for i in range(len(names))]
    assert all(torch.equal(saved[n], a) for n, a in zip(names, average) if n in saved)
    assert any(not torch.equal(saved[n], state["model"][n]) for n in names if n in saved)  # not the last step

    loaded = []
    original = engine.WeightAverage.load_state_dict
    monkeypatch.setattr(engine.WeightAverage, "load_state_dict",
                        lambda self, s: (loaded.append(s), original(self, s))[1])  # fmt: skip
    resumed = _averaged(genotype, tiny_store, student, 2, resume=True)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    assert len(loaded) == 1 and all(torch.equal(loaded[0][str(i)], a) for i, a in enumerate(average))

    plain = tmp_path / "plain"
    _averaged(genotype, tiny_store, plain, 1, average=0.0)  # the last step's weights, no average kept
    state = load_state(state_path(plain), STATE_KIND)
    weights = load_file(plain / "model.safetensors")
    assert "weight_average" not in state and all(torch.equal(weights[k], state["model"][k]) for k in weights)


def _model(folder: Path):
    from adabert.report.evaluate import load_classifier

    return load_classifier(folder)


def test_the_weight_average_spans_at_most_a_quarter_of_a_short_training(tiny_store, tmp_path, monkeypatch):
    from adabert import engine

    run_search(search_config(tiny_store, tmp_path / "search", epochs=1))
    windows = []
    original = engine.WeightAverage.__init__

    def recording(self, params, steps):
        windows.append(steps)
        original(self, params, steps)

    monkeypatch.setattr(engine.WeightAverage, "__init__", recording)
    genotype = tmp_path / "search" / "genotype.json"
    _averaged(genotype, tiny_store, tmp_path / "short", 1, average=2.0)  # 6 steps: 2 epochs would be 12
    _averaged(genotype, tiny_store, tmp_path / "long", 4, average=0.5)  # 24 steps: half an epoch is 3
    assert windows == [1.5, 3.0]
