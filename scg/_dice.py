r"""The one DiCE implementation: how costs and estimator terms become a value-preserving surrogate.

Every surrogate in scg — ``scg.expectation`` with any estimator, and every
:class:`scg.Graph` — is assembled from two pieces:

* a **cost term** :math:`\operatorname{mean}_{rows}\, □(τ)\, c` for a cost ``c``
  whose score-function ancestors have the summed log-probability τ, with the
  magic box :math:`□(τ) = \exp(τ − \mathrm{stop}(τ))`: one in value, :math:`∇τ` in
  gradient, to every order (Foerster et al. 2018);
* a **node term**: what an estimator adds given its learning signal (the costs
  that depend on the node): zero in value, the estimator's gradient beyond the
  DiCE score part and the pathwise flow through its value (control variates,
  DisARM's antithetic difference, RELAX's correction, measure-valued differences).

The mean over rows is weighted: rows are indexed by the graph's sample dims, the
Monte Carlo dim S (uniform weights) and one dim per multi-point estimator's copies
(its own weights, e.g. ½, ½ for DisARM's antithetic pair, 1, 0, …, 0 for
measure-valued perturbations, which are not draws of the distribution).

References:
    Foerster et al., "DiCE: The Infinitely Differentiable Monte Carlo Estimator", ICML 2018.
    https://arxiv.org/abs/1802.05098
    Mao et al., "A Baseline for Any Order Gradient Estimation in Stochastic Computation
    Graphs", ICML 2019. https://arxiv.org/abs/1906.03391
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["magic_box", "reduce_rows", "cost_term", "baseline_rows"]


def magic_box(tau: Tensor) -> Tensor:
    """DiCE's magic box ``□(τ) = exp(τ − stop(τ))``: value exactly 1, gradient ``∇τ`` to any order."""
    return torch.exp(tau - tau.detach())


def reduce_rows(x: Tensor, axes: Sequence[Tensor | None]) -> Tensor:
    """Weighted mean of ``x`` over its leading ``len(axes)`` dims (``axes[0]`` weighs dim 0).

    ``None`` is the uniform weight (a mean); a tensor ``[K]`` of weights summing to one
    weighs a dim of size K. A dim of size 1 (``x`` broadcast along it) is squeezed,
    which is its weighted mean exactly.
    """
    for w in axes:
        if x.shape[0] == 1:
            x = x.squeeze(0)
        elif w is None:
            x = x.mean(0)
        else:
            x = (w.to(x).reshape(-1, *([1] * (x.dim() - 1))) * x).sum(0)
    return x


def cost_term(cost: Tensor, tau: Tensor | None, axes: Sequence[Tensor | None]) -> Tensor:
    r"""One cost's DiCE term :math:`\operatorname{mean}_{rows} □(τ)\, c`, shape ``cost.shape[len(axes):]``.

    Its value is exactly the weighted mean of ``cost`` (□ is one); its gradient adds
    :math:`c\,∇τ` per row (the score-function part) to ``cost``'s own gradient.
    ``tau`` (broadcastable to ``cost``) is ``None`` when no score-function node is upstream.
    """
    return reduce_rows(cost if tau is None else magic_box(tau) * cost, axes)


def baseline_rows(log_prob: Tensor, baseline: Tensor) -> Tensor:
    r"""A baseline's rows :math:`(1 − □(\log p))\, b`: zero in value, :math:`−b\,∇\log p` in gradient.

    ``baseline`` is detached by the caller; the form keeps DiCE's higher-order
    derivatives unbiased for baselines that do not depend on the sample (Mao et al. 2019).
    """
    return (1.0 - magic_box(log_prob)) * baseline
