"""Pictures of a genotype: its cell drawn as a labelled DAG (PNG or SVG).

Kept apart from ``adabert/genotype.py`` (the value) so that reading, validating and deriving a
genotype never involves layout code; matplotlib is imported only when a picture is drawn.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import networkx as nx

from adabert.genotype import OUTPUT_NODE, Genotype
from adabert.io import atomic_path


def _cell_layout(genotype: Genotype) -> dict[Any, tuple[float, float]]:
    """Inputs stacked in the left column (c_{k-2} on top), one column per intermediate node, staggered
    up and down so no three nodes line up, and the output on the right."""
    n_in = genotype.num_input_nodes
    pos: dict[Any, tuple[float, float]] = {i: (0.0, float(n_in - 1 - 2 * i)) for i in range(n_in)}
    for j, n in enumerate(genotype.intermediate_nodes):
        pos[n] = (float(j + 1), 0.6 if j % 2 == 0 else -0.6)
    pos[OUTPUT_NODE] = (float(genotype.num_nodes + 1), 0.0)
    return pos


def _bend(pos: dict[Any, tuple[float, float]], u: Any, v: Any, clearance: float = 0.4) -> float:
    """Arc radius for edge u -> v: 0 unless the straight line passes close to another node, then bulge
    away from the nearest such node (matplotlib's arc3 puts the control point at mid + rad * (dy, -dx))."""
    (x1, y1), (x2, y2) = pos[u], pos[v]
    dx, dy = x2 - x1, y2 - y1
    nearest, best = None, clearance
    for n, (px, py) in pos.items():
        if n in (u, v):
            continue
        t = min(1.0, max(0.0, ((px - x1) * dx + (py - y1) * dy) / (dx * dx + dy * dy)))
        dist = ((x1 + t * dx - px) ** 2 + (y1 + t * dy - py) ** 2) ** 0.5
        if dist < best:
            nearest, best = (px, py), dist
    if nearest is None:
        return 0.0
    mx, my = (x1 + x2) / 2 - nearest[0], (y1 + y2) / 2 - nearest[1]
    return 0.3 if dy * mx - dx * my >= 0 else -0.3


_LABEL_SPOTS = (0.5, 0.38, 0.62, 0.28, 0.72)  # where an edge label may sit, as fractions from the source
_NODE_SIZE = 1400  # points^2, as networkx takes it


def _arc_point(p0: Any, p2: Any, rad: float, t: float) -> tuple[Any, float]:
    """Point at fraction ``t`` of matplotlib's arc3 curve from ``p0`` to ``p2`` (display coordinates:
    control point = midpoint + rad * (dy, -dx)) and the curve's angle there in degrees, kept upright."""
    import numpy as np

    p0, p2 = np.asarray(p0, dtype=float), np.asarray(p2, dtype=float)
    d = p2 - p0
    c = (p0 + p2) / 2 + rad * np.array([d[1], -d[0]])
    point = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * c + t**2 * p2
    tangent = 2 * (1 - t) * (c - p0) + 2 * t * (p2 - c)
    angle = float(np.degrees(np.arctan2(tangent[1], tangent[0])))
    return point, angle - 180 if angle > 90 else angle + 180 if angle < -90 else angle


def _place_edge_labels(fig: Any, ax: Any, g: nx.DiGraph, pos: dict[Any, tuple[float, float]]) -> None:
    """Write each op name along its edge, slid to the first spot whose rendered box overlaps no node and
    no earlier label (crossing edges would otherwise stack their labels at the shared midpoint)."""
    from matplotlib.transforms import Bbox

    renderer = fig.canvas.get_renderer()
    to_px, to_data = ax.transData.transform, ax.transData.inverted().transform
    r = (_NODE_SIZE**0.5 / 2) * fig.dpi / 72  # node radius in pixels
    taken = [Bbox.from_extents(x - r, y - r, x + r, y + r) for x, y in to_px(list(pos.values()))]
    for u, v, op in g.edges(data="op"):
        if op == "mix":
            continue
        rad = _bend(pos, u, v)
        best = None
        for t in _LABEL_SPOTS:
            point, angle = _arc_point(to_px(pos[u]), to_px(pos[v]), rad, t)
            text = ax.text(
                *to_data(point), op, rotation=angle, rotation_mode="anchor", ha="center", va="center",
                fontsize=9, bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.85},
            )  # fmt: skip
            box = text.get_window_extent(renderer)
            clashes = sum(box.overlaps(other) for other in taken)
            if best is None or clashes < best[0]:
                if best is not None:
                    best[1].remove()
                best = (clashes, text, box)
            else:
                text.remove()
            if clashes == 0:
                break
        taken.append(best[2])


def draw_genotype(genotype: Genotype, path: str | Path) -> Path:
    """Draw the cell to PNG or SVG (by suffix) with edge labels naming the ops; written atomically.

    Uses a bare matplotlib Figure on an Agg canvas (no pyplot), so it never switches the global backend
    or leaks figures in a long-running search process.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in ("png", "svg"):
        raise ValueError(f"{path}: expected a .png or .svg file name")
    g = genotype.to_networkx()
    pos = _cell_layout(genotype)

    fig = Figure(
        figsize=(2.2 * (genotype.num_nodes + 2), 1.4 * max(genotype.num_input_nodes, 2) + 2), dpi=120
    )
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_axis_off()
    colors = {"input": "#a6cee3", "intermediate": "#fdbf6f", "output": "#b2df8a"}
    nx.draw_networkx_nodes(
        g,
        pos,
        ax=ax,
        node_color=[colors[g.nodes[n]["kind"]] for n in g],
        node_size=_NODE_SIZE,
        edgecolors="#333",
    )
    nx.draw_networkx_labels(g, pos, ax=ax, labels={n: f"${g.nodes[n]['label']}$" for n in g}, font_size=11)
    groups: dict[tuple[float, bool], list[tuple[Any, Any]]] = {}
    for u, v, op in g.edges(data="op"):
        groups.setdefault((_bend(pos, u, v), op == "mix"), []).append((u, v))
    for (rad, mix), edgelist in groups.items():
        style = f"arc3,rad={rad}"
        nx.draw_networkx_edges(
            g,
            pos,
            ax=ax,
            edgelist=edgelist,
            node_size=_NODE_SIZE,
            arrowsize=14,
            connectionstyle=style,
            edge_color="#999" if mix else "#444",
            style="dashed" if mix else "solid",
        )
    ax.set_title(f"{genotype.space}: depth {genotype.num_cells} (cells), hidden {genotype.hidden_size}")
    ax.margins(0.1)
    fig.tight_layout()
    ax.set_xlim(ax.get_xlim())  # freeze the transform: labels are placed in display coordinates below
    ax.set_ylim(ax.get_ylim())
    _place_edge_labels(fig, ax, g, pos)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt)
    return path
