"""Every call scg makes into PyTorch's private APIs, in one place.

The graph reads data flow from autograd's graph and looks through ``torch.func``
wrappers; checks that read values on the host must know whether they run inside a
``torch.func`` transform. None of this has a public API in torch 2.x, so each use
is a one-line function here, and ``tests/library/test_torch_internals.py`` has one test per
behaviour relied on — a torch upgrade that changes one fails there, by name.

Behaviours relied on:

* autograd nodes are numbered in creation order per thread (``_sequence_nr``), and
  the next number is readable before an operation runs;
* a leaf tensor that requires grad appears in its readers' ``next_functions`` as an
  ``AccumulateGrad`` node whose ``variable`` is the leaf itself;
* tensors inside ``torch.func`` transforms are wrappers; unwrapping one level at a
  time reaches the level that records autograd; the interpreter stack is non-empty
  exactly inside a transform;
* inside ``DisableTorchFunctionSubclass`` an operation on a tensor subclass runs as
  on a plain tensor and returns plain tensors (the graph's integer samples).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch._C._autograd import _get_sequence_nr
from torch._C._functorch import get_unwrapped, is_functorch_wrapped_tensor, peek_interpreter_stack

__all__ = [
    "LEAF",
    "is_wrapped",
    "unwrapped",
    "in_transform",
    "next_sequence_nr",
    "sequence_nr",
    "inputs_of",
    "leaf_variable",
    "plain_torch_function",
]


def _accumulator_type() -> type:
    """The node type of a leaf's gradient accumulator, read off the graph of one view of a leaf."""
    view_fn = torch.zeros((), requires_grad=True).view(()).grad_fn
    if view_fn is None:  # a view of a tensor that requires grad always records its node
        raise RuntimeError("torch recorded no autograd node for a view of a leaf that requires grad.")
    return type(view_fn.next_functions[0][0])


#: The autograd node type of leaves that require grad (their gradient accumulator).
LEAF: type = _accumulator_type()


def is_wrapped(t: Tensor) -> bool:
    """Whether ``t`` is a ``torch.func`` wrapper (batched or gradient-tracking tensor of a transform)."""
    return bool(is_functorch_wrapped_tensor(t))


def unwrapped(t: Tensor) -> Tensor:
    """The tensor one ``torch.func`` level below the wrapper ``t``."""
    return get_unwrapped(t)


def in_transform() -> bool:
    """Whether code runs inside a ``torch.func`` transform (vmap, grad, ...)."""
    return peek_interpreter_stack() is not None


def next_sequence_nr() -> int:
    """The sequence number the next autograd node created on this thread will get."""
    return _get_sequence_nr()


def sequence_nr(fn: Any) -> int:
    """The creation number of the autograd node ``fn`` (older nodes have smaller numbers)."""
    return fn._sequence_nr()


def inputs_of(fn: Any) -> Iterator[Any | None]:
    """The autograd nodes ``fn`` back-propagates to, in input order (``None`` for inputs without gradient)."""
    for nxt, _ in fn.next_functions:
        yield nxt


def leaf_variable(fn: Any) -> Tensor:
    """The leaf tensor of a gradient accumulator node (type :data:`LEAF`)."""
    return fn.variable


def plain_torch_function(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``func(*args, **kwargs)`` with tensor subclasses' ``__torch_function__`` disabled (plain results)."""
    with torch._C.DisableTorchFunctionSubclass():
        return func(*args, **kwargs)
