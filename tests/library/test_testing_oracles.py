"""Independent oracles for the exact harness (scg.testing): scipy quadrature of hand-derived integrands.

Nothing here calls the harness to compute an expected value. For N(μ, σ²) and a cost
f the gradient estimators are, per draw (derived by hand, checked against
scg/estimators/*.py):

* Pathwise: ĝ_μ = f'(μ + σε), ĝ_σ = f'(μ + σε) ε, ε ~ N(0, 1);
* ScoreFunction with a constant baseline b (b = 0: none):
  ĝ_μ = (f(z) − b)(z − μ)/σ², ĝ_σ = (f(z) − b)((z − μ)²/σ³ − 1/σ), z ~ N(μ, σ²);
* MeasureValued: ĝ_μ = (f(μ + σW) − f(μ − σW))/(σ√(2π)), W ~ Rayleigh (density w e^{−w²/2});
  ĝ_σ = (f(μ + σM) − f(μ + σMU))/σ, M ~ double-sided Maxwell (m² e^{−m²/2}/√(2π)), U ~ U(0, 1).

Mean and second moment are 1-dimensional integrals (2-dimensional, nested, for the
measure-valued σ term), computed by ``scipy.integrate.quad`` with epsabs = epsrel =
1e-12 on intervals split where f jumps or peaks (mapped into each noise variable).
The harness must agree to 1e-6 relative in mean and variance, and ``assert_unbiased``
must pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from scipy import integrate
from torch.distributions import Normal

import scg
from scg.baselines import Constant
from scg.testing import assert_unbiased, exact_gradient, exact_moments

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

D64 = torch.float64
QUAD = {"epsabs": 1e-12, "epsrel": 1e-12, "limit": 1000}
REACH = 40.0  # beyond ±40 the Gaussian-type densities are below e^-800: zero in float64
SPLITS = (-8.0, -4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0, 8.0)


@dataclass(frozen=True)
class Cost:
    name: str
    f: Callable[[float], float]  # the oracle's scalar cost
    df: Callable[[float], float] | None  # its derivative (None: not differentiable)
    torch_f: Callable[[torch.Tensor], torch.Tensor]  # the harness's cost
    features: tuple[float, ...]  # z-values where f jumps or peaks (the oracle splits its intervals there)
    jumps: tuple[float, ...] = ()  # the breakpoints the harness is given


def _peak(k: float) -> Cost:
    return Cost(
        f"exp(-{k:g}x^2)",
        lambda x: math.exp(-k * x * x),
        lambda x: -2 * k * x * math.exp(-k * x * x),
        lambda z: torch.exp(-k * z**2),
        (0.0,),
    )


def _step(x: float) -> float:
    return -1.0 + 1.5 * (x > -0.3) + 2.0 * (x > 1.2)


COSTS = {
    "peak1": _peak(1.0),
    "peak10": _peak(10.0),
    "peak30": _peak(30.0),
    "peak100": _peak(100.0),
    "indicator": Cost(
        "1[z > 0.5]", lambda x: float(x > 0.5), None, lambda z: (z > 0.5).double(), (0.5,), (0.5,)
    ),
    "step": Cost(
        "step",
        _step,
        None,
        lambda z: -1.0 + 1.5 * (z > -0.3).double() + 2.0 * (z > 1.2).double(),
        (-0.3, 1.2),
        (-0.3, 1.2),
    ),
    "square": Cost("x^2/2", lambda x: 0.5 * x * x, lambda x: x, lambda z: 0.5 * z**2, ()),
    "quartic": Cost(
        "(x-0.3)^4 + x^3 - 2x",
        lambda x: (x - 0.3) ** 4 + x**3 - 2 * x,
        lambda x: 4 * (x - 0.3) ** 3 + 3 * x * x - 2,
        lambda z: (z - 0.3) ** 4 + z**3 - 2 * z,
        (),
    ),
}
PARAMS = {
    "peak": (1.0, 1.0),
    "indicator": (0.2, 1.5),
    "step": (0.2, 1.5),
    "square": (1.0, 1.0),
    "quartic": (0.5, 1.2),
}
BASELINE = 0.5


def _params(key: str) -> tuple[float, float]:
    return PARAMS["peak" if key.startswith("peak") else key]


# ----------------------------------------------------------------------------- the oracle (scipy only)


def _line(g: Callable[[float], float], lo: float, hi: float, cuts: list[float]) -> float:
    """∫_lo^hi g, split at the cuts inside (lo, hi)."""
    pts = sorted({lo, hi, *[c for c in cuts if lo < c < hi]})
    return sum(integrate.quad(g, a, b, **QUAD)[0] for a, b in zip(pts[:-1], pts[1:], strict=False))


def _normal_pdf(x: float) -> float:
    return math.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def _rayleigh_pdf(w: float) -> float:
    return w * math.exp(-0.5 * w * w)


def _maxwell_pdf(m: float) -> float:
    return m * m * math.exp(-0.5 * m * m) / math.sqrt(2 * math.pi)


def _moments_1d(
    g: Callable[[float], float], pdf: Callable[[float], float], lo: float, cuts: list[float]
) -> tuple[float, float]:
    mean = _line(lambda x: g(x) * pdf(x), lo, REACH, cuts)
    second = _line(lambda x: g(x) ** 2 * pdf(x), lo, REACH, cuts)
    return mean, second - mean**2


def oracle(estimator: str, cost: Cost, mu: float, sigma: float) -> tuple[list[float], list[float]]:
    """(means, variances) of the (μ, σ) gradient components, by scipy quadrature."""
    f, standard = (
        cost.f,
        [(c - mu) / sigma for c in cost.features],
    )  # features in standard noise space
    cuts = list(SPLITS) + standard
    if estimator == "pathwise":
        g_mu = lambda e: cost.df(mu + sigma * e)  # noqa: E731
        g_sd = lambda e: cost.df(mu + sigma * e) * e  # noqa: E731
        parts = [_moments_1d(g, _normal_pdf, -REACH, cuts) for g in (g_mu, g_sd)]
    elif estimator in ("score", "score_baseline"):
        b = BASELINE if estimator == "score_baseline" else 0.0
        g_mu = lambda e: (f(mu + sigma * e) - b) * e / sigma  # noqa: E731  (z − μ = σε)
        g_sd = lambda e: (f(mu + sigma * e) - b) * (e * e - 1.0) / sigma  # noqa: E731
        parts = [_moments_1d(g, _normal_pdf, -REACH, cuts) for g in (g_mu, g_sd)]
    else:  # measure-valued
        g_mu = lambda w: (f(mu + sigma * w) - f(mu - sigma * w)) / (sigma * math.sqrt(2 * math.pi))  # noqa: E731
        mv_mu = _moments_1d(g_mu, _rayleigh_pdf, 0.0, cuts + [-c for c in standard])

        def inner(m: float, power: int) -> float:  # ∫_0^1 ĝ_σ(m, u)^power du
            u_cuts = [c / m for c in standard] if m != 0 else []
            return _line(
                lambda u: ((f(mu + sigma * m) - f(mu + sigma * m * u)) / sigma) ** power,
                0.0,
                1.0,
                u_cuts,
            )

        mean = _line(lambda m: inner(m, 1) * _maxwell_pdf(m), -REACH, REACH, cuts)
        second = _line(lambda m: inner(m, 2) * _maxwell_pdf(m), -REACH, REACH, cuts)
        parts = [mv_mu, (mean, second - mean**2)]
    return [p[0] for p in parts], [p[1] for p in parts]


ESTIMATORS = {
    "pathwise": scg.Pathwise,
    "score": scg.ScoreFunction,
    "score_baseline": lambda: scg.ScoreFunction(baseline=Constant(BASELINE)),
    "measure_valued": scg.MeasureValued,
}


def _cases() -> list[tuple[str, str]]:
    return [(e, c) for e in ESTIMATORS for c in COSTS if not (e == "pathwise" and COSTS[c].df is None)]


def _breakpoints(estimator: str, key: str) -> list[float] | None:
    cost = COSTS[key]
    if cost.jumps:
        return list(cost.jumps)
    # Measure-valued rules of M and U would need thousands of nodes to find a narrow peak
    # on their own; naming the peak as a breakpoint splits the rules there (k >= 30).
    if estimator == "measure_valued" and key in ("peak30", "peak100"):
        return [0.0]
    return None


# ----------------------------------------------------------------------------- the tests


def test_oracle_closed_forms():
    """The oracle itself against closed forms: E[f'] for the peak, Φ for the indicator."""
    mu, sigma = 1.0, 1.0
    for k in (1.0, 100.0):
        # E[exp(-k z²)] = exp(-kμ²/(1+2kσ²))/√(1+2kσ²); its μ-derivative:
        s = 1 + 2 * k * sigma**2
        d_mu = -2 * k * mu / s * math.exp(-k * mu**2 / s) / math.sqrt(s)
        means, _ = oracle("pathwise", _peak(k), mu, sigma)
        assert means[0] == pytest.approx(d_mu, rel=1e-10)
    mu, sigma = 0.2, 1.5
    a = (mu - 0.5) / sigma
    means, _ = oracle("score", COSTS["indicator"], mu, sigma)
    assert means == pytest.approx([_normal_pdf(a) / sigma, -_normal_pdf(a) * a / sigma], rel=1e-10)


@pytest.mark.parametrize("estimator, key", _cases())
def test_exact_moments_match_the_oracle(estimator, key):
    mu, sigma = _params(key)
    cost = COSTS[key]
    params = (torch.tensor(mu, dtype=D64), torch.tensor(sigma, dtype=D64))
    m = assert_unbiased(
        ESTIMATORS[estimator](),
        Normal,
        params,
        cost.torch_f,
        breakpoints=_breakpoints(estimator, key),
    )
    means, variances = oracle(estimator, cost, mu, sigma)
    np.testing.assert_allclose(
        m.mean.numpy(), means, rtol=1e-6, atol=1e-12, err_msg=f"{estimator} {cost.name} mean"
    )
    np.testing.assert_allclose(
        m.variance.numpy(),
        variances,
        rtol=1e-6,
        atol=1e-12,
        err_msg=f"{estimator} {cost.name} variance",
    )
    # the error estimates are what they claim: small, and not smaller than the actual error by much
    assert bool((m.mean_error <= 1e-8 * m.mean.abs() + 1e-9).all())
    assert float((m.mean - torch.tensor(means, dtype=D64)).abs().max()) <= 1e-6 * max(map(abs, means))


def test_the_reproductions_of_the_issue():
    """exp(-10x²) under N(1, 1): the fixed 96-node rule was 11–14 % off in the variances;
    nodes=300 froze the law on tail probes; nodes=400 had NaN weights."""
    one = torch.tensor(1.0, dtype=D64)
    f = COSTS["peak10"].torch_f
    means, variances = oracle("pathwise", COSTS["peak10"], 1.0, 1.0)
    assert variances == pytest.approx([0.94163, 0.89205], abs=1e-5)
    for nodes in (None, 300, 400):
        m = exact_moments(scg.Pathwise(), Normal, (one, one), f, nodes=nodes)
        np.testing.assert_allclose(m.mean.numpy(), means, rtol=1e-6)
        np.testing.assert_allclose(m.variance.numpy(), variances, rtol=1e-6)
    # small explicit nodes are a start, not a promise of exactness: the measure-valued σ terms converge
    means, variances = oracle("measure_valued", COSTS["square"], 1.0, 1.0)
    for nodes in (4, 8):
        m = exact_moments(scg.MeasureValued(), Normal, (one, one), COSTS["square"].torch_f, nodes=nodes)
        np.testing.assert_allclose(m.mean.numpy(), means, rtol=1e-6)
        np.testing.assert_allclose(m.variance.numpy(), variances, rtol=1e-6)


def test_unreachable_accuracy_raises():
    one = torch.tensor(1.0, dtype=D64)
    f = COSTS["peak10"].torch_f
    with pytest.raises(
        ValueError,
        match=r"does not reach rtol=1e-15.*law 'eps' has not converged.*accuracy reached",
    ):
        exact_moments(scg.Pathwise(), Normal, (one, one), f, rtol=1e-15, atol=0.0, max_points=64)
    with pytest.raises(ValueError, match=r"exact_gradient: the quadrature does not reach.*law 'z'"):
        exact_gradient(Normal, (one, one), f, rtol=1e-15, atol=0.0, max_points=64)
    with pytest.raises(
        ValueError, match=r"law 'z' has not converged.*Pass `breakpoints`"
    ):  # a jump left unsplit
        exact_moments(scg.ScoreFunction(), Normal, (one, one), COSTS["indicator"].torch_f, max_points=10_000)
    with pytest.raises(ValueError, match=r"`rtol` must be a finite number >= 0; got -1"):
        exact_moments(scg.Pathwise(), Normal, (one, one), f, rtol=-1)
    with pytest.raises(ValueError, match=r"`rtol` and `atol` must not both be 0"):
        assert_unbiased(scg.Pathwise(), Normal, (one, one), f, rtol=0.0, atol=0.0)


def test_gauss_rules_are_stable_at_any_node_count():
    from scg.testing import quadrature as Q

    for n in (96, 400, 1000, 3000):
        for x, w in (Q.gauss_hermite(n), Q.maxwell_rule(n)):
            assert np.isfinite(x).all() and np.isfinite(w).all() and (w > 0).all()
            assert w.sum() == pytest.approx(1.0, abs=1e-13)
        x, w = Q.gauss_hermite(n)
        assert (w * x**4).sum() == pytest.approx(3.0, rel=1e-12)  # E[ε⁴] = 3
        x, w = Q.maxwell_rule(n)
        assert (w * x**2).sum() == pytest.approx(3.0, rel=1e-12)  # E[M²] = 3
