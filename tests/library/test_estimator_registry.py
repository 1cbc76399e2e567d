"""scg.estimators.registry: names build estimators, every exported estimator is registered, the
families an entry claims are ones it runs on, and the budget of evaluations gives the right S.

All checks are deterministic: a family claim is checked by building the estimator and running one
seeded estimate on a distribution of that family (a finite value and a finite gradient); the
budget rule against evaluation counts written out by hand from each estimator's formula.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from torch.distributions import Bernoulli, Independent, Normal, OneHotCategorical

import scg
from scg.estimators import registry
from scg.estimators.registry import Setting, samples_for_budget

D, K = 3, 4  # Bernoulli / Normal: 3 variables; categorical: 4 classes


def _dist(family: str, theta: torch.Tensor) -> torch.distributions.Distribution:
    if family == "normal":
        return Independent(Normal(theta[:D], torch.nn.functional.softplus(theta[D : 2 * D])), 1)
    if family == "bernoulli":
        return Independent(Bernoulli(logits=theta[:D]), 1)
    return OneHotCategorical(
        logits=theta[:K]
    )  # one categorical variable (every categorical estimator takes it)


def _cost(z: torch.Tensor) -> torch.Tensor:
    w = torch.arange(1.0, z.shape[-1] + 1, dtype=z.dtype)
    return ((z - 0.3) ** 2 * w).sum(-1)


SETTING = Setting(event_size=D, context_size=2)
CLAIMS = [(e.name, f) for e in registry.ENTRIES.values() for f in sorted(e.families)]


def test_every_name_builds_an_estimator_and_names_are_unique() -> None:
    every = registry.names(aliases=True)
    assert len(every) == len(set(every))
    assert registry.names() == list(registry.ENTRIES)
    for name in every:
        est = registry.build(name, SETTING)
        assert isinstance(est, scg.Estimator), name
        assert registry.get(name).families <= set(registry.FAMILIES) and registry.get(name).families
    assert registry.get("reinforce") is registry.get("score_function")
    assert registry.get("gumbel") is registry.get("gumbel_softmax")
    for name in ("score_function", "rloo", "nvil", "disarm", "relax", "pathwise", "gumbel_softmax"):
        assert name in registry.ENTRIES  # the names users and docs use


def test_every_exported_estimator_class_is_registered() -> None:
    exported = {
        getattr(scg, n)
        for n in scg.__all__
        if inspect.isclass(getattr(scg, n, None))
        and issubclass(getattr(scg, n), scg.Estimator)
        and getattr(scg, n) is not scg.Estimator
    }
    built = {type(registry.build(n, SETTING)) for n in registry.names()}
    assert len(exported) == 16 and exported <= built, (
        exported - built
    )  # the 16 estimator classes in scg.__all__


@pytest.mark.parametrize("name,family", CLAIMS, ids=[f"{n}-{f}" for n, f in CLAIMS])
def test_each_entry_runs_on_every_family_it_claims(name: str, family: str) -> None:
    torch.manual_seed(0)
    theta = torch.linspace(-0.5, 0.7, 2 * D, dtype=torch.float64).requires_grad_()
    dist = _dist(family, theta)
    est = registry.build(name, Setting(context_size=2) if family == "categorical" else SETTING).double()
    assert registry.family_of(dist) == family
    est.check(dist)
    S = max(4, registry.min_samples(est))
    context = torch.ones(2, dtype=torch.float64)
    value = scg.expectation(_cost, dist, est, num_samples=S, context=context)
    value.sum().backward()
    assert torch.isfinite(value).all() and theta.grad is not None and torch.isfinite(theta.grad).all()
    assert theta.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "name,family",
    [(e.name, f) for e in registry.ENTRIES.values() for f in registry.FAMILIES if f not in e.families],
)
def test_a_family_not_claimed_is_refused_by_the_estimator(name: str, family: str) -> None:
    theta = torch.zeros(2 * D, dtype=torch.float64)
    with pytest.raises(TypeError, match="`dist` must be"):
        registry.build(name, SETTING).check(_dist(family, theta))


def test_applicable_lists_the_categorical_estimators() -> None:
    cat = [e.name for e in registry.applicable("categorical")]
    for name in ("categorical_disarm", "arsm", "unordered_set", "sum_and_sample", "enumerate"):
        assert name in cat
    for name in ("gumbel_rao", "reinmax", "indecater", "score_function", "rloo"):
        assert name in cat
    assert "disarm" not in cat and "pathwise" not in cat and "nvil" not in cat  # nvil needs a context
    assert "nvil" in [e.name for e in registry.applicable("categorical", context=True)]
    assert [e.name for e in registry.applicable("normal")][:3] == [
        "score_function",
        "score_function_optimal",
        "rloo",
    ]


#: f evaluations per sample at D = 3 Bernoulli latents / one 4-class latent, from the formulas.
PER_SAMPLE = {
    ("score_function", "bernoulli"): 1,
    ("disarm", "bernoulli"): 2,  # an antithetic pair
    ("arm", "bernoulli"): 2,
    ("relax", "bernoulli"): 3,  # f(b) and the control variate at z and z~
    ("measure_valued", "bernoulli"): 1 + 2 * D,  # the sample, and two copies per variable
    ("indecater", "bernoulli"): 1 + 2 * D,  # the sample, and each variable set to each of 2 values
    ("unordered_set", "categorical"): 2,  # k = 2 classes
    ("sum_and_sample", "categorical"): 2,  # k = 1 summed class + one sample
    ("arsm", "categorical"): 1 + K * (K - 1) // 2,  # the sample and every swap of two classes
    ("categorical_disarm", "categorical"): 2,
}


@pytest.mark.parametrize("key", list(PER_SAMPLE), ids=[f"{n}-{f}" for n, f in PER_SAMPLE])
def test_samples_for_budget_spends_the_budget(key: tuple[str, str]) -> None:
    name, family = key
    e = PER_SAMPLE[key]
    est = registry.build(name, SETTING)
    dist = _dist(family, torch.zeros(2 * D))
    for S in (1, 2, 5):
        assert samples_for_budget(est, dist, S * e) == S
        assert est.evaluations(dist, S) == S * e
    if e > 1:
        with pytest.raises(ValueError, match=f"`budget` must be a multiple of {e} for {type(est).__name__}"):
            samples_for_budget(est, dist, 2 * e + 1)
        assert samples_for_budget(est, dist, 2 * e + 1, exact=False) == 2  # the most that fit


def test_budget_minimum_samples_and_enumerate() -> None:
    rloo = registry.build("rloo")
    dist = _dist("bernoulli", torch.zeros(2 * D))
    assert registry.min_samples(rloo) == 2 and registry.min_samples(registry.build("disarm")) == 1
    with pytest.raises(ValueError, match="`budget` 1 gives ScoreFunction S = 1 samples; it needs at least 2"):
        samples_for_budget(rloo, dist, 1)
    assert samples_for_budget(rloo, dist, 1, minimum=1) == 1
    enum = registry.build("enumerate")
    assert samples_for_budget(enum, dist, 2**D) == 1  # the whole support, 2^3 points, whatever S
    assert samples_for_budget(enum, dist, 100, exact=False) == 1
    with pytest.raises(ValueError, match="`budget` must be exactly 8 for Enumerate"):
        samples_for_budget(enum, dist, 9)
    with pytest.raises(ValueError, match="`budget` must be at least 8 for Enumerate"):
        samples_for_budget(enum, dist, 7, exact=False)
    with pytest.raises(ValueError, match="`budget` must be an int >= 1; got 0"):
        samples_for_budget(enum, dist, 0)


def test_settings_size_the_learned_parts() -> None:
    torch.manual_seed(0)
    nvil = registry.build("nvil", Setting(context_size=7))
    net = nvil.baseline.transforms[1].module
    assert net.net[0].in_features == 7 and net.net[-1].out_features == 1
    relax = registry.build("relax", Setting(event_size=5))
    assert relax.control_variate.net.net[0].in_features == 5
    assert type(registry.build("relax").control_variate).__name__ == "REBARControlVariate"
    assert registry.build("gumbel_softmax", Setting(temperature=0.25)).temperature == 0.25
    assert registry.build("unordered_set", k=3).k == 3
    assert registry.build("score_function_optimal", b=1.5).baseline.value == 1.5


def test_bad_names_settings_and_options() -> None:
    with pytest.raises(ValueError, match="unknown estimator 'nope'; valid estimators: score_function, "):
        registry.build("nope")
    with pytest.raises(TypeError, match="`name` must be a str; got int"):
        registry.get(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`context_size` of the Setting must be given for 'nvil'"):
        registry.build("nvil")
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['k'\] for 'disarm'; valid options: none"):
        registry.build("disarm", k=2)
    with pytest.raises(ValueError, match="`event_size` must be None or an int >= 1; got 0"):
        Setting(event_size=0)
    with pytest.raises(ValueError, match="`temperature` must be positive; got -1"):
        Setting(temperature=-1)
    with pytest.raises(
        ValueError, match="`family` must be one of normal, bernoulli, categorical; got 'gamma'"
    ):
        registry.applicable("gamma")
