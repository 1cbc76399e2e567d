"""Benchmark: ``scg.diagnostics.gradient_samples`` against a Python loop of ``backward()`` calls.

Model: an MLP encoder 64 → 128 → 2×16 (12,448 parameters) producing a diagonal
Normal posterior for a batch of sklearn 8×8 digits (scaled to [0, 1]); the cost is
a VAE's negative ELBO with a fixed (not trained) linear Bernoulli decoder 16 → 64:
``E_q[−log p(x|z)] + KL(q ‖ N(0, I))`` summed over the batch, through
``scg.expectation`` with ``scg.Pathwise()`` and one sample. Both candidates compute
``num`` independent gradient estimates w.r.t. the encoder parameters, ``[num, P]``:

* ``loop``: ``num`` times ``encoder.zero_grad(); loss().backward()``, gradients
  copied into a preallocated ``[num, P]`` tensor;
* ``gradient_samples``: ``scg.diagnostics.gradient_samples(fn, params, num)``, the
  default call (a fresh ``[num, P]`` result per call, as the loop's);
* the same two writing into a ``[num, P]`` buffer kept across calls (the loop's
  rows, ``gradient_samples(..., out=buffer)``).

They are run interleaved (the order rotated every round) after one warm-up run each,
``--repeats`` times, for each ``--threads`` setting; medians and the ratio are
printed. Both draw the same estimator (not the same noise): the check compares
their means parameter by parameter (z-test, Bonferroni over P at 1e-3) and their
total variances. Results and a profile: ``docs/benchmarks.md``.

Run: ``python benchmarks/gradient_samples.py [--num 1000] [--repeats 5] [--batch 16]
[--threads 1,2] [--clock wall|cpu] [--chunk-size K]``.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
from scipy import stats
from torch import Tensor, nn
from torch.distributions import Independent, Normal
from torch.func import functional_call

import scg

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import blocks, machine, medians, report  # noqa: E402

LATENT = 16
#: The two contenders that write into a preallocated ``[num, P]`` buffer kept across calls.
REUSED_LOOP = "loop, reused buffer"
REUSED_VECTORISED = "gradient_samples(out=reused)"


def bernoulli_nll(logits: Tensor, x: Tensor) -> Tensor:
    """−log Bernoulli(x; logits) = softplus(ℓ) − xℓ, elementwise: equal to the fused
    ``binary_cross_entropy_with_logits``, and batched well by ``torch.func.vmap`` (which runs the
    fused loss as a slow decomposition) — the form ``gradient_samples``' docstring recommends.
    Every contender of the case uses it."""
    return nn.functional.softplus(logits) - x * logits


def build(batch: int, seed: int = 0):
    from sklearn.datasets import load_digits

    torch.manual_seed(seed)
    x = torch.tensor(load_digits().data[:batch], dtype=torch.float32) / 16.0  # [B, 64] in [0, 1]
    encoder = nn.Sequential(nn.Linear(64, 128), nn.Tanh(), nn.Linear(128, 2 * LATENT))
    decoder = nn.Linear(LATENT, 64).requires_grad_(False)  # fixed: gradients w.r.t. the encoder only
    estimator = scg.Pathwise()

    def neg_elbo(out: Tensor) -> Tensor:
        loc, log_scale = out.chunk(2, -1)
        q = Independent(Normal(loc, log_scale.exp()), 1)

        def reconstruction(z: Tensor) -> Tensor:  # [S, B, L] -> [S, B]
            return bernoulli_nll(decoder(z), x).sum(-1)

        kl = 0.5 * (loc**2 + (2 * log_scale).exp() - 2 * log_scale - 1).sum(-1)
        return (scg.expectation(reconstruction, q, estimator) + kl).sum()

    return x, encoder, decoder, neg_elbo


def backward_loop(module: nn.Module, loss, num: int, out: Tensor | None = None) -> Tensor:
    """``num`` times ``zero_grad(); loss().backward()``, ``module``'s gradients flattened into the rows of
    ``out`` (a fresh ``[num, P]`` on the parameters' device if None)."""
    params = list(module.parameters())
    if out is None:
        out = torch.empty(num, sum(p.numel() for p in params), device=params[0].device)
    for n in range(num):
        module.zero_grad(set_to_none=True)
        loss().backward()
        torch.cat([p.grad.reshape(-1) for p in params], out=out[n])
    return out


def loop_estimates(encoder: nn.Module, x: Tensor, neg_elbo, num: int, out: Tensor | None = None) -> Tensor:
    """The loop of ``backward()`` through scg's loss."""
    return backward_loop(encoder, lambda: neg_elbo(encoder(x)), num, out)


def hand_loss(encoder: nn.Module, decoder: nn.Module, x: Tensor) -> Tensor:
    """The same negative ELBO written by hand without scg (z = loc + scale·ε)."""
    loc, log_scale = encoder(x).chunk(2, -1)
    z = loc + log_scale.exp() * torch.randn_like(loc)
    rec = bernoulli_nll(decoder(z), x).sum(-1)
    kl = 0.5 * (loc**2 + (2 * log_scale).exp() - 2 * log_scale - 1).sum(-1)
    return (rec + kl).sum()


def hand_loop_estimates(encoder: nn.Module, x: Tensor, decoder: nn.Module, num: int) -> Tensor:
    """The same estimator written by hand without scg, for reference."""
    return backward_loop(encoder, lambda: hand_loss(encoder, decoder, x), num)


def hand_vectorised_estimates(
    encoder: nn.Module,
    x: Tensor,
    decoder: nn.Module,
    num: int,
    chunk_size: int,
    out: Tensor | None = None,
) -> Tensor:
    r"""The same ``num`` estimates with the gradient derived by hand and batched over draws: no autograd.

    The floor of what vectorising this one model can reach in eager PyTorch, to read the
    ratio ``gradient_samples`` / this as the price of automatic differentiation under
    ``torch.func.vmap`` (the copy of each chunk's gradients into the result, tracing ``fn``
    once per chunk). With
    ``h = tanh(x W₁ᵀ + b₁)``, ``(μ, log σ) = h W₂ᵀ + b₂``, ``z = μ + σ ε`` and
    ``ℓ = z W_dᵀ + b_d``, per draw:

    .. math::
        ∂ℓ = \mathrm{sigmoid}(ℓ) − x,\quad ∂z = ∂ℓ\, W_d,\quad
        ∂μ = ∂z + μ,\quad ∂\log σ = ∂z\, ε σ + σ² − 1,

    then ``∂W₂ = [∂μ, ∂log σ]ᵀ h``, ``∂h = [∂μ, ∂log σ] W₂ ⊙ (1 − h²)``, ``∂W₁ = ∂hᵀ x``
    (biases: sums over the batch), the weight gradients written by ``bmm`` straight into
    the result's columns. Draws ``ε`` chunk by chunk as ``torch.randn(chunk, B, L)``, the
    order ``gradient_samples`` draws them in with the same ``chunk_size``: after the same
    seed the two results agree to float rounding (the case checks this).

    Only for ``build``'s encoder ``Linear → Tanh → Linear`` and linear decoder.
    """
    first, _, second = encoder
    W1, b1, W2, b2 = (
        first.weight.detach(),
        first.bias.detach(),
        second.weight.detach(),
        second.bias.detach(),
    )
    Wd, bd = decoder.weight.detach(), decoder.bias.detach()
    (B, D), (H, L) = x.shape, (W1.shape[0], W2.shape[0] // 2)
    sizes = [W1.numel(), b1.numel(), W2.numel(), b2.numel()]
    ends = [sum(sizes[: i + 1]) for i in range(4)]
    if out is None:
        out = torch.empty(num, ends[-1], device=x.device)
    h = torch.tanh(x @ W1.T + b1)
    loc, log_scale = (h @ W2.T + b2).chunk(2, -1)
    scale = log_scale.exp()
    for start in range(0, num, chunk_size):
        n = min(chunk_size, num - start)
        eps = torch.randn(n, B, L, device=x.device)
        dlogits = ((loc + scale * eps) @ Wd.T + bd).sigmoid_().sub_(x)
        dz = dlogits @ Wd
        dout = torch.cat([dz + loc, dz.mul_(eps).mul_(scale).add_(scale * scale - 1)], -1)  # [n, B, 2L]
        rows = out[start : start + n]
        torch.bmm(
            dout.transpose(1, 2),
            h.expand(n, B, H),
            out=rows[:, ends[1] : ends[2]].view(n, 2 * L, H),
        )
        torch.sum(dout, 1, out=rows[:, ends[2] :])
        dh = (dout @ W2).mul_(1 - h * h)
        torch.bmm(dh.transpose(1, 2), x.expand(n, B, D), out=rows[:, : ends[0]].view(n, H, D))
        torch.sum(dh, 1, out=rows[:, ends[0] : ends[1]])
    return out


def vectorised_estimates(
    encoder: nn.Module, x: Tensor, neg_elbo, num: int, chunk_size=None, out: Tensor | None = None
) -> Tensor:
    params = {k: v.detach() for k, v in encoder.named_parameters()}
    return scg.diagnostics.gradient_samples(
        lambda p: neg_elbo(functional_call(encoder, p, (x,))),
        params,
        num,
        chunk_size=chunk_size,
        out=out,
    )


def check_same_estimator(a: Tensor, b: Tensor) -> str:
    """Two-sample z per parameter (Bonferroni at 1e-3 over P) and the ratio of total variances."""
    sa, sb = scg.diagnostics.summary(a.double()), scg.diagnostics.summary(b.double())
    se = (sa.std_error**2 + sb.std_error**2).sqrt()
    ok = se > 0
    z = ((sa.mean - sb.mean)[ok] / se[ok]).abs()
    threshold = float(stats.norm.isf(1e-3 / (2 * int(ok.sum()))))
    ratio = float(sa.variance.sum() / sb.variance.sum())
    verdict = "same estimator" if float(z.max()) < threshold and abs(ratio - 1) < 0.2 else "MISMATCH"
    return (
        f"check: max |z| of mean difference over {int(ok.sum())} parameters = {float(z.max()):.2f} "
        f"(threshold {threshold:.2f}); total variance ratio loop/vectorised = {ratio:.3f} -> {verdict}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=1000, help="gradient estimates per run (default 1000)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timed repeats (default 5)")
    parser.add_argument("--batch", type=int, default=16, help="digits per estimate (default 16)")
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        help="gradient_samples chunk_size (default: its own)",
    )
    parser.add_argument(
        "--threads",
        default="1,2",
        help="comma-separated torch intra-op thread counts to run (default 1,2)",
    )
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: perf_counter; cpu: this process's CPU time (robust to other processes on a shared "
        "machine; meaningful with --threads 1)",
    )
    args = parser.parse_args(argv)

    x, encoder, decoder, neg_elbo = build(args.batch)
    P = sum(p.numel() for p in encoder.parameters())
    print(machine())
    print(f"load average: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; clock: {args.clock}")
    print(
        f"encoder 64-128-2x{LATENT}: P = {P} parameters; batch {args.batch}; {args.num} estimates per run; "
        f"chunk_size {args.chunk_size}; {args.repeats} interleaved repeats after 1 warm-up"
    )

    results: dict[str, Tensor] = {}
    loop_buffer, vectorised_buffer = torch.empty(args.num, P), torch.empty(args.num, P)
    candidates = {
        "loop of backward()": lambda: loop_estimates(encoder, x, neg_elbo, args.num),
        "gradient_samples": lambda: vectorised_estimates(encoder, x, neg_elbo, args.num, args.chunk_size),
        REUSED_LOOP: lambda: loop_estimates(encoder, x, neg_elbo, args.num, out=loop_buffer),
        REUSED_VECTORISED: lambda: vectorised_estimates(
            encoder, x, neg_elbo, args.num, args.chunk_size, out=vectorised_buffer
        ),
        "hand-written loop (no scg)": lambda: hand_loop_estimates(encoder, x, decoder, args.num),
    }

    def keep(name: str, f):
        def go() -> None:
            results[name] = f()

        return go

    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        print(f"\n### torch threads = {threads}\n")
        times = blocks({k: keep(k, f) for k, f in candidates.items()}, rounds=args.repeats, clock=args.clock)
        print(report(times, baseline="loop of backward()"))
        med = medians(times)
        ratio = med["loop of backward()"] / med["gradient_samples"]
        reused = med[REUSED_LOOP] / med[REUSED_VECTORISED]
        print(
            f"\nratio (median loop of backward() / median gradient_samples) = {ratio:.1f}; "
            f"both writing into a reused buffer: {reused:.1f}"
        )
    for name, out in results.items():
        if out.shape != (args.num, P):
            raise RuntimeError(f"{name} returned shape {list(out.shape)}; expected {[args.num, P]}.")
    print(check_same_estimator(results["loop of backward()"], results["gradient_samples"]))


if __name__ == "__main__":
    main()
