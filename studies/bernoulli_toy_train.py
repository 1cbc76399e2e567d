r"""Training part of ``bernoulli-toy``: R replicas of φ trained at once, at a budget of f-evaluations per step.

The loss is :math:`L(φ) = E_{b \sim \mathrm{Bern}(σ(φ))}[(b − t)^2] = t^2 + σ(φ)(1 − 2t)`,
minimised (t < ½) at σ(φ) → 0 with value :math:`t^2`. The replicas are a batch
dimension of ``Bernoulli(logits=φ)``, φ ∈ ℝ^R: one surrogate and one backward per step
serve all of them.

**Budget.** Every estimator spends the same number K of evaluations of f per replica
and step — the fair comparison, since f is the expensive black box in the papers'
settings: it draws :math:`S = K / e` samples, where e is its evaluations per sample
(:meth:`scg.Estimator.evaluations`: 1 for REINFORCE, its baselines and Gumbel-softmax,
2 for ARM and DisARM, 3 for RELAX). K must therefore be a multiple of 6; a multiple of 6
that leaves S below an estimator's minimum (RLOO: 2) is refused.

**Convergence.** A replica has *converged to the right answer* when its final
:math:`P(b = 1) = σ(φ) ≤ p^\*` (``converged_p``, 0.05 by default): the optimum is
σ(φ) = 0, and :math:`σ(φ) ≤ p^\*` is the same as the expected loss being within
:math:`p^\*(1 − 2t)` of its optimal value :math:`t^2` — within 5 % of the whole range
:math:`[t^2, (1 − t)^2]` of the loss. A run converges when at least ``converged_share``
(95 %) of its replicas have.

References:
    Tucker et al., "REBAR", NeurIPS 2017. https://arxiv.org/abs/1703.07370
    Grathwohl et al., "Backpropagation through the Void", ICLR 2018. https://arxiv.org/abs/1711.00123
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Bernoulli

import scg
from scg.estimators import registry

__all__ = ["objective", "samples_for_budget", "curve_point", "train_replicas"]


def objective(p: Tensor, t: float) -> Tensor:
    """Exact :math:`E[(b − t)^2] = t^2 + p (1 − 2t)` at P(b = 1) = p."""
    return t * t + p * (1 - 2 * t)


def samples_for_budget(est: scg.Estimator, budget: int, *, min_samples: int = 1) -> int:
    """S such that ``est`` spends exactly ``budget`` evaluations of f per replica: ``budget / e``.

    :func:`scg.estimators.registry.samples_for_budget` on the toy's ``Bernoulli(logits=φ)``.

    Raises:
        ValueError: ``budget`` is not a multiple of e, or leaves S below ``min_samples``.
    """
    return registry.samples_for_budget(est, Bernoulli(logits=torch.zeros(())), budget, minimum=min_samples)


def curve_point(phi: Tensor, t: float, converged_p: float) -> dict[str, float]:
    """Statistics of the replicas' :math:`p = σ(φ)`: mean, quantiles, loss gap, converged fraction.

    ``objective_gap`` is the mean over replicas of :math:`L(φ) − t^2 = p(1 − 2t)`;
    ``converged_fraction`` the fraction with :math:`p ≤` ``converged_p``.
    """
    p = torch.sigmoid(phi.detach()).double().cpu()
    q10, q50, q90 = torch.quantile(p, torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)).tolist()
    optimum = min(t * t, (1 - t) ** 2)
    return {
        "p_mean": float(p.mean()),
        "p_q10": q10,
        "p_median": q50,
        "p_q90": q90,
        "p_max": float(p.max()),
        "objective_gap": float((objective(p, t) - optimum).mean()),
        "converged_fraction": float((p <= converged_p).double().mean()),
    }


def train_replicas(
    est: scg.Estimator | None,
    *,
    t: float,
    num_samples: int,
    replicas: int,
    steps: int,
    lr: float,
    cv_lr: float,
    schedule: str,
    record_every: int,
    converged_p: float,
    dtype: torch.dtype,
    device: torch.device,
) -> list[dict[str, Any]]:
    r"""Train ``replicas`` copies of φ from 0 with Adam; return :func:`curve_point` every ``record_every`` steps.

    Each step minimises ``scg.expectation(f, Bernoulli(logits=φ), est, num_samples).sum()``
    with :math:`f(b) = (b − t)^2`; ``est = None`` follows the exact gradient of
    :func:`objective` instead. φ has learning rate ``lr``, the estimator's own parameters
    (learned baselines, control variates) ``cv_lr``; with ``schedule = "cosine"`` both
    decay as :math:`\tfrac12(1 + \cos(π i / \mathrm{steps}))`. The last point is at
    ``step == steps`` (always recorded).
    """
    phi = torch.zeros(replicas, dtype=dtype, device=device, requires_grad=True)
    groups: list[dict[str, Any]] = [{"params": [phi], "lr": lr}]
    extra = [] if est is None else list(est.parameters())
    if extra:
        groups.append({"params": extra, "lr": cv_lr})
    opt = torch.optim.Adam(groups)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 0.5 * (1 + math.cos(math.pi * i / steps)) if schedule == "cosine" else 1.0
    )

    def f(b: Tensor) -> Tensor:
        return (b - t) ** 2

    points = []
    for step in range(steps + 1):
        if step % record_every == 0 or step == steps:
            points.append({"step": step, **curve_point(phi, t, converged_p)})
        if step == steps:
            break
        if est is None:
            loss = objective(torch.sigmoid(phi), t).sum()
        else:
            loss = scg.expectation(f, Bernoulli(logits=phi), est, num_samples=num_samples).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return points
