"""Pathwise estimator (reparameterisation trick)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor
from torch.distributions import (
    Cauchy,
    Distribution,
    Exponential,
    Independent,
    Laplace,
    MultivariateNormal,
    Normal,
    TransformedDistribution,
    Uniform,
)

from scg.baselines.base import (
    ControlVariate,
    SignalContext,
    check_baseline,
    cost_function,
    signal_rows,
)
from scg.baselines.simple import Normalize
from scg.estimators.base import Cost, Estimator, Parts
from scg.laws import Law, StandardNormal, StandardUniform, distribution_of, law_like

__all__ = ["Pathwise", "ImplicitSample", "reparameterize"]

# A reparameterisation: (law class, function (dist, noise) -> sample attached to the parameters).
# The function takes an instance of its registry key's class (Any: the key fixes its type).
_Reparam = tuple[type[Law], Callable[[Any, Tensor], Tensor]]


def _normal(d: Normal, e: Tensor) -> Tensor:
    return d.loc + d.scale * e


def _mvn(d: MultivariateNormal, e: Tensor) -> Tensor:
    return d.loc + (d.scale_tril @ e.unsqueeze(-1)).squeeze(-1)


def _uniform(d: Uniform, u: Tensor) -> Tensor:
    return d.low + (d.high - d.low) * u


def _laplace(d: Laplace, u: Tensor) -> Tensor:
    v = u - 0.5
    return d.loc - d.scale * torch.sign(v) * torch.log1p(-2 * v.abs())


def _cauchy(d: Cauchy, u: Tensor) -> Tensor:
    return d.loc + d.scale * torch.tan(math.pi * (u - 0.5))


def _exponential(d: Exponential, u: Tensor) -> Tensor:
    return -torch.log(u) / d.rate


_REGISTRY: dict[type, _Reparam] = {
    Normal: (StandardNormal, _normal),
    MultivariateNormal: (StandardNormal, _mvn),
    Uniform: (StandardUniform, _uniform),
    Laplace: (StandardUniform, _laplace),
    Cauchy: (StandardUniform, _cauchy),
    Exponential: (StandardUniform, _exponential),
}


def _reparameterize(
    dist: Distribution,
) -> tuple[type[Law], Callable[[Tensor], Tensor], Distribution] | None:
    """``(law class, noise -> sample, innermost distribution)`` or ``None`` (one walk of the wrappers)."""
    inner = dist
    transforms: list = []
    while True:
        if isinstance(inner, Independent):
            inner = inner.base_dist
        elif isinstance(inner, TransformedDistribution):
            transforms = list(inner.transforms) + transforms
            inner = inner.base_dist
        else:
            break
    entry = _REGISTRY.get(type(inner))
    if entry is None:
        entry = next((_REGISTRY[c] for c in type(inner).__mro__ if c in _REGISTRY), None)
        if entry is None:
            return None
    law_cls, fn = entry
    base = inner
    if not transforms:
        return law_cls, partial(fn, base), base

    def sample(noise: Tensor) -> Tensor:
        z = fn(base, noise)
        for t in transforms:
            z = t(z)
        return z

    return law_cls, sample, base


def reparameterize(dist: Distribution) -> tuple[type[Law], Callable[[Tensor], Tensor]] | None:
    """Explicit noise for ``dist``: ``(law class, noise -> sample)``, or ``None``.

    Handles ``Independent`` and ``TransformedDistribution`` wrappers (LogNormal,
    Gumbel, flows) around the families in the registry. The noise has the shape of
    the *base* samples ``[S, *base.batch_shape, *base.event_shape]``.
    """
    rep = _reparameterize(dist)
    return None if rep is None else (rep[0], rep[1])


@dataclass(frozen=True, eq=False)
class ImplicitSample(Law):
    """``dist.rsample(shape[:1])``: a distribution's own implicitly reparameterised sample.

    For Gamma, Beta, Dirichlet and other families whose ``rsample`` differentiates
    the sampler implicitly (no explicit noise). Unlike the other laws its draw is
    attached to the parameters, so the exact harness cannot integrate over it (it
    refuses), and a graph cannot replay it.
    """

    dist: Distribution | None = None

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        return distribution_of(self, generator).rsample(self.shape[:1])


class Pathwise(Estimator):
    r"""Pathwise estimator (reparameterisation trick), with an optional control variate.

    .. math::
        z = g_θ(ε),\; ε \sim p(ε), \qquad \hat g = \frac1S\sum_s ∇_θ f(g_θ(ε_s))

    With a control variate whose subtracted quantity depends on the sample (the
    delta method, :class:`scg.baselines.Delta`: :math:`h` the second-order Taylor
    expansion of f around the mean, with known :math:`E_q[h]`), the surrogate is

    .. math::
        \frac1S\sum_s f(z_s) − c\,\frac1S\sum_s \big(h(z_s) − \mathrm{stop}(h(z_s))\big)
        + c\,\big(E_q[h] − \mathrm{stop}(E_q[h])\big), \qquad
        \hat g = \frac1S\sum_s ∇_θ (f − c\,h)(g_θ(ε_s)) + c\,∇_θ E_q[h]

    (value exactly the MC mean of f; h's coefficients are fixed at the detached mean,
    and h is attached to θ through the reparameterised :math:`z_s`). For a quadratic
    f with a diagonal Hessian, h = f and c = 1 give the exact gradient (zero variance).

    A control variate that subtracts a quantity not depending on the sample
    (:class:`~scg.baselines.Constant`, :class:`~scg.baselines.MovingAverage`,
    :class:`~scg.baselines.LeaveOneOut`, :class:`~scg.baselines.Learned`) has zero
    pathwise gradient: it is accepted and **changes nothing** in the gradient (a
    Learned baseline's extra term still trains it). In general the term added is the
    pathwise gradient of what the control variate subtracts, plus its ``extra``.
    :class:`~scg.baselines.Normalize` rescales a score-function signal, which the
    pathwise gradient does not have, and is refused (``ValueError``).

    Requires: a reparameterisable distribution (``has_rsample``) and f
    differentiable in z. The noise ε is drawn out of place by scg for Normal,
    MultivariateNormal, Uniform, Laplace, Cauchy, Exponential and their
    ``Independent``/``TransformedDistribution`` wrappers (LogNormal, Gumbel, flow
    posteriors) — these work under ``torch.func.vmap`` and in the exact harness.
    Other distributions with ``rsample`` (Gamma, Beta, Dirichlet: implicit
    reparameterisation) draw with ``dist.rsample`` (law :class:`ImplicitSample`).
    ``Delta`` additionally requires a Normal (optionally ``Independent``), f twice
    differentiable with ``torch.func``-compatible ops, and the cost as a function:
    it serves ``scg.expectation``, not a :class:`scg.Graph` node (refused there).

    Properties: unbiased (with a control variate whose ``unbiased`` is True); usually
    the lowest variance when f is smooth; variance independent of the dimension for
    many f; S evaluations of f (and one backward), plus Delta's gradient and E
    Hessian-vector products of f at the mean. Biased (gradient zero almost
    everywhere) for discontinuous f. ``Delta("optimal")`` estimates its coefficient
    from the score-function criterion over earlier draws (training mode only): still
    unbiased, but not the pathwise-variance-optimal coefficient.

    Args:
        baseline: a control variate from :mod:`scg.baselines` (or ``None``); it is
            applied to the learning signal in the node's term and nowhere else.

    Example:
        >>> import torch, scg
        >>> from torch.distributions import Normal
        >>> mu = torch.tensor(0.5, requires_grad=True)
        >>> loss = scg.expectation(lambda z: z**2, Normal(mu, 1.0), scg.Pathwise(), num_samples=64)
        >>> loss.backward()   # mu.grad ≈ 2 μ
        >>> mu.grad = None
        >>> est = scg.Pathwise(scg.baselines.Delta())  # h = f for a quadratic: exact gradient
        >>> scg.expectation(lambda z: z**2, Normal(mu, 1.0), est, num_samples=1).backward()
        >>> round(float(mu.grad), 6)
        1.0

    References:
        Kingma & Welling, "Auto-Encoding Variational Bayes", 2014. https://arxiv.org/abs/1312.6114
        Rezende, Mohamed & Wierstra, "Stochastic Backpropagation and Approximate Inference in
        Deep Generative Models", 2014. https://arxiv.org/abs/1401.4082
        Figurnov, Mohamed & Mnih, "Implicit Reparameterization Gradients", 2018.
        https://arxiv.org/abs/1805.08498
        Mohamed et al., "Monte Carlo Gradient Estimation in Machine Learning", JMLR 2020, §5, and
        §7 (control variates; §7.2 delta method). https://arxiv.org/abs/1906.10652
    """

    def __init__(self, baseline: ControlVariate | None = None) -> None:
        super().__init__()
        self.baseline = check_baseline(
            baseline,
            (Normalize,),
            "`baseline` must not contain Normalize for Pathwise: it rescales a score-function learning signal, "
            "which the pathwise gradient has none of. Use Delta (a control variate whose expectation is known) "
            "or no baseline.",
        )
        self.unbiased = baseline is None or baseline.unbiased

    def check(self, dist: Distribution) -> None:
        super().check(dist)
        if not dist.has_rsample:
            raise TypeError(
                f"`dist` must be reparameterisable for Pathwise; {type(dist).__name__} has no rsample. "
                "Use ScoreFunction, MeasureValued, DisARM or RELAX (unbiased), or GumbelSoftmax/"
                "StraightThrough (biased) for discrete distributions."
            )

    def laws(self, dist: Distribution, num_samples: int) -> dict[str, Law]:
        self.check(dist)
        rep = _reparameterize(dist)
        if rep is None:
            shape = (num_samples, *dist.batch_shape, *dist.event_shape)
            return {"z": ImplicitSample(shape=shape, dist=dist)}
        law_cls, _, base = rep
        return {"eps": law_like(law_cls, (num_samples, *base.batch_shape, *base.event_shape), base.mean)}

    def parts(self, dist: Distribution, draws: dict[str, Tensor], *, context: Tensor | None = None) -> Parts:
        if "eps" not in draws:  # implicit reparameterisation: the draw is dist.rsample's own sample
            z = draws["z"]
        else:
            rep = _reparameterize(dist)
            if rep is None:
                raise TypeError(f"`dist` {type(dist).__name__} has no explicit noise for Pathwise draws.")
            z = rep[1](draws["eps"])
        baseline = self.baseline
        if baseline is None:
            return Parts(z)

        def term(signal: Tensor, f: Cost | None, sample_dims: int) -> tuple[Tensor, Tensor | None]:
            shape = signal.shape
            rows = signal_rows(signal, sample_dims, baseline)
            lp = dist.log_prob(z.detach()).detach().reshape(rows.shape)
            # The samples stay attached to θ: a control variate of the sample (Delta) is then
            # differentiated pathwise; one that does not depend on it subtracts a detached quantity.
            ctx = SignalContext(dist, z, lp, cost_function(f), context)
            new, extra = baseline(rows, ctx)
            subtracted = rows - new  # c h(z_s) for Delta, attached through z_s only
            return (subtracted.detach() - subtracted).reshape(shape), extra

        return Parts(z, term=term)
