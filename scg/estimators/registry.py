r"""Estimators by name: one registry for ``scg-study``, the studies and the models.

Each :class:`Entry` maps a name to a factory, says which distribution families the
estimator applies to (``"normal"``, ``"bernoulli"``, ``"categorical"``) and carries a
one-line description. :func:`build` makes the estimator; :func:`samples_for_budget`
turns a budget of E evaluations of f per batch element into the number of samples S
with ``est.evaluations(dist, S) == E``, so that estimators are compared at equal cost
in f (a DisARM sample costs 2 evaluations, RELAX 3, UnorderedSet k, IndeCateR
1 + D·K, Enumerate the size of the support whatever S).

What a factory may depend on is a :class:`Setting`: the size of the latent (for
RELAX's free-form network), the size of the input a learned baseline sees (NVIL's
baseline network reads the model's input x), and the temperature of the relaxations.
Options beyond the setting go to the factory as keywords, e.g. a study's own
baseline network (``build("nvil", setting, baseline_net=net)``).

Example:
    >>> import torch
    >>> from torch.distributions import OneHotCategorical
    >>> from scg.estimators import registry
    >>> q = OneHotCategorical(logits=torch.zeros(3))
    >>> [e.name for e in registry.applicable("categorical")][:3]
    ['score_function', 'score_function_optimal', 'rloo']
    >>> est = registry.build("unordered_set")
    >>> registry.samples_for_budget(est, q, 6)
    3
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import (
    Bernoulli,
    Categorical,
    Distribution,
    Independent,
    Normal,
    OneHotCategorical,
)

from scg import baselines as B
from scg.estimators.arm import ARM
from scg.estimators.arsm import ARSM
from scg.estimators.base import Estimator
from scg.estimators.coupled import CategoricalDisARM
from scg.estimators.disarm import DisARM
from scg.estimators.enumerate import Enumerate
from scg.estimators.gumbel_rao import GumbelRao
from scg.estimators.indecater import IndeCateR
from scg.estimators.measure_valued import MeasureValued
from scg.estimators.pathwise import Pathwise
from scg.estimators.reinmax import ReinMax
from scg.estimators.relax import RELAX, NeuralControlVariate
from scg.estimators.relaxed import GumbelSoftmax, StraightThrough
from scg.estimators.score_function import ScoreFunction
from scg.estimators.sum_and_sample import SumAndSample
from scg.estimators.unordered_set import UnorderedSet

__all__ = [
    "FAMILIES",
    "Setting",
    "Entry",
    "ENTRIES",
    "names",
    "get",
    "build",
    "applicable",
    "family_of",
    "min_samples",
    "samples_for_budget",
]

#: The distribution families an entry may claim.
FAMILIES: tuple[str, ...] = ("normal", "bernoulli", "categorical")

#: Hidden width of the networks the factories build (NVIL's baseline, RELAX's r_ρ).
_HIDDEN = 100


@dataclass(frozen=True)
class Setting:
    """What a factory may use to size an estimator's own parts.

    Attributes:
        event_size: number of binary latents per batch element (``z_dim``); given, RELAX
            adds a free-form network of σ(z) ``[*, event_size] -> [*]`` to REBAR's term.
            ``None``: REBAR's term alone.
        context_size: size of the input a learned baseline sees (the model's x, passed to
            the estimator as ``context``); NVIL needs it.
        temperature: temperature of the relaxations (Gumbel-softmax, Gumbel-Rao, ReinMax, RELAX's
            default REBAR term keeps its own).
    """

    event_size: int | None = None
    context_size: int | None = None
    temperature: float = 0.5

    def __post_init__(self) -> None:
        for name in ("event_size", "context_size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"`{name}` must be None or an int >= 1; got {value!r}.")
        if not (isinstance(self.temperature, (int, float)) and self.temperature > 0):
            raise ValueError(f"`temperature` must be positive; got {self.temperature!r}.")


Factory = Callable[..., Estimator]


@dataclass(frozen=True)
class Entry:
    """A named estimator.

    Attributes:
        name: the registry name (``--estimators``, study configs).
        description: one line: the estimator object and what it is.
        factory: ``factory(setting, **options) -> Estimator``.
        families: the distribution families it applies to (a subset of :data:`FAMILIES`).
        aliases: other names that resolve to this entry.
        needs_context: it cannot be built without ``Setting.context_size`` (a learned baseline
            of the model's input).
    """

    name: str
    description: str
    factory: Factory
    families: frozenset[str]
    aliases: tuple[str, ...] = ()
    needs_context: bool = False
    options: tuple[str, ...] = field(default=())

    def build(self, setting: Setting | None = None, **options: Any) -> Estimator:
        """The estimator for ``setting`` (default :class:`Setting`)."""
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            valid = ", ".join(self.options) or "none"
            raise TypeError(f"unknown option(s) {unknown} for {self.name!r}; valid options: {valid}.")
        return self.factory(setting or Setting(), **options)


# ----------------------------------------------------------------------------- networks


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


class _BaselineNet(nn.Module):
    """NVIL's baseline :math:`b_ψ(x)`: a tanh MLP ``[*, context_size] -> [*]``."""

    def __init__(self, context_size: int, hidden: int = _HIDDEN) -> None:
        super().__init__()
        self.net = _mlp([context_size, hidden, 1])

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(-1)


class _RelaxNet(nn.Module):
    """RELAX's free-form :math:`r_ρ(z)`: a tanh MLP of σ(z), ``[*, event_size] -> [*]``."""

    def __init__(self, event_size: int, hidden: int = _HIDDEN) -> None:
        super().__init__()
        self.net = _mlp([event_size, hidden, 1])

    def forward(self, z: Tensor) -> Tensor:
        return self.net(torch.sigmoid(z)).squeeze(-1)


# ----------------------------------------------------------------------------- factories


def _score_function(s: Setting) -> Estimator:
    return ScoreFunction()


def _optimal(s: Setting, *, b: float = 0.0) -> Estimator:
    return ScoreFunction(baseline=B.Constant(b))


def _rloo(s: Setting) -> Estimator:
    return ScoreFunction(baseline=B.LeaveOneOut())


def _moving_average(s: Setting) -> Estimator:
    return ScoreFunction(baseline=B.MovingAverage())


def _nvil(s: Setting, *, baseline_net: nn.Module | None = None) -> Estimator:
    if baseline_net is None:
        if s.context_size is None:
            raise ValueError(
                "`context_size` of the Setting must be given for 'nvil' (its baseline network reads the "
                "model's input); got None. Pass Setting(context_size=x_dim) or a `baseline_net`."
            )
        baseline_net = _BaselineNet(s.context_size)
    return ScoreFunction(baseline=B.chain(B.MovingAverage(), B.Learned(baseline_net), B.Normalize()))


def _relax(s: Setting, *, control_variate: nn.Module | None = None) -> Estimator:
    if control_variate is None and s.event_size is not None:
        control_variate = NeuralControlVariate(_RelaxNet(s.event_size))
    return RELAX(control_variate)


def _plain(cls: type[Estimator]) -> Factory:
    def factory(s: Setting) -> Estimator:
        return cls()

    return factory


def _tempered(cls: type[Estimator]) -> Factory:
    def factory(s: Setting) -> Estimator:
        return cls(temperature=s.temperature)

    return factory


def _unordered_set(s: Setting, *, k: int = 2) -> Estimator:
    return UnorderedSet(k=k)


def _sum_and_sample(s: Setting, *, k: int = 1) -> Estimator:
    return SumAndSample(k=k)


_ALL = frozenset(FAMILIES)
_DISCRETE = frozenset({"bernoulli", "categorical"})
_CAT = frozenset({"categorical"})
_BERN = frozenset({"bernoulli"})

ENTRIES: dict[str, Entry] = {
    e.name: e
    for e in (
        Entry(
            "score_function",
            "ScoreFunction() — REINFORCE, no baseline (SF)",
            _score_function,
            _ALL,
            aliases=("reinforce",),
        ),
        Entry(
            "score_function_optimal",
            "ScoreFunction(baseline=Constant(b*)) — exact variance-optimal constant per parameter (SF*)",
            _optimal,
            _ALL,
            options=("b",),
        ),
        Entry("rloo", "ScoreFunction(baseline=LeaveOneOut()) — RLOO, S >= 2", _rloo, _ALL),
        Entry(
            "moving_average",
            "ScoreFunction(baseline=MovingAverage()) — REINFORCE with a running-mean baseline",
            _moving_average,
            _ALL,
        ),
        Entry(
            "nvil",
            "ScoreFunction(chain(MovingAverage(), Learned(net of x), Normalize())) — NVIL",
            _nvil,
            _ALL,
            needs_context=True,
            options=("baseline_net",),
        ),
        Entry("pathwise", "Pathwise() — reparameterisation (PW)", _plain(Pathwise), frozenset({"normal"})),
        Entry(
            "measure_valued", "MeasureValued() — coupled weak derivatives (MVD)", _plain(MeasureValued), _ALL
        ),
        Entry("arm", "ARM() — augment-REINFORCE-merge, antithetic uniforms", _plain(ARM), _BERN),
        Entry("disarm", "DisARM() — antithetic Bernoulli estimator", _plain(DisARM), _BERN),
        Entry(
            "relax",
            "RELAX() — REBAR control variate (+ an MLP of σ(z) given the latent size), learned",
            _relax,
            _DISCRETE,
            options=("control_variate",),
        ),
        Entry(
            "gumbel_softmax",
            "GumbelSoftmax(temperature) — Concrete relaxation (biased)",
            _tempered(GumbelSoftmax),
            _DISCRETE,
            aliases=("gumbel",),
        ),
        Entry(
            "straight_through",
            "StraightThrough() — straight-through (biased)",
            _plain(StraightThrough),
            _DISCRETE,
        ),
        Entry(
            "categorical_disarm",
            "CategoricalDisARM() — antithetic copula pair of a categorical",
            _plain(CategoricalDisARM),
            _CAT,
        ),
        Entry("arsm", "ARSM() — augment-REINFORCE-swap-merge, 1 + K(K-1)/2 evaluations", _plain(ARSM), _CAT),
        Entry(
            "unordered_set",
            "UnorderedSet(k=2) — k classes without replacement, built-in baseline",
            _unordered_set,
            _CAT,
            options=("k",),
        ),
        Entry(
            "sum_and_sample",
            "SumAndSample(k=1) — the k likeliest classes summed, one sampled",
            _sum_and_sample,
            _CAT,
            options=("k",),
        ),
        Entry(
            "enumerate",
            "Enumerate() — the exact sum over the support (zero variance)",
            _plain(Enumerate),
            _DISCRETE,
        ),
        Entry(
            "gumbel_rao",
            "GumbelRao(temperature) — straight-through Gumbel-softmax, Rao-Blackwellised (biased)",
            _tempered(GumbelRao),
            _DISCRETE,
        ),
        Entry(
            "reinmax", "ReinMax() — second-order straight-through, τ = 1 (biased)", _plain(ReinMax), _DISCRETE
        ),
        Entry(
            "indecater",
            "IndeCateR() — one sampled latent, the others summed per position",
            _plain(IndeCateR),
            _DISCRETE,
        ),
    )
}
"""Every registered estimator, in the order they are compared."""

_ALIASES: dict[str, str] = {a: e.name for e in ENTRIES.values() for a in e.aliases}


def names(*, aliases: bool = False) -> list[str]:
    """The registered names (with ``aliases=True`` also the aliases)."""
    return list(ENTRIES) + (list(_ALIASES) if aliases else [])


def get(name: str) -> Entry:
    """The entry called ``name`` (or one of its aliases).

    Raises:
        ValueError: ``name`` is not registered (the message lists the valid names).
    """
    if not isinstance(name, str):
        raise TypeError(f"`name` must be a str; got {type(name).__name__}.")
    entry = ENTRIES.get(_ALIASES.get(name, name))
    if entry is None:
        raise ValueError(f"unknown estimator {name!r}; valid estimators: {', '.join(names(aliases=True))}.")
    return entry


def build(name: str, setting: Setting | None = None, **options: Any) -> Estimator:
    """The estimator called ``name`` for ``setting``; ``options`` go to its factory."""
    return get(name).build(setting, **options)


def applicable(family: str, *, context: bool = False) -> list[Entry]:
    """Entries that apply to ``family``; those that need a context only with ``context=True``."""
    if family not in FAMILIES:
        raise ValueError(f"`family` must be one of {', '.join(FAMILIES)}; got {family!r}.")
    return [e for e in ENTRIES.values() if family in e.families and (context or not e.needs_context)]


def family_of(dist: Distribution) -> str | None:
    """``"normal"``, ``"bernoulli"`` or ``"categorical"`` for ``dist`` (through ``Independent``), else ``None``."""
    base = dist
    while isinstance(base, Independent):
        base = base.base_dist
    if isinstance(base, Normal):
        return "normal"
    if isinstance(base, Bernoulli):
        return "bernoulli"
    if isinstance(base, (Categorical, OneHotCategorical)):
        return "categorical"
    return None


def min_samples(est: Estimator) -> int:
    """The fewest samples ``est`` accepts: the largest ``min_samples`` of its modules (RLOO: 2), else 1."""
    return max([1, *(_as_int(getattr(m, "min_samples", 1)) for m in est.modules())])


def _as_int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 1


def samples_for_budget(
    est: Estimator, dist: Distribution, budget: int, *, minimum: int | None = None, exact: bool = True
) -> int:
    r"""S such that ``est`` spends ``budget`` evaluations of f per batch element on ``dist``.

    The evaluations are affine in S, :math:`e(S) = a S + c` (:meth:`Estimator.evaluations`).
    With ``a > 0``, S is the largest count with :math:`e(S) ≤` ``budget``; with ``exact`` (the
    default) :math:`e(S)` must equal ``budget``. With ``a = 0`` (:class:`Enumerate`: the whole
    support whatever S) S is the minimum and :math:`c ≤` ``budget`` must hold (equality with
    ``exact``).

    Args:
        est: the estimator.
        dist: a distribution of the shape it will see.
        budget: E, evaluations of f per batch element (an int >= 1).
        minimum: the fewest samples allowed (default :func:`min_samples` of ``est``).
        exact: require ``e(S) == budget``.

    Raises:
        ValueError: ``budget`` is not an int >= 1, is not reachable exactly (with ``exact``), or
            leaves S below ``minimum``.
    """
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(f"`budget` must be an int >= 1; got {budget!r}.")
    lo = min_samples(est) if minimum is None else minimum
    name = type(est).__name__
    e1, e2 = int(est.evaluations(dist, 1)), int(est.evaluations(dist, 2))
    slope, intercept = e2 - e1, 2 * e1 - e2
    if slope == 0:
        S = lo
    else:
        S = (budget - intercept) // slope
        if exact and (budget - intercept) % slope:
            raise ValueError(
                f"`budget` must be {intercept} + a multiple of {slope} for {name} ({slope} evaluations of f "
                f"per sample); got {budget}."
                if intercept
                else f"`budget` must be a multiple of {slope} for {name} ({slope} evaluations of f per "
                f"sample); got {budget}."
            )
        if S < lo:
            raise ValueError(f"`budget` {budget} gives {name} S = {S} samples; it needs at least {lo}.")
    spent = int(est.evaluations(dist, S))
    if spent > budget or (exact and spent != budget):
        raise ValueError(
            f"`budget` must be {'exactly' if exact else 'at least'} {spent} for {name} on this distribution "
            f"({spent} evaluations of f at S = {S}); got {budget}."
        )
    return S


def _check_unique(entries: Iterable[Entry]) -> None:
    seen: set[str] = set()
    for e in entries:
        for n in (e.name, *e.aliases):
            if n in seen:
                raise ValueError(f"estimator name {n!r} is registered twice.")
            seen.add(n)


_check_unique(ENTRIES.values())
