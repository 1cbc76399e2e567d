"""Data flow between graph nodes and costs, read from the autograd graph.

scg never wraps or patches tensors. Instead every node's returned value is an
ordinary tensor whose *autograd node* (``grad_fn``) the graph remembers; a cost
depends on a graph node when that autograd node is an ancestor of the cost's own
``grad_fn``. Score-function samples carry no gradient of their own, so they are
returned as ``z.detach() + zero`` with a fresh zero leaf that requires grad: the
value is unchanged and the addition is a recognisable autograd node.

Under ``torch.func`` transforms the Python-visible tensor may be a functorch
wrapper without ``grad_fn`` (e.g. inside ``vmap`` alone); :func:`autograd_node`
then looks through the wrappers to the level that records autograd, so the same
walk works in eager mode, under ``grad``, ``vmap`` and ``vmap(grad(...))``.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional

import torch
from torch import Tensor
from torch._C._functorch import get_unwrapped, is_functorch_wrapped_tensor
from torch.distributions import Distribution, Transform

#: The autograd node type of leaves (parameters): nothing to find behind it.
_LEAF = type(torch.zeros((), requires_grad=True).view(()).grad_fn.next_functions[0][0])

__all__ = ["autograd_node", "is_tracked", "walk", "tensors_of", "align", "aligned_shape"]


def autograd_node(t: Tensor) -> Optional[Any]:
    """The autograd node that produced ``t`` (``None`` for leaves and constants).

    Looks through ``torch.func`` wrappers (batched tensors) to the level that
    records autograd.
    """
    while True:
        fn = t.grad_fn
        if fn is not None or not is_functorch_wrapped_tensor(t):
            return fn
        t = get_unwrapped(t)


def is_tracked(t: Tensor) -> bool:
    """Whether ``t`` has autograd history or requires grad at some level."""
    while True:
        if t.grad_fn is not None or t.requires_grad:
            return True
        if not is_functorch_wrapped_tensor(t):
            return False
        t = get_unwrapped(t)


def walk(roots: Iterable[Optional[Any]], boundaries: Mapping[int, str], floor: int = 0) -> set[str]:
    """Names of the graph nodes whose autograd nodes are ancestors of ``roots``.

    The walk stops at graph nodes (their own ancestors are known already), at
    leaves, and at autograd nodes created before the first graph node (autograd
    numbers nodes in creation order per thread, ``_sequence_nr``; an older node
    cannot descend from a newer one). So it visits only the operations between the
    first graph node and the cost — not, e.g., an encoder run before sampling.

    Args:
        roots: autograd nodes to start from (``None`` entries are skipped).
        boundaries: ``id(autograd node) -> graph node name``; the graph keeps the
            autograd node objects alive, so ids are stable.
        floor: sequence number of the first graph node's autograd node.
    """
    found: set[str] = set()
    if not boundaries:
        return found
    seen: set[Any] = set()
    stack = [r for r in roots if r is not None]
    pop, push, mark, name_of = stack.pop, stack.append, seen.add, boundaries.get
    while stack:
        fn = pop()
        if fn in seen:
            continue
        mark(fn)
        name = name_of(id(fn))
        if name is not None:
            found.add(name)
        elif fn._sequence_nr() >= floor:
            for nxt, _ in fn.next_functions:
                if nxt is not None and type(nxt) is not _LEAF:
                    push(nxt)
    return found


def tensors_of(obj: Any, _depth: int = 0) -> list[Tensor]:
    """Tensors a distribution was built from, recursively (base distributions, transforms)."""
    out: list[Tensor] = []
    if _depth > 8:  # distributions are shallow; stop on pathological cycles
        return out
    items = vars(obj).values() if isinstance(obj, (Distribution, Transform)) else obj
    for value in items:
        if isinstance(value, Tensor):
            out.append(value)
        elif isinstance(value, (Distribution, Transform)) or type(value) in (list, tuple):  # not torch.Size
            out.extend(tensors_of(value, _depth + 1))
    return out


def aligned_shape(source: tuple[int, ...], target: tuple[int, ...]) -> Optional[tuple[int, ...]]:
    """Shape of ``align(x, target)`` for ``x`` of shape ``source``, or ``None`` if they do not align."""
    rank = len(target)
    shape = list(source[:rank]) if len(source) >= rank else list(source) + [1] * (rank - len(source))
    if shape[:1] != list(target[:1]):
        return None
    for i in range(1, rank):
        if target[i] == 1:
            shape[i] = 1
        elif shape[i] not in (1, target[i]):
            return None
    return tuple(shape)


def align(x: Tensor, target: tuple[int, ...]) -> Tensor:
    """Bring ``x`` ``[S, *a]`` to a tensor broadcastable to ``target`` ``[S, *b]`` (left-aligned).

    Dimensions of ``x`` beyond the rank of ``target`` are summed, missing ones are
    added as size 1, and dimensions where ``target`` has size 1 are summed (keepdim).
    Used both ways: a node's log-probability brought to a cost's shape (the cost
    depends on every element it covers) and a cost brought to a node's shape (the
    node's element receives the costs it affects).
    """
    rank = len(target)
    if x.dim() > rank:
        x = x.sum(dim=tuple(range(rank, x.dim())))
    elif x.dim() < rank:
        x = x.reshape(tuple(x.shape) + (1,) * (rank - x.dim()))
    dims = tuple(i for i in range(1, rank) if target[i] == 1 and x.shape[i] != 1)
    if dims:
        x = x.sum(dim=dims, keepdim=True)
    return x
