"""``scg-study run discrete-vae``: the smoke run, equal cost, every estimator at the same parameters, errors."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from _study_helpers import assert_cuda_smoke_run, manifest, run_rejected, run_smoke

from scg.models import DISCRETE_ESTIMATORS
from scg.studies.discrete_vae import SAME_MEAN, shared_sq_norm, summary, summary_table

DOCS = Path(__file__).resolve().parents[2] / "docs" / "studies" / "discrete-vae"


def test_smoke_run(tmp_path):
    rows = run_smoke("discrete-vae", tmp_path)
    assert (tmp_path / "discrete_vae.png").is_file() and (tmp_path / "manifest.json").is_file()
    assert manifest(tmp_path)["study"] == "discrete-vae"
    var = [r for r in rows if r["kind"] == "variance"]
    assert {r["estimator"] for r in var} == set(DISCRETE_ESTIMATORS)
    cost = {
        "moving_average": 1,
        "nvil": 1,
        "rloo": 1,
        "vimco": 1,
        "disarm": 2,
        "relax": 3,
        "gumbel_softmax": 1,
    }
    for r in var:  # equal cost: S × (evaluations of f per sample) = E for every estimator
        assert int(r["num_samples"]) * cost[r["estimator"]] == int(r["evaluations"]) == 6
    assert len(var) == 2 * 2 * len(DISCRETE_ESTIMATORS)  # 2 seeds × 2 checkpoints × every estimator
    assert {r["engine"] for r in var} == {"vmap"}  # the model is torch.func-traceable
    for r in var:
        assert float(r["var_sum"]) > 0 and float(r["var_projection"]) > 0
        assert int(r["parameters"]) == 64 * 8 + 8  # linear encoder, 8 latents in the smoke size
        assert (
            r["norm"] == ("shared" if r["estimator"] in SAME_MEAN else "own")
            or float(r["mean_sq_norm_shared"]) <= 0
        )
    # the ELBO is of the one reference trajectory per seed
    assert {r["estimator"] for r in rows if r["kind"] == "elbo"} == {"rloo"}
    assert {r["unbiased"] for r in var if r["estimator"] == "gumbel_softmax"} == {"false"}


def test_every_estimator_is_measured_at_the_same_parameters(tmp_path):
    """At each (seed, checkpoint) every estimator sees identical parameters; training moves them; seeds differ."""
    rows = run_smoke("discrete-vae", tmp_path)
    var = [r for r in rows if r["kind"] == "variance"]
    sums: dict[tuple[str, str], set[str]] = {}
    for r in var:
        sums.setdefault((r["seed"], r["step"]), set()).add(r["param_checksum"])
    assert len(sums) == 4 and all(len(v) == 1 for v in sums.values())
    assert len({next(iter(v)) for v in sums.values()}) == 4  # the checkpoints are different parameters
    shared = {}
    for r in var:
        shared.setdefault((r["seed"], r["step"]), set()).add(r["mean_sq_norm_shared"])
    assert all(len(v) == 1 for v in shared.values())  # one ‖∇ELBO‖² per checkpoint
    summ = summary(rows)
    assert {r["seeds"] for r in summ if r["estimator"] == "rloo"} == {2}


def test_shared_sq_norm_is_the_mean_of_pairwise_dot_products():
    a, b, c = (torch.tensor(v, dtype=torch.float64) for v in ([1.0, 2.0], [3.0, -1.0], [0.5, 0.5]))
    expected = (float(a @ b) + float(a @ c) + float(b @ c)) / 3
    assert shared_sq_norm({"a": a, "b": b, "c": c}) == pytest.approx(expected, rel=1e-12)
    assert math.isnan(shared_sq_norm({"a": a}))


def test_readme_table_is_the_committed_csv():
    """The README's tables are :func:`summary_table` of results.csv: every checkpoint, mean ± SE over ≥ 3 seeds."""
    with open(DOCS / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len({r["seed"] for r in rows}) >= 3
    readme = (DOCS / "README.md").read_text()
    for column in ("relative_variance", "ratio"):
        table = summary_table(rows, column)
        assert table in readme, column
    steps = sorted({int(r["step"]) for r in rows if r["kind"] == "variance"})
    assert [int(line.split("|")[1]) for line in summary_table(rows).splitlines()[2:]] == steps


def test_evaluations_must_be_a_multiple_of_six(tmp_path, capsys):
    assert run_rejected("discrete-vae", tmp_path, "evaluations=4") == 2
    assert "`evaluations` must be a positive multiple of 6" in capsys.readouterr().err


def test_unknown_estimator_lists_valid_ones(tmp_path, capsys):
    assert run_rejected("discrete-vae", tmp_path, "estimators=rloo,pathwise") == 2
    err = capsys.readouterr().err
    assert (
        "unknown estimator(s) ['pathwise'] for discrete-vae; valid estimators: vimco, score_function," in err
    )
    assert "categorical_disarm" not in err  # only the registry's estimators for Bernoulli latents


def test_any_bernoulli_estimator_of_the_registry_and_its_aliases_are_accepted():
    from scg.studies.discrete_vae import DiscreteVAEConfig, DiscreteVAEStudy

    cfg = DiscreteVAEConfig(estimators=("arm", "indecater", "gumbel", "reinforce"), seeds=2)
    assert DiscreteVAEStudy().cells(cfg) == [{"seed": 0}, {"seed": 1}]


@pytest.mark.cuda
def test_cuda_smoke_run(tmp_path):  # pragma: no cover - no GPU on CI
    """Nothing assumes the CPU: the smoke size runs with tensors and generators on the GPU."""
    from scg.studies.discrete_vae import DiscreteVAEStudy

    assert_cuda_smoke_run(DiscreteVAEStudy(), tmp_path)
