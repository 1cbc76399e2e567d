r"""The DiCE-form surrogate of a graph: cost terms, control-variate terms, a finiteness check.

.. math::
    \hat L = \sum_c s_c \sum_{\text{batch}} \frac1S \sum_{s=1}^S
        □\Big(\sum_{w ∈ \mathrm{scored}(c)} \log p(w_s)\Big)\, c_s
      + \sum_w \sum_{\text{batch}} \frac1S \sum_{s=1}^S \big(1 − □(\log p(w_s))\big)\, b_{w,s}

with :math:`□(τ) = \exp(τ − \mathrm{stop}(τ))`. The tensor operations are those of
a hand-written DiCE surrogate — per cost: one box (shared by costs with the same
score-function ancestors and shape), one product, one mean and one sum — so the
graph adds no tensor work beyond its score-function samples' markers
(:mod:`scg.graph._dataflow`).

References:
    Foerster et al., "DiCE: The Infinitely Differentiable Monte Carlo Estimator", ICML 2018.
    https://arxiv.org/abs/1802.05098
    Mao et al., "A Baseline for Any Order Gradient Estimation in Stochastic Computation
    Graphs", ICML 2019. https://arxiv.org/abs/1906.03391
"""

from __future__ import annotations

import math
from typing import Collection, Iterable, Mapping, Optional, Sequence

import torch
from torch import Tensor

from scg._checks import host_checkable
from scg._dist import magic_box
from scg.baselines.base import SignalContext, score_sq_norm
from scg.estimators import ScoreFunction
from scg.graph._dataflow import align
from scg.graph._nodes import Cost, Node

__all__ = ["surrogate", "cost_terms", "baseline_term", "context_for", "check_finite"]


def surrogate(nodes: Mapping[str, Node], costs: Collection[Cost], baselined: Sequence[Node], grad: bool) -> Tensor:
    """The graph's scalar surrogate: :func:`cost_terms` plus each baselined node's :func:`baseline_term`.

    Args:
        nodes: the graph's nodes by name.
        costs: the registered costs, in registration order (at least one).
        baselined: score-function nodes whose estimator has a control variate.
        grad: whether gradients are tracked; if not, only the value is computed.

    Raises:
        ValueError: the surrogate is not finite (see :func:`check_finite`).
    """
    total = cost_terms(nodes, costs, grad)
    if grad:
        for node in baselined:
            total = total + baseline_term(node, node.estimator, costs)  # type: ignore[arg-type]
    check_finite(total, costs)  # raises, naming the cost
    return total


def cost_terms(nodes: Mapping[str, Node], costs: Iterable[Cost], grad: bool) -> Tensor:
    r""":math:`\sum_c s_c \sum_{\text{batch}} \mathrm{mean}_S\, □(τ_c)\, c` with :math:`τ_c` the aligned log-probabilities.

    The value is exactly :math:`\sum_c s_c \sum_{\text{batch}} \mathrm{mean}_S(c)`
    (□ is one in value), summed in registration order.
    """
    boxes: dict[tuple[tuple[str, ...], tuple[int, ...]], Tensor] = {}
    total: Optional[Tensor] = None
    for c in costs:
        term = c.value
        scored = c.scored
        if grad and scored:
            shape = term.shape
            key = (scored, shape)
            box = boxes.get(key)
            if box is None:
                tau: Optional[Tensor] = None
                for n in scored:
                    lp = nodes[n].log_prob
                    if lp.shape != shape:  # type: ignore[union-attr]
                        lp = align(lp, shape)  # type: ignore[arg-type]
                    tau = lp if tau is None else tau + lp
                box = boxes[key] = torch.exp(tau - tau.detach())  # type: ignore[operator,union-attr]  # □(τ)
            term = box * term
        t = term.mean(0).sum()
        if c.scale != 1.0:
            t = t * c.scale
        total = t if total is None else total + t
    return total  # type: ignore[return-value]


def _no_cost_function(z: Tensor) -> Tensor:
    raise TypeError(
        "this control variate needs the cost as a function of the node's sample, which a Graph "
        "does not have (its costs are tensors)."
    )


class _PerSampleContext(SignalContext):
    """Signal context of a child node: its distribution has one element per graph sample."""

    def score_sq_norm(self) -> Tensor:
        if self._score_sq is None:
            self._score_sq = score_sq_norm(self.dist, self.samples.unsqueeze(0)).squeeze(0)
        return self._score_sq


def context_for(node: Node) -> SignalContext:
    """The :class:`~scg.baselines.SignalContext` of a score-function node's control variate."""
    cls = _PerSampleContext if node.child else SignalContext
    return cls(
        dist=node.dist,
        samples=node.draws["z"].detach(),  # the node's value itself when it is the graph's leaf
        log_prob=node.log_prob,  # type: ignore[arg-type]  # score-function nodes only
        f=_no_cost_function,
        context=node.context,
    )


def baseline_term(node: Node, estimator: ScoreFunction, costs: Iterable[Cost]) -> Tensor:
    r"""Node w's control-variate term :math:`Σ_{\text{batch}} \mathrm{mean}_S (1 − □(\log p(w)))\, b_w` (+ extras).

    The learning signal :math:`A_w = Σ_{c ∋ w} s_c\, c` (costs brought to w's shape)
    goes through the node's control variate; what it subtracts, :math:`b_w = A_w − A'_w`
    (detached), enters DiCE-style (Mao et al. 2019): zero in value, :math:`−b_w ∇\log p(w)`
    in gradient. A control variate's extra term (``Learned``'s regression) is added.
    """
    lp = node.log_prob
    shape = tuple(lp.shape)  # type: ignore[union-attr]
    signal: Optional[Tensor] = None
    for c in costs:
        if node.name in c.deps:
            part = align(c.value if c.scale == 1.0 else c.value * c.scale, shape).expand(shape)
            signal = part if signal is None else signal + part
    if signal is None:  # no cost depends on this node: its score term is zero anyway
        return lp.new_zeros(())  # type: ignore[union-attr]
    new, extra = estimator.baseline(signal, context_for(node))  # type: ignore[misc]
    b = (signal - new).detach()
    out = ((1.0 - magic_box(lp)) * b).mean(0).sum()  # type: ignore[arg-type]
    return out if extra is None else out + extra.sum()


def check_finite(total: Tensor, costs: Iterable[Cost]) -> None:
    """Raise ``ValueError`` naming the first non-finite cost if ``total`` is inf or nan.

    One host read of the scalar on the CPU; skipped on accelerators (it would
    synchronise the device every step) and inside ``torch.func`` transforms.
    """
    if not host_checkable(total) or math.isfinite(total.item()):
        return
    for c in costs:
        if not bool(torch.isfinite(c.value).all()):
            raise ValueError(f"`value` of cost {c.name!r} must be finite; got inf or nan.")
    raise ValueError("the surrogate is not finite (inf or nan): check the control variates' inputs.")
