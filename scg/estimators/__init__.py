"""Gradient estimators: one class each, behind the :class:`Estimator` contract."""

from scg.estimators.base import Estimator, expectation
from scg.estimators.pathwise import Pathwise
from scg.estimators.score_function import ScoreFunction

__all__ = ["Estimator", "expectation", "Pathwise", "ScoreFunction"]
