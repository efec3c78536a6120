"""Atomic file writes (temp file, fsync, rename: a crash never leaves a truncated file) and
:func:`jsonable`, which turns tuples, paths and numpy/torch scalars into JSON values."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch


_UMASK = os.umask(0o022)  # read the process umask (there is no getter) and put it back
os.umask(_UMASK)


def fsync_dir(directory: Path) -> None:
    """Flush a directory entry to disk (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: os.PathLike, write: Callable[[Any], None]) -> Path:
    """Write a file atomically: ``write(f)`` fills a temp file in the same directory, which is
    flushed, fsync'ed and then ``os.replace``'d onto ``path``.

    A crash at any moment leaves either the previous complete file or the new complete file,
    never a truncated one. ``write`` receives a binary file object. Returns ``path``.
    Raises whatever ``write`` or the file system raises; the temp file is removed then.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: os.PathLike, text: str) -> Path:
    """:func:`atomic_write` for UTF-8 text."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def jsonable(obj: Any) -> Any:
    """Convert tuples, paths and numpy/torch scalars into JSON-friendly values (recursively)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (np.generic,)):
        return obj.item()
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return obj.item()
    return obj
