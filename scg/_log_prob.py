"""``scg.log_prob``: the log-density of an estimator's own samples, computed once.

A score-function estimator needs :math:`\\log q_θ(z_s)` for its score term, and many
costs need it too — the ELBO's :math:`f(z) = \\log q(z) − \\log p(x, z)`, an entropy
bonus. Written with ``q.log_prob(z)`` inside ``f``, the same log-density is computed
(and back-propagated) twice. Inside a cost that an estimator is evaluating,
``scg.log_prob(q, z)`` returns the tensor the estimator already holds when ``q`` is
the distribution and ``z`` the very sample tensor it passed to ``f``; anywhere else
it is ``q.log_prob(z)``. Value and derivatives (of every order) are those of
``q.log_prob(z)`` either way: only the second evaluation is saved.

Nothing is patched or wrapped: the estimator publishes ``(dist, samples, log_prob)``
in a context variable for the duration of its call to ``f`` (so nested and
concurrent evaluations do not see each other's entries), and the lookup is by
object identity.
"""

from __future__ import annotations

from contextvars import ContextVar, Token

import torch
from torch import Tensor
from torch.distributions import Distribution

__all__ = ["log_prob", "share", "unshare"]

_SHARED: ContextVar[tuple[tuple[Distribution, Tensor, Tensor], ...]] = ContextVar("scg_log_prob", default=())


def log_prob(dist: Distribution, value: Tensor) -> Tensor:
    """``dist.log_prob(value)``, shared with the estimator that drew ``value``.

    Args:
        dist: a ``torch.distributions.Distribution``.
        value: samples ``[*sample_shape, *batch_shape, *event_shape]``.

    Returns:
        ``dist.log_prob(value)`` — inside a cost evaluated by
        :class:`~scg.ScoreFunction` on its samples, the very tensor it uses for its
        score (computed once).

    Example:
        >>> import torch, scg
        >>> from torch.distributions import Bernoulli, Independent
        >>> logits = torch.zeros(5, 3, requires_grad=True)
        >>> q = Independent(Bernoulli(logits=logits), 1)
        >>> elbo_cost = lambda b: scg.log_prob(q, b) + (b - 0.4).pow(2).sum(-1)
        >>> loss = scg.expectation(elbo_cost, q, scg.ScoreFunction(), num_samples=4)
    """
    if torch.compiler.is_compiling():  # a ContextVar cannot be traced; inductor merges the duplicate
        return dist.log_prob(value)
    for d, z, lp in _SHARED.get():
        if d is dist and z is value:
            return lp
    return dist.log_prob(value)


def share(dist: Distribution, samples: Tensor, log_prob: Tensor) -> Token:
    """Publish ``log_prob = dist.log_prob(samples)`` to :func:`log_prob`; undo with :func:`unshare`.

    Estimators call it around their evaluation of ``f`` (``try``/``finally``).
    """
    return _SHARED.set(_SHARED.get() + ((dist, samples, log_prob),))


def unshare(token: Token) -> None:
    """Withdraw what the matching :func:`share` published."""
    _SHARED.reset(token)
