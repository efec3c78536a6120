"""The command-line runner every program shares: :class:`UsageError` (a mistake of the user's,
printed as ``error: ...`` without a traceback) and :func:`run_cli` (a program's ``main`` turned
into an exit status)."""
from __future__ import annotations

import sys
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

