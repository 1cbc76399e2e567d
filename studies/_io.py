"""Atomic file writes, CSV round trips and the run manifest for ``scg-study``.

Every file is written atomically with :mod:`scg.models._io` (temporary file in the
destination folder, then ``os.replace``), so an interrupted run never leaves a
half-written results.csv, manifest.json or figure behind.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeAlias

from scg.models._io import atomic_write, atomic_write_bytes, atomic_write_text

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "save_figure",
    "row",
    "write_csv",
    "read_csv",
    "write_json",
    "versions",
    "git_revision",
    "manifest",
]

PathLike: TypeAlias = str | os.PathLike


def row(columns: Sequence[str], **values: Any) -> dict[str, Any]:
    """A results row: every one of ``columns`` (``None`` where not given), then ``values``."""
    return {**dict.fromkeys(columns), **values}


def save_figure(fig: Any, path: PathLike, **kwargs: Any) -> Path:
    """Save a matplotlib figure atomically; the format comes from the suffix of ``path``."""
    fmt = Path(path).suffix.lstrip(".") or "png"
    return atomic_write(path, lambda fh: fig.savefig(fh, format=fmt, **kwargs))


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value)  # shortest round-tripping form: same floats -> same text
    return str(value)


def write_csv(path: PathLike, rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> Path:
    """Write ``rows`` (dicts) with the given ``columns`` atomically; floats are written exactly."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in columns])
    return atomic_write_text(path, buf.getvalue())


def read_csv(path: PathLike) -> list[dict[str, str]]:
    """Rows of a CSV file as dicts of strings."""
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def write_json(path: PathLike, data: Any) -> Path:
    """Write ``data`` as indented JSON atomically."""
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def versions() -> dict[str, str | None]:
    """Versions of python, torch, numpy, matplotlib and scg."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("torch", "numpy", "matplotlib", "scg"):
        try:
            module = __import__(name)
            out[name] = str(getattr(module, "__version__", None))
        except ImportError:  # pragma: no cover - all are dependencies
            out[name] = None
    return out


def git_revision(path: PathLike | None = None) -> str | None:
    """``git describe --always --dirty`` of the repository holding scg's source, or ``None``."""
    if path is None:
        import scg

        path = Path(scg.__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out + ("-dirty" if dirty else "") if out else None


def manifest(
    config: Mapping[str, Any],
    *,
    device: str,
    argv: Sequence[str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What reproduces a run: config, seed, versions, git revision, device and command line."""
    import torch

    data: dict[str, Any] = {
        "command": "scg-study " + " ".join(argv) if argv is not None else " ".join(sys.argv),
        "config": dict(config),
        "seed": config.get("seed"),
        "device": device,
        "cuda_device": torch.cuda.get_device_name() if device.startswith("cuda") else None,
        "versions": versions(),
        "git_revision": git_revision(),
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
    }
    if extra:
        data.update(extra)
    return data
