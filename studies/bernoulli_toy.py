r"""``bernoulli-toy``: minimise :math:`E_{b \sim \mathrm{Bern}(σ(φ))}[(b − t)^2]`, t ∈ {0.45, 0.49, 0.499}.

The toy of Tucker et al. (2017), Grathwohl et al. (2018), Yin & Zhou (2019) and Dong
et al. (2020). The exact gradient is :math:`σ(φ)(1 − σ(φ))(1 − 2t)`: tiny for t near ½,
so only low-variance estimators see its sign. Since :math:`(1−t)^2 > t^2` for t < ½,
the minimiser is :math:`σ(φ) → 0` (b = 0 always). (Stated as a maximisation, as some
papers do, the optimum is σ(φ) → 1; the variances are the same.)

Part 1 (``part = "variance"``): single-estimate variance at φ = 0 for REINFORCE,
REINFORCE with a moving-average baseline (warmed up on 200 calls, then frozen), RLOO
(S = 2), ARM, DisARM, RELAX (control variate trained for ``cv_warmup`` steps at φ = 0,
then frozen) and
Gumbel-softmax (τ = 0.5, biased): exact values from :func:`scg.testing.exact_moments`
next to N sampled estimates and REFERENCES.md's values. ARM is not a library
estimator: :class:`ARM` below implements it as an :class:`scg.Estimator` (a uniform
law with its breakpoints), so the exact harness checks it too.

Part 2 (``part = "train"``): R independent replicas φ ∈ ℝ^R (a batch dimension of
``Bernoulli(logits=φ)``: one surrogate, one backward per step for all replicas) trained
with Adam from φ = 0 (lr 0.1 with a cosine decay over 4000 steps; with a constant lr,
Adam's normalised steps stay ≈ lr while the true gradient vanishes and some RELAX replicas
drifted back up late in training); also NVIL (``chain(MovingAverage(),
Learned(nn.Linear), Normalize())``). RELAX uses RELAX's free-form control variate
(:class:`scg.estimators.NeuralControlVariate`: REBAR's :math:`η f(σ(z/λ))` plus a 1-16-1 tanh
MLP of z); REBAR's term alone (η, λ) raised the exact variance at φ = 0 above REINFORCE's
on every point of a grid η ∈ {½, 1, 2}, λ ∈ {0.1, ½, 1, 2} (0.0223 at the initial η = 1,
λ = ½, against 0.0156), and RELAX with it did not converge for t = 0.499 in a first run.
The control-variate parameters (NVIL's baseline, RELAX's η, λ and MLP) start at zero (NVIL
starts as REINFORCE + moving average, RELAX as REINFORCE) and are stepped by the same
optimiser with lr ``cv_lr`` = 0.01. The ``exact`` rows follow Adam on the exact gradient. The figure
shows P(b = 1) = σ(φ) against the step: unbiased estimators go to 0; Gumbel-softmax
minimises the relaxed objective instead and stays near σ(φ) ≈ ½.

References:
    Tucker et al., "REBAR", NeurIPS 2017. https://arxiv.org/abs/1703.07370
    Grathwohl et al., "Backpropagation through the Void", ICLR 2018. https://arxiv.org/abs/1711.00123
    Yin & Zhou, "ARM: Augment-REINFORCE-Merge Gradient for Stochastic Binary Networks", ICLR 2019.
    https://arxiv.org/abs/1807.11143
    Dong, Mnih & Tucker, "DisARM", NeurIPS 2020. https://arxiv.org/abs/2006.10680
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Bernoulli, Distribution, Independent

import scg
from scg.baselines import LeaveOneOut, Learned, MovingAverage, Normalize, chain
from scg.estimators import NeuralControlVariate
from scg.laws import Law, StandardUniform
from scg.studies.base import CellContext, Study
from scg.studies.gaussian import sample_until
from scg.studies.problems import Problem

__all__ = ["ARM", "BernoulliToyConfig", "BernoulliToy", "REFERENCE", "build_estimator", "ESTIMATORS"]

#: REFERENCES.md: single-draw variances at φ = 0 (exact).
REFERENCE: dict[float, dict[str, float]] = {
    0.49: {"reinforce": 1.5638e-2, "rloo": 2.5e-5, "arm": 8.333e-6, "disarm": 0.0},
    0.499: {"reinforce": 1.5625e-2, "rloo": 2.5e-7, "arm": 8.333e-8, "disarm": 0.0},
}


def _bernoulli(dist: Distribution, name: str) -> Bernoulli:
    if not isinstance(dist, Distribution):
        raise TypeError(f"`dist` must be a torch.distributions.Distribution; got {type(dist).__name__}.")
    base = dist
    while isinstance(base, Independent):
        base = base.base_dist
    if not isinstance(base, Bernoulli):
        raise TypeError(f"`dist` must be Bernoulli (optionally Independent) for {name}; got {type(base).__name__}.")
    return base


class ARM(scg.Estimator):
    r"""ARM (Augment-REINFORCE-Merge) for Bernoulli latents :math:`b_d \sim \mathrm{Bern}(σ(φ_d))`.

    .. math::
        \hat g_{φ_d} = \big(f(1[u > σ(−φ)]) − f(1[u < σ(φ)])\big)\,(u_d − ½), \qquad u \sim U(0, 1)^D

    Requires: Bernoulli (optionally ``Independent``); f need not be differentiable.

    Properties: unbiased; the two evaluations are antithetic Bernoulli(σ(φ)) draws
    (the value is their mean); DisARM integrates u out given the pair and has lower
    variance. At φ = 0 with one Bernoulli the variance is :math:`(f(1) − f(0))^2 / 48`.
    2 evaluations of f per sample. The law of u carries the breakpoints σ(±φ), where the
    integrand jumps, so :func:`scg.testing.exact_moments` integrates it exactly.

    References:
        Yin & Zhou, "ARM: Augment-REINFORCE-Merge Gradient for Stochastic Binary Networks",
        ICLR 2019. https://arxiv.org/abs/1807.11143
    """

    def check(self, dist: Distribution) -> None:
        _bernoulli(dist, "ARM")

    def evaluations(self, dist: Distribution, num_samples: int) -> int:
        return 2 * num_samples

    def laws(self, dist: Distribution, num_samples: int) -> dict[str, Law]:
        base = _bernoulli(dist, "ARM")
        shape = (num_samples, *dist.batch_shape, *dist.event_shape)
        theta = torch.sigmoid(base.logits.detach()).expand(shape)
        points = torch.stack([torch.minimum(theta, 1 - theta), torch.maximum(theta, 1 - theta)], dim=-1)
        return {"u": StandardUniform(shape=shape, dtype=theta.dtype, device=theta.device, points=points)}

    def surrogate(self, f: Callable[[Tensor], Tensor], dist: Distribution, draws: dict[str, Tensor], *,
                  context: Optional[Tensor] = None) -> Tensor:
        base = _bernoulli(dist, "ARM")
        u = draws["u"]
        S = u.shape[0]
        event_dims = tuple(range(-len(dist.event_shape), 0))
        phi = base.logits.expand(u.shape[1:])
        theta = torch.sigmoid(phi.detach())
        b_up = (u > 1 - theta).to(u.dtype)  # 1[u > σ(−φ)]
        b_down = (u < theta).to(u.dtype)  # 1[u < σ(φ)]
        values = f(torch.cat([b_up, b_down]))
        expected = (2 * S, *dist.batch_shape)
        if tuple(values.shape) != expected:
            raise ValueError(f"`f` must return [S, *batch_shape] = {list(expected)}; got {list(values.shape)}.")
        diff = values[:S] - values[S:]
        diff = diff.reshape(*diff.shape, *([1] * len(event_dims)))
        term = (phi - phi.detach()) * diff.detach() * (u - 0.5)
        if event_dims:
            term = term.sum(event_dims)
        return values.mean(0) + term.mean(0)


#: Estimator names in figure order; ``build_estimator`` makes them.
ESTIMATORS: tuple[str, ...] = ("reinforce", "moving_average", "rloo", "nvil", "arm", "disarm", "relax",
                               "gumbel_softmax")
LABELS: dict[str, str] = {
    "reinforce": "REINFORCE", "moving_average": "REINFORCE + moving average", "rloo": "RLOO",
    "nvil": "NVIL", "arm": "ARM", "disarm": "DisARM", "relax": "RELAX", "gumbel_softmax": "Gumbel-softmax (τ=0.5)",
    "exact": "exact gradient",
}


class _Surrogate(nn.Module):
    """RELAX's free-form part :math:`r_ρ(z)`: a 1-16-1 tanh MLP of the logistic sample z, ``[S, R] -> [S, R]``."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, 16), nn.Tanh(), nn.Linear(16, 1))
        nn.init.zeros_(self.net[2].weight)
        nn.init.zeros_(self.net[2].bias)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z.unsqueeze(-1)).squeeze(-1)


def build_estimator(name: str, *, temperature: float = 0.5) -> tuple[scg.Estimator, int]:
    """The estimator called ``name`` and its minimum number of samples per estimate."""
    if name == "reinforce":
        return scg.ScoreFunction(), 1
    if name == "moving_average":
        return scg.ScoreFunction(baseline=MovingAverage(0.9)), 1
    if name == "rloo":
        return scg.ScoreFunction(baseline=LeaveOneOut()), 2
    if name == "nvil":
        net = nn.Linear(1, 1)
        nn.init.zeros_(net.weight)
        nn.init.zeros_(net.bias)
        return scg.ScoreFunction(baseline=chain(MovingAverage(0.9), Learned(net), Normalize())), 1
    if name == "arm":
        return ARM(), 1
    if name == "disarm":
        return scg.DisARM(), 1
    if name == "relax":
        cv = NeuralControlVariate(_Surrogate())
        with torch.no_grad():
            cv.rebar.eta.zero_()  # start as REINFORCE: c(z) = 0
        return scg.RELAX(control_variate=cv), 1
    if name == "gumbel_softmax":
        return scg.GumbelSoftmax(temperature=temperature), 1
    raise ValueError(f"unknown estimator {name!r}; valid estimators: {', '.join(ESTIMATORS)}.")


def objective(p: Tensor, t: float) -> Tensor:
    """Exact :math:`E[(b − t)^2] = t^2 + p (1 − 2t)` at P(b = 1) = p."""
    return t * t + p * (1 - 2 * t)


@dataclass(frozen=True)
class BernoulliToyConfig:
    """Configuration of ``bernoulli-toy`` (defaults: the CPU default run).

    Attributes:
        targets: values of t.
        variance_estimators: part 1 (variance at φ = 0); ``nvil`` is training-only.
        train_estimators: part 2 (training curves).
        num_estimates: N single estimates per variance row.
        num_samples: S per estimate and per step (RLOO uses max(S, 2)).
        replicas: R independent φ's trained at once.
        steps: optimiser steps.
        lr: Adam learning rate of φ.
        cv_lr: Adam learning rate of the control-variate parameters (NVIL's baseline network,
            RELAX's η, λ and MLP).
        schedule: ``cosine`` (both learning rates decay to 0 over ``steps``) or ``constant``.
        cv_warmup: part 1: Adam steps that train RELAX's control variate at φ = 0 (its
            variance objective) before its variance is measured.
        record_every: steps between recorded points of the curves.
        temperature: Gumbel-softmax temperature τ.
        converged_p: a replica counts as converged when P(b = 1) ≤ this (the optimum is 0).
        dtype: ``float64`` or ``float32``.
    """

    targets: tuple[float, ...] = (0.45, 0.49, 0.499)
    variance_estimators: tuple[str, ...] = ("reinforce", "moving_average", "rloo", "arm", "disarm", "relax",
                                            "gumbel_softmax")
    train_estimators: tuple[str, ...] = ESTIMATORS
    num_estimates: int = 1 << 18
    num_samples: int = 1
    replicas: int = 32
    steps: int = 4000
    lr: float = 0.1
    cv_lr: float = 0.01
    cv_warmup: int = 500
    schedule: str = "cosine"
    record_every: int = 40
    temperature: float = 0.5
    converged_p: float = 0.05
    dtype: str = "float64"

    def __post_init__(self) -> None:
        for name in ("num_estimates", "num_samples", "replicas", "steps", "record_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be an int >= 1; got {value!r}.")
        if isinstance(self.cv_warmup, bool) or not isinstance(self.cv_warmup, int) or self.cv_warmup < 0:
            raise ValueError(f"`cv_warmup` must be an int >= 0; got {self.cv_warmup!r}.")
        if self.num_estimates < 2:
            raise ValueError(f"`num_estimates` must be >= 2 to estimate a variance; got {self.num_estimates}.")
        for t in self.targets:
            if not 0.0 < t < 1.0:
                raise ValueError(f"`targets` must lie in (0, 1); got {t!r}.")
        for name in (*self.variance_estimators, *self.train_estimators):
            if name not in ESTIMATORS:
                raise ValueError(f"unknown estimator {name!r}; valid estimators: {', '.join(ESTIMATORS)}.")
        if "nvil" in self.variance_estimators:
            raise ValueError("`variance_estimators` cannot include 'nvil' (its learned baseline is trained "
                             "during training only); use train_estimators.")
        if not self.lr > 0 or not self.cv_lr > 0 or not self.temperature > 0:
            raise ValueError(f"`lr`, `cv_lr` and `temperature` must be positive; got {self.lr!r}, {self.cv_lr!r}, "
                             f"{self.temperature!r}.")
        if self.dtype not in ("float64", "float32"):
            raise ValueError(f"`dtype` must be float64 or float32; got {self.dtype!r}.")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"`schedule` must be cosine or constant; got {self.schedule!r}.")


def _row(**values: Any) -> dict[str, Any]:
    keys = ("part", "t", "estimator", "status", "num_samples", "evaluations", "unbiased", "num_estimates",
            "exact_gradient", "exact_mean", "mean", "std_error", "bias_z", "variance", "variance_std_error",
            "exact_variance", "reference_variance", "variance_rel_error", "variance_z", "step", "p_mean", "p_q10",
            "p_q90", "objective_gap", "converged_fraction", "note")
    row: dict[str, Any] = {k: None for k in keys}
    row.update(values)
    return row


class BernoulliToy(Study):
    """The Bernoulli toy: exact vs sampled variances at φ = 0, and training curves per estimator."""

    name = "bernoulli-toy"
    description = "E[(b-t)^2], t in {0.45, 0.49, 0.499}: variance at phi=0 (exact vs sampled), training curves"
    reproduces = "REFERENCES.md Bernoulli toy (Tucker 2017, Yin & Zhou 2019, Dong 2020)"
    time = {"smoke": "10 s", "full": "8 min on 2 CPU cores (single-threaded: tiny tensors)"}
    Config = BernoulliToyConfig

    def smoke(self) -> BernoulliToyConfig:
        return BernoulliToyConfig(targets=(0.49, 0.499), num_estimates=1 << 13, replicas=4, steps=150,
                                  record_every=50, cv_warmup=20, schedule="constant")

    def cells(self, cfg: BernoulliToyConfig) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [{"part": "variance", "t": float(t)} for t in cfg.targets]
        for t in cfg.targets:
            out += [{"part": "train", "t": float(t), "estimator": e} for e in ("exact", *cfg.train_estimators)]
        return out

    def run_cell(self, cfg: BernoulliToyConfig, cell: Mapping[str, Any], ctx: CellContext) -> list[dict[str, Any]]:
        # Tensors here are small: one CPU thread avoids the cost of parallel regions (on a busy
        # machine some torch kernels, e.g. Bernoulli.log_prob, pay milliseconds per call for them).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            if cell["part"] == "variance":
                return self._variance(cfg, float(cell["t"]), ctx)
            return self._train(cfg, float(cell["t"]), str(cell["estimator"]), ctx)
        finally:
            torch.set_num_threads(threads)

    def _variance(self, cfg: BernoulliToyConfig, t: float, ctx: CellContext) -> list[dict[str, Any]]:
        dev = ctx.device
        dtype = torch.float64 if cfg.dtype == "float64" else torch.float32

        def f(b: Tensor) -> Tensor:
            return (b - t) ** 2

        problem = Problem(name=f"bernoulli-{t}", make_dist=lambda logits: Bernoulli(logits=logits), params=(0.0,),
                          f=f, param_names=("phi",))
        params = problem.tensors(dtype=dtype, device=dev)
        zero = torch.zeros((), dtype=torch.float64, device=dev)
        grad = float(scg.testing.exact_gradient(lambda l: Bernoulli(logits=l), (zero,), f)[0])
        rows = []
        for name in cfg.variance_estimators:
            est, s_min = build_estimator(name, temperature=cfg.temperature)
            est = est.to(device=dev, dtype=dtype)
            S = max(cfg.num_samples, s_min)
            common = dict(part="variance", t=t, estimator=name, num_samples=S, unbiased=bool(est.unbiased),
                          reference_variance=REFERENCE.get(t, {}).get(name) if S == (2 if name == "rloo" else 1)
                          else None)
            try:
                est.check(problem.make_dist(*params))
            except TypeError as exc:
                rows.append(_row(**common, status="skipped", note=str(exc)))
                continue
            note = ""
            torch.manual_seed(ctx.seed)
            if name == "moving_average":  # warm up the running baseline, then freeze it
                est.train()
                with torch.no_grad():
                    for _ in range(200):
                        est(f, Bernoulli(logits=torch.zeros(64, dtype=dtype, device=dev)), S)
                note = f"baseline warmed up on 200 calls, frozen at {float(est.baseline.baseline()):.6g}"
            if name == "relax":  # train the control variate at φ = 0 (φ itself is not stepped)
                opt = torch.optim.Adam(est.parameters(), lr=cfg.cv_lr)
                logits = torch.zeros(64, dtype=dtype, device=dev)
                for _ in range(cfg.cv_warmup):
                    opt.zero_grad(set_to_none=True)
                    est(f, Bernoulli(logits=logits), S).sum().backward()
                    opt.step()
                note = f"control variate trained for {cfg.cv_warmup} Adam steps at phi = 0, then frozen"
            est.eval()
            exact = scg.testing.exact_moments(est, lambda l: Bernoulli(logits=l), (zero,), f, num_samples=S)
            exact_var = float(exact.variance[0])
            if exact_var <= 1e-20 * grad * grad:  # zero up to quadrature rounding (DisARM: ~1e-37)
                exact_var = 0.0
            torch.manual_seed(ctx.seed)
            N = cfg.num_estimates
            moments = sample_until(est, problem, params, [0], torch.tensor([grad], dtype=torch.float64, device=dev),
                                   rel_se=0.0, min_estimates=N, max_estimates=N, chunk=min(N, 1 << 16),
                                   num_samples=S)
            stats = moments.stats(0, grad, exact_var)
            rows.append(_row(**common, status="ok", evaluations=int(est.evaluations(problem.make_dist(*params), S)),
                             num_estimates=moments.n, exact_gradient=grad, exact_mean=float(exact.mean[0]),
                             exact_variance=exact_var, note=note, **stats))
        return rows

    def _train(self, cfg: BernoulliToyConfig, t: float, name: str, ctx: CellContext) -> list[dict[str, Any]]:
        dev = ctx.device
        dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
        R = cfg.replicas
        phi = torch.zeros(R, dtype=dtype, device=dev, requires_grad=True)

        def f(b: Tensor) -> Tensor:
            return (b - t) ** 2

        if name == "exact":
            est, S, unbiased = None, 0, True
            params: list[Tensor] = [phi]
        else:
            est, s_min = build_estimator(name, temperature=cfg.temperature)
            est = est.to(device=dev, dtype=dtype).train()
            S, unbiased = max(cfg.num_samples, s_min), bool(est.unbiased)
            params = [phi, *est.parameters()]
        groups = [{"params": [phi], "lr": cfg.lr}]
        if len(params) > 1:
            groups.append({"params": params[1:], "lr": cfg.cv_lr})
        opt = torch.optim.Adam(groups)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda i: 0.5 * (1 + math.cos(math.pi * i / cfg.steps)) if cfg.schedule == "cosine" else 1.0)
        optimum = min(objective(torch.tensor(0.0), t), objective(torch.tensor(1.0), t))
        rows = []
        for step in range(cfg.steps + 1):
            if step % cfg.record_every == 0 or step == cfg.steps:
                with torch.no_grad():
                    p = torch.sigmoid(phi.detach()).double().cpu()
                    q10, q90 = torch.quantile(p, torch.tensor([0.1, 0.9], dtype=torch.float64)).tolist()
                    rows.append(_row(part="train", t=t, estimator=name, status="ok", num_samples=S,
                                     unbiased=unbiased, step=step, p_mean=float(p.mean()), p_q10=q10, p_q90=q90,
                                     objective_gap=float((objective(p, t) - optimum).mean()),
                                     converged_fraction=float((p <= cfg.converged_p).double().mean())))
            if step == cfg.steps:
                break
            if est is None:
                loss = objective(torch.sigmoid(phi), t).sum()
            else:
                loss = scg.expectation(f, Bernoulli(logits=phi), est, num_samples=S).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        return rows

    def plot(self, rows: Sequence[Mapping[str, Any]], cfg: BernoulliToyConfig, out_dir: Path) -> list[Path]:
        from scg.studies.bernoulli_toy_plot import plot_training, plot_variance

        paths = []
        if any(r["part"] == "variance" for r in rows):
            paths.append(plot_variance(rows, Path(out_dir) / "bernoulli_variance.png"))
        if any(r["part"] == "train" for r in rows):
            paths.append(plot_training(rows, cfg, Path(out_dir) / "bernoulli_training.png"))
        return paths
