"""Genotype: JSON and networkx round trips, DARTS derivation, validation messages, drawing."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import networkx as nx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from adabert.genotype import (
    GENOTYPE_VERSION,
    Edge,
    Genotype,
    GenotypeError,
    derive_genotype,
    make_genotype,
    random_genotype,
)
from adabert.report.draw import draw_genotype
from search_spaces import get_space, list_spaces

SPACE = get_space("adabert_cnn")
EMBEDDING = {"vocab_size": 30522, "max_position_embeddings": 512, "teacher_hidden_size": 384}
EDGES = (
    Edge(0, 2, "conv3"),
    Edge(1, 2, "identity"),
    Edge(0, 3, "dil_conv5"),
    Edge(2, 3, "max_pool3"),
    Edge(1, 4, "avg_pool3"),
    Edge(3, 4, "conv7"),
)


def make(**changes: Any) -> Genotype:
    fields = {
        "space": "adabert_cnn",
        "num_cells": 3,
        "edges": EDGES,
        "hidden_size": 128,
        "embedding": EMBEDDING,
    }
    return Genotype(**{**fields, **changes})


def with_edges(*replace: tuple[Edge, Edge | None], extra: tuple[Edge, ...] = ()) -> tuple[Edge, ...]:
    """EDGES with some edges swapped (or dropped, for None) and some added."""
    swap = dict(replace)
    return tuple(swap.get(e, e) for e in EDGES if swap.get(e, e) is not None) + extra


# ------------------------------------------------------------------------------------------ the value
def test_valid_genotype_reads_well() -> None:
    g = make()
    assert g.validate() is g
    text = str(g)
    assert "adabert_cnn" in text and "3 cell(s)" in text
    assert "node 2 <- conv3(0), identity(1)" in text
    assert "node 4 <- avg_pool3(1), conv7(3)" in text
    assert "output <- mix(2, 3, 4)" in text


def test_edges_are_kept_in_canonical_order() -> None:
    shuffled = make(edges=list(reversed(EDGES)))
    assert shuffled == make() and hash(shuffled) == hash(make())
    assert isinstance(shuffled.edges, tuple)


def test_node_inputs() -> None:
    g = make()
    assert g.node_inputs(3) == [Edge(0, 3, "dil_conv5"), Edge(2, 3, "max_pool3")]
    assert list(g.intermediate_nodes) == [2, 3, 4]
    with pytest.raises(GenotypeError, match="node 1 is not an intermediate node"):
        g.node_inputs(1)
    assert g.search_space is SPACE


# --------------------------------------------------------------------------------------------- JSON
def test_json_round_trip(tmp_path: Path) -> None:
    g = make()
    path = g.save(tmp_path / "run" / "genotype.json")
    assert Genotype.load(path) == g
    assert [p.name for p in path.parent.iterdir()] == ["genotype.json"]  # no temp file left behind
    text = path.read_text()
    assert json.loads(text) == g.to_dict()
    assert json.loads(text)["version"] == GENOTYPE_VERSION
    assert '    {"source": 0, "target": 2, "op": "conv3"},\n' in text  # one edge per line: diffable
    assert Genotype.from_dict(g.to_dict()) == g
    assert Genotype.from_dict({k: v for k, v in g.to_dict().items() if k != "embedding"}) == make(
        embedding={}
    )


def test_save_refuses_an_invalid_genotype(tmp_path: Path) -> None:
    with pytest.raises(GenotypeError, match="num_cells"):
        make(num_cells=0).save(tmp_path / "g.json")
    assert not list(tmp_path.iterdir())


def test_load_reports_file_and_line_of_bad_json(tmp_path: Path) -> None:
    path = tmp_path / "genotype.json"
    path.write_text('{\n  "version": 1,\n  "space": adabert_cnn\n}\n')
    with pytest.raises(GenotypeError, match=rf"^{path}:3:\d+: invalid JSON"):
        Genotype.load(path)
    path.write_text('{"version": 1, "version": 1}')
    with pytest.raises(GenotypeError, match="'version': key given twice"):
        Genotype.load(path)
    path.write_bytes(b'{"space": "\xff"}')
    with pytest.raises(GenotypeError, match="not UTF-8"):
        Genotype.load(path)


def test_load_names_the_file_and_field_of_a_bad_value(tmp_path: Path) -> None:
    d = make().to_dict()
    d["edges"][0]["op"] = "conv9"
    path = tmp_path / "genotype.json"
    path.write_text(json.dumps(d))
    with pytest.raises(GenotypeError, match=rf"^{path}: edge 0 -> 2 \(conv9\): operation 'conv9' is not in"):
        Genotype.load(path)


def _drop(d: dict, key: str) -> None:
    del d[key]


MALFORMED = [
    (lambda d: d.clear(), "version: missing"),
    (lambda d: _drop(d, "num_cells"), "num_cells: missing"),
    (lambda d: d.update(num_cell=3), "'num_cell': unknown key"),
    (lambda d: d.update(num_cells="3"), "num_cells: expected an integer, got '3'"),
    (lambda d: d.update(num_cells=3.0), "num_cells: expected an integer"),
    (lambda d: d.update(hidden_size=True), "hidden_size: expected an integer"),
    (lambda d: d.update(version=7), r"version: expected 1, got 7 \(written by a newer adabert\?\)"),
    (lambda d: d.update(space=["adabert_cnn"]), "space: expected a search space name"),
    (lambda d: d.update(edges={}), "edges: expected a list"),
    (lambda d: d.update(embedding="bert"), "embedding: expected an object"),
    (lambda d: d.update(space_source="pkg"), "space_source: expected an object"),
    (lambda d: d.update(space_source={"module": 3}), "space_source: expected an object of strings"),
    (lambda d: d["edges"].__setitem__(1, [1, 2, "identity"]), r"edges\[1\]: expected an object"),
    (lambda d: _drop(d["edges"][0], "op"), r"edges\[0\]\.op: missing"),
    (lambda d: d["edges"][0].update(weight=0.3), r"edges\[0\]\.weight: unknown key"),
    (lambda d: d["edges"][0].update(source="0"), r"edges\[0\]\.source: expected a node index"),
    (lambda d: d["edges"][0].update(op=3), r"edges\[0\]\.op: expected an operation name"),
]


@pytest.mark.parametrize(("mutate", "message"), MALFORMED, ids=[m for _, m in MALFORMED])
def test_malformed_structure_names_the_key(mutate: Any, message: str) -> None:
    d = make().to_dict()
    mutate(d)
    with pytest.raises(GenotypeError, match=rf"^run/genotype\.json: {message}"):
        Genotype.from_dict(d, source="run/genotype.json")


def test_non_object_top_level() -> None:
    for value in ([], "genotype", 3, None):
        with pytest.raises(GenotypeError, match="top level: expected a JSON object"):
            Genotype.from_dict(value)


# ------------------------------------------------------------------------------------------ validation
INVALID = [
    ({"version": 2}, r"version: expected 1, got 2 \(written by a newer"),
    ({"version": "1"}, "version: expected 1, got '1'"),
    ({"space": "nope"}, "space: unknown search space 'nope'; registered: adabert_cnn"),
    ({"space": None}, "space: expected a search space name"),
    ({"num_nodes": 4}, "num_nodes: expected 3 .the cell shape of space 'adabert_cnn'., got 4"),
    ({"num_input_nodes": 1}, "num_input_nodes: expected 2"),
    ({"num_cells": 0}, r"num_cells: expected an integer in 1\.\.8, got 0"),
    ({"num_cells": 9}, r"num_cells: expected an integer in 1\.\.8, got 9"),
    ({"num_cells": True}, "num_cells: expected an integer"),
    ({"hidden_size": 0}, "hidden_size: expected a positive integer, got 0"),
    ({"embedding": [1]}, "embedding: expected an object with string keys"),
    ({"embedding": {1: 2}}, "embedding: expected an object with string keys"),
    ({"embedding": {"x": float("nan")}}, "embedding: expected JSON-serialisable values"),
    ({"embedding": {"x": {1, 2}}}, "embedding: expected JSON-serialisable values"),
    ({"edges": None}, "edges: expected a sequence of edges"),
    (
        {"edges": EDGES + ((0, 4, "conv3"),)},
        r"edges\[6\]: expected Edge\(source: int, target: int, op: str\)",
    ),
    (
        {"edges": with_edges((EDGES[0], Edge(0, 2, "conv9")))},
        r"edge 0 -> 2 \(conv9\): operation 'conv9' is not in search space 'adabert_cnn' "
        r"\(expected one of: conv3, .*, identity\)$",
    ),
    (
        {"edges": with_edges((EDGES[0], Edge(0, 2, "zero")))},
        r"edge 0 -> 2 \(zero\): the zero op 'zero' means",
    ),
    (
        {"edges": with_edges(extra=(Edge(0, 5, "conv3"),))},
        r"edge 0 -> 5 \(conv3\): target node out of range: the cell has nodes 0\.\.4",
    ),
    (
        {"edges": with_edges(extra=(Edge(-1, 4, "conv3"),))},
        r"edge -1 -> 4 \(conv3\): source node out of range",
    ),
    (
        {"edges": with_edges(extra=(Edge(0, 1, "conv3"),))},
        r"edge 0 -> 1 \(conv3\): target 1 is a cell input; targets must be intermediate nodes 2\.\.4",
    ),
    ({"edges": with_edges(extra=(Edge(0, 2, "conv5"),))}, r"edge 0 -> 2 \(conv\d\): duplicate edge"),
    (
        {"edges": with_edges(extra=(Edge(3, 2, "conv5"),))},
        "edges: the edges form a cycle: (2 -> 3 -> 2|3 -> 2 -> 3)",
    ),
    ({"edges": with_edges(extra=(Edge(2, 2, "conv5"),))}, "edges: the edges form a cycle: 2 -> 2"),
    (
        {"edges": with_edges((EDGES[3], Edge(4, 3, "max_pool3")), (EDGES[5], Edge(0, 4, "conv7")))},
        r"edge 4 -> 3 \(max_pool3\): edges must go forward \(source < target\)",
    ),
    ({"edges": EDGES[:4]}, r"edges: intermediate node\(s\) \[4\] have no incoming edge"),
    ({"edges": ()}, r"edges: intermediate node\(s\) \[2, 3, 4\] have no incoming edge"),
]


@pytest.mark.parametrize(("changes", "message"), INVALID, ids=[m[:40] for _, m in INVALID])
def test_validation_errors(changes: dict, message: str) -> None:
    bad = make(**changes)
    with pytest.raises(GenotypeError, match=rf"^genotype: {message}"):
        bad.validate()


# ------------------------------------------------------------------------------------------ by hand
def test_make_genotype_takes_the_space_shape_and_records_its_source() -> None:
    g = make_genotype("adabert_cnn", [(e.source, e.target, e.op) for e in EDGES], 3, embedding=EMBEDDING)
    assert g == make() and g.hidden_size == SPACE.hidden_size
    assert g.space_source == {"module": "search_spaces.adabert_cnn"}
    assert Genotype.from_json(g.to_json()).space_source == g.space_source
    assert Genotype.from_networkx(g.to_networkx()).space_source == g.space_source
    small = make_genotype("attention_rnn", [(0, 2, "bigru"), (2, 3, "self_attention")], 4, hidden_size=32)
    assert (small.num_input_nodes, small.num_nodes, small.num_cells) == (2, 2, 4)
    with pytest.raises(GenotypeError, match=r"^mine: edges\[1\]: expected \(source, target, op\)"):
        make_genotype("adabert_cnn", [(0, 2, "conv3"), (1, 2)], 1, source="mine")
    with pytest.raises(GenotypeError, match="num_cells: expected an integer in 1..4, got 5"):
        make_genotype("attention_rnn", [(0, 2, "bigru"), (2, 3, "conv3")], 5)
    with pytest.raises(GenotypeError, match=r"intermediate node\(s\) \[3\] have no incoming edge"):
        make_genotype("attention_rnn", [(0, 2, "bigru")], 1)


def test_a_missing_space_is_reported_with_its_package() -> None:
    source = {"module": "g.space", "package": "g-spaces"}
    d = {**make().to_dict(), "space": "gated_conv", "space_source": source}
    with pytest.raises(GenotypeError, match=r"unknown search space 'gated_conv'.*package 'g-spaces'"):
        Genotype.from_dict(d)


def test_genotype_new_writes_a_genotype_that_train_accepts(tmp_path: Path, tiny_store: Path, capsys) -> None:
    from adabert.cli import main

    path = tmp_path / "mine.json"
    edges = ["--edge", "0", "2", "self_attention", "--edge", "1", "2", "bigru", "--edge", "2", "3", "conv3"]
    args = ["genotype", "new", "--space", "attention_rnn", "--cells", "2", "--hidden-size", "16", *edges]
    assert main([*args, "--store", str(tiny_store), "--output", str(path)]) == 0
    g = Genotype.load(path)
    assert g.edges == (Edge(0, 2, "self_attention"), Edge(1, 2, "bigru"), Edge(2, 3, "conv3"))
    assert g.embedding["vocab_size"] > 0
    assert "node 2 <- self_attention(0), bigru(1)" in capsys.readouterr().out
    out = tmp_path / "student"
    train = ["train", "--genotype", str(path), "--store", str(tiny_store), "--output-dir", str(out)]
    assert main([*train, "--epochs", "1", "--batch-size", "16"]) == 0
    assert (out / "model.safetensors").is_file()
    assert main([*args, "--edge", "0", "3", "zero", "--output", str(tmp_path / "bad.json")]) == 2
    assert "the zero op 'zero' means 'no edge'" in capsys.readouterr().err
    assert not (tmp_path / "bad.json").exists()


# --------------------------------------------------------------------------------------------- networkx
def test_networkx_round_trip() -> None:
    g = make()
    graph = g.to_networkx()
    kinds = dict(graph.nodes(data="kind"))
    assert kinds == {0: "input", 1: "input", 2: "intermediate", 3: "intermediate", 4: "intermediate",
                     "output": "output"}  # fmt: skip
    assert graph.nodes[0]["label"] == "c_{k-2}" and graph.nodes[1]["label"] == "c_{k-1}"
    assert [(u, op) for u, _, op in graph.in_edges("output", data="op")] == [
        (2, "mix"),
        (3, "mix"),
        (4, "mix"),
    ]
    assert graph.edges[3, 4]["op"] == "conv7"
    assert nx.is_directed_acyclic_graph(graph)
    assert Genotype.from_networkx(graph) == g
    assert Genotype.from_networkx(graph, "adabert_cnn", 3, 128, EMBEDDING) == g
    assert Genotype.from_networkx(graph, SPACE, num_cells=5).num_cells == 5


def test_from_networkx_of_a_bare_graph() -> None:
    bare = nx.DiGraph()
    bare.add_edges_from((e.source, e.target, {"op": e.op}) for e in EDGES)
    assert Genotype.from_networkx(bare, "adabert_cnn", 3, 128, EMBEDDING) == make()
    with pytest.raises(GenotypeError, match="num_cells: not given"):
        Genotype.from_networkx(bare, "adabert_cnn")
    bare.add_edge(0, 4)
    with pytest.raises(GenotypeError, match="edge 0 -> 4: missing the 'op' attribute"):
        Genotype.from_networkx(bare, "adabert_cnn", 3, 128)


# ----------------------------------------------------------------------------------------- derivation
def _logits(settings: dict[tuple[int, int], dict[str, float]], space: Any = SPACE) -> torch.Tensor:
    logits = torch.zeros(len(space.edges), len(space.ops))
    for edge, ops in settings.items():
        for op, value in ops.items():
            logits[space.edges.index(edge), space.op_index(op)] = value
    return logits


def test_derivation_matches_hand_set_logits() -> None:
    logits = _logits(
        {
            # node 2 keeps both edges; on (0, 2) "zero" is strongest and must be skipped for dil_conv5
            (0, 2): {"zero": 10.0, "dil_conv5": 3.0},
            (1, 2): {"identity": 2.0},
            # node 3: (1, 3) carries the largest logit of the node, on "zero", so it is the weakest edge
            (0, 3): {"conv7": 5.0},
            (1, 3): {"zero": 8.0, "identity": 2.0},
            (2, 3): {"max_pool3": 4.0},
            # node 4: (0, 4) has the largest raw logit but is flat (softmax 0.1 each): strength is the
            # softmax weight, so the peaked (1, 4) and (3, 4) win
            (0, 4): {op: 5.0 for op in SPACE.ops},
            (1, 4): {"conv5": 4.0},
            (2, 4): {"identity": 1.0},
            (3, 4): {"avg_pool3": 3.0},
        }
    )
    depth = torch.zeros(8)
    depth[4] = 1.0
    g = derive_genotype(SPACE, logits, depth, hidden_size=96, embedding=EMBEDDING)
    assert g.edges == (
        Edge(0, 2, "dil_conv5"),
        Edge(1, 2, "identity"),
        Edge(0, 3, "conv7"),
        Edge(2, 3, "max_pool3"),
        Edge(1, 4, "conv5"),
        Edge(3, 4, "avg_pool3"),
    )
    assert (g.num_cells, g.hidden_size, g.embedding, g.space) == (5, 96, EMBEDDING, "adabert_cnn")
    # edges_per_node=1 keeps each node's strongest edge (node 2: identity at 0.45 beats dil_conv5 at 0.001,
    # the zero op having taken its mass); 3 keeps all of node 3, (1, 3) with its best non-zero op
    one = derive_genotype("adabert_cnn", logits, depth, edges_per_node=1)
    assert one.edges == (Edge(1, 2, "identity"), Edge(0, 3, "conv7"), Edge(1, 4, "conv5"))
    assert one.hidden_size == SPACE.hidden_size
    three = derive_genotype(SPACE, logits, depth, edges_per_node=3)
    assert three.node_inputs(3) == [Edge(0, 3, "conv7"), Edge(1, 3, "identity"), Edge(2, 3, "max_pool3")]


def test_derivation_ties_keep_the_earlier_edge_and_op() -> None:
    g = derive_genotype(SPACE, torch.zeros(9, 10), torch.zeros(8))
    assert g.num_cells == 1
    assert g.edges == tuple(Edge(s, t, "conv3") for t in (2, 3, 4) for s in (0, 1))


def test_derivation_accepts_a_capped_depth_and_rejects_bad_logits() -> None:
    assert derive_genotype(SPACE, torch.zeros(9, 10), torch.tensor([0.0, 0.0, 1.0, 0.0])).num_cells == 3
    with pytest.raises(GenotypeError, match=r"edge_logits: expected shape \(9 edges, 10 ops\)"):
        derive_genotype(SPACE, torch.zeros(9, 9), torch.zeros(8))
    with pytest.raises(GenotypeError, match="depth_logits: expected shape"):
        derive_genotype(SPACE, torch.zeros(9, 10), torch.zeros(9))
    with pytest.raises(GenotypeError, match="edge_logits: contains NaN"):
        derive_genotype(SPACE, torch.full((9, 10), float("nan")), torch.zeros(8))
    with pytest.raises(GenotypeError, match="edges_per_node"):
        derive_genotype(SPACE, torch.zeros(9, 10), torch.zeros(8), edges_per_node=0)
    with pytest.raises(GenotypeError, match="unknown search space"):
        derive_genotype("nope", torch.zeros(9, 10), torch.zeros(8))


@pytest.mark.parametrize("space", list_spaces())
def test_derivation_from_random_logits_is_valid_in_every_space(space: str) -> None:
    sp = get_space(space)
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(len(sp.edges), len(sp.ops), generator=gen)
    g = derive_genotype(sp, logits, torch.randn(sp.max_cells, generator=gen))
    assert all(len(g.node_inputs(n)) == min(2, n) for n in g.intermediate_nodes)
    assert all(e.op != sp.zero_op for e in g.edges)


# ----------------------------------------------------------------------------------- property tests
@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**64 - 1),
    space=st.sampled_from(list_spaces()),
    edges_per_node=st.integers(1, 4),
    hidden_size=st.one_of(st.none(), st.integers(1, 1024)),
)
def test_random_genotypes_validate_and_round_trip(
    seed: int, space: str, edges_per_node: int, hidden_size: int | None
) -> None:
    g = random_genotype(
        space, seed, hidden_size=hidden_size, embedding=EMBEDDING, edges_per_node=edges_per_node
    )
    assert g.validate() is g
    assert g == random_genotype(space, seed, hidden_size, EMBEDDING, edges_per_node)  # seeded: reproducible
    assert 1 <= g.num_cells <= get_space(space).max_cells
    assert all(len(g.node_inputs(n)) == min(edges_per_node, n) for n in g.intermediate_nodes)
    assert Genotype.from_json(g.to_json()) == g
    assert Genotype.from_dict(json.loads(json.dumps(g.to_dict()))) == g
    assert Genotype.from_networkx(g.to_networkx()) == g


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
KEYS = list(make().to_dict())


@st.composite
def mutated_dicts(draw: st.DrawFn) -> dict:
    d = random_genotype(draw(st.sampled_from(list_spaces())), draw(st.integers(0, 2**32))).to_dict()
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["drop", "set", "add", "edge_drop", "edge_set", "edge_replace"]))
        edge = (
            draw(st.integers(0, len(d["edges"]) - 1))
            if isinstance(d.get("edges"), list) and d["edges"]
            else None
        )
        if action == "drop" and d:
            del d[draw(st.sampled_from(sorted(d)))]
        elif action == "set":
            d[draw(st.sampled_from(KEYS))] = draw(JSON)
        elif action == "add":
            d[draw(st.text(max_size=8))] = draw(JSON)
        elif edge is not None and isinstance(d["edges"][edge], dict):
            if action == "edge_drop" and d["edges"][edge]:
                del d["edges"][edge][draw(st.sampled_from(sorted(d["edges"][edge])))]
            elif action == "edge_set":
                d["edges"][edge][draw(st.sampled_from(["source", "target", "op"]))] = draw(JSON)
            else:
                d["edges"][edge] = draw(JSON)
    return d


@settings(max_examples=150, deadline=None)
@given(d=mutated_dicts())
def test_malformed_dicts_raise_genotype_error_only(d: dict) -> None:
    before = copy.deepcopy(d)
    try:
        g = Genotype.from_dict(d, source="fuzz.json")
    except GenotypeError as e:
        assert str(e).startswith("fuzz.json")
    else:  # the mutation happened to keep it valid (e.g. dropped "embedding", re-set an equal value)
        assert g.validate() is g and Genotype.from_dict(g.to_dict()) == g
    assert d == before  # from_dict never mutates its input


@pytest.mark.parametrize("key", [k for k in KEYS if k != "embedding"])
def test_dropping_any_required_key_raises(key: str) -> None:
    d = make().to_dict()
    del d[key]
    with pytest.raises(GenotypeError, match=f"{key}: missing"):
        Genotype.from_dict(d)


@settings(max_examples=100, deadline=None)
@given(value=JSON)
def test_arbitrary_json_values_raise_genotype_error(value: Any) -> None:
    with pytest.raises(GenotypeError):
        Genotype.from_dict(value)


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=40))
def test_arbitrary_text_raises_genotype_error(text: str) -> None:
    with pytest.raises(GenotypeError):
        Genotype.from_json(text)


# ---------------------------------------------------------------------------------------------- drawing
def test_draw_png_and_svg(tmp_path: Path) -> None:
    g = make()
    png = draw_genotype(g, tmp_path / "cell.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    svg = draw_genotype(dataclasses.replace(g, space="adabert_cnn_sep", edges=g.edges), tmp_path / "cell.svg")
    assert "<svg" in svg.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cell.png", "cell.svg"]
    with pytest.raises(ValueError, match="png or .svg"):
        draw_genotype(g, tmp_path / "cell.pdf")
