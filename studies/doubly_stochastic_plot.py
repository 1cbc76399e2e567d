"""Figure of the ``doubly-stochastic`` study: subsampling and MC variance vs batch size for several S."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from scg.studies._io import save_figure
from scg.studies._plotting import pyplot

__all__ = ["plot_decomposition"]


def plot_decomposition(rows: Sequence[Mapping[str, Any]], cfg: Any, out: Path) -> list[Path]:
    """``doubly_stochastic.png``: rows = posterior points, columns = estimators; log-log in B.

    Black dashed: subsampling variance (independent of S, 0 at B = N so not drawn);
    dash-dotted: MC variance per S; solid: their sum (exact); markers with 2-SE bars:
    the sampled total variance of the estimator. All are traces over the 62
    coordinates (μ and s).
    """
    plt = pyplot()

    rows = [r for r in rows if r.get("group") == "all" and r.get("status") == "ok"]
    points = [p for p in cfg.points if any(r["point"] == p for r in rows)]
    ests = [e for e in cfg.estimators if any(r["estimator"] == e for r in rows)]
    fig, axes = plt.subplots(
        len(points), len(ests), figsize=(5.6 * len(ests), 4.3 * len(points)), squeeze=False
    )
    colors = {S: f"C{i}" for i, S in enumerate(cfg.num_samples)}
    for i, p in enumerate(points):
        for j, e in enumerate(ests):
            ax = axes[i][j]
            cell = [r for r in rows if r["point"] == p and r["estimator"] == e]
            first = sorted((r for r in cell if r["S"] == cfg.num_samples[0]), key=lambda r: r["B"])
            sub = [(r["B"], r["var_subsampling"]) for r in first if r["var_subsampling"] > 0]
            if sub:
                ax.plot(*zip(*sub, strict=False), "k--", lw=2, label="subsampling Var_B(E[g|B])")
            for S in cfg.num_samples:
                rs = sorted((r for r in cell if r["S"] == S), key=lambda r: r["B"])
                if not rs:
                    continue
                B = [r["B"] for r in rs]
                c = colors[S]
                ax.plot(
                    B,
                    [r["var_mc"] for r in rs],
                    "-.",
                    color=c,
                    lw=1.2,
                    label=f"MC E_B(Var[g|B]), S={S}",
                )
                ax.plot(
                    B,
                    [r["var_total_exact"] for r in rs],
                    "-",
                    color=c,
                    lw=1.5,
                    label=f"sum (exact), S={S}",
                )
                ax.errorbar(
                    B,
                    [r["var_total_sampled"] for r in rs],
                    yerr=[2 * r["var_total_sampled_se"] for r in rs],
                    fmt="o",
                    color=c,
                    ms=4,
                    mfc="none",
                    label=f"sampled total, S={S}",
                )
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("batch size B (of N = 569, without replacement)")
            ax.set_ylabel("total gradient variance (trace over μ, s)")
            ax.set_title(f"{e.replace('_', ' ')} — posterior at {p}", fontsize=10)
            ax.grid(alpha=0.3, which="both")
    axes[0][-1].legend(fontsize=6.5, ncol=1, loc="lower left")
    fig.suptitle("Doubly stochastic BLR gradient: Var = subsampling + Monte Carlo (law of total variance)")
    fig.tight_layout()
    path = save_figure(fig, out / "doubly_stochastic.png", dpi=110)
    plt.close(fig)
    return [path]
