"""``scg-study run doubly-stochastic``: the law-of-total-variance split, exact parts, and the smoke run.

Statistical checks run with fixed seeds (deterministic); their thresholds are z-scores
chosen for a false-failure rate of 1e-3 (Bonferroni over the checked rows) had the
seed been random.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from _study_helpers import assert_cuda_smoke_run, manifest, run_rejected, run_smoke

from scg.models.data import breast_cancer
from scg.studies.doubly_stochastic import _per_datum_moments, decomposition, posterior


def test_decomposition_matches_enumeration_of_batches_and_noise():
    """Exact Var of (N/B)·(1/S)Σ_s Σ_{i∈B} h_i(ε_s) by enumerating all batches and all S-tuples of ε."""
    g = torch.Generator().manual_seed(0)
    N, M, P = 5, 3, 2  # data, equiprobable noise values, coordinates
    h = torch.randn(N, M, P, generator=g, dtype=torch.float64)  # h_i(ε_m)
    per_mean, per_var = h.mean(1), h.var(1, correction=0)
    sums = h.sum(0)  # Σ_i h_i(ε_m), [M, P]
    parts = {
        "N": N,
        "S2": per_mean.var(0, correction=1),
        "tr": per_var.sum(0),
        "T": sums.var(0, correction=0),
        "T_se": torch.zeros(P, dtype=torch.float64),
    }
    for B, S in [(1, 1), (2, 1), (2, 2), (3, 2), (5, 2)]:
        values = []
        for batch in itertools.combinations(range(N), B):
            for eps in itertools.product(range(M), repeat=S):
                est = sum(h[list(batch), e].sum(0) for e in eps) * N / (B * S)
                values.append(est)
        V = torch.stack(values).var(0, correction=0)
        sub, mc, _ = decomposition(parts, B, S)
        torch.testing.assert_close(sub + mc, V, rtol=1e-12, atol=1e-12)
        if B == N:
            assert float(sub.abs().max()) < 1e-12


@pytest.mark.parametrize("point", ["prior", "fitted"])
def test_pathwise_and_score_function_exact_means_agree(point):
    """The per-datum expected gradients from two different formulas (Stein's lemma) agree."""
    x, y, _, _ = breast_cancer(dtype=torch.float64)
    mu, s = posterior(point, 20)
    gp, cp = _per_datum_moments("pathwise", x, y, mu, s, 2001)
    gs, cs = _per_datum_moments("score_function", x, y, mu, s, 2001)
    torch.testing.assert_close(gp, gs, rtol=1e-7, atol=1e-8)
    assert bool((cp >= -1e-12).all()) and bool((cs > 0).all())
    assert float(cs.sum()) > float(cp.sum())  # the score function's per-datum variance is larger


def test_smoke_run(tmp_path):
    rows = run_smoke("doubly-stochastic", tmp_path)
    assert (tmp_path / "manifest.json").is_file() and (tmp_path / "doubly_stochastic.png").is_file()
    assert manifest(tmp_path)["study"] == "doubly-stochastic"
    assert {r["estimator"] for r in rows} == {"pathwise", "score_function"}
    total = [r for r in rows if r["group"] == "all"]
    for r in rows:
        assert math.isclose(
            float(r["var_total_exact"]),
            float(r["var_subsampling"]) + float(r["var_mc"]),
            rel_tol=1e-12,
        )
        if int(r["B"]) == 569:
            assert float(r["var_subsampling"]) == 0.0
    # Sampled total vs subsampling + MC at B = N (MC noise only): |z| < Φ⁻¹(1 − 1e-3 / (2·8)) = 3.7 over
    # the 8 rows. At small B the sampled variance is dominated by the few data points with large
    # per-datum gradients (heavy tails), so 200 estimates do not pin it down; the default run checks
    # those rows with 2000 estimates (docs/studies/doubly-stochastic/README.md).
    full = [r for r in total if int(r["B"]) == 569]
    assert len(full) == 8
    assert max(abs(float(r["z"])) for r in full) < 3.7
    for r in total:  # and the sampled total is never wildly off, even with heavy tails
        assert 0.3 < float(r["var_total_sampled"]) / float(r["var_total_exact"]) < 3.0


def test_bad_config_lists_valid_names(tmp_path, capsys):
    assert run_rejected("doubly-stochastic", tmp_path, "estimators=bogus") == 2
    assert "valid estimators: pathwise, score_function" in capsys.readouterr().err
    assert run_rejected("doubly-stochastic", tmp_path / "b", "points=middle") == 2
    assert "valid points: prior, fitted" in capsys.readouterr().err


@pytest.mark.cuda
def test_cuda_smoke_run(tmp_path):  # pragma: no cover - no GPU on CI
    """Nothing assumes the CPU: the smoke size runs with tensors and generators on the GPU."""
    from scg.studies.doubly_stochastic import DoublyStochastic

    assert_cuda_smoke_run(DoublyStochastic(), tmp_path)
