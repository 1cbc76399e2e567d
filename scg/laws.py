"""Laws of the random inputs an estimator draws.

An estimator declares *what* it draws as a dict of :class:`Law` objects
(``Estimator.laws``); drawing is then generic (``Law.sample``), and the exact
harness (:mod:`scg.testing`) integrates over the same laws with quadrature or
enumeration instead of sampling. This is how one declaration serves both the
Monte Carlo estimator and its exact check (mc_gradients' "samples in" design:
draws can be made once and shared across estimators — common random numbers).

All draws are made out of place (``torch.randn``/``torch.rand``/``dist.sample``),
so code calling an estimator can be ``torch.func.vmap``-ed with
``randomness="different"``.

Every law is a product of independent scalar laws, one per element of ``shape``
(except :class:`FromDistribution`, whose elements follow ``dist``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.distributions import Categorical, Distribution, Independent, OneHotCategorical

__all__ = [
    "Law",
    "StandardNormal",
    "StandardUniform",
    "Rayleigh",
    "DoubleSidedMaxwell",
    "FromDistribution",
    "sample_from",
    "draw",
    "noise_like",
]


@dataclass(frozen=True, eq=False)
class Law:
    """Base class: iid scalar draws filling a tensor of ``shape``.

    Subclasses implement :meth:`sample` and :meth:`log_density` (of one scalar, for
    quadrature) and state their ``support`` as an interval.
    """

    shape: tuple[int, ...]
    dtype: torch.dtype = torch.float32
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    support: tuple[float, float] = (-math.inf, math.inf)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def log_density(self, x: Tensor) -> Tensor:  # pragma: no cover
        """Log density of one scalar element at ``x`` (elementwise)."""
        raise NotImplementedError

    def breakpoints(self) -> Tensor | None:
        """Per-element points ``[*shape, k]`` where an integrand may jump (or ``None``)."""
        return None


@dataclass(frozen=True, eq=False)
class StandardNormal(Law):
    """ε ~ N(0, 1) elementwise."""

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        return torch.randn(self.shape, dtype=self.dtype, device=self.device, generator=generator)

    def log_density(self, x: Tensor) -> Tensor:
        return -0.5 * x * x - 0.5 * math.log(2 * math.pi)


@dataclass(frozen=True, eq=False)
class StandardUniform(Law):
    """u ~ U(0, 1) elementwise, with optional per-element breakpoints ``[*shape, k]``.

    Breakpoints tell the exact harness where the estimator's integrand is
    discontinuous in u (e.g. DisARM's ``u = σ(φ)`` and ``u = 1 − σ(φ)``).
    Draws are kept inside the open interval ``(tiny, 1 − eps/2)`` so that
    ``log u`` and ``log(1 − u)`` are finite.
    """

    points: Tensor | None = None
    support: tuple[float, float] = (0.0, 1.0)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        u = torch.rand(self.shape, dtype=self.dtype, device=self.device, generator=generator)
        tiny = torch.finfo(self.dtype).tiny
        return u.clamp(min=tiny)

    def log_density(self, x: Tensor) -> Tensor:
        return torch.zeros_like(x)

    def breakpoints(self) -> Tensor | None:
        return self.points


@dataclass(frozen=True, eq=False)
class Rayleigh(Law):
    """W with density ``w exp(−w²/2)`` on w > 0 (Weibull with shape 2, scale √2).

    Mohamed et al. (2020, §6.3) call it Weibull(2, ½); it is the positive part of
    the weak derivative of N(μ, σ²) with respect to μ. Drawn as the norm of two
    standard normals.
    """

    support: tuple[float, float] = (0.0, math.inf)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        e = torch.randn((*self.shape, 2), dtype=self.dtype, device=self.device, generator=generator)
        return e.norm(dim=-1)

    def log_density(self, x: Tensor) -> Tensor:
        return torch.log(x) - 0.5 * x * x


@dataclass(frozen=True, eq=False)
class DoubleSidedMaxwell(Law):
    """M with density ``m² exp(−m²/2) / √(2π)`` on ℝ.

    The positive part of the weak derivative of N(μ, σ²) with respect to σ
    (Mohamed et al. 2020, §6.3). Drawn as ``±‖(e₁, e₂, e₃)‖`` with a fair sign; with
    U ~ U(0, 1) independent, ``M·U ~ N(0, 1)`` — the coupling used for ∇σ.
    """

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        e = torch.randn((*self.shape, 4), dtype=self.dtype, device=self.device, generator=generator)
        radius = e[..., :3].norm(dim=-1)
        return torch.where(e[..., 3] >= 0, radius, -radius)

    def log_density(self, x: Tensor) -> Tensor:
        return 2 * torch.log(x.abs()) - 0.5 * x * x - 0.5 * math.log(2 * math.pi)


@dataclass(frozen=True, eq=False)
class FromDistribution(Law):
    """z ~ ``dist`` (parameters detached), ``sample_shape = shape[:1]``.

    The law of the samples a score-function-type estimator draws. The harness
    enumerates its support (discrete) or integrates against its density
    (continuous), element by element of ``batch_shape + event_shape``.
    """

    dist: Distribution | None = None

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        return sample_from(distribution_of(self, generator), self.shape[0])


def distribution_of(law: Law, generator: torch.Generator | None) -> Distribution:
    """The ``dist`` a distribution-backed law samples from; such draws use torch's global generator."""
    dist = getattr(law, "dist", None)
    if dist is None:  # pragma: no cover - constructed by estimators only
        raise ValueError(f"`dist` must be given for {type(law).__name__}.")
    if generator is not None:
        raise ValueError(
            f"`generator` is not supported for {type(law).__name__} draws (torch distributions "
            "sample from the global generator); seed with torch.manual_seed instead."
        )
    return dist


def sample_from(dist: Distribution, num_samples: int) -> Tensor:
    """``num_samples`` draws of ``dist`` (no gradient), ``[S, *batch_shape, *event_shape]``, vmap-safe."""
    return draw(dist, (num_samples,))


def draw(dist: Distribution, sample_shape: tuple[int, ...]) -> Tensor:
    """Draws of ``dist`` of shape ``[*sample_shape, *batch_shape, *event_shape]``, without gradient.

    ``dist.sample(sample_shape)`` under ``torch.no_grad()``, except for
    ``OneHotCategorical`` (also inside ``Independent``): a categorical index turned
    one-hot with comparisons (torch's ``one_hot`` is not vmap-compatible).
    """
    with torch.no_grad():
        base = dist
        while isinstance(base, Independent):
            base = base.base_dist
        if isinstance(base, OneHotCategorical):
            index = Categorical(logits=base.logits).sample(sample_shape)
            return one_hot(index, base.logits.shape[-1], base.logits.dtype)
        return dist.sample(sample_shape)


def one_hot(index: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """One-hot vectors ``[..., K]`` from indices, written with comparisons (vmap-compatible)."""
    classes = torch.arange(num_classes, device=index.device)
    return (index.unsqueeze(-1) == classes).to(dtype)


def noise_like(cls: type[Law], shape: tuple[int, ...], ref: Tensor) -> Tensor:
    """Draws of the parameter-free law ``cls`` of ``shape``, dtype/device of ``ref``.

    ``law_like(cls, shape, ref).sample()``; standard normals are drawn directly
    (``torch.randn``, the same draws) without building the law object — the common
    case of a pathwise estimator's hot path.
    """
    if cls is StandardNormal:
        return torch.randn(shape, dtype=ref.dtype, device=ref.device)
    return law_like(cls, shape, ref).sample()


def law_like(cls: type[Law], shape: tuple[int, ...], ref: Tensor, **kwargs: object) -> Law:
    """Construct ``cls`` with ``dtype``/``device`` taken from the tensor ``ref``."""
    return cls(shape=tuple(shape), dtype=ref.dtype, device=ref.device, **kwargs)  # type: ignore[arg-type]


@dataclass(frozen=True, eq=False)
class WithoutReplacement(Law):
    r"""Ordered draws of k distinct classes from ``Categorical(logits)`` without replacement.

    ``shape = (S, *batch, k)``: for every sample and batch element, the classes in the
    order they are drawn (long indices), the first with probability :math:`p_i`, each
    next one from the classes left, renormalised (Plackett–Luce):

    .. math:: P(x_1, …, x_k) = \prod_{j=1}^k \frac{p_{x_j}}{1 − \sum_{i<j} p_{x_i}}.

    Drawn by the Gumbel-top-k trick: the indices of the k largest of
    :math:`\log p_i + G_i`, :math:`G_i` iid standard Gumbel (out of place, so
    vmap-safe). The first index alone is a draw of the categorical. The exact harness
    enumerates the :math:`K!/(K − k)!` ordered tuples of every element with these
    probabilities.

    References:
        Kool, van Hoof & Welling, "Stochastic Beams and Where to Find Them: The
        Gumbel-Top-k Trick for Sampling Sequences Without Replacement", ICML 2019.
        https://arxiv.org/abs/1903.06059
    """

    logits: Tensor | None = None  # [*batch, K], detached

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        logits = self.log_probs()
        k = self.shape[-1]
        u = torch.rand(
            (*self.shape[:-1], logits.shape[-1]),
            dtype=logits.dtype,
            device=logits.device,
            generator=generator,
        )
        tiny = torch.finfo(logits.dtype).tiny
        gumbel = -torch.log(-torch.log(u.clamp(min=tiny)))
        return torch.topk(logits + gumbel, k, dim=-1).indices

    def log_probs(self) -> Tensor:
        """The normalised class log-probabilities ``[*batch, K]`` (detached)."""
        if self.logits is None:  # pragma: no cover - constructed by estimators only
            raise ValueError("`logits` must be given for WithoutReplacement.")
        return torch.log_softmax(self.logits.detach(), dim=-1)


__all__ += ["WithoutReplacement"]
