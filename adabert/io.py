"""Safe file output: atomic writes, folder locks, and clean-up after a killed run.

Every output file is written to a temporary sibling, flushed to disk (fsync) and renamed over its
final name, so a killed run leaves either the old or the new version, never half a file. A folder a
command writes into is locked for the command's lifetime (:func:`folder_lock`), so a second command
writing into the same folder stops at once instead of mixing its outputs with the first one's.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import json
import os
import re
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from adabert.errors import LockedError

_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK  # what open() gives a new file under the user's umask
DIR_MODE = 0o777 & ~_UMASK


def _fsync(path: Path) -> None:
    """Flush a file (or a directory entry list) to disk; a file system that cannot is left alone."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # e.g. EINVAL for directories on some file systems
        pass
    finally:
        os.close(fd)


def as_os_error(err: BaseException, path: str | Path) -> BaseException:
    """The OSError behind a failed write, when a library wrapped or lost it, else ``err`` itself.

    safetensors reports ``... (os error 28)``, numpy a short write without errno, torch's zip writer
    ``unexpected pos``: all are the disk (full, quota, file-size limit), and the user is told so.
    """
    if isinstance(err, OSError) and err.errno is not None:
        return err
    text = str(err)
    found = re.search(r"\(os error (\d+)\)", text)
    if found:
        code = int(found.group(1))
        return OSError(code, os.strerror(code), str(path))
    if re.search(r"requested and \d+ written|unexpected pos|file write failed", text):
        return OSError(errno.ENOSPC, "the file could not be written whole", str(path))
    return err


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:  # an unwritable folder: named, not the temporary file it refused
        raise _folder_error(err, _shown(path.parent)) from err
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, FILE_MODE)  # mkstemp makes owner-only files; outputs get the usual mode
    try:
        try:
            yield tmp_path
            _fsync(tmp_path)
            os.replace(tmp_path, path)
        except Exception as err:
            translated = as_os_error(err, path)
            named = {translated.filename, translated.filename2} if isinstance(translated, OSError) else set()
            if named & {tmp, str(path)} and translated.errno is not None:
                # the file the user asked for, with its folder, not the temporary one beside it
                translated = OSError(translated.errno, translated.strerror, _shown(path))
            if translated is err:
                raise
            raise translated from err
        _fsync(path.parent)
    finally:
        tmp_path.unlink(missing_ok=True)


def _shown(path: Path) -> str:
    """``path`` as an error names it: with its folder (absolute when it was given without one)."""
    return str(path) if os.path.dirname(str(path)) not in ("", ".") else os.path.abspath(path)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | Path, value: Any) -> None:
    atomic_write_text(path, json.dumps(value, indent=2, sort_keys=False) + "\n")


def atomic_save(path: str | Path, writer: Callable[[Path], None]) -> None:
    """Call ``writer(tmp_path)`` (e.g. ``torch.save`` or ``np.save``) and rename the result into place."""
    with atomic_path(path) as tmp:
        writer(tmp)


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """Append one JSON line and flush it to disk."""
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def save_pretrained_atomic(directory: str | Path, *objects: Any) -> Path:
    """``save_pretrained`` each object (model, tokenizer) into a temp dir, then move the files in.

    Every file lands by rename, so a killed run leaves either the old or the new version of each.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".save.", dir=directory))
    try:
        try:
            for obj in objects:
                obj.save_pretrained(tmp)
        except Exception as err:
            translated = as_os_error(err, directory)
            if translated is err:
                raise
            raise translated from err
        for item in sorted(tmp.iterdir(), key=lambda p: p.suffix == ".safetensors", reverse=True):
            if item.is_file():
                os.chmod(item, FILE_MODE)
                _fsync(item)
            os.replace(item, directory / item.name)
        _fsync(directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def fsync_tree(folder: str | Path) -> None:
    """fsync every file and folder under ``folder`` (and itself): its content is on disk before a rename."""
    for root, _dirs, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(root)


def _fsync_dir(folder: str | Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sweep_siblings(path: Path) -> None:
    """Tidy what a killed ``atomic_dir`` left beside ``path``: put a folder swapped out back if ``path``
    is missing (the kill fell between the two renames), and remove half-written temporaries."""
    olds = sorted(path.parent.glob(f".{path.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if olds and not path.exists():
        os.replace(olds.pop(), path)
    for leftover in olds + list(path.parent.glob(f".{path.name}.tmp-*")):
        shutil.rmtree(leftover, ignore_errors=True)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; if the block succeeds, fsync it and rename it there.

    A folder already at ``path`` is swapped out (renamed aside, the new one renamed in, the old one
    removed), so a kill at any point leaves the old folder or the new one, complete; only in the
    instant between the two renames is ``path`` absent, and the next call puts the old one back. If
    the block raises, ``path`` is untouched. One writer per ``path`` at a time.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a folder")
    _sweep_siblings(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_UMASK)
    try:
        yield tmp
        fsync_tree(tmp)
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:12]}"
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def seal_tree(root: str | Path) -> None:
    """Before a folder written under a temporary name is renamed into place: give its entries the
    umask's usual modes (temporary folders are owner-only) and flush every file to disk."""
    root = Path(root)
    for path in [*root.rglob("*"), root]:
        if path.is_symlink():
            continue
        os.chmod(path, DIR_MODE if path.is_dir() else FILE_MODE)
        _fsync(path)


# ------------------------------------------------------------------------------------------ locks
def lock_file(folder: str | Path) -> Path:
    """The lock file of an output folder: ``.NAME.lock`` beside it, so that it stays the same file when
    the folder itself is replaced by a rename (the knowledge store is)."""
    folder = Path(os.path.abspath(folder))
    return folder.parent.resolve() / f".{folder.name}.lock"


@contextmanager
def folder_lock(folder: str | Path, lock: str | Path | None = None) -> Iterator[bool]:
    """Hold the lock of ``folder`` (``lock``: its lock file, default :func:`lock_file`) for the block.

    A second process asking for a held lock gets :class:`LockedError` naming the holder's pid. The
    kernel releases the lock when its holder exits, however it exits, so a killed run never blocks
    the next one. Under ``torchrun`` only rank 0 writes, so only rank 0 takes the lock: the block gets
    True where the lock is held, False on the other ranks (which must then not touch the folder).
    """
    if os.environ.get("RANK", "0").strip() not in ("", "0"):
        yield False
        return
    path = Path(lock) if lock is not None else lock_file(folder)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:  # the user's folder is not writable: name it, not the lock file
        raise _folder_error(err, folder) from err
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").split("\n")
            pid = holder[0].strip() or "unknown"
            command = f" ({holder[1].strip()})" if len(holder) > 1 and holder[1].strip() else ""
            raise LockedError(
                f"{folder} is in use by another adabert process, pid {pid}{command}; wait for it to "
                "finish (or stop it), or write into another folder"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n{' '.join(sys.argv)[:500]}\n".encode(), 0)
        try:
            yield True
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def ensure_writable(folder: str | Path) -> None:
    """Create ``folder`` and write a file into it, so that an unwritable or full output folder stops a
    command before its work rather than after it."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", suffix=".tmp", dir=folder)
        try:
            os.write(fd, b"adabert")
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as err:
        raise _folder_error(err, folder) from err


def _folder_error(err: OSError, folder: str | Path) -> OSError:
    """The error of an output folder that cannot be made or written, naming the folder (and a file in
    the way of it, for the 'File exists' a file where a folder should be gives)."""
    path = Path(os.path.abspath(folder))
    for ancestor in (path, *path.parents):
        if ancestor.exists():
            if not ancestor.is_dir():
                return NotADirectoryError(errno.ENOTDIR, f"{ancestor} is a file, not a folder", str(folder))
            break
    return OSError(err.errno, err.strerror, str(folder))


def remove_stale_temporaries(folder: str | Path, deep: bool = True) -> list[Path]:
    """Delete what a killed writer left in and beside ``folder``; call it only while holding its lock.

    Inside (in its subfolders too, with ``deep``): ``.NAME.*.tmp`` files (:func:`atomic_path`) and
    ``.save.*`` folders (:func:`save_pretrained_atomic`). Beside: ``.FOLDER.*.tmp`` / ``.FOLDER.*.old``
    folders of a folder written whole and renamed into place, and ``.FOLDER.features.*`` scratch folders.
    Returns what it deleted.
    """
    folder = Path(folder)
    found: list[Path] = []
    if folder.is_dir():
        found += [p for p in (folder.rglob if deep else folder.glob)(".*.tmp") if p.is_file()]
        found += [p for p in folder.glob(".save.*") if p.is_dir()]
    parent, name = folder.parent, glob.escape(folder.name)
    if parent.is_dir():
        for pattern in (f".{name}.*.tmp", f".{name}.*.old", f".{name}.features.*"):
            found += list(parent.glob(pattern))
    for path in found:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return found


# ------------------------------------------------------------------------------------ recorded paths
def record_path(target: str | Path, base: str | Path) -> str:
    """``target`` as a file in folder ``base`` records it: relative to ``base``, so that a run directory
    that is moved or copied, or used from another working directory, still finds it (pair it with
    :func:`record_absolute` for a target that may stay where it is while the record moves)."""
    return os.path.relpath(os.path.abspath(target), os.path.abspath(base))


def record_absolute(target: str | Path) -> str:
    return os.path.abspath(target)


def resolve_recorded(value: str, base: str | Path, absolute: str | None = None) -> Path:
    """The path a record in folder ``base`` names: ``value`` relative to ``base`` (how adabert records
    paths now), else ``absolute`` (where it was when recorded), else ``value`` as older adabert wrote it
    (absolute, or relative to the working directory of the command that wrote it, or a hub id);
    whichever exists first. None existing: the first (``value`` as it stands for a record without
    ``absolute``, which is older or names no local folder), which the caller's error then names."""
    first = Path(base) / value if not os.path.isabs(value) else Path(value)
    for candidate in (first, absolute, value):
        if candidate and Path(candidate).exists():
            return Path(candidate)
    return first if absolute else Path(value)
