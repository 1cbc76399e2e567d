"""Constant, moving-average, leave-one-out and normalising control variates."""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import Tensor, nn

from scg.baselines.base import ControlVariate, SignalContext

__all__ = ["Constant", "MovingAverage", "LeaveOneOut", "Normalize"]


def _check_decay(decay: float) -> float:
    if isinstance(decay, bool) or not isinstance(decay, (int, float)):
        raise TypeError(f"`decay` must be a float in [0, 1); got {type(decay).__name__}.")
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"`decay` must be in [0, 1); got {decay}.")
    return float(decay)


def _buffer(module: nn.Module, name: str) -> Tensor:
    """Buffer ``name`` of ``module``: always a tensor here (these modules never register ``None``)."""
    return cast(Tensor, module._buffers[name])


def _one_minus(decay: float) -> dict[torch.dtype, float]:
    """1 − β as the floating dtypes round β: the bias correction's weight is then exactly 1 at t = 1."""
    dtypes = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
    return {d: 1.0 - float(torch.tensor(decay, dtype=d)) for d in dtypes}


class _RunningState(ControlVariate):
    """Base of control variates with running state that follows the learning signal.

    Subclasses register their floating buffers (names in ``_floating``) and, if they
    count updates, a ``long`` buffer ``steps``. Before an update, :meth:`_follow`
    moves a buffer to the signal's dtype and device (re-registering it, so
    ``state_dict`` carries the new dtype); loading a ``state_dict`` adopts the saved
    dtypes, so a float64 checkpoint restores float64 state into a fresh module.
    The counter is updated in place: no Python number changes from step to step, so
    ``torch.compile`` guards nothing on it.
    """

    _floating: tuple[str, ...] = ()

    def _follow(self, name: str, like: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """Buffer ``name`` on ``like``'s device, in ``dtype`` (default: ``like``'s dtype)."""
        buf = _buffer(self, name)
        dtype = like.dtype if dtype is None else dtype
        if buf.dtype != dtype or buf.device != like.device:
            buf = buf.to(device=like.device, dtype=dtype)
            self._buffers[name] = buf
        return buf

    def _follow_all(self, like: Tensor) -> None:
        for name in self._floating:
            self._follow(name, like)
        if "steps" in self._buffers:
            self._follow("steps", like, torch.long)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        for name in self._floating:
            saved = state_dict.get(prefix + name)
            buf = self._buffers.get(name)
            if isinstance(saved, Tensor) and buf is not None and saved.dtype != buf.dtype:
                self._buffers[name] = buf.to(saved.dtype)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class Constant(ControlVariate):
    r"""Fixed baseline: :math:`A_s = f(z_s) − b`.

    Unbiased for any constant b, since :math:`E[b ∇\log q] = 0`. With the
    variance-optimal constant :math:`b^* = E[f‖∇\log q‖²]/E[‖∇\log q‖²]` this is the
    "SF*" column of Mohamed et al. (2020), Table 3.

    Args:
        value: the baseline b (float or tensor broadcastable to ``batch_shape``),
            finite. A Python number is kept in float64, a floating tensor in its own
            dtype; b is cast to the signal's dtype when used.
    """

    value: Tensor

    def __init__(self, value: float | Tensor) -> None:
        super().__init__()
        if isinstance(value, bool) or not isinstance(value, (int, float, Tensor)):
            raise TypeError(f"`value` must be a float or a tensor; got {type(value).__name__}.")
        if isinstance(value, Tensor):
            b = value.detach().clone()
            b = b if b.is_floating_point() else b.to(torch.float64)
        else:
            b = torch.tensor(float(value), dtype=torch.float64)
        if not bool(torch.isfinite(b).all()):
            shown = value if not isinstance(value, Tensor) else value.tolist()
            raise ValueError(f"`value` must be finite; got {shown}.")
        self.register_buffer("value", b)

    def forward(self, signal: Tensor, ctx: SignalContext) -> tuple[Tensor, Tensor | None]:
        b = _buffer(self, "value")
        if b.device != signal.device:  # follow the problem's device once, keep b's precision
            b = b.to(signal.device)
            self._buffers["value"] = b
        return signal - (b if b.dtype == signal.dtype else b.to(signal.dtype)), None


class MovingAverage(_RunningState):
    r"""Exponential moving average of past learning signals as the baseline.

    .. math::
        b_t = \frac{c_t}{1 − β^t}, \quad c_{t+1} = β c_t + (1 − β)\,\bar A_t
        \quad\Longleftrightarrow\quad
        b_{t+1} = b_t + w_t (\bar A_t − b_t),\; w_t = \frac{1 − β}{1 − β^{t+1}}

    (bias-corrected like Adam; :math:`b_0 = 0`, so the first estimate uses no
    baseline and :math:`b_1 = \bar A_0`). The bias-corrected average is kept
    directly (buffer ``value``; the update count t is the ``long`` buffer ``steps``),
    so a step costs one subtraction, one mean, five scalar ops for the weight and one
    in-place ``lerp``, all tensor operations (no host read; ``torch.compile`` does not
    recompile per step). With ``optimal=True`` the average is weighted by the
    squared score norm, estimating the variance-optimal constant
    :math:`b^* = E[A‖∇\log q‖²] / E[‖∇\log q‖²]` as the ratio of two averages
    (buffers ``numerator``, ``denominator``).

    Properties: unbiased — :math:`b_t` uses only earlier draws. One scalar for all
    batch elements (NVIL's ``c``). State updates in training mode and outside
    ``torch.func`` transforms, and takes the signal's dtype and device at its first
    update (a float64 problem keeps a float64 baseline).

    Args:
        decay: β ∈ [0, 1).
        optimal: weight by the squared score norm (keyword-only).

    References:
        Williams, "Simple statistical gradient-following algorithms...", 1992.
        Mnih & Gregor, "Neural Variational Inference and Learning in Belief Networks", 2014.
        https://arxiv.org/abs/1402.0030
    """

    value: Tensor
    numerator: Tensor
    denominator: Tensor
    steps: Tensor

    def __init__(self, decay: float = 0.9, *, optimal: bool = False) -> None:
        super().__init__()
        self.decay = _check_decay(decay)
        self.optimal = bool(optimal)
        self._one_minus_decay = _one_minus(self.decay)
        self._floating = ("numerator", "denominator") if self.optimal else ("value",)
        for name in self._floating:
            self.register_buffer(name, torch.zeros(()))
        #: Number of updates so far (a ``long`` buffer, saved in ``state_dict``).
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def baseline(self) -> Tensor:
        """The current baseline value (0 before the first update)."""
        if not self.optimal:
            return self.value.clone()
        if float(self.denominator) == 0.0:
            return torch.zeros_like(self.numerator)
        return self.numerator / self.denominator

    def forward(self, signal: Tensor, ctx: SignalContext) -> tuple[Tensor, Tensor | None]:
        updating = self.updating(signal)
        if updating:
            self._follow_all(signal)
        if self.optimal:
            return self._forward_optimal(signal, ctx, updating)
        b = _buffer(self, "value")
        out = signal - (b if b.dtype == signal.dtype and b.device == signal.device else b.to(signal))
        if updating:
            # In-place update of buffers from detached values: records no graph, and ``out``
            # (a subtraction saves no inputs) is unaffected.
            steps = _buffer(self, "steps")
            steps.add_(1)
            # w = (1 − β) / (1 − β^t), in place on one temporary (few small ops, no host read)
            one_minus = self._one_minus_decay.get(b.dtype, 1.0 - self.decay)
            w = torch.full_like(b, self.decay).pow_(steps).sub_(1.0).div_(-one_minus).reciprocal_()
            b.lerp_(signal.detach().mean(), w)
        return out, None

    def _forward_optimal(
        self, signal: Tensor, ctx: SignalContext, updating: bool
    ) -> tuple[Tensor, Tensor | None]:
        num, den = self.numerator.to(signal), self.denominator.to(signal)
        # num = 0 whenever den = 0 (both start at 0; den > 0 after an update with any weight),
        # so the clamp makes b = 0 before the first update without a branch.
        b = num / den.clamp_min(torch.finfo(signal.dtype).tiny)
        if updating:
            _buffer(self, "steps").add_(1)
            weight = ctx.score_sq_norm().detach()
            w = 1.0 - self.decay
            self.numerator.lerp_((signal.detach() * weight).mean().to(self.numerator), w)
            self.denominator.lerp_(weight.mean().to(self.denominator), w)
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

    def forward(self, signal: Tensor, ctx: SignalContext) -> tuple[Tensor, Tensor | None]:
        S = signal.shape[0]
        if S < 2:
            raise ValueError(
                f"`num_samples` must be >= 2 for LeaveOneOut (it averages the other samples); got {S}."
            )
        a = signal.detach()
        b = (a.sum(0, keepdim=True) - a) / (S - 1)
        return signal - b, None


class Normalize(_RunningState):
    r"""NVIL's variance normalisation: divide the signal by a running standard deviation.

    .. math:: A'_s = A_s / \max(1, \sqrt{v_t}), \quad v_{t+1} = β v_t + (1 − β)\,\widehat{\mathrm{Var}}(A)

    with :math:`v_1 = \widehat{\mathrm{Var}}(A_0)` (the first update takes the batch
    variance). Buffers ``variance`` and ``steps`` (``long``) take the signal's dtype
    and device at the first update; a batch variance beyond the dtype's range
    saturates at its largest finite value instead of overflowing to ``inf``.

    Properties: the direction of the expected gradient is kept but its scale is
    divided by :math:`\max(1, \sqrt{v_t})` — so ``unbiased = False`` (unbiased up to
    a positive factor that depends only on earlier draws).

    References:
        Mnih & Gregor, "Neural Variational Inference and Learning in Belief Networks", 2014, §3.3.
    """

    unbiased = False
    _floating = ("variance",)
    variance: Tensor
    steps: Tensor

    def __init__(self, decay: float = 0.8) -> None:
        super().__init__()
        self.decay = _check_decay(decay)
        self.register_buffer("variance", torch.zeros(()))
        #: Number of updates so far (a ``long`` buffer, saved in ``state_dict``).
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def forward(self, signal: Tensor, ctx: SignalContext) -> tuple[Tensor, Tensor | None]:
        updating = self.updating(signal)
        if updating:
            self._follow_all(signal)
        var = _buffer(self, "variance")
        scale = var if var.dtype == signal.dtype and var.device == signal.device else var.to(signal)
        out = signal / scale.sqrt().clamp_min(1.0)
        if updating:
            a = signal.detach()
            new = a.var(unbiased=False) if a.numel() > 1 else torch.zeros_like(var)
            new = new.clamp_max(torch.finfo(var.dtype).max)  # finite, so lerp never meets inf − inf
            steps = _buffer(self, "steps")
            var.lerp_(new, torch.full_like(var, 1.0 - self.decay).masked_fill_(steps == 0, 1.0))
            steps.add_(1)
        return out, None

    def extra_repr(self) -> str:
        return f"decay={self.decay}"
