"""Tests of scg.diagnostics: gradient_samples and summary.

Deterministic first (structure and flattening order with a deterministic fn;
summary against numpy), then sampling tests with a fixed seed. Each sampling test
states its threshold: a two-sided z with Bonferroni correction over the P
parameters checked, for a false-failure rate of 1e-3 per test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import Tensor, nn
from torch.distributions import Independent, Normal
from torch.func import functional_call

import scg
from scg.diagnostics import Summary, gradient_samples, summary


def z_threshold(num_checks: int, rate: float = 1e-3) -> float:
    """Two-sided Bonferroni threshold: P(any |Z| > z) <= rate over ``num_checks`` normals."""
    return float(stats.norm.isf(rate / (2 * num_checks)))


# ----------------------------------------------------------------------------- deterministic


def test_deterministic_fn_gives_exact_gradient_in_every_row_dict() -> None:
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    b = torch.tensor([0.5, -1.0, 2.0])

    def fn(p: dict[str, Tensor]) -> Tensor:
        return (p["a"] ** 2).sum() + 3.0 * p["b"].sum()

    g = gradient_samples(fn, {"a": a, "b": b}, 5, chunk_size=2)
    want = torch.cat([2 * a.reshape(-1), torch.full((3,), 3.0)])
    assert g.shape == (5, 7)
    assert torch.equal(g, want.expand(5, 7))
    assert not g.requires_grad


@pytest.mark.parametrize("container", [list, tuple])
def test_sequence_params_keep_structure_and_order(container: type) -> None:
    seen = []

    def fn(p) -> Tensor:
        seen.append(type(p))
        return (p[0] * torch.tensor([1.0, 2.0])).sum() + 5.0 * p[1]

    g = gradient_samples(fn, container([torch.zeros(2), torch.tensor(1.0)]), 3)
    assert torch.equal(g, torch.tensor([[1.0, 2.0, 5.0]]).expand(3, 3))
    assert seen and all(t is container for t in seen)


def test_params_requiring_grad_are_not_touched() -> None:
    w = torch.ones(3, requires_grad=True)
    g = gradient_samples(lambda p: (p["w"] * 2).sum(), {"w": w}, 2)
    assert torch.equal(g, torch.full((2, 3), 2.0)) and w.grad is None


# ----------------------------------------------------------------------------- randomness


def test_rows_are_independent_draws_across_chunks() -> None:
    # fn = <p, ε> with ε ~ N(0, I): each row *is* one ε, so rows must be iid N(0, I).
    def fn(p: dict[str, Tensor]) -> Tensor:
        return (p["w"] * torch.randn(4)).sum()

    g = gradient_samples(fn, {"w": torch.zeros(4)}, 3000, chunk_size=7)
    assert g.shape == (3000, 4)
    assert torch.unique(g, dim=0).shape[0] == 3000  # no row repeats, within or across chunks
    # Mean 0, variance 1, lag-1 correlation between consecutive rows 0; 12 checks,
    # each approximately normal with the stated SE; Bonferroni z for rate 1e-3.
    n = g.shape[0]
    z = z_threshold(12)
    mean, var = g.mean(0), g.var(0)
    lag = (g[1:] * g[:-1]).mean(0)
    assert (mean.abs() < z / math.sqrt(n)).all(), mean
    assert ((var - 1).abs() < z * math.sqrt(2 / (n - 1))).all(), var
    assert (lag.abs() < z / math.sqrt(n - 1)).all(), lag


def test_same_seed_same_chunk_size_reproduces() -> None:
    def fn(p: dict[str, Tensor]) -> Tensor:
        return (p["w"] * torch.randn(3)).sum()

    params = {"w": torch.zeros(3)}
    torch.manual_seed(5)
    a = gradient_samples(fn, params, 50, chunk_size=7)
    torch.manual_seed(5)
    b = gradient_samples(fn, params, 50, chunk_size=7)
    c = gradient_samples(fn, params, 50, chunk_size=7)
    assert torch.equal(a, b) and not torch.equal(b, c)


def test_out_is_filled_and_returned() -> None:
    """``out=`` is overwritten in place with exactly what a fresh call returns (same seed)."""

    def fn(p: dict[str, Tensor]) -> Tensor:
        return (p["w"] * torch.randn(3)).sum() + (p["b"] ** 2 * torch.randn(())).sum()

    params = {"w": torch.zeros(3), "b": torch.ones(2, 1)}
    torch.manual_seed(2)
    fresh = gradient_samples(fn, params, 20, chunk_size=6)
    buffer = torch.full((20, 5), float("nan"))
    torch.manual_seed(2)
    got = gradient_samples(fn, params, 20, chunk_size=6, out=buffer)
    assert got is buffer and torch.equal(buffer, fresh)


def _quadratic(estimator: scg.Estimator, num_samples: int, k: float = 0.5):
    """fn(p) = surrogate of E_{N(μ, σ²)}[Σ_d (z_d − k)²]; exact ∇μ = 2(μ − k), ∇σ = 2σ."""

    def fn(p: dict[str, Tensor]) -> Tensor:
        q = Independent(Normal(p["mu"], p["sigma"]), 1)
        return scg.expectation(lambda z: ((z - k) ** 2).sum(-1), q, estimator, num_samples=num_samples)

    params = {"mu": torch.tensor([1.0, -0.5]), "sigma": torch.tensor([1.0, 0.6])}
    exact = torch.cat([2 * (params["mu"] - k), 2 * params["sigma"]])
    return fn, params, exact


@pytest.mark.parametrize(
    "estimator, num_samples, chunk_size",
    [
        pytest.param(scg.Pathwise(), 1, None, id="Pathwise"),
        pytest.param(scg.ScoreFunction(), 1, 333, id="ScoreFunction"),
        pytest.param(
            scg.ScoreFunction(baseline=scg.baselines.LeaveOneOut()), 4, 1000, id="ScoreFunction-LOO"
        ),
    ],
)
def test_mean_matches_exact_gradient(estimator: scg.Estimator, num_samples: int, chunk_size) -> None:
    fn, params, exact = _quadratic(estimator, num_samples)
    g = gradient_samples(fn, params, 4000, chunk_size=chunk_size)
    assert g.shape == (4000, 4)
    s = summary(g, exact)
    # 4 parameters, two-sided, failure rate 1e-3 (Bonferroni): |z| < 3.48.
    assert (s.z.abs() < z_threshold(4)).all(), s.table()
    assert (s.variance > 0).all()


def test_pathwise_variance_matches_exact_anchor() -> None:
    # docs/references.md anchor, N(1, 1), f = x²: single-sample pathwise variance 4 (μ) and 12 (σ).
    # g_μ = 2(1 + ε), g_σ = 2(1 + ε)ε. SE of the sample variance from the 4th central
    # moment (Gauss–Hermite, exact for polynomials); 2 checks, Bonferroni, rate 1e-3.
    def fn(p: dict[str, Tensor]) -> Tensor:
        return scg.expectation(lambda z: z**2, Normal(p["mu"], p["sigma"]), scg.Pathwise())

    g = gradient_samples(fn, {"mu": torch.tensor(1.0), "sigma": torch.tensor(1.0)}, 20000)
    var = g.double().var(0)
    x, w = np.polynomial.hermite_e.hermegauss(20)
    w = w / w.sum()
    for j, (gx, want) in enumerate([(2 * (1 + x), 4.0), (2 * (1 + x) * x, 12.0)]):
        m4 = float((w * (gx - (w * gx).sum()) ** 4).sum())
        se = math.sqrt((m4 - want**2) / g.shape[0])
        assert abs(float(var[j]) - want) < z_threshold(2) * se, (j, float(var[j]))


def test_module_with_functional_call() -> None:
    # The docstring's pattern: an nn.Module encoder called functionally inside fn.
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 4))
    x = torch.randn(3)
    params = {k: v.detach() for k, v in net.named_parameters()}

    def dist(p: dict[str, Tensor]) -> Independent:
        loc, log_scale = functional_call(net, p, (x,)).chunk(2, -1)
        return Independent(Normal(loc, log_scale.exp()), 1)

    def fn(p: dict[str, Tensor]) -> Tensor:
        return scg.expectation(lambda z: (z**2).sum(-1), dist(p), scg.Pathwise(), num_samples=2)

    # Exact: E‖z‖² = ‖loc‖² + ‖scale‖², differentiated by autograd.
    p = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    q = dist(p).base_dist
    exact = torch.cat(
        [t.reshape(-1) for t in torch.autograd.grad((q.loc**2 + q.scale**2).sum(), list(p.values()))]
    )
    g = gradient_samples(fn, params, 3000)
    P = sum(v.numel() for v in params.values())
    assert g.shape == (3000, P) == (3000, 68)
    s = summary(g, exact)
    # P = 68 parameters, Bonferroni two-sided at 1e-3: |z| < 4.13; rows where the
    # estimator is deterministic (zero variance) must equal the exact value.
    z = s.z[s.std_error > 0]
    assert (z.abs() < z_threshold(P)).all(), s.table()
    torch.testing.assert_close(s.mean[s.std_error == 0], exact[s.std_error == 0])


# ----------------------------------------------------------------------------- errors


def _fn(p) -> Tensor:
    return p["w"].sum()


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"num": 0}, ValueError, r"`num` must be >= 1; got 0"),
        ({"num": 2.5}, TypeError, r"`num` must be an int"),
        ({"chunk_size": 0}, ValueError, r"`chunk_size` must be >= 1; got 0"),
        ({"params": {}}, ValueError, r"`params` must not be empty; got an empty mapping"),
        ({"params": []}, ValueError, r"`params` must not be empty; got an empty sequence"),
        ({"params": {"w": 1.0}}, TypeError, r"`params` values must be tensors; got float for 'w'"),
        (
            {"params": [torch.ones(1), 2]},
            TypeError,
            r"`params` elements must be tensors; got int at index 1",
        ),
        (
            {"params": {"w": torch.ones(2, dtype=torch.long)}},
            TypeError,
            r"floating-point .* torch.int64 for 'w'",
        ),
        (
            {"params": [torch.ones(2, dtype=torch.long)]},
            TypeError,
            r"floating-point .* torch.int64 for index 0",
        ),
        ({"params": torch.ones(2)}, TypeError, r"`params` must be a dict .* got a single Tensor"),
        (
            {"params": 3},
            TypeError,
            r"`params` must be a dict name -> tensor or a sequence of tensors; got int",
        ),
        ({"fn": 3}, TypeError, r"`fn` must be callable; got int"),
        (
            {"fn": lambda p: p["w"] * 2},
            ValueError,
            r"`fn` must return a scalar \(shape \[\]\); got shape \[2\]",
        ),
        ({"fn": lambda p: 1.0}, TypeError, r"`fn` must return a torch.Tensor; got float"),
        ({"out": [0.0]}, TypeError, r"`out` must be a torch.Tensor or None; got list"),
        (
            {"out": torch.empty(3, 3)},
            ValueError,
            r"`out` must have shape \[num, P\] = \[3, 2\]; got \[3, 3\]",
        ),
        (
            {"out": torch.empty(3, 2, dtype=torch.float64)},
            TypeError,
            r"`out` must have the dtype of the gradients, torch.float32; got torch.float64",
        ),
        ({"out": torch.empty(2, 3).t()}, ValueError, r"`out` must be contiguous"),
        (
            {"out": torch.empty(3, 2, requires_grad=True)},
            ValueError,
            r"`out` must not require grad",
        ),
    ],
)
def test_gradient_samples_errors(kwargs: dict, exc: type, match: str) -> None:
    args = {"fn": _fn, "params": {"w": torch.ones(2)}, "num": 3} | kwargs
    chunk = args.pop("chunk_size", None)
    out = args.pop("out", None)
    with pytest.raises(exc, match=match):
        gradient_samples(args["fn"], args["params"], args["num"], chunk_size=chunk, out=out)


# ----------------------------------------------------------------------------- summary

ARRAY = np.array(
    [
        [1.0, -2.0, 0.5, 3.0],
        [2.0, -1.0, 0.5, 3.0],
        [0.5, -2.5, 0.5, 3.0],
        [3.0, -0.5, 0.5, 3.0],
        [1.5, -1.0, 0.5, 3.0],
    ]
)


def test_summary_against_numpy() -> None:
    s = summary(torch.tensor(ARRAY))
    assert isinstance(s, Summary) and s.num == 5 and s.z is None
    mean, var = ARRAY.mean(0), ARRAY.var(0, ddof=1)
    np.testing.assert_allclose(s.mean.numpy(), mean, rtol=1e-12)
    np.testing.assert_allclose(s.variance.numpy(), var, rtol=1e-12)
    np.testing.assert_allclose(s.std_error[:2].numpy(), np.sqrt(var / 5)[:2], rtol=1e-12)
    np.testing.assert_allclose(s.snr[:2].numpy(), np.abs(mean[:2]) / np.sqrt(var[:2]), rtol=1e-12)
    assert s.variance[2] == 0 and s.std_error[2] == 0 and math.isinf(float(s.snr[3]))


def test_summary_z_score() -> None:
    ref = torch.tensor([1.0, -1.0, 0.5, 2.0], dtype=torch.float64)
    s = summary(torch.tensor(ARRAY), ref)
    mean, se = ARRAY.mean(0), np.sqrt(ARRAY.var(0, ddof=1) / 5)
    np.testing.assert_allclose(s.z[:2].numpy(), (mean[:2] - ref.numpy()[:2]) / se[:2], rtol=1e-12)
    assert float(s.z[2]) == 0.0  # zero error, zero SE
    assert float(s.z[3]) == math.inf  # nonzero error, zero SE


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_summary_exact_estimate_has_z_zero(dtype: torch.dtype) -> None:
    # N equal estimates; the reference is the same number computed another way (off by rounding).
    value = torch.tensor([0.1, 1.0 / 3.0, -2.5e-3, 0.0], dtype=torch.float64)
    reference = torch.tensor([0.3 - 0.2, 1.0 - 2.0 / 3.0, -2.5e-3, 0.0], dtype=torch.float64)
    assert not torch.equal(value[:2], reference[:2])  # a rounding difference
    samples = value.to(dtype).expand(20000, 4)
    s = summary(samples, reference.to(dtype))
    assert torch.equal(s.mean, value.to(dtype))  # the common value, not a sum's rounding of it
    assert torch.equal(s.variance, torch.zeros(4, dtype=dtype)) and torch.equal(s.std_error, s.variance)
    assert torch.equal(s.z, torch.zeros(4, dtype=dtype))


def test_summary_zero_variance_wrong_estimate_has_z_inf() -> None:
    # off by 9 machine epsilons relative (just past the 8 ε tolerance), or by much more
    eps = torch.finfo(torch.float64).eps
    value = torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64)
    reference = torch.tensor([1.0 + 9 * eps, 1e-300, -1.0 + 0.25], dtype=torch.float64)
    s = summary(value.expand(10, 3), reference)
    assert s.z.tolist() == [-math.inf, -math.inf, -math.inf]
    s = summary(-value.expand(10, 3), -reference)
    assert s.z.tolist() == [math.inf, math.inf, math.inf]
    # within 8 ε: exact
    s = summary(value[:1].expand(10, 1), torch.tensor([1.0 + 8 * eps], dtype=torch.float64))
    assert s.z.tolist() == [0.0]


def test_summary_rounding_tolerance_only_applies_at_zero_variance() -> None:
    # with a nonzero SE, a tiny error gives a tiny but nonzero z: the ratio, not a rounded 0
    samples = torch.tensor([[1.0], [1.0 + 2**-40]], dtype=torch.float64)
    ref = samples.mean(0) + 2 * torch.finfo(torch.float64).eps  # two ulps of 1 above the mean
    s = summary(samples, ref)
    expected = float(((s.mean - ref) / s.std_error)[0])
    assert expected != 0.0 and float(s.z[0]) == expected


def test_summary_table() -> None:
    s = summary(torch.tensor(ARRAY), torch.zeros(4, dtype=torch.float64))
    text = s.table(names=["a", "b", "c", "d"])
    assert "Summary of 5 estimates, 4 parameters" in text and "snr" in text and " z" in text
    assert len(text.splitlines()) == 6
    short = s.table(max_rows=2)
    assert short.splitlines()[-1] == "... (2 more)"
    assert str(s) == s.table()


@pytest.mark.parametrize(
    "samples, reference, exc, match",
    [
        (
            np.ones((3, 2)),
            None,
            TypeError,
            r"`samples` must be a torch.Tensor \[N, P\]; got ndarray",
        ),
        (torch.ones(3), None, ValueError, r"`samples` must have shape \[N, P\]; got shape \[3\]"),
        (torch.ones(1, 2), None, ValueError, r"`samples` must hold N >= 2 estimates .*; got 1"),
        (
            torch.ones(3, 2),
            torch.ones(3),
            ValueError,
            r"`reference` must have P = 2 elements; got shape \[3\]",
        ),
        (
            torch.ones(3, 2),
            [1.0, 1.0],
            TypeError,
            r"`reference` must be a torch.Tensor \[P\]; got list",
        ),
    ],
)
def test_summary_errors(samples, reference, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        summary(samples, reference)


def test_table_errors() -> None:
    s = summary(torch.tensor(ARRAY))
    with pytest.raises(ValueError, match=r"`names` must have one entry per parameter \(4\); got 2"):
        s.table(names=["a", "b"])
    with pytest.raises(ValueError, match=r"`max_rows` must be >= 1; got 0"):
        s.table(max_rows=0)


def test_result_does_not_require_grad_when_fn_closes_over_tensors_that_do():
    w = torch.randn(3, requires_grad=True)  # e.g. a baseline network's parameter, not in params
    g = scg.diagnostics.gradient_samples(lambda p: (p[0] * w).sum() ** 2, [torch.ones(3)], 4)
    assert not g.requires_grad and g.grad_fn is None
    expected = 2 * (torch.ones(3) * w).sum() * w
    torch.testing.assert_close(g, expected.detach().expand(4, 3))


def test_non_finite_estimates_are_refused_naming_the_rows():
    theta = torch.tensor([0.5, -0.3])

    def fn(p):
        z = torch.randn(())
        return (p[0] * z).sum() + torch.log(torch.relu(z)) * p[1].sum()  # log(0) for z <= 0: -inf gradients

    torch.manual_seed(0)
    with pytest.raises(
        ValueError, match=r"`fn` must have finite gradients; \d+ of 40 estimates are not \(rows \["
    ):
        scg.diagnostics.gradient_samples(fn, [theta[:1], theta[1:]], 40)
