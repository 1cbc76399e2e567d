"""Benchmark: Bernoulli draws — ``scg.laws.draw`` (1[u < p], one ``torch.rand``) vs ``torch.bernoulli``.

torch's CPU ``bernoulli`` with a tensor of probabilities draws one uniform per
element from the generator and compares it with p, element by element;
``scg.laws.draw`` draws all uniforms with one vectorised ``torch.rand`` and compares
them at once. The samples are identical bit for bit after the same seed (checked
here, and in ``tests/test_laws.py``); only the time differs. Contenders, interleaved
(``_timing.blocks``, CPU clock, one thread):

* ``torch.bernoulli``: ``torch.bernoulli(σ(logits).expand(S, *shape))`` (hand-written code);
* ``dist.sample``: ``Independent(Bernoulli(logits=...), 1).sample((S,))``;
* ``scg.laws.draw``: ``scg.laws.draw(q, (S,))`` — what every scg estimator and
  ``scg.Graph`` use.

Run: ``python benchmarks/bernoulli_draw.py [--shape 100,200] [--samples 1] [--rounds 30]``.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
from torch.distributions import Bernoulli, Independent

from scg.laws import draw

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import blocks, load, machine, medians  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="100,200", help="batch shape of the logits (default 100,200)")
    parser.add_argument("--samples", type=int, default=1, help="sample dim S (default 1)")
    parser.add_argument("--rounds", type=int, default=30, help="interleaved timed rounds (default 30)")
    parser.add_argument("--inner", type=int, default=50, help="calls per timed block (default 50)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.distributions.Distribution.set_default_validate_args(False)
    shape = tuple(int(s) for s in args.shape.split(","))
    S = args.samples
    torch.manual_seed(0)
    logits = torch.randn(shape, requires_grad=True)

    def hand() -> torch.Tensor:
        return torch.bernoulli(torch.sigmoid(logits.detach()).expand(S, *shape))

    def dist_sample() -> torch.Tensor:
        return Independent(Bernoulli(logits=logits), 1).sample((S,))

    def scg_draw() -> torch.Tensor:
        return draw(Independent(Bernoulli(logits=logits), 1), (S,))

    candidates = {"torch.bernoulli": hand, "dist.sample": dist_sample, "scg.laws.draw": scg_draw}
    outs = []
    for f in candidates.values():
        torch.manual_seed(1)
        outs.append(f())
    same = all(torch.equal(outs[0], o) for o in outs[1:])
    print(machine())
    print(f"{load()}; logits {list(shape)}, S = {S}; {args.rounds} rounds x {args.inner} calls")
    print(f"same samples after the same seed: {same}")
    if not same:
        raise SystemExit("samples differ: the draws are not the same estimator input")
    times = blocks(candidates, rounds=args.rounds, inner=args.inner, clock="cpu")
    med = medians(times)
    print("| contender | median µs/call | min µs/call | torch.bernoulli / contender |\n|---|---|---|---|")
    for name, ts in times.items():
        print(f"| {name} | {med[name] * 1e6:.1f} | {min(ts) * 1e6:.1f} | {med['torch.bernoulli'] / med[name]:.2f} |")
    print(f"\nratio torch.bernoulli / scg.laws.draw = {med['torch.bernoulli'] / med['scg.laws.draw']:.2f}")


if __name__ == "__main__":
    main()
