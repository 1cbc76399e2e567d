r"""Evaluation: importance-sampled :math:`\log p(x)` and active units.

.. math::
    \log p(x) \approx \log \frac1K \sum_{k=1}^K \frac{p(x, z_k)}{q(z_k|x)}, \quad z_k \sim q(z|x)

(the K-sample IWAE bound, which tends to :math:`\log p(x)` as K grows; Burda et
al. use K = 5000). The log-weights are computed in chunks of K and combined
with a running log-sum-exp, so memory is bounded by the chunk size whatever K is.

References:
    Burda, Grosse & Salakhutdinov, "Importance Weighted Autoencoders", ICLR 2016, §5.
    https://arxiv.org/abs/1509.00519
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import Tensor

from scg.checks import check_positive, check_positive_int

__all__ = ["HasLogWeights", "log_likelihood", "active_units", "posterior_means"]


class HasLogWeights(Protocol):
    def log_weights(self, x: Tensor, num_samples: int) -> Tensor: ...


@torch.no_grad()
def log_likelihood(
    model: HasLogWeights,
    x: Tensor,
    *,
    num_samples: int = 5000,
    chunk_size: int = 500,
    batch_size: int = 100,
) -> Tensor:
    r"""Importance-sampled :math:`\log p(x)` per data point, ``[N]``.

    .. math:: \widehat{\log p}(x) = \mathrm{logsumexp}_k\,(\log w_k) − \log K

    Properties: a stochastic lower bound in expectation (Jensen), converging to
    :math:`\log p(x)` as K → ∞. Memory: ``chunk_size × batch_size`` samples at a time.

    Args:
        model: anything with ``log_weights(x, num_samples) -> [K, B]``.
        x: data ``[N, D]``.
        num_samples: K (keyword-only).
        chunk_size: samples per call to ``log_weights``.
        batch_size: data points per call.

    Returns:
        Tensor ``[N]`` of estimates (on x's device).
    """
    check_positive_int("num_samples", num_samples)
    check_positive_int("chunk_size", chunk_size)
    check_positive_int("batch_size", batch_size)
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        out = []
        for start in range(0, x.shape[0], batch_size):
            xb = x[start : start + batch_size]
            total: Tensor | None = None
            done = 0
            while done < num_samples:
                k = min(chunk_size, num_samples - done)
                lse = torch.logsumexp(model.log_weights(xb, k), dim=0)
                total = lse if total is None else torch.logaddexp(total, lse)
                done += k
            out.append(total - math.log(num_samples))
        return torch.cat(out)
    finally:
        if was_training and hasattr(model, "train"):
            model.train()


@torch.no_grad()
def posterior_means(
    encoder: torch.nn.Module, x: Tensor, *, num_samples: int = 100, batch_size: int = 500
) -> Tensor:
    r""":math:`E_{q(z|x)}[z]` per data point, ``[N, L]``: exact when the distribution has a mean, else MC."""
    check_positive_int("num_samples", num_samples)
    out = []
    for start in range(0, x.shape[0], batch_size):
        q = encoder(x[start : start + batch_size])
        try:
            m = q.mean
        except NotImplementedError:
            m = q.sample((num_samples,)).mean(0)
        out.append(m)
    return torch.cat(out)


@torch.no_grad()
def active_units(
    encoder: torch.nn.Module, x: Tensor, *, threshold: float = 0.01, num_samples: int = 100
) -> tuple[int, Tensor]:
    r"""Number of active latent units: :math:`A_u = \mathrm{Var}_x\big(E_{q(u|x)}[u]\big) > 0.01`.

    Args:
        encoder: conditional distribution ``x -> q(z|x)`` (event ``[L]``).
        x: data ``[N, D]``, N ≥ 2.
        threshold: activity threshold (Burda et al.: 0.01).
        num_samples: MC samples for posteriors without a closed-form mean (flows).

    Returns:
        ``(count, variances [L])``.
    """
    check_positive("threshold", threshold)
    if x.shape[0] < 2:
        raise ValueError(f"`x` must hold at least 2 data points (a variance over x); got {x.shape[0]}.")
    means = posterior_means(encoder, x, num_samples=num_samples)
    var = means.var(dim=0, unbiased=False)
    return int((var > threshold).sum()), var
