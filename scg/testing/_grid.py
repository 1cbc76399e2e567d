"""Tensor-product quadrature grids over the random inputs of an estimator.

Every law an estimator declares is a product of independent scalar laws (one per
tensor element), except :class:`~scg.laws.FromDistribution`, whose elements
follow ``dist`` and factorise over sample, batch and event elements (one-hot
event vectors are enumerated as one variable). Each independent piece of
randomness is a *variable*: a set of positions in one law's flattened tensor and
a rule (node values of shape ``[m, width]`` with weights ``[m]`` that sum to 1).
The grid is the tensor product of all variables' rules; :class:`Grid` walks it
in chunks without materialising it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.distributions import (
    Bernoulli,
    Binomial,
    Categorical,
    Distribution,
    Exponential,
    Geometric,
    Laplace,
    Normal,
    OneHotCategorical,
    Poisson,
    Uniform,
)

from scg._dist import unwrap
from scg.laws import DoubleSidedMaxwell, FromDistribution, Law, Rayleigh, StandardNormal, StandardUniform
from scg.testing import quadrature as Q

__all__ = ["Spec", "Variable", "Grid", "law_specs", "choose_nodes", "build", "element_dist", "piece_edges"]

Rule = tuple[np.ndarray, np.ndarray]

#: Tail mass below which a discrete support (Poisson, Geometric) is truncated.
TAIL = 1e-16

# (n_max, n_comfortable, n_min) nodes per piece, by rule kind. Counts start at n_max, are
# lowered to n_comfortable while the grid exceeds _TARGET points, then to n_min while it
# exceeds max_points.
_LIMITS = {
    "hermite": (96, 24, 5),
    "maxwell": (96, 24, 6),
    "gauss": (48, 16, 5),
    "legendre": (48, 12, 3),
    "de": (49, 33, 21),
}
_TARGET = 200_000


@dataclass
class Spec:
    """One integration variable before its node count is chosen."""

    law: str
    positions: np.ndarray  # flat positions in the law's tensor, [width]
    make: Callable[[int], Rule]  # n (nodes per piece) -> (values [m] or [m, width], weights [m])
    key: tuple  # identical keys share one rule
    pieces: int = 1
    kind: str = "fixed"  # "fixed" (enumeration) or a key of _LIMITS
    size: int = 0  # number of values when kind == "fixed"


@dataclass
class Variable:
    """An integration variable with its rule."""

    law: str
    positions: Tensor  # [width] long
    values: Tensor  # [m, width]
    weights: Tensor  # [m] float64


# ----------------------------------------------------------------------------- elements


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
        extra = tuple(value.shape[len(value.shape) - (value.dim() - len(batch)):]) if value.dim() > len(batch) else ()
        v = value.detach().expand(batch + extra).reshape(-1, *extra)[index]
        params[name] = v
    return type(base)(**params, validate_args=False)


def _np_log_prob(d: Distribution, dtype: torch.dtype) -> Callable[[np.ndarray], np.ndarray]:
    def log_prob(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = d.log_prob(torch.as_tensor(x, dtype=dtype))
        return out.double().numpy()

    return log_prob


def piece_edges(lo: float, hi: float, cuts: Sequence[float]) -> list[float]:
    """``[lo, c_1, ..., hi]`` with the cuts strictly inside ``(lo, hi)``, sorted, deduplicated."""
    inner = sorted({float(c) for c in cuts if math.isfinite(float(c)) and lo < float(c) < hi})
    return [lo, *inner, hi]


def _pieces_rule(
    kind: str,
    edges: list[float],
    n: int,
    log_density: Optional[Callable[[np.ndarray], np.ndarray]],
    center: float,
    scale: float,
) -> Rule:
    xs, ws = [], []
    for a, b in zip(edges[:-1], edges[1:]):
        if kind == "legendre":
            x, w = Q.gauss_legendre(n, a, b)
            if log_density is not None:
                w = w * np.exp(log_density(x))
        elif kind == "de":
            x, w = Q.double_exponential(n, a, b, center=center, scale=scale, log_density=log_density)
        else:  # "gauss"
            if log_density is None:  # pragma: no cover - constructed with a density
                raise ValueError("a Gauss rule on pieces needs the law's density.")
            x, w = Q.gauss_for_density(log_density, a, b, n, center=center, scale=scale)
        xs.append(x)
        ws.append(w)
    x, w = np.concatenate(xs), np.concatenate(ws)
    return x, w / w.sum()


def _continuous_spec(
    law: str,
    positions: np.ndarray,
    kind: str,
    edges: list[float],
    log_density: Optional[Callable[[np.ndarray], np.ndarray]],
    key: tuple,
    center: float = 0.0,
    scale: float = 1.0,
) -> Spec:
    pieces = len(edges) - 1
    if kind == "hermite" and pieces > 1:
        kind = "gauss"
    if kind == "maxwell" and pieces > 1:
        kind = "gauss"
    if kind == "hermite":
        def make(n: int) -> Rule:
            x, w = Q.gauss_hermite(n)
            return center + scale * x, w
    elif kind == "maxwell":
        def make(n: int) -> Rule:
            return Q.maxwell_rule(n)
    else:
        def make(n: int) -> Rule:
            return _pieces_rule(kind, edges, n, log_density, center, scale)
    return Spec(law, positions, make, key + (kind, tuple(edges)), pieces, kind)


def _fixed_spec(law: str, positions: np.ndarray, values: np.ndarray, probs: np.ndarray, key: tuple) -> Spec:
    keep = probs > 0
    values, probs = values[keep], probs[keep]
    return Spec(law, positions, lambda n: (values, probs / probs.sum()), key, 1, "fixed", len(probs))


def _discrete_support(d: Distribution) -> Optional[np.ndarray]:
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


def distribution_specs(
    law: str, dist: Distribution, shape: tuple[int, ...], points: Optional[np.ndarray]
) -> list[Spec]:
    """Variables of a :class:`FromDistribution` law: one per (sample, element).

    Args:
        points: user breakpoints in z-space, ``[M, k]`` over the M scalar elements of
            the sample (continuous families only), or ``None``.
    """
    base, _ = unwrap(dist)
    batch = tuple(base.batch_shape)
    M = int(np.prod(batch)) if batch else 1
    S = int(shape[0])
    dtype = next((v.dtype for v in base.__dict__.values() if isinstance(v, Tensor) and v.is_floating_point()),
                 torch.get_default_dtype())
    specs: list[Spec] = []
    if isinstance(base, OneHotCategorical):
        K = int(base.probs.shape[-1])
        probs = base.probs.detach().expand(*batch, K).reshape(M, K).double().numpy()
        for j in range(M):
            spec = _fixed_spec(law, np.arange(K), np.eye(K), probs[j], ("onehot", tuple(probs[j].tolist())))
            for s in range(S):
                specs.append(Spec(law, (s * M + j) * K + np.arange(K), spec.make, spec.key, 1, "fixed", spec.size))
        return specs
    if tuple(base.event_shape) != ():
        raise TypeError(
            f"the exact harness enumerates or integrates scalar elements; {type(base).__name__} has event "
            f"shape {tuple(base.event_shape)} (supported: Normal, Laplace, Exponential, Gamma, Beta, Uniform, "
            "Bernoulli, Categorical, OneHotCategorical, Poisson, Binomial, Geometric, and Independent wrappers)."
        )
    per_element: list[Spec] = []
    for j in range(M):
        d = element_dist(base, j)
        support = _discrete_support(d)
        if support is not None:
            with torch.no_grad():
                lp = d.log_prob(torch.as_tensor(support, dtype=dtype))
            key = _key(d) + ("support", len(support))
            per_element.append(_fixed_spec(law, np.array([j]), support, lp.exp().double().numpy(), key))
            continue
        if getattr(d.support, "is_discrete", False):
            raise TypeError(f"the exact harness cannot enumerate the support of {type(base).__name__}.")
        lo = float(getattr(d.support, "lower_bound", -math.inf))
        hi = float(getattr(d.support, "upper_bound", math.inf))
        cuts = [] if points is None else list(points[j])
        if isinstance(d, Laplace):
            cuts.append(float(d.loc))  # the density's kink
        edges = piece_edges(lo, hi, cuts)
        try:
            center, scale = float(d.mean), float(d.stddev)
        except Exception:  # noqa: BLE001 - heavy tails (Cauchy): no moments
            center, scale = 0.0, 1.0
        if not (math.isfinite(center) and math.isfinite(scale) and scale > 0):
            center, scale = 0.0, 1.0
        if math.isfinite(lo) and not math.isfinite(hi):
            scale = max(scale, 1e-300)
        if isinstance(d, Normal):
            kind = "hermite"
            center, scale = float(d.loc), float(d.scale)
        elif isinstance(d, Uniform):
            kind = "legendre"
        elif isinstance(d, (Laplace, Exponential)):
            kind = "gauss"  # Gauss rules of the discretised density (scores polynomial on pieces)
        else:
            kind = "de"  # Beta, Gamma, others: scores may be log-singular at the ends
        key = _key(d)
        per_element.append(_continuous_spec(law, np.array([j]), kind, edges, _np_log_prob(d, dtype), key,
                                            center, scale))
    for s in range(S):
        for j, spec in enumerate(per_element):
            specs.append(Spec(law, np.array([s * M + j]), spec.make, spec.key, spec.pieces, spec.kind, spec.size))
    return specs


def _key(d: Distribution) -> tuple:
    """Cache key of a scalar distribution: its type and parameter values."""
    values = []
    for name in sorted(d.arg_constraints):
        try:
            v = getattr(d, name)
        except Exception:  # noqa: BLE001 - a lazily derived parameter that cannot be computed
            continue
        if isinstance(v, Tensor):
            values.append((name, tuple(v.detach().double().reshape(-1).tolist())))
    return (type(d).__name__, tuple(values))


def law_specs(name: str, law: Law, points: Optional[np.ndarray] = None) -> list[Spec]:
    """Variables of one law.

    Args:
        points: extra breakpoints in the law's own space, ``[numel, k]`` (or ``None``);
            for :class:`FromDistribution` they are z-space points ``[M, k]`` per element.
    """
    if isinstance(law, FromDistribution):
        if law.dist is None:
            raise ValueError("`FromDistribution` law has no `dist`.")
        return distribution_specs(name, law.dist, tuple(law.shape), points)
    numel = int(np.prod(law.shape)) if law.shape else 1
    own = law.breakpoints()
    own_np = None if own is None else own.detach().double().reshape(numel, -1).cpu().numpy()

    def log_density(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return law.log_density(torch.as_tensor(x, dtype=torch.float64)).double().numpy()

    lo, hi = (float(b) for b in law.support)
    if isinstance(law, StandardNormal):
        kind = "hermite"
    elif isinstance(law, DoubleSidedMaxwell):
        kind = "maxwell"
    elif isinstance(law, StandardUniform):
        kind = "de"  # integrands may be log-singular at u -> 0, 1 (e.g. -log u)
    elif isinstance(law, Rayleigh):
        kind = "gauss"
    else:
        kind = "gauss"
    specs = []
    for i in range(numel):
        cuts: list[float] = []
        if own_np is not None:
            cuts += list(own_np[i])
        if points is not None:
            cuts += list(points[i])
        edges = piece_edges(lo, hi, cuts)
        dens = None if isinstance(law, StandardUniform) else log_density
        spec = _continuous_spec(name, np.array([i]), kind, edges, dens, (type(law).__name__,),
                                center=1.25 if isinstance(law, Rayleigh) else 0.0)
        if isinstance(law, StandardUniform):
            spec.make = _clipped(spec.make)
        specs.append(spec)
    return specs


def _clipped(make: Callable[[int], Rule]) -> Callable[[int], Rule]:
    """Keep uniform nodes in ``[2^-53, 1 − 2^-53]``: closer to 0 or 1 than float64
    resolves near 1, maps like ``u − ½`` lose the node (``log1p(−2|u − ½|) = −inf``)."""
    def clipped(n: int) -> Rule:
        x, w = make(n)
        keep = (x >= 2.0**-53) & (x <= 1.0 - 2.0**-53)
        return x[keep], w[keep] / w[keep].sum()

    return clipped


# ----------------------------------------------------------------------------- node counts


def _count(spec: Spec, n: int) -> int:
    return spec.size if spec.kind == "fixed" else spec.pieces * n


def choose_nodes(specs: list[Spec], max_points: int, nodes: Optional[int]) -> list[int]:
    """Nodes per piece for every variable so that the grid has at most ``max_points`` points.

    Starts from each rule kind's maximum and lowers the relatively largest counts
    first; raises ``ValueError`` (naming the sizes) if even the minimum counts or
    the given ``nodes`` exceed ``max_points``.
    """
    fixed = [s.size for s in specs if s.kind == "fixed"]
    log_fixed = sum(math.log(k) for k in fixed)
    if nodes is not None:
        counts = [nodes] * len(specs)
    else:
        counts = [_LIMITS[s.kind][0] if s.kind != "fixed" else 0 for s in specs]
    cont = [i for i, s in enumerate(specs) if s.kind != "fixed"]

    def log_total() -> float:
        return log_fixed + sum(math.log(_count(specs[i], counts[i])) for i in cont)

    if nodes is None:
        for limit, floor in ((min(_TARGET, max_points), 1), (max_points, 2)):
            while log_total() > math.log(limit) + 1e-9:
                movable = [i for i in cont if counts[i] > _LIMITS[specs[i].kind][floor]]
                if not movable:
                    break
                i = max(movable, key=lambda i: counts[i] / _LIMITS[specs[i].kind][0])
                n_floor = _LIMITS[specs[i].kind][floor]
                counts[i] = max(n_floor, min(counts[i] - 1, int(counts[i] * 0.85)))
    if log_total() > math.log(max_points) + 1e-9:
        pieces = sorted({specs[i].pieces for i in cont})
        how = f"{nodes} nodes per piece (`nodes`)" if nodes is not None else "the minimum nodes per piece"
        raise ValueError(
            f"the exact grid needs about {math.exp(log_total()):.3g} points > `max_points` = {max_points}: "
            f"{len(fixed)} discrete variables with {int(round(math.exp(log_fixed)))} joint values and "
            f"{len(cont)} continuous variables at {how} (pieces per variable: {pieces}). Reduce "
            "num_samples or the number of elements, pass a smaller `nodes`, or raise `max_points`."
        )
    return counts


def build(specs: list[Spec], counts: list[int], dtypes: dict[str, torch.dtype], device: torch.device) -> list[Variable]:
    """Make every variable's rule (identical keys share one computation)."""
    cache: dict[tuple, Rule] = {}
    out = []
    for spec, n in zip(specs, counts):
        key = spec.key + (n,)
        if key not in cache:
            cache[key] = spec.make(n)
        values, weights = cache[key]
        values = np.asarray(values, dtype=np.float64)
        if values.ndim == 1:
            values = values[:, None]
        out.append(Variable(
            spec.law,
            torch.as_tensor(spec.positions, dtype=torch.long, device=device),
            torch.as_tensor(values, device=device).to(dtypes[spec.law]),
            torch.as_tensor(weights, dtype=torch.float64, device=device),
        ))
    return out


# ----------------------------------------------------------------------------- the grid


class Grid:
    """Tensor product of variables' rules, walked in chunks (mixed-radix indexing)."""

    def __init__(self, variables: list[Variable], shapes: dict[str, tuple[int, ...]],
                 dtypes: dict[str, torch.dtype], device: torch.device) -> None:
        self.variables = variables
        self.shapes = shapes
        self.dtypes = dtypes
        self.device = device
        self.sizes = [len(v.weights) for v in variables]
        self.size = int(np.prod(self.sizes, dtype=np.float64)) if variables else 1
        strides, acc = [], 1
        for m in reversed(self.sizes):
            strides.append(acc)
            acc *= m
        self.strides = list(reversed(strides))

    def chunks(self, chunk: int) -> Iterator[tuple[dict[str, Tensor], Tensor]]:
        """Yield ``(draws, weights)``: draws ``{law: [C, *shape]}``, weights ``[C]`` (float64)."""
        for start in range(0, self.size, chunk):
            idx = torch.arange(start, min(start + chunk, self.size), device=self.device)
            C = len(idx)
            flat = {name: torch.zeros(C, int(np.prod(shape)) if shape else 1, dtype=self.dtypes[name],
                                      device=self.device) for name, shape in self.shapes.items()}
            w = torch.ones(C, dtype=torch.float64, device=self.device)
            for v, m, stride in zip(self.variables, self.sizes, self.strides):
                digit = torch.div(idx, stride, rounding_mode="floor") % m
                if len(v.positions) == 1:
                    flat[v.law][:, int(v.positions[0])] = v.values[digit, 0]
                else:
                    flat[v.law][:, v.positions] = v.values[digit]
                w = w * v.weights[digit]
            yield {name: x.reshape(C, *self.shapes[name]) for name, x in flat.items()}, w
