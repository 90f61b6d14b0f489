"""The search stage end to end on a tiny store: outputs, resumption, ablations, and the stages after it."""

import json
from pathlib import Path

import pytest
import torch

from adabert.checkpoint import load_state
from adabert.config import EvalConfig, SearchConfig, TrainConfig
from adabert.genotype import Genotype
from adabert.search import DivergenceError, run_search, temperature


def search_config(store: Path, out: Path, **overrides) -> SearchConfig:
    settings = dict(
        store=str(store),
        output_dir=str(out),
        hidden_size=16,
        max_cells=3,
        epochs=2,
        batch_size=8,
        w_lr=3e-3,
        arch_lr=3e-2,
        cost_seq_len=16,
        seed=0,
    )
    return SearchConfig(**{**settings, **overrides})


def test_search_writes_genotype_picture_log_and_plots(tiny_store, tmp_path):
    out = tmp_path / "search"
    genotype = run_search(search_config(tiny_store, out))
    assert Genotype.load(out / "genotype.json") == genotype
    for name in (
        "genotype.png",
        "op_probabilities.png",
        "depth_distribution.png",
        "checkpoint.safetensors",
        "config.json",
    ):
        assert (out / name).stat().st_size > 0, name
    log = [json.loads(line) for line in (out / "search_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    for record in log:
        assert {
            "loss",
            "ce",
            "kd",
            "efficiency",
            "tau",
            "dev",
            "op_probabilities",
            "depth_probabilities",
        } <= set(record)
        assert 0.0 <= record["dev"]["accuracy"] <= 1.0
        assert len(record["op_probabilities"]) == 9 and len(record["depth_probabilities"]) == 3
    assert log[1]["tau"] < log[0]["tau"] <= 1.0
    assert 1 <= genotype.num_cells <= 3 and genotype.hidden_size == 16


def test_fixed_seed_reproduces_and_resume_continues(tiny_store, tmp_path, monkeypatch):
    full = run_search(search_config(tiny_store, tmp_path / "full", epochs=3))
    # an interrupted run: killed during its third epoch, after two finished epochs
    import adabert.search as search_module

    real_evaluate, calls = search_module.evaluate_genotype, []

    def dies_in_epoch_three(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(search_module, "evaluate_genotype", dies_in_epoch_three)
    with pytest.raises(KeyboardInterrupt):
        run_search(search_config(tiny_store, tmp_path / "part", epochs=3))
    monkeypatch.setattr(search_module, "evaluate_genotype", real_evaluate)
    assert len((tmp_path / "part" / "search_log.jsonl").read_text().splitlines()) == 2
    resumed = run_search(search_config(tiny_store, tmp_path / "part", epochs=3, resume=True))
    assert resumed == full
    full_log = [
        json.loads(line) for line in (tmp_path / "full" / "search_log.jsonl").read_text().splitlines()
    ]
    part_log = [
        json.loads(line) for line in (tmp_path / "part" / "search_log.jsonl").read_text().splitlines()
    ]
    assert len(part_log) == 3
    for a, b in zip(full_log, part_log):
        assert a["op_probabilities"] == b["op_probabilities"] and a["loss"] == b["loss"]
    with pytest.raises(ValueError, match="cannot resume"):
        run_search(search_config(tiny_store, tmp_path / "part", epochs=4, resume=True, gamma=0.5))


def test_ablations_and_random_architecture(tiny_store, tmp_path):
    no_kd = run_search(search_config(tiny_store, tmp_path / "no_kd", epochs=1, gamma=0.0))
    no_eff = run_search(search_config(tiny_store, tmp_path / "no_eff", epochs=1, beta=0.0))
    log = json.loads((tmp_path / "no_kd" / "search_log.jsonl").read_text().splitlines()[0])
    assert log["kd"] == 0.0
    assert no_kd.space == no_eff.space == "adabert_cnn"
    first = run_search(search_config(tiny_store, tmp_path / "rand1", random_architecture=True, seed=1))
    again = run_search(search_config(tiny_store, tmp_path / "rand2", random_architecture=True, seed=1))
    other = run_search(search_config(tiny_store, tmp_path / "rand3", random_architecture=True, seed=2))
    assert first == again != other
    assert (tmp_path / "rand1" / "genotype.png").exists()


def test_diverging_search_stops_with_a_clear_message(tiny_store, tmp_path, monkeypatch):
    import adabert.search as search_module

    out = tmp_path / "nan"
    run_search(search_config(tiny_store, out, epochs=1))
    before = (out / "checkpoint.safetensors").read_bytes()
    monkeypatch.setattr(search_module, "task_loss", lambda logits, *_: logits.sum() * float("nan"))
    with pytest.raises(DivergenceError, match="became nan at epoch 2.*checkpoint.*intact"):
        run_search(search_config(tiny_store, out, epochs=2, resume=True))
    assert (out / "checkpoint.safetensors").read_bytes() == before
    assert load_state(out / "checkpoint.safetensors", "search")["epoch"] == 1


def test_temperature_anneals_from_start_to_end():
    cfg = SearchConfig(tau_start=1.0, tau_end=0.2, tau_anneal_fraction=0.5)
    assert temperature(cfg, 0, 100) == 1.0
    assert temperature(cfg, 50, 100) == pytest.approx(0.2)
    assert temperature(cfg, 100, 100) == pytest.approx(0.2)
    assert 0.2 < temperature(cfg, 25, 100) < 1.0


def test_train_evaluate_export_from_a_searched_genotype(tiny_store, tmp_path):
    from adabert.evaluate import load_classifier, run_evaluation
    from adabert.train import train_student

    search_dir = tmp_path / "search"
    run_search(search_config(tiny_store, search_dir, epochs=1))
    student_dir = tmp_path / "student"
    result = train_student(
        TrainConfig(
            genotype=str(search_dir / "genotype.json"),
            store=str(tiny_store),
            output_dir=str(student_dir),
            supernet=str(search_dir),
            epochs=2,
            batch_size=8,
            probe_kd=0.5,
        )
    )
    assert result["best_epoch"] in (1, 2) and 0 <= result["dev"]["accuracy"] <= 1
    assert (student_dir / "model.safetensors").exists() and (student_dir / "tokenizer.json").exists()
    model = load_classifier(student_dir)
    assert model.genotype == Genotype.load(search_dir / "genotype.json")
    report = run_evaluation(
        EvalConfig(
            model=str(student_dir),
            store=str(tiny_store),
            output_dir=str(tmp_path / "eval"),
            batch_sizes=(1, 2),
            seq_len=16,
            repeats=2,
            warmup=1,
        )
    )
    metrics = report["metrics"]["model"]
    assert {"accuracy", "label_loyalty", "probability_loyalty"} <= set(metrics)
    assert report["metrics"]["teacher"]["accuracy"] == pytest.approx(
        json.loads((tiny_store / "manifest.json").read_text())["teacher_metrics"]["dev"]["accuracy"]
    )
    assert report["size"]["model"]["total"] < report["size"]["bert-base"]["total"]
    assert "speedup_vs_bert-base" in report["latency"]["model"]["1"]
    assert (tmp_path / "eval" / "report.md").read_text().count("|") > 10
    # resume from the finished state trains nothing more and keeps the result
    again = train_student(
        TrainConfig(
            genotype=str(search_dir / "genotype.json"),
            store=str(tiny_store),
            output_dir=str(student_dir),
            epochs=2,
            batch_size=8,
            probe_kd=0.5,
            supernet=str(search_dir),
            resume=True,
        )
    )
    assert again["dev"] == result["dev"]
    with pytest.raises(ValueError, match="cannot resume.*lr"):
        train_student(
            TrainConfig(
                genotype=str(search_dir / "genotype.json"),
                store=str(tiny_store),
                output_dir=str(student_dir),
                epochs=3,
                batch_size=8,
                probe_kd=0.5,
                supernet=str(search_dir),
                resume=True,
                lr=0.5,
            )
        )
    # resuming from another genotype (same settings, other file content) is refused
    other = tmp_path / "other"
    run_search(search_config(tiny_store, other, random_architecture=True, seed=5))
    assert Genotype.load(other / "genotype.json") != Genotype.load(search_dir / "genotype.json")
    with pytest.raises(ValueError, match="cannot resume, the training started from another genotype"):
        train_student(
            TrainConfig(
                genotype=str(other / "genotype.json"),
                store=str(tiny_store),
                output_dir=str(student_dir),
                epochs=3,
                batch_size=8,
                probe_kd=0.5,
                resume=True,
            )
        )
    with torch.no_grad():
        assert load_classifier(student_dir).config.num_labels == 2


def test_arch_warmup_trains_weights_before_the_architecture(tiny_store, tmp_path):
    def probabilities(name: str, warmup: int) -> list:
        run_search(search_config(tiny_store, tmp_path / name, epochs=2, arch_warmup_epochs=warmup))
        lines = (tmp_path / name / "search_log.jsonl").read_text().splitlines()
        return [json.loads(line)["op_probabilities"] for line in lines]

    frozen = probabilities("frozen", warmup=2)  # weights only, both epochs
    assert frozen[0] == frozen[1]
    warm = probabilities("warm", warmup=1)  # weights only in epoch 1, then architecture steps too
    assert warm[0] == frozen[0] and warm[1] != warm[0]
