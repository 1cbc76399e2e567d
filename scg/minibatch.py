r"""Doubly stochastic estimation: subsample the data, scale by N/B.

For a full-data objective that is a sum of per-datum costs,

.. math:: L(θ) = E_{q_θ(z)}\Big[\sum_{i=1}^N ℓ_i(z)\Big] \;(+\ \text{terms without data}),

draw a batch :math:`\mathcal B` of B indices uniformly *without replacement* and
use

.. math:: \hat L(θ) = E_{q_θ(z)}\Big[\frac NB \sum_{i∈\mathcal B} ℓ_i(z)\Big].

Every index is in :math:`\mathcal B` with probability B/N, so
:math:`E_{\mathcal B}[\frac NB \sum_{i∈\mathcal B} ℓ_i] = \sum_i ℓ_i`. Any scg
estimator's surrogate of the inner expectation has an expected gradient equal to
the gradient of that expectation (over the Monte Carlo draw); the batch is drawn
independently of it, so the gradient of ``scale * scg.expectation(f_batch, q, ...)``
is unbiased for :math:`∇L` over *both* draws::

    idx, scale = scg.minibatch.subsample(N, B)
    loss = scale * scg.expectation(lambda w: nll(w, x[idx], y[idx]), q, estimator,
                                   num_samples=S) + kl(q, prior)

References:
    Titsias & Lázaro-Gredilla, "Doubly Stochastic Variational Bayes for non-Conjugate
    Inference", ICML 2014. https://proceedings.mlr.press/v32/titsias14.html
    Hoffman, Blei, Wang & Paisley, "Stochastic Variational Inference", JMLR 2013.
    https://jmlr.org/papers/v14/hoffman13a.html
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from scg._checks import check_positive_int

__all__ = ["subsample", "Minibatch"]


def _check(n: int, batch_size: int) -> None:
    check_positive_int("n", n)
    check_positive_int("batch_size", batch_size)
    if batch_size > n:
        raise ValueError(
            f"`batch_size` must be <= `n` = {n} (indices are drawn without replacement); got {batch_size}."
        )


def subsample(
    n: int,
    batch_size: int,
    *,
    generator: torch.Generator | None = None,
    device: str | torch.device | None = None,
) -> tuple[Tensor, float]:
    r"""Draw ``batch_size`` of ``n`` indices uniformly without replacement, and the scale N/B.

    .. math::
        \mathcal B \sim \mathrm{Uniform}\{S ⊂ \{0..N−1\} : |S| = B\}, \qquad
        E_{\mathcal B}\Big[\frac NB \sum_{i∈\mathcal B} ℓ_i\Big] = \sum_{i=0}^{N-1} ℓ_i

    Requires: 1 ≤ B ≤ N.

    Properties: every subset of size B is equally likely (a uniform random
    permutation, truncated; for N above :data:`PERMUTATION_LIMIT` and 4 B, uniform draws
    with repeats dropped, in memory O(B)); each index is included with probability B/N, so the
    scaled batch sum is unbiased for the full sum, and, composed with any unbiased
    scg estimator, the gradient is unbiased for the full-data gradient over both
    the data draw and the Monte Carlo draw (see the module docstring). B = N gives
    the full data with scale 1.

    Args:
        n: data set size N ≥ 1.
        batch_size: B, 1 ≤ B ≤ N.
        generator: optional ``torch.Generator`` (keyword-only); default the global one.
        device: device of the returned indices (keyword-only).

    Returns:
        ``(indices, scale)``: a ``long`` tensor ``[B]`` of distinct indices in
        ``[0, N)`` and the float ``N / B``.

    Example:
        >>> import torch, scg
        >>> _ = torch.manual_seed(0)
        >>> idx, scale = scg.minibatch.subsample(569, 32)
        >>> idx.shape, scale
        (torch.Size([32]), 17.78125)

    References:
        Titsias & Lázaro-Gredilla, "Doubly Stochastic Variational Bayes for non-Conjugate
        Inference", 2014. Hoffman et al., "Stochastic Variational Inference", 2013.
    """
    _check(n, batch_size)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"`generator` must be a torch.Generator or None; got {type(generator).__name__}.")
    if n <= max(PERMUTATION_LIMIT, 4 * batch_size):
        indices = torch.randperm(n, generator=generator, device=device)[:batch_size]
    else:  # n far larger than B: memory O(B), not O(N)
        indices = _distinct_draws(n, batch_size, generator, device)
    return indices, n / batch_size


#: Up to this N (or 4 B), indices are a truncated ``randperm`` (memory O(N)); above it,
#: uniform draws with duplicates rejected (memory O(B)). Both give a uniformly random
#: ordered sample without replacement.
PERMUTATION_LIMIT: int = 1 << 24


def _distinct_draws(
    n: int, b: int, generator: torch.Generator | None, device: str | torch.device | None
) -> Tensor:
    """``b`` distinct uniform draws from ``[0, n)`` in order of first appearance (iid draws, repeats dropped)."""
    kept = torch.empty(0, dtype=torch.long, device=device)
    while kept.numel() < b:
        draw = torch.randint(n, (2 * (b - kept.numel()) + 8,), generator=generator, device=device)
        both = torch.cat([kept, draw])
        _, inverse = torch.unique(both, return_inverse=True)
        first = torch.full((int(inverse.max()) + 1,), both.numel(), dtype=torch.long, device=both.device)
        first.scatter_reduce_(0, inverse, torch.arange(both.numel(), device=both.device), reduce="amin")
        kept = both[first.sort().values]
    return kept[:b]


@dataclass(frozen=True)
class Minibatch:
    """A fixed data-set size N and batch size B: ``draw()`` subsamples, ``scale`` is N/B.

    Checks the sizes once, at construction (same rules as :func:`subsample`).

    Example:
        >>> import scg
        >>> mb = scg.minibatch.Minibatch(569, 32)
        >>> idx, scale = mb.draw()
        >>> mb.scale
        17.78125
    """

    n: int
    batch_size: int

    def __post_init__(self) -> None:
        _check(self.n, self.batch_size)

    @property
    def scale(self) -> float:
        """N / B, the factor that makes a batch sum unbiased for the full sum."""
        return self.n / self.batch_size

    def draw(
        self,
        *,
        generator: torch.Generator | None = None,
        device: str | torch.device | None = None,
    ) -> tuple[Tensor, float]:
        """``(indices [B], N / B)``, as :func:`subsample`."""
        return subsample(self.n, self.batch_size, generator=generator, device=device)
