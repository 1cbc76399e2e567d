"""Helpers shared by several test modules (imported as ``_helpers``: pytest puts tests/ on sys.path)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def central_difference(
    f: Callable[[], torch.Tensor],
    params: Sequence[torch.Tensor],
    direction: Sequence[torch.Tensor],
    h: float = 1e-6,
) -> torch.Tensor:
    """The derivative of ``f()`` along ``direction`` by a central difference.

    ``(f(θ + h·d) − f(θ − h·d)) / (2h)`` with θ = ``params`` (moved in place under
    ``torch.no_grad()`` and put back afterwards); the error is O(h²) for smooth ``f``.
    """
    with torch.no_grad():
        for p, d in zip(params, direction, strict=False):
            p.add_(h * d)
        up = f()
        for p, d in zip(params, direction, strict=False):
            p.sub_(2 * h * d)
        down = f()
        for p, d in zip(params, direction, strict=False):
            p.add_(h * d)
    return (up - down) / (2 * h)
