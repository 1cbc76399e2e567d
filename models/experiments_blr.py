"""``blr`` experiment: Bayesian logistic regression — ELBO, accuracy and gradient variance per estimator.

Part of ``python -m scg.models.experiments`` (see :mod:`scg.models.experiments`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from scg.models import data as datasets
from scg.models.experiments_cells import cell, table
from scg.models.train import resolve_device

if TYPE_CHECKING:
    from scg.estimators import Estimator
    from scg.models.blr import BayesianLogisticRegression

__all__ = ["blr"]


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

    def run(folder: Path, make: Callable[[], Estimator]) -> dict:
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
        return {
            "elbo": elbos,
            "accuracy": m.accuracy(),
            "variance": variances,
            "evaluations_per_sample": m.estimator.evaluations(m.posterior(), 1),
        }

    results = {
        name: cell(
            out,
            name.replace(" ", "-").replace("(", "").replace(")", "") + f"-seed{args.seed}",
            lambda f, make=make: run(f, make),
            config=vars(args),
        )
        for name, make in estimators.items()
    }
    rows = []
    for name, r in results.items():
        var = r["variance"]
        rows.append(
            [name]
            + [f"{r['elbo'][str(t)]:.2f}" for t in checkpoints[1:]]
            + [f"{100 * r['accuracy']:.1f}%"]
            + [f"{var[str(t)]:.3g}" for t in checkpoints]
            + [str(r["evaluations_per_sample"])]
        )
    return (
        f"Bayesian logistic regression, breast cancer (569 × 31), S = {S} samples, batch 32 (scaled by N/B), "
        f"SGD lr {args.lr} with cosine decay, {steps} steps. Gradient variance: mean over the 62 posterior "
        f"parameters of the variance of one full-data gradient estimate (S = {S}), from {args.grad_samples} "
        "estimates at the listed steps:\n"
        + table(
            ["estimator"]
            + [f"ELBO at step {t}" for t in checkpoints[1:]]
            + ["train accuracy"]
            + [f"Var at step {t}" for t in checkpoints]
            + ["f evals / sample"],
            rows,
        )
    )


def _blr_gradient_variance(m: BayesianLogisticRegression, *, num: int) -> float:
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
