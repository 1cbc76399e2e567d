"""Helpers to look inside ``torch.distributions`` objects without wrapping them.

scg never subclasses or patches torch distributions; these functions peel
``Independent`` layers and read parameters so that estimators which act per
element (measure-valued, DisARM, RELAX) know which dimensions are batch and which
are event.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor
from torch.distributions import Distribution, Independent
from torch.distributions.utils import lazy_property

from scg._checks import (
    NON_FINITE_COST,
    all_finite,
    check_cost,
    compiling,
    host_checkable,
    queue_finite_check,
)

__all__ = ["unwrap", "base_of_kind", "parameters_of", "evaluate"]


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


def parameters_of(dist: Distribution) -> dict[str, Tensor]:
    """The tensors a distribution was constructed from (e.g. ``loc``/``scale``, ``logits``).

    Only parameters set at construction are returned (``probs`` *or* ``logits``),
    so no lazily derived tensor is created.
    """
    base, _ = unwrap(dist)
    out: dict[str, Tensor] = {}
    for name in base.arg_constraints:
        if isinstance(_class_attribute(type(base), name), lazy_property):
            value = base.__dict__.get(name)  # set at construction, or a cached derived value
        else:
            value = getattr(base, name, None)  # plain attribute or property (e.g. Beta's concentrations)
        if isinstance(value, Tensor):
            out[name] = value
    if "logits" in out and "probs" in out:  # one is a cached lazy property of the other
        del out["probs"]
    return out


def _class_attribute(cls: type, name: str) -> object:
    """``name`` as defined on ``cls`` or a base class, without calling its descriptor.

    ``getattr(cls, name)`` on a ``lazy_property`` builds a new wrapper object on every
    access, which ``torch.compile`` cannot guard on; the class dicts hold the property itself.
    """
    for klass in cls.__mro__:
        if name in klass.__dict__:
            return klass.__dict__[name]
    return None


def evaluate(f: Callable[[Tensor], Tensor], z: Tensor, dist: Distribution, num_samples: int) -> Tensor:
    """Call ``f(z)`` and check it returned costs of shape ``[S, *batch_shape]``, finite.

    The finiteness check reads a value on the host in eager mode on the CPU (as
    :class:`scg.Graph`'s), raising ``ValueError``. Under ``torch.compile`` it is queued
    in the compiled graph instead (:func:`scg._checks.queue_finite_check`: no host read,
    no graph break). Eager on an accelerator it is skipped — a host read would stall
    the device's queue on every call; a non-finite cost then shows in the returned
    estimate (its mean is not finite).
    """
    value = f(z)
    expected = (num_samples, *dist.batch_shape)
    if isinstance(value, Tensor) and value.shape == expected and value.is_floating_point():
        if compiling():
            queue_finite_check(value, NON_FINITE_COST)
            return value
        if not host_checkable(value) or all_finite(value):
            return value  # the common case, without building the error hint
    hint = ""
    if dist.event_shape == () and len(dist.batch_shape) > 0:
        hint = (
            " If f sums over the last dims, make them event dims with "
            "torch.distributions.Independent(dist, k)."
        )
    return check_cost(value, expected, hint=hint)
