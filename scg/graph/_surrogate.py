r"""A graph's surrogate: the DiCE cost terms and every node's term, assembled with :mod:`scg._dice`.

.. math::
    \hat L = \sum_c s_c \sum_{\text{batch}} \operatorname{mean}_{rows}
        □\Big(\sum_{w ∈ \mathrm{scored}(c)} \log p(w)\Big)\, c
      + \sum_w \sum_{\text{batch}} \Big[\operatorname{mean}_{rows}\, \mathrm{rows}_w(A_w) + \mathrm{extra}_w(A_w)\Big]

with :math:`A_w = \sum_{c ∋ w} s_c\, c` the costs that depend on node w, brought to
w's shape (the learning signal), and ``rows``/``extra`` the node's term
(:class:`scg.Parts`). The same functions compute ``scg.expectation``'s surrogate,
the one-node case.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence

import torch
from torch import Tensor

from scg._checks import compiling, host_checkable, queue_finite_check
from scg._dice import cost_term, reduce_rows
from scg.graph._dataflow import align
from scg.graph._nodes import Cost, Node

__all__ = ["surrogate", "signal_of", "check_finite"]


def _axes(axes: Sequence[Tensor | None], rank: int) -> list[Tensor | None]:
    """Weights of the first ``rank`` sample dims, outermost first (the order of a tensor's dims)."""
    return list(reversed(axes[:rank]))


def _mean_dim(x: Tensor, dim: int, w: Tensor | None) -> Tensor:
    if w is None:
        return x.mean(dim, keepdim=True)
    shape = [1] * x.dim()
    shape[dim] = -1
    return (w.to(x).reshape(shape) * x).sum(dim, keepdim=True)


def signal_of(node: Node, costs: Iterable[Cost], axes: Sequence[Tensor | None]) -> Tensor | None:
    """Node w's learning signal :math:`A_w = \\sum_{c ∋ w} s_c c` in w's graph shape ``[*sample dims, *batch]``.

    A cost's sample dims beyond w's, and those along which w's value is broadcast, are
    averaged with their weights; its batch dims are brought to w's (``align``).
    ``None`` when no cost depends on w.
    """
    lead = node.rank
    sample = node.sample_shape
    shape = (
        *sample,
        *(node.dist.batch_shape[node.base_rank :] if node.child else node.dist.batch_shape),
    )
    signal: Tensor | None = None
    for c in costs:
        if node.name not in c.deps:  # type: ignore[operator]
            continue
        x = c.value if c.scale == 1.0 else c.value * c.scale
        if c.rank > lead:
            x = reduce_rows(x, _axes(axes, c.rank)[: c.rank - lead])
        for i in range(lead):  # sample index lead-1-i at dim i
            if sample[i] == 1 and x.shape[i] != 1:
                x = _mean_dim(x, i, axes[lead - 1 - i])
        if node.estimator.perturbs_batch_elements:
            _check_separable(node, c, x, shape)
        part = align(x, shape, lead).expand(shape)
        signal = part if signal is None else signal + part
    return signal


def _check_separable(node: Node, c: Cost, x: Tensor, shape: tuple[int, ...]) -> None:
    lead = node.rank
    if any(x.dim() <= i or (x.shape[i] == 1 and shape[i] != 1) for i in range(lead, len(shape))):
        raise ValueError(
            f"cost {c.name!r} couples the batch elements of node {node.name!r} (shape {list(c.value.shape)}, "
            f"node batch {list(shape[lead:])}); {type(node.estimator).__name__} perturbs one event position "
            "of every batch element at once, which needs costs that keep them apart. Make the coupled dims event dims "
            "(Independent), or use ScoreFunction or DisARM for this node."
        )


def surrogate(
    nodes: Mapping[str, Node], costs: Collection[Cost], axes: Sequence[Tensor | None], grad: bool
) -> Tensor:
    """The graph's scalar surrogate (see the module docstring); only the value when ``grad`` is False.

    Raises:
        ValueError: the surrogate is not finite (see :func:`check_finite`).
    """
    boxes: dict[tuple[tuple[str, ...], tuple[int, ...]], Tensor | None] = {}
    total: Tensor | None = None
    for c in costs:
        tau: Tensor | None = None
        if grad and c.scored:
            shape = tuple(c.value.shape)
            key = (c.scored, shape)
            tau = boxes.get(key)
            if tau is None:
                for n in c.scored:
                    node = nodes[n]
                    lp = node.log_prob
                    if lp is None:  # not reached: scored nodes have a log-probability
                        continue
                    if node.rank < c.rank:
                        lp = lp.reshape((1,) * (c.rank - node.rank) + tuple(lp.shape))
                    if lp.shape != shape:
                        lp = align(lp, shape, c.rank)
                    tau = lp if tau is None else tau + lp
                boxes[key] = tau
        t = cost_term(c.value, tau, _axes(axes, c.rank)).sum()
        if c.scale != 1.0:
            t = t * c.scale
        total = t if total is None else total + t
    if grad:
        for node in nodes.values():
            if node.parts.term is None:
                continue
            signal = signal_of(node, costs, axes)
            if signal is None:  # no cost depends on this node: its term is zero
                continue
            sample_dims = 1 + node.base_rank if node.child else 1
            rows, extra = node.parts.term(node.to_parts(signal), None, sample_dims)
            if node.child:
                rows = rows.squeeze(0)
            t = reduce_rows(rows, _axes(axes, node.base_rank)).sum()
            if extra is not None:
                t = t + extra.sum()
            total = t if total is None else total + t
    check_finite(total, costs)  # type: ignore[arg-type]
    return total  # type: ignore[return-value]


def check_finite(total: Tensor, costs: Iterable[Cost]) -> None:
    """Raise ``ValueError`` naming the first non-finite cost if ``total`` is inf or nan.

    One host read of the scalar, eager on the CPU; skipped eager on accelerators (it
    would synchronise the device every step) and inside ``torch.func`` transforms.
    While ``torch.compile`` traces, the check is queued in the compiled graph
    (``torch._assert_async``: no host read, no graph break) and fails with a
    ``RuntimeError`` that does not name the cost.
    """
    if compiling():
        queue_finite_check(
            total,
            "the surrogate must be finite; got inf or nan: check the costs' values "
            "and the control variates' inputs.",
        )
        return
    if not host_checkable(total) or math.isfinite(total.item()):
        return
    for c in costs:
        if not bool(torch.isfinite(c.value).all()):
            raise ValueError(f"`value` of cost {c.name!r} must be finite; got inf or nan.")
    raise ValueError("the surrogate is not finite (inf or nan): check the control variates' inputs.")
