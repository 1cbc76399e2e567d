"""Figures of the ``bernoulli-toy`` study: variance at φ = 0 (exact vs sampled) and training curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from scg.studies._io import save_figure
from scg.studies._plotting import number, pyplot

__all__ = ["plot_variance", "plot_training", "COLORS"]

COLORS: dict[str, str] = {
    "reinforce": "tab:blue", "moving_average": "tab:cyan", "rloo": "tab:orange", "nvil": "tab:olive",
    "arm": "tab:purple", "disarm": "tab:red", "relax": "tab:green", "gumbel_softmax": "tab:brown",
    "exact": "black",
}
LABELS: dict[str, str] = {
    "reinforce": "REINFORCE", "moving_average": "REINFORCE + MA", "rloo": "RLOO (S=2)", "nvil": "NVIL",
    "arm": "ARM", "disarm": "DisARM", "relax": "RELAX", "gumbel_softmax": "Gumbel-softmax", "exact": "exact gradient",
}


def plot_variance(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Per t: variance of one estimate at φ = 0 (log y; exact bars, sampled dots ± 2 SE), and mean / exact gradient."""
    plt = pyplot()
    var_rows = [r for r in rows if r.get("part") == "variance" and r.get("status") == "ok"]
    targets = sorted({float(r["t"]) for r in var_rows})
    names = [n for n in LABELS if any(r.get("estimator") == n for r in var_rows)]
    fig, axes = plt.subplots(2, len(targets), figsize=(4.8 * len(targets), 7.0), squeeze=False,
                             gridspec_kw={"height_ratios": [2.2, 1]})
    for j, t in enumerate(targets):
        ax, bx = axes[0][j], axes[1][j]
        sub = {r["estimator"]: r for r in var_rows if float(r["t"]) == t}
        positive = [v for r in sub.values() for v in (number(r.get("variance")), number(r.get("exact_variance")))
                    if v is not None and v > 0]
        floor = min(positive) / 30 if positive else 1e-12
        for i, name in enumerate(names):
            r = sub.get(name)
            if r is None:
                continue
            color = COLORS[name]
            ex, v, se = number(r.get("exact_variance")), number(r.get("variance")), number(r.get("variance_std_error"))
            ref = number(r.get("reference_variance"))
            if ex is not None and ex > 0:
                ax.bar(i, ex, color=color, alpha=0.35, width=0.7, label="exact (quadrature)" if i == 0 else None)
            elif ex is not None:
                ax.text(i, floor * 1.5, "0\n(exact)", ha="center", va="bottom", fontsize=8, color=color)
            if v is not None and v > 0:
                lo = min(2 * (se or 0.0), 0.95 * v)
                ax.errorbar(i, v, yerr=[[lo], [2 * (se or 0.0)]], fmt="o", color=color, ms=5, capsize=3)
            if ref is not None and ref > 0:
                ax.plot([i - 0.35, i + 0.35], [ref, ref], "k--", lw=1)
            g, m, mse = number(r.get("exact_gradient")), number(r.get("mean")), number(r.get("std_error"))
            if g and m is not None:
                bx.errorbar(i, m / g, yerr=2 * (mse or 0.0) / abs(g), fmt="o", color=color, ms=5, capsize=3)
                em = number(r.get("exact_mean"))
                if em is not None:
                    bx.plot([i - 0.35, i + 0.35], [em / g, em / g], "-", color=color, lw=2, alpha=0.5)
        ax.set_yscale("log")
        ax.set_ylim(bottom=floor)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels([LABELS[n] for n in names], rotation=40, ha="right", fontsize=8)
        ax.set_ylabel("variance of one estimate at φ = 0")
        ax.set_title(f"t = {t:g}: exact bars, sampled dots ± 2 SE, REFERENCES.md dashed", fontsize=9)
        ax.grid(True, axis="y", which="both", alpha=0.25)
        bx.axhline(1.0, color="gray", lw=1)
        bx.set_xticks(range(len(names)))
        bx.set_xticklabels([LABELS[n] for n in names], rotation=40, ha="right", fontsize=8)
        bx.set_ylabel("E[estimate] / true gradient")
        bx.set_title("bias: 1 = unbiased (line exact, dot sampled ± 2 SE)", fontsize=9)
    fig.suptitle("Bernoulli toy $E[(b-t)^2]$, $b \\sim$ Bern$(\\sigma(\\phi))$ at $\\phi = 0$", fontsize=11)
    fig.tight_layout()
    out = save_figure(fig, path, dpi=110)
    plt.close(fig)
    return out


def plot_training(rows: Sequence[Mapping[str, Any]], cfg: Any, path: Path) -> Path:
    """P(b = 1) = σ(φ) vs step per t (log y): mean over replicas, 10–90 % band; the optimum is 0."""
    plt = pyplot()
    tr = [r for r in rows if r.get("part") == "train"]
    targets = sorted({float(r["t"]) for r in tr})
    names = [n for n in LABELS if any(r.get("estimator") == n for r in tr)]
    fig, axes = plt.subplots(1, len(targets), figsize=(5.0 * len(targets), 4.6), squeeze=False)
    for j, t in enumerate(targets):
        ax = axes[0][j]
        for name in names:
            sub = sorted((r for r in tr if float(r["t"]) == t and r["estimator"] == name), key=lambda r: int(r["step"]))
            if not sub:
                continue
            steps = [int(r["step"]) for r in sub]
            mean = [max(float(r["p_mean"]), 1e-12) for r in sub]
            lo = [max(float(r["p_q10"]), 1e-12) for r in sub]
            hi = [max(float(r["p_q90"]), 1e-12) for r in sub]
            style = "--" if name == "exact" else "-"
            ax.plot(steps, mean, style, color=COLORS[name], lw=1.8 if name == "exact" else 1.3, label=LABELS[name])
            if name != "exact":
                ax.fill_between(steps, lo, hi, color=COLORS[name], alpha=0.12)
        ax.axhline(cfg.converged_p, color="gray", ls=":", lw=1)
        ax.text(steps[-1] if tr else 0, cfg.converged_p * 1.15, f"converged: P ≤ {cfg.converged_p:g}", ha="right",
                va="bottom", fontsize=7, color="gray")
        ax.set_yscale("log")
        ax.set_ylim(1e-6, 1.5)
        ax.set_xlabel("Adam step")
        ax.set_ylabel("P(b = 1) = σ(φ)  (optimum: 0)")
        ax.set_title(f"t = {t:g}: mean over {cfg.replicas} replicas, 10–90 % band", fontsize=10)
        ax.grid(True, which="both", alpha=0.25)
    axes[0][0].legend(fontsize=7, loc="lower left")
    sched = ", cosine decay" if getattr(cfg, "schedule", "constant") == "cosine" else ""
    fig.suptitle(f"Minimising $E[(b-t)^2]$ from φ = 0 with Adam (lr {cfg.lr:g}{sched}; control variates lr "
                 f"{getattr(cfg, 'cv_lr', cfg.lr):g}; S = {cfg.num_samples}, RLOO S = 2)", fontsize=11)
    fig.tight_layout()
    out = save_figure(fig, path, dpi=110)
    plt.close(fig)
    return out
