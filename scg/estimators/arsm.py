"""ARSM: Augment-REINFORCE-Swap-Merge for categorical latents."""

from __future__ import annotations

import itertools

import torch
from torch import Tensor
from torch.distributions import Distribution

from scg.estimators.base import Cost, Estimator, Parts
from scg.estimators.coupled import categorical_base, categorical_value
from scg.laws import Law, StandardUniform

__all__ = ["ARSM"]


def _swaps(num_classes: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """The K(K − 1)/2 transpositions as permutations ``[P, K]``, and ``copy[c, j]``: the copy holding swap c⇌j.

    Copy 0 is the true action (``copy[c, c] = 0``); copy ``1 + p`` the p-th pair c < j in
    lexicographic order.
    """
    pairs = list(itertools.combinations(range(num_classes), 2))
    perms = torch.arange(num_classes, device=device).repeat(len(pairs), 1)
    copy = torch.zeros(num_classes, num_classes, dtype=torch.long, device=device)
    for p, (c, j) in enumerate(pairs):
        perms[p, c], perms[p, j] = j, c
        copy[c, j] = copy[j, c] = 1 + p
    return perms, copy


class ARSM(Estimator):
    r"""ARSM (Augment-REINFORCE-Swap-Merge) for categorical latents :math:`z \sim \mathrm{Cat}(\mathrm{softmax}(φ))`.

    **Augment**: with :math:`π \sim \mathrm{Dir}(1_K)`, :math:`z = \arg\min_i π_i e^{−φ_i}` is a
    draw of the categorical, and REINFORCE on π gives
    :math:`∇_{φ_c} E[f] = E_π[f(z)(1 − Kπ_c)]`. **Swap**: exchanging :math:`π_c` and
    :math:`π_j` leaves the law of π unchanged, so with the *pseudo-action*
    :math:`z^{c⇌j} = \arg\min_i π^{c⇌j}_i e^{−φ_i}` every reference class j gives an
    unbiased estimate, with a baseline of zero mean. **Merge**: averaging over j,

    .. math::
        \hat g_{φ_c} = \sum_{j=1}^{K} \Big(f(z^{c⇌j}) − \frac1K \sum_{m=1}^{K} f(z^{m⇌j})\Big)
        \Big(\frac1K − π_j\Big), \qquad z^{c⇌c} = z.

    For a product of latents (``Independent``) each latent has its own π and the same
    swap c⇌j is applied to every latent at once, so one evaluation of f at the swapped
    vector serves every latent's estimate (the multivariate estimator of the paper).

    Requires: ``Categorical`` or ``OneHotCategorical`` (optionally ``Independent``)
    with K ≥ 2 classes; the estimate is the gradient w.r.t. the (normalised) logits
    and flows upstream by the chain rule (through ``dist.logits``, also when the
    distribution was built from ``probs``); f need not be differentiable. For
    ``Categorical`` f receives class indices, for ``OneHotCategorical`` one-hot vectors.

    Properties: unbiased; :math:`\sum_c \hat g_{φ_c} = 0` exactly (as for the true
    gradient); **1 + K(K − 1)/2 evaluations of f per sample** — the true action and
    every pseudo-action, all evaluated (fixed shapes, vectorised) although many
    coincide with z (a swap of two classes that are not the argmin leaves it
    unchanged). The value is f at the true action (copy weights 1, 0, …, 0). For K = 2
    it is ARM: with :math:`π_0 = u` the true action and the pseudo-action are ARM's
    pair :math:`1[u > σ(−φ)]` and :math:`1[u < σ(φ)]` for :math:`φ = φ_1 − φ_0`, and the
    estimate is ARM's :math:`(f(b^↑) − f(b^↓))(u − ½)`.

    Randomness: π is drawn as K i.i.d. Exp(1) variables :math:`−\log u_i`, normalised,
    with u declared as a :class:`~scg.laws.StandardUniform` ``[S, *batch, *latents, K]``.
    The estimate jumps where two of the values :math:`π_a e^{−φ_b}` tie — surfaces that
    are not aligned with the axes of u — so :func:`scg.testing.exact_moments` cannot
    integrate it to its tolerance; exact checks integrate over the simplex cell by cell
    instead (``tests/library/test_estimators_arm_coupled.py``).

    Example:
        >>> import torch, scg
        >>> from torch.distributions import Independent, OneHotCategorical
        >>> from scg.estimators.arsm import ARSM
        >>> logits = torch.zeros(20, 10, requires_grad=True)      # 20 latents, 10 classes
        >>> q = Independent(OneHotCategorical(logits=logits), 1)
        >>> target = torch.arange(10.0) / 10
        >>> loss = scg.expectation(lambda z: ((z * target).sum(-1) - 0.3).pow(2).sum(-1), q, ARSM())
        >>> loss.backward()

    References:
        Yin, Yue & Zhou, "ARSM: Augment-REINFORCE-Swap-Merge Estimator for Gradient
        Backpropagation Through Categorical Variables", ICML 2019. https://arxiv.org/abs/1905.01413
        Yin & Zhou, "ARM: Augment-REINFORCE-Merge Gradient for Stochastic Binary Networks",
        ICLR 2019. https://arxiv.org/abs/1807.11143
    """

    def check(self, dist: Distribution) -> None:
        categorical_base(dist, "ARSM")

    def evaluations(self, dist: Distribution, num_samples: int) -> int:
        base, _ = categorical_base(dist, "ARSM")
        K = int(base.logits.shape[-1])
        return num_samples * (1 + K * (K - 1) // 2)

    def laws(self, dist: Distribution, num_samples: int) -> dict[str, Law]:
        self.check(dist)
        base, _ = categorical_base(dist, "ARSM")
        logits = base.logits
        shape = (num_samples, *logits.shape)
        return {"u": StandardUniform(shape=shape, dtype=logits.dtype, device=logits.device)}

    def parts(self, dist: Distribution, draws: dict[str, Tensor], *, context: Tensor | None = None) -> Parts:
        base, k = categorical_base(dist, "ARSM")
        u = draws["u"]  # [n, *base_batch, K]
        K = u.shape[-1]
        logits = base.logits.expand(u.shape)
        log_e = torch.log(-torch.log(u))  # log of the Exp(1) variables; π = e / Σe
        pi = torch.softmax(log_e, dim=-1)
        perms, copy = _swaps(K, u.device)
        key = log_e - logits.detach()
        z = key.argmin(-1)  # [n, *base_batch]
        pseudo = (log_e[..., perms] - logits.detach().unsqueeze(-2)).argmin(-1)  # [n, *base_batch, P]
        actions = torch.cat([z.unsqueeze(0), pseudo.movedim(-1, 0)])  # [1 + P, n, *base_batch]
        weights = 1.0 / K - pi  # [n, *base_batch, K]: 1/K − π_j
        reinterpreted = tuple(range(-k, 0))

        def term(signal: Tensor, f: Cost | None, sample_dims: int) -> tuple[Tensor, Tensor | None]:
            F = signal.detach()[copy].movedim(0, -1).movedim(0, -1)  # [n, *batch, K (c), K (j)]: f(z^{c⇌j})
            A = F - F.mean(-2, keepdim=True)  # f(z^{c⇌j}) − mean_m f(z^{m⇌j})
            A = A.reshape(*A.shape[:-2], *([1] * k), K, K)
            g = (A * weights.unsqueeze(-2)).sum(-1)  # [n, *base_batch, K (c)]
            rows = ((logits - logits.detach()) * g).sum(-1)
            return (rows.sum(reinterpreted) if k else rows), None

        copies = (torch.arange(actions.shape[0], device=u.device) == 0).to(u.dtype)  # 1, 0, …, 0
        return Parts(categorical_value(base, actions, u.dtype), copies=copies, term=term)
