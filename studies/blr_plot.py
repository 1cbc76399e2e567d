"""Figures of the ``blr`` study: ELBO vs step, per-dimension gradient variance vs step and over dimensions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from scg.studies._io import save_figure
from scg.studies._plotting import pyplot

__all__ = ["plot_blr", "COLORS"]

COLORS = {
    "pathwise": "C0",
    "score_function": "C3",
    "score_function_ma": "C1",
    "score_function_delta": "C2",
    "measure_valued": "C4",
}
LABELS = {
    "pathwise": "pathwise",
    "score_function": "score function",
    "score_function_ma": "SF + moving average",
    "score_function_delta": "SF + delta CV",
    "measure_valued": "measure-valued",
}
#: dimensions drawn in the variance-vs-step figure (the paper shows a handful of dimensions).
DIMS = (0, 1, 2, 30)


def plot_blr(rows: Sequence[Mapping[str, Any]], cfg: Any, out: Path) -> list[Path]:
    """Three PNGs: ``blr_elbo.png``, ``blr_variance_steps.png``, ``blr_variance_dims.png``."""
    plt = pyplot()
    ests = [
        e for e in cfg.estimators if any(r.get("estimator") == e and r.get("kind") == "elbo" for r in rows)
    ]
    elbo = [r for r in rows if r.get("kind") == "elbo"]
    var = [r for r in rows if r.get("kind") == "variance"]
    paths = []

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    last = max([int(r["step"]) for r in elbo], default=0)
    for e in ests:
        rs = sorted((r for r in elbo if r["estimator"] == e), key=lambda r: r["step"])
        for k, ax in enumerate(axes):
            sel = [r for r in rs if k == 0 or r["step"] >= last / 10]
            ax.plot(
                [r["step"] for r in sel],
                [r["elbo"] for r in sel],
                color=COLORS.get(e),
                label=LABELS.get(e, e),
            )
    axes[0].set_yscale("symlog", linthresh=100)
    axes[0].set_title(
        f"B = {cfg.batch_size}, S = {cfg.num_samples}, SGD lr {cfg.lr:g} with cosine decay",
        fontsize=10,
    )
    axes[1].set_title("zoom: after the first 10 % of steps", fontsize=10)
    for ax in axes:
        ax.set_xlabel("SGD step")
        ax.set_ylabel(f"full-data ELBO (nats, {cfg.elbo_samples} samples)")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.suptitle("Bayesian logistic regression, breast cancer (N = 569, D = 31)")
    fig.tight_layout()
    paths.append(save_figure(fig, out / "blr_elbo.png", dpi=110))
    plt.close(fig)

    D = 1 + max([int(r["dim"]) for r in var], default=0)
    dims = [d for d in DIMS if d < D]
    fig, axes = plt.subplots(2, len(dims), figsize=(3.2 * len(dims), 6.2), squeeze=False, sharex=True)
    for i, param in enumerate(("loc", "raw_scale")):
        for j, d in enumerate(dims):
            ax = axes[i][j]
            for e in ests:
                rs = sorted(
                    (r for r in var if r["estimator"] == e and r["parameter"] == param and r["dim"] == d),
                    key=lambda r: r["step"],
                )
                steps = [r["step"] for r in rs]
                ax.errorbar(
                    steps,
                    [r["variance_mc"] for r in rs],
                    yerr=[r.get("variance_mc_se", 0) or 0 for r in rs],
                    fmt="o-",
                    color=COLORS.get(e),
                    ms=3,
                    capsize=2,
                    label=LABELS.get(e, e),
                )
                ax.plot(steps, [r["variance_total"] for r in rs], ":", color=COLORS.get(e), lw=1)
            ax.set_yscale("log")
            sym = "μ" if param == "loc" else "ρ"
            ax.set_title(f"∂/∂{sym}_{d}" + (" (bias)" if d == D - 1 else ""), fontsize=9)
            if i == 1:
                ax.set_xlabel("SGD step")
            if j == 0:
                ax.set_ylabel("variance of one gradient estimate")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(
        "Per-dimension gradient variance: solid = Monte Carlo part E_B Var[g|B] (bars: ± SE over "
        "batches), dotted = total (MC + data subsampling)",
        fontsize=9,
    )
    fig.tight_layout()
    paths.append(save_figure(fig, out / "blr_variance_steps.png", dpi=110))
    plt.close(fig)

    steps = sorted({int(r["step"]) for r in var})
    show = [steps[0], steps[-1]] if len(steps) > 1 else steps
    fig, axes = plt.subplots(len(show), 2, figsize=(11, 3.4 * len(show)), squeeze=False)
    for i, t in enumerate(show):
        for j, param in enumerate(("loc", "raw_scale")):
            ax = axes[i][j]
            for e in ests:
                rs = sorted(
                    (r for r in var if r["estimator"] == e and r["parameter"] == param and r["step"] == t),
                    key=lambda r: r["dim"],
                )
                ax.plot(
                    [r["dim"] for r in rs],
                    [r["variance_mc"] for r in rs],
                    "o-",
                    ms=3,
                    lw=0.8,
                    color=COLORS.get(e),
                    label=LABELS.get(e, e),
                )
            ax.set_yscale("log")
            ax.set_xlabel("dimension d (30 = bias)")
            ax.set_ylabel("MC variance E_B Var[g|B]")
            ax.set_title(f"∂/∂{'μ' if param == 'loc' else 'ρ'}_d at step {t}", fontsize=10)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    paths.append(save_figure(fig, out / "blr_variance_dims.png", dpi=110))
    plt.close(fig)
    return paths
