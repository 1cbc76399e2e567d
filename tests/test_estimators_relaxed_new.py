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
