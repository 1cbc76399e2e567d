"""Figure of the ``iwae-snr`` study: SNR vs K (log-log) with fitted slopes, and the bound vs exact log p(x)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from scg.studies._io import save_figure
from scg.studies._plotting import number, pyplot

__all__ = ["plot_snr"]

COLORS = {"reparam": "tab:blue", "stl": "tab:orange", "dreg": "tab:green"}
LABELS = {"reparam": "IWAE (reparam)", "stl": "STL", "dreg": "DReG"}


def _k_axis(ax: Any, ks: Sequence[int]) -> None:
    from matplotlib.ticker import FixedLocator, NullLocator

    ax.set_xscale("log")
    values = sorted(set(ks))
    labels, last = [], -math.inf
    for k in values:  # skip labels that would overlap on the log axis (e.g. 200 next to 300)
        keep = math.log10(k) - last >= 0.3 or k == values[-1]
        if keep and labels and k == values[-1] and math.log10(k) - last < 0.3:
            labels[-1] = ""
        labels.append(str(k) if keep else "")
        last = math.log10(k) if keep else last
    ax.xaxis.set_major_locator(FixedLocator(values))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels(labels)


def _y_labels(ax: Any) -> None:
    """Label 1-1.5-2-3-5-7 ticks when a log axis spans less than two decades."""
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    low, high = ax.get_ylim()
    if low > 0 and high / low < 100:
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 1.5, 2.0, 3.0, 5.0, 7.0)))
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(NullFormatter())


def plot_snr(rows: Sequence[Mapping[str, Any]], cfg: Any, path: Path) -> Path:
    """Inference and generative SNR vs K with the fitted lines (K ≥ fit_min_k), and log p(x) − bound vs K."""
    plt = pyplot()

    snr = [r for r in rows if r.get("part") == "snr"]
    fits = {(r["method"], r["group"]): r for r in rows if r.get("part") == "fit"}
    methods = [m for m in ("reparam", "stl", "dreg") if any(r["method"] == m for r in snr)]
    fig, axes = plt.subplots(1, 3, figsize=(15.5, 4.8))
    for ax, group in zip(axes[:2], ("inference", "generative"), strict=False):
        for m in methods:
            sub = sorted(
                (r for r in snr if r["method"] == m and r["group"] == group),
                key=lambda r: int(r["K"]),
            )
            ks = [int(r["K"]) for r in sub]
            ys = [number(r["snr"]) for r in sub]
            fit = fits.get((m, group))
            slope = number(fit.get("slope")) if fit else None
            label = LABELS[m]
            if slope is not None:
                se = number(fit.get("slope_se")) if fit else None
                label += f": slope {slope:+.2f}" + (f" ± {se:.2f}" if se is not None and se == se else "")
            errs = [number(r.get("snr_se")) or 0.0 for r in sub]
            ax.errorbar(ks, ys, yerr=errs, fmt="o-", color=COLORS[m], capsize=2, label=label)
            if slope is not None and fit is not None:
                k0 = [k for k in ks if k >= int(fit["fit_min_k"])]
                icpt = number(fit.get("intercept")) or 0.0
                ax.plot(
                    k0,
                    [math.exp(icpt) * k**slope for k in k0],
                    "--",
                    color="gray",
                    lw=2.5,
                    alpha=0.6,
                )
            direct = [number(r["snr_direct"]) for r in sub]
            if any(a != b for a, b in zip(direct, ys, strict=False)):
                ax.plot(
                    ks,
                    direct,
                    "x:",
                    color=COLORS[m],
                    alpha=0.6,
                    label=f"{LABELS[m]}: own sample mean (noise-floored)",
                )
        floor = number(snr[0]["snr_floor"]) if snr else None
        if floor and group == "inference":
            ax.axhline(
                floor,
                color="gray",
                lw=1,
                ls=":",
                label=f"noise floor √(2/(πM)), M = {cfg.num_estimates}",
            )
        _k_axis(ax, [int(r["K"]) for r in snr])
        ax.set_yscale("log")
        ax.set_xlabel("K (importance samples)")
        ax.set_ylabel("SNR = mean over parameters of |E g| / std g")
        what = (
            "inference network (A, b)"
            if group == "inference"
            else "generative network (μ): one estimator, 3 runs"
        )
        ax.set_title(
            f"{what}; dashed: least-squares fit over K ≥ {cfg.fit_min_k} (± bootstrap SE)",
            fontsize=9,
        )
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=7)
        _y_labels(ax)
    ax = axes[2]
    sub = (
        sorted(
            (r for r in snr if r["method"] == methods[0] and r["group"] == "inference"),
            key=lambda r: int(r["K"]),
        )
        if methods
        else []
    )
    ks = [int(r["K"]) for r in sub]
    gap = [(number(r["log_px_exact"]) or 0.0) - (number(r["bound_mean"]) or 0.0) for r in sub]
    err = [2 * (number(r["bound_std_error"]) or 0.0) for r in sub]
    pos = [(k, g, e) for k, g, e in zip(ks, gap, err, strict=False) if g > 0]
    if pos:
        ax.errorbar(
            [p[0] for p in pos],
            [p[1] for p in pos],
            yerr=[[min(p[2], 0.95 * p[1]) for p in pos], [p[2] for p in pos]],
            fmt="o-",
            color="black",
            capsize=3,
            label="exact Σ log p(x) − sampled bound (± 2 SE)",
        )
    _k_axis(ax, [int(r["K"]) for r in snr])
    ax.set_yscale("log")
    ax.set_xlabel("K")
    ax.set_ylabel("log p(x) − IWAE bound (nats, summed over points)")
    ax.set_title("tightness: exact log N(x; μ, 2I) vs the sampled bound", fontsize=9)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7)
    fig.suptitle(
        f"Rainforth et al. 2018 setup: D = {cfg.dim}, N = {cfg.num_points} points, q = N(Ax + b, ⅔ I), "
        f"optimum + N(0, {cfg.perturbation:g}²); M = {cfg.num_estimates} estimates of the gradient of the bound summed over the points",
        fontsize=10,
    )
    fig.tight_layout()
    out = save_figure(fig, path, dpi=110)
    plt.close(fig)
    return out
