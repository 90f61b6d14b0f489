"""--device and --precision on a CPU machine: search, train and evaluate honour --device cpu, a
precision the CPU does not run and a GPU that is not there are refused before any work, and the
collective code path of torchrun (gloo, a group of one) gives what one plain process gives."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from adabert import distributed
from adabert.config import ConfigError, EvalConfig, PipelineConfig, SearchConfig, TrainConfig
from adabert.device import autocast, check_precision, grad_scaler, resolve_device, to_device
from adabert.genotype import Genotype
from adabert.report.evaluate import render_report
from adabert.search import run_search
from adabert.search.supernet import straight_through_gumbel

sys.path.insert(0, str(Path(__file__).parent))
from test_search import search_config  # noqa: E402

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")


def _train_config(store: Path, search_dir: Path, out: Path, **overrides) -> TrainConfig:
    settings = dict(
        genotype=str(search_dir / "genotype.json"),
        store=str(store),
        output_dir=str(out),
        supernet=str(search_dir),
        epochs=1,
        batch_size=8,
    )
    return TrainConfig(**{**settings, **overrides})


def _log(search_dir: Path) -> list[dict]:
    """A search log without its timings."""
    lines = (search_dir / "search_log.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]


def _spy_devices(monkeypatch, module) -> list[torch.device]:
    """Record the device every batch of ``module`` is sent to."""
    seen: list[torch.device] = []
    real = module.to_device

    def spy(batch, device):
        seen.append(torch.device(device))
        return real(batch, device)

    monkeypatch.setattr(module, "to_device", spy)
    return seen


def test_search_and_train_honour_device_cpu(tiny_store, tmp_path, monkeypatch):
    import adabert.search.loop as loop
    import adabert.student.train as train

    search_seen = _spy_devices(monkeypatch, loop)
    search_dir = tmp_path / "search"
    genotype = run_search(search_config(tiny_store, search_dir, epochs=1, device="cpu"))
    assert search_seen and set(search_seen) == {torch.device("cpu")}
    assert json.loads((search_dir / "config.json").read_text())["device"] == "cpu"
    assert json.loads((search_dir / "config.json").read_text())["precision"] == "fp32"
    # --device cpu is the CPU search of before: the same genotype and log as the default on this machine
    if not torch.cuda.is_available():
        default = run_search(search_config(tiny_store, tmp_path / "default", epochs=1))
        assert default == genotype
        assert _log(search_dir) == _log(tmp_path / "default")

    train_seen = _spy_devices(monkeypatch, train)
    result = train.train_student(_train_config(tiny_store, search_dir, tmp_path / "student", device="cpu"))
    assert train_seen and set(train_seen) == {torch.device("cpu")}
    assert 0.0 <= result["dev"]["accuracy"] <= 1.0
    assert Genotype.load(search_dir / "genotype.json") == genotype


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_a_lower_precision_on_the_cpu_is_a_config_error(precision):
    for cls in (SearchConfig, TrainConfig):
        with pytest.raises(ConfigError, match=f"--precision {precision} needs a CUDA device"):
            cls(device="cpu", precision=precision)
    with pytest.raises(ConfigError, match=f"--precision {precision} needs a CUDA device"):
        check_precision(torch.device("cpu"), precision)
    with pytest.raises(ConfigError, match="--precision must be one of fp32, bf16, fp16"):
        SearchConfig(precision="fp8")


@no_cuda
def test_auto_precision_bf16_is_refused_before_any_work(tiny_store, tmp_path):
    out = tmp_path / "search"
    with pytest.raises(ConfigError, match="--precision bf16 needs a CUDA device.*cpu"):
        run_search(search_config(tiny_store, out, precision="bf16"))
    assert not out.exists()
    from adabert.student.train import train_student

    with pytest.raises(ConfigError, match="--precision fp16 needs a CUDA device"):
        train_student(_train_config(tiny_store, tmp_path, tmp_path / "student", precision="fp16"))
    assert not (tmp_path / "student").exists()


@no_cuda
def test_a_missing_gpu_is_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    from adabert.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="--device cuda: no CUDA device is available"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match="is not a device"):
        resolve_device("gpu")
    for argv in (
        ["search", "--device", "cuda", "--store", str(tmp_path / "none"), "--output-dir", "s"],
        ["train", "--device", "cuda:1", "--store", str(tmp_path / "none"), "--output-dir", "t"],
        ["search", "--precision", "bf16", "--store", str(tmp_path / "none"), "--output-dir", "s"],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("adabert: error:") == 1 and "Traceback" not in err, err
        assert "CUDA" in err
    assert not (tmp_path / "s").exists() and not (tmp_path / "t").exists()


@no_cuda
def test_the_teacher_commands_refuse_a_missing_gpu_before_reading_data(
    tiny_bert_dir, tiny_glue_dir, tmp_path, capsys, monkeypatch
):
    import adabert.teacher.finetuning
    import adabert.teacher.probes
    from adabert.cli import main

    def loaded(*args, **kwargs):
        raise AssertionError("the data was read before the device was checked")

    monkeypatch.setattr(adabert.teacher.finetuning, "load_split", loaded)
    monkeypatch.setattr(adabert.teacher.probes, "load_split", loaded)
    data = ["--task", "sst2", "--data-dir", str(tiny_glue_dir)]
    for argv in (
        [
            "teacher",
            "finetune",
            "--model",
            str(tiny_bert_dir),
            *data,
            "--max-length",
            "32",
            "--output-dir",
            str(tmp_path / "t"),
        ],
        ["teacher", "probe", "--teacher", str(tiny_bert_dir), *data, "--output-dir", str(tmp_path / "s")],
    ):
        assert main([*argv, "--device", "cuda:3"]) == 2
        err = capsys.readouterr().err
        assert err.count("adabert: error:") == 1 and "CUDA" in err and "Traceback" not in err, err


@no_cuda
def test_the_pipeline_refuses_a_gpu_setting_before_the_first_stage(tiny_glue_dir, tmp_path):
    from adabert.pipeline import plan

    for stage, setting in (("search", {"precision": "bf16"}), ("train", {"device": "cuda"})):
        cfg = PipelineConfig(
            task="sst2", data_dir=str(tiny_glue_dir), run_dir=str(tmp_path / "run"), **{stage: setting}
        )
        with pytest.raises(ConfigError, match=f"^{stage}: --"):
            plan(cfg)
    assert not (tmp_path / "run").exists()


def test_evaluate_on_the_cpu_times_the_cpu_only():
    assert EvalConfig().device == "auto" and EvalConfig(device="cpu").device == "cpu"
    stats = {"median_ms": 1.0, "p90_ms": 2.0, "seq_len": 16, "threads": 1}
    report = {
        "latency": {"model": {"1": stats}},
        "latency_device": {"device": "cuda:0 (Some GPU)", "latency": {"model": {"1": stats}}},
    }
    text = render_report(report)
    assert "## Latency per batch (seq_len 16, 1 threads)" in text
    assert "## Latency per batch on cuda:0 (Some GPU) (seq_len 16)" in text
    assert "latency_device" not in text  # not dumped again as JSON


def test_device_helpers_are_no_ops_on_the_cpu():
    batch = {"input_ids": torch.ones(2, 3, dtype=torch.long), "note": "kept"}
    moved = to_device(batch, torch.device("cpu"))
    assert moved["input_ids"] is batch["input_ids"] and moved["note"] == "kept"
    assert grad_scaler(torch.device("cpu"), "fp32") is None
    with autocast(torch.device("cpu"), "fp32"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_gumbel_draws_come_from_the_cpu_generator():
    logits = torch.zeros(6, 10)
    _, first = straight_through_gumbel(logits, 1.0, torch.Generator().manual_seed(5))
    _, again = straight_through_gumbel(logits, 1.0, torch.Generator().manual_seed(5))
    assert torch.equal(first, again)


def test_the_collective_code_path_in_a_group_of_one_is_the_plain_run(tiny_store, tmp_path, monkeypatch):
    """What torchrun runs (gradients, statistics and parameters through gloo collectives, rank 0 writes)
    with one process gives exactly the plain process's genotype, log and student."""
    from adabert.student.train import train_student

    plain = run_search(search_config(tiny_store, tmp_path / "plain", epochs=1, device="cpu"))
    plain_student = train_student(
        _train_config(tiny_store, tmp_path / "plain", tmp_path / "plain_student", device="cpu")
    )
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        monkeypatch.setattr(distributed, "active", lambda: True)
        grouped = run_search(search_config(tiny_store, tmp_path / "group", epochs=1, device="cpu"))
        grouped_student = train_student(
            _train_config(tiny_store, tmp_path / "group", tmp_path / "group_student", device="cpu")
        )
    finally:
        dist.destroy_process_group()
    assert grouped == plain
    assert _log(tmp_path / "plain") == _log(tmp_path / "group")
    assert grouped_student["dev"] == plain_student["dev"]
    assert [r["loss"] for r in grouped_student["history"]] == [r["loss"] for r in plain_student["history"]]


def test_cuda_processes_use_nccl_and_their_local_gpu(monkeypatch):
    from adabert.errors import UserError

    monkeypatch.delenv(distributed.BACKEND_ENV, raising=False)
    assert distributed.default_backend("cuda") == "nccl"
    assert distributed.default_backend(torch.device("cuda", 1)) == "nccl"
    assert distributed.default_backend("cpu") == "gloo"
    monkeypatch.setenv(distributed.BACKEND_ENV, "gloo")
    assert distributed.default_backend("cuda") == "gloo"  # the override still wins
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    ctx = distributed.Context(rank=3, world_size=4, local_rank=1)
    assert distributed.rank_device(torch.device("cuda"), ctx) == torch.device("cuda", 1)
    assert distributed.rank_device(torch.device("cuda", 0), ctx) == torch.device("cuda", 0)  # as named
    assert distributed.rank_device(torch.device("cpu"), ctx) == torch.device("cpu")
    with pytest.raises(UserError, match="LOCAL_RANK=2 but this machine has 2 CUDA device"):
        distributed.rank_device(torch.device("cuda"), distributed.Context(2, 4, 2))
