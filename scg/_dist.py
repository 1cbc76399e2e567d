"""Helpers to look inside ``torch.distributions`` objects without wrapping them.

scg never subclasses or patches torch distributions; these functions peel
``Independent`` layers and read parameters so that estimators which act per
element (measure-valued, DisARM, RELAX) know which dimensions are batch and which
are event.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Bernoulli, Distribution, Independent
from torch.distributions.utils import lazy_property

from scg._checks import all_finite, check_cost, host_checkable

__all__ = [
    "unwrap", "base_of_kind", "expected_cost_shape", "parameters_of", "evaluate", "sample_mean", "sample_log_prob",
    "bernoulli_nll",
]

_wrapped = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)


def bernoulli_nll(logits: Tensor, value: Tensor) -> Tensor:
    r"""Elementwise :math:`−\log \mathrm{Bernoulli}(x; ℓ) = \mathrm{softplus}(ℓ) − xℓ` (``logits``, ``value`` of one shape).

    Outside ``torch.func`` transforms this is ``F.binary_cross_entropy_with_logits(logits,
    value, reduction="none")``: one fused kernel forward and one backward. Inside them
    (:func:`scg.diagnostics.gradient_samples` runs ``vmap(grad(fn))``) it is
    ``softplus(ℓ) − x·ℓ``: ``vmap`` has no batching rule for the fused loss and runs its
    decomposition instead (``clamp_min``, ``exp``, ``log`` and, backward, a ``where`` that
    torch's CPU kernel makes slow), 9 ms of a 40 ms call in ``docs/benchmarks.md`` case 4,
    where ``softplus`` and its backward are single batched kernels. Both forms are stable
    (no overflow); they agree to float rounding of the terms, absolute error about one ulp
    of ``|ℓ|`` where ``x = 1`` and ``ℓ ≫ 1`` (the loss there is below ``e^{−ℓ}``).
    """
    if _wrapped is not None and (_wrapped(logits) or _wrapped(value)):
        return F.softplus(logits) - value * logits
    return F.binary_cross_entropy_with_logits(logits, value, reduction="none")


def unwrap(dist: Distribution) -> tuple[Distribution, int]:
    """Peel ``Independent`` layers.

    Returns:
        ``(base, k)``: the innermost non-``Independent`` distribution and the total
        number of its batch dims that ``dist`` reinterprets as event dims.
    """
    k = 0
    while isinstance(dist, Independent):
        k += dist.reinterpreted_batch_ndims
        dist = dist.base_dist
    return dist, k


def base_of_kind(
    dist: Distribution, kinds: tuple[type, ...], name: str, kind: str, hint: str = ""
) -> tuple[Distribution, int]:
    """``unwrap(dist)`` if its base is one of ``kinds``; else a TypeError naming ``name`` and the ``kind`` it needs."""
    if not isinstance(dist, Distribution):
        raise TypeError(f"`dist` must be a torch.distributions.Distribution; got {type(dist).__name__}.")
    base, k = unwrap(dist)
    if not isinstance(base, kinds):
        raise TypeError(
            f"`dist` must be {kind} (optionally Independent) for {name}; got {type(base).__name__}.{hint}"
        )
    return base, k


def expected_cost_shape(dist: Distribution, num_samples: int) -> tuple[int, ...]:
    """Shape ``f`` must return for ``num_samples`` draws: ``[S, *batch_shape]``."""
    return (num_samples, *dist.batch_shape)


def parameters_of(dist: Distribution) -> dict[str, Tensor]:
    """The tensors a distribution was constructed from (e.g. ``loc``/``scale``, ``logits``).

    Only parameters set at construction are returned (``probs`` *or* ``logits``),
    so no lazily derived tensor is created.
    """
    base, _ = unwrap(dist)
    out: dict[str, Tensor] = {}
    for name in base.arg_constraints:
        if isinstance(getattr(type(base), name, None), lazy_property):
            value = base.__dict__.get(name)  # set at construction, or a cached derived value
        else:
            value = getattr(base, name, None)  # plain attribute or property (e.g. Beta's concentrations)
        if isinstance(value, Tensor):
            out[name] = value
    if "logits" in out and "probs" in out:  # one is a cached lazy property of the other
        del out["probs"]
    return out


def evaluate(f: Callable[[Tensor], Tensor], z: Tensor, dist: Distribution, num_samples: int) -> Tensor:
    """Call ``f(z)`` and check it returned costs of shape ``[S, *batch_shape]``, finite on the CPU.

    The finiteness check reads a value on the host, so it runs on the CPU only (as
    :class:`scg.Graph`'s): on an accelerator it would stall the device's queue on every
    call. There a non-finite cost shows in the returned estimate (its mean is not finite).
    """
    value = f(z)
    expected = (num_samples, *dist.batch_shape)
    if (isinstance(value, Tensor) and value.shape == expected and value.is_floating_point()
            and (not host_checkable(value) or all_finite(value))):
        return value  # the common case, without building the error hint
    hint = ""
    if dist.event_shape == () and len(dist.batch_shape) > 0:
        hint = (
            " If f sums over the last dims, make them event dims with "
            "torch.distributions.Independent(dist, k)."
        )
    return check_cost(value, expected, hint=hint)


def sample_log_prob(dist: Distribution, z: Tensor) -> Tensor:
    r"""``dist.log_prob(z)`` of the estimator's own samples ``z`` ``[S, *batch, *event]`` — the same tensor values.

    For ``Bernoulli`` and ``Independent(Bernoulli, 1)`` (argument validation off),
    the log-mass :math:`\log q(z) = -\mathrm{BCE}(\mathrm{logits}, z)` (summed over the
    last dim) is computed directly with the logits expanded to ``z``'s shape: the ops
    ``torch.distributions`` runs, without ``broadcast_all``'s second view and the two
    ``log_prob`` methods' Python — one score per step of every score-function
    estimator and graph node (≈ 35 µs of a 3 ms step, ``docs/benchmarks.md`` case 2).
    Identical values and derivatives (``tests/test_log_prob.py``); anything else —
    validation on, other shapes or dtypes, other families — calls ``dist.log_prob``.
    """
    base = dist.base_dist if type(dist) is Independent and dist.reinterpreted_batch_ndims == 1 else dist
    if type(base) is Bernoulli and not base._validate_args and not dist._validate_args:
        logits = base.logits
        n = logits.dim()
        if z.dtype == logits.dtype and z.dim() >= n and z.shape[z.dim() - n:] == logits.shape:
            out = -bernoulli_nll(logits.expand_as(z), z)
            return out.sum(-1) if base is not dist else out
    return dist.log_prob(z)


def sample_mean(x: Tensor) -> Tensor:
    """Mean over the sample dim 0; for one sample the same values as a view (no reduction op).

    ``x.mean(0)`` of a ``[1, ...]`` tensor is ``x[0] / 1`` — exactly ``x[0]`` — so the
    squeeze changes no value and saves a reduction forward and backward.
    """
    return x.squeeze(0) if x.shape[0] == 1 else x.mean(0)


def magic_box(log_prob: Tensor) -> Tensor:
    """DiCE's magic box: ``□(τ) = exp(τ − stop(τ))`` — value 1, gradient ``∇τ`` to any order.

    References:
        Foerster et al., "DiCE: The Infinitely Differentiable Monte Carlo Estimator", 2018.
        https://arxiv.org/abs/1802.05098
    """
    return torch.exp(log_prob - log_prob.detach())
