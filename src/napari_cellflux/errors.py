"""The package's error types and the one reporter every entry point uses (the ``cellflux`` CLI,
``python -m training.train`` / ``training.evaluate``, the benchmarks and the widget's notices).

A user's mistake (a bad option, file, folder or disk) becomes one line that names the input and
the fix, and exit status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import sys
from typing import Callable


class CellFluxError(Exception):
    """A problem the user can fix; its message names the input and what to do."""


class InputError(CellFluxError, ValueError):
    """An option, argument or file content breaks a rule (a ValueError, for callers that catch those)."""


class UnknownNameError(InputError, KeyError):
    """A name that is not in a vocabulary or registry. Unlike a KeyError, ``str()`` is the message
    itself, not its quoted repr."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


# What to do about an OS error, by errno: the OS's own words say what happened, not the fix.
_OS_FIXES = {
    errno.ENOSPC: "the disk is full; free space or write to another folder",
    errno.EDQUOT: "the disk quota is exceeded; free space or write to another folder",
    errno.EROFS: "the file system is read-only; write to another folder",
    errno.EACCES: "permission denied; write to a folder you can write to, or fix its permissions",
    errno.EPERM: "operation not permitted; write to a folder you can write to",
    errno.EISDIR: "it is a folder; give a file path",
    errno.ENOTDIR: "a part of the path is a file, not a folder; give another path",
    errno.ENOENT: "it does not exist; check the path",
    errno.EEXIST: "it exists already; remove it or choose another path",
    errno.ENAMETOOLONG: "the name is too long; choose a shorter path",
}

# Hints that third-party libraries append and that must never reach a user: they suggest
# loading a file in a way that can run code from it.
_UNSAFE_HINTS = ("allow_pickle", "weights_only=False", "weights_only = False")


def describe(err: BaseException) -> str | None:
    """One line for an error the user can fix, or None for a bug (which keeps its traceback)."""
    if isinstance(err, OSError) and err.errno in _OS_FIXES:  # raised by the OS, not by our code
        where = f": {err.filename}" if err.filename else ""
        return f"{err.strerror or 'OS error'}{where}: {_OS_FIXES[err.errno]}"
    if isinstance(err, (CellFluxError, ValueError, KeyError, FileNotFoundError, FileExistsError, NotADirectoryError,
                        IsADirectoryError)):
        text = str(err.args[0]) if isinstance(err, KeyError) and not isinstance(err, CellFluxError) and err.args else str(err)
        if any(hint in text for hint in _UNSAFE_HINTS):
            return "the file holds pickled Python objects, which are never loaded (they can run code); save plain arrays or tensors"
        return " ".join(text.split()) or type(err).__name__
    return None


def run_main(prog: str, main: Callable[[], int]) -> int:
    """Run an entry point's body: a user's error is printed as ``prog: error: ...`` and gives
    exit status 2; Ctrl-C gives 130; a bug raises with its traceback."""
    try:
        return main()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - sorted into user errors and bugs right here
        line = describe(err)
        if line is None:
            raise
        print(f"{prog}: error: {line}", file=sys.stderr)
        return 2
