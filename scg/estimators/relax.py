"""RELAX (and REBAR as its default control variate) for Bernoulli latents."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Distribution

from scg._checks import check_positive
from scg.estimators.base import Cost, Estimator, Parts
from scg.estimators.disarm import bernoulli_base
from scg.laws import Law, StandardUniform

__all__ = ["RELAX", "REBARControlVariate", "NeuralControlVariate"]


class REBARControlVariate(nn.Module):
    r"""REBAR's control variate :math:`c(z) = η\, f(σ(z/λ))` with learnable η and λ.

    Requires f to accept relaxed inputs in (0, 1) and be differentiable there.

    Args:
        eta: initial scale η.
        temperature: initial relaxation temperature λ > 0 (learned as log λ).
    """

    #: It evaluates the cost function, so it cannot serve a graph node (whose costs are tensors).
    needs_cost_function = True

    def __init__(self, eta: float = 1.0, temperature: float = 0.5) -> None:
        super().__init__()
        check_positive("temperature", temperature)
        self.eta = nn.Parameter(torch.tensor(float(eta)))
        self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)))

    def forward(self, z: Tensor, f: Cost) -> Tensor:
        lam = self.log_temperature.exp().to(z)
        return self.eta.to(z) * f(torch.sigmoid(z / lam))


class NeuralControlVariate(nn.Module):
    r"""RELAX's free-form control variate :math:`c(z) = η f(σ(z/λ)) + r_ρ(z)`.

    Args:
        net: maps relaxed samples ``[S, *batch, *event]`` to ``[S, *batch]``.
        rebar: include the REBAR term (the RELAX paper's choice).
    """

    def __init__(self, net: nn.Module, *, rebar: bool = True) -> None:
        super().__init__()
        self.net = net
        self.rebar = REBARControlVariate() if rebar else None

    def forward(self, z: Tensor, f: Cost) -> Tensor:
        out = self.net(z)
        return out if self.rebar is None else out + self.rebar(z, f)


def _logit(x: Tensor) -> Tensor:
    return torch.log(x) - torch.log1p(-x)


class RELAX(Estimator):
    r"""RELAX estimator for Bernoulli latents, with REBAR's control variate by default.

    With :math:`z = φ + \log u − \log(1 − u)`, :math:`b = H(z)` and :math:`\tilde z \sim p(z | b)`
    (:math:`v' = v(b − 1)(θ − 1) + b(vθ + 1 − θ)`, :math:`\tilde z = φ + \mathrm{logit}\,v'`, θ = σ(φ)):

    .. math::
        \hat g_φ = [f(b) − c_ψ(\tilde z)]\, ∇_φ \log p(b | φ) + ∇_φ c_ψ(z) − ∇_φ c_ψ(\tilde z)

    The control variate's parameters ψ are trained to minimise the estimator's
    variance :math:`E‖\hat g‖^2` through the same backward pass: the surrogate
    carries a zero-valued term whose gradient w.r.t. ψ is
    :math:`∇_ψ \sum_s ‖\hat g_s‖^2` (computed with ``torch.func``; the term is spread
    evenly over batch elements so that ``loss.sum()`` gives exactly that gradient).
    Step ψ with any optimiser (``estimator.parameters()``).

    Requires: Bernoulli (optionally ``Independent``); f accepting relaxed inputs in
    (0, 1), differentiable there, and written with ``torch.func``-compatible ops.

    Properties: unbiased for any ψ; 3 evaluations of f per sample (f(b), c(z),
    c(z̃)) plus their gradients; ψ's update costs a second-order pass.

    In a :class:`scg.Graph` the learning signal f(b) is the sum of the costs
    downstream of the node, which are tensors, not a function: the control variate
    must be a function of the node's own relaxed sample (LAX-style),
    ``RELAX(NeuralControlVariate(net, rebar=False))``; REBAR's ``f(σ(z/λ))`` is
    refused there with an error saying so.

    Example:
        >>> import torch, scg
        >>> from torch.distributions import Bernoulli, Independent
        >>> logits = torch.zeros(4, requires_grad=True)
        >>> q = Independent(Bernoulli(logits=logits), 1)
        >>> est = scg.RELAX()                        # REBAR's control variate, η and λ learned
        >>> loss = scg.expectation(lambda b: (b - 0.45).pow(2).sum(-1), q, est, num_samples=4)
        >>> loss.backward()                          # logits.grad; est.parameters() hold ψ's gradient

    Args:
        control_variate: module called as ``cv(z, f) -> [S, *batch]``; default
            :class:`REBARControlVariate` (REBAR). Use :class:`NeuralControlVariate`
            for RELAX's free-form c.

    References:
        Grathwohl et al., "Backpropagation through the Void: Optimizing control
        variates for black-box gradient estimation", ICLR 2018. https://arxiv.org/abs/1711.00123
        Tucker et al., "REBAR: Low-variance, unbiased gradient estimates for discrete
        latent variable models", NeurIPS 2017. https://arxiv.org/abs/1703.07370
    """

    def __init__(self, control_variate: nn.Module | None = None) -> None:
        super().__init__()
        if control_variate is not None and not isinstance(control_variate, nn.Module):
            raise TypeError(f"`control_variate` must be an nn.Module; got {type(control_variate).__name__}.")
        self.control_variate = control_variate if control_variate is not None else REBARControlVariate()

    def check(self, dist: Distribution) -> None:
        bernoulli_base(dist, "RELAX")

    def evaluations(self, dist: Distribution, num_samples: int) -> int:
        return 3 * num_samples

    def laws(self, dist: Distribution, num_samples: int) -> dict[str, Law]:
        base, _ = bernoulli_base(dist, "RELAX")
        shape = (num_samples, *dist.batch_shape, *dist.event_shape)
        theta = torch.sigmoid(base.logits.detach()).expand(shape)
        kw = {"dtype": theta.dtype, "device": theta.device}
        return {
            "u": StandardUniform(shape=shape, points=(1 - theta).unsqueeze(-1), **kw),
            "v": StandardUniform(shape=shape, **kw),
        }

    def parts(self, dist: Distribution, draws: dict[str, Tensor], *, context: Tensor | None = None) -> Parts:
        base, _ = bernoulli_base(dist, "RELAX")
        u, v = draws["u"], draws["v"]
        eps = torch.finfo(u.dtype).eps
        event_dims = tuple(range(-len(dist.event_shape), 0))
        phi = base.logits.expand(u.shape[1:])
        phi0 = phi.detach().expand(u.shape).clone()
        b = (phi0 + _logit(u) > 0).to(u.dtype)
        cv = self.control_variate

        def term(signal: Tensor, f: Cost | None, sample_dims: int) -> tuple[Tensor, Tensor | None]:
            cost_fn = f if f is not None else _no_cost_function
            f_b = signal.detach()
            psi = dict(cv.named_parameters())

            def checked_cv(params: dict[str, Tensor], z: Tensor) -> Tensor:
                out = torch.func.functional_call(cv, params, (z, cost_fn))
                if tuple(out.shape) != tuple(f_b.shape):
                    raise ValueError(
                        f"`control_variate` must return [S, *batch_shape] = {list(f_b.shape)}; got {list(out.shape)}."
                    )
                return out

            def relaxed(phi_: Tensor) -> tuple[Tensor, Tensor]:
                theta = torch.sigmoid(phi_)
                z = phi_ + _logit(u)
                v_cond = v * (b - 1) * (theta - 1) + b * (v * theta + 1 - theta)
                return z, phi_ + _logit(v_cond.clamp(eps, 1 - eps))

            def inner(phi_: Tensor, params: dict[str, Tensor]) -> Tensor:
                z, z_tilde = relaxed(phi_)
                log_p = b * F.logsigmoid(phi_) + (1 - b) * F.logsigmoid(-phi_)
                if event_dims:
                    log_p = log_p.sum(event_dims)
                # The learning signal is constant in φ but not in ψ: c at z̃(φ0), φ0 a closure constant.
                signal_ = f_b - checked_cv(params, relaxed(phi0)[1])
                return (signal_ * log_p + checked_cv(params, z) - checked_cv(params, z_tilde)).sum()

            def g_hat(params: dict[str, Tensor]) -> Tensor:
                return torch.func.grad(inner)(phi0, params)  # [n, *batch, *event]: per-row estimates

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
            return (rows.sum(event_dims) if event_dims else rows), extra

        return Parts(b, term=term)


def _no_cost_function(z: Tensor) -> Tensor:
    raise TypeError(
        "REBAR's control variate needs the cost as a function of relaxed samples, f(σ(z/λ)), which a "
        "scg.Graph does not have (its costs are tensors); in a Graph use "
        "RELAX(NeuralControlVariate(net, rebar=False)), a control variate of the node's own relaxed sample."
    )
