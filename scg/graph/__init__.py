"""Stochastic computation graphs: several stochastic nodes, each with its own estimator, one surrogate.

``g = scg.Graph(num_samples=S)``; ``g.sample(name, dist, estimator)``;
``g.cost(name, value)``; ``g.surrogate()``. Credit assignment by data flow (read
from autograd, no tensor wrapping), DiCE-form surrogate (value-preserving,
derivatives of any order), per-node control variates. See :class:`Graph`.
"""

from scg.graph._graph import Graph

__all__ = ["Graph"]
