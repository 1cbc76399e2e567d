r"""Discrete-latent VAE (sigmoid belief network) with the estimator chosen by one argument.

.. math::
    p(b) = \prod_j \mathrm{Bern}(b_j; σ(a_j)), \quad p_θ(x|b) = \prod_i \mathrm{Bern}(x_i; σ(\ell_θ(b)_i)),
    \quad q_φ(b|x) = \prod_j \mathrm{Bern}(b_j; σ(\ell_φ(x)_j))

    \mathrm{ELBO}(x) = E_{q_φ(b|x)}[f(b)], \qquad f(b) = \log p(b) + \log p_θ(x|b) − \log q_φ(b|x)

b is binary, so the reparameterisation trick does not apply; the gradient of the
ELBO comes from the scg estimator given as ``estimator=`` (any estimator for Bernoulli
latents; :mod:`scg.estimators.registry` builds them by name, and
:meth:`DiscreteVAE.from_name` builds a model from a registry name). ``objective="vimco"``
trains the K-sample bound with VIMCO's own gradient instead (no estimator).
``linear`` networks are :math:`σ(xW + c)`; ``nonlinear`` adds two deterministic tanh
layers (200-200 in the papers).

The names the comparisons use (:data:`DISCRETE_ESTIMATORS`), with f evaluations per sample:

============== ====================================================== =======================
name           estimator                                              f evaluations / sample
============== ====================================================== =======================
moving_average ``ScoreFunction(MovingAverage())``                      1
nvil           ``ScoreFunction(chain(MovingAverage(), Learned(net),    1
               Normalize()))``, the learned baseline sees x
rloo           ``ScoreFunction(LeaveOneOut())``                        1 (S ≥ 2)
vimco          ``objective="vimco"``: the K-sample bound               1 (K ≥ 2)
disarm         ``DisARM()``                                            2
relax          ``RELAX(NeuralControlVariate(net))``                    3
gumbel_softmax ``GumbelSoftmax(temperature)`` (biased; f at relaxed b) 1
============== ====================================================== =======================

With ``evaluations=E`` every estimator gets E evaluations of f per data point per
step (S = E / cost, :func:`scg.estimators.registry.samples_for_budget`), so the
comparison is at equal cost in f.

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
from torch.distributions import Bernoulli, Independent

import scg
from scg.checks import check_positive_int
from scg.estimators import registry
from scg.models.nets import BernoulliDecoder, BernoulliEncoder, BernoulliPrior

__all__ = ["DiscreteVAE", "DISCRETE_ESTIMATORS", "OBJECTIVES", "make_estimator"]

#: Names the discrete-latent comparisons use: registry names, and ``"vimco"`` (an objective).
DISCRETE_ESTIMATORS: tuple[str, ...] = (
    "moving_average",
    "nvil",
    "rloo",
    "vimco",
    "disarm",
    "relax",
    "gumbel_softmax",
)
#: Training objectives of :class:`DiscreteVAE`.
OBJECTIVES: tuple[str, ...] = ("elbo", "vimco")


def make_estimator(name: str, *, x_dim: int, z_dim: int, temperature: float = 0.5) -> scg.Estimator:
    """The registry's estimator ``name`` sized for this model (NVIL's baseline reads x, RELAX's net b)."""
    setting = registry.Setting(event_size=z_dim, context_size=x_dim, temperature=temperature)
    return registry.build(name, setting)


class DiscreteVAE(nn.Module):
    r"""Sigmoid belief network VAE with binary latents, trained with the given estimator.

    Args:
        x_dim: data size.
        z_dim: number of binary latents (200 in the papers).
        hidden: deterministic hidden layers of encoder and decoder: ``()`` linear, ``(200, 200)`` nonlinear.
        estimator: any scg estimator for Bernoulli latents (keyword-only; default: the
            registry's ``"nvil"`` for this model). It is a submodule: its state (baselines,
            learned control variates) trains and checkpoints with the model. It receives x
            as ``context``. Must be ``None`` with ``objective="vimco"``.
        objective: ``"elbo"`` (the estimator's gradient of the ELBO) or ``"vimco"`` (the
            K-sample bound with VIMCO's gradient, K = ``evaluations``).
        evaluations: E, evaluations of f per data point per step; the estimator draws
            S with ``estimator.evaluations(q, S) == E`` (E must be reachable, and leave S at
            least the estimator's minimum: 2 for RLOO and VIMCO).

    Example:
        >>> import torch, scg
        >>> from scg.models import DiscreteVAE
        >>> _ = torch.manual_seed(0)
        >>> m = DiscreteVAE(64, 16, estimator=scg.DisARM(), evaluations=4)
        >>> m.num_samples
        2
        >>> x = torch.bernoulli(torch.full((8, 64), 0.3))
        >>> m.loss(x).backward()
    """

    def __init__(
        self,
        x_dim: int,
        z_dim: int = 200,
        hidden: Sequence[int] = (),
        *,
        estimator: scg.Estimator | None = None,
        objective: str = "elbo",
        evaluations: int = 6,
    ) -> None:
        super().__init__()
        check_positive_int("x_dim", x_dim)
        check_positive_int("z_dim", z_dim)
        check_positive_int("evaluations", evaluations)
        if objective not in OBJECTIVES:
            raise ValueError(f"`objective` must be one of {OBJECTIVES}; got {objective!r}.")
        if estimator is not None and not isinstance(estimator, scg.Estimator):
            hint = (
                f" Build one by name: DiscreteVAE.from_name({estimator!r}, ...) or "
                "scg.estimators.registry.build(name, setting)."
                if isinstance(estimator, str)
                else ""
            )
            raise TypeError(
                f"`estimator` must be an scg Estimator or None; got {type(estimator).__name__}.{hint}"
            )
        if objective == "vimco":
            if estimator is not None:
                raise ValueError(
                    "`estimator` must be None with objective='vimco' (VIMCO's gradient is its own); "
                    f"got {type(estimator).__name__}."
                )
            if evaluations < 2:
                raise ValueError(
                    f"`evaluations` must be >= 2 for objective='vimco' (K >= 2 samples); got {evaluations}."
                )
            self.num_samples = evaluations
        else:
            if estimator is None:
                estimator = make_estimator("nvil", x_dim=x_dim, z_dim=z_dim)
            template = Independent(Bernoulli(logits=torch.zeros(z_dim)), 1)
            estimator.check(template)
            self.num_samples = registry.samples_for_budget(estimator, template, evaluations)
        self.objective_name = objective
        self.estimator = estimator
        self.encoder = BernoulliEncoder(x_dim, z_dim, hidden)
        self.decoder = BernoulliDecoder(z_dim, x_dim, hidden)
        self.prior = BernoulliPrior(z_dim)
        self.z_dim = z_dim

    @classmethod
    def from_name(
        cls,
        name: str,
        x_dim: int,
        z_dim: int = 200,
        hidden: Sequence[int] = (),
        *,
        evaluations: int = 6,
        temperature: float = 0.5,
    ) -> DiscreteVAE:
        """The model trained by the registry's estimator ``name`` (``"vimco"``: the VIMCO objective).

        The estimator is built first, then the networks (the order of their initial draws).
        """
        if name == "vimco":
            return cls(x_dim, z_dim, hidden, objective="vimco", evaluations=evaluations)
        est = make_estimator(name, x_dim=x_dim, z_dim=z_dim, temperature=temperature)
        return cls(x_dim, z_dim, hidden, estimator=est, evaluations=evaluations)

    def posterior(self, x: Tensor) -> torch.distributions.Distribution:
        return self.encoder(x)

    def log_joint(self, x: Tensor, b: Tensor) -> Tensor:
        r""":math:`\log p(b) + \log p_θ(x|b)`, b ``[S, *batch, z_dim]`` (binary or relaxed) → ``[S, *batch]``."""
        return self.prior(b.shape[:-1]).log_prob(b) + self.decoder(b).log_prob(x)

    def objective(self, x: Tensor, *, draws: dict[str, Tensor] | None = None) -> Tensor:
        """Surrogate of −ELBO (−the K-sample bound for ``objective="vimco"``) per data point, ``[*batch]``.

        ``draws`` replays given random numbers: the estimator's draws
        (``self.estimator.draw(q, S)``), or ``{"z": b}`` with b ``[K, *batch, z_dim]`` for VIMCO.
        """
        q = self.posterior(x)
        if self.estimator is None:  # objective == "vimco"
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
