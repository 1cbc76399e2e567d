"""Variational objectives from log-weights: ELBO, IWAE (reparam / STL / DReG gradients), VIMCO.

All functions take per-sample log-densities ``log_p = log p(x, z_k)`` and
``log_q = log q(z_k | x)`` of shape ``[K, *batch]`` (K samples on dim 0) and return
a *value-preserving surrogate* of shape ``[*batch]``: its value is the bound (to be
**maximised**; minimise ``-bound.sum()``), its gradient the chosen estimator. All
reductions over K use log-sum-exp, so K up to 10⁴ in float32 with log-weights
spread over thousands of nats stays finite.

Which gradient flows where is decided by how ``log_q`` was computed:

========== ============================================ =====================================
gradient   ``log_q`` computed as                         z
========== ============================================ =====================================
reparam    ``q.log_prob(z)``                             ``q.rsample``/``Pathwise`` sample
stl        ``scg.stop_gradient(q).log_prob(z)``          reparameterised; ``z=z`` optional
dreg       ``scg.stop_gradient(q).log_prob(z)``          reparameterised, pass ``z=z``
vimco      ``q.log_prob(z)`` (attached)                  discrete / non-reparameterised, detached
========== ============================================ =====================================

References:
    Burda, Grosse & Salakhutdinov, "Importance Weighted Autoencoders", ICLR 2016.
    https://arxiv.org/abs/1509.00519
    Roeder, Wu & Duvenaud, "Sticking the Landing", NeurIPS 2017. https://arxiv.org/abs/1703.09194
    Tucker, Lawson, Gu & Maddison, "Doubly Reparameterized Gradient Estimators for Monte Carlo
    Objectives", ICLR 2019. https://arxiv.org/abs/1810.04152
    Mnih & Rezende, "Variational Inference for Monte Carlo Objectives", ICML 2016.
    https://arxiv.org/abs/1602.06725
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from scg._checks import host_checkable
from scg._dice import magic_box

__all__ = ["elbo", "iwae", "vimco", "log_mean_exp"]

_GRADIENTS = ("reparam", "stl", "dreg")


def _check_pair(log_p: Tensor, log_q: Tensor, *, min_k: int = 1) -> None:
    for name, t in (("log_p", log_p), ("log_q", log_q)):
        if not isinstance(t, Tensor):
            raise TypeError(f"`{name}` must be a torch.Tensor [K, *batch]; got {type(t).__name__}.")
        if t.dim() == 0:
            raise ValueError(f"`{name}` must have shape [K, *batch] with K samples on dim 0; got a scalar.")
        if not t.is_floating_point():
            raise TypeError(f"`{name}` must be a floating-point tensor; got dtype {t.dtype}.")
    if log_p.shape != log_q.shape:
        raise ValueError(
            f"`log_p` and `log_q` must have the same shape [K, *batch]; got {list(log_p.shape)} and {list(log_q.shape)}."
        )
    if log_p.shape[0] < min_k:
        raise ValueError(f"`log_p` must hold K >= {min_k} samples on dim 0; got K = {log_p.shape[0]}.")
    _check_finite(log_p, log_q)


def _check_finite(log_p: Tensor, log_q: Tensor) -> None:
    """NaN or +inf anywhere, −inf in ``log_q``, or a batch element whose K ``log_p`` are all −inf: ``ValueError``.

    A read on the host, so only on the CPU outside ``torch.func`` (as every finiteness check in scg).
    """
    if not (host_checkable(log_p) and host_checkable(log_q)):
        return
    lp, lq = log_p.detach(), log_q.detach()
    if torch.isfinite(lp).all() and torch.isfinite(lq).all():
        return
    for name, t in (("log_p", lp), ("log_q", lq)):
        if torch.isnan(t).any() or (t == math.inf).any():
            raise ValueError(
                f"`{name}` must not hold NaN or +inf; got {int((torch.isnan(t) | (t == math.inf)).sum())} such values."
            )
    if (lq == -math.inf).any():
        raise ValueError("`log_q` must be finite (the log-density of the proposal's own samples); got -inf.")
    if (lp == -math.inf).all(0).any():
        raise ValueError(
            "`log_p` must be finite for at least one of the K samples of every batch element; got "
            "-inf for all K of some element (the bound is -inf and its gradient undefined)."
        )


def log_mean_exp(x: Tensor, dim: int = 0) -> Tensor:
    r"""Stable :math:`\log \frac1K \sum_k e^{x_k}` along ``dim`` (log-sum-exp minus log K)."""
    return torch.logsumexp(x, dim=dim) - math.log(x.shape[dim])


def elbo(log_p: Tensor, log_q: Tensor) -> Tensor:
    r"""Monte Carlo evidence lower bound, :math:`\frac1K \sum_k \log p(x, z_k) − \log q(z_k)`.

    .. math:: \mathcal L = E_q[\log p(x, z) − \log q(z)] \le \log p(x)

    The gradient is whatever flows through ``log_p`` and ``log_q`` (pathwise when z
    is reparameterised; with ``log_q`` from ``scg.stop_gradient(q)`` it is the STL
    gradient, zero-variance when q is the exact posterior).

    Args:
        log_p: ``[K, *batch]`` log joint densities.
        log_q: ``[K, *batch]`` log variational densities of the same samples.

    Returns:
        ``[*batch]``, the mean over K (to maximise).

    References:
        Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014. https://arxiv.org/abs/1312.6114
    """
    _check_pair(log_p, log_q)
    return (log_p - log_q).mean(0)


def iwae(
    log_p: Tensor,
    log_q: Tensor,
    *,
    gradient: str = "reparam",
    z: Tensor | None = None,
) -> Tensor:
    r"""Importance-weighted bound :math:`\log \frac1K \sum_k w_k`, :math:`w_k = p(x, z_k)/q(z_k)`.

    .. math::
        \mathcal L_K = E\Big[\log \frac1K \sum_{k=1}^K w_k\Big], \qquad
        \log p(x) \ge \mathcal L_K \ge \mathcal L_{K-1} \ge \dots \ge \mathcal L_1 = \text{ELBO}

    Gradients (:math:`\tilde w_k = w_k / \sum_j w_j`, z reparameterised by φ, θ the model):

    * ``"reparam"``: :math:`\sum_k \tilde w_k ∇ \log w_k` through everything — the
      standard IWAE gradient. ``log_q = q.log_prob(z)``.
    * ``"stl"``: the same formula with ``log_q = scg.stop_gradient(q).log_prob(z)``
      (Roeder et al. 2017): drops the score term; zero variance at the exact
      posterior, but biased for K > 1 (Tucker et al. 2019, §3). With ``z=z`` the
      path derivative is taken explicitly (then an attached ``log_q`` works too).
    * ``"dreg"`` (Tucker et al. 2019): inference network
      :math:`\sum_k \tilde w_k^2\, ∂\log w_k/∂z_k\, ∂z_k/∂φ` (unbiased, SNR grows with K),
      model :math:`\sum_k \tilde w_k ∇_θ \log p(x, z_k)` (unchanged). Needs the
      reparameterised ``z``; ``log_q = scg.stop_gradient(q).log_prob(z)`` as for STL
      (an attached ``log_q`` gives the same result: only partial derivatives in z
      are used). Costs one extra ``torch.autograd.grad`` of the weighted log-weights
      with respect to z (works under ``torch.func.grad`` and ``vmap``). First-order only.

    Requires: for ``"stl"`` without ``z``, ``log_q`` must be computed with
    :func:`scg.stop_gradient` — otherwise the score term is back; ``log_p[k]`` and
    ``log_q[k]`` may depend only on ``z[k]`` (samples independent); z must not depend
    on the model parameters θ.

    Args:
        log_p: ``[K, *batch]`` log joint densities ``log p(x, z_k)``.
        log_q: ``[K, *batch]`` log variational densities (see the table above).
        gradient: ``"reparam"``, ``"stl"`` or ``"dreg"`` (keyword-only).
        z: ``[K, *batch, *event]`` reparameterised samples; required for ``"dreg"``,
            optional for ``"stl"``, ignored for ``"reparam"`` (keyword-only).

    Returns:
        ``[*batch]`` surrogate whose value is :math:`\log \frac1K \sum_k w_k` exactly.

    Example:
        >>> import torch, scg
        >>> from torch.distributions import Normal
        >>> _ = torch.manual_seed(0)
        >>> mu = torch.zeros(3, requires_grad=True)
        >>> q = Normal(mu, 1.0)
        >>> z = q.rsample((16,))                                    # [K=16, 3]
        >>> log_p = Normal(0.0, 2.0).log_prob(z) + Normal(z, 1.0).log_prob(torch.ones(3))
        >>> bound = scg.objectives.iwae(log_p, scg.stop_gradient(q).log_prob(z), gradient="dreg", z=z)
        >>> (-bound.sum()).backward()

    References:
        Burda, Grosse & Salakhutdinov, "Importance Weighted Autoencoders", ICLR 2016.
        Tucker, Lawson, Gu & Maddison, "Doubly Reparameterized Gradient Estimators for
        Monte Carlo Objectives", ICLR 2019, eq. (5)–(6). https://arxiv.org/abs/1810.04152
    """
    _check_pair(log_p, log_q)
    if gradient not in _GRADIENTS:
        raise ValueError(f"`gradient` must be one of {', '.join(map(repr, _GRADIENTS))}; got {gradient!r}.")
    log_w = log_p - log_q
    if gradient == "reparam" or (gradient == "stl" and z is None):
        return log_mean_exp(log_w)
    if z is None:
        raise ValueError(
            '`z` must be given for gradient="dreg": the reparameterised samples [K, *batch, *event] '
            "that log_p and log_q were computed from."
        )
    if not isinstance(z, Tensor):
        raise TypeError(f"`z` must be a torch.Tensor; got {type(z).__name__}.")
    if tuple(z.shape[: log_w.dim()]) != tuple(log_w.shape):
        raise ValueError(
            f"`z` must have shape [K, *batch, *event] with [K, *batch] = {list(log_w.shape)}; got {list(z.shape)}."
        )
    value = log_mean_exp(log_w)
    w = torch.softmax(log_w.detach(), dim=0)  # normalised weights w̃, [K, *batch]
    # Model θ: Σ w̃ ∇θ log p (z does not depend on θ). Its path through z is corrected below.
    model = (w * log_p).sum(0)
    extra = model - model.detach()
    # Inference network φ, through z only. One backward to z gives
    #   v_k = (c_k − w̃_k) ∂log p_k/∂z_k − c_k ∂log q_k/∂z_k,  c = w̃² (DReG) or w̃ (STL),
    # so that the φ-gradient of model + Σ v·z is Σ c_k ∂log w_k/∂z_k ∂z_k/∂φ. Partial
    # derivatives in z ignore any direct dependence of log_q on φ, so the result is right
    # even if log_q was not computed with scg.stop_gradient.
    c = w * w if gradient == "dreg" else w
    if z.requires_grad:
        weighted = ((c - w) * log_p - c * log_q).sum()
        (v,) = torch.autograd.grad(weighted, z, retain_graph=True, allow_unused=True)
        if v is not None:
            vz = v.detach() * z
            if z.dim() > log_w.dim():
                vz = vz.sum(dim=tuple(range(log_w.dim(), z.dim())))
            extra = extra + (vz - vz.detach()).sum(0)
    return value.detach() + extra


def vimco(log_p: Tensor, log_q: Tensor) -> Tensor:
    r"""VIMCO: multi-sample score-function surrogate for :math:`\log \frac1K \sum_k w_k` (discrete latents).

    .. math::
        \hat g = \sum_k \hat L(z_k \mid z_{-k})\, ∇ \log q(z_k) + \sum_k \tilde w_k ∇ \log w_k,
        \qquad \hat L(z_k \mid z_{-k}) = \hat L − \log \frac1K\Big(\sum_{j≠k} w_j + \hat w_{-k}\Big)

    with :math:`\hat L = \log \frac1K \sum_k w_k` and the per-sample leave-one-out
    baseline replacing :math:`w_k` by the geometric mean of the others,
    :math:`\log \hat w_{-k} = \frac{1}{K−1}\sum_{j≠k} \log w_j` (Mnih & Rezende 2016).

    Requires: K ≥ 2; ``log_q = q.log_prob(z)`` attached to q's parameters with z
    sampled *without* gradient (``q.sample``); ``log_p`` attached to the model.

    Properties: unbiased for :math:`∇ E[\hat L]` (the baseline of sample k does not
    depend on :math:`z_k`); the value is exactly :math:`\hat L`. All terms are computed
    in O(K) with log-sum-exp; the leave-one-out sums exclude the largest weight
    without cancellation, so K = 10⁴ in float32 stays finite.

    Args:
        log_p: ``[K, *batch]`` log joint densities ``log p(x, z_k)``.
        log_q: ``[K, *batch]`` log probabilities ``log q(z_k | x)`` (attached).

    Returns:
        ``[*batch]`` surrogate (to maximise) with value :math:`\hat L`.

    References:
        Mnih & Rezende, "Variational Inference for Monte Carlo Objectives", ICML 2016, eq. (8)–(10).
        https://arxiv.org/abs/1602.06725
    """
    _check_pair(log_p, log_q, min_k=2)
    log_w = log_p - log_q
    bound = log_mean_exp(log_w)
    with torch.no_grad():
        lw = log_w.detach()
        K = lw.shape[0]
        loo = _log_sum_exp_others(lw)  # log Σ_{j≠k} w_j, [K, *batch]
        geo = (lw.sum(0, keepdim=True) - lw) / (K - 1)  # log of the geometric mean of the others
        baseline = torch.logaddexp(loo, geo) - math.log(K)
        signal = bound.detach().unsqueeze(0) - baseline  # L̂(z_k | z_{-k})
    score = ((magic_box(log_q) - 1.0) * signal).sum(0)
    return bound + score


def _log_sum_exp_others(x: Tensor) -> Tensor:
    """``log Σ_{j≠k} exp(x_j)`` along dim 0 for every k, in O(K) and without cancellation.

    For k other than the argmax the sum contains the maximum term, so subtracting
    ``exp(x_k − max)`` from the shifted total loses no relative precision; for the
    argmax it is computed directly with that entry masked out.
    """
    K = x.shape[0]
    m = x.max(0, keepdim=True).values
    shifted = torch.exp(x - m)
    total = shifted.sum(0, keepdim=True)
    rest = (total - shifted).clamp_min(torch.finfo(x.dtype).tiny)
    others = m + torch.log(rest)
    index = x.argmax(0, keepdim=True)
    is_max = torch.arange(K, device=x.device).reshape(K, *([1] * (x.dim() - 1))) == index
    masked = torch.where(is_max, torch.full_like(x, -math.inf), x)
    top = torch.logsumexp(masked, dim=0, keepdim=True)  # log Σ over all but the argmax
    return torch.where(is_max, top.expand_as(x), others)
