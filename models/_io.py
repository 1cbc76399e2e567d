"""Atomic file writes: the one implementation the trainer, the experiments and ``scg-study`` use.

Every file is written to a temporary file in the destination folder, flushed to
disk and moved into place with ``os.replace`` (atomic on POSIX), so an interrupted
run never leaves a half-written checkpoint, results.csv, manifest.json or figure
behind; on an error the temporary file is removed.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, TypeAlias

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text"]

PathLike: TypeAlias = str | os.PathLike


def _umask() -> int:
    """The process's umask (read by setting and restoring it: the only portable way)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Create ``path`` atomically with ``write(fh)`` on a binary file (parent folders created).

    The file gets the permissions a plain ``open(path, "w")`` would: 0666 less the umask.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would leak into results meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))
