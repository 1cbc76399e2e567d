"""Bayesian logistic regression: estimators exact on its cost, doubly stochastic unbiasedness, training."""

import itertools

import pytest
import torch
from torch.distributions import Independent, Normal
from torch.nn.functional import softplus

import scg
from scg.models import BayesianLogisticRegression, TrainConfig, fit
from scg.models.data import breast_cancer
from scg.testing import assert_unbiased, exact_gradient, exact_moments

DT = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread_module")  # tests/conftest.py


def _tiny():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(4, 1, generator=g, dtype=DT), torch.ones(4, 1, dtype=DT)], 1)
    y = torch.tensor([0.0, 1.0, 1.0, 0.0], dtype=DT)
    return x, y


def _make(loc, raw):
    return Independent(Normal(loc, softplus(raw)), 1)


PARAMS = (torch.tensor([0.3, -0.2], dtype=DT), torch.tensor([0.1, -0.4], dtype=DT))


@pytest.mark.parametrize(
    "estimator",
    [
        scg.Pathwise(),
        scg.ScoreFunction(baseline=scg.baselines.MovingAverage()),
        scg.MeasureValued(),
        scg.ScoreFunction(baseline=scg.baselines.Delta()),
    ],
    ids=["pathwise", "score_function", "measure_valued", "delta"],
)
def test_estimators_are_exact_on_the_blr_cost(estimator):
    x, y = _tiny()
    params = PARAMS
    if isinstance(
        estimator, scg.MeasureValued
    ):  # 4 noise variables per weight: one weight keeps the grid small
        x, params = x[:, :1], (PARAMS[0][:1], PARAMS[1][:1])
    assert_unbiased(estimator, _make, params, lambda w: BayesianLogisticRegression.nll(w, x, y))


def test_minibatch_objective_is_doubly_unbiased():
    # Average the exact (quadrature) expected gradient of every size-2 minibatch objective:
    # it equals the exact gradient of the full-data negative ELBO.
    x, y = _tiny()
    m = BayesianLogisticRegression(x, y, batch_size=2, num_samples=1).double()
    with torch.no_grad():
        m.loc.copy_(PARAMS[0])
        m.raw_scale.copy_(PARAMS[1])
    subsets = list(itertools.combinations(range(4), 2))
    mean = 0
    for idx in subsets:
        xb, yb = x[list(idx)], y[list(idx)]
        mom = exact_moments(scg.Pathwise(), _make, PARAMS, lambda w, xb=xb, yb=yb: 2.0 * m.nll(w, xb, yb))
        mean = mean + mom.mean / len(subsets)
    m.zero_grad()
    m.kl().backward()
    kl_grad = torch.cat([m.loc.grad, m.raw_scale.grad])
    full = torch.cat([g.reshape(-1) for g in exact_gradient(_make, PARAMS, lambda w: m.nll(w, x, y))])
    assert torch.allclose(mean + kl_grad, full + kl_grad, rtol=1e-9, atol=1e-11)


def test_objective_wiring_with_replayed_draws():
    x, y = _tiny()
    m = BayesianLogisticRegression(x, y, batch_size=2, num_samples=3, estimator=scg.Pathwise()).double()
    draws = m.estimator.draw(m.posterior(), 3)
    idx = torch.tensor([1, 3])
    value = m.objective(idx, draws=draws)
    w = m.posterior().base_dist.loc + m.posterior().base_dist.scale * draws["eps"]
    expected = 2.0 * m.nll(w, x[idx], y[idx]).mean() + m.kl()
    assert torch.allclose(value, expected, rtol=1e-12)
    torch.manual_seed(0)
    assert m.objective().shape == ()  # a minibatch drawn by scg.minibatch


def test_training_on_breast_cancer_smoke():
    torch.manual_seed(0)
    x, y, _, _ = breast_cancer()
    m = BayesianLogisticRegression(x, y, num_samples=5, estimator=scg.Pathwise())
    before = m.elbo(num_samples=200)
    h = fit(m, m.rows(), m.rows(), config=TrainConfig(epochs=3, batch_size=32, lr=0.05, progress=False))
    assert m.elbo(num_samples=200) > before and len(h.epochs) == 3
    assert m.accuracy() > 0.9
    assert m.bound(m.rows()[:5]).shape == (5,)


def test_blr_errors():
    x, y = _tiny()
    with pytest.raises(ValueError, match=r"`x` must be \[N, D\] and `y` \[N\]; got \[4, 2\] and \[3\]"):
        BayesianLogisticRegression(x, y[:3])
    with pytest.raises(ValueError, match="`batch_size` must be <= `n` = 4"):
        BayesianLogisticRegression(x, y, batch_size=5)
    with pytest.raises(ValueError, match="`prior_std` must be"):
        BayesianLogisticRegression(x, y, prior_std=0.0)
