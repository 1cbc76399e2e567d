"""Tests of ``scg.objectives``: closed forms, exact unbiasedness (quadrature/enumeration), stability.

The linear-Gaussian model p(z) = N(m, 1), p(x | z) = N(z, 1) has posterior
N((x + m)/2, ½) and evidence N(x; m, 2): at q = posterior every log-weight equals
log p(x), which anchors the closed-form and zero-variance checks. Expectations over
K = 2 reparameterised samples use a tensor Gauss–Hermite grid laid out along the
batch dimension, so one call evaluates every grid point.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from numpy.polynomial.hermite_e import hermegauss
from torch.distributions import Bernoulli, Normal

import scg
from scg.objectives import _log_sum_exp_others, elbo, iwae, log_mean_exp, vimco

# This module works in float64; the default dtype is restored after each test.
pytestmark = pytest.mark.usefixtures("float64")  # tests/conftest.py

X = 1.3
HALF = math.sqrt(0.5)


def log_joint(z, m, x=X):
    return Normal(m, 1.0).log_prob(z) + Normal(z, 1.0).log_prob(torch.as_tensor(x))


def log_evidence(m, x=X):
    return Normal(m, math.sqrt(2.0)).log_prob(torch.as_tensor(x))


def gh_grid(n: int, k: int):
    """Tensor Gauss–Hermite grid for k iid N(0, 1): nodes [k, n**k] and weights [n**k]."""
    x, w = hermegauss(n)
    x = torch.tensor(x)
    w = torch.tensor(w) / math.sqrt(2 * math.pi)
    nodes = torch.stack(torch.meshgrid(*([x] * k), indexing="ij")).reshape(k, -1)
    weights = torch.stack(torch.meshgrid(*([w] * k), indexing="ij")).prod(0).reshape(-1)
    return nodes, weights


# ---------------------------------------------------------------------- values


def test_values_are_the_bounds():
    torch.manual_seed(0)
    log_p, log_q = torch.randn(5, 3), torch.randn(5, 3)
    assert torch.equal(elbo(log_p, log_q), (log_p - log_q).mean(0))
    lme = torch.logsumexp(log_p - log_q, 0) - math.log(5)
    for gradient in ("reparam", "stl"):
        assert torch.equal(iwae(log_p, log_q, gradient=gradient), lme)
    assert torch.equal(vimco(log_p, log_q), lme)
    z = torch.randn(5, 3, 2, requires_grad=True)
    lp = log_p + (z**2).sum(-1)
    assert torch.equal(iwae(lp, log_q, gradient="dreg", z=z), log_mean_exp(lp - log_q))


def test_iwae_equals_log_evidence_at_the_exact_posterior():
    m = 0.4
    q = Normal((X + m) / 2, HALF)
    z = q.sample((7, 3))
    for gradient in ("reparam", "stl", "dreg"):
        out = iwae(log_joint(z, m), q.log_prob(z), gradient=gradient, z=z)
        torch.testing.assert_close(out, log_evidence(m).expand(3), atol=1e-12, rtol=0)
    torch.testing.assert_close(
        elbo(log_joint(z, m), q.log_prob(z)), log_evidence(m).expand(3), atol=1e-12, rtol=0
    )


@pytest.mark.parametrize("K", [1, 2, 3, 5])
def test_expected_iwae_bound_matches_closed_form_for_a_binary_latent(K):
    # q(z) = Bern(π), weights w_z = p(x, z)/q(z): E[log (1/K) Σ w] = Σ_m C(K, m) π^m (1−π)^{K−m} log((m w1 + (K−m) w0)/K).
    pi, p1, p0 = 0.3, 0.02, 0.05  # p(x, z=1), p(x, z=0)
    w1, w0 = p1 / pi, p0 / (1 - pi)
    closed = sum(
        math.comb(K, m) * pi**m * (1 - pi) ** (K - m) * math.log((m * w1 + (K - m) * w0) / K)
        for m in range(K + 1)
    )
    configs = torch.tensor(list(itertools.product([0.0, 1.0], repeat=K))).T  # [K, 2^K]
    log_q = Bernoulli(probs=torch.tensor(pi)).log_prob(configs)
    log_p = torch.where(configs > 0, math.log(p1), math.log(p0))
    prob = log_q.sum(0).exp()
    expected = (prob * iwae(log_p, log_q)).sum()
    assert abs(float(expected) - closed) < 1e-12
    assert closed <= math.log(p0 + p1) + 1e-15  # bounded by log p(x)


# --------------------------------------------------------------------- STL


@pytest.mark.parametrize("K", [1, 4])
def test_stl_gradient_is_zero_at_the_exact_posterior_for_every_draw(K):
    m = -0.2
    mu = torch.tensor((X + m) / 2, requires_grad=True)
    log_sigma = torch.tensor(math.log(HALF), requires_grad=True)
    torch.manual_seed(0)
    for _ in range(5):
        q = Normal(mu, log_sigma.exp())
        z = q.rsample((K,))
        stl = iwae(log_joint(z, m), scg.stop_gradient(q).log_prob(z), gradient="stl")
        grads = torch.autograd.grad(stl, (mu, log_sigma), retain_graph=True)
        assert max(abs(float(g)) for g in grads) < 1e-12  # zero variance: zero for every draw
        if K == 1:  # the standard reparameterisation gradient is not zero-variance there
            reparam = iwae(log_joint(z, m), q.log_prob(z))
            assert abs(float(torch.autograd.grad(reparam, log_sigma)[0])) > 1e-3


def test_stl_elbo_gradient_is_zero_at_the_exact_posterior():
    m = 0.7
    mu = torch.tensor((X + m) / 2, requires_grad=True)
    sigma = torch.tensor(HALF, requires_grad=True)
    q = Normal(mu, sigma)
    z = q.rsample((16,))
    grads = torch.autograd.grad(elbo(log_joint(z, m), scg.stop_gradient(q).log_prob(z)), (mu, sigma))
    assert max(abs(float(g)) for g in grads) < 1e-12


# -------------------------------------------------------------------- DReG


def _expected_grads(gradient: str, K: int = 2, n: int = 80):
    """E[∇ surrogate] over K iid ε by a K-dim Gauss–Hermite grid; per grid point parameters."""
    eps, weights = gh_grid(n, K)  # [K, G]
    G = eps.shape[1]
    mu = torch.full((G,), 0.1, requires_grad=True)
    log_sigma = torch.full((G,), math.log(0.9), requires_grad=True)
    m = torch.full((G,), -0.5, requires_grad=True)  # model parameter θ
    q = Normal(mu, log_sigma.exp())
    z = mu + log_sigma.exp() * eps  # [K, G]
    log_q = scg.stop_gradient(q).log_prob(z) if gradient in ("stl", "dreg") else q.log_prob(z)
    out = iwae(log_joint(z, m), log_q, gradient=gradient, z=z)
    grads = torch.autograd.grad((weights * out).sum(), (mu, log_sigma, m))
    return [g.sum() for g in grads], grads


def test_dreg_is_unbiased_for_the_inference_network_gradient():
    (dmu, dls, dm), per_point = _expected_grads("dreg")
    (rmu, rls, rm), per_point_reparam = _expected_grads("reparam")
    (smu, sls, _), _ = _expected_grads("stl")
    print(
        f"\nE[∇φ] K=2: reparam ({float(rmu):.10f}, {float(rls):.10f}); DReG ({float(dmu):.10f}, {float(dls):.10f}); "
        f"STL ({float(smu):.10f}, {float(sls):.10f})"
    )
    # Quadrature error of the two different integrands: 2e-8 at n = 30, 4e-11 at 60, 2e-12 at 80.
    torch.testing.assert_close(dmu, rmu, atol=1e-10, rtol=0)
    torch.testing.assert_close(dls, rls, atol=1e-10, rtol=0)
    # The model gradient is unchanged point by point.
    torch.testing.assert_close(per_point[2], per_point_reparam[2], atol=1e-14, rtol=0)
    # IWAE-STL is biased for K > 1 (Tucker et al. 2019): the check above can tell.
    assert abs(float(sls - rls)) > 1e-3


def test_dreg_equals_stl_for_one_sample_and_ignores_an_attached_log_q():
    torch.manual_seed(2)
    mu = torch.tensor(0.3, requires_grad=True)
    q = Normal(mu, 0.8)
    z = q.rsample((1, 4))
    lp = log_joint(z, 0.1)
    dreg = iwae(lp, scg.stop_gradient(q).log_prob(z), gradient="dreg", z=z).sum()
    stl = iwae(lp, scg.stop_gradient(q).log_prob(z), gradient="stl").sum()
    attached = iwae(lp, q.log_prob(z), gradient="dreg", z=z).sum()
    stl_z = iwae(lp, q.log_prob(z), gradient="stl", z=z).sum()
    g = [torch.autograd.grad(s, mu, retain_graph=True)[0] for s in (dreg, stl, attached, stl_z)]
    for other in g[1:]:
        torch.testing.assert_close(g[0], other, atol=1e-12, rtol=0)


def test_dreg_under_gradient_samples():
    (dmu, dls, dm), _ = _expected_grads("dreg", K=2, n=30)

    def fn(p):
        q = Normal(p["mu"], p["log_sigma"].exp())
        eps = torch.randn(2)
        z = p["mu"] + p["log_sigma"].exp() * eps
        return iwae(log_joint(z, p["m"]), scg.stop_gradient(q).log_prob(z), gradient="dreg", z=z)

    params = {
        "mu": torch.tensor(0.1),
        "log_sigma": torch.tensor(math.log(0.9)),
        "m": torch.tensor(-0.5),
    }
    torch.manual_seed(4)
    G = scg.diagnostics.gradient_samples(fn, params, 4000)
    s = scg.diagnostics.summary(G, torch.stack([dmu, dls, dm]).detach())
    # 3 parameters, family-wise false-failure rate 1e-3: z = 3.59.
    assert float(s.z.abs().max()) < 3.59, s.table(["mu", "log_sigma", "m"])


# ------------------------------------------------------------------- VIMCO


def test_vimco_is_unbiased_by_enumeration():
    K = 3
    phi = torch.tensor([0.4, -0.3], requires_grad=True)  # batch of 2
    theta = torch.tensor([0.2, 1.1], requires_grad=True)
    x = torch.tensor([0.5, -0.8])
    est = torch.zeros(2)
    est_t = torch.zeros(2)
    objective = 0.0
    for config in itertools.product([0.0, 1.0], repeat=K * 2):
        z = torch.tensor(config).reshape(K, 2)
        log_q = Bernoulli(logits=phi).log_prob(z)
        log_p = Bernoulli(logits=theta[0]).log_prob(z) + Normal(theta[1] * z, 1.0).log_prob(x)
        surrogate = vimco(log_p, log_q)
        prob = log_q.sum().exp()
        gp, gt = torch.autograd.grad(surrogate.sum(), (phi, theta), retain_graph=True)
        est += prob.detach() * gp
        est_t += prob.detach() * gt
        objective = objective + prob * log_mean_exp(log_p - log_q).sum()
    ep, et = torch.autograd.grad(objective, (phi, theta))
    torch.testing.assert_close(est, ep, atol=1e-12, rtol=0)
    torch.testing.assert_close(est_t, et, atol=1e-12, rtol=0)


def test_vimco_leave_one_out_sums_match_direct_computation():
    torch.manual_seed(1)
    x = torch.randn(6, 3) * 5
    x[2, 1] = x[4, 1] = x[:, 1].max() + 1  # a tie at the maximum
    direct = torch.stack([torch.logsumexp(torch.cat([x[:k], x[k + 1 :]]), 0) for k in range(6)])
    torch.testing.assert_close(_log_sum_exp_others(x), direct, atol=1e-12, rtol=0)


# --------------------------------------------------------------- stability


def test_ten_thousand_samples_spread_over_a_thousand_nats_stay_finite_in_float32():
    torch.set_default_dtype(torch.float32)
    try:
        K = 10_000
        torch.manual_seed(0)
        mu = torch.zeros(2, requires_grad=True)
        q = Normal(mu, 1.0)
        z = q.rsample((K,))  # [K, 2]
        log_p = -60.0 * z**2  # log-weights spread over more than 1e3 nats
        log_w = (log_p - q.log_prob(z)).detach()
        assert float(log_w.max() - log_w.min()) > 1000
        for gradient in ("reparam", "stl", "dreg"):
            log_q = q.log_prob(z) if gradient == "reparam" else scg.stop_gradient(q).log_prob(z)
            out = iwae(log_p, log_q, gradient=gradient, z=z)
            (g,) = torch.autograd.grad(out.sum(), mu, retain_graph=True)
            assert bool(torch.isfinite(out).all()) and bool(torch.isfinite(g).all()), gradient
        phi = torch.zeros(2, requires_grad=True)
        b = Bernoulli(logits=phi).sample((K,))
        lw = torch.linspace(-1000.0, 0.0, K)[torch.randperm(K)].unsqueeze(-1)
        out = vimco(lw + b, Bernoulli(logits=phi).log_prob(b))
        (g,) = torch.autograd.grad(out.sum(), phi)
        assert bool(torch.isfinite(out).all()) and bool(torch.isfinite(g).all())
        # The leave-one-out sums keep their accuracy in float32.
        x = (lw + b).detach()
        ref = _log_sum_exp_others(x.double())
        assert float((_log_sum_exp_others(x).double() - ref).abs().max()) < 1e-3
    finally:
        torch.set_default_dtype(torch.float64)


# ------------------------------------------------------------------ errors


def test_errors():
    a, b = torch.zeros(3, 2), torch.zeros(3, 2)
    with pytest.raises(
        ValueError,
        match=r"`log_p` and `log_q` must have the same shape \[K, \*batch\]; got \[3, 2\] and \[3\]",
    ):
        elbo(a, b[:, 0])
    with pytest.raises(TypeError, match=r"`log_q` must be a torch.Tensor"):
        elbo(a, 1.0)
    with pytest.raises(
        ValueError,
        match=r"`log_p` must have shape \[K, \*batch\] with K samples on dim 0; got a scalar",
    ):
        iwae(torch.tensor(0.0), torch.tensor(0.0))
    with pytest.raises(TypeError, match=r"`log_p` must be a floating-point tensor"):
        iwae(a.long(), b)
    with pytest.raises(ValueError, match=r"`gradient` must be one of 'reparam', 'stl', 'dreg'; got 'score'"):
        iwae(a, b, gradient="score")
    with pytest.raises(ValueError, match=r'`z` must be given for gradient="dreg"'):
        iwae(a, b, gradient="dreg")
    with pytest.raises(
        ValueError,
        match=r"`z` must have shape \[K, \*batch, \*event\] with \[K, \*batch\] = \[3, 2\]; got \[2, 2\]",
    ):
        iwae(a, b, gradient="dreg", z=torch.zeros(2, 2))
    with pytest.raises(TypeError, match=r"`z` must be a torch.Tensor"):
        iwae(a, b, gradient="dreg", z=1.0)
    with pytest.raises(ValueError, match=r"`log_p` must hold K >= 2 samples on dim 0; got K = 1"):
        vimco(a[:1], b[:1])


def test_non_finite_log_weights_are_refused_naming_the_argument():
    import math

    lp, lq = torch.zeros(4, 2), torch.zeros(4, 2)
    bad = lp.clone()
    bad[1, 0] = math.nan
    for fn in (lambda a, b: scg.objectives.iwae(a, b), scg.objectives.vimco, scg.objectives.elbo):
        with pytest.raises(ValueError, match=r"`log_p` must not hold NaN or \+inf; got 1"):
            fn(bad, lq)
    inf_q = lq.clone()
    inf_q[0, 1] = -math.inf
    with pytest.raises(ValueError, match=r"`log_q` must be finite"):
        scg.objectives.iwae(lp, inf_q)
    all_neg = lp.clone()
    all_neg[:, 1] = -math.inf
    with pytest.raises(ValueError, match=r"-inf for all K of some element"):
        scg.objectives.vimco(all_neg, lq)
    some_neg = lp.clone()
    some_neg[0, 1] = -math.inf  # one sample of zero likelihood is fine
    assert torch.isfinite(scg.objectives.iwae(some_neg, lq)).all()
