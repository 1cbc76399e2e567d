"""Control variates as composable transforms of the learning signal.

A score-function-type estimator multiplies ``∇ log q(z_s)`` by a *learning
signal* ``A_s``; without control variates ``A_s = f(z_s)``. A control variate is
a transform ``A ↦ A'`` (optax-style: :func:`chain` composes them left to right),
optionally with a zero-valued *extra* surrogate term whose gradient trains a
learned baseline or adds back a control variate's known expectation.

Contract for ``ControlVariate.forward(signal, ctx) -> (signal', extra)``:

* ``signal``: ``[S, *batch_shape]``, the current learning signal (attached to
  ``f``'s own parameters; anything subtracted must be detached).
* ``extra``: ``None`` or a ``[*batch_shape]`` tensor with value exactly 0.
* Unbiasedness: what is subtracted from ``signal[s]`` must not depend on
  ``z_s`` — or, if it does (:class:`~scg.baselines.Delta`), its expectation must
  be added back through ``extra``. State (running averages) is read before it is
  updated, so it depends only on earlier draws.
* State lives in the module (buffers), updates only in training mode and outside
  ``torch.func`` transforms, and is saved by ``state_dict()``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from scg._checks import under_transform
from scg._dist import parameters_of, unwrap

__all__ = [
    "SignalContext",
    "ControlVariate",
    "Chain",
    "chain",
    "score_sq_norm",
    "check_baseline",
    "signal_rows",
    "cost_function",
]


@dataclass
class SignalContext:
    """What a control variate may look at besides the signal.

    Attributes:
        dist: the distribution (parameters attached).
        samples: ``[n, *batch_shape, *event_shape]`` draws (detached): ``n = S`` in
            ``scg.expectation``; in a :class:`scg.Graph` a child node's distribution
            carries the graph's sample dims in its batch shape and ``n = 1``.
        log_prob: ``[N, *batch]``, ``dist.log_prob(samples)`` (attached) with every
            sample dim flattened into the first (N rows), the layout of the signal.
        f: the cost function.
        context: user input for learned baselines (e.g. the data x), or ``None``.
    """

    dist: Distribution
    samples: Tensor
    log_prob: Tensor
    f: Callable[[Tensor], Tensor]
    context: Tensor | None = None
    _score_sq: Tensor | None = field(default=None, repr=False)

    @property
    def num_samples(self) -> int:
        return int(self.log_prob.shape[0])

    def score_sq_norm(self) -> Tensor:
        """``‖∇_λ log q(z_s)‖²`` per sample and batch element, λ the distribution's parameters."""
        if self._score_sq is None:
            self._score_sq = score_sq_norm(self.dist, self.samples).reshape(self.log_prob.shape)
        return self._score_sq


def score_sq_norm(dist: Distribution, samples: Tensor) -> Tensor:
    """Squared norm of the score w.r.t. the distribution's own parameters, ``[S, *batch_shape]``.

    Computed with ``torch.func.grad`` on per-sample copies of the parameters, so it
    works for any distribution whose constructor takes its ``arg_constraints`` names.
    """
    base, k = unwrap(dist)
    params = {name: value.detach() for name, value in parameters_of(base).items()}
    if not params:
        raise TypeError(f"cannot read the parameters of {type(base).__name__} for its score.")
    S = samples.shape[0]
    shape = (S, *base.batch_shape)
    expanded = {}
    for name, value in params.items():
        extra_dims = value.dim() - len(base.batch_shape)
        target = shape + tuple(value.shape[value.dim() - extra_dims :]) if extra_dims > 0 else shape
        expanded[name] = value.expand(target).clone()
    cls: Callable[..., Distribution] = type(base)  # the family's constructor, parameters by name

    def total_log_prob(p: dict[str, Tensor]) -> Tensor:
        return cls(**p, validate_args=False).log_prob(samples).sum()

    grads = torch.func.grad(total_log_prob)(expanded)
    out = torch.zeros(shape, dtype=samples.dtype, device=samples.device)
    for g in grads.values():
        sq = g * g
        while sq.dim() > len(shape):
            sq = sq.sum(-1)
        out = out + sq
    for _ in range(k):
        out = out.sum(-1)
    return out


class ControlVariate(nn.Module):
    """Base class of learning-signal transforms (contract in the module docstring)."""

    #: False when the transform changes the expected gradient (e.g. rescales it).
    unbiased: bool = True
    #: Smallest number of samples the transform needs.
    min_samples: int = 1
    #: Whether it evaluates the cost function itself (``ctx.f``); such a transform cannot
    #: serve a :class:`scg.Graph` node, whose costs are tensors.
    needs_cost_function: bool = False

    def forward(self, signal: Tensor, ctx: SignalContext) -> tuple[Tensor, Tensor | None]:  # pragma: no cover
        raise NotImplementedError

    def updating(self, signal: Tensor) -> bool:
        """Whether running state may be updated now (training mode, not under torch.func)."""
        return self.training and not under_transform(signal)


class Chain(ControlVariate):
    """Apply control variates left to right; extras are summed."""

    def __init__(self, *transforms: ControlVariate) -> None:
        super().__init__()
        for t in transforms:
            if not isinstance(t, ControlVariate):
                raise TypeError(
                    f"`chain` arguments must be scg.baselines control variates; got {type(t).__name__}."
                )
        self.transforms = nn.ModuleList(transforms)
        self.unbiased = all(t.unbiased for t in transforms)
        self.min_samples = max([t.min_samples for t in transforms], default=1)

    def forward(self, signal: Tensor, ctx: SignalContext) -> tuple[Tensor, Tensor | None]:
        extra: Tensor | None = None
        for t in self.transforms:
            signal, e = t(signal, ctx)
            if e is not None:
                extra = e if extra is None else extra + e
        return signal, extra


def chain(*transforms: ControlVariate) -> Chain:
    """Compose control variates: ``chain(MovingAverage(), Learned(net), Normalize())`` is NVIL."""
    return Chain(*transforms)


def check_baseline(baseline: object, refuse: tuple[type, ...] = (), why: str = "") -> ControlVariate | None:
    """``baseline`` if it is a control variate or ``None``; a ``TypeError`` naming the argument otherwise.

    A baseline containing one of the ``refuse`` types is a ``ValueError`` with the message ``why``.
    """
    if baseline is not None and not isinstance(baseline, ControlVariate):
        raise TypeError(
            f"`baseline` must be a control variate from scg.baselines or None; got {type(baseline).__name__}."
        )
    if baseline is not None and refuse and any(isinstance(m, refuse) for m in baseline.modules()):
        raise ValueError(why)
    return baseline


def signal_rows(signal: Tensor, sample_dims: int, baseline: ControlVariate) -> Tensor:
    """The learning signal with its ``sample_dims`` leading dims flattened into rows, checked for ``min_samples``."""
    rows = signal.reshape(-1, *signal.shape[sample_dims:]) if sample_dims != 1 else signal
    if rows.shape[0] < baseline.min_samples:
        raise ValueError(
            f"`num_samples` must be >= {baseline.min_samples} for {type(baseline).__name__}; got {rows.shape[0]}."
        )
    return rows


def cost_function(f: Callable[[Tensor], Tensor] | None) -> Callable[[Tensor], Tensor]:
    """``f``, or in a :class:`scg.Graph` (no cost function) one that explains why a control variate cannot call it."""
    if f is not None:
        return f

    def missing(z: Tensor) -> Tensor:
        raise TypeError(
            "this control variate needs the cost as a function of the node's sample (Delta), which a "
            "scg.Graph does not have (its costs are tensors); use Constant, MovingAverage, LeaveOneOut, "
            "Learned or Normalize in a Graph, or scg.expectation for Delta."
        )

    return missing
