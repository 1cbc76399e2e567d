"""Score-function estimator (REINFORCE, likelihood ratio, log-derivative trick)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch.distributions import Distribution

from scg._checks import check_positive_int
from scg._dist import evaluate, parameters_of, sample_log_prob, sample_mean
from scg.baselines.base import ControlVariate, SignalContext
from scg.estimators.base import Cost, Estimator
from scg.laws import FromDistribution, Law, sample_from
from scg._log_prob import share, unshare

__all__ = ["ScoreFunction"]


class ScoreFunction(Estimator):
    r"""Score-function estimator with an optional control variate.

    .. math::
        \hat g = \frac1S \sum_{s=1}^S A_s\, ∇_θ \log q_θ(z_s) + ∇_θ f(z_s), \qquad
        A_s = f(z_s) − b_s,\; z_s \sim q_θ

    The surrogate is DiCE-form and value-preserving:
    :math:`\frac1S\sum_s [f(z_s) + (□(\log q(z_s)) − 1)\,A_s] + \text{extra}` with
    :math:`□(τ) = \exp(τ − \mathrm{stop}(τ))`, so its value is exactly the MC mean and
    its derivatives of any order are those of DiCE (unbiased second order when the
    baseline does not depend on the sample).

    Requires: ``log_prob`` differentiable in θ; any support (discrete or
    continuous); f need not be differentiable.

    Properties: unbiased (with any control variate whose ``unbiased`` is True);
    variance grows with the magnitude of f and the dimension of z; S evaluations of f.

    Args:
        baseline: a control variate from :mod:`scg.baselines` (or ``None``).

    Example:
        >>> import torch, scg
        >>> from torch.distributions import Bernoulli
        >>> _ = torch.manual_seed(0)
        >>> logits = torch.zeros(3, requires_grad=True)
        >>> est = scg.ScoreFunction(baseline=scg.baselines.LeaveOneOut())
        >>> loss = scg.expectation(lambda b: (b - 0.4) ** 2, Bernoulli(logits=logits), est, num_samples=8)
        >>> loss.sum().backward()

    References:
        Williams, "Simple statistical gradient-following algorithms for connectionist
        reinforcement learning", 1992.
        Mohamed et al., "Monte Carlo Gradient Estimation in Machine Learning", JMLR 2020, §4.
        Foerster et al., "DiCE: The Infinitely Differentiable Monte Carlo Estimator", 2018.
    """

    def __init__(self, baseline: Optional[ControlVariate] = None) -> None:
        super().__init__()
        if baseline is not None and not isinstance(baseline, ControlVariate):
            raise TypeError(
                f"`baseline` must be a control variate from scg.baselines or None; got {type(baseline).__name__}."
            )
        self.baseline = baseline
        self.unbiased = baseline is None or baseline.unbiased

    def laws(self, dist: Distribution, num_samples: int) -> dict[str, Law]:
        self._check_samples(num_samples)
        shape = (num_samples, *dist.batch_shape, *dist.event_shape)
        ref = next(iter(parameters_of(dist).values()), None)
        kw = {} if ref is None else {"dtype": ref.dtype, "device": ref.device}
        return {"z": FromDistribution(shape=shape, dist=dist, **kw)}

    def surrogate(
        self, f: Cost, dist: Distribution, draws: dict[str, Tensor], *, context: Optional[Tensor] = None
    ) -> Tensor:
        return self._surrogate(f, dist, draws["z"], context)

    def forward(
        self, f: Cost, dist: Distribution, num_samples: int = 1, *, context: Optional[Tensor] = None
    ) -> Tensor:
        # draw() then surrogate(), without building the law objects.
        self.check(dist)
        check_positive_int("num_samples", num_samples)
        self._check_samples(num_samples)
        return self._surrogate(f, dist, sample_from(dist, num_samples), context)

    def _check_samples(self, num_samples: int) -> None:
        if self.baseline is not None and num_samples < self.baseline.min_samples:
            raise ValueError(
                f"`num_samples` must be >= {self.baseline.min_samples} for "
                f"{type(self.baseline).__name__}; got {num_samples}."
            )

    def _surrogate(self, f: Cost, dist: Distribution, z: Tensor, context: Optional[Tensor]) -> Tensor:
        if z.requires_grad:  # replayed draws may be attached; the score function needs z fixed
            z = z.detach()
        log_q = sample_log_prob(dist, z)
        token = share(dist, z, log_q)  # scg.log_prob(dist, z) inside f returns log_q
        try:
            cost = evaluate(f, z, dist, z.shape[0])
        finally:
            unshare(token)
        signal, extra = cost, None
        if self.baseline is not None:
            signal, extra = self.baseline(cost, SignalContext(dist, z, log_q, f, context))
        # □(log q) − 1 as expm1(τ − stop(τ)): exactly 0 in value, the same derivatives of every
        # order (d expm1 = exp), one op fewer forward and backward than magic_box(log_q) − 1;
        # cost + (□ − 1)·signal as one fused addcmul (value: cost + 0·signal = cost exactly).
        out = sample_mean(torch.addcmul(cost, torch.expm1(log_q - log_q.detach()), signal))
        return out if extra is None else out + extra
