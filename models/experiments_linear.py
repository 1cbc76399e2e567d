"""``linear-gaussian`` experiment: a linear VAE against the exact log p(x), and flow posteriors.

Part of ``python -m scg.models.experiments`` (see :mod:`scg.models.experiments`).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

import torch

from scg.models import data as datasets
from scg.models.evaluate import log_likelihood
from scg.models.experiments_cells import cell, table
from scg.models.train import TrainConfig, fit, resolve_device

__all__ = ["linear_gaussian"]


def linear_gaussian(args: argparse.Namespace) -> str:
    from scg.models import VAE, FlowPosterior, GaussianDecoder, GaussianEncoder, flow_layers

    dev = resolve_device(args.device)
    n = (200, 50, 50) if args.smoke else (1000, 200, 200)
    truth, s = datasets.linear_gaussian(
        data_dim=10, latent_dim=2, noise_std=0.5, correlation=0.9, sizes=n, seed=0
    )
    test = s.test.to(dev)
    exact_true = float(truth.log_prob(s.test).mean())
    epochs = 3 if args.smoke else 300
    K = 50 if args.smoke else 5000
    cfg = TrainConfig(epochs=epochs, batch_size=100, lr=3e-3, seed=args.seed, progress=not args.quiet)

    def linear_vae(folder: Path) -> dict:
        torch.manual_seed(args.seed)
        vae = VAE(GaussianEncoder(10, 2, ()), GaussianDecoder(2, 10, (), shared_scale=True))
        fit(vae, s.train, s.val, config=cfg, out_dir=folder, device=dev)
        vae.eval()
        W, b = vae.decoder.net[0].weight.detach(), vae.decoder.net[0].bias.detach()
        s2 = float(vae.decoder.log_scale.detach().exp() ** 2)
        learned = datasets.LinearGaussian(W.cpu().double(), b.cpu().double(), math.sqrt(s2))
        exact_model = float(learned.log_prob(s.test.double()).mean())
        torch.manual_seed(args.seed)
        elbo = float(vae.bound(test, num_samples=1000).mean())
        iwae = float(log_likelihood(vae, test, num_samples=K).mean())
        return {
            "elbo": elbo,
            "exact_log_px_model": exact_model,
            "is_log_px": iwae,
            "exact_log_px_true": exact_true,
            "mean_field_gap_learned": learned.mean_field_gap(),
            "K": K,
            "epochs": epochs,
        }

    def fixed_decoder_posterior(kind: str | None, length: int) -> Callable[[Path], dict]:
        def run(folder: Path) -> dict:
            torch.manual_seed(args.seed)
            dec = GaussianDecoder(2, 10, (), shared_scale=True, init_scale=truth.noise_std)
            with torch.no_grad():
                dec.net[0].weight.copy_(truth.weight)
                dec.net[0].bias.copy_(truth.bias)
            dec.requires_grad_(False)
            enc = GaussianEncoder(10, 2, (32,))
            q = (
                FlowPosterior(enc, flow_layers(kind, 2, length, context_dim=enc.feature_dim, hidden=(32,)))
                if kind
                else enc
            )
            vae = VAE(q, dec, kl="mc")
            fit(vae, s.train, s.val, config=cfg, out_dir=folder, device=dev)
            vae.eval()
            torch.manual_seed(args.seed)
            elbo = float(vae.bound(test, num_samples=1000).mean())
            return {"elbo": elbo, "exact_log_px": exact_true, "gap": exact_true - elbo}

        return run

    out = Path(args.out) / "linear-gaussian"
    r = cell(out, f"linear-vae-seed{args.seed}", linear_vae, config=vars(args))
    gap_mf_exact = truth.mean_field_gap()
    rows = [["mean-field (optimum, closed form)", "—", f"{gap_mf_exact:.4f}", "0%"]]
    mf = cell(
        out,
        f"posterior-meanfield-seed{args.seed}",
        fixed_decoder_posterior(None, 0),
        config=vars(args),
    )
    rows.append(["mean-field Gaussian (trained)", f"{mf['elbo']:.4f}", f"{mf['gap']:.4f}", "0%"])
    for kind, length in [("planar", 8), ("iaf", 2), ("coupling", 4)]:
        fr = cell(
            out,
            f"posterior-{kind}{length}-seed{args.seed}",
            fixed_decoder_posterior(kind, length),
            config=vars(args),
        )
        closed = 1 - fr["gap"] / mf["gap"]
        rows.append([f"{kind} × {length}", f"{fr['elbo']:.4f}", f"{fr['gap']:.4f}", f"{100 * closed:.0f}%"])
    report = [
        "Linear VAE on linear-Gaussian data (test set, nats per data point):",
        table(
            ["quantity", "value"],
            [
                ["ELBO of the trained linear VAE (1000 samples)", f"{r['elbo']:.4f}"],
                [
                    "exact log p(x) of the learned model (closed form)",
                    f"{r['exact_log_px_model']:.4f}",
                ],
                [f"IS estimate, K = {r['K']}", f"{r['is_log_px']:.4f}"],
                ["abs(IS − exact)", f"{abs(r['is_log_px'] - r['exact_log_px_model']):.4f}"],
                ["ELBO gap (exact − ELBO)", f"{r['exact_log_px_model'] - r['elbo']:.4f}"],
                ["exact log p(x) of the true model", f"{r['exact_log_px_true']:.4f}"],
            ],
        ),
        "",
        f"Posterior families with the decoder fixed at the truth (exact test log p(x) = {exact_true:.4f}):",
        table(["posterior", "test ELBO", "gap = log p(x) − ELBO", "mean-field gap closed"], rows),
    ]
    return "\n".join(report)
