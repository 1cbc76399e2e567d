"""One test per PyTorch behaviour that ``scg._torch`` (the graph's data-flow reading) relies on.

If a torch upgrade changes one of these, the failure names the behaviour.
"""

import torch

from scg import _torch as T


def test_sequence_numbers_grow_in_creation_order_and_the_next_one_is_readable():
    a = torch.zeros(2, requires_grad=True)
    first = T.next_sequence_nr()
    b = a * 2
    c = b + 1
    assert T.sequence_nr(b.grad_fn) >= first
    assert T.sequence_nr(c.grad_fn) > T.sequence_nr(b.grad_fn)
    assert T.next_sequence_nr() > T.sequence_nr(c.grad_fn)


def test_a_leaf_appears_as_an_accumulator_whose_variable_is_the_leaf():
    leaf = torch.ones(3).requires_grad_()
    y = (leaf * 3).sum()
    (mul,) = [n for n in T.inputs_of(y.grad_fn)]
    accumulators = [n for n in T.inputs_of(mul) if n is not None]
    assert len(accumulators) == 1 and type(accumulators[0]) is T.LEAF
    assert T.leaf_variable(accumulators[0]) is leaf


def test_inputs_are_listed_in_argument_order_with_none_for_constants():
    a, b = torch.ones(2, requires_grad=True), torch.ones(2)
    nodes = list(T.inputs_of((a * b).grad_fn))
    assert len(nodes) == 2 and type(nodes[0]) is T.LEAF and nodes[1] is None


def test_transforms_wrap_tensors_and_unwrapping_reaches_the_autograd_level():
    seen = {}

    def f(x):
        seen["inside"] = T.in_transform()
        seen["wrapped"] = T.is_wrapped(x)
        y = x * 2
        inner = y
        while T.is_wrapped(inner) and inner.grad_fn is None:
            inner = T.unwrapped(inner)
        seen["grad_fn"] = inner.grad_fn is not None
        return y.sum()

    torch.func.vmap(torch.func.grad(f))(torch.ones(3, 2))
    assert seen == {"inside": True, "wrapped": True, "grad_fn": True}
    assert not T.in_transform() and not T.is_wrapped(torch.ones(1))


def test_disabling_subclass_torch_function_runs_operations_as_on_plain_tensors():
    calls = []

    class Sub(torch.Tensor):
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            calls.append(func)
            return T.plain_torch_function(func, args, kwargs or {})

    x = torch.arange(3).as_subclass(Sub)
    y = x + 1
    assert type(y) is torch.Tensor and torch.equal(y, torch.tensor([1, 2, 3]))
    assert len(calls) == 1  # the inner call did not dispatch to the subclass again
    assert x.add_(1) is x and type(x) is Sub  # in-place: the same object comes back
