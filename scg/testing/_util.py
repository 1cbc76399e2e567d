"""Small helpers of the exact harness: argument checks, modes, flattening."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from scg._checks import check_positive_int as check_int

__all__ = [
    "no_validation",
    "frozen",
    "as_params",
    "check_int",
    "check_nodes",
    "check_tolerance",
    "flat",
    "labels",
]


@contextlib.contextmanager
def no_validation() -> Iterator[None]:
    """Turn off distribution argument validation (it branches on data; vmap forbids that)."""
    old = Distribution._validate_args
    Distribution.set_default_validate_args(False)
    try:
        yield
    finally:
        Distribution.set_default_validate_args(old)


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Evaluation mode (no running-statistics updates), restoring each submodule's mode."""
    modes = {m: m.training for m in module.modules()}
    module.eval()
    try:
        yield
    finally:
        for m, mode in modes.items():
            m.training = mode


def as_params(params: Tensor | Sequence[Tensor]) -> tuple[Tensor, ...]:
    if isinstance(params, Tensor):
        params = (params,)
    if not isinstance(params, (tuple, list)) or not params:
        raise TypeError(f"`params` must be a non-empty tuple of tensors; got {type(params).__name__}.")
    out = []
    for i, p in enumerate(params):
        if not isinstance(p, Tensor) or not p.is_floating_point():
            raise TypeError(f"`params[{i}]` must be a floating-point tensor; got {type(p).__name__}.")
        out.append(p.detach().clone())
    return tuple(out)


def check_nodes(nodes: object) -> None:
    if nodes is None:
        return
    if isinstance(nodes, dict):
        for name, n in nodes.items():
            check_int(f"nodes[{name!r}]", n)
        return
    check_int("nodes", nodes)


def check_tolerance(rtol: float, atol: float) -> None:
    for name, value in (("rtol", rtol), ("atol", atol)):
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not value >= 0
            or value == float("inf")
        ):
            raise ValueError(f"`{name}` must be a finite number >= 0; got {value!r}.")
    if rtol == 0 and atol == 0:
        raise ValueError("`rtol` and `atol` must not both be 0 (no quadrature reaches zero error).")


def flat(grads: Sequence[Tensor], C: int | None = None) -> Tensor:
    if C is None:
        return torch.cat([g.reshape(-1) for g in grads]).double()
    return torch.cat([g.reshape(C, -1) for g in grads], dim=1).double()


def labels(params: tuple[Tensor, ...]) -> list[str]:
    out = []
    for i, p in enumerate(params):
        if p.dim() == 0:
            out.append(f"params[{i}]")
        else:
            for idx in np.ndindex(*p.shape):
                out.append(f"params[{i}][{', '.join(map(str, idx))}]")
    return out
