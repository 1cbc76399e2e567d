"""RELAX and REBAR on categorical latents (Categorical, OneHotCategorical, Independent products).

The oracles are plain torch, written independently of scg: the exact gradient ∇E[f] by
enumeration of the classes (autograd through Σ_b p(b) f(b)); one draw's estimate by its
formula — b by inverse CDF (``searchsorted``), z | b and z̃ | b by conditional Gumbel
resampling written with ``gather``/``scatter``, ĝ by autograd — and the control
variate's variance gradient by double backward through that formula.

Exact expectations: by the harness (:func:`scg.testing.assert_unbiased`) for K = 2; for
K = 2, 3, a 2 × 2 product and a scg.Graph node (K = 3 → Bernoulli) by a quadrature written
here, which uses that, given b, the estimate is a sum of a function of z's noise u and a
function of z̃'s noise v (see :func:`additive_grid`), so u and v can share one grid. The
construction's conditional law is checked on its own (:func:`test_z_and_z_tilde_have_the_gumbel_law_given_b`).
K = 5 and 10 and products of 2–3 latents are checked by sampling, with a stated
false-failure rate and a shown power.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Bernoulli, Categorical, Independent, Normal, OneHotCategorical

import scg
from scg.estimators import NeuralControlVariate, REBARControlVariate
from scg.estimators.relax import _categorical_sample
from scg.testing import assert_unbiased
from scg.testing import quadrature as Q

pytestmark = pytest.mark.usefixtures("one_thread_module", "float64")


def t(*v: float) -> Tensor:
    return torch.tensor(v, dtype=torch.float64)


# ------------------------------------------------------------------ oracles (plain torch)


def exact_gradient(alpha0: Tensor, f: Callable[[Tensor], Tensor]) -> Tensor:
    """∇_α E[f(b)] for independent one-hot latents ``b_l ~ Cat(softmax(α_l))``, ``α [L, K]``, by enumeration."""
    alpha = alpha0.clone().requires_grad_(True)
    L, K = alpha.shape
    index = torch.tensor(list(itertools.product(range(K), repeat=L)))  # [K^L, L]
    b = F.one_hot(index, K).double()  # [K^L, L, K]
    p = torch.exp((b * torch.log_softmax(alpha, -1)).sum((-1, -2)))
    return torch.autograd.grad((p * f(b)).sum(), alpha)[0]


def conditional(theta: Tensor, index: Tensor, v: Tensor) -> Tensor:
    """z ~ log θ + Gumbel given argmax z = index: z_b = −log(−log v_b), z_i = −log(−log v_i / θ_i − log v_b)."""
    v_top = v.gather(-1, index.unsqueeze(-1))
    z = -torch.log(-torch.log(v) / theta - torch.log(v_top))
    return z.scatter(-1, index.unsqueeze(-1), -torch.log(-torch.log(v_top)))


def draw_index(theta: Tensor, w: Tensor) -> Tensor:
    """b by inverse CDF: the class whose cumulative-probability interval holds w."""
    cdf = theta.cumsum(-1)
    return (
        torch.searchsorted(cdf, w.unsqueeze(-1).contiguous(), right=True)
        .squeeze(-1)
        .clamp(max=theta.shape[-1] - 1)
    )


def oracle_estimates(
    alpha0: Tensor,
    draws: dict[str, Tensor],
    f: Callable[[Tensor], Tensor],
    c: Callable[[Tensor], Tensor],
    *,
    drop_tilde_gradient: bool = False,
) -> Tensor:
    """Per-draw estimates ĝ_s ``[S, *alpha.shape]`` by the formula, with a graph (for ψ's gradient).

    ĝ = [f(b) − c(z̃)] ∇ log p(b) + ∇c(z) − ∇c(z̃), z = log θ + g with g = z(θ0) − log θ0 fixed,
    z̃ the conditional sample at θ (v fixed). ``drop_tilde_gradient`` leaves out −∇c(z̃): a biased
    variant, for showing that a test has power.
    """
    w, u, v = draws["w"], draws["u"], draws["v"]
    theta0 = torch.softmax(alpha0, -1).expand(u.shape)
    index = draw_index(theta0, w)
    b = F.one_hot(index, u.shape[-1]).double()
    g = conditional(theta0, index, u) - torch.log(theta0)
    alpha = alpha0.detach().expand(u.shape).clone().requires_grad_(True)  # one copy per draw
    theta = torch.softmax(alpha, -1)
    event = tuple(range(1, u.dim()))
    log_p = (b * torch.log(theta)).sum(event)
    z, z_tilde = torch.log(theta) + g, conditional(theta, index, v)
    objective = (f(b) - c(conditional(theta0, index, v))) * log_p + c(z)
    if not drop_tilde_gradient:
        objective = objective - c(z_tilde)
    return torch.autograd.grad(objective.sum(), alpha, create_graph=True)[0]


# ------------------------------------------------------------------ costs and control variates


def quadratic_cost(A: Tensor, target: float = 0.3) -> Callable[[Tensor], Tensor]:
    """f(b) = (Σ_l ⟨b_l, A_l⟩ − target)² + ⟨b_0, b_last⟩: couples the latents, defined on the simplex."""

    def f(b: Tensor) -> Tensor:
        return ((b * A).sum((-1, -2)) - target) ** 2 + (b[..., 0, :] * b[..., -1, :]).sum(-1)

    return f


class SimplexNet(nn.Module):
    """A control-variate net on the relaxed sample: ``[S, *batch, L, K] -> [S, *batch]``, a tanh MLP of softmax(z)."""

    def __init__(self, L: int, K: int, hidden: int = 5, seed: int = 3) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.w1 = nn.Parameter(torch.randn(L * K, hidden, generator=gen, dtype=torch.float64))
        self.w2 = nn.Parameter(torch.randn(hidden, generator=gen, dtype=torch.float64) / hidden)

    def forward(self, z: Tensor) -> Tensor:
        s = torch.softmax(z, -1).flatten(-2)
        return torch.tanh(s @ self.w1) @ self.w2


def rebar_of(cv: REBARControlVariate, f: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """REBAR's c(z) = η f(softmax(z/λ)) by hand, on the module's own parameter tensors."""
    return lambda z: cv.eta * f(torch.softmax(z / cv.log_temperature.exp(), -1))


def one_hot_dist(alpha: Tensor) -> Independent:
    return Independent(OneHotCategorical(logits=alpha), 1)


# ------------------------------------------------------------------ 1. single-draw oracles


CONTROL_VARIATES = {
    "rebar": lambda L, K: REBARControlVariate(eta=0.8, temperature=0.6),
    "neural+rebar": lambda L, K: NeuralControlVariate(SimplexNet(L, K), rebar=True),
}


def oracle_cv(cv: nn.Module, f: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    if isinstance(cv, REBARControlVariate):
        return rebar_of(cv, f)
    assert isinstance(cv, NeuralControlVariate) and cv.rebar is not None
    rebar = rebar_of(cv.rebar, f)
    return lambda z: cv.net(z) + rebar(z)


@pytest.mark.parametrize("name", list(CONTROL_VARIATES))
def test_single_draw_oracle_with_variance_gradient(name):
    """3 latents × 4 classes, S = 3 replayed draws, float64: the logits' gradient is mean_s ĝ_s and
    every control-variate parameter's gradient is ∇_ψ (1/S) Σ_s ‖ĝ_s‖² (the variance-minimising
    gradient: E‖ĝ‖² = Var + ‖∇E f‖², whose last term does not depend on ψ), both from the
    plain-torch formula (double backward), to 1e-10."""
    L, K, S = 3, 4, 3
    gen = torch.Generator().manual_seed(5)
    alpha0 = torch.randn(L, K, generator=gen, dtype=torch.float64)
    f = quadratic_cost(torch.randn(L, K, generator=gen, dtype=torch.float64))
    cv = CONTROL_VARIATES[name](L, K)
    est = scg.RELAX(cv)
    alpha = alpha0.clone().requires_grad_(True)
    dist = one_hot_dist(alpha)
    draws = est.draw(dist, S, generator=gen)
    assert {k: tuple(x.shape) for k, x in draws.items()} == {"w": (S, L), "u": (S, L, K), "v": (S, L, K)}
    value = est.surrogate(f, dist, draws)
    value.backward()

    g = oracle_estimates(alpha0, draws, f, oracle_cv(cv, f))  # [S, L, K]
    index = draw_index(torch.softmax(alpha0, -1).expand(S, L, K), draws["w"])
    torch.testing.assert_close(value.detach(), f(F.one_hot(index, K).double()).mean(), rtol=0, atol=1e-12)
    torch.testing.assert_close(alpha.grad, g.mean(0).detach(), rtol=1e-10, atol=1e-12)
    params = list(cv.parameters())
    expected = torch.autograd.grad((g * g).sum() / S, params)
    assert len(params) >= 2
    for p, e in zip(params, expected, strict=True):
        assert float(e.abs().max()) > 1e-3  # a nontrivial variance gradient
        torch.testing.assert_close(p.grad, e, rtol=1e-10, atol=1e-12)


def test_categorical_equals_one_hot_on_the_same_draws():
    """Categorical and OneHotCategorical with the same logits give the same draws' laws, value and
    gradients (f receives one-hot vectors for both), also inside Independent."""
    gen = torch.Generator().manual_seed(2)
    alpha0 = torch.randn(2, 3, 5, generator=gen, dtype=torch.float64)
    A = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    f = lambda b: ((b * A).sum((-1, -2)) - 0.1) ** 2  # noqa: E731
    results = []
    for make in (
        lambda a: Independent(Categorical(logits=a), 1),
        lambda a: Independent(OneHotCategorical(logits=a), 1),
    ):
        est = scg.RELAX()
        alpha = alpha0.clone().requires_grad_(True)
        dist = make(alpha)
        draws = est.draw(dist, 4, generator=torch.Generator().manual_seed(9))
        out = est.surrogate(f, dist, draws)
        out.sum().backward()
        results.append((draws, out.detach(), alpha.grad, [p.grad for p in est.parameters()]))
    (d1, v1, g1, p1), (d2, v2, g2, p2) = results
    assert all(torch.equal(d1[k], d2[k]) for k in ("w", "u", "v"))
    assert torch.equal(v1, v2) and torch.equal(g1, g2)
    assert all(torch.equal(a, b) for a, b in zip(p1, p2, strict=True))


# ------------------------------------------------------------------ 2. exact: the harness, K = 2


def frozen(est: scg.RELAX) -> scg.RELAX:
    """The estimator with its control variate fixed (no variance gradient: its second-order pass is skipped)."""
    for p in est.parameters():
        p.requires_grad_(False)
    return est


class FirstClassNet(nn.Module):
    """A LAX-style net ``[S, *batch, K] -> [S, *batch]``: a cubic in the relaxed first-class weight."""

    def forward(self, z: Tensor) -> Tensor:
        s = torch.softmax(z, -1)[..., 0]
        return 0.4 * s - 1.1 * s**2 + 0.9 * s**3


HARNESS_CASES = {
    "rebar": lambda: frozen(scg.RELAX(REBARControlVariate(eta=0.8, temperature=0.7))),
    "neural": lambda: scg.RELAX(NeuralControlVariate(FirstClassNet(), rebar=False)),
}


#: Double-exponential nodes per piece and coordinate (u, v: 4 coordinates), and the tolerance. Errors
#: of the mean seen against the enumeration at 16 nodes: 1.6e-5 (REBAR), 5e-8 (the net); the
#: harness's own estimates, n vs 2n nodes, stay below its tolerance atol/10. The variant without
#: −∇c(z̃) is off by 0.020 (REBAR) and 0.014 (the net): the tolerance has power.
HARNESS_NODES = 16
HARNESS_ATOL = 5e-4


@pytest.mark.parametrize("name", list(HARNESS_CASES))
def test_unbiased_by_the_harness_two_classes(name):
    """K = 2, one OneHotCategorical latent: the harness integrates the declared laws (w's pieces at the
    cumulative probability, u and v by double-exponential rules) and compares with its own ∇E[f];
    ∇E[f] is also checked against the plain-torch enumeration."""
    alpha = t(0.3, -0.5)
    a = t(0.2, 1.0)
    f = lambda b: ((b * a).sum(-1) - 0.1) ** 2  # noqa: E731
    m = assert_unbiased(
        HARNESS_CASES[name](),
        lambda x: OneHotCategorical(logits=x),
        (alpha,),
        f,
        nodes=HARNESS_NODES,
        atol=HARNESS_ATOL,
        rtol=0.0,
    )
    exact = exact_gradient(alpha.reshape(1, 2), lambda b: f(b[:, 0])).reshape(-1)
    torch.testing.assert_close(m.mean, exact, rtol=0, atol=HARNESS_ATOL)
    assert float(exact.abs().max()) > 0.1


# ------------------------------------------------------------------ 3. exact: additive quadrature


def de_rule(n: int) -> tuple[Tensor, Tensor]:
    """The double-exponential (tanh-sinh) rule on (0, 1), nodes kept inside [2^-53, 1 − 2^-53], weights renormalised."""
    x, w = (torch.as_tensor(a) for a in Q.double_exponential(n, 0.0, 1.0))
    keep = (x >= 2.0**-53) & (x <= 1 - 2.0**-53)
    return x[keep], w[keep] / w[keep].sum()


def additive_grid(alpha0: Tensor, n: int) -> tuple[dict[str, Tensor], Tensor]:
    """Grid points (draws ``w [N, L]``, ``u``, ``v`` ``[N, L, K]``) and weights ``[N]`` whose weighted sum of
    the estimate is its expectation.

    The estimate is constant in w on each piece between cumulative probabilities (b is), so w is
    a piece's midpoint with the piece's length θ_b as weight: every joint b is enumerated. Given
    b, ĝ = A(u) + B(v): ∇c(z) depends on z's noise u alone, [f(b) − c(z̃)]∇log p(b) − ∇c(z̃) on
    z̃'s noise v alone. The expectation of a sum needs only the marginal laws of u and v, not
    their independence, so they share one tensor-product rule over the L·K coordinates, with
    v = 1 − u (also uniform): n^(LK) points per b instead of n^(2LK).
    """
    L, K = alpha0.shape
    theta = torch.softmax(alpha0, -1)
    mid = theta.cumsum(-1) - theta / 2
    x, wx = de_rule(n)
    cells = torch.cartesian_prod(*[torch.arange(len(x))] * (L * K)).reshape(-1, L * K)
    u, wu = x[cells].reshape(-1, L, K), wx[cells].prod(-1)
    rows = torch.arange(L)
    ws, us, weights = [], [], []
    for combo in itertools.product(range(K), repeat=L):
        b = torch.tensor(combo)
        ws.append(mid[rows, b].expand(len(u), L))
        us.append(u)
        weights.append(theta[rows, b].prod() * wu)
    u = torch.cat(us)
    return {"w": torch.cat(ws), "u": u, "v": 1 - u}, torch.cat(weights)


def weighted_gradient(est: scg.RELAX, alpha0: Tensor, f, draws: dict[str, Tensor], weight: Tensor) -> Tensor:
    """Σ_k weight_k ĝ(draw_k): the N draws as N batch elements of one surrogate, element k with logits
    ``stop(α) + weight_k (α − stop(α))`` (same values, gradient scaled by weight_k: the chain rule)."""
    total = torch.zeros_like(alpha0)
    for s in range(0, len(weight), 50_000):
        d = {k: x[s : s + 50_000].unsqueeze(0) for k, x in draws.items()}  # [1, chunk, ...]: S = 1
        wk = weight[s : s + 50_000]
        alpha = alpha0.clone().requires_grad_(True)
        logits = alpha.detach() + wk[:, None, None] * (alpha - alpha.detach())
        est.surrogate(f, one_hot_dist(logits), d).sum().backward()
        total += alpha.grad
    return total


QUADRATURE_CASES = {
    # name: (L, K, control variate, nodes, atol). Errors seen against the enumeration (nodes: error):
    # K2 32: 3e-9, 48: 4e-12; K3-rebar 32: 4e-8, 40: 1e-9; K3-neural 32: 4e-7, 40: 3e-8;
    # 2x2 16: 7e-5, 20: 6e-6, 24: 5e-7. The variant without −∇c(z̃) is off by 0.035, 0.15, 0.18, 0.044.
    "K2-rebar": (1, 2, lambda L, K: REBARControlVariate(eta=0.8, temperature=0.6), 48, 1e-10),
    "K3-rebar": (1, 3, lambda L, K: REBARControlVariate(eta=0.8, temperature=0.6), 40, 1e-8),
    "K3-neural": (1, 3, lambda L, K: NeuralControlVariate(SimplexNet(L, K), rebar=True), 40, 2e-7),
    "2x2-rebar": (2, 2, lambda L, K: REBARControlVariate(eta=1.2, temperature=0.5), 20, 5e-5),
}


@pytest.mark.parametrize("name", list(QUADRATURE_CASES))
def test_unbiased_by_additive_quadrature(name):
    """E[ĝ] = ∇E[f] for K = 2, K = 3 and a product of two binary-class latents: the estimator's
    expectation on :func:`additive_grid` against the plain-torch enumeration. The tolerance has
    power: on the same grid the oracle's variant without −∇c(z̃) is off by more than 100 × atol."""
    L, K, make_cv, nodes, atol = QUADRATURE_CASES[name]
    gen = torch.Generator().manual_seed(100 + 10 * L + K)
    alpha0 = torch.randn(L, K, generator=gen, dtype=torch.float64)
    f = quadratic_cost(torch.randn(L, K, generator=gen, dtype=torch.float64))
    cv = make_cv(L, K)
    draws, weight = additive_grid(alpha0, nodes)
    assert abs(float(weight.sum()) - 1.0) < 1e-12
    mean = weighted_gradient(scg.RELAX(cv), alpha0, f, draws, weight)
    exact = exact_gradient(alpha0, f)
    assert float(exact.abs().max()) > 0.05
    torch.testing.assert_close(mean, exact, rtol=0, atol=atol)
    biased = oracle_estimates(alpha0, draws, f, oracle_cv(cv, f), drop_tilde_gradient=True)
    biased_mean = (weight[:, None, None] * biased.detach()).sum(0)
    assert float((biased_mean - exact).abs().max()) > 100 * atol


def test_z_and_z_tilde_have_the_gumbel_law_given_b():
    """The construction's (b, z) and (b, z̃): b = argmax z = argmax z̃ at every point, P(b) = θ, and
    z = log θ + g with g iid Gumbel: E[Π_k exp(−t_k e^{−z_k})] = Π_k θ_k / (θ_k + t_k) (e^{−g} ~
    Exp(1)), for z (noise u) and for z̃ (noise v), by quadrature over the pieces of w and u."""
    alpha0 = t(0.4, -0.3, 1.1).reshape(1, 3)
    theta = torch.softmax(alpha0, -1)[0]
    draws, weight = additive_grid(alpha0, 48)
    w, u, v = draws["w"], draws["u"], draws["v"]
    sample = _categorical_sample(alpha0.expand(u.shape[1:]), w, u, v, (1, 2))
    z, z_tilde = sample.relaxed(sample.phi0)
    index = draw_index(theta.expand(u.shape), w)
    assert torch.equal(sample.value, F.one_hot(index, 3).double())
    assert torch.equal(z.argmax(-1), index) and torch.equal(z_tilde.argmax(-1), index)
    torch.testing.assert_close((weight[:, None, None] * sample.value).sum(0)[0], theta, rtol=0, atol=1e-14)
    tk = t(0.5, 2.0, 1.0)
    expected = (theta / (theta + tk)).prod()
    for x in (z, z_tilde):
        moment = (weight * torch.exp(-(tk * torch.exp(-x[:, 0])).sum(-1))).sum()
        torch.testing.assert_close(moment, expected, rtol=0, atol=1e-9)


# ------------------------------------------------------------------ 4. sampled: K = 5, 10 and products

#: (L latents, K classes, N draws). N is chosen for power: the variant without −∇c(z̃) reaches
#: max |z| of 17.7, 11.2, 8.4 and 8.1 on these draws (the estimator: 1.7, 2.0, 2.7, 2.2) (asserted > 5 below).
SAMPLED_CASES = [(1, 5, 40_000), (1, 10, 40_000), (2, 10, 100_000), (3, 5, 100_000)]
Z_THRESHOLD = 5.0  # two-sided normal tail 5.7e-7 per component; ≤ 30 components: ≤ 2e-5 per case


@pytest.mark.parametrize("L,K,N", SAMPLED_CASES, ids=[f"{L}x{K}" for L, K, _ in SAMPLED_CASES])
def test_unbiased_by_sampling(L, K, N):
    """RELAX() (REBAR's control variate, η and λ trainable) on an Independent product of L
    OneHotCategorical(K) latents: N independent single-draw estimates (N batch elements, S = 1),
    each equal to the plain-torch oracle on its draw (1e-10), their mean within Z_THRESHOLD
    standard errors of the enumerated ∇E[f] in every component; the biased variant (without
    −∇c(z̃)) on the same draws is beyond it, so the test has power."""
    gen = torch.Generator().manual_seed(1000 + 10 * L + K)
    alpha0 = torch.randn(L, K, generator=gen, dtype=torch.float64)
    f = quadratic_cost(torch.randn(L, K, generator=gen, dtype=torch.float64))
    est = scg.RELAX()
    logits = alpha0.expand(N, L, K).clone().requires_grad_(True)
    dist = one_hot_dist(logits)
    draws = est.draw(dist, 1, generator=gen)
    est.surrogate(f, dist, draws).sum().backward()
    estimates = logits.grad.reshape(N, -1)
    single = {k: x[0] for k, x in draws.items()}  # [N, ...]: the N draws as S = N for the oracle
    cv = oracle_cv(est.control_variate, f)
    oracle = oracle_estimates(alpha0, single, f, cv).detach().reshape(N, -1)
    torch.testing.assert_close(estimates, oracle, rtol=1e-10, atol=1e-12)
    exact = exact_gradient(alpha0, f).reshape(-1)

    def z_scores(g: Tensor) -> Tensor:
        return (g.mean(0) - exact) / (g.std(0) / math.sqrt(N))

    assert float(z_scores(estimates).abs().max()) < Z_THRESHOLD
    biased = oracle_estimates(alpha0, single, f, cv, drop_tilde_gradient=True).detach().reshape(N, -1)
    assert float(z_scores(biased).abs().max()) > Z_THRESHOLD


# ------------------------------------------------------------------ 5. a scg.Graph node

GX = (1.0, 0.0, 1.0)  # the data point
GD, GK, GN2 = 3, 3, 2  # data bits, classes of h1, Bernoulli units of h2


def graph_layout() -> dict[str, tuple[int, ...]]:
    return {
        "W1": (GK, GD),
        "c1": (GK,),  # q(h1 | x) = Cat(softmax(W1 x + c1)), h1 one-hot
        "W2": (GN2, GK),
        "c2": (GN2,),  # q(h2 | h1) = Bern(σ(W2 h1 + c2))
        "a2": (GN2,),  # p(h2) = Bern(σ(a2))
        "V1": (GK, GN2),
        "d1": (GK,),  # p(h1 | h2) = Cat(softmax(V1 h2 + d1))
        "V0": (GD, GK),
        "d0": (GD,),  # p(x | h1) = Bern(σ(V0 h1 + d0))
    }


def graph_unpack(p: Tensor) -> dict[str, Tensor]:
    out, i, lead = {}, 0, p.shape[:-1]
    for name, shape in graph_layout().items():
        k = math.prod(shape)
        out[name] = p[..., i : i + k].reshape(*lead, *shape)
        i += k
    return out


def bmv(W: Tensor, h: Tensor) -> Tensor:
    """``W [*B, m, n]`` times ``h [..., *B, n]`` -> ``[..., *B, m]``."""
    return (W * h.unsqueeze(-2)).sum(-1)


def log_bern(h: Tensor, logits: Tensor) -> Tensor:
    return (h * F.logsigmoid(logits) + (1 - h) * F.logsigmoid(-logits)).sum(-1)


def graph_objective(p: Tensor) -> Tensor:
    """E_q[log q(h1|x) + log q(h2|h1) − log p(x, h1, h2)] by enumeration, plain torch (no distributions, no scg)."""
    P, x = graph_unpack(p), t(*GX)
    total = p.new_zeros(())
    for k in range(GK):
        h1 = F.one_hot(torch.tensor(k), GK).double()
        for bits in itertools.product((0.0, 1.0), repeat=GN2):
            h2 = t(*bits)
            lq1 = (h1 * torch.log_softmax(P["W1"] @ x + P["c1"], -1)).sum()
            lq2 = log_bern(h2, P["W2"] @ h1 + P["c2"])
            lp = (
                log_bern(h2, P["a2"])
                + (h1 * torch.log_softmax(P["V1"] @ h2 + P["d1"], -1)).sum()
                + log_bern(x, P["V0"] @ h1 + P["d0"])
            )
            total = total + torch.exp(lq1 + lq2) * (lq1 + lq2 - lp)
    return total


def build_graph(g: scg.Graph, p: Tensor, est1: scg.Estimator, est2: scg.Estimator) -> None:
    """The model in a graph (``p`` may carry a leading batch dim): nodes h1, h2; costs log q1, log q2, −log p."""
    P = graph_unpack(p)
    x = t(*GX).expand(*p.shape[:-1], GD)
    q1 = OneHotCategorical(logits=bmv(P["W1"], x) + P["c1"])
    h1 = g.sample("h1", q1, est1)
    q2 = Independent(Bernoulli(logits=bmv(P["W2"], h1) + P["c2"]), 1)
    h2 = g.sample("h2", q2, est2)
    log_p = (
        Independent(Bernoulli(logits=P["a2"].expand(h2.shape)), 1).log_prob(h2)
        + OneHotCategorical(logits=bmv(P["V1"], h2) + P["d1"]).log_prob(h1)
        + Independent(Bernoulli(logits=bmv(P["V0"], h1) + P["d0"]), 1).log_prob(x)
    )
    # OneHotCategorical.log_prob reads the class by argmax, which autograd does not see: declared.
    g.cost("log_q1", q1.log_prob(h1), depends_on=["h1"])
    g.cost("log_q2", q2.log_prob(h2))
    g.cost("neg_log_p", -log_p)


class SoftmaxCubic(nn.Module):
    """A LAX-style control variate net ``[..., K] -> [...]``: Σ_k (a_k s_k + b_k s_k² + c_k s_k³), s = softmax(z)."""

    def __init__(self, K: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(23)
        self.w = nn.Parameter(2.0 * torch.randn(3, K, generator=gen, dtype=torch.float64))

    def forward(self, z: Tensor) -> Tensor:
        s = torch.softmax(z, -1)
        return (self.w[0] * s + self.w[1] * s**2 + self.w[2] * s**3).sum(-1)


GRAPH_NODES = 32  # double-exponential nodes per coordinate (errors seen: 24: 9e-8, 32: 2e-9, 40: 8e-11)
GRAPH_ATOL = 2e-8


def test_graph_node_exact():
    """RELAX(NeuralControlVariate(net, rebar=False)) as the categorical root node h1 (K = 3) of a
    two-layer model, ScoreFunction() at the Bernoulli layer h2: the graph, replayed on every point
    of :func:`additive_grid` for h1 (its estimate is additive in u and v given b and h2) times an
    enumeration of h2 (weight q(h2 | b)), has E[∇ surrogate] = ∇ of the plain-torch enumerated
    negative ELBO, for every parameter (encoder and generative model). The points are batch
    elements of a few graphs, element k with parameters stop(p) + w_k (p − stop(p))."""
    gen = torch.Generator().manual_seed(31)
    p0 = 0.9 * torch.randn(
        sum(math.prod(s) for s in graph_layout().values()), generator=gen, dtype=torch.float64
    )
    P0 = graph_unpack(p0)
    alpha1 = P0["W1"] @ t(*GX) + P0["c1"]
    grid, weight1 = additive_grid(alpha1.reshape(1, GK), GRAPH_NODES)
    index = draw_index(torch.softmax(alpha1, -1).expand(len(weight1), GK), grid["w"][:, 0])
    h1 = F.one_hot(index, GK).double()
    h2s = torch.tensor(list(itertools.product((0.0, 1.0), repeat=GN2)))  # [4, GN2]
    q2 = torch.exp(log_bern(h2s[:, None], bmv(P0["W2"], h1) + P0["c2"]))  # [4, N]
    draws = {
        "w": grid["w"][:, 0].repeat(len(h2s)),
        "u": grid["u"][:, 0].repeat(len(h2s), 1),
        "v": grid["v"][:, 0].repeat(len(h2s), 1),
        "z": h2s.repeat_interleave(len(weight1), 0),
    }
    weight = (weight1 * q2).reshape(-1)
    assert abs(float(weight.sum()) - 1.0) < 1e-12
    relax = scg.RELAX(NeuralControlVariate(SoftmaxCubic(GK), rebar=False))
    p = p0.clone().requires_grad_(True)
    total = torch.zeros_like(p0)
    for s in range(0, len(weight), 50_000):
        part = slice(s, s + 50_000)
        g = scg.Graph(
            num_samples=1,
            draws={
                "h1": {k: draws[k][part].unsqueeze(0) for k in ("w", "u", "v")},
                "h2": {"z": draws["z"][part].unsqueeze(0)},
            },
        )
        pk = p.detach() + weight[part, None] * (p - p.detach())
        build_graph(g, pk, relax, scg.ScoreFunction())
        total += torch.autograd.grad(g.surrogate(), p)[0]
    q = p0.clone().requires_grad_(True)
    exact = torch.autograd.grad(graph_objective(q), q)[0]
    assert float(exact.abs().max()) > 0.1
    torch.testing.assert_close(total, exact, rtol=0, atol=GRAPH_ATOL)


def test_graph_node_control_variate_gradient_equals_expectation():
    """A one-node graph with a categorical RELAX node (trainable LAX net) gives the same value and
    the same gradients — logits and the net's parameters, i.e. the variance gradient checked
    against the oracle above — as scg.expectation on the same draws."""
    gen = torch.Generator().manual_seed(4)
    alpha0 = torch.randn(5, GK, generator=gen, dtype=torch.float64)
    a = torch.randn(GK, generator=gen, dtype=torch.float64)
    f = lambda b: ((b * a).sum(-1) - 0.2) ** 2  # noqa: E731
    est = scg.RELAX(NeuralControlVariate(SoftmaxCubic(GK), rebar=False))
    results = []
    for use_graph in (False, True):
        est.zero_grad()
        alpha = alpha0.clone().requires_grad_(True)
        dist = OneHotCategorical(logits=alpha)
        draws = est.draw(dist, 3, generator=torch.Generator().manual_seed(8))
        if use_graph:
            g = scg.Graph(num_samples=3, draws={"h": draws})
            g.cost("c", f(g.sample("h", dist, est)))
            value = g.surrogate()
        else:
            value = est.surrogate(f, dist, draws).sum()
        value.backward()
        results.append((value.detach(), alpha.grad, est.control_variate.net.w.grad.clone()))
    (v1, g1, w1), (v2, g2, w2) = results
    assert float(w1.abs().max()) > 1e-3
    torch.testing.assert_close(v2, v1, rtol=1e-14, atol=0)
    torch.testing.assert_close(g2, g1, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(w2, w1, rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------------ 6. errors


def test_refusals_name_what_must_hold():
    normal = Normal(torch.zeros(2), torch.ones(2))
    with pytest.raises(
        TypeError, match=r"`dist` must be Bernoulli or Categorical/OneHotCategorical .* for RELAX; got Normal"
    ):
        scg.expectation(lambda z: z, normal, scg.RELAX())

    class BernoulliOnly(nn.Module):
        def forward(self, z, f):
            return z.sum(-1)

    dist = OneHotCategorical(logits=torch.zeros(2, 3, requires_grad=True))
    with pytest.raises(
        TypeError,
        match=r"`control_variate` must accept the keyword `categorical` for categorical latents \(it is "
        r"called as cv\(z, f, categorical=True\)\); got BernoulliOnly\.forward\(z, f\)\.",
    ):
        scg.expectation(lambda b: b.sum(-1), dist, scg.RELAX(BernoulliOnly()))
    with pytest.raises(TypeError, match=r"uses REBARControlVariate, which needs the cost as a function"):
        scg.Graph(num_samples=2).sample("h", dist, scg.RELAX())


def test_a_control_variate_that_accepts_the_keyword_serves_both_kinds():
    """A user's control variate with ``categorical`` in its signature is called with it for
    categorical latents, and without it (its default) for Bernoulli ones."""
    seen = []

    class Recording(nn.Module):
        def forward(self, z: Tensor, f, categorical: bool = False) -> Tensor:
            seen.append(categorical)
            return torch.softmax(z, -1)[..., 0] if categorical else torch.sigmoid(z).sum(-1)

    est = scg.RELAX(Recording())
    scg.expectation(lambda b: b.sum(-1), OneHotCategorical(logits=torch.zeros(3, requires_grad=True)), est)
    assert seen and all(seen)
    seen.clear()
    dist = Independent(Bernoulli(logits=torch.zeros(3, requires_grad=True)), 1)
    scg.expectation(lambda b: b.sum(-1), dist, est)
    assert seen and not any(seen)
