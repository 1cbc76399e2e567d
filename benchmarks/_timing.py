"""Timing and memory helpers shared by the benchmarks: warm-up, interleaved repeats, medians, ratios.

Candidates are run alternately (A B, B A, A B, ...) so that slow drifts of a shared
machine (other processes, thermal state) hit all of them alike; the median over
repeats is reported.

* :func:`interleaved` — one call per candidate per repeat, wall-clock (the first API,
  used by ``gradient_samples.py``).
* :func:`blocks` — ``inner`` calls per candidate per round, the order rotated every
  round, on a chosen clock: ``"cpu"`` (this process's CPU time: insensitive to other
  processes taking the cores, the right clock on a shared machine with one torch
  thread) or ``"wall"`` (``perf_counter``, with a CUDA synchronisation around each
  block when a device is given).
* :func:`summarise` — median, quartiles and ratio to a baseline per candidate.
* :func:`peak_memory` — bytes allocated at the peak of one call, above what was
  alive before it: CUDA's allocator statistics on a GPU; on CPU, the memory
  timeline of ``torch.profiler`` (``profile_memory=True``: every tensor storage
  created and destroyed during the call).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = [
    "interleaved",
    "medians",
    "report",
    "machine",
    "load",
    "blocks",
    "Row",
    "summarise",
    "peak_memory",
    "CLOCKS",
]

CLOCKS = ("cpu", "wall")


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


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (Linux), or ``"unknown CPU"``: ratios of
    Python-bound loops to vectorised kernels move with it (``docs/benchmarks.md``, session 8)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def machine() -> str:
    """One line describing the machine and library versions (torch threads are reported by each run)."""
    return (
        f"{platform.processor() or platform.machine()} ({cpu_model()}), nproc={os.cpu_count()}, "
        f"torch {torch.__version__}, Python {platform.python_version()}"
    )


def load() -> str:
    """The 1/5/15-minute load averages, e.g. ``"load 5.91 6.20 5.70"``."""
    return "load " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def _sync(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def blocks(
    candidates: dict[str, Callable[[], object]],
    *,
    rounds: int = 20,
    inner: int = 1,
    warmup: int = 1,
    clock: str = "cpu",
    device: torch.device | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of each candidate: ``rounds`` interleaved blocks of ``inner`` calls.

    Round r runs the candidates in the order rotated by r (and reversed every other
    round), so each candidate takes every position equally often. ``warmup`` blocks of
    each candidate run first and are not timed.

    Returns:
        ``{name: [seconds per call in round r for r in range(rounds)]}``.
    """
    if rounds < 1 or inner < 1 or warmup < 0:
        raise ValueError(
            f"`rounds`, `inner` must be >= 1 and `warmup` >= 0; got {rounds}, {inner}, {warmup}."
        )
    if clock not in CLOCKS:
        raise ValueError(f"`clock` must be one of {CLOCKS}; got {clock!r}.")
    if clock == "cpu" and device is not None and device.type == "cuda":
        raise ValueError(
            '`clock` must be "wall" on a CUDA device (CPU time does not see the GPU); got "cpu".'
        )
    tick = time.process_time if clock == "cpu" else time.perf_counter
    names = list(candidates)
    for _ in range(warmup):
        for name in names:
            for _ in range(inner):
                candidates[name]()
    _sync(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        k = r % len(names)
        order = names[k:] + names[:k]
        if (r // len(names)) % 2:
            order = order[::-1]
        for name in order:
            fn = candidates[name]
            start = tick()
            for _ in range(inner):
                fn()
            _sync(device)
            times[name].append((tick() - start) / inner)
    return times


@dataclass(frozen=True)
class Row:
    """Summary of one candidate: median and quartiles of seconds per call, ratio of medians to the baseline."""

    name: str
    median: float
    q1: float
    q3: float
    ratio: float
    paired: float  # median over rounds of (this candidate / baseline) in the same round
    n: int


def _quantile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summarise(times: dict[str, list[float]], baseline: str) -> list[Row]:
    """One :class:`Row` per candidate; ``ratio`` = median / median of ``baseline`` (> 1: slower)."""
    if baseline not in times:
        raise ValueError(f"`baseline` must be one of {list(times)}; got {baseline!r}.")
    base = times[baseline]
    mb = statistics.median(base)
    rows = []
    for name, ts in times.items():
        m = statistics.median(ts)
        paired = (
            statistics.median(t / b for t, b in zip(ts, base, strict=False))
            if len(ts) == len(base)
            else float("nan")
        )
        rows.append(Row(name, m, _quantile(ts, 0.25), _quantile(ts, 0.75), m / mb, paired, len(ts)))
    return rows


def peak_memory(fn: Callable[[], object], *, device: torch.device | None = None) -> int:
    """Peak bytes allocated by tensors during one call of ``fn``, above those alive before it.

    CUDA: ``torch.cuda.max_memory_allocated`` after a reset, minus the memory
    allocated before. CPU: the memory timeline of ``torch.profiler`` with
    ``profile_memory=True`` — tensor storages created and destroyed during the call,
    summed in time order; the maximum of the running sum (storages that existed
    before the call are not counted). The profiler slows the call down: measure time
    separately.
    """
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - before)
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import Action

    with profile(
        activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True
    ) as prof:
        fn()
    current = peak = 0
    for _, action, _, size in prof._memory_profile().timeline:
        if action == Action.CREATE:
            current += size
        elif action == Action.DESTROY:
            current -= size
        peak = max(peak, current)
    return int(peak)


def minor_faults(fn: Callable[[], object], *, repeats: int = 3) -> int | None:
    """Median number of minor page faults of this process during one call of ``fn`` (``getrusage``).

    ``None`` where the ``resource`` module is missing (Windows). A fault is a page the
    kernel maps on first touch: memory freshly obtained from the OS (glibc serves blocks
    above its mmap threshold — at most 32 MiB — with a new mapping on every allocation).
    """
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return None
    counts = []
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        fn()
        counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return sorted(counts)[len(counts) // 2]
