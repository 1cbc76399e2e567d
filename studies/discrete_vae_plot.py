"""Figure of the ``discrete-vae`` study: scale-free encoder-gradient variance at shared parameters, and the ELBO."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from scg.studies._io import save_figure
from scg.studies._plotting import pyplot

__all__ = ["plot_discrete"]


def plot_discrete(rows: Sequence[Mapping[str, Any]], cfg: Any, out: Path) -> list[Path]:
    """``discrete_vae.png`` vs step: (a) Var / ‖E ĝ‖², (b) its ratio REINFORCE+MA / estimator, (c) ELBO.

    (a) and (b) are means over seeds with ± 1 SE bars, every estimator at the same parameters.
    """
    from scg.studies.discrete_vae import LABELS, _mean_se, summary

    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    summ = summary(rows)
    ests = [e for e in cfg.estimators if any(r["estimator"] == e for r in summ)]
    seeds = max([r["seeds"] for r in summ], default=0)
    for i, e in enumerate(ests):
        rs = sorted((r for r in summ if r["estimator"] == e), key=lambda r: r["step"])
        S = next(
            (r["num_samples"] for r in rows if r.get("kind") == "variance" and r.get("estimator") == e),
            "?",
        )
        for ax, col in ((axes[0], "relative_variance"), (axes[1], "ratio")):
            pts = [(r["step"], r[col], r[col + "_se"]) for r in rs if r[col] == r[col]]
            if pts:
                x, y, se = zip(*pts, strict=False)
                ax.errorbar(
                    x,
                    y,
                    yerr=[s if s == s else 0 for s in se],
                    fmt="o-",
                    color=f"C{i}",
                    ms=4,
                    capsize=2,
                    label=f"{LABELS.get(e, e)} (S={S})",
                )
    elbo = [r for r in rows if r.get("kind") == "elbo"]
    steps = sorted({int(r["step"]) for r in elbo})
    stats = [_mean_se([float(r["train_elbo"]) for r in elbo if int(r["step"]) == t]) for t in steps]
    if steps:
        axes[2].errorbar(
            steps,
            [m for m, _, _ in stats],
            yerr=[s if s == s else 0 for _, s, _ in stats],
            fmt="-",
            color="k",
            capsize=2,
            label=f"reference: {LABELS.get(cfg.reference, cfg.reference)}",
        )
    axes[0].set_ylabel("Σ_p Var(ĝ_p) / ‖E ĝ‖²  (scale-free)")
    axes[1].set_ylabel("relative variance of REINFORCE+MA / estimator's")
    axes[2].set_ylabel(f"training ELBO (nats, {cfg.elbo_samples} samples/image)")
    for ax in axes[:2]:
        ax.set_yscale("log")
    for ax in axes:
        ax.set_xlabel(
            f"training step of the reference trajectory ({LABELS.get(cfg.reference, cfg.reference)})"
        )
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=7)
    axes[2].legend(fontsize=7)
    arch = "linear" if not cfg.hidden else "-".join(map(str, cfg.hidden))
    fig.suptitle(
        f"Digits SBN ({arch}, {cfg.z_dim} binary latents), E = {cfg.evaluations} evaluations of f per image; "
        f"every estimator at the same parameters; {cfg.grad_estimates} estimates on {cfg.grad_batch} fixed "
        f"images; mean ± SE over {seeds} seeds",
        fontsize=9,
    )
    fig.tight_layout()
    path = save_figure(fig, out / "discrete_vae.png", dpi=110)
    plt.close(fig)
    return [path]
