"""``scg.laws.draw``: the draws estimators make: shapes, no gradient, independent under vmap."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Bernoulli, Independent, Normal, OneHotCategorical

from scg.laws import draw, sample_from


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sample_shape", [(), (1,), (3,), (2, 4)])
@pytest.mark.parametrize("kind", ["logits", "probs", "independent"])
def test_bernoulli_draws_shape_dtype_no_grad(dtype: torch.dtype, sample_shape: tuple, kind: str) -> None:
    torch.manual_seed(11)
    logits = torch.randn(5, 7, dtype=dtype, requires_grad=True)
    if kind == "probs":
        dist = Bernoulli(probs=torch.sigmoid(logits))
    else:
        dist = Bernoulli(logits=logits)
    if kind == "independent":
        dist = Independent(dist, 1)
    got = draw(dist, sample_shape)
    assert got.shape == (*sample_shape, 5, 7)
    assert got.dtype == dtype and not got.requires_grad
    assert bool(((got == 0) | (got == 1)).all())


def test_bernoulli_extreme_probabilities() -> None:
    p = torch.tensor([0.0, 1.0, 0.5])
    b = draw(Bernoulli(probs=p), (10_000,))
    assert b[:, 0].sum() == 0 and b[:, 1].sum() == 10_000
    # 0.5: |mean - 0.5| < 4.9 sd (sd = 0.005) fails with probability 1e-6
    assert abs(float(b[:, 2].mean()) - 0.5) < 0.0245


def test_draw_under_vmap_differs_per_batch_element() -> None:
    q = Independent(Bernoulli(logits=torch.zeros(50, 20)), 1)
    sums = torch.func.vmap(lambda _: sample_from(q, 1).sum(), randomness="different")(torch.zeros(4))
    assert len(set(sums.tolist())) > 1  # four sums of 1000 fair coins: all equal with prob < 1e-6
    same = torch.func.vmap(lambda _: sample_from(q, 1).sum(), randomness="same")(torch.zeros(3))
    assert len(set(same.tolist())) == 1


def test_other_laws_are_dist_sample() -> None:
    dist = Normal(torch.zeros(3), torch.ones(3))
    torch.manual_seed(2)
    expected = dist.sample((4,))
    torch.manual_seed(2)
    assert torch.equal(draw(dist, (4,)), expected)
    one_hot = draw(OneHotCategorical(logits=torch.zeros(2, 5)), (6,))
    assert one_hot.shape == (6, 2, 5) and torch.equal(one_hot.sum(-1), torch.ones(6, 2))


def test_independent_one_hot_draws_under_vmap() -> None:
    q = Independent(OneHotCategorical(logits=torch.zeros(3, 4)), 1)
    x = torch.func.vmap(lambda _: draw(q, (2,)), randomness="different")(torch.zeros(5))
    assert x.shape == (5, 2, 3, 4) and torch.equal(x.sum(-1), torch.ones(5, 2, 3))
