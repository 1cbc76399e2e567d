"""Cells and tables shared by the experiments of :mod:`scg.models.experiments`.

A cell is one training run with its own checkpoint folder; its ``result.json``
(written atomically) marks it finished, so a restarted experiment reads it back
instead of retraining.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Callable

from scg.models.train import atomic_save_json

__all__ = ["cell", "mean_std", "table"]


def cell(out: Path, name: str, run: Callable[[Path], dict]) -> dict:
    """Run one cell unless its ``result.json`` exists (then read it)."""
    folder = out / name
    done = folder / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    result = run(folder)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    atomic_save_json(result, done)
    return result


def mean_std(values: list[float]) -> str:
    """``mean ± std`` over seeds (the value alone for one seed)."""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
