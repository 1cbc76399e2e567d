"""Digits experiments: ``iwae`` (VAE vs IWAE), ``flows`` (flow posteriors), ``discrete`` (SBN estimators).

Part of ``python -m scg.models.experiments`` (see :mod:`scg.models.experiments`).
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from pathlib import Path

import torch

from scg.models import data as datasets
from scg.models._io import atomic_write
from scg.models.evaluate import active_units, log_likelihood
from scg.models.experiments_cells import cell, mean_std, table
from scg.models.train import TrainConfig, fit, resolve_device

__all__ = ["iwae", "flows", "discrete"]


def _digits(args: argparse.Namespace) -> datasets.Splits:
    d = datasets.digits()
    if args.smoke:
        d = datasets.Splits(d.train[:100], d.val[:50], d.test[:50])
    return d


def _vae_cell(
    args: argparse.Namespace,
    d: datasets.Splits,
    *,
    model_fn: Callable[[], torch.nn.Module],
    epochs: int,
    encoder_of: Callable[[torch.nn.Module], torch.nn.Module],
) -> Callable[[Path], dict]:
    dev = resolve_device(args.device)

    def run(folder: Path) -> dict:
        torch.manual_seed(args.seed)
        model = model_fn()
        cfg = TrainConfig(
            epochs=epochs,
            batch_size=100,
            lr=1e-3,
            seed=args.seed,
            patience=args.patience,
            restore_best=True,
            progress=not args.quiet,
        )
        h = fit(model, d.train, d.val, config=cfg, out_dir=folder, device=dev)
        model.eval()
        torch.manual_seed(args.seed)
        K = 100 if args.smoke else 5000
        test = d.test.to(dev)
        ll = float(log_likelihood(model, test, num_samples=K).mean())
        au, _ = active_units(encoder_of(model), test)
        return {
            "test_log_px": ll,
            "active_units": au,
            "epochs_run": len(h.epochs),
            "best_epoch": h.best_epoch,
            "best_val": h.best_val,
            "K_eval": K,
        }

    return run


def iwae(args: argparse.Namespace) -> str:
    from scg.models import IWAE, VAE, BernoulliDecoder, GaussianEncoder

    d = _digits(args)
    L, H = 20, (100, 100)
    epochs = 2 if args.smoke else args.epochs
    out = Path(args.out) / "iwae"
    results: dict[tuple[str, int], list[dict]] = {}
    for seed in range(args.seeds):
        sub = argparse.Namespace(**{**vars(args), "seed": seed})
        for k in (1, 5, 50):
            for kind in ("VAE", "IWAE"):

                def make(kind: str = kind, k: int = k) -> torch.nn.Module:
                    enc, dec = GaussianEncoder(64, L, H), BernoulliDecoder(L, 64, H)
                    if kind == "VAE":
                        return VAE(enc, dec, kl="mc", num_samples=k)
                    return IWAE(enc, dec, num_samples=k)

                r = cell(
                    out,
                    f"{kind.lower()}-k{k}-seed{seed}",
                    _vae_cell(sub, d, model_fn=make, epochs=epochs, encoder_of=lambda m: m.encoder),
                    config={**vars(sub), "epochs": epochs},
                )
                results.setdefault((kind, k), []).append(r)
    rows = []
    for k in (1, 5, 50):
        row = [str(k)]
        for kind in ("VAE", "IWAE"):
            rs = results[(kind, k)]
            row += [
                mean_std([-r["test_log_px"] for r in rs]),
                mean_std([float(r["active_units"]) for r in rs]),
            ]
        rows.append(row)
    K = results[("VAE", 1)][0]["K_eval"]
    return (
        f"Digits (binarised 8×8; 1000/350/447), 64-{H[0]}-{H[1]}-{L} tanh, test −log p(x) with K = {K}, "
        f"{args.seeds} seeds (mean ± std), early stopping on validation (patience {args.patience}), "
        f"≤ {epochs} epochs:\n"
        + table(["k", "VAE −log p(x)", "VAE active units", "IWAE −log p(x)", "IWAE active units"], rows)
    )


# ----------------------------------------------------------------------------- digits: flows


def flows(args: argparse.Namespace) -> str:
    from scg.models import VAE, BernoulliDecoder, FlowPosterior, GaussianEncoder, flow_layers

    d = _digits(args)
    L, H = 20, (100, 100)
    epochs = 2 if args.smoke else args.epochs
    out = Path(args.out) / "flows"
    cells = [("none", 0)] + [(k, n) for k in ("planar", "radial", "iaf", "coupling") for n in (2, 8)]
    results: dict[tuple[str, int], list[dict]] = {}
    for seed in range(args.seeds):
        sub = argparse.Namespace(**{**vars(args), "seed": seed})
        for kind, length in cells:

            def make(kind: str = kind, length: int = length) -> torch.nn.Module:
                enc = GaussianEncoder(64, L, H)
                layers = flow_layers(kind, L, length, context_dim=H[-1], hidden=(64,)) if length else []
                return VAE(FlowPosterior(enc, layers), BernoulliDecoder(L, 64, H), kl="mc")

            r = cell(
                out,
                f"{kind}-{length}-seed{seed}",
                _vae_cell(sub, d, model_fn=make, epochs=epochs, encoder_of=lambda m: m.encoder),
                config={**vars(sub), "epochs": epochs},
            )
            results.setdefault((kind, length), []).append(r)
    base = mean_std([-r["test_log_px"] for r in results[("none", 0)]])
    rows = [
        [kind, base] + [mean_std([-r["test_log_px"] for r in results[(kind, n)]]) for n in (2, 8)]
        for kind in ("planar", "radial", "iaf", "coupling")
    ]
    K = results[("none", 0)][0]["K_eval"]
    return (
        f"Digits, VAE with flow posteriors (64-{H[0]}-{H[1]}-{L}; planar/radial amortised from the encoder's "
        f"features, IAF/coupling with MADE/coupling nets of 64 units and the features as context), "
        f"test −log p(x) with K = {K}, {args.seeds} seeds:\n"
        + table(["flow", "length 0", "length 2", "length 8"], rows)
    )


# ----------------------------------------------------------------------------- digits: discrete latents


def discrete(args: argparse.Namespace) -> str:
    from scg.models import DISCRETE_ESTIMATORS, DiscreteVAE

    d = _digits(args)
    dev = resolve_device(args.device)
    epochs = 2 if args.smoke else args.epochs
    Z = 16 if args.smoke else 200
    hidden = () if args.arch == "linear" else (200, 200)
    out = Path(args.out) / f"discrete-{args.arch}"
    E = 6
    results: dict[str, list[dict]] = {}
    for seed in range(args.seeds):
        for name in DISCRETE_ESTIMATORS:

            def run(folder: Path, name: str = name, seed: int = seed) -> dict:
                torch.manual_seed(seed)
                m = DiscreteVAE.from_name(name, 64, Z, hidden, evaluations=E)
                cfg = TrainConfig(
                    epochs=epochs,
                    batch_size=50,
                    lr=args.lr,
                    seed=seed,
                    val_samples=10,
                    progress=not args.quiet,
                )
                h = fit(m, d.train, d.val, config=cfg, out_dir=folder, device=dev)
                m.eval()
                torch.manual_seed(seed)
                train_elbo = float(m.bound(d.train.to(dev), num_samples=10).mean())
                test_elbo = float(m.bound(d.test.to(dev), num_samples=10).mean())
                ll = float(log_likelihood(m, d.test.to(dev), num_samples=100 if args.smoke else 1000).mean())
                return {
                    "train_elbo": train_elbo,
                    "val_curve": h.val_bound,
                    "train_curve": h.train_loss,
                    "test_elbo": test_elbo,
                    "test_log_px": ll,
                    "steps": h.epochs[-1]["step"],
                    "evaluations_per_step": E,
                    "seconds_train": sum(e["seconds"] for e in h.epochs),
                }

            results.setdefault(name, []).append(
                cell(out, f"{name}-seed{seed}", run, config={**vars(args), "seed": seed})
            )
    rows = []
    for name, rs in results.items():
        rows.append(
            [
                name,
                mean_std([r["train_elbo"] for r in rs]),
                mean_std([r["val_curve"][-1] for r in rs]),
                mean_std([r["test_elbo"] for r in rs]),
                mean_std([r["test_log_px"] for r in rs]),
                f"{statistics.mean(r['seconds_train'] for r in rs):.0f}",
            ]
        )
    _plot_curves(
        results,
        out / "curves.png",
        title=f"SBN {args.arch}, {Z} latents, E = {E} f-evaluations / step",
    )
    return (
        f"Digits, sigmoid belief net ({args.arch}, {Z} binary latents), {E} evaluations of f per data point "
        f"per step for every estimator, batch 50, Adam lr {args.lr}, {epochs} epochs, {args.seeds} seed(s); "
        "ELBOs with 10 samples, test log p(x) with K = 1000:\n"
        + table(
            [
                "estimator",
                "train ELBO",
                "val ELBO (last epoch)",
                "test ELBO",
                "test log p(x)",
                "train seconds",
            ],
            rows,
        )
    )


def _plot_curves(results: dict[str, list[dict]], path: Path, *, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, rs in results.items():
        val = torch.tensor([r["val_curve"] for r in rs]).mean(0)
        train = -torch.tensor([r["train_curve"] for r in rs]).mean(0)
        epochs = range(1, len(val) + 1)
        axes[0].plot(epochs, train, label=name)
        axes[1].plot(epochs, val, label=name)
    axes[0].set_title("training objective (ELBO; VIMCO: K-sample bound; gumbel: relaxed)")
    axes[1].set_title("validation ELBO")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.set_ylim(bottom=max(ax.get_ylim()[0], -60))
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=90))
    plt.close(fig)
