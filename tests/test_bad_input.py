"""Bad input ends in a clear, typed error that names the file, never a traceback from deep inside a library.

Property tests feed malformed config files (every stage's config class), malformed GLUE task files and
malformed genotype files; each either loads or raises ConfigError / TaskDataError / GenotypeError (all
ValueError) naming the file, and leaves no temporary file behind. Then the mismatches a stage refuses
up front, each with what to do: a teacher or tokenizer other than the store's, a genotype of an
unknown search space, searched weights for another number of labels, inputs longer than the model's
positions.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import sys
import tempfile
import typing
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from adabert.checkpoint import save_state
from adabert.config import STAGE_CONFIGS, ConfigError, EvalConfig, TrainConfig, load_config, save_config
from adabert.genotype import Genotype, GenotypeError, random_genotype
from adabert.tasks import TASKS, TaskDataError, load_split
from adabert.teacher.store import KnowledgeStore, StoreError

sys.path.insert(0, str(Path(__file__).parent))
from test_search import search_config  # noqa: E402

FAST = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _scratch() -> Path:
    return Path(tempfile.mkdtemp(prefix="adabert-bad-input-"))


def _leftovers(directory: Path, expected: set[str]) -> set[str]:
    return {p.name for p in directory.iterdir()} - expected


# -------------------------------------------------------------------------------------------- configs
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**300, max_value=10**400)
    | st.floats()
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


def _mutate(text: str, draw: st.DrawFn) -> str:
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        action = draw(st.sampled_from(["insert", "delete", "replace"]))
        piece = draw(
            st.sampled_from(
                ['"', "{", "}", "[", ",", ":", "\\", "1e999", "NaN", "-", "null", "\x00", " ", "\n"]
            )
        )
        if action == "insert":
            text = text[:at] + piece + text[at:]
        elif action == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 5)) :]
        else:
            text = text[:at] + piece + text[at + 1 :]
    return text


@st.composite
def config_files(draw: st.DrawFn, cls: type) -> bytes:
    names = [f.name for f in dataclasses.fields(cls)]
    kind = draw(st.sampled_from(["bytes", "json", "settings", "mutated"]))
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    if kind == "json":
        return json.dumps(draw(JSON)).encode()
    if kind == "settings":
        keys = st.sampled_from(names) | st.text(max_size=6)
        return json.dumps(draw(st.dictionaries(keys, JSON, max_size=4))).encode()
    valid = json.dumps(dataclasses.asdict(cls()), indent=1)
    return _mutate(valid, draw).encode("utf-8", errors="surrogatepass")


def _check_loaded(cfg, cls: type) -> None:
    assert isinstance(cfg, cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        value = getattr(cfg, f.name)
        if isinstance(value, float):
            assert math.isfinite(value), f.name
        if value is not None and hints[f.name] in (int, float, str, bool):
            assert isinstance(value, hints[f.name]), f.name


@pytest.mark.parametrize("stage", sorted(STAGE_CONFIGS))
@FAST
@given(data=st.data())
@example(data=None)  # the fixed cases below, once per stage
def test_malformed_config_files_raise_config_error(stage: str, data) -> None:
    cls = STAGE_CONFIGS[stage]
    directory = _scratch()
    try:
        path = directory / "config.json"
        if data is None:
            contents = [b"[" * 100_000, b"\xff\xfe{}", b'{"seed": 1e999}', b'{"seed": NaN}',
                        b'{"epochs": 1e999}', b'{"' + b'a' * 10 + b'": 1}',
                        json.dumps({f.name: 10**400 for f in dataclasses.fields(cls)}).encode()]  # fmt: skip
        else:
            contents = [data.draw(config_files(cls))]
        for content in contents:
            path.write_bytes(content)
            try:
                cfg = load_config(cls, path)
            except ConfigError as err:
                event("refused")
                assert str(err).startswith(str(path)), err
            else:
                event("loaded")
                _check_loaded(cfg, cls)
                save_config(cfg, directory / "again.json")
                assert load_config(cls, directory / "again.json") == cfg
            assert not _leftovers(directory, {"config.json", "again.json"})
        with pytest.raises(ConfigError, match="cannot be read"):
            load_config(cls, directory)  # a directory, not a file
    finally:
        shutil.rmtree(directory)


# ---------------------------------------------------------------------------------------------- tasks
FIELD = st.text(
    alphabet=st.sampled_from(list("ab 01.5-e\"'\\,\t") + ["\r", "\n", "é", "\x00", "\u2028", "\ufeff"]),
    max_size=6,
) | st.sampled_from(["nan", "inf", "1_0", " 1 ", "True"])
TASK_NAMES = ["sst2", "cola", "stsb", "mnli", "mrpc"]
HEADERS = {
    name: (Path(__file__).parent / "fixtures" / "glue" / TASKS[name].glue_dir / "train.tsv")
    .read_text(encoding="utf-8")
    .split("\n", 1)[0]
    for name in TASK_NAMES
}


CLEAN_FIELD = st.text(alphabet=st.sampled_from(list("ab 01.5-e\"'\\,") + ["é", "\x00", "\ufeff"]), max_size=6)


@st.composite
def task_files(draw: st.DrawFn, name: str) -> bytes:
    spec = TASKS[name]
    kind = draw(st.sampled_from(["bytes", "lines", "header_rows"]))
    if kind == "bytes":
        return draw(st.binary(max_size=80))
    header = HEADERS[name].split("\t")
    labels = list(spec.labels or ["0.5", "4", "nan", "inf", "-1", "1e400"])
    if kind == "lines":  # anything: quotes, tabs, stray line breaks, too few or too many fields
        cell = FIELD | st.sampled_from(labels)
        width = st.integers(0, len(header) + 1)
        rows = draw(st.lists(width.flatmap(lambda n: st.lists(cell, min_size=n, max_size=n)), max_size=4))
    else:  # the right shape, with odd texts and mostly valid labels
        names = [h.strip().lstrip("\ufeff") for h in header]  # MRPC's header starts with a byte-order mark
        label_at = names.index(spec.label_column) if spec.header else spec.column_indices["label"]
        rows = []
        for _ in range(draw(st.integers(0, 4))):
            row = draw(st.lists(CLEAN_FIELD, min_size=len(header), max_size=len(header)))
            row[label_at] = draw(st.sampled_from(labels) | CLEAN_FIELD)
            rows.append(row)
    lines = ["\t".join(row) for row in rows]
    if spec.header and (kind == "header_rows" or draw(st.booleans())):
        lines.insert(0, HEADERS[name])
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    return (newline.join(lines) + draw(st.sampled_from(["", newline]))).encode()


@pytest.mark.parametrize("name", TASK_NAMES)
@FAST
@given(data=st.data())
def test_malformed_task_files_raise_task_data_error(name: str, data) -> None:
    root = _scratch()
    try:
        path = root / TASKS[name].glue_dir / "train.tsv"
        path.parent.mkdir(parents=True)
        path.write_bytes(data.draw(task_files(name)))
        try:
            rows = load_split(name, "train", root)
        except TaskDataError as err:
            event("refused")
            assert str(err).startswith(str(path)), err
        else:
            event("loaded")
            assert len(rows) > 0 and {"text_a", "label", "idx"} <= set(rows.column_names)
            if TASKS[name].is_regression:
                assert all(math.isfinite(x) for x in rows["label"])
        assert not _leftovers(path.parent, {"train.tsv"})
    finally:
        shutil.rmtree(root)


# ------------------------------------------------------------------------------------------- genotypes
VALID_GENOTYPE = random_genotype("adabert_cnn", 0, hidden_size=16).to_json()


@FAST
@given(data=st.data())
@example(data=None)
def test_malformed_genotype_files_raise_genotype_error(data) -> None:
    """Files (bytes, edited text) rather than the dicts and strings test_genotype.py already fuzzes."""
    directory = _scratch()
    try:
        path = directory / "genotype.json"
        if data is None:
            contents = [b"[" * 100_000, b"\xff" + VALID_GENOTYPE.encode(), VALID_GENOTYPE.encode()[:-3]]
        elif data.draw(st.booleans()):
            contents = [data.draw(st.binary(max_size=64))]
        else:
            contents = [_mutate(VALID_GENOTYPE, data.draw).encode("utf-8", errors="surrogatepass")]
        for content in contents:
            path.write_bytes(content)
            try:
                genotype = Genotype.load(path)
            except GenotypeError as err:
                event("refused")
                assert str(err).startswith(str(path)), err
            else:
                event("loaded")
                assert genotype.validate() is genotype
                # an invalid genotype is never written, and leaves no temp file
                with pytest.raises(GenotypeError):
                    dataclasses.replace(genotype, num_cells=0).save(directory / "bad.json")
            assert not _leftovers(directory, {"genotype.json"})
    finally:
        shutil.rmtree(directory)


# ------------------------------------------------------------------------------------------ mismatches
def test_evaluate_refuses_a_teacher_or_tokenizer_other_than_the_stores(tiny_store, tmp_path):
    from transformers import AutoModelForSequenceClassification, BertTokenizerFast

    from adabert.report.evaluate import run_evaluation

    teacher = KnowledgeStore.open(tiny_store).teacher_path
    settings_ = dict(model=str(teacher), store=str(tiny_store), skip_latency=True)

    other = tmp_path / "other_teacher"  # same tokenizer, other weights
    model = AutoModelForSequenceClassification.from_pretrained(teacher)
    with torch.no_grad():
        model.classifier.weight.add_(1.0)
    model.save_pretrained(other)
    BertTokenizerFast.from_pretrained(teacher).save_pretrained(other)
    with pytest.raises(StoreError, match="differs from the one the store .* was built from.*teacher probe"):
        run_evaluation(EvalConfig(**settings_, teacher=str(other), output_dir=str(tmp_path / "e1")))

    renamed = tmp_path / "renamed_vocab"  # same weights, a tokenizer whose ids mean other words
    shutil.copytree(teacher, renamed)
    vocab = sorted(BertTokenizerFast.from_pretrained(teacher).get_vocab().items(), key=lambda kv: kv[1])
    words = [word for word, _ in vocab]
    words[-1], words[-2] = words[-2], words[-1]
    for leftover in renamed.glob("*"):
        if "token" in leftover.name or leftover.name == "vocab.txt":
            leftover.unlink()
    vocab_file = tmp_path / "vocab.txt"
    vocab_file.write_text("\n".join(words) + "\n")
    BertTokenizerFast(vocab=str(vocab_file)).save_pretrained(renamed)
    with pytest.raises(StoreError, match="tokenizer of .* differs from the store's"):
        run_evaluation(EvalConfig(**settings_, teacher=str(renamed), output_dir=str(tmp_path / "e2")))
    with pytest.raises(FileNotFoundError, match="no teacher directory"):
        run_evaluation(
            EvalConfig(**settings_, teacher=str(tmp_path / "nope"), output_dir=str(tmp_path / "e3"))
        )
    assert not (tmp_path / "e1").exists() and not (tmp_path / "e2").exists()


def test_train_and_search_refuse_mismatched_inputs_up_front(tiny_store, tmp_path):
    from adabert.search import run_search, student_tables
    from adabert.search.supernet import Supernet
    from adabert.student.train import train_student
    from search_spaces import get_space

    store = KnowledgeStore.open(tiny_store)
    genotype = run_search(search_config(tiny_store, tmp_path / "rand", random_architecture=True))
    out = tmp_path / "student"
    base = dict(store=str(tiny_store), output_dir=str(out), epochs=1, batch_size=8)

    # a genotype from a search space this installation does not have
    unknown = tmp_path / "unknown_space.json"
    unknown.write_text(genotype.to_json().replace('"adabert_cnn"', '"my_private_space"'))
    with pytest.raises(GenotypeError, match=f"{unknown}: space: .*my_private_space"):
        train_student(TrainConfig(genotype=str(unknown), **base))
    with pytest.raises(ValueError, match="my_private_space"):
        run_search(search_config(tiny_store, tmp_path / "s", space="my_private_space"))
    with pytest.raises(FileNotFoundError, match="no genotype file.*adabert search"):
        train_student(TrainConfig(genotype=str(tmp_path / "missing.json"), **base))

    # searched weights for another number of labels (a 3-label task's search checkpoint)
    torch.manual_seed(0)
    net = Supernet(get_space("adabert_cnn"), 3, student_tables(store, "input", 16), hidden_size=16,
                   max_cells=genotype.num_cells, pair=False)  # fmt: skip
    foreign = tmp_path / "foreign_search"
    foreign.mkdir()
    save_state(
        foreign / "checkpoint.safetensors",
        {"model": net.state_dict(), "config": {"space": "adabert_cnn"}},
        "search",
        "",
    )
    (foreign / "selection.json").write_text("{}")  # a finished search's
    genotype_file = str(tmp_path / "rand" / "genotype.json")
    with pytest.raises(ValueError, match="3 output label.*task sst2 has 2.*drop --supernet"):
        train_student(TrainConfig(genotype=genotype_file, supernet=str(foreign), **base))
    (foreign / "checkpoint.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        train_student(TrainConfig(genotype=genotype_file, supernet=str(foreign), **base))

    # a store whose rows may be longer than the teacher's (and so the student's) 64 positions
    long_store = tmp_path / "long_store"
    shutil.copytree(tiny_store, long_store)
    manifest = json.loads((long_store / "manifest.json").read_text())
    manifest["max_length"] = 100
    (long_store / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="max_length=100 .* 64 positions.*--max-length 64"):
        train_student(TrainConfig(genotype=genotype_file, **{**base, "store": str(long_store)}))
    with pytest.raises(ValueError, match="max_length=100 .* 64 positions.*--max-length 64"):
        run_search(search_config(long_store, tmp_path / "s2"))
    assert not out.exists()  # every refusal came before anything was written


def test_student_refuses_inputs_longer_than_its_positions():
    from adabert.student.network import build_student

    genotype = random_genotype("adabert_cnn", 0, hidden_size=8)
    tables = {"word": torch.randn(30, 12), "position": torch.randn(16, 12)}
    model = build_student(genotype, 2, tables, pair=False).eval()
    ok = torch.randint(0, 30, (2, 16))
    assert model(input_ids=ok).logits.shape == (2, 2)
    with pytest.raises(ValueError, match="17 tokens but this model takes at most 16.*truncat.*max_length=16"):
        model(input_ids=torch.randint(0, 30, (2, 17)))
