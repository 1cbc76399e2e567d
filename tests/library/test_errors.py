"""Bad input raises a clear error that names the argument (every message tested)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.distributions import Bernoulli, Gamma, Independent, Normal

import scg
from scg import baselines as B


def normal():
    return Normal(torch.zeros(2, requires_grad=True), torch.ones(2))


def bern():
    return Bernoulli(logits=torch.zeros(2, requires_grad=True))


@pytest.mark.parametrize(
    "estimator,dist,match",
    [
        (
            scg.Pathwise(),
            bern,
            r"`dist` must be reparameterisable for Pathwise; Bernoulli has no rsample. Use ScoreFunction",
        ),
        (scg.DisARM(), normal, r"`dist` must be Bernoulli .* for DisARM; got Normal"),
        (scg.RELAX(), normal, r"`dist` must be Bernoulli .* for RELAX; got Normal"),
        (
            scg.GumbelSoftmax(1.0),
            normal,
            r"`dist` must be Bernoulli, Categorical or OneHotCategorical .* for GumbelSoftmax; got Normal",
        ),
        (scg.StraightThrough(), normal, r"for StraightThrough; got Normal"),
        (
            scg.MeasureValued(),
            lambda: Gamma(torch.ones(2), torch.ones(2)),
            r"`dist` must be Normal, Bernoulli, .* for MeasureValued; got Gamma",
        ),
    ],
)
def test_wrong_distribution_for_estimator(estimator, dist, match):
    with pytest.raises(TypeError, match=match):
        scg.expectation(lambda z: z, dist(), estimator)


def test_not_a_distribution():
    with pytest.raises(TypeError, match=r"`dist` must be a torch.distributions.Distribution; got Tensor"):
        scg.expectation(lambda z: z, torch.zeros(2), scg.ScoreFunction())


def test_leave_one_out_needs_two_samples():
    with pytest.raises(ValueError, match=r"`num_samples` must be >= 2 for LeaveOneOut; got 1"):
        scg.expectation(lambda z: z, bern(), scg.ScoreFunction(B.LeaveOneOut()), num_samples=1)


def test_num_samples_must_be_positive_int():
    with pytest.raises(ValueError, match=r"`num_samples` must be >= 1; got 0"):
        scg.expectation(lambda z: z, bern(), scg.ScoreFunction(), num_samples=0)
    with pytest.raises(TypeError, match=r"`num_samples` must be an int; got float"):
        scg.expectation(lambda z: z, bern(), scg.ScoreFunction(), num_samples=2.0)


@pytest.mark.parametrize("estimator", [scg.ScoreFunction(), scg.Pathwise(), scg.MeasureValued()])
def test_cost_with_wrong_shape(estimator):
    dist = normal()
    with pytest.raises(
        ValueError,
        match=r"`f` must map samples .* to costs \[S, \*batch_shape\] = \[\d+, 2\]; got shape \[\d+\]\. If f sums",
    ):
        scg.expectation(lambda z: z.sum(-1), dist, estimator, num_samples=3)


def test_cost_not_a_tensor_and_not_float():
    with pytest.raises(TypeError, match=r"`f` must return a torch.Tensor; got float"):
        scg.expectation(lambda z: 1.0, normal(), scg.Pathwise())
    with pytest.raises(TypeError, match=r"`f` must return a floating-point tensor; got dtype torch.int64"):
        scg.expectation(lambda z: z.long(), bern(), scg.ScoreFunction())


@pytest.mark.parametrize("estimator", [scg.ScoreFunction(), scg.DisARM(), scg.MeasureValued()])
def test_non_finite_costs(estimator):
    with pytest.raises(ValueError, match=r"`f` must return finite costs; got non-finite values"):
        scg.expectation(lambda b: torch.log(b * 0.0), bern(), estimator, num_samples=2)


@pytest.mark.parametrize("t", [-0.5, 0.0, float("inf")])
def test_temperature_must_be_positive(t):
    with pytest.raises(ValueError, match=r"`temperature` must be positive and finite; got"):
        scg.GumbelSoftmax(t)
    with pytest.raises(TypeError, match=r"`temperature` must be a positive float; got str"):
        scg.GumbelSoftmax("hot")


def test_estimator_and_baseline_types():
    with pytest.raises(TypeError, match=r"`estimator` must be an scg Estimator; got str"):
        scg.expectation(lambda z: z, normal(), "pathwise")
    with pytest.raises(
        TypeError,
        match=r"`baseline` must be a control variate from scg.baselines or None; got float",
    ):
        scg.ScoreFunction(baseline=0.5)
    with pytest.raises(TypeError, match=r"`chain` arguments must be scg.baselines control variates; got int"):
        B.chain(B.MovingAverage(), 3)
    with pytest.raises(TypeError, match=r"`module` must be a torch.nn.Module; got function"):
        B.Learned(lambda x: x)
    with pytest.raises(TypeError, match=r"`f` must be callable; got int"):
        scg.expectation(3, normal(), scg.Pathwise())


@pytest.mark.parametrize("decay", [-0.1, 1.0, 2.0])
def test_decay_range(decay):
    with pytest.raises(ValueError, match=r"`decay` must be in \[0, 1\); got"):
        B.MovingAverage(decay)
    with pytest.raises(ValueError, match=r"`decay` must be in \[0, 1\); got"):
        B.Normalize(decay)


def test_learned_baseline_output_shape():
    est = scg.ScoreFunction(B.Learned(nn.Linear(1, 3)))
    with pytest.raises(
        ValueError,
        match=r"`module` of Learned must return \[\*batch_shape\] = \[2\] or, when the context varies per sample .*got \[2, 3\]",
    ):
        scg.expectation(lambda b: b, bern(), est, num_samples=2)


def test_delta_needs_normal_and_valid_coefficient():
    with pytest.raises(
        TypeError,
        match=r"`dist` must be a Normal \(or Independent Normal\) for Delta; got Bernoulli",
    ):
        scg.expectation(lambda b: b, bern(), scg.ScoreFunction(B.Delta()), num_samples=2)
    with pytest.raises(ValueError, match=r'`coefficient` must be a float or "optimal"; got \'best\''):
        B.Delta("best")


def test_relax_control_variate_type_and_shape():
    with pytest.raises(TypeError, match=r"`control_variate` must be an nn.Module; got function"):
        scg.RELAX(lambda z, f: z)

    class Bad(nn.Module):
        def forward(self, z, f):
            return z

    dist = Independent(Bernoulli(logits=torch.zeros(2, requires_grad=True)), 1)
    with pytest.raises(
        ValueError,
        match=r"`control_variate` must return \[S, \*batch_shape\] = \[1\]; got \[1, 2\]",
    ):
        scg.expectation(lambda b: b.sum(-1), dist, scg.RELAX(Bad()))
