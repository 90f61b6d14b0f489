"""Search-step throughput: 2 processes (gloo, 1 thread each) against 1 process (1 thread, 2 threads).

Every variant runs the same supernet (the paper's space at full size: hidden 128, K_max = 8, a
BERT-sized 30522 x 384 frozen embedding table), the same global batches and the same sequence of
Gumbel-sampled sub-networks, so the variants differ only in how the work is spread. A step is what
``adabert search`` does per batch: a weight step and an architecture step, each a forward and backward
of ``(1 - gamma) CE + gamma KD + beta L_E`` on a fresh sample, the weighted all-reduce of the
gradients and loss terms (``adabert.distributed.reduce_gradients``; a no-op in one process),
clipping and an Adam update. Under 2 processes each rank takes half of every global batch, exactly as
``adabert.data.ShardedBatchSampler`` splits it. (The step mirrors ``adabert.search`` here rather than
importing it, so the script also runs where the ``datasets`` package is missing.)

Each variant is a fresh set of processes (``torch.multiprocessing.spawn``; the 2-process variant sets
RANK / WORLD_SIZE / MASTER_ADDR=127.0.0.1 like torchrun and joins through ``adabert.distributed.setup``),
and the variants are interleaved over ``--rounds`` so drift on a shared machine hits them alike.
Throughput is global-batch examples per second over all timed steps. Prints JSON.

    OMP_NUM_THREADS=1 python benchmarks/distributed_search.py [--batch-size 32] [--seq-len 64] \\
        [--steps 12] [--warmup 3] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

VARIANTS = {  # name: (processes, torch threads per process)
    "1_process_1_thread": (1, 1),
    "1_process_2_threads": (1, 2),
    "2_processes_gloo_1_thread_each": (2, 1),
}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batch(args: argparse.Namespace, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    b, n = args.batch_size, args.seq_len
    lengths = torch.randint(n // 2, n + 1, (b,), generator=g)
    mask = (torch.arange(n) < lengths[:, None]).long()
    return {
        "input_ids": torch.randint(1000, 30000, (b, n), generator=g) * mask,
        "attention_mask": mask,
        "token_type_ids": ((torch.arange(n) >= lengths[:, None] // 2).long() * mask),
        "labels": torch.randint(0, 2, (b,), generator=g),
        "probe_logits": torch.randn(b, 7, 2, generator=g),
    }


def _shard(batch: dict[str, torch.Tensor], rank: int, world: int) -> tuple[dict[str, torch.Tensor], float]:
    n = len(batch["labels"])
    base, extra = divmod(n, world)
    lo = rank * base + min(rank, extra)
    hi = lo + base + (1 if rank < extra else 0)
    return {k: v[lo:hi] for k, v in batch.items()}, (hi - lo) / n


def _worker(rank: int, world: int, threads: int, port: int, args: argparse.Namespace, result: str) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo",
    )  # fmt: skip
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    from adabert import distributed
    from adabert.distill import hierarchical_kd, task_loss
    from adabert.search.efficiency import PaperCost
    from adabert.search.supernet import Supernet
    from search_spaces import get_space

    ctx = distributed.setup()
    torch.manual_seed(0)
    tables = {"word": torch.randn(30522, 384), "position": torch.randn(512, 384)}
    net = Supernet(get_space("adabert_cnn"), 2, tables, max_cells=args.max_cells).train()
    cost = PaperCost(net.space, net.hidden_size, 128, net.max_cells)
    distributed.broadcast_parameters([*net.parameters(), *net.buffers()])
    w_params, a_params = net.weight_parameters(), net.arch_parameters()
    w_opt = torch.optim.Adam(w_params, lr=5e-4, weight_decay=3e-4)
    a_opt = torch.optim.Adam(a_params, lr=1e-4, weight_decay=1e-3)
    sampler = torch.Generator().manual_seed(17)  # the same sub-networks on every rank and in every variant
    batches = [_batch(args, seed) for seed in range(4)]
    times, reduced, waits = [], [], []
    for step in range(args.warmup + args.steps):
        distributed.barrier()
        started, wait = time.perf_counter(), 0.0
        for params, optimizer, batch in (
            (w_params, w_opt, batches[(2 * step) % 4]),
            (a_params, a_opt, batches[(2 * step + 1) % 4]),
        ):
            rows, share = _shard(batch, ctx.rank, ctx.world_size)
            sample = net.sample(1.0, sampler)
            out = net(rows["input_ids"], rows["attention_mask"], rows["token_type_ids"], sample)
            ce = task_loss(out.logits, rows["labels"], False)
            kd = hierarchical_kd(out.probe_logits, rows["probe_logits"], rows["labels"], False)
            loss = 0.2 * ce + 0.8 * kd + 4.0 * cost.loss(sample)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            stats = torch.tensor([loss.item(), ce.item(), kd.item()], dtype=torch.float64)
            before = time.perf_counter()
            distributed.reduce_gradients(params, share, stats)
            wait += time.perf_counter() - before
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            optimizer.step()
            if step >= args.warmup and params is w_params:
                reduced.append(sum(p.grad.numel() for p in params if p.grad is not None))
        if step >= args.warmup:
            times.append(time.perf_counter() - started)
            waits.append(wait)
    distributed.check_in_sync({"edge_logits": net.edge_logits, "depth_logits": net.depth_logits})
    if ctx.is_main:
        Path(result).write_text(json.dumps({"times": times, "reduced": reduced, "waits": waits}))
    distributed.barrier()
    distributed.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch-size", type=int, default=32, help="global batch (split over the processes)")
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--max-cells", type=int, default=8)
    parser.add_argument("--steps", type=int, default=12, help="timed steps per variant and round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for name, (world, threads) in VARIANTS.items():
                result = str(Path(tmp) / f"{name}.{round_}.json")
                mp.spawn(_worker, (world, threads, _free_port(), args, result), nprocs=world, join=True)
                runs[name].append(json.loads(Path(result).read_text()))
    report: dict[str, dict] = {}
    for name, rounds in runs.items():
        times = [t for r in rounds for t in r["times"]]
        report[name] = {
            "processes": VARIANTS[name][0],
            "threads_per_process": VARIANTS[name][1],
            "examples_per_s": args.batch_size * len(times) / sum(times),
            "median_step_s": statistics.median(times),
            "per_round_examples_per_s": [args.batch_size * len(r["times"]) / sum(r["times"]) for r in rounds],
            "steps_timed": len(times),
            # time inside the gradient all-reduce: the transfer plus waiting for the slower rank
            "all_reduce_share_of_step": sum(w for r in rounds for w in r["waits"]) / sum(times),
        }
    base = report["1_process_1_thread"]["examples_per_s"]
    for entry in report.values():
        entry["speedup_vs_1_process_1_thread"] = entry["examples_per_s"] / base
    reduced = runs["2_processes_gloo_1_thread_each"][0]["reduced"]
    report["setup"] = {
        **vars(args),
        "space": "adabert_cnn",
        "hidden_size": 128,
        "step": "weight step + architecture step, each with its all-reduce",
        "gradient_floats_all_reduced_per_weight_step_mean": statistics.mean(reduced),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
