"""``scg-study compare``: every applicable estimator on every problem, side by side.

For each (problem, estimator, parameter) the run draws N independent single
estimates of the gradient (each from S samples), vectorised — by
:func:`scg.diagnostics.gradient_samples` (``torch.func.vmap``) when available,
else by a batch of N independent copies of the problem in one backward pass —
and compares their sample mean and variance with the exact gradient and the
exact variance of the estimator (:func:`scg.testing.exact_moments`: quadrature
or enumeration, no sampling).

Decisions, documented here and in the results:

* The estimators are those of :mod:`scg.estimators.registry` (see ``scg-study list``)
  that need no model input. RLOO needs S ≥ 2: it runs with ``max(S, 2)`` samples and
  its row says so in ``num_samples`` and ``note``.
* With ``evaluations = E`` (``--evaluations``) every estimator gets the same budget of
  f-evaluations instead of the same S: it draws the most samples whose evaluations fit
  in E (:func:`scg.estimators.registry.samples_for_budget`, e.g. E/2 for DisARM, E/3 for
  RELAX, one for Enumerate); an estimator that needs more than E is *skipped* with the
  reason. ``evaluations`` in each row is what it spent.
* ``score_function_optimal`` uses, per parameter p, the variance-optimal constant
  :math:`b^*_p = E[f s_p^2] / E[s_p^2]`, :math:`s_p = ∂_p \\log q`, computed exactly by
  the harness (the second moment is quadratic in b: three evaluations give it);
  without the harness, from an independent pilot of N estimates.
* ``moving_average`` is warmed up on 200 plain calls in training mode, then frozen
  (``eval()``): its exact variance is that of the frozen baseline.
* Every cell is seeded from ``(seed, problem, estimator)``, so a row does not
  depend on which other problems or estimators were selected, and the same seed
  gives the same results.csv on the same machine (timings go to timings.csv).
* The default N = 20000 keeps the default run to seconds. Light-tailed estimators
  (pathwise, measure-valued, everything on the Bernoulli toy) then match their
  exact variances to ~1–2 %; the score function on (x − k)² is heavy-tailed (its
  relative SE of the variance is 5–10 % at N = 20000) and needs N ≈ 10⁶ for ~1 %.
  ``variance_std_error`` and ``variance_z`` say which deviations are sampling noise.
* A problem's ``breakpoints`` (where f jumps) go to every harness call: the exact
  gradient and every estimator's exact moments. Where the harness may not place
  the jumps in an estimator's noise (a continuous noise law that is neither z
  itself nor the noise of ``Pathwise``, and no ``noise_breakpoints`` on the
  estimator — e.g. ``MeasureValued`` on a Normal), a parameter's exact moments are
  kept only if the estimator is unbiased and their mean is the exact gradient (to
  1e-8 of max(|∇|, the estimate's standard deviation)); otherwise its exact-moment
  columns are left empty with the reason in ``note``, rather than filled with an
  inexact quadrature. The exact gradient and ``bias_z`` are always reported.
* An estimator that does not apply (``check`` raises ``TypeError``) is *skipped*
  with the reason; one that fails is an *error* row (exit code 1); a failure of the
  exact harness leaves the exact columns empty with the reason in ``note``.
"""

from __future__ import annotations

import math
import time
import warnings
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from scg.baselines import Constant, Delta, MovingAverage, Normalize
from scg.estimators.base import Estimator
from scg.estimators.registry import samples_for_budget
from scg.models.train import resolve_device
from scg.studies._io import row
from scg.studies.estimators import ESTIMATORS, Unavailable, Variant, estimator_names
from scg.studies.problems import Problem, resolve_problems
from scg.studies.sampling import sample_gradients, statistics

__all__ = [
    "CompareConfig",
    "COLUMNS",
    "TIMING_COLUMNS",
    "run_compare",
    "resolve_device",
]

#: Columns of results.csv (deterministic for a given seed, device and software versions).
COLUMNS: tuple[str, ...] = (
    "problem",
    "estimator",
    "parameter",
    "status",
    "num_samples",
    "num_estimates",
    "evaluations",
    "unbiased",
    "mean",
    "exact_gradient",
    "exact_mean",
    "std_error",
    "bias_z",
    "variance",
    "variance_std_error",
    "exact_variance",
    "variance_rel_error",
    "variance_z",
    "snr",
    "method",
    "note",
)
#: Columns of timings.csv.
TIMING_COLUMNS: tuple[str, ...] = (
    "problem",
    "estimator",
    "parameter",
    "num_estimates",
    "seconds",
    "us_per_estimate",
)

_WARMUP_CALLS = 200


@dataclass(frozen=True)
class CompareConfig:
    """Configuration of ``scg-study compare`` (the CLI only parses into this).

    Attributes:
        problems: embedded problem names or groups (``None`` = all embedded, or none
            when ``user_problems`` is given).
        user_problems: ``module:function`` specs returning :class:`Problem` s.
        estimators: estimator names (``None`` = all registered).
        num_samples: S, samples per estimate.
        evaluations: E, a budget of evaluations of f per estimate that replaces ``num_samples``
            (``None``: every estimator draws S samples).
        num_estimates: N, independent estimates per (problem, estimator).
        seed: base seed.
        device: ``auto`` (cuda if available), ``cpu`` or ``cuda``.
        engine: ``auto`` (vmap via scg.diagnostics if importable, batch otherwise or
            when vmap fails for an estimator), ``vmap`` or ``batch``.
        exact: compute exact moments with scg.testing.
        out: output folder.
    """

    problems: tuple[str, ...] | None = None
    user_problems: tuple[str, ...] = ()
    estimators: tuple[str, ...] | None = None
    num_samples: int = 1
    evaluations: int | None = None
    num_estimates: int = 20000
    seed: int = 0
    device: str = "auto"
    engine: str = "auto"
    exact: bool = True
    out: str = "runs/compare"

    def __post_init__(self) -> None:
        for name, value in (
            ("num_samples", self.num_samples),
            ("num_estimates", self.num_estimates),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be an int >= 1; got {value!r}.")
        e = self.evaluations
        if e is not None and (isinstance(e, bool) or not isinstance(e, int) or e < 1):
            raise ValueError(f"`evaluations` must be None or an int >= 1; got {e!r}.")
        if self.num_estimates < 2:
            raise ValueError(
                f"`num_estimates` must be >= 2 to estimate a variance; got {self.num_estimates}."
            )
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"`device` must be auto, cpu or cuda; got {self.device!r}.")
        if self.engine not in ("auto", "vmap", "batch"):
            raise ValueError(f"`engine` must be auto, vmap or batch; got {self.engine!r}.")
        for name in self.estimators or ():
            if name not in ESTIMATORS:
                raise ValueError(f"unknown estimator {name!r}; valid estimators: {', '.join(ESTIMATORS)}.")


@dataclass
class CompareResult:
    """Rows of results.csv and timings.csv, plus notes for the user."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    timings: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    device: str = "cpu"


def _cell_seed(seed: int, *parts: str) -> int:
    return zlib.crc32(":".join([str(seed), *parts]).encode()) & 0x7FFFFFFF


def _seed(seed: int) -> None:
    torch.manual_seed(seed)  # also seeds every CUDA device


def _harness() -> tuple[Callable[..., Any], Callable[..., Any]] | None:
    try:
        from scg.testing import exact_gradient, exact_moments
    except ImportError:
        return None
    return exact_moments, exact_gradient


def _stateful(estimator: Estimator) -> bool:
    return any(isinstance(m, (MovingAverage, Normalize, Delta)) for m in estimator.modules())


class _Context:
    """Per-run caches: exact harness, optimal baselines."""

    def __init__(self, cfg: CompareConfig, device: torch.device, result: CompareResult) -> None:
        self.cfg, self.device, self.result = cfg, device, result
        self.harness = _harness() if cfg.exact else None
        if cfg.exact and self.harness is None:
            result.notes.append(
                "exact columns are empty: scg.testing (exact_moments, exact_gradient) is not importable."
            )
        self._baselines: dict[str, list[float]] = {}
        self.warm: set[str] = set()

    def params(self, problem: Problem) -> list[Tensor]:
        return problem.tensors(dtype=torch.float64, device=self.device)

    def exact_gradient(self, problem: Problem) -> list[float]:
        P = len(problem.labels())
        if problem.exact_gradient is not None:
            return [float(g) for g in problem.exact_gradient]
        if self.harness is None:
            return [math.nan] * P
        g = self.harness[1](
            problem.make_dist, self.params(problem), problem.f, breakpoints=problem.breakpoints
        )
        return [float(v) for v in torch.as_tensor(g).reshape(-1).cpu()]

    def moments(self, estimator: Estimator, problem: Problem, S: int, *, label: str = "") -> Any:
        """Exact moments by the harness; its warnings become notes of the run."""
        if self.harness is None:
            raise RuntimeError("scg.testing is not importable")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = self.harness[0](
                estimator,
                problem.make_dist,
                self.params(problem),
                problem.f,
                num_samples=S,
                breakpoints=problem.breakpoints,
            )
        for w in caught:
            self.result.notes.append(f"{problem.name} / {label or type(estimator).__name__}: {w.message}")
        return out

    def optimal_baselines(self, problem: Problem) -> list[float]:
        """b*_p per flattened parameter: exact (harness) or from an independent pilot."""
        if problem.name in self._baselines:
            return self._baselines[problem.name]
        bstar: Tensor | None = None
        if self.harness is not None:
            try:
                m2 = []
                for b in (-1.0, 0.0, 1.0):
                    est = _to(self.device, _sf(b))
                    m2.append(
                        torch.as_tensor(self.moments(est, problem, 1).second_moment)
                        .reshape(-1)
                        .double()
                        .cpu()
                    )
            except Exception as exc:  # noqa: BLE001 - fall back to the pilot below
                self.result.notes.append(f"{problem.name}: exact b* failed ({type(exc).__name__}: {exc}).")
            else:
                curvature = m2[2] + m2[0] - 2 * m2[1]  # 2 E[s²]
                slope = m2[0] - m2[2]  # 4 E[f s²]
                bstar = torch.where(
                    curvature > 0,
                    slope / (2 * curvature.clamp_min(1e-300)),
                    torch.zeros_like(slope),
                )
        if bstar is None:
            params = self.params(problem)
            N = self.cfg.num_estimates
            seed = _cell_seed(self.cfg.seed, problem.name, "pilot")
            grads = []
            for b in (0.0, 1.0):
                _seed(seed)  # same draws for both: their difference is the score
                grads.append(
                    sample_gradients(_to(self.device, _sf(b)), problem, params, 1, N, self.cfg.engine)[0]
                )
            score = grads[0] - grads[1]
            bstar = (grads[0] * score).mean(0) / (score * score).mean(0).clamp_min(1e-300)
            self.result.notes.append(f"{problem.name}: b* estimated from an independent pilot of {N} draws.")
        self._baselines[problem.name] = [float(v) for v in bstar.cpu()]
        return self._baselines[problem.name]


def _unplaced_laws(est: Estimator, dist: Any, S: int, problem: Problem) -> list[str]:
    """The estimator's continuous noise laws in which the harness may not place the jumps of f.

    The harness splits its quadrature at f's ``breakpoints`` where the mapping is
    generic: in laws that draw z itself (``FromDistribution``), in the noise of
    :class:`scg.Pathwise` (through its monotone noise map), and in any law an
    estimator maps itself (``noise_breakpoints``). A discrete z has no jumps to place.
    For other noise (e.g. the Rayleigh, Maxwell and uniform noise of
    :class:`scg.MeasureValued` on a Normal) a jump inside a piece makes the quadrature
    inexact, so compare keeps the harness's moments of a parameter only when they pass
    a check: the estimator is unbiased and its exact mean is the exact gradient
    (:func:`_mean_is_exact`); otherwise the row's exact-moment columns are empty.
    """
    from scg.estimators.pathwise import Pathwise
    from scg.laws import FromDistribution

    if (
        problem.breakpoints is None
        or torch.as_tensor(problem.breakpoints).numel() == 0
        or dist.support.is_discrete
    ):
        return []
    if isinstance(est, Pathwise) or callable(getattr(est, "noise_breakpoints", None)):
        return []
    return [n for n, law in est.laws(dist, S).items() if not isinstance(law, FromDistribution)]


def _mean_is_exact(est: Estimator, mean: float, variance: float, gradient: float) -> bool:
    """An unbiased estimator's exact mean equals the exact gradient: to 1e-8 of max(|∇|, its standard deviation)."""
    scale = max(abs(gradient), math.sqrt(max(variance, 0.0)))
    return bool(est.unbiased) and abs(mean - gradient) <= 1e-8 * scale


def _sf(b: float) -> Estimator:
    import scg

    return scg.ScoreFunction(baseline=Constant(b))


def _to(device: torch.device, est: Estimator) -> Estimator:
    return est.to(device)


def _row(problem: Problem, name: str, label: str, **values: Any) -> dict[str, Any]:
    return row(COLUMNS, **{"problem": problem.name, "estimator": name, "parameter": label, **values})


def _run_variant(
    ctx: _Context, problem: Problem, name: str, index: int, variant: Variant, grad: list[float]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    cfg, labels = ctx.cfg, problem.labels()
    rows_idx = variant.rows if variant.rows is not None else list(range(len(labels)))
    est, S, N = variant.estimator.to(ctx.device), variant.num_samples, cfg.num_estimates
    params = ctx.params(problem)
    dist = problem.make_dist(*params)
    common = dict(num_samples=S, unbiased=bool(est.unbiased), note=variant.note)
    try:
        est.check(dist)
        if cfg.evaluations is not None:
            S = samples_for_budget(est, dist, cfg.evaluations, exact=False)
            budget = f"S = {S} for a budget of {cfg.evaluations} evaluations"
            common = dict(common, num_samples=S, note="; ".join(filter(None, [budget, variant.note])))
    except (TypeError, ValueError) as exc:
        return [
            _row(
                problem,
                name,
                labels[p],
                status="skipped",
                note=str(exc),
                **{k: v for k, v in common.items() if k != "note"},
            )
            for p in rows_idx
        ], []
    evaluations = int(est.evaluations(dist, S))
    seed = _cell_seed(cfg.seed, problem.name, name, str(index))
    try:
        if name not in ctx.warm:  # a first call pays one-time costs: keep them out of the timing
            sample_gradients(est, problem, params, S, 2, cfg.engine)
            ctx.warm.add(name)
        _seed(seed)
        if _stateful(est):
            est.train()  # running statistics update with gradients enabled (not under no_grad)
            for _ in range(_WARMUP_CALLS):
                est(problem.f, dist, S)
        est.eval()
        if ctx.device.type == "cuda":
            torch.cuda.synchronize(ctx.device)
        start = time.perf_counter()
        G, method = sample_gradients(est, problem, params, S, N, cfg.engine)
        if ctx.device.type == "cuda":
            torch.cuda.synchronize(ctx.device)
        seconds = time.perf_counter() - start
    except Exception as exc:  # noqa: BLE001 - reported per row, the run goes on
        msg = f"{type(exc).__name__}: {exc}"
        ctx.result.notes.append(f"{problem.name} / {name}: error {msg}")
        return [
            _row(
                problem,
                name,
                labels[p],
                status="error",
                evaluations=evaluations,
                **{**common, "note": msg},
            )
            for p in rows_idx
        ], []
    G = G.double().cpu().numpy()
    exact_mean = exact_var = [math.nan] * len(labels)
    note = str(common["note"])
    if ctx.harness is not None:
        try:
            m = ctx.moments(est, problem, S, label=name)
            exact_mean = [float(v) for v in torch.as_tensor(m.mean).reshape(-1).cpu()]
            exact_var = [float(v) for v in torch.as_tensor(m.variance).reshape(-1).cpu()]
        except Exception as exc:  # noqa: BLE001
            reason = f"exact moments failed: {type(exc).__name__}: {exc}"
            note = "; ".join(filter(None, [note, reason]))
            ctx.result.notes.append(f"{problem.name} / {name}: {reason}")
        else:
            unplaced = _unplaced_laws(est, dist, S, problem)
            wrong = [
                p
                for p in rows_idx
                if unplaced and not _mean_is_exact(est, exact_mean[p], exact_var[p], grad[p])
            ]
            if wrong:
                points = torch.as_tensor(problem.breakpoints, dtype=torch.float64).reshape(-1).tolist()
                check = (
                    "a biased estimator's cannot be checked"
                    if not est.unbiased
                    else "the harness's mean "
                    + ", ".join(f"{exact_mean[p]:.10g}" for p in wrong)
                    + " is not the exact gradient "
                    + ", ".join(f"{grad[p]:.10g}" for p in wrong)
                )
                reason = (
                    f"exact moments of {', '.join(labels[p] for p in wrong)} omitted: f jumps (breakpoints "
                    f"{points}) inside {type(est).__name__}'s noise {', '.join(unplaced)}, where the "
                    f"quadrature need not be exact, and {check}"
                )
                note = "; ".join(filter(None, [note, reason]))
                ctx.result.notes.append(f"{problem.name} / {name}: {reason}")
                exact_mean, exact_var = list(exact_mean), list(exact_var)
                for p in wrong:
                    exact_mean[p] = exact_var[p] = math.nan
    rows, timings = [], []
    for p in rows_idx:
        stats = statistics(G[:, p], grad[p], exact_var[p])
        rows.append(
            _row(
                problem,
                name,
                labels[p],
                status="ok",
                num_estimates=N,
                evaluations=evaluations,
                exact_gradient=grad[p],
                exact_mean=exact_mean[p],
                exact_variance=exact_var[p],
                method=method,
                **{**common, "note": note},
                **stats,
            )
        )
        timings.append(
            {
                "problem": problem.name,
                "estimator": name,
                "parameter": labels[p],
                "num_estimates": N,
                "seconds": seconds,
                "us_per_estimate": 1e6 * seconds / N,
            }
        )
    return rows, timings


def run_compare(cfg: CompareConfig, *, progress: bool = True) -> CompareResult:
    """Run the comparison; returns rows (results.csv), timings and notes. Writes nothing."""
    from tqdm.auto import tqdm

    device = resolve_device(cfg.device)
    problems = resolve_problems(cfg.problems, cfg.user_problems)
    names = list(cfg.estimators) if cfg.estimators is not None else estimator_names()
    result = CompareResult(device=str(device))
    ctx = _Context(cfg, device, result)
    cells = [(p, n) for p in problems for n in names]
    bar = tqdm(cells, desc="compare", unit="cell", disable=None if progress else True, leave=False)
    grads: dict[str, list[float]] = {}
    for problem, name in bar:
        bar.set_postfix_str(f"{problem.name} / {name}")
        if problem.name not in grads:
            grads[problem.name] = ctx.exact_gradient(problem)
        labels = problem.labels()
        try:
            variants = ESTIMATORS[name].build(problem, cfg.num_samples, ctx.optimal_baselines)
        except Unavailable as exc:
            result.rows.extend(_row(problem, name, lab, status="skipped", note=str(exc)) for lab in labels)
            continue
        for index, variant in enumerate(variants):
            rows, timings = _run_variant(ctx, problem, name, index, variant, grads[problem.name])
            result.rows.extend(rows)
            result.timings.extend(timings)
    bar.close()
    return result


def config_dict(cfg: CompareConfig) -> dict[str, Any]:
    """The config as plain JSON-able data (for manifest.json)."""
    d = asdict(cfg)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}
