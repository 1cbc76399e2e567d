"""Measure gradient estimators: many independent estimates at once, and their statistics.

:func:`gradient_samples` draws ``num`` independent gradient estimates of a
stochastic scalar objective, vectorised with ``torch.func`` (no Python loop of
``backward()`` calls), in chunks that bound memory. :func:`summary` turns them
into per-parameter mean, variance, standard error, signal-to-noise ratio and —
given the exact gradient — a bias z-score.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, TypeAlias

import torch
from torch import Tensor

from scg.checks import check_positive_int

__all__ = ["gradient_samples", "summary", "Summary", "DEFAULT_CHUNK_ELEMENTS"]

Params: TypeAlias = Mapping[str, Tensor] | Sequence[Tensor]

#: Default memory budget of one chunk, in gradient elements (``chunk_size · P``): 16 MiB of float32.
DEFAULT_CHUNK_ELEMENTS: int = 2**22


def _floating(leaves: list[Tensor], labels: list[str]) -> None:
    for t, label in zip(leaves, labels, strict=False):
        if not (t.is_floating_point() or t.is_complex()):
            raise TypeError(f"`params` must be floating-point tensors; got dtype {t.dtype} for {label}.")


def _leaves(params: Params) -> tuple[Any, list[Tensor]]:
    """Validate ``params``; return a detached copy of the same structure and its tensors in order."""
    if isinstance(params, Tensor):
        raise TypeError(
            "`params` must be a dict name -> tensor or a sequence of tensors; got a single Tensor "
            "(wrap it: [tensor] or {'name': tensor})."
        )
    if isinstance(params, Mapping):
        items = list(params.items())
        if not items:
            raise ValueError("`params` must not be empty; got an empty mapping.")
        for name, value in items:
            if not isinstance(value, Tensor):
                raise TypeError(f"`params` values must be tensors; got {type(value).__name__} for {name!r}.")
        _floating([v for _, v in items], [repr(name) for name, _ in items])
        detached: Any = {name: value.detach() for name, value in items}
        return detached, list(detached.values())
    if isinstance(params, Sequence) and not isinstance(params, (str, bytes)):
        values = list(params)
        if not values:
            raise ValueError("`params` must not be empty; got an empty sequence.")
        for i, value in enumerate(values):
            if not isinstance(value, Tensor):
                raise TypeError(
                    f"`params` elements must be tensors; got {type(value).__name__} at index {i}."
                )
        _floating(values, [f"index {i}" for i in range(len(values))])
        detached = [value.detach() for value in values]
        return (tuple(detached) if isinstance(params, tuple) else detached), detached
    raise TypeError(
        f"`params` must be a dict name -> tensor or a sequence of tensors; got {type(params).__name__}."
    )


def _check_out(out: object, shape: tuple[int, int], dtype: torch.dtype, device: torch.device) -> None:
    if not isinstance(out, Tensor):
        raise TypeError(f"`out` must be a torch.Tensor or None; got {type(out).__name__}.")
    if tuple(out.shape) != shape:
        raise ValueError(f"`out` must have shape [num, P] = {list(shape)}; got {list(out.shape)}.")
    if out.dtype != dtype:
        raise TypeError(f"`out` must have the dtype of the gradients, {dtype}; got {out.dtype}.")
    if out.device != device:
        raise ValueError(f"`out` must be on the device of `params`, {device}; got {out.device}.")
    if not out.is_contiguous():
        raise ValueError("`out` must be contiguous; got a non-contiguous tensor (pass out.contiguous()).")
    if out.requires_grad:
        raise ValueError("`out` must not require grad; got a tensor with requires_grad=True.")


def gradient_samples(
    fn: Callable[[Any], Tensor],
    params: Params,
    num: int,
    *,
    chunk_size: int | None = None,
    out: Tensor | None = None,
) -> Tensor:
    r"""``num`` independent gradient estimates of a stochastic scalar objective, ``[num, P]``.

    .. math::
        G_{n,:} = \operatorname{flatten}\big(∇_θ\, \mathrm{fn}(θ; ω_n)\big), \qquad
        ω_1, \dots, ω_{num} \text{ iid}

    where :math:`ω_n` is all the randomness ``fn`` draws: each row is one draw of the
    gradient that ``fn(params).backward()`` would produce. Computed as
    ``torch.func.vmap(torch.func.grad(fn), randomness="different")``, ``chunk_size``
    estimates per call, instead of a Python loop of ``backward()`` calls.

    Requires: ``fn`` traceable by ``torch.func`` — no ``.item()`` or data-dependent
    Python control flow, no ``.backward()`` inside; call modules with
    ``torch.func.functional_call``.

    Properties: rows are iid. Randomness comes from torch's global generator: after
    ``torch.manual_seed(s)`` the result is reproducible for the same ``num`` and
    ``chunk_size``. Running statistics of control variates (e.g. ``MovingAverage``)
    are frozen inside ``torch.func``, so every row sees the same baseline state.
    Memory: one chunk holds ``chunk_size`` copies of the gradient and of ``fn``'s
    intermediates, plus the ``num · P`` result.

    Tips (torch limitations):
        * ``Normal.rsample`` fails under vmap (it draws in place). Use scg's estimators,
          which draw noise out of place, or write ``loc + scale * torch.randn(...)``.
        * vmap has no batching rule for the fused ``F.binary_cross_entropy_with_logits``
          and runs a slow decomposition; the Bernoulli negative log-likelihood written as
          ``softplus(l) - t * l`` is equal and batches well.
        * ``torch.func.hessian`` (and ``jacfwd``) of a stochastic function fails in vmap's
          "randomness error mode": it vmaps over tangents, which must be told how to draw.
          Use ``jacfwd(jacrev(f), randomness="same")``: one draw shared by every direction.

    Args:
        fn: ``fn(params) -> Tensor`` of shape ``[]``, stochastic; receives ``params`` in
            the structure given (dict or sequence).
        params: dict name -> tensor, or a sequence of tensors; their values are used
            detached (the result does not require grad).
        num: number of estimates N ≥ 1.
        chunk_size: estimates per vectorised call (keyword-only). ``None`` picks
            ``min(num, max(1, DEFAULT_CHUNK_ELEMENTS // P))``; lower it when ``fn``'s own
            activations are large.
        out: optional result buffer (keyword-only): contiguous, ``[num, P]``, with the
            promoted dtype of ``params`` and the device of the first; overwritten and returned.

    Returns:
        Tensor ``[num, P]`` (``out`` when given), P the total number of elements of
        ``params``; parameters flattened and concatenated in order (dict insertion order).

    Raises:
        TypeError: ``params`` is not a dict/sequence of floating-point tensors, ``fn`` is
            not callable or does not return a tensor, ``out`` is not a tensor or has the
            wrong dtype.
        ValueError: ``num < 1``, ``chunk_size < 1``, empty ``params``, ``fn`` does not
            return a scalar, ``out`` has the wrong shape or device, is not contiguous
            or requires grad, or (on the CPU) some estimate is not finite.

    Example:
        >>> import torch, scg
        >>> from torch import nn
        >>> from torch.distributions import Independent, Normal
        >>> from torch.func import functional_call
        >>> _ = torch.manual_seed(0)
        >>> encoder = nn.Linear(4, 2 * 3)
        >>> x = torch.randn(4)
        >>> def fn(p):
        ...     loc, log_scale = functional_call(encoder, p, (x,)).chunk(2, -1)
        ...     q = Independent(Normal(loc, log_scale.exp()), 1)
        ...     return scg.expectation(lambda z: (z ** 2).sum(-1), q, scg.Pathwise())
        >>> g = scg.diagnostics.gradient_samples(fn, dict(encoder.named_parameters()), 1000)
        >>> g.shape
        torch.Size([1000, 30])
        >>> s = scg.diagnostics.summary(g)   # mean, variance, std_error, snr per parameter

    References:
        Mohamed et al., "Monte Carlo Gradient Estimation in Machine Learning", JMLR 2020, §3
        (variance as the measure of an estimator). https://arxiv.org/abs/1906.10652
        Rainforth et al., "Tighter Variational Bounds are Not Necessarily Better", 2018 (SNR).
        https://arxiv.org/abs/1802.04537
    """
    if not callable(fn):
        raise TypeError(f"`fn` must be callable; got {type(fn).__name__}.")
    check_positive_int("num", num)
    structure, leaves = _leaves(params)
    total = sum(t.numel() for t in leaves)
    if chunk_size is None:
        chunk_size = min(num, max(1, DEFAULT_CHUNK_ELEMENTS // max(total, 1)))
    else:
        chunk_size = min(check_positive_int("chunk_size", chunk_size), num)
    dtype = leaves[0].dtype
    for t in leaves[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    device = leaves[0].device
    if out is None:
        out = torch.empty(num, total, dtype=dtype, device=device)
    else:
        _check_out(out, (num, total), dtype, device)

    def scalar(p: Any, _: Tensor) -> Tensor:
        value = fn(p)
        if not isinstance(value, Tensor):
            raise TypeError(f"`fn` must return a torch.Tensor; got {type(value).__name__}.")
        if value.dim() != 0:
            raise ValueError(
                f"`fn` must return a scalar (shape []); got shape {list(value.shape)} — "
                "reduce it, e.g. with .sum() or .mean()."
            )
        return value

    batched = torch.func.vmap(torch.func.grad(scalar), in_dims=(None, 0), randomness="different")
    for start in range(0, num, chunk_size):
        size = min(chunk_size, num - start)
        grads = batched(structure, torch.zeros(size, device=device))
        grads = grads.values() if isinstance(grads, Mapping) else grads
        flat = [g.reshape(size, t.numel()) for g, t in zip(grads, leaves, strict=False)]
        with (
            torch.no_grad()
        ):  # gradients of fn's closed-over tensors that require grad stay out of the result
            torch.cat(flat, dim=1, out=out[start : start + size])
    if out.is_cpu:  # one reduction; on an accelerator the check would cost a host sync, so it is skipped
        suspect = ~torch.isfinite(out.sum(1))  # a row sum is finite iff its terms are (or they overflow)
        rows = [i for i in suspect.nonzero().flatten().tolist() if not bool(torch.isfinite(out[i]).all())]
        if rows:
            raise ValueError(
                f"`fn` must have finite gradients; {len(rows)} of {num} estimates are not (rows {rows[:5]}"
                f"{', ...' if len(rows) > 5 else ''}): check fn for overflow, log(0) or a division by zero."
            )
    return out


class Summary(NamedTuple):
    """Per-parameter statistics of ``num`` gradient estimates (all tensors ``[P]``).

    Attributes:
        mean: sample mean of the estimates.
        variance: unbiased sample variance (ddof = 1) of one estimate.
        std_error: standard error of ``mean``, ``sqrt(variance / num)``.
        snr: signal-to-noise ratio ``|mean| / sqrt(variance)`` of one estimate
            (inf where only the variance is 0, nan where both are).
        z: bias z-score ``(mean − reference) / std_error`` or ``None`` without a
            reference. Where the standard error is 0 (all estimates equal): 0 if
            ``|mean − reference| ≤ 8 · eps · max(|mean|, |reference|)``
            (an exact estimate, equal up to float rounding; ``eps`` of the
            samples' dtype), ±inf otherwise (a zero-variance but wrong estimate).
        num: number of estimates.
    """

    mean: Tensor
    variance: Tensor
    std_error: Tensor
    snr: Tensor
    z: Tensor | None
    num: int

    def table(self, names: Sequence[str] | None = None, *, max_rows: int = 20) -> str:
        """A plain-text table, one row per parameter (the first ``max_rows``)."""
        check_positive_int("max_rows", max_rows)
        P = self.mean.numel()
        if names is not None and len(names) != P:
            raise ValueError(f"`names` must have one entry per parameter ({P}); got {len(names)}.")
        labels = [str(n) for n in names] if names is not None else [str(i) for i in range(P)]
        width = max([5] + [len(s) for s in labels[:max_rows]])
        cols = ["mean", "variance", "std_error", "snr"] + (["z"] if self.z is not None else [])
        header = f"{'param':>{width}} " + " ".join(f"{c:>11}" for c in cols)
        lines = [f"Summary of {self.num} estimates, {P} parameters", header]
        values = [self.mean, self.variance, self.std_error, self.snr] + (
            [self.z] if self.z is not None else []
        )
        for i in range(min(P, max_rows)):
            row = " ".join(f"{float(v[i]):>11.4g}" for v in values)
            lines.append(f"{labels[i]:>{width}} {row}")
        if P > max_rows:
            lines.append(f"... ({P - max_rows} more)")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def summary(samples: Tensor, reference: Tensor | None = None) -> Summary:
    r"""Mean, variance, standard error, SNR and bias z-score of gradient estimates.

    .. math::
        \bar g = \frac1N \sum_n G_n, \quad
        s^2 = \frac{1}{N-1}\sum_n (G_n - \bar g)^2, \quad
        \mathrm{SE} = \frac{s}{\sqrt N}, \quad
        \mathrm{SNR} = \frac{|\bar g|}{s}, \quad
        z = \frac{\bar g - g^\star}{\mathrm{SE}}

    all elementwise over parameters. For an unbiased estimator, z is approximately
    standard normal (for large N); compare ``z.abs().max()`` with a
    Bonferroni-corrected threshold, e.g. ``scipy.stats.norm.isf(1e-3 / (2 P))``
    for a false-alarm rate of 1e-3 over P parameters.

    Zero variance: a parameter whose N estimates are all equal has that value as
    its mean (not a sum's rounding of it) and variance, SE 0. Its z cannot be a
    ratio: it is 0 when the mean equals the reference up to float rounding,
    :math:`|\bar g − g^\star| ≤ 8\,ε \max(|\bar g|, |g^\star|)` with ε the machine
    epsilon of the samples' dtype (a few ulps, room for the reference's own
    rounding; e.g. DisARM on one Bernoulli at θ = ½, which is exact), and ±inf
    otherwise (a zero-variance but wrong estimate, e.g. a pathwise gradient of a
    step function).

    Args:
        samples: ``[N, P]`` estimates (e.g. from :func:`gradient_samples`), N ≥ 2.
        reference: optional exact gradient ``[P]``.

    Returns:
        :class:`Summary` of ``[P]`` tensors (``z`` is ``None`` without ``reference``).

    References:
        Rainforth et al., "Tighter Variational Bounds are Not Necessarily Better", 2018
        (gradient SNR). https://arxiv.org/abs/1802.04537
    """
    if not isinstance(samples, Tensor):
        raise TypeError(f"`samples` must be a torch.Tensor [N, P]; got {type(samples).__name__}.")
    if samples.dim() != 2:
        raise ValueError(f"`samples` must have shape [N, P]; got shape {list(samples.shape)}.")
    N = samples.shape[0]
    if N < 2:
        raise ValueError(f"`samples` must hold N >= 2 estimates to estimate a variance; got {N}.")
    if not samples.is_floating_point():
        samples = samples.to(torch.get_default_dtype())
    samples = samples.detach()
    constant = (samples == samples[:1]).all(0)  # all N estimates equal: mean is that value, variance 0
    mean = torch.where(constant, samples[0], samples.mean(0))
    variance = torch.where(constant, torch.zeros_like(mean), samples.var(0, correction=1))
    std = variance.sqrt()
    std_error = std / math.sqrt(N)
    snr = mean.abs() / std
    z = None
    if reference is not None:
        if not isinstance(reference, Tensor):
            raise TypeError(f"`reference` must be a torch.Tensor [P]; got {type(reference).__name__}.")
        reference = reference.detach().to(samples).reshape(-1)
        if reference.numel() != samples.shape[1]:
            raise ValueError(
                f"`reference` must have P = {samples.shape[1]} elements; got shape {list(reference.shape)}."
            )
        error = mean - reference
        tolerance = 8 * torch.finfo(samples.dtype).eps * torch.maximum(mean.abs(), reference.abs())
        exact = (error == 0) | ((std_error == 0) & (error.abs() <= tolerance))
        z = torch.where(std_error > 0, error / std_error, error * math.inf)
        z = torch.where(exact, torch.zeros_like(z), z)
    return Summary(mean=mean, variance=variance, std_error=std_error, snr=snr, z=z, num=N)
