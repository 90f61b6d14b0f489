"""One error path: a user error is one line and exit status 2, a bug keeps its traceback, and every
setting's range is checked (naming the flag) before any work starts."""

from __future__ import annotations

import dataclasses
import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import file_size_limit, tiny_finetune_argv

from adabert import config as cfgmod
from adabert.cli import main
from adabert.errors import describe, is_user_error
from adabert.io import as_os_error, atomic_save, ensure_writable, save_pretrained_atomic

ROOT = Path(__file__).resolve().parents[1]


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("adabert: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ------------------------------------------------------------------------------------------ ranges
def _breaking(f: dataclasses.Field) -> object | None:
    """A value that breaks one rule of the field, or None if it has no rule."""
    rules, default = f.metadata, f.default
    if "choices" in rules:
        return "no-such-choice"
    if rules.get("regex"):
        return "("
    if "length" in rules:
        return (0,) * (rules["length"] + 1)
    for key, shift in (("ge", -1), ("gt", 0), ("le", 1), ("lt", 0)):
        if key in rules:
            bound = rules[key]
            value = bound + shift if isinstance(bound, int) else bound + shift * 0.5
            return (value,) if isinstance(default, tuple) else value
    return None


RULED = [
    (cls, f)
    for cls in (*cfgmod.STAGE_CONFIGS.values(), cfgmod.PipelineConfig)
    for f in dataclasses.fields(cls)
    if _breaking(f) is not None
]


@pytest.mark.parametrize("cls,f", RULED, ids=[f"{c.__name__}.{f.name}" for c, f in RULED])
def test_every_setting_out_of_range_is_refused_naming_it(cls, f, tmp_path):
    value = _breaking(f)
    flag = "--" + f.name.replace("_", "-")
    with pytest.raises(cfgmod.ConfigError, match=f"^{flag} "):
        cls(**{f.name: value})
    path = tmp_path / "config.json"  # the same value from a config file names the file and the setting
    path.write_text(cfgmod.json.dumps({f.name: list(value) if isinstance(value, tuple) else value}))
    load = cls.load if cls is cfgmod.PipelineConfig else lambda p: cfgmod.load_config(cls, p)
    with pytest.raises(cfgmod.ConfigError, match=f"^{path}: setting '{f.name}' "):
        load(path)


def test_every_numeric_setting_has_a_range():
    """New settings follow the convention: a number without a range is a decision, listed here."""
    unranged = {
        f"{cls.__name__}.{f.name}"
        for cls in (*cfgmod.STAGE_CONFIGS.values(), cfgmod.PipelineConfig)
        for f in dataclasses.fields(cls)
        if f.type in ("int", "float", "int | None", "float | None", "tuple[int, ...]")
        and _breaking(f) is None
    }
    assert unranged == set()


@pytest.mark.parametrize(
    "argv,message",
    [
        (["search", "--tau-start", "0"], "--tau-start must be > 0.0, got 0"),
        (["search", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
        (["train", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
        (["search", "--epochs", "0"], "--epochs must be >= 1, got 0"),
        (["search", "--hidden-size", "0"], "--hidden-size must be >= 1, got 0"),
        (["search", "--hidden-size", "100000"], "--hidden-size must be <= 4096, got 100000"),
        (["teacher", "finetune", "--epochs", "0"], "--epochs must be >= 1"),
        (["compress", "--exclude", "(unclosed"], "--exclude is not a valid regular expression"),
        (["compress", "--methods", "svd,prune"], "--methods must be a comma-separated list of"),
        (["pipeline", "--set", "train.lr=0"], "train: setting 'lr' must be > 0.0, got 0"),
        (["pipeline", "--export-atol", "0"], "--export-atol must be > 0.0"),
    ],
)
def test_options_out_of_range_exit_2_in_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written, not even the default runs/ folder
    assert main(argv) == 2
    assert message in _one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_lengths_beyond_the_models_positions_are_refused_before_any_work(tiny_bert_dir, tmp_path, capsys):
    out = tmp_path / "teacher"
    argv = [
        "teacher",
        "finetune",
        "--model",
        str(tiny_bert_dir),
        "--max-length",
        "100",
        "--output-dir",
        str(out),
    ]
    assert main(argv) == 2
    line = _one_error_line(capsys)
    assert "--max-length 100 is longer than the 64 positions" in line and str(tiny_bert_dir) in line
    assert main(["evaluate", "--model", str(tiny_bert_dir), "--seq-len", "65"]) == 2
    assert "--seq-len 65 is longer than the 64 positions" in _one_error_line(capsys)
    assert not out.exists()


# ------------------------------------------------------------------------------------------ files
def test_an_unwritable_output_folder_is_one_line_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(["search", "--output-dir", str(blocker / "search"), "--store", str(tmp_path)]) == 2
    line = _one_error_line(capsys)
    assert str(blocker / "search") in line and f"{blocker} is a file, not a folder" in line


@pytest.mark.skipif(
    os.geteuid() == 0, reason="root writes into read-only folders (benchmarks/faults.py drops that)"
)
def test_a_read_only_output_folder_is_one_line(tmp_path, capsys):
    parent = tmp_path / "read-only"
    parent.mkdir(mode=0o555)
    try:
        assert main(["search", "--output-dir", str(parent / "search"), "--store", str(tmp_path)]) == 2
    finally:
        parent.chmod(0o755)
    assert "Permission denied" in _one_error_line(capsys)


def test_disk_full_is_one_line_and_leaves_no_temporary_file(tiny_bert_dir, tiny_glue_dir, tmp_path):
    """A real write failure, in a child whose files may not grow past 16 kB (EFBIG, as on a full disk)."""
    out = tmp_path / "teacher"

    argv = tiny_finetune_argv(tiny_bert_dir, tiny_glue_dir, out, "--epochs", "1")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "adabert.cli", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=file_size_limit(16_000),
        cwd=ROOT,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("adabert: error:")]
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert str(out) in lines[0] and "File too large" in lines[0] and "full" in lines[0]
    assert not [p for p in tmp_path.rglob(".*") if p.name.endswith(".tmp") or p.name.startswith(".save.")]


def test_wrapped_write_failures_become_the_os_error_behind_them(tmp_path):
    rust = RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")
    err = as_os_error(rust, tmp_path / "x")
    assert isinstance(err, OSError) and err.errno == errno.ENOSPC and err.filename == str(tmp_path / "x")
    assert as_os_error(OSError("100 requested and 12 written"), "f").errno == errno.ENOSPC  # numpy
    assert as_os_error(RuntimeError("[enforce fail] unexpected pos 576 vs 534"), "f").errno == errno.ENOSPC
    bug = KeyError("x")
    assert as_os_error(bug, "f") is bug

    def full(path):
        path.write_bytes(b"half")
        raise RuntimeError("I/O error: No space left on device (os error 28)")

    with pytest.raises(OSError, match="No space left") as info:
        atomic_save(tmp_path / "out.bin", full)
    assert "disk or your file-size quota is full" in describe(info.value)

    class Model:
        def save_pretrained(self, folder):
            (Path(folder) / "model.safetensors").write_bytes(b"half")
            raise RuntimeError("I/O error: Disk quota exceeded (os error 122)")

    with pytest.raises(OSError, match="quota"):
        save_pretrained_atomic(tmp_path / "model", Model())
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["model"]  # no output, no temporary file


def test_ensure_writable_names_the_folder(tmp_path):
    ensure_writable(tmp_path / "new" / "folder")
    assert list((tmp_path / "new" / "folder").iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError) as info:
        ensure_writable(tmp_path / "file" / "sub")
    assert info.value.filename == str(tmp_path / "file" / "sub")


# ------------------------------------------------------------------------------------------ bugs
def test_a_bug_keeps_its_traceback_and_a_user_error_does_not(monkeypatch, capsys, tmp_path):
    import adabert.cli as cli

    parser = cli.build_parser

    def bug(ns):
        return {}["missing key"]  # a KeyError deep inside: a bug

    monkeypatch.setattr(cli, "build_parser", lambda: _with_handler(parser(), bug))
    with pytest.raises(KeyError, match="missing key"):
        main(["spaces"])

    def library_value_error(ns):
        import numpy as np

        np.zeros(3).reshape(2, 2)  # a ValueError raised by a library, not by adabert: a bug

    monkeypatch.setattr(cli, "build_parser", lambda: _with_handler(parser(), library_value_error))
    with pytest.raises(ValueError, match="reshape"):
        main(["spaces"])

    def disk_full(ns):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "out" / "model.safetensors"))

    monkeypatch.setattr(cli, "build_parser", lambda: _with_handler(parser(), disk_full))
    assert main(["spaces"]) == 2
    line = _one_error_line(capsys)
    assert str(tmp_path / "out" / "model.safetensors") in line and "No space left on device" in line

    def interrupted(ns):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", lambda: _with_handler(parser(), interrupted))
    assert main(["spaces"]) == 130
    assert "interrupted" in capsys.readouterr().err


def _with_handler(parser, handler):
    parser._subparsers._group_actions[0].choices["spaces"].set_defaults(handler=handler)
    return parser


def test_user_errors_are_told_apart_from_bugs():
    from adabert.checkpoint import CheckpointError
    from adabert.checkpoint import DivergenceError as SearchDivergence
    from adabert.config import ConfigError
    from adabert.errors import DivergenceError, LockedError
    from adabert.genotype import GenotypeError
    from adabert.tasks import TaskDataError
    from adabert.teacher.finetuning import TeacherError
    from adabert.teacher.store import StoreError
    from search_spaces.registry import SearchSpaceError

    for cls in (
        ConfigError,
        StoreError,
        TaskDataError,
        TeacherError,
        GenotypeError,
        CheckpointError,
        DivergenceError,
        SearchDivergence,
        LockedError,
    ):
        assert is_user_error(cls("x")), cls
    assert issubclass(SearchDivergence, RuntimeError)  # still caught where a RuntimeError was
    assert is_user_error(SearchSpaceError("unknown search space 'x'"))
    assert is_user_error(PermissionError(errno.EACCES, "Permission denied", "/x"))
    assert is_user_error(FileNotFoundError("/x: no genotype file"))
    for bug in (ValueError("x"), RuntimeError("x"), TypeError("x"), KeyError("x"), OSError(errno.EBADF, "x")):
        assert not is_user_error(bug), bug


def test_a_refused_resume_is_a_user_error(tmp_path):
    from adabert.checkpoint import CheckpointError, check_resumable

    with pytest.raises(CheckpointError, match="settings changed") as info:
        check_resumable({"epochs": 3, "seed": 2}, {"epochs": 3, "seed": 1}, tmp_path, set())
    assert is_user_error(info.value)


def test_a_refused_write_names_the_folder_and_file_not_the_temporary_one(tmp_path, monkeypatch):
    from adabert.io import atomic_write_json

    out = tmp_path / "eval"

    def refused(src, dst):  # as a file marked immutable, or a folder of another user with the sticky bit
        raise PermissionError(errno.EPERM, "Operation not permitted", str(src), str(dst))

    monkeypatch.setattr(os, "replace", refused)
    with pytest.raises(PermissionError) as info:
        atomic_write_json(out / "report.json", {})
    assert describe(info.value).startswith(f"{out / 'report.json'}: Operation not permitted (choose a folder")
    assert ".tmp" not in describe(info.value) and not list(out.iterdir())
    monkeypatch.chdir(out)  # a file given without its folder is named with it
    with pytest.raises(PermissionError) as info:
        atomic_write_json("report.json", {})
    assert describe(info.value).startswith(f"{out / 'report.json'}: Operation not permitted")
    monkeypatch.undo()

    def unwritable(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(out / ".report.json.x1y2.tmp"))

    monkeypatch.setattr("tempfile.mkstemp", unwritable)
    with pytest.raises(PermissionError) as info:
        atomic_write_json(out / "report.json", {})
    assert describe(info.value).startswith(f"{out}: Permission denied")


def test_an_unterminated_csv_quote_is_reported_where_it_opens(tmp_path):
    from adabert.tasks import TaskDataError, read_table

    table = tmp_path / "rows.csv"
    table.write_text('sentence,label\ngood film,1\n"bad film,0\nok film,1\nfine,1\n')
    with pytest.raises(TaskDataError, match=r"rows\.csv:3: a quoted field .* is never closed"):
        read_table(table)
    table.write_text('sentence,label\n"a film\nover two lines",1\nok film,0\n')  # a closed quote spans lines
    names, rows = read_table(table)
    assert [line for line, _ in rows] == [2, 4] and rows[0][1]["sentence"] == "a film\nover two lines"
    table.write_text('sentence,label\n"a" film,1\nok,"0"x\n')  # stray quotes mid-field: read as they stand
    assert [row["sentence"] for _, row in read_table(table)[1]] == ["a film", "ok"]
