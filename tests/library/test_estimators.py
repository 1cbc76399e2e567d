"""Contract tests over a registry of all estimators (deterministic).

1. value invariant: the surrogate equals the plain MC mean exactly (torch.equal);
2. shapes, dtype and gradients reaching every parameter;
3. single-sample oracles in float64 (replay the draws, compute by hand, 1e-10);
4. second-order (DiCE) by exact enumeration / Gauss-Hermite;
5. torch.func compatibility (vmap with randomness="different").
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.distributions import (
    Bernoulli,
    Independent,
    Normal,
    OneHotCategorical,
    Poisson,
)

import scg
from scg import baselines as B

pytestmark = pytest.mark.usefixtures("float64")  # tests/conftest.py


def _normal(D: int = 2):
    loc = torch.tensor([0.3, -0.7, 1.1][:D], requires_grad=True)
    scale = torch.tensor([0.8, 1.3, 0.5][:D], requires_grad=True)
    return (loc, scale), lambda: Independent(Normal(loc, scale), 1)


def _bernoulli(D: int = 3):
    logits = torch.tensor([0.2, -1.0, 0.7][:D], requires_grad=True)
    return (logits,), lambda: Independent(Bernoulli(logits=logits), 1)


def _categorical():
    logits = torch.tensor([[0.2, -1.0, 0.7], [0.0, 0.5, -0.5]], requires_grad=True)
    return (logits,), lambda: OneHotCategorical(logits=logits)


W = torch.tensor([1.5, -0.5, 2.0])


def cost_cont(z):  # [S, *batch, D] -> [S, *batch]; smooth, couples dims
    return (z**2 * W[: z.shape[-1]]).sum(-1) + torch.cos(z).prod(-1)


def cost_disc(z):
    return (z * W[: z.shape[-1]]).sum(-1) ** 2 - z[..., 0]


REGISTRY = {
    "pathwise": (lambda: scg.Pathwise(), ["normal"]),
    "score_function": (lambda: scg.ScoreFunction(), ["normal", "bernoulli", "categorical"]),
    "sf_moving_average": (
        lambda: scg.ScoreFunction(B.MovingAverage(0.9)),
        ["normal", "bernoulli", "categorical"],
    ),
    "sf_optimal_ma": (
        lambda: scg.ScoreFunction(B.MovingAverage(0.9, optimal=True)),
        ["normal", "bernoulli"],
    ),
    "rloo": (lambda: scg.ScoreFunction(B.LeaveOneOut()), ["normal", "bernoulli", "categorical"]),
    "nvil": (
        lambda: scg.ScoreFunction(B.chain(B.MovingAverage(), B.Learned(nn.Linear(3, 1)), B.Normalize())),
        ["bernoulli"],
    ),
    "delta": (lambda: scg.ScoreFunction(B.Delta()), ["normal"]),
    "delta_optimal": (lambda: scg.ScoreFunction(B.Delta("optimal")), ["normal"]),
    "measure_valued": (lambda: scg.MeasureValued(), ["normal", "bernoulli", "categorical"]),
    "disarm": (lambda: scg.DisARM(), ["bernoulli"]),
    "relax": (lambda: scg.RELAX(), ["bernoulli"]),
    "gumbel_softmax": (lambda: scg.GumbelSoftmax(0.5), ["bernoulli", "categorical"]),
    "gumbel_softmax_hard": (
        lambda: scg.GumbelSoftmax(0.5, hard=True),
        ["bernoulli", "categorical"],
    ),
    "straight_through": (lambda: scg.StraightThrough(), ["bernoulli", "categorical"]),
}
DISTS = {
    "normal": (_normal, cost_cont),
    "bernoulli": (_bernoulli, cost_disc),
    "categorical": (_categorical, cost_disc),
}
CASES = [(name, d) for name, (_, ds) in REGISTRY.items() for d in ds]


def _mc_value(name: str, est, dist, draws, f):
    """The plain MC estimate computed independently of the estimator's surrogate."""
    base = dist.base_dist if isinstance(dist, Independent) else dist
    with torch.no_grad():
        if "z" in draws:
            return f(draws["z"]).mean(0)
        if name == "pathwise" or name == "measure_valued":
            return f(base.loc + base.scale * draws["eps"]).mean(0)
        u = draws["u"]
        if name == "disarm":
            th = torch.sigmoid(base.logits)
            return f(torch.cat([(u < th).double(), (1 - u < th).double()])).mean(0)
        if name == "relax":
            return f((base.logits + torch.log(u) - torch.log1p(-u) > 0).double()).mean(0)
        if isinstance(base, Bernoulli):
            y = torch.sigmoid((base.logits + torch.log(u) - torch.log1p(-u)) / 0.5)
            if name == "straight_through":
                y = (u < torch.sigmoid(base.logits)).double()
            elif name.endswith("hard"):
                y = (y > 0.5).double()
            return f(y).mean(0)
        g = base.logits - torch.log(-torch.log(u))
        if name == "gumbel_softmax":
            return f(torch.softmax(g / 0.5, -1)).mean(0)
        return f(torch.nn.functional.one_hot(g.argmax(-1), g.shape[-1]).double()).mean(0)


@pytest.mark.parametrize("name,dist_name", CASES)
def test_value_is_exact_mc_mean_and_gradients_reach_parameters(name, dist_name):
    make_est, _ = REGISTRY[name]
    make_params, f = DISTS[dist_name]
    params, make_dist = make_params()
    est = make_est()
    dist = make_dist()
    draws = est.draw(dist, 4)
    value = est.surrogate(f, dist, draws)
    assert value.shape == dist.batch_shape
    assert value.dtype == torch.float64
    assert torch.equal(value, _mc_value(name, est, dist, draws, f))
    value.sum().backward()
    for p in params:
        assert p.grad is not None and torch.isfinite(p.grad).all()
    if name != "relax":
        assert any(p.grad.abs().sum() > 0 for p in params)
    for p in est.parameters():  # learned control variates are trained by the same backward
        assert p.grad is not None and torch.isfinite(p.grad).all()


def test_cost_parameters_receive_pathwise_gradient_under_score_function():
    theta = torch.tensor(0.7, requires_grad=True)
    logits = torch.zeros(3, requires_grad=True)
    dist = Independent(Bernoulli(logits=logits), 1)
    est = scg.ScoreFunction()
    draws = est.draw(dist, 5)
    est.surrogate(lambda z: theta * z.sum(-1), dist, draws).backward()
    assert torch.allclose(theta.grad, draws["z"].sum(-1).mean())


# --- single-sample oracles (float64, replayed draws, by hand) -------------------------


def test_score_function_oracle_with_leave_one_out():
    loc = torch.tensor(0.4, requires_grad=True)
    scale = torch.tensor(1.3, requires_grad=True)
    est = scg.ScoreFunction(B.LeaveOneOut())
    f = lambda z: (z - 1.0) ** 3
    draws = est.draw(Normal(loc, scale), 5)
    est.surrogate(f, Normal(loc, scale), draws).backward()
    z = draws["z"]
    fz = f(z)
    a = fz - (fz.sum() - fz) / 4
    s_loc = (z - loc) / scale**2
    s_scale = ((z - loc) ** 2 - scale**2) / scale**3
    torch.testing.assert_close(loc.grad, (a * s_loc).mean().detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(scale.grad, (a * s_scale).mean().detach(), rtol=1e-10, atol=1e-12)


def test_disarm_oracle():
    phi = torch.tensor([0.3, -1.2], requires_grad=True)
    dist = Independent(Bernoulli(logits=phi), 1)
    f = lambda b: (b[..., 0] - 2 * b[..., 1]) ** 2 + b[..., 1]
    est = scg.DisARM()
    draws = est.draw(dist, 3)
    est.surrogate(f, dist, draws).backward()
    u = draws["u"]
    th = torch.sigmoid(phi.detach())
    b, bt = (u < th).double(), (1 - u < th).double()
    expected = (
        0.5 * (f(b) - f(bt))[:, None] * (-1.0) ** bt * (b != bt).double() * torch.sigmoid(phi.detach().abs())
    ).mean(0)
    torch.testing.assert_close(phi.grad, expected, rtol=1e-10, atol=1e-12)


def test_measure_valued_normal_oracle():
    mu = torch.tensor(0.5, requires_grad=True)
    sd = torch.tensor(1.5, requires_grad=True)
    f = lambda x: torch.sin(x) * x
    est = scg.MeasureValued()
    draws = est.draw(Normal(mu, sd), 4)
    est.surrogate(f, Normal(mu, sd), draws).backward()
    w, m, u = draws["w"], draws["m"], draws["u"]
    m0, s0 = mu.detach(), sd.detach()
    g_mu = ((f(m0 + s0 * w) - f(m0 - s0 * w)) / (s0 * math.sqrt(2 * math.pi))).mean()
    g_sd = ((f(m0 + s0 * m) - f(m0 + s0 * m * u)) / s0).mean()
    torch.testing.assert_close(mu.grad, g_mu, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(sd.grad, g_sd, rtol=1e-10, atol=1e-12)


def test_relax_variance_gradient_matches_finite_differences_of_variance():
    """The zero-valued term's gradient w.r.t. ψ is ∇ψ Σ_s ‖ĝ_s‖² (checked by central differences)."""
    phi = torch.tensor([0.3, -0.4], requires_grad=True)
    dist = Independent(Bernoulli(logits=phi), 1)
    f = lambda b: (b[..., 0] + 2 * b[..., 1] - 0.7) ** 2
    est = scg.RELAX()
    draws = est.draw(dist, 3)
    est.surrogate(f, dist, draws).sum().backward()
    g_eta = est.control_variate.eta.grad.clone()

    def variance(eta: float) -> float:
        e = scg.RELAX()
        with torch.no_grad():
            e.control_variate.eta.fill_(eta)
        p = phi.detach().clone().requires_grad_()
        total = 0.0
        for s in range(3):  # per-sample estimate via autograd on a single-sample surrogate
            p.grad = None
            d = {k: v[s : s + 1] for k, v in draws.items()}
            e.surrogate(f, Independent(Bernoulli(logits=p), 1), d).sum().backward()
            total += float((p.grad**2).sum())
        return total / 3

    h = 1e-5
    fd = (variance(1.0 + h) - variance(1.0 - h)) / (2 * h)
    assert abs(float(g_eta) - fd) < 1e-5 * max(1.0, abs(fd))


# --- second order (DiCE) ---------------------------------------------------------------


def _hessian_of_surrogate(est, make_dist, param, f, draws):
    sur = est.surrogate(f, make_dist(param), draws).sum()
    (g,) = torch.autograd.grad(sur, param, create_graph=True)
    return torch.stack([torch.autograd.grad(g[i], param, retain_graph=True)[0] for i in range(len(g))])


def test_score_function_hessian_exact_by_enumeration():
    phi = torch.tensor([0.4, -0.3], requires_grad=True)
    make = lambda p: Independent(Bernoulli(logits=p), 1)
    f = lambda b: (b[..., 0] + 2 * b[..., 1]) ** 2 - 3 * b[..., 0] * b[..., 1]
    est = scg.ScoreFunction()
    support = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    H = torch.zeros(2, 2)
    for z in support:
        prob = make(phi).log_prob(z).exp().detach()
        H += prob * _hessian_of_surrogate(est, make, phi, f, {"z": z[None]})
    exact = torch.autograd.functional.hessian(
        lambda p: (make(p).log_prob(support).exp() * f(support)).sum(), phi
    )
    torch.testing.assert_close(H, exact, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("estimator", [scg.Pathwise, scg.ScoreFunction])
def test_normal_hessian_matches_analytic_by_gauss_hermite(estimator):
    """E[(z−1)^4] for N(μ, σ) = (μ−1)^4 + 6(μ−1)²σ² + 3σ⁴: Hessian in (μ, σ) analytic."""
    params = torch.tensor([0.3, 0.8], requires_grad=True)
    make = lambda p: Normal(p[0], p[1])
    f = lambda z: (z - 1.0) ** 4
    x, w = np.polynomial.hermite_e.hermegauss(20)
    x, w = torch.tensor(x), torch.tensor(w / w.sum())
    est = estimator()
    H = torch.zeros(2, 2)
    for xi, wi in zip(x, w, strict=False):
        if estimator is scg.Pathwise:
            draws = {"eps": xi.reshape(1)}
        else:
            draws = {"z": (params[0] + params[1] * xi).detach().reshape(1)}
        H += wi * _hessian_of_surrogate(est, make, params, f, draws)
    m, s = 0.3 - 1.0, 0.8
    exact = torch.tensor([[12 * m**2 + 12 * s**2, 24 * m * s], [24 * m * s, 12 * m**2 + 36 * s**2]])
    torch.testing.assert_close(H, exact, rtol=1e-9, atol=1e-9)


# --- torch.func ------------------------------------------------------------------------


@pytest.mark.parametrize("name,dist_name", CASES)
def test_vmap_grad_compatible(name, dist_name):
    make_est, _ = REGISTRY[name]
    make_params, f = DISTS[dist_name]
    params, make_dist = make_params()
    est = make_est()
    detached = tuple(p.detach() for p in params)

    def loss(ps, _):
        dist = make_dist.__closure__ and _rebuild(dist_name, ps)
        return est(f, dist, 2).sum()

    grads = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0), randomness="different")(
        detached, torch.zeros(3)
    )
    for g in grads:
        assert g.shape[0] == 3 and torch.isfinite(g).all()
        if dist_name == "normal":  # continuous draws: independent estimates differ
            assert not torch.equal(g[0], g[1])


def _rebuild(dist_name, ps):
    if dist_name == "normal":
        return Independent(Normal(ps[0], ps[1]), 1)
    if dist_name == "bernoulli":
        return Independent(Bernoulli(logits=ps[0]), 1)
    return OneHotCategorical(logits=ps[0])


def test_default_estimator_choice():
    loc = torch.tensor(0.0, requires_grad=True)
    scg.expectation(lambda z: z**2, Normal(loc, 1.0), num_samples=3).backward()
    assert loc.grad is not None
    logits = torch.tensor(0.0, requires_grad=True)
    scg.expectation(lambda z: z**2, Bernoulli(logits=logits), num_samples=3).backward()
    assert logits.grad is not None


def test_poisson_measure_valued_and_float64_preserved():
    rate = torch.tensor([2.0, 0.5], requires_grad=True)
    out = scg.expectation(lambda n: n**2, Poisson(rate), scg.MeasureValued(), num_samples=3)
    assert out.dtype == torch.float64 and out.shape == (2,)
    out.sum().backward()
    assert rate.grad.shape == (2,)


def test_estimators_are_modules_with_state_dicts():
    est = scg.ScoreFunction(B.chain(B.MovingAverage(0.5), B.Normalize()))
    logits = torch.zeros(2, requires_grad=True)
    scg.expectation(lambda b: b * 3.0, Bernoulli(logits=logits), est, num_samples=4)
    state = est.state_dict()
    assert any(k.endswith("0.value") for k in state) and any("variance" in k for k in state)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    fresh = scg.ScoreFunction(B.chain(B.MovingAverage(0.5), B.Normalize()))
    fresh.load_state_dict(state)
    assert torch.equal(fresh.baseline.transforms[0].value, est.baseline.transforms[0].value)
    assert fresh.baseline.transforms[0].steps == est.baseline.transforms[0].steps == 1
