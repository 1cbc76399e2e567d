"""The committed ``docs/studies/gaussian/results.csv`` against an independent oracle.

Every cost-part row's exact variance (and exact gradient) is recomputed here with
``scipy.integrate`` from the estimator's integrand written out by hand — never with
scg's harness — and must agree to 1e-6 relative; every sampled variance must lie within
a Bonferroni-corrected z of its exact value (false-alarm rate 1e-3 over the rows). The
dimension-part rows are checked against their closed forms.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
from scipy import integrate
from scipy.stats import norm

CSV = Path(__file__).resolve().parents[2] / "docs" / "studies" / "gaussian" / "results.csv"
MU, SIGMA = 1.0, 1.0  # the study's N(μ = 1, σ = 1)
OPTS = dict(epsabs=1e-13, epsrel=1e-12, limit=500)


def _f(family: str, k: float):
    if family == "square":
        return (lambda x: (x - k) ** 2), (lambda x: 2 * (x - k))
    if family == "bump":
        return (lambda x: math.exp(-k * x * x)), (lambda x: -2 * k * x * math.exp(-k * x * x))
    return (lambda x: math.cos(k * x)), (lambda x: -k * math.sin(k * x))


def _normal(g) -> float:
    """E[g(ε)], ε ~ N(0, 1), split where the costs are narrow (x = 0, i.e. ε = −μ/σ)."""
    phi = lambda e: g(e) * math.exp(-0.5 * e * e) / math.sqrt(2 * math.pi)  # noqa: E731
    cut = -MU / SIGMA
    return sum(integrate.quad(phi, a, b, **OPTS)[0] for a, b in ((-14.0, cut), (cut, 14.0)))


def _moments(family: str, k: float, estimator: str, parameter: str) -> tuple[float, float]:
    """(exact mean, exact variance) of one single-sample estimate, by quadrature."""
    f, df = _f(family, k)
    z = lambda e: MU + SIGMA * e  # noqa: E731
    score = {"mu": lambda e: e / SIGMA, "sigma": lambda e: (e * e - 1) / SIGMA}[parameter]
    if estimator in ("score_function", "score_function_optimal"):
        mean = _normal(lambda e: f(z(e)) * score(e))
        b = 0.0
        if estimator == "score_function_optimal":
            b = _normal(lambda e: f(z(e)) * score(e) ** 2) / _normal(lambda e: score(e) ** 2)
        return mean, _normal(lambda e: ((f(z(e)) - b) * score(e)) ** 2) - mean**2
    if estimator == "pathwise":
        g = (lambda e: df(z(e))) if parameter == "mu" else (lambda e: df(z(e)) * e)
        mean = _normal(g)
        return mean, _normal(lambda e: g(e) ** 2) - mean**2
    if parameter == "mu":  # measure-valued, Rayleigh pair: (f(μ+σW) − f(μ−σW)) / (σ√(2π))
        g = lambda w: (f(MU + SIGMA * w) - f(MU - SIGMA * w)) / (SIGMA * math.sqrt(2 * math.pi))  # noqa: E731
        dens = lambda w: w * math.exp(-0.5 * w * w)  # noqa: E731
        m1 = integrate.quad(lambda w: g(w) * dens(w), 0, 14, **OPTS)[0]
        m2 = integrate.quad(lambda w: g(w) ** 2 * dens(w), 0, 14, **OPTS)[0]
        return m1, m2 - m1**2
    # measure-valued σ: (f(μ+σM) − f(μ+σMU)) / σ, M double-sided Maxwell, U ~ U(0, 1)
    dens = lambda m: m * m * math.exp(-0.5 * m * m) / math.sqrt(2 * math.pi)  # noqa: E731
    g = lambda u, m: (f(MU + SIGMA * m) - f(MU + SIGMA * m * u)) / SIGMA  # noqa: E731
    opts = dict(epsabs=1e-13, epsrel=1e-11)
    m1 = sum(
        integrate.dblquad(lambda u, m: g(u, m) * dens(m), a, b, 0, 1, **opts)[0]
        for a, b in ((-14, 0), (0, 14))
    )
    m2 = sum(
        integrate.dblquad(lambda u, m: g(u, m) ** 2 * dens(m), a, b, 0, 1, **opts)[0]
        for a, b in ((-14, 0), (0, 14))
    )
    return m1, m2 - m1**2


def _rows() -> list[dict[str, str]]:
    with open(CSV, newline="") as fh:
        return list(csv.DictReader(fh))


def test_every_exact_value_agrees_with_an_independent_quadrature():
    bad = []
    for r in _rows():
        if r["part"] != "cost":
            continue
        mean, var = _moments(r["family"], float(r["k"]), r["estimator"], r["parameter"])
        for name, got, want in (
            ("exact_variance", float(r["exact_variance"]), var),
            ("exact_gradient", float(r["exact_gradient"]), mean),
        ):
            if abs(got - want) > 1e-6 * abs(want) + 1e-12:
                bad.append((r["family"], r["k"], r["estimator"], r["parameter"], name, got, want))
    assert not bad, bad


def test_dimension_rows_match_their_closed_forms():
    closed = {
        "score_function": lambda D: (D + 2) * (D + 4),
        "score_function_baseline": lambda D: 2 * D + 8,
        "pathwise": lambda D: 4,
    }
    rows = [r for r in _rows() if r["part"] == "dimension"]
    assert rows
    for r in rows:
        D = int(float(r["D"]))
        assert float(r["exact_variance"]) == pytest.approx(closed[r["estimator"]](D), rel=1e-9), r


def test_every_sampled_variance_is_within_a_bonferroni_z_of_its_exact_value():
    rows = [r for r in _rows() if r["variance_z"]]
    threshold = norm.isf(1e-3 / (2 * len(rows)))
    worst = max(rows, key=lambda r: abs(float(r["variance_z"])))
    assert abs(float(worst["variance_z"])) < threshold, worst
