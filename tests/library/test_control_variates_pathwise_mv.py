"""Control variates for Pathwise and MeasureValued (Mohamed et al. 2020, §7), checked exactly.

Every check integrates over the estimator's laws (scg.testing): float64, no sampling.
"""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Bernoulli, Categorical, Independent, Normal, OneHotCategorical

import scg
from scg.baselines import Constant, Delta, LeaveOneOut, MovingAverage, Normalize, chain
from scg.testing import assert_unbiased, exact_moments

D = torch.float64


def t(*x: float) -> torch.Tensor:
    return torch.tensor(x, dtype=D)


def normal(mu: torch.Tensor, log_sd: torch.Tensor) -> Normal:
    return Normal(mu, log_sd.exp())


def smooth(z: torch.Tensor) -> torch.Tensor:  # not quadratic: h != f
    return torch.sin(z) + 0.3 * z**3 - 0.2 * z**2


def quadratic(z: torch.Tensor) -> torch.Tensor:  # h = f exactly
    return 1.5 * (z - 0.4) ** 2 - 0.7 * z + 2.0


PARAMS = (t(0.3, -0.5), t(-0.2, 0.1))


# ----------------------------------------------------------------------------- Pathwise


def test_pathwise_delta_unbiased() -> None:
    assert_unbiased(scg.Pathwise(Delta()), normal, PARAMS, smooth, num_samples=2)
    assert_unbiased(scg.Pathwise(baseline=Delta(0.6)), normal, PARAMS, smooth)


def test_pathwise_delta_optimal_after_training_call_unbiased() -> None:
    est = scg.Pathwise(Delta("optimal"))
    mu, log_sd = (p.clone().requires_grad_(True) for p in PARAMS)
    scg.expectation(smooth, normal(mu, log_sd), est, num_samples=8).sum().backward()  # training mode
    assert float(est.baseline.var) > 0.0
    c = float(est.baseline.current_coefficient(mu))
    assert c != 1.0
    est.eval()
    assert_unbiased(est, normal, PARAMS, smooth, num_samples=2)
    assert float(est.baseline.current_coefficient(mu)) == c  # eval: state frozen


def test_pathwise_delta_exact_on_quadratic() -> None:
    m = assert_unbiased(scg.Pathwise(Delta()), normal, PARAMS, quadratic)
    assert float(m.variance.max()) < 1e-24
    plain = exact_moments(scg.Pathwise(), normal, PARAMS, quadratic)
    assert float(plain.variance.min()) > 0.1


def test_pathwise_delta_independent_event() -> None:
    def make(mu, log_sd):
        return Independent(Normal(mu, log_sd.exp()), 1)

    def f(z):  # diagonal quadratic in the event: exact
        return (1.5 * (z - 0.4) ** 2 - 0.7 * z).sum(-1)

    m = assert_unbiased(scg.Pathwise(Delta()), make, PARAMS, f)
    assert float(m.variance.max()) < 1e-24
    assert_unbiased(scg.Pathwise(Delta()), make, PARAMS, lambda z: smooth(z).sum(-1))


def test_pathwise_delta_value_is_mc_mean() -> None:
    torch.manual_seed(0)
    mu, log_sd = (p.clone().requires_grad_(True) for p in PARAMS)
    est = scg.Pathwise(Delta())
    draws = est.draw(normal(mu, log_sd), 4)
    loss = est.surrogate(smooth, normal(mu, log_sd), draws)
    plain = scg.Pathwise().surrogate(smooth, normal(mu, log_sd), draws)
    torch.testing.assert_close(loss, plain, rtol=0, atol=1e-15)


def test_pathwise_constant_baselines_change_nothing() -> None:
    torch.manual_seed(1)
    mu, log_sd = (p.clone().requires_grad_(True) for p in PARAMS)
    draws = scg.Pathwise().draw(normal(mu, log_sd), 3)

    def grad(est):
        out = est.surrogate(smooth, normal(mu, log_sd), draws).sum()
        return torch.cat(torch.autograd.grad(out, (mu, log_sd)))

    ref = grad(scg.Pathwise())
    ma = MovingAverage()
    ma.value.fill_(2.5)
    for b in (Constant(0.7), ma, LeaveOneOut(), chain(Constant(1.0), Delta(0.0))):
        torch.testing.assert_close(grad(scg.Pathwise(b)), ref, rtol=0, atol=1e-14)


def test_pathwise_state_updates_only_in_training() -> None:
    mu, log_sd = (p.clone().requires_grad_(True) for p in PARAMS)
    est = scg.Pathwise(MovingAverage())
    scg.expectation(smooth, normal(mu, log_sd), est, num_samples=4).sum().backward()
    assert int(est.baseline.steps) == 1
    est.eval()
    scg.expectation(smooth, normal(mu, log_sd), est, num_samples=4).sum().backward()
    assert int(est.baseline.steps) == 1


def test_pathwise_refusals_and_unbiased_flag() -> None:
    with pytest.raises(ValueError, match="Normalize"):
        scg.Pathwise(Normalize())
    with pytest.raises(ValueError, match="Normalize"):
        scg.Pathwise(chain(MovingAverage(), Normalize()))
    with pytest.raises(TypeError, match="control variate"):
        scg.Pathwise(baseline=lambda s, c: s)  # type: ignore[arg-type]
    assert scg.Pathwise(Delta()).unbiased and scg.Pathwise().unbiased

    class Halve(scg.baselines.ControlVariate):
        unbiased = False

        def forward(self, signal, ctx):
            return signal, None

    assert not scg.Pathwise(Halve()).unbiased


def test_graph_refuses_delta_for_pathwise() -> None:
    g = scg.Graph(num_samples=2)
    with pytest.raises(TypeError, match="Delta"):
        g.sample("z", Normal(torch.zeros((), dtype=D), torch.ones((), dtype=D)), scg.Pathwise(Delta()))


def test_graph_pathwise_constant_baseline() -> None:
    torch.manual_seed(2)
    mu = torch.tensor(0.3, dtype=D, requires_grad=True)
    grads = []
    for est in (scg.Pathwise(), scg.Pathwise(Constant(0.7))):
        torch.manual_seed(2)
        g = scg.Graph(num_samples=3)
        z = g.sample("z", Normal(mu, torch.ones((), dtype=D)), est)
        g.cost("c", smooth(z))
        grads.append(torch.autograd.grad(g.surrogate(), mu)[0])
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-14)


# ----------------------------------------------------------------------------- MeasureValued


def test_measure_valued_delta_normal_unbiased() -> None:
    assert_unbiased(scg.MeasureValued(Delta()), normal, PARAMS, smooth, rtol=1e-6, atol=1e-7)
    assert_unbiased(scg.MeasureValued(baseline=Delta(0.5)), normal, PARAMS, smooth, rtol=1e-6, atol=1e-7)


def test_measure_valued_delta_exact_on_quadratic() -> None:
    m = assert_unbiased(scg.MeasureValued(Delta()), normal, PARAMS, quadratic)
    assert float(m.variance.max()) < 1e-24
    plain = exact_moments(scg.MeasureValued(), normal, PARAMS, quadratic)
    assert float(plain.variance.min()) > 0.1


def test_measure_valued_delta_reduces_variance() -> None:
    # f = sin + cubic: h is only an approximation; the variance still drops by more than half.
    with_cv = exact_moments(scg.MeasureValued(Delta()), normal, PARAMS, smooth)
    plain = exact_moments(scg.MeasureValued(), normal, PARAMS, smooth)
    assert bool((with_cv.variance < 0.5 * plain.variance).all()), (with_cv.variance, plain.variance)


def _categorical(logits: torch.Tensor) -> Independent:
    return Independent(Categorical(logits=logits), 1)


def _one_hot(logits: torch.Tensor) -> Independent:
    return Independent(OneHotCategorical(logits=logits), 1)


LOGITS = (torch.tensor([[0.2, -0.3, 0.5], [0.1, 0.4, -0.6]], dtype=D),)
W = torch.tensor([0.0, 1.0, 2.5], dtype=D)


def f_categorical(z: torch.Tensor) -> torch.Tensor:  # couples the two positions: random estimate
    v = W[z.long()]
    return (v[..., 0] * v[..., 1] - 1.3) ** 2 + 4.0


def f_one_hot(z: torch.Tensor) -> torch.Tensor:
    v = (z * W).sum(-1)
    return (v[..., 0] * v[..., 1] - 1.3) ** 2 + 4.0


def _trained_moving_average(make, f) -> scg.MeasureValued:
    est = scg.MeasureValued(MovingAverage())
    logits = LOGITS[0].clone().requires_grad_(True)
    torch.manual_seed(3)
    scg.expectation(f, make(logits), est, num_samples=4).backward()  # training mode: state set
    assert int(est.baseline.steps) == 1 and float(est.baseline.value) != 0.0
    est.eval()
    return est


@pytest.mark.parametrize("make, f", [(_categorical, f_categorical), (_one_hot, f_one_hot)])
def test_measure_valued_moving_average_categorical_unbiased(make, f) -> None:
    est = _trained_moving_average(make, f)
    value = float(est.baseline.value)
    m = assert_unbiased(est, make, LOGITS, f, num_samples=2)
    assert float(est.baseline.value) == value  # eval: frozen
    # A baseline equal at every copy cancels exactly (Σ_k ∂π_k = 0): the same moments.
    plain = exact_moments(scg.MeasureValued(), make, LOGITS, f, num_samples=2)
    torch.testing.assert_close(m.mean, plain.mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(m.variance, plain.variance, rtol=0, atol=1e-12)
    assert float(plain.variance.max()) > 1e-3  # the estimate is random here


def test_measure_valued_constant_bernoulli_unbiased() -> None:
    def make(logits):
        return Bernoulli(logits=logits)

    def f(b):
        return (b - 0.4) ** 2 * 3.0 + b

    m = assert_unbiased(scg.MeasureValued(Constant(0.7)), make, (t(0.3, -1.2),), f)
    plain = exact_moments(scg.MeasureValued(), make, (t(0.3, -1.2),), f)
    torch.testing.assert_close(m.variance, plain.variance, rtol=0, atol=1e-14)


def test_measure_valued_constant_baseline_leaves_categorical_variance() -> None:
    # The best constant b cannot lower the variance: Σ_k ∂π_k (f_k − b) = Σ_k ∂π_k f_k per sample.
    plain = exact_moments(scg.MeasureValued(), _categorical, LOGITS, f_categorical)
    for b in (0.0, 4.0, 7.5, -3.0):
        m = exact_moments(scg.MeasureValued(Constant(b)), _categorical, LOGITS, f_categorical)
        torch.testing.assert_close(m.variance, plain.variance, rtol=0, atol=1e-12)


def test_measure_valued_state_updates_only_in_training_and_value() -> None:
    torch.manual_seed(4)
    logits = LOGITS[0].clone().requires_grad_(True)
    est = scg.MeasureValued(MovingAverage())
    draws = est.draw(_categorical(logits), 3)
    loss = est.surrogate(f_categorical, _categorical(logits), draws)
    plain = scg.MeasureValued().surrogate(f_categorical, _categorical(logits), draws)
    torch.testing.assert_close(loss, plain, rtol=0, atol=0)
    assert int(est.baseline.steps) == 1
    est.eval()
    est.surrogate(f_categorical, _categorical(logits), draws)
    assert int(est.baseline.steps) == 1


def test_measure_valued_refusals_and_unbiased_flag() -> None:
    with pytest.raises(ValueError, match="LeaveOneOut"):
        scg.MeasureValued(LeaveOneOut())
    with pytest.raises(ValueError, match="LeaveOneOut"):
        scg.MeasureValued(chain(MovingAverage(), LeaveOneOut()))
    with pytest.raises(TypeError, match="control variate"):
        scg.MeasureValued(3.0)  # type: ignore[arg-type]
    assert not scg.MeasureValued(Normalize()).unbiased
    assert scg.MeasureValued(Delta()).unbiased and scg.MeasureValued().unbiased
    with pytest.raises(TypeError, match="Normal"):
        scg.expectation(lambda b: b, Bernoulli(logits=t(0.1)), scg.MeasureValued(Delta())).backward()
