"""Tests of ``scg.stop_gradient``: same type and values, no gradient to parameters, gradient through inputs."""

from __future__ import annotations

import functools
import re

import pytest
import torch
from torch import nn
from torch.distributions import (
    AffineTransform,
    Bernoulli,
    Categorical,
    ComposeTransform,
    CumulativeDistributionTransform,
    ExpTransform,
    Independent,
    IndependentTransform,
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
        "mixture": (
            lambda: MixtureSameFamily(Categorical(logits=loc), Normal(loc, scale)),
            [loc, scale],
        ),
        "lognormal": (lambda: LogNormal(loc, scale), [loc, scale]),
        "affine_tensor": (
            lambda: TransformedDistribution(
                Normal(loc, scale), [AffineTransform(loc, scale), ExpTransform()]
            ),
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


@pytest.mark.parametrize(
    "case", ["normal", "independent", "mvn", "lognormal", "affine_tensor", "module_flow"]
)
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
    for g, e in zip(got, expected, strict=False):
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
    for g, e in zip(got, expected, strict=False):
        g = torch.zeros_like(e) if g is None and e is not None else g
        if e is None:
            assert g is None or float(g.abs().max()) == 0.0
        else:
            torch.testing.assert_close(g, e, atol=1e-8, rtol=0)


# --- however a transform holds its modules and tensors, the copy has no path to them ----------


class _Affine(Transform):
    """``y = x e^s + t`` with ``(s, t) = st()`` computed from whatever the transform holds."""

    domain = constraints.real
    codomain = constraints.real
    bijective = True
    sign = 1

    def __init__(self, st, **held) -> None:
        super().__init__(cache_size=1)
        self._st = st  # a function of the transform: how it reads what it holds
        for key, value in held.items():
            setattr(self, key, value)

    def __eq__(self, other):
        return self is other

    def st(self):
        return self._st(self)

    def _call(self, x):
        s, t = self.st()
        return x * s.exp() + t

    def _inverse(self, y):
        s, t = self.st()
        return (y - t) * (-s).exp()

    def log_abs_det_jacobian(self, x, y):
        return self.st()[0].expand_as(x)


def _one():
    return torch.ones(1)


def _lin(seed):
    torch.manual_seed(seed)
    return nn.Linear(1, 2)


class _Wrapper(nn.Module):
    """A module that keeps a submodule in a plain list and a tensor as a plain attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = _lin(1)
        self.extra = [_lin(2)]  # not registered: invisible to .parameters()
        self.context = torch.tensor([0.1, -0.2], requires_grad=True)

    def forward(self, x):
        return self.inner(x) + self.extra[0](x) * self.context


class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = _lin(3), _lin(4)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.a(x) + 0.5 * self.b(x)


def _holding_patterns():
    """name -> () -> (transform, parameters the transform's values depend on)."""

    def held(kind):
        n1, n2 = _lin(5), _lin(6)
        w = torch.tensor([0.3, -0.1], requires_grad=True)
        b = torch.tensor([0.2, 0.4], requires_grad=True)
        both = [*n1.parameters(), *n2.parameters()]
        if kind == "list":
            return _Affine(lambda t: t.nets[0](_one()) + t.nets[1](_one()), nets=[n1, n2]), both
        if kind == "tuple":
            return _Affine(lambda t: t.nets[0](_one()) * t.nets[1](_one()), nets=(n1, n2)), both
        if kind == "dict":
            return _Affine(lambda t: t.nets["a"](_one()) - t.nets["b"](_one()), nets={"a": n1, "b": n2}), both
        if kind == "nested_containers":
            st = lambda t: t.nets[0][0](_one()) + t.nets[1]["x"][0](_one())  # noqa: E731
            return _Affine(st, nets=[[n1], {"x": (n2,)}]), both
        if kind == "module_list":
            return _Affine(
                lambda t: t.nets[0](_one()) + t.nets[1](_one()), nets=nn.ModuleList([n1, n2])
            ), both
        if kind == "module_dict":
            nets = nn.ModuleDict({"a": n1, "b": n2})
            return _Affine(lambda t: t.nets["a"](_one()) + t.nets["b"](_one()), nets=nets), both
        if kind == "tensors_in_containers":
            return _Affine(lambda t: t.ps[0] + t.ps[1]["b"], ps=[w, {"b": b}]), [w, b]
        if kind == "module_plain_attributes":
            m = _Wrapper()
            return _Affine(lambda t: t.net(_one()), net=m), [
                *m.parameters(),
                *m.extra[0].parameters(),
                m.context,
            ]
        if kind == "tied_weights":
            m = _Tied()
            return _Affine(lambda t: t.net(_one()), net=m), list(m.parameters())
        if kind == "parametrized":
            m = nn.utils.parametrizations.weight_norm(_lin(7))
            return _Affine(lambda t: t.net(_one()), net=m), list(m.parameters())
        if kind == "bound_method":
            return _Affine(lambda t: t.fn(_one()), fn=n1.forward), list(n1.parameters())
        if kind == "partial":
            fn = functools.partial(torch.nn.functional.linear, weight=w.unsqueeze(-1), bias=b)
            return _Affine(lambda t: t.fn(_one()), fn=fn), [w, b]
        raise KeyError(kind)

    names = [
        "list",
        "tuple",
        "dict",
        "nested_containers",
        "module_list",
        "module_dict",
        "tensors_in_containers",
        "module_plain_attributes",
        "tied_weights",
        "parametrized",
        "bound_method",
        "partial",
    ]
    return {name: functools.partial(held, name) for name in names}


def _check_stopped(dist, params, z):
    """Same type and values; the copy's log_prob has no gradient path to ``params``; the original has."""
    stopped = scg.stop_gradient(dist)
    assert type(stopped) is type(dist)
    z = z.detach().requires_grad_()  # log_prob is attached through z only
    lp = stopped.log_prob(z)
    assert torch.equal(lp, dist.log_prob(z).detach())
    got = torch.autograd.grad(lp.sum(), params, allow_unused=True)
    assert all(g is None or not g.any() for g in got)
    before = torch.autograd.grad(dist.log_prob(z).sum(), params, allow_unused=True)
    assert all(g is not None and g.any() for g in before), "the original must depend on every parameter"
    torch.manual_seed(3)
    a = dist.rsample((2,))
    torch.manual_seed(3)
    b = stopped.rsample((2,))
    assert torch.equal(a.detach(), b) and not b.requires_grad
    return stopped


@pytest.mark.parametrize("name", list(_holding_patterns()))
def test_every_holding_pattern_is_detached(name):
    t, params = _holding_patterns()[name]()
    dist = TransformedDistribution(Normal(torch.zeros(2), 1.0), [t])
    stopped = _check_stopped(dist, params, torch.tensor([0.7, -1.3]))
    assert type(stopped.transforms[0]) is _Affine
    assert dist.transforms[0] is t and all(p.requires_grad for p in params)  # the original is untouched


def test_nested_transforms_and_inverses_are_detached():
    loc = torch.tensor([0.3, -0.2], requires_grad=True)
    t1, p1 = _holding_patterns()["module_list"]()
    t2, p2 = _holding_patterns()["dict"]()
    flow, other = ModuleAffine(2), ModuleAffine(2)
    with torch.no_grad():
        other.shift.mul_(-2.0)
    inner = ComposeTransform([IndependentTransform(t1, 1, cache_size=1), t2.inv])
    transforms = [inner, other.inv, flow, IndependentTransform(flow, 1, cache_size=1)]
    dist = TransformedDistribution(Independent(Normal(loc, 1.0), 1), transforms)
    params = [loc, *p1, *p2, *flow.parameters(), *other.parameters()]
    stopped = _check_stopped(dist, params, torch.tensor([[0.7, -1.3], [0.1, 0.2]]))
    parts = stopped.transforms[0].parts
    assert type(parts[0].base_transform) is _Affine and type(parts[1]._inv) is _Affine
    assert type(stopped.transforms[1].inv) is ModuleAffine
    assert stopped.transforms[2] is stopped.transforms[3].base_transform  # one copy of the shared flow


def test_transforms_holding_distributions_and_distributions_holding_modules():
    mu = torch.tensor(0.4, requires_grad=True)
    sd = torch.tensor(1.3, requires_grad=True)
    cdf = TransformedDistribution(Normal(0.0, 1.0), [CumulativeDistributionTransform(Normal(mu, sd))])
    _check_stopped(cdf, [mu, sd], torch.tensor([0.2, 0.9]))

    class NetNormal(Normal):
        """A distribution whose parameters come from a network it holds."""

        def __init__(self, net):
            self.net = net
            loc, log_scale = net(_one())
            super().__init__(loc, log_scale.exp())

        def log_prob(self, value):
            loc, log_scale = self.net(_one())
            return Normal(loc, log_scale.exp()).log_prob(value)

    net = _lin(8)
    _check_stopped(NetNormal(net), list(net.parameters()), torch.tensor([0.5, -2.0]))


_GLOBAL_NET = nn.Linear(1, 2)


def _reads_a_global(t):
    return _GLOBAL_NET(_one())


class _Box:
    """An unknown container."""

    def __init__(self, value):
        self.value = value


def _refusals():
    net = _lin(9)
    free = torch.tensor([0.1, 0.2], requires_grad=True)
    hooked = _lin(10)
    hooked.register_forward_hook(lambda m, i, out: out + free)
    capturing = _Wrapper()
    capturing.fn = lambda x: net(x)
    return {
        "scripted": (
            lambda: _Affine(lambda t: t.net(_one()), net=torch.jit.script(_lin(12))),
            r"`dist\.transforms\[0\]\.net`",
            r"scripted RecursiveScriptModule",
        ),
        "closure": (
            lambda: _Affine(lambda t: t.fn(), fn=lambda: net(_one())),
            r"`dist\.transforms\[0\]\.fn`",
            r"a function \(.*<lambda>\) holding a Linear module whose parameter `weight` requires grad",
        ),
        "closure_in_module": (
            lambda: _Affine(lambda t: t.net(_one()), net=capturing),
            r"`dist\.transforms\[0\]\.net\.fn`",
            r"<closure variable net>",
        ),
        "global": (
            lambda: _Affine(_reads_a_global),
            r"`dist\.transforms\[0\]\._st`",
            r"<global _GLOBAL_NET>\.weight",
        ),
        "global_through_a_helper": (
            lambda: _Affine(lambda t: _reads_a_global(t)),
            r"`dist\.transforms\[0\]\._st`",
            r"<global _reads_a_global>\.<global _GLOBAL_NET>\.weight",
        ),
        "unknown_container": (
            lambda: _Affine(lambda t: t.box.value, box=_Box(free)),
            r"`dist\.transforms\[0\]\.box`",
            r"got a _Box object holding a tensor that requires grad"
            r" at `dist\.transforms\[0\]\.box\.value`",
        ),
        "hook": (
            lambda: _Affine(lambda t: t.net(_one()), net=hooked),
            r"`dist\.transforms\[0\]\.net\._forward_hooks\[\d+\]`",
            r"<closure variable free>",
        ),
    }


@pytest.mark.parametrize("name", list(_refusals()))
def test_what_cannot_be_detached_is_refused_by_name(name):
    make, where, what = _refusals()[name]
    dist = TransformedDistribution(Normal(torch.zeros(2), 1.0), [make()])
    must = (
        r" must be a Python nn.Module"
        if name == "scripted"
        else r" must not hold a tensor that requires grad"
    )
    with pytest.raises(TypeError, match=where + must) as info:
        scg.stop_gradient(dist)
    assert re.search(what, str(info.value)), str(info.value)


_net = nn.Linear(1, 2)  # a global whose name is also an attribute the function reads: not a global load


def _reads_an_attribute(t):
    return t._net(_one())


def test_callables_and_unknown_objects_without_gradient_paths_are_kept():
    scale = 0.5
    frozen = torch.tensor([0.3, 0.1])  # requires no grad
    net = _lin(11)
    t = _Affine(
        lambda t: t.net(_one()) * t.box.value + t.act(frozen),
        net=net,
        box=_Box(frozen),
        act=torch.tanh,
        fn=lambda x: x * scale,
        also=lambda x: x + frozen,
    )
    dist = TransformedDistribution(Normal(torch.zeros(2), 1.0), [t])
    stopped = _check_stopped(dist, list(net.parameters()), torch.tensor([0.7, -1.3]))
    assert stopped.transforms[0].act is torch.tanh and stopped.transforms[0].box is t.box
    net = _lin(12)
    dist = TransformedDistribution(Normal(torch.zeros(2), 1.0), [_Affine(_reads_an_attribute, _net=net)])
    _check_stopped(dist, list(net.parameters()), torch.tensor([0.7, -1.3]))
