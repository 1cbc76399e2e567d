"""Figures of ``categorical``: scale-free variance and bias against K and the budget, training curves."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from scg.studies._io import save_figure
from scg.studies._plotting import number, pyplot

__all__ = ["plot_variance_vs_k", "plot_variance_vs_budget", "plot_training", "COLORS", "LABELS"]

LABELS: dict[str, str] = {
    "reinforce": "REINFORCE",
    "rloo": "RLOO",
    "measure_valued": "measure-valued",
    "categorical_disarm": "DisARM (cat.)",
    "arsm": "ARSM",
    "relax": "RELAX",
    "unordered_set": "unordered set",
    "sum_and_sample": "sum-and-sample",
    "indecater": "IndeCateR",
    "enumerate": "enumerate",
    "straight_through": "straight-through",
    "gumbel_softmax": "Gumbel-softmax",
    "gumbel_rao": "Gumbel-Rao",
    "reinmax": "ReinMax",
    "exact": "exact gradient",
}
_CMAP = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink")
COLORS: dict[str, str] = {name: _CMAP[i % len(_CMAP)] for i, name in enumerate(LABELS)}
COLORS["exact"] = "black"
#: Line styles: the first seven estimators solid, the next seven dashed (colours repeat).
STYLES: dict[str, str] = {name: "-" if i < 7 else "--" for i, name in enumerate(LABELS)}


#: Relative values at or below this are zero up to rounding (drawn as zeros): e.g. straight-through's
#: sampled variance for one latent, ~1e-32 of |grad|^2, where its estimate is the same for every draw.
_ROUNDING = 1e-20


def _ok(rows: Sequence[Mapping[str, Any]], part: str) -> list[Mapping[str, Any]]:
    return [r for r in rows if r.get("part") == part and r.get("status") == "ok"]


def _save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout(rect=(0, 0.65 / fig.get_figheight(), 1, 1))  # room for the legend below
    out = save_figure(fig, path, dpi=110)
    plt.close(fig)
    return out


def _series(
    ax: Any,
    sub: Sequence[Mapping[str, Any]],
    x_key: str,
    y_key: str,
    se_key: str | None,
    floor: float,
    keep: Any = lambda r: True,
) -> None:
    """One line per estimator of ``y_key`` against ``x_key`` (rows where ``keep``); zeros at ``floor`` as crosses."""
    for name in LABELS:
        pts = sorted(
            (
                (number(r.get(x_key)), number(r.get(y_key)), number(r.get(se_key)) if se_key else None, r)
                for r in sub
                if r.get("estimator") == name and number(r.get(y_key)) is not None and keep(r)
            ),
            key=lambda p: p[0],
        )
        if not pts:
            continue
        pts = [(x, 0.0 if y <= _ROUNDING else y, se, r) for x, y, se, r in pts]
        xs = [p[0] for p in pts]
        ys = [max(p[1], floor) for p in pts]
        ax.plot(xs, ys, STYLES[name], color=COLORS[name], label=LABELS[name], lw=1.3, marker=".")
        zeros = [(x, floor) for x, y, _, _ in pts if y <= floor]
        if zeros:
            ax.plot(*zip(*zeros, strict=True), "x", color=COLORS[name], ms=6)
        sampled = [(x, y, se) for x, y, se, r in pts if r.get("method") == "sampled" and se and y > floor]
        if sampled:
            xs_, ys_, ses = zip(*sampled, strict=True)
            ax.errorbar(xs_, ys_, yerr=[2 * s for s in ses], fmt="none", ecolor=COLORS[name], capsize=2)


def _visible(r: Mapping[str, Any]) -> bool:
    """A bias worth drawing: exact, or sampled and above 4 standard errors of its noise."""
    if r.get("method") != "sampled":
        return True
    bias, se = number(r.get("bias_norm")), number(r.get("bias_norm_se"))
    return bias is not None and se is not None and bias > 4 * se


def _legend(fig: Any, axes: Any) -> None:
    """One legend for the figure, below the panels: every estimator drawn in any panel."""
    seen: dict[str, Any] = {}
    for ax in [a for row in axes for a in row]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(label, handle)
    order = [v for v in LABELS.values() if v in seen]
    fig.legend([seen[k] for k in order], order, loc="lower center", ncol=min(7, len(order)), fontsize=8)


def _floor(sub: Sequence[Mapping[str, Any]], key: str) -> float:
    positive = [v for r in sub if (v := number(r.get(key))) is not None and v > _ROUNDING]
    return min(positive) / 10 if positive else 1e-12


def plot_variance_vs_k(
    rows: Sequence[Mapping[str, Any]], path: Path, budgets: Sequence[int] = (4, 16)
) -> Path:
    """Variance / ‖∇E f‖² (top) and ‖bias‖ / ‖∇E f‖ (bottom) against K, one column per (latents, budget)."""
    plt = pyplot()
    var = _ok(rows, "variance")
    present = sorted({int(r["budget"]) for r in var})
    shown = [b for b in budgets if b in present] or present[-1:]
    panels = [(D, b) for D in sorted({int(r["latents"]) for r in var}) for b in shown]
    fig, axes = plt.subplots(2, len(panels), figsize=(4.6 * len(panels), 7.5), squeeze=False)
    for j, (D, b) in enumerate(panels):
        sub = [r for r in var if int(r["latents"]) == D and int(r["budget"]) == b]
        for i, (key, se, label) in enumerate(
            (
                ("variance_rel", "variance_rel_se", "variance / |grad|^2"),
                ("bias_rel", None, "|bias| / |grad|"),
            )
        ):
            ax = axes[i][j]
            floor = _floor(sub, key) if i == 0 else 1e-6
            _series(ax, sub, "classes", key, se, floor, _visible if i else lambda r: True)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("K (classes per latent)")
            ax.set_ylabel(label + (" (x: 0)" if i == 0 else " (x: < 1e-6; sampled: > 4 SE only)"))
            ax.set_title(f"D = {D} latent{'s' if D > 1 else ''}, {b} evaluations of f")
            ax.grid(alpha=0.3, which="both")
    _legend(fig, axes)
    return _save(plt, fig, path)


def plot_variance_vs_budget(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Variance / ‖∇E f‖² against the evaluations of f actually spent, one panel per (latents, K)."""
    plt = pyplot()
    var = _ok(rows, "variance")
    panels = sorted({(int(r["latents"]), int(r["classes"])) for r in var})
    cols = min(len(panels), 4)
    nrows = -(-len(panels) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.6 * cols, 3.9 * nrows), squeeze=False)
    for idx, (D, K) in enumerate(panels):
        ax = axes[idx // cols][idx % cols]
        sub = [r for r in var if int(r["latents"]) == D and int(r["classes"]) == K]
        _series(ax, sub, "evaluations", "variance_rel", "variance_rel_se", _floor(sub, "variance_rel"))
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("evaluations of f per estimate")
        ax.set_ylabel("variance / |grad|^2 (x: 0)")
        ax.set_title(f"D = {D}, K = {K}")
        ax.grid(alpha=0.3, which="both")
    for idx in range(len(panels), nrows * cols):
        axes[idx // cols][idx % cols].axis("off")
    _legend(fig, axes)
    return _save(plt, fig, path)


def plot_training(rows: Sequence[Mapping[str, Any]], cfg: Any, path: Path) -> Path:
    """Mean exact objective gap E[f] − min_k c_k against the step, one panel per budget."""
    plt = pyplot()
    train = _ok(rows, "train")
    budgets = sorted({int(b) for r in train if (b := number(r.get("budget"))) is not None})
    fig, axes = plt.subplots(
        1, max(1, len(budgets)), figsize=(5.6 * max(1, len(budgets)), 4.4), squeeze=False
    )
    exact = [r for r in train if r["estimator"] == "exact"]
    for j, b in enumerate(budgets):
        ax = axes[0][j]
        sub = [r for r in train if number(r.get("budget")) == b] + exact
        floor = _floor(sub, "objective_gap")
        _series(ax, sub, "step", "objective_gap", None, floor)
        ax.set_yscale("log")
        ax.set_xlabel("Adam step")
        ax.set_ylabel("E[f] - min_k c_k (mean over replicas)")
        ax.set_title(f"K = {cfg.train_classes}, {b} evaluations of f per step")
        ax.grid(alpha=0.3, which="both")
    _legend(fig, axes)
    return _save(plt, fig, path)
