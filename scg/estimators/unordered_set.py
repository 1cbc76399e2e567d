r"""The unordered-set estimator: k samples without replacement, Rao-Blackwellised over their order."""

from __future__ import annotations

import functools
import itertools
import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Bernoulli, Categorical, Distribution, Independent, OneHotCategorical

from scg.checks import check_positive_int
from scg.estimators.base import Cost, Estimator, Parts
from scg.laws import Law, WithoutReplacement, one_hot

__all__ = ["UnorderedSet", "class_log_probs", "class_values", "set_ratios", "EXACT_MAX"]

#: Largest set size whose probabilities are summed over orderings; larger sets use a quadrature.
EXACT_MAX = 5

_FAMILIES = "Categorical, OneHotCategorical or Bernoulli"


def class_log_probs(dist: Distribution, name: str) -> Tensor:
    """The normalised class log-probabilities ``[*batch_shape, K]`` of ``dist`` (attached).

    ``Categorical`` and ``OneHotCategorical`` give their own; ``Bernoulli`` is the
    two-class categorical ``[log(1 − p), log p]``. ``Independent`` products are refused
    with a ``TypeError`` naming ``name`` (one categorical variable per batch element).
    """
    if not isinstance(dist, Distribution):
        raise TypeError(f"`dist` must be a torch.distributions.Distribution; got {type(dist).__name__}.")
    if isinstance(dist, Independent):
        raise TypeError(
            f"`dist` must be one {_FAMILIES} variable per batch element for {name}; got an Independent "
            f"product with event shape {list(dist.event_shape)}. Sampling without replacement from the joint "
            "of several variables needs a stochastic beam search, which scg does not implement: use "
            "Enumerate for small joint supports, ScoreFunction or DisARM for large ones, or keep the "
            "variables as batch dims when the cost separates them."
        )
    if isinstance(dist, (Categorical, OneHotCategorical)):
        return torch.log_softmax(dist.logits, dim=-1)
    if isinstance(dist, Bernoulli):
        return torch.stack([F.logsigmoid(-dist.logits), F.logsigmoid(dist.logits)], dim=-1)
    raise TypeError(f"`dist` must be {_FAMILIES} for {name}; got {type(dist).__name__}.")


def class_values(dist: Distribution, index: Tensor) -> Tensor:
    """Samples of ``dist`` from class indices: the index (Categorical), its one-hot vector, or 0./1. (Bernoulli)."""
    if isinstance(dist, OneHotCategorical):
        return one_hot(index, int(dist.logits.shape[-1]), dist.logits.dtype)
    if isinstance(dist, Bernoulli):
        return index.to(dist.logits.dtype)
    return index


def check_set_size(k: int, num_classes: int, name: str) -> None:
    """``k`` must not exceed the number of classes."""
    if k > num_classes:
        raise ValueError(
            f"`k` must be at most the number of classes K = {num_classes} for {name}; got k = {k}."
        )


@functools.lru_cache(maxsize=32)
def _orderings(k: int) -> tuple[tuple[int, ...], ...]:
    """For every ordered pair (s, s'), s ≠ s', the orderings of the other k − 2 positions, flattened.

    Row ``(s·k + s')·m + j`` is the j-th of the m = (k − 2)! orderings (diagonal pairs
    repeat the others' rows; they are overwritten by the caller).
    """
    rows = []
    for s, t in itertools.product(range(k), repeat=2):
        rest = [i for i in range(k) if i not in (s, t)] if s != t else list(range(k - 2))
        rows += list(itertools.permutations(rest))
    return tuple(rows)


def _log_ordered_sum(log_p: Tensor, log_rest: Tensor) -> Tensor:
    r""":math:`\log \sum_σ \prod_j p_{σ_j} / (r + \sum_{i ≥ j} p_{σ_i})` over the orderings σ of the last dim.

    ``log_p`` ``[..., m, t]`` (m orderings of t classes), ``log_rest`` broadcastable to
    ``[..., 1]``: the mass r of the classes outside the set. Every denominator is a sum
    of positive terms (no cancellation).
    """
    if log_p.shape[-1] == 0:
        return torch.zeros(log_p.shape[:-2], dtype=log_p.dtype, device=log_p.device)
    suffix = torch.logcumsumexp(log_p.flip(-1), -1).flip(-1)
    terms = log_p - torch.logaddexp(suffix, log_rest.unsqueeze(-1))
    return torch.logsumexp(terms.sum(-1), -1)


def _exact(log_p: Tensor, log_rest: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``log P(S)``, ``log P1`` and ``log P2`` by summing over orderings (see :func:`set_ratios`)."""
    k = log_p.shape[-1]
    lead = log_p.shape[:-1]
    r = log_rest.unsqueeze(-1)  # [..., 1]
    if k >= 2:
        order = torch.tensor(_orderings(k), dtype=torch.long, device=log_p.device)  # [k·k·m, k − 2]
        m = math.factorial(k - 2)
        picked = log_p[..., order.reshape(-1)].reshape(*lead, k, k, m, k - 2)
        log_p2 = _log_ordered_sum(picked, r.unsqueeze(-1).unsqueeze(-1))  # [..., k, k]
        # P1[s] = Σ_{s' ≠ s} p_{s'} / (r + p(S \ s)) · P2[s, s']
        eye = torch.eye(k, dtype=torch.bool, device=log_p.device)
        others = torch.where(eye, -math.inf, log_p.unsqueeze(-2).expand(*lead, k, k))  # [..., s, s']
        mass = torch.logaddexp(torch.logsumexp(others, -1), log_rest.unsqueeze(-1))  # log(r + p(S \ s))
        log_p1 = torch.logsumexp(others - mass.unsqueeze(-1) + log_p2.masked_fill(eye, 0.0), -1)
        log_p2 = torch.where(eye, log_p1.unsqueeze(-1).expand(*lead, k, k), log_p2)
    else:
        log_p1 = torch.zeros_like(log_p)
        log_p2 = log_p1.unsqueeze(-1)
    total = torch.logaddexp(torch.logsumexp(log_p, -1), log_rest)  # log(r + p(S)) = log 1
    log_set = torch.logsumexp(log_p - total.unsqueeze(-1) + log_p1, -1)
    return log_set, log_p1, log_p2


@functools.lru_cache(maxsize=8)
def _tanh_sinh(step: float, limit: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Nodes ``x = π sinh t`` and log-weights of the rule ``u = σ(x)`` on (0, 1), t on a grid of ``step``."""
    n = int(round(limit / step))
    ts = [j * step for j in range(-n, n + 1)]
    xs = [math.pi * math.sinh(t) for t in ts]
    logw = [
        -math.log1p(math.exp(-abs(x))) * 2 - abs(x) + math.log(math.pi * math.cosh(t) * step)
        for t, x in zip(ts, xs, strict=True)
    ]
    return tuple(xs), tuple(logw)


def _integral(log_p: Tensor, log_rest: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r"""``log P(S)``, ``log P1``, ``log P2`` by :math:`P(T) = \int_0^1 \prod_{i ∈ T} (1 − u^{p_i / r}) du`.

    A double-exponential (tanh-sinh) rule in ``u = σ(π sinh t)``, t ∈ [−4, 4] with step
    1/64 (513 nodes): ``log u`` and ``log(1 − u)`` are formed without cancellation, so
    the rule resolves exponents ``p_i / r`` from below 1e-30 to above 1e30.
    """
    xs, logw = (torch.tensor(v, dtype=log_p.dtype, device=log_p.device) for v in _tanh_sinh(1 / 64, 4.0))
    log_u = -F.softplus(-xs)  # [N]
    a = torch.exp(log_p - log_rest.unsqueeze(-1))  # [..., k]
    terms = torch.log(-torch.expm1(a.unsqueeze(-1) * log_u))  # [..., k, N]: log(1 − u^a)
    full = terms.sum(-2)  # [..., N]
    log_set = torch.logsumexp(full + logw, -1)
    without = full.unsqueeze(-2) - terms  # [..., k, N]
    log_p1 = torch.logsumexp(without + logw, -1)
    k = log_p.shape[-1]
    eye = torch.eye(k, dtype=log_p.dtype, device=log_p.device).unsqueeze(-1)
    pairs = without.unsqueeze(-2) - terms.unsqueeze(-3) * (1 - eye)  # [..., k, k, N]
    log_p2 = torch.logsumexp(pairs + logw, -1)
    return log_set, log_p1, log_p2


def set_ratios(log_p: Tensor, log_rest: Tensor) -> tuple[Tensor, Tensor]:
    r"""The leave-one-out ratios of an unordered sample without replacement ``S``.

    With :math:`P(S)` the probability of the unordered set, :math:`P^{D∖A}(T)` that of
    the set T drawn from the classes without A (probabilities renormalised):

    .. math::
        R(S, s) = \frac{P^{D∖\{s\}}(S ∖ \{s\})}{P(S)}, \qquad
        R^{D∖s}(S, s') = \frac{P^{D∖\{s, s'\}}(S ∖ \{s, s'\})}{P^{D∖\{s\}}(S ∖ \{s\})},
        \quad R^{D∖s}(S, s) = 1.

    Computed exactly by summing over orderings for ``k ≤ EXACT_MAX`` (``k(k−1)(k−2)!``
    terms), and for larger sets by the one-dimensional integral of
    :func:`_integral` (a quadrature accurate to about 1e-12 relative in float64).

    Args:
        log_p: ``[..., k]`` log-probabilities of the set's classes (detached).
        log_rest: ``[...]`` log of the mass of the classes outside the set (``-inf`` if none).

    Returns:
        ``(R [..., k], R2 [..., k, k])`` with ``R2[..., s, s']`` = :math:`R^{D∖s}(S, s')`.
    """
    dtype = log_p.dtype
    log_p, log_rest = log_p.double(), log_rest.double()
    compute = _exact if log_p.shape[-1] <= EXACT_MAX else _integral
    log_set, log_p1, log_p2 = compute(log_p, log_rest)
    ratio = torch.exp(log_p1 - log_set.unsqueeze(-1))
    ratio2 = torch.exp(log_p2 - log_p1.unsqueeze(-1))
    return ratio.to(dtype), ratio2.to(dtype)


class UnorderedSet(Estimator):
    r"""The unordered-set estimator with its built-in baseline, for one categorical variable.

    Draw k distinct classes :math:`S = \{s_1, …, s_k\}` without replacement (Gumbel-top-k:
    the k largest of :math:`\log p_i + G_i`). The estimator is the score-function
    estimator of the first draw, Rao-Blackwellised over the order of the set:

    .. math::
        \hat g = \sum_{s ∈ S} ∇_θ p_θ(s)\, R(S, s)\,\big(f(s) − b_s\big)
          + \sum_{s ∈ S} p_θ(s) R(S, s)\, ∇_θ f(s),
        \qquad
        b_s = \sum_{s' ∈ S} p_θ(s')\, R^{D∖s}(S, s')\, f(s')

    with the leave-one-out ratios :math:`R` of :func:`set_ratios`; :math:`p(s) R(S, s)`
    is the probability that s was drawn first given the set (these weights sum to one).
    The baseline :math:`b_s` is built from the same set: given the first draw
    :math:`x_1`, :math:`p(x_1) f(x_1) + (1 − p(x_1)) f(x_2)` has expectation
    :math:`E[f]` over the second draw, whatever :math:`x_1`, and :math:`b_s` is its
    conditional expectation given the set and :math:`x_1 = s`.

    Requires: ``Categorical``, ``OneHotCategorical`` or ``Bernoulli`` (a two-class
    categorical), one variable per batch element (``Independent`` products are refused:
    their joint needs a stochastic beam search); ``1 ≤ k ≤ K``; f need not be differentiable.

    Properties: unbiased (first order), with or without the baseline; k evaluations of f
    per sample. For k = 1 it is REINFORCE (no baseline: there is no second draw); for
    k = K the set is every class and the estimate is the exact gradient (zero variance).
    The k draws are the node's copies (:class:`scg.Parts`), with weights 1, 0, …, 0: the
    value of the surrogate is f at the first draw, a draw of the distribution (the
    contract's copy weights are constants; the set's weights :math:`p(s) R(S, s)` vary
    with the draw and enter the gradient only). The ratios are computed in float64, by
    summing over orderings for ``k ≤ 5`` and by a 513-node quadrature of the paper's
    integral beyond (memory ``O(k² · 513)`` per batch element).

    Args:
        k: the number of draws without replacement (keyword-only).
        baseline: use the built-in baseline :math:`b_s` (keyword-only; ignored for k = 1).

    Example:
        >>> import torch, scg
        >>> from torch.distributions import Categorical
        >>> _ = torch.manual_seed(0)
        >>> logits = torch.zeros(5, requires_grad=True)
        >>> cost = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0])
        >>> loss = scg.expectation(lambda z: cost[z], Categorical(logits=logits), UnorderedSet(k=3), num_samples=4)
        >>> loss.backward()

    References:
        Kool, van Hoof & Welling, "Estimating Gradients for Discrete Random Variables by
        Sampling without Replacement", ICLR 2020 (the estimator, its built-in baseline and
        the integral for P(S)). https://arxiv.org/abs/2002.06043
        Kool, van Hoof & Welling, "Stochastic Beams and Where to Find Them", ICML 2019.
        https://arxiv.org/abs/1903.06059
        Mohamed et al., "Monte Carlo Gradient Estimation in Machine Learning", JMLR 2020, §4.
        https://arxiv.org/abs/1906.10652
    """

    def __init__(self, *, k: int, baseline: bool = True) -> None:
        super().__init__()
        self.k = check_positive_int("k", k)
        if not isinstance(baseline, bool):
            raise TypeError(f"`baseline` must be a bool; got {type(baseline).__name__}.")
        self.baseline = baseline

    def check(self, dist: Distribution) -> None:
        log_p = class_log_probs(dist, "UnorderedSet")
        check_set_size(self.k, int(log_p.shape[-1]), "UnorderedSet")

    def evaluations(self, dist: Distribution, num_samples: int) -> int:
        return self.k * num_samples

    def laws(self, dist: Distribution, num_samples: int) -> dict[str, Law]:
        self.check(dist)
        log_p = class_log_probs(dist, "UnorderedSet").detach()
        batch = tuple(dist.batch_shape)
        logits = log_p.expand(*batch, log_p.shape[-1])
        shape = (num_samples, *batch, self.k)
        return {"x": WithoutReplacement(shape=shape, dtype=torch.long, device=log_p.device, logits=logits)}

    def parts(self, dist: Distribution, draws: dict[str, Tensor], *, context: Tensor | None = None) -> Parts:
        x = draws["x"]  # [n, *batch, k], in the order drawn
        log_all = class_log_probs(dist, "UnorderedSet")
        K = log_all.shape[-1]
        log_all = log_all.expand(*x.shape[:-1], K)
        log_p = log_all.gather(-1, x)  # [n, *batch, k], attached
        with torch.no_grad():
            drawn = (x.unsqueeze(-1) == torch.arange(K, device=x.device)).any(-2)  # [n, *batch, K]
            log_rest = torch.logsumexp(log_all.detach().masked_fill(drawn, -math.inf), -1)
            ratio, ratio2 = set_ratios(log_p.detach(), log_rest)
        p = log_p.exp()
        p0 = p.detach()
        weight = p0 * ratio  # P(first draw = s | set), sums to one over the set
        built_in = self.baseline and self.k > 1

        def term(signal: Tensor, f: Cost | None, sample_dims: int) -> tuple[Tensor, Tensor | None]:
            fs = signal.movedim(0, -1)  # [n, *batch, k]
            fd = fs.detach()
            advantage = fd - (p0.unsqueeze(-2) * ratio2 * fd.unsqueeze(-2)).sum(-1) if built_in else fd
            score = ((p - p0) * ratio * advantage).sum(-1)
            # f's own gradient, Rao-Blackwellised over the order: Σ_s w_s ∇f(s) − ∇f(x_1)
            path = (weight * (fs - fd)).sum(-1) - (fs[..., 0] - fd[..., 0])
            return score + path, None

        value = class_values(dist, x.movedim(-1, 0))  # [k, n, *batch, *event]
        copies = torch.zeros(self.k, dtype=p0.dtype, device=p0.device)
        copies[0] = 1.0
        return Parts(value, copies=copies, term=term)

    def extra_repr(self) -> str:
        return f"k={self.k}, baseline={self.baseline}"
