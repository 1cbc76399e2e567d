"""scg.studies: variance studies of gradient estimators and the ``scg-study`` command.

``scg-study compare`` runs every applicable estimator on the embedded problems
(:mod:`scg.studies.problems`) or a user's ``module:function`` problem and reports
sampled against exact gradient moments; ``scg-study list`` shows what is
registered. Studies are configured by frozen dataclasses; the CLI only parses.
"""

from scg.studies.compare import CompareConfig, run_compare
from scg.studies.estimators import ESTIMATORS, estimator_names
from scg.studies.problems import PROBLEMS, Problem, get_problem, problem_names

__all__ = [
    "CompareConfig",
    "run_compare",
    "Problem",
    "PROBLEMS",
    "get_problem",
    "problem_names",
    "ESTIMATORS",
    "estimator_names",
]
