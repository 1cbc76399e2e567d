"""``scg-study run blr``: the smoke run, the analysis of variance, and the variance ordering at the start.

The smoke run has a fixed seed, so its numbers are deterministic; the ordering check
below holds by a factor of ~100 in the default run (docs/studies/blr/README.md), so a
factor of 10 has a negligible false-failure rate (< 1e-3) had the seed been random.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from _study_helpers import assert_cuda_smoke_run, manifest, run_rejected, run_smoke

from scg.studies.blr import ESTIMATORS, anova, median_bootstrap, ordering, summary_table

DOCS = Path(__file__).resolve().parents[2] / "docs" / "studies" / "blr"


def test_anova_is_exact_on_constructed_groups():
    # J estimates at each of K batches: within-batch spread 0 -> all variance is between batches
    means = torch.tensor([[1.0, -2.0], [3.0, 0.0], [5.0, 2.0]], dtype=torch.float64)  # [K, P]
    g = means.unsqueeze(1).expand(3, 4, 2)
    within, between = anova(g)
    torch.testing.assert_close(within, torch.zeros(2, dtype=torch.float64))
    torch.testing.assert_close(between, means.var(0))
    # identical batches, spread within: the between part is −within/J + var of means = 0 here
    noise = torch.tensor([-1.0, 1.0, -1.0, 1.0], dtype=torch.float64)
    g = noise.view(1, 4, 1).expand(3, 4, 1)
    within, between = anova(g)
    torch.testing.assert_close(within, torch.tensor([4.0 / 3.0], dtype=torch.float64))
    torch.testing.assert_close(between, torch.tensor([-1.0 / 3.0], dtype=torch.float64))


def test_smoke_run(tmp_path):
    rows = run_smoke("blr", tmp_path)
    for name in (
        "manifest.json",
        "results.csv",
        "blr_elbo.png",
        "blr_variance_steps.png",
        "blr_variance_dims.png",
    ):
        assert (tmp_path / name).is_file(), name
    assert manifest(tmp_path)["config"]["steps"] == 10
    assert {r["estimator"] for r in rows} == set(ESTIMATORS)
    var = [r for r in rows if r["kind"] == "variance"]
    assert len(var) == len(ESTIMATORS) * 2 * 62  # 2 checkpoints × (31 μ + 31 ρ)
    for r in var:
        assert math.isclose(
            float(r["variance_total"]),
            float(r["variance_mc"]) + float(r["variance_subsampling"]),
            rel_tol=1e-9,
        )
        assert float(r["variance_mc"]) > 0
        assert float(r["variance_mc_se"]) > 0
    summ = [r for r in rows if r["kind"] == "summary"]
    assert len(summ) == len(ESTIMATORS) * 2  # one per estimator and checkpoint
    for r in summ:
        assert float(r["median_variance_mc"]) > 0 and float(r["median_variance_mc_se"]) > 0
        assert float(r["median_variance_total_se"]) > 0
    mvd = next(r for r in rows if r["kind"] == "elbo" and r["estimator"] == "measure_valued")
    assert int(mvd["evaluations_per_step"]) == 4 * (1 + 4 * 31)  # S (1 + 4D) evaluations of f
    for r in rows:
        if r["step"]:
            r["step"] = int(r["step"])
    first = ordering(rows)[0]
    rank = {e: v for e, v in first}
    assert rank["score_function"] > 10 * rank["pathwise"]
    assert rank["score_function"] > 10 * rank["measure_valued"]


def test_median_bootstrap_se_is_zero_without_batch_spread_and_positive_with_it():
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(1, 6, 5, generator=gen, dtype=torch.float64).expand(4, 6, 5)  # identical batches
    out = median_bootstrap(g, 50, gen)
    assert out["median_variance_mc_se"] == pytest.approx(0.0, abs=1e-12)
    assert out["median_variance_mc"] == pytest.approx(float(g[0].var(0).sort().values[2]))
    g = torch.randn(8, 6, 5, generator=gen, dtype=torch.float64)
    assert median_bootstrap(g, 50, gen)["median_variance_mc_se"] > 0


def test_readme_table_is_the_committed_csv_at_every_checkpoint():
    """The README's table is :func:`summary_table` of results.csv: every checkpoint, every cell, with SEs."""
    with open(DOCS / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    table = summary_table(rows)
    steps = sorted({int(r["step"]) for r in rows if r["kind"] == "variance"})
    assert [int(line.split("|")[1]) for line in table.splitlines()[2:]] == steps
    assert "±" in table
    readme = (DOCS / "README.md").read_text()
    assert table in readme


def test_unknown_estimator_lists_valid_ones(tmp_path, capsys):
    assert run_rejected("blr", tmp_path, "estimators=pathwise,magic") == 2
    assert "valid estimators: pathwise, score_function" in capsys.readouterr().err


@pytest.mark.cuda
def test_cuda_smoke_run(tmp_path):  # pragma: no cover - no GPU on CI
    """Nothing assumes the CPU: the smoke size runs with tensors and generators on the GPU."""
    from scg.studies.blr import BLR

    assert_cuda_smoke_run(BLR(), tmp_path)
