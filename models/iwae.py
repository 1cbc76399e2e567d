r"""Importance-weighted autoencoder: the K-sample bound with reparam, STL or DReG gradients.

.. math::
    \mathcal L_K(x) = E_{z_{1..K} \sim q(z|x)}\Big[\log \frac1K \sum_{k=1}^K \frac{p(x, z_k)}{q(z_k|x)}\Big],
    \qquad \mathrm{ELBO} = \mathcal L_1 \le \mathcal L_K \le \mathcal L_{K+1} \le \log p(x)

The model is a :class:`~scg.models.VAE` (same encoder, decoder, prior) whose training
objective is :func:`scg.objectives.iwae`; ``gradient`` picks the inference-network
gradient: ``"reparam"`` (Burda et al.), ``"stl"`` (Roeder et al.; biased for K > 1)
or ``"dreg"`` (Tucker et al.; unbiased, SNR grows with K). For STL/DReG the
posterior's log-density is evaluated through :func:`scg.stop_gradient`.

References:
    Burda, Grosse & Salakhutdinov, "Importance Weighted Autoencoders", ICLR 2016.
    https://arxiv.org/abs/1509.00519
    Roeder, Wu & Duvenaud, "Sticking the Landing", NeurIPS 2017. https://arxiv.org/abs/1703.09194
    Tucker, Lawson, Gu & Maddison, "Doubly Reparameterized Gradient Estimators for Monte Carlo
    Objectives", ICLR 2019. https://arxiv.org/abs/1810.04152
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal, TransformedDistribution

import scg
from scg.checks import check_positive_int
from scg.models.vae import VAE

__all__ = ["IWAE", "IWAE_GRADIENTS", "base_noise", "rsample_from_noise"]

IWAE_GRADIENTS = ("reparam", "stl", "dreg")


def _gaussian_base(q: Distribution) -> tuple[Normal, list]:
    transforms: list = []
    base = q
    if isinstance(base, TransformedDistribution):
        transforms = list(base.transforms)
        base = base.base_dist
    while isinstance(base, Independent):
        base = base.base_dist
    if not isinstance(base, Normal):
        raise TypeError(
            f"`q` must be a Normal (optionally Independent / inside a TransformedDistribution) for IWAE; "
            f"got {type(base).__name__}."
        )
    return base, transforms


def base_noise(q: Distribution, num_samples: int) -> Tensor:
    """Standard-normal noise ``[K, *base_shape]`` for the Gaussian base of ``q`` (``torch.randn``, out of place)."""
    base, _ = _gaussian_base(q)
    return torch.randn((num_samples, *base.loc.shape), dtype=base.loc.dtype, device=base.loc.device)


def rsample_from_noise(q: Distribution, noise: Tensor) -> Tensor:
    r"""Reparameterised sample :math:`z = f_K ∘ \dots ∘ f_1(μ + σ ε)` of a Gaussian or flow posterior."""
    base, transforms = _gaussian_base(q)
    z = base.loc + base.scale * noise
    for t in transforms:
        z = t(z)
    return z


class IWAE(VAE):
    r"""IWAE: a VAE trained on :math:`−\mathcal L_K` with ``gradient="reparam" | "stl" | "dreg"``.

    Args:
        encoder: conditional distribution ``x -> q(z|x)`` with ``rsample`` (Gaussian or flow).
        decoder: conditional distribution ``z -> p(x|z)``.
        prior: module ``batch_shape -> p(z)``; default N(0, I).
        num_samples: K ≥ 1 (K = 1 is the VAE's ELBO with a Monte Carlo KL).
        gradient: ``"reparam"``, ``"stl"`` or ``"dreg"`` (keyword-only).

    Example:
        >>> import torch
        >>> from scg.models import IWAE, GaussianEncoder, BernoulliDecoder
        >>> _ = torch.manual_seed(0)
        >>> m = IWAE(GaussianEncoder(64, 4, (32,)), BernoulliDecoder(4, 64, (32,)), num_samples=5, gradient="dreg")
        >>> x = torch.bernoulli(torch.full((8, 64), 0.3))
        >>> m.loss(x).backward()
        >>> m.bound(x).shape
        torch.Size([8])
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        *,
        prior: nn.Module | None = None,
        num_samples: int = 5,
        gradient: str = "reparam",
    ) -> None:
        check_positive_int("num_samples", num_samples)
        if gradient not in IWAE_GRADIENTS:
            raise ValueError(f"`gradient` must be one of {IWAE_GRADIENTS}; got {gradient!r}.")
        super().__init__(encoder, decoder, prior=prior, kl="mc", num_samples=num_samples)
        self.gradient = gradient

    def surrogate_bound(
        self, x: Tensor, *, num_samples: int | None = None, noise: Tensor | None = None
    ) -> Tensor:
        r"""Surrogate of :math:`\mathcal L_K(x)` per data point, ``[*batch]`` (value: the K-sample bound).

        Args:
            x: data ``[*batch, D]``.
            num_samples: K (default: the model's).
            noise: standard-normal base noise ``[K, *batch, L]`` to replay; default drawn with
                ``torch.randn`` (out of place, so the objective works under ``torch.func.vmap``).
        """
        K = self.num_samples if num_samples is None else num_samples
        q = self.posterior(x)
        z = rsample_from_noise(q, noise if noise is not None else base_noise(q, K))
        log_p = self.log_joint(x, z)
        if self.gradient == "reparam":
            return scg.objectives.iwae(log_p, q.log_prob(z))
        log_q = scg.stop_gradient(q).log_prob(z)
        return scg.objectives.iwae(log_p, log_q, gradient=self.gradient, z=z)

    def objective(
        self,
        x: Tensor,
        *,
        beta: float = 1.0,
        num_samples: int | None = None,
        noise: Tensor | None = None,
    ) -> Tensor:
        """:math:`−\\mathcal L_K(x)` per data point (``beta`` is ignored: the IWAE bound has no KL weight)."""
        return -self.surrogate_bound(x, num_samples=num_samples, noise=noise)

    @torch.no_grad()
    def bound(self, x: Tensor, *, num_samples: int = 1) -> Tensor:
        """The K-sample bound per data point (K = the model's ``num_samples``; ``num_samples`` repeats it)."""
        vals = [
            scg.objectives.log_mean_exp(self.log_weights(x, self.num_samples)) for _ in range(num_samples)
        ]
        return torch.stack(vals).mean(0)
