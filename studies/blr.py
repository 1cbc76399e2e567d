r"""``blr`` — Bayesian logistic regression on breast cancer: ELBO and per-dimension gradient variance.

Setup of Mohamed, Rosca, Figurnov & Mnih (2020), §8.3: scikit-learn's breast-cancer
data (569 × 30, standardised, plus a bias column, D = 31), prior N(0, I), a diagonal
Gaussian posterior :math:`q_λ(w) = N(μ, \mathrm{diag}\,\mathrm{softplus}(ρ)^2)` starting
from μ = 0, σ = 1, analytic KL, and the doubly stochastic gradient of

.. math::
    −\mathrm{ELBO}(λ) ≈ \frac NB\, \frac1S \sum_{s=1}^S \sum_{i∈\mathcal B} −\log p(y_i | x_i, w_s)
    + \mathrm{KL}(q_λ ‖ p), \qquad B = 32,\; S = 50,

trained by SGD (lr 1e-3, cosine decay over the run) with each estimator of the data
term. At checkpoints the study draws K minibatches and J independent gradient
estimates of the training objective at each (vectorised with
:func:`scg.diagnostics.gradient_samples`, running baselines frozen) and records, per
parameter dimension (μ_d and ρ_d), the one-way analysis of variance

* ``variance_mc`` — mean over batches of the within-batch variance: an unbiased
  estimate of :math:`E_{\mathcal B}\,\mathrm{Var}[\hat g | \mathcal B]`, the Monte Carlo
  noise, which is what the estimators differ in;
* ``variance_subsampling`` — variance of the batch means minus ``variance_mc``/J:
  unbiased for :math:`\mathrm{Var}_{\mathcal B}(E[\hat g | \mathcal B])`, common to all
  estimators (may come out slightly negative when it is small);
* ``variance_total`` — their sum, the variance of the gradient the optimiser sees
  (law of total variance; see the ``doubly-stochastic`` study for the exact split);
* ``variance_mc_se`` — the standard error of ``variance_mc`` over the K batches
  (standard deviation of the K within-batch variances / √K);

and, per checkpoint and estimator, one ``summary`` row: the median over the 2D
coordinates of ``variance_mc`` (``median_variance_mc``, the upper median, as
:func:`ordering`) and of ``variance_total``, each with a bootstrap standard error
over the K batches (``bootstrap`` resamples; ``median_variance_mc_se``,
``median_variance_total_se``). :func:`summary_table` writes the README's table from
these rows, every checkpoint included.

Paper claim (§8, Fig. 13–14): pathwise and measure-valued have the lowest variance,
the score function the highest, control variates in between; pathwise/MVD train
fastest. Measure-valued costs 1 + 4D = 125 evaluations of f per sample against 1 for
the others (the paper compares at equal S, as here).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import scg
from scg.models import BayesianLogisticRegression
from scg.models.data import breast_cancer
from scg.studies.base import CellContext, Study

__all__ = [
    "BLRConfig",
    "BLR",
    "ESTIMATORS",
    "anova",
    "median_bootstrap",
    "ordering",
    "ordering_by_checkpoint",
    "summary_table",
]

#: name -> (factory, description); the order is the order of the figures.
ESTIMATORS: dict[str, tuple[Callable[[], scg.Estimator], str]] = {
    "pathwise": (lambda: scg.Pathwise(), "Pathwise()"),
    "score_function": (lambda: scg.ScoreFunction(), "ScoreFunction()"),
    "score_function_ma": (
        lambda: scg.ScoreFunction(baseline=scg.baselines.MovingAverage()),
        "ScoreFunction(baseline=MovingAverage())",
    ),
    "score_function_delta": (
        lambda: scg.ScoreFunction(baseline=scg.baselines.Delta("optimal")),
        'ScoreFunction(baseline=Delta("optimal"))',
    ),
    "measure_valued": (lambda: scg.MeasureValued(), "MeasureValued()"),
}


@dataclass(frozen=True)
class BLRConfig:
    """Configuration; defaults are the CPU size (2000 steps); :meth:`BLR.full` has the paper's 5000 steps.

    Attributes:
        estimators: names from :data:`ESTIMATORS`.
        steps: SGD steps (cosine decay of the learning rate over them).
        lr: initial SGD learning rate.
        batch_size: B, data points per step (scaled by N/B).
        num_samples: S, posterior samples per step.
        init_std: initial posterior standard deviation (the mean starts at 0).
        elbo_points: number of evenly spaced steps (incl. 0 and the last) where the full-data ELBO is estimated.
        elbo_samples: posterior samples for each ELBO estimate.
        variance_points: number of evenly spaced checkpoints for the gradient variance.
        grad_batches: K, minibatches per checkpoint.
        grad_per_batch: J, independent gradient estimates (MC draws) per minibatch.
        bootstrap: resamples of the K batches for the standard error of the median over coordinates.
    """

    estimators: tuple[str, ...] = tuple(ESTIMATORS)
    steps: int = 2000
    lr: float = 1e-3
    batch_size: int = 32
    num_samples: int = 50
    init_std: float = 1.0
    elbo_points: int = 41
    elbo_samples: int = 2000
    variance_points: int = 6
    grad_batches: int = 20
    grad_per_batch: int = 20
    bootstrap: int = 500


def _points(steps: int, n: int) -> list[int]:
    return sorted({round(i * steps / max(n - 1, 1)) for i in range(n)} | {0, steps})


def _gradients(m: BayesianLogisticRegression, R: int, index: Tensor) -> Tensor:
    """``[R, 2D]`` independent estimates of ∇(−ELBO) w.r.t. (μ, ρ) on the minibatch ``index`` (scaled by N/B)."""
    params = {"loc": m.loc.detach(), "raw_scale": m.raw_scale.detach()}
    return scg.diagnostics.gradient_samples(
        lambda p: torch.func.functional_call(m, p, (index,)), params, R, chunk_size=100
    ).detach()


def anova(g: Tensor) -> tuple[Tensor, Tensor]:
    """``g [K, J, P]`` (J estimates at each of K batches) → unbiased (E_B Var[g|B], Var_B E[g|B]) per coordinate."""
    J = g.shape[1]
    within = g.var(1, correction=1).mean(0)
    between = g.mean(1).var(0, correction=1) - within / J
    return within, between


def _upper_median(x: Tensor) -> Tensor:
    """Median over the last dimension, the upper one for an even count (``sorted(v)[len(v) // 2]``)."""
    return x.sort(-1).values[..., x.shape[-1] // 2]


def median_bootstrap(g: Tensor, num: int, generator: torch.Generator) -> dict[str, float]:
    """Medians over coordinates of the MC and total variance of ``g [K, J, P]``, with bootstrap SEs over batches.

    Each resample draws K of the K batches with replacement and recomputes :func:`anova` and the medians;
    the standard error is the standard deviation over ``num`` resamples.
    """
    K = g.shape[0]
    v_mc, v_sub = anova(g)
    out = {
        "median_variance_mc": float(_upper_median(v_mc)),
        "median_variance_total": float(_upper_median(v_mc + v_sub)),
    }
    idx = torch.randint(K, (num, K), generator=generator, device=generator.device).to(g.device)
    mc, tot = [], []
    for i in range(num):
        w, b = anova(g[idx[i]])
        mc.append(_upper_median(w))
        tot.append(_upper_median(w + b))
    out["median_variance_mc_se"] = float(torch.stack(mc).std(correction=1))
    out["median_variance_total_se"] = float(torch.stack(tot).std(correction=1))
    return out


class BLR(Study):
    """Bayesian logistic regression: ELBO vs step and per-dimension gradient variance per estimator."""

    name = "blr"
    description = (
        "Bayesian logistic regression (breast cancer): ELBO vs step, per-dimension gradient variance"
    )
    reproduces = "Mohamed et al. 2020 §8.3 (Figs. 13-14): PW/MVD lowest variance, SF highest, CVs between"
    time = {
        "smoke": "3 s",
        "default": "1 min on 2 CPU cores with 1 torch thread (2000 steps)",
        "full": "~2.5x the default (5000 steps)",
    }
    Config = BLRConfig

    def smoke(self) -> BLRConfig:
        return BLRConfig(
            steps=10,
            num_samples=4,
            lr=1e-4,
            elbo_points=3,
            elbo_samples=100,
            variance_points=2,
            grad_batches=2,
            grad_per_batch=4,
            bootstrap=20,
        )

    def full(self) -> BLRConfig:
        """The paper's length (Mohamed et al. 2020 §8.3): 5000 SGD steps; the rest as the default."""
        return BLRConfig(steps=5000)

    def cells(self, cfg: BLRConfig) -> list[dict[str, Any]]:
        unknown = [e for e in cfg.estimators if e not in ESTIMATORS]
        if unknown:
            raise ValueError(
                f"unknown estimator(s) {unknown} for blr; valid estimators: {', '.join(ESTIMATORS)}."
            )
        if (
            min(cfg.steps, cfg.batch_size, cfg.num_samples) < 1
            or min(cfg.grad_batches, cfg.grad_per_batch) < 2
        ):
            raise ValueError(
                "`steps`, `batch_size`, `num_samples` must be >= 1 and `grad_batches`, "
                f"`grad_per_batch` >= 2; got {cfg.steps}, {cfg.batch_size}, {cfg.num_samples}, "
                f"{cfg.grad_batches}, {cfg.grad_per_batch}."
            )
        return [{"estimator": e} for e in cfg.estimators]

    def run_cell(self, cfg: BLRConfig, cell: Mapping[str, Any], ctx: CellContext) -> list[dict[str, Any]]:
        name = cell["estimator"]
        x, y, _, _ = breast_cancer()
        x, y = x.to(ctx.device), y.to(ctx.device)
        est = ESTIMATORS[name][0]()
        m = BayesianLogisticRegression(
            x,
            y,
            estimator=est,
            num_samples=cfg.num_samples,
            batch_size=cfg.batch_size,
            init_std=cfg.init_std,
        ).to(ctx.device)
        try:
            est.check(m.posterior())
        except TypeError as exc:
            return [{"kind": "skipped", "estimator": name, "status": "skipped", "reason": str(exc)}]
        opt = torch.optim.SGD(m.parameters(), lr=cfg.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.steps)
        evals = est.evaluations(m.posterior(), cfg.num_samples)
        elbo_at, var_at = (
            set(_points(cfg.steps, cfg.elbo_points)),
            set(_points(cfg.steps, cfg.variance_points)),
        )
        rows: list[dict[str, Any]] = []
        D = m.loc.shape[0]
        for t in range(cfg.steps + 1):
            if t in elbo_at:
                rows.append(
                    {
                        "kind": "elbo",
                        "estimator": name,
                        "status": "ok",
                        "step": t,
                        "elbo": m.elbo(num_samples=cfg.elbo_samples),
                        "accuracy": m.accuracy(),
                        "lr": opt.param_groups[0]["lr"],
                        "evaluations_per_step": evals,
                    }
                )
            if t in var_at:
                m.eval()
                batches = [
                    torch.randperm(m.n, generator=ctx.generator, device=ctx.device)[: cfg.batch_size]
                    for _ in range(cfg.grad_batches)
                ]
                g = torch.stack(
                    [_gradients(m, cfg.grad_per_batch, b) for b in batches]
                ).double()  # [K, J, 2D]
                m.train()
                v_mc, v_sub = anova(g)
                v_mc_se = g.var(1, correction=1).std(0, correction=1) / math.sqrt(cfg.grad_batches)
                mean = g.mean((0, 1))
                for p in range(2 * D):
                    rows.append(
                        {
                            "kind": "variance",
                            "estimator": name,
                            "status": "ok",
                            "step": t,
                            "parameter": "loc" if p < D else "raw_scale",
                            "dim": p % D,
                            "gradient_mean": float(mean[p]),
                            "variance_mc": float(v_mc[p]),
                            "variance_subsampling": float(v_sub[p]),
                            "variance_total": float(v_mc[p] + v_sub[p]),
                            "variance_mc_se": float(v_mc_se[p]),
                            "grad_estimates": cfg.grad_batches * cfg.grad_per_batch,
                        }
                    )
                rows.append(
                    {
                        "kind": "summary",
                        "estimator": name,
                        "status": "ok",
                        "step": t,
                        **median_bootstrap(g, cfg.bootstrap, ctx.generator),
                        "grad_estimates": cfg.grad_batches * cfg.grad_per_batch,
                    }
                )
            if t == cfg.steps:
                break
            opt.zero_grad(set_to_none=True)
            try:
                m.objective().backward()
            except ValueError as exc:  # the posterior left the valid parameter space: diverged
                rows.append(
                    {
                        "kind": "diverged",
                        "estimator": name,
                        "status": "diverged",
                        "step": t,
                        "reason": str(exc).splitlines()[0],
                    }
                )
                break
            opt.step()
            sched.step()
        return rows

    def plot(self, rows: Sequence[Mapping[str, Any]], cfg: BLRConfig, out_dir: Path) -> list[Path]:
        from scg.studies.blr_plot import plot_blr

        return plot_blr(rows, cfg, Path(out_dir))


def ordering(
    rows: Sequence[Mapping[str, Any]], column: str = "variance_mc"
) -> dict[int, list[tuple[str, float]]]:
    """Per checkpoint: estimators sorted by the median over dimensions of ``column`` (lowest first)."""
    by: dict[int, dict[str, list[float]]] = {}
    for r in rows:
        if r.get("kind") == "variance":
            by.setdefault(int(r["step"]), {}).setdefault(str(r["estimator"]), []).append(float(r[column]))
    out = {}
    for step, per in sorted(by.items()):
        med = {e: sorted(v)[len(v) // 2] for e, v in per.items()}
        out[step] = sorted(med.items(), key=lambda kv: kv[1] if not math.isnan(kv[1]) else math.inf)
    return out


#: column order of :func:`summary_table` (lowest variance first in the paper's claim).
TABLE_ORDER = (
    "pathwise",
    "measure_valued",
    "score_function_delta",
    "score_function_ma",
    "score_function",
)
TABLE_LABELS = {
    "pathwise": "pathwise",
    "measure_valued": "measure-valued",
    "score_function_delta": "SF + delta",
    "score_function_ma": "SF + moving average",
    "score_function": "score function",
}


def _fmt(x: float) -> str:
    """Three significant figures, as ``219``, ``0.944``, ``4.69e4``."""
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    if abs(x) >= 1e4 or abs(x) < 1e-2:
        m, e = f"{x:.2e}".split("e")
        return f"{m}e{int(e)}"
    return f"{x:.{max(0, 2 - math.floor(math.log10(abs(x))))}f}"


def summary_table(rows: Sequence[Mapping[str, Any]], column: str = "median_variance_mc") -> str:
    """The README's markdown table: one line per checkpoint of ``rows``, ``median ± SE`` per estimator."""
    summ = [r for r in rows if r.get("kind") == "summary"]
    ests = [e for e in TABLE_ORDER if any(r["estimator"] == e for r in summ)]
    ests += sorted({str(r["estimator"]) for r in summ} - set(ests))
    cell = {(int(r["step"]), str(r["estimator"])): (float(r[column]), float(r[column + "_se"])) for r in summ}
    steps = sorted({s for s, _ in cell})
    lines = [
        "| step | " + " | ".join(TABLE_LABELS.get(e, e) for e in ests) + " |",
        "|---|" + "---|" * len(ests),
    ]
    for t in steps:
        vals = [f"{_fmt(cell[t, e][0])} ± {_fmt(cell[t, e][1])}" if (t, e) in cell else "–" for e in ests]
        lines.append(f"| {t} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def ordering_by_checkpoint(
    rows: Sequence[Mapping[str, Any]], column: str = "median_variance_mc"
) -> dict[int, list[str]]:
    """Per checkpoint: estimators sorted by the summary ``column`` (lowest first)."""
    by: dict[int, dict[str, float]] = {}
    for r in rows:
        if r.get("kind") == "summary":
            by.setdefault(int(r["step"]), {})[str(r["estimator"])] = float(r[column])
    return {t: sorted(per, key=per.__getitem__) for t, per in sorted(by.items())}
