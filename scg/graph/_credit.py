"""Credit assignment: the nodes each cost depends on, settled when first needed.

A cost depends on the graph nodes its value was computed from — found by walking
the autograd graph from the cost (:mod:`scg.graph._dataflow`) — and on their
ancestors; its score terms are those of the score-function nodes among them
(Schulman et al. 2015: a cost adds variance only to the nodes upstream of it).

:meth:`Graph.cost` only records where to look (the cost's autograd node, which
never changes its inputs afterwards, so a later walk reads the same data flow);
:func:`resolve_dependencies` walks when the dependencies are first needed (``surrogate()``,
``dependencies()``), one walk after another instead of between the model's
tensor operations. A cost that could fail the shape check — some score-function
node's log-probability does not align with it — is settled at once, so that the
error is raised by ``g.cost``.

References:
    Schulman, Heess, Weber & Abbeel, "Gradient Estimation Using Stochastic Computation
    Graphs", NeurIPS 2015. https://arxiv.org/abs/1506.05254
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from scg.graph._dataflow import Tracker, aligned_shape
from scg.graph._nodes import Cost, Node, starts_with

__all__ = ["resolve_dependencies"]


def resolve_dependencies(
    c: Cost,
    nodes: Mapping[str, Node],
    scoring: Sequence[str],
    flow: Tracker,
    sizes: Sequence[int],
) -> None:
    """Set ``c.deps`` (nodes found from ``c``'s autograd node, named directly, and their ancestors),
    ``c.scored`` and ``c.rank``, and check that ``c`` lines up with the nodes it depends on.

    Args:
        c: a cost whose dependencies are pending.
        nodes: the graph's nodes by name.
        scoring: the score-function nodes with a log-probability, in sampling order.
        flow: the graph's :class:`~scg.graph._dataflow.Tracker`.
        sizes: the graph's sample dims from S outwards.

    Raises:
        ValueError: ``c``'s sample dims are not those of the nodes it depends on, or
            a score-function node's log-probability does not align with it.
    """
    found = c.known if c.root is None else c.known | flow.reads(c.root, c.nodes_before)
    deps = set(found)
    for n in found:
        deps |= nodes[n].ancestors
    if len(deps) * 4 >= len(scoring):
        scored = tuple([n for n in scoring if n in deps])
    else:  # a few dependencies among many score-function nodes
        scored = tuple(
            sorted([n for n in deps if nodes[n].log_prob is not None], key=lambda n: nodes[n].order)
        )
    rank = max([nodes[n].rank for n in deps], default=1)
    shape = tuple(c.value.shape)
    if not starts_with(shape, list(sizes), rank):
        expected = tuple(reversed(sizes[:rank]))
        raise ValueError(
            f"sample dims do not match: cost {c.name!r} has shape {list(shape)} and depends on nodes "
            f"{sorted(deps)} whose values have sample dims {list(expected)}; a cost must start with the "
            "sample dims of the nodes it depends on (S last)."
        )
    for n in scored:
        lp = nodes[n].log_prob
        lifted = (1,) * (rank - nodes[n].rank) + tuple(lp.shape)  # type: ignore[union-attr]
        if aligned_shape(lifted, shape, rank) is None:
            raise ValueError(
                f"sample dims do not match: cost {c.name!r} has shape {list(shape)} and depends on node "
                f"{n!r} whose log-probability has shape {list(lp.shape)}; they must agree on "  # type: ignore[union-attr]
                "[*sample dims, *batch] (batch dims from the left; extra node dims are summed, size-1 dims broadcast)."
            )
    c.deps, c.scored, c.root, c.rank = frozenset(deps), scored, None, rank
