"""``scg.models._densities.DiagonalNormal``: the same distribution as ``Independent(Normal)``, a fused log_prob."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Independent, Normal, kl_divergence

import scg
from scg.models import GaussianEncoder, StandardNormalPrior
from scg.models._densities import DiagonalNormal, diagonal_normal, standard_normal


def _params(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(shape, generator=g, dtype=torch.float64).requires_grad_()
    scale = (torch.rand(shape, generator=g, dtype=torch.float64) + 0.2).requires_grad_()
    return loc, scale


@pytest.mark.parametrize("batch, sample", [((), ()), ((3,), ()), ((2, 3), (5,)), ((4,), (2, 1))])
def test_log_prob_and_its_derivatives_equal_independent_normal(batch, sample):
    loc, scale = _params((*batch, 6))
    z = torch.randn((*sample, *batch, 6), dtype=torch.float64, requires_grad=True)
    ours = diagonal_normal(loc, scale).log_prob(z)
    ref = Independent(Normal(loc, scale), 1).log_prob(z)
    assert ours.shape == ref.shape == (*sample, *batch)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    g1 = torch.autograd.grad(ours.sum(), (loc, scale, z), create_graph=True)
    g2 = torch.autograd.grad(ref.sum(), (loc, scale, z), create_graph=True)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    h1 = torch.autograd.grad(g1[1].sum(), (loc, scale, z))  # a second derivative
    h2 = torch.autograd.grad(g2[1].sum(), (loc, scale, z))
    for a, b in zip(h1, h2):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_broadcasting_value_smaller_than_batch():
    loc, scale = _params((4, 3))
    z = torch.randn(3, dtype=torch.float64)
    torch.testing.assert_close(diagonal_normal(loc, scale).log_prob(z), Independent(Normal(loc, scale), 1).log_prob(z))
    zero, one = torch.zeros(4, 3, dtype=torch.float64), torch.ones(4, 3, dtype=torch.float64)
    lp = standard_normal(zero, one).log_prob(z)  # value broadcast against the batch: the general path
    torch.testing.assert_close(lp, Independent(Normal(zero, one), 1).log_prob(z))


def test_standard_normal_prior_matches_and_samples_like_normal():
    prior = StandardNormalPrior(5)
    p = prior((7, 2))
    assert isinstance(p, DiagonalNormal) and isinstance(p, Independent)
    z = torch.randn(3, 7, 2, 5)
    ref = Independent(Normal(torch.zeros(7, 2, 5), torch.ones(7, 2, 5)), 1)
    torch.testing.assert_close(p.log_prob(z), ref.log_prob(z))
    assert p.batch_shape == (7, 2) and p.event_shape == (5,)
    e = p.expand((4, 7, 2))
    assert type(e) is DiagonalNormal and e._standard
    torch.testing.assert_close(e.log_prob(z[:, None].expand(3, 4, 7, 2, 5)), ref.expand((4, 7, 2)).log_prob(
        z[:, None].expand(3, 4, 7, 2, 5)))
    torch.manual_seed(0)
    a = p.sample((3,))
    torch.manual_seed(0)
    b = ref.sample((3,))
    torch.testing.assert_close(a, b)


def test_encoder_distribution_keeps_every_distribution_method():
    enc = GaussianEncoder(8, 3, (16,))
    x = torch.randn(4, 8)
    q = enc(x)
    loc, scale, _ = enc.params(x)
    ref = Independent(Normal(loc, scale), 1)
    assert type(q) is DiagonalNormal
    torch.testing.assert_close(q.entropy(), ref.entropy())
    prior = StandardNormalPrior(3)((4,))
    torch.testing.assert_close(kl_divergence(q, prior), kl_divergence(ref, Independent(Normal(
        torch.zeros(4, 3), torch.ones(4, 3)), 1)))
    torch.manual_seed(1)
    a = q.rsample((2,))
    torch.manual_seed(1)
    b = ref.rsample((2,))
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("estimator", [scg.Pathwise(), scg.ScoreFunction()])
def test_estimators_give_the_same_gradient_as_with_independent_normal(estimator):
    loc, scale = _params((3, 4))
    f = lambda z: (z - 0.3).pow(2).sum(-1)  # noqa: E731
    grads = []
    for q in (diagonal_normal(loc, scale), Independent(Normal(loc, scale), 1)):
        torch.manual_seed(2)
        loss = scg.expectation(f, q, estimator, num_samples=5).sum()
        grads.append(torch.autograd.grad(loss, (loc, scale)))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_validation_rejects_a_bad_sample_as_normal_does():
    loc, scale = _params((3,))
    q = diagonal_normal(loc, scale, validate_args=True)
    with pytest.raises(ValueError):
        q.log_prob(torch.tensor([0.0, float("nan"), 1.0], dtype=torch.float64))


def test_non_normal_base_falls_back():
    base = torch.distributions.Laplace(torch.zeros(3), torch.ones(3))
    d = DiagonalNormal(base, 1)
    z = torch.randn(2, 3)
    torch.testing.assert_close(d.log_prob(z), Independent(base, 1).log_prob(z))


def test_construction_matches_independent_normal_including_broadcast_and_errors():
    for loc, scale in [(torch.zeros(2, 3), torch.ones(2, 3)), (torch.zeros(3), torch.ones(4, 3)), (torch.zeros(4, 1), 2.0)]:
        ours, ref = diagonal_normal(loc, scale), Independent(Normal(loc, scale), 1)
        assert (ours.batch_shape, ours.event_shape) == (ref.batch_shape, ref.event_shape)
        assert ours.base_dist.loc.shape == ref.base_dist.loc.shape and ours.mean.shape == ref.mean.shape
    with pytest.raises(ValueError):
        diagonal_normal(torch.zeros(()), torch.ones(()))
    with pytest.raises(ValueError, match="scale"):
        diagonal_normal(torch.zeros(3), -torch.ones(3), validate_args=True)


@pytest.mark.parametrize("logits_shape, x_shape", [((4, 6), (4, 6)), ((3, 4, 6), (4, 6)), ((4, 6), (2, 4, 6))])
def test_bernoulli_vector_log_prob_equals_independent_bernoulli(logits_shape, x_shape):
    from torch.distributions import Bernoulli

    from scg.models._densities import BernoulliVector, bernoulli_vector

    g = torch.Generator().manual_seed(3)
    logits = torch.randn(logits_shape, generator=g, dtype=torch.float64).requires_grad_()
    x = torch.bernoulli(torch.full(x_shape, 0.4, dtype=torch.float64), generator=g)
    ours, ref = bernoulli_vector(logits), Independent(Bernoulli(logits=logits), 1)
    assert type(ours) is BernoulliVector
    assert (ours.batch_shape, ours.event_shape) == (ref.batch_shape, ref.event_shape)
    a, b = ours.log_prob(x), ref.log_prob(x)
    assert a.shape == b.shape
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    ga, = torch.autograd.grad(a.sum(), logits, create_graph=True)
    gb, = torch.autograd.grad(b.sum(), logits, create_graph=True)
    torch.testing.assert_close(ga, gb)
    torch.testing.assert_close(torch.autograd.grad(ga.sum(), logits)[0], torch.autograd.grad(gb.sum(), logits)[0])
    torch.testing.assert_close(ours.mean, ref.mean)
    torch.testing.assert_close(ours.entropy(), ref.entropy())
    e = ours.expand((5, *ours.batch_shape))
    assert type(e) is BernoulliVector and e.batch_shape == (5, *ref.batch_shape)


def test_bernoulli_decoder_returns_the_fused_likelihood():
    from scg.models import BernoulliDecoder
    from scg.models._densities import BernoulliVector

    dec = BernoulliDecoder(3, 8, (5,))
    p = dec(torch.randn(2, 4, 3))
    assert type(p) is BernoulliVector and p.batch_shape == (2, 4) and p.event_shape == (8,)
    torch.manual_seed(0)
    s = p.sample()
    assert s.shape == (2, 4, 8) and set(s.unique().tolist()) <= {0.0, 1.0}
