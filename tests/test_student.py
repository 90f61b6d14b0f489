"""The compact student: built from a genotype alone, reloadable, Auto-class and pipeline compatible."""

import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification

from adabert.genotype import Edge, Genotype, GenotypeError, make_genotype, random_genotype
from adabert.search.supernet import Supernet
from adabert.student.network import AdaBertStudentForSequenceClassification, build_student, pca_projection
from search_spaces import get_space, list_spaces

VOCAB, POSITIONS, TEACHER_DIM = 60, 40, 24


@pytest.fixture(scope="module")
def tables() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {
        "word": torch.randn(VOCAB, TEACHER_DIM),
        "position": torch.randn(POSITIONS, TEACHER_DIM),
    }


def inputs(size: int = 3, length: int = 9) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    mask = torch.ones(size, length, dtype=torch.long)
    mask[0, 6:] = 0
    types = (torch.arange(length) >= 4).long().expand(size, -1).clone()
    return {
        "input_ids": torch.randint(1, VOCAB, (size, length)),
        "attention_mask": mask,
        "token_type_ids": types,
    }


def one_op_genotype(space_name: str, op: str, hidden: int = 16) -> Genotype:
    """Every intermediate node reads the node before it through ``op``, in the space's own cell shape."""
    space = get_space(space_name)
    first = space.num_input_nodes
    edges = [(node - 1, node, op) for node in range(first, first + space.num_nodes)]
    return make_genotype(space, edges, num_cells=min(2, space.max_cells), hidden_size=hidden)


@pytest.mark.parametrize(
    "space_name,op",
    [(s, op) for s in list_spaces() for op in get_space(s).ops if op != get_space(s).zero_op],
)
def test_builds_from_genotype_for_every_op(space_name, op, tables):
    model = build_student(one_op_genotype(space_name, op), 3, tables, pair=True)
    out = model(**inputs(), labels=torch.tensor([0, 1, 2]))
    assert out.logits.shape == (3, 3)
    out.loss.backward()
    assert model.embeddings.word.weight.grad is not None
    # only the chosen op exists: one module per kept edge per cell
    nodes = get_space(space_name).num_nodes
    assert all(len(cell.ops) == nodes and all(len(e) == 1 for e in cell.ops) for cell in model.cells)


def padded_twice(extra: int = 5) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The same rows (one with padding) as a batch, and padded by ``extra`` more tokens."""
    short = inputs()
    long = {k: torch.cat([v, torch.zeros(v.shape[0], extra, dtype=v.dtype)], 1) for k, v in short.items()}
    return short, long


@pytest.mark.parametrize("space_name", list_spaces())
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_padding_never_changes_the_logits(space_name, mode, tables):
    """How much a batch is padded changes nothing, in training mode too (BatchNorm statistics over real
    tokens only); every non-zero op of the space appears in the cell."""
    space = get_space(space_name)
    ops = [op for op in space.ops if op != space.zero_op]
    edges = [(src, dst, ops[i % len(ops)]) for i, (src, dst) in enumerate(space.edges)]
    genotype = make_genotype(space, edges, num_cells=min(2, space.max_cells), hidden_size=16)
    torch.manual_seed(0)
    model = build_student(genotype, 2, tables, pair=True, dropout=0.0).train(mode == "train")
    short, long = padded_twice()
    with torch.no_grad():
        torch.testing.assert_close(model(**short).logits, model(**long).logits, atol=1e-5, rtol=1e-5)


# torch warns that a GRU exported at one batch size may fail at another; the parity check below runs two
@pytest.mark.filterwarnings("ignore:Exporting a model to ONNX with a batch_size other than 1")
def test_student_with_attention_and_gru_exports_to_onnx(tmp_path, tables):
    """The worked example's ops trace and export with parity on a padded batch of another shape."""
    pytest.importorskip("onnxruntime")
    from adabert.deploy.export import check_parity, export_onnx

    edges = [(0, 2, "self_attention"), (1, 2, "bigru"), (2, 3, "conv3"), (1, 3, "self_attention")]
    genotype = make_genotype("attention_rnn", edges, num_cells=2, hidden_size=16)
    model = build_student(genotype, 2, tables, pair=True).eval()
    path = export_onnx(model, tmp_path / "model.onnx", seq_len=12)
    for size, length in ((1, 5), (4, 9)):
        assert check_parity(model, path, inputs(size=size, length=length), atol=1e-4) <= 1e-4


def test_a_student_of_a_missing_space_names_its_package(tmp_path, tables):
    """A student saved where its space came from another package fails to load naming space and package."""
    model = build_student(one_op_genotype("adabert_cnn", "conv3"), 2, tables, pair=True)
    assert model.config.genotype["space_source"] == {"module": "search_spaces.adabert_cnn"}
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["genotype"]["space"] = "gated_conv"
    config["genotype"]["space_source"] = {"module": "gated_pkg.space", "package": "gated-spaces"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(GenotypeError, match=r"unknown search space 'gated_conv'.*package 'gated-spaces'"):
        AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert model.embeddings.projection is None  # tables already projected to the cell width
    assert model.embeddings.word.weight.shape == (VOCAB, 16)


def test_save_load_round_trip_and_auto_classes(tmp_path, tables):
    genotype = random_genotype(get_space("adabert_cnn"), 3, hidden_size=16)
    model = build_student(genotype, 2, tables, pair=True, id2label={0: "neg", 1: "pos"}).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "config.json").exists()
    config = AutoConfig.from_pretrained(tmp_path)
    assert config.model_type == "adabert-student" and config.genotype == genotype.to_dict()
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert isinstance(reloaded, AdaBertStudentForSequenceClassification)
    assert reloaded.genotype == genotype
    batch = inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, reloaded(**batch).logits, rtol=0, atol=0)


def test_regression_student_uses_mse(tables):
    model = build_student(one_op_genotype("adabert_cnn", "conv3"), 1, tables, pair=False)
    out = model(**inputs(), labels=torch.tensor([0.5, 1.0, 2.0]))
    assert out.logits.shape == (3, 1)
    torch.testing.assert_close(
        out.loss, torch.nn.functional.mse_loss(out.logits.squeeze(-1), torch.tensor([0.5, 1, 2]))
    )


def test_pca_projection_keeps_the_top_directions():
    torch.manual_seed(0)
    basis = torch.linalg.qr(torch.randn(10, 10))[0]
    data = torch.randn(500, 10) * torch.tensor([10.0, 5, 1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]) @ basis.T
    weight, bias = pca_projection(data, 3)
    projected = data @ weight.T + bias
    kept = projected.var(0).sum() / (data - data.mean(0)).var(0).sum()
    assert kept > 0.99
    torch.testing.assert_close(projected.mean(0), torch.zeros(3), atol=1e-4, rtol=0)


@pytest.mark.parametrize("head", ["paper", "pair", "match"])
def test_searched_weights_transfer_to_the_student(tables, head):
    space = get_space("adabert_cnn")
    torch.manual_seed(0)
    net = Supernet(space, 2, tables, hidden_size=16, max_cells=3, dropout=0.0, head=head).eval()
    genotype = Genotype(
        space="adabert_cnn",
        num_cells=2,
        hidden_size=16,
        edges=(
            Edge(0, 2, "conv3"),
            Edge(1, 2, "max_pool3"),
            Edge(2, 3, "dil_conv5"),
            Edge(0, 3, "identity"),
            Edge(3, 4, "avg_pool3"),
            Edge(1, 4, "conv7"),
        ),
    ).validate()
    # make BatchNorm statistics non-trivial so that a wrong copy would show
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    student = build_student(
        genotype, 2, tables, pair=True, dropout=0.0, supernet_state=net.state_dict(), head=head
    ).eval()
    batch = inputs()
    with torch.no_grad():
        expected = net(
            batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], net.fixed_sample(genotype)
        ).logits
        got = student(**batch).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_alignment_finds_each_token_in_the_other_sentence_only():
    from adabert.modules import align, cross_pairs, head_kind, segment_masks

    words = torch.eye(8)[:, :3].unsqueeze(0)  # three orthogonal token vectors
    # [a b c | c a b] then two padding positions
    x = torch.cat([words, words[..., [2, 0, 1]], torch.zeros(1, 8, 2)], dim=-1)
    attention_mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0, 0]])
    token_type_ids = torch.tensor([[0, 0, 0, 1, 1, 1, 0, 0]])
    masks = segment_masks(attention_mask, token_type_ids, pair=True, dtype=x.dtype)
    aligned, best = align(x * 100, cross_pairs(masks))  # sharp attention: each token attends to its copy
    torch.testing.assert_close(best, torch.tensor([[1.0] * 6 + [0.0] * 2]), atol=1e-5, rtol=0)
    torch.testing.assert_close(aligned[..., :6] / 100, x[..., [4, 5, 3, 2, 0, 1]], atol=1e-3, rtol=0)
    assert torch.count_nonzero(aligned[..., 6:]) == 0  # padding aligns to nothing
    assert head_kind("auto", pair=True) == "match" and head_kind("auto", pair=False) == "pooled"
    with pytest.raises(ValueError, match="sentence-pair"):
        head_kind("match", pair=False)


@pytest.mark.parametrize("kind", ["pair", "match"])
def test_pair_heads_do_not_depend_on_the_scale_of_the_last_cell(kind):
    """Cells of identity and pooling edges add their inputs up: a deep stack of them outputs states
    many times larger than its input, which must not saturate the head."""
    from adabert.modules import build_head, segment_masks

    torch.manual_seed(0)
    head = build_head(kind, 8, 2, dropout=0.0).eval()
    batch = inputs(size=2, length=9)
    masks = segment_masks(batch["attention_mask"], batch["token_type_ids"], pair=True, dtype=torch.float32)
    embedded, last = (torch.randn(2, 8, 9) * masks.all.unsqueeze(1) for _ in range(2))
    with torch.no_grad():
        small, large = head([embedded, last], masks), head([embedded, last * 100], masks)
    torch.testing.assert_close(large, small, atol=1e-4, rtol=1e-4)


def test_a_pair_student_saved_before_the_head_normalised_reloads_as_it_was(tables, tmp_path):
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    model = build_student(one_op_genotype("adabert_cnn", "conv3"), 2, tables, pair=True, head="pair").eval()
    model.head.norm = torch.nn.Identity()  # what the head computed then
    model.config.head_norm = False
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["head_norm"]  # written before the setting existed
    (tmp_path / "config.json").write_text(json.dumps(config))
    weights = tmp_path / "model.safetensors"
    save_file(load_file(weights), weights, metadata={"format": "pt"})
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs()).logits, model(**inputs()).logits)


def test_text_classification_pipeline(tmp_path, tiny_bert_dir):
    from transformers import AutoTokenizer, pipeline

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    genotype = one_op_genotype("adabert_cnn", "conv3")
    tables = {
        "word": torch.randn(tokenizer.vocab_size, TEACHER_DIM),
        "position": torch.randn(POSITIONS, TEACHER_DIM),
    }
    model = build_student(genotype, 2, tables, pair=False, id2label={0: "negative", 1: "positive"})
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    classify = pipeline("text-classification", model=str(tmp_path), tokenizer=str(tmp_path))
    result = classify(["the movie was good", "bad"])
    assert len(result) == 2 and {r["label"] for r in result} <= {"negative", "positive"}
    assert all(0 <= r["score"] <= 1 for r in result)


def test_evaluate_reports_each_cell_op_cost(tables):
    """Per edge of the student's cell: params and FLOPs over all cells, as op_cost measures one op."""
    from adabert.report.evaluate import cell_op_costs, render_report
    from search_spaces.registry import op_cost

    edges = [(0, 2, "self_attention"), (1, 2, "bigru"), (2, 3, "conv3")]
    model = build_student(make_genotype("attention_rnn", edges, 3, hidden_size=16), 2, tables, pair=True)
    rows = cell_op_costs(model, 20)
    assert [(r["edge"], r["op"], r["cells"]) for r in rows] == [
        ("0 -> 2", "self_attention", 3), ("1 -> 2", "bigru", 3), ("2 -> 3", "conv3", 3),
    ]  # fmt: skip
    for row in rows:
        cost = op_cost(row["op"], 16, 20)
        assert (row["params"], row["flops_per_example"]) == (3 * cost.params, 3 * cost.flops) != (0, 0)
    text = render_report({"cell_ops": rows, "seq_len": 20})
    assert "## Cell operations (each edge summed over the 3 cell(s); FLOPs at seq_len 20)" in text
    assert "| 1 -> 2 | bigru |" in text
    assert cell_op_costs(torch.nn.Linear(2, 2), 20) is None
