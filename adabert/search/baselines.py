"""Baselines a searched architecture must beat: random genotypes at the same latency budget.

A random cell drawn from the whole space is mostly slower or faster than the searched one, so it
compares two things at once. :func:`random_at_budget` draws random genotypes until it has ``count``
whose predicted latency (the measured table) is within ``tolerance`` of the searched genotype's.
"""

from __future__ import annotations

import random
from typing import Any

from adabert.genotype import Genotype, random_genotype
from adabert.search.latency import LatencyTable
from search_spaces import SearchSpace


def random_at_budget(
    space: SearchSpace,
    table: LatencyTable,
    target_ms: float,
    batch: int,
    count: int,
    seed: int,
    hidden_size: int,
    embedding: dict[str, Any] | None = None,
    tolerance: float = 0.15,
    max_draws: int = 100_000,
) -> list[Genotype]:
    """``count`` random genotypes whose predicted latency at ``batch`` is within ``tolerance`` of
    ``target_ms``, drawn in a fixed order from ``seed``."""
    rng = random.Random(seed)
    found: list[Genotype] = []
    for _ in range(max_draws):
        genotype = random_genotype(space, rng, hidden_size=hidden_size, embedding=embedding)
        if abs(table.predict(genotype, batch) / target_ms - 1) <= tolerance and genotype not in found:
            found.append(genotype)
            if len(found) == count:
                return found
    raise ValueError(
        f"only {len(found)} of {count} random genotypes of {space.name} came within {tolerance:.0%} of "
        f"{target_ms:.3f} ms in {max_draws} draws; widen the tolerance"
    )
