"""Measure-valued gradient estimator (weak derivatives)."""

from __future__ import annotations

import math
from typing import TypeAlias

import torch
from torch import Tensor
from torch.distributions import (
    Bernoulli,
    Categorical,
    Distribution,
    Normal,
    OneHotCategorical,
    Poisson,
)

from scg._dist import unwrap
from scg.baselines.base import (
    ControlVariate,
    SignalContext,
    check_baseline,
    cost_function,
    signal_rows,
)
from scg.baselines.simple import LeaveOneOut
from scg.estimators._elements import event_size, replace_each, split_event
from scg.estimators.base import Cost, Estimator, Parts
from scg.laws import (
    DoubleSidedMaxwell,
    FromDistribution,
    Law,
    Rayleigh,
    StandardNormal,
    StandardUniform,
)

__all__ = ["MeasureValued"]

_FAMILIES = (Normal, Bernoulli, Poisson, Categorical, OneHotCategorical)
_Family: TypeAlias = Normal | Bernoulli | Poisson | Categorical | OneHotCategorical


def _family(dist: Distribution) -> tuple[_Family, int]:
    """``unwrap(dist)`` whose base is one of the supported families; a TypeError naming ``dist`` otherwise."""
    base, k = unwrap(dist)
    if not isinstance(base, _FAMILIES):
        raise TypeError(
            f"`dist` must be Normal, Bernoulli, Categorical, OneHotCategorical or Poisson "
            f"(optionally Independent) for MeasureValued; got {type(base).__name__}."
        )
    return base, k


class MeasureValued(Estimator):
    r"""Measure-valued gradient estimator: differentiate the measure by weak derivatives.

    A weak derivative writes :math:`∂_θ q_θ = c_θ (q^+_θ − q^-_θ)`, so
    :math:`∂_θ E_q[f] = c_θ (E_{q^+}[f] − E_{q^-}[f])`. Per parameter element:

    * Normal :math:`N(μ, σ^2)`, μ: :math:`c = 1/(σ\sqrt{2π})`, :math:`q^± = μ ± σW`,
      W ~ Rayleigh (Weibull(2, ½)), the same W for both (coupling):
      :math:`\hat g_μ = (f(μ + σW) − f(μ − σW)) / (σ\sqrt{2π})`.
    * Normal, σ: :math:`c = 1/σ`, :math:`q^+` double-sided Maxwell, :math:`q^- = q`,
      coupled by :math:`n = M U` (U ~ U(0,1)): :math:`\hat g_σ = (f(μ + σM) − f(μ + σMU)) / σ`.
    * Bernoulli(p): :math:`\hat g_p = f(z^{j←1}) − f(z^{j←0})`.
    * Categorical / OneHotCategorical(π): :math:`\hat g_{π_k} = f(z^{j←k})`.
    * Poisson(λ): :math:`\hat g_λ = f(z^{j←z_j+1}) − f(z)`.

    Here :math:`z^{j←v}` is the base sample with event position j replaced (other
    positions keep their sampled values). Gradients reach upstream parameters
    through the chain rule on (μ, σ), p, π or λ.

    Requires: a supported distribution (Normal, Bernoulli, Categorical,
    OneHotCategorical, Poisson, or ``Independent`` of these); f need not be
    differentiable.

    The perturbed points are the node's copies (:class:`scg.Parts`) with weights
    1, 0, …, 0: only the first copy, the draw itself, enters the value. In a
    :class:`scg.Graph` everything downstream is computed for every copy, and the
    costs must keep the node's batch elements apart (each perturbation changes one
    event position of every batch element at once).

    **Control variates** (``baseline``; Mohamed et al. 2020, §7). The control variate
    is applied once, in the node's term, to the signal of all copies (the draw and
    every perturbed point, flattened into rows) before the differences are formed:

    .. math::
        \hat g = c_θ\big[(f − b)(z^+) − (f − b)(z^-)\big] + \text{extra}

    * :class:`~scg.baselines.Delta` (Normal only): :math:`b = c\,h` at each copy's
      point, h the second-order Taylor expansion of f at the mean, and the extra term
      adds back :math:`c\,∇E_q[h]` exactly: the MV estimate of :math:`∇E[f − c h]`
      plus :math:`c\,∇E[h]`, unbiased. For a quadratic f with a diagonal Hessian and
      c = 1 the estimate is exact (zero variance).
    * A baseline the same at every copy (:class:`~scg.baselines.Constant`,
      :class:`~scg.baselines.MovingAverage`, :class:`~scg.baselines.Learned`) is
      unbiased and **changes no estimate**: it cancels in the Normal, Bernoulli and
      Poisson differences, and for Categorical / OneHotCategorical in
      :math:`\sum_k ∂π_k (f(z^{j←k}) − b) = \sum_k ∂π_k f(z^{j←k})`, since
      :math:`\sum_k π_k = 1` makes :math:`\sum_k ∂π_k = 0` for every parameterisation
      (the estimate is already centred). Running state (MovingAverage) follows the
      mean of all copies' signals, in training mode only.
    * :class:`~scg.baselines.Normalize` divides every copy's signal by the same
      running scale (``unbiased = False``, as for ScoreFunction).
    * :class:`~scg.baselines.LeaveOneOut` is refused (``ValueError``): its baseline
      differs between copies of one sample and would bias the differences.

    ``Delta`` needs the cost as a function, so it serves ``scg.expectation`` only
    (a :class:`scg.Graph` refuses it).

    Properties: unbiased (with a control variate whose ``unbiased`` is True); low
    variance, often the lowest for Gaussian μ; cost grows
    with the dimension: per sample, 1 evaluation of f for the value plus **2
    evaluations per event position and Gaussian parameter** (4E for Normal:
    μ and σ), 2E for Bernoulli, KE for K categories, E for Poisson. Batch
    elements share these evaluations.

    Numerics (Normal). The estimates are differences of f at points σ apart, divided
    by σ, so rounding of the values of f (relative precision ε: 1.2e-7 in float32,
    2.2e-16 in float64) enters as an error of about ε|f|/σ. For μ that is small against
    the gradient |f'| whenever σ ≫ ε|f|/|f'|; for σ, whose gradient is of order
    σ|f''|, the σ-estimate stays accurate only while σ² |f''| ≫ ε|f|: for f = z² at
    μ = 1 its exact mean is right to 1e-5 in float64 for σ down to 1e-6, but in
    float32 only down to σ ≈ 1e-2 (at σ = 1e-4 the rounding error exceeds the
    gradient, though it stays far below the estimate's standard deviation, ≈ 1). No
    rewriting of the estimate removes this: f is a black box evaluated in the
    problem's dtype. Use float64 when σ-gradients at small σ matter
    (``tests/library/test_measure_valued_numerics.py``).

    Args:
        baseline: a control variate from :mod:`scg.baselines` (or ``None``); it is
            applied to the copies' signal in the node's term and nowhere else.

    Example:
        >>> import torch, scg
        >>> from torch.distributions import Normal
        >>> mu = torch.tensor(0.5, requires_grad=True)
        >>> est = scg.MeasureValued(scg.baselines.Delta())  # h = f for a quadratic: exact gradient
        >>> scg.expectation(lambda z: z**2, Normal(mu, 1.0), est, num_samples=1).backward()
        >>> round(float(mu.grad), 5)
        1.0

    References:
        Pflug, "Optimization of Stochastic Models", 1996.
        Mohamed, Rosca, Figurnov & Mnih, "Monte Carlo Gradient Estimation in Machine
        Learning", JMLR 2020, §6 (Table 1: Weibull / double-sided Maxwell couplings) and §7
        (control variates; §7.2 delta method). https://arxiv.org/abs/1906.10652
    """

    #: Its copies change one event position of every batch element at once: a graph checks that
    #: the costs it is credited with keep the node's batch elements apart.
    perturbs_batch_elements = True

    def __init__(self, baseline: ControlVariate | None = None) -> None:
        super().__init__()
        self.baseline = check_baseline(
            baseline,
            (LeaveOneOut,),
            "`baseline` must not contain LeaveOneOut for MeasureValued: its baseline differs between the "
            "perturbed copies of one sample, so it does not cancel in their differences (biased). Use "
            "Constant, MovingAverage, Learned, or Delta (Normal).",
        )
        self.unbiased = baseline is None or baseline.unbiased

    def check(self, dist: Distribution) -> None:
        super().check(dist)
        _family(dist)

    def evaluations(self, dist: Distribution, num_samples: int) -> int:
        base, _ = _family(dist)
        E = event_size(dist)
        if isinstance(base, Normal):
            per = 4 * E
        elif isinstance(base, Bernoulli):
            per = 2 * E
        elif isinstance(base, Poisson):
            per = E
        else:  # Categorical / OneHotCategorical: one copy per category and element
            per = E * int(base.logits.shape[-1])
        return num_samples * (1 + per)

    def laws(self, dist: Distribution, num_samples: int) -> dict[str, Law]:
        self.check(dist)
        base, _ = _family(dist)
        shape = (num_samples, *dist.batch_shape, *dist.event_shape)
        if isinstance(base, Normal):
            loc = base.loc
            return {
                "eps": StandardNormal(shape=shape, dtype=loc.dtype, device=loc.device),
                "w": Rayleigh(shape=shape, dtype=loc.dtype, device=loc.device),
                "m": DoubleSidedMaxwell(shape=shape, dtype=loc.dtype, device=loc.device),
                "u": StandardUniform(shape=shape, dtype=loc.dtype, device=loc.device),
            }
        ref = base.probs if not isinstance(base, Poisson) else base.rate
        return {"z": FromDistribution(shape=shape, dist=dist, dtype=ref.dtype, device=ref.device)}

    def parts(self, dist: Distribution, draws: dict[str, Tensor], *, context: Tensor | None = None) -> Parts:
        self.check(dist)
        base, k = _family(dist)
        batch = tuple(dist.batch_shape)
        nb = len(batch)
        if isinstance(base, Normal):
            return self._normal(dist, base, k, draws, context)
        z = draws["z"].detach()
        full = z.shape
        trailing = 1 if isinstance(base, OneHotCategorical) else 0
        zf = split_event(z, nb, k)  # [n, *batch, E, (K)]
        n, E = zf.shape[0], zf.shape[1 + nb]

        def copies_of(
            candidates: Tensor,
        ) -> Tensor:  # [C, n, *batch, E, (K)] -> [C, n, *batch, *event]
            return candidates.reshape(candidates.shape[0], *full)

        if isinstance(base, Bernoulli):
            p = base.probs.expand(tuple(batch) + tuple(full[1 + nb :])).reshape(*batch, E)
            ones, zeros = torch.ones_like(zf), torch.zeros_like(zf)
            value = copies_of(torch.cat([zf.unsqueeze(0), replace_each(zf, ones), replace_each(zf, zeros)]))

            def gradient(signal: Tensor) -> Tensor:
                f1, f0 = signal[1 : 1 + E], signal[1 + E :]
                return ((p - p.detach()) * (f1 - f0).detach().movedim(0, -1)).sum(-1)
        elif isinstance(base, Poisson):
            lam = base.rate.expand(tuple(batch) + tuple(full[1 + nb :])).reshape(*batch, E)
            value = copies_of(torch.cat([zf.unsqueeze(0), replace_each(zf, zf + 1)]))

            def gradient(signal: Tensor) -> Tensor:
                g = (signal[1:] - signal[:1]).detach().movedim(0, -1)
                return ((lam - lam.detach()) * g).sum(-1)
        else:  # Categorical / OneHotCategorical
            K = base.probs.shape[-1]
            probs = base.probs.expand(tuple(batch) + tuple(full[1 + nb : 1 + nb + k]) + (K,)).reshape(
                *batch, E, K
            )
            cands = [zf.unsqueeze(0)]
            for c in range(K):
                if trailing:
                    new = torch.zeros_like(zf)
                    new[..., c] = 1
                else:
                    new = torch.full_like(zf, c)
                cands.append(replace_each(zf, new, trailing))
            value = copies_of(torch.cat(cands))

            def gradient(signal: Tensor) -> Tensor:
                g = (
                    signal[1:].detach().reshape(K, E, n, *batch).permute(2, *range(3, 3 + nb), 1, 0)
                )  # [n,*batch,E,K]
                return ((probs - probs.detach()) * g).sum((-1, -2))

        def term(signal: Tensor, f: Cost | None, sample_dims: int) -> tuple[Tensor, Tensor | None]:
            signal, extra = self._controlled(signal, value, dist, f, context)
            rows = gradient(signal)
            return rows, extra

        return Parts(value, copies=_first(value.shape[0], z), term=term)

    def _controlled(
        self,
        signal: Tensor,
        value: Tensor,
        dist: Distribution,
        f: Cost | None,
        context: Tensor | None,
    ) -> tuple[Tensor, Tensor | None]:
        """The copies' signal ``[C, n, *batch]`` after the control variate, and its extra term.

        The one place the control variate is applied: every copy's signal is a row
        (``C·n`` rows), evaluated at that copy's point (``value``, detached).
        """
        baseline = self.baseline
        if baseline is None:
            return signal, None
        batch = tuple(dist.batch_shape)
        event = tuple(dist.event_shape)
        rows = signal_rows(signal.reshape(-1, *batch), 1, baseline)
        points = value.detach().reshape(-1, *batch, *event)
        ctx = SignalContext(dist, points, dist.log_prob(points), cost_function(f), context)
        new, extra = baseline(rows, ctx)
        return (rows - (rows - new).detach()).reshape(signal.shape), extra

    def _normal(
        self,
        dist: Distribution,
        base: Normal,
        k: int,
        draws: dict[str, Tensor],
        context: Tensor | None = None,
    ) -> Parts:
        batch = tuple(dist.batch_shape)
        nb = len(batch)
        eps, w, m, u = draws["eps"], draws["w"], draws["m"], draws["u"]
        full = eps.shape
        n = full[0]
        loc = base.loc.expand(full[1:])
        scale = base.scale.expand(full[1:])
        mu0, sd0 = loc.detach(), scale.detach()
        zf = split_event(mu0 + sd0 * eps, nb, k)
        E = zf.shape[1 + nb]

        def flat(x: Tensor) -> Tensor:
            return split_event(x.expand(full), nb, k)

        mu_f, sd_f = flat(mu0), flat(sd0)
        cands = torch.cat(
            [
                zf.unsqueeze(0),
                replace_each(zf, mu_f + sd_f * flat(w)),
                replace_each(zf, mu_f - sd_f * flat(w)),
                replace_each(zf, mu_f + sd_f * flat(m)),
                replace_each(zf, mu_f + sd_f * flat(m) * flat(u)),
            ]
        )
        value = cands.reshape(cands.shape[0], *full)
        sd_e = split_event(sd0.unsqueeze(0), nb, k).squeeze(0)  # [*batch, E]
        loc_e = split_event(loc.unsqueeze(0), nb, k).squeeze(0)
        scale_e = split_event(scale.unsqueeze(0), nb, k).squeeze(0)

        def term(signal: Tensor, f: Cost | None, sample_dims: int) -> tuple[Tensor, Tensor | None]:
            signal, extra = self._controlled(signal, value, dist, f, context)
            fw_p, fw_m, fm_p, fm_m = (
                signal[1:].detach().reshape(4, E, n, *batch).movedim(1, -1)
            )  # [n, *batch, E]
            g_mu = (fw_p - fw_m) / (sd_e * math.sqrt(2 * math.pi))
            g_sd = (fm_p - fm_m) / sd_e
            return ((loc_e - loc_e.detach()) * g_mu + (scale_e - scale_e.detach()) * g_sd).sum(-1), extra

        return Parts(value, copies=_first(value.shape[0], eps), term=term)


def _first(size: int, like: Tensor) -> Tensor:
    """Copy weights ``[size]`` that keep only the first copy (the draw) in the value."""
    weights = torch.zeros(
        size,
        dtype=like.dtype if like.is_floating_point() else torch.get_default_dtype(),
        device=like.device,
    )
    weights[0] = 1.0
    return weights
