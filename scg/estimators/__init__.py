"""Gradient estimators: one class each, behind the :class:`Estimator` contract."""

from scg.estimators.base import Estimator, Parts, default_estimator, expectation
from scg.estimators.disarm import DisARM
from scg.estimators.measure_valued import MeasureValued
from scg.estimators.pathwise import Pathwise
from scg.estimators.relax import RELAX, NeuralControlVariate, REBARControlVariate
from scg.estimators.relaxed import GumbelSoftmax, StraightThrough
from scg.estimators.score_function import ScoreFunction

__all__ = [
    "Estimator",
    "Parts",
    "default_estimator",
    "expectation",
    "Pathwise",
    "ScoreFunction",
    "MeasureValued",
    "DisARM",
    "RELAX",
    "REBARControlVariate",
    "NeuralControlVariate",
    "GumbelSoftmax",
    "StraightThrough",
]
