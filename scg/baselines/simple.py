"""Constant, moving-average, leave-one-out and normalising control variates."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from scg._checks import under_transform
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

    .. math::
        b_t = \frac{c_t}{1 − β^t}, \quad c_{t+1} = β c_t + (1 − β)\,\bar A_t
        \quad\Longleftrightarrow\quad
        b_{t+1} = b_t + w_t (\bar A_t − b_t),\; w_t = \frac{1 − β}{1 − β^{t+1}}

    (bias-corrected like Adam; :math:`b_0 = 0`, so the first estimate uses no
    baseline and :math:`b_1 = \bar A_0`). The bias-corrected average is kept
    directly (buffer ``value``, the update count is saved as extra state), so a step
    costs one subtraction, one mean and one in-place ``lerp``. With ``optimal=True``
    the average is weighted by the squared score norm, estimating the
    variance-optimal constant :math:`b^* = E[A‖∇\log q‖²] / E[‖∇\log q‖²]` as the
    ratio of two averages (buffers ``numerator``, ``denominator``).

    Properties: unbiased — :math:`b_t` uses only earlier draws. One scalar for all
    batch elements (NVIL's ``c``). State updates in training mode and outside
    ``torch.func`` transforms.

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
        #: Number of updates so far (saved in ``state_dict`` as extra state).
        self.steps = 0
        if self.optimal:
            self.register_buffer("numerator", torch.zeros(()))
            self.register_buffer("denominator", torch.zeros(()))
        else:
            self.register_buffer("value", torch.zeros(()))

    def baseline(self) -> Tensor:
        """The current baseline value (0 before the first update)."""
        if not self.optimal:
            return self.value.clone()
        if float(self.denominator) == 0.0:
            return torch.zeros_like(self.numerator)
        return self.numerator / self.denominator

    def forward(self, signal: Tensor, ctx: SignalContext) -> tuple[Tensor, Optional[Tensor]]:
        if self.optimal:
            return self._forward_optimal(signal, ctx)
        b = self._buffers["value"]
        out = signal - (b if b.dtype == signal.dtype and b.device == signal.device else b.to(signal))
        if self.training and not under_transform(signal):
            # In-place update of a buffer from detached values: records no graph, and ``out``
            # (a subtraction saves no inputs) is unaffected.
            self.steps += 1
            w = (1.0 - self.decay) / (1.0 - self.decay ** self.steps)
            b.lerp_(signal.detach().mean().to(b), w)
        return out, None

    def _forward_optimal(self, signal: Tensor, ctx: SignalContext) -> tuple[Tensor, Optional[Tensor]]:
        num, den = self.numerator.to(signal), self.denominator.to(signal)
        # num = 0 whenever den = 0 (both start at 0; den > 0 after an update with any weight),
        # so the clamp makes b = 0 before the first update without a branch.
        b = num / den.clamp_min(torch.finfo(signal.dtype).tiny)
        if self.training and not under_transform(signal):
            self.steps += 1
            weight = ctx.score_sq_norm().detach()
            w = 1.0 - self.decay
            self.numerator.lerp_((signal.detach() * weight).mean().to(self.numerator), w)
            self.denominator.lerp_(weight.mean().to(self.denominator), w)
        return signal - b, None

    def get_extra_state(self) -> Tensor:
        return torch.tensor(self.steps, dtype=torch.long)  # a tensor: state_dict stays all tensors

    def set_extra_state(self, state: Tensor) -> None:
        self.steps = int(state)

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
        #: Number of updates so far (saved in ``state_dict`` as extra state).
        self.steps = 0

    def forward(self, signal: Tensor, ctx: SignalContext) -> tuple[Tensor, Optional[Tensor]]:
        var = self._buffers["variance"]
        scale = (var if var.dtype == signal.dtype and var.device == signal.device else var.to(signal))
        out = signal / scale.sqrt().clamp_min(1.0)
        if self.training and not under_transform(signal):
            a = signal.detach()
            new = a.var(unbiased=False) if a.numel() > 1 else torch.zeros_like(var)
            # the first update takes the batch variance; later ones average exponentially
            var.lerp_(new.to(var), 1.0 if self.steps == 0 else 1.0 - self.decay)
            self.steps += 1
        return out, None

    def get_extra_state(self) -> Tensor:
        return torch.tensor(self.steps, dtype=torch.long)

    def set_extra_state(self, state: Tensor) -> None:
        self.steps = int(state)

    def extra_repr(self) -> str:
        return f"decay={self.decay}"
