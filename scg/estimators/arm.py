"""ARM: Augment-REINFORCE-Merge for Bernoulli latents."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Distribution

from scg.estimators.base import Cost, Estimator, Parts
from scg.estimators.disarm import bernoulli_base, pair_uniform
from scg.laws import Law

__all__ = ["ARM"]


class ARM(Estimator):
    r"""ARM (Augment-REINFORCE-Merge) for Bernoulli latents :math:`b_d \sim \mathrm{Bern}(σ(φ_d))`.

    With :math:`u \sim U(0, 1)^D` and the antithetic pair
    :math:`b^↑ = 1[u > σ(−φ)]`, :math:`b^↓ = 1[u < σ(φ)]` (both Bernoulli(σ(φ)) draws),

    .. math::
        \hat g_{φ_d} = \big(f(b^↑) − f(b^↓)\big)\,(u_d − ½).

    Requires: Bernoulli (optionally ``Independent``); gradients are taken w.r.t. the
    logits φ (and flow upstream by the chain rule); f need not be differentiable.

    Properties: unbiased; 2 evaluations of f per sample (the value is the mean of f
    over both draws of the pair). :class:`scg.DisARM` is this estimator with u
    integrated out given the pair, so its variance is never higher. For one unit
    with :math:`Δ = f(1) − f(0)` and :math:`θ = σ(φ)`, :math:`t = \min(θ, 1 − θ)`, the
    pair differs exactly when u lies within t of 0 or 1, where the estimate is
    :math:`±Δ(u − ½)`, so one draw has

    .. math::
        E[\hat g^2] = Δ^2 \big(\tfrac1{12} − \tfrac{(1 − 2t)^3}{12}\big), \qquad
        \mathrm{Var}[\hat g] = E[\hat g^2] − \big(Δ\,θ(1 − θ)\big)^2,

    which is :math:`Δ^2/48` at φ = 0. The law of u carries the breakpoints σ(±φ) where
    the integrand jumps (it is linear in u between them), so
    :func:`scg.testing.exact_moments` integrates it exactly. The pair is the node's
    two copies (:class:`scg.Parts`, weights ½, ½), so in a :class:`scg.Graph`
    everything downstream is computed for both.

    Example:
        >>> import torch, scg
        >>> from torch.distributions import Bernoulli, Independent
        >>> from scg.estimators.arm import ARM
        >>> logits = torch.zeros(4, requires_grad=True)
        >>> q = Independent(Bernoulli(logits=logits), 1)
        >>> loss = scg.expectation(lambda b: (b - 0.45).pow(2).sum(-1), q, ARM(), num_samples=8)
        >>> loss.backward()

    References:
        Yin & Zhou, "ARM: Augment-REINFORCE-Merge Gradient for Stochastic Binary Networks",
        ICLR 2019. https://arxiv.org/abs/1807.11143
        Dong, Mnih & Tucker, "DisARM: An Antithetic Gradient Estimator for Binary Latent
        Variables", NeurIPS 2020 (ARM's variance next to DisARM's). https://arxiv.org/abs/2006.10680
    """

    def check(self, dist: Distribution) -> None:
        bernoulli_base(dist, "ARM")

    def evaluations(self, dist: Distribution, num_samples: int) -> int:
        return 2 * num_samples

    def laws(self, dist: Distribution, num_samples: int) -> dict[str, Law]:
        return {"u": pair_uniform(dist, num_samples, "ARM")}

    def parts(self, dist: Distribution, draws: dict[str, Tensor], *, context: Tensor | None = None) -> Parts:
        base, _ = bernoulli_base(dist, "ARM")
        u = draws["u"]
        event_dims = tuple(range(-len(dist.event_shape), 0))
        phi = base.logits.expand(u.shape[1:])
        theta = torch.sigmoid(phi.detach())
        b_up = (u > 1 - theta).to(u.dtype)  # 1[u > σ(−φ)]
        b_down = (u < theta).to(u.dtype)  # 1[u < σ(φ)]
        centred = u - 0.5

        def term(signal: Tensor, f: Cost | None, sample_dims: int) -> tuple[Tensor, Tensor | None]:
            diff = (signal[0] - signal[1]).detach()  # [n, *batch]
            diff = diff.reshape(*diff.shape, *([1] * len(event_dims)))
            rows = (phi - phi.detach()) * (diff * centred)
            return (rows.sum(event_dims) if event_dims else rows), None

        copies = torch.tensor([0.5, 0.5], dtype=u.dtype, device=u.device)
        return Parts(torch.stack([b_up, b_down]), copies=copies, term=term)
