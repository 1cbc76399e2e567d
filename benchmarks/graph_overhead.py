"""Overhead of ``scg.Graph`` against a hand-written DiCE surrogate of the same 3-node model.

Model (x: data [B, D]; S graph samples):

    a ~ Bernoulli(σ(x W_a))            [S, B, H]   score function
    z ~ Normal(a W_z, softplus(s))     [S, B, H]   pathwise
    b ~ Bernoulli(σ(z W_b))            [S, B, D]   score function
    costs: ‖z − x W_r‖² (depends on a, z);  −log p(x | b) = BCE(x; b W_d) (depends on a, z, b)

Both versions draw the same samples and compute the same surrogate (the script
checks that values and gradients agree), then back-propagate it — with
``loss.backward()`` and with ``torch.autograd.grad(loss, params)``. The two differ
for the graph: its score-function samples are leaves that require grad (how data
flow is read without wrapping tensors), so ``backward()`` also propagates the
costs to those samples (the input gradient of the first layer that reads them),
while ``autograd.grad`` (or ``backward(inputs=params)``) prunes that work.
Two hand-written versions: ``dice`` draws with ``dist.sample()`` (what one
writes by hand), ``laws`` with ``scg.laws.draw`` like the graph (same samples,
faster Bernoulli draws): graph / ``laws`` is the graph's own cost.
Timings are CPU time of this process, interleaved (the order rotates every round)
in blocks of steps; each is summarised by its fastest block (as ``timeit``
recommends: slower blocks measure interference from other processes, not the
code), by the ratio of the median blocks and by the median of the per-round
ratios (graph block / hand-written block of the same round: the most robust to
load that drifts during the run).

Run: ``python benchmarks/graph_overhead.py [--size small|medium|large] [--reps N]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Bernoulli, Independent, Normal

import scg

SIZES = {  # (S, B, D, H)
    "small": (4, 8, 16, 8),
    "medium": (8, 64, 64, 32),
    "large": (16, 128, 256, 128),
}


class Model(nn.Module):
    def __init__(self, D: int, H: int) -> None:
        super().__init__()
        self.enc = nn.Linear(D, H)
        self.w_z = nn.Linear(H, H)
        self.log_s = nn.Parameter(torch.zeros(H))
        self.w_b = nn.Linear(H, D)
        self.w_r = nn.Linear(D, H)
        self.dec = nn.Linear(D, D)


def graph_step(m: Model, x: torch.Tensor, S: int, sf_a: scg.ScoreFunction, sf_b: scg.ScoreFunction) -> torch.Tensor:
    g = scg.Graph(num_samples=S)
    a = g.sample("a", Independent(Bernoulli(logits=m.enc(x)), 1), sf_a)
    z = g.sample("z", Independent(Normal(m.w_z(a), F.softplus(m.log_s)), 1), PATHWISE)
    b = g.sample("b", Independent(Bernoulli(logits=m.w_b(z)), 1), sf_b)
    g.cost("fit", ((z - m.w_r(x)) ** 2).sum(-1))
    g.cost("rec", F.binary_cross_entropy_with_logits(m.dec(b), x.expand_as(b), reduction="none").sum(-1))
    return g.surrogate()


def dice_step(m: Model, x: torch.Tensor, S: int, laws: bool = False) -> torch.Tensor:
    """The hand-written DiCE surrogate; ``laws``: draw the Bernoulli samples with ``scg.laws.draw`` as the graph does.

    ``scg.laws.draw`` draws Bernoulli samples on the CPU as ``1[u < p]`` with one
    ``torch.rand`` — the very samples of ``dist.sample()`` after the same seed, about
    twice as fast. With ``laws=True`` both versions do the same tensor work apart
    from what the graph adds, so the ratio measures the graph's own cost.
    """

    def box(lp: torch.Tensor) -> torch.Tensor:
        return torch.exp(lp - lp.detach())

    qa = Independent(Bernoulli(logits=m.enc(x)), 1)
    a = scg.laws.draw(qa, (S,)) if laws else qa.sample((S,))
    lp_a = qa.log_prob(a)
    qz = Independent(Normal(m.w_z(a), F.softplus(m.log_s)), 1)
    z = qz.rsample()
    qb = Independent(Bernoulli(logits=m.w_b(z)), 1)
    b = scg.laws.draw(qb, ()) if laws else qb.sample()
    lp_b = qb.log_prob(b)
    fit = ((z - m.w_r(x)) ** 2).sum(-1)
    rec = F.binary_cross_entropy_with_logits(m.dec(b), x.expand_as(b), reduction="none").sum(-1)
    return (box(lp_a) * fit).mean(0).sum() + (box(lp_a + lp_b) * rec).mean(0).sum()


PATHWISE = scg.Pathwise()


def check_same(m: Model, x: torch.Tensor, S: int, sf_a, sf_b) -> None:
    torch.manual_seed(0)
    s1 = graph_step(m, x, S, sf_a, sf_b)
    g1 = torch.autograd.grad(s1, list(m.parameters()))
    for laws in (False, True):
        torch.manual_seed(0)
        s2 = dice_step(m, x, S, laws)
        g2 = torch.autograd.grad(s2, list(m.parameters()))
        if not torch.allclose(s1, s2, rtol=1e-5, atol=1e-5) or not all(
            torch.allclose(u, v, rtol=1e-4, atol=1e-4) for u, v in zip(g1, g2)
        ):
            raise SystemExit("graph and hand-written DiCE disagree; the comparison would be meaningless")


def time_block(fn, n: int) -> float:
    start = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - start) / n


def run(size: str, reps: int, inner: int) -> dict[str, float]:
    S, B, D, H = SIZES[size]
    torch.manual_seed(0)
    m = Model(D, H)
    x = torch.rand(B, D).round()
    sf_a, sf_b = scg.ScoreFunction(), scg.ScoreFunction()
    check_same(m, x, S, sf_a, sf_b)

    params = list(m.parameters())

    def backward(fn):
        def go():
            for p in params:
                p.grad = None
            fn().backward()

        return go

    def grad(fn):
        return lambda: torch.autograd.grad(fn(), params)

    out: dict[str, float] = {"S": S, "B": B, "D": D, "H": H}
    for mode, wrap in (("backward", backward), ("grad", grad)):
        fns = {
            "graph": wrap(lambda: graph_step(m, x, S, sf_a, sf_b)),
            "dice": wrap(lambda: dice_step(m, x, S)),
            "laws": wrap(lambda: dice_step(m, x, S, laws=True)),
        }
        for _ in range(max(3, inner)):  # warm-up
            for fn in fns.values():
                fn()
        times: dict[str, list[float]] = {k: [] for k in fns}
        names = list(fns)
        for r in range(reps):
            for k in names[r % 3:] + names[: r % 3]:  # the order rotates every round
                times[k].append(time_block(fns[k], inner))
        tg = times["graph"]
        out[f"{mode}_graph_ms"] = 1e3 * min(tg)
        for ref in ("dice", "laws"):
            td = times[ref]
            mg, md = min(tg), min(td)
            key = f"{mode}_{ref}"
            out[f"{key}_ms"], out[f"{key}_ratio"], out[f"{key}_overhead_us"] = 1e3 * md, mg / md, 1e6 * (mg - md)
            out[f"{key}_median_ratio"] = statistics.median(tg) / statistics.median(td)
            out[f"{key}_paired_ratio"] = statistics.median(g / d for g, d in zip(tg, td))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=[*SIZES, "all"], default="all")
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--inner", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--validate", action="store_true",
                        help="keep torch.distributions argument validation on (off by default, as in run.py)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.distributions.Distribution.set_default_validate_args(args.validate)
    sizes = list(SIZES) if args.size == "all" else [args.size]
    print(f"torch {torch.__version__}, {args.threads} thread(s), validate_args={args.validate}, CPU time per step, "
          f"fastest of {args.reps} blocks x {args.inner} steps (then: ratio of the median blocks, median of the "
          f"per-round ratios)")
    print(f"{'size':>7} {'S':>3} {'B':>4} {'D':>4} {'H':>4} | {'mode':>8} {'vs':>5} {'graph ms':>9} {'DiCE ms':>9} "
          f"{'ratio':>6} {'overhead us':>12} {'median ratio':>13} {'paired ratio':>13}")
    for size in sizes:
        r = run(size, args.reps, args.inner)
        for mode in ("backward", "grad"):
            for ref in ("dice", "laws"):
                k = f"{mode}_{ref}"
                print(f"{size:>7} {r['S']:>3} {r['B']:>4} {r['D']:>4} {r['H']:>4} | {mode:>8} {ref:>5} "
                      f"{r[mode + '_graph_ms']:>9.3f} {r[k + '_ms']:>9.3f} {r[k + '_ratio']:>6.3f} "
                      f"{r[k + '_overhead_us']:>12.1f} {r[k + '_median_ratio']:>13.3f} {r[k + '_paired_ratio']:>13.3f}")

if __name__ == "__main__":
    main()
