"""Figure of the ``discrete-vae`` study: encoder-gradient variance and training ELBO vs step per estimator."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from scg.studies._io import save_figure
from scg.studies._plotting import pyplot

__all__ = ["plot_discrete"]

LABELS = {"reinforce": "REINFORCE + MA", "nvil": "NVIL", "rloo": "RLOO", "vimco": "VIMCO", "disarm": "DisARM",
          "relax": "RELAX", "gumbel": "Gumbel-softmax (biased)"}


def plot_discrete(rows: Sequence[Mapping[str, Any]], cfg: Any, out: Path) -> list[Path]:
    """``discrete_vae.png``: (a) Σ Var of the encoder gradient, (b) Var / ‖E g‖², (c) training ELBO; vs step."""
    plt = pyplot()

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    ests = [e for e in cfg.estimators if any(r.get("estimator") == e for r in rows)]
    for i, e in enumerate(ests):
        c, lab = f"C{i}", LABELS.get(e, e)
        var = sorted((r for r in rows if r.get("estimator") == e and r.get("kind") == "variance"),
                     key=lambda r: r["step"])
        elbo = sorted((r for r in rows if r.get("estimator") == e and r.get("kind") == "elbo"),
                      key=lambda r: r["step"])
        if var:
            S = var[0]["num_samples"]
            axes[0].plot([r["step"] for r in var], [r["var_sum"] for r in var], "o-", color=c, ms=4,
                         label=f"{lab} (S={S})")
            rel = [(r["step"], r["relative_variance"]) for r in var if r["relative_variance"] == r["relative_variance"]]
            if rel:
                axes[1].plot(*zip(*rel), "o-", color=c, ms=4, label=lab)
        if elbo:
            axes[2].plot([r["step"] for r in elbo], [r["train_elbo"] for r in elbo], "-", color=c, label=lab)
    axes[0].set_ylabel("Σ_p Var(ĝ_p), encoder parameters")
    axes[1].set_ylabel("Σ_p Var(ĝ_p) / ‖E ĝ‖²  (scale-free)")
    axes[2].set_ylabel(f"training ELBO (nats, {cfg.elbo_samples} samples/image)")
    for ax in axes[:2]:
        ax.set_yscale("log")
    for ax in axes:
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3, which="both")
    elbos = [r for r in rows if r.get("kind") == "elbo"]
    if elbos:  # zoom on the last three quarters of training, where the estimators differ
        last = max(r["step"] for r in elbos)
        late = [r["train_elbo"] for r in elbos if r["step"] >= last / 4]
        top, bottom = max(late), min(late)
        axes[2].set_ylim(bottom - 0.3 * (top - bottom) - 0.1, top + 0.2 * (top - bottom) + 0.1)
    axes[0].legend(fontsize=7)
    axes[2].legend(fontsize=7)
    arch = "linear" if not cfg.hidden else "-".join(map(str, cfg.hidden))
    fig.suptitle(f"Digits SBN ({arch}, {cfg.z_dim} binary latents), E = {cfg.evaluations} evaluations of f per "
                 f"image per step; variance over {cfg.grad_estimates} estimates on {cfg.grad_batch} fixed images")
    fig.tight_layout()
    path = save_figure(fig, out / "discrete_vae.png", dpi=110)
    plt.close(fig)
    return [path]
