"""Estimators by name for ``scg-study``: each name builds scg estimator objects for a problem.

A name can build several *variants* of an estimator: ``score_function_optimal``
uses the variance-optimal constant baseline, which differs per parameter, so it
builds one ``ScoreFunction(baseline=Constant(b*_p))`` per parameter p and each
reports only its own parameter's row (the SF* columns of docs/references.md).

Estimators the installed scg does not provide are looked up with ``getattr`` and
reported as skipped, never crashed on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import scg
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
    """A named estimator: a one-line description and how to build it."""

    name: str
    description: str
    build: Builder


def _class(name: str) -> type:
    cls = getattr(scg, name, None)
    if cls is None:
        raise Unavailable(f"scg.{name} is not available in this version of scg")
    return cls


def _simple(class_name: str, **kwargs: object) -> Builder:
    def build(problem: Problem, S: int, _opt: Callable[[Problem], list[float]]) -> list[Variant]:
        return [Variant(_class(class_name)(**kwargs), None, S)]

    return build


def _score_function(problem: Problem, S: int, _opt: Callable[[Problem], list[float]]) -> list[Variant]:
    return [Variant(scg.ScoreFunction(), None, S)]


def _optimal(problem: Problem, S: int, opt: Callable[[Problem], list[float]]) -> list[Variant]:
    out = []
    for p, b in enumerate(opt(problem)):
        est = scg.ScoreFunction(baseline=scg.baselines.Constant(b))
        out.append(Variant(est, [p], S, note=f"b*={b:.6g}"))
    return out


def _rloo(problem: Problem, S: int, _opt: Callable[[Problem], list[float]]) -> list[Variant]:
    S_eff = max(S, scg.baselines.LeaveOneOut.min_samples)
    note = "" if S_eff == S else f"num_samples raised from {S} to {S_eff} (LeaveOneOut needs S >= 2)"
    return [Variant(scg.ScoreFunction(baseline=scg.baselines.LeaveOneOut()), None, S_eff, note=note)]


def _moving_average(problem: Problem, S: int, _opt: Callable[[Problem], list[float]]) -> list[Variant]:
    est = scg.ScoreFunction(baseline=scg.baselines.MovingAverage())
    return [Variant(est, None, S, note="baseline warmed up, then frozen")]


ESTIMATORS: dict[str, EstimatorSpec] = {
    s.name: s
    for s in (
        EstimatorSpec("score_function", "ScoreFunction() — REINFORCE, no baseline (SF)", _score_function),
        EstimatorSpec(
            "score_function_optimal",
            "ScoreFunction(baseline=Constant(b*)) — exact variance-optimal constant per parameter (SF*)",
            _optimal,
        ),
        EstimatorSpec("rloo", "ScoreFunction(baseline=LeaveOneOut()) — RLOO, S >= 2 (S raised to 2)", _rloo),
        EstimatorSpec(
            "moving_average",
            "ScoreFunction(baseline=MovingAverage()) — warmed up on 200 calls, then frozen",
            _moving_average,
        ),
        EstimatorSpec("pathwise", "Pathwise() — reparameterisation (PW)", _simple("Pathwise")),
        EstimatorSpec(
            "measure_valued",
            "MeasureValued() — coupled weak derivatives (MVD)",
            _simple("MeasureValued"),
        ),
        EstimatorSpec("disarm", "DisARM() — antithetic Bernoulli estimator", _simple("DisARM")),
        EstimatorSpec(
            "relax",
            "RELAX() — REBAR control variate at its initial (untrained) values",
            _simple("RELAX"),
        ),
        EstimatorSpec(
            "gumbel_softmax",
            "GumbelSoftmax(temperature=0.5) — Concrete relaxation (biased)",
            _simple("GumbelSoftmax", temperature=0.5),
        ),
        EstimatorSpec(
            "straight_through",
            "StraightThrough() — straight-through (biased)",
            _simple("StraightThrough"),
        ),
    )
}
"""Registered estimators, in the order they are compared."""


def estimator_names() -> list[str]:
    """Names accepted by ``--estimators``."""
    return list(ESTIMATORS)
