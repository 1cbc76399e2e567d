"""Coupled (antithetic) estimators for categorical latents: DisARM for categoricals."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Categorical, Distribution, OneHotCategorical

from scg._dist import base_of_kind
from scg.estimators.base import Cost, Estimator, Parts
from scg.laws import Law, StandardUniform, one_hot

__all__ = ["CategoricalDisARM"]


def categorical_base(dist: Distribution, name: str) -> tuple[Categorical | OneHotCategorical, int]:
    """The Categorical or OneHotCategorical inside ``dist`` (peeling ``Independent``) and its event rank.

    Raises ``TypeError`` naming ``name`` for other distributions and ``ValueError`` for
    fewer than 2 classes.
    """
    base, k = base_of_kind(
        dist,
        (Categorical, OneHotCategorical),
        name,
        "Categorical or OneHotCategorical",
        " Use DisARM or ARM for Bernoulli latents, ScoreFunction or MeasureValued for other"
        " discrete distributions.",
    )
    classes = int(base.logits.shape[-1])  # type: ignore[attr-defined]
    if classes < 2:
        raise ValueError(f"`dist` must have at least 2 classes for {name}; got {classes}.")
    return base, k  # type: ignore[return-value]


def categorical_value(base: Distribution, index: Tensor, dtype: torch.dtype) -> Tensor:
    """What f sees for class indices ``index``: the indices (Categorical) or one-hot vectors (OneHotCategorical)."""
    if isinstance(base, OneHotCategorical):
        return one_hot(index, int(base.logits.shape[-1]), dtype)
    return index


def _stick_breaking(logits: Tensor) -> tuple[Tensor, Tensor]:
    """Ascending order of the classes and the stick-breaking probabilities along it.

    Args:
        logits: ``[*B, K]`` (detached).

    Returns:
        ``order`` ``[*B, K]`` (class indices by ascending probability) and ``theta``
        ``[*B, K − 1]``: :math:`θ_i = π_{(i)} / \\sum_{j ≥ i} π_{(j)}`, each ≤ ½.
    """
    probs = torch.softmax(logits, dim=-1)
    sorted_probs, order = torch.sort(probs, dim=-1, stable=True)
    tail = torch.flip(torch.cumsum(torch.flip(sorted_probs, [-1]), -1), [-1])  # Σ_{j ≥ i} π_(j)
    theta = (sorted_probs[..., :-1] / tail[..., :-1]).clamp(0.0, 0.5)
    return order, theta


def _leading_zeros(b: Tensor) -> Tensor:
    """Position of the first 1 in each row of ``b`` ``[..., K − 1]`` (K − 1 when there is none)."""
    return torch.cumprod(1 - b.long(), dim=-1).sum(-1)


class CategoricalDisARM(Estimator):
    r"""DisARM for categorical latents: the importance-weighted stick-breaking coupling.

    Sort the K classes by ascending probability, :math:`π_{(1)} ≤ … ≤ π_{(K)}`, and write
    a categorical draw as the first success of K − 1 Bernoulli decisions with
    stick-breaking probabilities :math:`θ_i = π_{(i)} / \sum_{j≥i} π_{(j)}` (class
    :math:`(K)` when none succeeds). One uniform per decision,
    :math:`u \sim U(0, 1)^{K−1}`, gives the antithetic pair :math:`z` from
    :math:`b_i = 1[u_i < θ_i]` and :math:`\tilde z` from :math:`\tilde b_i = 1[1 − u_i < θ_i]`;
    both are exact draws of the categorical. The estimator re-weights the two-sample
    leave-one-out estimator by the coupling's importance weight:

    .. math::
        \hat g = \tfrac12\, w(z, \tilde z)\,\big(f(z) − f(\tilde z)\big)\,
        \big(∇_θ \log q_θ(z) − ∇_θ \log q_θ(\tilde z)\big), \qquad
        w = \frac{q(z)\, q(\tilde z)}{p(z, \tilde z)}
          = (1 − θ_m) \prod_{i<m} \frac{(1 − θ_i)^2}{1 − 2θ_i}

    for :math:`z ≠ \tilde z`, with m the earlier of the two positions (:math:`\hat g = 0`
    when :math:`z = \tilde z`); p is the pair's joint law. Since
    :math:`E_{q⊗q}[\tfrac12 (f(z) − f(z'))(∇\log q(z) − ∇\log q(z'))] = ∇E_q[f]` for two
    independent draws, :math:`E_p[w\,·] = E_{q⊗q}[·]` makes it unbiased wherever p
    covers every pair of distinct classes — which the ascending order guarantees: it
    keeps every :math:`θ_i ≤ ½` (and :math:`θ_i ≤ ⅓` for :math:`i ≤ K − 2`), so both
    decisions can fail together up to the last one and the weights stay bounded.
    For a product of latents (``Independent``) every latent's pair is drawn at once,
    f is evaluated at the two joint vectors, and latent d's estimate uses its own
    :math:`w_d` and scores; it is unbiased because the pairs of different latents are
    independent.

    Of the categorical estimators of Dong, Mnih & Tucker (2021) this is the
    importance-weighted one (their DisARM-IW): it needs no tree layout of the
    classes, works for every K, and for one latent with K = 2 it *is* DisARM: the one decision is
    :math:`b = 1[z = (1)]`, :math:`w = σ(|φ|)` with φ the logit of the smaller class, the
    score difference is ±1, and the estimate equals :class:`scg.DisARM`'s on
    ``Bernoulli(logits=α₁ − α₀)`` for the same u (the pair may come out swapped, which
    the estimate does not see). For a product of K = 2 latents the pair of each latent
    whose smaller class is class 0 comes out swapped, so the joint pair differs from
    DisARM's (both are unbiased).

    Requires: ``Categorical`` or ``OneHotCategorical`` (optionally ``Independent``) with
    K ≥ 2 classes; gradients flow through ``log_prob``, so any
    parameterisation (logits, probs, upstream networks) works; f need not be
    differentiable. For ``Categorical`` f receives class indices, for
    ``OneHotCategorical`` one-hot vectors.

    Properties: unbiased; 2 evaluations of f per sample (the value is the mean of f
    over both draws); the estimate vanishes when the pair agrees, which for peaked
    distributions is most of the time. The estimate is piecewise constant in u, with
    jumps at :math:`u_i ∈ \{θ_i, 1 − θ_i\}` — the breakpoints its law declares — so
    :func:`scg.testing.exact_moments` integrates it exactly (a grid of
    :math:`3^{K−1}` pieces per latent). The pair is the node's two copies
    (:class:`scg.Parts`, weights ½, ½): in a :class:`scg.Graph` everything downstream
    is computed for both.

    Example:
        >>> import torch, scg
        >>> from torch.distributions import Independent, OneHotCategorical
        >>> from scg.estimators.coupled import CategoricalDisARM
        >>> logits = torch.zeros(20, 10, requires_grad=True)      # 20 latents, 10 classes
        >>> q = Independent(OneHotCategorical(logits=logits), 1)
        >>> target = torch.arange(10.0) / 10
        >>> loss = scg.expectation(lambda z: ((z * target).sum(-1) - 0.3).pow(2).sum(-1), q,
        ...                        CategoricalDisARM(), num_samples=4)
        >>> loss.backward()

    References:
        Dong, Mnih & Tucker, "Coupled Gradient Estimators for Discrete Latent Variables",
        NeurIPS 2021 (importance-weighted coupled estimators, the stick-breaking coupling).
        https://arxiv.org/abs/2106.08056
        Dong, Mnih & Tucker, "DisARM: An Antithetic Gradient Estimator for Binary Latent
        Variables", NeurIPS 2020. https://arxiv.org/abs/2006.10680
        Kool, van Hoof & Welling, "Buy 4 REINFORCE Samples, Get a Baseline for Free!", 2019
        (the two-sample leave-one-out estimator). https://openreview.net/forum?id=r1lgTGL5DE
    """

    def check(self, dist: Distribution) -> None:
        categorical_base(dist, "CategoricalDisARM")

    def evaluations(self, dist: Distribution, num_samples: int) -> int:
        return 2 * num_samples

    def laws(self, dist: Distribution, num_samples: int) -> dict[str, Law]:
        self.check(dist)
        base, _ = categorical_base(dist, "CategoricalDisARM")
        logits = base.logits.detach()
        _, theta = _stick_breaking(logits)
        shape = (num_samples, *theta.shape)
        theta = theta.expand(shape)
        points = torch.stack([torch.minimum(theta, 1 - theta), torch.maximum(theta, 1 - theta)], dim=-1)
        return {"u": StandardUniform(shape=shape, dtype=logits.dtype, device=logits.device, points=points)}

    def parts(self, dist: Distribution, draws: dict[str, Tensor], *, context: Tensor | None = None) -> Parts:
        base, k = categorical_base(dist, "CategoricalDisARM")
        u = draws["u"]  # [n, *base_batch, K − 1]
        order, theta = _stick_breaking(base.logits.detach())
        order = order.expand(*u.shape[:-1], order.shape[-1])
        theta = theta.expand(u.shape)
        pos = _leading_zeros(u < theta)  # [n, *base_batch]
        pos_anti = _leading_zeros(1 - u < theta)
        z = torch.gather(order, -1, pos.unsqueeze(-1)).squeeze(-1)
        z_anti = torch.gather(order, -1, pos_anti.unsqueeze(-1)).squeeze(-1)
        # w = (1 − θ_m) Π_{i<m} (1 − θ_i)² / (1 − 2θ_i), m = min(pos, pos_anti) ≤ K − 2 when z ≠ z̃
        both_fail = torch.where(theta < 0.5, (1 - theta) ** 2 / (1 - 2 * theta).clamp_min(1e-30), 0.0)
        prefix = torch.cumprod(torch.cat([torch.ones_like(theta[..., :1]), both_fail[..., :-1]], -1), -1)
        m = torch.minimum(pos, pos_anti).clamp_max(theta.shape[-1] - 1).unsqueeze(-1)
        weight = (torch.gather(prefix, -1, m) * (1 - torch.gather(theta, -1, m))).squeeze(-1)
        weight = torch.where(z == z_anti, 0.0, weight)
        values = torch.stack([categorical_value(base, z, u.dtype), categorical_value(base, z_anti, u.dtype)])
        log_q = base.log_prob(values)  # [2, n, *base_batch], attached to the parameters
        score_gap = log_q[0] - log_q[1]
        score_gap = score_gap - score_gap.detach()  # zero in value, ∇log q(z) − ∇log q(z̃) in gradient
        reinterpreted = tuple(range(-k, 0))

        def term(signal: Tensor, f: Cost | None, sample_dims: int) -> tuple[Tensor, Tensor | None]:
            diff = 0.5 * (signal[0] - signal[1]).detach()  # [n, *batch]
            diff = diff.reshape(*diff.shape, *([1] * k))
            rows = (diff * weight) * score_gap
            return (rows.sum(reinterpreted) if k else rows), None

        copies = torch.tensor([0.5, 0.5], dtype=u.dtype, device=u.device)
        return Parts(values, copies=copies, term=term)
