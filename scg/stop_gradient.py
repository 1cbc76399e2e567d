"""``scg.stop_gradient(dist)``: the same distribution with its parameters detached."""

from __future__ import annotations

import dis
import enum
import functools
import types
from collections import OrderedDict, deque
from collections.abc import Mapping
from itertools import chain
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Transform, constraints
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

    Works for every ``torch.distributions`` object and for flows built from
    ``nn.Module``\ s: a shallow copy of the distribution in which everything it holds
    is replaced by a stopped copy — tensors are detached; distributions, transforms
    (``ComposeTransform``, ``IndependentTransform``, inverses, ...) and constraints are
    copied the same way; an ``nn.Module`` (a transform that is one, or a network a
    transform holds) is copied with detached parameters and buffers, its submodules
    and plain attributes stopped in turn (shared modules and tied weights stay
    shared); lists, tuples and dicts are rebuilt, bound methods of what is copied are
    rebound to the copy. Transform caches are emptied, so ``log_prob(z)`` inverts z
    with the detached flow; flows without an analytic inverse (planar, radial)
    therefore cannot evaluate ``log_prob`` of a sample through the stopped copy.

    Requires: every tensor that requires grad is reachable that way. What cannot be
    copied — a function whose closure, defaults or globals hold such a tensor or
    module (functions are followed through their closures, defaults, and the globals
    and functions of their own module), or an object of an unknown type holding
    one — raises
    ``TypeError`` naming the attribute, rather than returning a copy through which a
    gradient would still flow. Module hooks are checked, not copied; tensors held by
    C extension objects are out of reach.

    Properties: values are identical (``log_prob``, ``mean``, and ``rsample`` for the
    same random numbers; up to rounding where the original would invert a sample from
    its transform cache); gradients reach the *inputs* (e.g. a reparameterised z)
    but never the parameters. The original distribution is not modified.

    Args:
        dist: any ``torch.distributions.Distribution``.

    Returns:
        A distribution of the same type, holding transforms and modules of the same types.

    Raises:
        TypeError: ``dist`` is not a distribution, or holds a tensor that requires grad
            where it cannot be detached.

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
    return _Stopper()(dist, "dist")


# Values that hold no tensors: returned as they are.
_ATOMS = (
    type(None),
    bool,
    int,
    float,
    complex,
    str,
    bytes,
    torch.Size,
    torch.dtype,
    torch.device,
    torch.layout,
    torch.memory_format,
    torch.Generator,
    enum.Enum,
    type,
    types.ModuleType,
    range,
    slice,
    type(Ellipsis),
    types.CodeType,
)
# A module's own bookkeeping (parameters, buffers, submodules and hooks are handled by name).
_MODULE_STATE = frozenset(vars(nn.Module()))
_FORWARD_HOOKS = ("_forward_pre_hooks", "_forward_hooks")
# Builtins and C-level callables: they may hold state only through ``__self__``.
_BUILTIN_CALLABLES = (
    types.BuiltinFunctionType,
    types.BuiltinMethodType,
    types.MethodWrapperType,
    types.WrapperDescriptorType,
    types.MethodDescriptorType,
    types.ClassMethodDescriptorType,
)
_MAX_DEPTH = 32


def _shallow(obj: Any) -> Any:
    """A new instance sharing ``obj``'s attribute values (no ``__getstate__``/``__reduce__``)."""
    new = object.__new__(type(obj))
    new.__dict__.update(vars(obj))
    return new


class _Stopper:
    """One traversal: ``memo`` maps each object seen to its stopped copy (sharing is kept)."""

    def __init__(self) -> None:
        self.memo: dict[int, Any] = {}

    def __call__(self, obj: Any, where: str) -> Any:
        if isinstance(obj, _ATOMS):
            return obj
        key = id(obj)
        if key not in self.memo:
            self.memo[key] = self._stop(obj, where)
        return self.memo[key]

    def _stop(self, obj: Any, where: str) -> Any:
        if isinstance(obj, Tensor):
            return obj.detach()
        if isinstance(obj, nn.Module):
            return self._module(obj, where)
        if isinstance(obj, _InverseTransform):
            return self(obj._inv, f"{where}.inv").inv
        if isinstance(obj, (Distribution, Transform, constraints.Constraint)):
            return self._object(obj, where)
        if type(obj) is list:
            return [self(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        if type(obj) is tuple:
            return tuple(self(v, f"{where}[{i}]") for i, v in enumerate(obj))
        if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a namedtuple
            return type(obj)(*(self(v, f"{where}.{k}") for k, v in zip(obj._fields, obj, strict=False)))
        if type(obj) in (dict, OrderedDict):
            return type(obj)((k, self(v, f"{where}[{k!r}]")) for k, v in obj.items())
        if isinstance(obj, types.MethodType) and isinstance(
            obj.__self__, (nn.Module, Transform, Distribution)
        ):
            self._check(obj.__func__, f"{where}.__func__")
            return types.MethodType(obj.__func__, self(obj.__self__, f"{where}.__self__"))
        if type(obj) is functools.partial:
            args = self(obj.args, f"{where}.args")
            return functools.partial(
                self(obj.func, f"{where}.func"), *args, **self(obj.keywords, f"{where}.keywords")
            )
        self._check(obj, where)  # anything else is kept as it is: it must not hold a gradient path
        return obj

    def _object(self, obj: Any, where: str) -> Any:
        new = _shallow(obj)
        self.memo[id(obj)] = new  # before the attributes: they may refer back to obj
        for key, value in vars(obj).items():
            new.__dict__[key] = self._attribute(obj, key, value, where)
        return new

    def _attribute(self, owner: Any, key: str, value: Any, where: str) -> Any:
        if isinstance(owner, Transform) and key == "_inv":
            return None  # the inverse is rebuilt from the copy when asked for
        if isinstance(owner, Transform) and key == "_cached_x_y":
            return None, None  # an empty cache: the copy recomputes, with detached parameters
        return self(value, f"{where}.{key}")

    def _module(self, module: nn.Module, where: str) -> nn.Module:
        if isinstance(module, torch.jit.ScriptModule):
            raise TypeError(
                f"`{where}` must be a Python nn.Module; got a scripted {type(module).__name__}, whose "
                "parameters live in TorchScript where stop_gradient cannot detach them. Hold the module "
                "before torch.jit.script."
            )
        new = _shallow(module)
        self.memo[id(module)] = new
        d = new.__dict__
        for key, value in vars(module).items():
            if key in _MODULE_STATE:
                if isinstance(value, (dict, set)):
                    d[key] = type(value)(
                        value
                    )  # the copy's own hook tables: adding to them leaves module alone
            else:
                d[key] = self._attribute(module, key, value, where)
        d["_parameters"] = {k: self(p, f"{where}.{k}") for k, p in module._parameters.items()}
        d["_buffers"] = {k: self(b, f"{where}.{k}") for k, b in module._buffers.items()}
        d["_modules"] = {k: self(m, f"{where}.{k}") for k, m in module._modules.items()}
        for table in _FORWARD_HOOKS:
            for hook_id, hook in getattr(module, table).items():
                self._check(hook, f"{where}.{table}[{hook_id}]")
        return new

    def _check(self, obj: Any, where: str) -> None:
        found = _find_grad(obj, where, set(), 0)
        if found is None:
            return
        path, what = found
        at = "" if path == where else f" at `{path}`"
        raise TypeError(
            f"`{where}` must not hold a tensor that requires grad where stop_gradient cannot detach it; "
            f"got {_describe(obj)} holding {what}{at}. stop_gradient copies tensors, nn.Modules, "
            "transforms and distributions held as attributes or in lists, tuples and dicts: hold it "
            "that way (e.g. the module as an attribute, not captured by a function), or detach it."
        )


def _describe(obj: Any) -> str:
    if isinstance(obj, types.FunctionType):
        return f"a function ({obj.__qualname__})"
    if isinstance(obj, types.MethodType):
        return f"a bound method ({obj.__qualname__})"
    return f"a {type(obj).__name__} object"


@functools.lru_cache(maxsize=1024)
def _global_names(code: types.CodeType) -> frozenset[str]:
    """Names the code (and the functions defined in it) loads as globals — not attribute names."""
    names = {i.argval for i in dis.get_instructions(code) if i.opname in ("LOAD_GLOBAL", "LOAD_NAME")}
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return frozenset(names)


def _find_grad(obj: Any, path: str, seen: set[int], depth: int) -> tuple[str, str] | None:
    """The first tensor that requires grad reachable from ``obj``: ``(path, description)``, or None."""
    if isinstance(obj, _ATOMS) or id(obj) in seen:
        return None
    seen.add(id(obj))
    if isinstance(obj, Tensor):
        return (path, "a tensor that requires grad") if obj.requires_grad else None
    if depth > _MAX_DEPTH:
        return path, f"objects nested deeper than {_MAX_DEPTH} levels, which it does not inspect"
    parts: list[tuple[str, Any]] = []
    if isinstance(obj, nn.Module):
        for name, t in chain(obj.named_parameters(), obj.named_buffers()):
            if t.requires_grad:
                return (
                    f"{path}.{name}",
                    f"a {type(obj).__name__} module whose parameter `{name}` requires grad",
                )
        parts = [(f"{path}.{k}", v) for k, v in vars(obj).items() if k not in _MODULE_STATE]
    elif isinstance(obj, Mapping):
        parts = [(f"{path}[{k!r}]", v) for k, v in obj.items()]
    elif isinstance(obj, (list, tuple, set, frozenset, deque)):
        parts = [(f"{path}[{i}]", v) for i, v in enumerate(obj)]
    elif isinstance(obj, types.FunctionType):
        cells = zip(obj.__code__.co_freevars, obj.__closure__ or (), strict=False)
        parts = [(f"{path}.<closure variable {n}>", _cell(c)) for n, c in cells]
        parts += [(f"{path}.<default {i}>", v) for i, v in enumerate(obj.__defaults__ or ())]
        parts += [(f"{path}.<default {k}>", v) for k, v in (obj.__kwdefaults__ or {}).items()]
        g = obj.__globals__
        parts += [
            (f"{path}.<global {n}>", g[n])
            for n in sorted(_global_names(obj.__code__))
            if n in g and _followed_global(g[n], g)
        ]
    elif isinstance(obj, types.MethodType):
        parts = [(f"{path}.__self__", obj.__self__), (f"{path}.__func__", obj.__func__)]
    elif isinstance(obj, functools.partial):
        parts = [
            (f"{path}.func", obj.func),
            (f"{path}.args", obj.args),
            (f"{path}.keywords", obj.keywords),
        ]
    elif isinstance(obj, _BUILTIN_CALLABLES):
        parts = [(f"{path}.__self__", getattr(obj, "__self__", None))]
    else:
        if isinstance(getattr(obj, "__dict__", None), dict):
            parts = [(f"{path}.{k}", v) for k, v in vars(obj).items()]
        for cls in type(obj).__mro__:
            slots = getattr(cls, "__slots__", ())
            for s in (slots,) if isinstance(slots, str) else slots:
                if s not in ("__dict__", "__weakref__") and hasattr(obj, s):
                    parts.append((f"{path}.{s}", getattr(obj, s)))
    for sub_path, value in parts:
        found = _find_grad(value, sub_path, seen, depth + 1)
        if found is not None:
            return found
    return None


def _followed_global(value: Any, namespace: dict) -> bool:
    """Globals a function reads that are inspected: data, and functions of the same module."""
    if isinstance(value, types.FunctionType):
        return value.__globals__ is namespace
    return not isinstance(value, (*_BUILTIN_CALLABLES, types.ModuleType, type))


def _cell(cell: Any) -> Any:
    try:
        return cell.cell_contents
    except ValueError:  # an empty cell
        return None
