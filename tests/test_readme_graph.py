"""The README's graph and objectives examples run as written (copies kept here verbatim)."""

from __future__ import annotations

import contextlib
import io

GRAPH_EXAMPLE = """
import torch
from torch.distributions import Bernoulli, Normal
import scg

torch.manual_seed(0)
theta = torch.zeros(3, requires_grad=True)
rloo = scg.ScoreFunction(baseline=scg.baselines.LeaveOneOut())  # keep estimators across steps
g = scg.Graph(num_samples=8)                                      # one graph per step
a = g.sample("a", Bernoulli(logits=theta[0]), rloo)              # discrete: score function
z = g.sample("z", Normal(a + theta[1], 1.0))                     # continuous: pathwise (default)
b = g.sample("b", Bernoulli(logits=z * theta[2]), rloo)          # its logits come from z
g.cost("fit", (z - 1.5) ** 2)                                    # credited to a (through z), not b
g.cost("bits", b)                                                # credited to b, z and a
loss = g.surrogate()      # value: sum of the costs' Monte Carlo means; gradient: each node's estimator
loss.backward()
print(g.dependencies())   # {'fit': ('a', 'z'), 'bits': ('a', 'z', 'b')}
"""

OBJECTIVES_EXAMPLE = """
import torch
from torch.distributions import Normal
import scg

mu = torch.zeros(2, requires_grad=True)
q = Normal(mu, 1.0)
z = q.rsample((64,))                                             # K = 64 samples, batch 2
log_p = Normal(0.0, 1.0).log_prob(z) + Normal(z, 1.0).log_prob(torch.tensor([0.5, -1.0]))
bound = scg.objectives.iwae(log_p, scg.stop_gradient(q).log_prob(z), gradient="dreg", z=z)
(-bound.sum()).backward()                                        # DReG gradient in mu.grad
"""


def _run(source: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(source, "README example", "exec"), {"__name__": "__readme__"})
    return out.getvalue()


def test_graph_example_runs_and_prints_the_dependencies():
    assert len(GRAPH_EXAMPLE.strip().splitlines()) <= 20
    assert _run(GRAPH_EXAMPLE).strip() == "{'fit': ('a', 'z'), 'bits': ('a', 'z', 'b')}"


def test_objectives_example_runs():
    _run(OBJECTIVES_EXAMPLE)
