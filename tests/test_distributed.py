"""Search and student training under torchrun: 2 CPU processes (gloo) on 127.0.0.1 hold the same model.

The test launches this very file under ``python -m torch.distributed.run --nproc-per-node 2``; each
rank (``_worker`` below) runs a search, an interrupted-and-resumed search and a student training, and
saves what it held (the architecture logits at every derivation, the student's weights at every dev
evaluation) to ``rank<R>.pt`` for the test to compare across ranks and with rank 0's files.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from adabert import data, distributed
from adabert.checkpoint import load_state
from adabert.genotype import Genotype, derive_genotype
from adabert.search import run_search
from search_spaces import get_space

sys.path.insert(0, str(Path(__file__).parent))
from test_search import search_config  # noqa: E402


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(tmp_path: Path, nproc: int, *args: str) -> None:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "GLOO_SOCKET_IFNAME": "lo",  # loopback only
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
        "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
        __file__, *args,
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    (tmp_path / "torchrun.log").write_text(done.stdout + done.stderr)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_two_processes_hold_the_same_architecture_and_weights(tiny_store, tmp_path):
    _launch(tmp_path, 2, str(tiny_store), str(tmp_path))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2] and [r["rank"] for r in ranks] == [0, 1]

    # the same architecture logits on both ranks at every derivation (2 + 2 + 1 epochs)
    logits0, logits1 = ranks[0]["arch_logits"], ranks[1]["arch_logits"]
    assert len(logits0) == len(logits1) == 5
    for (edge0, depth0), (edge1, depth1) in zip(logits0, logits1):
        assert torch.equal(edge0, edge1) and torch.equal(depth0, depth1)

    # ... and they are what rank 0 wrote: the genotype file and the checkpoint
    full = tmp_path / "full"
    edge, depth = logits0[1]
    checkpoint = load_state(full / "checkpoint.safetensors", "search")
    assert torch.equal(checkpoint["model"]["edge_logits"], edge)
    assert checkpoint["world_size"] == 2 and len(checkpoint["rng_per_rank"]) == 2
    space = get_space("adabert_cnn")
    genotype = Genotype.load(full / "genotype.json")
    # the budget does not bind (target_latency_ms=1e6): the derivation is the plain argmax
    assert genotype == derive_genotype(space, edge, depth, 16, embedding=genotype.embedding)
    log = _records(full / "search_log.jsonl")
    assert [r["epoch"] for r in log] == [1, 2]  # written once, by rank 0
    assert log[-1]["op_probabilities"] == torch.softmax(edge, -1).tolist()

    # interrupted after epoch 1 and resumed under torchrun: the same search as the uninterrupted one
    part = tmp_path / "part"
    assert Genotype.load(part / "genotype.json") == genotype
    for a, b in zip(log, _records(part / "search_log.jsonl")):
        assert {k: v for k, v in a.items() if k != "seconds"} == {
            k: v for k, v in b.items() if k != "seconds"
        }

    # the student: the same weights on both ranks after every epoch; rank 0 wrote the model
    weights0, weights1 = ranks[0]["student_weights"], ranks[1]["student_weights"]
    assert len(weights0) == len(weights1) == 2
    for a, b in zip(weights0, weights1):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    metrics = json.loads((tmp_path / "student" / "metrics.json").read_text())
    assert [r["epoch"] for r in metrics["history"]] == [1, 2]
    assert ranks[0]["train_result"]["dev"] == ranks[1]["train_result"]["dev"] == metrics["dev"]
    assert not list(tmp_path.rglob("*.tmp"))


def test_sharded_batches_cover_each_global_batch_once():
    size, batch = 11, 4
    whole = list(data.ShardedBatchSampler(size, batch, True, seed=3))
    for world in (2, 3, 5):
        parts = [data.ShardedBatchSampler(size, batch, True, 3, r, world) for r in range(world)]
        per_rank = [list(p) for p in parts]
        for step, rows in enumerate(whole):
            got = [i for r in range(world) if parts[r].shares[step] > 0 for i in per_rank[r][step]]
            assert got == rows  # each global batch split in order, no row twice, none lost
            assert sum(p.shares[step] for p in parts) == pytest.approx(1.0)
    # a last batch (3 rows) smaller than the ranks (5): two ranks run a stand-in row with share 0
    last = [data.ShardedBatchSampler(size, batch, False, 0, r, 5) for r in range(5)]
    assert [p.shares[-1] for p in last] == [pytest.approx(1 / 3)] * 3 + [0.0, 0.0]
    # a second pass continues the seeded generator: a new order, the same for a fresh sampler's 2nd pass
    again = data.ShardedBatchSampler(size, batch, True, seed=3)
    assert list(again) == whole and list(again) != whole


def test_single_process_helpers_are_no_ops(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    ctx = distributed.setup()
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.distributed) == (0, 1, True, False)
    t = torch.tensor([1.0, 3.0])
    assert distributed.all_reduce_mean(t) is t and t.tolist() == [1.0, 3.0]
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    assert distributed.all_gather_object(5) == [5]
    stats = torch.tensor([2.0])
    assert distributed.reduce_gradients([torch.nn.Parameter(torch.ones(2))], 1.0, stats) is stats
    distributed.barrier()
    distributed.check_in_sync({"x": t})
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "two")
    with pytest.raises(ValueError, match="RANK='two' is not an integer"):
        distributed.setup()
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(ValueError, match="MASTER_ADDR.*torchrun"):
        distributed.setup()


def test_resuming_with_another_number_of_processes_keeps_rank_0s_stream(caplog):
    from adabert.checkpoint import restore_rng_state

    torch.manual_seed(1)
    first = torch.get_rng_state()
    torch.manual_seed(2)
    second = torch.get_rng_state()
    restore_rng_state({"rng": first, "rng_per_rank": [first, second]}, seed=0)  # written by 2, read by 1
    assert torch.equal(torch.get_rng_state(), first)
    assert "written by 2 process(es), this run has 1" in caplog.text
    restore_rng_state({"rng": second}, seed=0)  # a checkpoint from before rng_per_rank
    assert torch.equal(torch.get_rng_state(), second)


# ------------------------------------------------------------------------------------- the worker
def _worker(store: str, out: str) -> None:
    """One rank of the test run (under torchrun): search, interrupted search + resume, training."""
    import adabert.search.loop as search_module
    import adabert.student.train as train_module
    from adabert.config import TrainConfig
    from adabert.student.train import train_student

    torch.set_num_threads(1)
    out_dir = Path(out)
    seen: dict[str, list] = {"arch_logits": [], "student_weights": []}
    real_derive, real_predict = search_module.derive_genotype, train_module.predict_logits

    def derive(space, edge_logits, depth_logits, *args, **kwargs):
        seen["arch_logits"].append((edge_logits.clone(), depth_logits.clone()))
        return real_derive(space, edge_logits, depth_logits, *args, **kwargs)

    def predict(model, loader):
        seen["student_weights"].append({k: v.clone() for k, v in model.state_dict().items()})
        return real_predict(model, loader)

    search_module.derive_genotype, train_module.predict_logits = derive, predict
    settings = dict(epochs=2, select="last", target_latency_ms=1e6)  # a budget that does not bind
    run_search(search_config(Path(store), out_dir / "full", **settings))
    # interrupted on every rank during epoch 2 (before its checkpoint), then resumed
    real_evaluate, calls = search_module.epoch_record, []

    def dies_in_epoch_two(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    search_module.epoch_record = dies_in_epoch_two
    try:
        run_search(search_config(Path(store), out_dir / "part", **settings))
    except KeyboardInterrupt:
        pass
    search_module.epoch_record = real_evaluate
    assert len((out_dir / "part" / "search_log.jsonl").read_text().splitlines()) == 1
    run_search(search_config(Path(store), out_dir / "part", **settings, resume=True))
    result = train_student(
        TrainConfig(
            genotype=str(out_dir / "full" / "genotype.json"),
            store=store,
            output_dir=str(out_dir / "student"),
            supernet=str(out_dir / "full"),
            epochs=2,
            batch_size=8,
            probe_kd=0.5,
        )
    )
    ctx = distributed.setup()
    torch.save(
        {**seen, "train_result": result, "rank": ctx.rank, "world_size": ctx.world_size},
        out_dir / f"rank{ctx.rank}.pt",
    )


if __name__ == "__main__":
    _worker(*sys.argv[1:])
