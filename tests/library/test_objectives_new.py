"""Tests of the Rényi (VR) bound, MIWAE / CIWAE / PIWAE and reweighted wake-sleep in ``scg.objectives``.

Oracles are computed here in numpy, independently of the code under test: log-sum-exp
by hand, and the gradients of the Gaussian model

    p(z) = N(m, I), p(x | z) = N(z, I), q(z) = N(μ, diag σ²), z = μ + σ ε,

from their closed-form partial derivatives (∂log p/∂z = (m − z) + (x − z),
∂log q/∂z = −(z − μ)/σ², ∂log q/∂μ = (z − μ)/σ², ∂log q/∂σ = −1/σ + (z − μ)²/σ³,
∂log p/∂m = z − m). Expectations over K = 2 reparameterised samples in one dimension
use a tensor Gauss–Hermite grid laid out along the batch dimension.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from numpy.polynomial.hermite_e import hermegauss
from torch.distributions import Normal

import scg
from scg.objectives import ciwae, elbo, iwae, miwae, piwae, renyi, rws, rws_wake_p, rws_wake_q

# This module works in float64; the default dtype is restored after each test.
pytestmark = pytest.mark.usefixtures("float64", "one_thread_module")  # tests/conftest.py


def np_lme(x: np.ndarray, axis: int = 0) -> np.ndarray:
    """log mean exp along ``axis``, by hand."""
    top = x.max(axis=axis, keepdims=True)
    return (top + np.log(np.exp(x - top).mean(axis=axis, keepdims=True))).squeeze(axis)


def np_softmax(x: np.ndarray, axis: int = 0) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


# ------------------------------------------------------------------ the Gaussian model


class Model:
    """Parameters and one draw of ε ``[K, B, D]``; torch tensors (leaves) and numpy oracles side by side."""

    def __init__(self, K: int, B: int = 2, D: int = 2, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.eps = rng.standard_normal((K, B, D))
        self.x = rng.standard_normal((B, D)) + 1.0
        self.mu_np = rng.standard_normal((B, D)) * 0.3 + 0.5
        self.sigma_np = np.exp(rng.standard_normal((B, D)) * 0.2 - 0.2)
        self.m_np = rng.standard_normal(D) * 0.3
        self.mu = torch.tensor(self.mu_np, requires_grad=True)
        self.sigma = torch.tensor(self.sigma_np, requires_grad=True)
        self.m = torch.tensor(self.m_np, requires_grad=True)

    # torch side -----------------------------------------------------------------------
    def torch_terms(self, *, z_grad: bool, q_stop: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(log_p [K, B], log_q [K, B], z [K, B, D])``: z reparameterised or detached, log_q attached or stopped."""
        q = Normal(self.mu, self.sigma)
        z = self.mu + self.sigma * torch.tensor(self.eps)
        if not z_grad:
            z = z.detach()
        x = torch.tensor(self.x)
        log_p = (Normal(self.m, 1.0).log_prob(z) + Normal(z, 1.0).log_prob(x)).sum(-1)
        log_q = (scg.stop_gradient(q) if q_stop else q).log_prob(z).sum(-1)
        return log_p, log_q, z

    def grads(self, out: torch.Tensor) -> list[np.ndarray]:
        """∇ of ``out.sum()`` in (μ, σ, m); zeros where nothing flows (the graph is kept for more calls)."""
        leaves = (self.mu, self.sigma, self.m)
        g = torch.autograd.grad(out.sum(), leaves, allow_unused=True, retain_graph=True)
        return [np.zeros(t.shape) if gi is None else gi.numpy() for gi, t in zip(g, leaves, strict=True)]

    # numpy side -----------------------------------------------------------------------
    @property
    def z_np(self) -> np.ndarray:
        return self.mu_np + self.sigma_np * self.eps

    def log_w_np(self) -> np.ndarray:
        z, mu, s, m, x = self.z_np, self.mu_np, self.sigma_np, self.m_np, self.x
        c = 0.5 * math.log(2 * math.pi)
        log_p = -0.5 * (z - m) ** 2 - c - 0.5 * (x - z) ** 2 - c
        log_q = -0.5 * ((z - mu) / s) ** 2 - np.log(s) - c
        return (log_p - log_q).sum(-1)  # [K, B]

    def partials(self) -> dict[str, np.ndarray]:
        """Partial derivatives ``[K, B, D]`` (``dm``: of log p in m)."""
        z, mu, s, m, x = self.z_np, self.mu_np, self.sigma_np, self.m_np, self.x
        return {
            "dp_dz": (m - z) + (x - z),
            "dq_dz": -(z - mu) / s**2,
            "dq_dmu": (z - mu) / s**2,
            "dq_dsigma": -1 / s + (z - mu) ** 2 / s**3,
            "dm": z - m,
        }

    def reparam_dlogw(self) -> tuple[np.ndarray, np.ndarray]:
        """Total derivatives of log w_k in (μ, σ) through z = μ + σ ε and q's parameters, ``[K, B, D]``."""
        d = self.partials()
        dmu = d["dp_dz"] - d["dq_dz"] - d["dq_dmu"]
        dsigma = (d["dp_dz"] - d["dq_dz"]) * self.eps - d["dq_dsigma"]
        return dmu, dsigma

    def path(self, coef: np.ndarray) -> list[np.ndarray]:
        """:math:`\\sum_k c_k ∂log w_k/∂z_k ∂z_k/∂(μ, σ)` for coefficients ``c [K, B]``."""
        d = self.partials()
        g = coef[..., None] * (d["dp_dz"] - d["dq_dz"])
        return [g.sum(0), (g * self.eps).sum(0)]

    def model_grad(self, coef: np.ndarray) -> np.ndarray:
        """:math:`\\sum_{k,b} c_{kb} ∇_m \\log p(x_b, z_{kb})`, ``[D]``."""
        return (coef[..., None] * self.partials()["dm"]).sum((0, 1))

    def grouped_weights(self, groups: int) -> np.ndarray:
        """Within-group normalised weights ``[M·K, B]``, divided by M (sample j in group j // K)."""
        lw = self.log_w_np()
        n, b = lw.shape
        return np_softmax(lw.reshape(groups, n // groups, b), axis=1).reshape(n, b) / groups


def assert_grads(got: list[np.ndarray], want: list[np.ndarray], atol: float = 1e-12) -> None:
    for name, g, w in zip(("mu", "sigma", "m"), got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=atol, rtol=0, err_msg=name)


# ------------------------------------------------------------------------- Rényi (VR)

ALPHAS = [-3.0, -0.5, 0.25, 0.5, 0.9, 2.0, 7.0]


@pytest.mark.parametrize("alpha", ALPHAS)
def test_renyi_value_matches_numpy(alpha):
    rng = np.random.default_rng(1)
    lp, lq = rng.standard_normal((6, 3)) * 3, rng.standard_normal((6, 3))
    s = 1 - alpha
    want = np_lme(s * (lp - lq)) / s
    got = renyi(torch.tensor(lp), torch.tensor(lq), alpha=alpha)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-13, atol=1e-13)


def test_renyi_limits_are_the_elbo_iwae_and_vr_max():
    torch.manual_seed(1)
    lp, lq = torch.randn(7, 4) * 2, torch.randn(7, 4)
    assert torch.equal(renyi(lp, lq, alpha=0.0), iwae(lp, lq))  # exactly, bit for bit
    assert torch.equal(renyi(lp, lq, alpha=0), iwae(lp, lq))
    assert torch.equal(renyi(lp, lq, alpha=1.0), elbo(lp, lq))
    lw = (lp - lq).numpy()
    np.testing.assert_array_equal(renyi(lp, lq, alpha=-math.inf).numpy(), lw.max(0))
    np.testing.assert_array_equal(renyi(lp, lq, alpha=math.inf).numpy(), lw.min(0))
    # Large |α|: within log K / |1 − α| of the max / min.
    np.testing.assert_allclose(renyi(lp, lq, alpha=-1e6).numpy(), lw.max(0), atol=math.log(7) / 1e6)
    np.testing.assert_allclose(renyi(lp, lq, alpha=1e6).numpy(), lw.min(0), atol=math.log(7) / 1e6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("alpha", [1 - 1e-6, 1 + 1e-6, 1 - 1e-3, 1 + 1e-9])
def test_renyi_is_continuous_at_alpha_one(alpha, dtype):
    # Second-order expansion in s = 1 − α: L = mean + s var / 2 + O(s²) (var: population variance over K).
    rng = np.random.default_rng(2)
    lw = rng.standard_normal((50, 3)) * 2 - 100.0  # far from 0: a naive 1/s · log mean exp(s lw) cancels
    s = 1 - alpha
    mean, var = lw.mean(0), lw.var(0)
    third = ((lw - mean) ** 3).mean(0)
    want = mean + s * var / 2 + s**2 * third / 6
    got = renyi(torch.tensor(lw, dtype=dtype), torch.zeros(50, 3, dtype=dtype), alpha=alpha)
    # float64: the cubic remainder is O(s³) below 1e-9; float32: rounding of 100-nat values (6e-6 each).
    tol = 1e-9 if dtype == torch.float64 else 5e-5
    np.testing.assert_allclose(got.double().numpy(), want, atol=tol, rtol=0)
    np.testing.assert_allclose(got.double().numpy(), mean, atol=abs(s) * var.max() + tol, rtol=0)


def test_renyi_is_monotone_in_alpha_and_between_elbo_and_iwae():
    torch.manual_seed(3)
    lp, lq = torch.randn(9, 5) * 3, torch.randn(9, 5)
    alphas = [-5.0, -1.0, -0.1, 0.0, 0.1, 0.5, 0.999999, 1.0, 1.000001, 2.0, 10.0]
    values = torch.stack([renyi(lp, lq, alpha=a) for a in alphas])
    assert (values[1:] <= values[:-1] + 1e-12).all()  # power means are non-decreasing in 1 − α
    lo, hi = elbo(lp, lq), iwae(lp, lq)
    for a in (0.1, 0.5, 0.9):
        v = renyi(lp, lq, alpha=a)
        assert ((lo <= v) & (v <= hi)).all()


@pytest.mark.parametrize("alpha", [0.5, -2.0, 3.0, 1 - 1e-5])
def test_renyi_gradient_is_the_tempered_self_normalised_weights(alpha):
    rng = np.random.default_rng(4)
    lp_np, lq_np = rng.standard_normal((5, 3)) * 2, rng.standard_normal((5, 3))
    lp, lq = torch.tensor(lp_np, requires_grad=True), torch.tensor(lq_np, requires_grad=True)
    gp, gq = torch.autograd.grad(renyi(lp, lq, alpha=alpha).sum(), (lp, lq))
    want = np_softmax((1 - alpha) * (lp_np - lq_np))  # ∂L/∂log w_k = w_k^{1−α} / Σ_j w_j^{1−α}
    np.testing.assert_allclose(gp.numpy(), want, atol=1e-13, rtol=0)
    np.testing.assert_allclose(gq.numpy(), -want, atol=1e-13, rtol=0)


def test_renyi_with_zero_weights_and_ten_thousand_samples_in_float32():
    lp = torch.tensor([[0.0, 1.0], [-math.inf, 2.0], [3.0, -math.inf]])
    lq = torch.zeros(3, 2)
    got = renyi(lp, lq, alpha=0.5)
    # Zero weights drop out of the sum but count in K: 2 · log((e^{0/2} + e^{3/2}) / 3), 2 · log((e^{1/2} + e^1) / 3).
    want = [2 * math.log((1 + math.exp(1.5)) / 3), 2 * math.log((math.exp(0.5) + math.exp(1.0)) / 3)]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-14)
    assert (renyi(lp, lq, alpha=2.0) == -math.inf).all()  # w^{−1} = ∞ for a zero weight: L = −∞
    g = torch.Generator().manual_seed(5)
    lw = (torch.rand(10_000, 3, generator=g) * 3000 - 1500).float()
    zero = torch.zeros_like(lw)
    for a in (-1.0, 0.5, 1 - 1e-6, 2.0):
        assert torch.isfinite(renyi(lw, zero, alpha=a)).all()


# ------------------------------------------------------------------ MIWAE and CIWAE


@pytest.mark.parametrize(("M", "K"), [(1, 6), (2, 3), (3, 2), (6, 1)])
def test_miwae_value_is_the_mean_of_the_group_bounds(M, K):
    rng = np.random.default_rng(6)
    lp, lq = rng.standard_normal((M * K, 4)) * 2, rng.standard_normal((M * K, 4))
    want = np_lme((lp - lq).reshape(M, K, 4), axis=1).mean(0)
    for gradient in ("reparam", "stl"):
        got = miwae(torch.tensor(lp), torch.tensor(lq), num_groups=M, gradient=gradient)
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-13, atol=1e-13)
    t = torch.tensor(lp), torch.tensor(lq)
    if M == 1:
        assert torch.equal(miwae(*t, num_groups=1), iwae(*t))
    if K == 1:
        torch.testing.assert_close(miwae(*t, num_groups=M), elbo(*t), atol=1e-14, rtol=0)


@pytest.mark.parametrize("gradient", ["reparam", "dreg"])
def test_miwae_gradients_match_the_closed_forms(gradient):
    M, K = 3, 4
    mod = Model(M * K)
    log_p, log_q, z = mod.torch_terms(z_grad=True, q_stop=gradient == "dreg")
    got = mod.grads(miwae(log_p, log_q, num_groups=M, gradient=gradient, z=z))
    w = mod.grouped_weights(M)  # w̃ within the group, / M
    if gradient == "reparam":
        dmu, dsigma = mod.reparam_dlogw()
        phi = [(w[..., None] * dmu).sum(0), (w[..., None] * dsigma).sum(0)]
    else:
        phi = mod.path(M * w * w)  # (1/M) Σ_m Σ_k w̃² ∂log w/∂z ∂z/∂φ
    assert_grads(got, [*phi, mod.model_grad(w)])


def test_ciwae_value_limits_and_gradient():
    rng = np.random.default_rng(7)
    lp, lq = rng.standard_normal((5, 3)) * 2, rng.standard_normal((5, 3))
    lw = lp - lq
    t = torch.tensor(lp), torch.tensor(lq)
    for beta in (0.0, 0.3, 1.0):
        want = beta * lw.mean(0) + (1 - beta) * np_lme(lw)
        np.testing.assert_allclose(ciwae(*t, beta=beta).numpy(), want, rtol=1e-13, atol=1e-13)
    assert torch.equal(ciwae(*t, beta=0.0), iwae(*t))
    assert torch.equal(ciwae(*t, beta=1), elbo(*t))
    mod = Model(5)
    beta = 0.3
    log_p, log_q, z = mod.torch_terms(z_grad=True, q_stop=False)
    got = mod.grads(ciwae(log_p, log_q, beta=beta))
    coef = beta / 5 + (1 - beta) * np_softmax(mod.log_w_np())  # ∂CIWAE/∂log w_k
    dmu, dsigma = mod.reparam_dlogw()
    want = [(coef[..., None] * dmu).sum(0), (coef[..., None] * dsigma).sum(0), mod.model_grad(coef)]
    assert_grads(got, want)
    # With DReG for the IWAE term and a stopped log_q: the ELBO term's gradient is STL's.
    log_p, log_q, z = mod.torch_terms(z_grad=True, q_stop=True)
    got = mod.grads(ciwae(log_p, log_q, beta=beta, gradient="dreg", z=z))
    wt = np_softmax(mod.log_w_np())
    phi = [
        a + b for a, b in zip(mod.path(np.full_like(wt, beta / 5)), mod.path((1 - beta) * wt**2), strict=True)
    ]
    assert_grads(got, [*phi, mod.model_grad(coef)])


# ------------------------------------------------------------------------------ PIWAE


@pytest.mark.parametrize("gradient", ["reparam", "dreg"])
def test_piwae_splits_the_gradients(gradient):
    M, K = 2, 3
    mod = Model(M * K)
    log_p, log_q, z = mod.torch_terms(z_grad=True, q_stop=gradient == "dreg")
    out = piwae(log_p, log_q, num_groups=M, z=z, gradient=gradient)
    np.testing.assert_allclose(out.detach().numpy(), np_lme(mod.log_w_np()), rtol=1e-13)  # value: IWAE_MK
    got = mod.grads(out)
    # Model: IWAE_{MK}'s gradient Σ_j w̃_j ∇m log p. Inference network: MIWAE_{M,K}'s.
    want_m = mod.model_grad(np_softmax(mod.log_w_np()))
    w = mod.grouped_weights(M)
    if gradient == "reparam":
        dmu, dsigma = mod.reparam_dlogw()
        phi = [(w[..., None] * dmu).sum(0), (w[..., None] * dsigma).sum(0)]
    else:
        phi = mod.path(M * w * w)
    assert_grads(got, [*phi, want_m])
    # The split is not trivial: the two bounds' gradients differ in both.
    assert np.abs(want_m - mod.model_grad(w)).max() > 1e-3
    dmu, _ = mod.reparam_dlogw()
    iwae_mu = (np_softmax(mod.log_w_np())[..., None] * dmu).sum(0)
    assert np.abs(iwae_mu - (w[..., None] * dmu).sum(0)).max() > 1e-3


# ------------------------------------------------------------------ reweighted wake-sleep


def test_rws_score_gradients_single_draw_oracle():
    K = 5
    mod = Model(K)
    wt = np_softmax(mod.log_w_np())  # [K, B]
    d = mod.partials()
    score_phi = [(wt[..., None] * d["dq_dmu"]).sum(0), (wt[..., None] * d["dq_dsigma"]).sum(0)]
    zero_phi = [np.zeros_like(score_phi[0])] * 2
    theta = mod.model_grad(wt)
    log_p, log_q, z = mod.torch_terms(z_grad=False, q_stop=False)
    # The same q-gradient by autograd on log q alone, with the weights as constants.
    by_hand = mod.grads((torch.tensor(wt) * log_q).sum(0))
    assert_grads(by_hand, [*score_phi, np.zeros(2)])
    assert_grads(mod.grads(rws_wake_q(log_p, log_q)), [*score_phi, np.zeros(2)])
    assert_grads(mod.grads(rws_wake_p(log_p, log_q)), [*zero_phi, theta])
    assert_grads(mod.grads(rws(log_p, log_q)), [*score_phi, theta])
    value = np_lme(mod.log_w_np())
    for f in (rws, rws_wake_q, rws_wake_p):
        np.testing.assert_allclose(f(log_p, log_q).detach().numpy(), value, rtol=1e-13)
    # A reparameterised z passed as z=z: its path is removed, the gradients are the same.
    log_p, log_q, z = mod.torch_terms(z_grad=True, q_stop=False)
    assert_grads(mod.grads(rws_wake_q(log_p, log_q, z=z)), [*score_phi, np.zeros(2)])
    assert_grads(mod.grads(rws_wake_p(log_p, log_q, z=z)), [*zero_phi, theta])
    assert_grads(mod.grads(rws(log_p, log_q, z=z)), [*score_phi, theta])
    # Without z=z the path through z is not removed (what the docstrings warn about).
    assert np.abs(mod.grads(rws_wake_p(log_p, log_q))[0]).max() > 1e-3


@pytest.mark.parametrize("q_stop", [True, False])
def test_rws_dreg_gradients_single_draw_oracle(q_stop):
    K = 4
    mod = Model(K)
    wt = np_softmax(mod.log_w_np())
    phi = mod.path(wt - wt**2)  # Σ_k (w̃ − w̃²) ∂log w/∂z ∂z/∂φ
    theta = mod.model_grad(wt)
    log_p, log_q, z = mod.torch_terms(z_grad=True, q_stop=q_stop)
    assert_grads(mod.grads(rws_wake_q(log_p, log_q, gradient="dreg", z=z)), [*phi, np.zeros(2)])
    assert_grads(mod.grads(rws(log_p, log_q, gradient="dreg", z=z)), [*phi, theta])
    assert np.abs(phi[0]).max() > 1e-3


@pytest.mark.parametrize("K", [1, 3])
def test_rws_dreg_is_zero_at_the_exact_posterior_for_every_draw(K):
    # Posterior of p(z) = N(m, 1), p(x | z) = N(z, 1): N((x + m)/2, 1/2); every log w_k is log p(x).
    mod = Model(K, seed=9)
    mod.mu_np, mod.sigma_np = (mod.x + mod.m_np) / 2, np.full_like(mod.x, math.sqrt(0.5))
    mod.mu, mod.sigma = (
        torch.tensor(mod.mu_np, requires_grad=True),
        torch.tensor(mod.sigma_np, requires_grad=True),
    )
    log_p, log_q, z = mod.torch_terms(z_grad=True, q_stop=True)
    g = mod.grads(rws_wake_q(log_p, log_q, gradient="dreg", z=z))
    assert max(np.abs(gi).max() for gi in g) < 1e-12
    log_p, log_q, _ = mod.torch_terms(z_grad=False, q_stop=False)
    g = mod.grads(rws_wake_q(log_p, log_q))
    assert np.abs(g[1]).max() > 1e-2  # the score form: Σ_k ∇σ log q(z_k) / K, not zero


def gh_grid(n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Tensor Gauss–Hermite grid for k iid N(0, 1): nodes ``[k, n**k]`` and weights ``[n**k]``."""
    x, w = hermegauss(n)
    w = w / math.sqrt(2 * math.pi)
    nodes = np.stack(np.meshgrid(*([x] * k), indexing="ij")).reshape(k, -1)
    weights = np.stack(np.meshgrid(*([w] * k), indexing="ij")).prod(0).reshape(-1)
    return nodes, weights


def test_rws_dreg_has_the_expectation_of_the_score_form_by_quadrature():
    # K = 2 samples in one dimension; the grid points form the batch. μ, σ, m are scalars.
    mu0, sigma0, m0, x0 = 0.4, 0.8, -0.3, 1.3
    eps, gw = gh_grid(60, 2)  # [2, G]
    # numpy oracle: E[Σ_k w̃_k ∂log q(z_k)/∂(μ, σ)], z_k detached in the score form.
    z = mu0 + sigma0 * eps
    log_w = (
        -0.5 * (z - m0) ** 2
        - 0.5 * (x0 - z) ** 2
        + 0.5 * eps**2
        + math.log(sigma0)
        - 0.5 * math.log(2 * math.pi)
    )
    wt = np_softmax(log_w)
    want = [
        (gw * (wt * (z - mu0) / sigma0**2).sum(0)).sum(),
        (gw * (wt * (-1 / sigma0 + (z - mu0) ** 2 / sigma0**3)).sum(0)).sum(),
    ]
    mu = torch.tensor(mu0, requires_grad=True)
    sigma = torch.tensor(sigma0, requires_grad=True)
    q = Normal(mu, sigma)
    zt = mu + sigma * torch.tensor(eps)
    log_p = Normal(m0, 1.0).log_prob(zt) + Normal(zt, 1.0).log_prob(torch.tensor(x0))
    weights = torch.tensor(gw)
    dreg = rws_wake_q(log_p, scg.stop_gradient(q).log_prob(zt), gradient="dreg", z=zt)
    got_dreg = torch.autograd.grad((weights * dreg).sum(), (mu, sigma))
    zd = zt.detach()
    log_p_d = Normal(m0, 1.0).log_prob(zd) + Normal(zd, 1.0).log_prob(torch.tensor(x0))
    score = rws_wake_q(log_p_d, q.log_prob(zd))
    got_score = torch.autograd.grad((weights * score).sum(), (mu, sigma))
    for a, b, c in zip(got_dreg, got_score, want, strict=True):
        # Quadrature error of these smooth integrands at n = 60 is below 1e-12 (n = 40 and 80 agree to it).
        assert abs(float(a) - c) < 1e-10
        assert abs(float(b) - c) < 1e-10
        assert abs(c) > 1e-2  # a nonzero expectation, so the check can fail
    # Pointwise the two estimators differ (the variance is not the same).
    dreg_mu = (wt - wt**2) * ((m0 - z) + (x0 - z) + (z - mu0) / sigma0**2)
    score_mu = wt * (z - mu0) / sigma0**2
    assert np.abs(dreg_mu.sum(0) - score_mu.sum(0)).max() > 1e-2


def test_rws_dreg_under_gradient_samples_matches_quadrature_mean():
    mu0, log_sigma0, m0, x0 = 0.4, math.log(0.8), -0.3, 1.3

    def fn(p: dict[str, torch.Tensor]) -> torch.Tensor:
        sigma = p["log_sigma"].exp()
        q = Normal(p["mu"], sigma)
        z = p["mu"] + sigma * torch.randn(2)
        log_p = Normal(p["m"], 1.0).log_prob(z) + Normal(z, 1.0).log_prob(torch.tensor(x0))
        return rws(log_p, scg.stop_gradient(q).log_prob(z), gradient="dreg", z=z)

    eps, gw = gh_grid(60, 2)
    z = mu0 + math.exp(log_sigma0) * eps
    log_w = -0.5 * (z - m0) ** 2 - 0.5 * (x0 - z) ** 2 + 0.5 * eps**2 + log_sigma0
    wt = np_softmax(log_w)
    s0 = math.exp(log_sigma0)
    ref = [
        (gw * (wt * (z - mu0) / s0**2).sum(0)).sum(),
        (gw * (wt * (-1 / s0 + (z - mu0) ** 2 / s0**3)).sum(0)).sum() * s0,  # chain rule to log σ
        (gw * (wt * (z - m0)).sum(0)).sum(),
    ]
    params = {"mu": torch.tensor(mu0), "log_sigma": torch.tensor(log_sigma0), "m": torch.tensor(m0)}
    torch.manual_seed(8)
    samples = scg.diagnostics.gradient_samples(fn, params, 4000)
    s = scg.diagnostics.summary(samples, torch.tensor(ref))
    # 3 parameters, family-wise false-failure rate 1e-3: z = 3.59.
    assert float(s.z.abs().max()) < 3.59, s.table(["mu", "log_sigma", "m"])


# ------------------------------------------------------------------------------ errors


def test_errors_name_the_argument():
    a, b = torch.zeros(6, 2), torch.zeros(6, 2)
    with pytest.raises(TypeError, match=r"`alpha` must be a real number; got str"):
        renyi(a, b, alpha="0.5")
    with pytest.raises(TypeError, match=r"`alpha` must be a real number; got bool"):
        renyi(a, b, alpha=True)
    with pytest.raises(ValueError, match=r"`alpha` must be in \[-inf, inf\]; got nan"):
        renyi(a, b, alpha=math.nan)
    with pytest.raises(TypeError, match=r"renyi\(\) missing 1 required keyword-only argument: 'alpha'"):
        renyi(a, b)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match=r"`beta` must be in \[0.0, 1.0\]; got 1.5"):
        ciwae(a, b, beta=1.5)
    with pytest.raises(TypeError, match=r"`num_groups` must be an int; got float"):
        miwae(a, b, num_groups=2.0)
    with pytest.raises(
        ValueError, match=r"`num_groups` must be a positive divisor of the number of samples M·K = 6; got 4"
    ):
        miwae(a, b, num_groups=4)
    with pytest.raises(ValueError, match=r"`num_groups` must be a positive divisor .* got 0"):
        piwae(a, b, num_groups=0, z=a)
    with pytest.raises(ValueError, match=r"`gradient` must be one of 'reparam', 'stl', 'dreg'; got 'score'"):
        miwae(a, b, num_groups=2, gradient="score")
    with pytest.raises(ValueError, match=r'`z` must be given for gradient="dreg"'):
        miwae(a, b, num_groups=2, gradient="dreg")
    with pytest.raises(ValueError, match=r"`z` must be given to piwae"):
        piwae(a, b, num_groups=2, z=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`gradient` must be one of 'score', 'dreg'; got 'reparam'"):
        rws(a, b, gradient="reparam")
    with pytest.raises(ValueError, match=r'`z` must be given for gradient="dreg"'):
        rws_wake_q(a, b, gradient="dreg")
    with pytest.raises(
        ValueError,
        match=r"`z` must have shape \[K, \*batch, \*event\] with \[K, \*batch\] = \[6, 2\]; got \[6\]",
    ):
        rws_wake_p(a, b, z=torch.zeros(6))
    with pytest.raises(TypeError, match=r"`z` must be a torch.Tensor; got list"):
        rws(a, b, z=[0.0])


@pytest.mark.parametrize(
    "call",
    [
        lambda p, q: renyi(p, q, alpha=0.5),
        lambda p, q: miwae(p, q, num_groups=2),
        lambda p, q: ciwae(p, q, beta=0.5),
        lambda p, q: piwae(p, q, num_groups=2, z=torch.zeros(4, 2)),
        lambda p, q: rws(p, q),
        lambda p, q: rws_wake_q(p, q),
        lambda p, q: rws_wake_p(p, q),
    ],
)
def test_shape_and_finiteness_checks_apply_to_every_new_objective(call):
    lp, lq = torch.zeros(4, 2), torch.zeros(4, 2)
    with pytest.raises(ValueError, match=r"`log_p` and `log_q` must have the same shape"):
        call(lp, lq[:, :1])
    with pytest.raises(ValueError, match=r"`log_p` must not hold NaN or \+inf"):
        call(torch.full((4, 2), math.nan), lq)
    with pytest.raises(ValueError, match=r"`log_q` must be finite"):
        call(lp, torch.full((4, 2), -math.inf))
    with pytest.raises(TypeError, match=r"`log_q` must be a torch.Tensor"):
        call(lp, 0.0)
