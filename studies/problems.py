"""Registry of the problems ``scg-study compare`` runs estimators on.

A :class:`Problem` is one expectation :math:`E_{q_θ(z)}[f(z)]` at one point θ,
with a gradient to estimate. The embedded defaults are the exact anchors of
docs/references.md (the Gaussian costs of Mohamed et al. 2020, §3; the Bernoulli toy of
Tucker et al. 2017 / Dong et al. 2020), each with its exact gradient in closed form.

Users bring their own problem as ``module:function`` (``scg-study compare
--problem mypkg.mod:make_problem``): a function of no arguments returning a
:class:`Problem` (or a list of them). Example::

    import torch
    from torch.distributions import Normal
    from scg.studies.problems import Problem

    def make_problem() -> Problem:
        return Problem(
            name="my-quartic",
            make_dist=lambda loc, scale: Normal(loc, scale),
            params=(0.5, 2.0),
            f=lambda z: z ** 4,
            param_names=("loc", "scale"),
            description="E[z^4] under N(0.5, 2^2)",
        )
"""

from __future__ import annotations

import importlib
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeAlias

import torch
from torch import Tensor
from torch.distributions import Bernoulli, Distribution, Independent, Normal, OneHotCategorical

__all__ = [
    "Problem",
    "PROBLEMS",
    "problem_names",
    "get_problem",
    "load_user_problem",
    "resolve_problems",
]

ParamValue: TypeAlias = float | Sequence[float] | Tensor


@dataclass(frozen=True)
class Problem:
    """One expectation and the point θ at which its gradient is estimated.

    Attributes:
        name: short unique name (used on the command line and in results.csv).
        make_dist: ``make_dist(*params) -> Distribution``; ``params`` arrive as
            tensors (float64, on the run's device, requiring grad). Write it with
            broadcasting torch ops so that a leading extra dimension of every
            parameter becomes a leading batch dimension of the distribution (all
            ``torch.distributions`` constructors do this) — used when the
            vectorised ``torch.func`` path is unavailable.
        params: the point θ: one value (float, list or tensor) per argument of
            ``make_dist``. Gradients are taken w.r.t. all of them, flattened in order.
        f: the cost, mapping samples ``[S, *batch_shape, *event_shape]`` to
            ``[S, *batch_shape]`` (the scg contract; it must not mix batch elements).
        breakpoints: points where f jumps (passed to the exact harness
            ``scg.testing.exact_moments``), or ``None`` for a continuous f.
        description: one line for ``scg-study list``.
        param_names: one name per argument of ``make_dist`` (default ``p0, p1, …``);
            vector parameters get ``name[i]`` labels.
        exact_gradient: the exact gradient ``[P]`` in closed form, or ``None`` to
            take it from the harness (``scg.testing.exact_gradient``).
    """

    name: str
    make_dist: Callable[..., Distribution]
    params: tuple[ParamValue, ...]
    f: Callable[[Tensor], Tensor]
    breakpoints: Sequence[float] | None = None
    description: str = ""
    param_names: tuple[str, ...] | None = None
    exact_gradient: tuple[float, ...] | None = field(default=None)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"`name` must be a non-empty string; got {self.name!r}.")
        if not callable(self.make_dist):
            raise TypeError(f"`make_dist` must be callable; got {type(self.make_dist).__name__}.")
        if not callable(self.f):
            raise TypeError(f"`f` must be callable; got {type(self.f).__name__}.")
        if not isinstance(self.params, (tuple, list)) or len(self.params) == 0:
            raise ValueError(f"`params` must be a non-empty tuple of values; got {self.params!r}.")
        if self.param_names is not None and len(self.param_names) != len(self.params):
            raise ValueError(
                f"`param_names` must have one name per parameter ({len(self.params)}); "
                f"got {len(self.param_names)}."
            )

    def tensors(
        self, *, dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu"
    ) -> list[Tensor]:
        """The parameters as tensors of ``dtype`` on ``device`` (detached, not requiring grad)."""
        return [torch.as_tensor(p, dtype=dtype).detach().clone().to(device) for p in self.params]

    def labels(self) -> list[str]:
        """One label per scalar parameter, in the flattened order of the gradient."""
        names = self.param_names or tuple(f"p{i}" for i in range(len(self.params)))
        out: list[str] = []
        for name, value in zip(names, self.params, strict=False):
            n = torch.as_tensor(value).numel()
            if torch.as_tensor(value).dim() == 0:
                out.append(name)
            else:
                out.extend(f"{name}[{i}]" for i in range(n))
        return out

    def dist(self, *, dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu") -> Distribution:
        """The distribution at θ (parameters detached)."""
        return self.make_dist(*self.tensors(dtype=dtype, device=device))


# ---------------------------------------------------------------- embedded problems


def _normal(loc: Tensor, scale: Tensor) -> Distribution:
    return Normal(loc, scale)


def _bernoulli(logits: Tensor) -> Distribution:
    return Bernoulli(logits=logits)


class _Square:
    """(x − k)², picklable and with a readable repr."""

    def __init__(self, k: float) -> None:
        self.k = k

    def __call__(self, x: Tensor) -> Tensor:
        return (x - self.k) ** 2

    def __repr__(self) -> str:
        return f"(x - {self.k:g})**2"


class _Cos:
    def __init__(self, k: float) -> None:
        self.k = k

    def __call__(self, x: Tensor) -> Tensor:
        return torch.cos(self.k * x)

    def __repr__(self) -> str:
        return f"cos({self.k:g} x)"


class _ExpSquare:
    def __init__(self, k: float) -> None:
        self.k = k

    def __call__(self, x: Tensor) -> Tensor:
        return torch.exp(-self.k * x * x)

    def __repr__(self) -> str:
        return f"exp(-{self.k:g} x**2)"


def _grad_square(mu: float, sigma: float, k: float) -> tuple[float, float]:
    # E[(x−k)²] = (μ−k)² + σ²
    return 2.0 * (mu - k), 2.0 * sigma


def _grad_cos(mu: float, sigma: float, k: float) -> tuple[float, float]:
    # E[cos kx] = cos(kμ) exp(−k²σ²/2)
    damp = math.exp(-0.5 * k * k * sigma * sigma)
    return -k * math.sin(k * mu) * damp, -k * k * sigma * math.cos(k * mu) * damp


def _grad_exp_square(mu: float, sigma: float, k: float) -> tuple[float, float]:
    # E[exp(−k x²)] = a^{−1/2} exp(−k μ²/a), a = 1 + 2kσ²
    a = 1.0 + 2.0 * k * sigma * sigma
    value = a**-0.5 * math.exp(-k * mu * mu / a)
    return value * (-2.0 * k * mu / a), value * 4.0 * k * sigma * (-0.5 / a + k * mu * mu / (a * a))


def _gaussian(
    name: str, f: Callable[[Tensor], Tensor], grad: Callable[..., tuple[float, float]], k: float
) -> Problem:
    mu, sigma = 1.0, 1.0
    return Problem(
        name=name,
        make_dist=_normal,
        params=(mu, sigma),
        f=f,
        description=f"E[{f!r}], x ~ N(mu=1, sigma=1); gradient w.r.t. mu and sigma (docs/references.md table)",
        param_names=("mu", "sigma"),
        exact_gradient=grad(mu, sigma, k),
    )


def _bernoulli_toy(t: float = 0.49, phi: float = 0.0) -> Problem:
    p = 1.0 / (1.0 + math.exp(-phi))
    return Problem(
        name="bernoulli-toy",
        make_dist=_bernoulli,
        params=(phi,),
        f=_Square(t),
        description=f"E[(b - {t:g})**2], b ~ Bernoulli(sigmoid(phi)), phi = {phi:g}; gradient w.r.t. phi",
        param_names=("phi",),
        exact_gradient=(p * (1.0 - p) * (1.0 - 2.0 * t),),
    )


def _one_hot(logits: Tensor) -> Distribution:
    return OneHotCategorical(logits=logits)


def _one_hot_product(logits: Tensor) -> Distribution:
    return Independent(OneHotCategorical(logits=logits), 1)


class _CategoricalSquare:
    """Σ_k y_k (k/(K−1) − t)²: the Bernoulli toy's (b − t)² for a one-hot y over K levels in [0, 1].

    Linear in y, so relaxed (continuous) one-hot inputs are accepted; for K = 2 it is
    the Bernoulli toy with b = y_1.
    """

    def __init__(self, t: float, K: int) -> None:
        self.t, self.K = t, K

    def __call__(self, y: Tensor) -> Tensor:
        levels = torch.linspace(0.0, 1.0, self.K, dtype=y.dtype, device=y.device)
        return (y * (levels - self.t) ** 2).sum(-1)

    def __repr__(self) -> str:
        return f"sum_k y_k (k/{self.K - 1} - {self.t:g})**2"


class _MeanSquare:
    """(mean_d level(y_d) − t)² over D one-hot latents with K levels in [0, 1]: couples the latents."""

    def __init__(self, t: float, K: int) -> None:
        self.t, self.K = t, K

    def __call__(self, y: Tensor) -> Tensor:
        levels = torch.linspace(0.0, 1.0, self.K, dtype=y.dtype, device=y.device)
        return ((y * levels).sum(-1).mean(-1) - self.t) ** 2

    def __repr__(self) -> str:
        return f"(mean_d level(y_d) - {self.t:g})**2, {self.K} levels"


def _categorical_gradient(
    logits: Sequence[Sequence[float]], cost: Callable[[Tensor], Tensor]
) -> tuple[float, ...]:
    """∇_logits E[cost(y)] for independent one-hot latents, by enumerating the product support.

    ``∂/∂α_dk E[f] = E[f(y) (y_dk − p_dk)]``, summed over the K^D outcomes in float64.
    """
    a = torch.tensor(logits, dtype=torch.float64)
    p = torch.softmax(a, -1)
    D, K = a.shape
    grad = torch.zeros(D, K, dtype=torch.float64)
    for outcome in itertools.product(range(K), repeat=D):
        y = torch.nn.functional.one_hot(torch.tensor(outcome), K).to(torch.float64)
        weight = torch.prod(p[torch.arange(D), torch.tensor(outcome)])
        grad += weight * cost(y) * (y - p)
    return tuple(grad.flatten().tolist())


def _categorical_toy(K: int, t: float = 0.49) -> Problem:
    f = _CategoricalSquare(t, K)
    return Problem(
        name=f"categorical-toy-k{K}",
        make_dist=_one_hot,
        params=((0.0,) * K,),
        f=f,
        description=f"E[{f!r}], y ~ OneHotCategorical(softmax(alpha)), alpha = 0 ({K} classes); gradient w.r.t. alpha",
        param_names=("alpha",),
        exact_gradient=_categorical_gradient([[0.0] * K], f),
    )


def _categorical_product(D: int = 3, K: int = 4, t: float = 0.49) -> Problem:
    f = _MeanSquare(t, K)
    logits = [[round(0.5 * math.sin(1.0 + d * K + k), 4) for k in range(K)] for d in range(D)]
    return Problem(
        name=f"categorical-product-{D}x{K}",
        make_dist=_one_hot_product,
        params=(logits,),
        f=f,
        description=f"E[{f!r}], {D} independent OneHotCategorical latents of {K} classes (fixed logits); gradient w.r.t. the logits",
        param_names=("alpha",),
        exact_gradient=_categorical_gradient(logits, f),
    )


PROBLEMS: dict[str, Problem] = {
    p.name: p
    for p in (
        _gaussian("gaussian-square-k0", _Square(0.0), _grad_square, 0.0),
        _gaussian("gaussian-square-k3", _Square(3.0), _grad_square, 3.0),
        _gaussian("gaussian-cos-k5", _Cos(5.0), _grad_cos, 5.0),
        _gaussian("gaussian-exp-k1", _ExpSquare(1.0), _grad_exp_square, 1.0),
        _bernoulli_toy(),
        _categorical_toy(3),
        _categorical_toy(10),
        _categorical_product(),
    )
}
"""The embedded problems, by name."""

#: Group names accepted by ``--problems`` besides the individual names.
GROUPS: dict[str, tuple[str, ...]] = {
    "gaussian": tuple(n for n in PROBLEMS if n.startswith("gaussian-")),
    "categorical": tuple(n for n in PROBLEMS if n.startswith("categorical-")),
}


def problem_names() -> list[str]:
    """Names of the embedded problems."""
    return list(PROBLEMS)


def get_problem(name: str) -> Problem:
    """The embedded problem called ``name``; ``ValueError`` listing the valid names otherwise."""
    if name not in PROBLEMS:
        raise ValueError(f"unknown problem {name!r}; valid problems: {', '.join(PROBLEMS)}.")
    return PROBLEMS[name]


def load_user_problem(spec: str) -> list[Problem]:
    """Import ``module:function`` and call it; it must return a :class:`Problem` or a list of them.

    Raises:
        ValueError: ``spec`` is not of the form ``module:function`` or the module/function is missing.
        TypeError: the function does not return Problems.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"`--problem` must be 'module:function'; got {spec!r}.")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"`--problem` {spec!r}: cannot import module {module_name!r} ({exc}).") from exc
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise ValueError(f"`--problem` {spec!r}: module {module_name!r} has no function {attr!r}.")
    out = factory()
    items = list(out) if isinstance(out, (list, tuple)) else [out]
    for item in items:
        if not isinstance(item, Problem):
            raise TypeError(
                f"`--problem` {spec!r} must return a scg.studies.problems.Problem (or a list of them); "
                f"got {type(item).__name__}."
            )
    return items


def resolve_problems(names: Sequence[str] | None = None, user: Sequence[str] = ()) -> list[Problem]:
    """Embedded problems selected by ``names`` (individual names or groups; ``None`` = all)
    followed by the user problems ``module:function``.

    With ``names=None`` and user problems given, only the user problems are returned.
    """
    selected: list[Problem] = []
    if names is None:
        names = [] if user else list(PROBLEMS)
    valid = list(PROBLEMS) + list(GROUPS)
    for name in names:
        if name in GROUPS:
            members = [PROBLEMS[m] for m in GROUPS[name]]
        elif name in PROBLEMS:
            members = [PROBLEMS[name]]
        else:
            raise ValueError(f"unknown problem {name!r}; valid problems: {', '.join(valid)}.")
        selected.extend(m for m in members if m not in selected)
    for spec in user:
        selected.extend(load_user_problem(spec))
    seen: set[str] = set()
    for p in selected:
        if p.name in seen:
            raise ValueError(f"problem names must be unique; {p.name!r} appears twice.")
        seen.add(p.name)
    return selected
