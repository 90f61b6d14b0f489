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

from adabert.genotype import Genotype


def supernet_scores(search_dir: str | Path, genotypes: list[Genotype]) -> list[dict[str, float]]:
    """Held-out loss and metrics of each genotype's path inside the searched supernet of ``search_dir``
    (its last checkpoint), on that search's judge rows."""
    import torch

    from adabert import data
    from adabert.checkpoint import load_state
    from adabert.config import SearchConfig, load_config
    from adabert.search.loop import CHECKPOINT, CHECKPOINT_KIND, build_supernet, load_weights, split_rows
    from adabert.search.selection import score
    from adabert.store import KnowledgeStore

    search_dir = Path(search_dir)
    cfg = load_config(SearchConfig, search_dir / "config.json")
    store = KnowledgeStore.open(cfg.store)
    net = build_supernet(cfg, store)
    load_weights(net, load_state(search_dir / CHECKPOINT, CHECKPOINT_KIND)["model"], search_dir / CHECKPOINT)
    torch.manual_seed(cfg.seed)
    judge_rows = split_rows(cfg, store)[2]
    loader = data.loader(judge_rows, cfg.batch_size * 2, False, pad_token_id=judge_rows.pad_token_id)
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
