r"""The models' distributions with fused log-densities: a diagonal Gaussian and a vector of Bernoullis.

.. math::
    \log N(z; μ, \mathrm{diag}\,σ^2) = \sum_i \Big[-\tfrac12 \Big(\frac{z_i − μ_i}{σ_i}\Big)^2
        − \log σ_i − \tfrac12 \log 2π\Big]

:class:`DiagonalNormal` *is* an ``Independent(Normal(loc, scale), n)`` (a subclass
that only replaces ``log_prob``): sampling, ``rsample``, ``entropy``, ``expand``,
``kl_divergence`` and every scg estimator treat it as that distribution. Its
``log_prob`` computes the sum above directly — five tensor ops, where
``Independent.log_prob`` → ``Normal.log_prob`` runs eight (``scale ** 2``, a division
by ``2 var``) and two Python methods with their checks. In a VAE training step that is
two log-densities per step (posterior and prior, ``kl="mc"``) and their backward:
``docs/benchmarks.md`` case 1 (the ``scg.models.VAE`` row).

The prior :math:`N(0, I)` (``loc = 0``, ``scale = 1`` exactly) drops the two ops that
would only subtract 0, divide by 1 and take ``log 1``: :math:`\sum_i -\tfrac12 z_i^2 − \tfrac12\log 2π`.

:class:`BernoulliVector` does the same for the Bernoulli decoders' likelihood (below).

Values and derivatives (of every order) equal those of ``Independent(Normal)`` and
``Independent(Bernoulli)`` up to float rounding (``tests/test_models_densities.py``); argument validation, when on,
validates the sample as ``Normal.log_prob`` does.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Bernoulli, Distribution, Independent, Normal
from torch.distributions.utils import _sum_rightmost

from scg._dist import bernoulli_nll

__all__ = ["DiagonalNormal", "diagonal_normal", "standard_normal", "BernoulliVector", "bernoulli_vector"]

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _sum_event(t: Tensor, n: int) -> Tensor:
    """Sum of the rightmost ``n`` dims: ``t.sum(-1)`` for the models' one event dim (no reshape and its
    backward node, as ``_sum_rightmost`` adds), ``_sum_rightmost`` otherwise."""
    return t.sum(-1) if n == 1 and t.dim() >= 1 else _sum_rightmost(t, n)


class DiagonalNormal(Independent):
    """``Independent(Normal(loc, scale), n)`` with the fused log-density above.

    Build it with :func:`diagonal_normal` or :func:`standard_normal` (or as
    ``DiagonalNormal(Normal(loc, scale), n)``, the ``Independent`` constructor). A base that
    is not exactly a ``Normal`` falls back to ``Independent.log_prob``.
    """

    _standard: bool = False

    def log_prob(self, value: Tensor) -> Tensor:
        base = self.base_dist
        if type(base) is not Normal:
            return super().log_prob(value)
        if base._validate_args:
            base._validate_sample(value)
        if self._standard and value.shape[value.dim() - len(base.loc.shape):] == base.loc.shape:
            density = -0.5 * value * value - HALF_LOG_2PI
        else:
            e = (value - base.loc) / base.scale
            density = -0.5 * e * e - base.scale.log() - HALF_LOG_2PI
        return _sum_event(density, self.reinterpreted_batch_ndims)

    def expand(self, batch_shape, _instance=None):  # noqa: ANN001, ANN201 - torch's signature
        new = super().expand(batch_shape, _instance)
        new._standard = self._standard
        return new


def _normal(loc: Tensor, scale: Tensor, validate_args: bool | None) -> Normal:
    """``Normal(loc, scale)``; for tensors of one shape without ``broadcast_all`` (as ``Normal.expand`` builds one)."""
    if not (isinstance(loc, Tensor) and isinstance(scale, Tensor) and loc.shape == scale.shape and loc.dim() > 0):
        return Normal(loc, scale, validate_args=validate_args)
    base = Normal.__new__(Normal)
    base.loc, base.scale = loc, scale
    Distribution.__init__(base, loc.shape, validate_args=validate_args)  # validates loc, scale when on
    return base


def diagonal_normal(loc: Tensor, scale: Tensor, *, validate_args: bool | None = None) -> DiagonalNormal:
    """:math:`N(\\mathrm{loc}, \\mathrm{diag}\\,\\mathrm{scale}^2)` over the last dim (event ``[L]``)."""
    return _independent(DiagonalNormal, _normal(loc, scale, validate_args), validate_args)


def _independent(cls: type, base: Distribution, validate_args: bool | None) -> Independent:
    """``cls(base, 1)``: ``Independent.__init__``'s work over the last batch dim, without its generic shape logic."""
    shape = base.batch_shape
    if len(shape) < 1:
        return cls(base, 1, validate_args=validate_args)  # Independent's own error
    dist = cls.__new__(cls)
    dist.base_dist, dist.reinterpreted_batch_ndims = base, 1
    Distribution.__init__(dist, shape[:-1], shape[-1:], validate_args=validate_args)
    return dist


def standard_normal(zero: Tensor, one: Tensor) -> DiagonalNormal:
    """:math:`N(0, I)` from an expanded ``zero`` (loc) and ``one`` (scale); no validation (constants).

    The caller guarantees ``zero == 0`` and ``one == 1``: the log-density then never reads them.
    """
    dist = diagonal_normal(zero, one, validate_args=False)
    dist._standard = True
    return dist


class BernoulliVector(Independent):
    r"""``Independent(Bernoulli(logits=ℓ), 1)`` with a fused log-mass: the decoders' likelihood.

    .. math:: \log p(x) = \sum_i \big[x_i ℓ_i − \log(1 + e^{ℓ_i})\big] = −\sum_i \mathrm{BCE}(ℓ_i, x_i)

    ``binary_cross_entropy_with_logits`` on ``x`` expanded to the logits' shape (data ``[B, D]``
    against logits ``[S, B, D]``), summed over the event: what ``Bernoulli.log_prob`` computes,
    without ``broadcast_all`` and the two Python methods; under ``torch.func.vmap`` the
    equal ``softplus(ℓ) − xℓ`` (``scg._dist.bernoulli_nll``), which vmap runs as batched kernels. A base that is not exactly a
    ``Bernoulli`` given by logits falls back to ``Independent.log_prob``.
    """

    def log_prob(self, value: Tensor) -> Tensor:
        base = self.base_dist
        if type(base) is not Bernoulli or "logits" not in base.__dict__:
            return super().log_prob(value)
        if base._validate_args:
            base._validate_sample(value)
        logits = base.logits
        if value.shape != logits.shape:
            if value.dim() <= logits.dim() and logits.shape[logits.dim() - value.dim():] == value.shape:
                value = value.expand_as(logits)  # data [B, D] against logits [S, B, D]: the common case
            else:
                shape = torch.broadcast_shapes(logits.shape, value.shape)
                logits, value = logits.expand(shape), value.expand(shape)
        nll = bernoulli_nll(logits, value)
        return _sum_event(nll, self.reinterpreted_batch_ndims).neg()


def bernoulli_vector(logits: Tensor) -> BernoulliVector:
    """``Independent(Bernoulli(logits=logits, validate_args=False), 1)`` as a :class:`BernoulliVector`.

    No argument validation (any real logits are valid), as the models' Bernoulli modules always had.
    """
    if not isinstance(logits, Tensor) or logits.dim() < 1:
        return BernoulliVector(Bernoulli(logits=logits, validate_args=False), 1, validate_args=False)
    base = Bernoulli.__new__(Bernoulli)  # Bernoulli.__init__'s work for one tensor of logits
    base.logits = base._param = logits
    Distribution.__init__(base, logits.shape, validate_args=False)
    return _independent(BernoulliVector, base, False)
