"""ReinMax: a second-order (Heun's method) straight-through estimator for discrete latents."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Bernoulli, Distribution

from scg._checks import check_positive
from scg.estimators.base import Estimator, Parts
from scg.estimators.gumbel_rao import discrete_base, hard_sample, sample_law
from scg.laws import Law

__all__ = ["ReinMax"]


class ReinMax(Estimator):
    r"""ReinMax: straight-through with Heun's method instead of Euler's (biased).

    f is evaluated at an exact draw :math:`D \sim \mathrm{Cat}(π_0)`, :math:`π_0 = \mathrm{softmax}(θ)`
    (one-hot). The backward pass follows Liu et al.'s Algorithm 2:

    .. math::
        π_1 = \tfrac12\big(D + \mathrm{softmax}(θ/τ)\big), \qquad
        π_2 = 2\,\mathrm{softmax}\big(\mathrm{stop}(\ln π_1 − θ) + θ\big) − \tfrac12 π_0, \qquad
        \text{value } D + π_2 − \mathrm{stop}(π_2)

    so that, with :math:`J(π) = \mathrm{diag}(π) − ππ^⊤` (the softmax Jacobian at π),

    .. math::
        \hat g = \big(2 J(π_1) − \tfrac12 J(π_0)\big)\, ∂f(D)/∂D .

    Straight-through (:class:`scg.StraightThrough`, :math:`J(π_0)\, ∂f/∂D`) is the forward
    Euler step of :math:`f(D) − f(D')` along the segment between one-hot points; ReinMax is
    Heun's (trapezoidal) step, exact for quadratic f. Bernoulli(σ(φ)) is the two-class case
    with logits (0, φ): :math:`p_1 = \tfrac12(b + σ(φ/τ))`,
    :math:`\hat g = (2 p_1(1 − p_1) − \tfrac12 p_0(1 − p_0))\, f'(b)`.

    Temperature, as in the authors' reference code: τ enters only :math:`π_1`; D is always
    drawn from :math:`\mathrm{softmax}(θ)` itself, so the value (the MC mean of f at exact
    draws) does not depend on τ. τ must be at least 1 (the reference code refuses τ < 1:
    ReinMax is meant for τ ≥ 1, unlike Gumbel-softmax). As τ → ∞,
    :math:`\mathrm{softmax}(θ/τ)` tends to the uniform vector.

    Requires: Bernoulli, Categorical or OneHotCategorical (optionally ``Independent``: each
    element has its own D); f differentiable in its input (for ``Categorical`` f receives
    one-hot vectors ``[S, *batch, *event, K]``, not indices).

    Properties: **biased** (``unbiased = False``). Derived from the formula above for one
    categorical, by enumeration over D:

    * τ = 1: :math:`E[\hat g] = ∇_θ E[f]` exactly for every f quadratic in D (in particular
      linear, :math:`f = w·D`), where straight-through is exact for linear f only; the
      per-draw estimate still varies with D (nonzero variance, even for linear f).
    * linear f, any τ, with :math:`π_τ = \mathrm{softmax}(θ/τ)`:
      :math:`E[\hat g] = \big(\mathrm{diag}(π_τ) − \tfrac12(π_0π_τ^⊤ + π_τπ_0^⊤ + π_τπ_τ^⊤ − π_0π_0^⊤)\big) w`,
      which equals the exact :math:`J(π_0)\, w` at τ = 1 (:math:`π_τ = π_0`) and in general
      not for τ > 1.

    S evaluations of f and one backward through f, as straight-through.

    Args:
        temperature: τ ≥ 1.

    Example:
        >>> import torch, scg
        >>> from torch.distributions import Independent, OneHotCategorical
        >>> from scg.estimators.reinmax import ReinMax
        >>> _ = torch.manual_seed(0)
        >>> logits = torch.zeros(20, 10, requires_grad=True)     # 20 latents x 10 classes
        >>> q = Independent(OneHotCategorical(logits=logits), 1)
        >>> f = lambda d: (d * torch.linspace(-1, 1, 10)).sum((-1, -2)) ** 2
        >>> scg.expectation(f, q, ReinMax(1.0), num_samples=4).backward()
        >>> logits.grad.shape
        torch.Size([20, 10])

    References:
        Liu, Dong, Liu, Yu & Gao, "Bridging Discrete and Backpropagation: Straight-Through
        and Beyond", NeurIPS 2023 (Algorithm 2; reference code https://github.com/microsoft/ReinMax).
        https://arxiv.org/abs/2304.08612
        Bengio, Léonard & Courville, "Estimating or Propagating Gradients Through Stochastic
        Neurons for Conditional Computation", 2013. https://arxiv.org/abs/1308.3432
    """

    unbiased = False

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        tau = check_positive("temperature", temperature)
        if tau < 1:
            raise ValueError(
                f"`temperature` must be >= 1 for ReinMax (its authors' reference code refuses τ < 1: "
                f"ReinMax is meant for τ ≥ 1, unlike Gumbel-softmax); got {temperature}."
            )
        self.temperature = tau

    def check(self, dist: Distribution) -> None:
        discrete_base(dist, "ReinMax")

    def laws(self, dist: Distribution, num_samples: int) -> dict[str, Law]:
        return {"z": sample_law(dist, discrete_base(dist, "ReinMax"), num_samples)}

    def parts(self, dist: Distribution, draws: dict[str, Tensor], *, context: Tensor | None = None) -> Parts:
        base = discrete_base(dist, "ReinMax")
        hard = hard_sample(base, draws["z"])
        theta = base.logits.expand(hard.shape)
        tau = self.temperature
        if isinstance(base, Bernoulli):
            p0 = torch.sigmoid(theta)
            p1 = 0.5 * (hard + torch.sigmoid(theta / tau))
            logit_p1 = torch.log(p1) - torch.log1p(-p1)
            p1 = torch.sigmoid((logit_p1 - theta).detach() + theta)
        else:
            p0 = torch.softmax(theta, dim=-1)
            p1 = 0.5 * (hard + torch.softmax(theta / tau, dim=-1))
            p1 = torch.softmax((torch.log(p1) - theta).detach() + theta, dim=-1)
        p2 = 2 * p1 - 0.5 * p0
        return Parts(hard + (p2 - p2.detach()))

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, unbiased=False"
