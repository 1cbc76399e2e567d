"""Gumbel-Rao: straight-through Gumbel-softmax with its noise Rao-Blackwellised given the sample."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Bernoulli, Categorical, Distribution, OneHotCategorical

from scg._checks import check_positive, check_positive_int
from scg._dist import base_of_kind
from scg.estimators.base import Estimator, Parts
from scg.estimators.relaxed import _KINDS
from scg.laws import FromDistribution, Law, StandardUniform, one_hot

__all__ = [
    "GumbelRao",
    "Discrete",
    "discrete_base",
    "hard_sample",
    "sample_law",
    "conditional_gumbel",
    "conditional_logistic",
]

#: The discrete families the relaxed estimators accept (inside ``Independent`` or not).
Discrete = Bernoulli | Categorical | OneHotCategorical


def discrete_base(dist: Distribution, name: str) -> Discrete:
    """The Bernoulli, Categorical or OneHotCategorical inside ``dist``, or a TypeError naming ``name``."""
    kind = "Bernoulli, Categorical or OneHotCategorical"
    return base_of_kind(dist, _KINDS, name, kind)[0]  # type: ignore[return-value]


def sample_law(dist: Distribution, base: Discrete, num_samples: int) -> FromDistribution:
    """The law of ``num_samples`` exact draws of ``dist`` (``[S, *batch_shape, *event_shape]``)."""
    ref = base.logits
    shape = (num_samples, *dist.batch_shape, *dist.event_shape)
    return FromDistribution(shape=shape, dist=dist, dtype=ref.dtype, device=ref.device)


def hard_sample(base: Discrete, z: Tensor) -> Tensor:
    """A draw ``z`` as floats: 0/1 for Bernoulli, one-hot ``[..., K]`` for (OneHot)Categorical."""
    dtype = base.logits.dtype
    if isinstance(base, Categorical) and not isinstance(base, OneHotCategorical):
        return one_hot(z.long(), int(base.logits.shape[-1]), dtype)
    return z.detach().to(dtype)


def conditional_gumbel(theta: Tensor, hard: Tensor, u: Tensor) -> Tensor:
    r"""Perturbed logits :math:`x = θ + g` with g Gumbel, drawn given :math:`\arg\max_i x_i = k`.

    With :math:`E_i = −\log u_i` (standard exponentials) and :math:`Z = \log\sum_i e^{θ_i}`:
    :math:`x_k = Z − \log E_k` (the maximum is Gumbel(Z), independent of its location)
    and, for :math:`i ≠ k`, :math:`x_i = −\log(e^{−x_k} + E_i e^{−θ_i})` (Gumbel(θ_i)
    truncated below :math:`x_k`), computed with ``logaddexp``.

    Args:
        theta: logits ``[..., K]`` (detached).
        hard: one-hot ``[..., K]``, the location k of the maximum.
        u: uniforms ``[..., M, K]``: M conditional draws.

    Returns:
        ``[..., M, K]``: M draws of x, each with its maximum at k.
    """
    log_e = torch.log(-torch.log(u))
    theta = theta.unsqueeze(-2)
    top = hard.unsqueeze(-2)
    x_max = (top * (theta.logsumexp(-1, keepdim=True) - log_e)).sum(-1, keepdim=True)
    rest = -torch.logaddexp(-x_max, log_e - theta)
    return torch.where(top > 0.5, x_max, rest)


def conditional_logistic(phi: Tensor, b: Tensor, v: Tensor) -> Tensor:
    r"""Logistic noise :math:`L` drawn given :math:`1[φ + L > 0] = b`: the two-class case of
    :func:`conditional_gumbel` (:math:`L = g_1 − g_0` for logits (0, φ)).

    With θ = σ(φ): :math:`v' = v(1 − θ)` for b = 0 and :math:`v' = 1 − θ(1 − v)` for
    b = 1, and :math:`L = \log v' − \log(1 − v')`, computed in log space.

    Args:
        phi: logits ``[...]`` (detached); b: the draw ``[...]``; v: uniforms ``[..., M]``.

    Returns:
        ``[..., M]``.
    """
    phi, b = phi.unsqueeze(-1), b.unsqueeze(-1)
    log_t, log_1mt = F.logsigmoid(phi), F.logsigmoid(-phi)
    log_v1 = torch.log1p(-torch.exp(log_t) * (1 - v))  # b = 1: log v'
    log_w1 = log_t + torch.log1p(-v)  #                        log(1 − v')
    log_v0 = log_1mt + torch.log(v)  # b = 0: log v'
    log_w0 = torch.log1p(-torch.exp(log_1mt) * v)  #           log(1 − v')
    one = b > 0.5
    return torch.where(one, log_v1, log_v0) - torch.where(one, log_w1, log_w0)


class GumbelRao(Estimator):
    r"""Gumbel-Rao: straight-through Gumbel-softmax with the noise integrated given the sample (biased).

    Straight-through Gumbel-softmax (ST-GS) evaluates f at :math:`D = H(θ + G)` (one-hot
    argmax, G Gumbel: an exact draw) and differentiates :math:`\mathrm{softmax}((θ + G)/τ)`.
    Gumbel-Rao replaces that relaxation by its conditional expectation given D, estimated
    with M conditional draws :math:`G^{(m)} \sim p(G \mid D)`:

    .. math::
        \hat g = \frac{∂ f(D)}{∂ D}\; \frac1M \sum_{m=1}^M
            \frac{∂}{∂θ}\, \mathrm{softmax}\big((θ + G^{(m)})/τ\big),
        \qquad D \sim \mathrm{Cat}(\mathrm{softmax}\,θ)

    — the forward value is ``D + s − stop(s)`` with s the mean of the M softmaxes, so the
    value of the surrogate is the plain MC mean of f at exact draws. G given D
    (:func:`conditional_gumbel`): the maximum is Gumbel(log Σ e^θ), the others Gumbels
    truncated below it. Bernoulli(σ(φ)) is the two-class case with logits (0, φ): the
    noise is logistic, drawn given b (:func:`conditional_logistic`), and
    :math:`s = \frac1M \sum_m σ((φ + L^{(m)})/τ)`.

    Requires: Bernoulli, Categorical or OneHotCategorical (optionally ``Independent``:
    each element has its own D and noise); f differentiable in its input, which is the
    0/1 sample (Bernoulli) or one-hot vectors ``[S, *batch, *event, K]`` (for
    ``Categorical`` f receives one-hot vectors, not indices).

    Properties: **biased** (``unbiased = False``).

    * Mean: :math:`E[\hat g] = E[\hat g_{\text{ST-GS}}]` for every M (the tower property),
      so the bias is ST-GS's at the same τ.
    * M = 1 *is* ST-GS: the pair (D, G^{(1)}) has ST-GS's joint law, and given the same
      noise the two gradients are equal.
    * Variance, decreasing in M:
      :math:`\mathrm{Var}[\hat g] = \mathrm{Var}_D(E[\hat g_1 | D]) + E_D[\mathrm{Var}(\hat g_1 | D)]/M`
      (:math:`\hat g_1` the one-draw estimate), towards the first term as M → ∞.
    * Temperature: τ changes the gradient, never the value. As τ → ∞, per draw,
      :math:`τ\hat g → \frac1K (I − \tfrac1K 11^⊤)\, ∂f/∂D` (¼ f′(b) for Bernoulli). As τ → 0
      the bias does not vanish: for Bernoulli(θ) the mean tends to
      :math:`θ(1 − θ)\, \tfrac12 (f′(0) + f′(1))`, the trapezoid rule for the exact
      :math:`θ(1 − θ)(f(1) − f(0))` (exact only for f quadratic in b).
    * Cost: S evaluations of f and one backward through f; the M conditional draws cost
      only M softmaxes per element (memory ``M·S·K`` per categorical element).

    Args:
        temperature: τ > 0 of the softmax relaxation.
        num_conditional: M ≥ 1 conditional noise draws per sample (keyword-only).

    Example:
        >>> import torch, scg
        >>> from torch.distributions import Independent, OneHotCategorical
        >>> from scg.estimators.gumbel_rao import GumbelRao
        >>> _ = torch.manual_seed(0)
        >>> logits = torch.zeros(20, 10, requires_grad=True)     # 20 latents x 10 classes
        >>> q = Independent(OneHotCategorical(logits=logits), 1)
        >>> f = lambda d: (d * torch.linspace(-1, 1, 10)).sum((-1, -2)) ** 2
        >>> scg.expectation(f, q, GumbelRao(0.5, num_conditional=16), num_samples=4).backward()
        >>> logits.grad.shape
        torch.Size([20, 10])

    References:
        Paulus, Maddison & Krause, "Rao-Blackwellizing the Straight-Through Gumbel-Softmax
        Gradient Estimator", ICLR 2021. https://arxiv.org/abs/2010.04838
        Maddison, Tarlow & Minka, "A* Sampling", NeurIPS 2014 (the maximum of Gumbels and
        its location are independent; truncated Gumbels). https://arxiv.org/abs/1411.0030
        Jang, Gu & Poole, "Categorical Reparameterization with Gumbel-Softmax", ICLR 2017.
        https://arxiv.org/abs/1611.01144
    """

    unbiased = False

    def __init__(self, temperature: float = 1.0, *, num_conditional: int = 10) -> None:
        super().__init__()
        self.temperature = check_positive("temperature", temperature)
        self.num_conditional = check_positive_int("num_conditional", num_conditional)

    def check(self, dist: Distribution) -> None:
        discrete_base(dist, "GumbelRao")

    def laws(self, dist: Distribution, num_samples: int) -> dict[str, Law]:
        base = discrete_base(dist, "GumbelRao")
        z = sample_law(dist, base, num_samples)
        shape = z.shape
        if isinstance(base, OneHotCategorical):
            shape = shape[:-1]
        shape = shape + (self.num_conditional,)
        if not isinstance(base, Bernoulli):
            shape = shape + (int(base.logits.shape[-1]),)
        return {"z": z, "u": StandardUniform(shape=shape, dtype=z.dtype, device=z.device)}

    def parts(self, dist: Distribution, draws: dict[str, Tensor], *, context: Tensor | None = None) -> Parts:
        base = discrete_base(dist, "GumbelRao")
        hard = hard_sample(base, draws["z"])
        u = draws["u"]
        logits = base.logits.expand(hard.shape)
        theta = logits.detach()
        if isinstance(base, Bernoulli):
            noise = conditional_logistic(theta, hard, u)
            soft = torch.sigmoid((logits.unsqueeze(-1) + noise) / self.temperature).mean(-1)
        else:
            noise = conditional_gumbel(theta, hard, u) - theta.unsqueeze(-2)
            soft = torch.softmax((logits.unsqueeze(-2) + noise) / self.temperature, dim=-1).mean(-2)
        return Parts(hard + (soft - soft.detach()))

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, num_conditional={self.num_conditional}, unbiased=False"
