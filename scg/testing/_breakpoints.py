"""Breakpoints: where the integrand jumps or kinks, in the space of each law.

User breakpoints are z-space values where ``f`` jumps. For ``FromDistribution``
laws they split the sample's support directly. For ``Pathwise`` they are mapped
into noise space by bisection through the (elementwise, monotone) noise map, and
the noise map's own kink (Laplace: u = ½) is added. Any estimator may map them
itself by defining ``noise_breakpoints(dist, num_samples, points) -> {law: [*shape, k]}``;
a dict ``{law name: points}`` passes noise-space points directly.

For :class:`scg.MeasureValued` on a Normal the candidate points are ``μ + σε`` (the
value, and the other event positions), ``μ ± σW`` and ``μ + σM`` (breakpoint b maps to
``(b − μ)/σ`` in ε and M and to ``±(b − μ)/σ`` in W) and ``μ + σMU``: there the jump in
U lies at ``(b − μ)/(σM)``, which depends on M, so :func:`nested_points` asks for a
nested rule of (M, U) (see :func:`scg.testing._rules.nested_uniform_spec`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeAlias

import numpy as np
import torch
from torch import Tensor, nn
from torch.distributions import (
    Cauchy,
    Distribution,
    Exponential,
    Laplace,
    Normal,
    TransformedDistribution,
    Uniform,
)
from torch.distributions.transforms import Transform

from scg._dist import unwrap
from scg.laws import FromDistribution, Law, StandardUniform

__all__ = ["Breakpoints", "z_points", "law_points", "nested_points"]

Breakpoints: TypeAlias = None | float | Sequence[float] | Tensor | dict


def z_points(breakpoints: Breakpoints, dist: Distribution) -> np.ndarray | None:
    """User breakpoints in z-space as ``[M, k]`` over the sample's scalar elements."""
    if breakpoints is None or isinstance(breakpoints, dict):
        return None
    shape = (*dist.batch_shape, *dist.event_shape)
    pts = torch.as_tensor(breakpoints, dtype=torch.float64).detach().cpu()
    if pts.dim() == 0:
        pts = pts.reshape(1)
    try:
        pts = (
            pts.expand(*shape, pts.shape[-1])
            if pts.dim() == 1
            else torch.broadcast_to(pts, (*shape, pts.shape[-1]))
        )
    except RuntimeError as exc:
        raise ValueError(
            f"`breakpoints` must broadcast to [*batch_shape, *event_shape, k] = {[*shape, 'k']}; "
            f"got shape {list(pts.shape)}."
        ) from exc
    M = int(np.prod(shape)) if shape else 1
    return pts.reshape(M, -1).numpy()


def _declares_sign(t: Transform) -> bool:
    """Whether ``t`` is monotone: torch's ``Transform.sign`` raises NotImplementedError where it is not declared."""
    try:
        return t.sign is not None
    except NotImplementedError:
        return False


def _pathwise_points(
    estimator: nn.Module, dist: Distribution, law: Law, points: np.ndarray | None
) -> np.ndarray | None:
    """Map z-space breakpoints into a Pathwise estimator's noise space (elementwise monotone maps only).

    Also adds the kink of the noise map itself (Laplace: u = ½).
    """
    from scg.estimators.pathwise import Pathwise, reparameterize

    if not isinstance(estimator, Pathwise):
        return None
    rep = reparameterize(dist)
    inner, _ = unwrap(dist)
    while isinstance(inner, TransformedDistribution):
        for t in inner.transforms:
            if not _declares_sign(t) or t.event_dim != 0:
                return None
        inner, _ = unwrap(inner.base_dist)
    if rep is None or not isinstance(inner, (Normal, Uniform, Laplace, Cauchy, Exponential)):
        return None
    shape = tuple(law.shape)
    numel = int(np.prod(shape))
    if points is None:
        points = np.zeros((1, 0))
    if numel % points.shape[0]:
        return None
    pts = torch.as_tensor(np.tile(points, (numel // points.shape[0], 1)), dtype=torch.float64)
    lo, hi = (float(b) for b in law.support)
    lo = max(lo, -40.0) if not math.isfinite(lo) else lo + torch.finfo(torch.float64).tiny
    hi = min(hi, 40.0) if not math.isfinite(hi) else hi - 2.0**-53
    sample = rep[1]
    out = []
    if isinstance(inner, Laplace) and isinstance(law, StandardUniform):
        out.append(torch.full((numel,), 0.5, dtype=torch.float64))  # the kink of the inverse CDF
    with torch.no_grad():
        g_lo = sample(torch.full(shape, lo, dtype=torch.float64)).reshape(-1)
        g_hi = sample(torch.full(shape, hi, dtype=torch.float64)).reshape(-1)
        increasing = g_hi > g_lo
        for c in range(pts.shape[1]):
            target = pts[:, c]
            a = torch.full((numel,), lo, dtype=torch.float64)
            b = torch.full((numel,), hi, dtype=torch.float64)
            for _ in range(200):
                m = 0.5 * (a + b)
                right = (sample(m.reshape(shape)).reshape(-1) < target) == increasing
                a, b = torch.where(right, m, a), torch.where(right, b, m)
            inside = (target > torch.minimum(g_lo, g_hi)) & (target < torch.maximum(g_lo, g_hi))
            out.append(torch.where(inside, 0.5 * (a + b), torch.full_like(a, math.nan)))
    return torch.stack(out, -1).numpy() if out else None


def law_points(
    estimator: nn.Module, dist: Distribution, name: str, law: Law, breakpoints: Breakpoints
) -> np.ndarray | None:
    if isinstance(breakpoints, dict):
        if name not in breakpoints:
            return None
        numel = int(np.prod(law.shape))
        return torch.as_tensor(breakpoints[name], dtype=torch.float64).reshape(numel, -1).numpy()
    z = z_points(breakpoints, dist)
    if isinstance(law, FromDistribution):
        return z
    standard = _measure_valued_normal(estimator, dist, law, z)
    if standard is not None:
        return {"eps": standard, "m": standard, "w": np.concatenate([standard, -standard], 1)}.get(name)
    hook = getattr(estimator, "noise_breakpoints", None)
    if callable(hook) and z is not None:  # an estimator may map z-space points into its own noise space
        mapped = hook(dist, int(law.shape[0]), torch.as_tensor(z)).get(name)
        return (
            None
            if mapped is None
            else torch.as_tensor(mapped, dtype=torch.float64).reshape(int(np.prod(law.shape)), -1).numpy()
        )
    return _pathwise_points(estimator, dist, law, z)


def _measure_valued_normal(
    estimator: nn.Module, dist: Distribution, law: Law, z: np.ndarray | None
) -> np.ndarray | None:
    """``(b − μ)/σ`` per element of the law ``[numel, k]`` for MeasureValued on a Normal, else None."""
    from scg.estimators.measure_valued import MeasureValued

    base, _ = unwrap(dist)
    if z is None or not isinstance(estimator, MeasureValued) or not isinstance(base, Normal):
        return None
    shape = (*dist.batch_shape, *dist.event_shape)
    loc = base.loc.detach().double().expand(shape).reshape(-1, 1).cpu().numpy()
    scale = base.scale.detach().double().expand(shape).reshape(-1, 1).cpu().numpy()
    per_element = (z - loc) / scale
    return np.tile(per_element, (int(np.prod(law.shape)) // len(per_element), 1))


def nested_points(
    estimator: nn.Module, dist: Distribution, laws: dict[str, Law], breakpoints: Breakpoints
) -> dict[str, tuple[str, np.ndarray]]:
    """``{law: (outer law, cuts [numel, k])}``: laws whose jumps lie at ``cut / outer`` (nested rules)."""
    if "m" not in laws or "u" not in laws or isinstance(breakpoints, dict):
        return {}
    standard = _measure_valued_normal(estimator, dist, laws["m"], z_points(breakpoints, dist))
    return {} if standard is None else {"u": ("m", standard)}
