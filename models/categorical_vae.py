r"""Categorical VAE: D latents of K classes, uniform prior, Bernoulli decoder, any categorical estimator.

.. math::
    p(z) = \prod_{d=1}^D \mathrm{Cat}(z_d; \tfrac1K 1_K), \qquad
    p_θ(x|z) = \prod_i \mathrm{Bern}(x_i; σ(\ell_θ(z)_i)), \qquad
    q_φ(z|x) = \prod_{d=1}^D \mathrm{Cat}(z_d; \mathrm{softmax}(\ell_φ(x)_d))

    \mathrm{ELBO}(x) = E_{q_φ(z|x)}[\log p_θ(x|z)] − \mathrm{KL}(q_φ(z|x)\,‖\,p(z)),
    \qquad \mathrm{KL} = \sum_d \sum_k π_{dk} \log(K π_{dk})

(the setup of Jang, Gu & Poole 2017, §4.3: one-hot latents ``[D, K]`` flattened into the
decoder's input). The KL is analytic, so its gradient is exact; the gradient of the
reconstruction term comes from the model's estimator, which sees
``Independent(OneHotCategorical(logits=[B, D, K]), 1)`` and the cost
:math:`f(z) = −\log p_θ(x|z)`. Relaxed estimators (Gumbel-softmax) evaluate the decoder at
relaxed one-hot vectors; the others at exact draws.

:data:`CATEGORICAL_ESTIMATORS` names every estimator of scg that applies to this
posterior, with its cost in evaluations of f per sample for D × K latents;
:func:`samples_for_budget` gives each the largest number of samples S within a budget of
E evaluations per data point, so a comparison is at equal cost in decoder evaluations.
``UnorderedSet`` and ``SumAndSample`` draw sets from one categorical variable and refuse an
``Independent`` product of D of them (sampling without replacement from the joint needs a
stochastic beam search), so they are not in the table.

References:
    Jang, Gu & Poole, "Categorical Reparameterization with Gumbel-Softmax", ICLR 2017, §4.3.
    https://arxiv.org/abs/1611.01144
    Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014. https://arxiv.org/abs/1312.6114
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, OneHotCategorical

import scg
from scg.checks import check_positive, check_positive_int
from scg.models.nets import BernoulliDecoder, mlp

__all__ = [
    "CategoricalEncoder",
    "CategoricalVAE",
    "CATEGORICAL_ESTIMATORS",
    "categorical_estimator",
    "samples_for_budget",
]


#: Estimator names (for :func:`categorical_estimator`), in table order.
CATEGORICAL_ESTIMATORS: tuple[str, ...] = (
    "reinforce",
    "nvil",
    "rloo",
    "gumbel-softmax",
    "st-gumbel-softmax",
    "straight-through",
    "gumbel-rao",
    "reinmax",
    "disarm",
    "arsm",
    "relax",
    "indecater",
    "measure-valued",
)


class _BaselineNet(nn.Module):
    """NVIL's input-dependent baseline b(x)."""

    def __init__(self, x_dim: int, hidden: int = 100) -> None:
        super().__init__()
        self.net = mlp([x_dim, hidden, 1])

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(-1)


def categorical_estimator(
    name: str, *, x_dim: int, temperature: float = 0.5, num_conditional: int = 10
) -> scg.Estimator:
    """The scg estimator called ``name`` in :data:`CATEGORICAL_ESTIMATORS`.

    ====================== ==================================================================
    name                   estimator
    ====================== ==================================================================
    reinforce              ``ScoreFunction(baseline=MovingAverage())``
    nvil                   ``ScoreFunction(baseline=chain(MovingAverage(), Learned(b(x)), Normalize()))``
    rloo                   ``ScoreFunction(baseline=LeaveOneOut())`` (S ≥ 2)
    gumbel-softmax         ``GumbelSoftmax(τ)`` (biased; decoder at relaxed z)
    st-gumbel-softmax      ``GumbelSoftmax(τ, hard=True)`` (biased)
    straight-through       ``StraightThrough()`` (biased)
    gumbel-rao             ``GumbelRao(τ, num_conditional=M)`` (biased)
    reinmax                ``ReinMax(max(1, 2τ))`` (biased; ReinMax needs τ ≥ 1)
    disarm                 ``CategoricalDisARM()``
    arsm                   ``ARSM()``
    relax                  ``RELAX()`` (REBAR's control variate, learned)
    indecater              ``IndeCateR()``
    measure-valued         ``MeasureValued()``
    ====================== ==================================================================

    Args:
        name: one of :data:`CATEGORICAL_ESTIMATORS`.
        x_dim: data size (NVIL's baseline network reads x).
        temperature: τ of the Gumbel-softmax family (keyword-only).
        num_conditional: M, Gumbel-Rao's conditional draws (keyword-only).
    """
    if name not in CATEGORICAL_ESTIMATORS:
        raise ValueError(f"`estimator` must be one of {CATEGORICAL_ESTIMATORS}; got {name!r}.")
    check_positive_int("x_dim", x_dim)
    check_positive("temperature", temperature)
    check_positive_int("num_conditional", num_conditional)
    b = scg.baselines
    makers: dict[str, Callable[[], scg.Estimator]] = {
        "reinforce": lambda: scg.ScoreFunction(baseline=b.MovingAverage()),
        "nvil": lambda: scg.ScoreFunction(
            baseline=b.chain(b.MovingAverage(), b.Learned(_BaselineNet(x_dim)), b.Normalize())
        ),
        "rloo": lambda: scg.ScoreFunction(baseline=b.LeaveOneOut()),
        "gumbel-softmax": lambda: scg.GumbelSoftmax(temperature),
        "st-gumbel-softmax": lambda: scg.GumbelSoftmax(temperature, hard=True),
        "straight-through": lambda: scg.StraightThrough(),
        "gumbel-rao": lambda: scg.GumbelRao(temperature, num_conditional=num_conditional),
        "reinmax": lambda: scg.ReinMax(max(1.0, 2.0 * temperature)),
        "disarm": lambda: scg.CategoricalDisARM(),
        "arsm": lambda: scg.ARSM(),
        "relax": lambda: scg.RELAX(),
        "indecater": lambda: scg.IndeCateR(),
        "measure-valued": lambda: scg.MeasureValued(),
    }
    return makers[name]()


def samples_for_budget(estimator: scg.Estimator, dist: Distribution, evaluations: int) -> int:
    """The largest S with ``estimator.evaluations(dist, S) <= evaluations`` (every cost is linear in S).

    Raises:
        ValueError: the budget is below the cost of one sample.
    """
    check_positive_int("evaluations", evaluations)
    per = estimator.evaluations(dist, 1)
    if per > evaluations:
        raise ValueError(
            f"`evaluations` must be at least {per} (one sample of {type(estimator).__name__}); "
            f"got {evaluations}."
        )
    return evaluations // per


class CategoricalEncoder(nn.Module):
    r"""Posterior :math:`q_φ(z|x) = \prod_d \mathrm{Cat}(z_d; \mathrm{softmax}(\ell_φ(x)_d))` over one-hot z.

    Args:
        x_dim: input size.
        latents: D, number of categorical latents.
        classes: K, classes per latent (≥ 2).
        hidden: hidden layer sizes of the MLP (``()`` for linear).
        activation: nonlinearity class.

    Returns (forward): ``Independent(OneHotCategorical(logits=[*batch, D, K]), 1)``, event ``[D, K]``.
    """

    def __init__(
        self,
        x_dim: int,
        latents: int,
        classes: int,
        hidden: Sequence[int] = (256, 128),
        activation: type[nn.Module] = nn.Tanh,
    ) -> None:
        super().__init__()
        check_positive_int("x_dim", x_dim)
        check_positive_int("latents", latents)
        if isinstance(classes, bool) or not isinstance(classes, int) or classes < 2:
            raise ValueError(f"`classes` must be an int >= 2; got {classes!r}.")
        self.latents, self.classes = latents, classes
        self.net = mlp([x_dim, *hidden, latents * classes], activation)

    def forward(self, x: Tensor) -> Distribution:
        logits = self.net(x).unflatten(-1, (self.latents, self.classes))
        return Independent(OneHotCategorical(logits=logits, validate_args=False), 1)


class CategoricalVAE(nn.Module):
    r"""Categorical VAE with D × K one-hot latents and a uniform prior, trained on −ELBO.

    Args:
        x_dim: data size (64 for 8×8 digits, 784 for MNIST).
        latents: D (keyword-only, like the rest).
        classes: K.
        hidden: encoder hidden sizes; the decoder uses them reversed.
        estimator: an scg estimator for the reconstruction expectation (default
            ``ScoreFunction(baseline=LeaveOneOut())``, which needs ``num_samples >= 2``).
            A submodule: its state trains and checkpoints with the model.
        num_samples: S, samples of z per data point per step.

    Example:
        >>> import torch, scg
        >>> from scg.models.categorical_vae import CategoricalVAE
        >>> _ = torch.manual_seed(0)
        >>> m = CategoricalVAE(64, latents=8, classes=4, estimator=scg.IndeCateR(), num_samples=1)
        >>> x = torch.bernoulli(torch.full((5, 64), 0.3))
        >>> m.loss(x).backward()
        >>> m.bound(x).shape
        torch.Size([5])
    """

    def __init__(
        self,
        x_dim: int,
        *,
        latents: int = 8,
        classes: int = 4,
        hidden: Sequence[int] = (256, 128),
        estimator: scg.Estimator | None = None,
        num_samples: int = 2,
    ) -> None:
        super().__init__()
        if estimator is not None and not isinstance(estimator, scg.Estimator):
            raise TypeError(f"`estimator` must be an scg Estimator; got {type(estimator).__name__}.")
        check_positive_int("num_samples", num_samples)
        self.encoder = CategoricalEncoder(x_dim, latents, classes, hidden)
        self.decoder = BernoulliDecoder(latents * classes, x_dim, tuple(hidden)[::-1])
        self.estimator = (
            estimator if estimator is not None else scg.ScoreFunction(baseline=scg.baselines.LeaveOneOut())
        )
        self.latents, self.classes, self.num_samples = latents, classes, num_samples

    def posterior(self, x: Tensor) -> Distribution:
        """:math:`q_φ(z|x)`, batch ``x.shape[:-1]``, event ``[D, K]``."""
        return self.encoder(x)

    def log_likelihood_given(self, x: Tensor, z: Tensor) -> Tensor:
        r""":math:`\log p_θ(x|z)` for z ``[S, *batch, D, K]`` (one-hot or relaxed) → ``[S, *batch]``."""
        return self.decoder(z.flatten(-2)).log_prob(x)

    def log_prior(self, z: Tensor) -> Tensor:
        r""":math:`\log p(z) = −D \log K` for one-hot z ``[S, *batch, D, K]`` → ``[S, *batch]``."""
        return z.new_full(z.shape[:-2], -self.latents * math.log(self.classes))

    def kl(self, q: Distribution) -> Tensor:
        r"""Analytic :math:`\mathrm{KL}(q\,‖\,p) = \sum_d \sum_k π_{dk} \log(K π_{dk})`, ``[*batch]``."""
        base = q.base_dist  # type: ignore[attr-defined]
        log_pi = torch.log_softmax(base.logits, dim=-1)
        return (log_pi.exp() * (log_pi + math.log(self.classes))).sum((-2, -1))

    def objective(
        self,
        x: Tensor,
        *,
        num_samples: int | None = None,
        draws: dict[str, Tensor] | None = None,
    ) -> Tensor:
        r"""Surrogate of :math:`−\mathrm{ELBO}(x)` per data point, ``[*batch]``.

        Value: the Monte Carlo reconstruction term plus the exact KL; gradient: the
        estimator's for the reconstruction term plus the exact KL gradient. ``draws``
        (from ``self.estimator.draw(self.posterior(x), S)``) replays given random numbers.
        """
        S = self.num_samples if num_samples is None else num_samples
        q = self.posterior(x)

        def cost(z: Tensor) -> Tensor:
            return -self.log_likelihood_given(x, z)

        if draws is not None:
            rec = self.estimator.surrogate(cost, q, draws, context=x)
        else:
            rec = scg.expectation(cost, q, self.estimator, num_samples=S, context=x)
        return rec + self.kl(q)

    def loss(self, x: Tensor, *, step: int = 0) -> Tensor:
        """Scalar training loss: the batch mean of :meth:`objective`."""
        return self.objective(x).mean()

    @torch.no_grad()
    def bound(self, x: Tensor, *, num_samples: int = 1) -> Tensor:
        """ELBO estimate per data point with exact draws and the analytic KL, ``[*batch]``."""
        q = self.posterior(x)
        z = q.sample((num_samples,))
        return self.log_likelihood_given(x, z).mean(0) - self.kl(q)

    @torch.no_grad()
    def log_weights(self, x: Tensor, num_samples: int) -> Tensor:
        r"""Importance log-weights :math:`\log p(z_k) + \log p_θ(x|z_k) − \log q(z_k|x)`, ``[K, *batch]``."""
        q = self.posterior(x)
        z = q.sample((num_samples,))
        return self.log_prior(z) + self.log_likelihood_given(x, z) - q.log_prob(z)
