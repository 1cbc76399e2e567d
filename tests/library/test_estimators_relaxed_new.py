"""Gumbel-Rao, ReinMax and IndeCateR: exact means, variances and biases, properties, graph nodes, bad inputs.

Nothing here samples except to draw the replayed inputs of a per-draw check. Every exact
number the estimators are compared with is computed in this file by code that does not call
them: plain-torch enumeration (softmax, einsum over probability tables) for ∇E[f], numpy
per-draw formulas for IndeCateR's estimate, scipy quadrature over the *unconditional*
Gumbel / logistic noise for the straight-through Gumbel-softmax mean that Gumbel-Rao must
reproduce, closed forms for ReinMax. The estimators' own moments come from the exact
harness (:func:`scg.testing.exact_moments`: enumeration of the draws, quadrature of the
uniforms) or from replaying the estimator on enumerated draws. Float64 throughout.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import integrate
from torch.distributions import Bernoulli, Categorical, Independent, Normal, OneHotCategorical

import scg
from scg.estimators.gumbel_rao import GumbelRao
from scg.estimators.indecater import IndeCateR
from scg.estimators.reinmax import ReinMax
from scg.testing import exact_moments

pytestmark = pytest.mark.usefixtures("one_thread_module", "float64")


def t(*v: float) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.float64)


def logits_of(seed: int, *shape: int, scale: float = 0.8) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*shape, generator=gen, dtype=torch.float64)


def jac(pi: np.ndarray) -> np.ndarray:
    """The softmax Jacobian diag(π) − ππᵀ (numpy), batched over leading dims."""
    return np.einsum("...i,ij->...ij", pi, np.eye(pi.shape[-1])) - pi[..., :, None] * pi[..., None, :]


# ====================================================================================== IndeCateR


def table(seed: int, D: int, K: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1000 + seed)
    return torch.randn(*([K] * D), generator=gen, dtype=torch.float64)


def table_cost(T: torch.Tensor, form: str):
    """f(z) = T[z_1, …, z_D], read from z in ``form``: one-hot [..., D, K], indices [..., D] or bits [..., D]."""
    D = T.dim()

    def f(z: torch.Tensor) -> torch.Tensor:
        if form == "one_hot":  # contract one one-hot vector per variable with the table's first axis
            lead = z.shape[:-2]
            out = T.reshape(*([1] * len(lead)), *T.shape)
            for d in range(D):
                out = (z[..., d, :].reshape(*lead, -1, *([1] * (D - d - 1))) * out).sum(len(lead))
            return out
        idx = z.long()
        return T[tuple(idx[..., d] for d in range(D))]

    return f


def make_dist(form: str):
    if form == "one_hot":
        return lambda logits: Independent(OneHotCategorical(logits=logits), 1)
    if form == "index":
        return lambda logits: Independent(Categorical(logits=logits), 1)
    return lambda logits: Independent(Bernoulli(logits=logits[..., 1] - logits[..., 0]), 1)


def class_probs(logits: torch.Tensor, form: str) -> torch.Tensor:
    """π [D, K] of each variable (Bernoulli: (1 − σ(φ), σ(φ)) with φ = logit₁ − logit₀)."""
    if form == "bernoulli":
        phi = logits[..., 1] - logits[..., 0]
        return torch.stack([torch.sigmoid(-phi), torch.sigmoid(phi)], -1)
    return torch.softmax(logits, -1)


def expected_table(pi: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """Σ_z Π_d π_d(z_d) T[z] by one einsum (plain enumeration of the product)."""
    D = T.dim()
    letters = "abcdefgh"[:D]
    return torch.einsum(",".join(letters) + "," + letters + "->", *pi.unbind(0), T)


def indecater_per_draw(logits: torch.Tensor, T: torch.Tensor, form: str) -> tuple[np.ndarray, np.ndarray]:
    """Every joint value z (``[N, D]`` indices), its probability, and IndeCateR's estimate ĝ(z) w.r.t. the
    logits, ``[N, D, K]``, from the formula: ĝ_d = Σ_k ∂π_{d,k}/∂logits_d f(z_{≠d}, k) (numpy)."""
    D, K = logits.shape
    pi = class_probs(logits, form).numpy()
    Tn = T.numpy()
    z = np.array(list(itertools.product(range(K), repeat=D)), dtype=np.int64).reshape(-1, D)
    prob = np.prod([pi[d, z[:, d]] for d in range(D)], axis=0)
    fvals = np.empty((len(z), D, K))
    for d in range(D):
        for k in range(K):
            zk = z.copy()
            zk[:, d] = k
            fvals[:, d, k] = Tn[tuple(zk.T)]
    if form == "bernoulli":  # φ = logit₁ − logit₀: ∂π₁/∂φ = −∂π₀/∂φ = π₀π₁, gradient split ∓ onto the logits
        dphi = pi[:, 0] * pi[:, 1] * (fvals[:, :, 1] - fvals[:, :, 0])
        g = np.stack([-dphi, dphi], -1)
    else:
        g = np.einsum("dkj,ndj->ndk", jac(pi), fvals)
    return z, prob, g


CASES = [(K, D, form) for K in (2, 3, 5, 10) for D in (1, 2, 3) for form in ("one_hot", "index")]
CASES = [c for c in CASES if c[0] ** c[1] <= 1000] + [(2, D, "bernoulli") for D in (1, 2, 3)]


@pytest.mark.parametrize(("K", "D", "form"), CASES, ids=[f"K{k}-D{d}-{f}" for k, d, f in CASES])
def test_indecater_exact_mean_and_variance(K, D, form):
    """Products of D ∈ {1, 2, 3} categoricals with K ∈ {2, 3, 5, 10} (one-hot and index samples;
    Bernoulli as K = 2), f a random table read through the sample: the harness's exact mean of
    IndeCateR's gradient equals ∇E[f] by plain enumeration (einsum over the probability tables,
    autograd), and its exact variance equals the variance of the per-draw formula over all K^D
    draws (numpy). For D = 1 the variance is zero (the one variable is summed out exactly)."""
    T = table(K * 10 + D, D, K)
    f = table_cost(T, "index" if form != "one_hot" else "one_hot")
    logits = logits_of(K * 10 + D, D, K)
    m = exact_moments(IndeCateR(), make_dist(form), (logits,), f)

    theta = logits.clone().requires_grad_(True)
    (exact,) = torch.autograd.grad(expected_table(class_probs(theta, form), T), theta)
    _, prob, g = indecater_per_draw(logits, T, form)
    mean = np.einsum("n,ndk->dk", prob, g)
    variance = np.einsum("n,ndk->dk", prob, (g - mean) ** 2)
    assert float(exact.abs().max()) > 1e-2
    torch.testing.assert_close(torch.from_numpy(mean), exact, atol=1e-12, rtol=0)  # the formula is right
    torch.testing.assert_close(m.mean, exact.reshape(-1), atol=1e-10, rtol=0)
    torch.testing.assert_close(m.variance, torch.from_numpy(variance).reshape(-1), atol=1e-10, rtol=1e-9)
    if D == 1:
        assert float(m.variance.abs().max()) < 1e-20
    else:
        assert float(m.variance.max()) > 1e-4


def test_indecater_additive_cost_has_zero_variance():
    """f(z) = Σ_d f_d(z_d) (3 latents × 3 classes, random f_d): every other coordinate cancels in
    Σ_k ∂π_{d,k} f(z_{≠d}, k), so each estimate is exact — exact variance 0, mean ∇E[f]."""
    parts = logits_of(13, 3, 3)

    def f(z):
        return (z * parts).sum((-1, -2))

    theta = logits_of(14, 3, 3)
    m = exact_moments(IndeCateR(), make_dist("one_hot"), (theta,), f)
    th = theta.clone().requires_grad_(True)
    (exact,) = torch.autograd.grad((torch.softmax(th, -1) * parts).sum(), th)
    torch.testing.assert_close(m.mean, exact.reshape(-1), atol=1e-12, rtol=0)
    assert float(m.variance.abs().max()) < 1e-24


def test_indecater_per_draw_equals_formula_20x10():
    """20 latents × 10 classes, S = 3, f(z) = sin(Σ_d c_d · z_d) + (Σ_d a_d · z_d)² (nonlinear across
    latents): the gradient of one estimate equals (1/S) Σ_s Σ_d J(π_d) [f(z^{(s)}_{d←k})]_k, written
    out with loops over d and k; 1 + 20·10 evaluations of f per sample."""
    D, K, S = 20, 10, 3
    theta = logits_of(5, D, K).requires_grad_(True)
    c, a = logits_of(6, D, K), logits_of(7, D, K, scale=0.3)

    def f(z):
        return torch.sin((z * c).sum((-1, -2))) + (z * a).sum((-1, -2)) ** 2

    q = Independent(OneHotCategorical(logits=theta), 1)
    est = IndeCateR()
    assert est.evaluations(q, S) == S * (1 + D * K)
    torch.manual_seed(3)
    draws = est.draw(q, S)
    out = est.surrogate(f, q, draws)
    (grad,) = torch.autograd.grad(out, theta)
    z = draws["z"]
    torch.testing.assert_close(out, f(z).mean(0), atol=1e-13, rtol=0)  # the value: MC mean at the draws
    pi = torch.softmax(theta.detach(), -1).numpy()
    expect = np.zeros((D, K))
    for s in range(S):
        for d in range(D):
            vals = []
            for k in range(K):
                zk = z[s].clone()
                zk[d] = F.one_hot(torch.tensor(k), K).double()
                vals.append(float(f(zk)))
            expect[d] += jac(pi[d]) @ np.array(vals) / S
    torch.testing.assert_close(grad, torch.from_numpy(expect), atol=1e-12, rtol=0)


def test_indecater_equals_measure_valued_on_the_same_draws():
    """For Categorical the IndeCateR estimate is MeasureValued's weak derivative of π: on the same
    draws (batch [2] of 3 latents × 4 classes, index samples) both gradients agree (1e-12)."""
    theta = logits_of(8, 2, 3, 4).requires_grad_(True)
    T = table(8, 3, 4)
    f = table_cost(T, "index")

    def q():
        return Independent(Categorical(logits=theta), 1)

    torch.manual_seed(4)
    draws = IndeCateR().draw(q(), 5)
    a = torch.autograd.grad(IndeCateR().surrogate(f, q(), draws).sum(), theta)[0]
    b = torch.autograd.grad(scg.MeasureValued().surrogate(f, q(), draws).sum(), theta)[0]
    assert float(a.abs().max()) > 1e-2
    torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def test_indecater_batch_elements_are_separate_expectations():
    """A batch [2] of products (2 latents × 3 classes): the exact mean of each batch element's gradient
    equals the one computed for that element alone (harness, enumeration), and ∇E[f] of each."""
    theta = logits_of(9, 2, 2, 3)
    T = table(9, 2, 3)
    f = table_cost(T, "one_hot")
    m = exact_moments(IndeCateR(), make_dist("one_hot"), (theta,), f)
    for b in range(2):
        th = theta[b].clone().requires_grad_(True)
        (exact,) = torch.autograd.grad(expected_table(torch.softmax(th, -1), T), th)
        torch.testing.assert_close(m.mean.reshape(2, 2, 3)[b], exact, atol=1e-10, rtol=0)


# ===================================================================================== Gumbel-Rao


def conditional_perturbed_logits(theta: np.ndarray, k: np.ndarray, u: np.ndarray) -> np.ndarray:
    """θ + G given argmax = k, by inverse CDFs (numpy): the maximum is Gumbel(logsumexp θ), the others
    Gumbel(θ_i) conditioned below it: x_i = F_i⁻¹(u_i F_i(x_k)), F_i(x) = exp(−e^{−(x − θ_i)})."""
    lse = np.log(np.exp(theta).sum(-1, keepdims=True))
    onehot = np.eye(theta.shape[-1])[k]
    x_top = (onehot * (lse - np.log(-np.log(u)))).sum(-1, keepdims=True)
    rest = theta - np.log(-np.log(u) + np.exp(theta - x_top))
    return np.where(onehot > 0, x_top, rest)


@pytest.mark.parametrize("form", ["one_hot", "index", "bernoulli"])
def test_gumbel_rao_with_one_draw_is_st_gumbel_softmax_on_the_same_noise(form):
    """M = 1: from Gumbel-Rao's draws (the sample D, uniforms u) the perturbed logits x = θ + G are
    rebuilt here by inverse CDFs (numpy); argmax x = D on every draw, and GumbelSoftmax(τ, hard=True)
    fed the uniforms of exactly that noise (G = −log(−log u')) gives the same value and the same
    gradient (1e-10). Batch [2] × 3 latents × K = 4 (Bernoulli: logistic noise, u' = σ(L))."""
    tau = 0.6
    theta0 = logits_of(11, 2, 3, 4 if form != "bernoulli" else 1)
    f_w = logits_of(12, 3, 4 if form != "bernoulli" else 1)

    def f(z):
        z = z if form != "bernoulli" else z.unsqueeze(-1)
        return torch.sin((z * f_w).sum((-1, -2))) + (z * f_w).sum((-1, -2)) ** 2

    def dist(th):
        if form == "one_hot":
            return Independent(OneHotCategorical(logits=th), 1)
        if form == "index":
            return Independent(Categorical(logits=th), 1)
        return Independent(Bernoulli(logits=th[..., 0]), 1)

    torch.manual_seed(5)
    gr = GumbelRao(tau, num_conditional=1)
    draws = gr.draw(dist(theta0), 6)
    u = draws["u"][..., 0, :] if form != "bernoulli" else draws["u"][..., 0]
    if form == "bernoulli":
        phi, b = theta0[..., 0].numpy(), draws["z"].numpy()
        v = u.numpy()
        lo = np.where(b > 0.5, 1 / (1 + np.exp(phi)), 0.0)  # b = 1 ⇔ L > −φ: L = logit(σ(−φ) + v σ(φ))
        width = np.where(b > 0.5, 1 / (1 + np.exp(-phi)), 1 / (1 + np.exp(phi)))
        L = np.log(lo + v * width) - np.log1p(-(lo + v * width))
        assert np.all((phi + L > 0) == (b > 0.5))
        u_st = torch.from_numpy(1 / (1 + np.exp(-L)))
    else:
        log_pi = torch.log_softmax(theta0, -1).numpy()
        k = draws["z"].numpy() if form == "index" else draws["z"].argmax(-1).numpy()
        x = conditional_perturbed_logits(log_pi, k, u.numpy())
        assert np.array_equal(x.argmax(-1), k)
        u_st = torch.from_numpy(np.exp(-np.exp(-(x - log_pi))))
    th_a, th_b = theta0.clone().requires_grad_(True), theta0.clone().requires_grad_(True)
    a = gr.surrogate(f, dist(th_a), draws)
    b_ = scg.GumbelSoftmax(tau, hard=True).surrogate(f, dist(th_b), {"u": u_st})
    torch.testing.assert_close(a, b_, atol=1e-12, rtol=0)
    ga, gb = torch.autograd.grad(a.sum(), th_a)[0], torch.autograd.grad(b_.sum(), th_b)[0]
    assert float(ga.abs().max()) > 1e-2
    torch.testing.assert_close(ga, gb, atol=1e-10, rtol=0)


def bern_cost(b):
    return (b - 0.3) ** 2 + torch.sin(2 * b)


def bern_cost_derivative(b: float) -> float:
    return 2 * (b - 0.3) + 2 * math.cos(2 * b)


def st_gs_bernoulli(phi: float, tau: float, power: int = 1, b: int | None = None) -> float:
    """∫ logistic(L) ĝ(L)^power dL over L where 1[φ + L > 0] = b (all L if b is None), scipy: the
    straight-through Gumbel-softmax gradient w.r.t. φ, ĝ(L) = σ′((φ + L)/τ)/τ · f′(1[φ + L > 0]),
    integrated against the unconditional logistic noise."""

    def g(L: float) -> float:
        s = 1 / (1 + math.exp(-(phi + L) / tau))
        return (
            math.exp(-abs(L))
            / (1 + math.exp(-abs(L))) ** 2
            * (s * (1 - s) / tau * bern_cost_derivative(float(phi + L > 0))) ** power
        )

    pieces = {0: [(-60.0, -phi)], 1: [(-phi, 60.0)], None: [(-60.0, -phi), (-phi, 60.0)]}[b]
    return sum(integrate.quad(g, lo, hi, epsabs=1e-14, epsrel=1e-12, limit=200)[0] for lo, hi in pieces)


PHI = 0.4


@pytest.mark.parametrize("tau", [0.3, 1.0, 3.0])
def test_gumbel_rao_bernoulli_exact_bias(tau):
    """Bernoulli(σ(0.4)), f(b) = (b − 0.3)² + sin 2b: the harness's exact mean of Gumbel-Rao's gradient
    (b enumerated, the conditional uniform integrated) equals scipy's integral of the straight-through
    Gumbel-softmax gradient over the unconditional logistic noise (1e-9), for M = 1 and 2 alike; its
    bias against ∇E[f] = θ(1 − θ)(f(1) − f(0)) is that integral minus the exact gradient, nonzero."""
    th = 1 / (1 + math.exp(-PHI))
    exact = th * (1 - th) * float(bern_cost(t(1.0)) - bern_cost(t(0.0)))
    oracle = st_gs_bernoulli(PHI, tau)
    for M in (1, 2):
        m = exact_moments(
            GumbelRao(tau, num_conditional=M), lambda p: Bernoulli(logits=p), (t(PHI),), bern_cost
        )
        assert abs(float(m.mean) - oracle) < 1e-9
    assert abs(oracle - exact) > 1e-2  # biased, by this much


def test_gumbel_rao_bernoulli_is_its_two_class_case():
    """Bernoulli(σ(φ)) and OneHotCategorical with logits (0, φ), f reading the second coordinate:
    the same exact mean and variance of the gradient w.r.t. φ (harness; 1e-9)."""
    tau = 0.8
    a = exact_moments(GumbelRao(tau, num_conditional=1), lambda p: Bernoulli(logits=p), (t(PHI),), bern_cost)
    b = exact_moments(
        GumbelRao(tau, num_conditional=1),
        lambda p: OneHotCategorical(logits=torch.stack([torch.zeros_like(p), p], -1)),
        (t(PHI),),
        lambda d: bern_cost(d[..., 1]),
    )
    torch.testing.assert_close(b.mean, a.mean, atol=1e-9, rtol=0)
    torch.testing.assert_close(b.variance, a.variance, atol=1e-9, rtol=0)


def test_gumbel_rao_one_draw_has_the_law_of_st_gumbel_softmax():
    """Bernoulli, M = 1: exact mean *and variance* of Gumbel-Rao equal those of GumbelSoftmax(hard=True)
    (the harness integrates the latter over its uniform, split where b jumps): the same estimator."""
    for tau in (0.5, 2.0):
        a = exact_moments(
            GumbelRao(tau, num_conditional=1), lambda p: Bernoulli(logits=p), (t(PHI),), bern_cost
        )
        b = exact_moments(
            scg.GumbelSoftmax(tau, hard=True), lambda p: Bernoulli(logits=p), (t(PHI),), bern_cost
        )
        torch.testing.assert_close(a.mean, b.mean, atol=1e-9, rtol=0)
        torch.testing.assert_close(a.variance, b.variance, atol=1e-9, rtol=0)


def test_gumbel_rao_variance_falls_with_the_number_of_conditional_draws():
    """Bernoulli, τ = 0.7: exact variances for M = 1, 2, 3 (harness) are strictly decreasing and equal
    Var_b(m_b) + E_b[v_b]/M, with m_b, v_b the conditional mean and variance of the one-draw gradient
    given b, from scipy integrals over the unconditional logistic noise (1e-8); the mean is the same."""
    tau = 0.7
    th = 1 / (1 + math.exp(-PHI))
    p = {0: 1 - th, 1: th}
    m = {b: st_gs_bernoulli(PHI, tau, 1, b) / p[b] for b in (0, 1)}
    v = {b: st_gs_bernoulli(PHI, tau, 2, b) / p[b] - m[b] ** 2 for b in (0, 1)}
    mean = sum(p[b] * m[b] for b in (0, 1))
    between = sum(p[b] * m[b] ** 2 for b in (0, 1)) - mean**2
    within = sum(p[b] * v[b] for b in (0, 1))
    variances = []
    for M in (1, 2, 3):
        mo = exact_moments(
            GumbelRao(tau, num_conditional=M), lambda q: Bernoulli(logits=q), (t(PHI),), bern_cost
        )
        assert abs(float(mo.mean) - mean) < 1e-9
        assert abs(float(mo.variance) - (between + within / M)) < 1e-8
        variances.append(float(mo.variance))
    assert variances[0] > variances[1] > variances[2] > between > 0


def multivariate_logistic_mean(theta: np.ndarray, tau: float, grad_f, n: int = 60) -> np.ndarray:
    """E[ĝ_{ST-GS}] for one categorical with K = 3 (numpy): ∫ p(d) J_τ(θ + (0, d))ᵀ ∇f(H(θ + (0, d))) dd
    over the differences d = (G₁ − G₀, G₂ − G₀) of iid Gumbels, density 2e^{−d₁−d₂}/(1 + e^{−d₁} + e^{−d₂})³,
    with J_τ the softmax Jacobian at x/τ over τ. Gauss–Legendre (n nodes per piece) on [−40, 40]², split
    where the argmax changes: d₁ = θ₀ − θ₁ outside, d₂ = θ₀ − θ₂ and d₂ = θ₁ + d₁ − θ₂ inside."""
    x, w = np.polynomial.legendre.leggauss(n)

    def pieces(edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # edges [..., P + 1] -> nodes, weights
        lo, hi = edges[..., :-1, None], edges[..., 1:, None]
        nodes = 0.5 * (hi - lo) * x + 0.5 * (hi + lo)
        return nodes.reshape(*edges.shape[:-1], -1), (0.5 * (hi - lo) * w).reshape(*edges.shape[:-1], -1)

    L = 40.0
    d1, w1 = pieces(np.array([-L, theta[0] - theta[1], L]))
    cuts = np.sort(np.stack([np.full_like(d1, theta[0] - theta[2]), theta[1] + d1 - theta[2]], -1), -1)
    d2, w2 = pieces(np.concatenate([np.full((len(d1), 1), -L), cuts, np.full((len(d1), 1), L)], -1))
    d1 = np.broadcast_to(d1[:, None], d2.shape)
    xs = theta + np.stack([np.zeros_like(d2), d1, d2], -1)
    s = np.exp(xs / tau - (xs / tau).max(-1, keepdims=True))
    s /= s.sum(-1, keepdims=True)
    gf = grad_f(np.eye(3)[xs.argmax(-1)])
    jg = (s * gf - s * (s * gf).sum(-1, keepdims=True)) / tau
    e1, e2 = np.exp(-d1), np.exp(-d2)
    density = 2 * e1 * e2 / (1 + e1 + e2) ** 3
    return np.einsum("i,ij,ijk->k", w1, w2 * density, jg)


def test_gumbel_rao_categorical_exact_bias():
    """One categorical, K = 3, τ = 0.7, f(D) = sin(Dᵀ W v) + (a·D)²: the harness's exact mean of
    Gumbel-Rao's gradient (D enumerated, the 3 conditional uniforms integrated) equals the straight-
    through Gumbel-softmax mean integrated over the unconditional Gumbel noise (numpy Gauss–Legendre over
    the two Gumbel differences; 60 and 80 nodes per piece agree to 1e-12); the bias against ∇E[f]
    (plain enumeration) is nonzero."""
    tau = 0.7
    W, vv, a = logits_of(21, 3, 3).numpy(), logits_of(22, 3).numpy(), logits_of(23, 3).numpy()
    Wt, vt, at = (torch.from_numpy(x) for x in (W, vv, a))

    def f(d):
        return torch.sin(d @ Wt @ vt) + (d * at).sum(-1) ** 2

    def grad_f(d: np.ndarray) -> np.ndarray:
        return np.cos(d @ W @ vv)[..., None] * (W @ vv) + 2 * (d @ a)[..., None] * a

    theta = logits_of(24, 3)
    log_pi = torch.log_softmax(theta, -1).numpy()
    oracle = multivariate_logistic_mean(log_pi, tau, grad_f)
    assert np.abs(oracle - multivariate_logistic_mean(log_pi, tau, grad_f, n=80)).max() < 1e-12
    m = exact_moments(GumbelRao(tau, num_conditional=1), lambda p: OneHotCategorical(logits=p), (theta,), f)
    torch.testing.assert_close(m.mean, torch.from_numpy(oracle), atol=1e-9, rtol=0)
    th = theta.clone().requires_grad_(True)
    (exact,) = torch.autograd.grad((torch.softmax(th, -1) * f(torch.eye(3))).sum(), th)
    assert float((m.mean - exact).abs().max()) > 1e-2


def test_gumbel_rao_temperature():
    """τ changes the gradient, never the value: on the same draws the surrogate's value is identical
    (torch.equal) for τ ∈ {0.1, 1, 10⁶} and equals f at the draws. Large τ: per draw, τ·ĝ tends to
    (1/K)(I − 11ᵀ/K) ∂f/∂D (∂f/∂D by autograd at the draw; 1e-5 relative at τ = 10⁶). Small τ
    (Bernoulli): the mean tends to θ(1 − θ)·½(f′(0) + f′(1)) — the trapezoid rule for θ(1 − θ)(f(1) − f(0))
    — so the bias does not vanish for this non-quadratic f (harness at τ = 0.3, 0.1, 0.03)."""
    K, S = 4, 5
    theta0 = logits_of(31, 3, K)
    w = logits_of(32, 3, K)

    def f(z):
        return torch.sin((z * w).sum((-1, -2))) + (z * w).sum((-1, -2)) ** 2

    torch.manual_seed(9)
    draws = GumbelRao(1.0, num_conditional=4).draw(Independent(OneHotCategorical(logits=theta0), 1), S)
    values, grads = [], []
    for tau in (0.1, 1.0, 1e6):
        th = theta0.clone().requires_grad_(True)
        out = GumbelRao(tau, num_conditional=4).surrogate(
            f, Independent(OneHotCategorical(logits=th), 1), draws
        )
        values.append(out)
        grads.append(torch.autograd.grad(out, th)[0])
    assert torch.equal(values[0], values[1]) and torch.equal(values[1], values[2])
    torch.testing.assert_close(values[0], f(draws["z"]).mean(0), atol=1e-13, rtol=0)
    d = draws["z"].clone().requires_grad_(True)
    (df,) = torch.autograd.grad(f(d).sum(), d)
    centred = (df - df.mean(-1, keepdim=True)) / K
    limit = centred.mean(0)  # τ ĝ → mean over the S draws of (1/K)(I − 11ᵀ/K) ∂f/∂D
    torch.testing.assert_close(1e6 * grads[2], limit, atol=1e-5 * float(limit.abs().max()), rtol=0)

    th = 1 / (1 + math.exp(-PHI))
    trapezoid = th * (1 - th) * 0.5 * (bern_cost_derivative(0.0) + bern_cost_derivative(1.0))
    exact = th * (1 - th) * float(bern_cost(t(1.0)) - bern_cost(t(0.0)))
    gaps = []
    for tau in (0.3, 0.1, 0.03):
        m = exact_moments(
            GumbelRao(tau, num_conditional=1), lambda p: Bernoulli(logits=p), (t(PHI),), bern_cost
        )
        gaps.append(abs(float(m.mean) - trapezoid))
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-3
    assert abs(trapezoid - exact) > 5e-2


# ======================================================================================== ReinMax


def reinmax_matrix(pi0: np.ndarray, pi_tau: np.ndarray, k: int) -> np.ndarray:
    """2 J(π₁) − ½ J(π₀) with π₁ = (e_k + π_τ)/2: the map from ∂f/∂D to ReinMax's gradient at D = e_k."""
    return 2 * jac(0.5 * (np.eye(len(pi0))[k] + pi_tau)) - 0.5 * jac(pi0)


def one_categorical(p):
    return OneHotCategorical(logits=p)


@pytest.mark.parametrize("tau", [1.0, 1.5, 4.0, 1e3])
@pytest.mark.parametrize("K", [3, 5])
def test_reinmax_linear_cost(K, tau):
    """One categorical, f(D) = w·D. Per draw D = e_k the gradient is (2J(π₁) − ½J(π₀))w (checked on every
    k by replaying the draw); its exact mean (harness, enumeration) is
    (diag π_τ − ½(π₀π_τᵀ + π_τπ₀ᵀ + π_τπ_τᵀ − π₀π₀ᵀ)) w, computed here from π₀ = softmax θ and
    π_τ = softmax(θ/τ). At τ = 1 that is J(π₀)w = ∇E[f] exactly (unbiased), with a nonzero variance;
    for τ > 1 it is biased."""
    theta = logits_of(40 + K, K)
    w = logits_of(50 + K, K)

    def f(d):
        return (d * w).sum(-1)

    pi0 = torch.softmax(theta, -1).numpy()
    pit = torch.softmax(theta / tau, -1).numpy()
    est = ReinMax(tau)
    for k in range(K):
        th = theta.clone().requires_grad_(True)
        out = est.surrogate(f, one_categorical(th), {"z": torch.eye(K)[k].reshape(1, K)})
        (g,) = torch.autograd.grad(out, th)
        torch.testing.assert_close(
            g, torch.from_numpy(reinmax_matrix(pi0, pit, k) @ w.numpy()), atol=1e-13, rtol=0
        )
    m = exact_moments(est, one_categorical, (theta,), f)
    closed = np.diag(pit) - 0.5 * (
        np.outer(pi0, pit) + np.outer(pit, pi0) + np.outer(pit, pit) - np.outer(pi0, pi0)
    )
    torch.testing.assert_close(m.mean, torch.from_numpy(closed @ w.numpy()), atol=1e-12, rtol=0)
    th = theta.clone().requires_grad_(True)
    (exact,) = torch.autograd.grad((torch.softmax(th, -1) * w).sum(), th)
    if tau == 1.0:
        torch.testing.assert_close(m.mean, exact, atol=1e-12, rtol=0)
        assert float(m.variance.max()) > 1e-3
    else:
        assert float((m.mean - exact).abs().max()) > 1e-3


def test_reinmax_quadratic_cost_unbiased_at_unit_temperature():
    """τ = 1, one categorical (K = 4), f(D) = DᵀAD + b·D + c with A not symmetric: Heun's step is exact
    for quadratics, so the exact mean of ReinMax's gradient (harness) is ∇E[f] (plain enumeration), where
    straight-through's, E_k[J(π₀) ∂f/∂D(e_k)], is not; a cubic term makes ReinMax biased too."""
    K = 4
    theta = logits_of(61, K)
    A, b = logits_of(62, K, K), logits_of(63, K)

    def quadratic(d):
        return torch.einsum("...i,ij,...j->...", d, A, d) + (d * b).sum(-1) + 0.3

    def cubic(d):
        return quadratic(d) + (d * b).sum(-1) ** 3

    def gradient(f):
        th = theta.clone().requires_grad_(True)
        return torch.autograd.grad((torch.softmax(th, -1) * f(torch.eye(K))).sum(), th)[0]

    exact = gradient(quadratic)
    m = exact_moments(ReinMax(1.0), one_categorical, (theta,), quadratic)
    torch.testing.assert_close(m.mean, exact, atol=1e-12, rtol=0)
    pi0 = torch.softmax(theta, -1).numpy()
    grad_f = (A + A.T).numpy() @ np.eye(K) + b.numpy()[:, None]  # column k: ∂f/∂D at D = e_k
    straight_through = jac(pi0) @ grad_f @ pi0  # E_k[J(π₀) ∂f/∂D(e_k)]
    assert float((torch.from_numpy(straight_through) - exact).abs().max()) > 1e-2
    cube = exact_moments(ReinMax(1.0), one_categorical, (theta,), cubic)
    assert float((cube.mean - gradient(cubic)).abs().max()) > 1e-2


def test_reinmax_bernoulli_is_its_two_class_case():
    """Bernoulli(σ(φ)) and OneHotCategorical with logits (0, φ) on the same draws (batch [3, 2]), f reading
    b (the second coordinate): the same value and the same gradient w.r.t. φ, for τ = 1 and 2.5 (1e-12);
    and for Bernoulli the gradient is (2p₁(1 − p₁) − ½p₀(1 − p₀)) f′(b), p₁ = (b + σ(φ/τ))/2."""
    phi0 = logits_of(71, 3, 2)

    def g(b):
        return torch.sin(2 * b).sum(-1) + b.sum(-1) ** 2

    torch.manual_seed(2)
    bits = Independent(Bernoulli(logits=phi0), 1).sample((4,))
    for tau in (1.0, 2.5):
        pa, pb = phi0.clone().requires_grad_(True), phi0.clone().requires_grad_(True)
        a = ReinMax(tau).surrogate(g, Independent(Bernoulli(logits=pa), 1), {"z": bits})
        two = torch.stack([torch.zeros_like(pb), pb], -1)
        b = ReinMax(tau).surrogate(
            lambda d: g(d[..., 1]),
            Independent(OneHotCategorical(logits=two), 1),
            {"z": torch.stack([1 - bits, bits], -1)},
        )
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
        ga, gb = torch.autograd.grad(a.sum(), pa)[0], torch.autograd.grad(b.sum(), pb)[0]
        torch.testing.assert_close(ga, gb, atol=1e-12, rtol=0)
        p0 = torch.sigmoid(phi0)
        p1 = 0.5 * (bits + torch.sigmoid(phi0 / tau))
        slope = 2 * torch.cos(2 * bits) + 2 * bits.sum(-1, keepdim=True)  # f′(b) per unit
        expect = ((2 * p1 * (1 - p1) - 0.5 * p0 * (1 - p0)) * slope).mean(0)
        torch.testing.assert_close(ga, expect, atol=1e-12, rtol=0)


def test_reinmax_value_does_not_depend_on_temperature():
    """20 latents × 10 classes (Categorical, index samples; f receives one-hot vectors): on the same
    draws the value is identical for τ ∈ {1, 3, 100} (torch.equal) and is f at the one-hot draws; the
    gradient changes with τ."""
    theta0 = logits_of(81, 20, 10)
    w = logits_of(82, 20, 10)

    def f(d):
        return torch.cos((d * w).sum((-1, -2)))

    torch.manual_seed(1)
    draws = ReinMax().draw(Independent(Categorical(logits=theta0), 1), 3)
    outs, grads = [], []
    for tau in (1.0, 3.0, 100.0):
        th = theta0.clone().requires_grad_(True)
        out = ReinMax(tau).surrogate(f, Independent(Categorical(logits=th), 1), draws)
        outs.append(out)
        grads.append(torch.autograd.grad(out, th)[0])
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    torch.testing.assert_close(outs[0], f(F.one_hot(draws["z"], 10).double()).mean(0), atol=1e-13, rtol=0)
    assert float((grads[0] - grads[1]).abs().max()) > 1e-3 and float((grads[1] - grads[2]).abs().max()) > 1e-3


# ================================================================ two-layer categorical graph


def graph_layout(D1: int, K1: int, D2: int, K2: int) -> dict[str, tuple[int, ...]]:
    """Named slices of the flat parameter vector: both layers' logits and the costs' own weights."""
    return {
        "A1": (D1, K1),  # q(h1) = Π_d Cat(softmax A1_d)
        "W": (D2 * K2, D1 * K1),
        "c": (D2, K2),  # q(h2 | h1) = Π_d Cat(softmax (W h1 + c)_d)
        "T1": (D1, K1),  # cost 1: Σ T1 ⊙ h1
        "B": (D1 * K1, D2 * K2),
        "T2": (D2, K2),  # cost 2: sin(h1ᵀ B h2) + (Σ T2 ⊙ h2)²
    }


def graph_unpack(p: torch.Tensor, sizes: tuple[int, int, int, int]) -> dict[str, torch.Tensor]:
    out, i, lead = {}, 0, p.shape[:-1]
    for name, shape in graph_layout(*sizes).items():
        k = math.prod(shape)
        out[name] = p[..., i : i + k].reshape(*lead, *shape)
        i += k
    return out


def graph_params(sizes: tuple[int, int, int, int], seed: int = 91) -> torch.Tensor:
    n = sum(math.prod(s) for s in graph_layout(*sizes).values())
    return logits_of(seed, n, scale=0.9)


def layer2_logits(P: dict, h1: torch.Tensor, sizes) -> torch.Tensor:
    """(W h1 + c) as [..., D2, K2], broadcasting ``W [*B, m, n]`` against ``h1 [..., *B, D1, K1]``."""
    D1, K1, D2, K2 = sizes
    flat = h1.reshape(*h1.shape[:-2], D1 * K1)
    return (P["W"] * flat.unsqueeze(-2)).sum(-1).reshape(*flat.shape[:-1], D2, K2) + P["c"]


def costs(P: dict, h1: torch.Tensor, h2: torch.Tensor, sizes) -> tuple[torch.Tensor, torch.Tensor]:
    D1, K1, D2, K2 = sizes
    f1, f2 = h1.reshape(*h1.shape[:-2], D1 * K1), h2.reshape(*h2.shape[:-2], D2 * K2)
    c1 = (h1 * P["T1"]).sum((-1, -2))
    c2 = torch.sin(((f1.unsqueeze(-1) * P["B"]).sum(-2) * f2).sum(-1)) + (h2 * P["T2"]).sum((-1, -2)) ** 2
    return c1, c2


def build_graph(g: scg.Graph, p: torch.Tensor, est1, est2, sizes):
    P = graph_unpack(p, sizes)
    h1 = g.sample("h1", Independent(OneHotCategorical(logits=P["A1"]), 1), est1)
    h2 = g.sample("h2", Independent(OneHotCategorical(logits=layer2_logits(P, h1, sizes)), 1), est2)
    c1, c2 = costs(P, h1, h2, sizes)
    g.cost("c1", c1)
    g.cost("c2", c2)
    return h1, h2


def one_hots(D: int, K: int) -> list[torch.Tensor]:
    """Every joint value of D categoricals with K classes, one-hot [D, K]."""
    return [torch.eye(K, dtype=torch.float64)[list(v)] for v in itertools.product(range(K), repeat=D)]


def log_cat(h: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    return (h * torch.log_softmax(logits, -1)).sum((-1, -2))


def graph_oracle_gradient(p0: torch.Tensor, sizes) -> torch.Tensor:
    """∇ E[c1 + c2] by plain enumeration of (h1, h2): log-softmax and the costs, no torch.distributions."""
    D1, K1, D2, K2 = sizes
    p = p0.clone().requires_grad_(True)
    P = graph_unpack(p, sizes)
    total = p.new_zeros(())
    for h1 in one_hots(D1, K1):
        w1 = torch.exp(log_cat(h1, P["A1"]))
        for h2 in one_hots(D2, K2):
            w2 = torch.exp(log_cat(h2, layer2_logits(P, h1, sizes)))
            c1, c2 = costs(P, h1, h2, sizes)
            total = total + w1 * w2 * (c1 + c2)
    return torch.autograd.grad(total, p)[0]


def indecater_copies(h: torch.Tensor) -> torch.Tensor:
    """IndeCateR's copies of a one-hot h [D, K]: h, then h with variable d set to class k (d-major)."""
    D, K = h.shape
    rows = [h]
    for d in range(D):
        for k in range(K):
            r = h.clone()
            r[d] = torch.eye(K, dtype=h.dtype)[k]
            rows.append(r)
    return torch.stack(rows)


GRAPH_CASES = {
    "indecater_both": ("indecater", "indecater", (2, 3, 1, 2)),
    "score_then_indecater": ("score", "indecater", (1, 3, 2, 3)),
    "indecater_then_score": ("indecater", "score", (2, 3, 1, 2)),
}


@pytest.mark.parametrize("case", list(GRAPH_CASES))
def test_indecater_graph_node_exact(case):
    """IndeCateR as a scg.Graph node of a categorical → categorical model (layer 1: D1 latents × K1
    classes; layer 2's logits linear in h1; costs Σ T1⊙h1 and sin(h1ᵀBh2) + (Σ T2⊙h2)², every parameter a
    slice of one flat vector), at one or both layers with ScoreFunction() at the other. E[∇ surrogate]
    by enumeration of the replayed draws: h1's value (its copies, checked against the copies built
    here when layer 1 is IndeCateR) and every joint value of h2 drawn once per copy of h1, weighted by
    q(h1) Π_r q(h2_r | copy_r). The h2 values of one h1 are the batch elements of one graph, batch element
    j using parameters stop(p) + w_j (p − stop(p)) (same values, gradient scaled by its weight). Equal to
    ∇ of the plain enumeration of E[c1 + c2] (1e-10)."""
    kind1, kind2, sizes = GRAPH_CASES[case]
    D1, K1, D2, K2 = sizes
    make = {"indecater": IndeCateR, "score": scg.ScoreFunction}
    p0 = graph_params(sizes)
    p = p0.clone().requires_grad_(True)
    P0 = graph_unpack(p0, sizes)
    estimate = torch.zeros_like(p0)
    mass = 0.0
    for h1 in one_hots(D1, K1):
        rows = indecater_copies(h1) if kind1 == "indecater" else h1.unsqueeze(0)  # [C1, D1, K1]
        w1 = float(torch.exp(log_cat(h1, P0["A1"])))
        combos = list(itertools.product(one_hots(D2, K2), repeat=len(rows)))
        z2 = torch.stack([torch.stack(c) for c in combos], 1)  # [C1, N, D2, K2]
        w2 = torch.exp(log_cat(z2, layer2_logits(P0, rows.unsqueeze(1), sizes))).prod(0)  # [N]
        weights = w1 * w2
        N = len(combos)
        pj = p.detach() + weights.unsqueeze(-1) * (p - p.detach())  # [N, P]
        g = scg.Graph(
            num_samples=1,
            draws={
                "h1": {"z": h1.expand(1, N, D1, K1)},
                "h2": {"z": z2.unsqueeze(1) if kind1 == "indecater" else z2},
            },
        )
        v1, _ = build_graph(g, pj, make[kind1](), make[kind2](), sizes)
        if kind1 == "indecater":
            assert torch.equal(v1.detach()[:, 0], rows.unsqueeze(1).expand(len(rows), N, D1, K1))
        estimate += torch.autograd.grad(g.surrogate(), p)[0]
        mass += float(weights.sum())
    assert abs(mass - 1.0) < 1e-12
    exact = graph_oracle_gradient(p0, sizes)
    assert float(exact.abs().max()) > 0.1
    torch.testing.assert_close(estimate, exact, atol=1e-10, rtol=0)


def nested_expectation(p: torch.Tensor, est1, est2, S: int, sizes) -> torch.Tensor:
    """expectation(h1 ↦ expectation(h2 ↦ c1 + c2, q2(h1), est2, 1), q1, est1, S)."""
    P = graph_unpack(p, sizes)

    def outer(h1):
        def inner(h2):
            c1, c2 = costs(P, h1, h2, sizes)
            return c1 + c2

        q2 = Independent(OneHotCategorical(logits=layer2_logits(P, h1, sizes)), 1)
        return scg.expectation(inner, q2, est2, num_samples=1)

    return scg.expectation(outer, Independent(OneHotCategorical(logits=P["A1"]), 1), est1, num_samples=S)


@pytest.mark.parametrize(
    ("name1", "name2"), [("gumbel_rao", "gumbel_rao"), ("reinmax", "reinmax"), ("gumbel_rao", "reinmax")]
)
def test_biased_estimators_graph_equals_nested_expectation(name1, name2):
    """Gumbel-Rao (τ = 0.7, M = 3) and ReinMax (τ = 1.5) as nodes of the two-layer categorical graph
    (3 latents × 4 classes, then 2 × 3), S = 5, seed 7: the graph's surrogate value and its gradient
    equal those of the nested scg.expectation form on the same seed (the same draws in the same order;
    rtol 1e-12), and the gradient reaches both layers' parameters and the costs' own."""
    sizes = (3, 4, 2, 3)
    make = {"gumbel_rao": lambda: GumbelRao(0.7, num_conditional=3), "reinmax": lambda: ReinMax(1.5)}
    p0 = graph_params(sizes, seed=92)
    S = 5
    p = p0.clone().requires_grad_(True)
    torch.manual_seed(7)
    g = scg.Graph(num_samples=S)
    h1, h2 = build_graph(g, p, make[name1](), make[name2](), sizes)
    assert h1.shape == (S, 3, 4) and h2.shape == (S, 2, 3)
    s_graph = g.surrogate()
    (grad_graph,) = torch.autograd.grad(s_graph, p)
    q = p0.clone().requires_grad_(True)
    torch.manual_seed(7)
    s_nested = nested_expectation(q, make[name1](), make[name2](), S, sizes)
    (grad_nested,) = torch.autograd.grad(s_nested, q)
    torch.testing.assert_close(s_graph, s_nested, rtol=1e-12, atol=0)
    torch.testing.assert_close(grad_graph, grad_nested, rtol=1e-12, atol=1e-14)
    parts = graph_unpack(grad_graph, sizes)
    for name in ("A1", "W", "c", "T1", "B", "T2"):
        assert float(parts[name].abs().max()) > 1e-3, name


# ===================================================================================== bad inputs


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: GumbelRao(0.0), ValueError, r"`temperature` must be positive and finite; got 0.0"),
        (lambda: GumbelRao(-0.5), ValueError, r"`temperature` must be positive and finite; got -0.5"),
        (lambda: GumbelRao("1"), TypeError, r"`temperature` must be a positive float; got str"),
        (lambda: GumbelRao(num_conditional=0), ValueError, r"`num_conditional` must be >= 1; got 0"),
        (lambda: GumbelRao(num_conditional=2.0), TypeError, r"`num_conditional` must be an int; got float"),
        (lambda: GumbelRao(num_conditional=True), TypeError, r"`num_conditional` must be an int; got bool"),
        (lambda: ReinMax(0.5), ValueError, r"`temperature` must be >= 1 for ReinMax .*; got 0.5"),
        (lambda: ReinMax(math.inf), ValueError, r"`temperature` must be positive and finite; got inf"),
        (lambda: ReinMax(None), TypeError, r"`temperature` must be a positive float; got NoneType"),
    ],
)
def test_bad_arguments(make, error, message):
    with pytest.raises(error, match=message):
        make()


@pytest.mark.parametrize("make", [GumbelRao, ReinMax, IndeCateR], ids=["GumbelRao", "ReinMax", "IndeCateR"])
def test_unsupported_distribution(make):
    """A Normal (also inside Independent) is refused by scg.expectation and by a graph node, naming `dist`,
    the families that apply and what was given."""
    name = make.__name__
    message = rf"`dist` must be Bernoulli, Categorical or OneHotCategorical \(optionally Independent\) for {name}; got Normal"
    with pytest.raises(TypeError, match=message):
        scg.expectation(lambda z: z, Normal(t(0.0), t(1.0)), make(), num_samples=2)
    with pytest.raises(TypeError, match=message):
        scg.Graph(num_samples=2).sample("z", Independent(Normal(t(0.0, 1.0), t(1.0, 1.0)), 1), make())
    with pytest.raises(TypeError, match=r"`dist` must be a torch.distributions.Distribution; got str"):
        make().laws("not a distribution", 1)


def test_docstring_examples_run_and_evaluations():
    import doctest

    from scg.estimators import gumbel_rao, indecater, reinmax

    for module in (gumbel_rao, reinmax, indecater):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0 and result.attempted > 0, module.__name__
    q = Independent(OneHotCategorical(logits=torch.zeros(20, 10)), 1)
    assert GumbelRao(num_conditional=7).evaluations(q, 4) == 4 and ReinMax().evaluations(q, 4) == 4
    assert IndeCateR().evaluations(q, 4) == 4 * 201
    assert IndeCateR().evaluations(Bernoulli(logits=torch.zeros(3)), 4) == 4 * 3
