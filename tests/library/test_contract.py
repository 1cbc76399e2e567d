"""The estimator contract, over every estimator scg ships (and every control variate).

* One path: ``est(f, dist, S)`` is ``est.surrogate(f, dist, est.draw(dist, S))`` — same
  value and gradients, bit for bit, after the same seed — and no estimator overrides
  ``forward`` or ``draw`` (a subclass that tries is refused).
* Every estimator is a graph node: a one-node ``scg.Graph`` gives the same surrogate
  value and gradient as ``scg.expectation`` after the same seed (float64, bit for bit),
  or the graph refuses it with an error that says what to use instead.
* The registry below covers every estimator class that ``scg.estimators`` exports.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn
from torch.distributions import (
    Bernoulli,
    Categorical,
    Distribution,
    Gamma,
    Independent,
    Normal,
    OneHotCategorical,
    Poisson,
)

import scg
import scg.estimators
from scg import baselines as B
from scg.estimators import NeuralControlVariate

D = torch.float64


class _Net(nn.Module):
    """A small control-variate / baseline network over the last dim."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.lin = nn.Linear(d, 1, dtype=D)

    def forward(self, x: Tensor) -> Tensor:
        return self.lin(x).squeeze(-1)


def _normal() -> tuple[Callable[[], Distribution], list[Tensor]]:
    loc = torch.tensor([[0.3, -0.2], [1.0, 0.5]], dtype=D, requires_grad=True)
    scale = torch.tensor([[1.2, 0.7], [0.9, 1.1]], dtype=D, requires_grad=True)
    return lambda: Independent(Normal(loc, scale), 1), [loc, scale]


def _bernoulli() -> tuple[Callable[[], Distribution], list[Tensor]]:
    logits = torch.tensor([[0.3, -0.8, 1.1], [0.0, 0.4, -0.2]], dtype=D, requires_grad=True)
    return lambda: Independent(Bernoulli(logits=logits), 1), [logits]


def _categorical() -> tuple[Callable[[], Distribution], list[Tensor]]:
    logits = torch.tensor([[0.3, -0.8, 1.1], [0.0, 0.4, -0.2]], dtype=D, requires_grad=True)
    return lambda: Categorical(logits=logits), [logits]


def _one_hot() -> tuple[Callable[[], Distribution], list[Tensor]]:
    logits = torch.tensor([[0.3, -0.8, 1.1], [0.0, 0.4, -0.2]], dtype=D, requires_grad=True)
    return lambda: OneHotCategorical(logits=logits), [logits]


def _poisson() -> tuple[Callable[[], Distribution], list[Tensor]]:
    rate = torch.tensor([0.7, 2.0], dtype=D, requires_grad=True)
    return lambda: Poisson(rate), [rate]


def _gamma() -> tuple[Callable[[], Distribution], list[Tensor]]:
    conc = torch.tensor([0.7, 2.0], dtype=D, requires_grad=True)
    return lambda: Gamma(conc, torch.ones(2, dtype=D)), [conc]


def _vector_cost(v: Tensor) -> Tensor:
    return (v.to(D) - 0.45).pow(2).sum(-1) + 0.3 * v.to(D).sum(-1).sin()


def _scalar_cost(v: Tensor) -> Tensor:
    return (v.to(D) - 1.2).pow(2) + 0.1 * v.to(D)


# (id, estimator factory, distribution factory, cost, num_samples)
Case = tuple[
    str,
    Callable[[], scg.Estimator],
    Callable[[], tuple[Callable[[], Distribution], list[Tensor]]],
    Callable[[Tensor], Tensor],
    int,
]
REGISTRY: list[Case] = [
    ("pathwise-normal", scg.Pathwise, _normal, _vector_cost, 3),
    ("pathwise-gamma-implicit", scg.Pathwise, _gamma, _scalar_cost, 3),
    ("score", scg.ScoreFunction, _bernoulli, _vector_cost, 3),
    ("score-constant", lambda: scg.ScoreFunction(B.Constant(0.4)), _bernoulli, _vector_cost, 3),
    (
        "score-moving-average",
        lambda: scg.ScoreFunction(B.MovingAverage(0.8)),
        _bernoulli,
        _vector_cost,
        3,
    ),
    (
        "score-optimal-moving-average",
        lambda: scg.ScoreFunction(B.MovingAverage(0.8, optimal=True)),
        _bernoulli,
        _vector_cost,
        3,
    ),
    (
        "score-leave-one-out",
        lambda: scg.ScoreFunction(B.LeaveOneOut()),
        _bernoulli,
        _vector_cost,
        3,
    ),
    (
        "score-nvil",
        lambda: scg.ScoreFunction(B.chain(B.MovingAverage(), B.Learned(_Net(3)), B.Normalize())),
        _bernoulli,
        _vector_cost,
        3,
    ),
    ("score-delta", lambda: scg.ScoreFunction(B.Delta()), _normal, _vector_cost, 3),
    ("score-categorical", scg.ScoreFunction, _categorical, _scalar_cost, 3),
    ("measure-valued-normal", scg.MeasureValued, _normal, _vector_cost, 2),
    ("measure-valued-bernoulli", scg.MeasureValued, _bernoulli, _vector_cost, 2),
    ("measure-valued-categorical", scg.MeasureValued, _categorical, _scalar_cost, 2),
    ("measure-valued-one-hot", scg.MeasureValued, _one_hot, _vector_cost, 2),
    ("measure-valued-poisson", scg.MeasureValued, _poisson, _scalar_cost, 2),
    ("disarm", scg.DisARM, _bernoulli, _vector_cost, 3),
    ("relax-rebar", scg.RELAX, _bernoulli, _vector_cost, 3),
    ("relax-rebar-one-hot", scg.RELAX, _one_hot, _vector_cost, 3),
    (
        "relax-neural-categorical",
        lambda: scg.RELAX(NeuralControlVariate(_Net(3), rebar=False)),
        _categorical,
        _vector_cost,
        3,
    ),
    (
        "relax-neural",
        lambda: scg.RELAX(NeuralControlVariate(_Net(3), rebar=False)),
        _bernoulli,
        _vector_cost,
        3,
    ),
    ("gumbel-softmax", lambda: scg.GumbelSoftmax(0.7), _bernoulli, _vector_cost, 3),
    (
        "gumbel-softmax-hard-categorical",
        lambda: scg.GumbelSoftmax(0.7, hard=True),
        _categorical,
        _vector_cost,
        3,
    ),
    ("straight-through", scg.StraightThrough, _bernoulli, _vector_cost, 3),
    ("straight-through-one-hot", scg.StraightThrough, _one_hot, _vector_cost, 3),
    ("arm", scg.ARM, _bernoulli, _vector_cost, 3),
    ("categorical-disarm", scg.CategoricalDisARM, _categorical, _scalar_cost, 3),
    ("categorical-disarm-one-hot", scg.CategoricalDisARM, _one_hot, _vector_cost, 3),
    ("arsm", scg.ARSM, _categorical, _scalar_cost, 2),
    ("arsm-one-hot", scg.ARSM, _one_hot, _vector_cost, 2),
    ("unordered-set", lambda: scg.UnorderedSet(k=2), _categorical, _scalar_cost, 2),
    ("unordered-set-one-hot", lambda: scg.UnorderedSet(k=2), _one_hot, _vector_cost, 2),
    ("sum-and-sample", lambda: scg.SumAndSample(k=1), _categorical, _scalar_cost, 2),
    ("sum-and-sample-bernoulli", lambda: scg.SumAndSample(k=1), _one_hot, _vector_cost, 2),
    ("enumerate", scg.Enumerate, _categorical, _scalar_cost, 2),
    ("gumbel-rao", lambda: scg.GumbelRao(0.7, num_conditional=3), _bernoulli, _vector_cost, 3),
    ("gumbel-rao-categorical", lambda: scg.GumbelRao(0.7, num_conditional=3), _categorical, _vector_cost, 3),
    ("gumbel-rao-one-hot", lambda: scg.GumbelRao(0.7, num_conditional=3), _one_hot, _vector_cost, 3),
    ("reinmax", lambda: scg.ReinMax(1.5), _bernoulli, _vector_cost, 3),
    ("reinmax-categorical", lambda: scg.ReinMax(1.5), _categorical, _vector_cost, 3),
    ("reinmax-one-hot", scg.ReinMax, _one_hot, _vector_cost, 3),
    ("indecater-bernoulli", scg.IndeCateR, _bernoulli, _vector_cost, 2),
    ("indecater-categorical", scg.IndeCateR, _categorical, _scalar_cost, 2),
    ("indecater-one-hot", scg.IndeCateR, _one_hot, _vector_cost, 2),
]
#: Estimators whose scg.expectation value is not the one-node graph's: Enumerate sums f over the
#: whole support in scg.expectation (the exact E[f]); a graph node's value is one exact draw.
EXACT_VALUE_IN_EXPECTATION = {"enumerate"}
#: Estimators the graph refuses, and the words of the error that says what to use instead.
REFUSED_IN_GRAPH = {
    "score-delta": "Delta, which needs the cost as a function",
    "relax-rebar": "REBARControlVariate, which needs the cost as a function",
    "relax-rebar-one-hot": "REBARControlVariate, which needs the cost as a function",
}


def _grads(out: Tensor, params: list[Tensor], est: scg.Estimator) -> list[Tensor]:
    inputs = params + [p for p in est.parameters()]
    return list(torch.autograd.grad(out, inputs, allow_unused=True, materialize_grads=True))


def test_registry_covers_every_exported_estimator() -> None:
    exported = {getattr(scg.estimators, n) for n in scg.estimators.__all__}
    classes = {
        c for c in exported if isinstance(c, type) and issubclass(c, scg.Estimator) and c is not scg.Estimator
    }
    covered = {type(make()) for _, make, *_ in REGISTRY}
    assert classes - covered == set()


@pytest.mark.parametrize("case", REGISTRY, ids=[c[0] for c in REGISTRY])
def test_one_path_call_equals_surrogate_of_draw(case: Case) -> None:
    _, make, make_dist, f, S = case
    est = make()
    est_a, est_b = copy.deepcopy(est), copy.deepcopy(est)
    new_dist, params = make_dist()
    torch.manual_seed(11)
    a = est_a(f, new_dist(), S)
    torch.manual_seed(11)
    dist = new_dist()
    b = est_b.surrogate(f, dist, est_b.draw(dist, S))
    assert a.shape == dist.batch_shape and torch.equal(a, b)
    for ga, gb in zip(_grads(a.sum(), params, est_a), _grads(b.sum(), params, est_b), strict=False):
        assert torch.equal(ga, gb)


def test_no_estimator_overrides_forward_or_draw() -> None:
    for _, make, *_ in REGISTRY:
        cls = type(make())
        assert cls.forward is scg.Estimator.forward and cls.draw is scg.Estimator.draw, cls
    with pytest.raises(TypeError, match=r"Bypass must not override `forward`"):
        type(
            "Bypass",
            (scg.Estimator,),
            {"forward": lambda self, f, dist, num_samples=1: f(dist.sample())},
        )


@pytest.mark.parametrize("case", REGISTRY, ids=[c[0] for c in REGISTRY])
def test_one_node_graph_equals_expectation(case: Case) -> None:
    name, make, make_dist, f, S = case
    est = make()
    new_dist, params = make_dist()
    if name in REFUSED_IN_GRAPH:
        with pytest.raises(TypeError, match=REFUSED_IN_GRAPH[name]):
            scg.Graph(num_samples=S).sample("z", new_dist(), est)
        return
    est_g, est_e = copy.deepcopy(est), copy.deepcopy(est)
    torch.manual_seed(5)
    g = scg.Graph(num_samples=S)
    v = g.sample("z", new_dist(), est_g)
    g.cost("f", f(v))
    s = g.surrogate()
    torch.manual_seed(5)
    e = scg.expectation(f, new_dist(), est_e, num_samples=S).sum()
    if name in EXACT_VALUE_IN_EXPECTATION:  # same exact gradient, by two summations
        for gg, ge in zip(_grads(s, params, est_g), _grads(e, params, est_e), strict=False):
            torch.testing.assert_close(gg, ge, rtol=1e-12, atol=1e-14)
        return
    assert torch.equal(s, e), (float(s), float(e))
    for gg, ge in zip(_grads(s, params, est_g), _grads(e, params, est_e), strict=False):
        assert torch.equal(gg, ge)
    for bg, be in zip(est_g.buffers(), est_e.buffers(), strict=False):  # control variates' state moved alike
        assert torch.equal(bg, be)


def test_estimator_without_parts_serves_expectation_but_not_a_graph() -> None:
    class Plain(scg.Estimator):
        def laws(self, dist, num_samples):
            return {"eps": scg.laws.StandardNormal((num_samples, *dist.batch_shape), dtype=D)}

        def surrogate(self, f, dist, draws, *, context=None):
            return f(dist.loc + dist.scale * draws["eps"]).mean(0)

    mu = torch.tensor(0.5, dtype=D, requires_grad=True)
    q = Normal(mu, torch.tensor(1.0, dtype=D))
    torch.manual_seed(0)
    loss = scg.expectation(lambda z: z**2, q, Plain(), num_samples=8)
    torch.manual_seed(0)
    eps = torch.randn(8, dtype=D)
    assert torch.equal(loss, (mu + eps).pow(2).mean(0))
    with pytest.raises(TypeError, match=r"must implement parts\(dist, draws\) to be a graph node; Plain"):
        scg.Graph(num_samples=2).sample("z", q, Plain())
