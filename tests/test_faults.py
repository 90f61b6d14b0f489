"""Faults: a search killed with SIGKILL mid-epoch resumes to the same result; a diverging training
(search, student, teacher, probes) stops with a clear message and saves nothing non-finite; hostile
checkpoints are refused without running their payload; a second command in a folder in use exits 2.

benchmarks/faults.py runs these faults, and more (kills at every stage boundary, full disks, read-only
folders), against the command line in subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from adabert.checkpoint import DivergenceError
from adabert.config import TrainConfig
from adabert.genotype import Genotype
from adabert.search import run_search
from adabert.student.train import state_path

sys.path.insert(0, str(Path(__file__).parent))
from conftest import tiny_finetune_argv  # noqa: E402
from test_search import search_config  # noqa: E402

SETTINGS = dict(epochs=3, batch_size=4)


def _cli(store: Path, out: Path, *extra: str) -> list[str]:
    cfg = search_config(store, out, **SETTINGS)
    flags = []
    for key in (
        "store",
        "output_dir",
        "hidden_size",
        "max_cells",
        "epochs",
        "batch_size",
        "w_lr",
        "arch_lr",
        "cost_seq_len",
        "uniform_warmup_epochs",
        "weight_phase",
        "tau_start",
        "seed",
    ):
        flags += ["--" + key.replace("_", "-"), str(getattr(cfg, key))]
    return [sys.executable, "-m", "adabert.cli", "search", *flags, *extra]


def _env() -> dict[str, str]:
    root = str(Path(__file__).parents[1])
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",  # the same arithmetic as this process (conftest: 1 thread)
        "PYTHONUNBUFFERED": "1",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
    }


def _records(path: Path) -> list[dict]:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for r in records:
        r.pop("seconds")
    return records


def test_search_killed_mid_epoch_resumes_to_the_uninterrupted_result(tiny_store, tmp_path):
    full = run_search(search_config(tiny_store, tmp_path / "full", **SETTINGS))

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        _cli(tiny_store, out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    seen = bytearray()

    def read() -> None:
        while chunk := os.read(proc.stderr.fileno(), 4096):
            seen.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + 300
    while b"search epoch 2 (search phase)" not in seen:  # the bar of epoch 2: epoch 1 is checkpointed
        assert proc.poll() is None, seen.decode(errors="replace")[-3000:]
        assert time.monotonic() < deadline, "the search never reached epoch 2"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    reader.join(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    assert len(_records(out / "search_log.jsonl")) == 1  # killed inside epoch 2
    (out / ".checkpoint.safetensors.left-by-kill.tmp").write_bytes(
        b"half a checkpoint"
    )  # as a kill mid-write would

    done = subprocess.run(_cli(tiny_store, out, "--resume"), env=_env(), capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    assert b"resuming from" in done.stderr and b"after epoch 1" in done.stderr
    assert Genotype.load(out / "genotype.json") == full
    assert _records(out / "search_log.jsonl") == _records(tmp_path / "full" / "search_log.jsonl")
    assert not list(out.glob(".*.tmp"))  # the resumed run cleared what the killed one left


def test_diverging_training_stops_with_a_clear_message(tiny_store, tmp_path, monkeypatch):
    import adabert.student.train as train_module

    search = tmp_path / "search"
    run_search(search_config(tiny_store, search, random_architecture=True))
    settings = dict(
        genotype=str(search / "genotype.json"),
        store=str(tiny_store),
        output_dir=str(tmp_path / "student"),
        epochs=1,
        batch_size=8,
    )
    train_module.train_student(TrainConfig(**settings))
    student = tmp_path / "student"
    files = (train_module.state_path(student), student / "model.safetensors")
    before = {path: path.read_bytes() for path in files}
    monkeypatch.setattr(train_module, "task_loss", lambda logits, *_: logits.sum() * float("inf"))
    with pytest.raises(
        DivergenceError,
        match=r"became -?(nan|inf) at epoch 2.*student.resume/training_state.safetensors.*intact",
    ):
        train_module.train_student(TrainConfig(**{**settings, "epochs": 2, "resume": True}))
    assert {path: path.read_bytes() for path in files} == before
    assert not list(student.glob(".*.tmp")) and not list(student.glob(".save.*"))
    # the student there is epoch 1's, not what the settings ask for: no command uses it as finished
    from adabert.model_folder import ModelFolderError, load_classifier

    with pytest.raises(ModelFolderError, match=r"the adabert train that wrote it did not finish.*--resume"):
        load_classifier(student)


def test_train_refuses_what_an_unfinished_search_left(tiny_store, tmp_path, monkeypatch, capsys):
    import adabert.search.loop as search_module
    from adabert.cli import main

    out = tmp_path / "search"
    run_search(search_config(tiny_store, out, epochs=1))
    assert (out / "selection.json").is_file()  # written last: the search finished
    monkeypatch.setattr(search_module, "task_loss", lambda logits, *_: logits.sum() * float("nan"))
    with pytest.raises(DivergenceError):
        run_search(search_config(tiny_store, out, epochs=2, uniform_warmup_epochs=0, resume=True))
    monkeypatch.undo()
    # epoch 1's genotype and checkpoint are left, for --resume; train uses neither
    assert (out / "genotype.json").is_file() and not (out / "selection.json").exists()
    train = ["train", "--store", str(tiny_store), "--epochs", "1", "--batch-size", "8"]
    for extra in ([], ["--supernet", str(out)]):
        capsys.readouterr()
        genotype = ["--genotype", str(out / "genotype.json")]
        assert main([*train, *genotype, *extra, "--output-dir", str(tmp_path / "student")]) == 2
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("adabert: error:")]
        assert len(lines) == 1 and "Traceback" not in err
        assert f"{out}: the adabert search that wrote it did not finish" in lines[0]
        assert "run adabert search (with --resume to continue it) again" in lines[0]
    assert not (tmp_path / "student" / "model.safetensors").exists()


def test_following_the_divergence_advice_resumes_a_search_with_lower_rates(tiny_store, tmp_path, monkeypatch):
    import adabert.search.loop as search_module
    from adabert.checkpoint import load_state

    out = tmp_path / "search"
    run_search(search_config(tiny_store, out, epochs=1))
    monkeypatch.setattr(search_module, "task_loss", lambda logits, *_: logits.sum() * float("nan"))
    with pytest.raises(DivergenceError) as diverged:
        run_search(search_config(tiny_store, out, epochs=2, uniform_warmup_epochs=0, resume=True))
    advice = str(diverged.value)
    assert "Lower --w-lr (now 0.003) or --arch-lr (now 0.03) and run the same command with --resume" in advice
    assert "applies from epoch 2" in advice and "--beta" not in advice
    monkeypatch.undo()
    # the advice, followed: lower rates, --resume; the epoch before is kept, the new rates apply after it
    lowered = search_config(
        tiny_store, out, epochs=2, uniform_warmup_epochs=0, resume=True, w_lr=1e-3, arch_lr=1e-2
    )
    run_search(lowered)
    state = load_state(out / "checkpoint.safetensors", "search")
    assert state["epoch"] == 2
    (w_lr,) = [g["lr"] for g in state["w_opt"]["param_groups"]]  # the search phase's cosine from 1e-3
    assert 2e-4 <= w_lr < 1e-3
    assert [g["lr"] for g in state["a_opt"]["param_groups"]] == [1e-2]
    changes = json.loads((out / "selection.json").read_text())["lr_changes"]
    assert changes == [
        {"epoch": 2, "setting": "w_lr", "from": 3e-3, "to": 1e-3},
        {"epoch": 2, "setting": "arch_lr", "from": 3e-2, "to": 1e-2},
    ]
    assert len(_records(out / "search_log.jsonl")) == 2
    # any other changed setting is still refused
    from adabert.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match=r"settings changed \(beta"):
        run_search(search_config(tiny_store, out, epochs=3, uniform_warmup_epochs=0, resume=True, w_lr=1e-3,
                                 arch_lr=1e-2, beta=0.5))  # fmt: skip


def test_following_the_divergence_advice_resumes_a_training_with_a_lower_rate(
    tiny_store, tmp_path, monkeypatch
):
    import adabert.student.train as train_module
    from adabert.checkpoint import load_state

    search = tmp_path / "search"
    run_search(search_config(tiny_store, search, random_architecture=True))
    settings = dict(genotype=str(search / "genotype.json"), store=str(tiny_store),
                    output_dir=str(tmp_path / "student"), epochs=1, batch_size=8, lr=1e-3)  # fmt: skip
    train_module.train_student(TrainConfig(**settings))
    monkeypatch.setattr(train_module, "task_loss", lambda logits, *_: logits.sum() * float("inf"))
    with pytest.raises(
        DivergenceError, match=r"Lower --lr \(now 0.001\) and run the same command with --resume"
    ):
        train_module.train_student(TrainConfig(**{**settings, "epochs": 2, "resume": True}))
    monkeypatch.undo()
    result = train_module.train_student(TrainConfig(**{**settings, "epochs": 2, "resume": True, "lr": 1e-4}))
    assert result["lr_changes"] == [{"epoch": 2, "setting": "lr", "from": 1e-3, "to": 1e-4}]
    assert [r["epoch"] for r in result["history"]] == [1, 2]
    metrics = json.loads((tmp_path / "student" / "metrics.json").read_text())
    assert metrics["lr_changes"] == result["lr_changes"]
    state = load_state(train_module.state_path(tmp_path / "student"), "training")
    assert state["scheduler"]["base_lrs"] == [1e-4]
    assert state["optimizer"]["param_groups"][0]["initial_lr"] == 1e-4
    from adabert.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match=r"settings changed \(gamma"):
        train_module.train_student(TrainConfig(**{**settings, "epochs": 3, "resume": True, "lr": 1e-4,
                                                  "gamma": 0.1}))  # fmt: skip


# ------------------------------------------------------------------------------------------ teacher
def _leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*") if p.name.endswith((".tmp", ".old")) or p.name.startswith(".save.")]


def test_a_teacher_with_a_huge_learning_rate_stops_and_saves_no_teacher(
    tiny_bert_dir, tiny_glue_dir, tmp_path, capsys
):
    from adabert.cli import main

    out = tmp_path / "teacher"
    argv = tiny_finetune_argv(tiny_bert_dir, tiny_glue_dir, out, "--epochs", "2", "--lr", "1e30")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "fine-tuning diverged, the loss became nan at epoch 1" in err and "lower --lr (now 1e+30)" in err
    assert not list(out.glob("*.safetensors")) and not (out / "adabert_task.json").exists()
    assert not _leftovers(tmp_path)


def test_a_diverged_fine_tuning_over_a_good_teacher_leaves_no_teacher_to_probe(
    tiny_bert_dir, tiny_glue_dir, tmp_path, capsys
):
    from adabert.cli import main

    out = tmp_path / "teacher"
    assert main(tiny_finetune_argv(tiny_bert_dir, tiny_glue_dir, out, "--epochs", "1")) == 0
    assert main(tiny_finetune_argv(tiny_bert_dir, tiny_glue_dir, out, "--epochs", "1", "--lr", "1e30")) == 2
    capsys.readouterr()
    assert main(["teacher", "probe", "--teacher", str(out), "--output-dir", str(tmp_path / "store")]) == 2
    err = capsys.readouterr().err
    assert "the adabert teacher finetune that wrote it did not finish" in err and "Traceback" not in err
    assert not (tmp_path / "store").exists()


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # the inf feature
def test_probe_training_stops_on_a_non_finite_loss():
    import numpy as np

    from adabert.errors import DivergenceError as AnyDivergence
    from adabert.tasks import get_task
    from adabert.teacher.probes import train_probes

    features = np.random.default_rng(0).normal(size=(32, 3, 8)).astype(np.float32)
    labels = np.arange(32) % 2
    train_probes(get_task("sst2"), features, labels, epochs=1, batch_size=8, lr=1e-3, seed=0)
    features[5, 1, 2] = np.inf  # features of a broken teacher
    with pytest.raises(
        AnyDivergence, match=r"probe training diverged, the loss became nan at epoch 1, step 1"
    ):
        train_probes(get_task("sst2"), features, labels, epochs=3, batch_size=8, lr=1e-3, seed=0)


def test_the_store_refuses_non_finite_logits(tiny_store, tmp_path):
    import numpy as np

    from adabert.teacher.finetuning import resolve_model
    from adabert.teacher.store import KnowledgeStore, StoreError, write_store

    store = KnowledgeStore.open(tiny_store)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    teacher = resolve_model(str(store.teacher_path))
    model = AutoModelForSequenceClassification.from_pretrained(teacher)
    rows, logits, probes = store.rows("dev"), np.array(store.teacher_logits("dev")), store.probe_logits("dev")
    logits[3, 1] = np.nan
    with pytest.raises(
        StoreError, match=r"teacher logits of split 'dev' are NaN or infinite on 1 of 16 rows"
    ):
        write_store(
            tmp_path / "out" / "store",
            task=store.task,
            data_dir=None,
            max_length=store.max_length,
            teacher_dir=teacher,
            model=model,
            tokenizer=AutoTokenizer.from_pretrained(teacher),
            splits={"dev": (rows, logits, probes)},
            teacher_metrics={},
            probe_metrics=[],
        )
    assert list((tmp_path / "out").iterdir()) == []  # no store, no temporary folder


# ------------------------------------------------------------------------------------------ checkpoints
class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture
def searched(tiny_store, tmp_path):
    """A finished search and a student trained one epoch from it."""
    from adabert.student.train import train_student

    search = tmp_path / "search"
    run_search(search_config(tiny_store, search, epochs=1))
    student = tmp_path / "student"
    train_student(
        TrainConfig(
            genotype=str(search / "genotype.json"),
            store=str(tiny_store),
            output_dir=str(student),
            epochs=1,
            batch_size=8,
        )
    )
    return search, student


def test_crafted_pickles_are_refused_by_every_command_and_never_run(searched, tiny_store, tmp_path, capsys):
    import torch

    from adabert.cli import main

    search, student = searched
    marker = tmp_path / "payload-ran"
    store = ["--store", str(tiny_store)]
    hostile = {"model": _Payload(marker), "config": {}, "epoch": 1}
    torch.save(hostile, search / "checkpoint.safetensors")
    torch.save(hostile, state_path(student))
    cases = [
        ["search", "--config", str(search / "config.json"), *store, "--output-dir", str(search), "--resume"],
        [
            "train",
            "--genotype",
            str(search / "genotype.json"),
            *store,
            "--supernet",
            str(search),
            "--output-dir",
            str(tmp_path / "s2"),
            "--batch-size",
            "8",
        ],
        [
            "train",
            "--config",
            str(student / "train_config.json"),
            "--genotype",
            str(search / "genotype.json"),
            *store,
            "--output-dir",
            str(student),
            "--epochs",
            "2",
            "--resume",
        ],
    ]
    for argv, name in zip(
        cases, ("checkpoint.safetensors", "checkpoint.safetensors", "training_state.safetensors")
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert f"{name}: a pickle-based checkpoint" in err and "Traceback" not in err
    (search / "checkpoint.safetensors").unlink()  # a legacy checkpoint.pt alone is never read either
    torch.save(hostile, search / "checkpoint.pt")
    assert main(cases[1]) == 2
    assert "its checkpoint.pt is from an older adabert and is never read" in capsys.readouterr().err
    assert not marker.exists()


def test_resume_with_another_genotype_exits_2(searched, tiny_store, tmp_path, capsys):
    from adabert.cli import main
    from adabert.genotype import random_genotype

    search, student = searched
    searched_genotype = Genotype.load(search / "genotype.json")
    other = next(
        g
        for seed in range(1, 50)
        if (
            g := random_genotype(
                searched_genotype.space,
                seed,
                hidden_size=searched_genotype.hidden_size,
                embedding=searched_genotype.embedding,
            )
        )
        != searched_genotype
    )
    other.save(tmp_path / "other.json")
    before = (student / "model.safetensors").read_bytes()
    argv = [
        "train",
        "--config",
        str(student / "train_config.json"),
        "--genotype",
        str(tmp_path / "other.json"),
        "--store",
        str(tiny_store),
        "--output-dir",
        str(student),
        "--epochs",
        "2",
        "--resume",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "cannot resume, the training started from another genotype" in err and "Traceback" not in err
    assert (student / "model.safetensors").read_bytes() == before


# ------------------------------------------------------------------------------------------ locks
def test_a_second_command_into_a_folder_in_use_exits_2_naming_the_holder(tmp_path, capsys):
    from adabert.cli import main
    from adabert.io import folder_lock, lock_file

    out = tmp_path / "search"
    with folder_lock(out):
        assert lock_file(out) == tmp_path / ".search.lock"
        assert main(["search", "--store", str(tmp_path / "store"), "--output-dir", str(out)]) == 2
        assert f"{out} is in use by another adabert process, pid {os.getpid()}" in capsys.readouterr().err
    # released, the next command gets past the lock (and stops at the missing store instead)
    assert main(["search", "--store", str(tmp_path / "store"), "--output-dir", str(out)]) == 2
    assert "knowledge store" in capsys.readouterr().err and not out.exists()


def test_a_killed_holder_never_blocks_the_next_run(tmp_path):
    from adabert.io import folder_lock, lock_file

    out = tmp_path / "student"
    code = f"import os; from adabert.io import folder_lock\nwith folder_lock({str(out)!r}): os._exit(0)"
    subprocess.run([sys.executable, "-c", code], env=_env(), check=True, timeout=120)
    assert lock_file(out).read_text().strip()  # the dead holder's pid is still written there
    with folder_lock(out) as held:
        assert held and lock_file(out).read_text().split()[0] == str(os.getpid())


def test_under_torchrun_only_rank_0_takes_the_lock(tmp_path, monkeypatch):
    from adabert.io import folder_lock

    out = tmp_path / "search"
    with folder_lock(out):
        monkeypatch.setenv("RANK", "1")
        with folder_lock(out) as held:  # rank 1 does not wait for, or take, the lock
            assert held is False
