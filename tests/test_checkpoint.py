"""Pickle-free checkpoints: round trips of real training state, refusal of anything else."""

from __future__ import annotations

import pickle  # noqa: S403 - only to craft a hostile file the loader must refuse
from pathlib import Path

import pytest
import torch

from adabert.checkpoint import CheckpointError, load_state, save_state


def _state() -> dict:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net(torch.randn(2, 4)).sum().backward()
    opt.step()
    return (
        {
            "model": net.state_dict(),
            "opt": opt.state_dict(),  # int keys, tuples (betas), tensors (step)
            "rng": torch.get_rng_state(),
            "history": [{"epoch": 1, "dev": {"accuracy": 0.5}, "nan": float("nan")}],
            "pair": (1, "a"),
            "nothing": None,
        },
        net,
        opt,
    )


def test_training_state_round_trips_exactly(tmp_path: Path):
    state, net, opt = _state()
    save_state(tmp_path / "c.safetensors", state, "search", "abc")
    back = load_state(tmp_path / "c.safetensors", "search", "abc")
    assert back["opt"]["param_groups"][0]["betas"] == (0.9, 0.999)
    assert set(back["opt"]["state"]) == {0, 1, 2, 3}
    fresh = torch.optim.Adam(net.parameters(), lr=1e-3)
    fresh.load_state_dict(back["opt"])  # the optimizer takes it back: moments and steps restored
    assert torch.equal(fresh.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert all(torch.equal(back["model"][k], v) for k, v in state["model"].items())
    assert torch.equal(back["rng"], state["rng"]) and back["pair"] == (1, "a") and back["nothing"] is None
    assert back["history"][0]["dev"] == {"accuracy": 0.5}


def test_a_crafted_pickle_is_refused_and_never_runs(tmp_path: Path):
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    for name, write in (
        ("torch.safetensors", lambda p: torch.save({"model": Payload(), "config": {}, "epoch": 1}, p)),
        ("raw.safetensors", lambda p: p.write_bytes(pickle.dumps({"x": Payload()}))),
        ("checkpoint.pt", lambda p: torch.save({"x": Payload()}, p)),
    ):
        path = tmp_path / name
        write(path)
        with pytest.raises(CheckpointError, match="a pickle-based checkpoint.*never unpickles"):
            load_state(path, "search")
    assert not marker.exists()


def test_foreign_damaged_and_mismatched_checkpoints_are_refused(tmp_path: Path):
    state, _, _ = _state()
    path = tmp_path / "c.safetensors"
    save_state(path, state, "training", "h1")
    with pytest.raises(CheckpointError, match="not an adabert search checkpoint"):
        load_state(path, "search")
    with pytest.raises(CheckpointError, match="other settings"):
        load_state(path, "training", "h2")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="not a safetensors checkpoint"):
        load_state(path, "training")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_state(tmp_path / "missing.safetensors", "training")


def test_unsupported_values_fail_at_save_time(tmp_path: Path):
    with pytest.raises(TypeError, match="'x.y' has type object"):
        save_state(tmp_path / "c.safetensors", {"x": {"y": object()}}, "search", "")
    assert not (tmp_path / "c.safetensors").exists()


def test_a_header_length_that_starts_like_a_pickle_still_loads(tmp_path: Path):
    """A safetensors file starts with its header length: a low byte of 0x80 must not look like a pickle."""
    for pad in range(400):
        path = tmp_path / "c.safetensors"
        save_state(path, {"x": torch.ones(2), "pad": "p" * pad}, "search", "")
        if path.read_bytes()[:1] == b"\x80":
            assert load_state(path, "search")["pad"] == "p" * pad
            return
    pytest.fail("no padding gave a header length whose low byte is 0x80")
