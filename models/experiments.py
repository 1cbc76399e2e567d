r"""Reduced-size experiments behind ``docs/models.md``: ``python -m scg.models.experiments NAME``.

Every experiment trains through :func:`scg.models.fit` with one checkpoint folder
per cell (``--out/NAME/<cell>``), so an interrupted experiment restarts where it
stopped: finished cells are read from their ``result.json``, unfinished runs
resume from ``last.pt``. ``--smoke`` shrinks every size for tests. Sizes are far
below the papers' (8×8 digits instead of MNIST, CPU minutes instead of GPU days);
``docs/models.md`` says so next to each table.

=================== ==========================================================
name                what it shows
=================== ==========================================================
linear-gaussian     linear VAE bound vs exact log p(x); IS (K = 5000) vs closed
                    form; flow posterior vs mean-field gap on a correlated posterior
iwae                Burda et al.'s table on digits: VAE vs IWAE, k = 1/5/50
flows               test log p(x) vs flow type and length (0, 2, 8)
discrete            sigmoid belief net, every estimator at equal f evaluations
blr                 Bayesian logistic regression: ELBO, accuracy, gradient variance
=================== ==========================================================
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import Tensor

from scg.models import data as datasets
from scg.models.evaluate import active_units, log_likelihood
from scg.models.train import TrainConfig, fit, resolve_device

__all__ = ["main", "EXPERIMENTS"]


def _cell(out: Path, name: str, run: Callable[[Path], dict]) -> dict:
    """Run one cell unless its ``result.json`` exists (then read it)."""
    folder = out / name
    done = folder / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    result = run(folder)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    tmp = done.with_name("result.json.tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, done)
    return result


def _ms(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- linear-Gaussian

def linear_gaussian(args: argparse.Namespace) -> str:
    from scg.models import VAE, FlowPosterior, GaussianDecoder, GaussianEncoder, flow_layers

    dev = resolve_device(args.device)
    n = (200, 50, 50) if args.smoke else (1000, 200, 200)
    truth, s = datasets.linear_gaussian(data_dim=10, latent_dim=2, noise_std=0.5, correlation=0.9, sizes=n, seed=0)
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
        return {"elbo": elbo, "exact_log_px_model": exact_model, "is_log_px": iwae,
                "exact_log_px_true": exact_true, "mean_field_gap_learned": learned.mean_field_gap(),
                "K": K, "epochs": epochs}

    def fixed_decoder_posterior(kind: Optional[str], length: int) -> Callable[[Path], dict]:
        def run(folder: Path) -> dict:
            torch.manual_seed(args.seed)
            dec = GaussianDecoder(2, 10, (), shared_scale=True, init_scale=truth.noise_std)
            with torch.no_grad():
                dec.net[0].weight.copy_(truth.weight)
                dec.net[0].bias.copy_(truth.bias)
            dec.requires_grad_(False)
            enc = GaussianEncoder(10, 2, (32,))
            q = FlowPosterior(enc, flow_layers(kind, 2, length, context_dim=enc.feature_dim, hidden=(32,))) \
                if kind else enc
            vae = VAE(q, dec, kl="mc")
            fit(vae, s.train, s.val, config=cfg, out_dir=folder, device=dev)
            vae.eval()
            torch.manual_seed(args.seed)
            elbo = float(vae.bound(test, num_samples=1000).mean())
            return {"elbo": elbo, "exact_log_px": exact_true, "gap": exact_true - elbo}
        return run

    out = Path(args.out) / "linear-gaussian"
    r = _cell(out, f"linear-vae-seed{args.seed}", linear_vae)
    gap_mf_exact = truth.mean_field_gap()
    rows = [["mean-field (optimum, closed form)", "—", f"{gap_mf_exact:.4f}", "0%"]]
    mf = _cell(out, f"posterior-meanfield-seed{args.seed}", fixed_decoder_posterior(None, 0))
    rows.append(["mean-field Gaussian (trained)", f"{mf['elbo']:.4f}", f"{mf['gap']:.4f}", "0%"])
    for kind, length in [("planar", 8), ("iaf", 2), ("coupling", 4)]:
        fr = _cell(out, f"posterior-{kind}{length}-seed{args.seed}", fixed_decoder_posterior(kind, length))
        closed = 1 - fr["gap"] / mf["gap"]
        rows.append([f"{kind} × {length}", f"{fr['elbo']:.4f}", f"{fr['gap']:.4f}", f"{100 * closed:.0f}%"])
    report = [
        "Linear VAE on linear-Gaussian data (test set, nats per data point):",
        _table(["quantity", "value"], [
            ["ELBO of the trained linear VAE (1000 samples)", f"{r['elbo']:.4f}"],
            ["exact log p(x) of the learned model (closed form)", f"{r['exact_log_px_model']:.4f}"],
            [f"IS estimate, K = {r['K']}", f"{r['is_log_px']:.4f}"],
            ["abs(IS − exact)", f"{abs(r['is_log_px'] - r['exact_log_px_model']):.4f}"],
            ["ELBO gap (exact − ELBO)", f"{r['exact_log_px_model'] - r['elbo']:.4f}"],
            ["exact log p(x) of the true model", f"{r['exact_log_px_true']:.4f}"],
        ]),
        "",
        f"Posterior families with the decoder fixed at the truth (exact test log p(x) = {exact_true:.4f}):",
        _table(["posterior", "test ELBO", "gap = log p(x) − ELBO", "mean-field gap closed"], rows),
    ]
    return "\n".join(report)


# ----------------------------------------------------------------------------- digits: VAE vs IWAE

def _digits(args: argparse.Namespace):
    d = datasets.digits()
    if args.smoke:
        d = datasets.Splits(d.train[:100], d.val[:50], d.test[:50])
    return d


def _vae_cell(args, d, *, model_fn: Callable[[], torch.nn.Module], epochs: int, encoder_of) -> Callable[[Path], dict]:
    dev = resolve_device(args.device)

    def run(folder: Path) -> dict:
        torch.manual_seed(args.seed)
        model = model_fn()
        cfg = TrainConfig(epochs=epochs, batch_size=100, lr=1e-3, seed=args.seed, patience=args.patience,
                          restore_best=True, progress=not args.quiet)
        h = fit(model, d.train, d.val, config=cfg, out_dir=folder, device=dev)
        model.eval()
        torch.manual_seed(args.seed)
        K = 100 if args.smoke else 5000
        test = d.test.to(dev)
        ll = float(log_likelihood(model, test, num_samples=K).mean())
        au, _ = active_units(encoder_of(model), test)
        return {"test_log_px": ll, "active_units": au, "epochs_run": len(h.epochs), "best_epoch": h.best_epoch,
                "best_val": h.best_val, "K_eval": K}
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
                def make(kind=kind, k=k):
                    enc, dec = GaussianEncoder(64, L, H), BernoulliDecoder(L, 64, H)
                    if kind == "VAE":
                        return VAE(enc, dec, kl="mc", num_samples=k)
                    return IWAE(enc, dec, num_samples=k)
                r = _cell(out, f"{kind.lower()}-k{k}-seed{seed}",
                          _vae_cell(sub, d, model_fn=make, epochs=epochs, encoder_of=lambda m: m.encoder))
                results.setdefault((kind, k), []).append(r)
    rows = []
    for k in (1, 5, 50):
        row = [str(k)]
        for kind in ("VAE", "IWAE"):
            rs = results[(kind, k)]
            row += [_ms([-r["test_log_px"] for r in rs]), _ms([float(r["active_units"]) for r in rs])]
        rows.append(row)
    K = results[("VAE", 1)][0]["K_eval"]
    return (f"Digits (binarised 8×8; 1000/350/447), 64-{H[0]}-{H[1]}-{L} tanh, test −log p(x) with K = {K}, "
            f"{args.seeds} seeds (mean ± std), early stopping on validation (patience {args.patience}), "
            f"≤ {epochs} epochs:\n"
            + _table(["k", "VAE −log p(x)", "VAE active units", "IWAE −log p(x)", "IWAE active units"], rows))


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
            def make(kind=kind, length=length):
                enc = GaussianEncoder(64, L, H)
                layers = flow_layers(kind, L, length, context_dim=H[-1], hidden=(64,)) if length else []
                return VAE(FlowPosterior(enc, layers), BernoulliDecoder(L, 64, H), kl="mc")
            r = _cell(out, f"{kind}-{length}-seed{seed}",
                      _vae_cell(sub, d, model_fn=make, epochs=epochs, encoder_of=lambda m: m.encoder))
            results.setdefault((kind, length), []).append(r)
    base = _ms([-r["test_log_px"] for r in results[("none", 0)]])
    rows = [[kind, base] + [_ms([-r["test_log_px"] for r in results[(kind, n)]]) for n in (2, 8)]
            for kind in ("planar", "radial", "iaf", "coupling")]
    K = results[("none", 0)][0]["K_eval"]
    return (f"Digits, VAE with flow posteriors (64-{H[0]}-{H[1]}-{L}; planar/radial amortised from the encoder's "
            f"features, IAF/coupling with MADE/coupling nets of 64 units and the features as context), "
            f"test −log p(x) with K = {K}, {args.seeds} seeds:\n"
            + _table(["flow", "length 0", "length 2", "length 8"], rows))


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
            def run(folder: Path, name=name, seed=seed) -> dict:
                torch.manual_seed(seed)
                m = DiscreteVAE(64, Z, hidden, estimator=name, evaluations=E)
                cfg = TrainConfig(epochs=epochs, batch_size=50, lr=args.lr, seed=seed, val_samples=10,
                                  progress=not args.quiet)
                h = fit(m, d.train, d.val, config=cfg, out_dir=folder, device=dev)
                m.eval()
                torch.manual_seed(seed)
                train_elbo = float(m.bound(d.train.to(dev), num_samples=10).mean())
                test_elbo = float(m.bound(d.test.to(dev), num_samples=10).mean())
                ll = float(log_likelihood(m, d.test.to(dev), num_samples=100 if args.smoke else 1000).mean())
                return {"train_elbo": train_elbo, "val_curve": h.val_bound, "train_curve": h.train_loss,
                        "test_elbo": test_elbo, "test_log_px": ll, "steps": h.epochs[-1]["step"],
                        "evaluations_per_step": E, "seconds_train": sum(e["seconds"] for e in h.epochs)}
            results.setdefault(name, []).append(_cell(out, f"{name}-seed{seed}", run))
    rows = []
    for name, rs in results.items():
        rows.append([name, _ms([r["train_elbo"] for r in rs]), _ms([r["val_curve"][-1] for r in rs]),
                     _ms([r["test_elbo"] for r in rs]), _ms([r["test_log_px"] for r in rs]),
                     f"{statistics.mean(r['seconds_train'] for r in rs):.0f}"])
    _plot_curves(results, out / "curves.png", title=f"SBN {args.arch}, {Z} latents, E = {E} f-evaluations / step")
    return (f"Digits, sigmoid belief net ({args.arch}, {Z} binary latents), {E} evaluations of f per data point "
            f"per step for every estimator, batch 50, Adam lr {args.lr}, {epochs} epochs, {args.seeds} seed(s); "
            "ELBOs with 10 samples, test log p(x) with K = 1000:\n"
            + _table(["estimator", "train ELBO", "val ELBO (last epoch)", "test ELBO", "test log p(x)",
                      "train seconds"], rows))


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
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- Bayesian logistic regression

def blr(args: argparse.Namespace) -> str:
    import scg
    from scg.models import BayesianLogisticRegression

    dev = resolve_device(args.device)
    x, y, _, _ = datasets.breast_cancer()
    x, y = x.to(dev), y.to(dev)
    steps = 50 if args.smoke else args.steps
    S = 50
    b = scg.baselines
    estimators = {
        "pathwise": lambda: scg.Pathwise(),
        "measure-valued": lambda: scg.MeasureValued(),
        "score function": lambda: scg.ScoreFunction(),
        "score function + moving average": lambda: scg.ScoreFunction(baseline=b.MovingAverage()),
        "score function + delta (optimal c)": lambda: scg.ScoreFunction(baseline=b.Delta("optimal")),
    }
    checkpoints = sorted({0, steps // 10, steps})
    out = Path(args.out) / "blr"

    def run(folder: Path, make) -> dict:
        torch.manual_seed(args.seed)
        m = BayesianLogisticRegression(x, y, estimator=make(), num_samples=S, batch_size=32).to(dev)
        opt = torch.optim.SGD(m.parameters(), lr=args.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
        variances, elbos = {}, {}
        for t in range(steps + 1):
            if t in checkpoints:
                variances[str(t)] = _blr_gradient_variance(m, num=args.grad_samples)
                elbos[str(t)] = m.elbo(num_samples=2000)
            if t == steps:
                break
            opt.zero_grad(set_to_none=True)
            m.objective().backward()  # minibatch of 32 drawn by scg.minibatch, scaled by N/B
            opt.step()
            sched.step()
        return {"elbo": elbos, "accuracy": m.accuracy(), "variance": variances,
                "evaluations_per_sample": m.estimator.evaluations(m.posterior(), 1)}

    results = {name: _cell(out, name.replace(" ", "-").replace("(", "").replace(")", "") + f"-seed{args.seed}",
                           lambda f, make=make: run(f, make)) for name, make in estimators.items()}
    rows = []
    for name, r in results.items():
        var = r["variance"]
        rows.append([name] + [f"{r['elbo'][str(t)]:.2f}" for t in checkpoints[1:]] + [f"{100 * r['accuracy']:.1f}%"]
                    + [f"{var[str(t)]:.3g}" for t in checkpoints] + [str(r["evaluations_per_sample"])])
    return (f"Bayesian logistic regression, breast cancer (569 × 31), S = {S} samples, batch 32 (scaled by N/B), "
            f"SGD lr {args.lr} with cosine decay, {steps} steps. Gradient variance: mean over the 62 posterior "
            f"parameters of the variance of one full-data gradient estimate (S = {S}), from {args.grad_samples} "
            "estimates at the listed steps:\n"
            + _table(["estimator"] + [f"ELBO at step {t}" for t in checkpoints[1:]] + ["train accuracy"]
                     + [f"Var at step {t}" for t in checkpoints]
                     + ["f evals / sample"], rows))


def _blr_gradient_variance(m, *, num: int) -> float:
    import scg

    params = {"loc": m.loc.detach(), "raw_scale": m.raw_scale.detach()}
    index = torch.arange(m.n, device=m.x.device)
    was = m.training
    m.eval()  # running baselines frozen while measuring

    def fn(p: dict[str, Tensor]) -> Tensor:
        return torch.func.functional_call(m, p, (index,))

    try:
        g = scg.diagnostics.gradient_samples(fn, params, num, chunk_size=50)
    except Exception:  # estimators that cannot run under torch.func: a loop of backward passes
        rows = []
        for _ in range(num):
            m.zero_grad()
            m.objective(index).backward()
            rows.append(torch.cat([m.loc.grad.reshape(-1), m.raw_scale.grad.reshape(-1)]).clone())
        g = torch.stack(rows)
    m.train(was)
    return float(g.var(0).mean())


EXPERIMENTS = {"linear-gaussian": linear_gaussian, "iwae": iwae, "flows": flows, "discrete": discrete, "blr": blr}


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(prog="python -m scg.models.experiments", description=__doc__.split("\n")[0])
    p.add_argument("name", choices=list(EXPERIMENTS))
    p.add_argument("--out", default="runs/models")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=int, default=3, help="seeds for the digits tables")
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--patience", type=int, default=30)
    p.add_argument("--arch", choices=["linear", "nonlinear"], default="linear")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--grad-samples", type=int, default=200)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 is fastest for these sizes)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, for tests")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if args.lr is None:
        args.lr = {"blr": 1e-3, "discrete": 1e-3}.get(args.name, 1e-3)
    torch.set_num_threads(args.threads)
    print(EXPERIMENTS[args.name](args))


if __name__ == "__main__":
    main()
