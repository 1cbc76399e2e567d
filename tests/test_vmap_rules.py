"""``scg._vmap_rules``: inside ``gradient_samples``, BCE-with-logits runs as softplus(l) − t·l, equal values."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import scg
from scg._vmap_rules import VmapRules, _bce


def _data(shape=(6, 5), seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g, dtype=dtype) * 4
    target = torch.rand(shape, generator=g, dtype=dtype)  # soft targets too
    return logits, target


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_rewritten_bce_equals_torch_under_vmap_values_and_gradients(reduction):
    logits, target = _data()

    def loss(ll, tt):
        return F.binary_cross_entropy_with_logits(ll, tt, reduction=reduction)

    ref = torch.stack([loss(ll, tt) for ll, tt in zip(logits, target)])
    with VmapRules():
        ours = torch.func.vmap(loss)(logits, target)
        grads = torch.func.vmap(torch.func.grad(lambda ll, tt: loss(ll, tt).sum()))(logits, target)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    ref_grads = torch.stack([torch.func.grad(lambda ll: loss(ll, tt).sum())(ll) for ll, tt in zip(logits, target)])
    torch.testing.assert_close(grads, ref_grads, rtol=1e-12, atol=1e-12)


def test_calls_the_rule_does_not_cover_run_unchanged():
    logits, target = _data()
    w = torch.rand(5, dtype=torch.float64)
    assert _bce((logits, target), {"weight": w}) is None
    assert _bce((logits, target), {"pos_weight": w}) is None
    assert _bce((logits, target, w), {}) is None
    assert _bce((logits, target[0]), {}) is None  # broadcast target: torch's own shape rules and errors
    assert _bce((logits, target.float()), {}) is None
    assert _bce((logits, target), {"reduction": "bogus"}) is None
    assert _bce((logits, target), {"reduction": True}) is None
    assert _bce((logits, target), {"reduction": 2}) is not None  # torch.binary_cross_entropy_with_logits' enum
    assert _bce((logits, target), {"size_average": False}) is None
    assert _bce((logits, target, None, None, None, "sum"), {}) is None
    assert _bce((logits, target), {"reduction": "sum"}) is not None
    with VmapRules():  # covered or not, the values are torch's
        out = torch.func.vmap(lambda ll, tt: F.binary_cross_entropy_with_logits(ll, tt, weight=w))(logits, target)
        with pytest.raises(ValueError, match="reduction|valid"):
            F.binary_cross_entropy_with_logits(logits, target, reduction="bogus")
    ref = torch.stack([F.binary_cross_entropy_with_logits(ll, tt, weight=w) for ll, tt in zip(logits, target)])
    torch.testing.assert_close(out, ref)


def test_gradient_samples_rows_equal_the_fused_loss_gradient_and_the_mode_ends_with_the_call():
    logits, target = _data((3, 4), dtype=torch.float32)
    x = torch.randn(3, 4)

    def fn(p):
        return F.binary_cross_entropy_with_logits(logits @ p["w"] + x, target, reduction="mean")

    w = torch.randn(4, 4)
    rows = scg.diagnostics.gradient_samples(fn, {"w": w}, 5)
    wg = w.clone().requires_grad_()
    expected = torch.autograd.grad(fn({"w": wg}), wg)[0].reshape(-1)
    for row in rows:
        torch.testing.assert_close(row, expected, rtol=1e-5, atol=1e-6)
    from torch.overrides import _get_current_function_mode_stack

    assert not any(isinstance(m, VmapRules) for m in _get_current_function_mode_stack())


def test_gradient_samples_evaluates_fn_with_the_rewrite(monkeypatch):
    import scg._vmap_rules as rules

    calls = []
    real = rules.bernoulli_nll

    def counting(logits, target):
        calls.append(logits.shape)
        return real(logits, target)

    monkeypatch.setattr(rules, "bernoulli_nll", counting)
    logits, target = _data((3, 4), dtype=torch.float32)
    fn = lambda p: F.binary_cross_entropy_with_logits(logits * p[0], target, reduction="sum")  # noqa: E731
    scg.diagnostics.gradient_samples(fn, [torch.ones(())], 4, chunk_size=2)
    assert len(calls) == 2  # once per chunk
    F.binary_cross_entropy_with_logits(logits, target)  # eagerly, outside gradient_samples: not rewritten
    assert len(calls) == 2
