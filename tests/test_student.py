"""The compact student: built from a genotype alone, reloadable, Auto-class and pipeline compatible."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification

from adabert.genotype import Edge, Genotype, random_genotype
from adabert.student import AdaBertStudentForSequenceClassification, build_student, pca_projection
from adabert.supernet import Supernet
from search_spaces import get_space, list_spaces

VOCAB, POSITIONS, TEACHER_DIM = 60, 40, 24


@pytest.fixture(scope="module")
def tables() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {
        "word_embeddings": torch.randn(VOCAB, TEACHER_DIM),
        "position_embeddings": torch.randn(POSITIONS, TEACHER_DIM),
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
    space = get_space(space_name)
    first = space.num_input_nodes
    edges = tuple(Edge(node - 1, node, op) for node in range(first, first + space.num_nodes))
    return Genotype(space=space_name, num_cells=2, edges=edges, hidden_size=hidden).validate()


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
    assert all(len(cell.ops) == 3 and all(len(e) == 1 for e in cell.ops) for cell in model.cells)
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


def test_searched_weights_transfer_to_the_student(tables):
    space = get_space("adabert_cnn")
    torch.manual_seed(0)
    net = Supernet(space, 2, tables, hidden_size=16, max_cells=3, dropout=0.0).eval()
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
        genotype, 2, tables, pair=True, dropout=0.0, supernet_state=net.state_dict()
    ).eval()
    batch = inputs()
    with torch.no_grad():
        expected = net(
            batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], net.fixed_sample(genotype)
        ).logits
        got = student(**batch).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_text_classification_pipeline(tmp_path, tiny_bert_dir):
    from transformers import AutoTokenizer, pipeline

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    genotype = one_op_genotype("adabert_cnn", "conv3")
    tables = {
        "word_embeddings": torch.randn(tokenizer.vocab_size, TEACHER_DIM),
        "position_embeddings": torch.randn(POSITIONS, TEACHER_DIM),
    }
    model = build_student(genotype, 2, tables, pair=False, id2label={0: "negative", 1: "positive"})
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    classify = pipeline("text-classification", model=str(tmp_path), tokenizer=str(tmp_path))
    result = classify(["the movie was good", "bad"])
    assert len(result) == 2 and {r["label"] for r in result} <= {"negative", "positive"}
    assert all(0 <= r["score"] <= 1 for r in result)
