"""Tests of scg.testing: quadrature rules, exact gradients, exact moments, anchors.

Everything here is deterministic: no sampling (quadrature and enumeration only),
so tolerances are those of float64 arithmetic (~1e-8 on means) and of the
published anchors' printed digits (0.1 %).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.distributions import (
    Bernoulli,
    Beta,
    Categorical,
    Exponential,
    Gamma,
    Geometric,
    Independent,
    Laplace,
    MultivariateNormal,
    Normal,
    OneHotCategorical,
    Poisson,
    Uniform,
)

import scg
from scg.baselines import Constant, ControlVariate, Delta, LeaveOneOut, MovingAverage, Normalize
from scg.testing import ExactMoments, assert_unbiased, costs, exact_gradient, exact_moments
from scg.testing import quadrature as Q

D64 = torch.float64


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values if len(values) != 1 else values[0], dtype=D64)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def normal(mu, sigma):
    return Normal(mu, sigma)


def indep_normal(mu, sigma):
    return Independent(Normal(mu, sigma), 1)


def quartic(z):
    return (z - 0.3) ** 4 + z**3 - 2 * z


def quartic_sum(z):
    return quartic(z).sum(-1)


# ----------------------------------------------------------------------------- quadrature


def _double_factorial(k: int) -> float:
    return float(np.prod(np.arange(k - 1, 0, -2))) if k % 2 == 0 else 0.0


def test_gauss_hermite_is_exact_for_polynomials():
    x, w = Q.gauss_hermite(8)
    for k in range(16):
        assert (w * x**k).sum() == pytest.approx(_double_factorial(k), abs=1e-9, rel=1e-12)


def test_maxwell_rule_moments():
    x, w = Q.maxwell_rule(10)
    assert w.sum() == pytest.approx(1.0, rel=1e-14)
    for k, m in [(1, 0.0), (2, 3.0), (4, 15.0), (6, 105.0)]:  # E[M^k] = E[ε^{k+2}]
        assert (w * x**k).sum() == pytest.approx(m, abs=1e-12, rel=1e-12)


def test_rayleigh_gauss_rule_by_stieltjes():
    x, w = Q.gauss_for_density(lambda v: np.log(v) - 0.5 * v * v, 0.0, math.inf, 10, center=1.25)
    assert len(x) == 10
    for k in range(20):  # E[W^k] = 2^{k/2} Γ(1 + k/2)
        assert (w * x**k).sum() == pytest.approx(2 ** (k / 2) * math.gamma(1 + k / 2), rel=1e-12)


def test_double_exponential_handles_endpoint_singularities():
    x, w = Q.double_exponential(61, 0.0, 1.0)
    assert (w * np.log(x) ** 2).sum() == pytest.approx(2.0, rel=1e-13)
    assert (w / np.sqrt(x)).sum() == pytest.approx(2.0, rel=1e-9)
    x, w = Q.double_exponential(201, 0.0, math.inf, log_density=lambda v: -v)  # Exponential(1)
    assert (w * x**3).sum() == pytest.approx(6.0, rel=1e-12)


def test_gauss_from_measure_matches_moments():
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=50), rng.random(50)
    xn, wn = Q.gauss_from_measure(x, w, 6)
    for k in range(12):
        assert (wn * xn**k).sum() == pytest.approx((w * x**k).sum(), rel=1e-10, abs=1e-12)


def test_quadrature_errors():
    with pytest.raises(ValueError, match="`n` must be >= 1; got 0"):
        Q.gauss_hermite(0)
    with pytest.raises(TypeError, match="`n` must be an int; got float"):
        Q.gauss_legendre(2.5)
    with pytest.raises(ValueError, match="`a` must be < `b`; got a=1.0, b=0.0"):
        Q.double_exponential(5, 1.0, 0.0)
    with pytest.raises(ValueError, match="no mass"):
        Q.double_exponential(5, 0.0, 1.0, log_density=lambda v: np.full_like(v, -np.inf))


def test_cached_rules_are_read_only_and_callers_get_copies():
    from scg.laws import Rayleigh, StandardNormal
    from scg.testing import _rules

    for make in (
        lambda: Q.gauss_hermite(7),
        lambda: Q.maxwell_rule(7),
        lambda: Q.gauss_legendre(7, -1.0, 2.0),
    ):
        x, w = make()
        expected = (x.copy(), w.copy())
        x[:], w[:] = 0.0, 0.0  # a caller mutating its rule ...
        again = make()  # ... does not reach the cache
        assert np.array_equal(again[0], expected[0]) and np.array_equal(again[1], expected[1])
    spec = _rules.law_specs("w", Rayleigh((1,), dtype=D64), np.array([[1.0]]))[0]  # Gauss rules on 2 pieces
    assert spec.shared and spec.kind == "gauss"
    first = _rules.rule(spec, 9)
    assert (
        _rules.rule(spec, 9)[0] is first[0] and not first[0].flags.writeable and not first[1].flags.writeable
    )
    with pytest.raises(ValueError, match="read-only"):
        first[1][0] = 0.0
    fresh = spec.make(9)  # the cached rule is the rule, bit for bit
    assert np.array_equal(first[0], fresh[0]) and np.array_equal(first[1], fresh[1])

    class Shifted(StandardNormal):  # a user-defined law: its density is not fixed by scg, so not shared
        def log_density(self, x):
            return super().log_density(x - 1.0)

    assert not _rules.law_specs("eps", Shifted((1,)))[0].shared
    d = Normal(t(0.5), t(1.5))
    assert _rules.distribution_specs("z", d, (1,), None)[0].shared
    assert not _rules.distribution_specs("z", type("MyNormal", (Normal,), {})(t(0.5), t(1.5)), (1,), None)[
        0
    ].shared
    # Repeated harness calls (rules from the cache) give the very same moments as a cold cache.
    _rules._CACHE.clear()
    cold = exact_moments(scg.ScoreFunction(), normal, (t(0.5), t(1.5)), costs.threshold(0.2), breakpoints=0.2)
    assert len(_rules._CACHE) > 0
    warm = exact_moments(scg.ScoreFunction(), normal, (t(0.5), t(1.5)), costs.threshold(0.2), breakpoints=0.2)
    assert all(torch.equal(a, b) for a, b in zip(cold, warm, strict=False))


# ----------------------------------------------------------------------------- exact gradients


def test_exact_gradient_normal_quadratic():
    mu, sigma = t(0.5, -1.0, 2.0), t(0.7, 1.3, 1.0)
    for k in (0.0, 3.0):
        g = exact_gradient(normal, (mu, sigma), lambda z, k=k: (z - k) ** 2)
        expected = torch.cat([2 * (mu - k), 2 * sigma])  # E[(x-k)^2] = (μ-k)^2 + σ^2
        torch.testing.assert_close(g, expected, atol=1e-12, rtol=1e-12)


def test_exact_gradient_threshold_needs_breakpoints():
    mu, sigma, c = t(0.5, -1.0), t(0.7, 1.3), 0.4
    f = lambda z: (z > c).to(z.dtype)  # noqa: E731
    a = (mu - c) / sigma
    phi = torch.exp(-0.5 * a * a) / math.sqrt(2 * math.pi)
    expected = torch.cat([phi / sigma, -phi * a / sigma])  # ∇ Φ((μ - c)/σ)
    g = exact_gradient(normal, (mu, sigma), f, breakpoints=c)
    torch.testing.assert_close(g, expected, atol=1e-12, rtol=1e-10)
    with pytest.raises(ValueError, match=r"law 'z' has not converged.*Pass `breakpoints`"):
        exact_gradient(normal, (mu, sigma), f, max_points=20_000)  # across the jump: no convergence


@pytest.mark.parametrize(
    "make, params, f, expected",
    [
        (
            lambda l: Bernoulli(logits=l),
            (t(0.0, 0.8),),
            lambda b: (b - 0.49) ** 2,
            lambda l: torch.sigmoid(l) * (1 - torch.sigmoid(l)) * (1 - 2 * 0.49),
        ),
        (Poisson, (t(0.5, 3.0),), lambda x: x**2, lambda r: 1 + 2 * r),
        (lambda r: Exponential(r), (t(0.5, 2.0),), lambda x: x**2, lambda r: -4 / r**3),
    ],
)
def test_exact_gradient_closed_forms_one_parameter(make, params, f, expected):
    torch.testing.assert_close(exact_gradient(make, params, f), expected(*params), atol=1e-10, rtol=1e-10)


def test_exact_gradient_categorical_and_one_hot():
    logits, values = t(0.3, -1.2, 0.5), t(1.0, -2.0, 0.5)
    p = torch.softmax(logits, 0)
    expected = p * (values - (p * values).sum())  # ∇_logits E[v_z]
    g = exact_gradient(lambda l: Categorical(logits=l), (logits,), lambda k: values[k])
    torch.testing.assert_close(g, expected, atol=1e-12, rtol=1e-12)
    g = exact_gradient(lambda l: OneHotCategorical(logits=l), (logits,), lambda z: z @ values)
    torch.testing.assert_close(g, expected, atol=1e-12, rtol=1e-12)


def test_exact_gradient_continuous_families():
    mu, b = t(0.5, -1.0), t(0.7, 1.3)  # Laplace: E x^2 = μ^2 + 2b^2
    g = exact_gradient(lambda m, s: Laplace(m, s), (mu, b), lambda z: z**2)
    torch.testing.assert_close(g, torch.cat([2 * mu, 4 * b]), atol=1e-10, rtol=1e-10)
    a, c = t(0.5, 2.0), t(3.0, 1.5)  # Beta: E x = a/(a+c)
    g = exact_gradient(lambda a, c: Beta(a, c), (a, c), lambda z: z)
    torch.testing.assert_close(g, torch.cat([c / (a + c) ** 2, -a / (a + c) ** 2]), atol=1e-10, rtol=1e-9)
    g = exact_gradient(lambda a, r: Gamma(a, r), (a, c), lambda z: z)  # Gamma: E x = α/β
    torch.testing.assert_close(g, torch.cat([1 / c, -a / c**2]), atol=1e-10, rtol=1e-9)


def test_exact_gradient_uniform_includes_boundary_terms():
    low, high = t(0.5, -1.0), t(0.7, 1.3)

    def expectation(lo, hi):  # E f for f = quartic, by its antiderivative
        F = lambda x: (x - 0.3) ** 5 / 5 + x**4 / 4 - x**2  # noqa: E731
        return (F(hi) - F(lo)) / (hi - lo)

    g = exact_gradient(lambda a, b: Uniform(a, b), (low, high), quartic)
    lo, hi = low.clone().requires_grad_(), high.clone().requires_grad_()
    expected = torch.cat(torch.autograd.grad(expectation(lo, hi).sum(), (lo, hi)))
    torch.testing.assert_close(g, expected, atol=1e-12, rtol=1e-10)


# ----------------------------------------------------------------------------- unbiasedness


def _warm(estimator, make, params, f, num_samples, steps=5):
    """A few training-mode calls so running statistics hold non-trivial values."""
    estimator.train()
    for _ in range(steps):
        estimator(f, make(*params), num_samples)
    return estimator


NORMAL_CASES = [  # (make, params, f)
    (normal, (t(1.0), t(1.0)), quartic),
    (normal, (t(-0.7, 2.0), t(0.5, 1.7)), quartic),
    (indep_normal, (t(0.3, -0.4), t(1.2, 0.8)), quartic_sum),
    (indep_normal, (t(0.3, -0.4, 1.0), t(1.2, 0.8, 0.5)), lambda z: z.prod(-1) + (z**2).sum(-1)),
]


@pytest.mark.parametrize("case", range(len(NORMAL_CASES)))
@pytest.mark.parametrize("name", ["none", "constant", "moving_average", "delta", "pathwise"])
def test_unbiased_on_normal(case, name):
    make, params, f = NORMAL_CASES[case]
    estimator = {
        "none": lambda: scg.ScoreFunction(),
        "constant": lambda: scg.ScoreFunction(baseline=Constant(2.5)),
        "moving_average": lambda: _warm(scg.ScoreFunction(baseline=MovingAverage(0.5)), make, params, f, 4),
        "delta": lambda: scg.ScoreFunction(baseline=Delta()),
        "pathwise": lambda: scg.Pathwise(),
    }[name]()
    assert_unbiased(estimator, make, params, f)


@pytest.mark.parametrize(
    "S, make, params, f",
    [
        (2, indep_normal, (t(0.3, -0.4), t(1.2, 0.8)), quartic_sum),
        (3, normal, (t(0.5), t(0.7)), quartic),
        (
            3,
            lambda l: Independent(Bernoulli(logits=l), 1),
            (t(0.3, -1.2),),
            lambda b: (b - t(0.2, 0.7)).prod(-1),
        ),
        (
            2,
            lambda l: Categorical(logits=l),
            (t(0.3, -1.2, 0.5),),
            lambda k: (k.double() - 0.7) ** 2,
        ),
    ],
)
def test_leave_one_out_unbiased_over_the_sample_product_space(S, make, params, f):
    assert_unbiased(scg.ScoreFunction(baseline=LeaveOneOut()), make, params, f, num_samples=S)


DISCRETE = [
    (lambda l: Bernoulli(logits=l), (t(0.3, -1.2),), lambda b: (b - 0.45) ** 2 + b),
    (
        lambda l: Independent(Bernoulli(logits=l), 1),
        (t(0.3, -1.2, 2.0),),
        lambda b: (b * t(1.0, -2.0, 0.5)).sum(-1) ** 2,
    ),
    (
        lambda l: Categorical(logits=l),
        (t([[0.3, -1.2, 0.5], [0.0, 1.0, 2.0]]),),
        lambda k: (k.double() - 0.7) ** 2,
    ),
    (
        lambda l: OneHotCategorical(logits=l),
        (t([[0.3, -1.2, 0.5], [0.0, 1.0, 2.0]]),),
        lambda z: (z @ t(1.0, -2.0, 0.5)) ** 2,
    ),
    (Poisson, (t(0.5, 3.0),), quartic),
]


@pytest.mark.parametrize("case", range(len(DISCRETE)))
@pytest.mark.parametrize("S, baseline", [(1, None), (1, "constant"), (2, "moving_average"), (2, "loo")])
def test_score_function_unbiased_on_discrete(case, S, baseline):
    make, params, f = DISCRETE[case]
    if baseline == "moving_average":
        est = _warm(scg.ScoreFunction(baseline=MovingAverage(0.5)), make, params, f, S)
    else:
        est = scg.ScoreFunction(
            baseline={None: None, "constant": Constant(-1.5), "loo": LeaveOneOut()}[baseline]
        )
    assert_unbiased(est, make, params, f, num_samples=S)


@pytest.mark.parametrize(
    "make, params",
    [
        (lambda m, s: Laplace(m, s), (t(0.5, -1.0), t(0.7, 1.3))),
        (lambda r: Exponential(r), (t(0.5, 2.0),)),
        (lambda a, b: Beta(a, b), (t(0.5, 2.0), t(3.0, 1.5))),
        (lambda a, b: Gamma(a, b), (t(0.7, 2.0), t(3.0, 1.5))),
    ],
)
def test_score_function_unbiased_on_other_continuous(make, params):
    assert_unbiased(scg.ScoreFunction(), make, params, quartic)
    assert_unbiased(scg.ScoreFunction(baseline=Constant(1.0)), make, params, quartic)


@pytest.mark.parametrize(
    "make, params",
    [
        (lambda m, s: Laplace(m, s), (t(0.5, -1.0), t(0.7, 1.3))),
        (lambda r: Exponential(r), (t(0.5, 2.0),)),
        (lambda a, b: Uniform(a, b), (t(0.5, -1.0), t(0.7, 1.3))),
    ],
)
def test_pathwise_unbiased_on_other_continuous(make, params):
    assert_unbiased(scg.Pathwise(), make, params, quartic)


def test_score_function_with_threshold_and_breakpoints():
    f = costs.indicator(-0.2, 0.9)
    assert_unbiased(scg.ScoreFunction(), normal, (t(0.5, -1.0), t(0.7, 1.3)), f, breakpoints=f.points)
    assert_unbiased(
        scg.ScoreFunction(),
        lambda m, s: Laplace(m, s),
        (t(0.5, -1.0), t(0.7, 1.3)),
        f,
        breakpoints=f.points,
    )


# ----------------------------------------------------------------------------- bias detection


class HalfOwnSample(ControlVariate):
    """A 'baseline' that depends on its own sample: b_s = f(z_s)/2 (biased by a factor ½)."""

    def forward(self, signal, ctx):
        return signal - 0.5 * signal.detach(), None


def test_biased_estimators_are_detected():
    params = (t(0.5, -1.0), t(0.7, 1.3))
    with pytest.raises(AssertionError, match=r"ScoreFunction is biased here.*4 of 4 parameters"):
        assert_unbiased(scg.ScoreFunction(baseline=HalfOwnSample()), normal, params, quartic)
    normalized = _warm(scg.ScoreFunction(baseline=Normalize()), normal, params, quartic, 1)
    assert float(normalized.baseline.variance) > 1.0
    with pytest.raises(AssertionError, match=r"params\[0\]\[0\]"):
        assert_unbiased(normalized, normal, params, quartic)
    f = costs.threshold(0.4)  # pathwise gradients of a step are zero almost everywhere
    with pytest.raises(AssertionError, match="Pathwise is biased here"):
        assert_unbiased(scg.Pathwise(), normal, params, f, breakpoints=f.points)
    with pytest.raises(AssertionError, match="ScoreFunction is biased here"):  # moving support
        assert_unbiased(scg.ScoreFunction(), lambda a, b: Uniform(a, b), (t(0.5), t(0.7)), quartic)


# ----------------------------------------------------------------------------- anchors


def _close(value: float, printed: str) -> bool:
    """Within 0.1 % of a printed anchor, or within its last printed digit's rounding."""
    decimals = len(printed.split(".")[1]) if "." in printed else 0
    ref = float(printed)
    return abs(value - ref) <= max(1e-3 * abs(ref), 0.5 * 10.0**-decimals + 1e-12)


GAUSSIAN_TABLE = {  # f: (μ: SF, SF*, PW, MVD), (σ: SF, SF*, PW, MVD); docs/references.md, N(1, 1)
    "(x-0)^2": (("30", "14", "4", "1.093"), ("136", "64", "12", "8")),
    "(x-3)^2": (("87", "38", "4", "4.372"), ("346", "184", "24", "20")),
    "cos 5x": (("0.5", "0.5", "12.5", "0.2957"), ("1.0", "1.0", "12.5", "1.0")),
    "exp(-x^2)": (
        ("0.1758", "0.0722", "0.2117", "0.0126"),
        ("0.1767", "0.1128", "0.1757", "0.0707"),
    ),
}
GAUSSIAN_COSTS = {
    "(x-0)^2": costs.shifted_square(0.0),
    "(x-3)^2": costs.shifted_square(3.0),
    "cos 5x": costs.cosine(5.0),
    "exp(-x^2)": costs.gaussian_bump(1.0),
}


def _optimal_constants(f) -> tuple[float, float]:
    """b* = E[f s²]/E[s²] per parameter of N(1, 1): scores s_μ = ε, s_σ = ε² − 1."""
    x, w = Q.gauss_hermite(96)
    fx = f(torch.as_tensor(x + 1.0)).numpy()
    s_mu, s_sigma = x, x * x - 1
    return (
        float((w * fx * s_mu**2).sum() / (w * s_mu**2).sum()),
        float((w * fx * s_sigma**2).sum() / (w * s_sigma**2).sum()),
    )


@pytest.mark.parametrize("name", list(GAUSSIAN_TABLE))
def test_gaussian_variance_anchors(name):
    f, params = GAUSSIAN_COSTS[name], (t(1.0), t(1.0))
    sf = exact_moments(scg.ScoreFunction(), normal, params, f).variance
    pw = exact_moments(scg.Pathwise(), normal, params, f).variance
    b_mu, b_sigma = _optimal_constants(f)
    sf_star = (
        exact_moments(scg.ScoreFunction(baseline=Constant(b_mu)), normal, params, f).variance[0],
        exact_moments(scg.ScoreFunction(baseline=Constant(b_sigma)), normal, params, f).variance[1],
    )
    for i in range(2):
        want = GAUSSIAN_TABLE[name][i]
        got = (float(sf[i]), float(sf_star[i]), float(pw[i]))
        assert all(_close(g, w) for g, w in zip(got, want[:3], strict=False)), (name, i, got, want)


@pytest.mark.parametrize("name", list(GAUSSIAN_TABLE))
def test_gaussian_variance_anchors_measure_valued(name):
    MeasureValued = getattr(scg, "MeasureValued", None)
    if MeasureValued is None:
        pytest.skip("scg.MeasureValued is not available yet")
    m = assert_unbiased(MeasureValued(), normal, (t(1.0), t(1.0)), GAUSSIAN_COSTS[name])
    for i in range(2):
        assert _close(float(m.variance[i]), GAUSSIAN_TABLE[name][i][3]), (name, i, m.variance)


@pytest.mark.parametrize("D", [1, 2, 3])
def test_squared_norm_anchors(D):
    params, f = (torch.zeros(D, dtype=D64), torch.ones(D, dtype=D64)), costs.squared_norm()
    sf = exact_moments(scg.ScoreFunction(), indep_normal, params, f).variance[0]
    sf_b = exact_moments(scg.ScoreFunction(baseline=Constant(float(D))), indep_normal, params, f).variance[0]
    pw = exact_moments(scg.Pathwise(), indep_normal, params, f).variance[0]
    assert float(sf) == pytest.approx((D + 2) * (D + 4), rel=1e-8)
    assert float(sf_b) == pytest.approx(2 * D + 8, rel=1e-8)
    assert float(pw) == pytest.approx(4.0, rel=1e-8)


@pytest.mark.parametrize("target, reinforce, rloo", [(0.49, 1.5638e-2, 2.5e-5), (0.499, 1.5625e-2, 2.5e-7)])
def test_bernoulli_toy_anchors(target, reinforce, rloo):
    make, params = (lambda l: Bernoulli(logits=l)), (t(0.0),)
    f = lambda b: (b - target) ** 2  # noqa: E731
    exact = 0.25 * (1 - 2 * target)  # σ(0)(1 − σ(0))(1 − 2t)
    m = assert_unbiased(scg.ScoreFunction(), make, params, f)
    assert float(m.mean) == pytest.approx(exact, rel=1e-12)
    assert float(m.variance) == pytest.approx(reinforce, rel=1e-3)
    # RLOO with S = 2: the variance of the estimate averaged over its two samples.
    m = assert_unbiased(scg.ScoreFunction(baseline=LeaveOneOut()), make, params, f, num_samples=2)
    assert float(m.variance) == pytest.approx(rloo, rel=1e-6)


def test_bernoulli_toy_disarm_has_zero_variance():
    DisARM = getattr(scg, "DisARM", None)
    if DisARM is None:
        pytest.skip("scg.DisARM is not available yet")
    m = assert_unbiased(DisARM(), lambda l: Bernoulli(logits=l), (t(0.0),), lambda b: (b - 0.49) ** 2)
    assert float(m.variance) == pytest.approx(0.0, abs=1e-15)


# ----------------------------------------------------------------------------- harness mechanics


def test_exact_moments_fields_and_consistency():
    m = exact_moments(scg.Pathwise(), normal, (t(0.5, 1.0), t(1.0, 2.0)), lambda z: z**2)
    assert isinstance(m, ExactMoments) and m.mean.shape == (4,) and m.mean.dtype == D64
    torch.testing.assert_close(m.variance, m.second_moment - m.mean**2, atol=1e-10, rtol=1e-10)
    # pathwise for z²: ∇μ = 2(μ + σε), ∇σ = 2ε(μ + σε)  ->  Var = 4σ², 4μ² + 8σ²
    torch.testing.assert_close(m.variance, t(4.0, 16.0, 9.0, 36.0), atol=1e-10, rtol=1e-10)


def test_estimator_state_and_mode_are_untouched():
    est = _warm(scg.ScoreFunction(baseline=MovingAverage(0.5)), normal, (t(0.5), t(1.0)), quartic, 2)
    before = {k: v.clone() for k, v in est.state_dict().items()}
    est.baseline.eval()
    assert_unbiased(est, normal, (t(0.5), t(1.0)), quartic)
    assert est.training and not est.baseline.training
    assert all(torch.equal(before[k], v) for k, v in est.state_dict().items())


def test_the_global_random_state_is_untouched():
    before = torch.random.get_rng_state()
    assert_unbiased(
        scg.ScoreFunction(),
        lambda l: Categorical(logits=l),
        (t(0.3, -1.2, 0.5),),
        lambda k: k.double() ** 2,
    )
    assert torch.equal(before, torch.random.get_rng_state())


def test_python_loop_fallback_when_vmap_fails():
    # torch's Geometric.log_prob writes in place (index_put_), which vmap refuses.
    with pytest.warns(RuntimeWarning, match="falling back to a Python loop"):
        assert_unbiased(scg.ScoreFunction(), lambda p: Geometric(probs=p), (t(0.8),), quartic)


def test_breakpoints_in_noise_space_match_pathwise_mapping():
    params, f = (t(0.5, -1.0), t(0.7, 1.3)), costs.threshold(0.4)
    a = exact_moments(scg.Pathwise(), normal, params, costs.cosine(2.0), breakpoints=f.points)
    eps = ((0.4 - params[0]) / params[1]).reshape(1, 2, 1)
    b = exact_moments(scg.Pathwise(), normal, params, costs.cosine(2.0), breakpoints={"eps": eps})
    torch.testing.assert_close(a.mean, b.mean, atol=1e-12, rtol=1e-10)


def test_nodes_override_and_dict():
    f = costs.polynomial([0.0, -2.0, 0.0, 1.0, 1.0])  # degree 4: a few Gauss nodes are exact
    full = exact_moments(scg.ScoreFunction(), normal, (t(0.5), t(1.2)), f)
    few = exact_moments(scg.ScoreFunction(), normal, (t(0.5), t(1.2)), f, nodes=8)
    by_law = exact_moments(scg.ScoreFunction(), normal, (t(0.5), t(1.2)), f, nodes={"z": 8})
    for m in (few, by_law):
        torch.testing.assert_close(m.second_moment, full.second_moment, atol=1e-8, rtol=1e-11)


def test_batch_elements_on_their_own_grids_match_the_full_product(monkeypatch):
    from scg.testing import _grid

    cases = [  # a parameter shared by the batch couples the elements' gradients
        # (two batch elements, not three: the full product of LOO's S x batch variables is refined
        # variable by variable, 1 + 2·3 grids of 9^6 points for three)
        (
            scg.ScoreFunction(baseline=LeaveOneOut()),
            lambda m, s: Normal(m.expand(2), s),
            (t(0.3), t(0.5, 1.5)),
            2,
        ),
        (scg.Pathwise(), lambda m, s: Normal(m.expand(3), s), (t(0.3), t(0.5, 1.0, 1.5)), 1),
        (
            scg.ScoreFunction(),
            lambda l: OneHotCategorical(logits=l),
            (t([[0.3, -1.0, 2.0], [0.0, 0.5, -0.5]]),),
            1,
        ),
    ]
    fs = [quartic, quartic, lambda z: (z @ t(1.0, 2.0, -1.0)) ** 2]
    split = [
        exact_moments(est, make, params, f, num_samples=S, nodes=9)
        for (est, make, params, S), f in zip(cases, fs, strict=False)
    ]
    monkeypatch.setattr(_grid, "batch_groups", lambda specs, shapes, batch: [list(range(len(specs)))])
    for (est, make, params, S), f, m in zip(cases, fs, split, strict=False):
        full = exact_moments(est, make, params, f, num_samples=S, nodes=9)
        torch.testing.assert_close(m.mean, full.mean, atol=1e-10, rtol=1e-12)
        torch.testing.assert_close(m.variance, full.variance, atol=1e-10, rtol=1e-10)


def test_harness_errors():
    params = (t(0.5), t(1.0))
    with pytest.raises(ValueError, match="explicit noise"):
        exact_moments(scg.Pathwise(), lambda a, b: Gamma(a, b), params, quartic)
    with pytest.raises(ValueError, match=r"`max_points` = 1000.*Reduce"):
        exact_moments(
            scg.ScoreFunction(baseline=LeaveOneOut()),
            indep_normal,
            (t(0.0, 0.0, 0.0), t(1.0, 1.0, 1.0)),
            quartic_sum,
            num_samples=3,
            max_points=1000,
        )
    with pytest.raises(ValueError, match="`nodes` = 50"):
        exact_moments(
            scg.ScoreFunction(),
            indep_normal,
            (t(0.0, 0.0, 0.0), t(1.0, 1.0, 1.0)),
            quartic_sum,
            nodes=50,
            max_points=10_000,
        )
    with pytest.raises(ValueError, match="`num_samples` must be >= 1; got 0"):
        exact_moments(scg.ScoreFunction(), normal, params, quartic, num_samples=0)
    with pytest.raises(TypeError, match="`nodes` must be an int"):
        exact_gradient(normal, params, quartic, nodes=2.5)
    with pytest.raises(ValueError, match=r"`nodes\['z'\]` must be >= 1; got 0"):
        exact_gradient(normal, params, quartic, nodes={"z": 0})
    with pytest.raises(TypeError, match=r"`params\[1\]` must be a floating-point tensor"):
        exact_gradient(normal, (t(0.5), 1.0), quartic)
    with pytest.raises(TypeError, match="`estimator` must be an scg Estimator; got str"):
        exact_moments("pathwise", normal, params, quartic)
    with pytest.raises(TypeError, match="scalar elements"):
        exact_moments(
            scg.ScoreFunction(),
            lambda m: MultivariateNormal(m, torch.eye(2, dtype=D64)),
            (t(0.0, 0.0),),
            lambda z: z.sum(-1),
        )
    with pytest.raises(ValueError, match=r"`breakpoints` must broadcast"):
        exact_gradient(normal, (t(0.5, 1.0), t(1.0, 1.0)), quartic, breakpoints=torch.zeros(3, 2))
    with pytest.raises(ValueError, match=r"`breakpoints` names laws \['u'\] that Pathwise does not draw"):
        exact_moments(scg.Pathwise(), normal, params, quartic, breakpoints={"u": torch.zeros(1, 1)})
    with pytest.raises(ValueError, match="not finite at a grid point"):  # GH with 5 nodes has a node at 0
        exact_moments(scg.Pathwise(), normal, (t(0.0), t(1.0)), lambda z: 1.0 / z, nodes=5)


def test_docstring_examples_run():
    import doctest

    import scg.testing

    for module in (scg.testing, costs):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0 and result.attempted > 0, module.__name__


# ----------------------------------------------------------------------------- costs


def test_costs_values_and_breakpoints():
    z = t([[-1.0, 0.5], [2.0, 0.0]])
    assert torch.equal(costs.polynomial([1.0, 0.0, 2.0])(z), 1 + 2 * z**2)
    assert torch.equal(costs.polynomial([1.0, 0.0, 2.0], event_ndim=1)(z), (1 + 2 * z**2).sum(-1))
    assert torch.equal(costs.product([1.0, 1.0])(z), (1 + z).prod(-1))
    assert torch.equal(costs.squared_norm()(z), (z**2).sum(-1))
    assert torch.equal(costs.threshold(0.25)(z), (z > 0.25).double())
    assert costs.threshold(0.25).points == [0.25] and not costs.threshold(0.25).smooth
    ind = costs.indicator(-0.5, 0.5)
    assert ind.points == [-0.5, 0.5] and torch.equal(ind(z), t([[0.0, 1.0], [0.0, 1.0]]))
    assert costs.cosine(5.0).points is None and costs.cosine(5.0).smooth
    torch.testing.assert_close(costs.gaussian_bump(2.0)(z), torch.exp(-2 * z * z))
    assert costs.shifted_square(3.0).degree == 2 and costs.polynomial([1, 2, 3, 4, 5]).degree == 4
    assert costs.polynomial([0.0, 1.0])(torch.tensor([2, 3])).dtype == D64  # integer samples
    v = costs.on_values(costs.shifted_square(1.0), [1.0, -2.0, 3.0])
    assert torch.equal(v(torch.eye(3, dtype=D64)), t(0.0, 9.0, 4.0))
    assert costs.threshold(0.0).with_event_ndim(1)(z).shape == (2,)


def test_costs_errors():
    with pytest.raises(ValueError, match="`coefficients` must be non-empty"):
        costs.polynomial([])
    with pytest.raises(ValueError, match="`coefficients` must be non-empty"):
        costs.product([])
    with pytest.raises(ValueError, match="`a` must be < `b`; got a=1.0, b=0.0"):
        costs.indicator(1.0, 0.0)
    with pytest.raises(ValueError, match="`event_ndim` must be an int >= 0; got -1"):
        costs.cosine(1.0, event_ndim=-1)
    with pytest.raises(ValueError, match="`values` must be a non-empty sequence"):
        costs.on_values(costs.cosine(1.0), [])


def test_a_without_replacement_support_too_large_for_the_grid_is_refused_before_it_is_built():
    """10!/2! ordered 8-tuples exceed the default grid: refused by the law's own size check (this
    message), before the tuples are enumerated (that took ~25 s before the grid refused them)."""
    from torch.distributions import Categorical

    logits = torch.zeros(10, dtype=torch.float64)
    with pytest.raises(
        ValueError, match=r"1814400 ordered 8-tuples of 10 classes without replacement\) > `max_points`"
    ):
        exact_moments(scg.UnorderedSet(k=8), lambda a: Categorical(logits=a), (logits,), lambda z: z.double())
