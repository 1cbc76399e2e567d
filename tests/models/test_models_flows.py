"""Flows: log-det against torch.autograd.functional.jacobian, inverses, normalisation, MADE masks, posteriors."""

import math

import pytest
import torch
from torch.autograd.functional import jacobian
from torch.distributions import Independent, Normal, TransformedDistribution

import scg
from scg.models import (
    IAF,
    MADE,
    AffineCoupling,
    FlowPosterior,
    GaussianEncoder,
    Planar,
    PlanarTransform,
    Radial,
    RadialTransform,
    flow_layers,
)

D = 3


pytestmark = pytest.mark.usefixtures("one_thread_module")  # tests/conftest.py


def _perturb(module, scale=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def _transforms():
    g = torch.Generator().manual_seed(1)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    iaf = _perturb(IAF(D, (8,), reverse=True).double())
    iaf_ctx = _perturb(IAF(D, (8,), context_dim=2).double(), seed=1)
    coupling = _perturb(AffineCoupling(D, (8,), parity=1).double(), seed=2)
    coupling_ctx = _perturb(AffineCoupling(D, (8,), context_dim=2).double(), seed=3)
    h = r(2)
    return {
        "planar": PlanarTransform(2 * r(D), r(D), r(())),
        "planar_contracting": PlanarTransform(
            -3 * torch.ones(D, dtype=torch.float64),
            torch.ones(D, dtype=torch.float64),
            torch.tensor(0.3, dtype=torch.float64),
        ),
        "radial": RadialTransform(r(D), r(()), r(())),
        "radial_contracting": RadialTransform(
            r(D), torch.tensor(0.5, dtype=torch.float64), torch.tensor(-5.0, dtype=torch.float64)
        ),
        "iaf": iaf.transform(None),
        "iaf_context": iaf_ctx.transform(h),
        "coupling": coupling.transform(None),
        "coupling_context": coupling_ctx.transform(h),
    }


@pytest.mark.parametrize("name", list(_transforms()))
def test_log_det_matches_autograd_jacobian_and_inverse(name):
    t = _transforms()[name]
    g = torch.Generator().manual_seed(2)
    for _ in range(4):
        x = 1.5 * torch.randn(D, generator=g, dtype=torch.float64)
        y = t(x)
        J = jacobian(t._call, x)
        expected = torch.linalg.slogdet(J).logabsdet
        assert float(t.log_abs_det_jacobian(x, y).detach()) == pytest.approx(float(expected), abs=1e-10)
        assert torch.allclose(t._inverse(y), x, atol=1e-10)


@pytest.mark.parametrize("kind", ["planar", "radial", "iaf", "coupling"])
def test_amortised_batched_parameters_broadcast_over_samples(kind):
    enc = GaussianEncoder(4, D, (5,)).double()
    q = FlowPosterior(enc, flow_layers(kind, D, 2, context_dim=enc.feature_dim, hidden=(8,))).double()
    _perturb(q, 0.3)
    x = torch.randn(6, 4, dtype=torch.float64)
    d = q(x)
    assert isinstance(d, TransformedDistribution)
    assert d.batch_shape == (6,) and d.event_shape == (D,)
    z = d.rsample((7,))
    lp_cached = d.log_prob(z)
    lp_inverted = d.log_prob(z.detach().clone())  # a new tensor: no cache hit, log_prob inverts
    assert lp_cached.shape == (7, 6)
    assert torch.allclose(lp_cached, lp_inverted, atol=1e-9)


@pytest.mark.parametrize("kind", ["planar", "radial", "iaf", "coupling"])
def test_flow_density_integrates_to_one(kind):
    # A 2-D flow over a standard normal: integrate exp(log q) on a fine grid (the mass outside
    # [-9, 9]^2 is < 1e-12 for these mild flows).
    torch.manual_seed(0)
    layers = _perturb(flow_layers(kind, 2, 3, hidden=(8,)).double(), 0.4, seed=5)
    base = Independent(Normal(torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)), 1)
    d = TransformedDistribution(base, [layer.transform(None) for layer in layers])
    n = 201
    grid = torch.linspace(-9, 9, n, dtype=torch.float64)
    zz = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        mass = float(d.log_prob(zz).exp().sum()) * (18 / (n - 1)) ** 2
    assert mass == pytest.approx(1.0, abs=2e-3)


def test_made_is_autoregressive():
    made = _perturb(MADE(4, (16, 16), reverse=True).double())
    x = torch.randn(4, dtype=torch.float64)
    for out in (0, 1):
        J = jacobian(lambda v, out=out: made(v)[out], x)  # J[i, j] = d out_i / d x_j
        order = made.order  # degree of each position
        allowed = order.unsqueeze(1) > order.unsqueeze(0)
        assert torch.all(J[~allowed] == 0)
        assert torch.any(J[allowed] != 0)


def test_planar_inverse_is_differentiable():
    torch.manual_seed(0)
    args = tuple(torch.randn(s, dtype=torch.float64, requires_grad=True) for s in [(D,), (D,), (), (D,)])
    assert torch.autograd.gradcheck(
        lambda u, w, b, y: PlanarTransform(u, w, b, cache_size=0)._inverse(y), args
    )


def test_pathwise_through_flow_posterior_matches_rsample_objective():
    # scg.Pathwise draws base noise and applies the transforms; the value equals the objective at that sample.
    torch.manual_seed(0)
    enc = GaussianEncoder(4, D, (5,))
    q = FlowPosterior(enc, flow_layers("iaf", D, 2, context_dim=enc.feature_dim, hidden=(8,)))
    x = torch.randn(3, 4)
    d = q(x)
    draws = scg.Pathwise().draw(d, 5)
    seen = {}

    def f(z):
        seen["z"] = z
        return d.log_prob(z)

    val = scg.Pathwise().surrogate(f, d, draws)
    base = d.base_dist.base_dist
    z = base.loc + base.scale * draws["eps"]
    for t in d.transforms:
        z = t._call(z)
    assert torch.allclose(seen["z"], z, atol=1e-6)
    assert torch.allclose(val, d.log_prob(z.detach().clone()).mean(0), atol=1e-4)


def test_flow_errors():
    with pytest.raises(
        ValueError,
        match=r"`kind` must be one of \('planar', 'radial', 'iaf', 'coupling'\); got 'nvp'",
    ):
        flow_layers("nvp", 2, 2)
    with pytest.raises(ValueError, match="`length` must be an int >= 0; got -1"):
        flow_layers("planar", 2, -1)
    with pytest.raises(ValueError, match=r"`hidden` must have at least one layer; got \(\)"):
        MADE(3, ())
    with pytest.raises(TypeError, match="`layers` must hold FlowLayer modules; got Linear"):
        FlowPosterior(GaussianEncoder(2, 2, ()), [torch.nn.Linear(2, 2)])
    with pytest.raises(ValueError, match="`h` must be given"):
        Planar(2, context_dim=3).transform(None)
    with pytest.raises(ValueError, match="`context` must be given"):
        IAF(2, context_dim=3).transform(None)(torch.zeros(2))
    with pytest.raises(ValueError, match="`context` must be given"):
        AffineCoupling(2, context_dim=3).transform(None)(torch.zeros(2))
    with pytest.raises(ValueError, match="`dim` must be"):
        Radial(0)


def test_zero_length_flow_is_the_gaussian_encoder():
    enc = GaussianEncoder(4, 2, ())
    q = FlowPosterior(enc, [])
    x = torch.randn(3, 4)
    assert isinstance(q(x), Independent)
    assert torch.equal(q(x).mean, enc(x).mean) and q.z_dim == 2
    assert math.isfinite(float(q(x).log_prob(torch.zeros(3, 2)).sum().detach()))
