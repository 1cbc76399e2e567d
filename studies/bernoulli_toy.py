r"""``bernoulli-toy``: minimise :math:`E_{b \sim \mathrm{Bern}(σ(φ))}[(b − t)^2]`, t ∈ {0.45, 0.49, 0.499}.

The toy of Tucker et al. (2017), Grathwohl et al. (2018), Yin & Zhou (2019) and Dong
et al. (2020). The exact gradient is :math:`σ(φ)(1 − σ(φ))(1 − 2t)`: tiny for t near ½,
so only low-variance estimators see its sign. Since :math:`(1−t)^2 > t^2` for t < ½,
the minimiser is :math:`σ(φ) → 0` (b = 0 always). (Stated as a maximisation, as some
papers do, the optimum is σ(φ) → 1; the variances are the same.)

Part 1 (``part = "variance"``): single-estimate variance at φ = 0 for REINFORCE,
REINFORCE with a moving-average baseline (warmed up on 200 calls, then frozen), RLOO
(S = 2), ARM, DisARM, RELAX (control variate trained for ``cv_warmup`` steps at φ = 0,
then frozen) and Gumbel-softmax (τ = 0.5, biased): exact values from
:func:`scg.testing.exact_moments` next to N sampled estimates and docs/references.md's values.
ARM is :class:`scg.estimators.arm.ARM` (a uniform law with its breakpoints), so the harness
checks it too.

Part 2 (``part = "train"``, :mod:`scg.studies.bernoulli_toy_train`): R = 32 replicas of
φ (a batch dimension of ``Bernoulli(logits=φ)``) trained from φ = 0 with Adam (lr 0.2,
cosine decay over 1000 steps: with a constant lr Adam's normalised steps stay ≈ lr while
the gradient vanishes, and replicas drift back) at each **budget** K of evaluations of f
per replica and step, the same for every estimator (S = K, K/2 for ARM and DisARM, K/3
for RELAX); also NVIL (``chain(MovingAverage(), Learned(nn.Linear), Normalize())``). A
replica has *converged to the right answer* when its final P(b = 1) = σ(φ) ≤ 0.05 (the
loss within 5 % of its range from the optimum); a run converges when ≥ 95 % of its
replicas have. REINFORCE's signal-to-noise ratio at φ = 0 is ≈ 2(1 − 2t)√K (0.004 √K at
t = 0.499): at K = 6 it does not converge at t = 0.499, at K = 3072 it does (last of the
unbiased estimators); Gumbel-softmax minimises the relaxed objective and stays near
σ(φ) ≈ ½ at every K. RELAX uses RELAX's free-form control variate
(:class:`scg.estimators.NeuralControlVariate`: REBAR's :math:`η f(σ(z/λ))` plus a 1-16-1 tanh
MLP of z); REBAR's term alone raised the exact variance at φ = 0 above REINFORCE's on a grid
η ∈ {½, 1, 2}, λ ∈ {0.1, ½, 1, 2} (0.0223 at η = 1, λ = ½, against 0.0156). The
control-variate parameters (NVIL's baseline, RELAX's η, λ and MLP) start at zero (NVIL
starts as REINFORCE + moving average, RELAX as REINFORCE), lr ``cv_lr`` = 0.01. The
``exact`` rows follow Adam on the exact gradient.

References:
    Tucker et al., "REBAR", NeurIPS 2017. https://arxiv.org/abs/1703.07370
    Grathwohl et al., "Backpropagation through the Void", ICLR 2018. https://arxiv.org/abs/1711.00123
    Yin & Zhou, "ARM: Augment-REINFORCE-Merge Gradient for Stochastic Binary Networks", ICLR 2019.
    https://arxiv.org/abs/1807.11143
    Dong, Mnih & Tucker, "DisARM", NeurIPS 2020. https://arxiv.org/abs/2006.10680
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Bernoulli

import scg
from scg.estimators import NeuralControlVariate, registry
from scg.estimators.arm import ARM
from scg.studies._io import row
from scg.studies.base import CellContext, Study
from scg.studies.bernoulli_toy_train import samples_for_budget, train_replicas
from scg.studies.problems import Problem
from scg.studies.sampling import sample_until

__all__ = [
    "ARM",
    "BernoulliToyConfig",
    "BernoulliToy",
    "REFERENCE",
    "build_estimator",
    "ESTIMATORS",
]

#: docs/references.md: single-draw variances at φ = 0 (exact).
REFERENCE: dict[float, dict[str, float]] = {
    0.49: {"reinforce": 1.5638e-2, "rloo": 2.5e-5, "arm": 8.333e-6, "disarm": 0.0},
    0.499: {"reinforce": 1.5625e-2, "rloo": 2.5e-7, "arm": 8.333e-8, "disarm": 0.0},
}


#: Estimator names (of :mod:`scg.estimators.registry`) in figure order; ``build_estimator`` makes them.
ESTIMATORS: tuple[str, ...] = (
    "reinforce",
    "moving_average",
    "rloo",
    "nvil",
    "arm",
    "disarm",
    "relax",
    "gumbel_softmax",
)


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
    """The registry's estimator ``name`` with the toy's choices, and its minimum number of samples.

    The estimators come from :mod:`scg.estimators.registry` (``reinforce`` is its
    ``score_function``); the toy starts the learned parts at zero: NVIL's baseline is a
    zero ``nn.Linear(1, 1)`` of φ, RELAX's control variate REBAR's term with η = 0 plus
    a 1-16-1 tanh MLP whose last layer is zero (so both start as REINFORCE).
    """
    if name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}; valid estimators: {', '.join(ESTIMATORS)}.")
    setting = registry.Setting(temperature=temperature)
    if name == "nvil":
        net = nn.Linear(1, 1)
        nn.init.zeros_(net.weight)
        nn.init.zeros_(net.bias)
        est = registry.build(name, setting, baseline_net=net)
    elif name == "relax":
        cv = NeuralControlVariate(_Surrogate())
        with torch.no_grad():
            cv.rebar.eta.zero_()  # start as REINFORCE: c(z) = 0
        est = registry.build(name, setting, control_variate=cv)
    else:
        est = registry.build(name, setting)
    return est, registry.min_samples(est)


@dataclass(frozen=True)
class BernoulliToyConfig:
    """Configuration of ``bernoulli-toy`` (defaults: the CPU default run).

    Attributes:
        targets: values of t.
        variance_estimators: part 1 (variance at φ = 0); ``nvil`` is training-only.
        train_estimators: part 2 (training curves).
        num_estimates: N single estimates per variance row.
        num_samples: part 1: S per estimate (RLOO uses max(S, 2)).
        budgets: part 2: evaluations K of f per replica and step, each a multiple of 6 so
            that every estimator (1, 2 or 3 evaluations per sample) spends exactly K.
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
        converged_p: a replica has converged when its final P(b = 1) ≤ this (the optimum is 0).
        converged_share: a run has converged when this fraction of its replicas have.
        dtype: part 1's floating type, ``float64`` or ``float32``.
        train_dtype: part 2's: ``float32`` runs 2.5× faster on the CPU and its rounding of f
            (≈ 10⁻⁸) is far below the signal f(1) − f(0) = 1 − 2t ≥ 0.002.
    """

    targets: tuple[float, ...] = (0.45, 0.49, 0.499)
    variance_estimators: tuple[str, ...] = (
        "reinforce",
        "moving_average",
        "rloo",
        "arm",
        "disarm",
        "relax",
        "gumbel_softmax",
    )
    train_estimators: tuple[str, ...] = ESTIMATORS
    num_estimates: int = 1 << 18
    num_samples: int = 1
    budgets: tuple[int, ...] = (6, 3072)
    replicas: int = 32
    steps: int = 1000
    lr: float = 0.2
    cv_lr: float = 0.01
    cv_warmup: int = 500
    schedule: str = "cosine"
    record_every: int = 40
    temperature: float = 0.5
    converged_p: float = 0.05
    converged_share: float = 0.95
    dtype: str = "float64"
    train_dtype: str = "float32"

    def __post_init__(self) -> None:
        for name in ("num_estimates", "num_samples", "replicas", "steps", "record_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be an int >= 1; got {value!r}.")
        if isinstance(self.cv_warmup, bool) or not isinstance(self.cv_warmup, int) or self.cv_warmup < 0:
            raise ValueError(f"`cv_warmup` must be an int >= 0; got {self.cv_warmup!r}.")
        if self.num_estimates < 2:
            raise ValueError(
                f"`num_estimates` must be >= 2 to estimate a variance; got {self.num_estimates}."
            )
        for k in self.budgets:
            if isinstance(k, bool) or not isinstance(k, int) or k < 6 or k % 6:
                raise ValueError(
                    f"`budgets` must hold multiples of 6 (>= 6) so that every estimator spends "
                    f"exactly K evaluations of f; got {k!r}."
                )
        for t in self.targets:
            if not 0.0 < t < 1.0:
                raise ValueError(f"`targets` must lie in (0, 1); got {t!r}.")
        for name in (*self.variance_estimators, *self.train_estimators):
            if name not in ESTIMATORS:
                raise ValueError(f"unknown estimator {name!r}; valid estimators: {', '.join(ESTIMATORS)}.")
        if "nvil" in self.variance_estimators:
            raise ValueError(
                "`variance_estimators` cannot include 'nvil' (its learned baseline is trained "
                "during training only); use train_estimators."
            )
        if not self.lr > 0 or not self.cv_lr > 0 or not self.temperature > 0:
            raise ValueError(
                f"`lr`, `cv_lr` and `temperature` must be positive; got {self.lr!r}, {self.cv_lr!r}, "
                f"{self.temperature!r}."
            )
        if not 0.0 < self.converged_p < 1.0 or not 0.0 < self.converged_share <= 1.0:
            raise ValueError(
                f"`converged_p` must lie in (0, 1) and `converged_share` in (0, 1]; got "
                f"{self.converged_p!r}, {self.converged_share!r}."
            )
        for name in ("dtype", "train_dtype"):
            if getattr(self, name) not in ("float64", "float32"):
                raise ValueError(f"`{name}` must be float64 or float32; got {getattr(self, name)!r}.")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"`schedule` must be cosine or constant; got {self.schedule!r}.")


_COLUMNS = (
    "part",
    "t",
    "estimator",
    "status",
    "budget",
    "num_samples",
    "evaluations",
    "unbiased",
    "num_estimates",
    "exact_gradient",
    "exact_mean",
    "mean",
    "std_error",
    "bias_z",
    "variance",
    "variance_std_error",
    "exact_variance",
    "reference_variance",
    "variance_rel_error",
    "variance_z",
    "step",
    "p_mean",
    "p_q10",
    "p_median",
    "p_q90",
    "p_max",
    "objective_gap",
    "converged_fraction",
    "converged",
    "note",
)


def _row(**values: Any) -> dict[str, Any]:
    return row(_COLUMNS, **values)


class BernoulliToy(Study):
    """The Bernoulli toy: exact vs sampled variances at φ = 0, and training curves per estimator."""

    name = "bernoulli-toy"
    description = (
        "E[(b-t)^2], t in {0.45, 0.49, 0.499}: variance at phi=0 (exact vs sampled), convergence "
        "at equal budgets of K f-evaluations per step"
    )
    reproduces = "docs/references.md Bernoulli toy (Tucker 2017, Yin & Zhou 2019, Dong 2020)"
    time = {
        "smoke": "15 s",
        "default": "8 min on 2 shared CPU cores (5.5 CPU-min, single-threaded)",
        "full": "GPU (1024 replicas, budgets 6 / 48 / 384 / 3072; not timed: no GPU here)",
    }
    Config = BernoulliToyConfig

    def smoke(self) -> BernoulliToyConfig:
        return BernoulliToyConfig(
            targets=(0.49, 0.499),
            num_estimates=1 << 13,
            budgets=(6,),
            replicas=4,
            steps=60,
            record_every=20,
            cv_warmup=20,
            schedule="constant",
        )

    def full(self) -> BernoulliToyConfig:
        """The GPU size: 1024 replicas (the converged fraction to ±1.5 %), four budgets, N = 2²² estimates."""
        return BernoulliToyConfig(num_estimates=1 << 22, budgets=(6, 48, 384, 3072), replicas=1024)

    def cells(self, cfg: BernoulliToyConfig) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [{"part": "variance", "t": float(t)} for t in cfg.targets]
        for t in cfg.targets:
            out.append({"part": "train", "t": float(t), "estimator": "exact"})
            out += [
                {"part": "train", "t": float(t), "budget": int(k), "estimator": e}
                for k in cfg.budgets
                for e in cfg.train_estimators
            ]
        return out

    def run_cell(
        self, cfg: BernoulliToyConfig, cell: Mapping[str, Any], ctx: CellContext
    ) -> list[dict[str, Any]]:
        # Tensors here are small: one CPU thread avoids the cost of parallel regions (on a busy
        # machine some torch kernels, e.g. Bernoulli.log_prob, pay milliseconds per call for them).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            if cell["part"] == "variance":
                return self._variance(cfg, float(cell["t"]), ctx)
            return self._train(cfg, float(cell["t"]), str(cell["estimator"]), cell.get("budget"), ctx)
        finally:
            torch.set_num_threads(threads)

    def _variance(self, cfg: BernoulliToyConfig, t: float, ctx: CellContext) -> list[dict[str, Any]]:
        dev = ctx.device
        dtype = torch.float64 if cfg.dtype == "float64" else torch.float32

        def f(b: Tensor) -> Tensor:
            return (b - t) ** 2

        problem = Problem(
            name=f"bernoulli-{t}",
            make_dist=lambda logits: Bernoulli(logits=logits),
            params=(0.0,),
            f=f,
            param_names=("phi",),
        )
        params = problem.tensors(dtype=dtype, device=dev)
        zero = torch.zeros((), dtype=torch.float64, device=dev)
        grad = float(scg.testing.exact_gradient(lambda l: Bernoulli(logits=l), (zero,), f)[0])
        rows = []
        for name in cfg.variance_estimators:
            est, s_min = build_estimator(name, temperature=cfg.temperature)
            est = est.to(device=dev, dtype=dtype)
            S = max(cfg.num_samples, s_min)
            common = dict(
                part="variance",
                t=t,
                estimator=name,
                num_samples=S,
                unbiased=bool(est.unbiased),
                reference_variance=REFERENCE.get(t, {}).get(name)
                if S == (2 if name == "rloo" else 1)
                else None,
            )
            try:
                est.check(problem.make_dist(*params))
            except TypeError as exc:
                rows.append(_row(**common, status="skipped", note=str(exc)))
                continue
            note = ""
            torch.manual_seed(ctx.seed)
            if name == "moving_average":  # warm up the running baseline, then freeze it
                est.train()  # running statistics update with gradients enabled (not under no_grad)
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
            moments = sample_until(
                est,
                problem,
                params,
                [0],
                torch.tensor([grad], dtype=torch.float64, device=dev),
                rel_se=0.0,
                min_estimates=N,
                max_estimates=N,
                chunk=min(N, 1 << 16),
                num_samples=S,
            )
            stats = moments.stats(0, grad, exact_var)
            rows.append(
                _row(
                    **common,
                    status="ok",
                    evaluations=int(est.evaluations(problem.make_dist(*params), S)),
                    num_estimates=moments.n,
                    exact_gradient=grad,
                    exact_mean=float(exact.mean[0]),
                    exact_variance=exact_var,
                    note=note,
                    **stats,
                )
            )
        return rows

    def _train(
        self, cfg: BernoulliToyConfig, t: float, name: str, budget: int | None, ctx: CellContext
    ) -> list[dict[str, Any]]:
        dtype = torch.float64 if cfg.train_dtype == "float64" else torch.float32
        if name == "exact":
            est, S, unbiased = None, 0, True
        else:
            est, s_min = build_estimator(name, temperature=cfg.temperature)
            S = samples_for_budget(est, int(budget), min_samples=s_min)
            est, unbiased = est.to(device=ctx.device, dtype=dtype).train(), bool(est.unbiased)
        points = train_replicas(
            est,
            t=t,
            num_samples=S,
            replicas=cfg.replicas,
            steps=cfg.steps,
            lr=cfg.lr,
            cv_lr=cfg.cv_lr,
            schedule=cfg.schedule,
            record_every=cfg.record_every,
            converged_p=cfg.converged_p,
            dtype=dtype,
            device=ctx.device,
        )
        rows = []
        for point in points:
            last = point["step"] == cfg.steps
            converged = point["converged_fraction"] >= cfg.converged_share if last else None
            rows.append(
                _row(
                    part="train",
                    t=t,
                    estimator=name,
                    status="ok",
                    budget=budget,
                    num_samples=S,
                    evaluations=budget,
                    unbiased=unbiased,
                    converged=converged,
                    **point,
                )
            )
        return rows

    def plot(self, rows: Sequence[Mapping[str, Any]], cfg: BernoulliToyConfig, out_dir: Path) -> list[Path]:
        from scg.studies.bernoulli_toy_plot import plot_convergence, plot_training, plot_variance

        paths = []
        if any(r["part"] == "variance" for r in rows):
            paths.append(plot_variance(rows, Path(out_dir) / "bernoulli_variance.png"))
        if any(r["part"] == "train" for r in rows):
            paths.append(plot_training(rows, cfg, Path(out_dir) / "bernoulli_training.png"))
            paths.append(plot_convergence(rows, cfg, Path(out_dir) / "bernoulli_convergence.png"))
        return paths
