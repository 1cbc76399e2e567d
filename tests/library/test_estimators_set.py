"""UnorderedSet, SumAndSample and Enumerate: exact checks by enumeration, in float64.

Every oracle is computed here, independently of the code under test: class
probabilities by a numpy softmax, the probability of an ordered draw without
replacement as the product of renormalised probabilities, the probability of an
unordered set as the sum over its orderings, ∇E[f] as Σ_i p_i (e_i − p) f_i (the
softmax Jacobian), and each estimator's gradient by its formula written out in numpy
for every point of its draw space. The harness (:mod:`scg.testing`) integrates the
same estimators over their declared laws; the tests compare the two. Nothing is
sampled, except where a test checks a sampler against its exact law (stated below).
"""

from __future__ import annotations

import doctest
import itertools
import math

import numpy as np
import pytest
import torch
from torch.distributions import Bernoulli, Categorical, Independent, Normal, OneHotCategorical

import scg
from scg import baselines as B
from scg.estimators import enumerate as enumerate_module
from scg.estimators import sum_and_sample as sum_and_sample_module
from scg.estimators import unordered_set as unordered_set_module
from scg.estimators.enumerate import Enumerate
from scg.estimators.sum_and_sample import SumAndSample
from scg.estimators.unordered_set import UnorderedSet, set_ratios
from scg.laws import WithoutReplacement
from scg.testing import assert_unbiased, exact_moments

pytestmark = pytest.mark.usefixtures("one_thread_module", "float64")

ATOL = 1e-10  # sums of at most ~5000 float64 terms of size ~1


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max())
    return e / e.sum()


def ordered_prob(p: np.ndarray, order: tuple[int, ...], removed: tuple[int, ...] = ()) -> float:
    """P(draws in this order) without replacement from the classes other than ``removed``."""
    left = 1.0 - sum(p[i] for i in removed)
    out = 1.0
    for i in order:
        out *= p[i] / left
        left -= p[i]
    return out


def set_prob(p: np.ndarray, members: tuple[int, ...], removed: tuple[int, ...] = ()) -> float:
    """P(the unordered set ``members``) drawn from the classes other than ``removed``: sum over orderings."""
    return sum(ordered_prob(p, o, removed) for o in itertools.permutations(members))


def jacobian(p: np.ndarray) -> np.ndarray:
    """∂p_i/∂θ_j of the softmax, ``[i, j]``."""
    return np.diag(p) - np.outer(p, p)


def true_gradient(p: np.ndarray, table: np.ndarray) -> np.ndarray:
    return jacobian(p).T @ table


def unordered_set_by_hand(
    p: np.ndarray, table: np.ndarray, draw: tuple[int, ...], baseline: bool
) -> np.ndarray:
    """The unordered-set estimate w.r.t. the logits for one ordered draw (cost without parameters)."""
    S = tuple(draw)
    total = set_prob(p, S)
    J = jacobian(p)
    g = np.zeros(len(p))
    for s in S:
        others = tuple(i for i in S if i != s)
        p1 = set_prob(p, others, (s,))
        b = 0.0
        if baseline and len(S) > 1:
            b = p[s] * table[s]  # R^{D∖s}(S, s) = 1
            for t in others:
                rest = tuple(i for i in others if i != t)
                b += p[t] * set_prob(p, rest, (s, t)) / p1 * table[t]
        g += J[s] * (p1 / total) * (table[s] - b)
    return g


def moments_by_hand(points: list[tuple[float, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    w = np.array([w for w, _ in points])
    G = np.stack([g for _, g in points])
    assert abs(w.sum() - 1) < 1e-12
    mean = w @ G
    return mean, w @ (G - mean) ** 2


def table_and_logits(K: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=K), rng.normal(size=K) + 2.0


def categorical(logits: torch.Tensor) -> Categorical:
    return Categorical(logits=logits)


# ------------------------------------------------------------------ UnorderedSet


@pytest.mark.parametrize(
    ("K", "k"), [(2, 1), (2, 2), (3, 1), (3, 2), (3, 3), (5, 2), (5, 3), (5, 5), (10, 2), (10, 3)]
)
@pytest.mark.parametrize("baseline", [True, False])
def test_unordered_set_exact_mean_and_variance(K: int, k: int, baseline: bool) -> None:
    logits, table = table_and_logits(K, 10 * K + k)
    p = softmax(logits)
    points = [
        (ordered_prob(p, d), unordered_set_by_hand(p, table, d, baseline))
        for d in itertools.permutations(range(K), k)
    ]
    mean, var = moments_by_hand(points)
    np.testing.assert_allclose(mean, true_gradient(p, table), atol=ATOL)  # the formula is unbiased
    f_table = torch.tensor(table)
    m = assert_unbiased(
        UnorderedSet(k=k, baseline=baseline), categorical, (torch.tensor(logits),), lambda z: f_table[z]
    )
    np.testing.assert_allclose(m.mean.numpy(), mean, atol=ATOL)
    np.testing.assert_allclose(m.variance.numpy(), var, atol=ATOL)
    if k == K:  # the set is every class: the exact gradient
        assert float(m.variance.max()) < 1e-20


def test_unordered_set_baseline_is_shift_invariant() -> None:
    """With the built-in baseline a constant added to f changes no estimate (weights sum to one)."""
    logits, table = table_and_logits(5, 1)
    p = softmax(logits)
    for d in itertools.permutations(range(5), 3):
        np.testing.assert_allclose(
            unordered_set_by_hand(p, table + 100.0, d, True),
            unordered_set_by_hand(p, table, d, True),
            atol=1e-9,
        )
    t = torch.tensor(table)
    params = (torch.tensor(logits),)
    est = UnorderedSet(k=3)
    a = exact_moments(est, categorical, params, lambda z: t[z])
    b = exact_moments(est, categorical, params, lambda z: t[z] + 100.0)
    torch.testing.assert_close(a.variance, b.variance, atol=1e-9, rtol=0)


def test_unordered_set_batch_bernoulli_and_one_hot() -> None:
    logits = torch.tensor([[0.3, -1.0, 2.0, 0.0], [1.5, 0.5, -0.5, -2.0]])
    table = torch.tensor([[1.0, -2.0, 0.5, 3.0], [0.0, 1.0, 4.0, -1.0]])
    m = assert_unbiased(
        UnorderedSet(k=2), lambda l: OneHotCategorical(logits=l), (logits,), lambda z: (z * table).sum(-1)
    )
    # batch elements are independent: the variance of each row is that row's own
    for row in range(2):
        p = softmax(logits[row].numpy())
        pts = [
            (ordered_prob(p, d), unordered_set_by_hand(p, table[row].numpy(), d, True))
            for d in itertools.permutations(range(4), 2)
        ]
        _, var = moments_by_hand(pts)
        np.testing.assert_allclose(m.variance.reshape(2, 4)[row].numpy(), var, atol=ATOL)
    b_logits = torch.tensor([0.4, -1.2, 2.5])
    for k in (1, 2):
        m = assert_unbiased(
            UnorderedSet(k=k), lambda l: Bernoulli(logits=l), (b_logits,), lambda b: (b - 0.3) ** 2
        )
        if k == 2:
            assert float(m.variance.max()) < 1e-20


def test_unordered_set_gradient_of_f_parameters_is_rao_blackwellised() -> None:
    """f's own parameters (a cost table c, f = c[z]): the gradient is Σ_s w_s e_s, w_s = P(first = s | set).

    Its mean is p and its variance that of Σ_s w_s e_s over the ordered draws, both by hand.
    """
    K, k = 4, 2
    logits = torch.tensor([0.5, -0.5, 1.0, 0.0])
    cost = torch.tensor([1.0, -1.0, 2.0, 0.5])
    p = softmax(logits.numpy())
    want, got = [], []
    for d in itertools.permutations(range(K), k):
        total = set_prob(p, d)
        w = np.zeros(K)
        for s in d:
            w[s] = p[s] * set_prob(p, tuple(i for i in d if i != s), (s,)) / total
        want.append((ordered_prob(p, d), w))
        c = cost.clone().requires_grad_(True)
        out = UnorderedSet(k=k).surrogate(
            lambda z, c=c: c[z], Categorical(logits=logits), {"x": torch.tensor([d])}
        )
        got.append((ordered_prob(p, d), torch.autograd.grad(out, c)[0].numpy()))
    mean, var = moments_by_hand(want)
    np.testing.assert_allclose(mean, p, atol=ATOL)
    got_mean, got_var = moments_by_hand(got)
    np.testing.assert_allclose(got_mean, p, atol=ATOL)
    np.testing.assert_allclose(got_var, var, atol=ATOL)
    assert float(var.max()) > 1e-3  # the draws differ: the check can fail


@pytest.mark.parametrize("k", [6, 7])
def test_set_ratios_quadrature_matches_sum_over_orderings(k: int) -> None:
    """Beyond EXACT_MAX the ratios come from the integral; check them against orderings summed here."""
    rng = np.random.default_rng(k)
    for spread in (0.5, 3.0):
        p = softmax(spread * rng.normal(size=k + 3))
        S = tuple(range(k))
        total = set_prob(p, S)
        want1 = np.array([set_prob(p, tuple(i for i in S if i != s), (s,)) / total for s in S])
        want2 = np.ones((k, k))
        for s, t in itertools.permutations(S, 2):
            rest = tuple(i for i in S if i not in (s, t))
            want2[s, t] = set_prob(p, rest, (s, t)) / set_prob(p, tuple(i for i in S if i != s), (s,))
        log_p = torch.tensor(np.log(p[:k]))
        log_rest = torch.tensor(np.log(p[k:].sum()))
        r1, r2 = set_ratios(log_p, log_rest)
        np.testing.assert_allclose(r1.numpy(), want1, rtol=1e-10)
        np.testing.assert_allclose(r2.numpy(), want2, rtol=1e-10)


@pytest.mark.parametrize(("K", "k"), [(5, 3), (6, 4)])
def test_unordered_set_with_quadrature_ratios(K: int, k: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The quadrature path (forced for small k) gives the same exact mean and variance as by hand."""
    monkeypatch.setattr(unordered_set_module, "EXACT_MAX", 2)
    logits, table = table_and_logits(K, 3)
    p = softmax(logits)
    points = [
        (ordered_prob(p, d), unordered_set_by_hand(p, table, d, True))
        for d in itertools.permutations(range(K), k)
    ]
    mean, var = moments_by_hand(points)
    t = torch.tensor(table)
    m = assert_unbiased(UnorderedSet(k=k), categorical, (torch.tensor(logits),), lambda z: t[z])
    np.testing.assert_allclose(m.mean.numpy(), mean, atol=ATOL)
    np.testing.assert_allclose(m.variance.numpy(), var, atol=ATOL)


def test_without_replacement_sampler_matches_its_law() -> None:
    """Gumbel-top-k frequencies against the exact ordered probabilities.

    400,000 draws of 2 of 3 classes (6 tuples): each frequency within 4.5 standard errors
    (false-failure rate below 1e-4 for the 6 cells together, Bonferroni).
    """
    logits = torch.tensor([0.5, -0.3, 1.2])
    p = softmax(logits.numpy())
    law = WithoutReplacement(shape=(400_000, 2), dtype=torch.long, logits=logits)
    x = law.sample(torch.Generator().manual_seed(1))
    assert x.dtype == torch.long and x.shape == (400_000, 2)
    for d in itertools.permutations(range(3), 2):
        want = ordered_prob(p, d)
        freq = float(((x[:, 0] == d[0]) & (x[:, 1] == d[1])).double().mean())
        assert abs(freq - want) < 4.5 * math.sqrt(want * (1 - want) / 400_000), (d, freq, want)


# ------------------------------------------------------------------ SumAndSample


def sum_and_sample_by_hand(
    p: np.ndarray, table: np.ndarray, k: int, z: tuple[int, ...], cv: str
) -> np.ndarray:
    """The sum-and-sample estimate w.r.t. the logits for S = len(z) complement draws (mean over rows)."""
    top = list(np.argsort(-p, kind="stable")[:k])
    qc = p[top].sum()
    J = jacobian(p)
    est = [sum(p[c] * table[c] for c in top) + (1 - qc) * table[zi] for zi in z]
    g = np.zeros(len(p))
    for i, zi in enumerate(z):
        b = {"none": 0.0, "constant": 1.5}.get(cv)
        if cv == "loo":
            b = np.mean([e for j, e in enumerate(est) if j != i])
        g += sum(J[c] * (table[c] - b) for c in top) + (1 - qc) * J[zi] / p[zi] * (table[zi] - b)
    return g / len(z)


@pytest.mark.parametrize(("K", "k"), [(2, 1), (3, 1), (3, 2), (5, 1), (5, 3), (10, 2), (10, 4)])
@pytest.mark.parametrize("cv", ["none", "constant", "loo"])
def test_sum_and_sample_exact_mean_and_variance(K: int, k: int, cv: str) -> None:
    logits, table = table_and_logits(K, 7 * K + k)
    p = softmax(logits)
    top = set(np.argsort(-p, kind="stable")[:k].tolist())
    rest = [i for i in range(K) if i not in top]
    qc = sum(p[c] for c in top)
    S = 2 if cv == "loo" else 1
    points = [
        (math.prod(p[zi] / (1 - qc) for zi in z), sum_and_sample_by_hand(p, table, k, z, cv))
        for z in itertools.product(rest, repeat=S)
    ]
    mean, var = moments_by_hand(points)
    np.testing.assert_allclose(mean, true_gradient(p, table), atol=ATOL)
    baseline = {"none": None, "constant": B.Constant(1.5), "loo": B.LeaveOneOut()}[cv]
    t = torch.tensor(table)
    m = assert_unbiased(
        SumAndSample(k=k, baseline=baseline),
        categorical,
        (torch.tensor(logits),),
        lambda z: t[z],
        num_samples=S,
    )
    np.testing.assert_allclose(m.mean.numpy(), mean, atol=ATOL)
    np.testing.assert_allclose(m.variance.numpy(), var, atol=ATOL)
    if k == K - 1:
        assert float(m.variance.max()) < 1e-20


def test_sum_and_sample_value_is_a_draw_of_q() -> None:
    """The value's first copy is an exact draw of q: E[value] = E[f] (harness over z̃ and u)."""
    logits = torch.tensor([1.0, 0.2, -0.5, 0.7, -1.5])
    table = torch.tensor([2.0, -1.0, 0.5, 3.0, 1.0])
    est = SumAndSample(k=2)
    dist = Categorical(logits=logits)
    laws = est.laws(dist, 1)
    p = softmax(logits.numpy())
    top = np.argsort(-p, kind="stable")[:2]
    cum = np.cumsum(p[top])
    rest = [i for i in range(5) if i not in top]
    value = 0.0
    for zt in rest:
        edges = [0.0, *cum.tolist(), 1.0]
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            u = torch.tensor([(lo + hi) / 2])
            parts = est.parts(dist, {"z": torch.tensor([zt]), "u": u})
            value += p[zt] / (1 - cum[-1]) * (hi - lo) * float(table[parts.value[0, 0]])
            assert sorted(parts.value[:, 0].tolist()) == sorted([*top.tolist(), zt])  # k + 1 distinct points
    np.testing.assert_allclose(value, p @ table.numpy(), atol=1e-12)
    assert set(laws) == {"z", "u"}


def test_sum_and_sample_bernoulli_and_one_hot() -> None:
    m = assert_unbiased(
        SumAndSample(k=1),
        lambda l: Bernoulli(logits=l),
        (torch.tensor([0.3, -2.0]),),
        lambda b: (b - 0.4) ** 2,
    )
    assert float(m.variance.max()) < 1e-20  # k = K − 1: exact
    table = torch.tensor([[1.0, 0.0, 2.0, -1.0]])
    assert_unbiased(
        SumAndSample(k=2, baseline=B.MovingAverage()),
        lambda l: OneHotCategorical(logits=l),
        (torch.tensor([[0.1, 0.9, -0.4, 0.0]]),),
        lambda z: (z * table).sum(-1),
        num_samples=2,
    )


# ------------------------------------------------------------------ Enumerate


def product_oracle(logits: torch.Tensor, table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """E[f] and ∇E[f] for D independent categoricals (rows of logits) and f = table[z_1, ..., z_D]."""
    lg = logits.detach().clone().requires_grad_(True)
    D, K = lg.shape
    logp = lg - lg.logsumexp(-1, keepdim=True)
    total = torch.zeros((), dtype=torch.float64)
    for z in itertools.product(range(K), repeat=D):
        total = total + torch.exp(sum(logp[d, z[d]] for d in range(D))) * table[z]
    (g,) = torch.autograd.grad(total, lg)
    return total.detach(), g


@pytest.mark.parametrize(("D", "K"), [(1, 2), (1, 5), (1, 10), (2, 3), (3, 3), (2, 5)])
@pytest.mark.parametrize("one_hot", [False, True])
def test_enumerate_value_and_gradient_exact(D: int, K: int, one_hot: bool) -> None:
    gen = torch.Generator().manual_seed(D * 10 + K)
    logits = torch.randn(D, K, generator=gen)
    table = torch.randn((K,) * D, generator=gen)

    def f(z: torch.Tensor) -> torch.Tensor:
        idx = z.argmax(-1) if one_hot else z
        return table[tuple(idx[..., d] for d in range(D))]

    family = OneHotCategorical if one_hot else Categorical
    value, grad = product_oracle(logits, table)
    lg = logits.clone().requires_grad_(True)
    dist = Independent(family(logits=lg), 1)
    loss = scg.expectation(f, dist, Enumerate(), num_samples=3)
    loss.backward()
    torch.testing.assert_close(loss.detach(), value, atol=ATOL, rtol=0)
    torch.testing.assert_close(lg.grad, grad, atol=ATOL, rtol=0)
    assert Enumerate().evaluations(dist, 3) == K**D
    m = assert_unbiased(Enumerate(), lambda l: Independent(family(logits=l), 1), (logits,), f)
    assert float(m.variance.max()) < 1e-20
    torch.testing.assert_close(m.mean, grad.reshape(-1), atol=ATOL, rtol=0)


def test_enumerate_bernoulli_product_and_batch() -> None:
    logits = torch.tensor([[0.5, -1.0, 2.0], [0.0, 1.0, -0.5]], requires_grad=True)
    target = torch.tensor([0.2, 0.7, 0.4])

    def f(b: torch.Tensor) -> torch.Tensor:
        return ((b - target) ** 2).sum(-1) * (1 + b[..., 0] * b[..., 1])

    loss = scg.expectation(f, Independent(Bernoulli(logits=logits), 1), Enumerate())
    loss.sum().backward()
    lg = logits.detach().clone().requires_grad_(True)
    want = torch.zeros(2, dtype=torch.float64)
    for bits in itertools.product((0.0, 1.0), repeat=3):
        b = torch.tensor(bits)
        lp = (b * torch.nn.functional.logsigmoid(lg) + (1 - b) * torch.nn.functional.logsigmoid(-lg)).sum(-1)
        want = want + lp.exp() * f(b)
    (g,) = torch.autograd.grad(want.sum(), lg)
    torch.testing.assert_close(loss.detach(), want.detach(), atol=ATOL, rtol=0)
    torch.testing.assert_close(logits.grad, g, atol=ATOL, rtol=0)


# ------------------------------------------------------------------ graph: two layers

K1, K2 = 3, 3


def model_params(seed: int = 5) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(K1 + K1 * K2 + K1 * K2 + K1, generator=gen, dtype=torch.float64)


def unpack(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    a1, W, C, a = torch.split(p, [K1, K1 * K2, K1 * K2, K1])
    return a1, W.reshape(K1, K2), C.reshape(K1, K2), a


def graph_oracle(p: torch.Tensor) -> torch.Tensor:
    """∇ E[C[z1, z2] + a[z1]] for z1 ~ softmax(a1), z2 | z1 ~ softmax(W[z1]), by explicit sums."""
    p = p.detach().clone().requires_grad_(True)
    a1, W, C, a = unpack(p)
    q1 = torch.softmax(a1, -1)
    q2 = torch.softmax(W, -1)
    total = (q1[:, None] * q2 * (C + a[:, None])).sum()
    return torch.autograd.grad(total, p)[0]


def node_draws(est: scg.Estimator, logits: torch.Tensor) -> list[tuple[float, dict[str, torch.Tensor]]]:
    """Every draw of one node (logits ``[*batch, K]``) with its probability, computed here.

    UnorderedSet: ordered tuples, product of renormalised probabilities; SumAndSample: the
    complement classes × the uniform's pieces (the gradient is constant on each; the piece
    midpoint with the piece's length); Enumerate: the classes. Batch elements independent.
    """
    batch = logits.shape[:-1]
    per: list[list[tuple[float, dict[str, list]]]] = []
    for row in logits.detach().reshape(-1, logits.shape[-1]):
        p = softmax(row.numpy())
        K = len(p)
        if isinstance(est, UnorderedSet):
            opts = [(ordered_prob(p, d), {"x": list(d)}) for d in itertools.permutations(range(K), est.k)]
        elif isinstance(est, SumAndSample):
            top = np.argsort(-p, kind="stable")[: est.k]
            qc = p[top].sum()
            edges = [0.0, *np.cumsum(p[top]).tolist(), 1.0]
            opts = [
                (p[z] / (1 - qc) * (hi - lo), {"z": z, "u": (lo + hi) / 2})
                for z in range(K)
                if z not in top
                for lo, hi in zip(edges[:-1], edges[1:], strict=True)
            ]
        else:
            opts = [(p[z], {"z": [0.0] * z + [1.0] + [0.0] * (K - 1 - z)}) for z in range(K)]
        per.append(opts)
    out = []
    for combo in itertools.product(*per):
        w = math.prod(c[0] for c in combo)
        draws = {
            name: torch.tensor([c[1][name] for c in combo]).reshape(1, *batch, *np.shape(combo[0][1][name]))
            for name in combo[0][1]
        }
        out.append((w, draws))
    return out


def run_graph(p, root_est, child_est, draws):
    a1, W, C, a = unpack(p)
    g = scg.Graph(num_samples=1, draws=draws)
    z1 = g.sample("z1", OneHotCategorical(logits=a1), root_est)  # [*copies, 1, K1]
    z2 = g.sample("z2", OneHotCategorical(logits=z1 @ W), child_est)
    g.cost("pair", torch.einsum("...i,ij,...j->...", z1, C, z2))
    g.cost("first", z1 @ a)
    return g, z1


PAIRS = [
    (UnorderedSet(k=2), UnorderedSet(k=2)),
    (SumAndSample(k=1), Enumerate()),
    (Enumerate(), SumAndSample(k=2, baseline=B.Constant(0.5))),
    (UnorderedSet(k=3, baseline=False), SumAndSample(k=2)),
]


@pytest.mark.parametrize(("root_est", "child_est"), PAIRS, ids=["us-us", "ss-enum", "enum-ss", "us-ss"])
def test_two_layer_graph_exact(root_est: scg.Estimator, child_est: scg.Estimator) -> None:
    """E[∇ surrogate] over every draw of both nodes (weights computed here) equals the oracle's gradient."""
    p = model_params()
    a1, W, _, _ = unpack(p)
    mean = torch.zeros_like(p)
    total_w = 0.0
    for w1, d1 in node_draws(root_est, a1.unsqueeze(0)):
        root = {k: v.squeeze(0) for k, v in d1.items()}  # the root's laws(dist, S = 1)
        with torch.no_grad():
            _, z1 = run_graph(p, root_est, child_est, {"z1": root})
            child_logits = z1 @ W  # [*copies, 1, K2]
        for w2, d2 in node_draws(child_est, child_logits):
            child = {k: v.squeeze(0) for k, v in d2.items()}  # a child's laws(dist, 1) without the 1
            q = p.clone().requires_grad_(True)
            g, _ = run_graph(q, root_est, child_est, {"z1": root, "z2": child})
            (grad,) = torch.autograd.grad(g.surrogate(), q)
            mean += w1 * w2 * grad
            total_w += w1 * w2
    assert abs(total_w - 1) < 1e-12
    torch.testing.assert_close(mean, graph_oracle(p), atol=1e-9, rtol=0)


# ------------------------------------------------------------------ bad inputs and docs


def test_bad_inputs() -> None:
    cat = Categorical(logits=torch.zeros(3))
    prod = Independent(Categorical(logits=torch.zeros(2, 3)), 1)
    with pytest.raises(TypeError, match=r"`k` must be an int; got float"):
        UnorderedSet(k=2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`k` must be >= 1; got 0"):
        SumAndSample(k=0)
    with pytest.raises(TypeError, match=r"`baseline` must be a bool; got LeaveOneOut"):
        UnorderedSet(k=2, baseline=B.LeaveOneOut())  # type: ignore[arg-type]
    with pytest.raises(
        ValueError, match=r"`k` must be at most the number of classes K = 3 for UnorderedSet; got k = 4"
    ):
        scg.expectation(lambda z: z.double(), cat, UnorderedSet(k=4))
    with pytest.raises(
        ValueError, match=r"`k` must be less than the number of classes K = 3 for SumAndSample"
    ):
        scg.expectation(lambda z: z.double(), cat, SumAndSample(k=3))
    with pytest.raises(
        TypeError, match=r"one Categorical, OneHotCategorical or Bernoulli variable per batch element"
    ):
        scg.expectation(lambda z: z.double().sum(-1), prod, UnorderedSet(k=2))
    with pytest.raises(TypeError, match=r"Independent product with event shape \[2\].*use Enumerate"):
        scg.expectation(lambda z: z.double().sum(-1), prod, SumAndSample(k=1))
    normal = Normal(torch.zeros(2), 1.0)
    for est in (UnorderedSet(k=1), SumAndSample(k=1)):
        with pytest.raises(TypeError, match=r"`dist` must be Categorical, OneHotCategorical or Bernoulli"):
            scg.expectation(lambda z: z, normal, est)
    with pytest.raises(
        TypeError, match=r"`dist` must be Categorical, OneHotCategorical or Bernoulli \(optionally"
    ):
        scg.expectation(lambda z: z, normal, Enumerate())
    with pytest.raises(ValueError, match=r"Delta"):
        SumAndSample(k=1, baseline=B.Delta())
    with pytest.raises(TypeError, match=r"`baseline` must be a control variate"):
        SumAndSample(k=1, baseline=0.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"`max_support` must be an int"):
        Enumerate(max_support="big")  # type: ignore[arg-type]
    big = Independent(OneHotCategorical(logits=torch.zeros(20, 10)), 1)
    with pytest.raises(
        ValueError, match=r"at most `max_support` = 4096 points for Enumerate; got 10\^20 = about 10\^20"
    ):
        scg.expectation(lambda z: z.sum((-1, -2)), big, Enumerate())
    with pytest.raises(ValueError, match=r"got 3\^2 = 9 points \(2 variables of 3 classes\)"):
        scg.expectation(lambda z: z.double().sum(-1), prod, Enumerate(max_support=8))
    with pytest.raises(ValueError, match=r"`num_samples` must be >= 2 for LeaveOneOut"):
        scg.expectation(lambda z: z.double(), cat, SumAndSample(k=1, baseline=B.LeaveOneOut()), num_samples=1)


def test_contract_shapes_and_value_is_a_draw() -> None:
    """Values carry a copy dim with weights 1, 0, …, 0; the surrogate's value is f at the first copy."""
    logits = torch.randn(4, 6)
    dist = OneHotCategorical(logits=logits)
    cases = ((UnorderedSet(k=3), 3, 15), (SumAndSample(k=2), 3, 15), (Enumerate(), 7, 6))
    for est, copies, evaluations in cases:
        draws = est.draw(dist, 5)
        parts = est.parts(dist, draws)
        assert parts.value.shape == (copies, 5, 4, 6)
        assert parts.copies is not None and parts.copies.tolist() == [1.0] + [0.0] * (copies - 1)
        assert est.evaluations(dist, 5) == evaluations
        if not isinstance(est, Enumerate):  # Enumerate's own surrogate gives E[f] (tested above)
            f = lambda z: (z * torch.arange(6.0)).sum(-1)  # noqa: E731
            assert torch.equal(est.surrogate(f, dist, draws), f(parts.value[0]).mean(0))


def test_docstring_examples_run() -> None:
    for module in (unordered_set_module, sum_and_sample_module, enumerate_module):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0 and result.attempted > 0, module.__name__
