"""Property: every unbiased estimator is unbiased, exactly, on drawn problems.

Hypothesis (derandomized "ci" profile) draws distribution parameters (μ, σ,
logits, rates; 1–2 elements) and a cost from :mod:`scg.testing.costs`
(polynomials up to degree 4, products across event dims, thresholds with their
breakpoints, cosines). On every draw, each estimator of the registry that applies
must satisfy ``E[∇ surrogate] = ∇ E[f]`` to ~1e-8 (float64, no sampling):
ScoreFunction with each unbiased baseline, Pathwise and Delta for smooth costs on
Normal, and — when present — MeasureValued, DisARM and RELAX.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.distributions import (
    Bernoulli,
    Categorical,
    Independent,
    Normal,
    OneHotCategorical,
    Poisson,
)

import scg
from scg.baselines import Constant, Delta, LeaveOneOut, MovingAverage
from scg.testing import assert_unbiased, costs

D64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread_module")  # tests/conftest.py


def number(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False).map(lambda x: round(x, 3))


def vector(lo: float, hi: float, n: int) -> st.SearchStrategy[torch.Tensor]:
    return st.lists(number(lo, hi), min_size=n, max_size=n).map(lambda v: torch.tensor(v, dtype=D64))


def scalar_costs(
    event_ndim: int, *, low: float = -1.0, high: float = 1.0
) -> st.SearchStrategy[costs.TestCost]:
    options = [
        st.lists(number(-1, 1), min_size=1, max_size=5).map(
            lambda c: costs.polynomial(c, event_ndim=event_ndim)
        ),
        number(low, high).map(lambda c: costs.threshold(c, event_ndim=event_ndim)),
        number(0.5, 2.0).map(lambda k: costs.cosine(k, event_ndim=event_ndim)),
    ]
    if event_ndim == 1:
        options.append(
            st.lists(number(-1, 1), min_size=2, max_size=3).map(lambda c: costs.product(c, event_ndim=1))
        )
    return st.one_of(*options)


# ----------------------------------------------------------------------------- registry


def _warm(estimator: scg.Estimator, dist, f, num_samples: int) -> scg.Estimator:
    """A few training-mode calls (fixed seed) so running statistics are non-trivial."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(0)
    for _ in range(3):
        estimator(f, dist, num_samples)
    torch.random.set_rng_state(gen_state)
    return estimator


# (name, estimator, num_samples, extra keyword arguments for assert_unbiased)
Entry = tuple[str, scg.Estimator, int, dict]


def registry(family: str, dist, f: costs.TestCost, elements: int) -> Iterator[Entry]:
    """Every unbiased estimator that applies to (family, f)."""
    yield "ScoreFunction", scg.ScoreFunction(), 1, {}
    yield "ScoreFunction+Constant", scg.ScoreFunction(baseline=Constant(0.7)), 1, {}
    yield (
        "ScoreFunction+MovingAverage",
        _warm(scg.ScoreFunction(baseline=MovingAverage(0.5)), dist, f, 1),
        1,
        {},
    )
    if elements == 1:  # the S-sample product space stays small
        yield "ScoreFunction+LeaveOneOut", scg.ScoreFunction(baseline=LeaveOneOut()), 2, {}
    if family == "normal" and f.smooth:
        yield "ScoreFunction+Delta", scg.ScoreFunction(baseline=Delta()), 1, {}
        yield "Pathwise", scg.Pathwise(), 1, {}
    # MVD's σ coupling puts a jump of f at a point that depends on two noise variables:
    # no product-grid breakpoints exist for it, so only smooth costs on Normal.
    if family != "normal" or (f.smooth and elements == 1):
        nodes = {"w": 16, "m": 24, "u": 61} if family == "normal" else None
        yield "MeasureValued", scg.MeasureValued(), 1, {"nodes": nodes}
    if family == "bernoulli":
        yield "DisARM", scg.DisARM(), 1, {}
    if family == "bernoulli" and f.smooth and elements == 1:
        yield "RELAX", scg.RELAX(), 1, {}


def check_all(family: str, make: Callable, params: tuple, f: costs.TestCost, elements: int) -> None:
    dist = make(*params)
    for name, estimator, S, extra in registry(family, dist, f, elements):
        try:
            assert_unbiased(estimator, make, params, f, num_samples=S, breakpoints=f.points, **extra)
        except AssertionError as exc:
            raise AssertionError(f"{name} on {family} with {f!r}, params {params}:\n{exc}") from None


# ----------------------------------------------------------------------------- properties


@settings(max_examples=12)
@given(data=st.data(), D=st.integers(1, 2))
def test_normal(data, D):
    mu = data.draw(vector(-1.5, 1.5, D), label="mu")
    sigma = data.draw(vector(0.5, 1.5, D), label="sigma")
    f = data.draw(scalar_costs(1), label="f")
    check_all("normal", lambda m, s: Independent(Normal(m, s), 1), (mu, sigma), f, D)


@settings(max_examples=10)
@given(data=st.data(), D=st.integers(1, 2))
def test_bernoulli(data, D):
    logits = data.draw(vector(-2.0, 2.0, D), label="logits")
    f = data.draw(scalar_costs(1, low=0.0, high=1.0), label="f")
    check_all("bernoulli", lambda l: Independent(Bernoulli(logits=l), 1), (logits,), f, D)


@settings(max_examples=8)
@given(data=st.data(), B=st.integers(1, 2))
def test_categorical(data, B):
    logits = data.draw(vector(-2.0, 2.0, 3 * B), label="logits").reshape(B, 3)
    f = data.draw(scalar_costs(0, low=0.0, high=2.0), label="f")
    check_all("categorical", lambda l: Categorical(logits=l), (logits,), f, B)


@settings(max_examples=8)
@given(data=st.data(), B=st.integers(1, 2))
def test_one_hot_categorical(data, B):
    logits = data.draw(vector(-2.0, 2.0, 3 * B), label="logits").reshape(B, 3)
    values = data.draw(st.lists(number(-1.5, 1.5), min_size=3, max_size=3), label="values")
    f = costs.on_values(data.draw(scalar_costs(0), label="f"), values)
    check_all("one-hot categorical", lambda l: OneHotCategorical(logits=l), (logits,), f, B)


@settings(max_examples=8)
@given(data=st.data(), D=st.integers(1, 2))
def test_poisson(data, D):
    rates = data.draw(vector(0.3, 3.0, D), label="rates")
    f = data.draw(scalar_costs(1, low=0.0, high=3.0), label="f")
    check_all("poisson", lambda r: Independent(Poisson(r), 1), (rates,), f, D)


def test_registry_covers_every_estimator_on_bernoulli():
    """The property tests run every unbiased estimator that applies to a Bernoulli cost."""
    dist = Independent(Bernoulli(logits=torch.zeros(1, dtype=D64)), 1)
    names = {name for name, *_ in registry("bernoulli", dist, costs.cosine(1.0, event_ndim=1), 1)}
    assert names == {
        "ScoreFunction",
        "ScoreFunction+Constant",
        "ScoreFunction+MovingAverage",
        "ScoreFunction+LeaveOneOut",
        "MeasureValued",
        "DisARM",
        "RELAX",
    }
