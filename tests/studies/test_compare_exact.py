"""``scg-study compare`` on a discontinuous cost: its exact columns use the problem's breakpoints.

The problem is :math:`E[1[z > b]]`, :math:`z \\sim N(μ, σ^2)`, b = 0.5, μ = 0.2, σ = 1.5, with
c = (b − μ)/σ, φ the standard normal density and Q = 1 − Φ its tail:

* gradient: :math:`∂_μ = φ(c)/σ`, :math:`∂_σ = φ(c)\\,c/σ` (0.26070, 0.05214);
* score-function variance, from :math:`E[ε^2 1[ε > c]] = cφ(c) + Q(c)` and
  :math:`E[(ε^2 − 1)^2 1[ε > c]] = (c^3 + c)φ(c) + 2Q(c)`:
  :math:`\\mathrm{Var}_μ = (cφ + Q)/σ^2 − ∂_μ^2`, :math:`\\mathrm{Var}_σ = ((c^3 + c)φ + 2Q)/σ^2 − ∂_σ^2`.

The statistical check (|bias z| of the unbiased estimators) runs at a fixed seed, so it is
deterministic; its threshold is the two-sided normal quantile for a false-failure rate of
1e-4 Bonferroni-corrected over its 8 rows, had the seed been random.
"""

from __future__ import annotations

import csv
import math
import pathlib
import re

import pytest
from torch import Tensor
from torch.distributions import Normal

from scg.studies import cli
from scg.studies.problems import Problem

pytest.importorskip("scg.testing")

B, MU, SIGMA = 0.5, 0.2, 1.5
C = (B - MU) / SIGMA
PHI = math.exp(-0.5 * C * C) / math.sqrt(2.0 * math.pi)
Q = 0.5 * math.erfc(C / math.sqrt(2.0))
GRAD = {"loc": PHI / SIGMA, "scale": PHI * C / SIGMA}
SF_VARIANCE = {
    "loc": (C * PHI + Q) / SIGMA**2 - GRAD["loc"] ** 2,
    "scale": ((C**3 + C) * PHI + 2.0 * Q) / SIGMA**2 - GRAD["scale"] ** 2,
}
UNBIASED = ("score_function", "score_function_optimal", "rloo", "measure_valued")
# Φ⁻¹(1 − 1e-4 / (2 · 8)): two-sided, 1e-4 over 4 estimators × 2 parameters.
Z = 4.37


class _Above:
    """1[z > b], picklable, with a readable repr."""

    def __call__(self, z: Tensor) -> Tensor:
        return (z > B).to(z.dtype)

    def __repr__(self) -> str:
        return f"1[z > {B:g}]"


def _normal(loc: Tensor, scale: Tensor) -> Normal:
    return Normal(loc, scale)


def indicator_problem() -> Problem:
    """The user problem of the CLI run below (``--problem MODULE:indicator_problem``)."""
    return Problem(
        name="indicator",
        make_dist=_normal,
        params=(MU, SIGMA),
        f=_Above(),
        breakpoints=(B,),
        param_names=("loc", "scale"),
        description=f"E[1[z > {B:g}]], z ~ N({MU:g}, {SIGMA:g}^2)",
    )


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], dict[str, str]]:
    out = tmp_path_factory.mktemp("compare") / "out"
    code = cli.main(
        [
            "compare",
            "--problem",
            f"{__name__}:indicator_problem",
            "--estimators",
            ",".join((*UNBIASED, "pathwise")),
            "-N",
            "20000",
            "--seed",
            "0",
            "--device",
            "cpu",
            "--out",
            str(out),
            "-q",
            "--no-plot",
        ]
    )
    assert code == 0
    with open(out / "results.csv", newline="") as fh:
        return {(r["estimator"], r["parameter"]): r for r in csv.DictReader(fh)}


def test_closed_form_values() -> None:
    assert GRAD["loc"] == pytest.approx(0.26070, abs=5e-6)
    assert GRAD["scale"] == pytest.approx(0.05214, abs=5e-6)


def test_exact_gradient_uses_breakpoints(rows: dict[tuple[str, str], dict[str, str]]) -> None:
    assert len(rows) == 10
    for (name, p), r in rows.items():
        assert r["status"] == "ok", (name, p, r["note"])
        assert float(r["exact_gradient"]) == pytest.approx(GRAD[p], abs=1e-8), (name, p)


def test_exact_moments_use_breakpoints(rows: dict[tuple[str, str], dict[str, str]]) -> None:
    for p in ("loc", "scale"):
        sf = rows[("score_function", p)]
        assert float(sf["exact_mean"]) == pytest.approx(GRAD[p], abs=1e-8)
        assert float(sf["exact_variance"]) == pytest.approx(SF_VARIANCE[p], abs=1e-8)
        for name in ("score_function_optimal", "rloo"):
            assert float(rows[(name, p)]["exact_mean"]) == pytest.approx(GRAD[p], abs=1e-8), (
                name,
                p,
            )
        # pathwise misses the jump: its gradient is exactly 0, a zero-variance wrong estimate
        pw = rows[("pathwise", p)]
        assert float(pw["exact_mean"]) == 0.0 and float(pw["mean"]) == 0.0
        assert float(pw["bias_z"]) == -math.inf


def test_measure_valued_exact_columns_are_right_or_empty(
    rows: dict[tuple[str, str], dict[str, str]],
) -> None:
    """The jump lies inside MeasureValued's Rayleigh / Maxwell / uniform noise: compare reports its exact
    moments only where they are exact, else leaves them empty with the reason.

    Closed forms (c > 0): ĝ_μ = 1[W > c] / (σ√(2π)) and ĝ_σ = (1[M > c] − 1[MU > c]) / σ, whose
    squares have means ∂_μ / (σ√(2π)) and ∂_σ / σ (for indicators with 1[MU > c] ≤ 1[M > c]).
    """
    second = {
        "loc": GRAD["loc"] / (SIGMA * math.sqrt(2.0 * math.pi)),
        "scale": GRAD["scale"] / SIGMA,
    }
    for p in ("loc", "scale"):
        mv = rows[("measure_valued", p)]
        assert float(mv["exact_gradient"]) == pytest.approx(GRAD[p], abs=1e-8)
        if math.isnan(float(mv["exact_mean"])):
            assert math.isnan(float(mv["exact_variance"]))
            assert re.search(rf"exact moments of [^;]*\b{p}\b[^;]* omitted", mv["note"]), mv["note"]
        else:
            assert float(mv["exact_mean"]) == pytest.approx(GRAD[p], abs=1e-8)
            assert float(mv["exact_variance"]) == pytest.approx(second[p] - GRAD[p] ** 2, abs=1e-8)


def test_unbiased_estimators_have_small_bias_z(rows: dict[tuple[str, str], dict[str, str]]) -> None:
    for name in UNBIASED:
        for p in ("loc", "scale"):
            r = rows[(name, p)]
            z = float(r["bias_z"])
            assert abs(z) < Z, (name, p, z)
            assert z == pytest.approx((float(r["mean"]) - GRAD[p]) / float(r["std_error"]), rel=1e-6)


def test_exact_moments_are_kept_only_when_their_mean_is_the_gradient() -> None:
    import scg
    from scg.studies.compare import _mean_is_exact

    mv, gumbel = scg.MeasureValued(), scg.GumbelSoftmax()
    assert _mean_is_exact(mv, GRAD["loc"] + 1e-12, 1e-3, GRAD["loc"])
    assert not _mean_is_exact(mv, GRAD["loc"] + 1e-6, 1e-3, GRAD["loc"])  # beyond 1e-8 · max(|∇|, sd)
    assert not _mean_is_exact(mv, 0.26596, 1.5e-31, GRAD["loc"])  # a quadrature that missed the jump
    assert not _mean_is_exact(gumbel, GRAD["loc"], 1e-3, GRAD["loc"])  # a biased estimator cannot be checked


def test_moving_average_is_warmed_up_before_it_is_measured(tmp_path: pathlib.Path) -> None:
    """compare warms a running baseline up (200 calls, gradients enabled) before freezing it:
    on the Bernoulli toy its variance is far below REINFORCE's (equal if the warm-up did nothing)."""
    out = tmp_path / "out"
    args = ["compare", "--problems", "bernoulli-toy", "--estimators", "score_function,moving_average"]
    code = cli.main(
        [*args, "-N", "4000", "--seed", "0", "--device", "cpu", "--out", str(out), "-q", "--no-plot"]
    )
    assert code == 0
    with open(out / "results.csv", newline="") as fh:
        var = {r["estimator"]: float(r["variance"]) for r in csv.DictReader(fh)}
    assert var["moving_average"] < 0.01 * var["score_function"], var
