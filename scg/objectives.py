"""Variational objectives from log-weights: ELBO, IWAE, Rényi, MIWAE/CIWAE/PIWAE, reweighted wake-sleep, VIMCO.

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
rws score  ``q.log_prob(z)`` (attached)                  detached (``q.sample``), or pass ``z=z``
rws dreg   ``scg.stop_gradient(q).log_prob(z)``          reparameterised, pass ``z=z``
vimco      ``q.log_prob(z)`` (attached)                  discrete / non-reparameterised, detached
========== ============================================ =====================================

:func:`renyi`, :func:`miwae`, :func:`ciwae` and :func:`piwae` are reparameterised
bounds between the ELBO and IWAE (the last three take :func:`iwae`'s ``gradient``);
:func:`rws`, :func:`rws_wake_q` and :func:`rws_wake_p` are reweighted wake-sleep's
wake-phase updates, whose inference-network gradient is not that of a bound.

References:
    Burda, Grosse & Salakhutdinov, "Importance Weighted Autoencoders", ICLR 2016.
    https://arxiv.org/abs/1509.00519
    Roeder, Wu & Duvenaud, "Sticking the Landing", NeurIPS 2017. https://arxiv.org/abs/1703.09194
    Tucker, Lawson, Gu & Maddison, "Doubly Reparameterized Gradient Estimators for Monte Carlo
    Objectives", ICLR 2019. https://arxiv.org/abs/1810.04152
    Mnih & Rezende, "Variational Inference for Monte Carlo Objectives", ICML 2016.
    https://arxiv.org/abs/1602.06725
    Li & Turner, "Rényi Divergence Variational Inference", NeurIPS 2016. https://arxiv.org/abs/1602.02311
    Rainforth, Kosiorek, Le, Maddison, Igl, Wood & Teh, "Tighter Variational Bounds are Not
    Necessarily Better", ICML 2018. https://arxiv.org/abs/1802.04537
    Bornschein & Bengio, "Reweighted Wake-Sleep", ICLR 2015. https://arxiv.org/abs/1406.2751
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from scg._checks import host_checkable
from scg._dice import magic_box

__all__ = [
    "elbo",
    "iwae",
    "vimco",
    "renyi",
    "miwae",
    "ciwae",
    "piwae",
    "rws",
    "rws_wake_q",
    "rws_wake_p",
    "log_mean_exp",
]

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
    return _grouped_bound(log_p, log_q, log_w, groups=1, gradient=gradient, z=z)


def _check_z(z: object, log_w: Tensor, need: str) -> Tensor:
    if z is None:
        raise ValueError(
            f"`z` must be given {need}: the reparameterised samples [K, *batch, *event] "
            "that log_p and log_q were computed from."
        )
    if not isinstance(z, Tensor):
        raise TypeError(f"`z` must be a torch.Tensor; got {type(z).__name__}.")
    if tuple(z.shape[: log_w.dim()]) != tuple(log_w.shape):
        raise ValueError(
            f"`z` must have shape [K, *batch, *event] with [K, *batch] = {list(log_w.shape)}; got {list(z.shape)}."
        )
    return z


def _through_z(weighted: Tensor, z: Tensor, batch_dims: int) -> Tensor:
    r"""A zero-valued ``[*batch]`` term whose gradient is :math:`\sum_k v_k\, ∂z_k/∂(\cdot)`, ``v = ∂ weighted/∂z``.

    ``v`` holds only partial derivatives in z (one ``torch.autograd.grad``; parameters that reach
    ``weighted`` other than through z do not enter). Zero when z does not require gradients.
    """
    if not z.requires_grad:
        return torch.zeros((), dtype=weighted.dtype, device=weighted.device)
    (v,) = torch.autograd.grad(weighted, z, retain_graph=True, allow_unused=True)
    if v is None:
        return torch.zeros((), dtype=weighted.dtype, device=weighted.device)
    vz = v.detach() * z
    if z.dim() > batch_dims:
        vz = vz.sum(dim=tuple(range(batch_dims, z.dim())))
    return (vz - vz.detach()).sum(0)


def _grouped(x: Tensor, groups: int) -> Tensor:
    """``[M·K, *batch] -> [M, K, *batch]``: sample k belongs to group ``k // K``."""
    return x.unflatten(0, (groups, x.shape[0] // groups))


def _group_weights(log_w: Tensor, groups: int) -> Tensor:
    """Detached weights normalised within each group and divided by M, ``[M·K, *batch]`` (they sum to 1)."""
    return torch.softmax(_grouped(log_w.detach(), groups), dim=1).flatten(0, 1) / groups


def _grouped_bound(
    log_p: Tensor, log_q: Tensor, log_w: Tensor, *, groups: int, gradient: str, z: Tensor | None
) -> Tensor:
    r"""MIWAE surrogate :math:`\frac1M \sum_m \log \frac1K \sum_k w_{mk}` with the IWAE gradients per group."""
    value = log_mean_exp(log_w) if groups == 1 else log_mean_exp(_grouped(log_w, groups), dim=1).mean(0)
    if gradient == "reparam" or (gradient == "stl" and z is None):
        return value
    z = _check_z(z, log_w, f'for gradient="{gradient}"')
    w = _group_weights(log_w, groups)  # w̃_k / M
    # Model θ: Σ w ∇θ log p (z does not depend on θ). Its path through z is corrected below.
    model = (w * log_p).sum(0)
    # Inference network φ, through z only: v_k = (c_k − w_k) ∂log p_k/∂z_k − c_k ∂log q_k/∂z_k with
    # c = w̃²/M (DReG) or w̃/M (STL), so that the φ-gradient is Σ c_k ∂log w_k/∂z_k ∂z_k/∂φ. Partial
    # derivatives in z ignore any direct dependence of log_q on φ (an attached log_q works too).
    c = groups * w * w if gradient == "dreg" else w
    path = _through_z(((c - w) * log_p - c * log_q).sum(), z, log_w.dim())
    return value.detach() + (model - model.detach()) + path


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


def _check_real(name: str, value: object, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`{name}` must be a real number; got {type(value).__name__} ({value!r}).")
    if not low <= value <= high:
        raise ValueError(f"`{name}` must be in [{low}, {high}]; got {value}.")
    return float(value)


def renyi(log_p: Tensor, log_q: Tensor, *, alpha: float) -> Tensor:
    r"""Variational Rényi (VR) bound :math:`\frac{1}{1−α} \log \frac1K \sum_k w_k^{1−α}`.

    .. math::
        \hat{\mathcal L}_α = \frac{1}{1−α} \log \frac1K \sum_{k=1}^K w_k^{1−α}, \qquad
        \hat{\mathcal L}_1 = \frac1K \sum_k \log w_k, \quad \hat{\mathcal L}_0 = \log \frac1K \sum_k w_k,
        \quad \hat{\mathcal L}_{−∞} = \max_k \log w_k

    The limits are returned exactly: α = 1 is :func:`elbo`, α = 0 is :func:`iwae`
    (bit for bit), α = −∞ the VR-max objective and α = +∞ the minimum log-weight.
    Near α = 1 the value is computed without cancellation (``expm1``/``log1p`` when
    :math:`|1−α| (\max_k \log w_k − \min_k \log w_k) \le 1`), so it is continuous there.

    Gradient: reparameterised through everything,
    :math:`\sum_k \tilde w_k^{(α)} ∇ \log w_k` with :math:`\tilde w^{(α)} ∝ w^{1−α}`
    (Li & Turner 2016); ``log_q = q.log_prob(z)`` with ``z = q.rsample(...)``.

    Properties: :math:`\hat{\mathcal L}_α` is non-increasing in α for every draw (a
    power mean of the weights). For α ∈ [0, 1] it lies between the ELBO and the IWAE
    estimate, so its expectation is a lower bound on log p(x) that tightens as α → 0;
    for α < 0 its expectation can exceed log p(x) (not a bound).

    Args:
        log_p: ``[K, *batch]`` log joint densities ``log p(x, z_k)``.
        log_q: ``[K, *batch]`` log variational densities ``log q(z_k | x)``.
        alpha: α, a real number or ±``math.inf`` (keyword-only).

    Returns:
        ``[*batch]``, the estimate (to maximise).

    Example:
        >>> import torch
        >>> from scg.objectives import elbo, iwae, renyi
        >>> log_p, log_q = torch.randn(8, 3), torch.randn(8, 3)
        >>> torch.equal(renyi(log_p, log_q, alpha=0.0), iwae(log_p, log_q))
        True
        >>> bound = renyi(log_p, log_q, alpha=0.5)        # between elbo(...) and iwae(...)

    References:
        Li & Turner, "Rényi Divergence Variational Inference", NeurIPS 2016.
        https://arxiv.org/abs/1602.02311
    """
    _check_pair(log_p, log_q)
    alpha = _check_real("alpha", alpha, -math.inf, math.inf)
    log_w = log_p - log_q
    if alpha == 1.0:
        return log_w.mean(0)
    if alpha == 0.0:
        return log_mean_exp(log_w)
    if math.isinf(alpha):
        return log_w.max(0).values if alpha < 0 else log_w.min(0).values
    s = 1.0 - alpha
    top = log_w.detach().max(0, keepdim=True).values  # the value does not depend on the shift
    u = s * (log_w - top)  # finite, or -inf (s > 0) / +inf (s < 0) where w_k = 0
    near = (u.detach().abs() <= 1.0).all(0)  # [*batch]
    safe = torch.where(near.unsqueeze(0), u, torch.zeros_like(u))
    small = torch.log1p(torch.expm1(safe).mean(0))  # log mean exp(u) without cancellation
    return top.squeeze(0) + torch.where(near, small, log_mean_exp(u)) / s


def miwae(
    log_p: Tensor, log_q: Tensor, *, num_groups: int, gradient: str = "reparam", z: Tensor | None = None
) -> Tensor:
    r"""Multiply importance-weighted bound: the mean of M IWAE bounds of K samples each.

    .. math::
        \mathrm{MIWAE}_{M,K} = \frac1M \sum_{m=1}^M \log \frac1K \sum_{k=1}^K w_{m,k}, \qquad
        \mathrm{ELBO} = \mathrm{MIWAE}_{MK,1} \le \mathrm{MIWAE}_{M,K} \le \mathrm{MIWAE}_{1,MK} = \mathrm{IWAE}_{MK}
        \ \text{(in expectation)}

    The ``M·K`` samples on dim 0 form M contiguous groups: sample j belongs to group
    ``j // K``. Each group's gradient is the :func:`iwae` gradient chosen by ``gradient``
    (same inputs: ``log_q`` attached for ``"reparam"``, from :func:`scg.stop_gradient`
    for ``"stl"``/``"dreg"``, ``z`` required for ``"dreg"``).

    Properties: the bound is looser than IWAE with the same M·K samples, but the
    inference-network gradient's signal-to-noise ratio grows like :math:`\sqrt M`
    where IWAE's shrinks like :math:`1/\sqrt{K}` (Rainforth et al. 2018).

    Args:
        log_p: ``[M·K, *batch]`` log joint densities.
        log_q: ``[M·K, *batch]`` log variational densities.
        num_groups: M ≥ 1, dividing the number of samples (keyword-only).
        gradient: ``"reparam"``, ``"stl"`` or ``"dreg"``, as for :func:`iwae` (keyword-only).
        z: ``[M·K, *batch, *event]`` reparameterised samples, as for :func:`iwae` (keyword-only).

    Returns:
        ``[*batch]`` surrogate whose value is :math:`\mathrm{MIWAE}_{M,K}` exactly.

    Example:
        >>> import torch, scg
        >>> from torch.distributions import Normal
        >>> mu = torch.zeros(3, requires_grad=True)
        >>> z = Normal(mu, 1.0).rsample((4 * 8,))                  # M = 4 groups of K = 8
        >>> log_p = Normal(0.0, 1.0).log_prob(z) + Normal(z, 1.0).log_prob(torch.ones(3))
        >>> bound = scg.objectives.miwae(log_p, Normal(mu, 1.0).log_prob(z), num_groups=4)
        >>> (-bound.sum()).backward()

    References:
        Rainforth, Kosiorek, Le, Maddison, Igl, Wood & Teh, "Tighter Variational Bounds
        are Not Necessarily Better", ICML 2018. https://arxiv.org/abs/1802.04537
    """
    _check_groups(log_p, log_q, num_groups)
    if gradient not in _GRADIENTS:
        raise ValueError(f"`gradient` must be one of {', '.join(map(repr, _GRADIENTS))}; got {gradient!r}.")
    return _grouped_bound(log_p, log_q, log_p - log_q, groups=num_groups, gradient=gradient, z=z)


def _check_groups(log_p: Tensor, log_q: Tensor, num_groups: object) -> None:
    _check_pair(log_p, log_q)
    if isinstance(num_groups, bool) or not isinstance(num_groups, int):
        raise TypeError(f"`num_groups` must be an int; got {type(num_groups).__name__} ({num_groups!r}).")
    n = log_p.shape[0]
    if num_groups < 1 or n % num_groups:
        raise ValueError(
            f"`num_groups` must be a positive divisor of the number of samples M·K = {n}; got {num_groups}."
        )


def ciwae(
    log_p: Tensor, log_q: Tensor, *, beta: float, gradient: str = "reparam", z: Tensor | None = None
) -> Tensor:
    r"""Combination of the ELBO and the IWAE bound on the same K samples: :math:`β\,\mathrm{ELBO} + (1−β)\,\mathrm{IWAE}_K`.

    .. math::
        \mathrm{CIWAE}_β = β\, \frac1K \sum_k \log w_k + (1 − β) \log \frac1K \sum_k w_k, \qquad β \in [0, 1]

    β = 1 is the ELBO, β = 0 the IWAE bound; in between the bound is a lower bound on
    log p(x) whose inference-network gradient keeps part of the ELBO's signal-to-noise
    ratio (Rainforth et al. 2018). The IWAE term's gradient is chosen by
    ``gradient`` exactly as in :func:`iwae` (same inputs); the ELBO term's gradient is
    what flows through ``log_p`` and ``log_q`` (reparameterised, or STL with a stopped
    ``log_q``: unbiased for the ELBO either way).

    Args:
        log_p: ``[K, *batch]`` log joint densities.
        log_q: ``[K, *batch]`` log variational densities.
        beta: β ∈ [0, 1] (keyword-only).
        gradient: ``"reparam"``, ``"stl"`` or ``"dreg"`` for the IWAE term (keyword-only).
        z: ``[K, *batch, *event]`` reparameterised samples, as for :func:`iwae` (keyword-only).

    Returns:
        ``[*batch]`` surrogate whose value is :math:`\mathrm{CIWAE}_β`.

    Example:
        >>> import torch
        >>> from scg.objectives import ciwae
        >>> bound = ciwae(torch.randn(8, 3), torch.randn(8, 3), beta=0.5)

    References:
        Rainforth et al., "Tighter Variational Bounds are Not Necessarily Better", ICML 2018.
        https://arxiv.org/abs/1802.04537
    """
    _check_pair(log_p, log_q)
    beta = _check_real("beta", beta, 0.0, 1.0)
    return beta * (log_p - log_q).mean(0) + (1.0 - beta) * iwae(log_p, log_q, gradient=gradient, z=z)


def piwae(log_p: Tensor, log_q: Tensor, *, num_groups: int, z: Tensor, gradient: str = "reparam") -> Tensor:
    r"""Partially importance-weighted surrogate: IWAE_{MK} for the model, MIWAE_{M,K} for the inference network.

    .. math::
        ∇_θ\, \mathrm{PIWAE} = ∇_θ \log \frac{1}{MK} \sum_{j=1}^{MK} w_j = \sum_j \tilde w_j\, ∇_θ \log p(x, z_j),
        \qquad ∇_φ\, \mathrm{PIWAE} = ∇_φ\, \mathrm{MIWAE}_{M,K}

    One surrogate, one backward, one optimiser for both networks: the model θ gets the
    gradient of the tighter bound, the inference network φ the gradient of the bound
    with the better signal-to-noise ratio (Rainforth et al. 2018). The split is
    made by stop-gradient masking: the MIWAE surrogate supplies φ's gradient; a
    zero-valued term re-weights θ's gradient from the per-group weights to the
    weights over all M·K samples, and its path through z is cancelled by one
    ``torch.autograd.grad`` with respect to z (so z must be the tensor that ``log_p``
    was computed from).

    Requires: θ reaches the surrogate only through ``log_p`` and φ only through z and
    ``log_q`` (disjoint parameters, z independent of θ); the inputs of :func:`miwae`
    for the chosen ``gradient``. First-order only.

    Args:
        log_p: ``[M·K, *batch]`` log joint densities; groups as in :func:`miwae`.
        log_q: ``[M·K, *batch]`` log variational densities.
        num_groups: M ≥ 1, dividing the number of samples (keyword-only).
        z: ``[M·K, *batch, *event]`` reparameterised samples (keyword-only, required).
        gradient: the MIWAE gradient for φ, ``"reparam"``, ``"stl"`` or ``"dreg"`` (keyword-only).

    Returns:
        ``[*batch]`` surrogate whose value is :math:`\mathrm{IWAE}_{MK}` exactly (the
        model's objective; call :func:`miwae` for the other value).

    Example:
        >>> import torch, scg
        >>> from torch.distributions import Normal
        >>> mu, m = torch.zeros(3, requires_grad=True), torch.zeros(3, requires_grad=True)
        >>> q = Normal(mu, 1.0)                                     # inference network (φ = mu)
        >>> z = q.rsample((4 * 8,))                                 # M = 4 groups of K = 8
        >>> log_p = Normal(m, 1.0).log_prob(z) + Normal(z, 1.0).log_prob(torch.ones(3))  # model (θ = m)
        >>> bound = scg.objectives.piwae(log_p, q.log_prob(z), num_groups=4, z=z)
        >>> (-bound.sum()).backward()            # m.grad: IWAE_32's gradient; mu.grad: MIWAE_4,8's

    References:
        Rainforth et al., "Tighter Variational Bounds are Not Necessarily Better", ICML 2018
        (PIWAE). https://arxiv.org/abs/1802.04537
    """
    _check_groups(log_p, log_q, num_groups)
    log_w = log_p - log_q
    z = _check_z(z, log_w, "to piwae")
    inner = miwae(log_p, log_q, num_groups=num_groups, gradient=gradient, z=z)
    delta = torch.softmax(log_w.detach(), dim=0) - _group_weights(log_w, num_groups)
    reweigh = (delta * log_p).sum(0)
    path = _through_z(-reweigh.sum(), z, log_w.dim())
    value = log_mean_exp(log_w).detach()
    return value + (inner - inner.detach()) + (reweigh - reweigh.detach()) + path


_RWS_GRADIENTS = ("score", "dreg")


def rws(log_p: Tensor, log_q: Tensor, *, gradient: str = "score", z: Tensor | None = None) -> Tensor:
    r"""Reweighted wake-sleep, wake phase: model and inference network in one surrogate.

    .. math::
        ∇_θ = \sum_k \tilde w_k\, ∇_θ \log p(x, z_k) \;(= ∇_θ\, \mathrm{IWAE}_K), \qquad
        ∇_φ = \sum_k \tilde w_k\, ∇_φ \log q_φ(z_k) \quad (\text{``score''})
        \quad\text{or}\quad \sum_k (\tilde w_k − \tilde w_k^2)\, \frac{∂ \log w_k}{∂ z_k} \frac{∂ z_k}{∂ φ}
        \quad (\text{``dreg''})

    with :math:`\tilde w_k = w_k / \sum_j w_j` (detached). The model ascends the IWAE
    bound; the inference network ascends a self-normalised importance-sampling estimate
    of :math:`E_{p(z|x)}[\log q_φ(z)]`, i.e. descends :math:`\mathrm{KL}(p(z|x) \| q_φ)`
    (the wake-phase q update; the sleep phase, which needs samples of the model, is
    not included). Both are what :func:`rws_wake_p` and :func:`rws_wake_q` give apart.

    * ``"score"`` (Bornschein & Bengio 2015): z drawn without gradient (``q.sample``)
      and ``log_q = q.log_prob(z)`` attached to φ. Works for discrete latents. With
      ``z=z`` given and attached, its path is removed, so a reparameterised sample
      works too.
    * ``"dreg"`` (Tucker et al. 2019, RWS-DReG): the same expectation, by the
      reparameterisation of the score; z reparameterised (``q.rsample``) and passed as
      ``z``; ``log_q = scg.stop_gradient(q).log_prob(z)`` (an attached ``log_q`` gives
      the same result: only its partial derivatives in z are used). One extra
      ``torch.autograd.grad`` with respect to z. First-order only.

    Properties: the φ-gradient is a self-normalised importance-sampling estimate,
    biased for finite K with a bias that vanishes as K → ∞. The two variants have the
    same expectation; DReG's is zero for every draw when q is the exact posterior (all
    :math:`∂\log w_k/∂z_k` vanish), the score form's is not. The θ-gradient is the IWAE
    one. Requires ``log_p[k]``, ``log_q[k]`` to depend only on ``z[k]`` and z not on θ.

    Args:
        log_p: ``[K, *batch]`` log joint densities ``log p(x, z_k)``.
        log_q: ``[K, *batch]`` log variational densities (see above).
        gradient: ``"score"`` or ``"dreg"`` (keyword-only).
        z: ``[K, *batch, *event]`` samples; required for ``"dreg"``, optional for
            ``"score"`` (keyword-only).

    Returns:
        ``[*batch]`` surrogate whose value is :math:`\log \frac1K \sum_k w_k` exactly.

    Example:
        >>> import torch, scg
        >>> from torch.distributions import Normal
        >>> mu, m = torch.zeros(3, requires_grad=True), torch.zeros(3, requires_grad=True)
        >>> q = Normal(mu, 1.0)
        >>> z = q.rsample((16,))
        >>> log_p = Normal(m, 1.0).log_prob(z) + Normal(z, 1.0).log_prob(torch.ones(3))
        >>> bound = scg.objectives.rws(log_p, scg.stop_gradient(q).log_prob(z), gradient="dreg", z=z)
        >>> (-bound.sum()).backward()

    References:
        Bornschein & Bengio, "Reweighted Wake-Sleep", ICLR 2015. https://arxiv.org/abs/1406.2751
        Tucker, Lawson, Gu & Maddison, "Doubly Reparameterized Gradient Estimators for
        Monte Carlo Objectives", ICLR 2019 (RWS-DReG). https://arxiv.org/abs/1810.04152
    """
    return _rws(log_p, log_q, gradient=gradient, z=z, model=True, inference=True)


def rws_wake_q(log_p: Tensor, log_q: Tensor, *, gradient: str = "score", z: Tensor | None = None) -> Tensor:
    r"""The wake-phase inference-network update of reweighted wake-sleep alone (no gradient to the model).

    .. math::
        ∇_φ = \sum_k \tilde w_k\, ∇_φ \log q_φ(z_k) \quad (\text{``score''}), \qquad
        \sum_k (\tilde w_k − \tilde w_k^2)\, \frac{∂ \log w_k}{∂ z_k} \frac{∂ z_k}{∂ φ} \quad (\text{``dreg''})

    Inputs, requirements and properties as in :func:`rws`; the model parameters get no
    gradient (for a separate optimiser). The value is the IWAE bound, for logging.

    Args:
        log_p: ``[K, *batch]`` log joint densities.
        log_q: ``[K, *batch]`` log variational densities.
        gradient: ``"score"`` or ``"dreg"`` (keyword-only).
        z: ``[K, *batch, *event]`` samples; required for ``"dreg"`` (keyword-only).

    Returns:
        ``[*batch]`` surrogate whose value is :math:`\log \frac1K \sum_k w_k`.

    Example:
        >>> import torch
        >>> from torch.distributions import Normal
        >>> from scg.objectives import rws_wake_q
        >>> mu = torch.zeros(3, requires_grad=True)
        >>> z = Normal(mu, 1.0).sample((16,))                       # no gradient through z
        >>> log_p = Normal(0.0, 1.0).log_prob(z) + Normal(z, 1.0).log_prob(torch.ones(3))
        >>> (-rws_wake_q(log_p, Normal(mu, 1.0).log_prob(z)).sum()).backward()

    References:
        Bornschein & Bengio, "Reweighted Wake-Sleep", ICLR 2015. https://arxiv.org/abs/1406.2751
        Tucker et al., "Doubly Reparameterized Gradient Estimators for Monte Carlo Objectives",
        ICLR 2019. https://arxiv.org/abs/1810.04152
    """
    return _rws(log_p, log_q, gradient=gradient, z=z, model=False, inference=True)


def rws_wake_p(log_p: Tensor, log_q: Tensor, *, z: Tensor | None = None) -> Tensor:
    r"""The wake-phase model update of reweighted wake-sleep alone: the IWAE bound's gradient in θ.

    .. math:: ∇_θ = \sum_k \tilde w_k\, ∇_θ \log p_θ(x, z_k) = ∇_θ \log \frac1K \sum_k w_k

    Nothing flows to the inference network: not through ``log_q``, and not through z
    when z is passed as ``z`` (its path through ``log_p`` is cancelled); without ``z``,
    z must be drawn without gradient (``q.sample`` or ``z.detach()``).

    Args:
        log_p: ``[K, *batch]`` log joint densities.
        log_q: ``[K, *batch]`` log variational densities.
        z: ``[K, *batch, *event]`` samples, optional (keyword-only).

    Returns:
        ``[*batch]`` surrogate whose value is :math:`\log \frac1K \sum_k w_k`.

    Example:
        >>> import torch
        >>> from torch.distributions import Normal
        >>> from scg.objectives import rws_wake_p
        >>> m = torch.zeros(3, requires_grad=True)
        >>> z = Normal(0.0, 1.0).sample((16, 3))
        >>> log_p = Normal(m, 1.0).log_prob(z) + Normal(z, 1.0).log_prob(torch.ones(3))
        >>> (-rws_wake_p(log_p, Normal(0.0, 1.0).log_prob(z)).sum()).backward()

    References:
        Bornschein & Bengio, "Reweighted Wake-Sleep", ICLR 2015. https://arxiv.org/abs/1406.2751
    """
    return _rws(log_p, log_q, gradient="score", z=z, model=True, inference=False)


def _rws(
    log_p: Tensor, log_q: Tensor, *, gradient: str, z: Tensor | None, model: bool, inference: bool
) -> Tensor:
    """The wake-phase surrogates: value log-mean-exp; θ through ``log_p``, φ per ``gradient``."""
    _check_pair(log_p, log_q)
    if gradient not in _RWS_GRADIENTS:
        raise ValueError(
            f"`gradient` must be one of {', '.join(map(repr, _RWS_GRADIENTS))}; got {gradient!r}."
        )
    log_w = log_p - log_q
    dreg = inference and gradient == "dreg"
    if z is not None or dreg:
        z = _check_z(z, log_w, f'for gradient="{gradient}"')
    w = torch.softmax(log_w.detach(), dim=0)
    terms = torch.zeros_like(w)
    if model:
        terms = terms + w * (log_p - log_p.detach())
    if inference and not dreg:
        terms = terms + w * (log_q - log_q.detach())
    out = log_mean_exp(log_w).detach() + terms.sum(0)
    if z is None:
        return out
    # The path through z: wanted c ∂log w/∂z (c = w̃ − w̃² for DReG, else 0); the terms above
    # carry a ∂log p/∂z + b ∂log q/∂z. One backward to z gives the difference.
    c = w - w * w if dreg else torch.zeros_like(w)
    a = w if model else torch.zeros_like(w)
    b = w if inference and not dreg else torch.zeros_like(w)
    return out + _through_z(((c - a) * log_p - (c + b) * log_q).sum(), z, log_w.dim())
