"""Control variates for score-function-type estimators, composable like optax transforms.

``chain(MovingAverage(), Learned(net), Normalize())`` is NVIL; ``LeaveOneOut()``
is RLOO; ``Delta()`` is the delta-method control variate of Mohamed et al. 2020 §7.
"""

from scg.baselines.base import Chain, ControlVariate, SignalContext, chain, score_sq_norm
from scg.baselines.delta import Delta
from scg.baselines.learned import Learned
from scg.baselines.simple import Constant, LeaveOneOut, MovingAverage, Normalize

__all__ = [
    "ControlVariate",
    "SignalContext",
    "Chain",
    "chain",
    "Constant",
    "MovingAverage",
    "LeaveOneOut",
    "Learned",
    "Normalize",
    "Delta",
    "score_sq_norm",
]
