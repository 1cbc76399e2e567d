"""``scg-study run discrete-vae``: the smoke run, the equal-cost rule, shared initialisation, errors."""

from __future__ import annotations

import pytest
import torch

from scg.models import DISCRETE_ESTIMATORS

from _study_helpers import assert_cuda_smoke_run, manifest, run_rejected, run_smoke


def test_smoke_run(tmp_path):
    rows = run_smoke("discrete-vae", tmp_path)
    assert (tmp_path / "discrete_vae.png").is_file() and (tmp_path / "manifest.json").is_file()
    assert manifest(tmp_path)["study"] == "discrete-vae"
    assert {r["estimator"] for r in rows} == set(DISCRETE_ESTIMATORS)
    for r in rows:  # equal cost: S × (evaluations of f per sample) = E for every estimator
        assert int(r["num_samples"]) * DISCRETE_ESTIMATORS[r["estimator"]] == int(r["evaluations"]) == 6
    var = [r for r in rows if r["kind"] == "variance"]
    assert len(var) == 2 * len(DISCRETE_ESTIMATORS)
    assert {r["engine"] for r in var} == {"vmap"}  # the model is torch.func-traceable
    for r in var:
        assert float(r["var_sum"]) > 0 and float(r["var_projection"]) > 0
        assert int(r["parameters"]) == 64 * 8 + 8  # linear encoder, 8 latents in the smoke size
    # every estimator starts from the same parameters: the step-0 gradient means agree in size
    elbo0 = [float(r["train_elbo"]) for r in rows if r["kind"] == "elbo" and r["step"] == "0"]
    assert max(elbo0) - min(elbo0) < 2.0  # one-sample ELBOs of 1000 images: SE ≈ 0.1 nats
    assert {r["unbiased"] for r in rows if r["estimator"] == "gumbel"} == {"false"}


def test_evaluations_must_be_a_multiple_of_six(tmp_path, capsys):
    assert run_rejected("discrete-vae", tmp_path, "evaluations=4") == 2
    assert "`evaluations` must be a positive multiple of 6" in capsys.readouterr().err


def test_unknown_estimator_lists_valid_ones(tmp_path, capsys):
    assert run_rejected("discrete-vae", tmp_path, "estimators=rloo,pathwise") == 2
    assert "valid estimators: reinforce, nvil, rloo" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_smoke_run(tmp_path):  # pragma: no cover - no GPU on CI
    """Nothing assumes the CPU: the smoke size runs with tensors and generators on the GPU."""
    from scg.studies.discrete_vae import DiscreteVAEStudy

    assert_cuda_smoke_run(DiscreteVAEStudy(), tmp_path)
