"""Figures of ``bernoulli-toy``: variance at φ = 0 (exact vs sampled), training curves, converged fractions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from scg.studies._io import save_figure
from scg.studies._plotting import number, pyplot

__all__ = ["plot_variance", "plot_training", "plot_convergence", "COLORS"]

COLORS: dict[str, str] = {
    "reinforce": "tab:blue",
    "moving_average": "tab:cyan",
    "rloo": "tab:orange",
    "nvil": "tab:olive",
    "arm": "tab:purple",
    "disarm": "tab:red",
    "relax": "tab:green",
    "gumbel_softmax": "tab:brown",
    "exact": "black",
}
LABELS: dict[str, str] = {
    "reinforce": "REINFORCE",
    "moving_average": "REINFORCE + MA",
    "rloo": "RLOO",
    "nvil": "NVIL",
    "arm": "ARM",
    "disarm": "DisARM",
    "relax": "RELAX",
    "gumbel_softmax": "Gumbel-softmax",
    "exact": "exact gradient",
}


def _variance_label(name: str) -> str:
    return "RLOO (S=2)" if name == "rloo" else LABELS[name]


def _save(plt: Any, fig: Any, path: Path, dpi: int) -> Path:
    """Lay ``fig`` out tightly, save it to ``path`` at ``dpi`` and close it; the saved path."""
    fig.tight_layout()
    out = save_figure(fig, path, dpi=dpi)
    plt.close(fig)
    return out


def plot_variance(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Per t: variance of one estimate at φ = 0 (log y; exact bars, sampled dots ± 2 SE), mean / exact gradient."""
    plt = pyplot()
    var_rows = [r for r in rows if r.get("part") == "variance" and r.get("status") == "ok"]
    targets = sorted({float(r["t"]) for r in var_rows})
    names = [n for n in LABELS if any(r.get("estimator") == n for r in var_rows)]
    fig, axes = plt.subplots(
        2,
        len(targets),
        figsize=(4.8 * len(targets), 7.0),
        squeeze=False,
        gridspec_kw={"height_ratios": [2.2, 1]},
    )
    for j, t in enumerate(targets):
        ax, bx = axes[0][j], axes[1][j]
        sub = {r["estimator"]: r for r in var_rows if float(r["t"]) == t}
        positive = [
            v
            for r in sub.values()
            for v in (number(r.get("variance")), number(r.get("exact_variance")))
            if v is not None and v > 0
        ]
        floor = min(positive) / 30 if positive else 1e-12
        for i, name in enumerate(names):
            r = sub.get(name)
            if r is None:
                continue
            color = COLORS[name]
            ex, v, se = (
                number(r.get("exact_variance")),
                number(r.get("variance")),
                number(r.get("variance_std_error")),
            )
            ref = number(r.get("reference_variance"))
            if ex is not None and ex > 0:
                ax.bar(
                    i,
                    ex,
                    color=color,
                    alpha=0.35,
                    width=0.7,
                    label="exact (quadrature)" if i == 0 else None,
                )
            elif ex is not None:
                ax.text(i, floor * 1.5, "0\n(exact)", ha="center", va="bottom", fontsize=8, color=color)
            if v is not None and v > 0:
                lo = min(2 * (se or 0.0), 0.95 * v)
                ax.errorbar(i, v, yerr=[[lo], [2 * (se or 0.0)]], fmt="o", color=color, ms=5, capsize=3)
            if ref is not None and ref > 0:
                ax.plot([i - 0.35, i + 0.35], [ref, ref], "k--", lw=1)
            g, m, mse = (
                number(r.get("exact_gradient")),
                number(r.get("mean")),
                number(r.get("std_error")),
            )
            if g and m is not None:
                bx.errorbar(i, m / g, yerr=2 * (mse or 0.0) / abs(g), fmt="o", color=color, ms=5, capsize=3)
                em = number(r.get("exact_mean"))
                if em is not None:
                    bx.plot([i - 0.35, i + 0.35], [em / g, em / g], "-", color=color, lw=2, alpha=0.5)
        ax.set_yscale("log")
        ax.set_ylim(bottom=floor)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels([_variance_label(n) for n in names], rotation=40, ha="right", fontsize=8)
        ax.set_ylabel("variance of one estimate at φ = 0")
        ax.set_title(f"t = {t:g}: exact bars, sampled dots ± 2 SE, docs/references.md dashed", fontsize=9)
        ax.grid(True, axis="y", which="both", alpha=0.25)
        bx.axhline(1.0, color="gray", lw=1)
        bx.set_xticks(range(len(names)))
        bx.set_xticklabels([_variance_label(n) for n in names], rotation=40, ha="right", fontsize=8)
        bx.set_ylabel("E[estimate] / true gradient")
        bx.set_title("bias: 1 = unbiased (line exact, dot sampled ± 2 SE)", fontsize=9)
    fig.suptitle("Bernoulli toy $E[(b-t)^2]$, $b \\sim$ Bern$(\\sigma(\\phi))$ at $\\phi = 0$", fontsize=11)
    return _save(plt, fig, path, dpi=110)


def _final(
    rows: Sequence[Mapping[str, Any]],
) -> dict[tuple[float, int | None, str], Mapping[str, Any]]:
    """The last recorded row of every training curve, keyed by (t, budget, estimator)."""
    out: dict[tuple[float, int | None, str], Mapping[str, Any]] = {}
    for r in rows:
        if r.get("part") != "train":
            continue
        b = number(r.get("budget"))
        key = (float(r["t"]), None if b is None else int(b), str(r["estimator"]))
        if key not in out or int(r["step"]) > int(out[key]["step"]):
            out[key] = r
    return out


def _budgets(rows: Sequence[Mapping[str, Any]]) -> list[int]:
    return sorted(
        {int(b) for r in rows if r.get("part") == "train" for b in [number(r.get("budget"))] if b is not None}
    )


def plot_training(rows: Sequence[Mapping[str, Any]], cfg: Any, path: Path) -> Path:
    """P(b = 1) = σ(φ) vs step, one row per budget K and one column per t (log y).

    Mean over replicas with the 10–90 % band; the legend gives each estimator's converged
    fraction; the exact-gradient curve (no budget) is drawn in every row.
    """
    plt = pyplot()
    tr = [r for r in rows if r.get("part") == "train"]
    targets = sorted({float(r["t"]) for r in tr})
    budgets = _budgets(tr) or [None]
    names = [n for n in LABELS if any(r.get("estimator") == n for r in tr)]
    final = _final(tr)
    fig, axes = plt.subplots(
        len(budgets), len(targets), figsize=(5.2 * len(targets), 4.4 * len(budgets)), squeeze=False
    )
    for i, k in enumerate(budgets):
        for j, t in enumerate(targets):
            ax = axes[i][j]
            for name in names:
                kk = None if name == "exact" else k
                sub = sorted(
                    (
                        r
                        for r in tr
                        if float(r["t"]) == t and r["estimator"] == name and number(r.get("budget")) == kk
                    ),
                    key=lambda r: int(r["step"]),
                )
                if not sub:
                    continue
                steps = [int(r["step"]) for r in sub]
                mean = [max(float(r["p_mean"]), 1e-12) for r in sub]
                frac = number(final[(t, kk, name)].get("converged_fraction"))
                label = f"{LABELS[name]} ({100 * frac:.0f} %)" if frac is not None else LABELS[name]
                style = "--" if name == "exact" else "-"
                ax.plot(
                    steps,
                    mean,
                    style,
                    color=COLORS[name],
                    lw=1.8 if name == "exact" else 1.3,
                    label=label,
                )
                if name != "exact":
                    lo = [max(float(r["p_q10"]), 1e-12) for r in sub]
                    hi = [max(float(r["p_q90"]), 1e-12) for r in sub]
                    ax.fill_between(steps, lo, hi, color=COLORS[name], alpha=0.12)
            ax.axhline(cfg.converged_p, color="gray", ls=":", lw=1)
            ax.set_yscale("log")
            ax.set_ylim(1e-6, 1.5)
            ax.set_xlabel("Adam step")
            ax.set_ylabel("P(b = 1) = σ(φ)  (optimum: 0)")
            what = f"K = {k} evaluations of f / step" if k is not None else ""
            ax.set_title(f"t = {t:g}, {what}", fontsize=10)
            ax.grid(True, which="both", alpha=0.25)
            ax.legend(fontsize=6.5, loc="lower left", title="(converged %)", title_fontsize=6.5)
    sched = ", cosine decay" if getattr(cfg, "schedule", "constant") == "cosine" else ""
    fig.suptitle(
        f"Minimising $E[(b-t)^2]$ from φ = 0: {cfg.replicas} replicas, Adam lr {cfg.lr:g}{sched}, "
        f"mean and 10–90 % band; dotted: P = {cfg.converged_p:g}, converged below",
        fontsize=11,
    )
    return _save(plt, fig, path, dpi=100)


def plot_convergence(rows: Sequence[Mapping[str, Any]], cfg: Any, path: Path) -> Path:
    """Table of converged fractions: estimators × (budget, t); bold where ≥ ``cfg.converged_share``."""
    plt = pyplot()
    final = _final(rows)
    targets = sorted({k[0] for k in final})
    budgets = _budgets(rows)
    names = [n for n in LABELS if n != "exact" and any(k[2] == n for k in final)]
    cols = [(k, t) for k in budgets for t in targets]
    fig, ax = plt.subplots(figsize=(1.1 * len(cols) + 2.6, 0.42 * (len(names) + 1) + 1.4))
    grid = [
        [number(final[(t, k, n)].get("converged_fraction")) if (t, k, n) in final else None for k, t in cols]
        for n in [*names, "exact"]
    ]
    exact = [
        number(final[(t, None, "exact")].get("converged_fraction")) if (t, None, "exact") in final else None
        for _, t in cols
    ]
    grid[-1] = exact
    values = [[float("nan") if v is None else v for v in row] for row in grid]
    ax.imshow(values, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto", alpha=0.6)
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            if v is not None:
                ax.text(
                    j,
                    i,
                    f"{100 * v:.0f}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    fontweight="bold" if v >= cfg.converged_share else "normal",
                )
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels([f"K={k}\nt={t:g}" for k, t in cols], fontsize=8)
    ax.set_yticks(range(len(names) + 1))
    ax.set_yticklabels([LABELS[n] for n in [*names, "exact"]], fontsize=8)
    ax.set_title(
        f"% of {cfg.replicas} replicas with final P(b = 1) ≤ {cfg.converged_p:g} after {cfg.steps} steps\n"
        f"(bold: ≥ {100 * cfg.converged_share:g} %: converged); K = evaluations of f per step",
        fontsize=9,
    )
    return _save(plt, fig, path, dpi=110)
