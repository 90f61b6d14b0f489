"""Every shell command in the README and docs/ parses: its flags are ones the real parser accepts.

Nothing runs: an ``adabert`` command (also ``python -m adabert.cli`` and the command under ``torchrun``)
is parsed by ``adabert.cli.build_parser()``, and its ``--set STAGE.KEY=VALUE`` settings and the
pipeline config examples are checked against the stage configs' fields. A ``python benchmarks/X.py``
command is parsed by the script's own argparse parser (in one subprocess, stopped right after parsing);
a ``bash benchmarks/X.sh`` script and the files named to ``pytest`` must exist.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from adabert import config as cfgmod
from adabert.cli import build_parser

ROOT = Path(__file__).parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "search_spaces" / "README.md"]
SHELL_FENCES = {"bash", "sh", "shell", "console"}
SEPARATORS = {"&&", "||", ";", "|", "&"}

# Runs each benchmark script as `python SCRIPT ARGS` would, up to its parse_args call, and reports per
# command "ok" or the parser's error; a script never gets past parsing.
DRIVER = r"""
import argparse, json, os, runpy, sys

class Parsed(Exception):
    pass

class Refused(Exception):
    pass

original = argparse.ArgumentParser.parse_args

def parse_args(self, args=None, namespace=None):
    original(self, args, namespace)
    raise Parsed()

def error(self, message):
    raise Refused(message)

argparse.ArgumentParser.parse_args = parse_args
argparse.ArgumentParser.error = error
results = []
for script, args in json.loads(sys.argv[1]):
    sys.argv = [script, *args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    try:
        runpy.run_path(script, run_name="__main__")
        results.append("the script ended without parsing its arguments")
    except Parsed:
        results.append("ok")
    except Refused as err:
        results.append(f"refused: {err}")
    except BaseException as err:
        results.append(f"{type(err).__name__}: {err}")
    finally:
        sys.path.pop(0)
print(json.dumps(results))
"""


@dataclasses.dataclass(frozen=True)
class Command:
    doc: str
    line: int
    text: str
    argv: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: {self.text}"


def fenced_blocks(markdown: str) -> list[tuple[str, int, str]]:
    """(language, line number of the block's first line, body) of each fenced block."""
    blocks = []
    for match in re.finditer(r"^```(\w*)[^\n]*\n(.*?)^```", markdown, flags=re.S | re.M):
        first_line = markdown.count("\n", 0, match.start(2)) + 1
        blocks.append((match.group(1), first_line, match.group(2)))
    return blocks


def shell_lines(body: str, first_line: int) -> list[tuple[int, str]]:
    """The logical lines of a shell block: continuations (a trailing backslash) joined."""
    lines, pending, start = [], "", first_line
    for number, raw in enumerate(body.splitlines(), first_line):
        if not pending:
            start = number
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        lines.append((start, pending + raw))
        pending = ""
    if pending:
        lines.append((start, pending))
    return [(number, text.strip()) for number, text in lines if text.strip()]


def split_commands(text: str) -> list[list[str]]:
    """The simple commands of a shell line, each without its leading VAR=value assignments."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    commands, current = [], []
    for token in lexer:
        if token in SEPARATORS:
            commands.append(current)
            current = []
        else:
            current.append(token)
    commands.append(current)
    result = []
    for tokens in commands:
        while tokens and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=\S*", tokens[0]):
            tokens = tokens[1:]
        if tokens:
            result.append(tokens)
    return result


def adabert_argv(tokens: list[str]) -> list[str] | None:
    """The arguments given to the adabert command, if these tokens run it."""
    if tokens[0] == "adabert":
        return tokens[1:]
    if tokens[0] in ("python", "python3") and tokens[1:3] == ["-m", "adabert.cli"]:
        return tokens[3:]
    if tokens[0] == "torchrun":
        for i, token in enumerate(tokens):
            if token == "-m" and tokens[i + 1 : i + 2] == ["adabert.cli"]:
                return tokens[i + 2 :]
            if token == "--no-python" and tokens[i + 1 : i + 2] == ["adabert"]:
                return tokens[i + 2 :]
    return None


def doc_commands() -> list[Command]:
    commands = []
    for doc in DOCS:
        for language, first_line, body in fenced_blocks(doc.read_text()):
            if language not in SHELL_FENCES:
                continue
            for number, text in shell_lines(body, first_line):
                for tokens in split_commands(text):
                    commands.append(Command(str(doc.relative_to(ROOT)), number, text, tuple(tokens)))
    return commands


COMMANDS = doc_commands()
ADABERT = [c for c in COMMANDS if adabert_argv(list(c.argv)) is not None]
SCRIPTS = [c for c in COMMANDS if c.argv[0] in ("python", "python3") and c.argv[1:2] != ("-m",)]
BASH = [c for c in COMMANDS if c.argv[0] == "bash"]
PYTEST = [c for c in COMMANDS if c.argv[:3] == ("python", "-m", "pytest")]


def test_the_docs_have_commands_to_check():
    assert len(ADABERT) >= 20 and SCRIPTS and BASH and PYTEST
    assert any(c.argv[0] == "torchrun" for c in ADABERT)  # the torchrun lines are parsed too


def test_every_adabert_command_parses():
    parser = build_parser()
    refused = []
    for command in ADABERT:
        stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr):
                ns = parser.parse_args(adabert_argv(list(command.argv)))
        except SystemExit:
            refused.append(f"{command}\n    {stderr.getvalue().strip().splitlines()[-1]}")
            continue
        refused += [f"{command}\n    {problem}" for problem in stage_setting_problems(ns)]
    assert not refused, "doc commands the parser refuses:\n" + "\n".join(refused)


def stage_setting_problems(ns) -> list[str]:
    """Each ``--set STAGE.KEY=VALUE`` must name a stage and one of its settings."""
    problems = []
    for text in getattr(ns, "stage_settings", None) or []:
        target, _, _ = text.partition("=")
        stage, _, key = target.partition(".")
        if stage not in cfgmod.STAGE_CONFIGS:
            problems.append(f"--set {text}: no stage {stage!r}")
        elif key.replace("-", "_") not in field_names(cfgmod.STAGE_CONFIGS[stage]):
            problems.append(f"--set {text}: {stage} has no setting {key!r}")
    return problems


def field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def test_pipeline_config_examples_name_real_settings():
    """A JSON block with per-stage objects is a pipeline config: every key is a setting."""
    checked = 0
    for doc in DOCS:
        for language, first_line, body in fenced_blocks(doc.read_text()):
            if language != "json":
                continue
            value = json.loads(body)
            if not isinstance(value, dict) or not set(value) & set(cfgmod.PIPELINE_STAGE_FIELDS):
                continue
            checked += 1
            where = f"{doc.relative_to(ROOT)}:{first_line}"
            assert set(value) <= field_names(cfgmod.PipelineConfig), where
            for stage in set(value) & set(cfgmod.PIPELINE_STAGE_FIELDS):
                assert set(value[stage]) <= field_names(cfgmod.STAGE_CONFIGS[stage]), f"{where}: {stage}"
    assert checked


def test_named_scripts_and_test_files_exist():
    missing = [str(c) for c in BASH if not (ROOT / c.argv[1]).is_file()]
    missing += [
        f"{c}: {arg}"
        for c in PYTEST
        for arg in c.argv[3:]
        if not arg.startswith("-") and arg.startswith("tests/") and not (ROOT / arg.split("::")[0]).exists()
    ]
    missing += [str(c) for c in SCRIPTS if not (ROOT / c.argv[1]).is_file()]
    assert not missing, "\n".join(missing)


def test_every_benchmark_command_parses():
    """Each ``python benchmarks/X.py ...`` line, parsed by the script's own parser and nothing run."""
    commands = [c for c in SCRIPTS if (ROOT / c.argv[1]).is_file()]
    with_parser = [c for c in commands if "argparse" in (ROOT / c.argv[1]).read_text()]
    if not with_parser:
        pytest.skip("no documented script with an argument parser")
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps([[c.argv[1], list(c.argv[2:])] for c in with_parser])],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.splitlines()[-1])
    refused = [f"{c}\n    {r}" for c, r in zip(with_parser, results) if r != "ok"]
    assert not refused, "doc commands the scripts' parsers refuse:\n" + "\n".join(refused)


def test_ci_runs_the_readmes_set_up_and_test_commands():
    """.ci/run installs and tests the project exactly as the README tells a newcomer to."""
    readme = (ROOT / "README.md").read_text()
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    for section in ("## Set-up", "## Tests"):
        after = readme[readme.index(section) :]
        (language, _, body), *_ = fenced_blocks(after)
        assert language == "bash" and body.strip() in ci_lines, section
