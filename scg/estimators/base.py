"""The estimator contract and ``scg.expectation``.

An estimator turns ``E_{q_θ(z)}[f(z)]`` into a *value-preserving surrogate*: a
tensor whose value is exactly the Monte Carlo mean of ``f`` over the drawn
samples and whose gradient (with respect to the distribution's parameters, f's
own parameters and any learned control variate) is the estimator.

Subclass contract (two required methods, everything else is derived):

* ``laws(dist, num_samples) -> dict[str, Law]`` — what the estimator draws; the
  draws are independent of the parameters being differentiated.
* ``surrogate(f, dist, draws, *, context=None) -> Tensor`` of shape
  ``dist.batch_shape`` — deterministic given ``draws``.

``draw`` (sampling the laws) and ``__call__``/``scg.expectation`` (draw, then
surrogate) come for free; :mod:`scg.testing` integrates ``surrogate`` over the
laws exactly. Estimators are ``nn.Module`` s so that learned control variates and
running statistics move with ``.to(device)``, appear in ``.parameters()`` and are
saved by ``state_dict()``. Running statistics update in training mode and outside
``torch.func`` transforms; ``.eval()`` freezes them.

Shapes: samples are ``[S, *batch_shape, *event_shape]``; ``f`` returns
``[S, *batch_shape]``. Batch elements are independent expectations: ``f[:, i]``
may depend only on ``z[:, i]``. Dimensions that ``f`` couples must be event
dimensions (wrap with ``torch.distributions.Independent``).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from scg._checks import check_positive_int
from scg.laws import Law

__all__ = ["Estimator", "expectation", "Cost"]

Cost = Callable[[Tensor], Tensor]


class Estimator(nn.Module):
    """Base class of gradient estimators (see the module docstring for the contract)."""

    #: Whether ``E[∇ surrogate] = ∇ E[f]`` holds under the estimator's requirements.
    unbiased: bool = True

    def laws(self, dist: Distribution, num_samples: int) -> dict[str, Law]:  # pragma: no cover
        raise NotImplementedError

    def surrogate(
        self,
        f: Cost,
        dist: Distribution,
        draws: dict[str, Tensor],
        *,
        context: Optional[Tensor] = None,
    ) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def check(self, dist: Distribution) -> None:
        """Raise ``TypeError`` if the estimator does not apply to ``dist``."""
        if not isinstance(dist, Distribution):
            raise TypeError(
                f"`dist` must be a torch.distributions.Distribution; got {type(dist).__name__}."
            )

    def evaluations(self, dist: Distribution, num_samples: int) -> int:
        """Number of evaluations of ``f`` (per batch element) for one estimate."""
        return num_samples

    def draw(
        self,
        dist: Distribution,
        num_samples: int = 1,
        *,
        generator: Optional[torch.Generator] = None,
    ) -> dict[str, Tensor]:
        """Draw the random inputs of one estimate (independent of the parameters)."""
        self.check(dist)
        check_positive_int("num_samples", num_samples)
        return {name: law.sample(generator) for name, law in self.laws(dist, num_samples).items()}

    def forward(
        self,
        f: Cost,
        dist: Distribution,
        num_samples: int = 1,
        *,
        context: Optional[Tensor] = None,
    ) -> Tensor:
        return self.surrogate(f, dist, self.draw(dist, num_samples), context=context)

    def extra_repr(self) -> str:
        return f"unbiased={self.unbiased}"


def expectation(
    f: Cost,
    dist: Distribution,
    estimator: Optional[Estimator] = None,
    *,
    num_samples: int = 1,
    context: Optional[Tensor] = None,
) -> Tensor:
    r"""Surrogate of :math:`E_{q_θ(z)}[f(z)]` whose value is the MC mean and whose gradient is ``estimator``.

    .. math:: \hat L = \frac1S \sum_{s=1}^S f(z_s), \qquad \nabla \hat L = \text{estimator}.

    Args:
        f: cost, maps samples ``[S, *batch_shape, *event_shape]`` to ``[S, *batch_shape]``.
        dist: any ``torch.distributions.Distribution`` (parameters may require grad).
        estimator: an :class:`Estimator`; ``None`` picks ``Pathwise()`` when
            ``dist.has_rsample`` else ``ScoreFunction(baseline=MovingAverage())``
            (a fresh one per call — keep your own estimator object to keep its state).
        num_samples: S ≥ 1 (keyword-only).
        context: optional input of learned baselines (e.g. the data x for NVIL).

    Returns:
        Tensor of shape ``dist.batch_shape``: the mean over S of ``f``.

    Example:
        >>> import torch, scg
        >>> from torch.distributions import Normal
        >>> _ = torch.manual_seed(0)
        >>> mu = torch.tensor(1.0, requires_grad=True)
        >>> loss = scg.expectation(lambda z: z**2, Normal(mu, 1.0), num_samples=1000)
        >>> loss.backward()  # mu.grad ≈ 2 μ = 2
    """
    if estimator is None:
        from scg.estimators.pathwise import Pathwise
        from scg.estimators.score_function import ScoreFunction
        from scg.baselines import MovingAverage

        if not isinstance(dist, Distribution):
            raise TypeError(
                f"`dist` must be a torch.distributions.Distribution; got {type(dist).__name__}."
            )
        estimator = Pathwise() if dist.has_rsample else ScoreFunction(baseline=MovingAverage())
    if not isinstance(estimator, Estimator):
        raise TypeError(f"`estimator` must be an scg Estimator; got {type(estimator).__name__}.")
    if not callable(f):
        raise TypeError(f"`f` must be callable; got {type(f).__name__}.")
    return estimator(f, dist, num_samples, context=context)
