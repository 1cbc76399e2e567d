"""Test cost families with known breakpoints, for exact and property-based checks.

Each constructor returns a :class:`TestCost`: a callable ``f(z) -> [S, *batch]``
that applies a scalar function elementwise and reduces the last ``event_ndim``
dimensions (sum, or product for :func:`product`). ``breakpoints`` lists the
z-values where ``f`` jumps (pass ``cost.points`` to :func:`scg.testing.exact_moments`
and friends) and ``smooth`` says whether pathwise-type estimators apply.

Integer samples (``Categorical``) are converted to float64.

Example:
    >>> import torch
    >>> from scg.testing import costs
    >>> f = costs.threshold(0.5, event_ndim=1)
    >>> f(torch.tensor([[0.2, 0.7, 0.9]])), f.points
    (tensor([2.]), [0.5])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

__all__ = [
    "TestCost",
    "polynomial",
    "shifted_square",
    "squared_norm",
    "product",
    "threshold",
    "indicator",
    "cosine",
    "gaussian_bump",
    "on_values",
]


def _float(z: Tensor) -> Tensor:
    return z if z.is_floating_point() else z.to(torch.float64)


@dataclass(frozen=True)
class TestCost:
    """A cost ``f(z)``: a scalar function applied elementwise, reduced over event dims.

    Attributes:
        name: readable description (shown by hypothesis and in failures).
        elementwise: scalar function, applied to every element of ``z``.
        event_ndim: number of trailing (event) dims reduced.
        combine: ``"sum"`` or ``"prod"`` over the event dims.
        breakpoints: z-values where the elementwise function jumps.
        smooth: differentiable everywhere (pathwise estimators apply).
        degree: polynomial degree, or ``None`` if not a polynomial.
        project: optional map applied to ``z`` first (e.g. one-hot vectors to values).
    """

    __test__ = False  # not a pytest class

    name: str
    elementwise: Callable[[Tensor], Tensor]
    event_ndim: int = 0
    combine: str = "sum"
    breakpoints: tuple[float, ...] = ()
    smooth: bool = True
    degree: int | None = None
    project: Callable[[Tensor], Tensor] | None = None

    def __call__(self, z: Tensor) -> Tensor:
        x = _float(z)
        if self.project is not None:
            x = self.project(x)
        y = self.elementwise(x)
        for _ in range(self.event_ndim):
            y = y.sum(-1) if self.combine == "sum" else y.prod(-1)
        return y

    @property
    def points(self) -> list[float] | None:
        """Breakpoints as a list for ``breakpoints=`` (``None`` when there are none)."""
        return list(self.breakpoints) or None

    def with_event_ndim(self, event_ndim: int) -> TestCost:
        """The same cost reducing ``event_ndim`` trailing dims."""
        return replace(self, event_ndim=_check_event_ndim(event_ndim))

    def __repr__(self) -> str:
        return f"{self.name}[event_ndim={self.event_ndim}]"


def _check_event_ndim(event_ndim: int) -> int:
    if isinstance(event_ndim, bool) or not isinstance(event_ndim, int) or event_ndim < 0:
        raise ValueError(f"`event_ndim` must be an int >= 0; got {event_ndim!r}.")
    return event_ndim


def _poly(coefficients: Sequence[float]) -> Callable[[Tensor], Tensor]:
    cs = [float(c) for c in coefficients]

    def p(x: Tensor) -> Tensor:
        out = torch.zeros_like(x)
        for c in reversed(cs):  # Horner
            out = out * x + c
        return out

    return p


def polynomial(coefficients: Sequence[float], *, event_ndim: int = 0) -> TestCost:
    """``Σ_i c_i x^i`` elementwise (coefficients in increasing degree), summed over event dims."""
    cs = list(coefficients)
    if not cs:
        raise ValueError("`coefficients` must be non-empty; got [].")
    return TestCost(f"poly{tuple(cs)}", _poly(cs), _check_event_ndim(event_ndim), degree=len(cs) - 1)


def shifted_square(k: float, *, event_ndim: int = 0) -> TestCost:
    """``(x − k)²`` — Mohamed et al. (2020)'s quadratic cost."""
    return TestCost(f"(x-{k})^2", lambda x: (x - k) ** 2, _check_event_ndim(event_ndim), degree=2)


def squared_norm(*, event_ndim: int = 1) -> TestCost:
    """``‖x‖²`` over the event dims."""
    return TestCost("|x|^2", lambda x: x * x, _check_event_ndim(event_ndim), degree=2)


def product(coefficients: Sequence[float], *, event_ndim: int = 1) -> TestCost:
    """``Π_d p(x_d)`` over the event dims, ``p`` the polynomial with ``coefficients``."""
    cs = list(coefficients)
    if not cs:
        raise ValueError("`coefficients` must be non-empty; got [].")
    return TestCost(
        f"prod poly{tuple(cs)}",
        _poly(cs),
        _check_event_ndim(event_ndim),
        combine="prod",
        degree=(len(cs) - 1),
    )


def threshold(c: float, *, event_ndim: int = 0) -> TestCost:
    """``1[x > c]`` (a step at ``c``; breakpoint ``c``)."""
    c = float(c)
    return TestCost(
        f"1[x>{c}]",
        lambda x: (x > c).to(x.dtype),
        _check_event_ndim(event_ndim),
        breakpoints=(c,),
        smooth=False,
    )


def indicator(a: float, b: float, *, event_ndim: int = 0) -> TestCost:
    """``1[a < x ≤ b]`` (breakpoints ``a`` and ``b``)."""
    a, b = float(a), float(b)
    if not a < b:
        raise ValueError(f"`a` must be < `b`; got a={a}, b={b}.")
    return TestCost(
        f"1[{a}<x<={b}]",
        lambda x: ((x > a) & (x <= b)).to(x.dtype),
        _check_event_ndim(event_ndim),
        breakpoints=(a, b),
        smooth=False,
    )


def cosine(k: float, *, event_ndim: int = 0) -> TestCost:
    """``cos(k x)``."""
    return TestCost(f"cos({k}x)", lambda x: torch.cos(k * x), _check_event_ndim(event_ndim))


def gaussian_bump(k: float, *, event_ndim: int = 0) -> TestCost:
    """``exp(−k x²)``."""
    return TestCost(f"exp(-{k}x^2)", lambda x: torch.exp(-k * x * x), _check_event_ndim(event_ndim))


def on_values(cost: TestCost, values: Sequence[float]) -> TestCost:
    """Apply ``cost`` to the value ``Σ_k z_k v_k`` of a one-hot vector ``z`` (last dim).

    For ``OneHotCategorical``: the category's value ``v_k`` goes through the scalar
    cost; ``cost.event_ndim`` further dims (before the one-hot dim) are reduced.
    """
    v = torch.as_tensor([float(x) for x in values], dtype=torch.float64)
    if v.dim() != 1 or len(v) == 0:
        raise ValueError(f"`values` must be a non-empty sequence of numbers; got {list(values)!r}.")

    def project(z: Tensor) -> Tensor:
        return z @ v.to(z)

    return replace(cost, name=f"{cost.name} on values {tuple(v.tolist())}", project=project)
