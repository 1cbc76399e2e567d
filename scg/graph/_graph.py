"""``scg.Graph``: stochastic computation graphs with credit assignment by data flow."""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import torch
from torch import Tensor
from torch.distributions import Distribution

from scg._checks import check_positive, check_positive_int
from scg._dist import sample_log_prob
from scg.estimators import Pathwise, ScoreFunction
from scg.estimators.base import Estimator
from scg.graph._credit import ALIGNMENT, settle
from scg.graph._dataflow import Tracker, is_tracked
from scg.graph._nodes import Cost, Node, check_estimator, default_estimator, draw
from scg.graph._surrogate import surrogate

__all__ = ["Graph"]


class Graph:
    r"""A stochastic computation graph: sample nodes, register costs, take one surrogate.

    .. math::
        \hat L = \sum_c s_c \sum_{\text{batch}} \frac1S \sum_{s=1}^S
            □\Big(\sum_{w ∈ \mathrm{deps}(c)} \log p(w_s)\Big)\, c_s
          + \sum_w \sum_{\text{batch}} \frac1S \sum_{s=1}^S \big(1 − □(\log p(w_s))\big)\, b_{w,s}

    with :math:`□(τ) = \exp(τ − \mathrm{stop}(τ))` (DiCE), w ranging over
    score-function nodes, :math:`s_c` a cost's scale (N/B for minibatches) and
    :math:`b_w` the baseline that node w's control variate subtracts from its
    learning signal :math:`A_w = \sum_{c ∋ w} s_c\, c` (the costs downstream of w).
    The value of :math:`\hat L` is exactly :math:`\sum_c s_c \sum_{\text{batch}}
    \mathrm{mean}_S(c)`; its gradient gives each node its own estimator:

    * ``ScoreFunction(baseline=...)``: score term :math:`(A_w − b_w)∇\log p(w)`, where
      :math:`A_w` sums only the costs that *depend* on w (credit assignment,
      Schulman et al. 2015): a cost that w cannot influence adds no variance to w's
      gradient. Derivatives of every order are DiCE's (unbiased Hessians).
    * ``Pathwise``: the sample is reparameterised and gradients flow through it;
      a pathwise node between score-function nodes passes their terms through.
    * ``GumbelSoftmax``/``StraightThrough``: relaxed samples (biased), as above.

    Requires: every node's estimator applies to its distribution; data flow from
    nodes to costs visible to autograd or declared (below). Properties: unbiased
    (first and higher order, in the model's parameters) when every node's estimator and control variate is
    unbiased; a cost adds variance only to the nodes upstream of it; one evaluation
    of the model per graph sample, plus one Python walk of the autograd graph per
    node and cost.

    Data flow is read from autograd, without wrapping tensors: a cost depends on a
    node when the node's returned value is an ancestor of the cost in the autograd
    graph, and on that node's own ancestors (transitively, also through the
    distributions' parameters). The walk stops at earlier nodes, so it visits only
    the operations between a cost and the nodes it reads; it works in eager mode and
    under ``torch.func`` (``grad``, ``vmap``, ``vmap(grad)``), so
    :func:`scg.diagnostics.gradient_samples` measures graph estimators.

    Trade-off of reading data flow from autograd — what it cannot see:

    * Non-differentiable uses of a sample (comparisons, ``.long()``, indexing with
      a sample) cut the link. Declare them with ``depends_on=[...]`` (adds to what
      autograd finds). ``g.dependencies()`` shows what was found.
    * Integer-valued samples (``Categorical``) cannot carry autograd history; they
      are treated conservatively: every later cost and node without ``depends_on``
      is assumed to depend on them (unbiased, more variance than necessary).
    * Score-function samples (and samples of constant parameters) are returned as
      leaves that require grad, ``z.detach().requires_grad_()`` (inside
      ``torch.func`` transforms: ``z + 0`` with a zero leaf that requires grad), so
      that autograd records who reads them. Consequences: ``loss.backward()`` also
      back-propagates the costs to these samples (the input gradient of the first
      layer that reads them; their ``.grad`` is filled and unused) —
      ``loss.backward(inputs=params)`` or ``torch.autograd.grad(loss, params)``
      prunes that work, ``benchmarks/graph_overhead.py`` measures both; and
      in-place edits of such a sample raise (edit a copy: ``z.clone()``).
    * The walk is Python: a fixed cost per node and cost, plus a few µs per
      autograd node between it and the nodes it reads (it stops at the first
      graph node's operations and once every node is accounted for). A cost's
      walk waits for :meth:`surrogate` (the data flow it reads was fixed when the
      cost was registered). ``benchmarks/graph_overhead.py`` measures the total
      against hand-written DiCE. Under ``torch.compile`` the walk runs eagerly
      (graph breaks); results are the same.

    Shapes: one sample dimension S = ``num_samples`` (dim 0) is shared by the whole
    graph — sample s of every node and cost is one joint draw of the graph, so
    leave-one-out baselines compare whole-graph samples. A *root* node (its
    distribution depends on no earlier node) is drawn S times: value
    ``[S, *batch_shape, *event_shape]``. A *child* node's distribution was computed
    from earlier samples, so its ``batch_shape`` must start with S; it is drawn once
    per element. Costs are ``[S, *batch]``; ``cost[s]`` may depend only on the graph's
    s-th sample, and batch elements are independent (like ``scg.expectation``): a
    node's log-probability ``[S, *b_w]`` and a cost ``[S, *b_c]`` are aligned from the
    left — extra node dims are summed, missing ones broadcast (a global latent ``[S]``
    credits every element of a per-datum cost ``[S, B]``).

    A graph is used once: create one per step. ``sample``/``cost`` after
    :meth:`surrogate`, or a second ``surrogate()``, raise ``ValueError``. Estimators
    (and their control variates' state) live outside the graph — keep them in your
    model and pass them to :meth:`sample` each step.

    Under ``torch.no_grad()`` the graph only computes values: no data-flow walk, no
    control variates (their state does not move); a node counts as a child when its
    ``batch_shape`` starts with S and earlier nodes exist (pass ``depends_on=[]`` to
    say it is a root).

    Args:
        num_samples: S ≥ 1, the shared sample dimension.
        draws: replay the random inputs of earlier draws, ``{node name: draws}`` as
            returned by :attr:`draws` (common random numbers across estimators,
            exact checks by enumeration/quadrature). Score-function nodes take
            ``{"z": sample}``, pathwise nodes ``{"eps": noise}``, relaxations ``{"u": uniforms}``.

    Example:
        >>> import torch, scg
        >>> from torch.distributions import Bernoulli, Normal
        >>> _ = torch.manual_seed(0)
        >>> theta = torch.zeros(3, requires_grad=True)
        >>> g = scg.Graph(num_samples=8)
        >>> a = g.sample("a", Bernoulli(logits=theta[0]))                 # score function (RLOO)
        >>> z = g.sample("z", Normal(a + theta[1], 1.0))                  # pathwise, depends on a
        >>> b = g.sample("b", Bernoulli(logits=z * theta[2]))            # score function, depends on z
        >>> g.cost("fit", (z - 1.0) ** 2)                                # credited to a (through z)
        >>> g.cost("bits", b)                                            # credited to b, z and a
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
    """

    def __init__(
        self,
        num_samples: int = 1,
        *,
        draws: Optional[Mapping[str, Mapping[str, Tensor]]] = None,
    ) -> None:
        if type(num_samples) is not int or num_samples < 1:
            check_positive_int("num_samples", num_samples)
        self.num_samples = num_samples
        if draws is not None and not isinstance(draws, Mapping):
            raise TypeError(f"`draws` must be a mapping node name -> draws; got {type(draws).__name__}.")
        self._replay = {k: dict(v) for k, v in draws.items()} if draws else None
        self._nodes: dict[str, Node] = {}
        self._costs: dict[str, Cost] = {}
        self._scoring: list[str] = []  # score-function nodes with a log-probability, in sampling order
        self._flow = Tracker()  # the nodes' values in the autograd graph
        self._opaque: set[str] = set()  # integer-valued nodes (invisible to autograd)
        self._baselined: list[Node] = []  # score-function nodes with a control variate
        self._lp_shapes: set[torch.Size] = set()  # shapes of the score-function nodes' log-probabilities
        self._done = False

    # ------------------------------------------------------------------ nodes
    def sample(
        self,
        name: str,
        dist: Distribution,
        estimator: Optional[Estimator] = None,
        *,
        depends_on: Optional[Sequence[str]] = None,
        context: Optional[Tensor] = None,
    ) -> Tensor:
        """Draw node ``name`` from ``dist`` with its own estimator; return its value.

        Args:
            name: unique name of the node in this graph.
            dist: a ``torch.distributions.Distribution``; batch shape ``[*batch]`` for
                a root, ``[S, *batch]`` when its parameters come from earlier nodes.
            estimator: ``Pathwise``, ``ScoreFunction`` (any control variate but
                ``Delta``), ``GumbelSoftmax`` or ``StraightThrough``. ``None`` picks
                ``Pathwise()`` when ``dist.has_rsample``, else
                ``ScoreFunction(baseline=LeaveOneOut())`` for S ≥ 2 (stateless, so a
                fresh one per step loses nothing) and ``ScoreFunction()`` for S = 1.
            depends_on: names of earlier nodes the distribution depends on in ways
                autograd cannot see (keyword-only); added to the detected ones.
            context: input of a ``Learned`` (NVIL) baseline, e.g. the data x or the
                node's parents; default: the distribution's detached parameters.

        Returns:
            The sample: ``[S, *batch_shape, *event_shape]`` (root) or
            ``[*batch_shape, *event_shape]`` (child, batch starting with S). Use it
            like any tensor; score-function samples carry no gradient.
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
        kind = type(estimator)
        if not (kind is ScoreFunction and estimator.baseline is None or kind is Pathwise and dist.has_rsample):
            check_estimator(name, estimator, dist, S)  # (the two fast cases pass it: nothing else to check)
        tracking = torch.is_grad_enabled()
        flow = self._flow
        parents = flow.parents(dist, len(nodes)) if tracking and flow.floor >= 0 else set()
        if depends_on is not None:
            parents |= self._resolve(depends_on)
        batch_shape = dist.batch_shape
        starts_with_s = len(batch_shape) > 0 and batch_shape[0] == S
        child = bool(parents)
        opaque_nodes = self._opaque
        if depends_on is None and not child and starts_with_s:
            hidden = opaque_nodes if tracking else set(nodes)
            if hidden:  # integer-valued (or untracked) earlier nodes: assume they feed this one
                child = True
                parents |= hidden
        if child and not starts_with_s:
            raise ValueError(
                f"`dist` of node {name!r} must have batch_shape starting with num_samples={S} because it "
                f"depends on node(s) {list(self._order(parents))} (one distribution per graph sample); got "
                f"batch_shape {list(batch_shape)}. Build it from the parents' samples, or check the "
                "graph's num_samples."
            )
        if depends_on is None and opaque_nodes:
            parents |= opaque_nodes
        ancestors = set(parents)
        for p in parents:
            ancestors |= nodes[p].ancestors
        ancestors = frozenset(ancestors)  # type: ignore[assignment]

        value, draws, owned = draw(name, dist, estimator, S, child, self._replay.get(name) if self._replay else None)
        opaque = not (value.is_floating_point() or value.is_complex())
        log_prob = None
        if tracking:
            if type(estimator) is ScoreFunction:  # exact types only (check_estimator)
                log_prob = sample_log_prob(dist, value)  # [S, *batch]: dist.log_prob(value)
            if not opaque:
                value = flow.track(name, value, ancestors, owned)
        order = len(nodes)
        node = nodes[name] = Node(
            name, dist, estimator, value, draws, child, ancestors, order, log_prob, opaque, context
        )
        if opaque:
            opaque_nodes.add(name)
        if log_prob is not None:
            self._scoring.append(name)
            self._lp_shapes.add(log_prob.shape)
            if estimator.baseline is not None:  # type: ignore[attr-defined]
                self._baselined.append(node)
        return value

    # ------------------------------------------------------------------ costs
    def cost(
        self,
        name: str,
        value: Tensor,
        *,
        scale: float = 1.0,
        depends_on: Optional[Sequence[str]] = None,
    ) -> None:
        """Register a cost ``[S, *batch]`` (minimised); the surrogate adds ``scale · Σ_batch mean_S``.

        Args:
            name: unique name in this graph.
            value: ``[S, *batch]`` costs, dim 0 the graph's sample dimension.
            scale: positive factor, e.g. N/B when ``value`` covers a minibatch of B
                of N data points (keyword-only); it scales the value and the credit.
            depends_on: names of nodes the cost depends on in ways autograd cannot
                see (keyword-only); added to the detected ones.
        """
        nodes = self._nodes
        if self._done or type(name) is not str or not name or name in nodes or name in self._costs:
            self._check_new("cost", name)
        if not isinstance(value, Tensor):
            raise TypeError(f"`value` of cost {name!r} must be a torch.Tensor; got {type(value).__name__}.")
        if not value.is_floating_point():
            raise TypeError(f"`value` of cost {name!r} must be a floating-point tensor; got dtype {value.dtype}.")
        S = self.num_samples
        shape = value.shape
        if not shape or shape[0] != S:
            raise ValueError(
                f"`value` of cost {name!r} must have shape [S, *batch] with S = num_samples = {S} on dim 0; "
                f"got shape {list(shape)} (sample dims do not match)."
            )
        if scale != 1.0 or type(scale) is not float:
            scale = check_positive("scale", scale)
        root = leaf = None
        if torch.is_grad_enabled():
            if self._flow.floor >= 0:
                root = value.grad_fn
                if root is None:
                    root, leaf = self._flow.origin(value)
            known = set() if leaf is None else {leaf}
            if depends_on is None:
                if self._opaque:
                    known |= self._opaque
                elif root is None and leaf is None and not is_tracked(value):
                    raise ValueError(
                        f"cost {name!r} depends on no node and no parameter (its value has no autograd history). "
                        "If it depends on a node through non-differentiable operations (comparisons, casts, "
                        "indexing), pass depends_on=[...]; otherwise it is a constant — leave it out."
                    )
            else:
                known |= self._resolve(depends_on)
        else:
            known = set(nodes)
            if depends_on is not None:
                self._resolve(depends_on)
        cost = Cost(name, value, scale, root, known, len(nodes))
        for lp_shape in self._lp_shapes:
            if lp_shape != shape and not ALIGNMENT.aligns(lp_shape, shape):
                self._settle(cost, check=True)  # raises here if the cost depends on such a node
                break
        self._costs[name] = cost

    # -------------------------------------------------------------- surrogate
    def surrogate(self) -> Tensor:
        """The scalar surrogate: value = Σ_c scale_c · Σ_batch mean_S(c), gradient = the graph's estimator.

        Returns:
            A 0-dim tensor. Back-propagate it (any order) or log it: its value is the
            Monte Carlo estimate of the total expected cost. Control variates update
            their running state here (training mode, outside ``torch.func``).
        """
        if self._done:
            self._check_new("surrogate")
        self._done = True
        if not self._costs:
            raise ValueError("a Graph needs at least one cost before surrogate(); call g.cost(name, value).")
        for c in self._costs.values():
            if c.deps is None:
                self._settle(c)
        return surrogate(self._nodes, self._costs.values(), self._baselined, torch.is_grad_enabled())

    # ------------------------------------------------------------ inspection
    @property
    def draws(self) -> dict[str, dict[str, Tensor]]:
        """The random inputs drawn per node (detached), replayable with ``Graph(draws=...)``."""
        return {name: {k: v.detach() for k, v in node.draws.items()} for name, node in self._nodes.items()}

    @property
    def nodes(self) -> tuple[str, ...]:
        """Node names in the order they were sampled."""
        return tuple(self._nodes)

    def dependencies(self) -> dict[str, tuple[str, ...]]:
        """For each cost, the nodes it depends on (found by data flow, plus ``depends_on``)."""
        for c in self._costs.values():
            if c.deps is None:
                self._settle(c)
        return {name: self._order(c.deps) for name, c in self._costs.items()}  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"Graph(num_samples={self.num_samples}, nodes={list(self._nodes)}, costs={list(self._costs)})"

    # --------------------------------------------------------------- helpers
    def _order(self, names: frozenset[str] | set[str]) -> tuple[str, ...]:
        nodes = self._nodes
        return tuple(sorted(names, key=lambda n: nodes[n].order))

    def _settle(self, c: Cost, check: bool = False) -> None:
        settle(c, self._nodes, self._scoring, self._flow, check)

    def _check_new(self, what: str, name: Optional[str] = None) -> None:
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
            raise TypeError(f"`depends_on` must be a sequence of node names; got {type(names).__name__} ({names!r}).")
        for n in names:
            if n not in self._nodes:
                raise ValueError(f"`depends_on` must name earlier nodes; got {n!r} (nodes: {list(self._nodes)}).")
        return set(names)
