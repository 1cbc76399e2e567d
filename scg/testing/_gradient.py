"""The exact gradient of ``E_q[f]`` by quadrature over ``q`` itself (no estimator, no sampling).

:func:`exact_gradient` reweights fixed quadrature nodes by the density ratio, so the
gradient is ``∫ (∇f) q + f ∇q`` per batch element (the score-function identity in
expectation, exact on the grid), plus the boundary terms of parameter-dependent
supports (Uniform, Leibniz rule). :func:`scg.testing.assert_unbiased` compares it
with the mean of an estimator's gradient from :func:`scg.testing.exact_moments`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Distribution, Uniform

from scg._dice import magic_box
from scg._dist import evaluate, unwrap
from scg.laws import FromDistribution
from scg.testing import _grid, _rules
from scg.testing._breakpoints import Breakpoints, z_points
from scg.testing._refine import refine
from scg.testing._util import (
    as_params,
    check_int,
    check_nodes,
    check_tolerance,
    flat,
    no_validation,
)

__all__ = ["exact_gradient", "MakeDist"]

MakeDist = Callable[..., Distribution]


def exact_gradient(
    make_dist: MakeDist,
    params: Tensor | Sequence[Tensor],
    f: Callable[[Tensor], Tensor],
    *,
    breakpoints: Breakpoints = None,
    nodes: None | int | dict[str, int] = None,
    max_points: int = 2_000_000,
    rtol: float = 1e-8,
    atol: float = 1e-12,
) -> Tensor:
    r"""Exact :math:`∇_θ \sum_b E_{q_θ}[f(z)]_b` by quadrature over ``q`` itself (no estimator), to a tolerance.

    .. math::
        E[f] = \sum_i w_i(θ) f(z_i), \qquad
        w_i(θ) = w_i(θ_0)\, \frac{q_θ(z_i)}{q_{θ_0}(z_i)} \quad (\text{value unchanged at } θ = θ_0)

    so the gradient is :math:`\sum_i w_i(θ_0)\,[∇f(z_i) + f(z_i) ∇\log q_θ(z_i)] = ∫ (∇f)\, q + f\, ∇q`,
    per batch element. For discrete distributions :math:`w_i` are the (differentiable)
    probabilities of the enumerated support; for continuous ones the nodes are fixed
    at the detached parameters and ``breakpoints`` split the support where ``f`` jumps
    (so it is valid for discontinuous f). Uniform distributions add the boundary
    terms of their parameter-dependent support (Leibniz rule).

    Accuracy: as in :func:`exact_moments` — every continuous variable's rule is
    refined until doubling its nodes changes no component by more than
    ``atol + rtol·|∇E[f]|`` in all (changes below 1e-13 of the chunk sums' size
    count as rounding); otherwise a ``ValueError`` names the law and the accuracy reached.

    Args:
        make_dist, params, f, breakpoints, nodes, max_points, rtol, atol: as in :func:`exact_moments`.

    Returns:
        ``[P]`` float64 tensor.
    """
    check_nodes(nodes)
    check_int("max_points", max_points)
    check_tolerance(rtol, atol)
    ps = as_params(params)
    with no_validation():
        dist0 = make_dist(*ps)
        base, _ = unwrap(dist0)
        shape = (1, *dist0.batch_shape, *dist0.event_shape)
        law = FromDistribution(shape=shape, dist=dist0)
        specs = _rules.distribution_specs("z", dist0, shape, z_points(breakpoints, dist0))
        shapes, dtypes, device = {"z": shape}, {"z": _rules.sample_dtype(law)}, ps[0].device
        groups = _grid.batch_groups(specs, shapes, tuple(dist0.batch_shape))
        fill = None
        if len(groups) > 1:  # batch elements one at a time (∇ is linear), the others held fixed
            fill = _grid.fill_values(
                _grid.build(specs, [1] * len(specs), dtypes, device), shapes, dtypes, device
            )
        leaves = tuple(p.clone().requires_grad_(True) for p in ps)
        P = sum(p.numel() for p in ps)

        def accumulate(
            g: _grid.Grid,
            term: Callable[[Distribution, Tensor, Tensor], Tensor],
            out: tuple[Tensor, Tensor],
        ) -> None:
            """Add the gradient of ``Σ w·term`` over the grid to ``out[0]``, its chunks' sizes to ``out[1]``."""
            for draws, w in g.chunks(_grid.chunk_size(shapes)):
                z = draws["z"].reshape(len(w), *shape[1:])
                dist = make_dist(*leaves)
                cost = evaluate(f, z, dist, len(w))
                obj = (w * term(dist, z, cost.double().reshape(len(w), -1))).sum()
                grads = torch.autograd.grad(obj, leaves, allow_unused=True)
                chunk = flat(
                    [torch.zeros_like(p) if gr is None else gr for p, gr in zip(leaves, grads, strict=False)]
                )
                out[0].add_(chunk)
                out[1].add_(chunk.abs())

        total = torch.zeros(P, dtype=torch.float64, device=device)
        for b, members in enumerate(groups):
            sub = [specs[i] for i in members]

            def score_term(d: Distribution, z: Tensor, c: Tensor, b: int = b) -> Tensor:
                out = c * magic_box(d.log_prob(z).double().reshape(len(c), -1))
                return out[:, b] if len(groups) > 1 else out.sum(1)

            def gradient(
                counts: list[int], sub: list[_rules.Spec] = sub, score_term: Callable = score_term
            ) -> tuple[Tensor, Tensor]:
                out = (
                    torch.zeros(P, dtype=torch.float64, device=device),
                    torch.zeros(P, dtype=torch.float64, device=device),
                )
                variables = _grid.build(sub, counts, dtypes, device)
                accumulate(_grid.Grid(variables, shapes, dtypes, device, fill), score_term, out)
                if isinstance(base, Uniform):
                    _uniform_boundaries(
                        lambda g, term: accumulate(g, term, out),
                        base,
                        variables,
                        dist0,
                        shapes,
                        dtypes,
                        device,
                        fill,
                    )
                return out[0][None], out[1][None]

            start = _grid.choose_nodes(sub, max_points, nodes, headroom=2)
            done = refine(
                sub,
                start,
                gradient,
                rtol=rtol,
                atol=atol,
                max_points=max_points,
                what="exact_gradient",
                rows=("gradient",),
            )
            total = total + done.value[0]
    return total


def _uniform_boundaries(
    accumulate: Callable,
    base: Uniform,
    variables: list[_grid.Variable],
    dist0: Distribution,
    shapes: dict,
    dtypes: dict,
    device: torch.device,
    fill: dict[str, Tensor] | None,
) -> None:
    """Add ``±q(bound) E[f | z_j = bound] ∇bound`` for every element j of a Uniform (Leibniz)."""
    batch = tuple(base.batch_shape)
    M = int(np.prod(batch)) if batch else 1
    per_batch = M // max(1, int(np.prod(dist0.batch_shape)) if dist0.batch_shape else 1)
    low = base.low.detach().expand(batch).reshape(-1)
    high = base.high.detach().expand(batch).reshape(-1)
    for i, var in enumerate(variables):
        j = int(var.positions[0])  # one sample: the position is the element
        for name, sign in (("high", 1.0), ("low", -1.0)):
            value = (high if name == "high" else low)[j]
            fixed = _grid.Variable(
                "z",
                var.positions,
                value.reshape(1, 1).to(dtypes["z"]),
                torch.ones(1, dtype=torch.float64, device=device),
                torch.zeros(1, dtype=torch.long, device=device),
            )
            grid = _grid.Grid(
                [fixed if k == i else v for k, v in enumerate(variables)],
                shapes,
                dtypes,
                device,
                fill,
            )
            density = 1.0 / float(high[j] - low[j])

            def term(
                d: Distribution,
                z: Tensor,
                c: Tensor,
                j: int = j,
                b: int = j // per_batch,
                name: str = name,
                sign: float = sign,
                density: float = density,
            ) -> Tensor:
                inner, _ = unwrap(d)
                bound = getattr(inner, name).expand(batch).reshape(-1)[j]
                return sign * density * c[:, b] * (bound - bound.detach()).double()

            accumulate(grid, term)
