"""The architecture search stage: supernet, efficiency costs and the measured latency table, remedies
against the one-shot collapse, genotype selection, and the loop that ties them together.

``run_search(SearchConfig)`` is the stage; the other modules are its parts:

- :mod:`adabert.search.supernet`: the searchable network and its samples;
- :mod:`adabert.search.efficiency`: AdaBERT's efficiency term and the budget term;
- :mod:`adabert.search.latency`: the measured, cached latency table of a space;
- :mod:`adabert.search.remedies`: warm-up, temperature, dropout, auxiliary skip, beta-DARTS;
- :mod:`adabert.search.selection`: last, best epoch, or measured contributions;
- :mod:`adabert.search.loop`: the loop itself.
"""

from adabert.search.loop import (
    CHECKPOINT,
    CHECKPOINT_KIND,
    build_supernet,
    genotype_embedding,
    run_search,
    student_tables,
)

__all__ = [
    "CHECKPOINT",
    "CHECKPOINT_KIND",
    "build_supernet",
    "genotype_embedding",
    "run_search",
    "student_tables",
]
