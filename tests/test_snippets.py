"""The Python examples users copy, run verbatim in a fresh interpreter: the README's and the model cards'.

A fresh process matters: there, only ``import adabert`` registers the student with transformers' Auto
classes, and the pipeline must find the tokenizer in the student's folder by itself. Each example runs
on tiny students of a single-sentence task (SST-2), a pair task (MRPC) and a regression task (STS-B);
only the model path is substituted.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from adabert.deploy import TASK_FILE
from adabert.deploy.card import FACTS_FILE
from adabert.genotype import make_genotype
from adabert.tasks import get_task

ROOT = Path(__file__).parents[1]
TASKS = {"sst2": False, "mrpc": True, "stsb": True}  # task -> pair
README_PATHS = {"sst2": "runs/sst2/student", "mrpc": "runs/mrpc/student", "stsb": "runs/stsb/student"}
CARD_PATH = "path/to/this/folder"

# Runs the snippet's top-level statements in order, as a script would, and prints the value of each
# expression statement (the calls whose results a user would look at) as one JSON line.
DRIVER = """
import ast, json, sys
source = open(sys.argv[1]).read()
namespace = {"__name__": "__main__"}
for node in ast.parse(source).body:
    if isinstance(node, ast.Expr):
        value = eval(compile(ast.Expression(node.value), "snippet", "eval"), namespace)
        print(json.dumps(value))
    else:
        exec(compile(ast.Module([node], []), "snippet", "exec"), namespace)
"""


def _tiny_student(folder: Path, task_name: str, pair: bool, tokenizer) -> Path:
    from adabert.student.network import build_student

    task = get_task(task_name)
    torch.manual_seed(0)
    tables = {"word": torch.randn(tokenizer.vocab_size, 24), "position": torch.randn(64, 24)}
    genotype = make_genotype(
        "adabert_cnn", [(0, 2, "conv3"), (1, 2, "max_pool3"), (2, 3, "conv5"), (3, 4, "identity")], 2, 16
    )
    model = build_student(genotype, task.num_labels, tables, pair=pair, **task.label_config())
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / TASK_FILE).write_text(json.dumps({"task": task.to_dict(), "max_length": 32}))
    (folder / FACTS_FILE).write_text(json.dumps({"task": task.to_dict()}))  # as train's card, from the store
    return folder


@pytest.fixture(scope="module")
def students(tmp_path_factory) -> dict[str, Path]:
    from conftest import write_tiny_bert
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("snippets")
    tokenizer = AutoTokenizer.from_pretrained(write_tiny_bert(root / "bert"))
    return {name: _tiny_student(root / name, name, pair, tokenizer) for name, pair in TASKS.items()}


def _python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.S)


def _run(snippet: str, tmp_path: Path) -> list:
    """The snippet's printed values, run by a fresh interpreter outside the repository."""
    script = tmp_path / "snippet.py"
    script.write_text(snippet)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines()]


def _raw_score(folder: Path, text: str, text_pair: str) -> float:
    """The regression student's own output, computed here, for what the pipeline must return unchanged."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    batch = AutoTokenizer.from_pretrained(folder)(text, text_pair, return_tensors="pt")
    with torch.no_grad():
        return float(model(**batch).logits[0, 0])


def _check(results: list, students: dict[str, Path], snippet: str) -> None:
    labels = {name: set(get_task(name).label_names or ()) for name in TASKS}
    for name, result in results:
        result = result[0] if isinstance(result, list) else result
        if labels[name]:
            assert result["label"] in labels[name]
        else:
            pair = json.loads(re.findall(r"\((\{.*\})\)", snippet)[-1])  # the regression call's texts
            assert result["score"] == pytest.approx(
                _raw_score(students[name], pair["text"], pair["text_pair"]), abs=1e-5
            )


def test_the_readme_example_runs_verbatim(students, tmp_path):
    readme = (ROOT / "README.md").read_text()
    snippet = next(b for b in _python_blocks(readme) if 'pipeline("text-classification"' in b)
    for name, path in README_PATHS.items():
        assert path in snippet
        snippet = snippet.replace(path, str(students[name]))
    results = _run(snippet, tmp_path)
    assert len(results) == len(TASKS)
    assert results[0][0]["label"] in ("negative", "positive")  # the SST-2 names, not "0" / "1"
    _check(list(zip(TASKS, results)), students, snippet)


@pytest.mark.parametrize("name", list(TASKS))
def test_each_model_cards_example_runs_verbatim(students, name, tmp_path):
    from adabert.deploy.card import update_model_card

    card = update_model_card(students[name]).read_text()
    (snippet,) = _python_blocks(card)
    assert CARD_PATH in snippet and ("text_pair" in snippet) == TASKS[name]
    assert ("function_to_apply" in snippet) == (name == "stsb")
    results = _run(snippet.replace(CARD_PATH, str(students[name])), tmp_path)
    assert len(results) == 1
    _check([(name, results[0])], students, snippet)
