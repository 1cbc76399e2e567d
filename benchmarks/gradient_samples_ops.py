"""Benchmark: where a ``gradient_samples`` call of case 4 spends its time, kernel by kernel, against case 4's budget.

The problem is case 4's (``benchmarks/gradient_samples.py``: MLP encoder 64 → 128 → 2×16,
12,448 parameters, batch of 16 digits, ``--num`` estimates written into a reused ``out``).
Case 4's target is ``loop of backward() / gradient_samples ≥ 20``, so one call has a
*budget* of a twentieth of the loop. This script measures, in one process at
``--threads`` torch threads:

* the loop of ``backward()`` (the case's baseline) and its budget, loop / 20;
* ``gradient_samples(..., out=buffer)`` and the hand-vectorised floor (the gradient derived
  by hand, no autograd) per call, wall clock, medians of ``--repeats`` interleaved rounds (``_timing.blocks``);
* for both, every ATen kernel the call runs, timed one by one with a
  ``TorchDispatchMode``: under ``torch.func`` such a mode sits below the ``vmap`` and
  ``grad`` layers, so it sees the batched (physical) kernels that actually execute — the
  ``bmm`` of the per-sample weight gradients, the copy of each chunk into the result, the
  elementwise kernels of forward and backward. Their sum is the time no change of Python
  code or dispatch around the kernels can remove; the rest of the call is that overhead
  (tracing ``fn`` through ``vmap``/``grad`` once per chunk, autograd's graph).

The kernels' time is estimated twice, independently: as that sum (the mode's own Python
runs between kernels, outside each timed interval, but may cool caches), and as the call
minus its *fixed cost* — the same call with as many chunks of one estimate each, whose
kernels are tiny, so what remains is what does not grow with the chunk (tracing ``fn``
through ``vmap``/``grad``, autograd's graph, each kernel's launch). If the kernels alone
exceed the budget, the target cannot be met at that thread count by any eager
``vmap(grad)`` of this model: only by computing fewer or cheaper kernels, as the floor
does. Results: ``docs/benchmarks.md``.

Run: ``python benchmarks/gradient_samples_ops.py [--threads 1] [--num 1000] [--repeats 7] [--top 12]``.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time
from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import blocks, machine, medians  # noqa: E402
from gradient_samples import build, hand_vectorised_estimates, loop_estimates, vectorised_estimates  # noqa: E402

import scg  # noqa: E402


class KernelTimes(TorchDispatchMode):
    """Seconds and calls per ATen kernel while active (wall clock around each kernel)."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: dict[str, float] = collections.defaultdict(float)
        self.calls: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 - torch's protocol
        start = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        name = str(func.overloadpacket)
        self.seconds[name] += time.perf_counter() - start
        self.calls[name] += 1
        return out


def kernels(f: Callable[[], object], repeats: int) -> KernelTimes:
    """Per-kernel times of ``repeats`` calls of ``f`` (after one warm-up call), summed."""
    f()
    mode = KernelTimes()
    with mode:
        for _ in range(repeats):
            f()
    return mode


def table(mode: KernelTimes, repeats: int, top: int) -> str:
    rows = sorted(mode.seconds.items(), key=lambda kv: -kv[1])
    lines = ["| kernel | ms per call | calls per call |", "|---|---|---|"]
    for name, seconds in rows[:top]:
        lines.append(f"| {name} | {seconds / repeats * 1e3:.3f} | {mode.calls[name] / repeats:.0f} |")
    rest = sum(s for _, s in rows[top:])
    if rows[top:]:
        lines.append(f"| ({len(rows) - top} others) | {rest / repeats * 1e3:.3f} | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--num", type=int, default=1000, help="gradient estimates per call (default 1000)")
    parser.add_argument("--batch", type=int, default=16, help="digits per estimate (default 16)")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per measurement (default 7)")
    parser.add_argument("--top", type=int, default=12, help="kernels listed per table (default 12)")
    args = parser.parse_args(argv)
    for name in ("threads", "num", "batch", "repeats", "top"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1; got {getattr(args, name)}")

    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _measure(args)
    finally:
        torch.set_num_threads(threads)


def _measure(args: argparse.Namespace) -> dict[str, float]:
    x, encoder, decoder, neg_elbo = build(args.batch)
    P = sum(p.numel() for p in encoder.parameters())
    chunk = min(args.num, max(1, scg.diagnostics.DEFAULT_CHUNK_ELEMENTS // P))
    out, floor_out = torch.empty(args.num, P), torch.empty(args.num, P)
    loop_out = torch.empty(args.num, P)
    auto = lambda: vectorised_estimates(encoder, x, neg_elbo, args.num, out=out)  # noqa: E731
    floor = lambda: hand_vectorised_estimates(encoder, x, decoder, args.num, chunk, out=floor_out)  # noqa: E731
    loop = lambda: loop_estimates(encoder, x, neg_elbo, args.num, out=loop_out)  # noqa: E731

    chunks = -(-args.num // chunk)
    # The same calls with as many chunks of one estimate each: what does not grow with the chunk's size
    # (tracing fn through vmap/grad, autograd's graph, every kernel's fixed cost).
    auto_fixed = lambda: vectorised_estimates(encoder, x, neg_elbo, chunks, chunk_size=1)  # noqa: E731
    floor_fixed = lambda: hand_vectorised_estimates(encoder, x, decoder, chunks, 1)  # noqa: E731

    print(machine())
    print(f"torch threads {args.threads}; P = {P}; {args.num} estimates per call in {chunks} chunks of {chunk}; "
          f"medians of {args.repeats} interleaved rounds (wall clock)")
    timed = {"loop": loop, "auto": auto, "floor": floor, "auto_fixed": auto_fixed, "floor_fixed": floor_fixed}
    ms = {k: v * 1e3 for k, v in medians(blocks(timed, rounds=args.repeats, warmup=2, clock="wall")).items()}
    loop_ms, auto_ms, floor_ms = ms["loop"], ms["auto"], ms["floor"]
    auto_fixed_ms, floor_fixed_ms = ms["auto_fixed"], ms["floor_fixed"]
    auto_k, floor_k = kernels(auto, args.repeats), kernels(floor, args.repeats)
    auto_kernels = sum(auto_k.seconds.values()) / args.repeats * 1e3
    floor_kernels = sum(floor_k.seconds.values()) / args.repeats * 1e3
    budget = loop_ms / 20
    print(f"\nloop of backward() (reused buffer): {loop_ms:.1f} ms -> case 4's budget (loop / 20): {budget:.2f} ms\n")
    print(f"| contender | ms per call | the same {chunks} chunks of 1 estimate (fixed cost) | call - fixed cost "
          "(work that grows with the chunk) | sum of kernel times (dispatch mode) |")
    print("|---|---|---|---|---|")
    print(f"| gradient_samples(out=) | {auto_ms:.2f} | {auto_fixed_ms:.2f} | {auto_ms - auto_fixed_ms:.2f} | "
          f"{auto_kernels:.2f} |")
    print(f"| hand-vectorised floor | {floor_ms:.2f} | {floor_fixed_ms:.2f} | {floor_ms - floor_fixed_ms:.2f} | "
          f"{floor_kernels:.2f} |")
    print(f"\n#### gradient_samples(out=): kernels\n\n{table(auto_k, args.repeats, args.top)}")
    print(f"\n#### hand-vectorised floor: kernels\n\n{table(floor_k, args.repeats, args.top)}")
    work = auto_ms - auto_fixed_ms
    verdict = "exceeds" if work > budget else "fits within"
    print(f"\ngradient_samples' work that grows with the chunk ({work:.2f} ms) {verdict} the budget ({budget:.2f} ms) "
          f"before its fixed cost ({auto_fixed_ms:.2f} ms); loop / gradient_samples = {loop_ms / auto_ms:.1f}, "
          f"loop / floor = {loop_ms / floor_ms:.1f}")
    return {"loop": loop_ms, "gradient_samples": auto_ms, "floor": floor_ms,
            "gradient_samples_fixed": auto_fixed_ms, "floor_fixed": floor_fixed_ms,
            "gradient_samples_kernels": auto_kernels, "floor_kernels": floor_kernels, "budget": budget}


if __name__ == "__main__":
    main()
