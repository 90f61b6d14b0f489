"""Ranking fidelity, the standard check of a one-shot search: does the supernet rank cells as training
them alone would?

The architecture step trusts the supernet's shared weights to say which paths are better. Sample
cells from the space, score each inside the searched supernet on the judge rows (rows no step trained
on), train each alone, and take Kendall's tau between the two orders. A tau near 0 says the shared
weights rank cells no better than chance, whatever the search then derives.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adabert.genotype import Genotype, random_genotype


def parametric_ops(space: Any) -> list[str]:
    """The ops of ``space`` (a name or a space) that carry weights."""
    from search_spaces import get_space

    space = get_space(space) if isinstance(space, str) else space
    return [op for op in space.ops if any(True for _ in space.build_op(op, 8).parameters())]


def ranking_cells(space: Any, count: int, seed: int, hidden_size: int, embedding: dict) -> list[Genotype]:
    """``count`` cells of the space, stratified by their share of parametric ops: cell ``i`` draws each
    edge's op from the parametric ops with probability ``i / (count - 1)``, else from the parameter-free
    ones (depth and inputs as ``random_genotype`` draws them). Uniform draws are mostly convolutions
    (6 of the 9 non-zero ops of the default space), whose alone-trained scores differ by less than the
    dev set's noise, so no ranking among them can be measured; the strata spread the cells from
    pools-only to convolutions-only."""
    import random

    from search_spaces import get_space

    space = get_space(space) if isinstance(space, str) else space
    ops = [op for op in space.ops if op != space.zero_op]
    weighted = set(parametric_ops(space))
    parametric = [op for op in ops if op in weighted]
    free = [op for op in ops if op not in parametric] or parametric
    parametric = parametric or free
    rng = random.Random(seed)
    cells = []
    for i in range(count):
        share = i / max(1, count - 1)
        cell = random_genotype(space, rng, hidden_size=hidden_size, embedding=embedding).to_dict()
        for edge in cell["edges"]:
            edge["op"] = rng.choice(parametric if rng.random() < share else free)
        cells.append(Genotype.from_dict(cell))
    return cells


def supernet_scores(search_dir: str | Path, genotypes: list[Genotype]) -> list[dict[str, float]]:
    """Held-out loss and metrics of each genotype's path inside the searched supernet of ``search_dir``
    (its last checkpoint, with the weights the search judged it with), on that search's judge rows."""
    import contextlib

    import torch

    from adabert import data
    from adabert.checkpoint import load_state
    from adabert.config import SearchConfig, load_config
    from adabert.engine import WeightAverage
    from adabert.search.loop import CHECKPOINT, CHECKPOINT_KIND, build_supernet, load_weights, split_rows
    from adabert.search.selection import score
    from adabert.teacher.store import KnowledgeStore

    search_dir = Path(search_dir)
    cfg = load_config(SearchConfig, search_dir / "config.json")
    store = KnowledgeStore.open(cfg.store)
    net = build_supernet(cfg, store)
    state = load_state(search_dir / CHECKPOINT, CHECKPOINT_KIND)
    load_weights(net, state["model"], search_dir / CHECKPOINT)
    judged = contextlib.nullcontext()
    if "weight_average" in state:  # the weights the search judged its supernet with
        average = WeightAverage(net.weight_parameters(), 1)
        average.load_state_dict(state["weight_average"])
        judged = average.applied()
    torch.manual_seed(cfg.seed)
    judge_rows = split_rows(cfg, store)[2]
    loader = data.loader(judge_rows, cfg.batch_size * 2, False, pad_token_id=judge_rows.pad_token_id)
    with judged:
        return [score(net, net.fixed_sample(g), loader, store.task) for g in genotypes]


def kendall_tau(supernet: list[float], alone: list[float]) -> float:
    """Kendall's tau-b between two scores of the same cells (both higher-is-better)."""
    from scipy.stats import kendalltau

    if len(supernet) != len(alone) or len(supernet) < 2:
        raise ValueError(f"Kendall's tau needs two lists of at least 2 scores each, got {supernet}, {alone}")
    return float(kendalltau(supernet, alone).statistic)


def ranking_record(
    genotypes: list[Genotype], supernet: list[dict[str, Any]], alone: list[float], key: str = "loss"
) -> dict[str, Any]:
    """The JSON of a ranking check: per cell its supernet score (``key``; a loss counts negated) and its
    trained-alone metric."""
    inside = [-s[key] if key == "loss" else s[key] for s in supernet]
    return {
        "kendall_tau": kendall_tau(inside, alone),
        "cells": [
            {"genotype": g.to_dict(), "supernet": s, "alone": a}
            for g, s, a in zip(genotypes, supernet, alone)
        ],
        "supernet_key": key,
    }
