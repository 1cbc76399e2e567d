"""ARM, CategoricalDisARM and ARSM: exact unbiasedness and variance, relations, graph nodes, bad input.

Exact first. Each estimator's gradient is integrated over its noise without sampling:

* ARM: :func:`scg.testing.exact_moments` (its law declares the breakpoints), against
  closed forms and a piecewise integration written here;
* CategoricalDisARM: the estimate is piecewise constant in u with jumps at θ and 1 − θ,
  so the mean over the product of pieces (midpoint × length) is exact; the oracle for
  the variance is the coupling's joint law of (z, z̃) enumerated here from the
  stick-breaking decisions, with the importance weight q(z)q(z̃)/p(z, z̃) formed
  directly;
* ARSM: the estimate is linear in π ~ Dir(1) on each cell of the arrangement of the
  lines π_a / π_c = p_b / p_d in the simplex, where it jumps; the cells are cut here,
  and a degree-2 rule inside each triangle integrates mean and second moment exactly
  (K = 2: an interval, Gauss–Legendre between breakpoints). The variance oracle is
  an implementation of ARSM's formula written here in numpy.

Every mean is compared with ∇E[f] from an explicit enumeration of the categorical
support in plain torch (softmax, products, autograd). The one sampled test (ARSM at
K = 5 and 10, where cutting the simplex is out of reach) uses a threshold z·SE with z
for a false-failure rate of 1e-3, Bonferroni-corrected over the components checked.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from numpy.polynomial.legendre import leggauss
from torch.distributions import Bernoulli, Categorical, Independent, Normal, OneHotCategorical

import scg
from scg.estimators.arm import ARM
from scg.estimators.arsm import ARSM
from scg.estimators.coupled import CategoricalDisARM
from scg.testing import exact_moments

pytestmark = pytest.mark.usefixtures("one_thread_module", "float64")

F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_logits(L: int, K: int, seed: int) -> torch.Tensor:
    return 1.2 * torch.randn(L, K, generator=gen(seed), dtype=F64)


def random_table(L: int, K: int, seed: int) -> torch.Tensor:
    """An arbitrary cost f(z) over the product support, ``[K] * L``."""
    return torch.randn(*([K] * L), generator=gen(seed + 1000), dtype=F64)


# ------------------------------------------------------------------- oracles (plain torch)


def oracle_gradient(logits: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """∇_logits Σ_z Π_l softmax(logits_l)[z_l] f(z), by enumeration; ``[L, K]``."""
    leaf = logits.detach().clone().requires_grad_(True)
    probs = torch.exp(leaf - torch.logsumexp(leaf, -1, keepdim=True))
    joint = probs[0]
    for l in range(1, leaf.shape[0]):
        joint = joint.unsqueeze(-1) * probs[l]
    (grad,) = torch.autograd.grad((joint * table).sum(), leaf)
    return grad


def one_hot_cost(table: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """f for ``Independent(OneHotCategorical([..., L, K]), 1)`` samples ``[..., L, K]``: the table entry."""
    L, K = table.dim(), table.shape[0]
    strides = torch.tensor([K ** (L - 1 - l) for l in range(L)])

    def f(z: torch.Tensor) -> torch.Tensor:
        index = (z * torch.arange(K, dtype=z.dtype)).sum(-1).round().long()
        return table.flatten()[(index * strides).sum(-1)]

    return f


def index_cost(table: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """f for ``Independent(Categorical([..., L, K]), 1)`` samples ``[..., L]`` (class indices)."""
    L, K = table.dim(), table.shape[0]
    strides = torch.tensor([K ** (L - 1 - l) for l in range(L)])
    return lambda z: table.flatten()[(z * strides).sum(-1)]


def per_point_moments(
    est: scg.Estimator, logits: torch.Tensor, table: torch.Tensor, draws: torch.Tensor, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Σ_p w_p ĝ_p and Σ_p w_p ĝ_p² over points p: each point is a batch element with its own logits leaf.

    ``draws`` ``[P, L, ...]`` (one estimate per point, S = 1); returns mean, second moment
    ``[L, K]`` and the per-point gradients ``[P, L, K]``.
    """
    P = draws.shape[0]
    leaf = logits.expand(P, *logits.shape).clone().requires_grad_(True)
    dist = Independent(OneHotCategorical(logits=leaf), 1)
    out = est.surrogate(one_hot_cost(table), dist, {"u": draws.unsqueeze(0)})
    (grads,) = torch.autograd.grad(out.sum(), leaf)
    w = weights.reshape(P, *([1] * logits.dim()))
    return (w * grads).sum(0), (w * grads**2).sum(0), grads


# ------------------------------------------------------------------------------ 1. ARM


def test_arm_single_unit_exact_closed_form_variance():
    """One Bernoulli: harness mean = θ(1 − θ)Δ and variance Δ²(1 − (1 − 2t)³)/12 − mean², t = min(θ, 1 − θ)."""
    logits = torch.tensor([0.0, -1.3], dtype=F64)
    f0, f1 = 0.3, -1.1
    m = exact_moments(ARM(), lambda l: Bernoulli(logits=l), (logits,), lambda b: f0 + (f1 - f0) * b)
    theta = torch.sigmoid(logits)
    t = torch.minimum(theta, 1 - theta)
    delta = f1 - f0
    mean = delta * theta * (1 - theta)
    torch.testing.assert_close(m.mean, mean, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(
        m.variance, delta**2 * (1 - (1 - 2 * t) ** 3) / 12 - mean**2, rtol=1e-8, atol=1e-12
    )
    assert float(m.variance[0]) == pytest.approx(delta**2 / 48, rel=1e-9)


def arm_piece_moments(logits: torch.Tensor, table: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """ARM's exact mean and second moment for Independent Bernoulli units, integrated piece by piece here.

    On each product of pieces of u the pair (1[u > 1 − θ], 1[u < θ]) is constant and the
    estimate of unit d is Δ·(u_d − ½), so ∫ over a piece is Δ ∫(u_d − ½) Π_{e≠d} len_e.
    """
    theta = torch.sigmoid(logits).numpy()
    D = len(theta)
    cuts = [sorted([0.0, min(t, 1 - t), max(t, 1 - t), 1.0]) for t in theta]
    tab = table.numpy()
    mean, second = np.zeros(D), np.zeros(D)
    for choice in itertools.product(range(3), repeat=D):
        lo = np.array([cuts[d][c] for d, c in enumerate(choice)])
        hi = np.array([cuts[d][c + 1] for d, c in enumerate(choice)])
        mid = (lo + hi) / 2
        up = tuple((mid > 1 - theta).astype(int))
        down = tuple((mid < theta).astype(int))
        delta = tab[up] - tab[down]
        length = hi - lo
        for d in range(D):
            rest = np.prod(np.delete(length, d))
            m1 = ((hi[d] - 0.5) ** 2 - (lo[d] - 0.5) ** 2) / 2  # ∫ (u − ½) du
            m2 = ((hi[d] - 0.5) ** 3 - (lo[d] - 0.5) ** 3) / 3  # ∫ (u − ½)² du
            mean[d] += delta * m1 * rest
            second[d] += delta**2 * m2 * rest
    return mean, second


def test_arm_product_of_bernoullis_exact():
    """Three units, f an arbitrary table: the estimate (linear in u between breakpoints) at 2-point
    Gauss–Legendre nodes of every piece of every unit integrates mean and second moment exactly."""
    logits = torch.tensor([0.4, -0.9, 1.6], dtype=F64)
    table = random_table(3, 2, seed=1)
    f = one_hot_cost(table)
    law = ARM().laws(Independent(Bernoulli(logits=logits), 1), 1)["u"]
    cuts = torch.cat([torch.zeros(3, 1), law.points[0], torch.ones(3, 1)], -1)  # [3, 4]
    x, w = (torch.from_numpy(a) for a in leggauss(2))
    lo, hi = cuts[:, :-1, None], cuts[:, 1:, None]
    nodes = (lo + (hi - lo) * (x + 1) / 2).reshape(3, 6)
    weights = ((hi - lo) * w / 2).reshape(3, 6)
    grid = torch.cartesian_prod(*[torch.arange(6)] * 3)  # [216, 3]
    u = nodes[torch.arange(3), grid]
    vol = weights[torch.arange(3), grid].prod(-1)
    leaf = logits.expand(len(vol), 3).clone().requires_grad_(True)
    out = ARM().surrogate(
        lambda b: f(torch.stack([1 - b, b], -1)), Independent(Bernoulli(logits=leaf), 1), {"u": u[None]}
    )
    (g,) = torch.autograd.grad(out.sum(), leaf)
    mean, second = (vol[:, None] * g).sum(0), (vol[:, None] * g**2).sum(0)
    exact = oracle_gradient(torch.stack([torch.zeros(3, dtype=F64), logits], -1), table)[:, 1]
    o_mean, o_second = arm_piece_moments(logits, table)
    torch.testing.assert_close(mean, exact, rtol=0, atol=1e-13)
    torch.testing.assert_close(torch.from_numpy(o_mean), exact, rtol=0, atol=1e-13)
    torch.testing.assert_close(
        second - mean**2, torch.from_numpy(o_second - o_mean**2), rtol=1e-11, atol=1e-14
    )
    assert float((second - mean**2).min()) > 1e-3  # a nontrivial variance


def test_arm_value_and_evaluations():
    torch.manual_seed(0)
    dist = Bernoulli(logits=torch.tensor([0.3, -0.2], dtype=F64))
    draws = ARM().draw(dist, 5)
    parts = ARM().parts(dist, draws)
    assert parts.value.shape == (2, 5, 2) and torch.equal(parts.copies, torch.tensor([0.5, 0.5], dtype=F64))
    out = ARM().surrogate(lambda b: 2 * b, dist, draws)
    torch.testing.assert_close(out, parts.value.mean((0, 1)) * 2, rtol=0, atol=1e-15)
    assert ARM().evaluations(dist, 4) == 8


# ------------------------------------------------------------------ 2. CategoricalDisARM


def stick_breaking(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ascending order of the classes and θ_i = π_(i) / Σ_{j≥i} π_(j) (numpy, one latent)."""
    order = np.argsort(probs, kind="stable")
    sp = probs[order]
    tail = np.cumsum(sp[::-1])[::-1]
    return order, sp[:-1] / tail[:-1]


def pair_law(probs: np.ndarray) -> np.ndarray:
    """Joint law p(z, z̃) ``[K, K]`` of the antithetic pair, from its K − 1 decisions.

    Decision i gives (b_i, b̃_i) = (1, 0) or (0, 1) with probability θ_i each and (0, 0)
    with 1 − 2θ_i (θ_i ≤ ½); z is the class at the first b_i = 1 (the last class if none).
    """
    K = len(probs)
    order, theta = stick_breaking(probs)
    law = np.zeros((K, K))
    for choice in itertools.product(range(3), repeat=K - 1):
        p = np.prod([[theta[i], theta[i], 1 - 2 * theta[i]][c] for i, c in enumerate(choice)])
        pos = next((i for i, c in enumerate(choice) if c == 0), K - 1)
        pos_anti = next((i for i, c in enumerate(choice) if c == 1), K - 1)
        law[order[pos], order[pos_anti]] += p
    return law


def disarm_oracle_moments(logits: torch.Tensor, table: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """E[ĝ] and E[ĝ²] ``[L, K]`` under the product of the latents' pair laws (enumerated)."""
    probs = torch.softmax(logits, -1).numpy()
    L, K = probs.shape
    laws = [pair_law(p) for p in probs]
    tab = table.numpy()
    mean, second = np.zeros((L, K)), np.zeros((L, K))
    for pairs in itertools.product(itertools.product(range(K), repeat=2), repeat=L):
        z = tuple(a for a, _ in pairs)
        z_anti = tuple(b for _, b in pairs)
        p = np.prod([laws[l][a, b] for l, (a, b) in enumerate(pairs)])
        if p == 0:
            continue
        for l, (a, b) in enumerate(pairs):
            if a == b:
                continue
            w = probs[l, a] * probs[l, b] / laws[l][a, b]  # q(z) q(z̃) / p(z, z̃)
            g = 0.5 * w * (tab[z] - tab[z_anti]) * (np.eye(K)[a] - np.eye(K)[b])  # score gap in the logits
            mean[l] += p * g
            second[l] += p * g**2
    return mean, second


def disarm_pieces(est: CategoricalDisARM, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every product of pieces of the noise u ``[L, K − 1]``: midpoints ``[P, L, K − 1]`` and volumes ``[P]``."""
    law = est.laws(Independent(OneHotCategorical(logits=logits), 1), 1)["u"]
    cuts = torch.cat([torch.zeros(*law.shape, 1), law.points, torch.ones(*law.shape, 1)], -1)[
        0
    ]  # [L, K−1, 4]
    mids = (cuts[..., 1:] + cuts[..., :-1]) / 2
    lengths = cuts[..., 1:] - cuts[..., :-1]
    D = mids.shape[0] * mids.shape[1]
    grids = torch.cartesian_prod(*[torch.arange(3)] * D).reshape(-1, D) if D > 1 else torch.arange(3)[:, None]
    flat_m, flat_l = mids.reshape(D, 3), lengths.reshape(D, 3)
    points = flat_m[torch.arange(D), grids]  # [P, D]
    volume = flat_l[torch.arange(D), grids].prod(-1)
    return points.reshape(-1, *mids.shape[:2]), volume


SHAPES = [(1, 2), (1, 3), (1, 5), (1, 10), (3, 2), (2, 3), (3, 3), (2, 5)]


@pytest.mark.parametrize(("L", "K"), SHAPES, ids=[f"{L}x{K}" for L, K in SHAPES])
def test_categorical_disarm_exact_mean_and_variance(L, K):
    logits = random_logits(L, K, seed=10 * L + K)
    table = random_table(L, K, seed=10 * L + K)
    est = CategoricalDisARM()
    points, volume = disarm_pieces(est, logits)
    assert abs(float(volume.sum()) - 1) < 1e-12
    mean, second, _ = per_point_moments(est, logits, table, points, volume)
    exact = oracle_gradient(logits, table)
    o_mean, o_second = disarm_oracle_moments(logits, table)
    assert float(exact.abs().max()) > 0.05  # a nontrivial gradient
    torch.testing.assert_close(mean, exact, rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.from_numpy(o_mean), exact, rtol=0, atol=1e-12)
    torch.testing.assert_close(
        second - mean**2, torch.from_numpy(o_second - o_mean**2), rtol=1e-9, atol=1e-13
    )


def test_pair_is_a_coupling_of_the_categorical():
    """Both members of the pair are exact draws: the pair law's marginals are the class probabilities."""
    for K, seed in ((3, 1), (5, 2), (10, 3)):
        probs = torch.softmax(random_logits(1, K, seed)[0], -1).numpy()
        law = pair_law(probs)
        np.testing.assert_allclose(law.sum(1), probs, rtol=0, atol=1e-14)
        np.testing.assert_allclose(law.sum(0), probs, rtol=0, atol=1e-14)
        off = law + np.eye(K)  # every pair of distinct classes has positive mass: the weights exist
        assert off.min() > 0


def test_categorical_disarm_harness_agrees():
    """scg.testing.exact_moments integrates the declared law (breakpoints θ, 1 − θ) to the same moments."""
    logits = random_logits(2, 3, seed=5)
    table = random_table(2, 3, seed=5)
    est = CategoricalDisARM()
    m = exact_moments(
        est, lambda l: Independent(OneHotCategorical(logits=l), 1), (logits,), one_hot_cost(table)
    )
    points, volume = disarm_pieces(est, logits)
    mean, second, _ = per_point_moments(est, logits, table, points, volume)
    torch.testing.assert_close(m.mean, mean.flatten(), rtol=0, atol=1e-11)
    torch.testing.assert_close(m.variance, (second - mean**2).flatten(), rtol=1e-8, atol=1e-12)


def test_categorical_disarm_with_two_classes_is_disarm():
    """K = 2: for the same u the estimate w.r.t. α₁ equals DisARM's on Bernoulli(logits = α₁ − α₀), and
    −that w.r.t. α₀ — one latent per batch element, with σ(φ) below and above ½ (where the pair comes
    out swapped)."""
    alpha = torch.tensor([[0.2, -0.9], [-0.4, 1.1], [0.0, 0.35]], dtype=F64)
    table = random_table(3, 2, seed=7).reshape(-1)[:6].reshape(3, 2)  # f(z) of latent i: table[i, z]
    u = torch.rand(64, 3, generator=gen(7), dtype=F64)
    leaf = alpha.expand(64, 3, 2).clone().requires_grad_(True)
    out = CategoricalDisARM().surrogate(
        lambda z: (z * table).sum(-1), OneHotCategorical(logits=leaf), {"u": u.unsqueeze(0).unsqueeze(-1)}
    )
    (g_cat,) = torch.autograd.grad(out.sum(), leaf)
    phi = (alpha[:, 1] - alpha[:, 0]).expand(64, 3).clone().requires_grad_(True)
    out_b = scg.DisARM().surrogate(
        lambda b: table[:, 0] + (table[:, 1] - table[:, 0]) * b, Bernoulli(logits=phi), {"u": u.unsqueeze(0)}
    )
    (g_bern,) = torch.autograd.grad(out_b.sum(), phi)
    assert float(g_bern.abs().max()) > 0.01
    torch.testing.assert_close(g_cat[..., 1], g_bern, rtol=0, atol=1e-14)
    torch.testing.assert_close(g_cat[..., 0], -g_bern, rtol=0, atol=1e-14)
    torch.testing.assert_close(out, out_b, rtol=0, atol=1e-14)


def test_integer_categorical_matches_one_hot():
    """Independent(Categorical) hands f class indices; same draws, same estimate as OneHotCategorical."""
    table = random_table(2, 5, seed=9)
    logits = random_logits(2, 5, seed=9)
    for est in (CategoricalDisARM(), ARSM()):
        torch.manual_seed(3)
        draws = est.draw(Independent(OneHotCategorical(logits=logits), 1), 16)
        grads = []
        for dist_of, f in (
            (lambda l: Independent(OneHotCategorical(logits=l), 1), one_hot_cost(table)),
            (lambda l: Independent(Categorical(logits=l), 1), index_cost(table)),
        ):
            leaf = logits.clone().requires_grad_(True)
            out = est.surrogate(f, dist_of(leaf), draws)
            grads.append((out, torch.autograd.grad(out, leaf)[0]))
        torch.testing.assert_close(grads[0][0], grads[1][0], rtol=0, atol=1e-14)
        torch.testing.assert_close(grads[0][1], grads[1][1], rtol=0, atol=1e-14)
        assert float(grads[0][1].abs().max()) > 0


def test_twenty_latents_ten_classes():
    """The issue's size: Independent(OneHotCategorical(logits=[B, 20, 10]), 1), batched, both estimators."""
    logits = torch.randn(3, 20, 10, generator=gen(11), dtype=F64).requires_grad_(True)
    weights = torch.randn(20, 10, generator=gen(12), dtype=F64)

    def f(z: torch.Tensor) -> torch.Tensor:
        return ((z * weights).sum((-1, -2)) - 1.0) ** 2

    for est, evals in ((CategoricalDisARM(), 8), (ARSM(), 4 * 46)):
        torch.manual_seed(0)
        q = Independent(OneHotCategorical(logits=logits), 1)
        loss = scg.expectation(f, q, est, num_samples=4)
        (g,) = torch.autograd.grad(loss.sum(), logits)
        assert loss.shape == (3,) and g.shape == (3, 20, 10) and bool(torch.isfinite(g).all())
        assert float(g.abs().max()) > 0
        assert est.evaluations(q, 4) == evals
        torch.testing.assert_close(g.sum(-1), torch.zeros(3, 20, dtype=F64), rtol=0, atol=1e-10)


# ------------------------------------------------------------------------------ 3. ARSM


def _clip(poly: list[np.ndarray], line: np.ndarray, sign: float) -> list[np.ndarray]:
    """The part of a convex polygon where sign · (a·x + b) ≥ 0."""
    out = []
    for i in range(len(poly)):
        P, Q = poly[i], poly[(i + 1) % len(poly)]
        sp, sq = sign * (line[:2] @ P + line[2]), sign * (line[:2] @ Q + line[2])
        if sp >= 0:
            out.append(P)
        if sp * sq < 0:
            out.append(P + sp / (sp - sq) * (Q - P))
    return out


def _area(poly: list[np.ndarray]) -> float:
    x = np.array(poly)
    return 0.5 * abs(x[:, 0] @ np.roll(x[:, 1], -1) - x[:, 1] @ np.roll(x[:, 0], -1))


def simplex_rule(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nodes π ``[N, K]`` and weights ``[N]`` integrating Dir(1_K) exactly for ARSM's integrand (K = 2 or 3).

    ARSM's actions compare values π_a e^{−φ_b} = π_a / p_b, so the estimate jumps only on
    π_a / π_c = p_b / p_d (b ≠ d) and is linear in π between: the simplex is cut along
    those lines, and each cell integrated with a rule exact for polynomials of degree 2.
    """
    K = len(probs)
    ratios = sorted({probs[b] / probs[d] for b in range(K) for d in range(K) if b != d})
    if K == 2:  # π_0 ∈ (0, 1), uniform; breakpoints π_0 / (1 − π_0) = r
        cuts = np.array([0.0, *[r / (1 + r) for r in ratios], 1.0])
        x, w = leggauss(3)
        lo, hi = cuts[:-1, None], cuts[1:, None]
        nodes = (lo + (hi - lo) * (x + 1) / 2).ravel()
        return np.stack([nodes, 1 - nodes], -1), ((hi - lo) * w / 2).ravel()
    assert K == 3
    coef = [
        np.array([1.0, 0, 0]),
        np.array([0, 1.0, 0]),
        np.array([-1.0, -1, 1]),
    ]  # π_a as affine in (π_0, π_1)
    cells = [[np.array([0.0, 0.0]), np.array([1.0, 0.0]), np.array([0.0, 1.0])]]
    for a, c in itertools.combinations(range(K), 2):
        for r in ratios:
            line = coef[a] - r * coef[c]
            cells = [
                q
                for cell in cells
                for s in (1.0, -1.0)
                if len(q := _clip(cell, line, s)) >= 3 and _area(q) > 1e-15
            ]
    bary = np.array(
        [[2 / 3, 1 / 6, 1 / 6], [1 / 6, 2 / 3, 1 / 6], [1 / 6, 1 / 6, 2 / 3]]
    )  # Strang–Fix, degree 2
    nodes, weights = [], []
    for cell in cells:
        for i in range(1, len(cell) - 1):
            tri = np.array([cell[0], cell[i], cell[i + 1]])
            if _area(list(tri)) < 1e-15:  # collinear vertices left by a cut through a vertex
                continue
            nodes.append(bary @ tri)
            weights.append(np.full(3, 2 * _area(list(tri)) / 3))  # Dir(1) density 2 on the triangle
    x = np.concatenate(nodes)
    return np.concatenate([x, 1 - x.sum(-1, keepdims=True)], -1), np.concatenate(weights)


def product_rule(rules: list[tuple[np.ndarray, np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Tensor product of per-latent rules: π ``[N, L, K]`` and weights ``[N]``."""
    grids = np.meshgrid(*[np.arange(len(w)) for _, w in rules], indexing="ij")
    idx = [g.ravel() for g in grids]
    pi = np.stack([rules[l][0][i] for l, i in enumerate(idx)], 1)
    w = np.prod([rules[l][1][i] for l, i in enumerate(idx)], 0)
    return torch.from_numpy(pi), torch.from_numpy(w)


def arsm_numpy(pi: np.ndarray, logits: np.ndarray, table: np.ndarray) -> np.ndarray:
    """ARSM's estimate ``[N, L, K]`` at Dirichlet points π ``[N, L, K]``, written out with loops over swaps."""
    N, L, K = pi.shape
    F = np.zeros((N, K, K))
    for c in range(K):
        for j in range(K):
            swapped = pi.copy()
            swapped[..., [c, j]] = pi[..., [j, c]]
            z = np.argmin(swapped * np.exp(-logits), axis=-1)  # [N, L]
            F[:, c, j] = table[tuple(z.T)]
    A = F - F.mean(1, keepdims=True)
    return np.einsum("ncj,nlj->nlc", A, 1.0 / K - pi)


ARSM_SHAPES = [(1, 2), (1, 3), (3, 2), (2, 3)]


@pytest.mark.parametrize(("L", "K"), ARSM_SHAPES, ids=[f"{L}x{K}" for L, K in ARSM_SHAPES])
def test_arsm_exact_mean_and_variance(L, K):
    logits = random_logits(L, K, seed=20 + 10 * L + K)
    table = random_table(L, K, seed=20 + 10 * L + K)
    probs = torch.softmax(logits, -1).numpy()
    pi, w = product_rule([simplex_rule(p) for p in probs])
    assert abs(float(w.sum()) - 1) < 1e-12
    mean, second, grads = torch.zeros(L, K, dtype=F64), torch.zeros(L, K, dtype=F64), []
    for chunk in torch.arange(len(w)).split(40000):
        m1, m2, g = per_point_moments(ARSM(), logits, table, torch.exp(-pi[chunk]), w[chunk])  # −log u = π
        mean, second = mean + m1, second + m2
        grads.append(g)
    exact = oracle_gradient(logits, table)
    assert float(exact.abs().max()) > 0.05
    torch.testing.assert_close(mean, exact, rtol=0, atol=1e-11)
    ours = torch.from_numpy(arsm_numpy(pi.numpy(), logits.numpy(), table.numpy()))
    torch.testing.assert_close(torch.cat(grads), ours, rtol=0, atol=1e-12)
    o_mean = (w[:, None, None] * ours).sum(0)
    o_var = (w[:, None, None] * ours**2).sum(0) - o_mean**2
    torch.testing.assert_close(second - mean**2, o_var, rtol=1e-9, atol=1e-13)
    assert float(o_var.min()) > 1e-4


@pytest.mark.parametrize(("L", "K"), [(1, 5), (1, 10), (2, 5)], ids=["1x5", "1x10", "2x5"])
def test_arsm_single_draw_oracle(L, K):
    """At random Dirichlet draws the estimate equals the numpy formula (float64, to rounding)."""
    logits = random_logits(L, K, seed=30 + K)
    table = random_table(L, K, seed=30 + K)
    u = torch.rand(256, L, K, generator=gen(K), dtype=F64)
    pi = -torch.log(u) / (-torch.log(u)).sum(-1, keepdim=True)
    _, _, grads = per_point_moments(ARSM(), logits, table, u, torch.ones(256, dtype=F64))
    ours = torch.from_numpy(arsm_numpy(pi.numpy(), logits.numpy(), table.numpy()))
    assert float(ours.abs().max()) > 0.01
    torch.testing.assert_close(grads, ours, rtol=0, atol=1e-12)


def test_arsm_sampled_mean_large_k():
    """K = 5 (two latents) and K = 10: mean of N = 2^15 estimates within z·SE of ∇E[f].

    z = 3.9: Φ⁻¹(1 − 1e-3 / (2 · 20)) ≈ 3.89 for the 20 components checked (false-failure
    rate 1e-3 had the seed been random)."""
    z = 3.9
    N = 1 << 15
    for L, K in ((2, 5), (1, 10)):
        logits = random_logits(L, K, seed=40 + K)
        table = random_table(L, K, seed=40 + K)
        u = torch.rand(N, L, K, generator=gen(41 + K), dtype=F64)
        _, _, grads = per_point_moments(ARSM(), logits, table, u, torch.ones(N, dtype=F64))
        exact = oracle_gradient(logits, table)
        se = grads.std(0) / math.sqrt(N)
        assert float(se.min()) > 0
        zs = (grads.mean(0) - exact) / se
        assert float(zs.abs().max()) < z, zs


def test_arsm_with_two_classes_is_arm():
    """K = 2 with π₀ = u: ARSM's estimate w.r.t. α₁ equals ARM's on Bernoulli(logits = α₁ − α₀) at the same u."""
    alpha = torch.tensor([[0.2, -0.9], [-0.4, 1.1], [0.0, 0.35]], dtype=F64)
    table = random_table(3, 2, seed=8)
    v = torch.rand(64, 3, generator=gen(8), dtype=F64)
    _, _, g = per_point_moments(ARSM(), alpha, table, torch.exp(-torch.stack([v, 1 - v], -1)), torch.ones(64))
    phi = (alpha[:, 1] - alpha[:, 0]).expand(64, 3).clone().requires_grad_(True)
    f = one_hot_cost(table)
    out = ARM().surrogate(
        lambda b: f(torch.stack([1 - b, b], -1)), Independent(Bernoulli(logits=phi), 1), {"u": v[None]}
    )
    (g_arm,) = torch.autograd.grad(out.sum(), phi)
    assert float(g_arm.abs().max()) > 0.01
    torch.testing.assert_close(g[..., 1], g_arm, rtol=0, atol=1e-13)
    torch.testing.assert_close(g[..., 0], -g_arm, rtol=0, atol=1e-13)


def test_arsm_value_copies_and_evaluations():
    logits = random_logits(1, 4, seed=3)[0]
    dist = OneHotCategorical(logits=logits)
    torch.manual_seed(0)
    draws = ARSM().draw(dist, 3)
    parts = ARSM().parts(dist, draws)
    assert parts.value.shape == (7, 3, 4)
    assert torch.equal(parts.copies, torch.tensor([1.0, 0, 0, 0, 0, 0, 0], dtype=F64))
    pi = -torch.log(draws["u"])
    torch.testing.assert_close(parts.value[0].argmax(-1), (torch.log(pi) - logits).argmin(-1), rtol=0, atol=0)
    f = lambda z: (z * torch.arange(4.0, dtype=F64)).sum(-1)  # noqa: E731
    torch.testing.assert_close(ARSM().surrogate(f, dist, draws), f(parts.value[0]).mean(), rtol=0, atol=1e-15)
    assert ARSM().evaluations(dist, 3) == 3 * 7


# ------------------------------------------------------------------------- 4. bad input


@pytest.mark.parametrize(
    "est", [ARM(), CategoricalDisARM(), ARSM()], ids=["ARM", "CategoricalDisARM", "ARSM"]
)
def test_wrong_distribution_is_refused(est):
    name = type(est).__name__
    need = "Bernoulli" if name == "ARM" else "Categorical or OneHotCategorical"
    with pytest.raises(
        TypeError, match=rf"`dist` must be {need} \(optionally Independent\) for {name}; got Normal"
    ):
        est.check(Normal(0.0, 1.0))
    with pytest.raises(TypeError, match=rf"for {name}; got Normal"):
        scg.expectation(lambda z: z, Normal(torch.zeros(2), 1.0), est)
    with pytest.raises(TypeError, match=r"`dist` must be a torch.distributions.Distribution; got str"):
        est.check("q")


def test_categorical_estimators_refuse_bernoulli_and_one_class():
    for est in (CategoricalDisARM(), ARSM()):
        name = type(est).__name__
        with pytest.raises(TypeError, match=rf"for {name}; got Bernoulli\. Use DisARM or ARM for Bernoulli"):
            est.check(Bernoulli(logits=torch.zeros(2)))
        with pytest.raises(ValueError, match=rf"`dist` must have at least 2 classes for {name}; got 1"):
            est.check(OneHotCategorical(logits=torch.zeros(3, 1)))
    with pytest.raises(TypeError, match=r"for ARM; got OneHotCategorical"):
        ARM().check(OneHotCategorical(logits=torch.zeros(3)))


# ------------------------------------------------------------------- 5. scg.Graph nodes
#
# Two layers: h1 ~ OneHotCategorical(softmax(A x + a)) with K1 = 3, then h2 | h1 either
# Independent(Bernoulli(σ(W h1 + c)), 1) or OneHotCategorical(softmax(W h1 + c)) with K2 = 3;
# costs c1 = t·h1 and c2 = (h1ᵀ T h2 + 0.3)². Every parameter is a slice of one flat p.
# E[∇ surrogate] is a weighted sum over points of the noise (pieces of u, cells of the simplex,
# enumerated categorical draws), each point a batch element with parameters
# p_k = stop(p) + w_k (p − stop(p)) (the same values, gradient scaled by w_k), so one graph gives
# Σ_k w_k ∇ surrogate_k. The oracle ∇E[c1 + c2] enumerates (h1, h2) in plain torch.

X_IN = torch.tensor([1.0, -0.5, 0.25], dtype=F64)
K1 = 3


def graph_layout(n2: int) -> dict[str, tuple[int, ...]]:
    return {"A": (K1, 3), "a": (K1,), "W": (n2, K1), "c": (n2,)}


def graph_unpack(p: torch.Tensor, n2: int) -> dict[str, torch.Tensor]:
    out, i = {}, 0
    for name, shape in graph_layout(n2).items():
        k = math.prod(shape)
        out[name] = p[..., i : i + k].reshape(*p.shape[:-1], *shape)
        i += k
    return out


def graph_params(n2: int) -> torch.Tensor:
    P = sum(math.prod(s) for s in graph_layout(n2).values())
    return torch.randn(P, generator=gen(77 + n2), dtype=F64)


T1 = torch.tensor([0.5, -1.0, 0.8], dtype=F64)


def t2(n2: int) -> torch.Tensor:
    return torch.randn(K1, n2, generator=gen(88 + n2), dtype=F64)


def graph_oracle(p0: torch.Tensor, layer2: str, n2: int) -> torch.Tensor:
    p = p0.clone().requires_grad_(True)
    P = graph_unpack(p, n2)
    q1 = torch.softmax(P["A"] @ X_IN + P["a"], -1)
    eye = torch.eye(K1, dtype=F64)
    total = p.new_zeros(())
    for i in range(K1):
        h1 = eye[i]
        logits2 = P["W"] @ h1 + P["c"]
        if layer2 == "bernoulli":
            support = [torch.tensor(v, dtype=F64) for v in itertools.product((0.0, 1.0), repeat=n2)]
            probs2 = [
                torch.prod(torch.where(h2 > 0, torch.sigmoid(logits2), torch.sigmoid(-logits2)))
                for h2 in support
            ]
        else:
            support = list(torch.eye(n2, dtype=F64))
            probs2 = list(torch.softmax(logits2, -1))
        for h2, q2 in zip(support, probs2, strict=True):
            total = total + q1[i] * q2 * (T1 @ h1 + (h1 @ t2(n2) @ h2 + 0.3) ** 2)
    return torch.autograd.grad(total, p)[0]


def build_two_layers(g: scg.Graph, p: torch.Tensor, est1, est2, layer2: str, n2: int) -> tuple:
    P = graph_unpack(p, n2)
    q1 = OneHotCategorical(logits=(P["A"] * X_IN).sum(-1) + P["a"])
    h1 = g.sample("h1", q1, est1)
    logits2 = (P["W"] * h1.unsqueeze(-2)).sum(-1) + P["c"]
    q2 = (
        Independent(Bernoulli(logits=logits2), 1)
        if layer2 == "bernoulli"
        else OneHotCategorical(logits=logits2)
    )
    h2 = g.sample("h2", q2, est2)
    g.cost("c1", (h1 * T1).sum(-1))
    g.cost("c2", (((h1.unsqueeze(-1) * t2(n2)).sum(-2) * h2).sum(-1) + 0.3) ** 2)
    return h1, h2


def pieces_of(cuts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Midpoints ``[P, D]`` and volumes ``[P]`` of every product of pieces, cuts ``[D, k]`` (0 and 1 included)."""
    mids, lengths = (cuts[:, 1:] + cuts[:, :-1]) / 2, cuts[:, 1:] - cuts[:, :-1]
    D, n = mids.shape
    grid = torch.cartesian_prod(*[torch.arange(n)] * D).reshape(-1, D) if D > 1 else torch.arange(n)[:, None]
    return mids[torch.arange(D), grid], lengths[torch.arange(D), grid].prod(-1)


def noise_points(kind: str, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Points of one node's noise for the estimator ``kind`` given its (detached) logits, with weights."""
    if kind == "arm":  # Bernoulli units: pieces between min/max(θ, 1 − θ)
        th = torch.sigmoid(logits)
        lo, hi = torch.minimum(th, 1 - th), torch.maximum(th, 1 - th)
        return pieces_of(torch.stack([torch.zeros_like(th), lo, hi, torch.ones_like(th)], -1))
    if kind == "disarm":  # decisions of the ascending stick-breaking: pieces between θ and 1 − θ
        _, th = stick_breaking(torch.softmax(logits, -1).numpy())
        th = torch.from_numpy(th)
        return pieces_of(torch.stack([torch.zeros_like(th), th, 1 - th, torch.ones_like(th)], -1))
    if kind == "arsm":  # one node per triangle of the simplex cells (the integrand is linear there)
        pi, w = simplex_rule(torch.softmax(logits, -1).numpy())
        pi, w = (
            torch.from_numpy(pi).reshape(-1, 3, pi.shape[-1]).mean(1),
            torch.from_numpy(w).reshape(-1, 3).sum(1),
        )
        return torch.exp(-pi), w
    probs = torch.softmax(logits, -1)  # score function: every class, one-hot
    return torch.eye(len(probs), dtype=F64), probs


ESTIMATORS = {"arm": ARM, "disarm": CategoricalDisARM, "arsm": ARSM, "score": scg.ScoreFunction}
GRAPH_CASES = [
    ("disarm", "arm", "bernoulli", 2),
    ("disarm", "disarm", "categorical", 3),
    ("arsm", "arm", "bernoulli", 1),
    ("score", "arsm", "categorical", 3),
]


@pytest.mark.parametrize(
    ("k1", "k2", "layer2", "n2"), GRAPH_CASES, ids=[f"{a}-{b}" for a, b, *_ in GRAPH_CASES]
)
def test_two_layer_graph_exact(k1, k2, layer2, n2):
    p0 = graph_params(n2)
    P0 = graph_unpack(p0, n2)
    est1, est2 = ESTIMATORS[k1](), ESTIMATORS[k2]()
    law1 = "z" if k1 == "score" else "u"
    d1, w1 = noise_points(k1, P0["A"] @ X_IN + P0["a"])
    g0 = scg.Graph(num_samples=1, draws={"h1": {law1: d1[None]}})
    pb = p0.expand(len(w1), -1)
    h1 = g0.sample(
        "h1",
        OneHotCategorical(logits=(graph_unpack(pb, n2)["A"] * X_IN).sum(-1) + graph_unpack(pb, n2)["a"]),
        est1,
    )
    copies = h1.detach().reshape(-1, len(w1), K1)  # [M, B1, K1]: the node's copies of each point
    rows1, rows2, weights = [], [], []
    for b in range(len(w1)):
        per_copy = [noise_points(k2, P0["W"] @ copies[m, b] + P0["c"]) for m in range(copies.shape[0])]
        for combo in itertools.product(*[range(len(w)) for _, w in per_copy]):
            rows1.append(d1[b])
            rows2.append(torch.stack([per_copy[m][0][i] for m, i in enumerate(combo)]))
            weights.append(float(w1[b]) * math.prod(float(per_copy[m][1][i]) for m, i in enumerate(combo)))
    w = torch.tensor(weights, dtype=F64)
    assert abs(float(w.sum()) - 1) < 1e-12
    d2 = torch.stack(rows2, 1)  # [M, B, ...]
    d2 = d2.unsqueeze(1) if k1 != "score" else d2  # child draws: [M, 1, B, ...] under a copy dim
    p = p0.clone().requires_grad_(True)
    pk = p.detach() + w.unsqueeze(-1) * (p - p.detach())
    g = scg.Graph(num_samples=1, draws={"h1": {law1: torch.stack(rows1)[None]}, "h2": {"u": d2}})
    build_two_layers(g, pk, est1, est2, layer2, n2)
    (grad,) = torch.autograd.grad(g.surrogate(), p)
    exact = graph_oracle(p0, layer2, n2)
    assert float(exact.abs().max()) > 0.03  # a nontrivial gradient
    torch.testing.assert_close(grad, exact, rtol=0, atol=1e-11)
