"""Tests of ``scg.stop_gradient``: same type and values, no gradient to parameters, gradient through inputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.distributions import (
    AffineTransform,
    Bernoulli,
    Categorical,
    ExpTransform,
    Independent,
    LogNormal,
    MixtureSameFamily,
    MultivariateNormal,
    Normal,
    Transform,
    TransformedDistribution,
    constraints,
)

import scg



# This module works in float64; the default dtype is restored after each test.
pytestmark = pytest.mark.usefixtures("float64")  # tests/conftest.py


class ModuleAffine(Transform, nn.Module):
    """An element-wise affine flow layer whose parameters live in an nn.Module."""

    domain = constraints.real
    codomain = constraints.real
    bijective = True
    sign = 1

    def __init__(self, dim: int) -> None:
        Transform.__init__(self, cache_size=1)
        nn.Module.__init__(self)
        self.shift = nn.Parameter(torch.linspace(-0.5, 0.5, dim))
        self.log_scale = nn.Parameter(torch.linspace(0.2, -0.3, dim))

    def _call(self, x):
        return x * self.log_scale.exp() + self.shift

    def _inverse(self, y):
        return (y - self.shift) * (-self.log_scale).exp()

    def log_abs_det_jacobian(self, x, y):
        return self.log_scale.expand_as(x)

    __hash__ = nn.Module.__hash__
    __eq__ = Transform.__eq__


class HoldsNet(Transform):
    """A transform that is not a module but holds one (conditioner network)."""

    domain = constraints.real
    codomain = constraints.real
    bijective = True
    sign = 1

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(1, 1)

    def _call(self, x):
        return x + self.net.bias

    def _inverse(self, y):
        return y - self.net.bias

    def log_abs_det_jacobian(self, x, y):
        return torch.zeros_like(x)


def _params():
    loc = torch.tensor([0.3, -0.2], requires_grad=True)
    scale = torch.tensor([0.9, 1.4], requires_grad=True)
    return loc, scale


def _cases():
    loc, scale = _params()
    flow = ModuleAffine(2)
    cases = {
        "normal": (lambda: Normal(loc, scale), [loc, scale]),
        "independent": (lambda: Independent(Normal(loc, scale), 1), [loc, scale]),
        "bernoulli_logits": (lambda: Bernoulli(logits=loc), [loc]),
        "bernoulli_probs": (lambda: Bernoulli(probs=scale / 2), [scale]),
        "mvn": (lambda: MultivariateNormal(loc, scale_tril=torch.diag(scale)), [loc, scale]),
        "mixture": (lambda: MixtureSameFamily(Categorical(logits=loc), Normal(loc, scale)), [loc, scale]),
        "lognormal": (lambda: LogNormal(loc, scale), [loc, scale]),
        "affine_tensor": (
            lambda: TransformedDistribution(Normal(loc, scale), [AffineTransform(loc, scale), ExpTransform()]),
            [loc, scale],
        ),
        "module_flow": (
            lambda: Independent(TransformedDistribution(Normal(loc, scale), [flow, flow.inv.inv]), 1),
            [loc, scale, *flow.parameters()],
        ),
    }
    return cases


@pytest.mark.parametrize("case", list(_cases()))
def test_same_type_same_values_no_gradient_to_parameters(case):
    make, params = _cases()[case]
    dist = make()
    stopped = scg.stop_gradient(dist)
    assert type(stopped) is type(dist)
    torch.manual_seed(0)
    z = dist.sample((3,))
    if case == "module_flow":  # the original inverts z from its transform cache, the copy computes it
        torch.testing.assert_close(stopped.log_prob(z), dist.log_prob(z).detach(), atol=1e-12, rtol=0)
    else:
        assert torch.equal(stopped.log_prob(z), dist.log_prob(z))
    assert stopped.batch_shape == dist.batch_shape and stopped.event_shape == dist.event_shape
    out = stopped.log_prob(z).sum()
    assert not out.requires_grad
    assert dist.log_prob(z).sum().requires_grad  # the original is untouched
    if dist.has_rsample:
        torch.manual_seed(1)
        a = dist.rsample((2,))
        torch.manual_seed(1)
        b = stopped.rsample((2,))
        torch.testing.assert_close(a.detach(), b, atol=1e-14, rtol=0)
        assert not b.requires_grad


@pytest.mark.parametrize("case", ["normal", "independent", "mvn", "lognormal", "affine_tensor", "module_flow"])
def test_gradient_flows_through_the_sample_only(case):
    """STL: d/dφ log q_stop(z(φ)) = ∂log q/∂z · ∂z/∂φ, even right after rsample (flow caches)."""
    make, params = _cases()[case]
    dist = make()
    torch.manual_seed(2)
    z = dist.rsample((4,))
    got = torch.autograd.grad(scg.stop_gradient(dist).log_prob(z).sum(), params, retain_graph=True)
    leaf = z.detach().requires_grad_()
    (dz,) = torch.autograd.grad(make().log_prob(leaf).sum(), leaf)
    expected = torch.autograd.grad(z, params, grad_outputs=dz, allow_unused=True)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, torch.zeros_like(g) if e is None else e, atol=1e-12, rtol=0)


def test_transform_holding_a_module():
    base = Normal(torch.zeros(3), 1.0)
    t = HoldsNet()
    dist = TransformedDistribution(base, [t])
    z = torch.randn(3)
    stopped = scg.stop_gradient(dist)
    assert torch.equal(stopped.log_prob(z), dist.log_prob(z))
    assert not stopped.log_prob(z).requires_grad
    y = stopped.rsample()
    y.sum().backward() if y.requires_grad else None
    assert t.net.bias.grad is None


def test_error_not_a_distribution():
    with pytest.raises(TypeError, match=r"`dist` must be a torch.distributions.Distribution; got Tensor"):
        scg.stop_gradient(torch.zeros(2))


def test_flows_from_scg_models():
    """IAF and affine coupling hold a network and a context tensor: both are stopped."""
    flows = pytest.importorskip("scg.models.flows")
    torch.manual_seed(0)
    D = 3
    context = torch.randn(2, 4, requires_grad=True)
    made = flows.MADE(D, (8,), context_dim=4)
    loc = torch.zeros(2, D, requires_grad=True)
    q = Independent(Normal(loc, 1.0), 1)
    dist = TransformedDistribution(q, [flows.IAFTransform(made, context)])
    z = dist.rsample((5,))
    stopped = scg.stop_gradient(dist)
    lp = stopped.log_prob(z)
    torch.testing.assert_close(lp, dist.log_prob(z).detach(), atol=1e-10, rtol=0)
    params = [loc, context, *made.parameters()]
    got = torch.autograd.grad(lp.sum(), params, allow_unused=True, retain_graph=True)
    leaf = z.detach().requires_grad_()
    (dz,) = torch.autograd.grad(dist.log_prob(leaf).sum(), leaf)  # uncached: inverts leaf
    expected = torch.autograd.grad(z, params, grad_outputs=dz, allow_unused=True)
    for g, e in zip(got, expected):
        g = torch.zeros_like(e) if g is None and e is not None else g
        if e is None:
            assert g is None or float(g.abs().max()) == 0.0
        else:
            torch.testing.assert_close(g, e, atol=1e-8, rtol=0)
