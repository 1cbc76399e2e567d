"""Exact moments of an estimator's gradient, and the check that its mean is the exact gradient.

Nothing here samples. :func:`exact_moments` integrates the estimator's gradient
over the laws it declares (``Estimator.laws``) on a tensor-product quadrature
grid; :func:`exact_gradient` (in :mod:`scg.testing._gradient`) integrates ``f``
against the distribution itself; :func:`assert_unbiased` compares the two.
"""

from __future__ import annotations

import warnings
from typing import Callable, NamedTuple, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from scg.estimators.pathwise import ImplicitSample
from scg.testing import _grid, _rules
from scg.testing._breakpoints import Breakpoints, law_points
from scg.testing._gradient import MakeDist, exact_gradient
from scg.testing._util import as_params, check_int, check_nodes, flat, frozen, labels, no_validation

__all__ = ["ExactMoments", "exact_moments", "exact_gradient", "assert_unbiased"]


class ExactMoments(NamedTuple):
    """Exact moments of one gradient estimate, over the flattened, concatenated parameters.

    Attributes:
        mean: ``[P]``, ``E[ĝ]``.
        second_moment: ``[P]``, ``E[ĝ²]`` (elementwise).
        variance: ``[P]``, ``Var[ĝ]``.
    """

    mean: Tensor
    second_moment: Tensor
    variance: Tensor


# ----------------------------------------------------------------------------- public API


def exact_moments(
    estimator: nn.Module,
    make_dist: MakeDist,
    params: Union[Tensor, Sequence[Tensor]],
    f: Callable[[Tensor], Tensor],
    *,
    num_samples: int = 1,
    breakpoints: Breakpoints = None,
    nodes: Union[None, int, dict[str, int]] = None,
    max_points: int = 2_000_000,
    context: Optional[Tensor] = None,
) -> ExactMoments:
    r"""Exact mean, second moment and variance of one estimate of :math:`∇_θ E[f]`.

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
    (explicit noise; implicit reparameterisation is refused) and a grid of at most
    ``max_points`` points. Node counts adapt to the budget (up to 96 Gauss–Hermite
    nodes for one variable; fewer when there are many) unless ``nodes`` is given.
    Before integrating, the gradient is probed at a few grid points: a law it does
    not depend on gets one node (e.g. the noise of the value in measure-valued
    estimators), a law on which it is constant between breakpoints gets one node
    per piece (e.g. DisARM's uniforms). Batch elements are independent expectations,
    so each is integrated on its own grid (the others held at fixed draws) and the
    moments combine exactly: means add, and variances add by independence.

    Accuracy: Gauss rules are exact for polynomials (a degree-4 cost needs a handful
    of nodes); smooth costs converge exponentially. A cost that jumps needs its
    ``breakpoints``; jumps whose position in one noise variable depends on another
    (the σ coupling ``μ + σMU`` of :class:`scg.MeasureValued`) cannot be split on a
    product grid and converge only algebraically.

    Args:
        estimator: an :class:`scg.Estimator`.
        make_dist: ``make_dist(*params) -> Distribution``.
        params: tuple of floating tensors (float64 recommended); gradients are taken
            with respect to them, flattened and concatenated (P numbers).
        f: cost ``[S, *batch, *event] -> [S, *batch]``.
        num_samples: S draws in the one estimate.
        breakpoints: points in z-space where ``f`` jumps — a float, a sequence, or a
            tensor broadcastable to ``[*batch, *event, k]`` — used to split
            continuous supports (and, for ``Pathwise``, mapped into noise space);
            or a dict ``{law name: tensor [*law.shape, k]}`` of noise-space points.
        nodes: nodes per piece for every continuous variable (overrides the budget), or
            ``{law name: nodes}`` for some laws (the others adapt). :func:`exact_gradient`'s
            own law is named ``"z"``.
        max_points: largest grid allowed.
        context: passed to ``surrogate`` (learned baselines).

    Returns:
        :class:`ExactMoments` with ``[P]`` float64 tensors.

    Raises:
        ValueError: implicit reparameterisation; a grid larger than ``max_points``;
            a gradient that is not finite at a grid point.
        TypeError: a distribution the harness cannot enumerate or integrate.

    References:
        Mohamed, Rosca, Figurnov & Mnih, "Monte Carlo Gradient Estimation in Machine
        Learning", JMLR 2020, §3 and their mc_gradients code (numerical integration
        of estimators). https://arxiv.org/abs/1906.10652
    """
    S = check_int("num_samples", num_samples)
    check_int("max_points", max_points)
    check_nodes(nodes)
    if not callable(getattr(estimator, "laws", None)) or not callable(getattr(estimator, "surrogate", None)):
        raise TypeError(f"`estimator` must be an scg Estimator; got {type(estimator).__name__}.")
    ps = as_params(params)
    with no_validation(), frozen(estimator):
        dist0 = make_dist(*ps)
        laws = estimator.laws(dist0, S)
        if not laws or any(isinstance(law, ImplicitSample) for law in laws.values()):
            raise ValueError(
                f"`estimator` {type(estimator).__name__} declares no explicit noise for "
                f"{type(dist0).__name__} (implicit reparameterisation: the draw is dist.rsample's own); the exact harness needs explicit noise — use a distribution with an "
                "explicit reparameterisation (Normal, Laplace, Exponential, Uniform, ...) or ScoreFunction."
            )
        if isinstance(breakpoints, dict) and not set(breakpoints) <= set(laws):
            raise ValueError(
                f"`breakpoints` names laws {sorted(set(breakpoints) - set(laws))} that "
                f"{type(estimator).__name__} does not draw; its laws are {sorted(laws)}."
            )
        specs: list[_rules.Spec] = []
        for name, law in laws.items():
            specs += _rules.law_specs(name, law, law_points(estimator, dist0, name, law, breakpoints))
        shapes = {name: tuple(law.shape) for name, law in laws.items()}
        dtypes = {name: _rules.sample_dtype(law) for name, law in laws.items()}
        device = ps[0].device

        groups = _grid.batch_groups(specs, shapes, tuple(dist0.batch_shape))
        fill = None
        if len(groups) > 1:  # batch elements are integrated one at a time, the others held fixed
            fill = _grid.fill_values(_grid.build(specs, [1] * len(specs), dtypes, device), shapes, dtypes, device)
        P = sum(p.numel() for p in ps)
        mean = torch.zeros(P, dtype=torch.float64, device=device)
        variance = torch.zeros(P, dtype=torch.float64, device=device)
        state = {"vmap": True}
        for b, members in enumerate(groups):
            def total(p: tuple[Tensor, ...], draws: dict[str, Tensor], b: int = b) -> Tensor:
                out = estimator.surrogate(f, make_dist(*p), draws, context=context)
                return out.reshape(-1)[b] if len(groups) > 1 else out.sum()

            batched = torch.func.vmap(torch.func.grad(total), in_dims=(None, 0))
            sub = _simplify(
                [specs[i] for i in members], lambda d: flat(batched(ps, d), len(next(iter(d.values())))),
                lambda sp: _grid.make_grid(sp, shapes, dtypes, device, 2**62, nodes, fill),
            )
            grid = _grid.make_grid(sub, shapes, dtypes, device, max_points, nodes, fill)
            m, v = _integrate(grid, total, batched, ps, estimator, state)
            mean, variance = mean + m, variance + v  # independent batch elements
    return ExactMoments(mean, variance + mean**2, variance)


def _integrate(grid: _grid.Grid, total: Callable, batched: Callable, ps: tuple[Tensor, ...],
               estimator: nn.Module, state: dict) -> tuple[Tensor, Tensor]:
    """Weighted mean and variance of the gradient over the grid (vmap, or a loop if vmap fails)."""
    P = sum(p.numel() for p in ps)
    s0 = torch.zeros((), dtype=torch.float64, device=ps[0].device)
    s1 = torch.zeros(P, dtype=torch.float64, device=ps[0].device)
    s2 = torch.zeros(P, dtype=torch.float64, device=ps[0].device)
    shift: Optional[Tensor] = None
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
            G = torch.stack([_loop_grad(total, ps, {k: v[i] for k, v in draws.items()}) for i in range(len(w))])
        G = G.detach()
        if not bool(torch.isfinite(G).all()):
            i = int((~torch.isfinite(G)).any(1).nonzero()[0, 0])
            at = {k: v[i].tolist() for k, v in draws.items()}
            raise ValueError(
                f"the gradient of {type(estimator).__name__}'s surrogate is not finite at a grid "
                f"point with weight {float(w[i]):.3g}: draws {at}. Check f and the distribution "
                "for overflow at extreme draws (or pass `nodes`)."
            )
        if shift is None:
            shift = (w @ G) / w.sum()
        s0 = s0 + w.sum()
        s1 = s1 + w @ G
        s2 = s2 + w @ (G - shift) ** 2
    mean = s1 / s0
    return mean, (s2 / s0 - (mean - shift) ** 2).clamp_min(0.0)


def _simplify(specs: list[_rules.Spec], gradients: Callable[[dict[str, Tensor]], Tensor],
              probe_grid: Callable[[list[_rules.Spec]], _grid.Grid]) -> list[_rules.Spec]:
    """Give one node to laws the gradient ignores (e.g. MVD's value noise) and one node per
    piece to laws on which it is piecewise constant (e.g. DisARM's uniforms), so the other
    laws get the budget. Probing uses grids that are never enumerated (no size limit).
    Skipped if probing fails (the caller then falls back to a loop, with a warning)."""
    try:
        grid = probe_grid(specs)
        if len(grid.shapes) > 1:
            inert = grid.probe(gradients, within=False)
            if inert:
                specs = _grid.freeze(specs, grid.variables, inert, per_piece=False)
                grid = probe_grid(specs)
        constant = grid.probe(gradients, within=True)
        if constant:
            specs = _grid.freeze(specs, grid.variables, constant, per_piece=True)
    except Exception:  # noqa: BLE001 - e.g. a vmap limitation, reported by the caller
        pass
    return specs


def _loop_grad(total: Callable, ps: tuple[Tensor, ...], draws: dict[str, Tensor]) -> Tensor:
    leaves = tuple(p.clone().requires_grad_(True) for p in ps)
    out = total(leaves, draws)
    grads = torch.autograd.grad(out, leaves, allow_unused=True)
    return flat([torch.zeros_like(p) if g is None else g for p, g in zip(leaves, grads)])


def assert_unbiased(
    estimator: nn.Module,
    make_dist: MakeDist,
    params: Union[Tensor, Sequence[Tensor]],
    f: Callable[[Tensor], Tensor],
    *,
    num_samples: int = 1,
    atol: float = 1e-8,
    rtol: float = 1e-7,
    breakpoints: Breakpoints = None,
    nodes: Union[None, int, dict[str, int]] = None,
    max_points: int = 2_000_000,
    context: Optional[Tensor] = None,
) -> ExactMoments:
    """Assert ``E[∇ surrogate] = ∇ E[f]`` exactly (to ``atol + rtol·|∇E[f]|`` per parameter).

    Args:
        as in :func:`exact_moments`; ``atol``, ``rtol``: tolerances.

    Returns:
        The :class:`ExactMoments` (so a test can also look at the variance).

    Raises:
        AssertionError: with a table of the parameters, both values and their difference.
    """
    m = exact_moments(estimator, make_dist, params, f, num_samples=num_samples, breakpoints=breakpoints,
                      nodes=nodes, max_points=max_points, context=context)
    g = exact_gradient(make_dist, params, f, breakpoints=breakpoints, nodes=nodes, max_points=max_points)
    diff = (m.mean - g).abs()
    bad = ~(diff <= atol + rtol * g.abs())  # nan counts as a failure
    if bool(bad.any()):
        names = labels(as_params(params))
        rows = [f"  {'parameter':<16} {'E[estimate]':>17} {'∇E[f]':>17} {'|diff|':>10}"]
        for k in range(len(g)):
            mark = "  <-" if bool(bad[k]) else ""
            rows.append(f"  {names[k]:<16} {float(m.mean[k]):>17.10e} {float(g[k]):>17.10e} "
                        f"{float(diff[k]):>10.3e}{mark}")
        raise AssertionError(
            f"{type(estimator).__name__} is biased here: E[∇ surrogate] != ∇ E[f] for "
            f"{int(bad.sum())} of {len(g)} parameters (num_samples={num_samples}, atol={atol}, rtol={rtol}).\n"
            + "\n".join(rows)
        )
    return m
