"""Scalar distributions for the exact harness: one element, its support, its log-density, a cache key."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Bernoulli, Binomial, Categorical, Distribution, Geometric, Poisson

__all__ = ["TAIL", "element_dist"]

#: Tail mass below which a discrete support (Poisson, Geometric) is truncated.
TAIL = 1e-16


def element_dist(base: Distribution, index: int) -> Distribution:
    """The scalar distribution of element ``index`` of ``base`` (flattened batch)."""
    batch = tuple(base.batch_shape)
    params = {}
    for name in base.arg_constraints:
        if name == "probs" and "logits" in base.__dict__:
            continue
        if name == "logits" and "logits" not in base.__dict__:
            continue
        value = getattr(base, name)
        if not isinstance(value, Tensor):
            params[name] = value
            continue
        extra = (
            tuple(value.shape[len(value.shape) - (value.dim() - len(batch)) :])
            if value.dim() > len(batch)
            else ()
        )
        v = value.detach().expand(batch + extra).reshape(-1, *extra)[index]
        params[name] = v
    return type(base)(**params, validate_args=False)


def _np_log_prob(d: Distribution, dtype: torch.dtype) -> Callable[[np.ndarray], np.ndarray]:
    def log_prob(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = d.log_prob(torch.as_tensor(x, dtype=dtype))
        return out.double().numpy()

    return log_prob


def _discrete_support(d: Distribution) -> np.ndarray | None:
    """Support values of a scalar discrete distribution (truncated where the tail < TAIL)."""
    if isinstance(d, Bernoulli):
        return np.array([0.0, 1.0])
    if isinstance(d, Categorical):
        return np.arange(d.probs.shape[-1], dtype=np.float64)
    if isinstance(d, Binomial):
        return np.arange(int(d.total_count) + 1, dtype=np.float64)
    if isinstance(d, (Poisson, Geometric)):
        if isinstance(d, Poisson):
            rate = float(d.rate)
            top = int(rate + 20.0 * math.sqrt(rate) + 60)
        else:
            p = float(d.probs)
            top = 0 if p >= 1.0 else int(math.ceil(math.log(TAIL * 1e-3) / math.log1p(-p))) + 1
        if top > 10**6:
            raise ValueError(f"the support of {type(d).__name__} is too long to enumerate (> 1e6 values).")
        k = np.arange(top + 1, dtype=np.float64)
        with torch.no_grad():
            pmf = d.log_prob(torch.as_tensor(k, dtype=torch.float64)).exp().numpy()
        tail = np.cumsum(pmf[::-1])[::-1]  # tail[i] = P(X >= i)
        last = int(np.nonzero(tail >= TAIL)[0][-1])
        return k[: last + 1]
    return None


def _key(d: Distribution) -> tuple:
    """Cache key of a scalar distribution: its type and parameters' dtypes and values."""
    values = []
    for name in sorted(d.arg_constraints):
        try:
            v = getattr(d, name)
        except Exception:  # noqa: BLE001 - a lazily derived parameter that cannot be computed
            continue
        if isinstance(v, Tensor):
            values.append((name, str(v.dtype), tuple(v.detach().double().reshape(-1).tolist())))
    return (type(d), tuple(values))
