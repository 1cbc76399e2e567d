"""Exact moments of an estimator's gradient, and the check that its mean is the exact gradient.

Nothing here samples. :func:`exact_moments` integrates the estimator's gradient
over the laws it declares (``Estimator.laws``) on tensor-product quadrature grids,
refined until a tolerance is met (:mod:`scg.testing._refine`); :func:`exact_gradient`
(in :mod:`scg.testing._gradient`) integrates ``f`` against the distribution itself;
:func:`assert_unbiased` compares the two.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from scg.estimators.base import Estimator
from scg.estimators.pathwise import ImplicitSample
from scg.testing import _grid, _rules
from scg.testing._breakpoints import Breakpoints, law_points, nested_points
from scg.testing._gradient import MakeDist, exact_gradient
from scg.testing._refine import refine
from scg.testing._util import (
    as_params,
    check_int,
    check_nodes,
    check_tolerance,
    flat,
    frozen,
    labels,
    no_validation,
)

__all__ = ["ExactMoments", "exact_moments", "exact_gradient", "assert_unbiased"]


class ExactMoments(NamedTuple):
    """Exact moments of one gradient estimate, over the flattened, concatenated parameters.

    Attributes:
        mean: ``[P]``, ``E[ĝ]``.
        second_moment: ``[P]``, ``E[ĝ²]`` (elementwise).
        variance: ``[P]``, ``Var[ĝ]``.
        mean_error: ``[P]``, estimated absolute error of ``mean`` (see *Accuracy* in
            :func:`exact_moments`).
        variance_error: ``[P]``, estimated absolute error of ``variance``.
    """

    mean: Tensor
    second_moment: Tensor
    variance: Tensor
    mean_error: Tensor
    variance_error: Tensor


# ----------------------------------------------------------------------------- public API


def exact_moments(
    estimator: Estimator,
    make_dist: MakeDist,
    params: Tensor | Sequence[Tensor],
    f: Callable[[Tensor], Tensor],
    *,
    num_samples: int = 1,
    breakpoints: Breakpoints = None,
    nodes: None | int | dict[str, int] = None,
    max_points: int = 2_000_000,
    rtol: float = 1e-8,
    atol: float = 1e-12,
    context: Tensor | None = None,
) -> ExactMoments:
    r"""Mean, second moment and variance of one estimate of :math:`∇_θ E[f]`, by quadrature to a tolerance.

    .. math::
        E[\hat g] = \sum_i w_i\, ∇_θ \hat L(ξ_i), \qquad
        E[\hat g^2] = \sum_i w_i\, (∇_θ \hat L(ξ_i))^2

    over a tensor-product grid of nodes :math:`ξ_i` with weights :math:`w_i` for
    the laws ``estimator.laws(dist, num_samples)``: Gauss–Hermite for standard
    normals, double-exponential rules on the pieces between breakpoints for
    uniforms, Gauss rules for the Rayleigh and Maxwell densities, enumeration of
    discrete supports, Gauss or double-exponential rules for continuous
    ``FromDistribution`` elements. :math:`\hat L` is ``surrogate(...).sum()``;
    gradients are per grid point with ``torch.func.vmap(torch.func.grad(...))``
    (a Python loop with ``torch.autograd`` if vmap fails; a warning says so).
    The estimator runs in eval mode (running statistics frozen, then restored).

    Requirements: an estimator whose randomness is fully declared by ``laws``
    (explicit noise; implicit reparameterisation is refused). Before integrating,
    the gradient is probed at grid points drawn by probability mass: a law it does
    not depend on gets one node (e.g. the noise of the value in measure-valued
    estimators), a law on which it is constant between breakpoints gets one node
    per piece (e.g. DisARM's uniforms); a law is never frozen on probes that all
    return zero. Batch elements are independent expectations, so each is
    integrated on its own grid (the others held at fixed draws) and the moments
    combine exactly: means add, and variances add by independence.

    Accuracy. Enumeration of discrete supports is exact (Poisson and Geometric are
    truncated where the tail mass is below 1e-16). Every continuous variable's rule
    is refined by doubling its nodes until the estimated error meets
    ``atol + rtol·|value|`` for every component of the mean and of the variance:
    the error of the result is estimated as the sum, over variables, of the change
    when that variable's nodes are doubled (``mean_error``, ``variance_error``;
    changes below 1e-13 of the summands' size count as rounding). Gauss rules
    converge exponentially for smooth costs (exactly, at a few nodes, for
    polynomials under Gauss–Hermite; the uniform and Maxwell-coupled terms of
    measure-valued estimators are not polynomial in their noise, so they converge
    but are not exact); peaked costs need more nodes, and the refinement adds
    them. A cost that jumps converges only algebraically unless its
    ``breakpoints`` are given: they split the rules where the jump lies in each
    law's noise (Pathwise and MeasureValued on Normal are mapped, MeasureValued's
    σ coupling ``μ + σMU`` with a rule for U nested in M's nodes). If the tolerance
    cannot be met within ``max_points`` (the refined grids included), a
    ``ValueError`` names the law and the accuracy reached — never a silently
    inaccurate number. The estimate compares n with 2n nodes, so it can be fooled
    by a feature that neither grid sees (a jump without its breakpoint, a spike
    narrower than the node spacing): pass breakpoints.

    Args:
        estimator: an :class:`scg.Estimator`.
        make_dist: ``make_dist(*params) -> Distribution``.
        params: tuple of floating tensors (float64 recommended); gradients are taken
            with respect to them, flattened and concatenated (P numbers).
        f: cost ``[S, *batch, *event] -> [S, *batch]``.
        num_samples: S draws in the one estimate.
        breakpoints: points in z-space where ``f`` jumps (or peaks narrowly: the rules
            are split there, which puts nodes near them) — a float, a sequence, or a
            tensor broadcastable to ``[*batch, *event, k]`` — used to split
            continuous supports (and, for ``Pathwise`` and ``MeasureValued``, mapped
            into noise space); or a dict ``{law name: tensor [*law.shape, k]}`` of
            noise-space points.
        nodes: starting nodes per piece for every continuous variable (overrides the
            budget; the refinement doubles them where needed), or ``{law name: nodes}``
            for some laws (the others adapt). :func:`exact_gradient`'s own law is named ``"z"``.
        max_points: largest grid allowed (every refinement included).
        rtol, atol: the tolerance of mean and variance, per component.
        context: passed to ``surrogate`` (learned baselines).

    Returns:
        :class:`ExactMoments` with ``[P]`` float64 tensors.

    Raises:
        ValueError: implicit reparameterisation; a grid larger than ``max_points``;
            the tolerance not reached within ``max_points``; a gradient that is not
            finite at a grid point.
        TypeError: a distribution the harness cannot enumerate or integrate.

    References:
        Mohamed, Rosca, Figurnov & Mnih, "Monte Carlo Gradient Estimation in Machine
        Learning", JMLR 2020, §3 and their mc_gradients code (numerical integration
        of estimators). https://arxiv.org/abs/1906.10652
    """
    S = check_int("num_samples", num_samples)
    check_int("max_points", max_points)
    check_nodes(nodes)
    check_tolerance(rtol, atol)
    if not callable(getattr(estimator, "laws", None)) or not callable(getattr(estimator, "surrogate", None)):
        raise TypeError(f"`estimator` must be an scg Estimator; got {type(estimator).__name__}.")
    for arg, value in (("make_dist", make_dist), ("f", f)):
        if not callable(value):
            raise TypeError(f"`{arg}` must be callable; got {type(value).__name__}.")
    ps = as_params(params)
    name = type(estimator).__name__
    with no_validation(), frozen(estimator):
        dist0 = make_dist(*ps)
        laws = estimator.laws(dist0, S)
        if not laws or any(isinstance(law, ImplicitSample) for law in laws.values()):
            raise ValueError(
                f"`estimator` {name} declares no explicit noise for "
                f"{type(dist0).__name__} (implicit reparameterisation: the draw is dist.rsample's own); the exact harness needs explicit noise — use a distribution with an "
                "explicit reparameterisation (Normal, Laplace, Exponential, Uniform, ...) or ScoreFunction."
            )
        # `nodes` may also name "z", exact_gradient's own law (assert_unbiased passes it to both)
        for arg, given, known in (
            ("breakpoints", breakpoints, set(laws)),
            ("nodes", nodes, set(laws) | {"z"}),
        ):
            if isinstance(given, dict) and not set(given) <= known:
                raise ValueError(
                    f"`{arg}` names laws {sorted(set(given) - known)} that "
                    f"{name} does not draw; its laws are {sorted(laws)}."
                )
        specs: list[_rules.Spec] = []
        for law_name, law in laws.items():
            points = law_points(estimator, dist0, law_name, law, breakpoints)
            specs += _rules.law_specs(law_name, law, points, max_points)
        specs = _nest(specs, nested_points(estimator, dist0, laws, breakpoints))
        shapes = {law_name: tuple(law.shape) for law_name, law in laws.items()}
        dtypes = {law_name: _rules.sample_dtype(law) for law_name, law in laws.items()}
        device = ps[0].device

        groups = _grid.batch_groups(specs, shapes, tuple(dist0.batch_shape))
        fill = None
        if len(groups) > 1:  # batch elements are integrated one at a time, the others held fixed
            fill = _grid.fill_values(
                _grid.build(specs, [1] * len(specs), dtypes, device), shapes, dtypes, device
            )
        P = sum(p.numel() for p in ps)
        total = torch.zeros(2, P, dtype=torch.float64, device=device)  # mean, variance
        error = torch.zeros(2, P, dtype=torch.float64, device=device)
        state = {"vmap": True}
        for b, members in enumerate(groups):

            def surrogate_sum(p: tuple[Tensor, ...], draws: dict[str, Tensor], b: int = b) -> Tensor:
                out = estimator.surrogate(f, make_dist(*p), draws, context=context)
                return out.reshape(-1)[b] if len(groups) > 1 else out.sum()

            batched = torch.func.vmap(torch.func.grad(surrogate_sum), in_dims=(None, 0))

            def gradients_at(d: dict[str, Tensor], batched: Callable = batched) -> Tensor:
                return flat(batched(ps, d), len(next(iter(d.values()))))

            parts = _simplify(
                [specs[i] for i in members],
                gradients_at,
                lambda sp: _grid.make_grid(sp, shapes, dtypes, device, 2**62, nodes, fill),
                P,
            )
            for comps, sub in parts:

                def evaluate(
                    counts: list[int],
                    sub: list[_rules.Spec] = sub,
                    comps: Tensor = comps,
                    surrogate_sum: Callable = surrogate_sum,
                    batched: Callable = batched,
                ) -> tuple[Tensor, Tensor]:
                    grid = _grid.Grid(_grid.build(sub, counts, dtypes, device), shapes, dtypes, device, fill)
                    value, scale = _integrate(grid, surrogate_sum, batched, ps, estimator, state)
                    return value[:, comps], scale[:, comps]

                start = _grid.choose_nodes(sub, max_points, nodes, headroom=2)
                done = refine(
                    sub,
                    start,
                    evaluate,
                    rtol=rtol,
                    atol=atol,
                    max_points=max_points,
                    what=f"exact_moments of {name}",
                    rows=("mean", "variance"),
                    columns=comps.tolist(),
                )
                total[:, comps] += done.value  # independent batch elements: means and variances add
                error[:, comps] += done.error
    mean, variance = total
    return ExactMoments(mean, variance + mean**2, variance, error[0], error[1])


def _nest(specs: list[_rules.Spec], nested: dict[str, tuple[str, np.ndarray]]) -> list[_rules.Spec]:
    """Replace the rules of an inner law and its outer law, element by element, by nested rules."""
    for inner, (outer, cuts) in nested.items():
        inner_at = {int(s.positions[0]): s for s in specs if s.law == inner}
        specs = [
            _rules.nested_uniform_spec(
                s, inner, inner_at[int(s.positions[0])].positions, cuts[int(s.positions[0])]
            )
            if s.law == outer
            else s
            for s in specs
            if s.law != inner
        ]
    return specs


def _integrate(
    grid: _grid.Grid,
    total: Callable,
    batched: Callable,
    ps: tuple[Tensor, ...],
    estimator: Estimator,
    state: dict,
) -> tuple[Tensor, Tensor]:
    """``[mean, variance]`` of the gradient over the grid, and ``[E|ĝ|, E ĝ²]`` (the summands' scale)."""
    P = sum(p.numel() for p in ps)
    s0 = torch.zeros((), dtype=torch.float64, device=ps[0].device)
    mean, m2, s_abs, s_sq = (torch.zeros(P, dtype=torch.float64, device=ps[0].device) for _ in range(4))
    for draws, w in grid.chunks(_grid.chunk_size(grid.shapes)):
        G = None
        if state["vmap"]:
            try:
                G = flat(batched(ps, draws), len(w))
            except Exception as exc:  # noqa: BLE001 - any vmap limitation: fall back
                state["vmap"] = False
                warnings.warn(
                    f"exact_moments: torch.func.vmap failed for {type(estimator).__name__} "
                    f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                    f"falling back to a Python loop over the grid points (slow).",
                    RuntimeWarning,
                    stacklevel=3,
                )
        if G is None:
            G = torch.stack(
                [_loop_grad(total, ps, {k: v[i] for k, v in draws.items()}) for i in range(len(w))]
            )
        G = G.detach()
        if not bool(torch.isfinite(G).all()):
            i = int((~torch.isfinite(G)).any(1).nonzero()[0, 0])
            at = {k: v[i].tolist() for k, v in draws.items()}
            raise ValueError(
                f"the gradient of {type(estimator).__name__}'s surrogate is not finite at a grid "
                f"point with weight {float(w[i]):.3g}: draws {at}. Check f and the distribution "
                "for overflow at extreme draws (or pass `nodes`)."
            )
        # chunks combine by Chan et al.'s pairwise update: no cancellation between E[ĝ²] and E[ĝ]²
        wc = w.sum()
        mc = (w @ G) / wc
        delta = mc - mean
        m2 = m2 + w @ (G - mc) ** 2 + delta**2 * s0 * wc / (s0 + wc)
        mean = mean + delta * wc / (s0 + wc)
        s0 = s0 + wc
        s_abs = s_abs + w @ G.abs()
        s_sq = s_sq + w @ G**2
    return torch.stack([mean, m2 / s0]), torch.stack([s_abs, s_sq]) / s0


def _simplify(
    specs: list[_rules.Spec],
    gradients: Callable[[dict[str, Tensor]], Tensor],
    probe_grid: Callable[[list[_rules.Spec]], _grid.Grid],
    P: int,
) -> list[tuple[Tensor, list[_rules.Spec]]]:
    """Split the gradient's components by the laws they depend on, and simplify each part's rules.

    Components are grouped by the set of laws they depend on (found by probing); each
    group is integrated on the grid of its own laws only, the others held at one node
    (e.g. the measure-valued μ-derivative needs W alone, the σ-derivative M and U).
    Components zero at every probe (which shows nothing) join the group with the most
    laws (all laws if no component was seen nonzero).
    Within a group, laws on which the gradient is piecewise constant get one node per
    piece (e.g. DisARM's uniforms). Probing uses grids that are never enumerated (no size
    limit). Returns ``[(components, specs)]``; ``[(all, specs)]`` if probing fails (the
    caller then falls back to a loop, with a warning).
    """
    everything = [(torch.arange(P), specs)]
    if not any(s.kind != "fixed" or s.size > 1 for s in specs):
        return everything
    try:
        grid = probe_grid(specs)
        depends, seen = grid.probe(gradients, within=False)
        parts: dict[tuple[str, ...], list[int]] = {}
        unseen = []
        for p in range(P):
            if not bool(seen[p]):
                unseen.append(p)
                continue
            parts.setdefault(tuple(law for law, d in depends.items() if bool(d[p])), []).append(p)
        if unseen:  # zero at every probe (e.g. another batch element's parameters): no evidence,
            widest = max(parts, key=len) if parts else tuple(depends)  # so the grid of the most laws
            parts.setdefault(widest, []).extend(unseen)
        out = []
        for laws, components in parts.items():
            inert = [law for law in depends if law not in laws]
            sub = _grid.freeze(specs, grid.variables, inert, per_piece=False) if inert else specs
            comps = torch.tensor(sorted(components))

            def components_at(d: dict[str, Tensor], comps: Tensor = comps) -> Tensor:
                return gradients(d)[:, comps]

            varies, seen_here = probe_grid(sub).probe(components_at, within=True)
            constant = [law for law, d in varies.items() if bool(seen_here.any()) and not bool(d.any())]
            if constant:
                sub = _grid.freeze(sub, probe_grid(sub).variables, constant, per_piece=True)
            out.append((comps, sub))
        return out
    except Exception:  # noqa: BLE001 - e.g. a vmap limitation, reported by the caller
        return everything


def _loop_grad(total: Callable, ps: tuple[Tensor, ...], draws: dict[str, Tensor]) -> Tensor:
    leaves = tuple(p.clone().requires_grad_(True) for p in ps)
    out = total(leaves, draws)
    grads = torch.autograd.grad(out, leaves, allow_unused=True)
    return flat([torch.zeros_like(p) if g is None else g for p, g in zip(leaves, grads, strict=False)])


def assert_unbiased(
    estimator: Estimator,
    make_dist: MakeDist,
    params: Tensor | Sequence[Tensor],
    f: Callable[[Tensor], Tensor],
    *,
    num_samples: int = 1,
    atol: float = 1e-8,
    rtol: float = 1e-7,
    breakpoints: Breakpoints = None,
    nodes: None | int | dict[str, int] = None,
    max_points: int = 2_000_000,
    context: Tensor | None = None,
) -> ExactMoments:
    """Assert ``E[∇ surrogate] = ∇ E[f]`` exactly (to ``atol + rtol·|∇E[f]|`` per parameter).

    Both sides are computed to a tenth of that tolerance (``rtol/10``, ``atol/10``; see
    *Accuracy* in :func:`exact_moments`), so a difference beyond it is bias, not
    quadrature error.

    Args:
        as in :func:`exact_moments`; ``atol``, ``rtol``: the tolerance of the comparison.

    Returns:
        The :class:`ExactMoments` (so a test can also look at the variance).

    Raises:
        AssertionError: with a table of the parameters, both values and their difference.
        ValueError: as :func:`exact_moments` and :func:`exact_gradient` (among them: the
            tolerance cannot be reached within ``max_points``).
    """
    check_tolerance(rtol, atol)
    m = exact_moments(
        estimator,
        make_dist,
        params,
        f,
        num_samples=num_samples,
        breakpoints=breakpoints,
        nodes=nodes,
        max_points=max_points,
        rtol=rtol / 10,
        atol=atol / 10,
        context=context,
    )
    g = exact_gradient(
        make_dist,
        params,
        f,
        breakpoints=breakpoints,
        nodes=nodes,
        max_points=max_points,
        rtol=rtol / 10,
        atol=atol / 10,
    )
    diff = (m.mean - g).abs()
    bad = ~(diff <= atol + rtol * g.abs())  # nan counts as a failure
    if bool(bad.any()):
        names = labels(as_params(params))
        rows = [f"  {'parameter':<16} {'E[estimate]':>17} {'∇E[f]':>17} {'|diff|':>10}"]
        for k in range(len(g)):
            mark = "  <-" if bool(bad[k]) else ""
            rows.append(
                f"  {names[k]:<16} {float(m.mean[k]):>17.10e} {float(g[k]):>17.10e} "
                f"{float(diff[k]):>10.3e}{mark}"
            )
        raise AssertionError(
            f"{type(estimator).__name__} is biased here: E[∇ surrogate] != ∇ E[f] for "
            f"{int(bad.sum())} of {len(g)} parameters (num_samples={num_samples}, atol={atol}, rtol={rtol}).\n"
            + "\n".join(rows)
        )
    return m
