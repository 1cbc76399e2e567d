"""Small timing helpers shared by the benchmarks: warm-up, interleaved repeats, medians, ratios.

Candidates are run alternately (A B, B A, A B, ...) so that slow drifts of a shared
machine (other processes, thermal state) hit all of them alike; the median over
repeats is reported.
"""

from __future__ import annotations

import platform
import statistics
import time
from typing import Callable

import torch

__all__ = ["interleaved", "medians", "report", "machine"]


def interleaved(
    candidates: dict[str, Callable[[], object]], *, repeats: int = 5, warmup: int = 1
) -> dict[str, list[float]]:
    """Wall-clock seconds of each candidate over ``repeats`` interleaved runs (after ``warmup`` runs each)."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"`repeats` must be >= 1 and `warmup` >= 0; got {repeats}, {warmup}.")
    names = list(candidates)
    for _ in range(warmup):
        for name in names:
            candidates[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            start = time.perf_counter()
            candidates[name]()
            times[name].append(time.perf_counter() - start)
    return times


def medians(times: dict[str, list[float]]) -> dict[str, float]:
    """Median of each candidate's times."""
    return {name: statistics.median(ts) for name, ts in times.items()}


def report(times: dict[str, list[float]], baseline: str) -> str:
    """A markdown table: median, min, max seconds and the speed-up of each candidate over ``baseline``."""
    med = medians(times)
    lines = [
        "| candidate | median (s) | min (s) | max (s) | speed-up vs " + baseline + " |",
        "|---|---|---|---|---|",
    ]
    for name, ts in times.items():
        lines.append(
            f"| {name} | {med[name]:.4f} | {min(ts):.4f} | {max(ts):.4f} | {med[baseline] / med[name]:.1f}× |"
        )
    return "\n".join(lines)


def machine() -> str:
    """One line describing the machine and library versions."""
    import os

    return (
        f"{platform.processor() or platform.machine()}, nproc={os.cpu_count()}, "
        f"torch threads={torch.get_num_threads()}, torch {torch.__version__}, Python {platform.python_version()}"
    )
