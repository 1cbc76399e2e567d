r"""``categorical`` experiment: a categorical VAE trained with every categorical estimator at equal cost.

Part of ``python -m scg.models.experiments`` (see :mod:`scg.models.experiments`); the
full-size (GPU) configuration runs with ``python -m scg.models.experiments_categorical --full``.

Every estimator of :data:`scg.models.categorical_vae.CATEGORICAL_ESTIMATORS` trains the same
:class:`~scg.models.categorical_vae.CategoricalVAE` (same initialisation per seed) with the
largest number of samples S whose cost is within a budget of E decoder evaluations per
data point per step (:func:`~scg.models.categorical_vae.samples_for_budget`). Reported per
estimator, mean ± standard error over seeds: the train and validation ELBO (10 samples per
point, exact draws, analytic KL), the test log p(x) (importance sampled, K samples), and the
encoder-gradient variance at *shared parameters*: every estimator is measured at the same
two checkpoints of one reference trajectory (RLOO, seed 0: its initialisation and its
end). There each estimator's own state (moving averages, NVIL's baseline network, RELAX's
control variate) is first trained for ``cv_steps`` steps with the model frozen, then
``grad_samples`` independent estimates of the gradient of the batch-mean loss on a fixed
batch are drawn with :func:`scg.diagnostics.gradient_samples`; the variance is the trace of
their covariance (the summed variance over the encoder's parameters), with its standard
error over the estimates. Every cell (one training run, one variance measurement) is
resumable and keyed by its configuration (:func:`scg.models.experiments_cells.cell`).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

import scg
from scg.models import data as datasets
from scg.models.categorical_vae import (
    CATEGORICAL_ESTIMATORS,
    CategoricalVAE,
    categorical_estimator,
    samples_for_budget,
)
from scg.models.checkpoint import atomic_save, load_checkpoint
from scg.models.evaluate import log_likelihood
from scg.models.experiments_cells import cell, table
from scg.models.train import TrainConfig, fit, resolve_device

__all__ = ["CategoricalConfig", "categorical", "run", "report", "main", "CPU", "FULL", "SMOKE"]


@dataclass(frozen=True)
class CategoricalConfig:
    """Settings of the ``categorical`` experiment.

    Attributes:
        dataset: ``"digits"`` (8×8, binarised) or ``"mnist5k"`` (28×28, dynamic binarisation).
        latents: D.
        classes: K.
        hidden: encoder hidden sizes (decoder reversed).
        evaluations: E, decoder evaluations per data point per step for every estimator
            (at least IndeCateR's 1 + D·K).
        epochs: passes over the training data.
        batch_size: data points per step.
        lr: Adam learning rate.
        temperature: τ of the Gumbel-softmax family (ReinMax: max(1, 2τ)).
        num_conditional: Gumbel-Rao's M.
        eval_samples: K of the importance-sampled test log p(x).
        grad_samples: gradient estimates per estimator and checkpoint.
        grad_batch: data points in the fixed batch of the variance measurement.
        cv_steps: steps that train an estimator's own state at the shared parameters.
        train_limit: use only the first ``train_limit`` points of each split (``None``: all).
    """

    dataset: str = "digits"
    latents: int = 8
    classes: int = 4
    hidden: tuple[int, ...] = (128,)
    evaluations: int = 33
    epochs: int = 50
    batch_size: int = 100
    lr: float = 3e-3
    temperature: float = 0.5
    num_conditional: int = 10
    eval_samples: int = 1000
    grad_samples: int = 200
    grad_batch: int = 50
    cv_steps: int = 100
    train_limit: int | None = None

    def __post_init__(self) -> None:
        if self.dataset not in ("digits", "mnist5k"):
            raise ValueError(f'`dataset` must be "digits" or "mnist5k"; got {self.dataset!r}.')
        if self.evaluations < 1 + self.latents * self.classes:
            raise ValueError(
                f"`evaluations` must be at least 1 + D·K = {1 + self.latents * self.classes} (one sample "
                f"of IndeCateR); got {self.evaluations}."
            )


#: The CPU size (8×8 digits, 8 × 4 latents, E = 33): about 15 minutes on one thread for 3 seeds.
CPU = CategoricalConfig()
#: The full size for a GPU: 784-pixel MNIST (5,000 images), 20 × 10 latents as in Jang et al.
FULL = CategoricalConfig(
    dataset="mnist5k",
    latents=20,
    classes=10,
    hidden=(512, 256),
    evaluations=201,
    epochs=200,
    lr=1e-3,
    eval_samples=1000,
    grad_samples=500,
    grad_batch=100,
    cv_steps=500,
)
#: Seconds-size configuration for tests.
SMOKE = CategoricalConfig(
    latents=2,
    classes=3,
    hidden=(16,),
    evaluations=7,
    epochs=1,
    batch_size=50,
    eval_samples=20,
    grad_samples=4,
    grad_batch=10,
    cv_steps=2,
    train_limit=100,
)


def _data(cfg: CategoricalConfig) -> tuple[datasets.Splits, Callable[[Tensor], Tensor] | None]:
    if cfg.dataset == "mnist5k":
        d, transform = datasets.mnist5k(binarize="dynamic"), datasets.binarize
    else:
        d, transform = datasets.digits(), None
    if cfg.train_limit is not None:
        n = cfg.train_limit
        d = datasets.Splits(d.train[:n], d.val[:n], d.test[:n])
    return d, transform


def _model(cfg: CategoricalConfig, name: str, x_dim: int, seed: int) -> CategoricalVAE:
    """The model for ``name``; encoder and decoder initialised from ``seed`` alone (equal across estimators)."""
    torch.manual_seed(seed)
    est = categorical_estimator(
        name, x_dim=x_dim, temperature=cfg.temperature, num_conditional=cfg.num_conditional
    )
    torch.manual_seed(seed)
    m = CategoricalVAE(
        x_dim, latents=cfg.latents, classes=cfg.classes, hidden=cfg.hidden, estimator=est, num_samples=1
    )
    probe = m.posterior(torch.zeros(1, x_dim))
    m.num_samples = samples_for_budget(est, probe, cfg.evaluations)
    return m


def _shared_state(m: CategoricalVAE) -> dict[str, Tensor]:
    return {
        k: v.detach().clone() for k, v in m.state_dict().items() if k.startswith(("encoder.", "decoder."))
    }


def _train_cell(
    cfg: CategoricalConfig,
    name: str,
    seed: int,
    d: datasets.Splits,
    transform: Callable[[Tensor], Tensor] | None,
    *,
    device: torch.device,
    progress: bool,
    reference: bool,
) -> Callable[[Path], dict]:
    def run_cell(folder: Path) -> dict:
        m = _model(cfg, name, d.train.shape[-1], seed)
        if reference:
            atomic_save(_shared_state(m), folder / "shared-init.pt")
        tc = TrainConfig(
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            lr=cfg.lr,
            seed=seed,
            val_samples=1,
            progress=progress,
        )
        h = fit(m, d.train, d.val, config=tc, out_dir=folder, device=device, transform=transform)
        if reference:
            atomic_save(_shared_state(m), folder / "shared-end.pt")
        m.eval()
        torch.manual_seed(seed)
        train = d.train if transform is None else transform(d.train)
        elbo = {
            split: float(_bound(m, x.to(device), 10).mean())
            for split, x in (("train", train), ("val", d.val), ("test", d.test))
        }
        ll = float(log_likelihood(m, d.test.to(device), num_samples=cfg.eval_samples).mean())
        return {
            "train_elbo": elbo["train"],
            "val_elbo": elbo["val"],
            "test_elbo": elbo["test"],
            "test_log_px": ll,
            "num_samples": m.num_samples,
            "evaluations_per_step": m.estimator.evaluations(m.posterior(d.val[:1].to(device)), m.num_samples),
            "val_curve": h.val_bound,
            "steps": h.epochs[-1]["step"],
            "seconds_train": sum(e["seconds"] for e in h.epochs),
            "folder": folder.name,
        }

    return run_cell


@torch.no_grad()
def _bound(m: CategoricalVAE, x: Tensor, num_samples: int) -> Tensor:
    return torch.cat([m.bound(x[i : i + 500], num_samples=num_samples) for i in range(0, x.shape[0], 500)])


class _Loss(nn.Module):
    """``forward(x) = model.loss(x)``, so that :func:`torch.func.functional_call` can swap the encoder's parameters."""

    def __init__(self, model: CategoricalVAE) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model.loss(x)


def gradient_variance(m: CategoricalVAE, x: Tensor, num: int) -> tuple[float, float]:
    r"""Trace of the covariance of the encoder gradient of ``m.loss(x)`` and its standard error.

    .. math::
        V = \frac1{N−1} \sum_n ‖g_n − \bar g‖^2, \qquad
        \mathrm{SE}(V) ≈ \frac{N}{N−1}\, \frac{\mathrm{sd}_n(‖g_n − \bar g‖^2)}{\sqrt N}

    from N = ``num`` independent estimates :math:`g_n` (:func:`scg.diagnostics.gradient_samples`;
    estimators that cannot run under ``torch.func`` fall back to a loop of backward passes).
    """
    wrapper = _Loss(m)
    params = {f"model.encoder.{k}": v.detach() for k, v in m.encoder.named_parameters()}

    def fn(p: dict[str, Tensor]) -> Tensor:
        return torch.func.functional_call(wrapper, p, (x,))

    try:
        g = scg.diagnostics.gradient_samples(fn, params, num, chunk_size=min(num, 25))
    except Exception:  # estimators that cannot run under torch.func (e.g. RELAX's inner torch.func.grad)
        rows = []
        enc = list(m.encoder.parameters())
        for _ in range(num):
            grads = torch.autograd.grad(m.loss(x), enc)
            rows.append(torch.cat([gr.reshape(-1) for gr in grads]))
        g = torch.stack(rows)
    dev = (g - g.mean(0)).pow(2).sum(1)  # [N]
    n = g.shape[0]
    var = float(dev.sum() / (n - 1))
    se = float(dev.std() / math.sqrt(n) * n / (n - 1)) if n > 1 else math.nan
    return var, se


def _variance_cell(
    cfg: CategoricalConfig,
    reference: Path,
    d: datasets.Splits,
    transform: Callable[[Tensor], Tensor] | None,
    *,
    device: torch.device,
) -> Callable[[Path], dict]:
    def run_cell(folder: Path) -> dict:
        out: dict[str, dict[str, list[float]]] = {}
        x = d.train[: cfg.grad_batch].to(device)
        if transform is not None:
            torch.manual_seed(0)
            x = transform(x)
        for point in ("init", "end"):
            state = load_checkpoint(reference / f"shared-{point}.pt", device)
            for name in CATEGORICAL_ESTIMATORS:
                m = _model(cfg, name, d.train.shape[-1], 0).to(device)
                m.load_state_dict(state, strict=False)
                _train_estimator_state(m, d.train.to(device), cfg, transform)
                m.eval()
                torch.manual_seed(1)
                out.setdefault(name, {})[point] = list(gradient_variance(m, x, cfg.grad_samples))
        return {"variance": out, "grad_batch": cfg.grad_batch, "grad_samples": cfg.grad_samples}

    return run_cell


def _train_estimator_state(
    m: CategoricalVAE, train: Tensor, cfg: CategoricalConfig, transform: Callable[[Tensor], Tensor] | None
) -> None:
    """Train the estimator's own parameters and running statistics with the model frozen."""
    params = list(m.estimator.parameters())
    if not params and not list(m.estimator.buffers()):
        return
    opt = torch.optim.Adam(params, lr=1e-3) if params else None
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    m.train()
    for _ in range(cfg.cv_steps):
        idx = torch.randint(train.shape[0], (cfg.batch_size,), generator=gen).to(train.device)
        xb = train[idx] if transform is None else transform(train[idx])
        m.zero_grad(set_to_none=True)
        m.loss(xb).backward()
        if opt is not None:
            opt.step()
    m.zero_grad(set_to_none=True)


def run(
    cfg: CategoricalConfig, out: Path, *, seeds: int = 3, device: str = "auto", progress: bool = False
) -> tuple[dict[str, list[dict]], dict]:
    """Train every estimator for ``seeds`` seeds and measure the variances; cells are read back when finished.

    Returns:
        ``(results, variance)``: per estimator the list of per-seed results, and the
        variance cell's result.
    """
    dev = resolve_device(device)
    d, transform = _data(cfg)
    config = dataclasses.asdict(cfg)
    results: dict[str, list[dict]] = {}
    for seed in range(seeds):
        for name in CATEGORICAL_ESTIMATORS:
            reference = name == "rloo" and seed == 0
            fn = _train_cell(
                cfg, name, seed, d, transform, device=dev, progress=progress, reference=reference
            )
            results.setdefault(name, []).append(
                cell(out, f"{name}-seed{seed}", fn, config={**config, "estimator": name, "seed": seed})
            )
    ref = out / results["rloo"][0]["folder"]
    variance = cell(
        out,
        "variance",
        _variance_cell(cfg, ref, d, transform, device=dev),
        config={**config, "reference": ref.name},
    )
    return results, variance


def _mean_se(values: list[float], digits: int = 2) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    se = statistics.stdev(values) / math.sqrt(len(values))
    return f"{statistics.mean(values):.{digits}f} ± {se:.{digits}f}"


def report(cfg: CategoricalConfig, results: dict[str, list[dict]], variance: dict, *, seeds: int) -> str:
    """The Markdown table of :func:`run`'s results."""
    rows = []
    for name, rs in results.items():
        v = variance["variance"][name]
        rows.append(
            [
                name,
                f"{rs[0]['num_samples']} ({rs[0]['evaluations_per_step']})",
                _mean_se([r["train_elbo"] for r in rs]),
                _mean_se([r["val_elbo"] for r in rs]),
                _mean_se([r["test_log_px"] for r in rs]),
                f"{v['init'][0]:.3g} ± {v['init'][1]:.2g}",
                f"{v['end'][0]:.3g} ± {v['end'][1]:.2g}",
                f"{statistics.mean(r['seconds_train'] for r in rs):.0f}",
            ]
        )
    D, K = cfg.latents, cfg.classes
    return (
        f"Categorical VAE on {cfg.dataset}, {D} × {K} latents, hidden {list(cfg.hidden)} (tanh), "
        f"E = {cfg.evaluations} decoder evaluations per data point per step, batch {cfg.batch_size}, "
        f"Adam lr {cfg.lr}, {cfg.epochs} epochs, τ = {cfg.temperature}; mean ± SE over {seeds} seed(s); "
        f"ELBOs with 10 samples, test log p(x) with K = {cfg.eval_samples}; encoder-gradient variance "
        f"(trace, ± SE over {variance['grad_samples']} estimates) on {variance['grad_batch']} training "
        "points at the initialisation and the end of RLOO's seed-0 run:\n"
        + table(
            [
                "estimator",
                "S (evaluations)",
                "train ELBO",
                "val ELBO",
                "test log p(x)",
                "Var at init",
                "Var at end",
                "train seconds",
            ],
            rows,
        )
    )


def categorical(args: argparse.Namespace) -> str:
    """The ``categorical`` subcommand of :mod:`scg.models.experiments` (``--epochs``, ``--lr``, ``--grad-samples``)."""
    full = getattr(args, "full", False)
    base = SMOKE if args.smoke else FULL if full else CPU
    cfg = dataclasses.replace(
        base,
        epochs=base.epochs if args.smoke else args.epochs,
        lr=args.lr,
        grad_samples=base.grad_samples if args.smoke else args.grad_samples,
    )
    out = Path(args.out) / ("categorical-smoke" if args.smoke else f"categorical-{cfg.dataset}")
    results, variance = run(cfg, out, seeds=args.seeds, device=args.device, progress=not args.quiet)
    return report(cfg, results, variance, seeds=args.seeds)


def main(argv: list[str] | None = None) -> None:
    """``python -m scg.models.experiments_categorical [--full]``: the experiment with its own defaults."""
    p = argparse.ArgumentParser(
        prog="python -m scg.models.experiments_categorical", description=__doc__.split("\n")[0]
    )
    p.add_argument("--full", action="store_true", help="the GPU size (MNIST 5k, 20 × 10 latents)")
    p.add_argument("--out", default="runs/models")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--grad-samples", type=int, default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    base = FULL if args.full else CPU
    for key in ("epochs", "lr", "grad_samples"):
        if getattr(args, key) is None:
            setattr(args, key, getattr(base, key))
    torch.set_num_threads(args.threads)
    try:
        print(categorical(args))
    except KeyboardInterrupt:
        print("categorical: interrupted; run the same command again to resume.", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
