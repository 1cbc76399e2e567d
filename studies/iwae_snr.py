r"""``iwae-snr``: Rainforth et al. (2018) — SNR of IWAE gradients vs K for IWAE, STL and DReG.

Setup (docs/references.md): D = 20, :math:`p(z) = N(μ, I)`, :math:`p(x | z) = N(z, I)`, so
:math:`p(x) = N(μ, 2I)` and :math:`p(z | x) = N((μ + x)/2, ½ I)`; the inference network
:math:`q(z | x) = N(Ax + b, ⅔ I)` — **⅔ is the variance** (covariance ⅔ I, standard
deviation √⅔ ≈ 0.816; fixed, not learned), following the :math:`N(\text{mean},
\text{covariance})` notation of the paper. N = 1024 points :math:`x_n \sim N(μ_{true}, 2I)`,
:math:`μ_{true} \sim N(0, I)`; the optimum :math:`μ^* = \bar x`, :math:`A^* = I/2`,
:math:`b^* = μ^*/2`; every element of (A, b, μ) is perturbed by N(0, 0.01²). The data
and the perturbation come from ``data_seed`` (the same for every cell).

Gradient: of the IWAE bound summed over all N points,
:math:`\sum_n \log \frac1K \sum_k w_{nk}`, built with :func:`scg.objectives.iwae`
(``gradient="reparam"``; ``"stl"`` with ``log q`` from :func:`scg.stop_gradient`;
``"dreg"`` with ``z``), M independent estimates by :func:`scg.diagnostics.gradient_samples`.
Inference-network parameters: A and b (420 numbers); generative: μ (20). The generative
gradient is the same estimator for all three methods (their rows differ by sampling
noise only: each method is a cell with its own seed).

SNR (Rainforth et al.): per parameter :math:`|E \hat g_p| / \mathrm{std}(\hat g_p)`, then
**averaged over the parameters of the group** (column ``snr``). The mean of the IWAE
(reparam) inference gradient is small (:math:`O(1/K)`) and its sample mean from M
estimates is dominated by noise at large K (the plain ratio then stalls at the noise
floor :math:`\sqrt{2/(πM)}`, column ``snr_direct``); so for that group :math:`E\hat g_p`
is estimated by the mean of M DReG estimates — an unbiased estimator of the same
gradient (Tucker et al. 2019) with a far higher SNR; i.e. the control variate
:math:`\hat g_{IWAE} − \hat g_{DReG}`, whose mean is 0. The standard deviation is always the
method's own. ``snr_direct`` and ``snr_floor`` are reported next to it.

Fits: least squares of log SNR on log K over K ≥ ``fit_min_k`` (default 30, so K = 30,
100, 300, 1000 by default) — rows with ``part = "fit"``; expected slopes −½ (IWAE
inference), +½ (DReG inference, generative). Each slope has two standard errors:
``slope_se`` from a bootstrap over the M estimates (``bootstrap`` resamples of the M
rows at every K, the same rows for the DReG signal of the IWAE inference SNR; the
sampling noise of the SNRs), with its 95 % percentile interval ``slope_ci_low`` /
``slope_ci_high``; and ``slope_se_ols``, the ordinary least-squares SE from the
residuals (n − 2 degrees of freedom), which also counts the curvature of log SNR in
log K (the law is only asymptotic). ``within_2se`` says whether the expected slope
lies within 2 ``slope_se`` of the fit. The generative signal is asymptotic late: the
mean generative gradient is :math:`-N δμ/2 + O(1/K)`, and the O(1/K) term is driven by
the perturbation of the inference network, :math:`δA\,μ^* + δb`, about ten times
larger than :math:`δμ/2` here (|μ*| ≈ √D), so the generative SNR falls from K = 1 to
K ≈ 30 and climbs more slowly than √K until K ≈ 100.

References:
    Rainforth et al., "Tighter Variational Bounds are Not Necessarily Better", ICML 2018.
    https://arxiv.org/abs/1802.04537
    Tucker, Lawson, Gu & Maddison, "Doubly Reparameterized Gradient Estimators for Monte
    Carlo Objectives", ICLR 2019. https://arxiv.org/abs/1810.04152
    Roeder, Wu & Duvenaud, "Sticking the Landing", NeurIPS 2017. https://arxiv.org/abs/1703.09194
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Independent, Normal

import scg
from scg.studies._io import row
from scg.studies.base import CellContext, Study

__all__ = [
    "IWAESNRConfig",
    "IWAESNR",
    "setup",
    "EXPECTED_SLOPES",
    "fit_slope",
    "slope_se_ols",
    "bootstrap_snr",
]

_METHODS = ("reparam", "stl", "dreg")
#: (method, group) -> slope expected from Rainforth et al. 2018 / Tucker et al. 2019.
EXPECTED_SLOPES: dict[tuple[str, str], float] = {
    ("reparam", "inference"): -0.5,
    ("dreg", "inference"): 0.5,
    ("reparam", "generative"): 0.5,
    ("stl", "generative"): 0.5,
    ("dreg", "generative"): 0.5,
}
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


@dataclass(frozen=True)
class IWAESNRConfig:
    """Configuration of ``iwae-snr`` (defaults: K up to 1000 as in the paper; M = 1024 is the GPU size).

    Attributes:
        dim: D, latent and data dimension.
        num_points: N data points; the bound is summed over all of them.
        ks: numbers of importance samples K.
        methods: gradients among reparam (IWAE), stl, dreg.
        num_estimates: M independent gradient estimates per (method, K).
        perturbation: standard deviation of the perturbation of the optimum.
        q_variance: variance of q(z | x) (⅔).
        fit_min_k: slopes are fitted over K ≥ this.
        bootstrap: resamples of the M estimates for the standard error of each slope.
        data_seed: seed of the data and of the perturbation (shared by all cells).
        bound_draws: draws of the bound (no gradient) for the bound-vs-log p(x) columns.
        max_elements: estimates × points × K × D per vectorised call (memory bound).
        dtype: ``float32`` or ``float64``.
    """

    dim: int = 20
    num_points: int = 1024
    ks: tuple[int, ...] = (1, 3, 10, 30, 100, 300, 1000)
    methods: tuple[str, ...] = _METHODS
    num_estimates: int = 32
    perturbation: float = 0.01
    q_variance: float = 2.0 / 3.0
    fit_min_k: int = 30
    bootstrap: int = 200
    data_seed: int = 0
    bound_draws: int = 4
    max_elements: int = 1 << 22
    dtype: str = "float32"

    def __post_init__(self) -> None:
        for name in (
            "dim",
            "num_points",
            "num_estimates",
            "fit_min_k",
            "bound_draws",
            "max_elements",
            "bootstrap",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be an int >= 1; got {value!r}.")
        if self.num_estimates < 2:
            raise ValueError(
                f"`num_estimates` must be >= 2 to estimate a variance; got {self.num_estimates}."
            )
        if not self.ks or any(int(k) < 1 for k in self.ks):
            raise ValueError(f"`ks` must be integers >= 1; got {self.ks!r}.")
        for m in self.methods:
            if m not in _METHODS:
                raise ValueError(f"unknown method {m!r}; valid methods: {', '.join(_METHODS)}.")
        if not self.q_variance > 0 or not self.perturbation >= 0:
            raise ValueError(
                f"`q_variance` must be positive and `perturbation` >= 0; got {self.q_variance!r}, "
                f"{self.perturbation!r}."
            )
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"`dtype` must be float32 or float64; got {self.dtype!r}.")


def setup(cfg: IWAESNRConfig, device: torch.device) -> tuple[Tensor, dict[str, Tensor]]:
    """Data ``x [N, D]`` and the perturbed optimum ``{"A": [D, D], "b": [D], "mu": [D]}`` from ``data_seed``."""
    g = torch.Generator().manual_seed(cfg.data_seed)
    D, N = cfg.dim, cfg.num_points
    dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
    mu_true = torch.randn(D, generator=g, dtype=torch.float64)
    x = mu_true + math.sqrt(2.0) * torch.randn(N, D, generator=g, dtype=torch.float64)
    mu_star = x.mean(0)
    eps = cfg.perturbation
    params = {
        "A": torch.eye(D, dtype=torch.float64) / 2
        + eps * torch.randn(D, D, generator=g, dtype=torch.float64),
        "b": mu_star / 2 + eps * torch.randn(D, generator=g, dtype=torch.float64),
        "mu": mu_star + eps * torch.randn(D, generator=g, dtype=torch.float64),
    }
    return x.to(device=device, dtype=dtype), {k: v.to(device=device, dtype=dtype) for k, v in params.items()}


def log_px(x: Tensor, mu: Tensor) -> float:
    """Exact :math:`\\sum_n \\log N(x_n; μ, 2I)`."""
    d = x.double() - mu.double()
    return float((-0.25 * (d * d).sum(-1) - 0.5 * x.shape[-1] * math.log(2 * math.pi * 2.0)).sum())


def bound_fn(x: Tensor, K: int, method: str, std: float) -> Callable[[dict[str, Tensor]], Tensor]:
    """``fn(params) -> Σ_n IWAE_K(x_n)``: a value-preserving surrogate whose gradient is ``method``'s."""

    def fn(p: dict[str, Tensor]) -> Tensor:
        m = x @ p["A"].T + p["b"]  # [B, D]
        q = Independent(Normal(m, std, validate_args=False), 1, validate_args=False)
        z = m + std * torch.randn((K, *m.shape), dtype=m.dtype, device=m.device)  # out of place: vmap-safe
        D = m.shape[-1]
        log_p = -0.5 * ((z - p["mu"]) ** 2).sum(-1) - 0.5 * ((x - z) ** 2).sum(-1) - 2 * D * _HALF_LOG_2PI
        if method == "reparam":
            return scg.objectives.iwae(log_p, q.log_prob(z)).sum()
        log_q = scg.stop_gradient(q).log_prob(z)
        if method == "stl":
            return scg.objectives.iwae(log_p, log_q, gradient="stl").sum()
        return scg.objectives.iwae(log_p, log_q, gradient="dreg", z=z).sum()

    return fn


def gradients(cfg: IWAESNRConfig, x: Tensor, params: dict[str, Tensor], K: int, method: str) -> Tensor:
    """``[M, D² + 2D]`` independent estimates of the full-data gradient (A, b, μ), chunked over points."""
    N, D, M = x.shape[0], x.shape[1], cfg.num_estimates
    per_estimate = N * K * D
    chunk = max(1, min(M, cfg.max_elements // per_estimate))
    points = N if chunk > 1 else max(1, min(N, cfg.max_elements // (K * D)))
    std = math.sqrt(cfg.q_variance)
    parts = [  # draws are independent across points: the sum over point chunks is one estimate
        scg.diagnostics.gradient_samples(
            bound_fn(x[start : start + points], K, method, std), params, M, chunk_size=chunk
        )
        for start in range(0, N, points)
    ]
    return torch.stack(parts).sum(0)


def bound_estimate(cfg: IWAESNRConfig, x: Tensor, params: dict[str, Tensor], K: int) -> tuple[float, float]:
    """Mean and standard error of the bound :math:`\\sum_n \\log \\frac1K \\sum_k w_{nk}` over ``bound_draws`` draws."""
    std = math.sqrt(cfg.q_variance)
    points = max(1, min(x.shape[0], cfg.max_elements // (K * x.shape[1])))
    values = []
    with torch.no_grad():
        for _ in range(cfg.bound_draws):
            values.append(
                sum(
                    float(bound_fn(x[s : s + points], K, "reparam", std)(params))
                    for s in range(0, x.shape[0], points)
                )
            )
    arr = np.asarray(values)
    se = float(arr.std(ddof=1) / math.sqrt(len(arr))) if len(arr) > 1 else math.nan
    return float(arr.mean()), se


def _snr(mean: Tensor, std: Tensor) -> float:
    ratio = mean.abs() / std
    return float(ratio[torch.isfinite(ratio)].mean())


def fit_slope(ks: Sequence[float], values: Sequence[float]) -> tuple[float, float]:
    """Least-squares slope and intercept of log(value) on log(K)."""
    lx, ly = np.log(np.asarray(ks, dtype=float)), np.log(np.asarray(values, dtype=float))
    slope, intercept = np.polyfit(lx, ly, 1)
    return float(slope), float(intercept)


def slope_se_ols(ks: Sequence[float], values: Sequence[float]) -> float:
    r"""OLS standard error of the slope of log(value) on log(K), nan if n < 3.

    :math:`\sqrt{\mathrm{SSR} / (n − 2) / \sum (\log K − \overline{\log K})^2}`.
    """
    lx, ly = np.log(np.asarray(ks, dtype=float)), np.log(np.asarray(values, dtype=float))
    n = len(lx)
    if n < 3:
        return math.nan
    slope, intercept = np.polyfit(lx, ly, 1)
    ssr = float(((ly - (slope * lx + intercept)) ** 2).sum())
    return math.sqrt(ssr / (n - 2) / float(((lx - lx.mean()) ** 2).sum()))


def bootstrap_snr(G: Tensor, signal_rows: Tensor | None, idx: Tensor, sl: slice) -> np.ndarray:
    """SNR of parameter group ``sl`` for each resample ``idx [B, M]`` of the rows of ``G [M, P]``.

    The signal is the mean of the resampled rows of ``signal_rows`` (the same rows; the DReG
    estimates for the IWAE inference SNR) or of ``G`` itself; the standard deviation is ``G``'s.
    """
    out = np.empty(idx.shape[0])
    for b in range(idx.shape[0]):
        g = G[idx[b]][:, sl]
        sig = g.mean(0) if signal_rows is None else signal_rows[idx[b]][:, sl].mean(0)
        out[b] = _snr(sig, g.std(0))
    return out


_COLUMNS = (
    "part",
    "method",
    "K",
    "group",
    "num_estimates",
    "num_points",
    "snr",
    "snr_se",
    "snr_direct",
    "snr_floor",
    "signal",
    "mean_abs_gradient",
    "mean_std",
    "bound_mean",
    "bound_std_error",
    "log_px_exact",
    "slope",
    "slope_se",
    "slope_ci_low",
    "slope_ci_high",
    "slope_se_ols",
    "bootstrap",
    "intercept",
    "fit_min_k",
    "fit_num_k",
    "fit_ks",
    "expected_slope",
    "within_2se",
    "within_0.1",
    "note",
)


def _row(**values: Any) -> dict[str, Any]:
    return row(_COLUMNS, **values)


class IWAESNR(Study):
    """Rainforth et al. 2018: inference/generative gradient SNR vs K for IWAE, STL and DReG."""

    name = "iwae-snr"
    description = (
        "Rainforth et al. 2018 linear-Gaussian: SNR of inference/generative gradients vs K (IWAE, STL, DReG)"
    )
    reproduces = "Rainforth et al. 2018 Fig. 2 (SNR slopes -1/2, +1/2); Tucker et al. 2019 (DReG +1/2)"
    time = {
        "smoke": "5 s",
        "default": "2 min on 2 CPU cores with 1 torch thread (N = 1024, K <= 1000)",
        "full": "GPU (K <= 1000, M = 1024)",
    }
    Config = IWAESNRConfig

    def smoke(self) -> IWAESNRConfig:
        return IWAESNRConfig(
            num_points=32,
            ks=(3, 10, 30),
            num_estimates=16,
            fit_min_k=3,
            bound_draws=2,
            bootstrap=50,
        )

    def full(self) -> IWAESNRConfig:
        """The paper's range (Rainforth et al. 2018, Fig. 2): K up to 1000, M = 1024 estimates per point."""
        return IWAESNRConfig(ks=(1, 3, 10, 30, 100, 300, 1000), num_estimates=1024)

    def cells(self, cfg: IWAESNRConfig) -> list[dict[str, Any]]:
        return [{"method": m} for m in cfg.methods]

    def run_cell(self, cfg: IWAESNRConfig, cell: Mapping[str, Any], ctx: CellContext) -> list[dict[str, Any]]:
        method = str(cell["method"])
        x, params = setup(cfg, ctx.device)
        P_inf = cfg.dim * cfg.dim + cfg.dim
        groups = {"inference": slice(0, P_inf), "generative": slice(P_inf, P_inf + cfg.dim)}
        exact = log_px(x, params["mu"])
        floor = math.sqrt(2 / (math.pi * cfg.num_estimates))
        rows: list[dict[str, Any]] = []
        boot: dict[tuple[int, str], np.ndarray] = {}  # (K, group) -> bootstrap SNRs
        rng = torch.Generator().manual_seed(ctx.seed)
        for K in sorted(int(k) for k in cfg.ks):
            seed = (ctx.seed * 1_000_003 + K) % (2**31)
            torch.manual_seed(seed)
            G = gradients(cfg, x, params, K, method).double()
            mean, std = G.mean(0), G.std(0)
            signal = {"inference": mean, "generative": mean}
            source = {"inference": "own mean", "generative": "own mean"}
            rows_of: dict[str, Tensor | None] = {"inference": None, "generative": None}
            if method == "reparam":  # E[g_IWAE] = E[g_DReG] for the inference network: the precise mean
                torch.manual_seed(seed)
                rows_of["inference"] = gradients(cfg, x, params, K, "dreg").double()
                signal["inference"] = rows_of["inference"].mean(0)
                source["inference"] = "mean of M DReG estimates (control variate g_IWAE - g_DReG)"
            idx = torch.randint(G.shape[0], (cfg.bootstrap, G.shape[0]), generator=rng).to(G.device)
            for group, sl in groups.items():
                boot[K, group] = bootstrap_snr(G, rows_of[group], idx, sl)
            torch.manual_seed(seed + 1)
            bound, bound_se = bound_estimate(cfg, x, params, K)
            for group, sl in groups.items():
                rows.append(
                    _row(
                        part="snr",
                        method=method,
                        K=K,
                        group=group,
                        num_estimates=cfg.num_estimates,
                        num_points=cfg.num_points,
                        snr=_snr(signal[group][sl], std[sl]),
                        snr_se=float(boot[K, group].std(ddof=1)),
                        snr_direct=_snr(mean[sl], std[sl]),
                        snr_floor=floor,
                        signal=source[group],
                        mean_abs_gradient=float(signal[group][sl].abs().mean()),
                        mean_std=float(std[sl].mean()),
                        bound_mean=bound,
                        bound_std_error=bound_se,
                        log_px_exact=exact,
                    )
                )
            ctx.progress(1)
        for group in groups:
            pts = [
                (r["K"], r["snr"])
                for r in rows
                if r["group"] == group and r["K"] >= cfg.fit_min_k and r["snr"] and r["snr"] > 0
            ]
            expected = EXPECTED_SLOPES.get((method, group))
            if len(pts) < 2:
                rows.append(
                    _row(
                        part="fit",
                        method=method,
                        group=group,
                        fit_min_k=cfg.fit_min_k,
                        fit_num_k=len(pts),
                        expected_slope=expected,
                        note="fewer than 2 K values to fit",
                    )
                )
                continue
            ks_fit = [p[0] for p in pts]
            slope, intercept = fit_slope(ks_fit, [p[1] for p in pts])
            bs = np.array(
                [
                    fit_slope(ks_fit, [boot[k, group][b] for k in ks_fit])[0]
                    for b in range(cfg.bootstrap)
                    if all(boot[k, group][b] > 0 for k in ks_fit)
                ]
            )
            se = float(bs.std(ddof=1)) if len(bs) > 1 else math.nan
            lo, hi = (
                (float(np.percentile(bs, 2.5)), float(np.percentile(bs, 97.5)))
                if len(bs) > 1
                else (math.nan,) * 2
            )
            rows.append(
                _row(
                    part="fit",
                    method=method,
                    group=group,
                    slope=slope,
                    slope_se=se,
                    slope_ci_low=lo,
                    slope_ci_high=hi,
                    slope_se_ols=slope_se_ols(ks_fit, [p[1] for p in pts]),
                    bootstrap=len(bs),
                    intercept=intercept,
                    fit_min_k=cfg.fit_min_k,
                    fit_num_k=len(pts),
                    fit_ks=" ".join(map(str, ks_fit)),
                    expected_slope=expected,
                    within_2se=None if expected is None else abs(slope - expected) <= 2 * se,
                    **{"within_0.1": None if expected is None else abs(slope - expected) <= 0.1},
                )
            )
        return rows

    def plot(self, rows: Sequence[Mapping[str, Any]], cfg: IWAESNRConfig, out_dir: Path) -> list[Path]:
        from scg.studies.iwae_snr_plot import plot_snr

        return [plot_snr(rows, cfg, Path(out_dir) / "iwae_snr.png")]
