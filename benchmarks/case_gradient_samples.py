"""Case 4 — 1000 per-sample gradients: ``scg.diagnostics.gradient_samples`` vs a loop of ``backward()``.

The problem and the first three contenders are those of ``benchmarks/gradient_samples.py``
(its ``build``, ``loop_estimates``, ``vectorised_estimates``, ``hand_loop_estimates``):
an MLP encoder 64 → 128 → 2×16 (12,448 parameters), a fixed linear Bernoulli decoder,
a batch of 16 digits, the negative ELBO with analytic KL summed over the batch through
``scg.expectation`` with ``scg.Pathwise()``; each call computes 1000 independent
gradient estimates ``[1000, P]``.

A floor, ``hand_vectorised_estimates``: the same estimates with the gradient derived by
hand and batched over draws, no autograd, weight gradients written by ``bmm`` straight into
the result — what vectorising this one model can reach in eager PyTorch; checked equal to
``gradient_samples`` with the same seed (the draws come in the same order).

When Pyro is installed, a further contender is a loop of ``backward()`` through Pyro's
``TraceMeanField_ELBO().differentiable_loss`` of the same model (analytic KL, fixed
decoder). Pyro has no vectorised equivalent: ``gradient_samples`` over Pyro's loss
fails under ``torch.func.vmap`` (``Normal.rsample`` draws in place), and
``vectorize_particles`` averages the particles' gradients instead of returning them —
the run reports the vmap error.

On a CPU the run also reports each contender's minor page faults per call
(``_timing.minor_faults``): memory a call obtains fresh from the operating system.

Check: one estimate's objective value with the same seed agrees across the scg loop,
the hand-written loop and Pyro; the vectorised estimates are compared with the loop's
statistically (``check_same_estimator``: z-test per parameter, Bonferroni at 1e-3).

Run alone: ``python benchmarks/case_gradient_samples.py [--quick]`` (or through ``run.py``).
"""

from __future__ import annotations

import os
import sys

import torch
from torch import Tensor, nn
from torch.func import functional_call

import scg

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _case import Mismatch, Options, Result, Target, close, peer, step_table  # noqa: E402
from _timing import blocks, minor_faults, summarise  # noqa: E402
from gradient_samples import (  # noqa: E402
    LATENT,
    REUSED_LOOP,
    REUSED_VECTORISED,
    backward_loop,
    build,
    check_same_estimator,
    hand_loop_estimates,
    hand_loss,
    hand_vectorised_estimates,
    loop_estimates,
    vectorised_estimates,
)

NAME = "gradient_samples"
HAND_VECTORISED = "hand-vectorised, no autograd (floor)"
TITLE = "4. 1000 per-sample gradients: gradient_samples vs a loop of backward()"


def pyro_loss(pyro, encoder: nn.Module, decoder: nn.Module, x: Tensor):
    """Pyro's ``TraceMeanField_ELBO`` differentiable loss of the same model (sum over the batch)."""
    import pyro.distributions as dist

    B = x.shape[0]

    def model(x: Tensor) -> None:
        with pyro.plate("data", B):
            zeros = x.new_zeros(B, LATENT)
            z = pyro.sample("z", dist.Normal(zeros, torch.ones_like(zeros)).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=decoder(z), validate_args=False).to_event(1), obs=x)

    def guide_with(p):
        def guide(x: Tensor) -> None:
            out = encoder(x) if p is None else functional_call(encoder, p, (x,))
            loc, log_scale = out.chunk(2, -1)
            with pyro.plate("data", B):
                pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))

        return guide

    elbo = pyro.infer.TraceMeanField_ELBO()
    return lambda p=None: elbo.differentiable_loss(model, guide_with(p), x)


def run(opts: Options) -> Result:
    """Case 4 of ``run.py``: the contenders above (+ Pyro), interleaved; target loop / vectorised >= 20."""
    num, batch = (20, 4) if opts.quick else (1000, 16)
    x, encoder, decoder, neg_elbo = build(batch, opts.seed)
    x = x.to(opts.torch_device)
    encoder.to(opts.torch_device)
    decoder.to(opts.torch_device)
    P = sum(p.numel() for p in encoder.parameters())
    chunk = min(
        num, max(1, scg.diagnostics.DEFAULT_CHUNK_ELEMENTS // P)
    )  # gradient_samples' default chunk_size
    skipped: list[str] = []
    loop_buffer = torch.empty(num, P, device=opts.torch_device)
    vectorised_buffer = torch.empty(num, P, device=opts.torch_device)
    floor_buffer = torch.empty(num, P, device=opts.torch_device)
    candidates = {
        "loop of backward()": lambda: loop_estimates(encoder, x, neg_elbo, num),
        "gradient_samples": lambda: vectorised_estimates(encoder, x, neg_elbo, num),
        REUSED_LOOP: lambda: loop_estimates(encoder, x, neg_elbo, num, out=loop_buffer),
        REUSED_VECTORISED: lambda: vectorised_estimates(encoder, x, neg_elbo, num, out=vectorised_buffer),
        "hand-written loop (no scg)": lambda: hand_loop_estimates(encoder, x, decoder, num),
        HAND_VECTORISED: lambda: hand_vectorised_estimates(encoder, x, decoder, num, chunk, out=floor_buffer),
    }
    values = {}
    torch.manual_seed(opts.seed)
    values["scg"] = float(neg_elbo(encoder(x)).detach())
    torch.manual_seed(opts.seed)
    values["hand-written"] = float(hand_loss(encoder, decoder, x).detach())
    notes = []
    pyro = peer("pyro", skipped, "pyro loop of backward()")
    if pyro is not None:
        loss = pyro_loss(pyro, encoder, decoder, x)
        torch.manual_seed(opts.seed)
        values["pyro"] = float(loss().detach())
        candidates["pyro loop of backward()"] = lambda: backward_loop(encoder, loss, num)
        try:
            params = {k: v.detach() for k, v in encoder.named_parameters()}
            scg.diagnostics.gradient_samples(lambda p: loss(p), params, 2)
            notes.append("Pyro's loss under gradient_samples (vmap) worked")
        except Exception as e:  # noqa: BLE001 - reported, not handled
            notes.append(f"Pyro's loss under torch.func.vmap: {type(e).__name__}: {str(e).splitlines()[0]}")
    for name, v in values.items():
        if not close(v, values["scg"], rtol=1e-5, atol=1e-3):
            raise Mismatch(
                f"gradient_samples: objective of {name} = {v!r} differs from scg's {values['scg']!r}"
            )
    torch.manual_seed(opts.seed)
    floor = hand_vectorised_estimates(encoder, x, decoder, num, chunk)
    torch.manual_seed(opts.seed)
    auto = vectorised_estimates(encoder, x, neg_elbo, num, chunk_size=chunk)
    gap = float((floor - auto).abs().max() / auto.abs().max())
    if not gap < 1e-5:
        raise Mismatch(
            f"gradient_samples: {HAND_VECTORISED} differs from gradient_samples with the same seed "
            f"(max difference / max |g| = {gap:.2g})"
        )
    notes.append(
        f"'{HAND_VECTORISED}' and gradient_samples agree with the same seed (max difference / max |g| = "
        f"{gap:.1e})"
    )
    notes.insert(
        0,
        "objective values (one estimate, same seed): " + ", ".join(f"{k} {v:.6g}" for k, v in values.items()),
    )
    results: dict[str, Tensor] = {}

    def keep(name: str, f):
        def go() -> None:
            results[name] = f()

        return go

    rounds = opts.rounds or (2 if opts.quick else 7)
    times = blocks(
        {k: keep(k, f) for k, f in candidates.items()},
        rounds=rounds,
        inner=1,
        warmup=1,
        clock=opts.clock,
        device=opts.torch_device,
    )
    rows = summarise(times, "gradient_samples")
    if opts.torch_device.type == "cpu":
        faults = {k: minor_faults(f) for k, f in candidates.items()}
        if None not in faults.values():
            notes.append(
                "minor page faults per call (median of 3): "
                + ", ".join(f"{k} {v}" for k, v in faults.items())
            )
    for name, out in results.items():
        if out.shape != (num, P):
            raise Mismatch(f"{name} returned shape {list(out.shape)}; expected {[num, P]}.")
    notes.append(check_same_estimator(results["loop of backward()"], results["gradient_samples"]))
    notes.append(
        f"'{REUSED_LOOP}' and '{REUSED_VECTORISED}' write into a [num, P] buffer kept across calls "
        "(gradient_samples(..., out=buffer)); the others allocate a fresh result per call"
    )
    by_name = {r.name: r.median for r in rows}
    notes.append(
        f"'{HAND_VECTORISED}' writes into a buffer kept across calls; {REUSED_VECTORISED} / it = "
        f"{by_name[REUSED_VECTORISED] / by_name[HAND_VECTORISED]:.2f}: the price of automatic differentiation "
        f"under torch.func.vmap for this model; {REUSED_LOOP} / it = "
        f"{by_name[REUSED_LOOP] / by_name[HAND_VECTORISED]:.1f}"
    )
    notes.append(f"{rounds} interleaved rounds of {num} estimates per contender after 1 warm-up")
    setup = (
        f"encoder MLP 64-128-2x{LATENT} ({P} parameters), fixed linear Bernoulli decoder, batch {batch} digits "
        f"(intensities), negative ELBO with analytic KL summed over the batch, scg.Pathwise; "
        f"{num} gradient estimates per call; times are per call (all {num} estimates)"
    )
    result = Result(NAME, TITLE, setup, rows=rows, notes=notes, skipped=skipped, baseline="gradient_samples")
    result.tables.append(step_table(rows, "gradient_samples").replace("ms/step", "ms/call"))
    by = {r.name: r.median for r in rows}
    result.targets.append(
        Target(
            "loop of backward() / gradient_samples",
            by["loop of backward()"] / by["gradient_samples"],
            ">=",
            20.0,
        )
    )
    result.targets.append(
        Target(
            f"{REUSED_LOOP} / {REUSED_VECTORISED}",
            by[REUSED_LOOP] / by[REUSED_VECTORISED],
            ">=",
            20.0,
        )
    )
    if "pyro loop of backward()" in by:
        result.targets.append(
            Target(
                "pyro loop / gradient_samples",
                by["pyro loop of backward()"] / by["gradient_samples"],
                ">=",
                20.0,
            )
        )
    return result


if __name__ == "__main__":
    from run import main

    main(["--case", NAME, *sys.argv[1:]])
