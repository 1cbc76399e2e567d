r"""``categorical``: every categorical estimator on :math:`E_{y \sim \mathrm{Cat}(\mathrm{softmax}\,α)}[\sum_k y_k (k/(K−1) − t)^2]`.

The Bernoulli toy's categorical analogue (:class:`scg.studies.problems._CategoricalSquare`,
t = 0.49; K = 2 is the Bernoulli toy with b = y₁): K levels evenly spread on [0, 1], the
cost of a class the squared distance of its level to t. The exact gradient at α,
:math:`∂_{α_k} E[f] = p_k (c_k − \sum_j p_j c_j)` with :math:`c_k = (k/(K−1) − t)^2`, is
small (at α = 0 and K = 2 it is ±0.005), so only low-variance estimators see it.
With ``product_classes`` the study adds D independent latents of K classes each with the
cost :math:`(\tfrac1D \sum_d \mathrm{level}(y_d) − t)^2` (:class:`~scg.studies.problems._MeanSquare`),
which couples the latents and is quadratic (not linear) in the one-hot vectors.

Part 1 (``part = "variance"``): for every estimator, every K and every **budget** B of
evaluations of f per estimate, the estimator draws the largest S with
``est.evaluations(dist, S) ≤ B`` (estimators whose smallest S costs more than B are
skipped at that budget; :class:`scg.UnorderedSet` and :class:`scg.SumAndSample` spend the
budget on their set instead: k = min(B, K) draws without replacement, and k = min(B, K) − 1
classes summed plus one sample, S = 1). Mean and variance of one estimate of the
gradient (all K·D logits) come from

* ``exact``: :func:`scg.testing.exact_moments` at S (enumeration / quadrature), when its
  grid fits in ``max_points`` (else it raises ``ValueError``);
* ``exact_iid``: for estimators whose S-sample estimate is the mean of S independent
  one-sample estimates (:data:`IID`), the exact moments at S = 1 with the variance divided
  by S (``tests/studies/test_study_categorical.py`` checks this against the harness at S = 2);
* ``sampled``: N = ``num_estimates`` independent estimates (:func:`scg.studies.sampling.sample_gradients`,
  i.e. :func:`scg.diagnostics.gradient_samples`, fixed seed), with standard errors.

Reported: the bias :math:`\|E\hat g − ∇E f\|` (the exact gradient by enumeration), the
variance :math:`\mathrm{tr\,Cov}\,\hat g` summed over the logits, and the scale-free
:math:`\mathrm{tr\,Cov}\,\hat g / \|∇E f\|^2` and :math:`(\|\mathrm{bias}\|^2 + \mathrm{tr\,Cov})/\|∇E f\|^2`.

Part 2 (``part = "train"``): R replicas of α (a batch dimension) trained from α = 0 with
Adam (cosine decay) at each budget of ``train_budgets`` for K = ``train_classes``; the
objective :math:`E[f] = \sum_k p_k c_k` is computed exactly along the way. A replica has
converged when its objective is within ``converged_gap`` (5 %) of the range
:math:`[\min_k c_k, \max_k c_k]` above the optimum; a run when ``converged_share`` of its
replicas have.

References:
    Tucker et al., "REBAR", NeurIPS 2017. https://arxiv.org/abs/1703.07370
    Grathwohl et al., "Backpropagation through the Void", ICLR 2018. https://arxiv.org/abs/1711.00123
    Yin, Yue & Zhou, "ARSM: Augment-REINFORCE-Swap-Merge Estimator for Gradient
    Backpropagation Through Categorical Variables", ICML 2019. https://arxiv.org/abs/1905.01413
    Liu et al., "Rao-Blackwellized Stochastic Gradients for Discrete Distributions", ICML 2019.
    https://arxiv.org/abs/1810.04777
    Kool, van Hoof & Welling, "Estimating Gradients for Discrete Random Variables by Sampling
    without Replacement", ICLR 2020. https://arxiv.org/abs/2002.06043
    Paulus, Maddison & Krause, "Rao-Blackwellizing the Straight-Through Gumbel-Softmax Gradient
    Estimator", ICLR 2021. https://arxiv.org/abs/2010.04838
    Dong, Mnih & Tucker, "Coupled Gradient Estimators for Discrete Latent Variables", NeurIPS 2021.
    https://arxiv.org/abs/2106.08056
    Liu et al., "Bridging Discrete and Backpropagation: Straight-Through and Beyond", NeurIPS 2023.
    https://arxiv.org/abs/2304.08612
    De Smet, Sansone & Zuidberg Dos Martires, "Differentiable Sampling of Categorical Distributions
    Using the CatLog-Derivative Trick", NeurIPS 2023. https://arxiv.org/abs/2311.12569
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, OneHotCategorical

import scg
from scg.baselines import LeaveOneOut
from scg.estimators.unordered_set import EXACT_MAX
from scg.studies._io import row
from scg.studies.base import CellContext, Study
from scg.studies.problems import Problem, _CategoricalSquare, _MeanSquare
from scg.studies.sampling import sample_gradients
from scg.testing import exact_moments

__all__ = [
    "CategoricalConfig",
    "Categorical",
    "ESTIMATORS",
    "IID",
    "build_estimator",
    "plan",
    "toy",
    "exact_gradient",
    "train",
]

#: Estimator names in figure order.
ESTIMATORS: tuple[str, ...] = (
    "reinforce",
    "rloo",
    "measure_valued",
    "categorical_disarm",
    "arsm",
    "relax",
    "unordered_set",
    "sum_and_sample",
    "indecater",
    "enumerate",
    "straight_through",
    "gumbel_softmax",
    "gumbel_rao",
    "reinmax",
)

#: Estimators whose S-sample estimate is the mean of S independent one-sample estimates.
IID: frozenset[str] = frozenset(
    {
        "reinforce",
        "measure_valued",
        "categorical_disarm",
        "arsm",
        "relax",
        "indecater",
        "straight_through",
        "gumbel_softmax",
        "gumbel_rao",
        "reinmax",
    }
)


@dataclass(frozen=True)
class CategoricalConfig:
    """Configuration of ``categorical`` (defaults: the CPU default run).

    Attributes:
        t: the target level t of the cost.
        classes: values of K for one latent (part 1).
        product_classes: values of K for the product of ``product_latents`` latents (part 1;
            empty: none).
        product_latents: D, the number of latents of the product.
        budgets: evaluations of f per estimate (part 1).
        estimators: part 1's and part 2's estimators (names of :data:`ESTIMATORS`).
        num_estimates: N sampled estimates where no exact moments exist (N/16 for unordered sets of
            more than 5 draws, whose ratios are integrated by quadrature per estimate).
        max_points: the largest grid :func:`scg.testing.exact_moments` may use.
        temperature: τ of Gumbel-softmax and Gumbel-Rao.
        reinmax_temperature: τ of ReinMax (≥ 1).
        num_conditional: M, Gumbel-Rao's conditional draws.
        cv_warmup: Adam steps (lr ``cv_lr``) that train RELAX's control variate at the
            evaluated α before its variance is measured.
        train_classes: K of part 2.
        train_budgets: evaluations of f per replica and step in part 2 (empty: no part 2).
        replicas, steps, lr, cv_lr, record_every: part 2's R, Adam steps, learning rates of α
            and of control variates (cosine decay to 0), and the spacing of recorded points.
        converged_gap: a replica has converged when its objective is within this fraction of
            the cost's range above the optimum.
        converged_share: a run has converged when this fraction of its replicas have.
    """

    t: float = 0.49
    classes: tuple[int, ...] = (2, 3, 5, 10, 20)
    product_classes: tuple[int, ...] = (3, 5, 10)
    product_latents: int = 3
    budgets: tuple[int, ...] = (2, 4, 8, 16, 32, 64)
    estimators: tuple[str, ...] = ESTIMATORS
    num_estimates: int = 1 << 14
    max_points: int = 200_000
    temperature: float = 0.5
    reinmax_temperature: float = 1.0
    num_conditional: int = 10
    cv_warmup: int = 100
    train_classes: int = 10
    train_budgets: tuple[int, ...] = (4, 16)
    replicas: int = 16
    steps: int = 500
    lr: float = 0.1
    cv_lr: float = 0.01
    record_every: int = 25
    converged_gap: float = 0.05
    converged_share: float = 0.95

    def __post_init__(self) -> None:
        if not 0.0 < self.t < 1.0:
            raise ValueError(f"`t` must lie in (0, 1); got {self.t!r}.")
        ints = ("num_estimates", "max_points", "num_conditional", "product_latents", "replicas")
        for name in (*ints, "steps", "record_every", "train_classes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be an int >= 1; got {value!r}.")
        if self.num_estimates < 2:
            raise ValueError(
                f"`num_estimates` must be >= 2 to estimate a variance; got {self.num_estimates}."
            )
        if isinstance(self.cv_warmup, bool) or not isinstance(self.cv_warmup, int) or self.cv_warmup < 0:
            raise ValueError(f"`cv_warmup` must be an int >= 0; got {self.cv_warmup!r}.")
        for name in ("classes", "product_classes", "train_budgets", "budgets"):
            for k in getattr(self, name):
                if isinstance(k, bool) or not isinstance(k, int) or k < 2:
                    raise ValueError(f"`{name}` must hold ints >= 2; got {k!r}.")
        if self.train_classes < 2:
            raise ValueError(f"`train_classes` must be >= 2; got {self.train_classes}.")
        for name in self.estimators:
            if name not in ESTIMATORS:
                raise ValueError(f"unknown estimator {name!r}; valid estimators: {', '.join(ESTIMATORS)}.")
        for name in ("temperature", "lr", "cv_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"`{name}` must be positive; got {getattr(self, name)!r}.")
        if not self.reinmax_temperature >= 1.0:
            raise ValueError(f"`reinmax_temperature` must be >= 1; got {self.reinmax_temperature!r}.")
        if not 0.0 < self.converged_gap < 1.0 or not 0.0 < self.converged_share <= 1.0:
            raise ValueError(
                f"`converged_gap` must lie in (0, 1) and `converged_share` in (0, 1]; got "
                f"{self.converged_gap!r}, {self.converged_share!r}."
            )


def toy(t: float, K: int, D: int = 1) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Distribution]]:
    """The cost and ``make_dist`` for D latents of K classes (D = 1: one ``OneHotCategorical``)."""
    if D == 1:
        return _CategoricalSquare(t, K), _one_hot
    return _MeanSquare(t, K), _one_hot_product


def _one_hot(logits: Tensor) -> Distribution:
    return OneHotCategorical(logits=logits)


def _one_hot_product(logits: Tensor) -> Distribution:
    return Independent(OneHotCategorical(logits=logits), 1)


def logits_at(K: int, D: int) -> Tensor:
    """The evaluated α: zeros for one latent; for a product, ``0.5 sin(1 + dK + k)`` (no ties)."""
    if D == 1:
        return torch.zeros(K, dtype=torch.float64)
    d, k = torch.meshgrid(torch.arange(D), torch.arange(K), indexing="ij")
    return 0.5 * torch.sin(1.0 + d * K + k).double()


def exact_gradient(alpha: Tensor, f: Callable[[Tensor], Tensor]) -> Tensor:
    """∇_α E[f(y)] for D independent one-hot latents ``alpha [D, K]`` (or ``[K]``), by enumeration.

    ``∂/∂α_dk E[f] = E[f(y)(y_dk − p_dk)]`` summed over the K^D outcomes, vectorised.
    """
    a = alpha.reshape(-1, alpha.shape[-1]).double()
    D, K = a.shape
    p = torch.softmax(a, -1)
    idx = torch.cartesian_prod(*[torch.arange(K)] * D).reshape(-1, D)  # [K^D, D]
    y = torch.nn.functional.one_hot(idx, K).double()  # [K^D, D, K]
    weight = p[torch.arange(D), idx].prod(-1)  # [K^D]
    cost = f(y if alpha.dim() > 1 else y[:, 0])
    grad = (weight * cost)[:, None, None] * (y - p)
    return grad.sum(0).reshape(alpha.shape)


def build_estimator(name: str, cfg: CategoricalConfig, *, k: int = 1) -> scg.Estimator:
    """The estimator called ``name`` (``k``: the set size of unordered_set / sum_and_sample)."""
    makers: dict[str, Callable[[], scg.Estimator]] = {
        "reinforce": lambda: scg.ScoreFunction(),
        "rloo": lambda: scg.ScoreFunction(baseline=LeaveOneOut()),
        "measure_valued": lambda: scg.MeasureValued(),
        "categorical_disarm": lambda: scg.CategoricalDisARM(),
        "arsm": lambda: scg.ARSM(),
        "relax": lambda: scg.RELAX(),
        "unordered_set": lambda: scg.UnorderedSet(k=k),
        "sum_and_sample": lambda: scg.SumAndSample(k=k),
        "indecater": lambda: scg.IndeCateR(),
        "enumerate": lambda: scg.Enumerate(),
        "straight_through": lambda: scg.StraightThrough(),
        "gumbel_softmax": lambda: scg.GumbelSoftmax(temperature=cfg.temperature),
        "gumbel_rao": lambda: scg.GumbelRao(cfg.temperature, num_conditional=cfg.num_conditional),
        "reinmax": lambda: scg.ReinMax(cfg.reinmax_temperature),
    }
    if name not in makers:
        raise ValueError(f"unknown estimator {name!r}; valid estimators: {', '.join(ESTIMATORS)}.")
    return makers[name]()


def plan(
    name: str, cfg: CategoricalConfig, dist: Distribution, budget: int
) -> tuple[scg.Estimator, int] | str:
    """The estimator and its S at ``budget`` evaluations of f, or why it is skipped there.

    S is the largest with ``evaluations(dist, S) ≤ budget`` (RLOO needs S ≥ 2); the set
    estimators use S = 1 and the largest set the budget allows.
    """
    K = int(dist.event_shape[-1])
    if name in ("unordered_set", "sum_and_sample"):
        k = min(budget, K) - (name == "sum_and_sample")
        if k < 1:
            return f"needs at least 2 evaluations of f; the budget is {budget}"
        est, S = build_estimator(name, cfg, k=k), 1
    else:
        est = build_estimator(name, cfg)
        try:
            est.check(dist)
        except (TypeError, ValueError) as exc:
            return str(exc)
        per = int(est.evaluations(dist, 1))
        S = 1 if name == "enumerate" else budget // per
        if S < (2 if name == "rloo" else 1) or per > budget:
            return f"one estimate costs {per * max(1, 2 * (name == 'rloo'))} evaluations of f > the budget {budget}"
    try:
        est.check(dist)
    except (TypeError, ValueError) as exc:
        return str(exc)
    return est, S


_COLUMNS = (
    "part",
    "latents",
    "classes",
    "estimator",
    "status",
    "budget",
    "num_samples",
    "set_size",
    "evaluations",
    "unbiased",
    "method",
    "num_estimates",
    "grad_norm2",
    "bias_norm",
    "bias_norm_se",
    "bias_z_max",
    "bias_rel",
    "variance",
    "variance_std_error",
    "variance_rel",
    "variance_rel_se",
    "mse_rel",
    "step",
    "objective",
    "objective_gap",
    "gap_q10",
    "gap_median",
    "gap_q90",
    "p_best",
    "converged_fraction",
    "converged",
    "note",
)


class Categorical(Study):
    """Every categorical estimator on the Bernoulli toy's analogue: bias and variance vs K and budget, training."""

    name = "categorical"
    description = (
        "E[sum_k y_k (k/(K-1) - t)^2], t = 0.49: exact/sampled bias and variance of every categorical "
        "estimator against K and the budget of f-evaluations; training curves at equal budgets"
    )
    reproduces = (
        "Yin 2019, Liu 2019, Kool 2020, Paulus 2021, Dong 2021, Liu 2023, De Smet 2023 (toy settings)"
    )
    time = {
        "smoke": "10 s",
        "default": "a few minutes, one CPU thread",
        "full": "GPU (N = 2^18 sampled estimates, 64 replicas, K up to 50; not timed: no GPU here)",
    }
    Config = CategoricalConfig

    def smoke(self) -> CategoricalConfig:
        return CategoricalConfig(
            classes=(2, 3),
            product_classes=(3,),
            budgets=(2, 8),
            num_estimates=1 << 10,
            cv_warmup=5,
            train_classes=3,
            train_budgets=(4,),
            replicas=4,
            steps=40,
            record_every=20,
        )

    def full(self) -> CategoricalConfig:
        """The GPU size: K up to 50, budgets to 128, N = 2¹⁸ sampled estimates, 64 replicas."""
        return CategoricalConfig(
            classes=(2, 3, 5, 10, 20, 50),
            budgets=(2, 4, 8, 16, 32, 64, 128),
            num_estimates=1 << 18,
            max_points=2_000_000,
            train_budgets=(4, 16, 64),
            replicas=64,
        )

    def cells(self, cfg: CategoricalConfig) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for D, ks in ((1, cfg.classes), (cfg.product_latents, cfg.product_classes)):
            out += [
                {"part": "variance", "latents": D, "classes": int(K), "estimator": e}
                for K in ks
                for e in cfg.estimators
            ]
        K = cfg.train_classes
        if cfg.train_budgets:
            out.append({"part": "train", "classes": K, "estimator": "exact"})
        out += [
            {"part": "train", "classes": K, "budget": int(b), "estimator": e}
            for b in cfg.train_budgets
            for e in cfg.estimators
        ]
        return out

    def run_cell(
        self, cfg: CategoricalConfig, cell: Mapping[str, Any], ctx: CellContext
    ) -> list[dict[str, Any]]:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # small tensors: parallel regions cost more than they save
        try:
            if cell["part"] == "variance":
                return self._variance(
                    cfg, int(cell["latents"]), int(cell["classes"]), str(cell["estimator"]), ctx
                )
            return self._train(cfg, str(cell["estimator"]), cell.get("budget"), ctx)
        finally:
            torch.set_num_threads(threads)

    def _variance(
        self, cfg: CategoricalConfig, D: int, K: int, name: str, ctx: CellContext
    ) -> list[dict[str, Any]]:
        dev = ctx.device
        f, make = toy(cfg.t, K, D)
        alpha = logits_at(K, D).to(dev)
        grad = exact_gradient(alpha.cpu(), f).reshape(-1)
        norm2 = float((grad**2).sum())
        problem = Problem(name=f"categorical-{D}x{K}", make_dist=make, params=(alpha,), f=f)
        dist = make(alpha)
        rows: list[dict[str, Any]] = []
        single: dict[str, Any] = {}  # exact moments at S = 1 (IID estimators)
        for b_index, budget in enumerate(cfg.budgets):
            common: dict[str, Any] = dict(
                part="variance", latents=D, classes=K, estimator=name, budget=budget, grad_norm2=norm2
            )
            got = plan(name, cfg, dist, budget)
            if isinstance(got, str):
                rows.append(row(_COLUMNS, **common, status="skipped", note=got))
                continue
            est, S = got
            est = est.to(device=dev, dtype=torch.float64)
            note = ""
            if name == "relax" and cfg.cv_warmup:
                torch.manual_seed(ctx.seed)
                _warm_up(est, f, make, alpha, S, cfg)
                note = f"control variate trained for {cfg.cv_warmup} Adam steps at this alpha, then frozen"
            est.eval()
            common.update(
                num_samples=S,
                set_size=getattr(est, "k", None),
                evaluations=int(est.evaluations(dist, S)),
                unbiased=bool(est.unbiased),
            )
            stats = self._moments(cfg, est, name, problem, alpha, S, grad, single, ctx.seed + 7919 * b_index)
            rows.append(row(_COLUMNS, **common, status="ok", note=note, **stats))
        return rows

    def _moments(
        self,
        cfg: CategoricalConfig,
        est: scg.Estimator,
        name: str,
        problem: Problem,
        alpha: Tensor,
        S: int,
        grad: Tensor,
        single: dict[str, Any],
        seed: int,
    ) -> dict[str, Any]:
        norm2 = float((grad**2).sum())
        exact = None
        method = "exact"
        # the harness enumerates the K!/(K − k)! ordered sets before it can refuse them: refuse here
        too_many = (
            name == "unordered_set" and math.perm(int(alpha.shape[-1]), int(est.k)) > cfg.max_points // 2
        )
        if not (name in IID and S > 1 and "s1" in single) and not too_many:
            try:
                exact = exact_moments(
                    est, problem.make_dist, (alpha,), problem.f, num_samples=S, max_points=cfg.max_points
                )
            except ValueError:
                exact = None
            if exact is not None and S == 1:
                single["s1"] = exact
        if exact is None and name in IID and S > 1:
            if "s1" not in single:
                try:
                    single["s1"] = exact_moments(
                        est, problem.make_dist, (alpha,), problem.f, num_samples=1, max_points=cfg.max_points
                    )
                except ValueError:
                    single["s1"] = None
            if single["s1"] is not None:
                exact, method = single["s1"]._replace(variance=single["s1"].variance / S), "exact_iid"
        if exact is not None:
            bias = exact.mean.detach().cpu().double() - grad
            var = float(exact.variance.sum().clamp_min(0.0))
            var = 0.0 if var <= 1e-20 * norm2 else var  # zero up to rounding of the quadrature
            return _stats(method, None, float(bias.norm()), 0.0, math.nan, var, 0.0, norm2)
        torch.manual_seed(seed)
        width = S * alpha.numel() * (cfg.num_conditional if name == "gumbel_rao" else 1)
        chunk = max(64, (1 << 20) // width)  # bounds the memory of one vectorised call
        # sets of more than EXACT_MAX draws integrate their ratios by quadrature per estimate: fewer
        N = (
            cfg.num_estimates // 16
            if name == "unordered_set" and int(est.k) > EXACT_MAX
            else cfg.num_estimates
        )
        parts = []
        for start in range(0, N, chunk):
            n = min(chunk, N - start)
            parts.append(sample_gradients(est, problem, [alpha], S, n)[0].detach().double().cpu())
        G = torch.cat(parts)
        N = G.shape[0]
        mean = G.mean(0)
        centred = G - mean
        comp_var = (centred**2).sum(0) / (N - 1)
        sq = (centred**2).sum(1) * (N / (N - 1))  # E[this] = tr Cov
        var = float(sq.mean())
        var_se = float(sq.std() / math.sqrt(N))
        se = (comp_var / N).sqrt()
        bias = mean - grad
        z = torch.where(se > 0, bias.abs() / se, torch.where(bias.abs() > 0, math.inf, 0.0))
        return _stats(
            "sampled", N, float(bias.norm()), math.sqrt(var / N), float(z.max()), var, var_se, norm2
        )

    def _train(
        self, cfg: CategoricalConfig, name: str, budget: int | None, ctx: CellContext
    ) -> list[dict[str, Any]]:
        K = cfg.train_classes
        common: dict[str, Any] = dict(part="train", latents=1, classes=K, estimator=name, budget=budget)
        if name == "exact":
            est, S = None, 0
        else:
            got = plan(name, cfg, _one_hot(torch.zeros(cfg.replicas, K)), int(budget or 0))
            if isinstance(got, str):
                return [row(_COLUMNS, **common, status="skipped", note=got)]
            est, S = got
            common.update(
                num_samples=S,
                set_size=getattr(est, "k", None),
                evaluations=int(est.evaluations(_one_hot(torch.zeros(K)), S)),
                unbiased=bool(est.unbiased),
            )
        points = train(est, cfg, S, device=ctx.device)
        rows = []
        for point in points:
            last = point["step"] == cfg.steps
            converged = point["converged_fraction"] >= cfg.converged_share if last else None
            rows.append(row(_COLUMNS, **common, status="ok", converged=converged, **point))
        return rows

    def plot(self, rows: Sequence[Mapping[str, Any]], cfg: CategoricalConfig, out_dir: Path) -> list[Path]:
        from scg.studies.categorical_plot import plot_training, plot_variance_vs_budget, plot_variance_vs_k

        out = Path(out_dir)
        paths = []
        if any(r["part"] == "variance" for r in rows):
            paths.append(plot_variance_vs_k(rows, out / "categorical_variance_vs_k.png"))
            paths.append(plot_variance_vs_budget(rows, out / "categorical_variance_vs_budget.png"))
        if any(r["part"] == "train" for r in rows):
            paths.append(plot_training(rows, cfg, out / "categorical_training.png"))
        return paths


def _stats(
    method: str,
    n: int | None,
    bias: float,
    bias_se: float,
    bias_z: float,
    var: float,
    var_se: float,
    norm2: float,
) -> dict[str, Any]:
    return dict(
        method=method,
        num_estimates=n,
        bias_norm=bias,
        bias_norm_se=bias_se,
        bias_z_max=bias_z,
        bias_rel=bias / math.sqrt(norm2),
        variance=var,
        variance_std_error=var_se,
        variance_rel=var / norm2,
        variance_rel_se=var_se / norm2,
        mse_rel=(bias * bias + var) / norm2,
    )


def _warm_up(
    est: scg.Estimator,
    f: Callable[[Tensor], Tensor],
    make: Callable[[Tensor], Distribution],
    alpha: Tensor,
    S: int,
    cfg: CategoricalConfig,
) -> None:
    """Train RELAX's control variate on its variance objective at α (α itself is not stepped)."""
    est.train()
    opt = torch.optim.Adam(est.parameters(), lr=cfg.cv_lr)
    batch = alpha.expand(64, *alpha.shape)
    for _ in range(cfg.cv_warmup):
        opt.zero_grad(set_to_none=True)
        est(f, make(batch), S).sum().backward()
        opt.step()


def train(
    est: scg.Estimator | None, cfg: CategoricalConfig, S: int, *, device: torch.device
) -> list[dict[str, Any]]:
    r"""Train ``cfg.replicas`` copies of α ∈ ℝ^K from 0 with Adam; statistics every ``record_every`` steps.

    Each step minimises ``scg.expectation(f, OneHotCategorical(logits=α), est, S).sum()``
    (``est = None``: the exact gradient of :math:`\sum_k p_k c_k`). Recorded: the mean
    exact objective, the quantiles of its gap to :math:`\min_k c_k`, the mean probability
    of the best class and the fraction of replicas within ``converged_gap`` of the range.
    """
    K = cfg.train_classes
    f = _CategoricalSquare(cfg.t, K)
    costs = f(torch.eye(K, dtype=torch.float64)).to(device)
    best, span = float(costs.min()), float(costs.max() - costs.min())
    alpha = torch.zeros(cfg.replicas, K, dtype=torch.float64, device=device, requires_grad=True)
    groups: list[dict[str, Any]] = [{"params": [alpha], "lr": cfg.lr}]
    extra = [] if est is None else list(est.parameters())
    if est is not None:
        est = est.to(device=device, dtype=torch.float64).train()
    if extra:
        groups.append({"params": extra, "lr": cfg.cv_lr})
    opt = torch.optim.Adam(groups)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * i / cfg.steps)))
    points = []
    for step in range(cfg.steps + 1):
        if step % cfg.record_every == 0 or step == cfg.steps:
            with torch.no_grad():
                p = torch.softmax(alpha, -1)
                objective = (p * costs).sum(-1)
                gap = (objective - best).cpu()
                q10, q50, q90 = torch.quantile(
                    gap, torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
                ).tolist()
                points.append(
                    {
                        "step": step,
                        "objective": float(objective.mean()),
                        "objective_gap": float(gap.mean()),
                        "gap_q10": q10,
                        "gap_median": q50,
                        "gap_q90": q90,
                        "p_best": float(p[:, int(costs.argmin())].mean()),
                        "converged_fraction": float((gap <= cfg.converged_gap * span).double().mean()),
                    }
                )
        if step == cfg.steps:
            break
        if est is None:
            loss = (torch.softmax(alpha, -1) * costs).sum()
        else:
            loss = scg.expectation(f, OneHotCategorical(logits=alpha), est, num_samples=S).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return points
