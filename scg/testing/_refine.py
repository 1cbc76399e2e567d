"""Error control of the exact harness: refine every variable's rule until doubling it changes nothing.

The harness computes a few numbers (rows of a ``[R, P]`` tensor: the mean and variance
of a gradient, or a gradient) as a weighted sum over a tensor-product grid. With the
node counts ``c`` (per piece, per variable) the result is ``Q(c)``; the error of ``Q(c)``
attributed to variable v is estimated by ``|Q(c with v's nodes doubled) − Q(c)|``, and
the error estimate of ``Q(c)`` is the sum over variables. Variables that contribute more
than their share of the tolerance are doubled, until the estimate meets

    ``atol + rtol·|Q(c)| + 1e-13·scale``

(``scale`` measures the magnitude of the summands, so that differences at the level of
rounding count as converged), or the next grid would exceed ``max_points`` — then a
``ValueError`` names the law whose rule did not converge and the accuracy reached.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from scg.testing._grid import grid_points
from scg.testing._rules import Spec

__all__ = ["Refined", "refine", "ROUNDING"]

#: Relative size (to the summands' scale) below which a change is rounding, not error.
ROUNDING = 1e-13


@dataclass
class Refined:
    value: Tensor  # [R, P]
    error: Tensor  # [R, P], estimated absolute error of value
    counts: list[int]


def refine(
    specs: list[Spec],
    counts: list[int],
    evaluate: Callable[[list[int]], tuple[Tensor, Tensor]],
    *,
    rtol: float,
    atol: float,
    max_points: int,
    what: str,
    rows: tuple[str, ...],
    columns: Sequence[int] | None = None,
) -> Refined:
    """Double the nodes of the variables whose refinement changes ``evaluate`` most, until converged.

    Args:
        specs: the variables; ``"fixed"`` ones (enumerated) are exact and never refined.
        counts: the starting nodes per piece.
        evaluate: ``counts -> (value [R, P], scale [R, P])``.
        rtol, atol: the tolerance.
        max_points: largest grid allowed (the refined grids included).
        what: the quantity, for the error message (e.g. "exact_moments of Pathwise").
        rows: the names of the R rows, for the error message.
        columns: the parameter index of each of the P columns (default 0, 1, ...), for the message.

    Raises:
        ValueError: the tolerance is not met within ``max_points``; the message names the
            law and the accuracy reached.
    """
    cache: dict[tuple[int, ...], tuple[Tensor, Tensor]] = {}

    def at(c: list[int]) -> tuple[Tensor, Tensor]:
        key = tuple(c)
        if key not in cache:
            cache[key] = evaluate(c)
        return cache[key]

    movable = [i for i, s in enumerate(specs) if s.kind != "fixed"]
    counts = list(counts)
    while True:
        value, scale = at(counts)
        tol = atol + rtol * value.abs() + ROUNDING * scale
        errors: dict[int, Tensor] = {}
        stuck: set[int] = set()  # variables that cannot be doubled within max_points
        for i in movable:
            other = counts.copy()
            other[i] *= 2
            if grid_points(specs, other) > max_points:  # the last doubling's change instead
                stuck.add(i)
                other[i] //= 4
                if other[i] < 1:
                    errors[i] = torch.full_like(value, math.inf)
                    continue
            diff = (at(other)[0] - value).abs()
            errors[i] = torch.where(torch.isnan(diff), torch.full_like(diff, math.inf), diff)
        error = sum(errors.values(), torch.zeros_like(value))
        if bool((error <= tol).all()):
            return Refined(value, error, counts)
        share = 1.0 / max(1, len(movable))
        worse = [i for i, e in errors.items() if bool((e > share * tol).any())]
        if not worse or stuck & set(worse):
            raise _not_converged(
                specs,
                counts,
                value,
                error,
                errors,
                tol,
                what,
                rows,
                columns,
                rtol,
                atol,
                max_points,
            )
        for i in worse:
            counts[i] *= 2


def _not_converged(
    specs: list[Spec],
    counts: list[int],
    value: Tensor,
    error: Tensor,
    errors: dict[int, Tensor],
    tol: Tensor,
    what: str,
    rows: tuple[str, ...],
    columns: Sequence[int] | None,
    rtol: float,
    atol: float,
    max_points: int,
) -> ValueError:
    worst = max(errors, key=lambda i: float(torch.nan_to_num(errors[i] / tol, nan=math.inf).max()))
    r, p = divmod(int(torch.argmax(torch.nan_to_num(error / tol, nan=math.inf)).item()), value.shape[1])
    v, e = float(value[r, p]), float(error[r, p])
    p = p if columns is None else int(columns[p])
    return ValueError(
        f"{what}: the quadrature does not reach rtol={rtol:g}, atol={atol:g} within `max_points` = {max_points}: "
        f"the rule of law {specs[worst].law!r} has not converged at {counts[worst]} nodes per piece "
        f"(a grid of {grid_points(specs, counts):.3g} points); the accuracy reached: the {rows[r]} of "
        f"parameter component {p} is {v:.10g} with an estimated error of {e:.3g} (relative {e / max(abs(v), 1e-300):.2g}). "
        "Pass `breakpoints` where f jumps, raise `max_points`, or loosen `rtol`/`atol`."
    )
