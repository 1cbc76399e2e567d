r"""``discrete-vae`` — encoder-gradient variance over training for each discrete estimator, at equal cost.

A sigmoid belief net VAE (:class:`scg.models.DiscreteVAE`: Bernoulli latents,
linear :math:`σ(xW + c)` encoder and decoder) on scikit-learn's binarised 8×8
digits (1000 training images) is trained with Adam by each estimator of the
gradient of :math:`\mathrm{ELBO}(x) = E_{q_φ(b|x)}[\log p_θ(x, b) − \log q_φ(b|x)]`.

**Equal cost.** Every estimator gets the same number E of evaluations of f (the
decoder's :math:`\log p_θ(x, b)`) per data point per step: S = E / cost with cost 1
for REINFORCE (+ moving average), NVIL, RLOO, VIMCO (K = E samples) and
Gumbel-softmax, 2 for DisARM (S = E/2 antithetic pairs), 3 for RELAX (S = E/3:
f(b) plus the control variate at z and z̃). E must be a multiple of 6.

At checkpoints during training the study draws R independent estimates of the
gradient of the mean loss over a fixed batch of training images w.r.t. the
**encoder** parameters φ, vectorised with :func:`scg.diagnostics.gradient_samples`
(``torch.func.vmap``; running baselines frozen; a loop of ``backward()`` only if the
model is not traceable — the ``engine`` column says which ran), and records

* ``var_sum`` :math:`= \sum_p \mathrm{Var}(\hat g_p)` (trace of the covariance);
* ``var_projection`` :math:`= \mathrm{Var}(u^\top \hat g)` for one fixed random unit vector u;
* ``mean_sq_norm``: an unbiased estimate of :math:`‖E\hat g‖^2` (:math:`‖\bar g‖^2 − \mathrm{var\_sum}/R`);
* ``relative_variance`` = var_sum / mean_sq_norm (scale-free: NVIL divides its
  signal by a running standard deviation, which rescales its gradient and variance);

and the training-set ELBO (``bound`` with ``elbo_samples`` samples per image).
Gumbel-softmax is biased: its variance is around its own mean. VIMCO's gradient is of
the K-sample bound, a different objective; its ELBO is the ordinary one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

import scg
from scg.models import DISCRETE_ESTIMATORS, DiscreteVAE
from scg.models.data import digits
from scg.studies.base import CellContext, Study

__all__ = ["DiscreteVAEConfig", "DiscreteVAEStudy"]


@dataclass(frozen=True)
class DiscreteVAEConfig:
    """Configuration; defaults are the CPU size (a few minutes); :meth:`DiscreteVAEStudy.full` the GPU size.

    Attributes:
        estimators: names from :data:`scg.models.DISCRETE_ESTIMATORS`.
        evaluations: E, evaluations of f per data point per step (a multiple of 6).
        z_dim: number of binary latents (200 in the papers).
        hidden: deterministic hidden layers (``()`` = linear SBN).
        epochs: passes over the 1000 training images.
        batch_size: images per step.
        lr: Adam learning rate.
        temperature: Gumbel-softmax temperature.
        variance_points: evenly spaced checkpoints (incl. step 0 and the last step).
        elbo_points: evenly spaced steps where the training ELBO is estimated.
        grad_estimates: R, gradient estimates per checkpoint.
        grad_batch: size of the fixed batch of training images for the variance.
        elbo_samples: samples per image for the training ELBO.
        init_seed: seed of the initial encoder/decoder/prior, shared by all estimators.
    """

    estimators: tuple[str, ...] = tuple(DISCRETE_ESTIMATORS)
    evaluations: int = 6
    z_dim: int = 200
    hidden: tuple[int, ...] = ()
    epochs: int = 40
    batch_size: int = 50
    lr: float = 1e-3
    temperature: float = 0.5
    variance_points: int = 6
    elbo_points: int = 21
    grad_estimates: int = 200
    grad_batch: int = 100
    elbo_samples: int = 5
    init_seed: int = 0


class _Loss(nn.Module):
    """``forward(x)`` = the model's mean training loss (so torch.func.functional_call can call it)."""

    def __init__(self, model: DiscreteVAE) -> None:
        super().__init__()
        self.m = model

    def forward(self, x: Tensor) -> Tensor:
        return self.m.objective(x).mean()


def _points(steps: int, n: int) -> set[int]:
    return {round(i * steps / max(n - 1, 1)) for i in range(n)} | {0, steps}


def encoder_gradients(model: DiscreteVAE, x: Tensor, num: int) -> tuple[Tensor, str]:
    """``[num, P]`` independent estimates of ∇_φ of the mean loss on x, and the engine used (vmap or loop)."""
    wrapper = _Loss(model)
    params = {f"m.encoder.{k}": v.detach() for k, v in model.encoder.named_parameters()}
    was = model.training
    model.eval()  # running baselines frozen while measuring
    try:
        try:
            g = scg.diagnostics.gradient_samples(
                lambda p: torch.func.functional_call(wrapper, p, (x,), strict=False), params, num,
                chunk_size=max(1, min(num, 50)))
            return g, "vmap"
        except (RuntimeError, NotImplementedError):
            rows = []
            enc = list(model.encoder.parameters())
            for _ in range(num):
                grads = torch.autograd.grad(wrapper(x), enc)
                rows.append(torch.cat([t.reshape(-1) for t in grads]))
            return torch.stack(rows), "loop"
    finally:
        model.train(was)


class DiscreteVAEStudy(Study):
    """Gradient variance over training of every discrete estimator on the digits SBN, equal f evaluations."""

    name = "discrete-vae"
    description = "discrete-latent VAE (digits SBN): encoder gradient variance over training, equal cost in f"
    reproduces = ("Mnih & Rezende 2016, Tucker et al. 2017, Grathwohl et al. 2018, Dong et al. 2020: "
                  "RLOO/VIMCO/DisARM/RELAX far below REINFORCE+MA at equal cost")
    time = {"smoke": "5 s", "default": "4 min on 2 CPU cores (40 epochs)", "full": "GPU (300 epochs)"}
    Config = DiscreteVAEConfig

    def smoke(self) -> DiscreteVAEConfig:
        return DiscreteVAEConfig(z_dim=8, epochs=1, batch_size=250, variance_points=2, elbo_points=2,
                                 grad_estimates=8, grad_batch=10, elbo_samples=1)

    def full(self) -> DiscreteVAEConfig:
        """GPU size: 300 epochs (6000 steps), 1000 gradient estimates at each of 11 checkpoints."""
        return DiscreteVAEConfig(epochs=300, grad_estimates=1000, variance_points=11)

    def cells(self, cfg: DiscreteVAEConfig) -> list[dict[str, Any]]:
        bad = [e for e in cfg.estimators if e not in DISCRETE_ESTIMATORS]
        if bad:
            raise ValueError(f"unknown estimator(s) {bad} for discrete-vae; valid estimators: "
                             f"{', '.join(DISCRETE_ESTIMATORS)}.")
        if cfg.evaluations < 6 or cfg.evaluations % 6:
            raise ValueError(f"`evaluations` must be a positive multiple of 6 (DisARM costs 2, RELAX 3, "
                             f"RLOO/VIMCO need S >= 2); got {cfg.evaluations}.")
        if cfg.grad_estimates < 2 or cfg.epochs < 1 or cfg.grad_batch < 1:
            raise ValueError("`grad_estimates` must be >= 2, `epochs` and `grad_batch` >= 1; got "
                             f"{cfg.grad_estimates}, {cfg.epochs}, {cfg.grad_batch}.")
        return [{"estimator": e} for e in cfg.estimators]

    def run_cell(self, cfg: DiscreteVAEConfig, cell: Mapping[str, Any], ctx: CellContext) -> list[dict[str, Any]]:
        name = cell["estimator"]
        dev = ctx.device
        train = digits().train.to(dev)
        fixed = train[: cfg.grad_batch]
        m = DiscreteVAE(train.shape[1], cfg.z_dim, cfg.hidden, estimator=name, evaluations=cfg.evaluations,
                        temperature=cfg.temperature)
        with torch.random.fork_rng(devices=[]):  # the same initial encoder/decoder/prior for every estimator
            torch.manual_seed(cfg.init_seed)
            ref = DiscreteVAE(train.shape[1], cfg.z_dim, cfg.hidden, estimator="reinforce", evaluations=6)
        for part in ("encoder", "decoder", "prior"):
            getattr(m, part).load_state_dict(getattr(ref, part).state_dict())
        m = m.to(dev)
        opt = torch.optim.Adam(m.parameters(), lr=cfg.lr)
        P = sum(p.numel() for p in m.encoder.parameters())
        u = torch.randn(P, generator=torch.Generator().manual_seed(12345), dtype=torch.float64)
        u = (u / u.norm()).to(dev)  # the same projection for every estimator
        per_epoch = math.ceil(train.shape[0] / cfg.batch_size)
        steps = cfg.epochs * per_epoch
        var_at, elbo_at = _points(steps, cfg.variance_points), _points(steps, cfg.elbo_points)
        base = {"estimator": name, "status": "ok", "evaluations": cfg.evaluations, "num_samples": m.num_samples,
                "unbiased": bool(getattr(m.estimator, "unbiased", True))}
        rows: list[dict[str, Any]] = []
        step, perm = 0, torch.randperm(train.shape[0], generator=ctx.generator, device=dev)
        while True:
            if step in elbo_at:
                m.eval()
                with torch.no_grad():
                    elbo = float(m.bound(train, num_samples=cfg.elbo_samples).mean())
                m.train()
                rows.append({**base, "kind": "elbo", "step": step, "epoch": step / per_epoch, "train_elbo": elbo})
            if step in var_at:
                g, engine = encoder_gradients(m, fixed, cfg.grad_estimates)
                g = g.detach().double()
                R = g.shape[0]
                mean = g.mean(0)
                var_sum = float(g.var(0).sum())
                msq = float(mean.pow(2).sum()) - var_sum / R
                rows.append({**base, "kind": "variance", "step": step, "epoch": step / per_epoch, "engine": engine,
                             "var_sum": var_sum, "var_projection": float((g @ u).var()),
                             "mean_sq_norm": msq, "relative_variance": var_sum / msq if msq > 0 else float("nan"),
                             "grad_estimates": R, "parameters": P})
            if step == steps:
                break
            b = step % per_epoch
            if b == 0 and step > 0:
                perm = torch.randperm(train.shape[0], generator=ctx.generator, device=dev)
            xb = train[perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]]
            opt.zero_grad(set_to_none=True)
            m.loss(xb, step=step).backward()
            opt.step()
            step += 1
        return rows

    def plot(self, rows: Sequence[Mapping[str, Any]], cfg: DiscreteVAEConfig, out_dir: Path) -> list[Path]:
        from scg.studies.discrete_vae_plot import plot_discrete

        return plot_discrete(rows, cfg, Path(out_dir))
