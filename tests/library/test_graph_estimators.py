"""Every unbiased estimator as a ``scg.Graph`` node: exact unbiasedness on a two-layer SBN.

The model is a tiny two-layer sigmoid belief network ("2+2"): x fixed, encoder
q(h1|x) q(h2|h1), generative model p(h2) p(h1|h2) p(x|h1), all Bernoulli, cost the
negative ELBO ``log q(h1|x) + log q(h2|h1) − log p(x, h1, h2)`` (three registered
costs). Every parameter — encoder *and* generative model — is a slice of ONE flat
tensor ``p``, so each check covers every parameter.

Each test computes ``E[∇ surrogate]`` exactly, by replaying the graph
(``scg.Graph(draws=...)``) on every point of an enumeration (score-function and
measure-valued draws: all joint values, weighted by their probability), of DisARM's
pieces (the surrogate is piecewise constant in each uniform: piece midpoint × piece
length) or of a quadrature rule (RELAX; Gauss–Hermite for Normal noise), and compares
it with ``∇ E[cost]``, where ``E[cost]`` is the oracle: an explicit enumeration of
(h1, h2) written in plain torch (``F.logsigmoid`` and matrix products, no
``torch.distributions``, no scg) and differentiated by autograd. The weights of the
grid points are computed by the same plain-torch code (detached). Float64 throughout;
nothing is sampled except where a test compares two samplers on one seed.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Sequence

import pytest
import torch
import torch.nn.functional as F
from numpy.polynomial.hermite_e import hermegauss
from torch import nn
from torch.distributions import Bernoulli, Independent, Normal

import scg
from scg import baselines as B
from scg.testing import quadrature as Q

pytestmark = pytest.mark.usefixtures("one_thread_module", "float64")

X = (1.0, 0.0, 1.0)  # the fixed data point
D = len(X)
ATOL = 1e-9  # enumeration is exact: only float64 rounding of up to ~4000 summed gradients (<1e-15 seen)


def t(*v: float) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.float64)


def x_data() -> torch.Tensor:
    return t(*X)


# ------------------------------------------------------------------ parameters


def layout(n1: int, n2: int) -> dict[str, tuple[int, ...]]:
    """Shapes of the named slices of the flat parameter vector (in order)."""
    return {
        "W1": (n1, D),
        "c1": (n1,),  # q(h1 | x) = Bern(σ(W1 x + c1))
        "W2": (n2, n1),
        "c2": (n2,),  # q(h2 | h1) = Bern(σ(W2 h1 + c2))
        "a2": (n2,),  # p(h2) = Bern(σ(a2))
        "V1": (n1, n2),
        "d1": (n1,),  # p(h1 | h2) = Bern(σ(V1 h2 + d1))
        "V0": (D, n1),
        "d0": (D,),  # p(x | h1) = Bern(σ(V0 h1 + d0))
    }


def num_params(n1: int, n2: int) -> int:
    return sum(math.prod(s) for s in layout(n1, n2).values())


def unpack(p: torch.Tensor, n1: int, n2: int) -> dict[str, torch.Tensor]:
    """Views of ``p [*B, P]`` as the named parameters ``[*B, *shape]``."""
    out, i, lead = {}, 0, p.shape[:-1]
    for name, shape in layout(n1, n2).items():
        k = math.prod(shape)
        out[name] = p[..., i : i + k].reshape(*lead, *shape)
        i += k
    return out


def p_init(n1: int = 2, n2: int = 2, seed: int = 20240611) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return 0.9 * torch.randn(num_params(n1, n2), generator=gen, dtype=torch.float64)


# ------------------------------------------------------------- the oracle (plain torch)


def log_bern(h: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Σ_units log Bern(h | σ(logits)) in plain torch."""
    return (h * F.logsigmoid(logits) + (1 - h) * F.logsigmoid(-logits)).sum(-1)


def enc1_logits(P: dict, x: torch.Tensor) -> torch.Tensor:
    return P["W1"] @ x + P["c1"]


def enc2_logits(P: dict, h1: torch.Tensor) -> torch.Tensor:
    return P["W2"] @ h1 + P["c2"]


def oracle_terms(P: dict, h1: torch.Tensor, h2: torch.Tensor, x: torch.Tensor):
    """(log q(h1|x), log q(h2|h1), log p(x, h1, h2)) for one configuration (vectors h1, h2)."""
    lq1 = log_bern(h1, enc1_logits(P, x))
    lq2 = log_bern(h2, enc2_logits(P, h1))
    lp = log_bern(h2, P["a2"]) + log_bern(h1, P["V1"] @ h2 + P["d1"]) + log_bern(x, P["V0"] @ h1 + P["d0"])
    return lq1, lq2, lp


def bits(n: int) -> list[torch.Tensor]:
    return [t(*v) for v in itertools.product((0.0, 1.0), repeat=n)]


def oracle_objective(p: torch.Tensor, n1: int, n2: int) -> torch.Tensor:
    """E_q[log q(h1|x) + log q(h2|h1) − log p(x, h1, h2)] by explicit enumeration (the negative ELBO)."""
    P, x = unpack(p, n1, n2), x_data()
    total = p.new_zeros(())
    for h1 in bits(n1):
        for h2 in bits(n2):
            lq1, lq2, lp = oracle_terms(P, h1, h2, x)
            total = total + torch.exp(lq1 + lq2) * (lq1 + lq2 - lp)
    return total


def oracle_gradient(p0: torch.Tensor, n1: int, n2: int) -> torch.Tensor:
    p = p0.clone().requires_grad_(True)
    return torch.autograd.grad(oracle_objective(p, n1, n2), p)[0]


def q1_prob(p0: torch.Tensor, n1: int, n2: int, h1: torch.Tensor) -> float:
    P = unpack(p0.detach(), n1, n2)
    return float(torch.exp(log_bern(h1, enc1_logits(P, x_data()))))


def q2_prob(p0: torch.Tensor, n1: int, n2: int, h1: torch.Tensor, h2: torch.Tensor) -> float:
    P = unpack(p0.detach(), n1, n2)
    return float(torch.exp(log_bern(h2, enc2_logits(P, h1))))


def theta1(p0: torch.Tensor, n1: int, n2: int) -> torch.Tensor:
    return torch.sigmoid(enc1_logits(unpack(p0.detach(), n1, n2), x_data()))


def theta2(p0: torch.Tensor, n1: int, n2: int, h1: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(enc2_logits(unpack(p0.detach(), n1, n2), h1))


# ---------------------------------------------------------------- the model (graph)


def bmv(W: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``W [*B, m, n]`` times ``h [..., *B, n]`` -> ``[..., *B, m]`` (broadcasting over the sample dims)."""
    return (W * h.unsqueeze(-2)).sum(-1)


def build_sbn(
    g: scg.Graph,
    p: torch.Tensor,
    est1,
    est2,
    *,
    n1: int = 2,
    n2: int = 2,
    nvil: bool = False,
    one_cost: bool = False,
):
    """The SBN in a graph: nodes h1, h2, costs log q1, log q2, −log p (or their sum, ``one_cost``).

    ``p`` may carry leading batch dims ``[*B, P]`` (independent copies of the model).
    ``nvil``: give the NVIL contexts (x for h1, the detached parent h1 for h2).
    """
    P = unpack(p, n1, n2)
    lead = p.shape[:-1]
    x = x_data().expand(*lead, D)
    q1 = Independent(Bernoulli(logits=bmv(P["W1"], x) + P["c1"]), 1)
    h1 = g.sample("h1", q1, est1, **({"context": x} if nvil else {}))
    q2 = Independent(Bernoulli(logits=bmv(P["W2"], h1) + P["c2"]), 1)
    h2 = g.sample("h2", q2, est2, **({"context": h1.detach()} if nvil else {}))
    log_q1 = q1.log_prob(h1)
    log_q2 = q2.log_prob(h2)
    log_p = (
        Independent(Bernoulli(logits=P["a2"].expand(h2.shape)), 1).log_prob(h2)
        + Independent(Bernoulli(logits=bmv(P["V1"], h2) + P["d1"]), 1).log_prob(h1)
        + Independent(Bernoulli(logits=bmv(P["V0"], h1) + P["d0"]), 1).log_prob(x)
    )
    if one_cost:
        g.cost("neg_elbo", log_q1 + log_q2 - log_p)
    else:
        g.cost("log_q1", log_q1)
        g.cost("log_q2", log_q2)
        g.cost("neg_log_p", -log_p)
    return h1, h2


# ------------------------------------------------------------------ the harness


Grid = Iterable[tuple[dict, float]]


def expected_graph_gradient(build: Callable, p0: torch.Tensor, grid: Grid, *, S: int = 1):
    """Σ_points weight · ∇_p surrogate(graph replayed on the point's draws); also Σ weights."""
    p = p0.clone().requires_grad_(True)
    est = torch.zeros_like(p0)
    mass = 0.0
    for draws, weight in grid:
        g = scg.Graph(num_samples=S, draws=draws)
        build(g, p)
        (grad,) = torch.autograd.grad(g.surrogate(), p)
        est += weight * grad
        mass += weight
    return est, mass


def check(
    build: Callable,
    p0: torch.Tensor,
    grid: Grid,
    n1: int,
    n2: int,
    *,
    S: int = 1,
    atol: float = ATOL,
    mass_atol: float = 1e-12,
):
    est, mass = expected_graph_gradient(build, p0, grid, S=S)
    assert abs(mass - 1.0) < mass_atol, f"grid weights sum to {mass}, not 1"
    exact = oracle_gradient(p0, n1, n2)
    assert float(exact.abs().max()) > 0.1  # a nontrivial gradient
    torch.testing.assert_close(est, exact, atol=atol, rtol=0)
    return est, exact


def product(*factors: Sequence[tuple[object, float]]):
    """Cartesian product of lists of (value, weight): yields (tuple of values, product of weights)."""
    for combo in itertools.product(*factors):
        yield tuple(v for v, _ in combo), math.prod(w for _, w in combo)


def disarm_pieces(theta: float) -> list[tuple[float, float]]:
    """DisARM's three pieces of u ∈ (0, 1) for one unit: (midpoint, length)."""
    lo, hi = min(theta, 1 - theta), max(theta, 1 - theta)
    return [((a + b) / 2, b - a) for a, b in ((0.0, lo), (lo, hi), (hi, 1.0))]


def disarm_pair(u: torch.Tensor, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The antithetic pair b = 1[u < θ], b̃ = 1[1 − u < θ] (plain torch)."""
    return (u < theta).double(), (1 - u < theta).double()


def disarm_grid_1(p0, n1, n2) -> list[tuple[torch.Tensor, float]]:
    """Layer-1 DisARM uniforms: every combination of pieces, u [1, n1] at the midpoints."""
    th = theta1(p0, n1, n2).tolist()
    return [(t(*u).reshape(1, n1), w) for u, w in product(*[disarm_pieces(c) for c in th])]


def sf_points(
    n: int, rows: Sequence[Callable[[torch.Tensor], float]], shape
) -> list[tuple[torch.Tensor, float]]:
    """All joint values of ``len(rows)`` independent n-unit Bernoulli vectors; ``rows[r](h) = P(row r = h)``."""
    out = []
    for combo in itertools.product(bits(n), repeat=len(rows)):
        w = math.prod(prob(h) for prob, h in zip(rows, combo, strict=False))
        out.append((torch.stack(combo).reshape(shape), w))
    return out


# --------------------------------------------------------- 1. every estimator at both layers


def sf_both_grid(p0, n1=2, n2=2, S=1):
    """Score-function draws at both layers: every joint value of the S samples of h1 and h2."""
    grid = []
    for h1s in itertools.product(bits(n1), repeat=S):
        w1 = math.prod(q1_prob(p0, n1, n2, h) for h in h1s)
        for h2s in itertools.product(bits(n2), repeat=S):
            w2 = math.prod(q2_prob(p0, n1, n2, a, b) for a, b in zip(h1s, h2s, strict=False))
            draws = {"h1": {"z": torch.stack(h1s)}, "h2": {"z": torch.stack(h2s)}}
            grid.append((draws, w1 * w2))
    return grid


def primed(est1: scg.Estimator, est2: scg.Estimator, nvil: bool) -> tuple[scg.Estimator, scg.Estimator]:
    """Run one training step so that running baselines hold a nonzero state, then freeze them."""
    torch.manual_seed(3)
    g = scg.Graph(num_samples=1)
    build_sbn(g, p_init().requires_grad_(), est1, est2, nvil=nvil)
    g.surrogate().backward()
    for est in (est1, est2):
        for m in est.modules():
            if isinstance(m, B.MovingAverage):
                assert int(m.steps) == 1 and float(m.value) != 0.0
        est.eval()
    return est1, est2


def _mlp_baseline(inputs: int) -> nn.Module:
    net = nn.Sequential(nn.Linear(inputs, 3), nn.Tanh(), nn.Linear(3, 1))
    with torch.no_grad():
        gen = torch.Generator().manual_seed(inputs)
        for q in net.parameters():
            q.copy_(torch.randn(q.shape, generator=gen, dtype=q.dtype))
    return net


SCORE_FUNCTION_CASES = {
    "plain": lambda: (scg.ScoreFunction(), scg.ScoreFunction(), 1, False),
    "leave_one_out_S2": lambda: (
        scg.ScoreFunction(B.LeaveOneOut()),
        scg.ScoreFunction(B.LeaveOneOut()),
        2,
        False,
    ),
    "moving_average": lambda: (
        *primed(scg.ScoreFunction(B.MovingAverage()), scg.ScoreFunction(B.MovingAverage()), False),
        1,
        False,
    ),
    "nvil_moving_average_learned": lambda: (
        *primed(
            scg.ScoreFunction(B.chain(B.MovingAverage(), B.Learned(_mlp_baseline(D)))),
            scg.ScoreFunction(B.chain(B.MovingAverage(), B.Learned(_mlp_baseline(2)))),
            True,
        ),
        1,
        True,
    ),
}


@pytest.mark.parametrize("case", list(SCORE_FUNCTION_CASES))
def test_score_function_both_layers_exact(case):
    """ScoreFunction at both layers (no baseline; RLOO with S = 2; a primed, frozen moving average;
    NVIL's moving average + learned baseline, frozen, with contexts x and h1): the expectation over
    every joint value of the replayed ``z`` draws (all S samples) of ∇ surrogate equals ∇ of the
    plain-torch enumerated negative ELBO, for every parameter."""
    est1, est2, S, nvil = SCORE_FUNCTION_CASES[case]()

    def build(g, p):
        build_sbn(g, p, est1, est2, nvil=nvil)

    p0 = p_init()
    check(build, p0, sf_both_grid(p0, S=S), 2, 2, S=S)
    for est in (est1, est2):  # frozen state was not touched by the enumeration
        for m in est.modules():
            if isinstance(m, B.MovingAverage):
                assert int(m.steps) == 1


def test_disarm_both_layers_exact():
    """DisARM at both layers. Layer 1: u [1, 2], three pieces per unit with breakpoints
    min/max(θ1, 1 − θ1). Layer 2 is drawn once per copy of h1 (b and b̃): u [2, 1, 2], whose
    breakpoints use θ2 = σ(W2 h1 + c2) of *that* row's h1. The surrogate is constant on each
    piece, so Σ length · ∇ surrogate(midpoint) over the 9 × 81 pieces is E[∇ surrogate] exactly;
    compared with ∇ of the plain-torch negative ELBO."""
    n1 = n2 = 2
    p0 = p_init()
    grid = []
    for u1, w1 in disarm_grid_1(p0, n1, n2):
        b, b_anti = disarm_pair(u1[0], theta1(p0, n1, n2))
        pieces = [disarm_pieces(c) for row in (b, b_anti) for c in theta2(p0, n1, n2, row).tolist()]
        for u2, w2 in product(*pieces):
            grid.append(({"h1": {"u": u1}, "h2": {"u": t(*u2).reshape(2, 1, n2)}}, w1 * w2))

    def build(g, p):
        h1, h2 = build_sbn(g, p, scg.DisARM(), scg.DisARM())
        assert h1.shape == (2, 1, n1) and h2.shape == (2, 2, 1, n2)

    check(build, p0, grid, n1, n2)


def mv_copies(h: torch.Tensor) -> torch.Tensor:
    """MeasureValued's copies of a Bernoulli vector h [E]: h, h with unit j ← 1 (j = 1..E), h with j ← 0."""
    E = h.shape[-1]
    rows = [h]
    for v in (1.0, 0.0):
        for j in range(E):
            r = h.clone()
            r[j] = v
            rows.append(r)
    return torch.stack(rows)  # [1 + 2E, E]


def test_measure_valued_both_layers_exact():
    """MeasureValued at both layers. h1's value has 1 + 2·2 = 5 copies (the draw, then each unit
    set to 1, then to 0; checked against the graph's value) and h2 is drawn once per copy:
    its replayed ``z`` is [5, 1, 2], every joint value enumerated (4 × 2^10 points), weighted by
    q(h1|x) Π_r q(h2_r | h1 copy r). Against ∇ of the plain-torch negative ELBO.

    To keep the 4096 points fast they are evaluated 1024 at a time as *batch elements* of one
    graph (batch elements are independent expectations): batch element k uses the parameters
    ``p_k = stop(p) + w_k (p − stop(p))`` — the same values, gradient scaled by its weight w_k —
    so ``∇_p surrogate = Σ_k w_k ∇ surrogate_k`` by the chain rule alone."""
    n1 = n2 = 2
    p0 = p_init()
    E1 = 1 + 2 * n1
    p = p0.clone().requires_grad_(True)
    est = torch.zeros_like(p0)
    mass = 0.0
    for h1 in bits(n1):
        copies = mv_copies(h1)  # [5, n1]
        pts = sf_points(
            n2, [lambda h, r=r, copies=copies: q2_prob(p0, n1, n2, copies[r], h) for r in range(E1)], (E1, n2)
        )
        z2 = torch.stack([z for z, _ in pts], dim=1).unsqueeze(1)  # [5, 1, K, n2]
        w = q1_prob(p0, n1, n2, h1) * t(*[wt for _, wt in pts])  # [K]
        K = w.shape[0]
        pk = p.detach() + w.unsqueeze(-1) * (p - p.detach())  # [K, P]
        g = scg.Graph(num_samples=1, draws={"h1": {"z": h1.expand(1, K, n1)}, "h2": {"z": z2}})
        v1, v2 = build_sbn(g, pk, scg.MeasureValued(), scg.MeasureValued())
        assert v1.shape == (E1, 1, K, n1) and v2.shape == (1 + 2 * n2, E1, 1, K, n2)
        assert torch.equal(v1[:, 0], copies.unsqueeze(1).expand(E1, K, n1))
        est += torch.autograd.grad(g.surrogate(), p)[0]
        mass += float(w.sum())
    assert abs(mass - 1.0) < 1e-12
    torch.testing.assert_close(est, oracle_gradient(p0, n1, n2), atol=ATOL, rtol=0)


# ----------------------------------------------------------------------------- RELAX


class RelaxedFeatures(nn.Module):
    """A LAX-style control variate net, ``[n, *batch, E] -> [n, *batch]``: a cubic in s = σ(z) per unit,

    c(z) = Σ_e (w1_e s_e + w2_e s_e² + w3_e s_e³) + c0 (learnable w, c0).

    With z = φ + logit u, s = θu / (θu + (1 − θ)(1 − u)) is rational in u with its pole
    outside [0, 1] (and likewise z̃ in v), so the RELAX integrand is analytic on each piece
    of u and on v ∈ (0, 1): Gauss–Legendre converges geometrically there.
    """

    def __init__(self, E: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(17 + E)
        self.w = nn.Parameter(2.0 * torch.randn(3, E, generator=gen, dtype=torch.float64))
        self.c0 = nn.Parameter(torch.tensor(0.3, dtype=torch.float64))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(z)
        return (self.w[0] * s + self.w[1] * s**2 + self.w[2] * s**3).sum(-1) + self.c0


def relax_rule(n: int, a: float, b: float) -> list[tuple[float, float]]:
    x, w = Q.gauss_legendre(n, a, b)
    return list(zip(x.tolist(), w.tolist(), strict=False))


def relax_points(theta: float, n: int) -> list[tuple[tuple[float, float], float]]:
    """(u, v) nodes and weights: u on its two pieces (0, 1 − θ), (1 − θ, 1), v on (0, 1)."""
    us = relax_rule(n, 0.0, 1.0 - theta) + relax_rule(n, 1.0 - theta, 1.0)
    vs = relax_rule(n, 0.0, 1.0)
    return [((u, v), wu * wv) for (u, wu), (v, wv) in itertools.product(us, vs)]


def with_values(p0: torch.Tensor, n1: int, n2: int, **values: Sequence[float]) -> torch.Tensor:
    """A copy of ``p0`` with the named slices set to ``values``."""
    p = p0.clone()
    P = unpack(p, n1, n2)
    for name, v in values.items():
        P[name].copy_(t(*v).reshape(P[name].shape))
    return p


RELAX_NODES = 7  # Gauss–Legendre nodes per piece and dim (errors seen: 6e-8 at 4, 5e-11 at 6, 2e-14 at 8)


@pytest.mark.parametrize("layer", ["layer1", "layer2"])
def test_relax_node_exact(layer):
    """RELAX(NeuralControlVariate(net, rebar=False)) as a graph node, the other layer ScoreFunction().

    A full 2+2 RELAX grid (u and v per unit at both layers: 8 continuous dims) is too large to
    loop over, so the RELAX layer has 1 unit: "1+2" (RELAX root h1, ScoreFunction child h2) and
    "2+1" (ScoreFunction root h1, RELAX child h2). The net is a cubic in σ(z) with learnable
    coefficients (:class:`RelaxedFeatures`). The RELAX integrand is piecewise smooth in u (pieces
    u < 1 − θ and u > 1 − θ, b constant on each, θ of the node's own row) and smooth in v; it is
    analytic on each piece because σ(φ + logit u) is rational in u, with its pole ~1/|1 − 2θ| away;
    the RELAX unit's logits are set so that θ ∈ [0.4, 0.7], which keeps the poles at least about a
    piece length away, so Gauss–Legendre (RELAX_NODES per piece, and on v ∈ (0, 1)) converges
    geometrically: errors of 6e-8, 5e-11 and 2e-14 at 4, 6 and 8 nodes, hence atol 1e-9 at 7.
    The other node is enumerated; against ∇ of the plain-torch negative ELBO."""
    if layer == "layer1":
        n1, n2 = 1, 2
        p0 = with_values(p_init(n1, n2), n1, n2, W1=(0.3, -1.0, 0.6), c1=(-0.5,))
    else:
        n1, n2 = 2, 1
        p0 = with_values(p_init(n1, n2), n1, n2, W2=(0.5, -0.4), c2=(0.2,))
    relax = scg.RELAX(scg.estimators.NeuralControlVariate(RelaxedFeatures(1), rebar=False))
    grid = []
    if layer == "layer1":
        th = float(theta1(p0, n1, n2)[0])
        assert 0.4 < th < 0.7
        for (u, v), w in relax_points(th, RELAX_NODES):
            h1 = t(float(u > 1 - th))  # b = 1[φ + logit u > 0]
            for h2 in bits(n2):
                draws = {
                    "h1": {"u": t(u).reshape(1, 1), "v": t(v).reshape(1, 1)},
                    "h2": {"z": h2.reshape(1, n2)},
                }
                grid.append((draws, w * q2_prob(p0, n1, n2, h1, h2)))

        def build(g, p):
            build_sbn(g, p, relax, scg.ScoreFunction(), n1=n1, n2=n2)
    else:
        for h1 in bits(n1):
            th = float(theta2(p0, n1, n2, h1)[0])
            assert 0.4 < th < 0.7
            for (u, v), w in relax_points(th, RELAX_NODES):
                draws = {
                    "h1": {"z": h1.reshape(1, n1)},
                    "h2": {"u": t(u).reshape(1, 1), "v": t(v).reshape(1, 1)},
                }
                grid.append((draws, q1_prob(p0, n1, n2, h1) * w))

        def build(g, p):
            build_sbn(g, p, scg.ScoreFunction(), relax, n1=n1, n2=n2)

    check(build, p0, grid, n1, n2)


# ------------------------------------------------------------------ 2. mixed layers


def test_disarm_layer1_score_function_layer2_exact():
    """Layer 1 DisARM (u [1, 2], 9 pieces), layer 2 ScoreFunction() drawn once per copy of h1:
    its ``z`` [2, 1, 2] enumerated (16 values), weighted by q(h2_0 | b) q(h2_1 | b̃). Against ∇ of the
    plain-torch negative ELBO."""
    n1 = n2 = 2
    p0 = p_init()
    grid = []
    for u1, w1 in disarm_grid_1(p0, n1, n2):
        b, b_anti = disarm_pair(u1[0], theta1(p0, n1, n2))
        rows = [lambda h, r=r: q2_prob(p0, n1, n2, r, h) for r in (b, b_anti)]
        for z2, w2 in sf_points(n2, rows, (2, 1, n2)):
            grid.append(({"h1": {"u": u1}, "h2": {"z": z2}}, w1 * w2))

    def build(g, p):
        h1, h2 = build_sbn(g, p, scg.DisARM(), scg.ScoreFunction())
        assert h1.shape == (2, 1, n1) and h2.shape == (2, 1, n2)

    check(build, p0, grid, n1, n2)


def test_score_function_layer1_disarm_layer2_exact():
    """Layer 1 ScoreFunction() (``z`` [1, 2] enumerated), layer 2 DisARM with u [1, 2] in the 9
    pieces given by θ2 = σ(W2 h1 + c2) of the enumerated h1. Against ∇ of the plain-torch negative ELBO."""
    n1 = n2 = 2
    p0 = p_init()
    grid = []
    for h1 in bits(n1):
        pieces = [disarm_pieces(c) for c in theta2(p0, n1, n2, h1).tolist()]
        for u2, w2 in product(*pieces):
            grid.append(
                (
                    {"h1": {"z": h1.reshape(1, n1)}, "h2": {"u": t(*u2).reshape(1, n2)}},
                    q1_prob(p0, n1, n2, h1) * w2,
                )
            )

    def build(g, p):
        h1, h2 = build_sbn(g, p, scg.ScoreFunction(), scg.DisARM())
        assert h1.shape == (1, n1) and h2.shape == (2, 1, n2)

    check(build, p0, grid, n1, n2)


def test_disarm_layer1_measure_valued_layer2_exact():
    """Two kinds of copy dims stacked: layer 1 DisARM (pair, weights ½, ½), layer 2 MeasureValued
    (5 copies, weights 1, 0, …, 0) drawn once per copy of h1 (``z`` [2, 1, 2], 16 values, weighted
    by q(h2_0 | b) q(h2_1 | b̃)); h2's value is [5, 2, 1, 2]. Against ∇ of the plain-torch negative ELBO."""
    n1 = n2 = 2
    p0 = p_init()
    grid = []
    for u1, w1 in disarm_grid_1(p0, n1, n2):
        b, b_anti = disarm_pair(u1[0], theta1(p0, n1, n2))
        rows = [lambda h, r=r: q2_prob(p0, n1, n2, r, h) for r in (b, b_anti)]
        for z2, w2 in sf_points(n2, rows, (2, 1, n2)):
            grid.append(({"h1": {"u": u1}, "h2": {"z": z2}}, w1 * w2))

    def build(g, p):
        h1, h2 = build_sbn(g, p, scg.DisARM(), scg.MeasureValued())
        assert h1.shape == (2, 1, n1) and h2.shape == (1 + 2 * n2, 2, 1, n2)

    check(build, p0, grid, n1, n2)


# ------------------------------------------------- 3. the graph equals nested scg.expectation


def neg_elbo(P: dict, x: torch.Tensor, h1: torch.Tensor, h2: torch.Tensor) -> torch.Tensor:
    """log q(h1|x) + log q(h2|h1) − log p(x, h1, h2), broadcasting h1 [..., n1] against h2 [..., n2]."""
    lq1 = log_bern(h1, P["W1"] @ x + P["c1"])
    lq2 = log_bern(h2, h1 @ P["W2"].T + P["c2"])
    lp = (
        log_bern(h2, P["a2"]) + log_bern(h1, h2 @ P["V1"].T + P["d1"]) + log_bern(x, h1 @ P["V0"].T + P["d0"])
    )
    return lq1 + lq2 - lp


def nested(p: torch.Tensor, est1: scg.Estimator, est2: scg.Estimator, S: int, seen: list):
    """``expectation(h1 ↦ expectation(h2 ↦ cost(h1, h2), q2(h1), est2, 1), q1, est1, S)``."""
    P, x = unpack(p, 2, 2), x_data()
    q1 = Independent(Bernoulli(logits=P["W1"] @ x + P["c1"]), 1)

    def outer_f(h1):  # [R, 2]: R = 2S (DisARM's pair flattened) or S
        q2 = Independent(Bernoulli(logits=h1 @ P["W2"].T + P["c2"]), 1)  # batch [R]

        def inner_f(h2):  # [K, R, 2]: K = 2 (DisARM) or 1
            seen.append((h1.detach().clone(), h2.detach().clone()))
            return neg_elbo(P, x, h1, h2)

        return scg.expectation(inner_f, q2, est2, num_samples=1).reshape(h1.shape[0])

    return scg.expectation(outer_f, q1, est1, num_samples=S)


@pytest.mark.parametrize("costs", ["one_cost", "three_costs"])
def test_disarm_graph_equals_nested_expectation(costs):
    """DisARM at both layers, S = 4, same seed: the graph's surrogate value and gradient (all
    parameters) equal those of the nested ``scg.expectation`` form (rtol 1e-12).

    Layouts: the graph draws u1 [S, 2] then, for its child, u2 [1, 2, S, 2] (copy of h1, sample);
    the nested form draws u1 [S, 2] then u2 [1, 2S, 2] for q2(h1) with h1 flattened to [2S, 2]
    (copy-major, as ``expectation`` flattens the pair). Both are ``torch.rand`` calls of the same
    size in the same order, and the flattening is row-major, so graph element (k1, s) is nested
    row k1·S + s: checked on the draws (against fresh ``torch.rand`` calls on the seed) and on the
    values, graph h1 [2, S, 2] ↔ nested h1 [2S, 2] and graph h2 [k2, k1, S, 2] ↔ nested
    h2 [k2, k1·S + s, 2]. With three costs the graph credits log q1 to h1 only while the nested
    inner DisARM sees it in both copies of its pair, where it cancels in f(b) − f(b̃): equal up to
    rounding (hence rtol, not bit equality)."""
    S = 4
    p0 = p_init()

    p = p0.clone().requires_grad_(True)
    torch.manual_seed(7)
    g = scg.Graph(num_samples=S)
    h1, h2 = build_sbn(g, p, scg.DisARM(), scg.DisARM(), one_cost=(costs == "one_cost"))
    s_graph = g.surrogate()
    grad_graph = torch.autograd.grad(s_graph, p)[0]

    torch.manual_seed(7)
    u1 = torch.rand(S, 2)
    u2 = torch.rand(1, 2 * S, 2)
    assert torch.equal(g.draws["h1"]["u"], u1)
    assert torch.equal(g.draws["h2"]["u"].reshape(1, 2 * S, 2), u2)

    q = p0.clone().requires_grad_(True)
    seen: list = []
    torch.manual_seed(7)
    s_nested = nested(q, scg.DisARM(), scg.DisARM(), S, seen)
    grad_nested = torch.autograd.grad(s_nested, q)[0]

    ((n_h1, n_h2),) = seen
    assert h1.shape == (2, S, 2) and h2.shape == (2, 2, S, 2)
    assert n_h1.shape == (2 * S, 2) and n_h2.shape == (2, 2 * S, 2)
    assert torch.equal(h1.detach().reshape(2 * S, 2), n_h1)
    assert torch.equal(h2.detach().reshape(2, 2 * S, 2), n_h2)
    torch.testing.assert_close(s_graph, s_nested, rtol=1e-12, atol=0)
    torch.testing.assert_close(grad_graph, grad_nested, rtol=1e-12, atol=0)
    assert float(grad_graph.abs().max()) > 0.1


def test_score_function_graph_equals_nested_expectation():
    """ScoreFunction() at both layers, S = 3, same seed, the negative ELBO as ONE cost: the graph's
    surrogate value and gradient equal the nested ``scg.expectation`` form's (rtol 1e-12). The graph
    draws h1 [3, 2] then h2 [1, 3, 2] (its child law), the nested form h1 [3, 2] then h2 [1, 3, 2] for
    q2(h1) of batch [3]: identical draws (checked). The cost is one tensor because DiCE credits each
    cost with the nodes it depends on: a separate log q1 cost would (correctly) not be multiplied by
    □(log q2) in the graph, while the nested form multiplies the whole inner cost by it — equal in
    expectation, not per draw."""
    S = 3
    p0 = p_init()
    p = p0.clone().requires_grad_(True)
    torch.manual_seed(11)
    g = scg.Graph(num_samples=S)
    h1, h2 = build_sbn(g, p, scg.ScoreFunction(), scg.ScoreFunction(), one_cost=True)
    s_graph = g.surrogate()
    grad_graph = torch.autograd.grad(s_graph, p)[0]

    q = p0.clone().requires_grad_(True)
    seen: list = []
    torch.manual_seed(11)
    s_nested = nested(q, scg.ScoreFunction(), scg.ScoreFunction(), S, seen)
    grad_nested = torch.autograd.grad(s_nested, q)[0]

    ((n_h1, n_h2),) = seen
    assert h1.shape == (S, 2) and h2.shape == (S, 2) and n_h2.shape == (1, S, 2)
    assert torch.equal(h1.detach(), n_h1) and torch.equal(h2.detach(), n_h2[0])
    torch.testing.assert_close(s_graph, s_nested, rtol=1e-12, atol=0)
    torch.testing.assert_close(grad_graph, grad_nested, rtol=1e-12, atol=0)
    assert float(grad_graph.abs().max()) > 0.1


# ------------------------------------------------------- 4. a user's own estimator as a node


class AntitheticNormal(scg.Estimator):
    """A user's antithetic pathwise estimator for Normal: the pair loc ± scale·eps as two copies (½, ½)."""

    def laws(self, dist, num_samples):
        return {"eps": scg.laws.StandardNormal((num_samples, *dist.batch_shape))}

    def parts(self, dist, draws, *, context=None):
        eps = draws["eps"]
        value = dist.loc + dist.scale * torch.stack([eps, -eps])  # [2, n, *batch]
        return scg.Parts(value, copies=torch.tensor([0.5, 0.5], dtype=value.dtype))


def gauss_hermite(n: int) -> list[tuple[float, float]]:
    x, w = hermegauss(n)
    return list(zip(x.tolist(), (w / math.sqrt(2 * math.pi)).tolist(), strict=False))


def test_user_antithetic_estimator_node_exact():
    """A user's Estimator subclass (laws + parts, copies ½, ½) as the root of a 2-node graph:
    z ~ N(p0, e^{p1}) with :class:`AntitheticNormal`, b ~ Bern(σ(p2 z + p3)) with ScoreFunction(),
    costs (z − p4)² and (b − 0.3)² (1 + sin z). z's value is [2, 1] (the pair); b is drawn once per
    copy, its ``z`` draws [2, 1] enumerated, weighted by q(b_0 | z_+) q(b_1 | z_−).

    Against ∇ of the oracle E[cost] = Σ_i w_i Σ_b q(b | z_i) cost(z_i, b), z_i = p0 + e^{p1} x_i,
    on the same 40-node Gauss–Hermite rule (plain torch). The rule is symmetric (x_i ↔ −x_i, equal
    weights), so E_b[∇ surrogate | eps] = ½(∇F(eps) + ∇F(−eps)) summed with it equals ∇ Σ_i w_i F(x_i)
    exactly, whatever the rule's own quadrature error (atol 1e-10); that error is itself checked
    small (the 40- and 60-node oracles agree to 1e-9), so this is also the true gradient."""

    def build(g, p):
        z = g.sample("z", Normal(p[0], p[1].exp()), AntitheticNormal())
        b = g.sample("b", Bernoulli(logits=p[2] * z + p[3]), scg.ScoreFunction())
        assert z.shape == (2, 1) and b.shape == (2, 1)
        g.cost("fz", (z - p[4]) ** 2)
        g.cost("fb", (b - 0.3) ** 2 * (1 + torch.sin(z)))

    p0 = t(0.3, -0.2, 1.4, -0.5, 0.8)

    def prob(p, z, b):  # q(b | z), plain torch
        return torch.exp(b * F.logsigmoid(p[2] * z + p[3]) + (1 - b) * F.logsigmoid(-(p[2] * z + p[3])))

    def oracle(n):
        p = p0.clone().requires_grad_(True)
        total = p.new_zeros(())
        for x, w in gauss_hermite(n):
            z = p[0] + p[1].exp() * x
            for b in (0.0, 1.0):
                total = total + w * prob(p, z, b) * ((z - p[4]) ** 2 + (b - 0.3) ** 2 * (1 + torch.sin(z)))
        return torch.autograd.grad(total, p)[0]

    grid = []
    sd = float(p0[1].exp())
    for x, w in gauss_hermite(40):
        zp, zm = float(p0[0]) + sd * x, float(p0[0]) - sd * x
        for b0, b1 in itertools.product((0.0, 1.0), repeat=2):
            weight = w * float(prob(p0, t(zp), b0)) * float(prob(p0, t(zm), b1))
            grid.append(({"z": {"eps": t(x)}, "b": {"z": t(b0, b1).reshape(2, 1)}}, weight))
    est, mass = expected_graph_gradient(build, p0, grid)
    assert abs(mass - 1.0) < 1e-12
    exact = oracle(40)
    torch.testing.assert_close(exact, oracle(60), atol=1e-9, rtol=0)
    assert float(exact.abs().max()) > 0.1
    torch.testing.assert_close(est, exact, atol=1e-10, rtol=0)
