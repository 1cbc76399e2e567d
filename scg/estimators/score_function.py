"""Score-function estimator (REINFORCE, likelihood ratio, log-derivative trick)."""

from __future__ import annotations

from torch import Tensor
from torch.distributions import Distribution

from scg._dice import baseline_rows
from scg._dist import parameters_of
from scg.baselines.base import (
    ControlVariate,
    SignalContext,
    check_baseline,
    cost_function,
    signal_rows,
)
from scg.estimators.base import Cost, Estimator, Parts
from scg.laws import FromDistribution, Law

__all__ = ["ScoreFunction"]


class ScoreFunction(Estimator):
    r"""Score-function estimator with an optional control variate.

    .. math::
        \hat g = \frac1S \sum_{s=1}^S A_s\, ∇_θ \log q_θ(z_s) + ∇_θ f(z_s), \qquad
        A_s = f(z_s) − b_s,\; z_s \sim q_θ

    The surrogate is DiCE-form and value-preserving,
    :math:`\frac1S\sum_s [□(\log q(z_s))\, f(z_s) + (1 − □(\log q(z_s)))\, b_s] + \text{extra}`
    with :math:`□(τ) = \exp(τ − \mathrm{stop}(τ))`: its value is exactly the MC mean,
    and its derivatives of every order are DiCE's (unbiased second order when the
    baseline does not depend on the sample). In a :class:`scg.Graph` the same parts
    give each node the costs downstream of it as its signal.

    Requires: ``log_prob`` differentiable in θ; any support (discrete or
    continuous); f need not be differentiable.

    Properties: unbiased (with any control variate whose ``unbiased`` is True);
    variance grows with the magnitude of f and the dimension of z; S evaluations of f.

    Args:
        baseline: a control variate from :mod:`scg.baselines` (or ``None``); it is
            applied to the learning signal here and nowhere else.

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
        reinforcement learning", 1992. https://doi.org/10.1007/BF00992696
        Mohamed et al., "Monte Carlo Gradient Estimation in Machine Learning", JMLR 2020, §4.
        https://arxiv.org/abs/1906.10652
        Foerster et al., "DiCE: The Infinitely Differentiable Monte Carlo Estimator", 2018.
        https://arxiv.org/abs/1802.05098
    """

    def __init__(self, baseline: ControlVariate | None = None) -> None:
        super().__init__()
        self.baseline = check_baseline(baseline)
        self.unbiased = baseline is None or baseline.unbiased

    def laws(self, dist: Distribution, num_samples: int) -> dict[str, Law]:
        shape = (num_samples, *dist.batch_shape, *dist.event_shape)
        ref = next(iter(parameters_of(dist).values()), None)
        if ref is None:
            return {"z": FromDistribution(shape=shape, dist=dist)}
        return {"z": FromDistribution(shape=shape, dist=dist, dtype=ref.dtype, device=ref.device)}

    def parts(self, dist: Distribution, draws: dict[str, Tensor], *, context: Tensor | None = None) -> Parts:
        z = draws["z"].detach()  # replayed draws may be attached; the score function needs z fixed
        log_q = dist.log_prob(z)
        baseline = self.baseline
        if baseline is None:
            return Parts(z, log_prob=log_q)

        def term(signal: Tensor, f: Cost | None, sample_dims: int) -> tuple[Tensor, Tensor | None]:
            shape = signal.shape
            rows = signal_rows(signal, sample_dims, baseline)
            lp = log_q if sample_dims == 1 else log_q.reshape(rows.shape)
            ctx = SignalContext(dist, z, lp, cost_function(f), context)
            new, extra = baseline(rows, ctx)
            return baseline_rows(lp, (rows - new).detach()).reshape(shape), extra

        return Parts(z, log_prob=log_q, term=term)
