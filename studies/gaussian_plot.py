"""Figures of the ``gaussian`` study: variance vs k (Mohamed et al. 2020, Fig. 3/4 layout) and vs D."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from scg.studies._io import save_figure
from scg.studies._plotting import number, pyplot

__all__ = ["plot_cost", "plot_dimension", "COLORS"]

COLORS: dict[str, str] = {
    "score_function": "tab:blue",
    "score_function_optimal": "tab:orange",
    "pathwise": "tab:green",
    "measure_valued": "tab:red",
    "score_function_baseline": "tab:orange",
}
_LABELS = {
    "score_function": "SF",
    "score_function_optimal": "SF* (optimal constant baseline)",
    "pathwise": "PW",
    "measure_valued": "MVD",
    "score_function_baseline": "SF, baseline E f = D",
}
_TITLES = {"square": "$f(x) = (x-k)^2$", "bump": "$f(x) = e^{-kx^2}$", "cos": "$f(x) = \\cos kx$"}
_PARAM = {"mu": "$\\nabla_\\mu$", "sigma": "$\\nabla_\\sigma$"}


def _series(
    rows: Sequence[Mapping[str, Any]], xkey: str
) -> tuple[list[float], list[float], list[float], list[float]]:
    pts = []
    for r in rows:
        x, v, se, ex = (
            number(r.get(xkey)),
            number(r.get("variance")),
            number(r.get("variance_std_error")),
            number(r.get("exact_variance")),
        )
        if x is not None:
            pts.append((x, v, se or 0.0, ex))
    pts.sort()
    return [p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts], [p[3] for p in pts]


def _draw(
    ax: Any, rows: Sequence[Mapping[str, Any]], xkey: str, estimators: Sequence[str], log_x: bool
) -> None:
    for name in estimators:
        sub = [r for r in rows if r.get("estimator") == name and r.get("status") == "ok"]
        if not sub:
            continue
        x, v, se, ex = _series(sub, xkey)
        color = COLORS.get(name, "black")
        ex_pts = [(a, b) for a, b in zip(x, ex, strict=False) if b is not None and b > 0]
        if ex_pts:
            ax.plot(
                [a for a, _ in ex_pts],
                [b for _, b in ex_pts],
                "-",
                marker="_",
                ms=14,
                mew=2,
                color=color,
                lw=1.6,
                alpha=0.8,
                label=f"{_LABELS.get(name, name)}: exact",
            )
        pts = [(a, b, c) for a, b, c in zip(x, v, se, strict=False) if b is not None and b > 0]
        if pts:
            xs = [a for a, _, _ in pts]
            ys = [b for _, b, _ in pts]
            low = [min(2 * c, 0.95 * b) for _, b, c in pts]  # ±2 SE, clipped above 0 on the log axis
            high = [2 * c for _, _, c in pts]
            ax.errorbar(
                xs,
                ys,
                yerr=[low, high],
                fmt="o",
                ms=4,
                mfc="none",
                color=color,
                capsize=2,
                label=f"{_LABELS.get(name, name)}: sampled ± 2 SE",
            )
    ax.set_yscale("log")
    if log_x:
        ax.set_xscale("log")
    ax.grid(True, which="both", alpha=0.25)


def plot_cost(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Variance of one estimate vs k: one panel per (cost family, parameter), log y; exact lines, sampled dots."""
    plt = pyplot()
    cost_rows = [r for r in rows if r.get("part") == "cost"]
    families = [f for f in ("square", "bump", "cos") if any(r.get("family") == f for r in cost_rows)]
    estimators = [
        e
        for e in ("score_function", "score_function_optimal", "pathwise", "measure_valued")
        if any(r.get("estimator") == e for r in cost_rows)
    ]
    fig, axes = plt.subplots(2, len(families), figsize=(4.6 * len(families), 7.2), squeeze=False)
    for j, family in enumerate(families):
        for i, param in enumerate(("mu", "sigma")):
            ax = axes[i][j]
            sub = [r for r in cost_rows if r.get("family") == family and r.get("parameter") == param]
            _draw(ax, sub, "k", estimators, log_x=family == "bump")
            ax.set_title(f"{_TITLES[family]}: {_PARAM[param]}", fontsize=11)
            ax.set_xlabel("k")
            ax.set_ylabel(f"variance of one estimate of {_PARAM[param]}")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle(
        "Gradient variance for $x \\sim N(1, 1)$, one sample per estimate "
        "(Mohamed et al. 2020, §3): exact (quadrature) lines, sampled dots",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0.08, 1, 0.96))
    out = save_figure(fig, path, dpi=110)
    plt.close(fig)
    return out


def plot_dimension(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Variance of the ∇μ₁ estimate of E‖x‖² vs dimension D (log-log): closed forms and sampled values."""
    plt = pyplot()
    dim_rows = [r for r in rows if r.get("part") == "dimension"]
    estimators = [
        e
        for e in ("score_function", "score_function_baseline", "pathwise")
        if any(r.get("estimator") == e for r in dim_rows)
    ]
    fig, ax = plt.subplots(figsize=(6.0, 4.6))
    _draw(ax, dim_rows, "D", estimators, log_x=True)
    dims = sorted({int(float(r["D"])) for r in dim_rows if r.get("D") not in (None, "")})
    if dims:
        from matplotlib.ticker import FixedLocator, NullLocator

        ax.xaxis.set_major_locator(FixedLocator(dims))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([str(d) for d in dims])
    ax.set_xlabel("dimension D")
    ax.set_ylabel("variance of one estimate of $\\nabla_{\\mu_1} E\\|x\\|^2$")
    ax.set_title(
        "$f(x) = \\|x\\|^2$, $x \\sim N(0, I_D)$: SF $(D+2)(D+4)$, SF with baseline $2D+8$, PW $4$",
        fontsize=9,
    )
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    out = save_figure(fig, path, dpi=110)
    plt.close(fig)
    return out
