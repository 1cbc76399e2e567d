r"""Normalizing-flow transforms: planar, radial, inverse autoregressive (MADE), affine coupling.

Each is a ``torch.distributions.Transform`` with ``event_dim = 1``, a correct
``log_abs_det_jacobian`` and an inverse. Stacked on a base Normal inside a
``TransformedDistribution``, they give a posterior whose ``rsample`` and
``log_prob`` come from torch:

.. math:: \log q(z_K) = \log q_0(z_0) − \sum_{k=1}^K \log\Big|\det \frac{∂f_k}{∂z_{k−1}}\Big|

Parameters are tensors (or modules) given at construction; they may carry batch
dimensions that broadcast against the input's leading dimensions, which is how
amortised flows (parameters computed from x by the encoder) are expressed. The
transforms cache their last ``(x, y)`` pair (``cache_size=1``): ``log_prob`` of a
sample just drawn by ``rsample`` (or by scg's ``Pathwise``) reuses the forward pass
instead of inverting. Inverses: radial and coupling in closed form, IAF by D
sequential passes, planar by 1-D bisection along w (its forward map moves z only
along û, and the projection onto w is monotone) followed by one Newton step so
that the inverse is differentiable (implicit-function gradient) — score-function
estimators and STL/DReG evaluate ``log_prob`` of samples that are not cached.

References:
    Rezende & Mohamed, "Variational Inference with Normalizing Flows", ICML 2015.
    https://arxiv.org/abs/1505.05770 (planar, radial; invertibility conditions in App. A)
    Kingma et al., "Improved Variational Inference with Inverse Autoregressive Flow",
    NeurIPS 2016. https://arxiv.org/abs/1606.04934
    Germain et al., "MADE: Masked Autoencoder for Distribution Estimation", ICML 2015.
    https://arxiv.org/abs/1502.03509
    Dinh, Sohl-Dickstein & Bengio, "Density estimation using Real NVP", ICLR 2017.
    https://arxiv.org/abs/1605.08803
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Transform, constraints
from torch.nn.functional import softplus

from scg.checks import check_positive_int

__all__ = ["PlanarTransform", "RadialTransform", "MADE", "IAFTransform", "AffineCouplingTransform"]


class PlanarTransform(Transform):
    r"""Planar flow :math:`f(z) = z + \hat u\, \tanh(w^\top z + b)`.

    .. math::
        \hat u = u + \big(m(w^\top u) − w^\top u\big) \frac{w}{‖w‖^2}, \quad m(a) = −1 + \mathrm{softplus}(a),
        \qquad \log|\det J| = \log\big|1 + \hat u^\top w\, \tanh'(w^\top z + b)\big|

    The correction :math:`\hat u` enforces :math:`w^\top \hat u ≥ −1`, which makes f
    invertible (Rezende & Mohamed 2015, App. A).

    Args:
        u: ``[*batch, D]`` (raw; corrected to û internally).
        w: ``[*batch, D]``.
        b: ``[*batch]``.
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(self, u: Tensor, w: Tensor, b: Tensor, *, cache_size: int = 1) -> None:
        super().__init__(cache_size=cache_size)
        wu = (w * u).sum(-1, keepdim=True)
        self.u_hat = u + (softplus(wu) - 1 - wu) * w / (w * w).sum(-1, keepdim=True)
        self.w, self.b = w, b

    def __eq__(self, other: object) -> bool:
        return self is other

    def _call(self, x: Tensor) -> Tensor:
        a = (x * self.w).sum(-1) + self.b
        return x + self.u_hat * torch.tanh(a).unsqueeze(-1)

    def _inverse(self, y: Tensor) -> Tensor:
        # y = x + û tanh(w·x + b)  =>  α = w·x solves  α + (w·û) tanh(α + b) = w·y  (monotone in α).
        wu = (self.w * self.u_hat).sum(-1)
        target = (y * self.w).sum(-1)
        span = wu.abs().expand_as(target)
        lo, hi = target - span - 1.0, target + span + 1.0
        b = self.b.expand_as(target)
        for _ in range(64):
            mid = 0.5 * (lo + hi)
            above = mid + wu * torch.tanh(mid + b) > target
            lo, hi = torch.where(above, lo, mid), torch.where(above, mid, hi)
        alpha = (0.5 * (lo + hi)).detach()
        # One Newton step from the root: the value is unchanged (the residual is ~0) and the
        # gradient w.r.t. y and the parameters is the implicit-function gradient of the root.
        th = torch.tanh(alpha + b)
        alpha = alpha - (alpha + wu * th - target) / (1 + wu * (1 - th * th))
        return y - self.u_hat * torch.tanh(alpha + b).unsqueeze(-1)

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        a = (x * self.w).sum(-1) + self.b
        psi = 1 - torch.tanh(a) ** 2
        return torch.log((1 + psi * (self.w * self.u_hat).sum(-1)).abs())


class RadialTransform(Transform):
    r"""Radial flow :math:`f(z) = z + \hat β\, h(r)\,(z − z_0)`, :math:`r = ‖z − z_0‖`, :math:`h = 1/(\hat α + r)`.

    .. math::
        \hat α = \mathrm{softplus}(α), \quad \hat β = −\hat α + \mathrm{softplus}(β), \qquad
        \log|\det J| = (D − 1)\log(1 + \hat β h) + \log(1 + \hat β h − \hat β h^2 r)

    :math:`\hat β ≥ −\hat α` makes f invertible; the inverse solves a quadratic in r.

    Args:
        z0: centre ``[*batch, D]``.
        alpha: raw α ``[*batch]``.
        beta: raw β ``[*batch]``.
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(self, z0: Tensor, alpha: Tensor, beta: Tensor, *, cache_size: int = 1) -> None:
        super().__init__(cache_size=cache_size)
        self.z0 = z0
        self.alpha = softplus(alpha)
        self.beta = -self.alpha + softplus(beta)

    def __eq__(self, other: object) -> bool:
        return self is other

    def _call(self, x: Tensor) -> Tensor:
        d = x - self.z0
        r = d.norm(dim=-1)
        return x + (self.beta / (self.alpha + r)).unsqueeze(-1) * d

    def _inverse(self, y: Tensor) -> Tensor:
        d = y - self.z0
        ry = d.norm(dim=-1)
        a, bt = self.alpha, self.beta
        c = a + bt - ry
        r = 0.5 * (-c + torch.sqrt(c * c + 4 * ry * a))
        return self.z0 + d / (1 + bt / (a + r)).unsqueeze(-1)

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        dim = x.shape[-1]
        r = (x - self.z0).norm(dim=-1)
        h = 1 / (self.alpha + r)
        bh = self.beta * h
        return (dim - 1) * torch.log1p(bh) + torch.log1p(bh - self.beta * h * h * r)


class _MaskedLinear(nn.Linear):
    def __init__(self, n_in: int, n_out: int, mask: Tensor) -> None:
        super().__init__(n_in, n_out)
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    r"""Masked autoencoder: ``[..., D] -> (m, s)`` with output i depending only on inputs before i in the order.

    Degrees: inputs take the order ``1..D`` (reversed with ``reverse=True``), hidden
    units cycle through ``1..D−1``; a hidden unit of degree k sees inputs of degree
    ≤ k and an output of degree d sees hidden units of degree < d. An optional
    context (e.g. the encoder's features h) enters the first hidden layer unmasked.

    Args:
        dim: D.
        hidden: hidden layer sizes (at least one).
        context_dim: size of the context, or ``None``.
        reverse: reverse the autoregressive order (alternate it between stacked IAFs).
        activation: nonlinearity class.
    """

    def __init__(
        self,
        dim: int,
        hidden: Sequence[int] = (64,),
        *,
        context_dim: int | None = None,
        reverse: bool = False,
        activation: type[nn.Module] = nn.ELU,
    ) -> None:
        super().__init__()
        check_positive_int("dim", dim)
        if len(hidden) == 0:
            raise ValueError("`hidden` must have at least one layer; got ().")
        deg_in = torch.arange(1, dim + 1)
        if reverse:
            deg_in = deg_in.flip(0)
        degrees = [deg_in]
        for h in hidden:
            degrees.append(torch.arange(h) % max(1, dim - 1) + 1)
        layers = []
        for a, b in zip(degrees[:-1], degrees[1:], strict=False):
            layers.append(_MaskedLinear(len(a), len(b), (b.unsqueeze(-1) >= a.unsqueeze(0))))
        out_mask = deg_in.unsqueeze(-1) > degrees[-1].unsqueeze(0)
        self.hidden_layers = nn.ModuleList(layers)
        self.out = _MaskedLinear(len(degrees[-1]), 2 * dim, torch.cat([out_mask, out_mask]))
        nn.init.zeros_(self.out.weight)  # start with m = s = 0: every IAF step begins as a constant gate
        nn.init.zeros_(self.out.bias)
        self.context = nn.Linear(context_dim, hidden[0]) if context_dim else None
        self.act = activation()
        self.dim = dim
        self.register_buffer("order", deg_in)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        h = self.hidden_layers[0](x)
        if self.context is not None:
            if context is None:
                raise ValueError("`context` must be given: this MADE was built with a context_dim.")
            h = h + self.context(context).expand(*x.shape[:-1], -1)
        h = self.act(h)
        for layer in self.hidden_layers[1:]:
            h = self.act(layer(h))
        m, s = self.out(h).chunk(2, dim=-1)
        return m, s


class IAFTransform(Transform):
    r"""Inverse autoregressive flow step (Kingma et al. 2016, the numerically stable form).

    .. math::
        (m, s) = \mathrm{MADE}(z, h), \quad g = σ(s + c), \quad f(z) = g ⊙ z + (1 − g) ⊙ m,
        \qquad \log|\det J| = \sum_i \log g_i

    The Jacobian is triangular in the MADE's order, so the log-det is the sum of the
    diagonal. The inverse takes D sequential passes.

    Args:
        made: a :class:`MADE`.
        context: context ``[*batch, C]`` or ``None``.
        gate_bias: c (Kingma et al. use 1–2 so that each step starts close to the identity; with
            the MADE's zero-initialised outputs a step starts as :math:`z ↦ σ(c) z`).
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(
        self,
        made: MADE,
        context: Tensor | None = None,
        *,
        gate_bias: float = 2.0,
        cache_size: int = 1,
    ) -> None:
        super().__init__(cache_size=cache_size)
        self.made, self.context, self.gate_bias = made, context, float(gate_bias)

    def __eq__(self, other: object) -> bool:
        return self is other

    def _gate(self, x: Tensor) -> tuple[Tensor, Tensor]:
        m, s = self.made(x, self.context)
        return m, s + self.gate_bias

    def _call(self, x: Tensor) -> Tensor:
        m, s = self._gate(x)
        g = torch.sigmoid(s)
        return g * x + (1 - g) * m

    def _inverse(self, y: Tensor) -> Tensor:
        x = torch.zeros_like(y)
        order = torch.argsort(self.made.order)
        for i in order.tolist():
            m, s = self._gate(x)
            g = torch.sigmoid(s[..., i])
            xi = (y[..., i] - (1 - g) * m[..., i]) / g
            x = torch.cat([x[..., :i], xi.unsqueeze(-1), x[..., i + 1 :]], dim=-1)
        return x

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        _, s = self._gate(x)
        return nn.functional.logsigmoid(s).sum(-1)


class AffineCouplingTransform(Transform):
    r"""Affine coupling layer (Real NVP): the masked half conditions an affine map of the other half.

    .. math::
        (s, t) = \mathrm{net}(μ ⊙ z, h), \quad f(z) = μ ⊙ z + (1 − μ) ⊙ (z ⊙ e^{s} + t),
        \qquad \log|\det J| = \sum_i (1 − μ_i)\, s_i

    with a binary mask μ; s is bounded by ``scale · tanh`` for stability. The inverse
    is closed form: :math:`z = μ ⊙ y + (1 − μ) ⊙ (y − t) e^{−s}`.

    Args:
        net: module ``(x_masked [..., D], context or None) -> (s, t)``, each ``[..., D]``.
        mask: ``[D]`` of 0/1.
        context: ``[*batch, C]`` or ``None``.
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(
        self, net: nn.Module, mask: Tensor, context: Tensor | None = None, *, cache_size: int = 1
    ) -> None:
        super().__init__(cache_size=cache_size)
        self.net, self.mask, self.context = net, mask, context

    def __eq__(self, other: object) -> bool:
        return self is other

    def _st(self, x: Tensor) -> tuple[Tensor, Tensor]:
        s, t = self.net(x * self.mask, self.context)
        keep = 1 - self.mask
        return s * keep, t * keep

    def _call(self, x: Tensor) -> Tensor:
        s, t = self._st(x)
        return x * torch.exp(s) + t

    def _inverse(self, y: Tensor) -> Tensor:
        s, t = self._st(y)  # the masked half is unchanged, so the net sees the same input
        return (y - t) * torch.exp(-s)

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        s, _ = self._st(x)
        return s.sum(-1)
