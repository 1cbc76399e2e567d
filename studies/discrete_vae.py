r"""``discrete-vae`` — encoder-gradient variance of every discrete estimator at shared parameters, equal cost.

A sigmoid belief net VAE (:class:`scg.models.DiscreteVAE`: Bernoulli latents,
linear :math:`σ(xW + c)` encoder and decoder) on scikit-learn's binarised 8×8
digits (1000 training images). The gradient is of
:math:`\mathrm{ELBO}(x) = E_{q_φ(b|x)}[\log p_θ(x, b) − \log q_φ(b|x)]`.

**Shared parameters.** One *reference* trajectory per seed is trained with Adam by
one estimator (``reference``, RLOO by default). At each checkpoint of it, every
estimator's gradient is measured at those same encoder/decoder/prior parameters, so
the estimators are compared on one and the same problem (each on its own training
path would compare them at different parameters, where ‖E ĝ‖² differs). Estimators
with state of their own (REINFORCE's moving average, NVIL's learned baseline and
normalisation, RELAX's control variate) follow the reference trajectory as
*shadows*: at every step they see the same minibatch and update only their own
state (ψ by Adam on its own gradient, running averages by their forward pass); the
shared parameters are stepped by the reference estimator alone.

**Equal cost.** Every estimator gets the same number E of evaluations of f (the
decoder's :math:`\log p_θ(x, b)`) per data point: S = E / cost with cost 1 for
REINFORCE + moving average (``moving_average``), NVIL, RLOO, VIMCO (K = E samples)
and Gumbel-softmax, 2 for DisARM (S = E/2 antithetic pairs), 3 for RELAX (S = E/3:
f(b) plus the control variate at z and z̃). E must be a multiple of 6.

At each checkpoint the study draws R independent estimates of the gradient of the
mean loss over a fixed batch of training images w.r.t. the **encoder** parameters φ
with every estimator, vectorised with :func:`scg.diagnostics.gradient_samples`
(``torch.func.vmap``; running state frozen; a loop of ``backward()`` only if the
model is not traceable — the ``engine`` column says which ran), and records

* ``var_sum`` :math:`= \sum_p \mathrm{Var}(\hat g_p)` (trace of the covariance);
* ``var_projection`` :math:`= \mathrm{Var}(u^\top \hat g)` for one fixed random unit vector u;
* ``mean_sq_norm``: an unbiased estimate of :math:`‖E\hat g‖^2` from the estimator's own draws
  (:math:`‖\bar g‖^2 − \mathrm{var\_sum}/R`);
* ``mean_sq_norm_shared``: :math:`‖∇_φ(−\mathrm{ELBO})‖^2` estimated without bias from the
  estimators that are unbiased for it (REINFORCE + moving average, RLOO, DisARM, RELAX) as the mean of
  :math:`\bar g_a^\top \bar g_b` over pairs a ≠ b (independent draws);
* ``relative_variance`` = var_sum / ‖E ĝ‖² (scale-free): over ``mean_sq_norm_shared``
  for those four (so their ratios are ratios of variances), over the estimator's own
  ``mean_sq_norm`` for NVIL (its normalisation rescales the gradient by a positive
  scalar), VIMCO (the gradient of the K-sample bound, another objective) and
  Gumbel-softmax (biased: variance around its own mean); ``norm`` says which;
* ``param_checksum``: the sum of all encoder/decoder/prior parameters in float64, equal for
  every estimator at a checkpoint (they are measured at the same parameters);

and the training-set ELBO of the reference trajectory (``bound`` with
``elbo_samples`` samples per image). :func:`summary` averages over seeds with
standard errors; :func:`summary_table` writes the README's table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import scg
from scg.estimators import registry
from scg.models import DISCRETE_ESTIMATORS, DiscreteVAE
from scg.models.data import digits
from scg.studies.base import CellContext, Study

__all__ = [
    "DiscreteVAEConfig",
    "DiscreteVAEStudy",
    "SAME_MEAN",
    "shared_sq_norm",
    "summary",
    "summary_table",
]


@dataclass(frozen=True)
class DiscreteVAEConfig:
    """Configuration; defaults are the CPU size (a few minutes); :meth:`DiscreteVAEStudy.full` the GPU size.

    Attributes:
        estimators: names from :mod:`scg.estimators.registry` that apply to Bernoulli latents, or
            ``"vimco"`` (the VIMCO objective); all measured at every checkpoint. Default:
            :data:`scg.models.DISCRETE_ESTIMATORS`.
        reference: the estimator that trains the shared trajectory.
        seeds: independent reference trajectories (initialisation, data order, draws).
        evaluations: E, evaluations of f per data point per step (a multiple of 6).
        z_dim: number of binary latents (200 in the papers).
        hidden: deterministic hidden layers (``()`` = linear SBN).
        epochs: passes over the 1000 training images.
        batch_size: images per step.
        lr: Adam learning rate (of the shared parameters and of every shadow's own parameters).
        temperature: Gumbel-softmax temperature.
        variance_points: evenly spaced checkpoints (incl. step 0 and the last step).
        elbo_points: evenly spaced steps where the training ELBO is estimated.
        grad_estimates: R, gradient estimates per checkpoint and estimator.
        grad_batch: size of the fixed batch of training images for the variance.
        elbo_samples: samples per image for the training ELBO.
        init_seed: seed of the initial encoder/decoder/prior of seed 0 (seed s uses ``init_seed + s``).
    """

    estimators: tuple[str, ...] = tuple(DISCRETE_ESTIMATORS)
    reference: str = "rloo"
    seeds: int = 3
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


#: estimators whose expected gradient is ∇(−ELBO) itself (unbiased, same objective, no rescaling).
SAME_MEAN = ("moving_average", "score_function", "reinforce", "rloo", "disarm", "arm", "relax")


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
                lambda p: torch.func.functional_call(wrapper, p, (x,), strict=False),
                params,
                num,
                chunk_size=max(1, min(num, 50)),
            )
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


def _checksum(model: DiscreteVAE) -> float:
    parts = [model.encoder, model.decoder, model.prior]
    return float(sum(p.detach().double().sum() for m in parts for p in m.parameters()))


def shared_sq_norm(means: Mapping[str, Tensor]) -> float:
    """Unbiased ‖μ‖² from independent unbiased means ḡ_a of μ: the mean of ḡ_a·ḡ_b over pairs a ≠ b.

    nan with fewer than two means.
    """
    names = list(means)
    dots = [float(means[a] @ means[b]) for i, a in enumerate(names) for b in names[i + 1 :]]
    return sum(dots) / len(dots) if dots else float("nan")


class _Shadow:
    """An estimator following the reference trajectory: updates its own state only, at the shared parameters."""

    def __init__(self, model: DiscreteVAE, lr: float) -> None:
        self.model = model
        self.params = [p for p in model.estimator.parameters()] if model.estimator is not None else []
        self.opt = torch.optim.Adam(self.params, lr=lr) if self.params else None

    def step(self, x: Tensor, step: int) -> None:
        if self.opt is None:
            with torch.no_grad():
                self.model.loss(x, step=step)  # running averages update in the forward pass
            return
        grads = torch.autograd.grad(self.model.loss(x, step=step), self.params, allow_unused=True)
        for p, g in zip(self.params, grads, strict=False):
            p.grad = g
        self.opt.step()


def _has_state(model: DiscreteVAE) -> bool:
    est = model.estimator
    return est is not None and (any(True for _ in est.parameters()) or any(True for _ in est.buffers()))


class DiscreteVAEStudy(Study):
    """Encoder-gradient variance of every discrete estimator at the checkpoints of shared reference trajectories."""

    name = "discrete-vae"
    description = (
        "discrete-latent VAE (digits SBN): encoder gradient variance of every estimator at shared "
        "parameters, equal cost in f, several seeds"
    )
    reproduces = (
        "Mnih & Rezende 2016, Tucker et al. 2017, Grathwohl et al. 2018, Dong et al. 2020: "
        "RLOO/VIMCO/DisARM/RELAX below REINFORCE+MA at equal cost"
    )
    time = {
        "smoke": "10 s",
        "default": "3-4 min on 2 CPU cores with 1 torch thread (3 seeds x 40 epochs)",
        "full": "GPU (300 epochs)",
    }
    Config = DiscreteVAEConfig

    def smoke(self) -> DiscreteVAEConfig:
        return DiscreteVAEConfig(
            z_dim=8,
            epochs=1,
            batch_size=250,
            seeds=2,
            variance_points=2,
            elbo_points=2,
            grad_estimates=8,
            grad_batch=10,
            elbo_samples=1,
        )

    def full(self) -> DiscreteVAEConfig:
        """GPU size: 300 epochs (6000 steps), 5 seeds, 1000 gradient estimates at each of 11 checkpoints."""
        return DiscreteVAEConfig(epochs=300, seeds=5, grad_estimates=1000, variance_points=11)

    def cells(self, cfg: DiscreteVAEConfig) -> list[dict[str, Any]]:
        valid = ["vimco", *(e.name for e in registry.applicable("bernoulli", context=True))]
        aliases = {a: e.name for e in registry.ENTRIES.values() for a in e.aliases}
        bad = [e for e in (*cfg.estimators, cfg.reference) if aliases.get(e, e) not in valid]
        if bad:
            raise ValueError(
                f"unknown estimator(s) {bad} for discrete-vae; valid estimators: {', '.join(valid)}."
            )
        if cfg.evaluations < 6 or cfg.evaluations % 6:
            raise ValueError(
                f"`evaluations` must be a positive multiple of 6 (DisARM costs 2, RELAX 3, "
                f"RLOO/VIMCO need S >= 2); got {cfg.evaluations}."
            )
        if cfg.grad_estimates < 2 or cfg.epochs < 1 or cfg.grad_batch < 1 or cfg.seeds < 1:
            raise ValueError(
                "`grad_estimates` must be >= 2, `epochs`, `grad_batch` and `seeds` >= 1; got "
                f"{cfg.grad_estimates}, {cfg.epochs}, {cfg.grad_batch}, {cfg.seeds}."
            )
        return [{"seed": s} for s in range(cfg.seeds)]

    def run_cell(
        self, cfg: DiscreteVAEConfig, cell: Mapping[str, Any], ctx: CellContext
    ) -> list[dict[str, Any]]:
        seed = int(cell["seed"])
        dev = ctx.device
        train = digits().train.to(dev)
        fixed = train[: cfg.grad_batch]
        with torch.random.fork_rng(devices=[]):  # the initial encoder/decoder/prior of this seed
            torch.manual_seed(cfg.init_seed + seed)
            init = DiscreteVAE.from_name("moving_average", train.shape[1], cfg.z_dim, cfg.hidden)
        names = list(dict.fromkeys((*cfg.estimators, cfg.reference)))
        models: dict[str, DiscreteVAE] = {}
        for e in names:
            m = DiscreteVAE.from_name(
                e,
                train.shape[1],
                cfg.z_dim,
                cfg.hidden,
                evaluations=cfg.evaluations,
                temperature=cfg.temperature,
            )
            for part in (
                "encoder",
                "decoder",
                "prior",
            ):  # one set of modules shared by every estimator
                setattr(m, part, getattr(init, part))
            models[e] = m.to(dev)
        ref = models[cfg.reference]
        shadows = [_Shadow(models[e], cfg.lr) for e in names if e != cfg.reference and _has_state(models[e])]
        opt = torch.optim.Adam(ref.parameters(), lr=cfg.lr)
        P = sum(p.numel() for p in ref.encoder.parameters())
        u = torch.randn(P, generator=torch.Generator().manual_seed(12345), dtype=torch.float64)
        u = (u / u.norm()).to(dev)  # the same projection for every estimator
        per_epoch = math.ceil(train.shape[0] / cfg.batch_size)
        steps = cfg.epochs * per_epoch
        var_at, elbo_at = _points(steps, cfg.variance_points), _points(steps, cfg.elbo_points)
        base = {
            "seed": seed,
            "reference": cfg.reference,
            "status": "ok",
            "evaluations": cfg.evaluations,
        }
        rows: list[dict[str, Any]] = []
        step, perm = 0, torch.randperm(train.shape[0], generator=ctx.generator, device=dev)
        while True:
            if step in elbo_at:
                ref.eval()
                with torch.no_grad():
                    elbo = float(ref.bound(train, num_samples=cfg.elbo_samples).mean())
                ref.train()
                rows.append(
                    {
                        **base,
                        "kind": "elbo",
                        "estimator": cfg.reference,
                        "step": step,
                        "epoch": step / per_epoch,
                        "train_elbo": elbo,
                    }
                )
            if step in var_at:
                rows.extend(
                    self._measure(cfg, models, fixed, u, {**base, "step": step, "epoch": step / per_epoch})
                )
            if step == steps:
                break
            b = step % per_epoch
            if b == 0 and step > 0:
                perm = torch.randperm(train.shape[0], generator=ctx.generator, device=dev)
            xb = train[perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]]
            for sh in shadows:
                sh.step(xb, step)
            opt.zero_grad(set_to_none=True)
            ref.loss(xb, step=step).backward()
            opt.step()
            step += 1
        return rows

    @staticmethod
    def _measure(
        cfg: DiscreteVAEConfig,
        models: Mapping[str, DiscreteVAE],
        fixed: Tensor,
        u: Tensor,
        base: Mapping[str, Any],
    ) -> list[dict[str, Any]]:
        """One row per estimator of ``cfg.estimators``, all at the current shared parameters."""
        out, means = [], {}
        for e in cfg.estimators:
            m = models[e]
            g, engine = encoder_gradients(m, fixed, cfg.grad_estimates)
            g = g.detach().double()
            R = g.shape[0]
            mean = g.mean(0)
            var_sum = float(g.var(0).sum())
            if e in SAME_MEAN:
                means[e] = mean
            out.append(
                {
                    **base,
                    "kind": "variance",
                    "estimator": e,
                    "num_samples": m.num_samples,
                    "unbiased": bool(getattr(m.estimator, "unbiased", True)),
                    "engine": engine,
                    "var_sum": var_sum,
                    "var_projection": float((g @ u).var()),
                    "mean_sq_norm": float(mean.pow(2).sum()) - var_sum / R,
                    "param_checksum": _checksum(m),
                    "grad_estimates": R,
                    "parameters": g.shape[1],
                }
            )
        shared = shared_sq_norm(means)
        for r in out:
            own = r["estimator"] not in SAME_MEAN or not shared > 0
            denom = r["mean_sq_norm"] if own else shared
            r["mean_sq_norm_shared"] = shared
            r["norm"] = "own" if own else "shared"
            r["relative_variance"] = r["var_sum"] / denom if denom > 0 else float("nan")
        return out

    def plot(self, rows: Sequence[Mapping[str, Any]], cfg: DiscreteVAEConfig, out_dir: Path) -> list[Path]:
        from scg.studies.discrete_vae_plot import plot_discrete

        return plot_discrete(rows, cfg, Path(out_dir))


def _mean_se(values: Sequence[float]) -> tuple[float, float, int]:
    v = [x for x in values if math.isfinite(x)]
    n = len(v)
    if n == 0:
        return float("nan"), float("nan"), 0
    mu = sum(v) / n
    se = math.sqrt(sum((x - mu) ** 2 for x in v) / (n - 1) / n) if n > 1 else float("nan")
    return mu, se, n


def summary(rows: Sequence[Mapping[str, Any]], *, against: str | None = None) -> list[dict[str, Any]]:
    """Per checkpoint and estimator, over seeds: relative variance and its ratio ``against`` / estimator.

    ``against`` defaults to ``moving_average`` (REINFORCE + moving average), or to ``reinforce`` in rows
    without it (the checked-in docs/studies/discrete-vae run names REINFORCE + moving average so).

    ``ratio`` is, per seed, ``relative_variance[against] / relative_variance[estimator]`` at the same
    parameters (for two estimators of :data:`SAME_MEAN`, the ratio of their variances); mean ± SE over
    seeds (nan where a seed's relative variance is not finite).
    """
    var = [r for r in rows if r.get("kind") == "variance"]
    by: dict[tuple[int, str], dict[int, Mapping[str, Any]]] = {}
    for r in var:
        by.setdefault((int(r["step"]), str(r["estimator"])), {})[int(r["seed"])] = r
    order = list(dict.fromkeys(str(r["estimator"]) for r in var))
    if against is None:
        against = "moving_average" if "moving_average" in order or "reinforce" not in order else "reinforce"
    out = []
    for step in sorted({k[0] for k in by}):
        for e in order:
            per = by.get((step, e), {})
            ref = by.get((step, against), {})
            rel = _mean_se([float(r["relative_variance"]) for r in per.values()])
            ratio = _mean_se(
                [
                    float(ref[s]["relative_variance"]) / float(r["relative_variance"])
                    for s, r in per.items()
                    if s in ref
                ]
            )
            out.append(
                {
                    "step": step,
                    "estimator": e,
                    "seeds": rel[2],
                    "relative_variance": rel[0],
                    "relative_variance_se": rel[1],
                    "ratio": ratio[0],
                    "ratio_se": ratio[1],
                }
            )
    return out


#: Column labels of the README's tables. The checked-in run (docs/studies/discrete-vae) names
#: REINFORCE + moving average ``reinforce`` and Gumbel-softmax ``gumbel``; its rows keep those labels.
LABELS = {
    "moving_average": "REINFORCE + MA",
    "reinforce": "REINFORCE + MA",
    "score_function": "REINFORCE",
    "nvil": "NVIL",
    "rloo": "RLOO",
    "vimco": "VIMCO",
    "disarm": "DisARM",
    "relax": "RELAX",
    "gumbel_softmax": "Gumbel-softmax (biased)",
    "gumbel": "Gumbel-softmax (biased)",
}


def _fmt(x: float) -> str:
    if not math.isfinite(x):
        return "–"
    if x == 0:
        return "0"
    if abs(x) >= 1e4 or abs(x) < 1e-2:
        m, e = f"{x:.2e}".split("e")
        return f"{m}e{int(e)}"
    return f"{x:.{max(0, 2 - math.floor(math.log10(abs(x))))}f}"


def summary_table(rows: Sequence[Mapping[str, Any]], column: str = "relative_variance") -> str:
    """The README's markdown table of :func:`summary`: a line per checkpoint, ``mean ± SE`` over seeds."""
    summ = summary(rows)
    ests = list(dict.fromkeys(r["estimator"] for r in summ))
    cell = {(r["step"], r["estimator"]): r for r in summ}
    lines = [
        "| step | " + " | ".join(LABELS.get(e, e) for e in ests) + " |",
        "|---|" + "---|" * len(ests),
    ]
    for t in sorted({r["step"] for r in summ}):
        vals = [f"{_fmt(cell[t, e][column])} ± {_fmt(cell[t, e][column + '_se'])}" for e in ests]
        lines.append(f"| {t} | " + " | ".join(vals) + " |")
    return "\n".join(lines)
