"""The categorical problems of ``scg-study compare``: their closed-form gradients against finite differences."""

import itertools

import numpy as np
import pytest
import torch

from scg.studies.problems import GROUPS, PROBLEMS


def expected_cost(problem, logits: np.ndarray) -> float:
    """E[f] by enumeration in numpy: independent of the problem's own gradient code."""
    a = np.atleast_2d(logits)
    p = np.exp(a - a.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    D, K = a.shape
    total = 0.0
    for outcome in itertools.product(range(K), repeat=D):
        y = np.zeros((D, K))
        y[np.arange(D), outcome] = 1.0
        y_t = torch.tensor(y if logits.ndim == 2 else y[0])
        total += float(np.prod(p[np.arange(D), outcome])) * float(problem.f(y_t))
    return total


@pytest.mark.parametrize("name", GROUPS["categorical"])
def test_categorical_problem_gradient_matches_finite_differences(name):
    problem = PROBLEMS[name]
    logits = np.array(problem.params[0], dtype=np.float64)
    h = 1e-6
    fd = np.zeros(logits.size)
    for i in range(logits.size):
        e = np.zeros(logits.size)
        e[i] = h
        fd[i] = (
            expected_cost(problem, logits + e.reshape(logits.shape))
            - expected_cost(problem, logits - e.reshape(logits.shape))
        ) / (2 * h)
    np.testing.assert_allclose(problem.exact_gradient, fd, rtol=1e-6, atol=1e-10)


def test_the_two_class_toy_is_the_bernoulli_toy():
    """For K = 2 the categorical toy's cost is the Bernoulli toy's (b − t)² with b = y₁."""
    from scg.studies.problems import _CategoricalSquare

    f = _CategoricalSquare(0.49, 2)
    for b in (0.0, 1.0):
        y = torch.tensor([1 - b, b], dtype=torch.float64)
        assert float(f(y)) == pytest.approx((b - 0.49) ** 2, rel=1e-15)
