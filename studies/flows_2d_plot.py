"""Figures of the ``flows-2d`` study: densities in the layout of Rezende & Mohamed (2015, Fig. 3), and KL vs K."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from scg.studies._io import save_figure
from scg.studies._plotting import pyplot

__all__ = ["plot_flows"]

NAMES = {"planar": "planar", "radial": "radial", "coupling": "affine coupling"}


def plot_flows(rows: Sequence[Mapping[str, Any]], cfg: Any, out: Path) -> list[Path]:
    """``flows_2d.png`` (rows = potentials; columns = target, then each kind at each length) and ``flows_2d_kl.png``."""
    plt = pyplot()

    from scg.studies.flows_2d import BOX, decode_image, grid_points, potential

    ok = [r for r in rows if r.get("status") == "ok"]
    pots = [u for u in cfg.potentials if any(r["potential"] == u for r in ok)]
    cols = [(k, n) for k in cfg.kinds for n in cfg.lengths]
    ext = (-BOX, BOX, -BOX, BOX)
    fig, axes = plt.subplots(
        len(pots), 1 + len(cols), figsize=(1.55 * (1 + len(cols)), 1.6 * len(pots)), squeeze=False
    )
    G = 200
    pts, _ = grid_points(G)
    for i, u in enumerate(pots):
        target = torch.exp(-potential(u)(pts)).reshape(G, G).numpy()
        axes[i][0].imshow(target, origin="lower", extent=ext, cmap="viridis")
        axes[i][0].set_ylabel(u, fontsize=11)
        for j, (k, n) in enumerate(cols, start=1):
            ax = axes[i][j]
            r = next(
                (
                    r
                    for r in ok
                    if r["potential"] == u
                    and r["kind"] == k
                    and int(r["length"]) == n
                    and int(r.get("seed", 0) or 0) == 0
                ),
                None,
            )
            if r is not None:
                ax.imshow(decode_image(r["image"]), origin="lower", extent=ext, cmap="viridis")
                ax.text(
                    0.03,
                    0.04,
                    f"KL {float(r['kl_box']):.2f}",
                    transform=ax.transAxes,
                    color="w",
                    fontsize=6.5,
                )
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0][0].set_title("target exp(−U(z))", fontsize=8)
    for j, (k, n) in enumerate(cols, start=1):
        axes[0][j].set_title(f"{NAMES.get(k, k)} K={n}", fontsize=8)
    fig.suptitle(
        f"Flows fitted by reverse KL (pathwise), {cfg.steps} Adam steps, {cfg.num_samples} samples/step; "
        "box [-4, 4]², KL(q̄‖p̄) inside each panel (seed 0)",
        fontsize=9,
    )
    fig.tight_layout()
    paths = [save_figure(fig, out / "flows_2d.png", dpi=110)]
    plt.close(fig)

    from scg.studies.flows_2d import summary

    summ = summary(ok)
    seeds = max([r["seeds"] for r in summ], default=1)
    fig, axes = plt.subplots(1, len(pots), figsize=(3.6 * len(pots), 3.4), squeeze=False)
    for i, u in enumerate(pots):
        ax = axes[0][i]
        for c, k in enumerate(cfg.kinds):
            rs = sorted(
                (r for r in summ if r["potential"] == u and r["kind"] == k),
                key=lambda r: r["length"],
            )
            if rs:
                ax.errorbar(
                    [r["length"] for r in rs],
                    [max(r["mean"], 1e-4) for r in rs],
                    yerr=[0.0 if r["se"] != r["se"] else r["se"] for r in rs],
                    fmt="o-",
                    capsize=3,
                    color=f"C{c}",
                    label=NAMES.get(k, k),
                )
                each = [
                    (int(r["length"]), max(float(r["kl_box"]), 1e-4))
                    for r in ok
                    if r["potential"] == u and r["kind"] == k
                ]
                ax.plot([e[0] for e in each], [e[1] for e in each], ".", color=f"C{c}", alpha=0.4, ms=4)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(list(cfg.lengths))
        ax.set_xticklabels([str(n) for n in cfg.lengths])
        ax.set_xlabel("flow length K")
        ax.set_ylabel("KL(q̄ ‖ p̄) on [-4, 4]² (nats)")
        ax.set_title(f"{u}: mean ± SE over {seeds} seed(s), dots: each seed", fontsize=9)
        ax.grid(alpha=0.3, which="both")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    paths.append(save_figure(fig, out / "flows_2d_kl.png", dpi=110))
    plt.close(fig)
    return paths
