"""Biased relaxations: Gumbel-softmax (Concrete) and straight-through."""

from __future__ import annotations

from typing import TypeAlias, cast

import torch
from torch import Tensor
from torch.distributions import Bernoulli, Categorical, Distribution, OneHotCategorical

from scg._checks import check_positive
from scg._dist import base_of_kind
from scg.estimators.base import Estimator, Parts
from scg.laws import Law, StandardUniform, one_hot

__all__ = ["GumbelSoftmax", "StraightThrough"]

_KINDS = (Bernoulli, Categorical, OneHotCategorical)
_Discrete: TypeAlias = Bernoulli | Categorical | OneHotCategorical


def _discrete_base(dist: Distribution, name: str) -> _Discrete:
    base = base_of_kind(dist, _KINDS, name, "Bernoulli, Categorical or OneHotCategorical")[0]
    return cast(_Discrete, base)  # base_of_kind refused any other kind


def _noise_shape(dist: Distribution, base: Distribution, num_samples: int) -> tuple[int, ...]:
    shape = (num_samples, *dist.batch_shape, *dist.event_shape)
    if isinstance(base, Categorical) and not isinstance(base, OneHotCategorical):
        shape = shape + (int(base.logits.shape[-1]),)
    return shape


def _gumbel(u: Tensor) -> Tensor:
    return -torch.log(-torch.log(u))


class _Relaxation(Estimator):
    unbiased = False
    name = "relaxation"

    def check(self, dist: Distribution) -> None:
        _discrete_base(dist, self.name)

    def laws(self, dist: Distribution, num_samples: int) -> dict[str, Law]:
        base = _discrete_base(dist, self.name)
        ref = base.logits
        shape = _noise_shape(dist, base, num_samples)
        points = None
        if isinstance(base, Bernoulli):
            jump = self._jump(torch.sigmoid(ref.detach()))
            if jump is not None:  # where the discrete sample, hence the integrand, jumps in u
                points = jump.expand(shape).unsqueeze(-1)
        return {"u": StandardUniform(shape=shape, dtype=ref.dtype, device=ref.device, points=points)}

    def _jump(self, p: Tensor) -> Tensor | None:
        return None


class GumbelSoftmax(_Relaxation):
    r"""Gumbel-softmax / Concrete relaxation (biased).

    Categorical with logits α: :math:`y = \mathrm{softmax}((α + g)/τ)`, g Gumbel;
    Bernoulli with logits φ (binary Concrete): :math:`y = σ((φ + \log u − \log(1 − u))/τ)`.
    The gradient is the pathwise gradient of :math:`f(y)`. With ``hard=True`` f is
    evaluated at the discrete sample :math:`H(y)` (one-hot argmax, or
    :math:`1[y > ½]`) — an exact draw from ``dist`` — and the gradient passes
    straight through y: :math:`H(y) + y − \mathrm{stop}(y)`.

    Requires: Bernoulli, Categorical or OneHotCategorical; f defined and
    differentiable on the relaxed inputs (probability vectors / [0, 1]). For
    ``Categorical`` f receives one-hot (relaxed) vectors ``[S, *batch, K]``, not
    indices.

    Properties: **biased** (``unbiased = False``): the value with ``hard=False`` is
    the mean of f over relaxed samples (draws from the Concrete distribution, not
    from ``dist``) and the gradient is that of the relaxed objective; the bias
    vanishes as τ → 0 while the variance grows. S evaluations of f.

    Args:
        temperature: τ > 0.
        hard: evaluate f at discrete samples with a straight-through gradient.

    References:
        Jang, Gu & Poole, "Categorical Reparameterization with Gumbel-Softmax", ICLR 2017.
        Maddison, Mnih & Teh, "The Concrete Distribution", ICLR 2017.
    """

    name = "GumbelSoftmax"

    def __init__(self, temperature: float = 1.0, *, hard: bool = False) -> None:
        super().__init__()
        self.temperature = check_positive("temperature", temperature)
        self.hard = bool(hard)

    def parts(self, dist: Distribution, draws: dict[str, Tensor], *, context: Tensor | None = None) -> Parts:
        base = _discrete_base(dist, self.name)
        u = draws["u"]
        if isinstance(base, Bernoulli):
            phi = base.logits.expand(u.shape[1:])
            y = torch.sigmoid((phi + torch.log(u) - torch.log1p(-u)) / self.temperature)
            if self.hard:
                y = (y > 0.5).to(y.dtype) + (y - y.detach())
        else:
            alpha = base.logits.expand(u.shape[1:])
            y = torch.softmax((alpha + _gumbel(u)) / self.temperature, dim=-1)
            if self.hard:
                hard = one_hot(y.argmax(-1), y.shape[-1], y.dtype)
                y = hard + (y - y.detach())
        return Parts(y)

    def _jump(self, p: Tensor) -> Tensor | None:
        return 1 - p if self.hard else None

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, hard={self.hard}, unbiased=False"


class StraightThrough(_Relaxation):
    r"""Straight-through estimator (biased).

    f is evaluated at an exact discrete sample b; the backward pass treats b as if
    it were its mean: :math:`b + p − \mathrm{stop}(p)` (Bernoulli, p = σ(φ)) or
    :math:`\mathrm{onehot}(b) + π − \mathrm{stop}(π)` (categorical), so
    :math:`\hat g = ∇_b f(b)\, ∂p/∂θ`.

    Requires: Bernoulli, Categorical or OneHotCategorical; f differentiable in its
    (one-hot) input. For ``Categorical`` f receives one-hot vectors.

    Properties: **biased** (``unbiased = False``), exact only for f linear in b;
    low variance; S evaluations of f. The value is the plain MC mean of f.

    References:
        Bengio, Léonard & Courville, "Estimating or Propagating Gradients Through
        Stochastic Neurons for Conditional Computation", 2013.
    """

    name = "StraightThrough"

    def parts(self, dist: Distribution, draws: dict[str, Tensor], *, context: Tensor | None = None) -> Parts:
        base = _discrete_base(dist, self.name)
        u = draws["u"]
        if isinstance(base, Bernoulli):
            p = torch.sigmoid(base.logits.expand(u.shape[1:]))
            b = (u < p.detach()).to(u.dtype)
            y = b + (p - p.detach())
        else:
            alpha = base.logits.expand(u.shape[1:])
            probs = torch.softmax(alpha, dim=-1)
            hard = one_hot((alpha.detach() + _gumbel(u)).argmax(-1), u.shape[-1], u.dtype)
            y = hard + (probs - probs.detach())
        return Parts(y)

    def _jump(self, p: Tensor) -> Tensor | None:
        return p

    def extra_repr(self) -> str:
        return "unbiased=False"
