"""Case 1 — Gaussian VAE on the 8×8 digits, pathwise gradients: scg vs hand-written PyTorch vs Pyro.

Model (the same modules, copied, for every contender): ``scg.models.GaussianEncoder``
64 → 200 → 200 → 2×16 (tanh), ``BernoulliDecoder`` 16 → 200 → 200 → 64, prior
N(0, I); batch of 100 binarised training digits; one sample of z per data point;
loss = batch mean of the negative ELBO with a Monte Carlo KL,
``E_q[log q(z|x) − log p(z) − log p(x|z)]`` (Pyro's ``Trace_ELBO`` estimates the KL
by sampling, so scg's ``VAE`` runs with ``kl="mc"`` here: all three compute the same
estimator); Adam, lr 1e-3.

* ``scg.expectation``: the cost ``log q(z|x) − log p(z) − log p(x|z)`` written in plain
  PyTorch (``cost_fn``: binary cross-entropy, closed-form Gaussian log-densities), its
  expectation under ``Independent(Normal(μ, σ), 1)`` through ``scg.expectation`` with
  ``scg.Pathwise()`` — what scg's machinery costs over the hand-written step;
* ``scg.models.VAE``: the packaged model, ``VAE(..., kl="mc").loss(x)``, whose
  log-densities are ``torch.distributions.Independent`` distributions built by the
  encoder, decoder and prior modules each step;
* ``hand-written``: the same ``cost_fn`` at ``z = μ + σ·ε``, no scg.
* ``hand-written, torch.distributions``: the same, with z from
  ``Independent(Normal(μ, σ), 1).rsample()``: separates what the API implies (a
  Distribution object) from what scg's own code costs.
* ``pyro``: model/guide with ``pyro.plate`` and ``poutine.scale(1/B)`` (batch mean),
  ``SVI(model, guide, pyro.optim.Adam, Trace_ELBO()).step(x)`` (Pyro's Adam is one
  ``torch.optim.Adam`` per parameter: the same update).

All draw ε with one ``torch.randn``-equivalent call of shape ``[B, L]``, so after the
same seed they see the same noise: the check compares objective values (and the
gradients of scg and hand-written, and Pyro's ``differentiable_loss`` gradient).

Run alone: ``python benchmarks/case_vae.py [--quick]`` (or through ``run.py``).
"""

from __future__ import annotations

import copy
import math
import os
import sys

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _case import Case, Contender, Options, Result, Target, peer, ratio, time_case  # noqa: E402

NAME = "vae"
TITLE = "1. Gaussian VAE, pathwise (training step)"
SIZES = {  # batch, hidden, latent
    "full": (100, (200, 200), 16),
    "quick": (8, (16,), 4),
}
LR = 1e-3
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def data(batch: int, device: torch.device) -> Tensor:
    from scg.models.data import digits

    return digits().train[:batch].to(device)


def flat_grads(params: list[nn.Parameter]) -> Tensor:
    return torch.cat([p.grad.reshape(-1) for p in params])


def make_models_vae(enc: nn.Module, dec: nn.Module, x: Tensor) -> Contender:
    """The packaged model: ``scg.models.VAE`` (distribution objects built by its modules each step)."""
    import scg
    from scg.models import VAE

    vae = VAE(enc, dec, estimator=scg.Pathwise(), kl="mc")
    opt = torch.optim.Adam(vae.parameters(), lr=LR)
    params = list(enc.parameters()) + list(dec.parameters())

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        vae.loss(x).backward()
        opt.step()

    def grads() -> Tensor:
        opt.zero_grad(set_to_none=True)
        vae.loss(x).backward()
        return flat_grads(params)

    return Contender("scg.models.VAE", step, value=lambda: float(vae.loss(x).detach()), grads=grads)


def cost_fn(loc: Tensor, scale: Tensor, dec: nn.Module, x: Tensor):
    """The per-sample cost ``log q(z|x) − log p(z) − log p(x|z)``, ``[S, B, L] -> [S, B]`` — plain PyTorch."""
    log_scale = torch.log(scale)

    def cost(z: Tensor) -> Tensor:
        logits = dec.net(z)
        nll = F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
        e = (z - loc) / scale
        log_q = (-0.5 * e * e - log_scale - HALF_LOG_2PI).sum(-1)
        log_pz = (-0.5 * z * z - HALF_LOG_2PI).sum(-1)
        return nll + log_q - log_pz

    return cost


def scg_loss(enc: nn.Module, dec: nn.Module, x: Tensor, estimator) -> Tensor:
    """The hand-written cost, its expectation through ``scg.expectation`` (batch mean)."""
    from torch.distributions import Independent, Normal

    import scg

    loc, scale, _ = enc.params(x)
    q = Independent(Normal(loc, scale), 1)
    return scg.expectation(cost_fn(loc, scale, dec, x), q, estimator).mean()


def hand_loss(enc: nn.Module, dec: nn.Module, x: Tensor) -> Tensor:
    """The same cost at ``z = μ + σ ε`` (batch mean) — no scg."""
    loc, scale, _ = enc.params(x)
    eps = torch.randn((1, *loc.shape), dtype=loc.dtype, device=loc.device)
    return cost_fn(loc, scale, dec, x)(loc + scale * eps).mean(0).mean()


def hand_dists_loss(enc: nn.Module, dec: nn.Module, x: Tensor) -> Tensor:
    """The same, but z from an ``Independent(Normal)`` object's ``rsample`` — what the API implies, without scg."""
    from torch.distributions import Independent, Normal

    loc, scale, _ = enc.params(x)
    z = Independent(Normal(loc, scale), 1).rsample((1,))  # loc + ε·scale, ε from the same generator call
    return cost_fn(loc, scale, dec, x)(z).mean(0).mean()


def make_loss_contender(name: str, loss, enc: nn.Module, dec: nn.Module, x: Tensor) -> Contender:
    params = list(enc.parameters()) + list(dec.parameters())
    opt = torch.optim.Adam(params, lr=LR)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss(enc, dec, x).backward()
        opt.step()

    def grads() -> Tensor:
        opt.zero_grad(set_to_none=True)
        loss(enc, dec, x).backward()
        return flat_grads(params)

    return Contender(name, step, value=lambda: float(loss(enc, dec, x).detach()), grads=grads)


def make_pyro(pyro, enc: nn.Module, dec: nn.Module, x: Tensor, tag: str = "vae") -> Contender:
    import pyro.distributions as dist
    from pyro import poutine
    from pyro.infer import SVI, Trace_ELBO

    B, L = x.shape[0], enc.z_dim

    def model(x: Tensor) -> None:
        pyro.module(f"{tag}_decoder", dec)
        with pyro.plate("data", B), poutine.scale(scale=1.0 / B):
            zeros = x.new_zeros(B, L)
            z = pyro.sample("z", dist.Normal(zeros, torch.ones_like(zeros)).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=dec.net(z), validate_args=False).to_event(1), obs=x)

    def guide(x: Tensor) -> None:
        pyro.module(f"{tag}_encoder", enc)
        with pyro.plate("data", B), poutine.scale(scale=1.0 / B):
            loc, scale, _ = enc.params(x)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    elbo = Trace_ELBO()
    svi = SVI(model, guide, pyro.optim.Adam({"lr": LR}), elbo)
    params = list(enc.parameters()) + list(dec.parameters())

    def grads() -> Tensor:
        for p in params:
            p.grad = None
        elbo.differentiable_loss(model, guide, x).backward()
        return flat_grads(params)

    return Contender(
        "pyro Trace_ELBO",
        lambda: svi.step(x),
        value=lambda: elbo.loss(model, guide, x),
        grads=grads,
    )


def build(opts: Options) -> Case:
    from scg.models import BernoulliDecoder, GaussianEncoder

    batch, hidden, latent = SIZES["quick" if opts.quick else "full"]
    device = opts.torch_device
    torch.manual_seed(opts.seed)
    enc = GaussianEncoder(64, latent, hidden).to(device)
    dec = BernoulliDecoder(latent, 64, hidden).to(device)
    x = data(batch, device)
    copies = lambda: (copy.deepcopy(enc), copy.deepcopy(dec))  # noqa: E731
    skipped: list[str] = []
    import scg

    pathwise = scg.Pathwise()
    contenders = [
        make_loss_contender("scg.expectation", lambda e, d, x: scg_loss(e, d, x, pathwise), *copies(), x),
        make_models_vae(*copies(), x),
        make_loss_contender("hand-written", hand_loss, *copies(), x),
        make_loss_contender("hand-written, torch.distributions", hand_dists_loss, *copies(), x),
    ]
    pyro = peer("pyro", skipped, "pyro Trace_ELBO")
    if pyro is not None:
        pyro.clear_param_store()
        contenders.append(make_pyro(pyro, *copies(), x))
    setup = (
        f"GaussianEncoder 64-{'-'.join(map(str, hidden))}-2x{latent}, BernoulliDecoder {latent}-"
        f"{'-'.join(map(str, hidden))}-64, tanh; batch {batch} binarised digits; 1 sample; "
        f"negative ELBO with MC KL, batch mean; Adam lr {LR}"
    )
    return Case(
        NAME,
        TITLE,
        setup,
        "hand-written",
        contenders,
        inner=5,
        rounds=40,
        skipped=skipped,
        grad_groups=[[c.name for c in contenders]],
    )


def run(opts: Options) -> Result:
    case = build(opts)
    result = time_case(case, opts)
    result.targets.append(
        Target(
            "scg.expectation / hand-written",
            ratio(result.rows, "scg.expectation", "hand-written"),
            "<=",
            1.05,
        )
    )
    result.notes.append(
        f"scg.models.VAE / hand-written = {ratio(result.rows, 'scg.models.VAE', 'hand-written'):.3f} "
        "(the model's modules build distribution objects each step: the posterior, the prior and the "
        "likelihood)"
    )
    hd = "hand-written, torch.distributions"
    result.notes.append(
        f"scg.expectation / {hd} = {ratio(result.rows, 'scg.expectation', hd):.3f} (scg's own machinery); "
        f"{hd} / hand-written = {ratio(result.rows, hd, 'hand-written'):.3f} (a Distribution object to sample from)"
    )
    if not case.skipped:
        result.targets.append(
            Target(
                "pyro / scg.models.VAE",
                ratio(result.rows, "pyro Trace_ELBO", "scg.models.VAE"),
                ">=",
                1.5,
            )
        )
        result.targets.append(
            Target(
                "pyro / scg.expectation",
                ratio(result.rows, "pyro Trace_ELBO", "scg.expectation"),
                ">=",
                1.5,
            )
        )
    return result


if __name__ == "__main__":
    from run import main

    main(["--case", NAME, *sys.argv[1:]])
