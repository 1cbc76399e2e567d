r"""Variational autoencoder trained with any scg estimator, with KL annealing.

.. math::
    \mathrm{ELBO}_β(x) = E_{q_φ(z|x)}[\log p_θ(x|z)] − β\,\mathrm{KL}(q_φ(z|x)\,‖\,p(z))
    \;\le\; \log p_θ(x) \quad (β = 1)

The expectation is handed to :func:`scg.expectation` with the model's estimator,
so the same model trains with the reparameterisation trick (``scg.Pathwise``,
the default), the score function with control variates, or measure-valued
gradients. The KL is analytic (:math:`−½\sum(1 + \log σ^2 − μ^2 − σ^2)` for a
Gaussian encoder and N(0, I) prior) or Monte Carlo,
:math:`E_q[\log q(z|x) − \log p(z)]` — the only option for flow posteriors.

References:
    Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014. https://arxiv.org/abs/1312.6114
    Rezende, Mohamed & Wierstra, "Stochastic Backpropagation and Approximate Inference in
    Deep Generative Models", ICML 2014. https://arxiv.org/abs/1401.4082
    Bowman et al., "Generating Sentences from a Continuous Space", 2016 (KL annealing).
    https://arxiv.org/abs/1511.06349
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, kl_divergence

import scg
from scg.checks import check_positive_int
from scg.models.nets import StandardNormalPrior

__all__ = ["LinearWarmup", "VAE"]

KL_MODES = ("analytic", "mc")


class LinearWarmup:
    r"""KL annealing schedule :math:`β_t = \min(1, t / T)` (T = 0: β ≡ 1).

    Args:
        steps: T, the number of optimiser steps to reach β = 1.
    """

    def __init__(self, steps: int) -> None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"`steps` must be an int >= 0; got {steps!r}.")
        self.steps = steps

    def __call__(self, step: int) -> float:
        return 1.0 if self.steps == 0 else min(1.0, max(0, step) / self.steps)

    def __repr__(self) -> str:
        return f"LinearWarmup(steps={self.steps})"


class VAE(nn.Module):
    r"""VAE :math:`p(z)\,p_θ(x|z)` with posterior :math:`q_φ(z|x)`, trained on :math:`−\mathrm{ELBO}_β`.

    Args:
        encoder: conditional distribution ``x -> q(z|x)`` (``GaussianEncoder`` or ``FlowPosterior``).
        decoder: conditional distribution ``z -> p(x|z)`` (``BernoulliDecoder`` or ``GaussianDecoder``).
        prior: module ``batch_shape -> p(z)``; default N(0, I) of the encoder's ``z_dim``.
        estimator: any scg estimator for the reconstruction expectation (default ``scg.Pathwise()``).
            It is a submodule: its state (baselines, learned control variates) trains and
            checkpoints with the model.
        kl: ``"analytic"`` or ``"mc"`` (keyword-only).
        num_samples: S, samples of z per data point in training.
        warmup: β schedule (:class:`LinearWarmup` steps, or a schedule object); default β ≡ 1.

    Example:
        >>> import torch, scg
        >>> from scg.models import VAE, GaussianEncoder, BernoulliDecoder
        >>> _ = torch.manual_seed(0)
        >>> vae = VAE(GaussianEncoder(64, 4, (32,)), BernoulliDecoder(4, 64, (32,)), warmup=100)
        >>> x = torch.bernoulli(torch.full((8, 64), 0.3))
        >>> loss = vae.loss(x, step=0)          # β = 0 at step 0
        >>> loss.backward()
        >>> vae.bound(x).shape                   # ELBO per data point (β = 1)
        torch.Size([8])
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        *,
        prior: nn.Module | None = None,
        estimator: scg.Estimator | None = None,
        kl: str = "analytic",
        num_samples: int = 1,
        warmup: int | LinearWarmup = 0,
    ) -> None:
        super().__init__()
        if kl not in KL_MODES:
            raise ValueError(f"`kl` must be one of {KL_MODES}; got {kl!r}.")
        if estimator is not None and not isinstance(estimator, scg.Estimator):
            raise TypeError(f"`estimator` must be an scg Estimator; got {type(estimator).__name__}.")
        check_positive_int("num_samples", num_samples)
        self.encoder, self.decoder = encoder, decoder
        self.prior = prior if prior is not None else StandardNormalPrior(encoder.z_dim)
        self.estimator = estimator if estimator is not None else scg.Pathwise()
        self.kl, self.num_samples = kl, num_samples
        self.warmup = warmup if isinstance(warmup, LinearWarmup) else LinearWarmup(warmup)

    def posterior(self, x: Tensor) -> Distribution:
        """:math:`q_φ(z|x)`, batch ``x.shape[:-1]``."""
        return self.encoder(x)

    def log_joint(self, x: Tensor, z: Tensor) -> Tensor:
        r""":math:`\log p(z) + \log p_θ(x|z)` for z ``[S, *batch, L]``, x ``[*batch, D]`` → ``[S, *batch]``."""
        return self.prior(z.shape[:-1]).log_prob(z) + self.decoder(z).log_prob(x)

    def _kl(self, q: Distribution) -> Tensor:
        try:
            return kl_divergence(q, self.prior(q.batch_shape))
        except NotImplementedError:
            raise ValueError(
                f'`kl` must be "mc" for a {type(q).__name__} posterior (no closed-form KL); got "analytic".'
            ) from None

    def objective(
        self,
        x: Tensor,
        *,
        beta: float = 1.0,
        num_samples: int | None = None,
        draws: dict[str, Tensor] | None = None,
    ) -> Tensor:
        r"""Surrogate of :math:`−\mathrm{ELBO}_β(x)` per data point, ``[*batch]``.

        The value is the Monte Carlo estimate (exact KL when analytic); the gradient
        is the model's estimator for the expectation plus the exact KL gradient.
        ``draws`` (from ``self.estimator.draw(self.posterior(x), S)``) replays given
        random numbers instead of drawing (common random numbers, exact tests).
        """
        S = self.num_samples if num_samples is None else num_samples
        q = self.posterior(x)

        def expect(f: Callable[[Tensor], Tensor]) -> Tensor:
            if draws is None:
                return scg.expectation(f, q, self.estimator, num_samples=S)
            return self.estimator.surrogate(f, q, draws)

        if self.kl == "analytic":
            kl = self._kl(q)

            def cost(z: Tensor) -> Tensor:
                return -self.decoder(z).log_prob(x)

            return expect(cost) + beta * kl

        def cost_mc(z: Tensor) -> Tensor:
            log_ratio = scg.log_prob(q, z) - self.prior(z.shape[:-1]).log_prob(z)
            # β log q/p − log p(x|z); at β = 1 without the multiply (the same values: −a + b == b − a)
            return (log_ratio if beta == 1.0 else beta * log_ratio) - self.decoder(z).log_prob(x)

        return expect(cost_mc)

    def loss(self, x: Tensor, *, step: int = 0) -> Tensor:
        """Scalar training loss: the batch mean of :meth:`objective` with β from the schedule at ``step``."""
        return self.objective(x, beta=self.warmup(step)).mean()

    @torch.no_grad()
    def bound(self, x: Tensor, *, num_samples: int = 1) -> Tensor:
        """ELBO estimate (β = 1) per data point, ``[*batch]``, without gradients."""
        q = self.posterior(x)
        z = q.sample((num_samples,))
        if self.kl == "analytic":
            return self.decoder(z).log_prob(x).mean(0) - self._kl(q)
        return (self.log_joint(x, z) - q.log_prob(z)).mean(0)

    @torch.no_grad()
    def log_weights(self, x: Tensor, num_samples: int) -> Tensor:
        r"""Importance log-weights :math:`\log p(x, z_k) − \log q(z_k|x)`, :math:`z_k \sim q`, ``[K, *batch]``."""
        q = self.posterior(x)
        z = q.sample((num_samples,))
        return self.log_joint(x, z) - q.log_prob(z)
