"""``scg.log_prob``: the estimator's log-density of its own samples, computed once.

Deterministic: the same seed gives the same draws, so a cost written with
``scg.log_prob(q, z)`` and one written with ``q.log_prob(z)`` must give equal values
and equal first and second derivatives; the shared tensor must be the very one the
estimator scores with.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Bernoulli, Independent, Normal

import scg
from scg.baselines import ControlVariate, MovingAverage, SignalContext


class _Record(ControlVariate):
    """A no-op control variate that records the log-probability the estimator scores with."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Tensor] = []

    def forward(self, signal: Tensor, ctx: SignalContext) -> tuple[Tensor, Tensor | None]:
        self.seen.append(ctx.log_prob)
        return signal, None


def _bernoulli():
    logits = torch.tensor([[0.3, -1.2, 0.8], [1.5, 0.1, -0.4]], dtype=torch.float64, requires_grad=True)
    return logits, Independent(Bernoulli(logits=logits), 1)


def test_inside_a_cost_it_is_the_estimators_tensor():
    logits, q = _bernoulli()
    record, inside = _Record(), []

    def cost(b: Tensor) -> Tensor:
        inside.append(scg.log_prob(q, b))
        return inside[-1] + b.sum(-1)

    scg.expectation(cost, q, scg.ScoreFunction(baseline=record), num_samples=4)
    assert inside[0] is record.seen[0]


def test_elsewhere_it_is_dist_log_prob():
    logits, q = _bernoulli()
    b = q.sample((3,))
    assert torch.equal(scg.log_prob(q, b), q.log_prob(b))
    other = Independent(Bernoulli(logits=logits.detach() + 1.0), 1)
    record, seen = _Record(), {}

    def cost(z: Tensor) -> Tensor:  # another distribution, or another tensor, is not shared
        seen["other"] = scg.log_prob(other, z)
        seen["copy"] = scg.log_prob(q, z.clone())
        return z.sum(-1)

    scg.expectation(cost, q, scg.ScoreFunction(baseline=record), num_samples=2)
    assert seen["other"] is not record.seen[0] and seen["copy"] is not record.seen[0]
    torch.testing.assert_close(seen["copy"], record.seen[0].detach(), rtol=0, atol=0)


def _elbo_like(shared: bool, seed: int, create_graph: bool):
    torch.manual_seed(seed)
    logits, q = _bernoulli()
    lp = scg.log_prob if shared else (lambda d, z: d.log_prob(z))

    def cost(b: Tensor) -> Tensor:
        return lp(q, b) + ((b - 0.3) ** 2).sum(-1) * logits.sum()

    loss = scg.expectation(cost, q, scg.ScoreFunction(baseline=MovingAverage(0.5)), num_samples=5).sum()
    (g,) = torch.autograd.grad(loss, logits, create_graph=create_graph)
    if not create_graph:
        return loss.detach(), g, None
    (h,) = torch.autograd.grad(g.sum(), logits)
    return loss.detach(), g.detach(), h


def test_same_value_gradient_and_hessian_as_computing_it_twice():
    for seed in range(3):
        a = _elbo_like(True, seed, create_graph=True)
        b = _elbo_like(False, seed, create_graph=True)
        assert torch.equal(a[0], b[0])
        torch.testing.assert_close(a[1], b[1], rtol=1e-14, atol=1e-14)
        torch.testing.assert_close(a[2], b[2], rtol=1e-14, atol=1e-14)


def test_nested_expectations_see_their_own_samples():
    loc = torch.tensor([0.2, -0.5], dtype=torch.float64, requires_grad=True)
    outer = Independent(Normal(loc, 1.0), 1)
    logits, inner = _bernoulli()
    outer_rec, inner_rec, seen = _Record(), _Record(), {}

    def inner_cost(b: Tensor) -> Tensor:
        seen["inner"] = scg.log_prob(inner, b)
        return b.sum(-1)

    def outer_cost(z: Tensor) -> Tensor:
        value = scg.expectation(inner_cost, inner, scg.ScoreFunction(baseline=inner_rec), num_samples=3).sum()
        seen["outer"] = scg.log_prob(outer, z)  # after the inner call returned: still the outer's
        return z.sum(-1) + value

    scg.expectation(outer_cost, outer, scg.ScoreFunction(baseline=outer_rec), num_samples=2)
    assert seen["inner"] is inner_rec.seen[0] and seen["outer"] is outer_rec.seen[0]


def test_works_under_torch_func():
    logits0, _ = _bernoulli()
    estimator = scg.ScoreFunction()

    def objective(shared: bool):
        def fn(params: list[Tensor]) -> Tensor:
            q = Independent(Bernoulli(logits=params[0]), 1)
            lp = scg.log_prob if shared else (lambda d, z: d.log_prob(z))
            return scg.expectation(lambda b: lp(q, b) + b.sum(-1), q, estimator, num_samples=2).sum()

        return fn

    torch.manual_seed(0)
    a = scg.diagnostics.gradient_samples(objective(True), [logits0.detach()], 16)
    torch.manual_seed(0)
    b = scg.diagnostics.gradient_samples(objective(False), [logits0.detach()], 16)
    assert a.shape == (16, 6)
    torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-14)
