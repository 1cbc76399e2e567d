r"""Exact enumeration: the expectation summed over the whole (small) discrete support."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Bernoulli, Categorical, Distribution, OneHotCategorical

from scg._dist import evaluate, unwrap
from scg.checks import check_positive_int
from scg.estimators._elements import event_size
from scg.estimators.base import Cost, Estimator, Parts
from scg.laws import FromDistribution, Law, one_hot

__all__ = ["Enumerate"]

_FAMILIES = (Categorical, OneHotCategorical, Bernoulli)


class Enumerate(Estimator):
    r"""The exact expectation and gradient, summed over the distribution's whole support.

    .. math::
        L = \sum_{z ∈ \mathcal Z} q_θ(z)\, f(z), \qquad
        ∇_θ L = \sum_{z ∈ \mathcal Z} \big[∇_θ q_θ(z)\, f(z) + q_θ(z)\, ∇_θ f(z)\big]

    with :math:`\mathcal Z` the support: the K classes of a ``Categorical`` or
    ``OneHotCategorical``, {0, 1} for a ``Bernoulli``, and for an ``Independent``
    product of D of them the :math:`K^D` joint configurations.

    Requires: ``Categorical``, ``OneHotCategorical`` or ``Bernoulli``, optionally
    ``Independent``; a support of at most ``max_support`` points (larger ones raise a
    ``ValueError`` that gives the size). f need not be differentiable.

    Properties: exact — no variance, no bias; |𝒵| evaluations of f per batch element
    (whatever ``num_samples``). In :func:`scg.expectation` the value is E[f] itself. As
    a :class:`scg.Graph` node, whose costs are tensors averaged with constant copy
    weights, the node's copies are one draw of q followed by the |𝒵| support points,
    with weights 1, 0, …, 0: the value is f at the draw (an unbiased estimate), the
    gradient the exact conditional gradient given the node's parents (|𝒵| + 1
    evaluations per sample). Everything downstream is computed at every support point.

    Args:
        max_support: the largest support enumerated (keyword-only, default 4096).

    Example:
        >>> import torch, scg
        >>> from torch.distributions import Bernoulli, Independent
        >>> from scg.estimators.enumerate import Enumerate
        >>> logits = torch.zeros(3, requires_grad=True)
        >>> q = Independent(Bernoulli(logits=logits), 1)   # 2³ = 8 configurations
        >>> loss = scg.expectation(lambda b: (b - 0.25).pow(2).sum(-1), q, Enumerate())
        >>> loss.backward()
        >>> round(loss.item(), 6), [round(g, 6) for g in logits.grad.tolist()]
        (0.9375, [0.125, 0.125, 0.125])

    References:
        Mohamed et al., "Monte Carlo Gradient Estimation in Machine Learning", JMLR 2020.
        https://arxiv.org/abs/1906.10652
        Liu et al., "Rao-Blackwellized Stochastic Gradients for Discrete Distributions",
        ICML 2019 (summing the support exactly is the limit of their estimator).
        https://arxiv.org/abs/1810.04777
    """

    def __init__(self, *, max_support: int = 4096) -> None:
        super().__init__()
        self.max_support = check_positive_int("max_support", max_support)

    def check(self, dist: Distribution) -> None:
        super().check(dist)
        base, _ = unwrap(dist)
        if not isinstance(base, _FAMILIES):
            raise TypeError(
                "`dist` must be Categorical, OneHotCategorical or Bernoulli (optionally Independent) for "
                f"Enumerate; got {type(base).__name__}."
            )
        size = self.support_size(dist)
        if size > self.max_support:
            K, E = _classes(base), event_size(dist)
            text = str(size) if size < 10**6 else f"about 10^{len(str(size)) - 1}"
            raise ValueError(
                f"the support of `dist` must have at most `max_support` = {self.max_support} points for "
                f"Enumerate; got {K}^{E} = {text} points ({E} variables of {K} classes). Use "
                "UnorderedSet, SumAndSample, DisARM or ScoreFunction, or raise `max_support`."
            )

    def support_size(self, dist: Distribution) -> int:
        """Number of points of the support, :math:`K^E` (an exact integer)."""
        base, _ = unwrap(dist)
        return _classes(base) ** event_size(dist)

    def evaluations(self, dist: Distribution, num_samples: int) -> int:
        return self.support_size(dist)

    def support(self, dist: Distribution) -> Tensor:
        """The support ``[|𝒵|, *batch_shape, *event_shape]``, broadcast over the batch."""
        self.check(dist)
        base, _ = unwrap(dist)
        K, E = _classes(base), event_size(dist)
        batch, event = tuple(dist.batch_shape), tuple(dist.event_shape)
        size = K**E
        logits = _logits(base)
        powers = K ** torch.arange(E - 1, -1, -1, device=logits.device)
        index = torch.arange(size, device=logits.device).unsqueeze(-1) // powers % K  # [|𝒵|, E]
        if isinstance(base, OneHotCategorical):
            points = one_hot(index, K, logits.dtype)
        elif isinstance(base, Bernoulli):
            points = index.to(logits.dtype)
        else:
            points = index
        points = points.reshape(size, *([1] * len(batch)), *event)
        return points.expand(size, *batch, *event)

    def laws(self, dist: Distribution, num_samples: int) -> dict[str, Law]:
        self.check(dist)
        base, _ = unwrap(dist)
        shape = (num_samples, *dist.batch_shape, *dist.event_shape)
        ref = _logits(base)
        return {"z": FromDistribution(shape=shape, dist=dist, dtype=ref.dtype, device=ref.device)}

    def parts(self, dist: Distribution, draws: dict[str, Tensor], *, context: Tensor | None = None) -> Parts:
        z = draws["z"].detach()  # [n, *batch, *event]
        points = self.support(dist)
        n = z.shape[0]
        q = dist.log_prob(points).exp().unsqueeze(1)  # [|𝒵|, 1, *batch], attached
        value = torch.cat([z.unsqueeze(0), points.unsqueeze(1).expand(-1, n, *points.shape[1:])])

        def term(signal: Tensor, f: Cost | None, sample_dims: int) -> tuple[Tensor, Tensor | None]:
            exact = (q * signal[1:]).sum(0)  # E[f | parents] with its exact gradient
            drawn = signal[0]
            return (exact - exact.detach()) - (drawn - drawn.detach()), None

        copies = torch.zeros(value.shape[0], dtype=q.dtype, device=q.device)
        copies[0] = 1.0
        return Parts(value, copies=copies, term=term)

    def surrogate(
        self,
        f: Cost,
        dist: Distribution,
        draws: dict[str, Tensor],
        *,
        context: Tensor | None = None,
    ) -> Tensor:
        r"""``[*batch_shape]``: :math:`\sum_z q_θ(z) f(z)` — value E[f] and gradient ∇E[f], exactly.

        The draws are not used: no estimate is random.
        """
        points = self.support(dist)
        cost = evaluate(f, points, dist, points.shape[0])  # [|𝒵|, *batch]
        return (dist.log_prob(points).exp() * cost).sum(0)

    def extra_repr(self) -> str:
        return f"max_support={self.max_support}"


def _classes(base: Distribution) -> int:
    """Classes per variable: K for a categorical, 2 for a Bernoulli."""
    return 2 if isinstance(base, Bernoulli) else int(_logits(base).shape[-1])


def _logits(base: Distribution) -> Tensor:
    """The logits of a Categorical, OneHotCategorical or Bernoulli."""
    if not isinstance(base, _FAMILIES):  # pragma: no cover - checked by the caller
        raise TypeError(
            f"`dist` must be Categorical, OneHotCategorical or Bernoulli; got {type(base).__name__}."
        )
    return base.logits
