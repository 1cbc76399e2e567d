"""Many independent gradient estimates at once, and their statistics against exact values.

Two engines draw N independent single estimates ``[N, P]`` without a Python loop
of ``backward()`` calls:

* ``vmap``: :func:`scg.diagnostics.gradient_samples` (``torch.func.vmap`` over
  ``torch.func.grad`` with ``randomness="different"``);
* ``batch``: N independent copies of the problem stacked as a leading batch
  dimension of the distribution, one backward pass (batch elements are independent
  expectations in scg's contract, so the gradient of each copy is one estimate).

For the same seed both draw the same random stream for estimators whose draws are
plain tensor ops (tested), so results do not depend on the engine.

Statistics of the estimates: :func:`statistics` (all N in memory) and :class:`Moments`
(streaming power sums; :func:`sample_until` adds chunks until the sampled variances
reach a relative precision) report the same numbers; the standard error of a sampled
variance is :func:`variance_std_error` in both.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from scg.estimators.base import Estimator
from scg.studies.problems import Problem

__all__ = [
    "sample_gradients",
    "statistics",
    "sample_variance_variance",
    "variance_std_error",
    "Moments",
    "sample_until",
]


def _gradient_samples() -> Callable[..., Tensor] | None:
    try:
        from scg.diagnostics import gradient_samples
    except ImportError:
        return None
    return gradient_samples


def _batch_samples(
    estimator: Estimator,
    problem: Problem,
    params: list[Tensor],
    S: int,
    N: int,
    chunk: int = 1 << 16,
) -> Tensor:
    """N estimates from N independent copies of the problem stacked as a leading batch dimension."""
    out = []
    for start in range(0, N, chunk):
        n = min(chunk, N - start)
        q = [p.detach().expand(n, *p.shape).clone().requires_grad_(True) for p in params]
        dist = problem.make_dist(*q)
        if len(dist.batch_shape) == 0 or dist.batch_shape[0] != n:
            raise ValueError(
                f"`make_dist` of problem {problem.name!r} must broadcast a leading parameter dimension "
                f"into a leading batch dimension (got batch_shape {list(dist.batch_shape)} for {n} copies)."
            )
        estimator(problem.f, dist, S).sum().backward()
        estimator.zero_grad(set_to_none=True)
        out.append(torch.cat([qi.grad.reshape(n, -1) for qi in q], dim=1))
    return torch.cat(out, dim=0)


def sample_gradients(
    estimator: Estimator,
    problem: Problem,
    params: list[Tensor],
    S: int,
    N: int,
    engine: str = "auto",
) -> tuple[Tensor, str]:
    """``[N, P]`` independent single estimates of ∇ E[f] and the engine that made them.

    ``engine="auto"`` uses :func:`scg.diagnostics.gradient_samples` and falls back to
    the batch engine if it is missing or cannot trace the estimator.
    """
    gs = _gradient_samples() if engine in ("auto", "vmap") else None
    if engine == "vmap" and gs is None:
        raise ValueError("`engine` 'vmap' needs scg.diagnostics.gradient_samples, which is not importable.")
    if gs is not None:

        def fn(q: list[Tensor]) -> Tensor:
            return estimator(problem.f, problem.make_dist(*q), S).sum()

        state = torch.random.get_rng_state()
        try:
            return gs(fn, list(params), N).detach(), "vmap"
        except (RuntimeError, NotImplementedError, ValueError, TypeError):
            if engine == "vmap":
                raise
            torch.random.set_rng_state(state)  # the batch engine starts from the same random state
    return _batch_samples(estimator, problem, params, S, N), "batch"


def sample_variance_variance(n: int, m2: Tensor, m4: Tensor) -> Tensor:
    r"""Estimate of :math:`\mathrm{Var}(s^2)`, the variance of the unbiased sample variance of n iid draws.

    .. math::
        \mathrm{Var}(s^2) = \frac1N\Big(μ_4 − \frac{N−3}{N−1}\,σ^4\Big)
        \;\approx\; \frac{N}{(N−2)(N−3)}\Big(m_4 − \frac{N^2−3}{(N−1)^2}\, m_2^2\Big)

    (the exact formula with the unbiased estimates of :math:`μ_4` and :math:`σ^4` built
    from :math:`m_2, m_4`, the sample's central moments with divisor N, plugged in).

    Properties: unbiased for every law with a finite fourth moment when N ≥ 4 (plugging
    in :math:`m_4` and :math:`s^4` instead is biased low by O(1/N) relative — a third at
    N = 10 for Normal draws, and ~0 instead of :math:`2σ^4/N^2` for a two-point law); may
    be negative (see :func:`variance_std_error`). For N < 4 it is that plug-in formula.

    Args:
        n: N, the number of draws (≥ 2).
        m2, m4: second and fourth central sample moments (divisor N), any shape.
    """
    if n >= 4:
        return (n / ((n - 2) * (n - 3))) * (m4 - (n * n - 3) / (n - 1) ** 2 * m2 * m2)
    s2 = m2 * n / (n - 1)
    return (m4 - (n - 3) / (n - 1) * s2 * s2) / n


def variance_std_error(n: int, m2: Tensor, m4: Tensor) -> Tensor:
    r"""Standard error of the unbiased sample variance :math:`s^2`: √ of :func:`sample_variance_variance`,
    at least :math:`s^2 \sqrt{2/(N(N−1))}`.

    The floor is :math:`\mathrm{Var}(s^2)` at :math:`μ_4 = σ^4` (a symmetric two-point law),
    the smallest value any law has (:math:`μ_4 ≥ σ^4`), with :math:`s^4` for :math:`σ^4`; it
    keeps the SE away from 0 when N is small or the sample's kurtosis is near 1. Draws that
    are all equal have SE 0.
    """
    s2 = m2 * n / (n - 1)
    return torch.maximum(sample_variance_variance(n, m2, m4), 2.0 * s2 * s2 / (n * (n - 1))).sqrt()


def _z(err: float, scale: float, ref: float) -> float:
    if math.isnan(err):
        return math.nan
    if abs(err) <= 1e-12 * abs(ref):  # equal up to rounding
        return 0.0
    return err / scale if scale > 0 else math.copysign(math.inf, err)


def _summary(
    n: int, mean: float, var: float, var_se: float, exact_gradient: float, exact_variance: float
) -> dict[str, float]:
    se = math.sqrt(var / n)
    rel, var_z = math.nan, _z(var - exact_variance, var_se, exact_variance)
    if not math.isnan(exact_variance):
        # a variance that is 0 in exact arithmetic comes out of quadrature as ~1e-37: equal up to rounding
        if abs(var - exact_variance) <= 1e-12 * max(exact_gradient**2, abs(exact_variance), var):
            rel, var_z = 0.0, 0.0
        elif exact_variance > 0:
            rel = var / exact_variance - 1.0
    return {
        "mean": mean,
        "std_error": se,
        "bias_z": _z(mean - exact_gradient, se, exact_gradient),
        "variance": var,
        "variance_std_error": var_se,
        "variance_rel_error": rel,
        "variance_z": var_z,
        "snr": abs(mean) / math.sqrt(var) if var > 0 else (math.inf if mean != 0 else math.nan),
    }


def statistics(samples: Any, exact_gradient: float, exact_variance: float) -> dict[str, float]:
    """Mean, variance (ddof 1), SE, bias z, SNR and the error of the variance against its exact value.

    ``samples``: ``[N]`` estimates (numpy array or tensor). ``variance_z`` divides by
    :func:`variance_std_error` (a z-score far from 0 flags a wrong exact value or too few
    estimates for a heavy-tailed estimator: compare ``variance_std_error``).
    """
    N = samples.shape[0]
    if bool((samples == samples[0]).all()):  # a constant estimator (e.g. DisARM on one Bernoulli): exactly 0
        return _summary(N, float(samples[0]), 0.0, 0.0, exact_gradient, exact_variance)
    mean = float(samples.mean())
    centred = samples - mean
    m2, m4 = float((centred**2).mean()), float((centred**4).mean())
    var = float((centred**2).sum() / (N - 1))
    var_se = float(
        variance_std_error(N, torch.tensor(m2, dtype=torch.float64), torch.tensor(m4, dtype=torch.float64))
    )
    return _summary(N, mean, var, var_se, exact_gradient, exact_variance)


class Moments:
    """Streaming moments of estimates ``[n, P]``: power sums of ``G − shift`` in float64.

    ``shift`` (the exact gradient) keeps the sums well conditioned, so the
    variance and the fourth central moment are accurate for N up to 10⁹.
    """

    def __init__(self, shift: Tensor) -> None:
        self.shift = shift.detach().double().reshape(-1)
        self.sums = torch.zeros(4, self.shift.numel(), dtype=torch.float64, device=self.shift.device)
        self.low = torch.full_like(self.shift, math.inf)
        self.high = torch.full_like(self.shift, -math.inf)
        self.n = 0

    def update(self, G: Tensor) -> None:
        """Add estimates ``G [n, P]``."""
        if G.device.type == "cpu":  # small reductions: one thread (parallel regions cost ms on a busy CPU)
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                self._update(G)
            finally:
                torch.set_num_threads(threads)
        else:
            self._update(G)
        self.n += G.shape[0]

    def _update(self, G: Tensor) -> None:
        g = G.detach().double().T.contiguous()  # [P, n]: reduce along contiguous memory
        d = g - self.shift[:, None]
        d2 = d * d
        self.sums += torch.stack([d.sum(1), d2.sum(1), (d2 * d).sum(1), (d2 * d2).sum(1)])
        low, high = torch.aminmax(g, dim=1)
        self.low = torch.minimum(self.low, low)
        self.high = torch.maximum(self.high, high)

    def variance(self) -> tuple[Tensor, Tensor]:
        """Sample variance (ddof 1) and its standard error (:func:`variance_std_error`), ``[P]`` each
        (CPU float64). A parameter whose estimates are all equal has variance exactly 0."""
        n = self.n
        s1, s2, s3, s4 = (x.cpu() for x in self.sums / n)
        m2 = (s2 - s1 * s1).clamp_min(0.0)
        m4 = (s4 - 4 * s1 * s3 + 6 * s1 * s1 * s2 - 3 * s1**4).clamp_min(0.0)
        var = m2 * n / (n - 1)
        se = variance_std_error(n, m2, m4)
        constant = (self.high == self.low).cpu()
        return torch.where(constant, 0.0, var), torch.where(constant, 0.0, se)

    def stats(self, p: int, exact_gradient: float, exact_variance: float) -> dict[str, float]:
        """Mean, SE, bias z, variance, its SE, relative error and z against the exact variance, SNR
        (the keys and conventions of :func:`statistics`)."""
        var, var_se = (float(v[p]) for v in self.variance())
        mean = float(self.shift[p].cpu() + self.sums[0, p].cpu() / self.n)
        return _summary(self.n, mean, var, var_se, exact_gradient, exact_variance)

    def done(self, rows: Sequence[int], rel_se: float) -> bool:
        """Whether every parameter in ``rows`` has ``SE(variance) <= rel_se · variance`` (or variance 0)."""
        var, se = self.variance()
        return all(bool(var[p] == 0) or bool(se[p] <= rel_se * var[p]) for p in rows)


def sample_until(
    estimator: Estimator,
    problem: Problem,
    params: list[Tensor],
    rows: Sequence[int],
    shift: Tensor,
    *,
    rel_se: float,
    min_estimates: int,
    max_estimates: int,
    chunk: int,
    num_samples: int = 1,
) -> Moments:
    """Estimates in chunks (the batch engine of :func:`sample_gradients`) until the variances of
    ``rows`` have a relative SE ≤ ``rel_se`` (once ``min_estimates`` are drawn) or ``max_estimates``."""
    moments = Moments(shift)
    while moments.n < max_estimates:
        n = min(chunk, max_estimates - moments.n)
        G, _ = sample_gradients(estimator, problem, params, num_samples, n, engine="batch")
        moments.update(G)
        if moments.n >= min_estimates and moments.done(rows, rel_se):
            break
    return moments
