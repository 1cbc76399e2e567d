"""Tests of how ``scg.Graph`` reads data flow: leaf samples, deferred credit assignment, early stops.

All deterministic: dependencies are compared exactly, gradients against a
hand-written DiCE surrogate of the same draws (float64, 1e-12), and the walk's
visits are counted on the autograd graph itself.
"""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Bernoulli, Normal

import scg
from scg.graph import _dataflow


def t(*v: float) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.float64)


def box(lp: torch.Tensor) -> torch.Tensor:
    return torch.exp(lp - lp.detach())


# ------------------------------------------------------------------ leaf samples


def test_score_function_samples_are_leaves_and_draws_stay_detached():
    p = t(0.3, -0.2).requires_grad_()
    g = scg.Graph(num_samples=3)
    a = g.sample("a", Bernoulli(logits=p[0]))
    z = g.sample("z", Normal(p[1] + a, 1.0))
    assert a.is_leaf and a.requires_grad and a.grad_fn is None
    assert not z.is_leaf  # pathwise: its own autograd history
    assert not g.draws["a"]["z"].requires_grad and torch.equal(g.draws["a"]["z"], a.detach())
    g.cost("f", z**2)
    g.surrogate().backward()
    assert a.grad is not None  # the leaf receives ∂L/∂a (unused by the estimator) ...
    assert p.grad is not None and bool(torch.isfinite(p.grad).all())  # ... the parameters their estimate


def test_in_place_edit_of_a_score_function_sample_raises_and_a_copy_is_tracked():
    p = t(0.3, 1.5).requires_grad_()
    g = scg.Graph(num_samples=2)
    a = g.sample("a", Bernoulli(logits=p[0]))
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        a.mul_(2.0)
    c = a.clone()
    c.mul_(2.0)  # a copy may be edited; its data flow still leads to a
    g.cost("f", c * p[1])
    assert g.dependencies() == {"f": ("a",)}


def test_sample_used_directly_as_a_parameter_or_as_a_cost_is_found():
    p = t(0.2, -0.4, 0.7).requires_grad_()
    g = scg.Graph(num_samples=4)
    sf = scg.ScoreFunction()  # no control variate: the reference below is plain DiCE
    a = g.sample("a", Bernoulli(logits=p[0]), sf)
    b = g.sample("b", Bernoulli(logits=a), sf)  # the leaf itself is the parameter: a child of a
    c = g.sample("c", Bernoulli(logits=p[1]), sf)
    z = g.sample("z", Normal(c, 1.0))  # pathwise node of a leaf parameter
    g.cost("fb", b)  # the leaf itself is the cost
    g.cost("fz", z * p[2])
    assert g._nodes["b"].child and g._nodes["z"].child
    assert g.dependencies() == {"fb": ("a", "b"), "fz": ("c", "z")}
    s = g.surrogate()
    d = g.draws
    a_, b_, c_, eps = d["a"]["z"], d["b"]["z"], d["c"]["z"], d["z"]["eps"]
    lp_a = Bernoulli(logits=p[0]).log_prob(a_)
    lp_b = Bernoulli(logits=a_).log_prob(b_)
    lp_c = Bernoulli(logits=p[1]).log_prob(c_)
    ref = (box(lp_a + lp_b) * b_).mean(0).sum() + (box(lp_c) * (c_ + eps) * p[2]).mean(0).sum()
    assert torch.equal(s, ref)
    torch.testing.assert_close(
        torch.autograd.grad(s, p)[0], torch.autograd.grad(ref, p)[0], atol=1e-12, rtol=0
    )


def test_constant_parameter_sample_is_a_leaf_and_still_a_node():
    g = scg.Graph(num_samples=3)
    p = t(0.5).requires_grad_()
    e = g.sample("e", Normal(t(0.0), t(1.0)))  # pathwise, but nothing to differentiate: no history
    assert e.is_leaf and e.requires_grad
    g.cost("f", (e - p) ** 2)
    assert g.dependencies() == {"f": ("e",)}


# ------------------------------------------------------- deferred credit assignment


def test_data_flow_is_read_as_registered_even_if_the_value_is_edited_later():
    p = t(0.1, 0.9).requires_grad_()
    g = scg.Graph(num_samples=2)
    a = g.sample("a", Bernoulli(logits=p[0]))
    b = g.sample("b", Bernoulli(logits=p[1]))
    c = a * p[1]
    g.cost("f", c)
    c.add_(b)  # edits after registration do not change what the cost was computed from
    g.cost("g", b * p[0])
    assert g.dependencies() == {"f": ("a",), "g": ("b",)}


def test_a_cost_never_depends_on_nodes_sampled_after_it():
    p = t(0.1, 0.9).requires_grad_()
    g = scg.Graph(num_samples=2)
    a = g.sample("a", Bernoulli(logits=p[0]))
    g.cost("f", a * p[1])
    b = g.sample("b", Bernoulli(logits=p[1] + a))  # reads a; f was registered before b existed
    g.cost("g", b * p[0])
    assert g.dependencies() == {"f": ("a",), "g": ("a", "b")}


@pytest.mark.parametrize("flag", [True, False])
def test_same_operations_wired_differently_each_step_are_read_each_step(flag):
    # The same code and the same operations, different data flow: nothing may be reused across graphs.
    p = t(0.3, -0.3, 2.0).requires_grad_()
    for step in range(3):
        g = scg.Graph(num_samples=2)
        a = g.sample("a", Bernoulli(logits=p[0]))
        b = g.sample("b", Bernoulli(logits=p[1]))
        x = a if (step % 2 == 0) == flag else b
        g.cost("f", x * p[2])
        assert g.dependencies() == {"f": ("a",) if (step % 2 == 0) == flag else ("b",)}
        g.surrogate()


def test_shape_error_is_raised_by_cost_even_though_credit_is_assigned_later():
    p = t(0.1, 0.2).requires_grad_()
    g = scg.Graph(num_samples=4)
    w = g.sample("w", Bernoulli(logits=torch.zeros(3, dtype=torch.float64) + p[1]))  # [4, 3]
    g.cost("ok", w.sum(-1, keepdim=True) * p[0])  # [4, 1]: w's [4, 3] aligns (summed)
    with pytest.raises(ValueError, match=r"sample dims do not match: cost 'g' has shape \[4, 2\]"):
        g.cost("g", w[:, :2] * 2.0)
    a = g.sample("a", Bernoulli(logits=p[0]))  # [4]
    g.cost("h", torch.ones(4, 2, dtype=torch.float64) * a[:, None] * p[0])  # aligns with a; w not read
    assert g.dependencies() == {"ok": ("w",), "h": ("a",)}


# -------------------------------------------------------------------- the walk


def _visits(roots, boundaries, first_sequence_nr, leaves, closures, nodes):
    """The autograd nodes whose inputs :func:`walk` reads, by instrumenting ``next_functions`` access."""
    count = [0]

    class Counting:
        def __init__(self, fn):
            self.fn = fn

        def __getattr__(self, attr):
            if attr == "next_functions":
                count[0] += 1
                return tuple(
                    (Counting(n) if n is not None and type(n) is not _dataflow._LEAF else n, i)
                    for n, i in self.fn.next_functions
                )
            return getattr(self.fn, attr)

        def __hash__(self):
            return hash(self.fn)

        def __eq__(self, other):
            return self.fn is getattr(other, "fn", other)

    found = _dataflow.walk(
        [Counting(r) for r in roots], boundaries, first_sequence_nr, leaves, closures, nodes
    )
    return found, count[0]


def test_walk_stops_once_every_node_is_covered_and_below_the_first_node():
    w = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    x = torch.randn(3, dtype=torch.float64)
    h = (
        (x @ w).tanh().sin()
    )  # an "encoder" before the first node: older than the first_sequence_nr, never walked
    g = scg.Graph(num_samples=5)
    a = g.sample("a", Bernoulli(logits=h[0]))  # [5]
    z = g.sample("z", Normal(a * h[1], 1.0))  # [5], child of a
    flow = g._flow
    cost = (z.exp() * h[2]).cos()
    everything, full = _visits([cost.grad_fn], flow.boundaries, flow.first_sequence_nr, flow.leaves, None, 0)
    early, stopped = _visits(
        [cost.grad_fn], flow.boundaries, flow.first_sequence_nr, flow.leaves, flow.closures, 2
    )
    assert everything == early == {"z"}  # z's ancestors include a: finding z covers every node
    assert stopped < full
    no_floor, unbounded = _visits([cost.grad_fn], flow.boundaries, 0, flow.leaves, None, 0)
    assert no_floor == {"z"} and unbounded > full  # without the first_sequence_nr it walks into the encoder


def test_walk_does_not_stop_while_a_node_is_uncovered():
    p = t(0.4, -0.1, 0.8).requires_grad_()
    g = scg.Graph(num_samples=3)
    a = g.sample("a", Bernoulli(logits=p[0]))
    b = g.sample("b", Bernoulli(logits=p[1]))  # a second root: finding a does not cover b
    c = g.sample("c", Normal(a * p[2], 1.0))
    g.cost("f", c * b + a)
    g.cost("g", c)
    assert g.dependencies() == {"f": ("a", "b", "c"), "g": ("a", "c")}


class _Stored(Bernoulli):
    """A distribution whose ``sample`` returns a tensor it keeps (legal, if unusual)."""

    def __init__(self, logits: torch.Tensor, stored: torch.Tensor) -> None:
        super().__init__(logits=logits)
        self.stored = stored

    def sample(self, sample_shape=torch.Size()):
        return self.stored


def test_a_sample_the_distribution_keeps_is_not_modified():
    p = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    stored = t(1.0, 0.0, 1.0)
    g = scg.Graph(num_samples=3)
    a = g.sample("a", _Stored(p, stored), scg.ScoreFunction())
    assert (
        a.requires_grad and not stored.requires_grad and a is not stored
    )  # the graph's leaf is a detached alias
    replay = {"a": {"z": t(0.0, 1.0, 1.0)}}
    g2 = scg.Graph(num_samples=3, draws=replay)
    b = g2.sample("a", Bernoulli(logits=p), scg.ScoreFunction())
    assert b.requires_grad and not replay["a"]["z"].requires_grad  # nor is a replayed draw
    g.cost("f", a * p)
    assert g.dependencies() == {"f": ("a",)}


def test_credit_with_a_few_dependencies_among_many_nodes_keeps_sampling_order():
    p = torch.linspace(-1.0, 1.0, 9, dtype=torch.float64).requires_grad_()
    g = scg.Graph(num_samples=2)
    xs = [g.sample(f"n{i}", Bernoulli(logits=p[i]), scg.ScoreFunction()) for i in range(9)]
    g.cost("late", xs[7] * p[0] + xs[2])  # 2 of 9 score-function nodes: found out of order, sorted back
    g.cost("all", sum(xs) * p[1])
    s = g.surrogate()
    assert g.dependencies()["late"] == ("n2", "n7") and g._costs["late"].scored == ("n2", "n7")
    assert g._costs["all"].scored == tuple(f"n{i}" for i in range(9))
    d = g.draws
    lps = [Bernoulli(logits=p[i]).log_prob(d[f"n{i}"]["z"]) for i in range(9)]
    zs = [d[f"n{i}"]["z"] for i in range(9)]
    tau_all = lps[0]
    for lp in lps[1:]:
        tau_all = tau_all + lp
    ref = (box(lps[2] + lps[7]) * (zs[7] * p[0] + zs[2])).mean(0).sum() + (
        box(tau_all) * sum(zs) * p[1]
    ).mean(0).sum()
    assert torch.equal(s, ref)
    torch.testing.assert_close(
        torch.autograd.grad(s, p)[0], torch.autograd.grad(ref, p)[0], atol=1e-12, rtol=0
    )
