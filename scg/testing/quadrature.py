"""One-dimensional quadrature rules (float64 numpy) used by the exact harness.

Every rule returns ``(nodes, weights)`` as float64 arrays such that
``sum(weights * g(nodes)) ≈ ∫ g(x) μ(dx)`` for the rule's measure μ (fresh arrays:
the Gauss–Hermite, Gauss–Legendre and Maxwell rules are built once per n and cached
read-only; callers get copies):

* :func:`gauss_hermite` — μ = N(0, 1); exact for polynomials of degree ≤ 2n − 1
  (scipy's ``roots_hermitenorm``: stable at any n; weights are checked finite and
  non-negative, and those that underflow to 0 are dropped).
* :func:`gauss_legendre` — Lebesgue measure on ``[a, b]``; exact to degree 2n − 1.
* :func:`maxwell_rule` — the double-sided Maxwell density ``m² φ(m)``.
* :func:`double_exponential` — Lebesgue measure on a finite, half-infinite or
  infinite interval (tanh-sinh / exp-sinh / sinh-sinh). Converges exponentially
  also for integrands with endpoint singularities (``log u`` at ``u → 0``), which
  is why uniform noise and log-singular scores (Beta, Gamma) use it.
* :func:`gauss_from_measure` — the Gauss rule of a discrete measure by the
  Stieltjes/Lanczos procedure (with re-orthogonalisation) and Golub–Welsch;
  :func:`gauss_for_density` applies it to a fine double-exponential
  discretisation of a density, giving Gauss rules for any density on a piece
  (Rayleigh, truncated Normal, Laplace halves, Exponential).

References:
    Gautschi, "Orthogonal Polynomials: Computation and Approximation", 2004, §2.2
    (discretised Stieltjes procedure, Lanczos).
    Golub & Welsch, "Calculation of Gauss quadrature rules", Math. Comp. 1969.
    Takahasi & Mori, "Double exponential formulas for numerical integration", 1974.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
from scipy.linalg import eigh_tridiagonal
from scipy.special import roots_hermitenorm, roots_legendre

__all__ = [
    "gauss_hermite",
    "gauss_legendre",
    "maxwell_rule",
    "double_exponential",
    "gauss_from_measure",
    "gauss_for_density",
]

Rule = tuple[np.ndarray, np.ndarray]

#: Half-width of the t-range of untrimmed double-exponential rules (tanh-sinh on a
#: finite interval: nodes reach within ~1e-22 of the ends).
_T = 3.5
#: Half-width before trimming, for half-infinite intervals or when a density is given
#: (nodes reach e^{-110} from a finite end: densities may be singular there, e.g. Beta).
_T_WIDE = 5.0


def _check_n(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"`n` must be an int; got {type(n).__name__}.")
    if n < 1:
        raise ValueError(f"`n` must be >= 1; got {n}.")
    return int(n)


def _read_only(x: np.ndarray, w: np.ndarray) -> Rule:
    x.flags.writeable = False
    w.flags.writeable = False
    return x, w


def _checked(name: str, n: int, x: np.ndarray, w: np.ndarray) -> Rule:
    """Nodes and weights after the checks every Gauss rule must pass: finite nodes, finite
    non-negative weights (weights that underflow to 0 in the far tails are dropped)."""
    if not (np.isfinite(x).all() and np.isfinite(w).all() and (w >= 0).all() and w.sum() > 0):
        raise ValueError(f"the {n}-node {name} rule has non-finite or negative weights; use fewer nodes.")
    keep = w > 0
    return x[keep], w[keep]


@functools.lru_cache(maxsize=256)
def _hermite(n: int) -> Rule:
    x, w = _checked("Gauss–Hermite", n, *roots_hermitenorm(n))  # Golub–Welsch / asymptotics: stable at any n
    return _read_only(x, w / w.sum())


@functools.lru_cache(maxsize=256)
def _legendre(n: int) -> Rule:
    return _read_only(*_checked("Gauss–Legendre", n, *roots_legendre(n)))


@functools.lru_cache(maxsize=256)
def _maxwell(n: int) -> Rule:
    x, w = roots_hermitenorm(n + 1)
    x, w = _checked("Maxwell", n, x, w * x * x)  # also drops the zero node of odd n + 1
    return _read_only(x, w / w.sum())


def gauss_hermite(n: int) -> Rule:
    """Probabilists' Gauss–Hermite rule for N(0, 1) (weights sum to 1)."""
    x, w = _hermite(_check_n(n))
    return x.copy(), w.copy()


def gauss_legendre(n: int, a: float = 0.0, b: float = 1.0) -> Rule:
    """Gauss–Legendre rule for Lebesgue measure on ``[a, b]`` (weights sum to b − a)."""
    x, w = _legendre(_check_n(n))
    half = 0.5 * (b - a)
    return a + half * (x + 1.0), half * w


def maxwell_rule(n: int) -> Rule:
    """Gauss rule for the double-sided Maxwell density ``m² e^{−m²/2}/√(2π)``.

    Gauss–Hermite with n + 1 nodes and weights multiplied by ``x²``: exact for
    polynomials of degree ≤ 2n − 1. The zero node (even n) carries no weight and is dropped.
    """
    x, w = _maxwell(_check_n(n))
    return x.copy(), w.copy()


def _de_map(t: np.ndarray, a: float, b: float, center: float, scale: float) -> Rule:
    """Double-exponential change of variables: nodes x(t) and Jacobians dx/dt."""
    y = 0.5 * math.pi * np.sinh(t)
    dy = 0.5 * math.pi * np.cosh(t)
    if math.isfinite(a) and math.isfinite(b):  # tanh-sinh, end distances computed directly
        e = np.exp(-2.0 * np.abs(y))
        near = (b - a) * e / (1.0 + e)  # distance to the nearer end
        x = np.where(t < 0, a + near, b - near)
        jac = (b - a) * dy * 2.0 * e / (1.0 + e) ** 2
    elif math.isfinite(a):  # exp-sinh on [a, ∞)
        x = a + scale * np.exp(y)
        jac = scale * dy * np.exp(y)
    elif math.isfinite(b):  # mirrored exp-sinh on (−∞, b]
        x = b - scale * np.exp(-y)
        jac = scale * dy * np.exp(-y)
    else:  # sinh-sinh on ℝ
        x = center + scale * np.sinh(y)
        jac = scale * dy * np.cosh(y)
    return x, jac


def double_exponential(
    n: int,
    a: float,
    b: float,
    *,
    center: float = 0.0,
    scale: float = 1.0,
    log_density: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Rule:
    """Double-exponential rule on ``(a, b)`` (ends may be infinite), n nodes.

    Without ``log_density`` the weights integrate Lebesgue measure; with it they
    integrate the (unnormalised) density ``exp(log_density)``, and the t-range is
    first trimmed to where ``weight × density`` exceeds 1e-40 of its maximum, so
    that all n nodes sit where the measure lives. Nodes that round onto an end
    (or where the density is not finite) are dropped.

    Args:
        n: number of nodes (before dropping), ≥ 1.
        a, b: interval ends, ``a < b``; ``±inf`` allowed.
        center, scale: location and scale hints for infinite ends.
        log_density: optional vectorised log density on ``(a, b)``.
    """
    n = _check_n(n)
    if not a < b:
        raise ValueError(f"`a` must be < `b`; got a={a}, b={b}.")
    finite = math.isfinite(a) and math.isfinite(b)
    lo, hi = (-_T, _T) if finite and log_density is None else (-_T_WIDE, _T_WIDE)
    if log_density is not None:  # trim the t-range to where the measure lives
        t = np.linspace(-_T_WIDE, _T_WIDE, 8001)
        x, jac = _de_map(t, a, b, center, scale)
        with np.errstate(all="ignore"):
            logw = np.log(jac) + log_density(x)
        logw = np.where(np.isfinite(logw) & (x > a) & (x < b), logw, -np.inf)
        if not np.isfinite(logw).any():
            raise ValueError(f"the density has no mass on ({a}, {b}).")
        alive = np.nonzero(logw > logw.max() + math.log(1e-40))[0]
        lo, hi = t[max(alive[0] - 1, 0)], t[min(alive[-1] + 1, len(t) - 1)]
    t = np.linspace(lo, hi, n) if n > 1 else np.array([0.5 * (lo + hi)])
    h = (hi - lo) / (n - 1) if n > 1 else hi - lo
    x, jac = _de_map(t, a, b, center, scale)
    w = h * jac
    if log_density is not None:
        with np.errstate(all="ignore"):
            w = w * np.exp(log_density(x))
    keep = (x > a) & (x < b) & np.isfinite(x) & np.isfinite(w) & (w > 0)
    return x[keep], w[keep]


def gauss_from_measure(x: np.ndarray, w: np.ndarray, n: int) -> Rule:
    """n-point Gauss rule of the discrete measure ``Σ_i w_i δ_{x_i}``.

    Lanczos (the Stieltjes procedure in orthonormal form) with full
    re-orthogonalisation gives the Jacobi matrix; its eigen-decomposition gives
    nodes and weights (Golub–Welsch). The rule reproduces the measure's moments
    of degree ≤ 2n − 1. If the measure has at most n points it is returned as is.
    """
    n = _check_n(n)
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    mass = w.sum()
    if len(x) <= n:
        return x.copy(), w.copy()
    shift = float((w * x).sum() / mass)
    spread = float(np.sqrt((w * (x - shift) ** 2).sum() / mass)) or 1.0
    xs = (x - shift) / spread  # well-scaled coordinates
    q = np.sqrt(w / mass)
    basis = [q]
    alpha, beta = [], []
    prev = np.zeros_like(q)
    b_prev = 0.0
    for k in range(n):
        v = xs * basis[k]
        a_k = float(v @ basis[k])
        v = v - a_k * basis[k] - b_prev * prev
        for u in basis:  # full re-orthogonalisation
            v = v - (v @ u) * u
        alpha.append(a_k)
        b_k = float(np.sqrt(v @ v))
        if k == n - 1:
            break
        if b_k <= 1e-14:  # the measure is exhausted: fewer nodes suffice
            break
        beta.append(b_k)
        prev, b_prev = basis[k], b_k
        basis.append(v / b_k)
    nodes, vecs = eigh_tridiagonal(np.array(alpha), np.array(beta))
    weights = mass * vecs[0] ** 2
    return shift + spread * nodes, weights


def gauss_for_density(
    log_density: Callable[[np.ndarray], np.ndarray],
    a: float,
    b: float,
    n: int,
    *,
    center: float = 0.0,
    scale: float = 1.0,
    fine: int = 1201,
) -> Rule:
    """Gauss rule with n nodes for the density ``exp(log_density)`` on ``(a, b)``.

    A fine double-exponential discretisation (``fine`` nodes) of the measure is
    reduced to n nodes by :func:`gauss_from_measure` (the discretised Stieltjes
    procedure). The weights sum to the density's mass on ``(a, b)``.
    """
    x, w = double_exponential(fine, a, b, center=center, scale=scale, log_density=log_density)
    return gauss_from_measure(x, w, n)
