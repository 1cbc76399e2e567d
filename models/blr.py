r"""Bayesian logistic regression with a diagonal Gaussian posterior and doubly stochastic gradients.

.. math::
    w \sim N(0, σ_0^2 I), \quad y_i | x_i, w \sim \mathrm{Bern}(σ(x_i^\top w)), \quad
    q_λ(w) = N(μ, \mathrm{diag}\,s^2)

    −\mathrm{ELBO}(λ) = E_{q_λ}\Big[\sum_{i=1}^N −\log p(y_i | x_i, w)\Big] + \mathrm{KL}(q_λ ‖ p)
    \;≈\; \frac NB\, E_{q_λ}\Big[\sum_{i∈\mathcal B} −\log p(y_i | x_i, w)\Big] + \mathrm{KL}(q_λ ‖ p)

The data term is subsampled with :mod:`scg.minibatch` (B of N, scaled by N/B)
and its expectation handed to :func:`scg.expectation` with any estimator
(pathwise, score function with or without control variates, measure-valued);
the KL is analytic. Over both the minibatch and the Monte Carlo draw the gradient
is unbiased for the full-data ELBO gradient.

References:
    Mohamed, Rosca, Figurnov & Mnih, "Monte Carlo Gradient Estimation in Machine
    Learning", JMLR 2020, §8 (Bayesian logistic regression on breast cancer).
    https://arxiv.org/abs/1906.10652
    Titsias & Lázaro-Gredilla, "Doubly Stochastic Variational Bayes for non-Conjugate
    Inference", ICML 2014.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal, kl_divergence
from torch.nn.functional import softplus

import scg
from scg.checks import check_positive, check_positive_int

__all__ = ["BayesianLogisticRegression"]


def _inv_softplus(y: float) -> float:
    return float(torch.log(torch.expm1(torch.tensor(y, dtype=torch.float64))))


class BayesianLogisticRegression(nn.Module):
    r"""Mean-field Gaussian variational posterior over logistic-regression weights.

    Args:
        x: design matrix ``[N, D]`` (include a bias column).
        y: labels ``[N]`` in {0, 1}.
        estimator: any scg estimator applicable to a Normal (default ``scg.Pathwise()``).
        num_samples: S, weight samples per step (keyword-only).
        batch_size: B ≤ N, data points per step.
        prior_std: σ₀ > 0.
        init_std: initial posterior standard deviation (the mean starts at 0).

    Example:
        >>> import torch, scg
        >>> from scg.models import BayesianLogisticRegression
        >>> from scg.models.data import breast_cancer
        >>> _ = torch.manual_seed(0)
        >>> x, y, _, _ = breast_cancer()
        >>> m = BayesianLogisticRegression(x, y, estimator=scg.ScoreFunction(), num_samples=10)
        >>> m.objective().backward()             # one minibatch drawn with scg.minibatch
        >>> m.accuracy() >= 0.0
        True
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        *,
        estimator: scg.Estimator | None = None,
        num_samples: int = 50,
        batch_size: int = 32,
        prior_std: float = 1.0,
        init_std: float = 1.0,
    ) -> None:
        super().__init__()
        if x.dim() != 2 or y.dim() != 1 or x.shape[0] != y.shape[0]:
            raise ValueError(f"`x` must be [N, D] and `y` [N]; got {list(x.shape)} and {list(y.shape)}.")
        check_positive_int("num_samples", num_samples)
        check_positive("prior_std", prior_std)
        check_positive("init_std", init_std)
        self.register_buffer("x", x)
        self.register_buffer("y", y.to(x.dtype))
        self.minibatch = scg.minibatch.Minibatch(x.shape[0], batch_size)
        self.num_samples, self.prior_std = num_samples, float(prior_std)
        self.loc = nn.Parameter(torch.zeros(x.shape[1], dtype=x.dtype))
        self.raw_scale = nn.Parameter(torch.full((x.shape[1],), _inv_softplus(init_std), dtype=x.dtype))
        self.estimator = estimator if estimator is not None else scg.Pathwise()

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    def posterior(self) -> Distribution:
        """:math:`q_λ(w)`, event ``[D]``."""
        return Independent(Normal(self.loc, softplus(self.raw_scale)), 1)

    def prior(self) -> Distribution:
        zero = torch.zeros_like(self.loc)
        return Independent(Normal(zero, torch.full_like(zero, self.prior_std)), 1)

    def kl(self) -> Tensor:
        """Analytic :math:`\\mathrm{KL}(q_λ ‖ p)`."""
        return kl_divergence(self.posterior(), self.prior())

    @staticmethod
    def nll(w: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """Summed negative log-likelihood of the rows of (x, y) for weights w ``[S, D]`` → ``[S]``."""
        logits = w @ x.T
        return nn.functional.binary_cross_entropy_with_logits(
            logits, y.expand_as(logits), reduction="none"
        ).sum(-1)

    def objective(self, index: Tensor | None = None, *, draws: dict[str, Tensor] | None = None) -> Tensor:
        r"""Surrogate of the doubly stochastic :math:`−\mathrm{ELBO}` (a scalar).

        Args:
            index: ``[B]`` data indices; ``None`` draws B of N with :func:`scg.minibatch.subsample`.
                All N indices give the full-data objective (no subsampling noise).
            draws: replay the estimator's random numbers (``self.estimator.draw(self.posterior(), S)``).
        """
        if index is None:
            index, scale = self.minibatch.draw(device=self.x.device)
        else:
            scale = self.n / int(index.shape[0])
        xb, yb = self.x[index], self.y[index]
        q, f = self.posterior(), (lambda w: self.nll(w, xb, yb))
        if draws is None:
            data = scg.expectation(f, q, self.estimator, num_samples=self.num_samples)
        else:
            data = self.estimator.surrogate(f, q, draws)
        return scale * data + self.kl()

    def forward(self, index: Tensor | None = None) -> Tensor:
        return self.objective(index)

    def loss(self, rows: Tensor, *, step: int = 0) -> Tensor:
        """Trainer interface: ``rows`` are data indices ``[B, 1]`` (see :meth:`rows`); −ELBO surrogate / N."""
        return self.objective(rows[:, 0].long()) / self.n

    def rows(self) -> Tensor:
        """``[N, 1]`` data indices as the "data" for :func:`scg.models.fit` (the trainer shuffles and batches them)."""
        return torch.arange(self.n, dtype=self.x.dtype, device=self.x.device).unsqueeze(1)

    @torch.no_grad()
    def bound(self, rows: Tensor, *, num_samples: int = 100) -> Tensor:
        r"""Per-data-point share of the ELBO: :math:`E_q[\log p(y_i|x_i, w)] − \mathrm{KL}/N`, ``[B]``."""
        index = rows[:, 0].long()
        w = self.posterior().sample((num_samples,))
        logits = w @ self.x[index].T
        ll = -nn.functional.binary_cross_entropy_with_logits(
            logits, self.y[index].expand_as(logits), reduction="none"
        ).mean(0)
        return ll - self.kl() / self.n

    @torch.no_grad()
    def elbo(self, *, num_samples: int = 1000) -> float:
        """Full-data ELBO estimate."""
        w = self.posterior().sample((num_samples,))
        return float(-self.nll(w, self.x, self.y).mean() - self.kl())

    @torch.no_grad()
    def accuracy(self, x: Tensor | None = None, y: Tensor | None = None) -> float:
        """Accuracy of the posterior-mean classifier :math:`1[x^\\top μ > 0]` (default: the training data)."""
        x = self.x if x is None else x
        y = self.y if y is None else y
        return float(((x @ self.loc > 0).to(y.dtype) == y).to(torch.float64).mean())
