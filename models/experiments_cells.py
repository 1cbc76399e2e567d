"""Cells and tables shared by the experiments of :mod:`scg.models.experiments`.

A cell is one training run with its own checkpoint folder; its ``result.json``
(written atomically) marks it finished, so a restarted experiment reads it back
instead of retraining. The folder is named by the cell and a hash of the full
configuration that produced it, so a run with another configuration into the same
``--out`` trains its own cells and never reads back another run's results.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from scg.models.checkpoint import atomic_save_json

__all__ = ["cell", "mean_std", "table"]


#: Arguments that do not change a cell's result (where it is written, how much is printed, how many seeds run).
_NOT_CONFIG = frozenset({"out", "quiet", "seeds"})


def cell(out: Path, name: str, run: Callable[[Path], dict], *, config: Mapping[str, Any]) -> dict:
    """Run one cell unless this configuration's ``result.json`` exists (then read it).

    Args:
        out: the experiment's folder.
        name: the cell (estimator, seed, ...).
        run: ``run(folder) -> result`` (JSON-able dict); ``folder`` holds its checkpoints.
        config: everything the result depends on (the experiment's arguments); cells are
            stored under ``{name}-{hash of config}`` with the config inside ``result.json``.
    """
    settings = {k: v for k, v in sorted(config.items()) if k not in _NOT_CONFIG}
    text = json.dumps(settings, sort_keys=True, default=str)
    folder = out / f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"
    done = folder / "result.json"
    if done.exists():
        result = json.loads(done.read_text())
        if json.dumps(result.get("config"), sort_keys=True, default=str) == text:
            return result
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    result = run(folder)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["config"] = json.loads(text)
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
