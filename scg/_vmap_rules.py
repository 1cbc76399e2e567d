r"""Ops that ``torch.func.vmap`` runs slowly, computed by an equal expression inside :func:`gradient_samples`.

``vmap`` has no batching rule for ``binary_cross_entropy_with_logits``: it runs the op's
decomposition (``clamp_min``, ``exp``, ``log``, and in the backward a ``where`` that
torch's CPU kernel makes slow) — 9 ms of a 40 ms ``gradient_samples`` call on the
benchmark's VAE (``docs/benchmarks.md``, case 4), for a loss that eagerly is one fused
kernel. While :func:`scg.diagnostics.gradient_samples` evaluates ``fn``, a
``TorchFunctionMode`` computes that call as

.. math:: \mathrm{BCE}(ℓ, t) = \mathrm{softplus}(ℓ) − t\,ℓ

(``scg._dist.bernoulli_nll``), reduced as asked (``"none"``, ``"mean"``, ``"sum"``):
softplus and its backward are single batched kernels. Only calls without ``weight`` /
``pos_weight`` (and the deprecated ``size_average`` / ``reduce``) and with input and target
of one shape and dtype are rewritten; any other call runs unchanged. The two forms agree
to float rounding of the terms (see ``bernoulli_nll``; ``tests/test_diagnostics.py``).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

from scg._dist import bernoulli_nll

__all__ = ["VmapRules"]

_BCE = (F.binary_cross_entropy_with_logits, torch.binary_cross_entropy_with_logits)
_REDUCE: dict[Any, Callable[[Tensor], Tensor]] = {
    "none": lambda t: t, "mean": torch.mean, "sum": torch.sum,
    0: lambda t: t, 1: torch.mean, 2: torch.sum,  # torch.binary_cross_entropy_with_logits takes the enum
}


def _bce(args: tuple, kwargs: dict) -> Optional[Tensor]:
    """The rewritten BCE, or None when the call is not one this rule covers."""
    names = ("input", "target", "weight")  # the positional prefix both signatures share
    bound = dict(zip(names, args)) if len(args) <= 3 else None
    if bound is None:
        return None
    for k, v in kwargs.items():
        if k in bound:
            return None
        bound[k] = v
    inp, tgt = bound.get("input"), bound.get("target")
    if any(bound.get(k) is not None for k in ("weight", "pos_weight", "size_average", "reduce")):
        return None
    if set(bound) - {"input", "target", "weight", "pos_weight", "size_average", "reduce", "reduction"}:
        return None
    if not (isinstance(inp, Tensor) and isinstance(tgt, Tensor)):
        return None
    if inp.shape != tgt.shape or inp.dtype != tgt.dtype or not inp.is_floating_point():
        return None
    reduction = bound.get("reduction", "mean")
    if isinstance(reduction, bool):  # True == 1 would pass as "mean": leave it to torch's own error
        return None
    reduce = _REDUCE.get(reduction)
    if reduce is None:
        return None
    return reduce(bernoulli_nll(inp, tgt))


class VmapRules(TorchFunctionMode):
    """Active while ``gradient_samples`` evaluates ``fn``: the rewrites above, everything else untouched."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 - torch's protocol
        kwargs = kwargs or {}
        if func in _BCE:
            out = _bce(args, kwargs)
            if out is not None:
                return out
        return func(*args, **kwargs)
