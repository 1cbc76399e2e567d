"""scg: Monte Carlo gradient estimators for PyTorch.

``scg.expectation(f, dist, estimator, num_samples=S)`` returns a value-preserving
surrogate of ``E_q[f]``: its value is the Monte Carlo mean, its gradient the
chosen estimator.
"""

from scg import baselines, diagnostics, laws, minibatch, objectives
from scg._log_prob import log_prob
from scg.estimators import (
    ARM,
    ARSM,
    RELAX,
    CategoricalDisARM,
    DisARM,
    Enumerate,
    Estimator,
    GumbelRao,
    GumbelSoftmax,
    IndeCateR,
    MeasureValued,
    Parts,
    Pathwise,
    ReinMax,
    ScoreFunction,
    StraightThrough,
    SumAndSample,
    UnorderedSet,
    expectation,
)
from scg.graph import Graph
from scg.stop_gradient import stop_gradient

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # scg.testing (the exact harness) needs scipy: imported on first use, not by `import scg`.
    if name == "testing":
        import importlib

        return importlib.import_module("scg.testing")
    raise AttributeError(f"module 'scg' has no attribute {name!r}")


__all__ = [
    "expectation",
    "Estimator",
    "Parts",
    "Pathwise",
    "ScoreFunction",
    "MeasureValued",
    "DisARM",
    "RELAX",
    "GumbelSoftmax",
    "StraightThrough",
    "ARM",
    "CategoricalDisARM",
    "ARSM",
    "UnorderedSet",
    "SumAndSample",
    "Enumerate",
    "GumbelRao",
    "ReinMax",
    "IndeCateR",
    "baselines",
    "diagnostics",
    "laws",
    "minibatch",
    "Graph",
    "log_prob",
    "objectives",
    "stop_gradient",
    "testing",
]
