"""Input checks shared by the library: clear errors that name the argument.

Every message follows ``"`name` must ...; got ..."`` (see STYLE.md). Checks that
need a value on the host (finiteness) run in three forms:

* eager on the CPU: one host read, and a ``ValueError`` naming what must hold;
* while ``torch.compile`` traces (any device): no host read and no graph break —
  the check is queued as ``torch._assert_async`` (:func:`queue_finite_check`), which
  raises ``RuntimeError`` with the same message when the compiled code runs on the
  CPU, and is a device-side assertion on an accelerator;
* eager off the CPU, and inside ``torch.func`` transforms (where data-dependent
  control flow is not allowed): skipped — a host read per call would stall the
  device's queue; a non-finite cost then shows in the returned estimate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from scg._torch import is_wrapped
from scg.checks import check_positive, check_positive_int

__all__ = [
    "under_transform",
    "host_checkable",
    "check_positive_int",
    "check_positive",
    "check_cost",
    "all_finite",
    "compiling",
    "queue_finite_check",
    "NON_FINITE_COST",
]

#: The message of a non-finite cost, eager (ValueError) and compiled (torch._assert_async) alike.
NON_FINITE_COST = (
    "`f` must return finite costs; got non-finite values (inf or nan) — check f for overflow or log(0)."
)


def compiling() -> bool:
    """Whether ``torch.compile`` is tracing the calling code (then no value may be read on the host)."""
    return torch.compiler.is_compiling()


def under_transform(x: Tensor) -> bool:
    """True when ``x`` is being traced by a ``torch.func`` transform (vmap, grad, ...).

    False while ``torch.compile`` traces: the query is a private C++ call that Dynamo
    cannot trace, and a compiled region does not run inside a transform it cannot see.
    """
    if compiling():
        return False
    return bool(is_wrapped(x))


def host_checkable(x: Tensor) -> bool:
    """Whether a check that reads ``x``'s values on the host runs: eager, on the CPU, outside ``torch.func``."""
    if compiling():
        return False
    return x.is_cpu and not is_wrapped(x)


def queue_finite_check(x: Tensor, message: str) -> None:
    """While ``torch.compile`` traces: assert that ``x`` is finite without reading it on the host.

    ``torch._assert_async`` becomes part of the compiled graph (no graph break, no
    synchronisation); it raises ``RuntimeError(message)`` when the compiled code runs
    on the CPU and triggers a device-side assertion on an accelerator. Outside
    compilation this does nothing (eager checks read the host, see :func:`check_cost`).
    """
    if compiling():
        torch._assert_async(torch.isfinite(x.detach()).all(), message)


def check_cost(value: object, expected: Sequence[int], *, hint: str = "") -> Tensor:
    """Check what a cost function ``f`` returned: a tensor of shape ``expected``, finite.

    Raises:
        TypeError: ``f`` did not return a tensor.
        ValueError: wrong shape (no broadcasting is attempted) or non-finite values.
    """
    if not isinstance(value, Tensor):
        raise TypeError(f"`f` must return a torch.Tensor; got {type(value).__name__}.")
    if tuple(value.shape) != tuple(expected):
        raise ValueError(
            f"`f` must map samples [S, *batch_shape, *event_shape] to costs [S, *batch_shape] = "
            f"{list(expected)}; got shape {list(value.shape)}.{hint}"
        )
    if not value.is_floating_point():
        raise TypeError(f"`f` must return a floating-point tensor; got dtype {value.dtype}.")
    if host_checkable(value) and not all_finite(value):
        raise ValueError(NON_FINITE_COST)
    queue_finite_check(value, NON_FINITE_COST)
    return value


def all_finite(x: Tensor) -> bool:
    """Whether every element of ``x`` is finite, with one reduction and one host read.

    A sum is finite only if every term is (``nan`` and ``±inf`` propagate), so the
    elementwise test runs only when the sum is not finite — to tell an overflowing
    sum of finite values from a non-finite value. Two dispatched ops in the common
    case instead of the seven of ``torch.isfinite(x).all()``.
    """
    if math.isfinite(x.detach().sum().item()):
        return True
    return bool(torch.isfinite(x.detach()).all())
