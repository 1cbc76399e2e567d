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

import sys
from typing import Optional

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, Normal, TransformedDistribution

from scg._dist import parameters_of, unwrap
from scg.baselines import Delta, LeaveOneOut
from scg.baselines.base import ControlVariate
from scg.estimators import GumbelSoftmax, Pathwise, ScoreFunction, StraightThrough
from scg.estimators.base import Estimator
from scg.estimators.pathwise import reparameterize
from scg.laws import noise_like
from scg.laws import draw as draw_from

__all__ = ["Node", "Cost", "SUPPORTED", "default_estimator", "check_estimator", "draw"]

#: Estimators a graph node accepts (exact types: subclasses may change the surrogate).
SUPPORTED: tuple[type[Estimator], ...] = (Pathwise, ScoreFunction, GumbelSoftmax, StraightThrough)


class Node:
    """A stochastic node: its distribution, estimator, value and dependencies.

    ``log_prob`` (``[S, *batch]``, attached) is set for score-function nodes while
    gradients are tracked.
    """

    __slots__ = ("name", "dist", "estimator", "value", "draws", "child", "ancestors", "order", "log_prob",
                 "opaque", "context")

    def __init__(
        self,
        name: str,
        dist: Distribution,
        estimator: Estimator,
        value: Tensor,
        draws: dict[str, Tensor],
        child: bool,
        ancestors: frozenset[str],
        order: int,
        log_prob: Optional[Tensor] = None,
        opaque: bool = False,
        context: Optional[Tensor] = None,
    ) -> None:
        self.name = name
        self.dist = dist
        self.estimator = estimator
        self.value = value
        self.draws = draws
        self.child = child
        self.ancestors = ancestors
        self.order = order
        self.log_prob = log_prob
        self.opaque = opaque  # integer-valued sample: invisible to autograd
        self.context = context

    @property
    def score(self) -> bool:
        return self.log_prob is not None

    def __repr__(self) -> str:
        return f"Node({self.name!r}, {type(self.estimator).__name__}, ancestors={sorted(self.ancestors)})"


class Cost:
    """A registered cost ``[S, *batch]`` with its minibatch scale and the nodes it depends on.

    Its dependencies are settled when first needed (:func:`~scg.graph._credit.settle`): until
    then ``deps`` is ``None`` and ``root`` (the autograd node of ``value``, captured
    when the cost was registered — autograd nodes never change their inputs, so a
    later walk from it reads the same data flow) and ``known`` (nodes named
    directly: ``depends_on``, integer-valued nodes, the value itself being a
    node's leaf) say where to find them, among the first ``horizon`` graph
    nodes. ``scored``: the score-function nodes
    among ``deps``, in sampling order.
    """

    __slots__ = ("name", "value", "scale", "deps", "scored", "root", "known", "horizon")

    def __init__(
        self, name: str, value: Tensor, scale: float, root: Optional[object], known: set[str], horizon: int
    ) -> None:
        self.name = name
        self.value = value
        self.scale = scale
        self.deps: Optional[frozenset[str]] = None
        self.scored: tuple[str, ...] = ()
        self.root = root
        self.known = known
        self.horizon = horizon  # graph nodes when the cost was registered (the walk can find no later one)

    def __repr__(self) -> str:
        deps = "pending" if self.deps is None else sorted(self.deps)
        return f"Cost({self.name!r}, deps={deps}, scale={self.scale})"


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
) -> tuple[Tensor, dict[str, Tensor], bool]:
    """The node's value (attached as its estimator requires) and the draws that made it.

    Returns:
        ``(value, draws, owned)``; ``value`` has shape ``[S, *batch_shape, *event_shape]``
        for a root and ``dist.batch_shape + dist.event_shape`` (starting with S) for
        a child; ``draws`` can be replayed with ``Graph(draws=...)``; ``owned``:
        ``value`` is a tensor object that nothing but the graph refers to (a new
        sample — not a replayed or otherwise shared tensor), so the graph may set
        its ``requires_grad`` in place.
    """
    lead = () if child else (num_samples,)
    if type(estimator) is ScoreFunction:
        if replay is not None:
            shape = (*lead, *dist.batch_shape, *dist.event_shape)
            z = _check_replay(name, "z", _get(replay, name, "z"), shape)
        else:
            z = draw_from(dist, lead)  # without gradient; fast Bernoulli, vmap-safe one-hot
        # Owned: a new Python object that only this frame holds (a distribution could return a tensor it keeps).
        owned = replay is None and sys.getrefcount(z) == 2
        if z.requires_grad:  # a replayed sample that carries gradient; samples never do
            z, owned = z.detach(), False
        return z, {"z": z}, owned
    if isinstance(estimator, Pathwise):
        # An Independent, or a subclass keeping its sampling (scg.models' DiagonalNormal changes only log_prob).
        wrapped = isinstance(dist, Independent) and type(dist).rsample is Independent.rsample
        normal = dist.base_dist if wrapped else dist
        if type(normal) is Normal and replay is None:  # fast path, as scg.estimators.pathwise's _normal
            loc, scale = normal.loc, normal.scale
            eps = torch.randn((*lead, *loc.shape), dtype=loc.dtype, device=loc.device)
            return loc + scale * eps, {"eps": eps}, True
        rep = reparameterize(dist)
        if rep is None:  # implicit reparameterisation (Gamma, Beta, Dirichlet): no replayable noise
            if replay is not None:
                raise ValueError(
                    f"`draws[{name!r}]` cannot be replayed: {type(dist).__name__} has no explicit "
                    "reparameterisation noise in scg (it samples with dist.rsample)."
                )
            return dist.rsample(lead), {}, False
        law_cls, sample = rep
        base = _base_of(dist)
        shape = (*lead, *base.batch_shape, *base.event_shape)
        if replay is not None:
            eps = _check_replay(name, "eps", _get(replay, name, "eps"), shape)
        else:
            params = parameters_of(base)
            ref = next(iter(params.values())) if params else base.mean
            eps = noise_like(law_cls, shape, ref)
        return sample(eps), {"eps": eps}, False
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
    return (y.squeeze(0) if child else y), {"u": u}, False


def _get(replay: dict[str, Tensor], name: str, key: str) -> Tensor:
    if key not in replay:
        raise ValueError(f"`draws[{name!r}]` must contain {key!r} for this node's estimator; got keys {sorted(replay)}.")
    return replay[key]
