"""Drawing the value of one graph node with its estimator.

A node is drawn either ``num_samples`` times (a root: its distribution does not
depend on earlier nodes, samples ``[S, *batch_shape, *event_shape]``) or once per
element (a child: its distribution already has batch shape ``[S, ...]`` because
its parameters were computed from earlier samples).

Supported estimators and what the node's value is:

* ``Pathwise``: the reparameterised sample ``g_θ(ε)`` with ε drawn out of place
  (``scg.estimators.pathwise.reparameterize``), so graphs work under ``vmap``.
* ``GumbelSoftmax`` / ``StraightThrough``: the relaxed (or straight-through)
  sample the estimator feeds to its cost, attached to the parameters (biased).
* ``ScoreFunction``: the detached sample; the graph adds its score terms.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, Normal, OneHotCategorical, TransformedDistribution

from scg._dist import magic_box, parameters_of, unwrap
from scg.baselines import Delta, LeaveOneOut
from scg.baselines.base import ControlVariate, SignalContext, score_sq_norm
from scg.estimators import GumbelSoftmax, Pathwise, ScoreFunction, StraightThrough
from scg.estimators.base import Estimator
from scg.estimators.pathwise import reparameterize
from scg.graph._dataflow import align
from scg.laws import FromDistribution, StandardNormal, law_like

__all__ = ["Node", "Cost", "SUPPORTED", "default_estimator", "check_estimator", "draw", "context_for", "baseline_term"]

#: Estimators a graph node accepts (exact types: subclasses may change the surrogate).
SUPPORTED: tuple[type[Estimator], ...] = (Pathwise, ScoreFunction, GumbelSoftmax, StraightThrough)
_RELAXED = (GumbelSoftmax, StraightThrough)


@dataclass(eq=False)
class Node:
    """A stochastic node: its distribution, estimator, value and dependencies."""

    name: str
    dist: Distribution
    estimator: Estimator
    value: Tensor
    draws: dict[str, Tensor]
    child: bool
    ancestors: frozenset[str]
    order: int
    log_prob: Optional[Tensor] = None  # score-function nodes (attached), ``[S, *batch]``
    opaque: bool = False  # integer-valued sample: invisible to autograd
    context: Optional[Tensor] = None
    boundary: Any = field(default=None, repr=False)  # autograd node kept alive for the walk

    @property
    def score(self) -> bool:
        return self.log_prob is not None


@dataclass(eq=False)
class Cost:
    """A registered cost ``[S, *batch]`` with its minibatch scale and the nodes it depends on."""

    name: str
    value: Tensor
    scale: float
    deps: frozenset[str]
    scored: tuple[str, ...] = ()  # score-function nodes among deps, in sampling order


def default_estimator(dist: Distribution, num_samples: int) -> Estimator:
    """``Pathwise()`` if ``dist.has_rsample``; else ``ScoreFunction(LeaveOneOut())`` for S ≥ 2, else ``ScoreFunction()``."""
    if dist.has_rsample:
        return Pathwise()
    return ScoreFunction(baseline=LeaveOneOut() if num_samples >= 2 else None)


def check_estimator(name: str, estimator: Estimator, dist: Distribution, num_samples: int) -> None:
    """Raise ``TypeError``/``ValueError`` if ``estimator`` cannot serve node ``name`` in a graph."""
    if type(estimator) not in SUPPORTED:
        supported = ", ".join(cls.__name__ for cls in SUPPORTED)
        raise TypeError(
            f"`estimator` of node {name!r} must be one of {supported} in a Graph; "
            f"got {type(estimator).__name__}. Use scg.expectation for single-distribution estimators."
        )
    estimator.check(dist)
    if isinstance(estimator, ScoreFunction) and estimator.baseline is not None:
        baseline: ControlVariate = estimator.baseline
        if any(isinstance(m, Delta) for m in baseline.modules()):
            raise TypeError(
                f"`estimator` of node {name!r} uses the Delta control variate, which needs the cost as a "
                "function of the node's sample; a Graph's costs are tensors. Use Constant, MovingAverage, "
                "LeaveOneOut, Learned or Normalize."
            )
        if num_samples < baseline.min_samples:
            raise ValueError(
                f"`num_samples` must be >= {baseline.min_samples} for {type(baseline).__name__} "
                f"(node {name!r}); got {num_samples}."
            )


def _check_replay(name: str, key: str, value: Tensor, shape: tuple[int, ...]) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"`draws[{name!r}][{key!r}]` must be a tensor; got {type(value).__name__}.")
    if tuple(value.shape) != tuple(shape):
        raise ValueError(
            f"`draws[{name!r}][{key!r}]` must have shape {list(shape)}; got {list(value.shape)} "
            "(sample dims do not match the graph's num_samples or the node's distribution)."
        )
    return value


def _base_of(dist: Distribution) -> Distribution:
    base = dist
    while True:
        base, _ = unwrap(base)
        if isinstance(base, TransformedDistribution):
            base = base.base_dist
            continue
        return base


def draw(
    name: str,
    dist: Distribution,
    estimator: Estimator,
    num_samples: int,
    child: bool,
    replay: Optional[dict[str, Tensor]],
) -> tuple[Tensor, dict[str, Tensor]]:
    """The node's value (attached as its estimator requires) and the draws that made it.

    Returns:
        ``(value, draws)``; ``value`` has shape ``[S, *batch_shape, *event_shape]``
        for a root and ``dist.batch_shape + dist.event_shape`` (starting with S) for
        a child; ``draws`` can be replayed with ``Graph(draws=...)``.
    """
    lead = () if child else (num_samples,)
    if isinstance(estimator, ScoreFunction):
        if replay is not None:
            shape = (*lead, *dist.batch_shape, *dist.event_shape)
            z = _check_replay(name, "z", _get(replay, name, "z"), shape)
        elif isinstance(unwrap(dist)[0], OneHotCategorical):  # scg's vmap-safe one-hot draw
            shape = (*lead, *dist.batch_shape, *dist.event_shape)
            z = FromDistribution(shape=(1, *shape) if child else shape, dist=dist).sample()
            z = z.squeeze(0) if child else z
        else:
            z = dist.sample(lead)  # torch draws without gradient
        if z.requires_grad:  # pragma: no cover - samples never carry gradient
            z = z.detach()
        return z, {"z": z}
    if isinstance(estimator, Pathwise):
        normal = dist.base_dist if type(dist) is Independent else dist
        if type(normal) is Normal and replay is None:  # fast path, as scg.estimators.pathwise's _normal
            loc, scale = normal.loc, normal.scale
            eps = torch.randn((*lead, *loc.shape), dtype=loc.dtype, device=loc.device)
            return loc + scale * eps, {"eps": eps}
        rep = reparameterize(dist)
        if rep is None:  # implicit reparameterisation (Gamma, Beta, Dirichlet): no replayable noise
            if replay is not None:
                raise ValueError(
                    f"`draws[{name!r}]` cannot be replayed: {type(dist).__name__} has no explicit "
                    "reparameterisation noise in scg (it samples with dist.rsample)."
                )
            return dist.rsample(lead), {}
        law_cls, sample = rep
        base = _base_of(dist)
        shape = (*lead, *base.batch_shape, *base.event_shape)
        if replay is not None:
            eps = _check_replay(name, "eps", _get(replay, name, "eps"), shape)
        else:
            params = parameters_of(base)
            ref = next(iter(params.values())) if params else base.mean
            if law_cls is StandardNormal:  # the common case, without constructing the law object
                eps = torch.randn(shape, dtype=ref.dtype, device=ref.device)
            else:
                eps = law_like(law_cls, shape, ref).sample()
        return sample(eps), {"eps": eps}
    # Relaxations: let the estimator build its sample and capture what it feeds to f.
    n = 1 if child else num_samples
    laws = estimator.laws(dist, n)
    law = laws["u"]
    if replay is not None:
        shape = law.shape[1:] if child else law.shape
        u = _check_replay(name, "u", _get(replay, name, "u"), shape)
    else:
        u = law.sample()
        u = u.squeeze(0) if child else u
    captured: list[Tensor] = []

    def capture(y: Tensor) -> Tensor:
        captured.append(y)
        return y.new_zeros((n, *dist.batch_shape))

    estimator.surrogate(capture, dist, {"u": u.unsqueeze(0) if child else u})
    y = captured[0]
    return (y.squeeze(0) if child else y), {"u": u}


def _get(replay: dict[str, Tensor], name: str, key: str) -> Tensor:
    if key not in replay:
        raise ValueError(f"`draws[{name!r}]` must contain {key!r} for this node's estimator; got keys {sorted(replay)}.")
    return replay[key]


def _no_cost_function(z: Tensor) -> Tensor:
    raise TypeError(
        "this control variate needs the cost as a function of the node's sample, which a Graph "
        "does not have (its costs are tensors)."
    )


class _PerSampleContext(SignalContext):
    """Signal context of a child node: its distribution has one element per graph sample."""

    def score_sq_norm(self) -> Tensor:
        if self._score_sq is None:
            self._score_sq = score_sq_norm(self.dist, self.samples.unsqueeze(0)).squeeze(0)
        return self._score_sq


def context_for(node: Node) -> SignalContext:
    """The :class:`~scg.baselines.SignalContext` of a score-function node's control variate."""
    cls = _PerSampleContext if node.child else SignalContext
    return cls(
        dist=node.dist,
        samples=node.draws["z"],
        log_prob=node.log_prob,  # type: ignore[arg-type]  # score-function nodes only
        f=_no_cost_function,
        context=node.context,
    )


def baseline_term(node: Node, estimator: ScoreFunction, costs: Iterable[Cost]) -> Tensor:
    r"""Node w's control-variate term :math:`Σ_{\text{batch}} \mathrm{mean}_S (1 − □(\log p(w)))\, b_w` (+ extras).

    The learning signal :math:`A_w = Σ_{c ∋ w} s_c\, c` (costs brought to w's shape)
    goes through the node's control variate; what it subtracts, :math:`b_w = A_w − A'_w`
    (detached), enters DiCE-style (Mao et al. 2019): zero in value, :math:`−b_w ∇\log p(w)`
    in gradient. A control variate's extra term (``Learned``'s regression) is added.
    """
    lp = node.log_prob
    shape = tuple(lp.shape)  # type: ignore[union-attr]
    signal: Optional[Tensor] = None
    for c in costs:
        if node.name in c.deps:
            part = align(c.value if c.scale == 1.0 else c.value * c.scale, shape).expand(shape)
            signal = part if signal is None else signal + part
    if signal is None:  # no cost depends on this node: its score term is zero anyway
        return lp.new_zeros(())  # type: ignore[union-attr]
    new, extra = estimator.baseline(signal, context_for(node))  # type: ignore[misc]
    b = (signal - new).detach()
    out = ((1.0 - magic_box(lp)) * b).mean(0).sum()  # type: ignore[arg-type]
    return out if extra is None else out + extra.sum()
