"""What the code computes, pinned: a seeded tiny search, the student trained on its cell and that student
compressed give the genotype and the weights recorded in ``tests/fixtures/behaviour/``.

A refactor (one training engine, settings regrouped, modules moved) must not change them. A change
that means to change what is computed regenerates them with ``ADABERT_WRITE_BEHAVIOUR=1 pytest
tests/test_behaviour.py`` and says so in its commit.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from test_compress import _settings
from test_search import search_config

FIXTURES = Path(__file__).parent / "fixtures" / "behaviour"
WRITE = os.environ.get("ADABERT_WRITE_BEHAVIOUR") == "1"


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def _pin(name: str, weights: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import load_file, save_file

    path = FIXTURES / f"{name}.safetensors"
    if WRITE:
        FIXTURES.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in weights.items()}, str(path))
    pinned = load_file(path)
    assert sorted(weights) == sorted(pinned), f"{name}: other tensors than pinned"
    for key, value in pinned.items():
        assert torch.allclose(weights[key], value, rtol=1e-4, atol=1e-5), f"{name}: {key} changed"


def test_seeded_search_train_and_compress_compute_what_they_did(tiny_store, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the pinned figures were computed with one thread
    try:
        _search_train_compress(tiny_store, tmp_path)
    finally:
        torch.set_num_threads(threads)


def _search_train_compress(tiny_store: Path, tmp_path: Path) -> None:
    from adabert.compress import compress
    from adabert.config import TrainConfig
    from adabert.search import run_search
    from adabert.student.train import train_student

    search_dir = tmp_path / "search"
    genotype = run_search(search_config(tiny_store, search_dir, epochs=2)).to_dict()
    pinned = FIXTURES / "genotype.json"
    if WRITE:
        FIXTURES.mkdir(parents=True, exist_ok=True)
        pinned.write_text(json.dumps(genotype, indent=1, sort_keys=True) + "\n")
    assert genotype == json.loads(pinned.read_text())

    student = tmp_path / "student"
    train_student(
        TrainConfig(
            genotype=str(search_dir / "genotype.json"),
            store=str(tiny_store),
            output_dir=str(student),
            supernet=str(search_dir),
            epochs=2,
            batch_size=8,
            seed=0,
        )
    )
    _pin("student", _weights(student))

    compressed = tmp_path / "compressed"
    compress(
        _settings(tiny_store, compressed, model=str(student), methods="svd,magnitude", target_sparsity=0.5)
    )
    _pin("compressed", _weights(compressed))
