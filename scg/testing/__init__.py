r"""Exact checks of gradient estimators: no sampling, quadrature and enumeration only.

An estimator declares its randomness through ``Estimator.laws(dist, S)``; the
harness integrates the estimator's gradient over exactly those laws on a
tensor-product grid (Gauss–Hermite for standard normals, double-exponential
rules between breakpoints for uniforms, Gauss rules for Rayleigh and Maxwell
densities, enumeration for discrete samples, Gauss or double-exponential rules
for continuous samples) and compares it with the true gradient computed from the
distribution alone:

.. math:: E[∇_θ \hat L] \overset{?}{=} ∇_θ E_{q_θ}[f]

* :func:`exact_moments` — ``ExactMoments(mean, second_moment, variance, mean_error,
  variance_error)`` of one estimate's gradient (``[P]``, the flattened parameters);
* :func:`exact_gradient` — ``∇_θ E[f]`` by quadrature over ``q_θ`` (valid for
  discontinuous ``f`` given its ``breakpoints``);
* :func:`assert_unbiased` — both, compared to ~1e-8 in float64, with a readable
  table on failure;

Accuracy. "Exact" means integrated, not sampled, to a stated tolerance
(``rtol``, ``atol``; defaults 1e-8 and 1e-12): enumeration of discrete supports is
exact; every continuous rule is refined by doubling its nodes until the change
that doubling makes — summed over the variables, the estimated error reported in
``mean_error`` and ``variance_error`` — meets the tolerance, and otherwise a
``ValueError`` names the law that did not converge and the accuracy reached.
Smooth costs converge exponentially, peaked ones need more nodes (found by the
refinement), jumps need their ``breakpoints`` (mapped into each law's noise;
for :class:`scg.MeasureValued` on a Normal the σ coupling gets a nested rule).
The estimate can be fooled only by a feature that neither the n- nor the 2n-node
rule sees (an unsplit jump of tiny mass, a spike narrower than the node spacing).
Components of the gradient are integrated over the laws they depend on only
(found by probing), so e.g. the measure-valued μ- and σ-derivatives get 1- and
2-dimensional grids. ``tests/library/test_testing_oracles.py`` checks the harness against
scipy quadrature of hand-derived integrands to 1e-6.
* :mod:`scg.testing.costs` — cost families with their breakpoints;
  :mod:`scg.testing.quadrature` — the one-dimensional rules.

Supported samples (``FromDistribution`` laws and :func:`exact_gradient`): Normal,
Laplace, Exponential, Gamma, Beta, Uniform and other scalar continuous
distributions; Bernoulli, Categorical, OneHotCategorical, Poisson, Binomial,
Geometric; ``Independent`` wrappers of these. Estimators with implicit
reparameterisation (Pathwise on Gamma/Beta) are refused: the harness needs
explicit noise.

Example — checking your own estimator (antithetic pathwise noise):

    >>> import torch, scg
    >>> from torch.distributions import Normal
    >>> from scg.laws import StandardNormal
    >>> from scg.testing import assert_unbiased
    >>> class Antithetic(scg.Estimator):
    ...     def laws(self, dist, num_samples):
    ...         return {"eps": StandardNormal((num_samples, *dist.batch_shape), dtype=dist.loc.dtype)}
    ...     def surrogate(self, f, dist, draws, *, context=None):
    ...         eps = draws["eps"]
    ...         up, down = f(dist.loc + dist.scale * eps), f(dist.loc - dist.scale * eps)
    ...         return (0.5 * (up + down)).mean(0)
    >>> params = (torch.tensor([0.5, -1.0], dtype=torch.float64), torch.tensor([1.0, 2.0], dtype=torch.float64))
    >>> m = assert_unbiased(Antithetic(), Normal, params, lambda z: z**3 - 2 * z)
    >>> [round(v, 6) for v in m.variance.tolist()]   # Var of the gradients w.r.t. (μ₁, μ₂, σ₁, σ₂)
    [18.0, 288.0, 18.0, 288.0]

References:
    Mohamed, Rosca, Figurnov & Mnih, "Monte Carlo Gradient Estimation in Machine
    Learning", JMLR 2020 (their mc_gradients checks estimators by numerical
    integration). https://arxiv.org/abs/1906.10652
"""

from scg.testing import costs, quadrature
from scg.testing.harness import ExactMoments, assert_unbiased, exact_gradient, exact_moments

__all__ = [
    "ExactMoments",
    "exact_moments",
    "exact_gradient",
    "assert_unbiased",
    "costs",
    "quadrature",
]
