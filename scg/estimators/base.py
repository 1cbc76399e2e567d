r"""The estimator contract and ``scg.expectation``.

An estimator turns :math:`E_{q_θ(z)}[f(z)]` into a *value-preserving surrogate*: a
tensor whose value is exactly the Monte Carlo mean of ``f`` over the drawn samples
and whose gradient (with respect to the distribution's parameters, f's own
parameters and any learned control variate) is the estimator.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Protocol

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from scg._checks import check_positive_int, compiling
from scg._dice import cost_term, reduce_rows
from scg._dist import evaluate
from scg._log_prob import share, unshare
from scg.laws import Law

__all__ = ["Estimator", "Parts", "Term", "expectation", "default_estimator", "Cost"]

Cost = Callable[[Tensor], Tensor]


class Term(Protocol):
    """What a node adds to the surrogate once its learning signal is known (see :class:`Parts`)."""

    def __call__(
        self, signal: Tensor, f: Cost | None, sample_dims: int
    ) -> tuple[Tensor, Tensor | None]: ...  # pragma: no cover


class Parts(NamedTuple):
    r"""What an estimator hands to the surrogate for one stochastic node (Pyro's ``ScoreParts`` idea).

    Shapes use ``n`` for the leading dim of the draws (``S`` in ``scg.expectation``
    and for a graph's root nodes, 1 for a graph's child nodes, whose distribution
    already carries the graph's sample dims in its batch shape).

    Attributes:
        value: what the cost (or everything downstream in a graph) sees:
            ``[n, *batch_shape, *event_shape]``, or ``[K, n, ...]`` when the
            estimator needs the cost at K coupled points (``copies`` given).
            Attached where the estimator's gradient flows through it (pathwise,
            relaxations), detached otherwise.
        log_prob: ``[n, *batch_shape]`` log-probability of a detached ``value``
            (score-function part): every cost downstream is multiplied by
            :math:`□(\log p)` (DiCE). ``None`` for estimators without it.
        copies: ``[K]`` weights of the copies (summing to one): the value of the
            surrogate averages the cost over copies with them (½, ½ for an
            antithetic pair; 1, 0, …, 0 when only the first copy is a draw of the
            distribution). ``None``: ``value`` has no copy dim.
        term: ``term(signal, f, sample_dims) -> (rows, extra)`` or ``None``. ``signal``
            is the node's learning signal ``[*copies, n, *batch_shape]`` — the cost,
            or in a graph the sum of the costs that depend on the node — attached to
            f's own parameters; ``f`` the cost function (``None`` in a graph, whose
            costs are tensors); ``sample_dims`` the number of leading dims of
            ``signal`` (after the copy dim) that index samples (1, or more for a
            graph's child nodes). ``rows`` ``[n, *batch_shape]`` and ``extra``
            (``None`` or ``[*batch_shape]`` summed as is) must be zero in value;
            their gradient is the estimator's gradient beyond the DiCE score part
            and the flow through ``value``.
    """

    value: Tensor
    log_prob: Tensor | None = None
    copies: Tensor | None = None
    term: Term | None = None


class Estimator(nn.Module):
    r"""Base class of gradient estimators.

    **The contract** (distrax style: implement two methods, the rest is derived).

    A subclass implements:

    * ``laws(dist, num_samples) -> dict[str, Law]`` — the randomness of one
      estimate, declared (:mod:`scg.laws`), independent of the parameters being
      differentiated. The exact harness (:mod:`scg.testing`) integrates over these
      laws instead of sampling them.
    * ``parts(dist, draws, *, context=None) -> Parts`` — what the node hands
      downstream and what it adds to the surrogate, given its draws
      (:class:`Parts`). This one method serves :func:`expectation` and
      :class:`scg.Graph` alike, so any estimator — a user's subclass included —
      can be a graph node.

    Derived (do not override; subclasses that define ``forward`` or ``draw`` are refused):

    * ``draw(dist, num_samples)`` — samples the laws;
    * ``surrogate(f, dist, draws, *, context=None)`` — evaluates ``f`` at
      ``parts.value`` and combines cost and node term with the DiCE functions the
      graph uses (:mod:`scg._dice`); the value is the (copy-weighted) mean of ``f``;
    * ``est(f, dist, S)`` is exactly ``est.surrogate(f, dist, est.draw(dist, S))``.

    Optional hooks, with their defaults:

    * ``check(dist)`` — raise ``TypeError`` if the estimator does not apply
      (default: ``dist`` must be a ``Distribution``);
    * ``evaluations(dist, num_samples)`` — evaluations of f per batch element
      (default ``num_samples``);
    * ``unbiased`` — class or instance attribute (default ``True``);
    * ``perturbs_batch_elements`` — class attribute (default ``False``): ``True`` when
      the copies change one event position of every batch element at once
      (measure-valued, IndeCateR), so that a graph refuses costs that couple the
      node's batch elements;
    * ``surrogate`` may be overridden instead of ``parts`` by an estimator meant for
      :func:`expectation` only (it then cannot be a graph node).

    Estimators are ``nn.Module`` s, so learned control variates and running
    statistics move with ``.to(device)``, appear in ``.parameters()`` and are saved
    by ``state_dict()``. Running statistics update in training mode, with
    gradients enabled and outside ``torch.func`` transforms; ``.eval()`` or
    ``torch.no_grad()`` freezes them.

    Shapes: samples are ``[S, *batch_shape, *event_shape]``; ``f`` returns
    ``[S, *batch_shape]``. Batch elements are independent expectations: ``f[:, i]``
    may depend only on ``z[:, i]``. Dimensions that ``f`` couples must be event
    dimensions (``torch.distributions.Independent``).

    Example — an antithetic pathwise estimator, usable in ``scg.expectation``, in a
    ``scg.Graph`` and in the exact harness:

        >>> import torch, scg
        >>> from torch.distributions import Normal
        >>> class Antithetic(scg.Estimator):
        ...     def laws(self, dist, num_samples):
        ...         return {"eps": scg.laws.StandardNormal((num_samples, *dist.batch_shape))}
        ...     def parts(self, dist, draws, *, context=None):
        ...         eps = draws["eps"]
        ...         z = dist.loc + dist.scale * torch.stack([eps, -eps])      # [2, S, *batch]
        ...         return scg.Parts(z, copies=torch.tensor([0.5, 0.5]))
        >>> mu = torch.tensor(0.5, requires_grad=True)
        >>> loss = scg.expectation(lambda z: z**2, Normal(mu, 1.0), Antithetic(), num_samples=4)
        >>> loss.backward()   # mu.grad = 2 μ exactly: the antithetic pair cancels the noise
        >>> round(float(mu.grad), 6)
        1.0
    """

    #: Whether ``E[∇ surrogate] = ∇ E[f]`` holds under the estimator's requirements.
    unbiased: bool = True
    #: Whether the copies perturb every batch element at once (see the contract above).
    perturbs_batch_elements: bool = False

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        for name in ("forward", "draw"):
            if name in cls.__dict__:
                raise TypeError(
                    f"{cls.__name__} must not override `{name}`: an estimator implements laws() and "
                    "parts() (or surrogate()), and est(f, dist, S) is surrogate(f, dist, draw(dist, S))."
                )

    def laws(self, dist: Distribution, num_samples: int) -> dict[str, Law]:  # pragma: no cover
        raise NotImplementedError(f"{type(self).__name__} must implement laws(dist, num_samples).")

    def parts(self, dist: Distribution, draws: dict[str, Tensor], *, context: Tensor | None = None) -> Parts:
        raise NotImplementedError(
            f"{type(self).__name__} implements no parts(dist, draws): it can serve scg.expectation "
            "(through its surrogate()) but not be a node of scg.Graph."
        )

    def check(self, dist: Distribution) -> None:
        """Raise ``TypeError`` if the estimator does not apply to ``dist``."""
        if not isinstance(dist, Distribution):
            raise TypeError(f"`dist` must be a torch.distributions.Distribution; got {type(dist).__name__}.")

    def evaluations(self, dist: Distribution, num_samples: int) -> int:
        """Number of evaluations of ``f`` (per batch element) for one estimate."""
        return num_samples

    def draw(
        self,
        dist: Distribution,
        num_samples: int = 1,
        *,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """Draw the random inputs of one estimate: ``{name: law.sample()}`` for ``laws(dist, num_samples)``."""
        self.check(dist)
        check_positive_int("num_samples", num_samples)
        return {name: law.sample(generator) for name, law in self.laws(dist, num_samples).items()}

    def surrogate(
        self,
        f: Cost,
        dist: Distribution,
        draws: dict[str, Tensor],
        *,
        context: Tensor | None = None,
    ) -> Tensor:
        r"""The surrogate ``[*batch_shape]`` of one estimate from its ``draws``.

        .. math:: \hat L = \operatorname{mean}_{rows}\big[□(\log p)\, f(v)\big] + \operatorname{mean}_S[\text{rows}] + \text{extra}

        with ``v``, ``log p``, the copy weights and the term from :meth:`parts`; the
        term is skipped when gradients are disabled (its value is zero).
        """
        self.check(dist)
        return one_node(self.parts(dist, draws, context=context), f, dist)

    def forward(
        self,
        f: Cost,
        dist: Distribution,
        num_samples: int = 1,
        *,
        context: Tensor | None = None,
    ) -> Tensor:
        return self.surrogate(f, dist, self.draw(dist, num_samples), context=context)

    def extra_repr(self) -> str:
        return f"unbiased={self.unbiased}"


def one_node(parts: Parts, f: Cost, dist: Distribution) -> Tensor:
    """``scg.expectation``'s surrogate: the one-node case of the graph's DiCE assembly."""
    value, log_prob, copies = parts.value, parts.log_prob, parts.copies
    lead = 2 if copies is not None else 1
    if log_prob is not None and copies is not None:
        raise ValueError("`Parts` must not have both `log_prob` and `copies`.")
    flat = value.reshape(-1, *value.shape[lead:]) if lead == 2 else value
    # scg.log_prob inside f reads the shared log-density; a ContextVar cannot be traced by
    # torch.compile, so while compiling nothing is shared (scg.log_prob computes it again).
    token = share(dist, flat, log_prob) if log_prob is not None and not compiling() else None
    try:
        cost = evaluate(f, flat, dist, flat.shape[0])
    finally:
        if token is not None:
            unshare(token)
    if lead == 2:
        cost = cost.reshape(*value.shape[:2], *cost.shape[1:])
    axes = [copies, None] if copies is not None else [None]
    out = cost_term(cost, log_prob, axes)
    if parts.term is not None and torch.is_grad_enabled():
        rows, extra = parts.term(cost, f, 1)
        out = out + reduce_rows(rows, [None])
        if extra is not None:
            out = out + extra
    return out


def default_estimator(dist: Distribution, num_samples: int) -> Estimator:
    """The estimator ``estimator=None`` picks, in ``scg.expectation`` and ``scg.Graph`` alike.

    ``Pathwise()`` when ``dist.has_rsample``; otherwise ``ScoreFunction(LeaveOneOut())``
    for ``num_samples ≥ 2`` and ``ScoreFunction()`` for one sample. All three are
    stateless, so a fresh one per call loses nothing.
    """
    from scg.baselines import LeaveOneOut
    from scg.estimators.pathwise import Pathwise
    from scg.estimators.score_function import ScoreFunction

    if not isinstance(dist, Distribution):
        raise TypeError(f"`dist` must be a torch.distributions.Distribution; got {type(dist).__name__}.")
    if dist.has_rsample:
        return Pathwise()
    return ScoreFunction(baseline=LeaveOneOut() if num_samples >= 2 else None)


def expectation(
    f: Cost,
    dist: Distribution,
    estimator: Estimator | None = None,
    *,
    num_samples: int = 1,
    context: Tensor | None = None,
) -> Tensor:
    r"""Surrogate of :math:`E_{q_θ(z)}[f(z)]` whose value is the MC mean and whose gradient is ``estimator``.

    .. math:: \hat L = \frac1S \sum_{s=1}^S f(z_s), \qquad \nabla \hat L = \text{estimator}.

    Args:
        f: cost, maps samples ``[S, *batch_shape, *event_shape]`` to ``[S, *batch_shape]``.
        dist: any ``torch.distributions.Distribution`` (parameters may require grad).
        estimator: an :class:`Estimator`; ``None`` picks :func:`default_estimator`
            (``Pathwise()`` when ``dist.has_rsample``, else ``ScoreFunction`` with a
            leave-one-out baseline for S ≥ 2).
        num_samples: S ≥ 1 (keyword-only).
        context: optional input of learned baselines (e.g. the data x for NVIL).

    Returns:
        Tensor of shape ``dist.batch_shape``: the mean over S of ``f``.

    Example:
        >>> import torch, scg
        >>> from torch.distributions import Normal
        >>> _ = torch.manual_seed(0)
        >>> mu = torch.tensor(1.0, requires_grad=True)
        >>> loss = scg.expectation(lambda z: z**2, Normal(mu, 1.0), num_samples=1000)
        >>> loss.backward()  # mu.grad ≈ 2 μ = 2
    """
    if estimator is None:
        check_positive_int("num_samples", num_samples)
        estimator = default_estimator(dist, num_samples)
    if not isinstance(estimator, Estimator):
        raise TypeError(f"`estimator` must be an scg Estimator; got {type(estimator).__name__}.")
    if not callable(f):
        raise TypeError(f"`f` must be callable; got {type(f).__name__}.")
    if context is not None and not isinstance(context, torch.Tensor):
        raise TypeError(f"`context` must be a tensor or None; got {type(context).__name__}.")
    return estimator(f, dist, num_samples, context=context)
