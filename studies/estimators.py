"""Estimators by name for ``scg-study compare``: the registry's entries as builders of variants.

The names, descriptions and factories are those of :mod:`scg.estimators.registry` (one
registry for the CLI, the studies and the models). Here each name builds the
*variants* compare runs on a problem: most names build one estimator;
``score_function_optimal`` uses the variance-optimal constant baseline, which differs
per parameter, so it builds one ``ScoreFunction(baseline=Constant(b*_p))`` per
parameter p and each reports only its own parameter's row (the SF* columns of
docs/references.md). Entries that need a model's input (NVIL's learned baseline) are
not compared: compare's problems have no input.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from scg.estimators import registry
from scg.estimators.base import Estimator
from scg.studies.problems import Problem

__all__ = ["EstimatorSpec", "Variant", "ESTIMATORS", "estimator_names", "Unavailable"]


class Unavailable(Exception):
    """The estimator cannot be built for this problem (reported as *skipped* with the message)."""


@dataclass
class Variant:
    """One estimator object and the parameter rows it reports.

    Attributes:
        estimator: the scg estimator.
        rows: indices into the flattened parameters to report (``None`` = all).
        num_samples: S used per estimate (may exceed the requested S, e.g. RLOO needs 2).
        note: what the variant is, for the results (e.g. ``"b*=4.5"``).
    """

    estimator: Estimator
    rows: list[int] | None
    num_samples: int
    note: str = ""


#: build(problem, num_samples, optimal_baselines) -> variants; ``optimal_baselines(problem)``
#: returns the variance-optimal constant baseline per flattened parameter.
Builder = Callable[[Problem, int, Callable[[Problem], list[float]]], list[Variant]]


@dataclass(frozen=True)
class EstimatorSpec:
    """A named estimator: its registry entry's description and how compare builds it."""

    name: str
    description: str
    build: Builder


def _variant(name: str) -> Builder:
    def build(problem: Problem, S: int, _opt: Callable[[Problem], list[float]]) -> list[Variant]:
        est = registry.build(name)
        lo = registry.min_samples(est)
        S_eff = max(S, lo)
        note = "" if S_eff == S else f"num_samples raised from {S} to {S_eff} ({name} needs S >= {lo})"
        if name == "moving_average":
            note = "; ".join(filter(None, [note, "baseline warmed up, then frozen"]))
        return [Variant(est, None, S_eff, note=note)]

    return build


def _optimal(problem: Problem, S: int, opt: Callable[[Problem], list[float]]) -> list[Variant]:
    return [
        Variant(registry.build("score_function_optimal", b=b), [p], S, note=f"b*={b:.6g}")
        for p, b in enumerate(opt(problem))
    ]


ESTIMATORS: dict[str, EstimatorSpec] = {
    e.name: EstimatorSpec(
        e.name,
        e.description,
        _optimal if e.name == "score_function_optimal" else _variant(e.name),
    )
    for e in registry.ENTRIES.values()
    if not e.needs_context
}
"""The registry's estimators compare runs, in the order they are compared."""


def estimator_names() -> list[str]:
    """Names accepted by ``--estimators``."""
    return list(ESTIMATORS)
