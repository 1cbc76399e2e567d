r"""Encoders and decoders: conditional distributions, ``forward(x) -> Distribution``.

Each module maps its input to a ``torch.distributions`` object whose batch shape is
the input's leading shape and whose event is the output vector (``Independent``),
so ``log_prob`` returns one number per input and every scg estimator applies.

References:
    Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014. https://arxiv.org/abs/1312.6114
    Rozet et al., zuko (conditional distributions as modules). https://github.com/probabilists/zuko
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Bernoulli, Distribution, Independent, Normal
from torch.nn.functional import softplus

from scg.checks import check_positive, check_positive_int

__all__ = [
    "mlp",
    "GaussianEncoder",
    "BernoulliEncoder",
    "BernoulliDecoder",
    "GaussianDecoder",
    "StandardNormalPrior",
    "BernoulliPrior",
]

_MIN_SCALE = 1e-4


def mlp(sizes: Sequence[int], activation: type[nn.Module] = nn.Tanh) -> nn.Sequential:
    """Fully connected layers ``sizes[0] -> ... -> sizes[-1]``, ``activation`` between (not after the last)."""
    if len(sizes) < 2:
        raise ValueError(f"`sizes` must have at least 2 entries (input and output); got {list(sizes)}.")
    for s in sizes:
        check_positive_int("sizes", s)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=False)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


class GaussianEncoder(nn.Module):
    r"""Diagonal Gaussian posterior :math:`q_φ(z|x) = N(μ_φ(x), \mathrm{diag}\,σ_φ(x)^2)`.

    .. math:: h = \mathrm{MLP}(x), \quad μ = W_μ h + b_μ, \quad σ = \mathrm{softplus}(W_σ h + b_σ) + 10^{-4}

    Args:
        x_dim: input size.
        z_dim: latent size.
        hidden: hidden layer sizes (``()`` for a linear encoder).
        activation: nonlinearity class.

    Returns (forward): ``Independent(Normal(loc, scale), 1)``, batch ``x.shape[:-1]``, event ``[z_dim]``.
    ``features(x)`` returns h (``[..., hidden[-1]]``, or x when linear): the context of amortised flows.
    """

    def __init__(
        self,
        x_dim: int,
        z_dim: int,
        hidden: Sequence[int] = (200, 200),
        activation: type[nn.Module] = nn.Tanh,
    ) -> None:
        super().__init__()
        check_positive_int("x_dim", x_dim)
        check_positive_int("z_dim", z_dim)
        self.z_dim = z_dim
        self.body = mlp([x_dim, *hidden], activation) if hidden else nn.Identity()
        self.act = activation() if hidden else nn.Identity()
        self.feature_dim = hidden[-1] if hidden else x_dim
        self.head = nn.Linear(self.feature_dim, 2 * z_dim)

    def features(self, x: Tensor) -> Tensor:
        return self.act(self.body(x))

    def params(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(loc, scale, features)`` for input x."""
        h = self.features(x)
        loc, pre = self.head(h).chunk(2, dim=-1)
        return loc, softplus(pre) + _MIN_SCALE, h

    def forward(self, x: Tensor) -> Distribution:
        loc, scale, _ = self.params(x)
        return Independent(Normal(loc, scale), 1)


class BernoulliEncoder(nn.Module):
    r"""Factorised Bernoulli posterior :math:`q_φ(b|x) = \prod_j \mathrm{Bern}(b_j; σ(\ell_φ(x)_j))` (SBN encoder).

    Args:
        x_dim: input size.
        z_dim: number of binary latents.
        hidden: hidden layer sizes (``()`` for the linear ``σ(xW + c)``).
        activation: nonlinearity class.
    """

    def __init__(
        self,
        x_dim: int,
        z_dim: int,
        hidden: Sequence[int] = (),
        activation: type[nn.Module] = nn.Tanh,
    ) -> None:
        super().__init__()
        self.net = mlp([x_dim, *hidden, z_dim], activation)

    def forward(self, x: Tensor) -> Distribution:
        return Independent(Bernoulli(logits=self.net(x), validate_args=False), 1)


class BernoulliDecoder(nn.Module):
    r"""Bernoulli likelihood :math:`p_θ(x|z) = \prod_i \mathrm{Bern}(x_i; σ(\ell_θ(z)_i))` (binary cross-entropy).

    ``validate_args=False`` so that ``log_prob`` also accepts intensities in [0, 1]
    (the cross-entropy of Bernoulli means) and relaxed latents upstream.

    Args:
        z_dim: latent size.
        x_dim: output size.
        hidden: hidden layer sizes (``()`` for linear).
        activation: nonlinearity class.
    """

    def __init__(
        self,
        z_dim: int,
        x_dim: int,
        hidden: Sequence[int] = (200, 200),
        activation: type[nn.Module] = nn.Tanh,
    ) -> None:
        super().__init__()
        self.net = mlp([z_dim, *hidden, x_dim], activation)

    def forward(self, z: Tensor) -> Distribution:
        return Independent(Bernoulli(logits=self.net(z), validate_args=False), 1, validate_args=False)


class GaussianDecoder(nn.Module):
    r"""Gaussian likelihood :math:`p_θ(x|z) = N(x; m_θ(z), \mathrm{diag}\,s^2)` with a learned, input-independent scale.

    With ``hidden=()`` and ``shared_scale=True`` this is probabilistic PCA's
    likelihood :math:`N(Wz + b, σ^2 I)`.

    Args:
        z_dim: latent size.
        x_dim: output size.
        hidden: hidden layer sizes.
        activation: nonlinearity class.
        shared_scale: one σ for all outputs (keyword-only); otherwise one per output.
        init_scale: initial σ > 0 (keyword-only).
    """

    def __init__(
        self,
        z_dim: int,
        x_dim: int,
        hidden: Sequence[int] = (200, 200),
        activation: type[nn.Module] = nn.Tanh,
        *,
        shared_scale: bool = True,
        init_scale: float = 1.0,
    ) -> None:
        super().__init__()
        check_positive("init_scale", init_scale)
        self.net = mlp([z_dim, *hidden, x_dim], activation)
        n = 1 if shared_scale else x_dim
        self.log_scale = nn.Parameter(torch.full((n,), float(torch.tensor(init_scale).log())))

    def forward(self, z: Tensor) -> Distribution:
        loc = self.net(z)
        return Independent(Normal(loc, self.log_scale.exp().expand_as(loc)), 1)


class StandardNormalPrior(nn.Module):
    """:math:`p(z) = N(0, I)`; ``forward(batch_shape)`` returns it with that batch shape."""

    def __init__(self, z_dim: int) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.register_buffer("zero", torch.zeros(()))
        self.register_buffer("one", torch.ones(()), persistent=False)  # state_dict keys unchanged

    def forward(self, batch_shape: Sequence[int] = ()) -> Distribution:
        # Expanded constant buffers (no allocation per call); no argument validation: the
        # parameters are these constants, valid by construction.
        shape = (*batch_shape, self.z_dim)
        return Independent(Normal(self.zero.expand(shape), self.one.expand(shape), validate_args=False), 1)


class BernoulliPrior(nn.Module):
    r"""Factorised Bernoulli prior :math:`p(b) = \prod_j \mathrm{Bern}(σ(a_j))` with learned logits a (SBN top layer)."""

    def __init__(self, z_dim: int, *, learn: bool = True) -> None:
        super().__init__()
        logits = torch.zeros(z_dim)
        if learn:
            self.logits = nn.Parameter(logits)
        else:
            self.register_buffer("logits", logits)

    def forward(self, batch_shape: Sequence[int] = ()) -> Distribution:
        return Independent(Bernoulli(logits=self.logits.expand(*batch_shape, -1), validate_args=False), 1)
