"""Delta-method (second-order Taylor) control variate for Gaussian distributions."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Normal

from scg._dist import unwrap
from scg.baselines.base import SignalContext
from scg.baselines.simple import _RunningState

__all__ = ["Delta"]


class Delta(_RunningState):
    r"""Second-order Taylor expansion of f around the mean, with its known expectation.

    For :math:`q = N(μ, \mathrm{diag}\,σ^2)` (``Normal``, possibly wrapped in
    ``Independent``) and the expansion point :math:`μ_0 = \mathrm{stop}(μ)`:

    .. math::
        h(z) = f(μ_0) + g^\top (z − μ_0) + \tfrac12 \sum_d H_{dd} (z_d − μ_{0,d})^2, \qquad
        E_q[h] = f(μ_0) + g^\top(μ − μ_0) + \tfrac12 \sum_d H_{dd}\,((μ_d − μ_{0,d})^2 + σ_d^2)

    with :math:`g = ∇f(μ_0)` and :math:`H_{dd}` the Hessian's diagonal. The signal
    becomes :math:`A_s − c\,h(z_s)` and the extra term adds back
    :math:`c\,∇E_q[h] = c\,(g,\; H_{dd} σ_d)` for (μ, σ) — the control variate
    depends on the sample, so its expectation is carried exactly.

    Requires: a Normal distribution; f twice differentiable and written with
    ``torch.func``-compatible ops (g and H come from ``torch.func``). Costs one
    gradient and E Hessian-vector products of f per call (E = event size).

    Used by :class:`scg.ScoreFunction` (signal :math:`A_s − c\,h(z_s)`, h detached),
    :class:`scg.Pathwise` (h attached through the reparameterised sample, so the
    gradient is the pathwise gradient of :math:`f − c h` plus :math:`c\,∇E_q[h]`) and
    :class:`scg.MeasureValued` (h at every perturbed point). ``h`` is attached only
    through ``ctx.samples``: what it subtracts is detached whenever the samples are.

    Properties: unbiased for any c fixed before the draw. ``coefficient="optimal"``
    uses :math:`c^* = \mathrm{Cov}(A ∇\log q, h ∇\log q)/\mathrm{Var}(h ∇\log q)`
    estimated by a moving average over *earlier* draws (c = 1 on the first call), so
    the estimator stays unbiased. Its moments (buffers ``cov``, ``var``) take the
    signal's dtype and device at their first update.

    Args:
        coefficient: a float c, or ``"optimal"``.
        decay: moving-average factor for the optimal coefficient.

    References:
        Mohamed, Rosca, Figurnov & Mnih, "Monte Carlo Gradient Estimation in Machine
        Learning", JMLR 2020, §7.2 (delta method control variates).
        https://arxiv.org/abs/1906.10652
        Paisley, Blei & Jordan, "Variational Bayesian inference with stochastic search", 2012.
    """

    _floating = ("cov", "var")
    cov: Tensor
    var: Tensor

    #: It differentiates the cost function itself, so it cannot serve a graph node.
    needs_cost_function = True

    def __init__(self, coefficient: float | str = 1.0, *, decay: float = 0.9) -> None:
        super().__init__()
        if isinstance(coefficient, str):
            if coefficient != "optimal":
                raise ValueError(f'`coefficient` must be a float or "optimal"; got {coefficient!r}.')
        elif isinstance(coefficient, bool) or not isinstance(coefficient, (int, float)):
            raise TypeError(f'`coefficient` must be a float or "optimal"; got {type(coefficient).__name__}.')
        elif not math.isfinite(coefficient):
            raise ValueError(f'`coefficient` must be a finite float or "optimal"; got {coefficient}.')
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"`decay` must be in [0, 1); got {decay}.")
        self.coefficient = coefficient
        self.decay = float(decay)
        self.register_buffer("cov", torch.zeros(()))
        self.register_buffer("var", torch.zeros(()))

    def current_coefficient(self, like: Tensor) -> Tensor:
        if self.coefficient != "optimal":
            return torch.as_tensor(float(self.coefficient), dtype=like.dtype, device=like.device)
        var = self.var.to(like)
        return torch.where(
            var > 0,
            self.cov.to(like) / var.clamp_min(torch.finfo(like.dtype).tiny),
            torch.ones_like(var),
        )

    def forward(self, signal: Tensor, ctx: SignalContext) -> tuple[Tensor, Tensor | None]:
        base, k = unwrap(ctx.dist)
        if not isinstance(base, Normal):
            raise TypeError(
                f"`dist` must be a Normal (or Independent Normal) for Delta; got {type(base).__name__}."
            )
        batch = tuple(ctx.dist.batch_shape)
        event = tuple(ctx.dist.event_shape)
        mu0 = base.loc.detach().expand(batch + event).clone()
        sigma = base.scale.expand(batch + event)
        f = ctx.f

        def total(x: Tensor) -> Tensor:
            return f(x.unsqueeze(0)).sum()

        f0 = f(mu0.unsqueeze(0)).squeeze(0).detach()
        grad_fn = torch.func.grad(total)
        g = grad_fn(mu0).detach()
        n_event = max(1, math.prod(event))  # a Python int: no tensor, no host read under torch.compile
        basis = torch.eye(n_event, dtype=mu0.dtype, device=mu0.device).reshape(
            n_event, *([1] * len(batch)), *event
        )
        basis = basis.expand((n_event,) + batch + event).contiguous()

        def hvp(v: Tensor) -> Tensor:
            return torch.func.jvp(grad_fn, (mu0,), (v,))[1]

        h_diag = (torch.func.vmap(hvp)(basis) * basis).sum(0).detach()
        red = tuple(range(-len(event), 0)) if event else ()

        def reduce(x: Tensor) -> Tensor:
            return x.sum(red) if red else x

        dz = ctx.samples - mu0
        h = f0 + reduce(g * dz) + 0.5 * reduce(h_diag * dz * dz)  # [S, *batch]
        c = self.current_coefficient(signal)
        mu = base.loc.expand(batch + event)
        dmu = mu - mu0
        expected_h = f0 + reduce(g * dmu) + 0.5 * reduce(h_diag * (dmu * dmu + sigma * sigma))
        extra = c * (expected_h - expected_h.detach())
        if self.coefficient == "optimal" and self.updating(signal):
            self._follow_all(signal)
            with torch.no_grad():
                # Scores of the Gaussian w.r.t. (μ, σ) summed over elements give a scalar
                # projection; c* minimises Var(A s − c h s) per that projection.
                s = ctx.score_sq_norm().sqrt()
                a_s, h_s = signal.detach() * s, h.detach() * s
                cov = ((a_s - a_s.mean(0)) * (h_s - h_s.mean(0))).mean()
                var = ((h_s - h_s.mean(0)) ** 2).mean()
                self.cov.copy_(self.decay * self.cov + (1 - self.decay) * cov)
                self.var.copy_(self.decay * self.var + (1 - self.decay) * var)
        # h is attached only through ``ctx.samples``: detached for score-function estimators (their
        # samples are detached), attached through the reparameterised sample for Pathwise, which
        # then differentiates f − c h pathwise (Mohamed et al. 2020, §7.2).
        return signal - c * h, extra

    def extra_repr(self) -> str:
        return f"coefficient={self.coefficient!r}"
