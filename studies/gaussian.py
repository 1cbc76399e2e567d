r"""``gaussian``: Mohamed et al. (2020) §3 — variance of SF, SF*, PW and MVD on Gaussian costs.

Part 1 (``part = "cost"``): :math:`q = N(μ = 1, σ = 1)`, single-sample (S = 1)
estimates of :math:`∇_{μ,σ} E_q[f]` for the cost families

.. math:: f(x) = (x − k)^2,\quad f(x) = e^{−k x^2},\quad f(x) = \cos kx

with the score function (SF), the score function with the variance-optimal constant
baseline per parameter (SF*, :math:`b^*_p = E[f s_p^2]/E[s_p^2]`, computed exactly),
the pathwise (PW) and the coupled measure-valued (MVD) estimators. Every sampled
variance sits next to the exact one from :func:`scg.testing.exact_moments`
(quadrature over the estimator's own random inputs) and, for four (cost, k) rows,
next to a reference value derived in this project from closed forms
(``reference_variance``; ``docs/references.md``). Mohamed et al. show these
variances as curves over k (§3, Figs. 3–4), not as a table.

Part 2 (``part = "dimension"``): :math:`f(x) = ‖x‖^2`, :math:`q = N(0, I_D)`, the
gradient w.r.t. :math:`μ_1`: SF variance :math:`(D+2)(D+4)`, SF with the baseline
:math:`E f = D` :math:`2D + 8`, pathwise :math:`4` (closed forms).

Sampling. N independent estimates are drawn with the batch engine of
:mod:`scg.studies.sampling` (N copies of the problem as a batch dimension, one
backward pass per chunk) and reduced to streaming moments
(:class:`~scg.studies.sampling.Moments`), so N can reach 10⁸ on a GPU without
holding the estimates. N adapts per estimator (:func:`~scg.studies.sampling.sample_until`):
chunks are added until the standard error of the sampled variance (from the
sample's fourth central moment) is at most ``rel_se`` of the variance, or
``max_estimates`` is reached. The score function on :math:`(x − k)^2` is heavy-tailed (kurtosis of the
σ-estimate up to ≈ 300), so it needs N ≈ 6·10⁶ for a 0.67 % standard error (2 %
at 3 SE) and N ≈ 10⁸ for 0.17 % (0.5 % at 3 SE); light-tailed estimators stop
after 10⁴–10⁵ estimates. Within a cell every estimator starts from the same random
state (common random numbers: SF and SF* use the very same draws).

Sizes: the default config (``scg-study run gaussian``) meets the 2 % criterion on
2 CPU cores in a few minutes; ``--smoke`` runs only the four table rows with
N ≤ 2¹⁶; ``--full`` (:meth:`Gaussian.full`, for a GPU) targets the 0.5 % criterion
(``rel_se`` = 0.16 %, N ≤ 2²⁸) on the same k grids (see ``docs/studies/gaussian/README.md``
for its measured table rows).

References:
    Mohamed, Rosca, Figurnov & Mnih, "Monte Carlo Gradient Estimation in Machine
    Learning", JMLR 2020, §3 (Figs. 3–4). https://arxiv.org/abs/1906.10652
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, Normal

import scg
from scg.baselines import Constant
from scg.studies._io import row
from scg.studies.base import CellContext, Study
from scg.studies.problems import Problem
from scg.studies.sampling import Moments, sample_until

__all__ = [
    "GaussianConfig",
    "Gaussian",
    "Moments",
    "sample_until",
    "cost",
    "REFERENCE",
    "ESTIMATOR_LABELS",
]

#: Reference variances derived in this project (closed forms, docs/references.md) at four (family, k)
#: points of Mohamed et al. 2020's §3 curves: (family, k) -> parameter -> estimator -> variance.
REFERENCE: dict[tuple[str, float], dict[str, dict[str, float]]] = {
    ("square", 0.0): {
        "mu": {
            "score_function": 30,
            "score_function_optimal": 14,
            "pathwise": 4,
            "measure_valued": 1.093,
        },
        "sigma": {
            "score_function": 136,
            "score_function_optimal": 64,
            "pathwise": 12,
            "measure_valued": 8,
        },
    },
    ("square", 3.0): {
        "mu": {
            "score_function": 87,
            "score_function_optimal": 38,
            "pathwise": 4,
            "measure_valued": 4.372,
        },
        "sigma": {
            "score_function": 346,
            "score_function_optimal": 184,
            "pathwise": 24,
            "measure_valued": 20,
        },
    },
    ("cos", 5.0): {
        "mu": {
            "score_function": 0.5,
            "score_function_optimal": 0.5,
            "pathwise": 12.5,
            "measure_valued": 0.2957,
        },
        "sigma": {
            "score_function": 1.0,
            "score_function_optimal": 1.0,
            "pathwise": 12.5,
            "measure_valued": 1.0,
        },
    },
    ("bump", 1.0): {
        "mu": {
            "score_function": 0.1758,
            "score_function_optimal": 0.0722,
            "pathwise": 0.2117,
            "measure_valued": 0.0126,
        },
        "sigma": {
            "score_function": 0.1767,
            "score_function_optimal": 0.1128,
            "pathwise": 0.1757,
            "measure_valued": 0.0707,
        },
    },
}

#: Short labels used in the figures (Mohamed et al.'s column names).
ESTIMATOR_LABELS: dict[str, str] = {
    "score_function": "SF",
    "score_function_optimal": "SF*",
    "pathwise": "PW",
    "measure_valued": "MVD",
    "score_function_baseline": "SF, b = E f",
}
_FAMILIES = ("square", "bump", "cos")
_PARAMS = ("mu", "sigma")
_LOC, _SCALE = 1.0, 1.0
#: Gauss rules with 200 nodes resolve cos kx up to k = 10 (the default 96 do not beyond k ≈ 5).
_COS_NODES = 200


def cost(family: str, k: float) -> Callable[[Tensor], Tensor]:
    """The cost ``f(x; k)`` of a family: ``square`` (x − k)², ``bump`` e^{−kx²}, ``cos`` cos kx."""
    if family == "square":
        return lambda z: (z - k) ** 2
    if family == "bump":
        return lambda z: torch.exp(-k * z * z)
    if family == "cos":
        return lambda z: torch.cos(k * z)
    raise ValueError(f"`family` must be one of {', '.join(_FAMILIES)}; got {family!r}.")


@dataclass(frozen=True)
class GaussianConfig:
    """Configuration of the ``gaussian`` study (defaults: the CPU-feasible default run).

    Attributes:
        square_k: k values of (x − k)² (default linspace(−3, 3, 101): the paper's range, with the
            reference points 0 and 3).
        bump_k: k values of e^{−kx²} (default logspace(−1, 1, 101), with the reference point 1).
        cos_k: k values of cos kx (default linspace(0.5, 5, 101): the paper's range, with the
            reference point 5).
        estimators: part-1 estimators, among score_function, score_function_optimal, pathwise, measure_valued.
        dims: dimensions D of part 2 (‖x‖²); empty to skip it.
        rel_se: target standard error of each sampled variance, relative to it.
        min_estimates: N is at least this.
        max_estimates: N stops here even if ``rel_se`` is not reached.
        chunk: estimates per vectorised step (N grows in chunks).
        dtype: ``float64`` or ``float32``.
    """

    square_k: tuple[float, ...] = tuple(round(-3.0 + 0.06 * i, 10) for i in range(101))
    bump_k: tuple[float, ...] = tuple(round(10 ** (-1.0 + 0.02 * i), 10) for i in range(101))
    cos_k: tuple[float, ...] = tuple(round(0.5 + 0.045 * i, 10) for i in range(101))
    estimators: tuple[str, ...] = (
        "score_function",
        "score_function_optimal",
        "pathwise",
        "measure_valued",
    )
    dims: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    rel_se: float = 0.02 / 3
    min_estimates: int = 1 << 16
    max_estimates: int = 1 << 23
    chunk: int = 1 << 18
    dtype: str = "float64"

    def __post_init__(self) -> None:
        for name in ("min_estimates", "max_estimates", "chunk"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 2:
                raise ValueError(f"`{name}` must be an int >= 2; got {value!r}.")
        if not self.rel_se > 0:
            raise ValueError(f"`rel_se` must be positive; got {self.rel_se!r}.")
        if self.dtype not in ("float64", "float32"):
            raise ValueError(f"`dtype` must be float64 or float32; got {self.dtype!r}.")
        bad = [e for e in self.estimators if e not in REFERENCE[("square", 0.0)]["mu"]]
        if bad:
            raise ValueError(
                f"unknown estimator {bad[0]!r}; valid estimators: "
                f"{', '.join(REFERENCE[('square', 0.0)]['mu'])}."
            )
        if any(int(d) < 1 for d in self.dims):
            raise ValueError(f"`dims` must be >= 1; got {self.dims!r}.")


def _budget(cfg: GaussianConfig, chunk: int | None = None) -> dict[str, Any]:
    return dict(
        rel_se=cfg.rel_se,
        min_estimates=cfg.min_estimates,
        max_estimates=cfg.max_estimates,
        chunk=min(chunk or cfg.chunk, cfg.max_estimates),
    )


def _dtype(cfg: GaussianConfig) -> torch.dtype:
    return torch.float64 if cfg.dtype == "float64" else torch.float32


def _exact(
    estimator: scg.Estimator,
    f: Callable[[Tensor], Tensor],
    nodes: int | None,
    device: torch.device,
    *,
    split: bool = False,
) -> tuple[list[float], list[float]]:
    """Exact mean and variance of the (∂μ, ∂σ) estimates by the harness.

    ``split`` integrates one parameter at a time (for MVD, whose μ and σ parts draw
    different inputs: two small grids instead of one product grid). ``nodes`` go to
    the laws the estimate depends on (z, eps; MVD: w for μ, m and u for σ).
    """
    one = torch.tensor(1.0, dtype=torch.float64, device=device)
    if not split:
        laws = estimator.laws(Normal(one, one), 1)
        grid = {n: nodes for n in laws if n in ("z", "eps")} if nodes else None
        m = scg.testing.exact_moments(estimator, Normal, (one, one), f, nodes=grid)
        return [float(v) for v in m.mean], [float(v) for v in m.variance]
    means, variances = [], []
    for make, names in zip(
        (lambda m: Normal(m, _SCALE), lambda s: Normal(_LOC, s)), (("w",), ("m", "u")), strict=False
    ):
        laws = estimator.laws(make(one), 1)
        grid = {n: nodes for n in laws if n in names} if nodes else None
        m = scg.testing.exact_moments(estimator, make, (one,), f, nodes=grid)
        means.append(float(m.mean[0]))
        variances.append(float(m.variance[0]))
    return means, variances


def score_function_moments(
    f: Callable[[Tensor], Tensor], nodes: int | None, device: torch.device
) -> dict[str, list[float]]:
    r"""Exact moments of SF and SF*: ``mean``, ``variance`` (b = 0), ``bstar``, ``variance_star``.

    The second moment :math:`m_2(b) = E[(f − b)^2 s_p^2]` of ``ScoreFunction(Constant(b))``
    is quadratic in b; its exact values at b = −1, 0, 1 (three harness calls) give
    :math:`2E[s_p^2]` (curvature), :math:`E[f s_p^2]`, the minimiser
    :math:`b^*_p = E[f s_p^2] / E[s_p^2]` and :math:`m_2(b^*_p)`, for p = μ, σ at N(1, 1).
    """
    m2, mean = [], []
    for b in (-1.0, 0.0, 1.0):
        est = scg.ScoreFunction(baseline=Constant(b)).to(device)
        means, variances = _exact(est, f, nodes, device)
        m2.append([v + m * m for m, v in zip(means, variances, strict=False)])
        if b == 0.0:
            mean = means
    bstar, star = [], []
    for p in range(2):
        curvature = m2[2][p] + m2[0][p] - 2 * m2[1][p]  # 2 E[s²]
        slope = m2[0][p] - m2[2][p]  # 4 E[f s²]
        b = slope / (2 * curvature) if curvature > 0 else 0.0
        bstar.append(b)
        star.append(m2[1][p] - 0.5 * slope * b + 0.5 * curvature * b * b - mean[p] ** 2)
    return {
        "mean": mean,
        "variance": [m2[1][p] - mean[p] ** 2 for p in range(2)],
        "bstar": bstar,
        "variance_star": star,
    }


_COLUMNS = (
    "part",
    "family",
    "k",
    "D",
    "estimator",
    "parameter",
    "status",
    "num_estimates",
    "baseline",
    "mean",
    "exact_gradient",
    "exact_mean",
    "std_error",
    "bias_z",
    "variance",
    "variance_std_error",
    "exact_variance",
    "reference_variance",
    "variance_rel_error",
    "variance_z",
    "snr",
    "note",
)


def _row(**values: Any) -> dict[str, Any]:
    return row(_COLUMNS, **values)


class Gaussian(Study):
    """Mohamed et al. 2020 §3: SF / SF* / PW / MVD variance on Gaussian costs, and vs dimension."""

    name = "gaussian"
    description = "Mohamed et al. 2020 §3: variance of SF, SF*, PW, MVD on (x-k)^2, exp(-kx^2), cos kx; vs D"
    reproduces = "Mohamed et al. 2020 §3, Figs. 3-4 (curves; reference values at 4 points derived here)"
    time = {
        "smoke": "5 s",
        "default": "~10 min on 2 idle CPU cores (303 cost rows)",
        "full": "hours on a CPU (its 4 table rows: 3.3 min on 1 thread); meant for a GPU",
    }
    Config = GaussianConfig

    def smoke(self) -> GaussianConfig:
        return GaussianConfig(
            square_k=(0.0, 3.0),
            bump_k=(1.0,),
            cos_k=(5.0,),
            dims=(1, 4),
            rel_se=0.005,
            min_estimates=1 << 12,
            max_estimates=1 << 16,
            chunk=1 << 14,
        )

    def full(self) -> GaussianConfig:
        """The 0.5 % size: SE of every sampled variance ≤ 0.16 % (0.5 % at ≈ 3 SE; the score function's
        ∇σ on (x − k)² then needs N ≈ 10⁸, so N ≤ 2²⁸), on the default's k grids."""
        return GaussianConfig(
            rel_se=0.0016,
            max_estimates=1 << 28,
            chunk=1 << 22,
        )

    def cells(self, cfg: GaussianConfig) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for family, ks in (("square", cfg.square_k), ("bump", cfg.bump_k), ("cos", cfg.cos_k)):
            out += [{"part": "cost", "family": family, "k": float(k)} for k in ks]
        out += [{"part": "dimension", "D": int(d)} for d in cfg.dims]
        return out

    def run_cell(
        self, cfg: GaussianConfig, cell: Mapping[str, Any], ctx: CellContext
    ) -> list[dict[str, Any]]:
        if cell["part"] == "dimension":
            return self._dimension(cfg, int(cell["D"]), ctx)
        return self._cost(cfg, str(cell["family"]), float(cell["k"]), ctx)

    def _cost(self, cfg: GaussianConfig, family: str, k: float, ctx: CellContext) -> list[dict[str, Any]]:
        dev, dtype = ctx.device, _dtype(cfg)
        f = cost(family, k)
        nodes = _COS_NODES if family == "cos" else None
        problem = Problem(
            name=f"{family}-{k:g}",
            make_dist=Normal,
            params=(_LOC, _SCALE),
            f=f,
            param_names=_PARAMS,
        )
        params = problem.tensors(dtype=dtype, device=dev)
        one = torch.tensor(1.0, dtype=torch.float64, device=dev)
        grad = scg.testing.exact_gradient(Normal, (one, one), f, nodes=nodes).tolist()
        reference = REFERENCE.get((family, k), {})
        sf = (
            score_function_moments(f, nodes, dev)
            if any(e.startswith("score") for e in cfg.estimators)
            else {}
        )
        # (name, estimator, reported parameters, baseline, exact (mean, variance) or None = by the harness)
        variants: list[tuple[str, scg.Estimator, list[int], float | None, Any]] = []
        for name in cfg.estimators:
            if name == "score_function":
                variants.append((name, scg.ScoreFunction(), [0, 1], None, (sf["mean"], sf["variance"])))
            elif name == "score_function_optimal":
                for p, b in enumerate(sf["bstar"]):
                    variants.append(
                        (
                            name,
                            scg.ScoreFunction(baseline=Constant(b)),
                            [p],
                            b,
                            (sf["mean"], sf["variance_star"]),
                        )
                    )
            elif name == "pathwise":
                variants.append((name, scg.Pathwise(), [0, 1], None, None))
            else:
                variants.append((name, scg.MeasureValued(), [0, 1], None, None))
        rows = []
        base = dict(part="cost", family=family, k=k)
        for name, est, idx, b, exact in variants:
            est = est.to(dev)
            try:
                est.check(problem.make_dist(*params))
            except TypeError as exc:
                rows += [
                    _row(
                        **base,
                        estimator=name,
                        parameter=_PARAMS[p],
                        status="skipped",
                        note=str(exc),
                    )
                    for p in idx
                ]
                continue
            exact_mean, exact_var = exact or _exact(est, f, nodes, dev, split=name == "measure_valued")
            torch.manual_seed(ctx.seed)  # common random numbers across the estimators of a cell
            moments = sample_until(
                est,
                problem,
                params,
                idx,
                torch.tensor(grad, dtype=torch.float64, device=dev),
                **_budget(cfg),
            )
            for p in idx:
                stats = moments.stats(p, grad[p], exact_var[p])
                rows.append(
                    _row(
                        **base,
                        estimator=name,
                        parameter=_PARAMS[p],
                        status="ok",
                        num_estimates=moments.n,
                        baseline=b,
                        exact_gradient=grad[p],
                        exact_mean=exact_mean[p],
                        exact_variance=exact_var[p],
                        reference_variance=reference.get(_PARAMS[p], {}).get(name),
                        **stats,
                    )
                )
        return rows

    def _dimension(self, cfg: GaussianConfig, D: int, ctx: CellContext) -> list[dict[str, Any]]:
        dev, dtype = ctx.device, _dtype(cfg)

        def make(mu: Tensor) -> Distribution:
            return Independent(Normal(mu, torch.ones((), dtype=mu.dtype, device=mu.device)), 1)

        problem = Problem(
            name=f"norm-{D}",
            make_dist=make,
            params=([0.0] * D,),
            f=lambda z: (z * z).sum(-1),
            param_names=("mu",),
        )
        params = problem.tensors(dtype=dtype, device=dev)
        variants = (
            ("score_function", scg.ScoreFunction(), (D + 2) * (D + 4), None),
            (
                "score_function_baseline",
                scg.ScoreFunction(baseline=Constant(float(D))),
                2 * D + 8,
                float(D),
            ),
            ("pathwise", scg.Pathwise(), 4.0, None),
        )
        chunk = max(1 << 12, min(cfg.chunk, (1 << 22) // D))
        rows = []
        for name, est, exact_var, b in variants:
            torch.manual_seed(ctx.seed)
            moments = sample_until(
                est.to(dev), problem, params, [0], torch.zeros(D, device=dev), **_budget(cfg, chunk)
            )
            stats = moments.stats(0, 0.0, float(exact_var))
            rows.append(
                _row(
                    part="dimension",
                    family="squared_norm",
                    D=D,
                    estimator=name,
                    parameter="mu[0]",
                    status="ok",
                    num_estimates=moments.n,
                    baseline=b,
                    exact_gradient=0.0,
                    exact_mean=0.0,
                    exact_variance=float(exact_var),
                    reference_variance=float(exact_var),
                    **stats,
                )
            )
        return rows

    def plot(self, rows: Sequence[Mapping[str, Any]], cfg: GaussianConfig, out_dir: Path) -> list[Path]:
        from scg.studies.gaussian_plot import plot_cost, plot_dimension

        paths = []
        if any(r["part"] == "cost" for r in rows):
            paths.append(plot_cost(rows, Path(out_dir) / "gaussian_variance.png"))
        if any(r["part"] == "dimension" for r in rows):
            paths.append(plot_dimension(rows, Path(out_dir) / "gaussian_dimension.png"))
        return paths
