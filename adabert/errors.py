"""Errors a user can cause, told apart from bugs.

The ``adabert`` command prints a user error as one line, ``adabert: error: WHAT``, and exits with
status 2; anything else is a bug and keeps its traceback. A user error is

* an instance of :class:`UserError` (every error class of the engine that describes bad input, a bad
  file or a bad setting derives from it: ``ConfigError``, ``StoreError``, ``TaskDataError``, ...), or of
  any class with a true ``user_error`` attribute (``search_spaces`` may not import the engine, so its
  ``SearchSpaceError`` carries the attribute instead of the base class);
* an ``OSError`` about the user's files or machine: no permission, a read-only or full disk, a file
  that is missing or is a directory (:data:`USER_ERRNOS`).

This module imports nothing heavy: ``adabert.config`` and the command line use it before torch loads.
"""

from __future__ import annotations

import errno
import os

# errno values that say something about the user's files or machine, never about adabert's code
USER_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "EACCES", "EPERM", "EROFS", "ENOSPC", "EDQUOT", "EFBIG", "ENOENT", "ENOTDIR", "EISDIR", "EEXIST",
        "ENOTEMPTY", "ENAMETOOLONG", "ELOOP", "EMFILE", "ENFILE", "EIO", "EXDEV", "EBUSY", "ETXTBSY",
    )  # fmt: skip
    if hasattr(errno, name)
)
_FULL = {errno.ENOSPC, errno.EFBIG} | ({errno.EDQUOT} if hasattr(errno, "EDQUOT") else set())


class UserError(ValueError):
    """Bad input, a bad file or a bad setting: the message says what, where, and what to do."""

    user_error = True


class DivergenceError(UserError, RuntimeError):
    """A training loss that became NaN or infinite: the message names the step and the setting to change."""


class LockedError(UserError):
    """A folder another adabert process is writing into."""


def is_user_error(err: BaseException) -> bool:
    """True for errors the command line reports in one line (exit status 2), False for bugs."""
    if getattr(err, "user_error", False) is True:
        return True
    # a FileNotFoundError without errno is one adabert raised itself, naming the missing file
    return isinstance(err, FileNotFoundError) or (isinstance(err, OSError) and err.errno in USER_ERRNOS)


def describe(err: BaseException) -> str:
    """One line naming what went wrong and where (for OSErrors: the file and the system's reason)."""
    if isinstance(err, OSError) and err.errno is not None and not getattr(err, "user_error", False):
        reason = err.strerror or os.strerror(err.errno)
        if err.errno in _FULL:
            reason += " (the disk or your file-size quota is full: free space and run the command again)"
        elif err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            reason += " (choose a folder you can write to, or fix its permissions)"
        files = [str(f) for f in (err.filename, err.filename2) if f is not None]
        where = " -> ".join(files) if files else ""
        return f"{where}: {reason}" if where else reason
    text = str(err) or type(err).__name__
    return " ".join(text.split()) if "\n" in text else text
