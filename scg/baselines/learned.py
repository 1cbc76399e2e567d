"""Input-dependent learned baseline (NVIL)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from scg._dist import parameters_of
from scg.baselines.base import ControlVariate, SignalContext

__all__ = ["Learned", "default_features"]


def default_features(ctx: SignalContext) -> Tensor:
    """Detached distribution parameters flattened per batch element: ``[*batch_shape, P]``.

    Used as the baseline's input when no ``context`` is given. They are a function
    of the node's inputs only, never of the sample, so the baseline stays unbiased.
    """
    batch = tuple(ctx.dist.batch_shape)
    parts = []
    for value in parameters_of(ctx.dist).values():
        v = (
            value.detach().expand(*batch, *value.shape[len(value.shape) - max(value.dim() - len(batch), 0) :])
            if value.dim() >= len(batch)
            else value.detach().expand(batch)
        )
        parts.append(v.reshape(*batch, -1))
    return torch.cat(parts, dim=-1)


class Learned(ControlVariate):
    r"""NVIL's input-dependent baseline :math:`b_ψ(x)`, trained in the same backward pass.

    .. math::
        A_s = f(z_s) − b_ψ(x), \qquad
        \text{extra} = r − \mathrm{stop}(r), \quad r = \frac1S\sum_s (\mathrm{stop}(A^{in}_s) − b_ψ(x))^2

    The extra term is zero in value; its gradient trains ψ to regress the incoming
    signal (so any optimiser that steps the estimator's parameters fits the
    baseline). Unbiased: :math:`b_ψ(x)` does not depend on the sample.

    Args:
        module: maps the context ``[*batch_shape, ...]`` to ``[*batch_shape]`` or
            ``[*batch_shape, 1]`` — or ``[S, *batch_shape]`` when the context varies per
            sample (a child node's parents in a :class:`scg.Graph`; still unbiased,
            since the parents do not depend on the node's own sample). The context is the ``context=`` argument of
            :func:`scg.expectation` (e.g. the data x) or, when omitted, the detached
            distribution parameters flattened to ``[*batch_shape, P]``.

    References:
        Mnih & Gregor, "Neural Variational Inference and Learning in Belief Networks", 2014.
        https://arxiv.org/abs/1402.0030
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TypeError(f"`module` must be a torch.nn.Module; got {type(module).__name__}.")
        self.module = module

    def forward(self, signal: Tensor, ctx: SignalContext) -> tuple[Tensor, Tensor | None]:
        inputs = ctx.context if ctx.context is not None else default_features(ctx)
        b = self.module(inputs)
        batch = tuple(signal.shape[1:])
        full = tuple(signal.shape)
        if tuple(b.shape) in (batch + (1,), full + (1,)):
            b = b.squeeze(-1)
        if tuple(b.shape) not in (batch, full) and b.numel() == signal.numel() and b.dim() > signal.dim():
            b = b.reshape(full)  # a per-row context with several sample dims (a child node below copies)
        if tuple(b.shape) not in (batch, full):
            raise ValueError(
                f"`module` of Learned must return [*batch_shape] = {list(batch)} or, when the context "
                f"varies per sample (inputs of a child node in a Graph), [S, *batch_shape] = {list(full)} "
                f"(either with a trailing 1 allowed); got {list(b.shape)}."
            )
        r = ((signal.detach() - b) ** 2).mean(0)
        return signal - b.detach(), r - r.detach()
