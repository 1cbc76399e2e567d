"""The ``bernoulli-toy`` study: smoke run, exact variances vs REFERENCES.md, ARM checked by the harness.

Exact checks (enumeration/quadrature) come first; sampled checks use the run's fixed
seed with thresholds z·SE, z for a false-failure rate of 1e-3 (Bonferroni over the rows
checked) had the seed been random.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from torch.distributions import Bernoulli, Independent, Normal

import scg
from scg.studies import cli
from scg.studies.bernoulli_toy import ARM, REFERENCE, BernoulliToyConfig, build_estimator
from scg.testing import assert_unbiased, exact_moments

Z = 4.0  # Phi^-1(1 - 1e-3 / (2 * 14 rows)) ~ 3.8, rounded up


def _f(row: dict, key: str) -> float:
    value = row.get(key)
    return float("nan") if value in (None, "") else float(value)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("bernoulli") / "run"
    assert cli.main(["run", "bernoulli-toy", "--smoke", "--out", str(out), "-q", "--device", "cpu"]) == 0
    with open(out / "results.csv", newline="") as fh:
        return out, list(csv.DictReader(fh))


def test_smoke_writes_files(smoke):
    out, rows = smoke
    assert json.loads((out / "manifest.json").read_text())["study"] == "bernoulli-toy"
    for name in ("bernoulli_variance.png", "bernoulli_training.png"):
        assert (out / name).stat().st_size > 10_000
    assert {r["status"] for r in rows} == {"ok"}


def test_exact_variances_match_references(smoke):
    _, rows = smoke
    checked = 0
    for r in rows:
        if r["part"] != "variance":
            continue
        assert _f(r, "exact_mean") == pytest.approx(_f(r, "exact_gradient"), rel=1e-9) or r["unbiased"] == "false"
        ref = REFERENCE.get(float(r["t"]), {}).get(r["estimator"])
        if ref is None:
            continue
        assert _f(r, "exact_variance") == pytest.approx(ref, rel=2e-4, abs=1e-30), r
        checked += 1
    assert checked == 8  # REINFORCE, RLOO, ARM, DisARM at t = 0.49 and 0.499


def test_sampled_variances_match_exact_ones(smoke):
    _, rows = smoke
    var = [r for r in rows if r["part"] == "variance"]
    for r in var:
        assert abs(_f(r, "variance_z")) <= Z, r
        if _f(r, "exact_variance") > 0:  # N = 8192 bounded estimates: relative SE <= 2 %
            assert abs(_f(r, "variance_rel_error")) <= 0.1, r
        if r["unbiased"] == "true":
            assert abs(_f(r, "bias_z")) <= Z, r
    disarm = [r for r in var if r["estimator"] == "disarm"]
    assert all(_f(r, "variance") == 0.0 and _f(r, "exact_variance") == 0.0 for r in disarm)


def test_gumbel_softmax_is_biased_exactly(smoke):
    _, rows = smoke
    for r in rows:
        if r["part"] == "variance" and r["estimator"] == "gumbel_softmax":
            assert abs(_f(r, "exact_mean") / _f(r, "exact_gradient") - 1) > 0.1


def test_t0499_training_converges_for_the_antithetic_and_leave_one_out_estimators(smoke):
    _, rows = smoke
    final = {r["estimator"]: r for r in rows if r["part"] == "train" and r["t"] == "0.499" and r["step"] == "150"}
    for name in ("exact", "rloo", "arm", "disarm"):
        assert _f(final[name], "converged_fraction") == 1.0, final[name]
    assert _f(final["gumbel_softmax"], "converged_fraction") == 0.0


def test_arm_is_exactly_unbiased_with_the_closed_form_variance():
    logits = torch.tensor([0.0, 0.7, -1.3], dtype=torch.float64)
    for t in (0.49, 0.3):
        m = assert_unbiased(ARM(), lambda l: Bernoulli(logits=l), (logits,), lambda b: (b - t) ** 2)
        assert float(m.variance[0]) == pytest.approx((1 - 2 * t) ** 2 / 48, rel=1e-9)  # (f(1) - f(0))^2 / 48


def test_arm_on_a_coupled_cost_with_independent_bernoullis():
    logits = torch.tensor([0.4, -0.2], dtype=torch.float64)
    assert_unbiased(ARM(), lambda l: Independent(Bernoulli(logits=l), 1), (logits,),
                    lambda b: (b[..., 0] - 2 * b[..., 1] + 0.3) ** 2)


def test_arm_single_sample_oracle():
    logits = torch.tensor([0.3], dtype=torch.float64, requires_grad=True)
    u = torch.tensor([[0.62]], dtype=torch.float64)

    def f(b: torch.Tensor) -> torch.Tensor:
        return (b - 0.4) ** 2

    out = ARM().surrogate(f, Bernoulli(logits=logits), {"u": u})
    out.sum().backward()
    theta = 1 / (1 + torch.exp(torch.tensor(-0.3, dtype=torch.float64)))
    b_up = torch.tensor(float(0.62 > 1 - theta), dtype=torch.float64)
    b_down = torch.tensor(float(0.62 < theta), dtype=torch.float64)
    assert float(out.detach()) == pytest.approx(float(0.5 * (f(b_up) + f(b_down))), abs=1e-12)
    assert float(logits.grad) == pytest.approx(float((f(b_up) - f(b_down)) * (0.62 - 0.5)), abs=1e-12)


def test_arm_rejects_other_distributions_and_bad_costs():
    with pytest.raises(TypeError, match="`dist` must be Bernoulli \\(optionally Independent\\) for ARM; got Normal"):
        ARM().check(Normal(0.0, 1.0))
    dist = Bernoulli(logits=torch.zeros(3))
    with pytest.raises(ValueError, match=r"`f` must return \[S, \*batch_shape\] = \[2, 3\]"):
        ARM()(lambda b: b.sum(-1), dist, 1)
    assert ARM().evaluations(dist, 4) == 8


def test_build_estimator_and_config_errors():
    est, s_min = build_estimator("rloo")
    assert s_min == 2 and isinstance(est, scg.ScoreFunction)
    with pytest.raises(ValueError, match="unknown estimator 'nope'; valid estimators: reinforce"):
        build_estimator("nope")
    with pytest.raises(ValueError, match="unknown estimator 'x'; valid estimators"):
        BernoulliToyConfig(train_estimators=("x",))
    with pytest.raises(ValueError, match="`variance_estimators` cannot include 'nvil'"):
        BernoulliToyConfig(variance_estimators=("nvil",))
    with pytest.raises(ValueError, match=r"`targets` must lie in \(0, 1\); got 1.5"):
        BernoulliToyConfig(targets=(1.5,))
    with pytest.raises(ValueError, match="`steps` must be an int >= 1; got 0"):
        BernoulliToyConfig(steps=0)


def test_exact_harness_reproduces_the_reference_numbers_directly():
    zero = torch.zeros((), dtype=torch.float64)
    make = lambda l: Bernoulli(logits=l)  # noqa: E731
    for t, refs in REFERENCE.items():
        f = lambda b, t=t: (b - t) ** 2  # noqa: E731
        for name, ref in refs.items():
            est, S = build_estimator(name)
            var = float(exact_moments(est.double(), make, (zero,), f, num_samples=S).variance[0])
            assert var == pytest.approx(ref, rel=2e-4, abs=1e-30), (t, name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_cells_run(tmp_path):  # pragma: no cover - no GPU on CI
    from scg.studies.bernoulli_toy import BernoulliToy
    from scg.studies.runner import run_study

    res = run_study(BernoulliToy(), BernoulliToy().smoke(), tmp_path, device="cuda", progress=False, plot=False)
    assert all(r["status"] == "ok" for r in res.rows)
