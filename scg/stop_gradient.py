"""``scg.stop_gradient(dist)``: the same distribution with its parameters detached."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import ComposeTransform, Distribution, Transform
from torch.distributions.transforms import _InverseTransform

__all__ = ["stop_gradient"]


def stop_gradient(dist: Distribution) -> Distribution:
    r"""The same distribution with every parameter detached: :math:`q_{\mathrm{stop}(λ)}`.

    .. math:: \log q_{\mathrm{stop}(λ)}(z) \text{ has gradient } ∇_z \log q_λ(z)\,∂z/∂φ
              \text{ and none through } λ

    What the *sticking-the-landing* (STL) and doubly-reparameterised (DReG)
    gradients need: evaluate ``log q`` of a reparameterised sample with the
    parameters held fixed, so the gradient flows only through the sample's path.
    torch has no such operation for distribution objects.

    Works for every ``torch.distributions`` object: a shallow copy whose tensor
    attributes (parameters and cached derived tensors) are detached; nested
    distributions (``Independent``, ``MixtureSameFamily``, ``TransformedDistribution``)
    are handled recursively. Transforms are copied with detached tensors; a
    transform that holds ``nn.Module`` parameters (a normalizing flow) is wrapped
    so that its ``_call``, ``_inverse`` and ``log_abs_det_jacobian`` run with the
    module's parameters detached (``torch.func.functional_call``); the wrapper does
    not cache, so ``log_prob(z)`` inverts z with the detached flow. Flows without an
    analytic inverse (planar, radial) therefore cannot evaluate ``log_prob`` of a
    sample through the stopped copy — torch raises ``NotImplementedError``.

    Properties: values are identical (``log_prob``, ``mean``, and ``rsample`` for the
    same random numbers; up to rounding where the original would invert a sample from
    its transform cache); gradients reach the *inputs* (e.g. a reparameterised z)
    but never the parameters. The original distribution is not modified.

    Args:
        dist: any ``torch.distributions.Distribution``.

    Returns:
        A distribution of the same type (or a ``TransformedDistribution`` whose
        module-backed transforms are wrapped).

    Example:
        >>> import torch, scg
        >>> from torch.distributions import Normal
        >>> mu = torch.tensor(0.5, requires_grad=True)
        >>> q = Normal(mu, 1.0)
        >>> z = q.rsample((4,))
        >>> log_q = scg.stop_gradient(q).log_prob(z)   # STL: gradient only through z

    References:
        Roeder, Wu & Duvenaud, "Sticking the Landing: Simple, Lower-Variance Gradient
        Estimators for Variational Inference", NeurIPS 2017. https://arxiv.org/abs/1703.09194
        Tucker, Lawson, Gu & Maddison, "Doubly Reparameterized Gradient Estimators for Monte
        Carlo Objectives", ICLR 2019. https://arxiv.org/abs/1810.04152
    """
    if not isinstance(dist, Distribution):
        raise TypeError(f"`dist` must be a torch.distributions.Distribution; got {type(dist).__name__}.")
    return _stop(dist)


def _stop(obj: Any) -> Any:
    if isinstance(obj, Tensor):
        return obj.detach()
    if isinstance(obj, Distribution):
        new = copy.copy(obj)
        for key, value in vars(obj).items():
            if isinstance(value, (Tensor, Distribution, Transform, list, tuple)):
                setattr(new, key, _stop(value))
        return new
    if isinstance(obj, Transform):
        return _stop_transform(obj)
    if isinstance(obj, list):
        return [_stop(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_stop(v) for v in obj)
    return obj


def _modules_in(t: Transform) -> list[nn.Module]:
    if isinstance(t, nn.Module):
        return [t]
    return [v for v in vars(t).values() if isinstance(v, nn.Module)]


def _stop_transform(t: Transform) -> Transform:
    if isinstance(t, _InverseTransform):
        return _stop_transform(t._inv).inv
    if isinstance(t, ComposeTransform):
        return ComposeTransform([_stop_transform(p) for p in t.parts], cache_size=0)
    modules = _modules_in(t)
    if isinstance(t, nn.Module):  # its tensors are parameters/buffers: swapped in by the wrapper
        return _DetachedModuleTransform(t, modules)
    new = copy.copy(t)
    for key, value in vars(t).items():
        if key == "_inv":
            continue
        if isinstance(value, (Tensor, Transform, list, tuple)):
            setattr(new, key, _stop(value))
    new._inv = None
    if getattr(new, "_cache_size", 0):
        new._cached_x_y = (None, None)
    return _DetachedModuleTransform(new, modules) if modules else new


class _Holder(nn.Module):
    """Owns a transform's modules so ``functional_call`` can swap in detached parameters."""

    def __init__(self, transform: Transform, modules: list[nn.Module]) -> None:
        super().__init__()
        self.mods = nn.ModuleList(modules)
        self.transform = [transform]  # a list: not registered as a submodule twice

    def forward(self, method: str, *args: Tensor) -> Tensor:
        t = self.transform[0]
        return getattr(t, method)(*args)


class _DetachedModuleTransform(Transform):
    """A module-backed transform evaluated with detached parameters (no caching)."""

    def __init__(self, transform: Transform, modules: list[nn.Module]) -> None:
        super().__init__(cache_size=0)
        self.inner = transform
        self.holder = _Holder(transform, modules)
        self.domain = transform.domain
        self.codomain = transform.codomain
        self.bijective = transform.bijective

    @property
    def sign(self) -> int:  # type: ignore[override]
        return self.inner.sign

    def _run(self, method: str, *args: Tensor) -> Tensor:
        state = {k: v.detach() for k, v in self.holder.named_parameters()}
        state.update({k: v.detach() for k, v in self.holder.named_buffers()})
        return torch.func.functional_call(self.holder, state, (method, *args))

    def _call(self, x: Tensor) -> Tensor:
        return self._run("_call", x)

    def _inverse(self, y: Tensor) -> Tensor:
        return self._run("_inverse", y)

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        return self._run("log_abs_det_jacobian", x, y)

    def forward_shape(self, shape: torch.Size) -> torch.Size:
        return self.inner.forward_shape(shape)

    def inverse_shape(self, shape: torch.Size) -> torch.Size:
        return self.inner.inverse_shape(shape)

    def __eq__(self, other: object) -> bool:
        return self is other

    def __hash__(self) -> int:
        return id(self)
