"""A graph node: its estimator's parts, placed among the graph's sample dims.

Every estimator serves a graph node through the same method that serves
``scg.expectation``, :meth:`scg.Estimator.parts`. The graph calls it on draws of
``laws(dist, n)`` — ``n = S`` for a *root* (its distribution depends on no earlier
node), ``n = 1`` for a *child* (its distribution's batch shape already starts with
the graph's sample dims, because its parameters were computed from earlier
samples) — and translates between the estimator's shapes (``[*copies, n,
*batch_shape, ...]``) and the graph's (``[*sample dims, *batch, ...]``).

The graph's sample dims, counted from the right: dim 0 is the Monte Carlo dim S;
each node whose estimator needs the downstream cost at K coupled points (DisARM's
antithetic pair, measure-valued perturbations) adds one dim of size K on the left,
with its copy weights. A node spans the sample dims its value varies along: its
parents' and, for a multi-point node, its own copy dim; its value has size 1 in the
others, so it broadcasts against everything computed before.
"""

from __future__ import annotations

from torch import Tensor
from torch.distributions import Distribution

from scg.estimators.base import Estimator, Parts
from scg.estimators.pathwise import ImplicitSample

__all__ = ["Node", "Cost", "draw_parts", "check_node_estimator", "starts_with"]


def starts_with(shape: tuple[int, ...], sizes: list[int], rank: int) -> bool:
    """Whether ``shape`` starts with the graph's first ``rank`` sample dims (``sizes`` from S outwards).

    S must be at position ``rank − 1``; an outer copy dim may be 1 (broadcast) or its size.
    """
    return (
        len(shape) >= rank
        and shape[rank - 1] == sizes[0]
        and all(d in (1, sizes[rank - 1 - i]) for i, d in enumerate(shape[: rank - 1]))
    )


class Node:
    """A stochastic node: its distribution, estimator, parts, value and place in the sample dims.

    Attributes:
        rank: number of sample dims of ``value`` (dim ``rank - 1`` of the value is S).
        base_rank: sample dims of the distribution (1 for a root: the S draws).
        lift: size-1 dims inserted after a multi-point node's copy dim so that it
            lands on the graph's outermost sample dim.
        log_prob: ``[*sample dims, *batch]`` for score-function nodes while gradients are tracked.
    """

    __slots__ = (
        "name",
        "dist",
        "estimator",
        "parts",
        "value",
        "draws",
        "child",
        "ancestors",
        "order",
        "log_prob",
        "integer_valued",
        "rank",
        "base_rank",
        "lift",
        "sample_shape",
    )

    def __init__(
        self,
        name: str,
        dist: Distribution,
        estimator: Estimator,
        parts: Parts,
        value: Tensor,
        draws: dict[str, Tensor],
        child: bool,
        ancestors: frozenset[str],
        order: int,
        log_prob: Tensor | None,
        integer_valued: bool,
        rank: int,
        base_rank: int,
        lift: int,
        sample_shape: tuple[int, ...],
    ) -> None:
        self.name = name
        self.dist = dist
        self.estimator = estimator
        self.parts = parts
        self.value = value
        self.draws = draws
        self.child = child
        self.ancestors = ancestors
        self.order = order
        self.log_prob = log_prob
        self.integer_valued = integer_valued  # integer-valued sample: invisible to autograd
        self.rank = rank
        self.base_rank = base_rank
        self.lift = lift
        self.sample_shape = sample_shape  # the value's sample dims, outermost first (1 where broadcast)

    @property
    def score(self) -> bool:
        return self.log_prob is not None

    @property
    def copies(self) -> bool:
        return self.parts.copies is not None

    def to_graph(self, x: Tensor) -> Tensor:
        """A tensor in the estimator's layout ``[*copies, n, *batch_shape, ...]`` in the graph's."""
        k = 1 if self.copies else 0
        if self.child:
            x = x.squeeze(k)
        if self.lift:
            x = x.reshape(x.shape[0], *([1] * self.lift), *x.shape[1:])
        return x

    def to_parts(self, x: Tensor) -> Tensor:
        """Inverse of :meth:`to_graph` for a signal ``[*sample dims, *batch]``."""
        k = 1 if self.copies else 0
        if self.lift:
            x = x.reshape(x.shape[0], *x.shape[1 + self.lift :])
        if self.child:
            x = x.unsqueeze(k)
        return x

    def __repr__(self) -> str:
        return f"Node({self.name!r}, {type(self.estimator).__name__}, ancestors={sorted(self.ancestors)})"


class Cost:
    """A registered cost ``[*sample dims, *batch]`` with its minibatch scale and the nodes it depends on.

    Its dependencies are settled when first needed (:func:`~scg.graph._credit.resolve_dependencies`):
    until then ``deps`` is ``None`` and ``root`` (the autograd node of ``value``,
    captured at registration — autograd nodes never change their inputs, so a later
    walk from it reads the same data flow) and ``known`` (nodes named directly:
    ``depends_on``, integer-valued nodes, the value itself being a node's leaf) say
    where to find them among the first ``nodes_before`` graph nodes. ``scored``: the
    score-function nodes among ``deps``, in sampling order; ``rank``: its sample dims.
    """

    __slots__ = (
        "name",
        "value",
        "scale",
        "deps",
        "scored",
        "root",
        "known",
        "nodes_before",
        "rank",
        "narrow",
    )

    def __init__(
        self,
        name: str,
        value: Tensor,
        scale: float,
        root: object | None,
        known: set[str],
        nodes_before: int,
        narrow: bool,
    ) -> None:
        self.name = name
        self.value = value
        self.scale = scale
        self.deps: frozenset[str] | None = None
        self.scored: tuple[str, ...] = ()
        self.root = root
        self.known = known
        self.nodes_before = (
            nodes_before  # graph nodes when the cost was registered (the walk can find no later one)
        )
        self.rank = 1
        self.narrow = narrow  # depends_on given: assumed dependencies on integer-valued nodes are dropped

    def __repr__(self) -> str:
        deps = "pending" if self.deps is None else sorted(self.deps)
        return f"Cost({self.name!r}, deps={deps}, scale={self.scale})"


def check_node_estimator(name: str, estimator: object, dist: Distribution, num_samples: int) -> Estimator:
    """Raise ``TypeError``/``ValueError`` unless ``estimator`` can serve node ``name``.

    It must be an :class:`~scg.Estimator` that implements ``parts``, apply to ``dist``,
    need no cost *function* (a graph's costs are tensors: ``Delta``, REBAR's control
    variate), and have the samples its control variates need.
    """
    if not isinstance(estimator, Estimator):
        raise TypeError(
            f"`estimator` of node {name!r} must be an scg Estimator; got {type(estimator).__name__}."
        )
    if type(estimator).parts is Estimator.parts:
        raise TypeError(
            f"`estimator` of node {name!r} must implement parts(dist, draws) to be a graph node; "
            f"{type(estimator).__name__} overrides only surrogate(), which serves scg.expectation."
        )
    estimator.check(dist)
    for m in estimator.modules():
        if getattr(m, "needs_cost_function", False):
            raise TypeError(
                f"`estimator` of node {name!r} uses {type(m).__name__}, which needs the cost as a function of "
                "the node's sample; a Graph's costs are tensors. Use Constant, MovingAverage, LeaveOneOut, "
                "Learned or Normalize baselines, and for RELAX a control variate of the node's own relaxed "
                "sample (NeuralControlVariate(net, rebar=False))."
            )
        need = getattr(m, "min_samples", 1)
        if isinstance(need, int) and num_samples < need:
            raise ValueError(
                f"`num_samples` must be >= {need} for {type(m).__name__} (node {name!r}); got {num_samples}."
            )
    return estimator


def _replayed(name: str, key: str, value: object, shape: tuple[int, ...], child: bool) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"`draws[{name!r}][{key!r}]` must be a tensor; got {type(value).__name__}.")
    if child and tuple(value.shape) == tuple(shape[1:]):
        value = value.unsqueeze(0)  # a child's draws may be given without their leading 1
    if tuple(value.shape) != tuple(shape):
        raise ValueError(
            f"`draws[{name!r}][{key!r}]` must have shape {list(shape)}; got {list(value.shape)} "
            "(sample dims do not match the graph's num_samples or the node's distribution)."
        )
    return value


def draw_parts(
    name: str,
    dist: Distribution,
    estimator: Estimator,
    n: int,
    child: bool,
    replay: dict[str, Tensor] | None,
    context: Tensor | None,
) -> tuple[Parts, dict[str, Tensor]]:
    """Draw (or replay) the node's randomness and return its estimator's parts and the draws."""
    laws = estimator.laws(dist, n)
    if replay is None:
        draws = {key: law.sample() for key, law in laws.items()}
    else:
        draws = {}
        for key, law in laws.items():
            if isinstance(law, ImplicitSample):
                raise ValueError(
                    f"`draws[{name!r}]` cannot be replayed: {type(dist).__name__} is reparameterised "
                    "implicitly (its sample is dist.rsample's own, attached to the parameters)."
                )
            if key not in replay:
                raise ValueError(
                    f"`draws[{name!r}]` must contain {key!r} for this node's estimator; got keys {sorted(replay)}."
                )
            draws[key] = _replayed(name, key, replay[key], tuple(law.shape), child)
    parts = estimator.parts(dist, draws, context=context)
    if not isinstance(parts, Parts):
        raise TypeError(
            f"`{type(estimator).__name__}.parts` must return scg.Parts; got {type(parts).__name__}."
        )
    if parts.copies is not None and parts.log_prob is not None:
        raise ValueError(f"`{type(estimator).__name__}.parts` must not give both `log_prob` and `copies`.")
    return parts, draws
