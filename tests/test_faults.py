"""Faults: a search killed with SIGKILL mid-epoch resumes to the same result; a diverging training
stops with a clear message and leaves its last good state as it was."""

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

from adabert.config import TrainConfig
from adabert.genotype import Genotype
from adabert.search import DivergenceError, run_search

sys.path.insert(0, str(Path(__file__).parent))
from test_search import search_config  # noqa: E402

SETTINGS = dict(epochs=3, batch_size=4)


def _cli(store: Path, out: Path, *extra: str) -> list[str]:
    cfg = search_config(store, out, **SETTINGS)
    flags = []
    for key in ("store", "output_dir", "hidden_size", "max_cells", "epochs", "batch_size", "w_lr", "arch_lr",
                "cost_seq_len", "seed"):  # fmt: skip
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
    while b"search epoch 2/3" not in seen:  # the progress bar of epoch 2: epoch 1 is checkpointed
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
    import adabert.train as train_module

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
    before = {
        name: (student / name).read_bytes() for name in ("training_state.safetensors", "model.safetensors")
    }
    monkeypatch.setattr(train_module, "task_loss", lambda logits, *_: logits.sum() * float("inf"))
    with pytest.raises(
        DivergenceError, match=r"became -?(nan|inf) at epoch 2.*training_state.safetensors.*intact"
    ):
        train_module.train_student(TrainConfig(**{**settings, "epochs": 2, "resume": True}))
    assert {name: (student / name).read_bytes() for name in before} == before
    assert not list(student.glob(".*.tmp")) and not list(student.glob(".save.*"))
