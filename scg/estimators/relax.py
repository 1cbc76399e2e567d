r"""RELAX (and REBAR as its default control variate) for Bernoulli and categorical latents."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Bernoulli, Categorical, Distribution, OneHotCategorical

from scg._checks import check_positive
from scg._dist import base_of_kind
from scg.estimators.base import Cost, Estimator, Parts, Term
from scg.laws import Law, StandardUniform, one_hot

__all__ = ["RELAX", "REBARControlVariate", "NeuralControlVariate"]

_KINDS = (Bernoulli, Categorical, OneHotCategorical)


class REBARControlVariate(nn.Module):
    r"""REBAR's control variate :math:`c(z) = η\, f(\mathrm{relax}(z/λ))` with learnable η and λ.

    The relaxation is :math:`σ(z/λ)` for Bernoulli latents (z the logistic-noise logits)
    and :math:`\mathrm{softmax}(z/λ)` over the K classes for categorical ones (z the
    Gumbel-perturbed log-probabilities: the Concrete relaxation of the Gumbel-max sample);
    :class:`RELAX` passes ``categorical=True`` in the second case.

    Requires: f accepting relaxed inputs — values in (0, 1), or probability vectors
    ``[..., K]`` — and differentiable there; a cost *function*, so not in a
    :class:`scg.Graph` (whose costs are tensors).

    Properties: RELAX stays unbiased for every η and λ; they are trained by RELAX's
    variance gradient. η = 0 gives the plain score-function estimator.

    Args:
        eta: initial scale η.
        temperature: initial relaxation temperature λ > 0 (learned as log λ).

    References:
        Tucker et al., "REBAR: Low-variance, unbiased gradient estimates for discrete
        latent variable models", NeurIPS 2017, §3 and appendix (categorical variables).
        https://arxiv.org/abs/1703.07370
        Maddison, Mnih & Teh, "The Concrete Distribution", ICLR 2017.
        https://arxiv.org/abs/1611.00712
    """

    #: It evaluates the cost function, so it cannot serve a graph node (whose costs are tensors).
    needs_cost_function = True

    def __init__(self, eta: float = 1.0, temperature: float = 0.5) -> None:
        super().__init__()
        check_positive("temperature", temperature)
        self.eta = nn.Parameter(torch.tensor(float(eta)))
        self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)))

    def forward(self, z: Tensor, f: Cost, *, categorical: bool = False) -> Tensor:
        """``η f(relax(z/λ))``; ``z`` is ``[S, *batch, *event]`` (``[..., K]`` when ``categorical``)."""
        lam = self.log_temperature.exp().to(z)
        relaxed = torch.softmax(z / lam, dim=-1) if categorical else torch.sigmoid(z / lam)
        return self.eta.to(z) * f(relaxed)


class NeuralControlVariate(nn.Module):
    r"""RELAX's free-form control variate :math:`c(z) = r_ρ(z) + η f(\mathrm{relax}(z/λ))`.

    Requires: ``net`` differentiable in z and written with ``torch.func``-compatible
    ops (RELAX differentiates through it per sample and once more for ρ's gradient).

    Properties: RELAX stays unbiased for every ρ (and η, λ); all are trained by
    RELAX's variance gradient, :math:`∇ E‖\hat g‖^2`. With ``rebar=False`` c is a
    function of the node's own relaxed sample only (LAX), which is what a
    :class:`scg.Graph` node can use.

    Example — 3 latents with 4 classes, a net on the relaxed sample:

        >>> import torch, scg
        >>> from torch.distributions import Independent, OneHotCategorical
        >>> class Net(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.lin = torch.nn.Linear(12, 1)
        ...     def forward(self, z):                      # [S, *batch, 3, 4] -> [S, *batch]
        ...         return self.lin(torch.softmax(z, -1).flatten(-2)).squeeze(-1)
        >>> est = scg.RELAX(scg.estimators.NeuralControlVariate(Net()))
        >>> alpha = torch.zeros(3, 4, requires_grad=True)
        >>> q = Independent(OneHotCategorical(logits=alpha), 1)
        >>> scg.expectation(lambda b: b[..., 0].sum(-1), q, est, num_samples=2).backward()

    Args:
        net: maps the continuous sample z (logistic-noise logits ``[S, *batch, *event]``
            for Bernoulli latents; Gumbel-perturbed log-probabilities ``[S, *batch,
            *event, K]`` for categorical ones) to ``[S, *batch]``.
        rebar: include the REBAR term :class:`REBARControlVariate` (the RELAX paper's
            choice).

    References:
        Grathwohl et al., "Backpropagation through the Void: Optimizing control
        variates for black-box gradient estimation", ICLR 2018, §3 (LAX and RELAX).
        https://arxiv.org/abs/1711.00123
    """

    def __init__(self, net: nn.Module, *, rebar: bool = True) -> None:
        super().__init__()
        self.net = net
        self.rebar = REBARControlVariate() if rebar else None

    def forward(self, z: Tensor, f: Cost, *, categorical: bool = False) -> Tensor:
        out = self.net(z)
        return out if self.rebar is None else out + self.rebar(z, f, categorical=categorical)


def _logit(x: Tensor) -> Tensor:
    return torch.log(x) - torch.log1p(-x)


def _conditional_gumbel(log_theta: Tensor, b: Tensor, v: Tensor) -> Tensor:
    r"""A sample of :math:`z = \log θ + g` (g iid Gumbel) given :math:`\arg\max z = b`, from uniforms v.

    :math:`z_b = −\log(−\log v_b)` (the maximum, Gumbel since θ sums to one) and
    :math:`z_i = −\log(−\log v_i / θ_i − \log v_b)` for i ≠ b (Gumbels with location
    log θ_i truncated to :math:`(−∞, z_b)`); differentiable in log θ for fixed b and v.
    """
    e = torch.log(-torch.log(v))  # log(−log v)
    e_top = (b * e).sum(-1, keepdim=True)  # log(−log v_b)
    return b * -e_top + (1 - b) * -torch.logaddexp(e - log_theta, e_top)


class _Sample(NamedTuple):
    """One draw of the RELAX construction, as functions of per-row parameters ``φ [n, *shape]``."""

    value: Tensor  # b, detached: [n, *batch, *event] (one-hot [..., K] for categorical latents)
    phi: Tensor  # the distribution's parameters, attached, [*shape] (logits)
    phi0: Tensor  # their detached per-row copy, [n, *shape]
    relaxed: Callable[[Tensor], tuple[Tensor, Tensor]]  # φ -> (z, z̃)
    log_prob: Callable[[Tensor], Tensor]  # φ -> log p(b | φ), [n, *batch]
    sum_dims: tuple[int, ...]  # dims of [n, *shape] summed into [n, *batch]
    categorical: bool


def _bernoulli_sample(phi: Tensor, u: Tensor, v: Tensor, sum_dims: tuple[int, ...]) -> _Sample:
    eps = torch.finfo(u.dtype).eps
    phi0 = phi.detach().expand(u.shape).clone()
    b = (phi0 + _logit(u) > 0).to(u.dtype)

    def relaxed(phi_: Tensor) -> tuple[Tensor, Tensor]:
        theta = torch.sigmoid(phi_)
        z = phi_ + _logit(u)
        v_cond = v * (b - 1) * (theta - 1) + b * (v * theta + 1 - theta)
        return z, phi_ + _logit(v_cond.clamp(eps, 1 - eps))

    def log_prob(phi_: Tensor) -> Tensor:
        log_p = b * F.logsigmoid(phi_) + (1 - b) * F.logsigmoid(-phi_)
        return log_p.sum(sum_dims) if sum_dims else log_p

    return _Sample(b, phi, phi0, relaxed, log_prob, sum_dims, False)


def _categorical_sample(alpha: Tensor, w: Tensor, u: Tensor, v: Tensor, sum_dims: tuple[int, ...]) -> _Sample:
    alpha0 = alpha.detach().expand(u.shape).clone()
    log_theta0 = torch.log_softmax(alpha0, dim=-1)
    # b by inverse CDF of w (jumps at the cumulative probabilities), then z | b: the same joint
    # law as b = argmax(log θ + g), and g = z − log θ is the Gumbel noise that z's gradient needs.
    index = (w.unsqueeze(-1) >= _cumulative(log_theta0)).sum(-1)
    b = one_hot(index, u.shape[-1], u.dtype)
    g = _conditional_gumbel(log_theta0, b, u) - log_theta0

    def relaxed(alpha_: Tensor) -> tuple[Tensor, Tensor]:
        log_theta = torch.log_softmax(alpha_, dim=-1)
        return log_theta + g, _conditional_gumbel(log_theta, b, v)

    def log_prob(alpha_: Tensor) -> Tensor:
        return (b * torch.log_softmax(alpha_, dim=-1)).sum(sum_dims)

    return _Sample(b, alpha, alpha0, relaxed, log_prob, sum_dims, True)


def _cumulative(log_theta: Tensor) -> Tensor:
    """The K − 1 inner cumulative probabilities ``[..., K − 1]``: where b = argmax jumps in w."""
    return log_theta.exp().cumsum(-1)[..., :-1]


def _accepts_categorical(module: nn.Module) -> bool:
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return True
    return any(p.name == "categorical" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


class RELAX(Estimator):
    r"""RELAX estimator for Bernoulli and categorical latents, with REBAR's control variate by default.

    With a continuous sample z whose discretisation is the latent, :math:`b = H(z)`, and
    :math:`\tilde z \sim p(z | b)` reparameterised by independent noise:

    .. math::
        \hat g_φ = [f(b) − c_ψ(\tilde z)]\, ∇_φ \log p(b | φ) + ∇_φ c_ψ(z) − ∇_φ c_ψ(\tilde z)

    * Bernoulli, logits φ, θ = σ(φ): :math:`z = φ + \log u − \log(1 − u)`,
      :math:`b = 1[z > 0]`, :math:`\tilde z = φ + \mathrm{logit}\, v'` with
      :math:`v' = v(b − 1)(θ − 1) + b(vθ + 1 − θ)`; u, v ~ U(0, 1).
    * Categorical / OneHotCategorical with K classes, probabilities θ = softmax(φ):
      :math:`z = \log θ + g` with g iid Gumbel, :math:`b = \mathrm{onehot}(\arg\max z)`,
      and :math:`\tilde z_b = −\log(−\log v_b)`,
      :math:`\tilde z_i = −\log(−\log v_i / θ_i − \log v_b)` (i ≠ b) — conditional Gumbel
      resampling, v ~ U(0, 1)^K. The triple is drawn as b first (inverse CDF of one
      uniform w), then z | b and z̃ | b by that conditional sampler (uniforms u, v):
      the same joint law of (b, z, z̃); ∇c(z) is taken along
      :math:`z = \log θ + g` with the Gumbel noise :math:`g = z − \log θ` held fixed.
      (The discontinuity in the noise is then at the cumulative probabilities of w,
      which lets the exact harness integrate the estimator.)

    The control variate's parameters ψ are trained to minimise the estimator's
    variance :math:`E‖\hat g‖^2` through the same backward pass: the surrogate
    carries a zero-valued term whose gradient w.r.t. ψ is
    :math:`∇_ψ \frac1S \sum_s ‖\hat g_s‖^2` (computed with ``torch.func``; the term is
    spread evenly over batch elements so that ``loss.sum()`` gives exactly that
    gradient). Step ψ with any optimiser (``estimator.parameters()``).

    Requires: Bernoulli, Categorical or OneHotCategorical (optionally ``Independent``,
    e.g. 20 latents × 10 classes); f accepting relaxed inputs (values in (0, 1), or
    probability vectors ``[..., K]``), differentiable there, and written with
    ``torch.func``-compatible ops. For ``Categorical`` f receives one-hot vectors
    ``[S, *batch, *event, K]``, not indices (as for :class:`scg.GumbelSoftmax`).

    Properties: unbiased for any ψ; 3 evaluations of f per sample (f(b), c(z),
    c(z̃)) plus their gradients; ψ's update costs a second-order pass. Noise per
    latent: 2 uniforms (Bernoulli), 2K + 1 (K classes).

    In a :class:`scg.Graph` the learning signal f(b) is the sum of the costs
    downstream of the node, which are tensors, not a function: the control variate
    must be a function of the node's own relaxed sample (LAX-style),
    ``RELAX(NeuralControlVariate(net, rebar=False))``; REBAR's ``f(relax(z/λ))`` is
    refused there with an error saying so.

    Example:
        >>> import torch, scg
        >>> from torch.distributions import Bernoulli, Independent, OneHotCategorical
        >>> logits = torch.zeros(4, requires_grad=True)
        >>> q = Independent(Bernoulli(logits=logits), 1)
        >>> est = scg.RELAX()                        # REBAR's control variate, η and λ learned
        >>> loss = scg.expectation(lambda b: (b - 0.45).pow(2).sum(-1), q, est, num_samples=4)
        >>> loss.backward()                          # logits.grad; est.parameters() hold ψ's gradient
        >>> alpha = torch.zeros(20, 10, requires_grad=True)   # 20 latents with 10 classes each
        >>> q = Independent(OneHotCategorical(logits=alpha), 1)
        >>> target = torch.linspace(0, 1, 10)
        >>> loss = scg.expectation(lambda b: ((b * target).sum(-1) - 0.3).pow(2).sum(-1), q, scg.RELAX())
        >>> loss.backward()

    Args:
        control_variate: module called as ``cv(z, f) -> [S, *batch]`` for Bernoulli
            latents and ``cv(z, f, categorical=True)`` for categorical ones; default
            :class:`REBARControlVariate` (REBAR). Use :class:`NeuralControlVariate`
            for RELAX's free-form c.

    References:
        Grathwohl et al., "Backpropagation through the Void: Optimizing control
        variates for black-box gradient estimation", ICLR 2018, §3 and appendix
        (categorical relaxation). https://arxiv.org/abs/1711.00123
        Tucker et al., "REBAR: Low-variance, unbiased gradient estimates for discrete
        latent variable models", NeurIPS 2017, appendix (categorical variables).
        https://arxiv.org/abs/1703.07370
        Mohamed et al., "Monte Carlo Gradient Estimation in Machine Learning", JMLR
        2020, §7 (control variates). https://arxiv.org/abs/1906.10652
    """

    def __init__(self, control_variate: nn.Module | None = None) -> None:
        super().__init__()
        if control_variate is not None and not isinstance(control_variate, nn.Module):
            raise TypeError(f"`control_variate` must be an nn.Module; got {type(control_variate).__name__}.")
        self.control_variate = control_variate if control_variate is not None else REBARControlVariate()

    def check(self, dist: Distribution) -> None:
        base = _base(dist)
        if not isinstance(base, Bernoulli) and not _accepts_categorical(self.control_variate):
            raise TypeError(
                "`control_variate` must accept the keyword `categorical` for categorical latents "
                f"(it is called as cv(z, f, categorical=True)); got {type(self.control_variate).__name__}"
                f".forward{inspect.signature(self.control_variate.forward)}."
            )

    def evaluations(self, dist: Distribution, num_samples: int) -> int:
        return 3 * num_samples

    def laws(self, dist: Distribution, num_samples: int) -> dict[str, Law]:
        base = _base(dist)
        logits = base.logits.detach()
        dtype, device = logits.dtype, logits.device
        if isinstance(base, Bernoulli):
            shape = (num_samples, *dist.batch_shape, *dist.event_shape)
            theta = torch.sigmoid(logits).expand(shape)
            return {
                "u": StandardUniform(shape, dtype, device, points=(1 - theta).unsqueeze(-1)),
                "v": StandardUniform(shape, dtype, device),
            }
        shape = (num_samples, *logits.shape)
        cumulative = _cumulative(torch.log_softmax(logits, dim=-1)).expand(*shape[:-1], shape[-1] - 1)
        return {
            "w": StandardUniform(shape[:-1], dtype, device, points=cumulative),
            "u": StandardUniform(shape, dtype, device),
            "v": StandardUniform(shape, dtype, device),
        }

    def parts(self, dist: Distribution, draws: dict[str, Tensor], *, context: Tensor | None = None) -> Parts:
        base = _base(dist)
        u, v = draws["u"], draws["v"]
        phi = base.logits.expand(u.shape[1:])
        sum_dims = tuple(range(1 + len(dist.batch_shape), u.dim()))
        if isinstance(base, Bernoulli):
            sample = _bernoulli_sample(phi, u, v, sum_dims)
        else:
            sample = _categorical_sample(phi, draws["w"], u, v, sum_dims)
        return Parts(sample.value, term=_term(self.control_variate, sample))


def _base(dist: Distribution) -> Bernoulli | Categorical | OneHotCategorical:
    base, _ = base_of_kind(
        dist,
        _KINDS,
        "RELAX",
        "Bernoulli or Categorical/OneHotCategorical",
        " Use ScoreFunction or MeasureValued for other discrete distributions.",
    )
    return base  # type: ignore[return-value]


def _term(cv: nn.Module, sample: _Sample) -> Term:
    """The node term: rows ``(φ − stop φ)·ĝ`` and the zero-valued ψ term with gradient ∇_ψ mean_s ‖ĝ_s‖²."""
    phi, phi0, sum_dims = sample.phi, sample.phi0, sample.sum_dims
    kwargs = {"categorical": True} if sample.categorical else {}

    def term(signal: Tensor, f: Cost | None, sample_dims: int) -> tuple[Tensor, Tensor | None]:
        cost_fn = f if f is not None else _no_cost_function
        f_b = signal.detach()
        # ψ: the trainable parameters (frozen ones need no variance gradient, nor its second-order pass)
        psi: dict[str, Tensor] = {n: p for n, p in cv.named_parameters() if p.requires_grad}

        def checked_cv(params: dict[str, Tensor], z: Tensor) -> Tensor:
            out = torch.func.functional_call(cv, params, (z, cost_fn), kwargs)
            if tuple(out.shape) != tuple(f_b.shape):
                raise ValueError(
                    f"`control_variate` must return [S, *batch_shape] = {list(f_b.shape)}; got {list(out.shape)}."
                )
            return out

        def inner(phi_: Tensor, params: dict[str, Tensor]) -> Tensor:
            z, z_tilde = sample.relaxed(phi_)
            # The learning signal is constant in φ but not in ψ: c at z̃(φ0), φ0 a closure constant.
            signal_ = f_b - checked_cv(params, sample.relaxed(phi0)[1])
            return (
                signal_ * sample.log_prob(phi_) + checked_cv(params, z) - checked_cv(params, z_tilde)
            ).sum()

        def g_hat(params: dict[str, Tensor]) -> Tensor:
            return torch.func.grad(inner)(phi0, params)  # [n, *shape]: per-row estimates

        extra = None
        if psi:

            def mean_square(params: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
                g = g_hat(params)
                return (g * g).sum() / math.prod(f_b.shape[:sample_dims]), g

            grad_psi, g = torch.func.grad(mean_square, has_aux=True)(psi)
            total = sum(((p - p.detach()) * grad_psi[n].detach()).sum() for n, p in psi.items())
            extra = (total / max(1, math.prod(f_b.shape[1:]))).expand(f_b.shape[1:])
        else:
            g = g_hat({})
        rows = (phi - phi.detach()) * g.detach()
        return (rows.sum(sum_dims) if sum_dims else rows), extra

    return term


def _no_cost_function(z: Tensor) -> Tensor:
    raise TypeError(
        "REBAR's control variate needs the cost as a function of relaxed samples, f(relax(z/λ)), which a "
        "scg.Graph does not have (its costs are tensors); in a Graph use "
        "RELAX(NeuralControlVariate(net, rebar=False)), a control variate of the node's own relaxed sample."
    )
