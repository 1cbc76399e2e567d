"""Case 2 — discrete-latent VAE (sigmoid belief net) on the digits, score function with baselines.

scg ``ScoreFunction`` vs a hand-written REINFORCE surrogate vs Pyro ``TraceGraph_ELBO``,
in two variants: (a) a moving-average baseline; (b) a moving-average plus a learned
(input-dependent, NVIL) baseline.

Model (the same modules, copied, for every contender): ``scg.models.DiscreteVAE``'s
linear SBN — ``BernoulliEncoder`` 64 → 200 (q(b|x) = Bern(σ(xW + c))),
``BernoulliDecoder`` 200 → 64, learned ``BernoulliPrior`` logits; batch of 100
binarised training digits; one sample; loss = batch mean of the negative ELBO
``f(b) = log q(b|x) − log p(b) − log p(x|b)``; Adam, lr 1e-3. Learned baseline: an MLP
64 → 100 → 1 (tanh) of x, trained by regression in the same backward pass.

* ``scg ScoreFunction``: the cost ``log q(b|x) − log p(b) − log p(x|b)``, with ``log p``
  written in plain PyTorch (``log_densities``: binary cross-entropies) and ``log q`` as
  ``scg.log_prob(q, b)`` (the tensor ScoreFunction computes for its score, so log q is
  computed once, as by hand), its expectation under ``Independent(Bernoulli(logits), 1)``
  through ``scg.expectation(cost, q, est, context=x)`` with
  ``est = ScoreFunction(baseline=MovingAverage(0.9))`` or
  ``ScoreFunction(baseline=chain(MovingAverage(0.9), Learned(net)))``;
* ``scg.models.DiscreteVAE``: the packaged model (``torch.distributions``
  log-densities) with the same estimator;
* ``hand-written``: the same estimator written out (``loss = f + log q · A`` with the
  bias-corrected average and the regression term; log q computed once and reused in
  f and in the score) — same value, same gradients;
* ``hand-written, torch.distributions``: the same, but sampling and scoring through an
  ``Independent(Bernoulli)`` object (log q once, from ``q.log_prob``): separates what
  the API implies (a Distribution object) from what scg's own code costs.
* ``pyro``: guide site ``infer={"baseline": {"use_decaying_avg_baseline": True,
  "baseline_beta": 0.9[, "nn_baseline": net, "nn_baseline_input": x]}}``,
  ``SVI(..., pyro.optim.Adam, TraceGraph_ELBO()).step(x)``. Pyro's average is per data
  point and not bias-corrected, and its REINFORCE term omits the zero-mean
  ``∇ log q`` of the entropy: another unbiased estimator of the same gradient, so
  only the objective *values* are compared (same seed: same b).

Run alone: ``python benchmarks/case_discrete.py [--quick]`` (or through ``run.py``).
"""

from __future__ import annotations

import copy
import os
import sys

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _case import Case, Contender, Options, Result, Target, peer, ratio, time_case  # noqa: E402

NAME = "discrete"
TITLE = "2. Discrete-latent VAE, score function + baselines (training step)"
SIZES = {"full": (100, 200), "quick": (8, 8)}  # batch, latents
LR = 1e-3
DECAY = 0.9


class BaselineNet(nn.Module):
    """b_ψ(x): MLP 64 → 100 → 1 (tanh), output ``[B]``."""

    def __init__(self, x_dim: int, hidden: int = 100) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(x_dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(-1)


def flat_grads(modules: list[nn.Module]) -> Tensor:
    return torch.cat([p.grad.reshape(-1) for m in modules for p in m.parameters()])


def make_cv(bnet: nn.Module | None):
    import scg

    b = scg.baselines
    return b.MovingAverage(DECAY) if bnet is None else b.chain(b.MovingAverage(DECAY), b.Learned(bnet))


def make_models_sbn(m: nn.Module, bnet: nn.Module | None, x: Tensor) -> Contender:
    """The packaged model, ``scg.models.DiscreteVAE`` (torch.distributions log-densities), with our baselines."""
    import scg

    m.estimator = scg.ScoreFunction(baseline=make_cv(bnet))  # replaces DiscreteVAE's own estimator
    opt = torch.optim.Adam(m.parameters(), lr=LR)
    modules = [m.encoder, m.decoder, m.prior] + ([bnet] if bnet is not None else [])

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        m.loss(x).backward()
        opt.step()

    def grads() -> Tensor:
        opt.zero_grad(set_to_none=True)
        m.loss(x).backward()
        return flat_grads(modules)

    return Contender("scg.models.DiscreteVAE", step, value=lambda: float(m.loss(x).detach()), grads=grads)


def log_densities(
    m: nn.Module, logits: Tensor, b: Tensor, x: Tensor, *, with_q: bool = True
) -> tuple[Tensor, ...]:
    """``log q(b|x)`` (unless ``with_q=False``), ``log p(b)``, ``log p(x|b)`` for b ``[S, B, Z]`` -> ``[S, B]`` each."""
    log_pb = -F.binary_cross_entropy_with_logits(m.prior.logits.expand_as(b), b, reduction="none").sum(-1)
    out = m.decoder.net(b)
    log_px = -F.binary_cross_entropy_with_logits(out, x.expand_as(out), reduction="none").sum(-1)
    if not with_q:
        return log_pb, log_px
    log_q = -F.binary_cross_entropy_with_logits(logits.expand_as(b), b, reduction="none").sum(-1)
    return log_q, log_pb, log_px


def make_scg(m: nn.Module, bnet: nn.Module | None, x: Tensor) -> Contender:
    """The hand-written cost, its expectation through ``scg.expectation`` with ``ScoreFunction``."""
    from torch.distributions import Bernoulli, Independent

    import scg

    est = scg.ScoreFunction(baseline=make_cv(bnet))
    modules = [m.encoder, m.decoder, m.prior] + ([bnet] if bnet is not None else [])
    opt = torch.optim.Adam([p for mod in modules for p in mod.parameters()], lr=LR)

    def loss() -> Tensor:
        logits = m.encoder.net(x)
        q = Independent(Bernoulli(logits=logits, validate_args=False), 1)

        def cost(b: Tensor) -> Tensor:
            log_pb, log_px = log_densities(m, logits, b, x, with_q=False)
            return scg.log_prob(q, b) - log_pb - log_px  # log q(b|x): the score's, computed once

        return scg.expectation(cost, q, est, context=x).mean()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss().backward()
        opt.step()

    def grads() -> Tensor:
        opt.zero_grad(set_to_none=True)
        loss().backward()
        return flat_grads(modules)

    return Contender("scg ScoreFunction", step, value=lambda: float(loss().detach()), grads=grads)


class Hand:
    """REINFORCE for the SBN with a bias-corrected moving average (and a learned baseline), by hand."""

    def __init__(self, m: nn.Module, bnet: nn.Module | None, *, dists: bool = False) -> None:
        self.m, self.enc, self.bnet, self.dists = m, m.encoder.net, bnet, dists
        self.avg = torch.zeros(())
        self.t = 0

    def objective_and_surrogate(self, x: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.enc(x)  # [B, Z]
        if self.dists:  # what scg's API implies: a Distribution object, sample and score from it
            from torch.distributions import Bernoulli, Independent

            q = Independent(Bernoulli(logits=logits, validate_args=False), 1)
            b = q.sample((1,))
            log_q = q.log_prob(b)  # once, for f and for the score
            log_pb, log_px = log_densities(self.m, logits, b, x, with_q=False)
            f = log_q - log_pb - log_px
        else:
            b = torch.bernoulli(torch.sigmoid(logits.detach()).expand(1, *logits.shape))  # [1, B, Z]
            log_q, log_pb, log_px = log_densities(self.m, logits, b, x)
            f = log_q - log_pb - log_px  # [1, B]
        signal = f.detach()
        ma = self.avg / (1 - DECAY**self.t) if self.t > 0 else torch.zeros(())
        with torch.no_grad():
            self.avg = DECAY * self.avg + (1 - DECAY) * signal.mean()
        self.t += 1
        a = signal - ma
        surrogate = f + log_q * a if self.bnet is None else None
        if self.bnet is not None:
            bl = self.bnet(x)  # [B]
            surrogate = f + log_q * (a - bl.detach()) + (a - bl) ** 2
        return f.mean(), surrogate.mean()


def make_hand(m: nn.Module, bnet: nn.Module | None, x: Tensor, *, dists: bool = False) -> Contender:
    hand = Hand(m, bnet, dists=dists)
    modules = [m.encoder, m.decoder, m.prior] + ([bnet] if bnet is not None else [])
    opt = torch.optim.Adam([p for mod in modules for p in mod.parameters()], lr=LR)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        hand.objective_and_surrogate(x)[1].backward()
        opt.step()

    def grads() -> Tensor:
        opt.zero_grad(set_to_none=True)
        hand.objective_and_surrogate(x)[1].backward()
        return flat_grads(modules)

    name = "hand-written, torch.distributions" if dists else "hand-written"
    return Contender(
        name, step, value=lambda: float(hand.objective_and_surrogate(x)[0].detach()), grads=grads
    )


def make_pyro(pyro, m: nn.Module, bnet: nn.Module | None, x: Tensor, tag: str) -> Contender:
    import pyro.distributions as dist
    from pyro import poutine
    from pyro.infer import SVI, TraceGraph_ELBO

    B = x.shape[0]
    enc, dec, prior = m.encoder, m.decoder, m.prior
    baseline = {"use_decaying_avg_baseline": True, "baseline_beta": DECAY}
    if bnet is not None:
        baseline.update(nn_baseline=bnet, nn_baseline_input=x)

    def model(x: Tensor) -> None:
        pyro.module(f"{tag}_decoder", dec)
        pyro.module(f"{tag}_prior", prior)
        with pyro.plate("data", B), poutine.scale(scale=1.0 / B):
            b = pyro.sample(
                "b",
                dist.Bernoulli(logits=prior.logits.expand(B, -1), validate_args=False).to_event(1),
            )
            pyro.sample("x", dist.Bernoulli(logits=dec.net(b), validate_args=False).to_event(1), obs=x)

    def guide(x: Tensor) -> None:
        pyro.module(f"{tag}_encoder", enc)
        if bnet is not None:
            pyro.module(f"{tag}_baseline", bnet)
        with pyro.plate("data", B), poutine.scale(scale=1.0 / B):
            pyro.sample(
                "b",
                dist.Bernoulli(logits=enc.net(x), validate_args=False).to_event(1),
                infer={"baseline": baseline},
            )

    elbo = TraceGraph_ELBO()
    svi = SVI(model, guide, pyro.optim.Adam({"lr": LR}), elbo)
    return Contender("pyro TraceGraph_ELBO", lambda: svi.step(x), value=lambda: elbo.loss(model, guide, x))


def build(opts: Options, learned: bool) -> Case:
    import scg
    from scg.models import DiscreteVAE
    from scg.models.data import digits

    batch, latents = SIZES["quick" if opts.quick else "full"]
    device = opts.torch_device
    torch.manual_seed(opts.seed)
    m = DiscreteVAE(
        64, latents, (), estimator=scg.ScoreFunction(baseline=scg.baselines.MovingAverage()), evaluations=1
    ).to(device)
    bnet = BaselineNet(64).to(device) if learned else None
    x = digits().train[:batch].to(device)

    def copies():
        return copy.deepcopy(m), copy.deepcopy(bnet)

    skipped: list[str] = []
    contenders = [
        make_scg(*copies(), x),
        make_models_sbn(*copies(), x),
        make_hand(*copies(), x),
        make_hand(*copies(), x, dists=True),
    ]
    pyro = peer("pyro", skipped, "pyro TraceGraph_ELBO")
    if pyro is not None:
        contenders.append(make_pyro(pyro, *copies(), x, tag=f"sbn{int(learned)}"))
    kind = "moving-average + learned baseline" if learned else "moving-average baseline"
    title = f"{TITLE[: -len(' (training step)')]}: {kind} (training step)"
    setup = (
        f"linear SBN 64-{latents}-64 (BernoulliEncoder, BernoulliDecoder, learned BernoulliPrior); batch {batch} "
        f"binarised digits; 1 sample; negative ELBO, batch mean; {kind} (decay {DECAY}"
        + (", MLP 64-100-1 of x" if learned else "")
        + f"); Adam lr {LR}"
    )
    return Case(
        f"{NAME}-{'nn' if learned else 'avg'}",
        title,
        setup,
        "hand-written",
        contenders,
        inner=10,
        rounds=40,
        skipped=skipped,
        grad_groups=[[c.name for c in contenders if not c.name.startswith("pyro")]],
    )


def run_variant(opts: Options, learned: bool) -> Result:
    case = build(opts, learned)
    result = time_case(case, opts)
    sf, pkg, pyro = "scg ScoreFunction", "scg.models.DiscreteVAE", "pyro TraceGraph_ELBO"
    result.targets.append(Target(f"{sf} / hand-written", ratio(result.rows, sf, "hand-written"), "<=", 1.05))
    result.notes.append(f"{pkg} / hand-written = {ratio(result.rows, pkg, 'hand-written'):.3f}")
    hd = "hand-written, torch.distributions"
    result.notes.append(
        f"{sf} / {hd} = {ratio(result.rows, sf, hd):.3f} (scg's own machinery); {hd} / hand-written = "
        f"{ratio(result.rows, hd, 'hand-written'):.3f} (a Distribution object to sample and score)"
    )
    if not case.skipped:
        result.targets.append(Target(f"pyro / {pkg}", ratio(result.rows, pyro, pkg), ">=", 3.0))
        result.targets.append(Target(f"pyro / {sf}", ratio(result.rows, pyro, sf), ">=", 3.0))
    return result


def run(opts: Options) -> list[Result]:
    return [run_variant(opts, learned=False), run_variant(opts, learned=True)]


if __name__ == "__main__":
    from run import main

    main(["--case", NAME, *sys.argv[1:]])
