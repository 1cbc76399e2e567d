"""Control variates: state semantics, oracles and variance reduction (deterministic)."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from torch import nn
from torch.distributions import Bernoulli, Independent, Normal

import scg
from scg import baselines as B

# This module works in float64; the default dtype is restored after each test.
pytestmark = pytest.mark.usefixtures("float64")  # tests/conftest.py


def test_moving_average_is_bias_corrected_and_uses_only_earlier_draws():
    ma = B.MovingAverage(0.5)
    est = scg.ScoreFunction(ma)
    logits = torch.zeros(1, requires_grad=True)
    f = lambda b: b + 2.0
    assert float(ma.baseline()) == 0.0  # first call subtracts nothing
    d1 = est.draw(Bernoulli(logits=logits), 4)
    est.surrogate(f, Bernoulli(logits=logits), d1)
    first_mean = f(d1["z"]).mean()
    torch.testing.assert_close(ma.baseline(), first_mean)  # bias-corrected: exactly the first mean
    d2 = est.draw(Bernoulli(logits=logits), 4)
    est.surrogate(f, Bernoulli(logits=logits), d2)
    expected = (0.25 * first_mean + 0.5 * f(d2["z"]).mean()) / 0.75
    torch.testing.assert_close(ma.baseline(), expected)


def test_state_frozen_in_eval_mode_and_under_vmap():
    ma = B.MovingAverage(0.5)
    est = scg.ScoreFunction(ma)
    logits = torch.zeros(2)
    est.eval()
    scg.expectation(lambda b: b, Bernoulli(logits=logits), est, num_samples=3)
    assert ma.steps == 0 and float(ma.value) == 0.0
    est.train()

    def loss(lg, _):
        return scg.expectation(lambda b: b, Bernoulli(logits=lg), est, num_samples=3).sum()

    torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0), randomness="different")(logits, torch.zeros(4))
    assert ma.steps == 0 and float(ma.value) == 0.0
    scg.expectation(lambda b: b, Bernoulli(logits=logits), est, num_samples=3)
    assert ma.steps == 1 and float(ma.value) > 0.0


def test_learned_baseline_regression_gradient():
    """The zero-valued term's gradient w.r.t. ψ is ∇ψ mean_s (A_s − b_ψ(x))²."""
    net = nn.Linear(2, 1)
    est = scg.ScoreFunction(B.Learned(net))
    x = torch.tensor([[0.5, -1.0], [1.5, 0.2]])
    logits = torch.zeros(2, requires_grad=True)
    dist = Bernoulli(logits=logits)
    f = lambda b: 3 * b + 1
    draws = est.draw(dist, 5)
    est.surrogate(f, dist, draws, context=x).sum().backward()
    grad_w = net.weight.grad.clone()
    net.zero_grad()
    ((f(draws["z"]) - net(x).squeeze(-1)) ** 2).mean(0).sum().backward()
    torch.testing.assert_close(grad_w, net.weight.grad)


def test_normalize_divides_by_running_std():
    norm = B.Normalize(0.0)
    est = scg.ScoreFunction(norm)
    logits = torch.zeros(1, requires_grad=True)
    f = lambda b: 10 * b
    est.surrogate(f, Bernoulli(logits=logits), est.draw(Bernoulli(logits=logits), 8))
    var = float(norm.variance)
    draws = est.draw(Bernoulli(logits=logits), 8)
    est.surrogate(f, Bernoulli(logits=logits), draws).sum().backward()
    z = draws["z"]
    expected = (f(z) * (z - 0.5)).mean() / max(1.0, math.sqrt(var))
    torch.testing.assert_close(logits.grad, expected.reshape(1))
    assert est.unbiased is False


def test_delta_is_exact_for_quadratic_costs():
    """For quadratic f the Taylor control variate equals f: zero-variance gradient."""
    loc = torch.tensor([0.5, -1.0], requires_grad=True)
    scale = torch.tensor([1.2, 0.7], requires_grad=True)
    f = lambda z: (z**2).sum(-1) + z[..., 0] * 3.0
    est = scg.ScoreFunction(B.Delta())
    grads = []
    for _ in range(3):
        loc.grad = scale.grad = None
        scg.expectation(f, Independent(Normal(loc, scale), 1), est, num_samples=2).backward()
        grads.append(torch.cat([loc.grad, scale.grad]))
    exact = torch.cat([2 * loc.detach() + torch.tensor([3.0, 0.0]), 2 * scale.detach()])
    for g in grads:
        torch.testing.assert_close(g, exact, rtol=1e-12, atol=1e-12)


def test_optimal_moving_average_weights_by_squared_score_norm():
    """Oracle: b = EMA(mean f·‖s‖²)/EMA(mean ‖s‖²) with s the (μ, σ)-score of the Normal."""
    ma = B.MovingAverage(0.5, optimal=True)
    est = scg.ScoreFunction(ma)
    loc, scale = torch.tensor(1.0), torch.tensor(1.5)
    f = lambda x: x**2
    num = den = 0.0
    for _ in range(3):
        draws = est.draw(Normal(loc, scale), 50)
        est.surrogate(f, Normal(loc, scale), draws)
        e = draws["z"] - loc
        w = (e / scale**2) ** 2 + ((e**2 - scale**2) / scale**3) ** 2
        num = 0.5 * num + 0.5 * float((f(draws["z"]) * w).mean())
        den = 0.5 * den + 0.5 * float(w.mean())
    assert abs(float(ma.baseline()) - num / den) < 1e-12


def test_leave_one_out_reduces_variance_exactly_bernoulli_toy():
    """Exact enumeration over the S=2 product space: RLOO variance 2.5e-5 at t=0.49 (docs/references.md)."""
    t = 0.49
    logits = torch.zeros(1, requires_grad=True)
    est = scg.ScoreFunction(B.LeaveOneOut())
    f = lambda b: ((b - t) ** 2).squeeze(-1)
    m1 = m2 = 0.0
    for z in [(0.0, 0.0), (0.0, 1.0), (1.0, 0.0), (1.0, 1.0)]:
        logits.grad = None
        draws = {"z": torch.tensor(z).reshape(2, 1)}
        est.surrogate(f, Independent(Bernoulli(logits=logits), 1), draws).backward()
        m1 += 0.25 * float(logits.grad)
        m2 += 0.25 * float(logits.grad) ** 2
    assert abs(m1 - 0.25 * (1 - 2 * t)) < 1e-15
    assert abs((m2 - m1**2) - 2.5e-5) / 2.5e-5 < 1e-9


# --- state follows the problem's dtype and device; the counter is a tensor --------------------


@contextlib.contextmanager
def _float32_default():
    """Build modules as a float32 program would (this module's default dtype is float64)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _stateful():
    return {
        "MovingAverage": lambda: B.MovingAverage(0.9),
        "MovingAverage(optimal)": lambda: B.MovingAverage(0.9, optimal=True),
        "Normalize": lambda: B.Normalize(0.8),
        "Delta(optimal)": lambda: B.Delta("optimal"),
    }


def _step(cv, loc, num_samples=4):
    f = lambda z: (z**2).sum(-1)
    dist = Independent(Normal(loc, torch.ones_like(loc)), 1)
    return scg.expectation(f, dist, scg.ScoreFunction(cv), num_samples=num_samples)


@pytest.mark.parametrize("name", list(_stateful()))
def test_buffers_adopt_the_signals_dtype_and_round_trip(name):
    with _float32_default():
        cv = _stateful()[name]()
    floating = [k for k, v in cv.named_buffers() if v.is_floating_point()]
    assert floating and all(getattr(cv, k).dtype == torch.float32 for k in floating)
    loc = torch.tensor([0.3, -0.2], dtype=torch.float64, requires_grad=True)
    _step(cv, loc)
    _step(cv, loc)
    assert all(getattr(cv, k).dtype == torch.float64 for k in floating)
    state = cv.state_dict()
    assert all(state[k].dtype == torch.float64 for k in floating)
    if "steps" in state:
        assert state["steps"].dtype == torch.long and int(state["steps"]) == 2
    with _float32_default():
        fresh = _stateful()[name]()
    fresh.load_state_dict(state)
    for k, v in state.items():
        assert getattr(fresh, k).dtype == v.dtype and torch.equal(getattr(fresh, k), v), k


def test_huge_float64_costs_give_finite_surrogates_and_gradients():
    """Costs near 1e300: float32 state (max 3.4e38) would turn the surrogate into NaN."""
    f = lambda b: 1e300 * (1.0 + b)
    for make in (
        lambda: B.MovingAverage(0.9),
        lambda: B.Normalize(0.8),
        lambda: B.chain(B.MovingAverage(0.9), B.Normalize(0.8)),
    ):
        with _float32_default():
            est = scg.ScoreFunction(make())
        logits = torch.zeros(3, dtype=torch.float64, requires_grad=True)
        for _ in range(5):
            logits.grad = None
            out = scg.expectation(f, Bernoulli(logits=logits), est, num_samples=4)
            out.sum().backward()
            assert torch.isfinite(out).all() and torch.isfinite(logits.grad).all()
        assert all(torch.isfinite(b).all() for b in est.buffers())


def test_normalize_saturates_a_variance_beyond_the_dtypes_range():
    norm = B.Normalize(0.5)
    big = torch.tensor([[-1e300], [1e300]], dtype=torch.float64)  # variance 1e600
    for _ in range(3):
        out, _ = norm(big, None)
        assert torch.isfinite(out).all()
    assert float(norm.variance) == torch.finfo(torch.float64).max


def test_moving_average_matches_bias_corrected_oracle_over_five_steps():
    """Oracle: c_t = β c_{t−1} + (1 − β) Ā_{t−1}, b_t = c_t / (1 − β^t); step t subtracts b_{t−1}."""
    ma = B.MovingAverage(0.9)
    signals = [torch.tensor([[0.3, -1.2], [2.5, 0.7], [1.1, -0.4]]) * (k + 1) ** 1.5 + k for k in range(5)]
    c, b_prev = 0.0, 0.0
    for t, a in enumerate(signals, start=1):
        out, extra = ma(a, None)
        assert extra is None
        torch.testing.assert_close(out, a - b_prev, rtol=1e-12, atol=1e-12)
        c = 0.9 * c + 0.1 * float(a.mean())
        b_prev = c / (1.0 - 0.9**t)
        assert abs(float(ma.baseline()) - b_prev) <= 1e-12 * abs(b_prev)
        assert ma.steps.dtype == torch.long and int(ma.steps) == t


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_first_moving_average_update_is_exactly_the_first_mean(dtype):
    ma = B.MovingAverage(0.9)
    a = torch.tensor([[0.3, -1.2], [2.5, 0.7]], dtype=dtype)
    ma(a, None)
    assert ma.value.dtype == dtype and torch.equal(ma.value, a.mean())  # b_1 = Ā_0: the weight is exactly 1


def test_buffers_follow_the_signals_device():
    """The meta device stands in for an accelerator: state moves to the signal's device at its update."""
    for cv in (B.MovingAverage(0.9), B.Normalize(), B.Constant(1.0)):
        out, _ = cv(torch.ones(3, 2, device="meta"), None)
        assert out.device.type == "meta"
        assert all(b.device.type == "meta" for b in cv.buffers()), dict(cv.named_buffers())


def test_step_counter_is_a_tensor_buffer_updated_in_place():
    ma = B.MovingAverage(0.9)
    counter = ma.steps
    ma(torch.ones(2, 1), None)
    assert ma.steps is counter and int(counter) == 1  # same tensor, no Python int per step
    ma.steps.fill_(5)
    assert int(ma.steps) == 5
    ma.eval()
    ma(torch.ones(2, 1), None)
    assert int(ma.steps) == 5


@pytest.mark.filterwarnings("ignore:Dynamo does not know how to trace")
def test_compiled_moving_average_and_normalize_do_not_recompile_per_step():
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    for cv in (B.MovingAverage(0.9), B.Normalize(0.8)):
        counter = CompileCounter()
        step = torch.compile(lambda s, cv=cv: cv(s, None)[0], backend=counter)
        counts = []
        for k in range(6):
            step(torch.full((4, 2), float(k)))
            counts.append(counter.frame_count)
        assert counts[2] == counts[-1], counts  # after warm-up (dtype adoption) nothing recompiles
        assert int(cv.steps) == 6


def test_constant_keeps_float64_and_rejects_non_finite_values():
    b = B.Constant(1e300)
    assert b.value.dtype == torch.float64
    signal = torch.tensor([[2e300]], dtype=torch.float64)
    assert torch.equal(b(signal, None)[0], signal - 1e300)
    with _float32_default():
        assert B.Constant(0.1).value.dtype == torch.float64
    assert B.Constant(torch.tensor([1, 2])).value.dtype == torch.float64
    for bad in (float("nan"), float("inf"), torch.tensor([0.0, float("-inf")])):
        with pytest.raises(ValueError, match="`value` must be finite; got"):
            B.Constant(bad)
    with pytest.raises(TypeError, match="`value` must be a float or a tensor; got str"):
        B.Constant("1.0")
