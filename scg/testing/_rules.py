"""Quadrature rules for every scalar element an estimator draws.

Every law an estimator declares is a product of independent scalar laws (one per
tensor element), except :class:`~scg.laws.FromDistribution`, whose elements
follow ``dist`` and factorise over sample, batch and event elements (one-hot
event vectors are enumerated as one variable). Each independent piece of
randomness becomes a :class:`Spec`: positions in one law's flattened tensor, the
edges of the pieces its support is split into (breakpoints) and a function
``n -> (values, weights)`` giving a rule with n nodes per piece.

Rules: standard normal → Gauss–Hermite; uniform → double-exponential per piece
(integrands such as ``−log u`` are endpoint-singular); Rayleigh → Gauss rule of
the density (discretised Stieltjes); Maxwell → Gauss–Hermite × x²; Normal samples
→ Gauss–Hermite (Gauss rules of the truncated density on pieces); Laplace and
Exponential → Gauss rules of the density on pieces (Laplace split at its loc);
Uniform samples → Gauss–Legendre; Beta, Gamma and other continuous samples →
double-exponential (their scores are log-singular at the ends); discrete samples
→ enumeration (Poisson, Geometric truncated where the tail mass < 1e-16). Gauss
rules of a density are used up to ``GAUSS_MAX`` nodes per piece and
double-exponential rules of the density beyond (the discretised Stieltjes procedure
does not resolve more nodes). The measure-valued σ coupling ``μ + σMU`` with
breakpoints gets a nested rule (:func:`nested_uniform_spec`).

Rules are pure functions of their spec's key and node count; :func:`rule` keeps the
rules of scg's own laws and of torch's distributions in a bounded cache shared by all
calls (read-only arrays), so repeated harness calls do not rebuild them.
"""

from __future__ import annotations

import itertools
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch.distributions import (
    Distribution,
    Exponential,
    Laplace,
    Normal,
    OneHotCategorical,
    Uniform,
)

from scg._dist import unwrap
from scg.laws import (
    DoubleSidedMaxwell,
    FromDistribution,
    Law,
    Rayleigh,
    StandardNormal,
    StandardUniform,
    WithoutReplacement,
)
from scg.testing import quadrature as Q
from scg.testing._scalar import TAIL, _discrete_support, _key, _np_log_prob, element_dist

__all__ = [
    "Spec",
    "rule",
    "law_specs",
    "nested_uniform_spec",
    "distribution_specs",
    "without_replacement_specs",
    "element_dist",
    "piece_edges",
    "sample_dtype",
    "TAIL",
    "GAUSS_MAX",
]

Rule = tuple[np.ndarray, np.ndarray]

#: Most nodes per piece of a Gauss rule of a density (Rayleigh, pieces of a Normal, Laplace,
#: Exponential); finer rules are double-exponential.
GAUSS_MAX = 64


@dataclass
class Spec:
    """One integration variable before its node count is chosen."""

    law: str
    positions: np.ndarray  # flat positions in the law's tensor, [width]
    make: Callable[[int], Rule]  # n (nodes per piece) -> (values [m] or [m, width], weights [m])
    key: tuple  # identical keys share one rule
    pieces: int = 1
    kind: str = "fixed"  # "fixed" (enumeration) or a rule kind ("hermite", "de", ...)
    size: int = 0  # number of values when kind == "fixed"
    edges: tuple[float, ...] | None = None  # piece edges (continuous variables)
    shared: bool = False  # the key determines the rule completely: cache it across calls
    partner: tuple[str, np.ndarray] | None = None  # (law, positions) of a nested second coordinate


#: Rules of shared specs, by ``key + (n,)``, least recently used first.
_CACHE: OrderedDict[tuple, Rule] = OrderedDict()
_CACHE_SIZE = 4096


def rule(spec: Spec, n: int) -> Rule:
    """``spec.make(n)``; for shared specs from a cache across calls (read-only arrays)."""
    if not spec.shared:
        return spec.make(n)
    key = spec.key + (n,)
    hit = _CACHE.get(key)
    if hit is not None:
        _CACHE.move_to_end(key)
        return hit
    x, w = (np.array(a, dtype=np.float64) for a in spec.make(n))
    x.flags.writeable = w.flags.writeable = False
    _CACHE[key] = (x, w)
    if len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return x, w


def sample_dtype(law: Law) -> torch.dtype:
    """The dtype of the law's draws (Categorical samples are integers), without touching the RNG."""
    if isinstance(law, FromDistribution) and law.dist is not None:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            return law.dist.sample().dtype
    return law.dtype


def piece_edges(lo: float, hi: float, cuts: Sequence[float]) -> list[float]:
    """``[lo, c_1, ..., hi]`` with the cuts strictly inside ``(lo, hi)``, sorted, deduplicated."""
    inner = sorted({float(c) for c in cuts if math.isfinite(float(c)) and lo < float(c) < hi})
    return [lo, *inner, hi]


def _pieces_rule(
    kind: str,
    edges: list[float],
    n: int,
    log_density: Callable[[np.ndarray], np.ndarray] | None,
    center: float,
    scale: float,
) -> Rule:
    xs, ws = [], []
    for a, b in zip(edges[:-1], edges[1:], strict=False):
        if kind == "legendre":
            x, w = Q.gauss_legendre(n, a, b)
            if log_density is not None:
                w = w * np.exp(log_density(x))
        elif kind == "de":
            x, w = Q.double_exponential(n, a, b, center=center, scale=scale, log_density=log_density)
        elif n > GAUSS_MAX:  # "gauss" beyond what the discretised Stieltjes procedure resolves
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
    log_density: Callable[[np.ndarray], np.ndarray] | None,
    key: tuple,
    center: float = 0.0,
    scale: float = 1.0,
    shared: bool = False,
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

    return Spec(
        law,
        positions,
        make,
        key + (kind, tuple(edges)),
        pieces,
        kind,
        edges=tuple(edges),
        shared=shared,
    )


def _fixed_spec(law: str, positions: np.ndarray, values: np.ndarray, probs: np.ndarray, key: tuple) -> Spec:
    keep = probs > 0
    values, probs = values[keep], probs[keep]
    return Spec(law, positions, lambda n: (values, probs / probs.sum()), key, 1, "fixed", len(probs))


def distribution_specs(
    law: str, dist: Distribution, shape: tuple[int, ...], points: np.ndarray | None
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
    dtype = torch.float64  # rules are computed in float64 whatever the parameters' dtype
    specs: list[Spec] = []
    if isinstance(base, OneHotCategorical):
        K = int(base.probs.shape[-1])
        probs = base.probs.detach().expand(*batch, K).reshape(M, K).double().numpy()
        for j in range(M):
            spec = _fixed_spec(law, np.arange(K), np.eye(K), probs[j], ("onehot", tuple(probs[j].tolist())))
            for s in range(S):
                specs.append(replace(spec, positions=(s * M + j) * K + np.arange(K)))
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
        per_element.append(
            _continuous_spec(
                law,
                np.array([j]),
                kind,
                edges,
                _np_log_prob(d, dtype),
                _key(d),
                center,
                scale,
                shared=type(d).__module__.startswith("torch."),
            )
        )
    for s in range(S):
        for j, spec in enumerate(per_element):
            specs.append(replace(spec, positions=np.array([s * M + j])))
    return specs


def without_replacement_specs(law: str, wor: WithoutReplacement, max_points: int | None = None) -> list[Spec]:
    r"""Variables of a :class:`~scg.laws.WithoutReplacement` law: one per (sample, batch element).

    Each enumerates the ``K!/(K − k)!`` ordered k-tuples of distinct classes (values
    ``[m, k]``) with their Plackett–Luce probabilities
    :math:`\prod_j p_{x_j} / (1 − \sum_{i<j} p_{x_i})`, the denominators summed over the
    classes not yet drawn (no cancellation).
    """
    S, batch, k = int(wor.shape[0]), tuple(wor.shape[1:-1]), int(wor.shape[-1])
    probs = wor.log_probs().double().exp()
    K = int(probs.shape[-1])
    count = math.perm(K, k)
    if max_points is not None and count > max_points // 2:  # refused before any tuple is built
        raise ValueError(
            f"the exact grid needs at least {count} points for law {law!r} ({count} ordered {k}-tuples of "
            f"{K} classes without replacement) > `max_points` = {max_points} / 2 (room to refine, as for "
            "every grid). Reduce the set size k or the number of classes, or raise `max_points`."
        )
    flat = probs.expand(*batch, K).reshape(-1, K).cpu().numpy()  # [B, K]
    tuples = np.array(list(itertools.permutations(range(K), k)), dtype=np.int64).reshape(-1, k)
    outside = np.ones((len(tuples), K))
    np.put_along_axis(outside, tuples, 0.0, axis=1)  # classes no draw of the tuple takes
    per_element = []
    for p in flat:
        chosen = p[tuples]  # [m, k]
        # mass left before draw j: the tuple's draws from j on plus the classes outside it
        left = (outside @ p)[:, None] + np.cumsum(chosen[:, ::-1], 1)[:, ::-1]
        weight = np.prod(chosen / np.where(left > 0, left, 1.0), 1)
        key = ("without_replacement", k, tuple(p.tolist()))
        per_element.append(_fixed_spec(law, np.arange(k), tuples.astype(np.float64), weight, key))
    specs: list[Spec] = []
    B = len(flat)
    for s in range(S):
        for j, spec in enumerate(per_element):
            specs.append(replace(spec, positions=(s * B + j) * k + np.arange(k)))
    return specs


def law_specs(
    name: str, law: Law, points: np.ndarray | None = None, max_points: int | None = None
) -> list[Spec]:
    """Variables of one law.

    Args:
        points: extra breakpoints in the law's own space, ``[numel, k]`` (or ``None``);
            for :class:`FromDistribution` they are z-space points ``[M, k]`` per element.
        max_points: the grid limit; a discrete law whose own support exceeds it is refused
            before its support is built.
    """
    if isinstance(law, FromDistribution):
        if law.dist is None:
            raise ValueError("`FromDistribution` law has no `dist`.")
        return distribution_specs(name, law.dist, tuple(law.shape), points)
    if isinstance(law, WithoutReplacement):
        return without_replacement_specs(name, law, max_points)
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
        spec = _continuous_spec(
            name,
            np.array([i]),
            kind,
            edges,
            dens,
            (type(law),),
            center=1.25 if isinstance(law, Rayleigh) else 0.0,
            shared=type(law) in _OWN_LAWS,
        )
        if isinstance(law, StandardUniform):
            spec.make = _clipped(spec.make)
        specs.append(spec)
    return specs


#: scg's laws: densities fixed by the type (user-defined laws are not cached across calls).
_OWN_LAWS = (StandardNormal, StandardUniform, Rayleigh, DoubleSidedMaxwell)


def _clipped(make: Callable[[int], Rule]) -> Callable[[int], Rule]:
    """Keep uniform nodes in ``[2^-53, 1 − 2^-53]``: closer to 0 or 1 than float64
    resolves near 1, maps like ``u − ½`` lose the node (``log1p(−2|u − ½|) = −inf``)."""

    def clipped(n: int) -> Rule:
        x, w = make(n)
        keep = (x >= 2.0**-53) & (x <= 1.0 - 2.0**-53)
        return x[keep], w[keep] / w[keep].sum()

    return clipped


def nested_uniform_spec(outer: Spec, law: str, positions: np.ndarray, cuts: Sequence[float]) -> Spec:
    """A nested rule for ``(x, u)``, x by ``outer``'s rule and u ~ U(0, 1) split at ``c / x``.

    For a cost of ``a + b·x·u`` (measure-valued σ coupling ``μ + σMU``) that jumps where
    ``x·u = c``, the jump's position in u depends on x: u's pieces are chosen per node of
    x, which a tensor product cannot do. Values are ``[m, 2]`` (x, then u).
    """
    cuts = [float(c) for c in cuts if math.isfinite(float(c))]

    def make(n: int) -> Rule:
        xs, ws = (np.asarray(a, dtype=np.float64) for a in rule(outer, n))
        xs = xs.reshape(len(ws), -1)[:, 0]
        rows, weights = [], []
        for x, w in zip(xs, ws, strict=False):
            edges = piece_edges(0.0, 1.0, [c / x for c in cuts] if x != 0 else [])

            def inner(k: int, e: list[float] = edges) -> Rule:
                return _pieces_rule("de", e, k, None, 0.0, 1.0)

            u, v = _clipped(inner)(n)
            rows.append(np.stack([np.full_like(u, x), u], 1))
            weights.append(w * v)
        return np.concatenate(rows), np.concatenate(weights)

    return Spec(
        outer.law,
        outer.positions,
        make,
        outer.key + ("nested", law, tuple(cuts)),
        outer.pieces * (len(cuts) + 1),
        outer.kind,
        edges=None,
        partner=(law, np.asarray(positions)),
    )
