r"""Flow posteriors: a Gaussian encoder's base distribution pushed through K flow layers.

.. math::
    z_0 \sim N(μ_φ(x), \mathrm{diag}\,σ_φ(x)^2), \quad z_K = f_K ∘ \dots ∘ f_1(z_0), \qquad
    \log q(z_K|x) = \log q_0(z_0|x) − \sum_k \log|\det ∂f_k/∂z_{k−1}|

:class:`FlowPosterior` is a conditional distribution (``forward(x) ->
TransformedDistribution``), so it drops into :class:`~scg.models.VAE` in place of
the encoder. Layers (``nn.Module`` s owning the parameters) build one
:mod:`~scg.models.flows` transform per call from the encoder's features h:

* :class:`Planar`, :class:`Radial` — amortised as in Rezende & Mohamed (2015): the
  flow parameters are a linear function of h (``amortized=True``), or global.
* :class:`IAF` — MADE weights are global, h enters as context (Kingma et al. 2016).
* :class:`AffineCoupling` — global coupling nets, optionally conditioned on h.

References:
    Rezende & Mohamed, "Variational Inference with Normalizing Flows", ICML 2015.
    https://arxiv.org/abs/1505.05770
    Kingma et al., "Improved Variational Inference with Inverse Autoregressive Flow", 2016.
    https://arxiv.org/abs/1606.04934
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.distributions import (
    Distribution,
    Independent,
    Normal,
    Transform,
    TransformedDistribution,
)

from scg.checks import check_positive_int
from scg.models.flows import (
    MADE,
    AffineCouplingTransform,
    IAFTransform,
    PlanarTransform,
    RadialTransform,
)
from scg.models.nets import GaussianEncoder, mlp

__all__ = [
    "FlowLayer",
    "Planar",
    "Radial",
    "IAF",
    "AffineCoupling",
    "FlowPosterior",
    "flow_layers",
    "FLOW_KINDS",
]

FLOW_KINDS = ("planar", "radial", "iaf", "coupling")


class FlowLayer(nn.Module):
    """A module that builds a flow transform, ``transform(h) -> Transform`` (h: features ``[*batch, C]`` or None)."""

    def transform(self, h: Tensor | None) -> Transform:  # pragma: no cover
        raise NotImplementedError


class _Amortised(FlowLayer):
    def __init__(self, sizes: Sequence[int], context_dim: int | None, init_std: float = 0.01) -> None:
        super().__init__()
        self.sizes = list(sizes)
        total = sum(sizes)
        if context_dim:
            self.head: nn.Linear | None = nn.Linear(context_dim, total)
            nn.init.normal_(self.head.weight, std=init_std)
            nn.init.normal_(self.head.bias, std=init_std)
            self.flat = None
        else:
            self.head = None
            self.flat = nn.Parameter(torch.randn(total) * init_std)

    def raw(self, h: Tensor | None) -> list[Tensor]:
        if self.head is not None:
            if h is None:
                raise ValueError("`h` must be given: this layer is amortised (built with context_dim).")
            out = self.head(h)
        else:
            out = self.flat
        return list(out.split(self.sizes, dim=-1))


class Planar(_Amortised):
    """Planar flow layer (see :class:`~scg.models.flows.PlanarTransform`); amortised when ``context_dim`` is set."""

    def __init__(self, dim: int, *, context_dim: int | None = None) -> None:
        check_positive_int("dim", dim)
        super().__init__([dim, dim, 1], context_dim)

    def transform(self, h: Tensor | None) -> Transform:
        u, w, b = self.raw(h)
        return PlanarTransform(u, w, b.squeeze(-1))


class Radial(_Amortised):
    """Radial flow layer (see :class:`~scg.models.flows.RadialTransform`); amortised when ``context_dim`` is set."""

    def __init__(self, dim: int, *, context_dim: int | None = None) -> None:
        check_positive_int("dim", dim)
        super().__init__([dim, 1, 1], context_dim)

    def transform(self, h: Tensor | None) -> Transform:
        z0, a, b = self.raw(h)
        return RadialTransform(z0, a.squeeze(-1), b.squeeze(-1))


class IAF(FlowLayer):
    """IAF step with a MADE (see :class:`~scg.models.flows.IAFTransform`); h enters as context."""

    def __init__(
        self,
        dim: int,
        hidden: Sequence[int] = (64,),
        *,
        context_dim: int | None = None,
        reverse: bool = False,
        gate_bias: float = 2.0,
    ) -> None:
        super().__init__()
        self.made = MADE(dim, hidden, context_dim=context_dim, reverse=reverse)
        self.gate_bias = gate_bias

    def transform(self, h: Tensor | None) -> Transform:
        return IAFTransform(self.made, h if self.made.context is not None else None, gate_bias=self.gate_bias)


class _CouplingNet(nn.Module):
    def __init__(self, dim: int, hidden: Sequence[int], context_dim: int | None) -> None:
        super().__init__()
        self.net = mlp([dim + (context_dim or 0), *hidden, 2 * dim], nn.ELU)
        self.scale = nn.Parameter(torch.ones(dim))
        last = self.net[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.context_dim = context_dim

    def forward(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        if self.context_dim:
            if context is None:
                raise ValueError("`context` must be given: this coupling net was built with a context_dim.")
            x = torch.cat([x, context.expand(*x.shape[:-1], -1)], dim=-1)
        s, t = self.net(x).chunk(2, dim=-1)
        return self.scale * torch.tanh(s), t


class AffineCoupling(FlowLayer):
    """Affine coupling layer (see :class:`~scg.models.flows.AffineCouplingTransform`); ``parity`` picks the mask."""

    def __init__(
        self,
        dim: int,
        hidden: Sequence[int] = (64,),
        *,
        parity: int = 0,
        context_dim: int | None = None,
    ) -> None:
        super().__init__()
        check_positive_int("dim", dim)
        self.net = _CouplingNet(dim, hidden, context_dim)
        self.register_buffer("mask", ((torch.arange(dim) + parity) % 2).float())

    def transform(self, h: Tensor | None) -> Transform:
        return AffineCouplingTransform(
            self.net, self.mask.to(self.net.scale.dtype), h if self.net.context_dim else None
        )


def flow_layers(
    kind: str,
    dim: int,
    length: int,
    *,
    context_dim: int | None = None,
    hidden: Sequence[int] = (64,),
) -> nn.ModuleList:
    """``length`` layers of one kind (``"planar"``, ``"radial"``, ``"iaf"``, ``"coupling"``); orders/masks alternate."""
    if kind not in FLOW_KINDS:
        raise ValueError(f"`kind` must be one of {FLOW_KINDS}; got {kind!r}.")
    if isinstance(length, bool) or not isinstance(length, int) or length < 0:
        raise ValueError(f"`length` must be an int >= 0; got {length!r}.")
    layers: list[FlowLayer] = []
    for k in range(length):
        if kind == "planar":
            layers.append(Planar(dim, context_dim=context_dim))
        elif kind == "radial":
            layers.append(Radial(dim, context_dim=context_dim))
        elif kind == "iaf":
            layers.append(IAF(dim, hidden, context_dim=context_dim, reverse=bool(k % 2)))
        else:
            layers.append(AffineCoupling(dim, hidden, parity=k % 2, context_dim=context_dim))
    return nn.ModuleList(layers)


class FlowPosterior(nn.Module):
    r"""Conditional flow posterior :math:`q_φ(z_K|x)`: a :class:`~scg.models.nets.GaussianEncoder` plus flow layers.

    Args:
        encoder: the Gaussian encoder (its ``features(x)`` feed amortised layers).
        layers: :class:`FlowLayer` s, applied in order (empty: the plain Gaussian).

    Returns (forward): ``TransformedDistribution`` with batch ``x.shape[:-1]`` and
    event ``[z_dim]`` (the encoder's ``Independent(Normal)`` when there are no layers).
    ``rsample``/``log_prob`` come from torch; scg's ``Pathwise`` draws its own noise
    for the base Normal and applies the transforms.

    Example:
        >>> import torch
        >>> from scg.models import GaussianEncoder, FlowPosterior, flow_layers
        >>> enc = GaussianEncoder(64, 8, hidden=(32,))
        >>> q = FlowPosterior(enc, flow_layers("iaf", 8, 2, context_dim=enc.feature_dim))
        >>> d = q(torch.rand(5, 64))
        >>> z = d.rsample((3,)); d.log_prob(z).shape
        torch.Size([3, 5])
    """

    def __init__(self, encoder: GaussianEncoder, layers: Sequence[FlowLayer] = ()) -> None:
        super().__init__()
        for layer in layers:
            if not isinstance(layer, FlowLayer):
                raise TypeError(f"`layers` must hold FlowLayer modules; got {type(layer).__name__}.")
        self.encoder = encoder
        self.layers = nn.ModuleList(layers)

    @property
    def z_dim(self) -> int:
        return self.encoder.z_dim

    def forward(self, x: Tensor) -> Distribution:
        loc, scale, h = self.encoder.params(x)
        base = Independent(Normal(loc, scale), 1)
        if len(self.layers) == 0:
            return base
        return TransformedDistribution(
            base, [layer.transform(h) for layer in self.layers], validate_args=False
        )
