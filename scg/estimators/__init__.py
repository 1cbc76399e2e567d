"""Gradient estimators: one class each, behind the :class:`Estimator` contract."""

from scg.estimators.arm import ARM
from scg.estimators.arsm import ARSM
from scg.estimators.base import Estimator, Parts, default_estimator, expectation
from scg.estimators.coupled import CategoricalDisARM
from scg.estimators.disarm import DisARM
from scg.estimators.enumerate import Enumerate
from scg.estimators.gumbel_rao import GumbelRao
from scg.estimators.indecater import IndeCateR
from scg.estimators.measure_valued import MeasureValued
from scg.estimators.pathwise import Pathwise
from scg.estimators.reinmax import ReinMax
from scg.estimators.relax import RELAX, NeuralControlVariate, REBARControlVariate
from scg.estimators.relaxed import GumbelSoftmax, StraightThrough
from scg.estimators.score_function import ScoreFunction
from scg.estimators.sum_and_sample import SumAndSample
from scg.estimators.unordered_set import UnorderedSet

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
    "ARM",
    "CategoricalDisARM",
    "ARSM",
    "UnorderedSet",
    "SumAndSample",
    "Enumerate",
    "GumbelRao",
    "ReinMax",
    "IndeCateR",
]
