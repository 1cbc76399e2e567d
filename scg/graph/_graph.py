"""``scg.Graph``: stochastic computation graphs with credit assignment by data flow."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor
from torch.distributions import Distribution

from scg._checks import check_positive, check_positive_int, compiling
from scg._torch import in_transform
from scg.estimators.base import Estimator, default_estimator
from scg.graph._credit import resolve_dependencies
from scg.graph._dataflow import Tracker, aligned_shape, is_tracked
from scg.graph._integer import Source
from scg.graph._nodes import Cost, Node, check_node_estimator, draw_parts, starts_with
from scg.graph._surrogate import surrogate

__all__ = ["Graph"]


class Graph:
    r"""A stochastic computation graph: sample nodes, register costs, take one surrogate.

    .. math::
        \hat L = \sum_c s_c \sum_{\text{batch}} \operatorname{mean}_{rows}
            □\Big(\sum_{w ∈ \mathrm{deps}(c)} \log p(w)\Big)\, c
          + \sum_w \sum_{\text{batch}} \operatorname{mean}_{rows}\, T_w(A_w)

    with :math:`□(τ) = \exp(τ − \mathrm{stop}(τ))` (DiCE), the sum in □ over
    score-function nodes, :math:`s_c` a cost's scale (N/B for minibatches),
    :math:`A_w = \sum_{c ∋ w} s_c\, c` node w's learning signal — only the costs
    that *depend* on w (credit assignment, Schulman et al. 2015) — and :math:`T_w`
    the term its estimator adds (zero in value). The value of :math:`\hat L` is
    exactly :math:`\sum_c s_c \sum_{\text{batch}} \mathrm{mean}(c)`.

    **Any estimator is a node** — every one of scg's and a user's own subclass —
    through the method that also serves ``scg.expectation``,
    :meth:`scg.Estimator.parts`: the node's value (what downstream code sees), its
    log-probability for the DiCE box (score-function type), its copies and its term:

    * ``ScoreFunction(baseline=...)``: detached sample, DiCE box, the control
      variate applied to :math:`A_w` (Mao et al. 2019's baseline form); derivatives
      of every order are DiCE's.
    * ``Pathwise``, ``GumbelSoftmax``, ``StraightThrough``: the reparameterised (or
      relaxed) sample; gradients flow through it.
    * ``DisARM`` and ``MeasureValued`` need the downstream cost at several coupled
      points (the antithetic pair; the perturbed points): the node's value gains a
      leading **copy dim** (size 2, or 1 + perturbations), and everything computed
      from it downstream carries that dim too, by broadcasting. Copy dims are the
      graph's extra *sample dims*: a cost's value averages them with the copies'
      weights (½, ½; 1, 0, …, 0), and a node upstream gets their average as its signal.
    * ``RELAX``: detached sample and the RELAX term, with a control variate of the
      node's own relaxed sample (``NeuralControlVariate(net, rebar=False)``, LAX-style).

    Requires: every node's estimator applies to its distribution; data flow from
    nodes to costs visible to autograd or declared with ``depends_on``. Properties:
    unbiased when every node's estimator and control variate is (higher orders too
    for score-function and pathwise nodes); a cost adds variance only to the nodes
    upstream of it. See ``docs/graph.md`` for how data flow is read and what it costs.

    Data flow is read from autograd, without wrapping tensors: a cost depends on a
    node when the node's value is an ancestor of the cost in the autograd graph, and
    on that node's ancestors. What it cannot see:

    * non-differentiable uses of a sample (comparisons, ``.long()``, indexing with a
      sample): declare them with ``depends_on=[...]``; ``g.dependencies()`` shows
      what was found;
    * integer-valued samples (``Categorical``) carry no autograd history: they are
      handed out as a tensor subclass that tracks torch operations on them
      (``table[c]``, ``F.one_hot(c)``, comparisons); once the value leaves the tensor
      domain (``.item()``, ``int(c)``, writes into untracked tensors) later costs and
      nodes are assumed to depend on it (unbiased, more variance than necessary);
      ``depends_on=`` narrows credit in every case;
    * detached samples are handed out as leaves that require grad, so that autograd
      records who reads them (consequences: ``docs/graph.md``).

    Shapes: the graph's **sample dims** are S = ``num_samples`` plus one copy dim
    per multi-point node, outermost first: ``[*copies, S]``. A *root* node (its
    distribution depends on no earlier node) is drawn S times, value
    ``[S, *batch_shape, *event_shape]`` (a multi-point root:
    ``[K, 1, …, S, *batch_shape, *event_shape]``). A *child* node's distribution was
    computed from earlier samples, so its ``batch_shape`` starts with its parents'
    sample dims; it is drawn once per element. Costs are ``[*sample dims, *batch]``,
    starting with the sample dims of the nodes they depend on; batch elements are
    independent, and a node's log-probability and a cost are aligned from the left
    after the sample dims (extra node dims are summed, missing ones broadcast).

    A graph is used once: create one per step. Estimators (and their state) live
    outside the graph — keep them in your model. Under ``torch.no_grad()`` the graph
    computes values only (no data-flow walk, no node terms, no state updates); a
    node counts as a child when its ``batch_shape`` starts with the sample dims and
    earlier nodes exist, and a cost's sample dims are read from its shape.

    Args:
        num_samples: S ≥ 1.
        draws: replay the random inputs of earlier draws, ``{node name: draws}`` as
            returned by :attr:`draws` (common random numbers across estimators,
            exact checks by enumeration/quadrature): the estimator's ``laws`` names
            (``{"z": sample}`` for score-function nodes, ``{"eps": noise}`` pathwise,
            ``{"u": uniforms}`` DisARM and relaxations).
        dataflow: ``"traced"`` (default) reads which nodes each cost and node depends
            on from autograd (plus ``depends_on``); ``"declared"`` reads nothing: a
            node's parents are exactly its ``depends_on`` (none: a root) and every
            cost must pass ``depends_on`` (ancestors are added). Declared data flow
            involves no Python introspection, so a step using it compiles with
            ``torch.compile(..., fullgraph=True)``; a missing name is not detected
            (a cost credited to too few nodes gives a biased gradient).

    Example:
        >>> import torch, scg
        >>> from torch.distributions import Bernoulli, Normal
        >>> _ = torch.manual_seed(0)
        >>> theta = torch.zeros(3, requires_grad=True)
        >>> g = scg.Graph(num_samples=8)
        >>> a = g.sample("a", Bernoulli(logits=theta[0]))                 # score function (RLOO)
        >>> z = g.sample("z", Normal(a + theta[1], 1.0))                  # pathwise, depends on a
        >>> b = g.sample("b", Bernoulli(logits=z * theta[2]), scg.DisARM())  # antithetic pair: [2, 8]
        >>> g.cost("fit", (z - 1.0) ** 2)                                # [8]: credited to a (through z)
        >>> g.cost("bits", b)                                            # [2, 8]: credited to b, z and a
        >>> loss = g.surrogate()                                         # value: sum of the costs' MC means
        >>> loss.backward()

    References:
        Schulman, Heess, Weber & Abbeel, "Gradient Estimation Using Stochastic Computation
        Graphs", NeurIPS 2015. https://arxiv.org/abs/1506.05254
        Foerster et al., "DiCE: The Infinitely Differentiable Monte Carlo Estimator", ICML 2018.
        https://arxiv.org/abs/1802.05098
        Mao et al., "A Baseline for Any Order Gradient Estimation in Stochastic Computation
        Graphs", ICML 2019. https://arxiv.org/abs/1906.03391
        Mohamed et al., "Monte Carlo Gradient Estimation in Machine Learning", JMLR 2020, §4–5.
        https://arxiv.org/abs/1906.10652
    """

    def __init__(
        self,
        num_samples: int = 1,
        *,
        draws: Mapping[str, Mapping[str, Tensor]] | None = None,
        dataflow: str = "traced",
    ) -> None:
        if type(num_samples) is not int or num_samples < 1:
            check_positive_int("num_samples", num_samples)
        if dataflow not in ("traced", "declared"):
            raise ValueError(f"`dataflow` must be 'traced' or 'declared'; got {dataflow!r}.")
        self.num_samples = num_samples
        self.dataflow = dataflow
        if draws is not None and not isinstance(draws, Mapping):
            raise TypeError(f"`draws` must be a mapping node name -> draws; got {type(draws).__name__}.")
        for key, value in (draws or {}).items():
            if not isinstance(value, Mapping):
                raise TypeError(
                    f"`draws[{key!r}]` must be a mapping law name -> tensor; got {type(value).__name__}."
                )
        self._replay = {k: dict(v) for k, v in draws.items()} if draws else None
        self._nodes: dict[str, Node] = {}
        self._costs: dict[str, Cost] = {}
        self._scoring: list[str] = []  # score-function nodes with a log-probability, in sampling order
        self._flow = Tracker()  # the nodes' values in the autograd graph
        self._integer_valued: set[str] = set()  # integer-valued nodes whose data flow is not tracked
        self._sources: list[Source] = []  # integer-valued nodes tracked through torch operations
        self._lp_shapes: set[torch.Size] = set()  # shapes of the score-function nodes' log-probabilities
        self._sizes: list[int] = [num_samples]  # sample dims from S outwards
        self._axes: list[Tensor | None] = [None]  # their weights (None: uniform)
        self._done = False

    # ------------------------------------------------------------------ nodes
    def sample(
        self,
        name: str,
        dist: Distribution,
        estimator: Estimator | None = None,
        *,
        depends_on: Sequence[str] | None = None,
        context: Tensor | None = None,
    ) -> Tensor:
        """Draw node ``name`` from ``dist`` with its own estimator; return its value.

        Args:
            name: unique name of the node in this graph.
            dist: a ``torch.distributions.Distribution``; batch shape ``[*batch]`` for
                a root, ``[*sample dims, *batch]`` when its parameters come from earlier nodes.
            estimator: any :class:`scg.Estimator` that implements ``parts``; ``None``
                picks :func:`scg.estimators.default_estimator` (stateless).
            depends_on: names of earlier nodes the distribution depends on in ways
                autograd cannot see (keyword-only); added to the detected ones.
            context: input of a ``Learned`` (NVIL) baseline, e.g. the data x or the
                node's parents; default: the distribution's detached parameters.

        Returns:
            The sample, ``[S, *batch_shape, *event_shape]`` (root) or ``[*batch_shape,
            *event_shape]`` (child), with a leading copy dim for DisARM and MeasureValued.
        """
        nodes = self._nodes
        if self._done or type(name) is not str or not name or name in nodes or name in self._costs:
            self._check_new("sample", name)
        if not isinstance(dist, Distribution):
            raise TypeError(
                f"`dist` of node {name!r} must be a torch.distributions.Distribution; got {type(dist).__name__}."
            )
        S = self.num_samples
        if estimator is None:
            estimator = default_estimator(dist, S)
        check_node_estimator(name, estimator, dist, S)
        grad = torch.is_grad_enabled()
        declared = self.dataflow == "declared"
        tracking = grad and not declared
        flow = self._flow
        parents = flow.parents(dist, len(nodes)) if tracking and flow.first_sequence_nr >= 0 else set()
        if depends_on is not None:
            parents |= self._resolve(depends_on)
        batch_shape = tuple(dist.batch_shape)
        child = bool(parents)
        unseen = self._unseen_integers()
        if declared:
            pass  # the parents are the nodes named by depends_on, nothing else
        elif depends_on is None and not child and self._prefix_rank(batch_shape):
            hidden = unseen if tracking else set(nodes)
            if hidden:  # integer-valued (or untracked) earlier nodes: assume they feed this one
                child = True
                parents |= hidden
        if depends_on is None and child and unseen:  # a child may read integer samples unseen
            parents |= unseen
        if child:
            base_rank = (
                self._prefix_rank(batch_shape)
                if not (tracking or declared)
                else max(nodes[p].rank for p in parents)
            )
            self._check_prefix(name, batch_shape, base_rank, parents)
            prefix = batch_shape[:base_rank]
        else:
            base_rank, prefix = 1, (S,)
        ancestors = set(parents)
        for p in parents:
            ancestors |= nodes[p].ancestors
        replay = self._replay.get(name) if self._replay else None
        parts, draws = draw_parts(name, dist, estimator, 1 if child else S, child, replay, context)
        rank, lift, sample_shape = base_rank, 0, prefix
        if parts.copies is not None:
            k = parts.value.shape[0]
            if parts.copies.shape != (k,):
                raise ValueError(
                    f"`{type(estimator).__name__}.parts` must give `copies` of shape [{k}] (one weight per copy "
                    f"of the value); got {list(parts.copies.shape)}."
                )
            lift = len(self._sizes) - base_rank
            rank = len(self._sizes) + 1
            sample_shape = (k, *([1] * lift), *prefix)
            self._sizes.append(k)
            self._axes.append(parts.copies)
        node = Node(
            name,
            dist,
            estimator,
            parts,
            parts.value,
            draws,
            child,
            frozenset(ancestors),
            len(nodes),
            None,
            False,
            rank,
            base_rank,
            lift,
            tuple(sample_shape),
        )
        value = node.to_graph(parts.value)
        node.integer_valued = integer_valued = not (value.is_floating_point() or value.is_complex())
        if grad and parts.log_prob is not None:
            node.log_prob = parts.log_prob.squeeze(0) if child else parts.log_prob
        if declared:
            integer_valued = False  # nothing is assumed: costs name their nodes
        elif tracking:
            if not integer_valued:
                value = flow.track(name, value, node.ancestors)
            elif not (in_transform() or compiling()):
                value, source = flow.track_integer(name, value, node.ancestors)
                self._sources.append(source)
                integer_valued = False
        node.value = value
        nodes[name] = node
        if integer_valued:
            self._integer_valued.add(name)
        if node.log_prob is not None:
            self._scoring.append(name)
            self._lp_shapes.add(node.log_prob.shape)
        return value

    def _unseen_integers(self) -> set[str]:
        """Integer-valued nodes whose readers cannot all be seen: untracked, or escaped tracking."""
        return self._integer_valued | {s.name for s in self._sources if s.escaped}

    # ------------------------------------------------------------------ costs
    def cost(
        self,
        name: str,
        value: Tensor,
        *,
        scale: float = 1.0,
        depends_on: Sequence[str] | None = None,
    ) -> None:
        """Register a cost ``[*sample dims, *batch]`` (minimised); the surrogate adds ``scale · Σ_batch mean``.

        Args:
            name: unique name in this graph.
            value: costs whose leading dims are the sample dims of the nodes they
                depend on (``[S, *batch]`` in a graph without copy dims).
            scale: positive factor, e.g. N/B when ``value`` covers a minibatch of B
                of N data points (keyword-only); it scales the value and the credit.
            depends_on: names of nodes the cost depends on in ways autograd cannot
                see (keyword-only); added to the detected ones, and the cost is no
                longer assumed to depend on integer-valued nodes it does not name.
        """
        nodes = self._nodes
        if self._done or type(name) is not str or not name or name in nodes or name in self._costs:
            self._check_new("cost", name)
        if not isinstance(value, Tensor):
            raise TypeError(f"`value` of cost {name!r} must be a torch.Tensor; got {type(value).__name__}.")
        if not value.is_floating_point():
            raise TypeError(
                f"`value` of cost {name!r} must be a floating-point tensor; got dtype {value.dtype}."
            )
        shape = value.shape
        if not self._prefix_rank(tuple(shape)):
            raise ValueError(
                f"`value` of cost {name!r} must have shape [*sample dims, *batch] with S = num_samples = "
                f"{self.num_samples} last among the sample dims {list(reversed(self._sizes))}; got shape "
                f"{list(shape)} (sample dims do not match)."
            )
        if scale != 1.0 or type(scale) is not float:
            scale = check_positive("scale", scale)
        root = leaf = None
        if self.dataflow == "declared" and depends_on is None:
            raise ValueError(
                f"cost {name!r} needs depends_on=[...]: in a Graph(dataflow='declared') every cost names "
                "the nodes it depends on (their ancestors are added)."
            )
        if torch.is_grad_enabled():
            if self._flow.first_sequence_nr >= 0 and self.dataflow == "traced":
                root = value.grad_fn
                if root is None:
                    root, leaf = self._flow.origin(value)
            known = set() if leaf is None else {leaf}
            if depends_on is None:
                unseen = self._unseen_integers()
                if unseen:
                    known |= unseen
                elif root is None and leaf is None and not is_tracked(value):
                    raise ValueError(
                        f"cost {name!r} depends on no node and no parameter (its value has no autograd history). "
                        "If it depends on a node through non-differentiable operations (comparisons, casts, "
                        "indexing), pass depends_on=[...]; otherwise it is a constant — leave it out."
                    )
            else:
                known |= self._resolve(depends_on)
            cost = Cost(name, value, scale, root, known, len(nodes), depends_on is not None)
            if len(self._sizes) > 1 or any(
                lp != shape and aligned_shape(tuple(lp), tuple(shape)) is None for lp in self._lp_shapes
            ):
                self._resolve_dependencies(cost)  # raises here if the cost does not line up with its nodes
        else:
            if depends_on is not None:
                self._resolve(depends_on)
            cost = Cost(name, value, scale, None, set(nodes), len(nodes), False)
            cost.deps, cost.rank = frozenset(nodes), self._prefix_rank(tuple(shape))
        self._costs[name] = cost

    # -------------------------------------------------------------- surrogate
    def surrogate(self) -> Tensor:
        """The scalar surrogate: value = Σ_c scale_c · Σ_batch mean(c), gradient = the graph's estimator.

        Returns:
            A 0-dim tensor: back-propagate it (any order) or log it (the Monte Carlo
            estimate of the total expected cost). Control variates update their state here.
        """
        if self._done:
            self._check_new("surrogate")
        self._done = True
        if not self._costs:
            raise ValueError("a Graph needs at least one cost before surrogate(); call g.cost(name, value).")
        for c in self._costs.values():
            if c.deps is None:
                self._resolve_dependencies(c)
        return surrogate(self._nodes, self._costs.values(), self._axes, torch.is_grad_enabled())

    # ------------------------------------------------------------ inspection
    @property
    def draws(self) -> dict[str, dict[str, Tensor]]:
        """The random inputs drawn per node (detached), replayable with ``Graph(draws=...)``.

        A root's draws have the shapes of its estimator's ``laws(dist, S)``; a child's
        those of ``laws(dist, 1)`` without the leading 1 (its batch shape already
        starts with the sample dims).
        """
        return {
            name: {k: (v.squeeze(0) if node.child else v).detach() for k, v in node.draws.items()}
            for name, node in self._nodes.items()
        }

    @property
    def nodes(self) -> tuple[str, ...]:
        """Node names in the order they were sampled."""
        return tuple(self._nodes)

    def dependencies(self) -> dict[str, tuple[str, ...]]:
        """For each cost, the nodes it depends on (found by data flow, plus ``depends_on``)."""
        for c in self._costs.values():
            if c.deps is None:
                self._resolve_dependencies(c)
        return {name: self._order(c.deps) for name, c in self._costs.items()}  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"Graph(num_samples={self.num_samples}, nodes={list(self._nodes)}, costs={list(self._costs)})"

    # --------------------------------------------------------------- helpers
    def _order(self, names: frozenset[str] | set[str]) -> tuple[str, ...]:
        return tuple(sorted(names, key=lambda n: self._nodes[n].order))

    def _resolve_dependencies(self, c: Cost) -> None:
        resolve_dependencies(c, self._nodes, self._scoring, self._flow, self._sizes)

    def _prefix_rank(self, shape: tuple[int, ...]) -> int:
        """The most sample dims ``shape`` starts with (S last, copies as 1 or their size), or 0."""
        return next((r for r in range(len(self._sizes), 0, -1) if starts_with(shape, self._sizes, r)), 0)

    def _check_prefix(self, name: str, batch_shape: tuple[int, ...], rank: int, parents: set[str]) -> None:
        if not (rank > 0 and starts_with(batch_shape, self._sizes, rank)):
            want = list(reversed(self._sizes[: max(rank, 1)]))
            raise ValueError(
                f"`dist` of node {name!r} must have batch_shape starting with the sample dims {want} "
                f"(num_samples={self.num_samples}) because it depends on node(s) {list(self._order(parents))} "
                f"(one distribution per graph sample); got batch_shape {list(batch_shape)}. Build it from "
                "the parents' samples, or check the graph's num_samples."
            )

    def _check_new(self, what: str, name: str | None = None) -> None:
        """Raise the error for ``what(name)``: the graph is used up, or ``name`` is not a new non-empty str."""
        if self._done:
            raise ValueError(
                f"cannot call {what}(): this Graph already produced its surrogate(); a Graph is used once — "
                "create a new scg.Graph for each step."
            )
        if what == "surrogate":
            return
        if not isinstance(name, str) or not name:
            raise TypeError(f"`name` must be a non-empty str; got {name!r}.")
        if name in self._nodes or name in self._costs:
            kind = "node" if name in self._nodes else "cost"
            raise ValueError(f"`name` must be unique in the graph; {name!r} is already a {kind}.")

    def _resolve(self, names: Sequence[str]) -> set[str]:
        if isinstance(names, str) or not isinstance(names, Sequence):
            raise TypeError(
                f"`depends_on` must be a sequence of node names; got {type(names).__name__} ({names!r})."
            )
        for n in names:
            if n not in self._nodes:
                raise ValueError(
                    f"`depends_on` must name earlier nodes; got {n!r} (nodes: {list(self._nodes)})."
                )
        return set(names)
