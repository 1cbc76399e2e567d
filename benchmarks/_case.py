"""What a benchmark case is: contenders on one problem, a check that they agree, targets.

A case module defines ``run(opts: Options) -> Result`` (and ``NAME``, ``TITLE``). The
common shape is a :class:`Case`: contenders (one timed *step* each, e.g. forward +
backward + optimizer step of a training step), a :meth:`Case.check` that compares
their objective values (and gradients where the estimators are the same) before
anything is timed, and targets on the ratios. :func:`time_case` runs such a case:
check, then interleaved blocks (``_timing.blocks``), then the table.

Optional peers (Pyro) are imported with :func:`peer`; a peer that is not installed
is skipped, and the result says so.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from _timing import Row, blocks, summarise

__all__ = [
    "Options",
    "Contender",
    "Target",
    "Result",
    "Case",
    "peer",
    "time_case",
    "Mismatch",
    "close",
]


@dataclass(frozen=True)
class Options:
    """Run options shared by every case (the runner's command line)."""

    quick: bool = False  # tiny sizes, few rounds: for smoke tests and a first look
    rounds: int | None = None  # timed rounds per contender (None: the case's default)
    threads: int = 1
    clock: str = "cpu"
    device: str = "cpu"
    seed: int = 0

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)


@dataclass
class Contender:
    """One way of computing the same thing.

    Attributes:
        name: label in the tables.
        step: one timed unit (a training step: forward, backward, optimizer step).
        value: the objective value of the current parameters for the current global
            RNG state (called after ``torch.manual_seed`` by the check).
        grads: optional: the gradient of the objective (same seeding), flattened, to
            compare when contenders implement the same estimator.
    """

    name: str
    step: Callable[[], object]
    value: Callable[[], float] | None = None
    grads: Callable[[], torch.Tensor] | None = None


@dataclass(frozen=True)
class Target:
    """A bound on a measured number: ``measured <= bound`` (``op="<="``) or ``>=``."""

    what: str
    measured: float
    op: str
    bound: float

    @property
    def met(self) -> bool:
        if math.isnan(self.measured):
            return False
        return self.measured <= self.bound if self.op == "<=" else self.measured >= self.bound

    def __str__(self) -> str:
        verdict = "met" if self.met else "MISSED"
        return f"{self.what} = {self.measured:.3f} (target {self.op} {self.bound:g}): {verdict}"


@dataclass
class Result:
    """What a case reports: tables (markdown), targets, notes, the contenders that were skipped."""

    name: str
    title: str
    setup: str
    tables: list[str] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    baseline: str = ""


class Mismatch(RuntimeError):
    """Contenders disagree on the objective: timing them would compare different things."""


def close(a: float, b: float, *, rtol: float = 1e-5, atol: float = 1e-5) -> bool:
    return abs(a - b) <= atol + rtol * abs(b)


def peer(module: str, skipped: list[str], contender: str):
    """Import an optional peer library, or record in ``skipped`` that ``contender`` is skipped."""
    try:
        return importlib.import_module(module)
    except ImportError:
        skipped.append(
            f"{contender}: skipped — `{module}` is not installed (pip install -c constraints.txt -e '.[bench]')"
        )
        return None


@dataclass
class Case:
    """Contenders on one problem, the baseline they are divided by, and the check."""

    name: str
    title: str
    setup: str
    baseline: str
    contenders: list[Contender]
    inner: int = 5  # steps per timed block
    rounds: int = 30  # timed blocks per contender
    skipped: list[str] = field(default_factory=list)
    grad_groups: list[list[str]] = field(default_factory=list)  # contenders whose gradients must agree
    rtol: float = 1e-5

    def check(self, seed: int = 0) -> list[str]:
        """Same seed, same parameters: every contender's objective value must agree (and the
        gradients within each of ``grad_groups``). Raises :class:`Mismatch`; returns report lines."""
        values: dict[str, float] = {}
        for c in self.contenders:
            if c.value is not None:
                torch.manual_seed(seed)
                values[c.name] = float(c.value())
        ref = values[self.baseline]
        lines = []
        for name, v in values.items():
            if not close(v, ref, rtol=self.rtol, atol=self.rtol):
                raise Mismatch(
                    f"{self.name}: objective of {name!r} = {v!r} differs from {self.baseline!r} = {ref!r}"
                )
        lines.append(
            "objective values with the same seed and parameters: "
            + ", ".join(f"{n} {v:.6g}" for n, v in values.items())
            + f" (agree to rtol {self.rtol:g})"
        )
        by_name = {c.name: c for c in self.contenders}
        for group in self.grad_groups:
            present = [n for n in group if n in by_name and by_name[n].grads is not None]
            if len(present) < 2:
                continue
            grads = {}
            for n in present:
                torch.manual_seed(seed)
                grads[n] = by_name[n].grads().detach().double()
            g0 = grads[present[0]]
            worst = max(float((g - g0).abs().max() / g0.abs().max().clamp_min(1e-30)) for g in grads.values())
            if worst > 1e-4:
                raise Mismatch(
                    f"{self.name}: gradients of {present} differ (max relative difference {worst:.2g})"
                )
            lines.append(f"gradients of {', '.join(present)} agree (max difference / max |g| = {worst:.1e})")
        return lines


def time_case(case: Case, opts: Options) -> Result:
    """Check, then time the contenders interleaved; ratios are to ``case.baseline``."""
    lines = case.check(opts.seed)
    rounds = opts.rounds or (3 if opts.quick else case.rounds)
    inner = 1 if opts.quick else case.inner
    times = blocks(
        {c.name: c.step for c in case.contenders},
        rounds=rounds,
        inner=inner,
        warmup=1,
        clock=opts.clock,
        device=opts.torch_device,
    )
    rows = summarise(times, case.baseline)
    result = Result(
        case.name,
        case.title,
        case.setup,
        rows=rows,
        skipped=list(case.skipped),
        baseline=case.baseline,
    )
    result.notes.extend(lines)
    result.notes.append(f"{rounds} interleaved rounds x {inner} steps per contender after 1 warm-up block")
    result.tables.append(step_table(rows, case.baseline))
    return result


def step_table(rows: list[Row], baseline: str) -> str:
    lines = [
        f"| contender | median ms/step | IQR (ms) | ratio to {baseline} | paired ratio |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.name} | {1e3 * r.median:.3f} | {1e3 * r.q1:.3f}–{1e3 * r.q3:.3f} | {r.ratio:.3f} | {r.paired:.3f} |"
        )
    return "\n".join(lines)


def ratio(rows: list[Row], num: str, den: str) -> float:
    """Median of ``num`` / median of ``den`` (nan if either is missing)."""
    by = {r.name: r.median for r in rows}
    if num not in by or den not in by:
        return float("nan")
    return by[num] / by[den]
