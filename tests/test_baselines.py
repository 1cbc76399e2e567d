"""Control variates: state semantics, oracles and variance reduction (deterministic)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.distributions import Bernoulli, Independent, Normal

import scg
from scg import baselines as B



# This module works in float64; the default dtype is restored after each test.
pytestmark = pytest.mark.usefixtures("float64")  # tests/conftest.py


def test_moving_average_is_bias_corrected_and_uses_only_earlier_draws():
    ma = B.MovingAverage(0.5)
    est = scg.ScoreFunction(ma)
    logits = torch.zeros(1, requires_grad=True)
    f = lambda b: b + 2.0
    assert float(ma.baseline()) == 0.0  # first call subtracts nothing
    d1 = est.draw(Bernoulli(logits=logits), 4)
    est.surrogate(f, Bernoulli(logits=logits), d1)
    first_mean = f(d1["z"]).mean()
    torch.testing.assert_close(ma.baseline(), first_mean)  # bias-corrected: exactly the first mean
    d2 = est.draw(Bernoulli(logits=logits), 4)
    est.surrogate(f, Bernoulli(logits=logits), d2)
    expected = (0.25 * first_mean + 0.5 * f(d2["z"]).mean()) / 0.75
    torch.testing.assert_close(ma.baseline(), expected)


def test_state_frozen_in_eval_mode_and_under_vmap():
    ma = B.MovingAverage(0.5)
    est = scg.ScoreFunction(ma)
    logits = torch.zeros(2)
    est.eval()
    scg.expectation(lambda b: b, Bernoulli(logits=logits), est, num_samples=3)
    assert ma.steps == 0 and float(ma.value) == 0.0
    est.train()

    def loss(lg, _):
        return scg.expectation(lambda b: b, Bernoulli(logits=lg), est, num_samples=3).sum()

    torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0), randomness="different")(logits, torch.zeros(4))
    assert ma.steps == 0 and float(ma.value) == 0.0
    scg.expectation(lambda b: b, Bernoulli(logits=logits), est, num_samples=3)
    assert ma.steps == 1 and float(ma.value) > 0.0


def test_learned_baseline_regression_gradient():
    """The zero-valued term's gradient w.r.t. ψ is ∇ψ mean_s (A_s − b_ψ(x))²."""
    net = nn.Linear(2, 1)
    est = scg.ScoreFunction(B.Learned(net))
    x = torch.tensor([[0.5, -1.0], [1.5, 0.2]])
    logits = torch.zeros(2, requires_grad=True)
    dist = Bernoulli(logits=logits)
    f = lambda b: 3 * b + 1
    draws = est.draw(dist, 5)
    est.surrogate(f, dist, draws, context=x).sum().backward()
    grad_w = net.weight.grad.clone()
    net.zero_grad()
    ((f(draws["z"]) - net(x).squeeze(-1)) ** 2).mean(0).sum().backward()
    torch.testing.assert_close(grad_w, net.weight.grad)


def test_normalize_divides_by_running_std():
    norm = B.Normalize(0.0)
    est = scg.ScoreFunction(norm)
    logits = torch.zeros(1, requires_grad=True)
    f = lambda b: 10 * b
    est.surrogate(f, Bernoulli(logits=logits), est.draw(Bernoulli(logits=logits), 8))
    var = float(norm.variance)
    draws = est.draw(Bernoulli(logits=logits), 8)
    est.surrogate(f, Bernoulli(logits=logits), draws).sum().backward()
    z = draws["z"]
    expected = (f(z) * (z - 0.5)).mean() / max(1.0, math.sqrt(var))
    torch.testing.assert_close(logits.grad, expected.reshape(1))
    assert est.unbiased is False


def test_delta_is_exact_for_quadratic_costs():
    """For quadratic f the Taylor control variate equals f: zero-variance gradient."""
    loc = torch.tensor([0.5, -1.0], requires_grad=True)
    scale = torch.tensor([1.2, 0.7], requires_grad=True)
    f = lambda z: (z**2).sum(-1) + z[..., 0] * 3.0
    est = scg.ScoreFunction(B.Delta())
    grads = []
    for _ in range(3):
        loc.grad = scale.grad = None
        scg.expectation(f, Independent(Normal(loc, scale), 1), est, num_samples=2).backward()
        grads.append(torch.cat([loc.grad, scale.grad]))
    exact = torch.cat([2 * loc.detach() + torch.tensor([3.0, 0.0]), 2 * scale.detach()])
    for g in grads:
        torch.testing.assert_close(g, exact, rtol=1e-12, atol=1e-12)


def test_optimal_moving_average_weights_by_squared_score_norm():
    """Oracle: b = EMA(mean f·‖s‖²)/EMA(mean ‖s‖²) with s the (μ, σ)-score of the Normal."""
    ma = B.MovingAverage(0.5, optimal=True)
    est = scg.ScoreFunction(ma)
    loc, scale = torch.tensor(1.0), torch.tensor(1.5)
    f = lambda x: x**2
    num = den = 0.0
    for _ in range(3):
        draws = est.draw(Normal(loc, scale), 50)
        est.surrogate(f, Normal(loc, scale), draws)
        e = draws["z"] - loc
        w = (e / scale**2) ** 2 + ((e**2 - scale**2) / scale**3) ** 2
        num = 0.5 * num + 0.5 * float((f(draws["z"]) * w).mean())
        den = 0.5 * den + 0.5 * float(w.mean())
    assert abs(float(ma.baseline()) - num / den) < 1e-12


def test_leave_one_out_reduces_variance_exactly_bernoulli_toy():
    """Exact enumeration over the S=2 product space: RLOO variance 2.5e-5 at t=0.49 (REFERENCES)."""
    t = 0.49
    logits = torch.zeros(1, requires_grad=True)
    est = scg.ScoreFunction(B.LeaveOneOut())
    f = lambda b: ((b - t) ** 2).squeeze(-1)
    m1 = m2 = 0.0
    for z in [(0.0, 0.0), (0.0, 1.0), (1.0, 0.0), (1.0, 1.0)]:
        logits.grad = None
        draws = {"z": torch.tensor(z).reshape(2, 1)}
        est.surrogate(f, Independent(Bernoulli(logits=logits), 1), draws).backward()
        m1 += 0.25 * float(logits.grad)
        m2 += 0.25 * float(logits.grad) ** 2
    assert abs(m1 - 0.25 * (1 - 2 * t)) < 1e-15
    assert abs((m2 - m1**2) - 2.5e-5) / 2.5e-5 < 1e-9
