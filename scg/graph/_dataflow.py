"""Data flow between graph nodes and costs, read from the autograd graph.

scg never wraps or patches tensors. Instead every node's returned value is an
ordinary tensor that the graph recognises in the autograd graph
(:class:`Tracker`); a cost depends on a graph node when that value is an
ancestor of the cost's own ``grad_fn`` (:func:`walk`). A value with autograd
history (a pathwise or relaxed sample) is recognised by its ``grad_fn``. A value
without — a score-function sample, or a pathwise sample of constant parameters —
is handed out as a *leaf that requires grad* (the new sample itself, or
``z.detach()`` when something else may hold ``z``) and recognised as the
variable of the gradient accumulator that its readers point to. Inside
``torch.func`` transforms, where ``requires_grad_`` is not allowed, it is
``z + zero`` with a zero leaf that requires grad instead: same value, and the
addition is the recognisable autograd node.

Either way the sample takes part in back-propagation: ``loss.backward()`` also
computes the gradient with respect to it (the input gradient of the first
operation that reads it; the leaf's ``.grad`` is filled), which
``loss.backward(inputs=params)`` and ``torch.autograd.grad(loss, params)`` prune.
No autograd node can exist without that: PyTorch records an operation only when
one of its inputs requires grad, and then back-propagates to that input. The
leaf form adds nothing else (no copy of the sample, no reduction to a marker in
the backward pass).

Under ``torch.func`` transforms the Python-visible tensor may be a functorch
wrapper without ``grad_fn`` (e.g. inside ``vmap`` alone); :func:`autograd_node`
then looks through the wrappers to the level that records autograd, so the same
walk works in eager mode, under ``grad``, ``vmap`` and ``vmap(grad(...))``.

It visits only the autograd nodes created after the first graph node and stops
once every node is accounted for; nothing is cached between walks, so a data flow
that changes from one step to the next is always read as it is (costs:
``docs/graph.md``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Distribution, Transform

from scg._torch import LEAF as _LEAF
from scg._torch import (
    in_transform,
    inputs_of,
    is_wrapped,
    leaf_variable,
    next_sequence_nr,
    sequence_nr,
    unwrapped,
)
from scg.graph._integer import IntegerSample, Source, tag

_CONTAINERS = (Distribution, Transform)

__all__ = ["Tracker", "autograd_node", "is_tracked", "walk", "align", "aligned_shape"]


class Tracker:
    """The autograd nodes of one graph's node values, and how to hand values out.

    Attributes:
        boundaries: ``autograd node -> graph node name`` for values with autograd
            history. The tracker keeps the autograd node objects alive, so their
            Python objects (hashed by identity) are the ones ``next_functions``
            returns.
        leaves: ``id(value) -> graph node name`` for values handed out as leaves
            (the graph keeps the values alive, so the ids stay theirs).
        first_sequence_nr: an autograd sequence number no later than that of any autograd
            node that reads a graph node (the first graph node's, or the next one
            when the first is a leaf).
        closures: ``name -> {name} ∪ its ancestors`` for the tracked nodes: a
            walk that has found nodes whose closures cover every earlier graph
            node can stop (:func:`walk`).
    """

    __slots__ = ("boundaries", "leaves", "first_sequence_nr", "closures", "_marker")

    def __init__(self) -> None:
        self.boundaries: dict[Any, str] = {}
        self.leaves: dict[int, str] = {}
        self.first_sequence_nr = -1  # no graph node yet
        self.closures: dict[str, frozenset[str]] = {}
        self._marker: Tensor | None = None

    def track(self, name: str, value: Tensor, ancestors: frozenset[str] = frozenset()) -> Tensor:
        """Register node ``name``'s value; return it as the graph hands it out.

        A value with autograd history is returned as is (its ``grad_fn`` is the
        boundary). One without — a sample drawn without gradient, or from
        constant parameters — becomes a leaf that requires grad (eager mode) or
        ``value + zero`` (inside ``torch.func`` transforms, which forbid
        ``requires_grad_``); the leaf is ``value.detach()``, so ``value`` itself keeps
        no gradient. ``ancestors``: the node's ancestors.
        """
        self.closures[name] = ancestors.union((name,))
        fn = value.grad_fn
        if fn is None:
            if not in_transform():  # eager mode: the value becomes a leaf that requires grad
                value = value.detach().requires_grad_()
                self.leaves[id(value)] = name  # the graph's node keeps the value alive: the id stays its own
                if self.first_sequence_nr < 0:
                    self.first_sequence_nr = (
                        next_sequence_nr()
                    )  # every reader of the leaf is created from now on
                return value
            fn = autograd_node(value)  # under torch.func: look through the wrappers
            if fn is None:  # the transforms forbid requires_grad_: value + 0 with a zero leaf
                marker = self._marker
                if marker is None or marker.dtype != value.dtype or marker.device != value.device:
                    marker = self._marker = torch.zeros(
                        (), dtype=value.dtype, device=value.device, requires_grad=True
                    )
                value = value + marker
                fn = autograd_node(value)
        if self.first_sequence_nr < 0:
            self.first_sequence_nr = sequence_nr(fn)
        self.boundaries[fn] = name
        return value

    def track_integer(
        self, name: str, value: Tensor, ancestors: frozenset[str] = frozenset()
    ) -> tuple[IntegerSample, Source]:
        """Register integer-valued node ``name``; return its value as an :class:`IntegerSample` and its source.

        The source's marker (a zero scalar leaf that requires grad) stands for the
        node in the autograd graph: floating-point results computed from the value
        add it (:mod:`scg.graph._integer`), so the walk finds the node as a leaf.
        """
        self.closures[name] = ancestors.union((name,))
        marker = torch.zeros((), device=value.device, requires_grad=True)
        source = Source(name, marker)
        self.leaves[id(marker)] = name  # the source keeps the marker alive: the id stays its own
        if self.first_sequence_nr < 0:
            self.first_sequence_nr = next_sequence_nr()
        return tag(value, source), source

    def parents(self, dist: Distribution, nodes: int) -> set[str]:
        """Names of the graph nodes that ``dist``'s parameters were computed from (see :func:`walk`).

        ``nodes``: how many graph nodes there are (tracked or not).
        """
        roots: list[Any] = []
        found: set[str] = set()
        _roots_of(dist, roots, found, self.leaves, 0)
        if roots:
            found |= walk(roots, self.boundaries, self.first_sequence_nr, self.leaves, self.closures, nodes)
        return found

    def origin(self, t: Tensor) -> tuple[Any | None, str | None]:
        """Where ``t`` comes from: ``(autograd node, None)``, ``(None, name)`` if ``t`` is node ``name``'s leaf, or ``(None, None)``."""
        fn = t.grad_fn
        if fn is not None:
            return fn, None
        if is_wrapped(t):
            return autograd_node(t), None
        return None, self.leaves.get(id(t))

    def reads(self, root: Any, nodes: int) -> set[str]:
        """Names of the graph nodes that the autograd node ``root`` reads (see :func:`walk`).

        ``nodes``: how many graph nodes there were when ``root`` was created
        (later ones cannot be read by it).
        """
        return walk((root,), self.boundaries, self.first_sequence_nr, self.leaves, self.closures, nodes)


def autograd_node(t: Tensor) -> Any | None:
    """The autograd node that produced ``t`` (``None`` for leaves and constants).

    Looks through ``torch.func`` wrappers (batched tensors) to the level that
    records autograd.
    """
    while True:
        fn = t.grad_fn
        if fn is not None or not is_wrapped(t):
            return fn
        t = unwrapped(t)


def is_tracked(t: Tensor) -> bool:
    """Whether ``t`` has autograd history or requires grad at some level."""
    while True:
        if t.grad_fn is not None or t.requires_grad:
            return True
        if not is_wrapped(t):
            return False
        t = unwrapped(t)


def walk(
    roots: Sequence[Any | None],
    boundaries: Mapping[Any, str],
    first_sequence_nr: int = 0,
    leaves: Mapping[int, str] | None = None,
    closures: Mapping[str, frozenset[str]] | None = None,
    nodes: int = 0,
) -> set[str]:
    """Names of the graph nodes whose autograd nodes are ancestors of ``roots`` (or are roots).

    The walk stops at graph nodes (their own ancestors are known already), at
    leaves (a leaf is a graph node if ``leaves`` names its tensor), and at
    autograd nodes created before the first graph node (autograd numbers nodes in
    creation order per thread, ``_sequence_nr``; an older node cannot descend
    from a newer one). So it visits only the operations between the first graph
    node and the cost — not, e.g., an encoder run before sampling. It also stops
    as soon as the nodes found and their ancestors (``closures``) are all the
    ``nodes`` graph nodes: whatever else it would find adds no dependency.
    Inputs are explored first-to-last (an operation's data input before its
    weights).

    Args:
        roots: autograd nodes to start from (``None`` entries are skipped).
        boundaries: ``autograd node -> graph node name`` (see :class:`Tracker`).
        first_sequence_nr: see :attr:`Tracker.first_sequence_nr`.
        leaves: ``id(leaf tensor) -> graph node name`` (see :class:`Tracker`).
        closures: ``name -> {name} ∪ ancestors`` (see :class:`Tracker`).
        nodes: the number of graph nodes the roots may read (tracked or not).
    """
    found: set[str] = set()
    covered: set[str] = set()
    seen: set[Any] = set()
    stack: list[Any] = []
    for r in reversed(roots):
        if r is not None and r not in seen:
            seen.add(r)
            stack.append(r)
    pop, push, mark, name_of, leaf = stack.pop, stack.append, seen.add, boundaries.get, _LEAF
    leaf_name = leaves.get if leaves else None
    while stack:
        fn = pop()
        name = name_of(fn)
        if name is not None:
            found.add(name)
            if closures is not None:
                covered |= closures[name]
                if len(covered) >= nodes:
                    break
            continue
        if sequence_nr(fn) < first_sequence_nr:
            continue
        hit = False
        for nxt in reversed(tuple(inputs_of(fn))):
            if nxt is None:
                continue
            if type(nxt) is not leaf:
                if nxt not in seen:
                    mark(nxt)
                    push(nxt)
            elif leaf_name is not None:
                name = leaf_name(id(leaf_variable(nxt)))
                if name is not None:
                    found.add(name)
                    hit = True
                    if closures is not None:
                        covered |= closures[name]
        if hit and closures is not None and len(covered) >= nodes:
            break
    return found


def _roots_of(obj: Any, roots: list[Any], found: set[str], leaves: Mapping[int, str], depth: int) -> None:
    """Collect the autograd nodes of the tensors a distribution was built from.

    Recurses into base distributions, transforms and lists or tuples of them
    (``torch.Size``, a tuple subclass, is skipped). Leaves that are graph nodes'
    values go to ``found`` directly; other tensors without autograd history are skipped.
    """
    if depth > 8:  # distributions are shallow; stop on pathological cycles
        return
    for value in vars(obj).values() if isinstance(obj, _CONTAINERS) else obj:
        if isinstance(value, IntegerSample):  # an integer parameter (e.g. Binomial's total_count)
            found |= {leaves[id(s.marker)] for s in value.sources if id(s.marker) in leaves}
        elif isinstance(value, Tensor):
            fn = value.grad_fn
            if fn is not None:
                roots.append(fn)
            elif is_wrapped(value):
                roots.append(autograd_node(value))
            else:
                name = leaves.get(id(value))
                if name is not None:
                    found.add(name)
        elif isinstance(value, _CONTAINERS) or type(value) in (list, tuple):
            _roots_of(value, roots, found, leaves, depth + 1)


def aligned_shape(source: tuple[int, ...], target: tuple[int, ...], lead: int = 1) -> tuple[int, ...] | None:
    """Shape of ``align(x, target, lead)`` for ``x`` of shape ``source``, or ``None`` if they do not align."""
    rank = len(target)
    if len(source) < lead:
        return None
    shape = list(source[:rank]) if len(source) >= rank else list(source) + [1] * (rank - len(source))
    for i in range(lead):
        if shape[i] not in (1, target[i]) and target[i] != 1:
            return None
    for i in range(lead, rank):
        if target[i] == 1:
            shape[i] = 1
        elif shape[i] not in (1, target[i]):
            return None
    return tuple(shape)


def align(x: Tensor, target: tuple[int, ...], lead: int = 1) -> Tensor:
    """Bring ``x`` ``[*L, *a]`` to a tensor broadcastable to ``target`` ``[*L', *b]`` (batch dims left-aligned).

    The first ``lead`` dims are sample dims, left as they are (they broadcast). Batch
    dims of ``x`` beyond the rank of ``target`` are summed, missing ones are added as
    size 1, and dims where ``target`` has size 1 are summed (keepdim). Used both ways:
    a node's log-probability brought to a cost's shape (the cost depends on every
    element it covers) and a cost brought to a node's shape (the node's element
    receives the costs it affects). Returns ``x`` itself when it already has the
    target's shape.
    """
    if x.shape == target:
        return x
    rank = len(target)
    if x.dim() > rank:
        x = x.sum(dim=tuple(range(rank, x.dim())))
    elif x.dim() < rank:
        x = x.reshape(tuple(x.shape) + (1,) * (rank - x.dim()))
    dims = tuple(i for i in range(lead, rank) if target[i] == 1 and x.shape[i] != 1)
    if dims:
        x = x.sum(dim=dims, keepdim=True)
    return x
