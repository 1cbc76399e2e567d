"""Constant, moving-average, leave-one-out and normalising control variates."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from scg.baselines.base import ControlVariate, SignalContext

__all__ = ["Constant", "MovingAverage", "LeaveOneOut", "Normalize"]


def _check_decay(decay: float) -> float:
    if isinstance(decay, bool) or not isinstance(decay, (int, float)):
        raise TypeError(f"`decay` must be a float in [0, 1); got {type(decay).__name__}.")
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"`decay` must be in [0, 1); got {decay}.")
    return float(decay)


class Constant(ControlVariate):
    r"""Fixed baseline: :math:`A_s = f(z_s) − b`.

    Unbiased for any constant b, since :math:`E[b ∇\log q] = 0`. With the
    variance-optimal constant :math:`b^* = E[f‖∇\log q‖²]/E[‖∇\log q‖²]` this is the
    "SF*" column of Mohamed et al. (2020), Table 3.

    Args:
        value: the baseline b (float or tensor broadcastable to ``batch_shape``).
    """

    def __init__(self, value: float | Tensor) -> None:
        super().__init__()
        self.register_buffer("value", torch.as_tensor(value, dtype=torch.get_default_dtype()))

    def forward(self, signal: Tensor, ctx: SignalContext) -> tuple[Tensor, Optional[Tensor]]:
        return signal - self.value.to(signal), None


class MovingAverage(ControlVariate):
    r"""Exponential moving average of past learning signals as the baseline.

    .. math:: b_t = \frac{c_t}{1 − β^t}, \quad c_{t+1} = β c_t + (1 − β)\,\bar A_t

    (bias-corrected like Adam; :math:`b_1 = 0`). With ``optimal=True`` the average
    is weighted by the squared score norm, estimating the variance-optimal constant
    :math:`b^* = E[A‖∇\log q‖²] / E[‖∇\log q‖²]`.

    Properties: unbiased — :math:`b_t` uses only earlier draws. One scalar for all
    batch elements (NVIL's ``c``).

    Args:
        decay: β ∈ [0, 1).
        optimal: weight by the squared score norm (keyword-only).

    References:
        Williams, "Simple statistical gradient-following algorithms...", 1992.
        Mnih & Gregor, "Neural Variational Inference and Learning in Belief Networks", 2014.
        https://arxiv.org/abs/1402.0030
    """

    def __init__(self, decay: float = 0.9, *, optimal: bool = False) -> None:
        super().__init__()
        self.decay = _check_decay(decay)
        self.optimal = bool(optimal)
        self.register_buffer("numerator", torch.zeros(()))
        self.register_buffer("denominator", torch.zeros(()))

    def baseline(self) -> Tensor:
        """The current baseline value (0 before the first update)."""
        if float(self.denominator) == 0.0:
            return torch.zeros_like(self.numerator)
        return self.numerator / self.denominator

    def forward(self, signal: Tensor, ctx: SignalContext) -> tuple[Tensor, Optional[Tensor]]:
        num, den = self.numerator, self.denominator
        if num.dtype != signal.dtype or num.device != signal.device:
            num, den = num.to(signal), den.to(signal)
        # num = 0 whenever den = 0 (both start at 0; den > 0 after an update with any weight),
        # so the clamp makes b = 0 before the first update without a branch.
        b = num / den.clamp_min(torch.finfo(signal.dtype).tiny)
        if self.updating(signal):
            with torch.no_grad():  # few in-place ops: this runs every step
                a = signal.detach()
                if self.optimal:
                    w = ctx.score_sq_norm()
                    new_num, new_den = (a * w).mean(), w.mean()
                else:
                    new_num, new_den = a.mean(), 1.0
                self.numerator.mul_(self.decay).add_(new_num.to(self.numerator), alpha=1 - self.decay)
                self.denominator.mul_(self.decay).add_(new_den if isinstance(new_den, float)
                                                       else new_den.to(self.denominator), alpha=1 - self.decay)
        return signal - b, None

    def extra_repr(self) -> str:
        return f"decay={self.decay}, optimal={self.optimal}"


class LeaveOneOut(ControlVariate):
    r"""Leave-one-out baseline (RLOO): the mean of the other samples' signals.

    .. math:: A_i = f(z_i) − \frac{1}{S − 1}\sum_{j≠i} f(z_j)

    Requires S ≥ 2. Unbiased: :math:`z_j` is independent of :math:`z_i`.
    Equivalent to :math:`\frac{S}{S−1}(f_i − \bar f)`.

    References:
        Kool, van Hoof & Welling, "Buy 4 REINFORCE Samples, Get a Baseline for Free!", 2019.
        https://openreview.net/forum?id=r1lgTGL5DE
    """

    min_samples = 2

    def forward(self, signal: Tensor, ctx: SignalContext) -> tuple[Tensor, Optional[Tensor]]:
        S = signal.shape[0]
        if S < 2:
            raise ValueError(
                f"`num_samples` must be >= 2 for LeaveOneOut (it averages the other samples); got {S}."
            )
        a = signal.detach()
        b = (a.sum(0, keepdim=True) - a) / (S - 1)
        return signal - b, None


class Normalize(ControlVariate):
    r"""NVIL's variance normalisation: divide the signal by a running standard deviation.

    .. math:: A'_s = A_s / \max(1, \sqrt{v_t}), \quad v_{t+1} = β v_t + (1 − β)\,\widehat{\mathrm{Var}}(A)

    Properties: the direction of the expected gradient is kept but its scale is
    divided by :math:`\max(1, \sqrt{v_t})` — so ``unbiased = False`` (unbiased up to
    a positive factor that depends only on earlier draws).

    References:
        Mnih & Gregor, "Neural Variational Inference and Learning in Belief Networks", 2014, §3.3.
    """

    unbiased = False

    def __init__(self, decay: float = 0.8) -> None:
        super().__init__()
        self.decay = _check_decay(decay)
        self.register_buffer("variance", torch.zeros(()))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def forward(self, signal: Tensor, ctx: SignalContext) -> tuple[Tensor, Optional[Tensor]]:
        var = self.variance.to(signal)
        scale = var.sqrt().clamp_min(1.0)
        if self.updating(signal):
            with torch.no_grad():
                a = signal.detach()
                new = a.var(unbiased=False) if a.numel() > 1 else torch.zeros_like(var)
                if int(self.steps) == 0:
                    self.variance.copy_(new)
                else:
                    self.variance.copy_(self.decay * var + (1 - self.decay) * new)
                self.steps += 1
        return signal / scale, None

    def extra_repr(self) -> str:
        return f"decay={self.decay}"
