r"""Discrete-latent VAE (sigmoid belief network) with the estimator chosen by one argument.

.. math::
    p(b) = \prod_j \mathrm{Bern}(b_j; σ(a_j)), \quad p_θ(x|b) = \prod_i \mathrm{Bern}(x_i; σ(\ell_θ(b)_i)),
    \quad q_φ(b|x) = \prod_j \mathrm{Bern}(b_j; σ(\ell_φ(x)_j))

    \mathrm{ELBO}(x) = E_{q_φ(b|x)}[f(b)], \qquad f(b) = \log p(b) + \log p_θ(x|b) − \log q_φ(b|x)

b is binary, so the reparameterisation trick does not apply; the gradient of the
ELBO comes from one of the estimators below (``estimator=`` name). ``linear``
networks are :math:`σ(xW + c)`; ``nonlinear`` adds two deterministic tanh layers
(200-200 in the papers).

============ ====================================================== =======================
name         estimator                                              f evaluations / sample
============ ====================================================== =======================
reinforce    ``ScoreFunction(MovingAverage())``                      1
nvil         ``ScoreFunction(chain(MovingAverage(), Learned(net),    1
             Normalize()))``, the learned baseline sees x
rloo         ``ScoreFunction(LeaveOneOut())``                        1 (S ≥ 2)
vimco        ``scg.objectives.vimco`` on the K-sample bound          1 (K ≥ 2)
disarm       ``DisARM()``                                            2
relax        ``RELAX(NeuralControlVariate(net))``                    3
gumbel       ``GumbelSoftmax(temperature)`` (biased; f at relaxed b) 1
============ ====================================================== =======================

With ``evaluations=E`` every estimator gets E evaluations of f per data point per
step (S = E / cost), so the comparison is at equal cost in f.

References:
    Neal, "Connectionist learning of belief networks", 1992 (sigmoid belief networks).
    Mnih & Gregor, "Neural Variational Inference and Learning in Belief Networks", ICML 2014.
    Mnih & Rezende, "Variational Inference for Monte Carlo Objectives", ICML 2016.
    Kool, van Hoof & Welling, "Buy 4 REINFORCE Samples, Get a Baseline for Free!", 2019.
    Dong, Mnih & Tucker, "DisARM", NeurIPS 2020. Grathwohl et al., "Backpropagation through
    the Void", ICLR 2018. Jang, Gu & Poole, "Categorical Reparameterization with
    Gumbel-Softmax", ICLR 2017.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

import scg
from scg.checks import check_positive, check_positive_int
from scg.models.nets import BernoulliDecoder, BernoulliEncoder, BernoulliPrior, mlp

__all__ = ["DiscreteVAE", "DISCRETE_ESTIMATORS", "make_estimator"]

#: Estimator names and their cost in evaluations of f per sample.
DISCRETE_ESTIMATORS = {
    "reinforce": 1,
    "nvil": 1,
    "rloo": 1,
    "vimco": 1,
    "disarm": 2,
    "relax": 3,
    "gumbel": 1,
}


class _BaselineNet(nn.Module):
    def __init__(self, x_dim: int, hidden: int = 100) -> None:
        super().__init__()
        self.net = mlp([x_dim, hidden, 1])

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(-1)


class _RelaxNet(nn.Module):
    def __init__(self, z_dim: int, hidden: int = 100) -> None:
        super().__init__()
        self.net = mlp([z_dim, hidden, 1])

    def forward(self, z: Tensor) -> Tensor:
        return self.net(torch.sigmoid(z)).squeeze(-1)


def make_estimator(name: str, *, x_dim: int, z_dim: int, temperature: float = 0.5) -> scg.Estimator | None:
    """The scg estimator for ``name`` (``None`` for ``"vimco"``, which is an objective, not an estimator)."""
    b = scg.baselines
    if name not in DISCRETE_ESTIMATORS:
        raise ValueError(f"`estimator` must be one of {tuple(DISCRETE_ESTIMATORS)}; got {name!r}.")
    if name == "reinforce":
        return scg.ScoreFunction(baseline=b.MovingAverage())
    if name == "nvil":
        return scg.ScoreFunction(
            baseline=b.chain(b.MovingAverage(), b.Learned(_BaselineNet(x_dim)), b.Normalize())
        )
    if name == "rloo":
        return scg.ScoreFunction(baseline=b.LeaveOneOut())
    if name == "disarm":
        return scg.DisARM()
    if name == "relax":
        from scg.estimators import NeuralControlVariate

        return scg.RELAX(NeuralControlVariate(_RelaxNet(z_dim)))
    if name == "gumbel":
        return scg.GumbelSoftmax(temperature)
    return None


class DiscreteVAE(nn.Module):
    r"""Sigmoid belief network VAE with binary latents, trained by the named estimator.

    Args:
        x_dim: data size.
        z_dim: number of binary latents (200 in the papers).
        hidden: deterministic hidden layers of encoder and decoder: ``()`` linear, ``(200, 200)`` nonlinear.
        estimator: one of :data:`DISCRETE_ESTIMATORS` (keyword-only).
        evaluations: E, evaluations of f per data point per step; must be a multiple of the
            estimator's cost (and ≥ 2 for rloo/vimco).
        temperature: Gumbel-softmax temperature.

    Example:
        >>> import torch
        >>> from scg.models import DiscreteVAE
        >>> _ = torch.manual_seed(0)
        >>> m = DiscreteVAE(64, 16, estimator="disarm", evaluations=4)
        >>> x = torch.bernoulli(torch.full((8, 64), 0.3))
        >>> m.loss(x).backward()
    """

    def __init__(
        self,
        x_dim: int,
        z_dim: int = 200,
        hidden: Sequence[int] = (),
        *,
        estimator: str = "nvil",
        evaluations: int = 6,
        temperature: float = 0.5,
    ) -> None:
        super().__init__()
        check_positive_int("evaluations", evaluations)
        check_positive("temperature", temperature)
        self.estimator_name = estimator
        self.estimator = make_estimator(estimator, x_dim=x_dim, z_dim=z_dim, temperature=temperature)
        cost = DISCRETE_ESTIMATORS[estimator]
        if evaluations % cost:
            raise ValueError(
                f"`evaluations` must be a multiple of {cost} for {estimator!r}; got {evaluations}."
            )
        self.num_samples = evaluations // cost
        if estimator in ("rloo", "vimco") and self.num_samples < 2:
            raise ValueError(
                f"`evaluations` must be >= 2 for {estimator!r} (it needs S >= 2 samples); got {evaluations}."
            )
        self.encoder = BernoulliEncoder(x_dim, z_dim, hidden)
        self.decoder = BernoulliDecoder(z_dim, x_dim, hidden)
        self.prior = BernoulliPrior(z_dim)
        self.z_dim = z_dim

    def posterior(self, x: Tensor) -> torch.distributions.Distribution:
        return self.encoder(x)

    def log_joint(self, x: Tensor, b: Tensor) -> Tensor:
        r""":math:`\log p(b) + \log p_θ(x|b)`, b ``[S, *batch, z_dim]`` (binary or relaxed) → ``[S, *batch]``."""
        return self.prior(b.shape[:-1]).log_prob(b) + self.decoder(b).log_prob(x)

    def objective(self, x: Tensor, *, draws: dict[str, Tensor] | None = None) -> Tensor:
        """Surrogate of −ELBO (−VIMCO's K-sample bound for ``"vimco"``) per data point, ``[*batch]``.

        ``draws`` replays given random numbers: the estimator's draws
        (``self.estimator.draw(q, S)``), or ``{"z": b}`` with b ``[K, *batch, z_dim]`` for VIMCO.
        """
        q = self.posterior(x)
        if self.estimator is None:  # vimco
            b = q.sample((self.num_samples,)) if draws is None else draws["z"]
            return -scg.objectives.vimco(self.log_joint(x, b), q.log_prob(b))

        def cost(b: Tensor) -> Tensor:  # scg.log_prob: log q(b|x) shared with the estimator's score
            return scg.log_prob(q, b) - self.log_joint(x, b)

        if draws is not None:
            return self.estimator.surrogate(cost, q, draws, context=x)
        return scg.expectation(cost, q, self.estimator, num_samples=self.num_samples, context=x)

    def loss(self, x: Tensor, *, step: int = 0) -> Tensor:
        """Scalar training loss, the batch mean of :meth:`objective`."""
        return self.objective(x).mean()

    @torch.no_grad()
    def bound(self, x: Tensor, *, num_samples: int = 1) -> Tensor:
        """Monte Carlo ELBO per data point with exact discrete samples, ``[*batch]``."""
        return self.log_weights(x, num_samples).mean(0)

    @torch.no_grad()
    def log_weights(self, x: Tensor, num_samples: int) -> Tensor:
        r""":math:`\log p(x, b_k) − \log q(b_k|x)`, :math:`b_k \sim q`, ``[K, *batch]``."""
        q = self.posterior(x)
        b = q.sample((num_samples,))
        return self.log_joint(x, b) - q.log_prob(b)
