"""Credit assignment for integer-valued (``Categorical``) graph nodes, tracked through torch operations."""

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Bernoulli, Binomial, Categorical, Normal, OneHotCategorical

import scg
from scg import baselines as B
from scg.graph._integer import IntegerSample

pytestmark = pytest.mark.usefixtures("float64")  # float64 by default in this module only


def t(*v):
    return torch.tensor(v if len(v) != 1 else v[0], dtype=torch.float64)


def policy_gradient(one_hot: bool, unrelated: float):
    """∇ logits of a graph with a categorical node c (cost f(c)) and an unrelated Normal node z
    whose cost is scaled by ``unrelated``; no ``depends_on`` anywhere."""
    logits = t(0.2, -0.4, 0.9).requires_grad_()
    mu = t(0.3).requires_grad_()
    table = t(1.0, -2.0, 0.5)
    torch.manual_seed(3)
    g = scg.Graph(num_samples=6)
    dist = OneHotCategorical(logits=logits) if one_hot else Categorical(logits=logits)
    c = g.sample("c", dist, scg.ScoreFunction(B.LeaveOneOut()))
    z = g.sample("z", Normal(mu, 1.0))
    g.cost("f", (c @ table if one_hot else table[c]) * mu)
    if unrelated:
        g.cost("g", unrelated * (z - 1.0) ** 2)
        assert g.dependencies() == {"f": ("c",), "g": ("z",)}
    return torch.autograd.grad(g.surrogate(), logits)[0]


def test_an_unrelated_cost_adds_nothing_to_an_integer_node_gradient():
    """The unrelated cost, scaled ×1000, leaves the integer node's gradient unchanged bit for bit,
    and it equals the OneHotCategorical formulation's (same draws)."""
    reference = policy_gradient(one_hot=False, unrelated=0.0)
    assert torch.equal(policy_gradient(one_hot=False, unrelated=1000.0), reference)
    torch.testing.assert_close(policy_gradient(one_hot=True, unrelated=1000.0), reference, rtol=1e-12, atol=0)


W = torch.linspace(-1.0, 1.0, 12, dtype=torch.float64).reshape(3, 4)


# Each maps the integer sample c [S] to a cost [S] through a different kind of operation.
READERS = {
    "index": lambda c: W[c].sum(-1),
    "embedding": lambda c: F.embedding(c, W).sum(-1),
    "one_hot": lambda c: F.one_hot(c, 3).double() @ t(1.0, 2.0, 3.0),
    "compare": lambda c: (c == 1).double(),
    "where": lambda c: torch.where(c > 0, t(2.0), t(-1.0)),
    "gather": lambda c: torch.gather(W[:, :1].T.expand(len(c), 3), 1, c.unsqueeze(1)).squeeze(1),
    "integer arithmetic": lambda c: ((2 * c + 1) % 3).double(),
    "cat and split": lambda c: torch.cat([c, c]).split(len(c))[1].double(),
    "sort": lambda c: torch.sort(c).values.double(),
    "in-place on a copy": lambda c: c.clone().add_(1).double(),
    "scatter into a tracked tensor": lambda c: torch.zeros_like(c).scatter_(0, c, c).double(),
}


@pytest.mark.parametrize("reader", READERS.values(), ids=READERS.keys())
def test_operations_that_read_an_integer_sample_are_credited_to_it(reader):
    logits = t(0.2, -0.4, 0.9).requires_grad_()
    g = scg.Graph(num_samples=5)
    c = g.sample("c", Categorical(logits=logits))
    n = g.sample("n", Bernoulli(logits=t(0.3).requires_grad_()))
    g.cost("f", reader(c))
    g.cost("h", (n - 0.5) ** 2)
    assert g.dependencies() == {"f": ("c",), "h": ("n",)}


@pytest.mark.parametrize(
    "child",
    [
        lambda c: Categorical(logits=W[c]),
        lambda c: Bernoulli(logits=(c == 2).double()),
        lambda c: Binomial(total_count=c + 1, probs=t(0.4)),
    ],
    ids=["logits from a table", "logits from a comparison", "integer parameter"],
)
def test_a_child_distribution_built_from_an_integer_sample_is_its_child(child):
    g = scg.Graph(num_samples=4)
    c = g.sample("c", Categorical(logits=t(0.2, -0.4, 0.9).requires_grad_()))
    a = g.sample("a", Bernoulli(logits=t(0.1).requires_grad_()))
    d = g.sample("d", child(c))
    g.cost("f", d.double().reshape(4, -1).sum(-1))
    g.cost("h", a)
    deps = g.dependencies()
    assert deps["f"] == ("c", "d") and deps["h"] == ("a",)


def _write_float_buffer(c):
    buf = torch.zeros(len(c))
    buf[c > 0] = 1.0
    return buf


ESCAPES = {
    "item": lambda c: float(c[0].item()),
    "tolist": lambda c: float(sum(c.tolist())),
    "int": lambda c: float(int(c[0])),
    "bool": lambda c: 1.0 if bool((c == 0).any()) else 0.0,
    "numpy": lambda c: float(c.numpy().sum()),
    "write into an untracked tensor": lambda c: float(_write_float_buffer(c).sum()),
    "no_grad": lambda c: torch.no_grad()(lambda: float(c.double().sum()))(),
}


@pytest.mark.parametrize("escape", ESCAPES.values(), ids=ESCAPES.keys())
def test_a_value_that_leaves_tracking_makes_later_costs_depend_on_the_node(escape):
    """Exact by enumeration: with the escaped value in a later cost the gradient stays unbiased.

    The cost ``h`` reads c only through a Python number; it must be credited to c."""
    logits = t(0.2, -0.4, 0.9)
    p_n = t(0.3)

    def surrogate_grad(c_value: int, n_value: float):
        lg, pn = logits.clone().requires_grad_(), p_n.clone().requires_grad_()
        g = scg.Graph(
            num_samples=1,
            draws={"c": {"z": torch.tensor([c_value])}, "n": {"z": t([n_value])}},
        )
        c = g.sample("c", Categorical(logits=lg), scg.ScoreFunction())
        n = g.sample("n", Bernoulli(logits=pn), scg.ScoreFunction())
        g.cost("early", (n - 0.1) ** 2)  # registered before the escape: credited precisely
        k = escape(c)
        g.cost("h", (n - 0.5) ** 2 + k)
        deps = g.dependencies()
        assert deps["early"] == ("n",) and deps["h"] == ("c", "n")
        return torch.cat([gr.reshape(-1) for gr in torch.autograd.grad(g.surrogate(), (lg, pn))])

    # E[∇ surrogate] over the enumerated draws equals ∇ E[cost] computed independently.
    pc = torch.softmax(logits, 0)
    mean = torch.zeros(4)
    for cv in range(3):
        for nv in (0.0, 1.0):
            w = pc[cv] * (torch.sigmoid(p_n) if nv else 1 - torch.sigmoid(p_n))
            mean = mean + w * surrogate_grad(cv, nv)
    lg, pn = logits.clone().requires_grad_(), p_n.clone().requires_grad_()
    probs_c, q = torch.softmax(lg, 0), torch.sigmoid(pn)
    k_values = torch.tensor([escape(torch.tensor([cv])) for cv in range(3)])  # the number each c gives
    exact = (probs_c * k_values).sum() + q * ((1 - 0.1) ** 2 + (1 - 0.5) ** 2) + (1 - q) * (0.1**2 + 0.5**2)
    expected = torch.cat([gr.reshape(-1) for gr in torch.autograd.grad(exact, (lg, pn))])
    torch.testing.assert_close(mean, expected, rtol=1e-12, atol=1e-14)


def test_an_integer_sample_of_another_graph_is_not_a_node_of_this_one():
    g1 = scg.Graph(num_samples=3)
    c = g1.sample("c", Categorical(logits=t(0.2, -0.4, 0.9).requires_grad_()))
    assert isinstance(c, IntegerSample)
    g2 = scg.Graph(num_samples=3)
    z = g2.sample("z", Normal(t(0.3).requires_grad_(), 1.0))
    g2.cost("f", W[c].sum(-1) * z)
    assert g2.dependencies() == {"f": ("z",)}
