"""The command-line runner every program shares: :class:`UsageError` (a mistake of the user's,
printed as ``error: ...`` without a traceback), :func:`run_cli` (a program's ``main`` turned
into an exit status) and the checks that an output place is writable before the work starts."""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Tuple


class UsageError(ValueError):
    """A command-line or setup mistake; the CLI prints it as ``error: ...`` without a traceback."""


RESUME_HINT = "the last completed epoch is in OUTPUT/last.pth.tar, continue with --resume auto"


def run_cli(main: Callable[[Optional[Sequence[str]]], Any], argv: Optional[Sequence[str]] = None, *,
            errors: Tuple[type, ...] = (UsageError,), interrupted: Optional[str] = None,
            status: Callable[[Any], int] = lambda result: 0) -> int:
    """The console entry of every tool: run ``main(argv)`` and turn the outcome into an exit status.

    Returns ``status(result)`` (0 by default); 2 after printing ``error: <message>`` (no
    traceback) for an exception of a type in ``errors``; 130 on Ctrl-C when ``interrupted`` (a
    hint printed then) is given, otherwise the interrupt propagates. Other exceptions propagate.
    """
    try:
        result = main(argv)
    except errors as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if interrupted is None:
            raise
        print(f"\ninterrupted; {interrupted}", file=sys.stderr)
        return 130
    return status(result)


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _probe_directory(directory: Path) -> Optional[str]:
    """Why a file cannot be created in ``directory`` (by creating and removing one), or None."""
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".write-check-")
    except OSError as e:
        return e.strerror or str(e)
    os.close(fd)
    os.unlink(tmp)
    return None


def check_output_file(path: Optional[os.PathLike], flag: str) -> None:
    """Check, before any work, that a program can write its results file ``path`` (given as
    ``flag``): every existing ancestor is a directory, the nearest existing one accepts a new
    file (tested by creating and removing one, so it holds for root and read-only file systems
    too), and ``path`` itself is not a directory. Missing folders in between are fine (the atomic
    writers create them). ``None`` passes. Raises :class:`UsageError` naming the place and why."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{flag} {path} is a directory; give a file name")
    _check_place(path.parent, flag, path)


def check_output_dir(path: Optional[os.PathLike], flag: str) -> None:
    """:func:`check_output_file` for a folder a program will create or write into."""
    if path is None:
        return
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {path} exists and is not a directory")
    _check_place(path, flag, path)


def _check_place(directory: Path, flag: str, given: Path) -> None:
    existing = _nearest_existing(directory)
    if not existing.is_dir():
        raise UsageError(f"{flag} {given}: cannot write there, {existing} is a file, not a directory")
    why = _probe_directory(existing)
    if why is not None:
        raise UsageError(f"{flag} {given}: cannot write there ({existing}: {why})")
