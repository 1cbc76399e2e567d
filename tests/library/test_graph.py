"""Tests of ``scg.Graph``: exact unbiasedness on small graphs, credit assignment, Hessians.

Deterministic first: every unbiasedness check replays the graph on every point of
an enumeration (discrete nodes) times a Gauss–Hermite grid (pathwise noise) and
compares ``Σ_config weight · ∇ surrogate`` with the gradient of the exactly
computed ``E[Σ costs]`` (float64, ~1e-10). The reference for each model is written
independently of the graph (a plain function of the configuration). The only
sampling test (torch.func measurement) uses a Bonferroni-corrected z threshold.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from numpy.polynomial.hermite_e import hermegauss
from torch import nn
from torch.distributions import (
    Bernoulli,
    Categorical,
    Gamma,
    Independent,
    Normal,
    OneHotCategorical,
)

import scg
from scg import baselines as B


@pytest.fixture(autouse=True)
def _float64():
    """This module works in float64; the default dtype is restored after each test."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


sig = torch.sigmoid


def gh(n: int) -> list[tuple[float, float]]:
    """Gauss–Hermite rule for N(0, 1): (node, weight) pairs, weights summing to 1."""
    x, w = hermegauss(n)
    return list(zip(x.tolist(), (w / math.sqrt(2 * math.pi)).tolist(), strict=False))


def t(*v: float) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.float64)


def bern_lp(logit: torch.Tensor, b: float) -> torch.Tensor:
    return Bernoulli(logits=logit).log_prob(torch.as_tensor(b, dtype=torch.float64))


def exact_check(build, ref, p0, grid, *, S=1, hessian=False, atol=1e-10):
    """Compare E[∇ surrogate] (and E[∇² surrogate]) over ``grid`` with ∇ (∇²) of the exact objective.

    grid: list of ``(draws, weight, info)``; ``ref(p, info) -> (log_prob, cost)`` gives the
    log-probability of the configuration's discrete draws and its total cost (both attached to p).
    """
    p = p0.clone().requires_grad_(True)
    est = torch.zeros_like(p)
    est_h = torch.zeros(p.numel(), p.numel())
    objective = 0.0
    for draws, weight, info in grid:
        g = scg.Graph(num_samples=S, draws=draws)
        build(g, p)
        s = g.surrogate()
        log_prob, cost = ref(p, info)
        wt = weight * torch.exp(log_prob.detach())
        (grad,) = torch.autograd.grad(s, p, create_graph=hessian)
        est += wt * grad.detach()
        if hessian:
            rows = [torch.autograd.grad(grad[i], p, retain_graph=True)[0] for i in range(p.numel())]
            est_h += wt * torch.stack(rows)
        objective = objective + weight * torch.exp(log_prob) * cost
    exact = torch.autograd.grad(objective, p, create_graph=hessian)[0]
    torch.testing.assert_close(est, exact.detach(), atol=atol, rtol=0)
    if hessian:
        exact_h = torch.stack(
            [torch.autograd.grad(exact[i], p, retain_graph=True)[0] for i in range(p.numel())]
        )
        torch.testing.assert_close(est_h, exact_h, atol=atol, rtol=0)
    return est, exact


def bern_grid(names, S=1):
    """All joint values of Bernoulli nodes (each [S]) as replayable draws."""
    grid = []
    for values in itertools.product([0.0, 1.0], repeat=len(names) * S):
        draws, info = {}, {}
        for i, name in enumerate(names):
            v = values[i * S : (i + 1) * S]
            draws[name] = {"z": t(*v)}
            info[name] = v if S > 1 else v[0]
        grid.append((draws, 1.0, info))
    return grid


# --------------------------------------------------------------- exact first order


def test_chain_of_three_bernoullis_exact():
    def build(g, p):
        a = g.sample("a", Bernoulli(logits=p[0]))
        b = g.sample("b", Bernoulli(logits=p[1] + p[2] * a))
        c = g.sample("c", Bernoulli(logits=p[3] * b - p[1]))
        g.cost("f1", (a + b - 0.3) ** 2)
        g.cost("f2", (c - p[4]) ** 2)

    def ref(p, v):
        a, b, c = v["a"], v["b"], v["c"]
        lp = bern_lp(p[0], a) + bern_lp(p[1] + p[2] * a, b) + bern_lp(p[3] * b - p[1], c)
        return lp, (a + b - 0.3) ** 2 + (c - p[4]) ** 2

    exact_check(build, ref, t(0.3, -0.5, 1.2, 0.8, 0.25), bern_grid(["a", "b", "c"]))


def test_fork_exact_and_dependencies():
    def build(g, p):
        a = g.sample("a", Bernoulli(logits=p[0]))
        b = g.sample("b", Bernoulli(logits=p[1] + a))
        c = g.sample("c", Bernoulli(logits=p[2] - 2 * a))
        g.cost("gb", (b - 0.2) ** 2 * p[3])
        g.cost("gc", 3 * c + a)
        return g

    def ref(p, v):
        a, b, c = v["a"], v["b"], v["c"]
        lp = bern_lp(p[0], a) + bern_lp(p[1] + a, b) + bern_lp(p[2] - 2 * a, c)
        return lp, (b - 0.2) ** 2 * p[3] + 3 * c + a

    exact_check(build, ref, t(-0.4, 0.6, 0.1, 1.5), bern_grid(["a", "b", "c"]))
    g = build(scg.Graph(num_samples=2), t(-0.4, 0.6, 0.1, 1.5).requires_grad_())
    assert g.dependencies() == {"gb": ("a", "b"), "gc": ("a", "c")}


def test_node_influencing_only_one_of_two_costs_exact():
    def build(g, p):
        a = g.sample("a", Bernoulli(logits=p[0]))
        b = g.sample("b", Bernoulli(logits=p[1]))
        g.cost("c1", (a - 0.4) ** 2)
        g.cost("c2", (a + b - 1.2) ** 2)
        return g

    def ref(p, v):
        a, b = v["a"], v["b"]
        return bern_lp(p[0], a) + bern_lp(p[1], b), (a - 0.4) ** 2 + (a + b - 1.2) ** 2

    exact_check(build, ref, t(0.7, -0.2), bern_grid(["a", "b"]))
    g = build(scg.Graph(num_samples=3), t(0.7, -0.2).requires_grad_())
    assert g.dependencies() == {"c1": ("a",), "c2": ("a", "b")}


def test_discrete_node_with_parameters_from_a_continuous_sample_exact():
    # z ~ N(p0, e^{p1}) pathwise; b ~ Bern(σ(p2 z)) score function; costs on z and on (z, b).
    def build(g, p):
        z = g.sample("z", Normal(p[0], p[1].exp()))
        b = g.sample("b", Bernoulli(logits=p[2] * z))
        g.cost("fz", (z - 0.5) ** 2)
        g.cost("fb", (b - 0.7) ** 2 * (1 + torch.sin(z)))

    def ref(p, v):
        z = p[0] + p[1].exp() * v["eps"]
        b = v["b"]
        return bern_lp(p[2] * z, b), (z - 0.5) ** 2 + (b - 0.7) ** 2 * (1 + torch.sin(z))

    grid = [
        ({"z": {"eps": t(x)}, "b": {"z": t(b)}}, w, {"eps": x, "b": b}) for x, w in gh(20) for b in (0.0, 1.0)
    ]
    exact_check(build, ref, t(0.2, -0.3, 1.1), grid)


def test_score_function_node_feeding_a_pathwise_node_exact():
    def build(g, p):
        a = g.sample("a", Bernoulli(logits=p[0]))
        z = g.sample("z", Normal(p[1] + 2 * a, p[2].exp()))
        g.cost("h", torch.sin(z) + z**2 / 4)

    def ref(p, v):
        z = p[1] + 2 * v["a"] + p[2].exp() * v["eps"]
        return bern_lp(p[0], v["a"]), torch.sin(z) + z**2 / 4

    grid = [
        ({"a": {"z": t(a)}, "z": {"eps": t(x)}}, w, {"a": a, "eps": x}) for a in (0.0, 1.0) for x, w in gh(20)
    ]
    exact_check(build, ref, t(-0.3, 0.4, -0.5), grid)


def test_four_node_mixed_graph_exact():
    # a (SF) -> z (pathwise) -> b (SF) -> y (continuous SF child, Gauss–Hermite on y).
    def build(g, p):
        a = g.sample("a", Bernoulli(logits=p[0]))
        z = g.sample("z", Normal(p[1] * a, 1.0))
        b = g.sample("b", Bernoulli(logits=z - p[2]))
        y = g.sample("y", Normal(p[3] + b, 1.0), scg.ScoreFunction())
        g.cost("fz", z**2 * p[4])
        g.cost("fy", y**2 + a)

    def ref(p, v):
        z = p[1] * v["a"] + v["eps"]
        lp = bern_lp(p[0], v["a"]) + bern_lp(z - p[2], v["b"])
        return lp, z**2 * p[4] + (p[3] + v["b"]) ** 2 + 1.0 + v["a"]  # E[y² | b] in closed form

    p0 = t(0.5, 0.8, 0.3, -0.4, 0.7)
    grid = []
    for a, (x, wx), b, (u, wu) in itertools.product((0.0, 1.0), gh(16), (0.0, 1.0), gh(4)):
        y = float(p0[3]) + b + u  # quadrature nodes of N(p3 + b, 1) at the current p3
        draws = {"a": {"z": t(a)}, "z": {"eps": t(x)}, "b": {"z": t(b)}, "y": {"z": t(y)}}
        grid.append((draws, wx * wu, {"a": a, "eps": x, "b": b}))
    exact_check(build, ref, p0, grid)


def test_leave_one_out_across_graph_samples_exact():
    # S = 2: enumerate the product space of both graph samples (16 configurations).
    def build(g, p):
        rloo = scg.ScoreFunction(B.LeaveOneOut())
        a = g.sample("a", Bernoulli(logits=p[0]), rloo)
        b = g.sample("b", Bernoulli(logits=p[1] + p[2] * a), rloo)
        g.cost("f", (a + 2 * b - 0.7) ** 2)

    def ref(p, v):
        (a1, a2), (b1, b2) = v["a"], v["b"]
        lp = (
            bern_lp(p[0], a1)
            + bern_lp(p[0], a2)
            + bern_lp(p[1] + p[2] * a1, b1)
            + bern_lp(p[1] + p[2] * a2, b2)
        )
        return lp, ((a1 + 2 * b1 - 0.7) ** 2 + (a2 + 2 * b2 - 0.7) ** 2) / 2

    exact_check(build, ref, t(0.2, -0.6, 1.3), bern_grid(["a", "b"], S=2), S=2)


def test_moving_average_and_learned_baselines_exact():
    net = nn.Linear(2, 1)
    x = t(0.5, -1.0)
    ma = B.MovingAverage(0.9)
    ma.value.fill_(0.8)  # a fitted baseline state (from earlier draws)
    ma.steps.fill_(5)
    ma.eval()  # freeze the state during the enumeration
    nvil = scg.ScoreFunction(B.chain(B.Learned(net)))

    def build(g, p):
        a = g.sample("a", Bernoulli(logits=p[0]), nvil, context=x)
        b = g.sample("b", Bernoulli(logits=p[1] - a), scg.ScoreFunction(ma))
        g.cost("f", (a - b + 0.3) ** 2 * p[2])

    def ref(p, v):
        a, b = v["a"], v["b"]
        return bern_lp(p[0], a) + bern_lp(p[1] - a, b), (a - b + 0.3) ** 2 * p[2]

    exact_check(build, ref, t(0.4, 0.9, 1.7), bern_grid(["a", "b"]))
    # The learned baseline is trained by the same backward: its gradient is that of the
    # zero-valued regression term mean_S (A − b_ψ(x))².
    g = scg.Graph(num_samples=1, draws={"a": {"z": t(1.0)}, "b": {"z": t(0.0)}})
    p = t(0.4, 0.9, 1.7).requires_grad_()
    build(g, p)
    net.zero_grad()
    g.surrogate().backward()
    signal = (1.0 - 0.0 + 0.3) ** 2 * 1.7
    expected = -2 * (signal - net(x).detach()) * torch.cat([x, t(1.0)])
    torch.testing.assert_close(torch.cat([net.weight.grad.reshape(-1), net.bias.grad]), expected.reshape(-1))


def test_learned_baseline_on_a_child_node_takes_its_parents_exact():
    net = nn.Linear(1, 1)
    nvil = scg.ScoreFunction(B.Learned(net))

    def build(g, p):
        a = g.sample("a", Bernoulli(logits=p[0]))
        b = g.sample("b", Bernoulli(logits=p[1] + a), nvil, context=a.detach().unsqueeze(-1))
        g.cost("f", (a + b - 0.6) ** 2 * p[2])

    def ref(p, v):
        a, b = v["a"], v["b"]
        return bern_lp(p[0], a) + bern_lp(p[1] + a, b), (a + b - 0.6) ** 2 * p[2]

    exact_check(build, ref, t(0.4, -0.3, 1.2), bern_grid(["a", "b"]))


def test_minibatch_scale_with_global_and_per_datum_latents_exact():
    # N = 4 data points, minibatches of B = 2 (all 6 subsets, uniform), scale N/B.
    xs = t(0.1, 0.9, 0.4, 0.7)
    N, Bsz = 4, 2

    def build_for(idx):
        def build(g, p):
            a = g.sample("a", Bernoulli(logits=p[0]))  # global latent [S]
            w = g.sample("w", Bernoulli(logits=p[1:][idx]))  # per-datum latents [S, B]
            g.cost("fit", (a.unsqueeze(-1) + w - xs[idx]) ** 2 * p[5], scale=N / Bsz)  # [S, B]
            g.cost("bits", w.sum(-1), scale=N / Bsz)  # [S]: sums the per-datum latents

        return build

    p = t(0.3, -0.2, 0.5, 0.1, -0.7, 1.4).requires_grad_()
    subsets = list(itertools.combinations(range(N), Bsz))
    est = torch.zeros_like(p)
    for sub in subsets:
        idx = torch.tensor(sub)
        for a, w1, w2 in itertools.product((0.0, 1.0), repeat=3):
            g = scg.Graph(num_samples=1, draws={"a": {"z": t(a)}, "w": {"z": t(w1, w2).reshape(1, 2)}})
            build_for(idx)(g, p)
            prob = torch.exp(
                bern_lp(p[0], a) + bern_lp(p[1 + sub[0]], w1) + bern_lp(p[1 + sub[1]], w2)
            ).detach()
            est += prob / len(subsets) * torch.autograd.grad(g.surrogate(), p)[0]
    # Full-data objective: Σ_i E[(a + w_i − x_i)² p5 + w_i].
    pa, pw = sig(p[0]), sig(p[1:5])
    full = 0.0
    for a in (0.0, 1.0):
        for w in (0.0, 1.0):
            prob = (pa if a else 1 - pa) * (pw if w else 1 - pw)
            full = full + (prob * ((a + w - xs) ** 2 * p[5] + w)).sum()
    torch.testing.assert_close(est, torch.autograd.grad(full, p)[0], atol=1e-10, rtol=0)


# ------------------------------------------------------------------ second order


def test_hessian_two_node_bernoulli_graph_matches_exact():
    def build(g, p):
        a = g.sample("a", Bernoulli(logits=p[0]), scg.ScoreFunction())
        b = g.sample("b", Bernoulli(logits=p[1] + p[2] * a), scg.ScoreFunction())
        g.cost("f", (a + 2 * b - 0.7) ** 2 * (1 + p[2] ** 2))
        g.cost("fa", a * p[0])

    def ref(p, v):
        a, b = v["a"], v["b"]
        lp = bern_lp(p[0], a) + bern_lp(p[1] + p[2] * a, b)
        return lp, (a + 2 * b - 0.7) ** 2 * (1 + p[2] ** 2) + a * p[0]

    exact_check(build, ref, t(0.3, -0.4, 0.9), bern_grid(["a", "b"]), hessian=True)


def test_hessian_two_node_bernoulli_graph_with_leave_one_out_is_unbiased():
    def build(g, p):
        rloo = scg.ScoreFunction(B.LeaveOneOut())
        a = g.sample("a", Bernoulli(logits=p[0]), rloo)
        b = g.sample("b", Bernoulli(logits=p[1] + p[2] * a), rloo)
        g.cost("f", (a + 2 * b - 0.7) ** 2)

    def ref(p, v):
        (a1, a2), (b1, b2) = v["a"], v["b"]
        lp = (
            bern_lp(p[0], a1)
            + bern_lp(p[0], a2)
            + bern_lp(p[1] + p[2] * a1, b1)
            + bern_lp(p[1] + p[2] * a2, b2)
        )
        return lp, ((a1 + 2 * b1 - 0.7) ** 2 + (a2 + 2 * b2 - 0.7) ** 2) / 2

    exact_check(build, ref, t(0.3, -0.4, 0.9), bern_grid(["a", "b"], S=2), S=2, hessian=True)


@pytest.mark.parametrize("estimator", ["score_function", "pathwise"])
def test_hessian_normal_node_matches_analytic(estimator):
    # E[z³] = μ³ + 3μσ²: Hessian in (μ, σ) is [[6μ, 6σ], [6σ, 6μ]]; Gauss–Hermite is exact here.
    mu, sigma = 0.4, 1.3
    p = t(mu, sigma).requires_grad_()
    H = torch.zeros(2, 2)
    for x, w in gh(12):
        est = scg.ScoreFunction() if estimator == "score_function" else scg.Pathwise()
        draws = {"z": {"z": t(mu + sigma * x)}} if estimator == "score_function" else {"z": {"eps": t(x)}}
        g = scg.Graph(num_samples=1, draws=draws)
        z = g.sample("z", Normal(p[0], p[1]), est)
        g.cost("f", z**3)
        (grad,) = torch.autograd.grad(g.surrogate(), p, create_graph=True)
        H += w * torch.stack([torch.autograd.grad(grad[i], p, retain_graph=True)[0] for i in range(2)])
    torch.testing.assert_close(H, t(6 * mu, 6 * sigma, 6 * sigma, 6 * mu).reshape(2, 2), atol=1e-10, rtol=0)


# ------------------------------------------------------------ credit assignment


def test_independent_noisy_cost_leaves_node_variance_unchanged():
    """Exact variance of ∂/∂θ_A, A ~ Bern(σ(θ_A)), with and without an independent noisy cost."""
    p0 = t(0.3, 0.0)

    def gradients(with_noise: bool, dense: bool):
        out = []
        for a in (0.0, 1.0):
            for x, w in gh(8):
                g = scg.Graph(num_samples=1, draws={"a": {"z": t(a)}, "n": {"eps": t(x)}})
                p = p0.clone().requires_grad_()
                A = g.sample("a", Bernoulli(logits=p[0]), scg.ScoreFunction())
                n = g.sample("n", Normal(p[1], 1.0))
                g.cost("fa", (A - 0.3) ** 2)
                if with_noise:
                    g.cost("noise", 10.0 * n, depends_on=["a"] if dense else None)
                prob = float(sig(p0[0])) if a else 1 - float(sig(p0[0]))
                grad = torch.autograd.grad(g.surrogate(), p)[0][0]
                out.append((prob * w, float(grad)))
        mean = sum(wt * gr for wt, gr in out)
        return sum(wt * (gr - mean) ** 2 for wt, gr in out)

    alone, flow, dense = gradients(False, False), gradients(True, False), gradients(True, True)
    print(
        f"\nVar ∂θ_A: cost on A alone {alone:.6g}; + independent noisy cost (data flow) {flow:.6g}; "
        f"same cost credited densely {dense:.6g}"
    )
    assert abs(flow - alone) < 1e-12
    # Dense credit adds E[(10 n)²] E[(a − σ)²] = 100 σ(1 − σ) to the variance.
    s = float(sig(p0[0]))
    assert abs(dense - alone - 100 * s * (1 - s)) < 1e-8


def test_credit_assignment_measured_with_gradient_samples():
    """The same variances measured by scg.diagnostics.gradient_samples (torch.func)."""
    params = {"theta": t(0.3, 0.0)}

    def make(with_noise: bool, dense: bool):
        def fn(p):
            g = scg.Graph(num_samples=4)
            a = g.sample("a", Bernoulli(logits=p["theta"][0]), scg.ScoreFunction())
            n = g.sample("n", Normal(p["theta"][1], 1.0))
            g.cost("fa", (a - 0.3) ** 2)
            if with_noise:
                g.cost("noise", 10.0 * n, depends_on=["a"] if dense else None)
            return g.surrogate()

        return fn

    variances = {}
    for key, (noise, dense) in {
        "alone": (False, False),
        "flow": (True, False),
        "dense": (True, True),
    }.items():
        torch.manual_seed(5)  # same draws of A in every run (A is drawn first)
        G = scg.diagnostics.gradient_samples(make(noise, dense), params, 4000)
        variances[key] = float(G[:, 0].var())
    print(f"\nmeasured Var ∂θ_A (S=4, 4000 estimates): {variances}")
    assert variances["flow"] == pytest.approx(variances["alone"], rel=1e-9)
    assert variances["dense"] > 10 * variances["alone"]


# --------------------------------------------------------------- value, oracle


def test_value_is_the_sum_of_the_costs_monte_carlo_means_exactly():
    torch.set_default_dtype(torch.float32)
    try:
        torch.manual_seed(3)
        theta = torch.randn(4, 3, requires_grad=True)
        x = torch.randn(3, 2)
        nvil = scg.ScoreFunction(B.chain(B.MovingAverage(), B.Learned(nn.Linear(2, 1)), B.Normalize()))
        g = scg.Graph(num_samples=5)
        a = g.sample("a", Bernoulli(logits=theta[0]), nvil, context=x)
        z = g.sample("z", Normal(a * theta[1], theta[2].exp()))
        b = g.sample("b", Bernoulli(logits=z * theta[3]), scg.ScoreFunction(B.LeaveOneOut()))
        c = g.sample("c", OneHotCategorical(logits=theta[:, :3].T))  # root: [S, 3, 4]
        costs = [
            ("f1", (z - 1.0) ** 2, 1.0),
            ("f2", (b * a).sum(-1), 3.0),
            ("f3", c[..., 0] * b, 0.5),
        ]
        for name, value, scale in costs:
            g.cost(name, value, scale=scale)
        out = g.surrogate()
        expected = None
        for _, value, scale in costs:
            term = value.mean(0).sum() * scale if scale != 1.0 else value.mean(0).sum()
            expected = term if expected is None else expected + term
        assert torch.equal(out, expected)
        out.backward()
        assert theta.grad is not None and bool(torch.isfinite(theta.grad).all())
    finally:
        torch.set_default_dtype(torch.float64)


def hand_written_dice(p, a, eps, b, x):
    """DiCE for a → z → b by hand (the benchmark's reference), same draws."""
    box = lambda lp: torch.exp(lp - lp.detach())  # noqa: E731
    lp_a = Bernoulli(logits=p[0] + x).log_prob(a)
    z = a * p[1] + p[2].exp() * eps
    lp_b = Bernoulli(logits=z * p[3]).log_prob(b)
    return (box(lp_a) * (z - x) ** 2).mean(0).sum() + (box(lp_a + lp_b) * (b - 0.5) ** 2).mean(0).sum()


def test_single_sample_oracle_matches_hand_written_dice():
    torch.manual_seed(1)
    x = torch.randn(3)
    p = t(0.2, 0.7, -0.3, 1.1).requires_grad_()
    g = scg.Graph(num_samples=4)
    a = g.sample("a", Bernoulli(logits=p[0] + x), scg.ScoreFunction())
    z = g.sample("z", Normal(a * p[1], p[2].exp()))
    b = g.sample("b", Bernoulli(logits=z * p[3]), scg.ScoreFunction())
    g.cost("fit", (z - x) ** 2)
    g.cost("bits", (b - 0.5) ** 2)
    s = g.surrogate()
    d = g.draws
    ref = hand_written_dice(p, d["a"]["z"], d["z"]["eps"], d["b"]["z"], x)
    assert torch.equal(s, ref)
    g1 = torch.autograd.grad(s, p, create_graph=True)[0]
    g2 = torch.autograd.grad(ref, p, create_graph=True)[0]
    torch.testing.assert_close(g1, g2, atol=1e-12, rtol=0)
    h1 = torch.autograd.grad(g1.sum(), p)[0]
    h2 = torch.autograd.grad(g2.sum(), p)[0]
    torch.testing.assert_close(h1, h2, atol=1e-12, rtol=0)


def test_replayed_draws_reproduce_the_graph():
    p = t(0.1, -0.3).requires_grad_()

    def run(draws=None):
        g = scg.Graph(num_samples=3, draws=draws)
        a = g.sample("a", Bernoulli(logits=p[0]))
        z = g.sample("z", Normal(p[1] + a, 1.0))
        g.cost("f", z**2)
        return g, g.surrogate()

    g1, s1 = run()
    _, s2 = run(g1.draws)
    assert torch.equal(s1, s2)


@pytest.mark.parametrize(
    "relaxed", [scg.GumbelSoftmax(0.5), scg.GumbelSoftmax(0.7, hard=True), scg.StraightThrough()]
)
def test_relaxed_node_matches_its_estimator_on_the_same_draws(relaxed):
    logits = t(0.3, -0.8, 0.5).requires_grad_()
    dist = OneHotCategorical(logits=logits)
    w = t(1.0, -2.0, 0.5)
    f = lambda y: (y * w).sum(-1) ** 2  # noqa: E731
    g = scg.Graph(num_samples=4)
    y = g.sample("c", dist, relaxed)
    g.cost("f", f(y))
    s = g.surrogate()
    ref = relaxed.surrogate(f, dist, {"u": g.draws["c"]["u"]})
    assert torch.equal(s, ref)
    grad = torch.autograd.grad(s, logits, retain_graph=True)[0]  # dist's normalised logits are shared
    torch.testing.assert_close(grad, torch.autograd.grad(ref, logits)[0])


@pytest.mark.parametrize("mode", ["tracked", "escaped", "explicit"])
def test_integer_valued_node_is_tracked_escapes_are_conservative_and_depends_on_overrides(mode):
    """An integer Categorical sample is credited by data flow (indexing with it included); once its
    value leaves the tensor domain (``int(c[0])``) later costs are assumed to depend on it; and
    ``depends_on=`` narrows credit either way. Exact by enumeration in every mode."""
    table = t(0.5, -1.0, 2.0).requires_grad_()

    def build(g, p, mode):
        explicit = mode == "explicit"
        c = g.sample("c", Categorical(logits=p[:3]), scg.ScoreFunction())
        n = g.sample("n", Bernoulli(logits=p[3]), depends_on=[] if explicit else None)
        g.cost("fc", table[c] ** 2)  # indexing with an integer sample
        if mode == "escaped":
            _ = int(c[0])  # a Python int: whatever is computed from it cannot be seen
        g.cost("fn", (n - 0.2) ** 2, depends_on=["n"] if explicit else None)
        return g

    g = build(scg.Graph(num_samples=2), t(0.1, 0.2, -0.3, 0.4).requires_grad_(), mode)
    expected = ("c", "n") if mode == "escaped" else ("n",)
    assert g.dependencies() == {"fc": ("c",), "fn": expected}

    def ref(p, v):
        c, n = v["c"], v["n"]
        lp = Categorical(logits=p[:3]).log_prob(torch.tensor(c)) + bern_lp(p[3], n)
        return lp, table[c].detach() ** 2 + (n - 0.2) ** 2

    grid = [
        ({"c": {"z": torch.tensor([c])}, "n": {"z": t(n)}}, 1.0, {"c": c, "n": n})
        for c in range(3)
        for n in (0.0, 1.0)
    ]
    exact_check(lambda g, p: build(g, p, mode), ref, t(0.1, 0.2, -0.3, 0.4), grid)


# ----------------------------------------------------------------- torch.func


def test_graph_estimator_under_gradient_samples_is_unbiased():
    params = {"p": t(0.2, 0.5, -0.3)}

    def fn(q):
        p = q["p"]
        g = scg.Graph(num_samples=2)
        a = g.sample("a", Bernoulli(logits=p[0]))  # RLOO by default
        z = g.sample("z", Normal(p[1] * (1 + a), 1.0))
        b = g.sample("b", Bernoulli(logits=z - p[2]))
        g.cost("f", (z - 0.5) ** 2 + b)
        return g.surrogate()

    def exact(p):
        total = 0.0
        for a in (0.0, 1.0):
            pa = sig(p[0]) if a else 1 - sig(p[0])
            for x, w in gh(30):
                z = p[1] * (1 + a) + x
                total = total + pa * w * ((z - 0.5) ** 2 + sig(z - p[2]))
        return total

    p = params["p"].clone().requires_grad_()
    reference = torch.autograd.grad(exact(p), p)[0]
    torch.manual_seed(11)
    G = scg.diagnostics.gradient_samples(fn, params, 4000)
    s = scg.diagnostics.summary(G, reference)
    # 3 parameters, two-sided, family-wise false-failure rate 1e-3: z = Φ⁻¹(1 − 1e-3/6) = 3.59.
    assert float(s.z.abs().max()) < 3.59, s.table(["p0", "p1", "p2"])


def test_dependencies_are_found_under_vmap_alone():
    found = []
    theta = t(0.3, -0.2).requires_grad_()

    def fn(x):
        g = scg.Graph(num_samples=2)
        a = g.sample("a", Bernoulli(logits=theta[0] + x))
        b = g.sample("b", Bernoulli(logits=theta[1] + a))
        g.cost("fa", a * x)
        g.cost("fb", b * x)
        found.append(g.dependencies())
        return g.surrogate()

    out = torch.func.vmap(fn, randomness="different")(t(0.5, 1.5, -1.0))
    assert found[0] == {"fa": ("a",), "fb": ("a", "b")}
    out.sum().backward()
    assert theta.grad is not None and bool(torch.isfinite(theta.grad).all())


def test_no_grad_gives_the_value_only():
    ma = scg.ScoreFunction(B.MovingAverage(0.5))
    p = t(0.3, 0.1)
    with torch.no_grad():
        g = scg.Graph(num_samples=3)
        a = g.sample("a", Bernoulli(logits=p[0]), ma)
        b = g.sample("b", Bernoulli(logits=(p[1] + a)))  # batch [S]: a child
        g.cost("f", a + b)
        out = g.surrogate()
    assert b.shape == (3,) and torch.equal(out, (a + b).mean(0).sum())
    assert ma.baseline.steps == 0  # control variates untouched


# --------------------------------------------------------------------- errors


def _two_node(g, p=None):
    p = t(0.1, 0.2).requires_grad_() if p is None else p
    a = g.sample("a", Bernoulli(logits=p[0]))
    return p, a


def test_error_duplicate_names():
    g = scg.Graph(num_samples=2)
    p, a = _two_node(g)
    with pytest.raises(ValueError, match=r"`name` must be unique in the graph; 'a' is already a node"):
        g.sample("a", Bernoulli(logits=p[1]))
    g.cost("f", a * p[1])
    with pytest.raises(ValueError, match=r"'f' is already a cost"):
        g.cost("f", a * p[1])
    with pytest.raises(TypeError, match=r"`name` must be a non-empty str"):
        g.sample("", Bernoulli(logits=p[1]))


def test_error_cost_depending_on_nothing():
    g = scg.Graph(num_samples=2)
    _two_node(g)
    with pytest.raises(ValueError, match=r"cost 'c' depends on no node and no parameter.*depends_on"):
        g.cost("c", torch.ones(2))


def test_error_sample_dims_do_not_match():
    g = scg.Graph(num_samples=4)
    p, a = _two_node(g)
    with pytest.raises(
        ValueError,
        match=r"must have shape \[\*sample dims, \*batch\] with S = num_samples = 4 last among the sample dims \[4\]; got shape \[3\]",
    ):
        g.cost("f", a[:3] * p[1])
    with pytest.raises(
        ValueError,
        match=r"must have batch_shape starting with the sample dims \[4\] \(num_samples=4\) because it depends on node\(s\) \['a'\]",
    ):
        g.sample("b", Bernoulli(logits=a.sum() + torch.zeros(3)))
    w = g.sample("w", Bernoulli(logits=torch.zeros(3) + p[1]))  # root, [4, 3]
    with pytest.raises(ValueError, match=r"sample dims do not match: cost 'g' has shape \[4, 2\]"):
        g.cost("g", w[:, :2] * 2.0)
    with pytest.raises(ValueError, match=r"`draws\['a'\]\['z'\]` must have shape \[4\]; got \[2\]"):
        scg.Graph(num_samples=4, draws={"a": {"z": torch.zeros(2)}}).sample("a", Bernoulli(logits=p[0]))
    with pytest.raises(ValueError, match=r"`draws\['a'\]` must contain 'eps'"):
        scg.Graph(num_samples=4, draws={"a": {"z": torch.zeros(4)}}).sample("a", Normal(p[0], 1.0))


def test_error_graph_used_after_surrogate():
    g = scg.Graph(num_samples=2)
    p, a = _two_node(g)
    g.cost("f", a * p[1])
    g.surrogate()
    for call in (
        lambda: g.surrogate(),
        lambda: g.cost("h", a * p[1]),
        lambda: g.sample("b", Bernoulli(logits=p[1])),
    ):
        with pytest.raises(ValueError, match=r"already produced its surrogate\(\); a Graph is used once"):
            call()


class SurrogateOnly(scg.Estimator):
    """An estimator for scg.expectation only: it overrides surrogate(), not parts()."""

    def laws(self, dist, num_samples):
        return scg.ScoreFunction().laws(dist, num_samples)

    def surrogate(self, f, dist, draws, *, context=None):
        return f(draws["z"]).mean(0)


def test_error_unsupported_estimators_and_arguments():
    g = scg.Graph(num_samples=2)
    p = t(0.1, 0.2).requires_grad_()
    with pytest.raises(
        TypeError, match=r"must implement parts\(dist, draws\) to be a graph node; SurrogateOnly"
    ):
        g.sample("a", Bernoulli(logits=p[0]), SurrogateOnly())
    with pytest.raises(TypeError, match=r"`estimator` of node 'a' must be an scg Estimator; got Linear"):
        g.sample("a", Bernoulli(logits=p[0]), nn.Linear(1, 1))
    with pytest.raises(TypeError, match=r"uses REBARControlVariate, which needs the cost as a function"):
        g.sample("a", Bernoulli(logits=p[0]), scg.RELAX())
    with pytest.raises(TypeError, match=r"uses Delta, which needs the cost as a function"):
        g.sample("a", Normal(p[0], 1.0), scg.ScoreFunction(B.Delta()))
    with pytest.raises(TypeError, match=r"has no rsample"):
        g.sample("a", Bernoulli(logits=p[0]), scg.Pathwise())
    with pytest.raises(ValueError, match=r"`num_samples` must be >= 2 for LeaveOneOut \(node 'a'\); got 1"):
        scg.Graph(num_samples=1).sample("a", Bernoulli(logits=p[0]), scg.ScoreFunction(B.LeaveOneOut()))
    with pytest.raises(TypeError, match=r"`dist` of node 'a' must be a torch.distributions.Distribution"):
        g.sample("a", p)
    with pytest.raises(ValueError, match=r"`depends_on` must name earlier nodes; got 'zz'"):
        g.sample("a", Bernoulli(logits=p[0]), depends_on=["zz"])
    with pytest.raises(TypeError, match=r"`depends_on` must be a sequence of node names; got str"):
        g.sample("a", Bernoulli(logits=p[0]), depends_on="zz")
    with pytest.raises(ValueError, match=r"`num_samples` must be >= 1; got 0"):
        scg.Graph(num_samples=0)
    with pytest.raises(TypeError, match=r"`draws` must be a mapping"):
        scg.Graph(num_samples=2, draws=[1])
    a = g.sample("a", Bernoulli(logits=p[0]))
    with pytest.raises(ValueError, match=r"`scale` must be positive and finite; got -1"):
        g.cost("f", a * p[1], scale=-1.0)
    with pytest.raises(TypeError, match=r"`value` of cost 'f' must be a floating-point tensor"):
        g.cost("f", a.long())
    with pytest.raises(TypeError, match=r"`value` of cost 'f' must be a torch.Tensor"):
        g.cost("f", 1.0)
    g.cost("ok", a * p[1])
    g.cost("f", a * p[1] / 0.0 * 0.0)  # nan: found once, when the surrogate is taken
    with pytest.raises(ValueError, match=r"`value` of cost 'f' must be finite; got inf or nan"):
        g.surrogate()
    with pytest.raises(ValueError, match=r"cannot be replayed: Gamma is reparameterised implicitly"):
        scg.Graph(num_samples=2, draws={"r": {}}).sample("r", Gamma(p[1].exp(), 1.0))
    with pytest.raises(ValueError, match=r"needs at least one cost"):
        scg.Graph(num_samples=2).surrogate()


def test_defaults_and_shapes():
    p = t(0.1, 0.2, 0.3).requires_grad_()
    g = scg.Graph(num_samples=3)
    a = g.sample("a", Independent(Bernoulli(logits=p.expand(2, 3)), 1))  # root: [S, 2, 3]
    z = g.sample("z", Normal(a.sum(-1), 1.0))  # child: [S, 2]
    r = g.sample("r", Gamma(p[0].exp(), 1.0))  # implicit reparameterisation: [S]
    assert a.shape == (3, 2, 3) and z.shape == (3, 2) and r.shape == (3,)
    est = g._nodes["a"].estimator
    assert isinstance(est, scg.ScoreFunction) and isinstance(est.baseline, B.LeaveOneOut)
    assert isinstance(g._nodes["z"].estimator, scg.Pathwise)
    g.cost("f", z**2 + r.unsqueeze(-1))
    assert g.dependencies() == {"f": ("a", "z", "r")}
    assert "Graph(num_samples=3" in repr(g) and g.nodes == ("a", "z", "r")
    g.surrogate().backward()
    assert bool(torch.isfinite(p.grad).all())


def test_integer_categorical_credit_is_narrowed_by_depends_on_on_the_cost():
    """An unrelated cost (scaled ×1000, on a later independent root) adds nothing to the
    Categorical node's gradient once each cost names its nodes: the same gradient, bit for bit,
    as without it (same seed)."""
    logits = t(0.2, -0.4, 0.9).requires_grad_()
    mu = t(0.3).requires_grad_()
    table = t(1.0, -2.0, 0.5)

    def grad(with_unrelated: bool) -> torch.Tensor:
        torch.manual_seed(3)
        g = scg.Graph(num_samples=6)
        c = g.sample("c", Categorical(logits=logits), scg.ScoreFunction(B.LeaveOneOut()))
        z = g.sample("z", Normal(mu, 1.0))
        g.cost("f", table[c] * mu, depends_on=["c"])
        if with_unrelated:
            g.cost("g", 1000.0 * (z - 1.0) ** 2, depends_on=["z"])
            assert g.dependencies() == {"f": ("c",), "g": ("z",)}
        return torch.autograd.grad(g.surrogate(), logits)[0]

    assert torch.equal(grad(True), grad(False))


def test_declared_dataflow_uses_only_the_named_dependencies():
    """``Graph(dataflow="declared")``: parents and credit are exactly what ``depends_on`` names
    (plus ancestors), nothing is read from autograd, and a cost without ``depends_on`` is refused."""
    p = t(0.1, 0.2, -0.3).requires_grad_()
    g = scg.Graph(num_samples=3, dataflow="declared")
    a = g.sample("a", Bernoulli(logits=p[0]))
    b = g.sample("b", Bernoulli(logits=p[1] + a), depends_on=["a"])
    n = g.sample("n", Normal(p[2], 1.0))
    g.cost("fb", b * 2.0, depends_on=["b"])
    g.cost("fn", (n - 1.0) ** 2 + 0.0 * a, depends_on=["n"])  # reads a, but declares only n
    assert g.dependencies() == {"fb": ("a", "b"), "fn": ("n",)}
    with pytest.raises(
        ValueError, match=r"cost 'x' needs depends_on=\[\.\.\.\]: in a Graph\(dataflow='declared'\)"
    ):
        g.cost("x", n * 1.0)
    with pytest.raises(ValueError, match=r"`dataflow` must be 'traced' or 'declared'; got 'auto'"):
        scg.Graph(dataflow="auto")
