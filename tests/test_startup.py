"""The command line starts instantly: nothing heavy is imported until a command runs, and yet
``import adabert`` keeps registering its models with transformers' Auto classes (lazily)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from test_compress import _student

ROOT = Path(__file__).parents[1]
HEAVY = ("torch", "transformers", "datasets", "matplotlib", "onnxruntime", "scipy")
COMMANDS = [
    [],
    ["teacher", "finetune"],
    ["teacher", "probe"],
    ["search"],
    ["train"],
    ["evaluate"],
    ["compress"],
    ["pipeline"],
    ["report"],
    ["genotype", "show"],
    ["spaces"],
    ["export"],
    ["predict"],
]


def python(code: str, *args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_every_help_imports_nothing_heavy():
    code = f"""
import json, sys
from adabert.cli import main
for argv in {COMMANDS!r}:
    try:
        main(argv + ["--help"])
    except SystemExit as e:
        assert e.code == 0, argv
print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))
"""
    assert json.loads(python(code).splitlines()[-1]) == []


def _saved_models(tmp_path: Path) -> tuple[Path, Path]:
    from adabert.compress import factorize_model, wrap

    student = _student()
    student.save_pretrained(tmp_path / "student")
    compressed = wrap(_student())
    factorize_model(compressed.model, rank_ratio=0.5, exclude=r"(^|\.)head(\.|$)")
    compressed.save_pretrained(tmp_path / "compressed")
    return tmp_path / "student", tmp_path / "compressed"


def test_import_adabert_registers_the_auto_classes_without_loading_torch(tmp_path):
    student, compressed = _saved_models(tmp_path)
    code = """
import sys
import adabert
assert not {"torch", "transformers"} & set(sys.modules), "import adabert loaded torch or transformers"
from transformers import AutoConfig
print(type(AutoConfig.from_pretrained(sys.argv[1])).__name__)
from transformers import AutoModelForSequenceClassification
for folder in sys.argv[1:]:
    print(type(AutoModelForSequenceClassification.from_pretrained(folder)).__name__)
"""
    assert python(code, str(student), str(compressed)).split() == [
        "AdaBertStudentConfig",
        "AdaBertStudentForSequenceClassification",
        "AdaBertCompressedForSequenceClassification",
    ]
    # a model module imported first: it imports transformers itself, halfway through its own import
    code = """
import sys
import adabert.student.network
from transformers import AutoModelForSequenceClassification
print(type(AutoModelForSequenceClassification.from_pretrained(sys.argv[1])).__name__)
"""
    assert python(code, str(compressed)).split() == ["AdaBertCompressedForSequenceClassification"]


IMPORT_ORDERS = {
    # transformers.pipelines loads the Auto modules from inside modeling_utils: the models must wait
    "pipeline": "import adabert\nfrom transformers import pipeline\nmodel = pipeline('text-classification', "
    "model=sys.argv[1]).model",
    "modeling_utils first": "import adabert\nfrom transformers import PreTrainedModel, AutoConfig\n"
    "AutoConfig.from_pretrained(sys.argv[1])\n"
    "from transformers import AutoModelForSequenceClassification as A\n"
    "model = A.from_pretrained(sys.argv[1])",
    "transformers first": "from transformers import AutoModelForSequenceClassification as A, AutoTokenizer\n"
    "import adabert\nmodel = A.from_pretrained(sys.argv[1])",
}


def test_every_import_order_finds_the_student(tmp_path):
    """Wherever transformers is first reached from, ``import adabert`` alone makes the student loadable."""
    student, _ = _saved_models(tmp_path)
    from conftest import write_tiny_bert
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(write_tiny_bert(tmp_path / "bert")).save_pretrained(student)
    for name, code in IMPORT_ORDERS.items():
        out = python(f"import sys\n{code}\nprint(type(model).__name__)", str(student))
        assert out.split()[-1] == "AdaBertStudentForSequenceClassification", name
