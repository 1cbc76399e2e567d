"""Case 6 — compiled training steps: scg vs hand-written, eager and ``torch.compile``d, Pyro eager.

Two models, each timed as four contenders interleaved in one process (plus Pyro, eager,
for reference):

* **Gaussian VAE**, pathwise (case 1's model: ``GaussianEncoder`` 64 → 200 → 200 → 2×16,
  ``BernoulliDecoder`` 16 → 200 → 200 → 64, batch 100 digits, MC KL): ``scg.expectation``
  with ``scg.Pathwise()`` vs the same cost at ``z = μ + σ ε`` by hand (case 1's
  ``scg_loss`` and ``hand_loss``).
* **Sigmoid belief net**, score function with a moving-average baseline (case 2's linear
  SBN 64 → 200 → 64 with a learned prior): ``scg.expectation`` with
  ``ScoreFunction(MovingAverage(0.9))`` vs REINFORCE with the same bias-corrected
  average written by hand. Both keep the average and its step count in tensors updated
  in place, so neither recompiles per step. The scg cost reads ``log q`` with
  ``scg.log_prob`` eager and as ``q.log_prob(b)`` compiled (``scg.log_prob`` reads a
  ``ContextVar``, which Dynamo cannot trace; the compiled graph's common-subexpression
  elimination merges the two evaluations of ``log q``), so both compute it once, as the
  hand-written step does.

A training step is forward + ``backward()`` + Adam step (lr 1e-3). "compiled" compiles
the loss function with ``torch.compile(loss, fullgraph=True)`` (default inductor
backend; ``--quick``, a smoke run, uses ``aot_eager``); backward runs through the compiled graph's AOT-autograd backward and the
optimiser step is eager, for both scg and hand-written. Compiled contenders are built
with inductor's ``fallback_random=True`` so that every contender draws eager's random
numbers: the check compares all objective values and the gradients of scg and
hand-written, eager and compiled, before timing. Compilation happens in the check and
the warm-up block, never in a timed block.

Run alone: ``python benchmarks/case_compiled.py [--quick]`` (or through ``run.py``).
"""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Callable

import torch
from torch import Tensor, nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import case_discrete  # noqa: E402
import case_vae  # noqa: E402
from _case import Case, Contender, Options, Result, Target, peer, ratio, time_case  # noqa: E402

NAME = "compiled"
TITLE = "6. torch.compile: scg vs hand-written, eager and compiled (training step)"
LR = 1e-3
DECAY = 0.9
#: inductor options of every compiled contender (eager's random numbers, so values can be checked)
INDUCTOR_OPTIONS = {"fallback_random": True}


#: ``--quick`` (a smoke run) compiles with the ``aot_eager`` backend: the same graph capture and
#: AOT autograd in seconds instead of inductor's code generation
QUICK_BACKEND = "aot_eager"


def compiler(opts: Options) -> Callable[[Callable[[], Tensor]], Callable[[], Tensor]]:
    if opts.quick:
        return lambda loss: torch.compile(loss, fullgraph=True, backend=QUICK_BACKEND)
    return lambda loss: torch.compile(loss, fullgraph=True, options=INDUCTOR_OPTIONS)


def contender(name: str, loss: Callable[[], Tensor], params: list[nn.Parameter]) -> Contender:
    """A training step of ``loss``: forward, backward, Adam; its value and gradients for the check."""
    opt = torch.optim.Adam(params, lr=LR)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss().backward()
        opt.step()

    def grads() -> Tensor:
        opt.zero_grad(set_to_none=True)
        loss().backward()
        return torch.cat([p.grad.reshape(-1) for p in params])

    return Contender(name, step, value=lambda: float(loss().detach()), grads=grads)


def four(
    model: Callable[
        [bool],
        tuple[Callable[[], Tensor], Callable[[], Tensor], list[nn.Parameter], list[nn.Parameter]],
    ],
    opts: Options,
) -> list[Contender]:
    """scg and hand-written, eager and compiled, each on its own copy of the model (``model(compiled)``)."""
    out = []
    for suffix, wrap, is_compiled in (
        ("", lambda f: f, False),
        (", compiled", compiler(opts), True),
    ):
        scg_loss, _, scg_params, _ = model(is_compiled)
        _, hand_loss, _, hand_params = model(is_compiled)
        out.append(contender(f"scg{suffix}", wrap(scg_loss), scg_params))
        out.append(contender(f"hand-written{suffix}", wrap(hand_loss), hand_params))
    return out


# --- Gaussian VAE (case 1) -------------------------------------------------------------------


def vae_case(opts: Options) -> Case:
    import scg
    from scg.models import BernoulliDecoder, GaussianEncoder

    batch, hidden, latent = case_vae.SIZES["quick" if opts.quick else "full"]
    device = opts.torch_device
    torch.manual_seed(opts.seed)
    enc0 = GaussianEncoder(64, latent, hidden).to(device)
    dec0 = BernoulliDecoder(latent, 64, hidden).to(device)
    x = case_vae.data(batch, device)
    pathwise = scg.Pathwise()

    def model(compiled: bool):
        enc, dec = copy.deepcopy(enc0), copy.deepcopy(dec0)
        params = list(enc.parameters()) + list(dec.parameters())
        return (
            lambda: case_vae.scg_loss(enc, dec, x, pathwise),
            lambda: case_vae.hand_loss(enc, dec, x),
            params,
            params,
        )

    contenders = four(model, opts)
    skipped: list[str] = []
    pyro = peer("pyro", skipped, "pyro Trace_ELBO")
    if pyro is not None:
        pyro.clear_param_store()
        contenders.append(case_vae.make_pyro(pyro, copy.deepcopy(enc0), copy.deepcopy(dec0), x, tag="cvae"))
    setup = (
        f"case 1's Gaussian VAE: GaussianEncoder 64-{'-'.join(map(str, hidden))}-2x{latent}, BernoulliDecoder, "
        f"batch {batch} digits, 1 sample, MC KL; scg.expectation + Pathwise vs z = μ + σε by hand; Adam lr {LR}"
    )
    return Case(
        f"{NAME}-vae",
        "6a. Gaussian VAE, pathwise: eager vs torch.compile (training step)",
        setup,
        "hand-written, compiled",
        contenders,
        inner=5,
        rounds=40,
        skipped=skipped,
        grad_groups=[[c.name for c in contenders]],
    )


# --- Sigmoid belief net (case 2's linear SBN) ---------------------------------------------------


class Average(nn.Module):
    """The hand-written step's bias-corrected moving average, in tensors updated in place (no recompiles)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("value", torch.zeros(()))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def update(self, signal: Tensor) -> Tensor:
        """The baseline before this step, then ``value ← value + w (mean(signal) − value)``, ``w = (1−β)/(1−β^t)``."""
        b = self.value.clone()
        self.steps.add_(1)
        w = (1.0 - DECAY) / (1.0 - torch.full_like(self.value, DECAY).pow(self.steps))
        self.value.lerp_(signal.mean(), w)
        return b


def sbn_losses(
    m: nn.Module, x: Tensor, est, *, compiled: bool
) -> tuple[Callable[[], Tensor], Callable[[], Tensor]]:
    """scg's and the hand-written loss. The scg cost reads ``log q(b|x)`` with ``scg.log_prob`` eager (the
    estimator's tensor, computed once) and as ``q.log_prob(b)`` compiled: ``scg.log_prob`` reads a
    ``ContextVar``, which Dynamo cannot trace, and the compiled graph's common-subexpression
    elimination merges ``q.log_prob(b)`` with the estimator's identical evaluation."""
    from torch.distributions import Bernoulli, Independent

    import scg

    def scg_loss() -> Tensor:
        logits = m.encoder.net(x)
        q = Independent(Bernoulli(logits=logits, validate_args=False), 1)

        def cost(b: Tensor) -> Tensor:
            log_pb, log_px = case_discrete.log_densities(m, logits, b, x, with_q=False)
            return (q.log_prob(b) if compiled else scg.log_prob(q, b)) - log_pb - log_px

        return scg.expectation(cost, q, est).mean()

    avg = Average().to(x.device)

    def hand_loss() -> Tensor:
        logits = m.encoder.net(x)  # [B, Z]
        b = torch.bernoulli(torch.sigmoid(logits.detach()).expand(1, *logits.shape))  # [1, B, Z]
        log_q, log_pb, log_px = case_discrete.log_densities(m, logits, b, x)
        f = log_q - log_pb - log_px  # [1, B]
        signal = f.detach()
        a = signal - avg.update(signal)
        # value f; gradient ∇f + (f − b) ∇log q (REINFORCE with the baseline b)
        return (f + (log_q - log_q.detach()) * a).mean()

    return scg_loss, hand_loss


def sbn_case(opts: Options) -> Case:
    import scg
    from scg.models import DiscreteVAE

    batch, latents = case_discrete.SIZES["quick" if opts.quick else "full"]
    device = opts.torch_device
    torch.manual_seed(opts.seed)
    m0 = DiscreteVAE(
        64, latents, (), estimator=scg.ScoreFunction(baseline=scg.baselines.MovingAverage()), evaluations=1
    ).to(device)
    x = case_vae.data(batch, device)

    def model(compiled: bool):
        m = copy.deepcopy(m0)
        est = scg.ScoreFunction(scg.baselines.MovingAverage(DECAY)).to(device)
        scg_loss, hand_loss = sbn_losses(m, x, est, compiled=compiled)
        params = [p for mod in (m.encoder, m.decoder, m.prior) for p in mod.parameters()]
        return scg_loss, hand_loss, params, params

    contenders = four(model, opts)
    skipped: list[str] = []
    pyro = peer("pyro", skipped, "pyro TraceGraph_ELBO")
    if pyro is not None:
        contenders.append(case_discrete.make_pyro(pyro, copy.deepcopy(m0), None, x, tag="csbn"))
    setup = (
        f"case 2's linear SBN 64-{latents}-64 (learned prior), batch {batch} digits, 1 sample, negative ELBO; "
        f"ScoreFunction(MovingAverage({DECAY})) vs REINFORCE with the same average by hand; Adam lr {LR}"
    )
    return Case(
        f"{NAME}-sbn",
        "6b. Sigmoid belief net, score function + moving average: eager vs torch.compile (training step)",
        setup,
        "hand-written, compiled",
        contenders,
        inner=10,
        rounds=40,
        skipped=skipped,
        grad_groups=[[c.name for c in contenders if not c.name.startswith("pyro")]],
    )


def report(case: Case, opts: Options, pyro: str) -> Result:
    result = time_case(case, opts)
    rows = result.rows
    result.targets.append(
        Target(
            "scg, compiled / hand-written, compiled",
            ratio(rows, "scg, compiled", "hand-written, compiled"),
            "<=",
            1.02,
        )
    )
    result.notes.append(
        f"compiled / eager speed-up: scg {ratio(rows, 'scg', 'scg, compiled'):.2f}x, hand-written "
        f"{ratio(rows, 'hand-written', 'hand-written, compiled'):.2f}x; eager scg / hand-written = "
        f"{ratio(rows, 'scg', 'hand-written'):.3f}"
    )
    if not case.skipped:
        result.notes.append(f"{pyro} (eager) / scg, compiled = {ratio(rows, pyro, 'scg, compiled'):.2f}")
    backend = f"the {QUICK_BACKEND} backend (--quick)" if opts.quick else "inductor with fallback_random=True"
    result.notes.append(
        f"compiled: torch.compile(loss, fullgraph=True), {backend}; "
        "backward and Adam outside the compiled function"
    )
    return result


def run(opts: Options) -> list[Result]:
    torch._dynamo.reset()
    return [
        report(vae_case(opts), opts, "pyro Trace_ELBO"),
        report(sbn_case(opts), opts, "pyro TraceGraph_ELBO"),
    ]


if __name__ == "__main__":
    from run import main

    main(["--case", NAME, *sys.argv[1:]])
