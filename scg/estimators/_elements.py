"""Per-element perturbations shared by measure-valued and coupled estimators."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Distribution

from scg._dist import unwrap

__all__ = ["split_event", "replace_each", "event_size"]


def event_size(dist: Distribution) -> int:
    """Number of scalar positions ``E`` in the reinterpreted event dims of ``dist``."""
    _, k = unwrap(dist)
    batch = tuple(dist.batch_shape)
    full = batch + tuple(dist.event_shape)
    return math.prod(full[len(batch) : len(batch) + k]) if k else 1


def split_event(x: Tensor, batch_ndim: int, k: int) -> Tensor:
    """Flatten the ``k`` reinterpreted dims after ``[S, *batch]`` into one dim ``E``."""
    lead = x.shape[: 1 + batch_ndim]
    rest = x.shape[1 + batch_ndim + k :]
    return x.reshape(*lead, -1, *rest) if k else x.reshape(*lead, 1, *rest)


def replace_each(z: Tensor, new: Tensor, trailing: int = 0) -> Tensor:
    """All E single-position replacements: ``out[j] = z`` with position j taken from ``new``.

    Args:
        z, new: ``[S, *batch, E, *trailing]``.
        trailing: number of trailing dims after E (1 for one-hot vectors).

    Returns:
        ``[E, S, *batch, E, *trailing]``.
    """
    E = z.shape[z.dim() - 1 - trailing]
    eye = torch.eye(E, dtype=torch.bool, device=z.device)
    mask = eye.reshape(E, *([1] * (z.dim() - 1 - trailing)), E, *([1] * trailing))
    return torch.where(mask, new.unsqueeze(0), z.unsqueeze(0))
