"""Benchmark: page faults and time of ``gradient_samples`` per chunk size, with and without allocator settling.

The problem is case 4's (``benchmarks/gradient_samples.py``: MLP encoder 64 → 128 → 2×16,
12,448 parameters, batch of 16 digits, 1000 estimates written into a reused ``out``).
For each ``--chunk-sizes`` entry it prints the median time of ``--repeats`` calls and
the median number of minor page faults per call (``getrusage``), in two fresh
interpreters side by side:

* ``settled`` — the library as it is: the first call frees one block just under glibc's
  32 MiB mmap-threshold ceiling (``scg._memory._settle_allocator``);
* ``unsettled`` — the same with that step skipped (``_allocator_settled = True`` before
  the first call), i.e. glibc's threshold set by the chunks' own largest freed block.

It also times first-touching a fresh ``[1000, 12448]`` float32 result (``torch.zeros`` of
that shape) — what no allocator setting removes, since glibc always maps blocks above
32 MiB fresh; ``gradient_samples`` without ``out=`` pays it on its first two calls only,
then reuses a dropped result's memory (``scg._memory._result``). Both are timed: the
default call (``g = gradient_samples(...)`` with the previous ``g`` alive, default chunk)
with that reuse switched off (a fresh result every call) and on.

Run: ``python benchmarks/gradient_samples_faults.py [--threads 1] [--repeats 7]
[--chunk-sizes 100,200,336,500,1000]``. Results: ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def measure(mode: str, threads: int, repeats: int, chunk_sizes: list[int]) -> dict:
    """In this interpreter: {chunk_size: (median ms, median faults)} and the fresh-result touch time."""
    import torch

    sys.path.insert(0, HERE)
    import scg._memory
    from gradient_samples import build, vectorised_estimates

    torch.set_num_threads(threads)
    if mode == "unsettled":
        scg._memory._allocator_settled = True
    x, encoder, _, neg_elbo = build(16)
    P = sum(p.numel() for p in encoder.parameters())
    out = torch.empty(1000, P)
    rows = {}
    for cs in chunk_sizes:
        for _ in range(2):
            vectorised_estimates(encoder, x, neg_elbo, 1000, chunk_size=cs, out=out)
        times, faults = [], []
        for _ in range(repeats):
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t0 = time.perf_counter()
            vectorised_estimates(encoder, x, neg_elbo, 1000, chunk_size=cs, out=out)
            times.append(time.perf_counter() - t0)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
        rows[cs] = (1e3 * sorted(times)[repeats // 2], sorted(faults)[repeats // 2])
    default = {}
    for pooled in (False, True):  # the default call (no out=), the previous result alive: g = ...
        scg._memory._POOL_MIN_BYTES = (32 << 20) if pooled else 1 << 62
        scg._memory._pool.clear()
        g = None
        for _ in range(2):
            g = vectorised_estimates(encoder, x, neg_elbo, 1000)
        times, faults = [], []
        for _ in range(repeats):
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t0 = time.perf_counter()
            g = vectorised_estimates(encoder, x, neg_elbo, 1000)
            times.append(time.perf_counter() - t0)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
        default["pooled" if pooled else "fresh"] = (1e3 * sorted(times)[repeats // 2], sorted(faults)[repeats // 2])
    del g
    touch = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fresh = torch.zeros(1000, P)
        touch.append(time.perf_counter() - t0)
        del fresh
    return {"rows": rows, "default": default, "touch_ms": 1e3 * sorted(touch)[repeats // 2]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--chunk-sizes", default="100,200,336,500,1000")
    parser.add_argument("--mode", choices=["settled", "unsettled"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.chunk_sizes.split(",")]
    if args.mode:  # child: one fresh interpreter per mode
        print(json.dumps(measure(args.mode, args.threads, args.repeats, sizes)))
        return
    results = {}
    for mode in ("unsettled", "settled"):
        proc = subprocess.run(
            [sys.executable, __file__, "--mode", mode, "--threads", str(args.threads),
             "--repeats", str(args.repeats), "--chunk-sizes", args.chunk_sizes],
            capture_output=True, text=True, check=True,
        )
        results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"gradient_samples, 1000 estimates into a reused out=, {args.threads} thread(s), "
          f"median of {args.repeats} calls per chunk size")
    print("| chunk_size | unsettled ms | unsettled faults | settled ms | settled faults |")
    print("|---|---|---|---|---|")
    for cs in sizes:
        u, s = results["unsettled"]["rows"][str(cs)], results["settled"]["rows"][str(cs)]
        print(f"| {cs} | {u[0]:.1f} | {u[1]} | {s[0]:.1f} | {s[1]} |")
    for mode in ("unsettled", "settled"):
        d = results[mode]["default"]
        print(f"{mode}, default chunk, no out= (g = gradient_samples(...), the previous g alive): "
              f"fresh result every call {d['fresh'][0]:.1f} ms ({d['fresh'][1]} faults), "
              f"reusing a dropped result's memory (the default) {d['pooled'][0]:.1f} ms ({d['pooled'][1]} faults)")
    print(f"first touch of a fresh [1000, 12448] float32 result (torch.zeros): "
          f"{results['settled']['touch_ms']:.1f} ms")


if __name__ == "__main__":
    main()
