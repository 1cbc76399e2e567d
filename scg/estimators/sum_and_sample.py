r"""Sum-and-sample (Rao-Blackwellised) estimator: the k most probable classes exactly, one sample for the rest."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Categorical, Distribution

from scg.baselines.base import (
    ControlVariate,
    SignalContext,
    check_baseline,
    cost_function,
    signal_rows,
)
from scg.baselines.delta import Delta
from scg.checks import check_positive_int
from scg.estimators.base import Cost, Estimator, Parts
from scg.estimators.unordered_set import class_log_probs, class_values
from scg.laws import FromDistribution, Law, StandardUniform

__all__ = ["SumAndSample"]


class SumAndSample(Estimator):
    r"""Sum-and-sample estimator (Rao-Blackwellised score function) for one categorical variable.

    With :math:`C_k` the k most probable classes and :math:`\tilde z` a draw from the
    other classes, :math:`\tilde z \sim q(z \mid z ∉ C_k)`,

    .. math::
        \hat g = \sum_{c ∈ C_k} ∇_θ\big[q_θ(c) f(c)\big] − b\, ∇_θ q_θ(C_k)
          + \big(1 − q_θ(C_k)\big)\Big[\big(f(\tilde z) − b\big) ∇_θ \log q_θ(\tilde z)
          + ∇_θ f(\tilde z)\Big]

    — the exact gradient of the summed part plus a score-function estimate of the rest.
    The baseline b is zero without a control variate; with one it is applied to the rows
    :math:`\hat E_s = \sum_{c ∈ C_k} q(c) f(c) + (1 − q(C_k)) f(\tilde z_s)` (each
    sample's estimate of E[f]): ``LeaveOneOut`` gives :math:`b_s = \mathrm{mean}_{j≠s} \hat E_j`,
    ``MovingAverage`` a running mean of :math:`\hat E`. The term :math:`−b ∇q(C_k)`
    keeps it unbiased: :math:`E[∇\log q(\tilde z)] = −∇q(C_k)/(1 − q(C_k)) ≠ 0`.

    Requires: ``Categorical``, ``OneHotCategorical`` or ``Bernoulli`` (a two-class
    categorical), one variable per batch element (``Independent`` products are refused);
    ``1 ≤ k < K``. f need not be differentiable. The set :math:`C_k` is a function of θ
    constant between ties, so its own derivative is zero almost everywhere.

    Properties: unbiased (with a control variate whose ``unbiased`` is True; ``Delta``
    is refused); never higher variance than the score function of one draw, and the
    variance falls with the mass :math:`q(C_k)` summed — by the factor
    :math:`(1 − q(C_k))^2` on the sampled part; for k = K − 1 it is exact.
    k + 1 evaluations of f per sample. The node's copies (:class:`scg.Parts`) are the
    k + 1 classes evaluated, the first being a draw of q (built from a uniform: class
    :math:`c_j` of :math:`C_k` when it falls in its slot of :math:`[0, q(C_k))`, else
    :math:`\tilde z`), with weights 1, 0, …, 0: the value of the surrogate is f at that
    draw (the contract's copy weights are constants; the weights :math:`q(c)`,
    :math:`1 − q(C_k)` vary with θ and enter the gradient only).

    Args:
        k: the number of most probable classes summed exactly (keyword-only).
        baseline: a control variate from :mod:`scg.baselines` (or ``None``), applied to
            the rows :math:`\hat E_s`.

    Example:
        >>> import torch, scg
        >>> from torch.distributions import Categorical
        >>> from scg.estimators.sum_and_sample import SumAndSample
        >>> _ = torch.manual_seed(0)
        >>> logits = torch.tensor([2.0, 1.0, 0.0, -1.0], requires_grad=True)
        >>> est = SumAndSample(k=2, baseline=scg.baselines.LeaveOneOut())
        >>> cost = torch.tensor([1.0, 0.0, 3.0, 2.0])
        >>> loss = scg.expectation(lambda z: cost[z], Categorical(logits=logits), est, num_samples=4)
        >>> loss.backward()

    References:
        Liu, Regier, Tripuraneni, Jordan & McAuliffe, "Rao-Blackwellized Stochastic
        Gradients for Discrete Distributions", ICML 2019. https://arxiv.org/abs/1810.04777
        Mohamed et al., "Monte Carlo Gradient Estimation in Machine Learning", JMLR 2020,
        §4 and §7. https://arxiv.org/abs/1906.10652
    """

    def __init__(self, *, k: int, baseline: ControlVariate | None = None) -> None:
        super().__init__()
        self.k = check_positive_int("k", k)
        self.baseline = check_baseline(
            baseline,
            (Delta,),
            "`baseline` must not contain Delta for SumAndSample: Delta is a Taylor expansion for Normal "
            "samples. Use Constant, MovingAverage, LeaveOneOut, Learned or Normalize.",
        )
        self.unbiased = baseline is None or baseline.unbiased

    def check(self, dist: Distribution) -> None:
        K = int(class_log_probs(dist, "SumAndSample").shape[-1])
        if self.k >= K:
            raise ValueError(
                f"`k` must be less than the number of classes K = {K} for SumAndSample (one class at "
                f"least is sampled); got k = {self.k}. Use Enumerate to sum over every class."
            )

    def evaluations(self, dist: Distribution, num_samples: int) -> int:
        return (self.k + 1) * num_samples

    def _top(self, log_all: Tensor) -> tuple[Tensor, Tensor]:
        """Indices ``[*batch, k]`` of the k most probable classes and their cumulative mass."""
        top = torch.topk(log_all.detach(), self.k, dim=-1).indices
        return top, log_all.detach().gather(-1, top).exp().cumsum(-1)

    def laws(self, dist: Distribution, num_samples: int) -> dict[str, Law]:
        self.check(dist)
        log_all = class_log_probs(dist, "SumAndSample").detach()
        batch = tuple(dist.batch_shape)
        log_all = log_all.expand(*batch, log_all.shape[-1])
        top, cum = self._top(log_all)
        rest = log_all.scatter(-1, top, -math.inf)  # the classes outside C_k
        shape = (num_samples, *batch)
        dtype, device = log_all.dtype, log_all.device
        points = cum.expand(*shape, self.k)
        return {
            "z": FromDistribution(shape=shape, dist=Categorical(logits=rest), dtype=dtype, device=device),
            "u": StandardUniform(shape=shape, points=points, dtype=dtype, device=device),
        }

    def parts(self, dist: Distribution, draws: dict[str, Tensor], *, context: Tensor | None = None) -> Parts:
        z, u = draws["z"].detach(), draws["u"].detach()  # [n, *batch]
        k = self.k
        log_all = class_log_probs(dist, "SumAndSample")
        log_all = log_all.expand(*z.shape, log_all.shape[-1])
        top, cum = self._top(log_all)  # [n, *batch, k]
        points = torch.cat([top.movedim(-1, 0), z.unsqueeze(0)])  # [k + 1, n, *batch]: C_k, then z̃
        first = (u.unsqueeze(-1) >= cum).sum(-1)  # slot of the draw of q among the points
        slot = torch.arange(k + 1, device=z.device).reshape(-1, *([1] * z.dim()))
        # copies: the draw first, then the other points in order; `back` undoes it
        order = torch.where(slot == 0, first, slot - 1 + (slot - 1 >= first).long())
        back = torch.where(slot == first, 0, torch.where(slot < first, slot + 1, slot))
        log_top = log_all.gather(-1, top)  # [n, *batch, k], attached
        log_z = log_all.gather(-1, z.unsqueeze(-1)).squeeze(-1)  # [n, *batch]
        q_top = log_top.exp()
        q0 = q_top.detach()
        rest0 = -torch.expm1(torch.logsumexp(log_top.detach(), -1))  # 1 − q(C_k)
        sample = class_values(dist, z)
        baseline = self.baseline

        def term(signal: Tensor, f: Cost | None, sample_dims: int) -> tuple[Tensor, Tensor | None]:
            fs = signal.gather(0, back.expand(signal.shape)).movedim(0, -1)  # [n, *batch, k + 1]
            fd = fs.detach()
            estimate = (q0 * fs[..., :k]).sum(-1) + rest0 * fs[..., k]  # Ê, attached to f's parameters
            b = torch.zeros_like(estimate).detach()
            extra = None
            if baseline is not None:
                rows = signal_rows(estimate, sample_dims, baseline)
                lp = log_z if sample_dims == 1 else log_z.reshape(rows.shape)
                ctx = SignalContext(dist, sample, lp, cost_function(f), context)
                new, extra = baseline(rows, ctx)
                b = (rows - new).detach().reshape(estimate.shape)
            score = ((q_top - q0) * (fd[..., :k] - b.unsqueeze(-1))).sum(-1)
            score = score + rest0 * (log_z - log_z.detach()) * (fd[..., k] - b)
            path = (estimate - estimate.detach()) - (signal[0] - signal[0].detach())
            return score + path, extra

        value = class_values(dist, points.gather(0, order))  # [k + 1, n, *batch, *event]
        copies = torch.zeros(k + 1, dtype=q0.dtype, device=q0.device)
        copies[0] = 1.0
        return Parts(value, copies=copies, term=term)

    def extra_repr(self) -> str:
        return f"k={self.k}, unbiased={self.unbiased}"
