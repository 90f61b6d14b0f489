"""Time one search step with sampled ops against a DARTS-style step that runs every op on every edge.

Both steps use the same supernet (the paper's space at full size: hidden 128, K_max = 8, a
BERT-sized 30522-word embedding table), the same batch, and the same loss terms, and include the
forward, backward and optimizer update of a weight step. The DARTS-style step runs the softmax-
weighted sum of all ops on every edge and all K_max cells; the sampled step runs one op per edge.
To isolate the per-edge saving, the sampled step is timed both at full depth and at a sampled depth.

    python benchmarks/search_step.py [--batch-size 32] [--seq-len 64] [--repeats 10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from adabert.search.supernet import Sample, Supernet
from search_spaces import get_space


def darts_forward(net: Supernet, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """DARTS continuous relaxation: every op of every edge, weighted by softmax(edge logits)."""
    weights = torch.softmax(net.edge_logits, dim=-1)
    inputs, masks = net.embeddings(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    mask = masks.all
    states, levels = inputs, [inputs[0] + inputs[1] if net.pair else inputs[0]]
    for cell in net.cells:
        nodes = list(states)
        for node in range(cell.num_input_nodes, cell.num_input_nodes + cell.num_nodes):
            total = 0
            for e, (source, target) in enumerate(cell.edges):
                if target != node:
                    continue
                for o, op in enumerate(cell.ops[e]):
                    out = op(nodes[source], mask.unsqueeze(1)) if cell.takes_mask[e][o] else op(nodes[source])
                    total = total + weights[e, o] * out
            nodes.append(total * mask.unsqueeze(1))
        mix = torch.softmax(cell.node_mix, 0)
        out = sum(w * s for w, s in zip(mix, nodes[cell.num_input_nodes :]))
        states = [states[-1], out]
        levels.append(out)
    depth = torch.softmax(net.depth_logits, 0)
    return sum(depth[k] * net.heads[k](levels[: k + 2], masks) for k in range(net.max_cells))


def sampled_forward(net: Supernet, batch: dict[str, torch.Tensor], full_depth: bool) -> torch.Tensor:
    sample = net.sample(tau=1.0)
    if full_depth:
        sample = Sample(
            sample.edges, net.max_cells, sample.depth_onehot[-1], sample.edge_onehot, sample.depth_onehot
        )
    return net(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], sample).logits


def time_step(net: Supernet, forward, batch, optimizer, repeats: int, warmup: int = 2) -> list[float]:
    times = []
    for i in range(warmup + repeats):
        started = time.perf_counter()
        logits = forward(net, batch)
        loss = torch.nn.functional.cross_entropy(logits, batch["labels"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--space", default="adabert_cnn")
    args = parser.parse_args()
    torch.manual_seed(0)
    tables = {"word": torch.randn(30522, 384), "position": torch.randn(512, 384)}
    net = Supernet(get_space(args.space), 2, tables).train()
    optimizer = torch.optim.Adam(net.weight_parameters(), lr=1e-4)
    batch = {
        "input_ids": torch.randint(1000, 30000, (args.batch_size, args.seq_len)),
        "attention_mask": torch.ones(args.batch_size, args.seq_len, dtype=torch.long),
        "token_type_ids": (torch.arange(args.seq_len) >= args.seq_len // 2)
        .long()
        .expand(args.batch_size, -1),
        "labels": torch.randint(0, 2, (args.batch_size,)),
    }
    results = {}
    # interleave rounds so that machine drift hits every variant alike
    variants = {
        "darts_all_ops": darts_forward,
        "sampled_full_depth": lambda n, b: sampled_forward(n, b, True),
        "sampled": lambda n, b: sampled_forward(n, b, False),
    }
    samples: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(2):
        for name, forward in variants.items():
            samples[name] += time_step(net, forward, batch, optimizer, args.repeats // 2 or 1)
    for name, times in samples.items():
        results[name] = {"median_s": statistics.median(times), "runs": len(times)}
    base = results["darts_all_ops"]["median_s"]
    for name in ("sampled_full_depth", "sampled"):
        results[name]["speedup_vs_darts"] = base / results[name]["median_s"]
    results["setup"] = {**vars(args), "threads": torch.get_num_threads(), "torch": torch.__version__}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
