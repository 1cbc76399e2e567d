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
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor

from scg.estimators.base import Estimator
from scg.studies.problems import Problem

__all__ = ["sample_gradients", "statistics"]


def _gradient_samples() -> Optional[Callable[..., Tensor]]:
    try:
        from scg.diagnostics import gradient_samples
    except ImportError:
        return None
    return gradient_samples


def _batch_samples(estimator: Estimator, problem: Problem, params: list[Tensor], S: int, N: int,
                   chunk: int = 1 << 16) -> Tensor:
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


def sample_gradients(estimator: Estimator, problem: Problem, params: list[Tensor], S: int, N: int,
                     engine: str = "auto") -> tuple[Tensor, str]:
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


def statistics(samples: np.ndarray, exact_gradient: float, exact_variance: float) -> dict[str, float]:
    """Mean, variance (ddof 1), SE, bias z, SNR and the error of the variance against its exact value.

    ``variance_z`` uses the asymptotic standard error of a sample variance,
    :math:`\\sqrt{(m_4 - \\frac{N-3}{N-1} s^4)/N}` with :math:`m_4` the fourth central moment
    (a z-score far from 0 flags a wrong exact value or too few estimates for a
    heavy-tailed estimator: compare ``variance_std_error``).
    """
    N = samples.shape[0]
    if bool((samples == samples[0]).all()):  # a constant estimator (e.g. DisARM on one Bernoulli): exactly 0
        mean, var, centred = float(samples[0]), 0.0, np.zeros_like(samples)
    else:
        mean = float(samples.mean())
        centred = samples - mean
        var = float((centred ** 2).sum() / (N - 1))
    se = math.sqrt(var / N)
    m4 = float((centred ** 4).mean())
    # finite-sample SE of s² (exact for iid draws given μ4 and σ⁴; stays > 0 for two-point laws)
    var_se = math.sqrt(max(m4 - (N - 3) / (N - 1) * var * var, 0.0) / N)

    def z(err: float, scale: float, ref: float) -> float:
        if math.isnan(err):
            return math.nan
        if abs(err) <= 1e-12 * abs(ref):  # equal up to rounding
            return 0.0
        return err / scale if scale > 0 else math.copysign(math.inf, err)

    rel, var_z = math.nan, z(var - exact_variance, var_se, exact_variance)
    if not math.isnan(exact_variance):
        # a variance that is 0 in exact arithmetic comes out of quadrature as ~1e-37: equal up to rounding
        if abs(var - exact_variance) <= 1e-12 * max(exact_gradient ** 2, abs(exact_variance), var):
            rel, var_z = 0.0, 0.0
        elif exact_variance > 0:
            rel = var / exact_variance - 1.0
    return {
        "mean": mean,
        "std_error": se,
        "bias_z": z(mean - exact_gradient, se, exact_gradient),
        "variance": var,
        "variance_std_error": var_se,
        "variance_rel_error": rel,
        "variance_z": var_z,
        "snr": abs(mean) / math.sqrt(var) if var > 0 else (math.inf if mean != 0 else math.nan),
    }
