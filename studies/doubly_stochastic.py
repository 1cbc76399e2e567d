r"""``doubly-stochastic`` — law-of-total-variance split of the doubly stochastic gradient (data vs MC noise).

Bayesian logistic regression on breast cancer (N = 569, D = 31; the setup of
Mohamed et al. 2020 §8.3) at a **fixed** posterior :math:`q = N(μ, \mathrm{diag}\,s^2)`:
``prior`` (μ = 0, s = 1, where training starts) and ``fitted`` (after ``fit_steps``
full-data pathwise Adam steps from there, seeded separately from the cells). The
gradient w.r.t. (μ, s) of the data term :math:`\sum_i E_q[ℓ_i(w)]`,
:math:`ℓ_i(w) = −\log p(y_i | x_i, w)`, is estimated with a batch :math:`\mathcal B` of
B of N indices drawn without replacement and S posterior samples shared by the batch:

.. math::
    \hat g = \frac NB \sum_{i∈\mathcal B} \frac1S \sum_{s=1}^S h_i(ε_s), \qquad
    E_ε[h_i] = g_i = ∇_λ E_q[ℓ_i]

with :math:`h_i` the per-datum estimator (pathwise :math:`ℓ_i'(a)\,∂a/∂λ`; score function
:math:`ℓ_i(w)\,∇_λ\log q(w)`). The (analytic) KL term adds no variance and is left out.
By the law of total variance, per coordinate,

.. math::
    \mathrm{Var}[\hat g] = \underbrace{\mathrm{Var}_{\mathcal B}\big(E[\hat g | \mathcal B]\big)}_{\text{subsampling}}
    + \underbrace{E_{\mathcal B}\big(\mathrm{Var}[\hat g | \mathcal B]\big)}_{\text{Monte Carlo}}

    \text{subsampling} = \frac{N^2}{B}\Big(1 − \frac BN\Big) S^2_g, \qquad
    S^2_g = \frac1{N−1}\sum_i (g_i − \bar g)^2

(the variance of N times a sample mean drawn without replacement), and, with
:math:`C_{ij} = \mathrm{Cov}_ε(h_i, h_j)`, :math:`\mathrm{tr} = \sum_i C_{ii}`,
:math:`T = \mathrm{Var}_ε(\sum_i h_i) = \sum_{ij} C_{ij}` and
:math:`P(i, j ∈ \mathcal B) = \frac{B(B−1)}{N(N−1)}`:

.. math::
    \text{Monte Carlo} = \frac1S\Big[\frac NB\,\mathrm{tr} + \frac{N(B−1)}{B(N−1)}\,(T − \mathrm{tr})\Big].

:math:`g_i` and :math:`C_{ii}` are exact: :math:`ℓ_i` depends on w only through
:math:`a_i = x_i^\top w \sim N(x_i^\top μ, \sum_d x_{id}^2 s_d^2)` and, given :math:`a_i`,
:math:`ε_d` is Gaussian, so every moment is a 1-D integral (trapezoid rule on a fine grid, geometrically
convergent for these analytic integrands). T couples all
data (a 31-dimensional integral) and is estimated from ``precise_samples`` draws
(its standard error is carried into ``var_mc_se``). The sampled totals come from
``scg.minibatch.subsample`` + ``scg.expectation`` vectorised by
:func:`scg.diagnostics.gradient_samples` and are compared with the sum.
"""

from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Independent, Normal

import scg
from scg.estimators import registry
from scg.models import BayesianLogisticRegression
from scg.models.data import breast_cancer
from scg.studies.base import CellContext, Study

__all__ = [
    "DoublyStochasticConfig",
    "DoublyStochastic",
    "exact_parts",
    "decomposition",
    "posterior",
]

#: The registry's estimators (:mod:`scg.estimators.registry`) whose per-datum moments are exact here.
ESTIMATORS: tuple[str, ...] = ("pathwise", "score_function")
POINTS = ("prior", "fitted")
GROUPS = ("all", "mu", "sigma")


@dataclass(frozen=True)
class DoublyStochasticConfig:
    """Configuration (defaults: CPU size, a few minutes; :meth:`DoublyStochastic.full` samples 10× more).

    Attributes:
        estimators: ``pathwise`` and/or ``score_function``.
        points: posterior points, ``prior`` and/or ``fitted``.
        batch_sizes: B values (1 ≤ B ≤ 569).
        num_samples: S values.
        grad_estimates: R sampled doubly stochastic estimates per cell.
        precise_samples: draws for :math:`T = \\mathrm{Var}(\\sum_i h_i)`.
        quadrature_nodes: points of the trapezoid rule on [−12, 12] for the exact per-datum moments.
        fit_steps: full-data pathwise Adam steps (lr 0.01, 16 samples) that make the ``fitted`` point.
    """

    estimators: tuple[str, ...] = ESTIMATORS
    points: tuple[str, ...] = POINTS
    batch_sizes: tuple[int, ...] = (1, 4, 16, 64, 256, 569)
    num_samples: tuple[int, ...] = (1, 10, 100)
    grad_estimates: int = 2000
    precise_samples: int = 200_000
    quadrature_nodes: int = 4001
    fit_steps: int = 1000


@functools.lru_cache(maxsize=4)
def posterior(point: str, fit_steps: int) -> tuple[Tensor, Tensor]:
    """``(μ, s)`` in float64 on the CPU: the prior point, or after ``fit_steps`` seeded Adam steps."""
    x, y, _, _ = breast_cancer(dtype=torch.float64)
    D = x.shape[1]
    if point == "prior":
        return torch.zeros(D, dtype=torch.float64), torch.ones(D, dtype=torch.float64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(20200601)
        m = BayesianLogisticRegression(x, y, estimator=scg.Pathwise(), num_samples=16)
        opt = torch.optim.Adam(m.parameters(), lr=0.01)
        index = torch.arange(m.n)
        for _ in range(fit_steps):
            opt.zero_grad(set_to_none=True)
            m.objective(index).backward()
            opt.step()
    with torch.no_grad():
        return m.loc.detach().clone(), torch.nn.functional.softplus(m.raw_scale).detach().clone()


def _per_datum_moments(
    est: str, x: Tensor, y: Tensor, mu: Tensor, s: Tensor, nodes: int
) -> tuple[Tensor, Tensor]:
    """Exact per-datum mean g ``[N, 2D]`` and variance ``[N, 2D]`` of h_i (1-D quadrature in t = (a − m)/√v)."""
    # Trapezoid rule on [−12, 12] against the N(0, 1) density: the integrands are analytic in a strip
    # (sigmoid/softplus poles at a = ±iπ), so it converges geometrically — faster than Gauss–Hermite here.
    t = torch.linspace(-12.0, 12.0, nodes, dtype=x.dtype)
    wq = torch.exp(-0.5 * t * t) / math.sqrt(2 * math.pi) * (t[1] - t[0])  # E[φ(t)] ≈ Σ wq φ(t_k)
    m = x @ mu  # [N]
    c = x * s  # [N, D], a = m + c·ε
    v = (c * c).sum(-1)
    beta = c / v.sqrt().unsqueeze(-1)  # [N, D]; ε_d | t ~ N(β t, 1 − β²)
    a = m.unsqueeze(-1) + v.sqrt().unsqueeze(-1) * t  # [N, K]
    E = lambda f: (f * wq).sum(-1)  # noqa: E731  [N, K] -> [N]
    if est == "pathwise":
        lp = torch.sigmoid(a) - y.unsqueeze(-1)  # ℓ'(a)
        e1, e2, e1t, e2t2 = E(lp), E(lp * lp), E(lp * t), E(lp * lp * t * t)
        mean_mu = x * e1.unsqueeze(-1)
        sq_mu = x * x * e2.unsqueeze(-1)
        mean_s = x * beta * e1t.unsqueeze(-1)  # E[ℓ' ε_d] = β E[ℓ' t]
        sq_s = x * x * (beta**2 * e2t2.unsqueeze(-1) + (1 - beta**2) * e2.unsqueeze(-1))
    elif est == "score_function":
        ell = torch.nn.functional.softplus(a) - y.unsqueeze(-1) * a  # ℓ(a)
        L1t, L1t2 = E(ell * t).unsqueeze(-1), E(ell * (t * t - 1)).unsqueeze(-1)
        L2, L2t2 = E(ell * ell).unsqueeze(-1), E(ell * ell * t * t).unsqueeze(-1)
        L2t4 = E(ell * ell * t**4).unsqueeze(-1)
        mean_mu = beta * L1t / s
        mean_s = beta**2 * L1t2 / s
        b2, tau = beta**2, 1 - beta**2
        sq_mu = (b2 * L2t2 + tau * L2) / s**2
        # E[(ε²−1)² | t] with ε ~ N(βt, τ): (m⁴ + 6m²τ + 3τ²) − 2(m² + τ) + 1, m = βt
        sq_s = (b2**2 * L2t4 + (6 * b2 * tau - 2 * b2) * L2t2 + (3 * tau**2 - 2 * tau + 1) * L2) / s**2
    else:  # pragma: no cover - cells() validates
        raise ValueError(est)
    mean = torch.cat([mean_mu, mean_s], -1)
    return mean, torch.cat([sq_mu, sq_s], -1) - mean**2


def _sum_over_data(est: str, x: Tensor, y: Tensor, mu: Tensor, s: Tensor, eps: Tensor) -> Tensor:
    """:math:`\\sum_i h_i(ε)` for draws ε ``[M, D]`` → ``[M, 2D]`` (closed-form per-datum gradients)."""
    w = mu + s * eps
    a = w @ x.T  # [M, N]
    if est == "pathwise":
        gmu = (torch.sigmoid(a) - y) @ x
        return torch.cat([gmu, gmu * eps], -1)
    L = (torch.nn.functional.softplus(a) - y * a).sum(-1, keepdim=True)
    return torch.cat([L * eps / s, L * (eps * eps - 1) / s], -1)


@functools.lru_cache(maxsize=8)
def exact_parts(est: str, point: str, fit_steps: int, nodes: int, precise: int) -> dict[str, Any]:
    """g_i, C_ii (exact), T (sampled, seeded by the key) and their summaries, float64 on the CPU."""
    x, y, _, _ = breast_cancer(dtype=torch.float64)
    mu, s = posterior(point, fit_steps)
    g, c = _per_datum_moments(est, x, y, mu, s, nodes)
    gen = torch.Generator().manual_seed(zlib.crc32(f"T|{est}|{point}|{fit_steps}".encode()))
    chunk, sums = 20_000, []
    for start in range(0, precise, chunk):
        k = min(chunk, precise - start)
        eps = torch.randn(k, x.shape[1], generator=gen, dtype=torch.float64)
        sums.append(_sum_over_data(est, x, y, mu, s, eps))
    G = torch.cat(sums)  # [M, 2D]
    centred = G - G.mean(0)
    T = centred.pow(2).sum(0) / (G.shape[0] - 1)
    T_se = (centred.pow(4).mean(0) - T**2).clamp_min(0).sqrt() / math.sqrt(G.shape[0])
    N = x.shape[0]
    return {
        "N": N,
        "D": x.shape[1],
        "g": g,
        "C": c,
        "tr": c.sum(0),
        "T": T,
        "T_se": T_se,
        "S2": g.var(0, correction=1),
        "mean_check": (G.mean(0), g.sum(0), G.std(0) / math.sqrt(G.shape[0])),
    }


def decomposition(parts: Mapping[str, Any], B: int, S: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per-coordinate ``(subsampling, mc, mc_se)`` variances of the estimator for batch B and S samples."""
    N = parts["N"]
    sub = N * N / B * (1 - B / N) * parts["S2"]
    k_diag, k_off = N / B, N * (B - 1) / (B * (N - 1))
    mc = (k_diag * parts["tr"] + k_off * (parts["T"] - parts["tr"])) / S
    return sub, mc, k_off * parts["T_se"] / S


def _sampled(est: str, mu: Tensor, s: Tensor, x: Tensor, y: Tensor, B: int, S: int, R: int) -> Tensor:
    """``[R, 2D]`` doubly stochastic estimates from scg.minibatch + scg.expectation (vmapped)."""
    N = x.shape[0]
    estimator = registry.build(est)

    def fn(p: list[Tensor]) -> Tensor:
        index, scale = scg.minibatch.subsample(N, B, device=x.device)
        xb, yb = x[index], y[index]
        q = Independent(Normal(p[0], p[1]), 1)
        return scale * scg.expectation(
            lambda w: BayesianLogisticRegression.nll(w, xb, yb), q, estimator, num_samples=S
        )

    chunk = max(1, min(R, 2_000_000 // max(1, S * B)))
    return scg.diagnostics.gradient_samples(fn, [mu, s], R, chunk_size=chunk)


class DoublyStochastic(Study):
    """Variance of the doubly stochastic BLR gradient split into data-subsampling and MC parts."""

    name = "doubly-stochastic"
    description = (
        "BLR gradient variance vs batch size B and samples S: subsampling + MC (law of total variance)"
    )
    reproduces = "Titsias & Lazaro-Gredilla 2014 / Mohamed et al. 2020 §8: sampled total = subsampling + MC"
    time = {
        "smoke": "4 s",
        "default": "4 min (2 CPU cores)",
        "full": "GPU (10x the default's sampling)",
    }
    Config = DoublyStochasticConfig

    def smoke(self) -> DoublyStochasticConfig:
        return DoublyStochasticConfig(
            batch_sizes=(1, 569),
            num_samples=(1, 4),
            grad_estimates=200,
            precise_samples=5000,
            quadrature_nodes=1201,
            fit_steps=20,
        )

    def full(self) -> DoublyStochasticConfig:
        """10× the default's sampling: R = 20000 sampled estimates per cell (2-SE bars √10 narrower) and
        10⁶ draws for T (holds a [10⁶, 62] float64 array, 0.5 GB); grids and fitted point as the default."""
        return DoublyStochasticConfig(grad_estimates=20_000, precise_samples=1_000_000)

    def cells(self, cfg: DoublyStochasticConfig) -> list[dict[str, Any]]:
        for name, values, valid in (
            ("estimators", cfg.estimators, ESTIMATORS),
            ("points", cfg.points, POINTS),
        ):
            bad = [v for v in values if v not in valid]
            if bad:
                raise ValueError(
                    f"unknown {name} {bad} for doubly-stochastic; valid {name}: {', '.join(valid)}."
                )
        bad_b = [b for b in cfg.batch_sizes if not 1 <= b <= 569]
        if bad_b or any(s < 1 for s in cfg.num_samples) or cfg.grad_estimates < 2:
            raise ValueError(
                "`batch_sizes` must be in [1, 569], `num_samples` >= 1 and `grad_estimates` >= 2; "
                f"got {cfg.batch_sizes}, {cfg.num_samples}, {cfg.grad_estimates}."
            )
        return [
            {"estimator": e, "point": p, "B": b, "S": s}
            for e in cfg.estimators
            for p in cfg.points
            for b in cfg.batch_sizes
            for s in cfg.num_samples
        ]

    def run_cell(
        self, cfg: DoublyStochasticConfig, cell: Mapping[str, Any], ctx: CellContext
    ) -> list[dict[str, Any]]:
        est, point, B, S = cell["estimator"], cell["point"], int(cell["B"]), int(cell["S"])
        parts = exact_parts(est, point, cfg.fit_steps, cfg.quadrature_nodes, cfg.precise_samples)
        sub, mc, mc_se = decomposition(parts, B, S)
        mu, s = posterior(point, cfg.fit_steps)
        x, y, _, _ = breast_cancer()
        dev = ctx.device
        G = (
            _sampled(
                est,
                mu.float().to(dev),
                s.float().to(dev),
                x.to(dev),
                y.to(dev),
                B,
                S,
                cfg.grad_estimates,
            )
            .double()
            .cpu()
        )
        centred = G - G.mean(0)
        D = parts["D"]
        got, want, se = parts["mean_check"]
        rows = []
        for group in GROUPS:
            sl = slice(0, 2 * D) if group == "all" else (slice(0, D) if group == "mu" else slice(D, 2 * D))
            sq = centred[:, sl].pow(2).sum(1) * G.shape[0] / (G.shape[0] - 1)  # per-estimate contribution
            v_s, v_se = float(sq.mean()), float(sq.std() / math.sqrt(G.shape[0]))
            v_sub, v_mc = float(sub[sl].sum()), float(mc[sl].sum())
            v_mc_se = float(mc_se[sl].pow(2).sum().sqrt())
            total = v_sub + v_mc
            rows.append(
                {
                    "estimator": est,
                    "point": point,
                    "B": B,
                    "S": S,
                    "group": group,
                    "status": "ok",
                    "var_subsampling": v_sub,
                    "var_mc": v_mc,
                    "var_mc_se": v_mc_se,
                    "var_total_exact": total,
                    "var_total_sampled": v_s,
                    "var_total_sampled_se": v_se,
                    "z": (v_s - total) / math.sqrt(v_se**2 + v_mc_se**2) if v_se > 0 else float("nan"),
                    "rel_error": v_s / total - 1 if total > 0 else float("nan"),
                    "mc_fraction": v_mc / total if total > 0 else float("nan"),
                    "grad_estimates": cfg.grad_estimates,
                    "quadrature_vs_sampled_mean_z": float(((got[sl] - want[sl]) / se[sl]).abs().max()),
                }
            )
        return rows

    def plot(
        self, rows: Sequence[Mapping[str, Any]], cfg: DoublyStochasticConfig, out_dir: Path
    ) -> list[Path]:
        from scg.studies.doubly_stochastic_plot import plot_decomposition

        return plot_decomposition(rows, cfg, Path(out_dir))
