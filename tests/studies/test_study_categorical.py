"""The ``categorical`` study: smoke run, exact rows against enumeration oracles written here, the budget
rule, the exact-at-S=1 scaling it relies on, training rows, resume, and bad configs.

Exact checks come first; sampled checks use the run's fixed seed with thresholds z·SE, z for a
false-failure rate of 1e-3 (Bonferroni over the components checked) had the seed been random.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from _study_helpers import manifest, num, smoke_fixture
from torch.distributions import OneHotCategorical

import scg
from scg.studies.categorical import (
    ESTIMATORS,
    IID,
    Categorical,
    CategoricalConfig,
    logits_at,
    plan,
    toy,
)
from scg.studies.runner import run_study
from scg.testing import exact_moments

smoke = smoke_fixture("categorical")  # module scope: (out, rows) of one CPU smoke run


def _costs(K: int, t: float = 0.49) -> torch.Tensor:
    return (torch.arange(K, dtype=torch.float64) / (K - 1) - t) ** 2


def _gradient(K: int) -> torch.Tensor:
    """∂/∂α_k Σ_j p_j c_j = p_k (c_k − Σ_j p_j c_j) at α = 0, in closed form."""
    p, c = torch.full((K,), 1.0 / K, dtype=torch.float64), _costs(K)
    return p * (c - (p * c).sum())


def _row(rows: list[dict], **key: object) -> dict:
    got = [r for r in rows if all(r[k] == str(v) for k, v in key.items())]
    assert len(got) == 1, (key, len(got))
    return got[0]


def test_smoke_writes_files_and_every_cell(smoke):
    out, rows = smoke
    assert manifest(out)["study"] == "categorical"
    for name in ("categorical_variance_vs_k", "categorical_variance_vs_budget", "categorical_training"):
        assert (out / f"{name}.png").stat().st_size > 10_000
    assert {r["status"] for r in rows} == {"ok", "skipped"}
    cfg = Categorical().smoke()
    var = [r for r in rows if r["part"] == "variance"]
    assert len(var) == len(cfg.budgets) * len(ESTIMATORS) * (len(cfg.classes) + len(cfg.product_classes))
    for r in var:
        if r["status"] == "skipped":
            assert r["note"], r
            continue
        assert int(r["evaluations"]) <= int(r["budget"]), r
        assert r["method"] in ("exact", "exact_iid", "sampled"), r
        assert num(r, "variance") >= 0 and num(r, "grad_norm2") > 0, r
        norm2 = num(r, "grad_norm2")
        assert num(r, "variance_rel") == pytest.approx(num(r, "variance") / norm2, rel=1e-12)
        mse = (num(r, "bias_norm") ** 2 + num(r, "variance")) / norm2
        assert num(r, "mse_rel") == pytest.approx(mse, rel=1e-12)
    # the set estimators refuse a product of latents; the others run on it
    product = [r for r in var if r["latents"] == "3"]
    for r in product:
        if r["estimator"] in ("unordered_set", "sum_and_sample"):
            assert r["status"] == "skipped" and "Independent" in r["note"], r
    assert any(r["status"] == "ok" and r["estimator"] == "relax" for r in product)


def test_gradient_norm_matches_the_closed_form(smoke):
    _, rows = smoke
    for K in (2, 3):
        r = _row(rows, part="variance", latents=1, classes=K, estimator="reinforce", budget=2)
        assert num(r, "grad_norm2") == pytest.approx(float((_gradient(K) ** 2).sum()), rel=1e-12)
    assert float(_gradient(2)[1]) == pytest.approx(0.25 * (1 - 2 * 0.49))  # the Bernoulli toy's gradient


def test_score_function_rows_equal_an_enumeration_oracle(smoke):
    """One-sample REINFORCE ĝ(y) = f(y)(y − p): its variance summed over the logits, divided by S."""
    _, rows = smoke
    checked = 0
    for K, budget in itertools.product((2, 3), (2, 8)):
        p, c = torch.full((K,), 1.0 / K, dtype=torch.float64), _costs(K)
        g = c[:, None] * (torch.eye(K, dtype=torch.float64) - p)  # ĝ for y = e_k, [K outcomes, K logits]
        mean = (p[:, None] * g).sum(0)
        var = float((p[:, None] * (g - mean) ** 2).sum())
        r = _row(rows, part="variance", latents=1, classes=K, estimator="reinforce", budget=budget)
        S = int(r["num_samples"])
        assert S == budget and r["method"] in ("exact", "exact_iid")
        assert num(r, "variance") == pytest.approx(var / S, rel=1e-9)
        assert num(r, "bias_norm") <= 1e-12
        assert float((mean - _gradient(K)).abs().max()) <= 1e-15  # the oracle is unbiased too
        checked += 1
    assert checked == 4


def test_rloo_row_equals_an_enumeration_oracle(smoke):
    """RLOO at S = 2: ĝ = ½ (f(y₁) − f(y₂))(s(y₁) − s(y₂)) over the K² ordered pairs."""
    _, rows = smoke
    K = 3
    p, c = torch.full((K,), 1.0 / K, dtype=torch.float64), _costs(K)
    score = torch.eye(K, dtype=torch.float64) - p
    g = torch.stack([0.5 * (c[a] - c[b]) * (score[a] - score[b]) for a in range(K) for b in range(K)])
    w = torch.full((K * K,), 1.0 / K**2, dtype=torch.float64)
    mean = (w[:, None] * g).sum(0)
    r = _row(rows, part="variance", latents=1, classes=K, estimator="rloo", budget=2)
    assert r["method"] == "exact" and int(r["num_samples"]) == 2
    assert num(r, "variance") == pytest.approx(float((w[:, None] * (g - mean) ** 2).sum()), rel=1e-9)
    assert torch.allclose(mean, _gradient(K), atol=1e-15)


def test_unordered_set_row_equals_an_enumeration_oracle(smoke):
    """k = 2 draws without replacement at K = 3; given the set {a, b}, a is first with probability
    w_a ∝ 1/(1 − p_a), and the built-in baseline leaves f(a) − b_a = (1 − p_a)(f(a) − f(b))."""
    _, rows = smoke
    K = 3
    p, c = torch.full((K,), 1.0 / K, dtype=torch.float64), _costs(K)
    score = torch.eye(K, dtype=torch.float64) - p
    probs, ests = [], []
    for a, b in itertools.combinations(range(K), 2):
        probs.append(p[a] * p[b] * (1 / (1 - p[a]) + 1 / (1 - p[b])))
        wa = (1 / (1 - p[a])) / (1 / (1 - p[a]) + 1 / (1 - p[b]))
        ga = wa * (1 - p[a]) * (c[a] - c[b]) * score[a]
        gb = (1 - wa) * (1 - p[b]) * (c[b] - c[a]) * score[b]
        ests.append(ga + gb)
    w, g = torch.stack(probs), torch.stack(ests)
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-15)
    mean = (w[:, None] * g).sum(0)
    assert torch.allclose(mean, _gradient(K), atol=1e-15)
    r = _row(rows, part="variance", latents=1, classes=K, estimator="unordered_set", budget=2)
    assert r["method"] == "exact" and r["set_size"] == "2" and int(r["evaluations"]) == 2
    assert num(r, "variance") == pytest.approx(float((w[:, None] * (g - mean) ** 2).sum()), rel=1e-9)
    assert num(r, "bias_norm") <= 1e-12
    full = _row(rows, part="variance", latents=1, classes=K, estimator="unordered_set", budget=8)
    assert full["set_size"] == "3" and num(full, "variance") == 0.0  # k = K: the exact gradient


def test_coupled_disarm_is_exact_for_two_classes(smoke):
    """Two classes at α = 0: DisARM of one Bernoulli at σ(φ) = ½, whose pair is always antithetic —
    the estimate is the exact gradient (variance 0); the Bernoulli toy's reference value."""
    _, rows = smoke
    for budget in (2, 8):
        r = _row(rows, part="variance", latents=1, classes=2, estimator="categorical_disarm", budget=budget)
        assert r["method"] in ("exact", "exact_iid") and int(r["num_samples"]) == budget // 2
        assert num(r, "variance") == 0.0 and num(r, "bias_norm") <= 1e-12


def test_biased_and_unbiased_rows(smoke):
    """Exact rows: the unbiased estimators' mean is the gradient. Sampled rows of unbiased estimators:
    |mean − ∇| ≤ Z·SE per logit; Gumbel-softmax is biased by more than 5 % at every K."""
    _, rows = smoke
    ok = [r for r in rows if r["part"] == "variance" and r["status"] == "ok"]
    sampled = [r for r in ok if r["method"] == "sampled" and r["unbiased"] == "true"]
    comps = sum(int(r["classes"]) * int(r["latents"]) for r in sampled)
    z = 4.0 + 0.25 * math.log10(max(comps, 10))  # ≥ Φ⁻¹(1 − 1e-3 / (2 · comps)) for comps ≤ 10⁴
    for r in ok:
        if r["unbiased"] == "true" and r["method"] != "sampled":
            assert num(r, "bias_rel") <= 1e-9, r
    assert sampled
    for r in sampled:
        assert num(r, "bias_z_max") <= z, r
    for r in ok:
        if r["estimator"] == "gumbel_softmax" and r["latents"] == "1":
            assert num(r, "bias_rel") > 0.05 and num(r, "bias_norm") > 4 * num(r, "bias_norm_se"), r
    # f is linear in the one-hot vector for one latent: straight-through is exact (and deterministic)
    for r in ok:
        if r["estimator"] == "straight_through" and r["latents"] == "1":
            assert num(r, "bias_rel") <= 1e-9 and num(r, "variance") == 0.0, r


@pytest.mark.parametrize("name", sorted(IID & {"reinforce", "categorical_disarm", "reinmax", "indecater"}))
def test_iid_estimators_variance_scales_as_one_over_s(name):
    """The ``exact_iid`` method: the harness at S = 2 equals its S = 1 moments with the variance halved."""
    cfg = CategoricalConfig()
    f, make = toy(0.49, 3)
    alpha = logits_at(3, 1) + torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
    got = plan(name, cfg, make(alpha), 8)
    assert not isinstance(got, str)
    est = got[0].double()
    one = exact_moments(est, make, (alpha,), f, num_samples=1)
    two = exact_moments(est, make, (alpha,), f, num_samples=2)
    assert torch.allclose(two.mean, one.mean, atol=1e-14)
    assert torch.allclose(two.variance, one.variance / 2, rtol=1e-9, atol=1e-18)


def test_budget_rule():
    cfg = CategoricalConfig()
    K = 10
    dist = OneHotCategorical(logits=torch.zeros(K))
    for name in ESTIMATORS:
        for budget in (2, 4, 16, 64):
            got = plan(name, cfg, dist, budget)
            if isinstance(got, str):
                continue
            est, S = got
            assert est.evaluations(dist, S) <= budget, (name, budget)
            if name not in ("unordered_set", "sum_and_sample", "enumerate"):
                assert est.evaluations(dist, S + 1) > budget, (name, budget)  # the largest S
    assert plan("arsm", cfg, dist, 32) == "one estimate costs 46 evaluations of f > the budget 32"
    assert plan("rloo", cfg, dist, 2)[1] == 2
    assert plan("categorical_disarm", cfg, dist, 16)[1] == 8
    assert plan("relax", cfg, dist, 16)[1] == 5
    assert plan("measure_valued", cfg, dist, 32)[1] == 2  # 1 + K evaluations per sample
    us, s = plan("unordered_set", cfg, dist, 4)
    assert us.k == 4 and s == 1
    assert plan("unordered_set", cfg, dist, 64)[0].k == K
    assert plan("sum_and_sample", cfg, dist, 4)[0].k == 3
    assert plan("sum_and_sample", cfg, dist, 64)[0].k == K - 1
    assert "budget 8" in plan("enumerate", cfg, dist, 8)


def test_training_rows(smoke):
    _, rows = smoke
    cfg = Categorical().smoke()
    train = [r for r in rows if r["part"] == "train" and r["status"] == "ok"]
    final = {(r["estimator"], r["budget"]): r for r in train if int(r["step"]) == cfg.steps}
    assert ("exact", "") in final and final[("exact", "")]["converged"] == "true"
    assert all(r["converged"] == "" for r in train if int(r["step"]) != cfg.steps)
    c = _costs(cfg.train_classes)
    for r in train:
        assert num(r, "objective") >= float(c.min()) - 1e-12
        assert num(r, "objective_gap") == pytest.approx(num(r, "objective") - float(c.min()), abs=1e-12)
        if r["estimator"] != "exact":
            assert int(r["evaluations"]) <= int(r["budget"]), r
    start = [r for r in train if int(r["step"]) == 0]
    assert all(num(r, "objective") == pytest.approx(float(c.mean()), rel=1e-12) for r in start)
    # K = 3 at 4 evaluations: the exact estimators (enumerate, indecater, the full set) converge
    for name in ("enumerate", "indecater", "unordered_set"):
        assert final[(name, "4")]["converged"] == "true", final[(name, "4")]


def test_resume_reproduces_the_uninterrupted_run(tmp_path, monkeypatch):
    study = Categorical()
    cfg = CategoricalConfig(
        classes=(3,),
        product_classes=(),
        budgets=(2, 4),
        estimators=("reinforce", "rloo", "gumbel_softmax"),
        num_estimates=256,
        train_classes=3,
        train_budgets=(4,),
        replicas=2,
        steps=10,
        record_every=5,
    )
    whole = run_study(study, cfg, tmp_path / "whole", device="cpu", progress=False, plot=False)
    original = Categorical.run_cell
    calls = []

    def dying(self, cfg, cell, ctx):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(cell)
        return original(self, cfg, cell, ctx)

    monkeypatch.setattr(Categorical, "run_cell", dying)
    with pytest.raises(KeyboardInterrupt):
        run_study(study, cfg, tmp_path / "resumed", device="cpu", progress=False, plot=False)
    monkeypatch.setattr(Categorical, "run_cell", original)
    res = run_study(study, cfg, tmp_path / "resumed", device="cpu", progress=False, plot=False)
    assert len(res.skipped) == 3 and len(res.ran) == len(study.cells(cfg)) - 3
    assert (tmp_path / "resumed" / "results.csv").read_text() == (
        tmp_path / "whole" / "results.csv"
    ).read_text()
    assert len(whole.rows) == len(res.rows)


def test_three_sizes():
    study = Categorical()
    default, full, small = study.default(), study.full(), study.smoke()
    assert default == CategoricalConfig()
    assert full.num_estimates > default.num_estimates and set(default.classes) <= set(full.classes)
    assert small.num_estimates < default.num_estimates and small.steps < default.steps
    assert set(study.time) == {"smoke", "default", "full"}


def test_config_errors():
    with pytest.raises(ValueError, match=r"`t` must lie in \(0, 1\); got 1.5"):
        CategoricalConfig(t=1.5)
    with pytest.raises(ValueError, match="unknown estimator 'nope'; valid estimators: reinforce"):
        CategoricalConfig(estimators=("nope",))
    with pytest.raises(ValueError, match="`classes` must hold ints >= 2; got 1"):
        CategoricalConfig(classes=(1,))
    with pytest.raises(ValueError, match="`num_estimates` must be >= 2 to estimate a variance; got 1"):
        CategoricalConfig(num_estimates=1)
    with pytest.raises(ValueError, match="`reinmax_temperature` must be >= 1; got 0.5"):
        CategoricalConfig(reinmax_temperature=0.5)
    with pytest.raises(ValueError, match="`cv_warmup` must be an int >= 0; got -1"):
        CategoricalConfig(cv_warmup=-1)
    with pytest.raises(ValueError, match=r"`converged_gap` must lie in \(0, 1\)"):
        CategoricalConfig(converged_gap=0.0)


def test_registered():
    from scg.studies.registry import get_study

    assert isinstance(get_study("categorical"), Categorical)
    assert scg.UnorderedSet  # the study's estimators are the library's exports
