r"""Data flow from integer-valued graph nodes (``Categorical``), which autograd cannot see.

An integer sample carries no autograd history, so the walk of :mod:`scg.graph._dataflow`
cannot tell which costs read it. The graph therefore hands such a sample out as an
:class:`IntegerSample`: a tensor subclass whose ``__torch_function__`` runs every
operation unchanged and then

* tags an integer or boolean result (``z + 1``, ``z == 3``, ``perm[z]``) with the
  nodes of its inputs, so it is tracked in turn;
* links a floating-point result (``table[z]``, ``F.one_hot(z).float()``,
  ``F.embedding(z, w)``, ``torch.where(z == 0, a, b)``) into autograd by adding, per node
  it reads, that node's *marker* — a zero-valued scalar leaf that requires grad and
  that the graph's walk recognises as the node (same value; one addition per op that
  leaves the integer domain).

So floating-point code downstream is plain autograd-tracked tensors, credited by the
same walk as every other node, and only the integer bookkeeping pays for the subclass.

Whatever leaves the tensor domain — ``.item()``, ``.tolist()``, ``int(z)``, ``bool``,
``.numpy()``, an in-place write into a tensor that is not tracked (``buf[z] = 1``,
``x.index_add_(0, z, y)``), an operation under ``torch.no_grad()`` — marks the node
*escaped*: costs and nodes registered after that are assumed to depend on it, as
without tracking (unbiased; more variance than necessary). So a missed dependency can
cost variance, never bias. Metadata (shape, dtype, device, ``repr``) is read freely.
A result can be tagged with a node it does not depend on (``zeros_like(z)``), which
is also only conservative.

Not used inside ``torch.func`` transforms or while compiling; there every later cost
is assumed to depend on the integer node.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from scg._torch import plain_torch_function

__all__ = ["Source", "IntegerSample", "sources_in"]


class Source:
    """One integer-valued graph node: its marker leaf and whether its value escaped tracking."""

    __slots__ = ("name", "marker", "escaped")

    def __init__(self, name: str, marker: Tensor) -> None:
        self.name = name
        self.marker = marker
        self.escaped = False


# Queries of a tensor's metadata, not of its values: reading them is not an escape.
_METADATA = frozenset(
    {
        "size",
        "dim",
        "ndimension",
        "numel",
        "nelement",
        "stride",
        "element_size",
        "is_floating_point",
        "is_complex",
        "is_contiguous",
        "get_device",
        "__len__",
        "__repr__",
        "__str__",
        "__format__",
        "__hash__",
        "data_ptr",
        "storage_offset",
    }
)
_METADATA_PROPERTIES = tuple(
    getattr(Tensor, p).__get__
    for p in (
        "shape",
        "dtype",
        "device",
        "ndim",
        "layout",
        "is_cuda",
        "requires_grad",
        "grad_fn",
        "is_leaf",
        "grad",
    )
)
_INPLACE_DUNDERS = frozenset(
    f"__i{op}__"
    for op in (
        "add",
        "sub",
        "mul",
        "truediv",
        "floordiv",
        "mod",
        "pow",
        "and",
        "or",
        "xor",
        "lshift",
        "rshift",
    )
)


def _is_inplace(name: str, kwargs: dict[str, Any]) -> bool:
    return (
        (name.endswith("_") and not name.endswith("__"))
        or name == "__setitem__"
        or name in _INPLACE_DUNDERS
        or kwargs.get("out") is not None
    )


def sources_in(obj: Any, out: set[Source] | None = None, depth: int = 0) -> set[Source]:
    """The :class:`Source` s of the integer samples in ``obj`` (tensors, lists, tuples, dicts)."""
    out = set() if out is None else out
    if isinstance(obj, IntegerSample):
        out |= obj.sources
    elif depth < 4 and isinstance(obj, (list, tuple)):
        for item in obj:
            sources_in(item, out, depth + 1)
    elif depth < 4 and isinstance(obj, dict):
        for item in obj.values():
            sources_in(item, out, depth + 1)
    return out


def _escape(sources: Iterable[Source]) -> None:
    for s in sources:
        s.escaped = True


def _result(out: Any, sources: frozenset[Source]) -> Any:
    """Tag integer tensors in ``out``, link floating ones to the markers; escape on anything else."""
    if isinstance(out, Tensor):
        if out.is_floating_point() or out.is_complex():
            if not torch.is_grad_enabled():
                _escape(sources)
                return out
            for s in sources:
                out = out + s.marker.to(dtype=out.dtype, device=out.device)
            return out
        tagged = out.as_subclass(IntegerSample)
        tagged.sources = sources
        return tagged
    if isinstance(out, (tuple, list)):
        items = [_result(item, sources) for item in out]
        if type(out) in (tuple, list):
            return type(out)(items)
        return type(out)(items)  # torch.return_types structseqs take one sequence
    if out is not None:
        _escape(sources)
    return out


class IntegerSample(Tensor):
    """An integer-valued graph node's value (or one computed from it), tracked through torch operations.

    Behaves as the plain tensor it holds; see the module docstring for what is tracked.
    ``sources``: the integer nodes it was computed from.
    """

    sources: frozenset[Source]

    @classmethod
    def __torch_function__(
        cls,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        out = plain_torch_function(func, args, kwargs)
        if func in _METADATA_PROPERTIES:
            return out
        name = getattr(func, "__name__", "")
        if name in _METADATA:
            return out
        sources = frozenset(sources_in(args) | sources_in(kwargs))
        if _is_inplace(name, kwargs):
            target = kwargs.get("out", args[0] if args else None)
            if isinstance(target, IntegerSample) and torch.is_grad_enabled():
                target.sources = target.sources | sources
            else:  # written into a tensor that is not tracked, or under no_grad
                _escape(sources)
            return out
        return _result(out, sources)


def tag(value: Tensor, source: Source) -> IntegerSample:
    """``value`` (an integer tensor) as the :class:`IntegerSample` of node ``source``."""
    tagged = value.as_subclass(IntegerSample)
    tagged.sources = frozenset((source,))
    return tagged
