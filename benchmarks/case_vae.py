"""Case 1 — Gaussian VAE on the 8×8 digits, pathwise gradients: scg vs hand-written PyTorch vs Pyro.

Model (the same modules, copied, for every contender): ``scg.models.GaussianEncoder``
64 → 200 → 200 → 2×16 (tanh), ``BernoulliDecoder`` 16 → 200 → 200 → 64, prior
N(0, I); batch of 100 binarised training digits; one sample of z per data point;
loss = batch mean of the negative ELBO with a Monte Carlo KL,
``E_q[log q(z|x) − log p(z) − log p(x|z)]`` (Pyro's ``Trace_ELBO`` estimates the KL
by sampling, so scg's ``VAE`` runs with ``kl="mc"`` here: all three compute the same
estimator); Adam, lr 1e-3.

* ``scg``: ``scg.models.VAE(..., kl="mc")``; ``loss = vae.loss(x)`` (through
  ``scg.expectation`` with ``scg.Pathwise()``).
* ``hand-written``: ``z = μ + σ·ε`` and the three log-densities written out.
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


def make_scg(enc: nn.Module, dec: nn.Module, x: Tensor) -> Contender:
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

    return Contender("scg", step, value=lambda: float(vae.loss(x).detach()), grads=grads)


def hand_loss(enc: nn.Module, dec: nn.Module, x: Tensor) -> Tensor:
    """Negative ELBO (MC KL), batch mean, one sample — plain PyTorch."""
    h = enc.act(enc.body(x))
    loc, pre = enc.head(h).chunk(2, dim=-1)
    scale = F.softplus(pre) + 1e-4
    eps = torch.randn((1, *loc.shape), dtype=loc.dtype, device=loc.device)
    z = loc + scale * eps  # [1, B, L]
    logits = dec.net(z)
    nll = F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
    log_q = (-0.5 * eps * eps - torch.log(scale) - HALF_LOG_2PI).sum(-1)
    log_pz = (-0.5 * z * z - HALF_LOG_2PI).sum(-1)
    return (nll + log_q - log_pz).mean()


def make_hand(enc: nn.Module, dec: nn.Module, x: Tensor) -> Contender:
    params = list(enc.parameters()) + list(dec.parameters())
    opt = torch.optim.Adam(params, lr=LR)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        hand_loss(enc, dec, x).backward()
        opt.step()

    def grads() -> Tensor:
        opt.zero_grad(set_to_none=True)
        hand_loss(enc, dec, x).backward()
        return flat_grads(params)

    return Contender("hand-written", step, value=lambda: float(hand_loss(enc, dec, x).detach()), grads=grads)


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

    return Contender("pyro Trace_ELBO", lambda: svi.step(x), value=lambda: elbo.loss(model, guide, x), grads=grads)


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
    contenders = [make_scg(*copies(), x), make_hand(*copies(), x)]
    pyro = peer("pyro", skipped, "pyro Trace_ELBO")
    if pyro is not None:
        pyro.clear_param_store()
        contenders.append(make_pyro(pyro, *copies(), x))
    setup = (
        f"GaussianEncoder 64-{'-'.join(map(str, hidden))}-2x{latent}, BernoulliDecoder {latent}-"
        f"{'-'.join(map(str, hidden))}-64, tanh; batch {batch} binarised digits; 1 sample; "
        f"negative ELBO with MC KL, batch mean; Adam lr {LR}"
    )
    return Case(NAME, TITLE, setup, "hand-written", contenders, inner=5, rounds=40, skipped=skipped,
                grad_groups=[["scg", "hand-written", "pyro Trace_ELBO"]])


def run(opts: Options) -> Result:
    case = build(opts)
    result = time_case(case, opts)
    result.targets.append(Target("scg / hand-written", ratio(result.rows, "scg", "hand-written"), "<=", 1.05))
    if not case.skipped:
        result.targets.append(Target("pyro / scg", ratio(result.rows, "pyro Trace_ELBO", "scg"), ">=", 1.5))
    return result


if __name__ == "__main__":
    from run import main

    main(["--case", NAME, *sys.argv[1:]])
