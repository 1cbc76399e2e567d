"""VAE and IWAE: exact expected gradients by Gauss–Hermite quadrature on tiny linear-Gaussian models,
finite differences for nonlinear ones, exact log p(x) evaluation, active units, errors.

Quadrature trick: grid points are placed along the *batch* dimension (x repeated), so one
backward of ``Σ_i w_i · objective_i`` gives ``Σ_i w_i ∇ objective_i`` = the exact expectation.
"""

import itertools
import math

import numpy as np
import pytest
import torch
from _helpers import central_difference
from torch.distributions import Independent, MultivariateNormal, Normal, kl_divergence

import scg
from scg.models import (
    IWAE,
    VAE,
    BernoulliDecoder,
    FlowPosterior,
    GaussianDecoder,
    GaussianEncoder,
    LinearWarmup,
    active_units,
    flow_layers,
    log_likelihood,
)
from scg.models.iwae import rsample_from_noise

DT = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread_module")  # tests/conftest.py


def _gh(n: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss–Hermite nodes ``[n^dim, dim]`` and weights ``[n^dim]`` for E over N(0, I_dim)."""
    x, w = np.polynomial.hermite_e.hermegauss(n)
    w = w / w.sum()
    nodes = np.array(list(itertools.product(x, repeat=dim)))
    weights = np.prod(np.array(list(itertools.product(w, repeat=dim))), axis=1)
    return torch.tensor(nodes, dtype=DT), torch.tensor(weights, dtype=DT)


def _linear_vae(estimator=None, kl="analytic", seed=0):
    torch.manual_seed(seed)
    enc = GaussianEncoder(2, 2, ()).double()
    dec = GaussianDecoder(2, 2, (), shared_scale=True, init_scale=0.7).double()
    return VAE(enc, dec, estimator=estimator, kl=kl)


def _analytic_elbo(vae, x):
    """Closed-form ELBO of a linear-Gaussian VAE: E_q log N(x; Wz + b, s²I) − KL."""
    q = vae.posterior(x)
    mu, var = q.base_dist.loc, q.base_dist.scale**2
    lin = vae.decoder.net[0]
    W, b = lin.weight, lin.bias
    s2 = vae.decoder.log_scale.exp() ** 2
    mean = mu @ W.T + b
    rec = Independent(Normal(mean, s2.sqrt().expand_as(mean)), 1).log_prob(x) - (var @ (W**2).T).sum(-1) / (
        2 * s2
    )
    return rec - kl_divergence(q, vae.prior(q.batch_shape))


def _grads(model, value):
    model.zero_grad()
    value.backward()
    return torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])


X1 = torch.tensor([[0.3, -1.2]], dtype=DT)


@pytest.mark.parametrize("kl", ["analytic", "mc"])
def test_vae_pathwise_expected_gradient_is_exact(kl):
    vae = _linear_vae(kl=kl)
    nodes, weights = _gh(4, 2)  # the integrand is quadratic in ε: 4 nodes per dimension are exact
    xs = X1.expand(len(weights), 2)
    est = _grads(vae, (weights * vae.objective(xs, draws={"eps": nodes.unsqueeze(0)})).sum())
    exact = _grads(vae, -_analytic_elbo(vae, X1).sum())
    assert torch.allclose(est, exact, rtol=1e-10, atol=1e-12)


def test_vae_score_function_expected_gradient_is_exact():
    vae = _linear_vae(estimator=scg.ScoreFunction(baseline=scg.baselines.MovingAverage())).eval()
    q = vae.posterior(X1)
    nodes, weights = _gh(6, 2)  # f ∇log q is a polynomial of degree 3 in z
    z = (q.base_dist.loc + q.base_dist.scale * nodes).detach()  # [n, 2] quadrature points in z-space
    xs = X1.expand(len(weights), 2)
    est = _grads(vae, (weights * vae.objective(xs, draws={"z": z.unsqueeze(0)})).sum())
    exact = _grads(vae, -_analytic_elbo(vae, X1).sum())
    assert torch.allclose(est, exact, rtol=1e-9, atol=1e-11)


def test_vae_bernoulli_decoder_pathwise_gradient_is_the_derivative_of_the_estimate():
    # With the noise fixed, the pathwise surrogate's gradient is the derivative of the MC estimate.
    torch.manual_seed(0)
    enc = GaussianEncoder(5, 2, (4,)).double()
    vae = VAE(
        FlowPosterior(enc, flow_layers("planar", 2, 2, context_dim=enc.feature_dim)),
        BernoulliDecoder(2, 5, (4,)).double(),
        kl="mc",
    ).double()
    x = torch.bernoulli(torch.full((3, 5), 0.4, dtype=DT))
    eps = torch.randn(4, 3, 2, dtype=DT)
    f = lambda: vae.objective(x, draws={"eps": eps}).sum()  # noqa: E731
    g = _grads(vae, f())
    params = [p for p in vae.parameters()]
    direction = [torch.randn_like(p) for p in params]
    fd = central_difference(f, params, direction, h=1e-6)
    assert float(g @ torch.cat([d.reshape(-1) for d in direction])) == pytest.approx(float(fd), rel=1e-6)


def test_analytic_and_mc_kl_agree_in_value():
    vae = _linear_vae()
    nodes, weights = _gh(4, 2)
    xs = X1.expand(len(weights), 2)
    a = (weights * vae.objective(xs, draws={"eps": nodes.unsqueeze(0)})).sum()
    vae.kl = "mc"
    m = (weights * vae.objective(xs, draws={"eps": nodes.unsqueeze(0)})).sum()
    assert float(a.detach()) == pytest.approx(float(m.detach()), rel=1e-12)
    assert float(a.detach()) == pytest.approx(-float(_analytic_elbo(vae, X1).detach()), rel=1e-12)


def test_linear_warmup_and_beta_in_loss():
    s = LinearWarmup(10)
    assert [s(0), s(5), s(10), s(20)] == [0.0, 0.5, 1.0, 1.0] and LinearWarmup(0)(0) == 1.0
    vae = _linear_vae()
    vae.warmup = LinearWarmup(10)
    torch.manual_seed(1)
    l0 = vae.loss(X1, step=0)
    torch.manual_seed(1)
    rec = vae.objective(X1, beta=0.0).mean()
    assert torch.equal(l0, rec)
    with pytest.raises(ValueError, match="`steps` must be an int >= 0; got -1"):
        LinearWarmup(-1)


def _iwae_model(gradient, K, flow=False, seed=0):
    torch.manual_seed(seed)
    enc = GaussianEncoder(2, 1, ()).double()
    q = FlowPosterior(enc, flow_layers("planar", 1, 1, context_dim=enc.feature_dim)).double() if flow else enc
    if flow:
        with torch.no_grad():
            for p in q.layers.parameters():
                p.add_(0.2 * torch.randn_like(p))  # mild: a near-singular flow defeats the quadrature
    dec = GaussianDecoder(1, 2, (), init_scale=0.8).double()
    return IWAE(q, dec, num_samples=K, gradient=gradient)


@pytest.mark.parametrize("flow", [False, True])
def test_iwae_dreg_and_stl_expected_gradients(flow):
    K = 2
    # The integrand (softmax of log-weights) is smooth but not polynomial: the quadrature error
    # of E[∇ dreg] − E[∇ reparam] falls from 2e-4 (12 nodes) to 3e-7 (48) and 4e-8 (64);
    # with the planar flow from 2e-5 (32) to 8e-7 (64) and 1e-7 (96).
    nodes, weights = _gh(64, K)  # [n, K]
    xs = X1.expand(len(weights), 2)
    noise = nodes.T.unsqueeze(-1)  # [K, n, 1]
    grads = {}
    for gradient in ("reparam", "dreg", "stl"):
        m = _iwae_model(gradient, K, flow)
        grads[gradient] = _grads(m, (weights * m.objective(xs, noise=noise)).sum())
    # DReG is unbiased: same expectation as the reparameterisation gradient.
    assert torch.allclose(grads["dreg"], grads["reparam"], rtol=0, atol=2e-6)
    # STL is biased for K > 1 (Tucker et al. 2019): the encoder's expected gradient differs.
    assert not torch.allclose(grads["stl"], grads["reparam"], rtol=1e-3, atol=1e-5)
    # For K = 1 the IWAE bound is the ELBO and STL is unbiased.
    nodes1, weights1 = _gh(64, 1)
    xs1 = X1.expand(len(weights1), 2)
    g1 = {}
    for gradient in ("reparam", "stl"):
        m = _iwae_model(gradient, 1, flow)
        g1[gradient] = _grads(m, (weights1 * m.objective(xs1, noise=nodes1.T.unsqueeze(-1))).sum())
    assert torch.allclose(g1["stl"], g1["reparam"], rtol=0, atol=2e-6)


def test_iwae_bound_is_monotone_in_k_and_below_log_px():
    m = _iwae_model("reparam", 1)
    lin, s2 = m.decoder.net[0], float(m.decoder.log_scale.detach().exp() ** 2)
    px = MultivariateNormal(lin.bias, lin.weight @ lin.weight.T + s2 * torch.eye(2, dtype=DT))
    values = []
    for K in (1, 2, 3):
        nodes, weights = _gh(12, K)
        with torch.no_grad():
            values.append(
                float(
                    (
                        weights
                        * m.surrogate_bound(
                            X1.expand(len(weights), 2), num_samples=K, noise=nodes.T.unsqueeze(-1)
                        )
                    ).sum()
                )
            )
    assert values[0] < values[1] < values[2] < float(px.log_prob(X1).detach())


def test_log_likelihood_is_exact_with_the_true_posterior():
    # z ~ N(0,1), x | z ~ N(wz + b, s²I): set the encoder to the exact posterior, so every
    # importance weight equals p(x) and the estimate is exact for any K and chunking.
    m = _iwae_model("reparam", 1)
    w, b = m.decoder.net[0].weight[:, 0].detach(), m.decoder.net[0].bias.detach()
    s2 = float(m.decoder.log_scale.detach().exp() ** 2)
    post_var = 1 / (1 + float(w @ w) / s2)
    with torch.no_grad():
        m.encoder.head.weight.zero_()
        m.encoder.head.weight[0] = w * post_var / s2
        m.encoder.head.bias.zero_()
        m.encoder.head.bias[0] = -float(w @ b) * post_var / s2
        m.encoder.head.bias[1] = math.log(math.expm1(math.sqrt(post_var) - 1e-4))
    x = torch.randn(7, 2, dtype=DT)
    px = MultivariateNormal(b, torch.outer(w, w) + s2 * torch.eye(2, dtype=DT)).log_prob(x)
    est = log_likelihood(m, x, num_samples=50, chunk_size=7, batch_size=3)
    assert torch.allclose(est, px, atol=1e-9)


def test_active_units_counts_variance_of_posterior_means():
    enc = GaussianEncoder(3, 3, ()).double()
    with torch.no_grad():
        enc.head.weight.zero_()
        enc.head.weight[0, 0] = 1.0  # unit 0: mean = x0, Var = 1 > 0.01
        enc.head.weight[1, 1] = 0.05  # unit 1: Var = 0.0025 < 0.01
    x = torch.tensor([[-1.0, -1, 0], [1, 1, 0]], dtype=DT)
    count, var = active_units(enc, x)
    assert count == 1 and torch.allclose(var, torch.tensor([1.0, 0.0025, 0.0], dtype=DT))
    q = FlowPosterior(enc, flow_layers("iaf", 3, 1)).double()
    torch.manual_seed(0)
    # MC means for flows: with 2000 samples their noise (posterior variance / 2000 ≈ 5e-4) stays
    # below the 0.01 threshold, so only unit 0 (variance ≈ 0.75 across x) counts as active.
    count_flow, var_flow = active_units(q, x, num_samples=2000)
    assert count_flow == 1 and var_flow[0] > 0.5 and (var_flow[1:] < 0.01).all()
    with pytest.raises(ValueError, match="`x` must hold at least 2 data points"):
        active_units(enc, x[:1])


def test_vae_and_iwae_errors():
    enc, dec = GaussianEncoder(2, 2, ()), BernoulliDecoder(2, 2, ())
    with pytest.raises(ValueError, match=r"`kl` must be one of \('analytic', 'mc'\); got 'exact'"):
        VAE(enc, dec, kl="exact")
    with pytest.raises(TypeError, match="`estimator` must be an scg Estimator; got str"):
        VAE(enc, dec, estimator="pathwise")
    with pytest.raises(
        ValueError, match=r"`gradient` must be one of \('reparam', 'stl', 'dreg'\); got 'vimco'"
    ):
        IWAE(enc, dec, gradient="vimco")
    flow_vae = VAE(FlowPosterior(enc, flow_layers("planar", 2, 1)), dec, kl="analytic")
    with pytest.raises(ValueError, match='`kl` must be "mc" for a TransformedDistribution posterior'):
        flow_vae.loss(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="`num_samples` must be"):
        log_likelihood(IWAE(enc, dec), torch.zeros(2, 2), num_samples=0)


def test_rsample_from_noise_rejects_non_gaussian_base():
    with pytest.raises(TypeError, match="`q` must be a Normal"):
        rsample_from_noise(torch.distributions.Bernoulli(torch.tensor([0.5])), torch.zeros(1, 1))


def test_conditional_distribution_contract_and_net_errors():
    from scg.models import BernoulliEncoder, BernoulliPrior, StandardNormalPrior, mlp

    x = torch.rand(5, 4)
    for module, event in [
        (GaussianEncoder(4, 3, (6,)), 3),
        (BernoulliEncoder(4, 3), 3),
        (BernoulliDecoder(4, 2, ()), 2),
        (GaussianDecoder(4, 2, (6,), shared_scale=False), 2),
    ]:
        d = module(x)
        assert d.batch_shape == (5,) and d.event_shape == (event,)
        assert d.log_prob(d.sample()).shape == (5,)
    assert StandardNormalPrior(3)((2, 5)).batch_shape == (2, 5)
    assert BernoulliPrior(3, learn=False)((4,)).event_shape == (3,)
    with pytest.raises(
        ValueError, match=r"`sizes` must have at least 2 entries \(input and output\); got \[3\]"
    ):
        mlp([3])
    with pytest.raises(ValueError, match="`init_scale` must be"):
        GaussianDecoder(2, 2, init_scale=-1.0)
    with pytest.raises(ValueError, match="`z_dim` must be"):
        GaussianEncoder(2, 0)
