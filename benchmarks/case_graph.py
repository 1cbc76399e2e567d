"""Case 5 — a 3-node mixed ``scg.Graph`` vs a hand-written DiCE surrogate (training step).

The model, ``graph_step`` and ``dice_step`` are those of ``benchmarks/graph_overhead.py``
(a ~ Bernoulli (score function) → z ~ Normal (pathwise) → b ~ Bernoulli (score
function); costs ‖z − x W_r‖² and −log p(x | b)); both draw with the same random
calls, so after the same seed they compute the same surrogate value and gradients
(checked before timing). A training step here is forward + ``backward()`` + Adam
step (lr 1e-3) on the model's parameters.

Contenders: ``scg.Graph`` with ``loss.backward()`` (what a user writes);
``scg.Graph`` with ``loss.backward(inputs=params)`` (prunes the back-propagation to
the score-function samples, which the graph hands out as leaves that require grad,
see ``scg.Graph``'s docstring);
the hand-written DiCE surrogate with ``loss.backward()``, drawing with
``dist.sample()`` (what one writes by hand) and with ``scg.laws.draw`` (the
graph's sampler: the same Bernoulli samples, about twice as fast on the CPU) —
the latter isolates the graph's own cost. Sizes ``medium`` (S = 8,
B = 64, D = 64, H = 32) and ``large`` (S = 16, B = 128, D = 256, H = 128).

Run alone: ``python benchmarks/case_graph.py [--quick]`` (or through ``run.py``).
"""

from __future__ import annotations

import copy
import os
import sys

import torch

import scg

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _case import Case, Contender, Options, Result, Target, ratio, time_case  # noqa: E402
from graph_overhead import SIZES, Model, dice_step, graph_step  # noqa: E402

NAME = "graph"
TITLE = "5. 3-node scg.Graph vs hand-written DiCE"
LR = 1e-3


def make(name: str, m: Model, x: torch.Tensor, S: int, kind: str) -> Contender:
    params = list(m.parameters())
    opt = torch.optim.Adam(params, lr=LR)
    sf_a, sf_b = scg.ScoreFunction(), scg.ScoreFunction()
    if kind.startswith("graph"):
        loss_fn = lambda: graph_step(m, x, S, sf_a, sf_b)  # noqa: E731
    else:
        loss_fn = lambda: dice_step(m, x, S, laws=kind == "dice-laws")  # noqa: E731
    inputs = params if kind == "graph-inputs" else None

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn().backward(inputs=inputs)
        opt.step()

    def grads() -> torch.Tensor:
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss_fn(), params)])

    return Contender(name, step, value=lambda: float(loss_fn().detach()), grads=grads)


def build(opts: Options, size: str) -> Case:
    S, B, D, H = SIZES[size]
    device = opts.torch_device
    torch.manual_seed(opts.seed)
    m = Model(D, H).to(device)
    x = torch.rand(B, D, device=device).round()
    contenders = [
        make("scg.Graph", copy.deepcopy(m), x, S, "graph"),
        make("scg.Graph, backward(inputs=params)", copy.deepcopy(m), x, S, "graph-inputs"),
        make("hand-written DiCE", copy.deepcopy(m), x, S, "dice"),
        make("hand-written DiCE, scg.laws.draw", copy.deepcopy(m), x, S, "dice-laws"),
    ]
    setup = (f"size {size}: S = {S} graph samples, batch B = {B}, data D = {D}, hidden H = {H}; "
             f"a ~ Bernoulli (ScoreFunction), z ~ Normal (Pathwise), b ~ Bernoulli (ScoreFunction); "
             f"2 costs; Adam lr {LR}")
    inner, rounds = {"small": (10, 30), "medium": (10, 30), "large": (3, 20)}[size]
    return Case(f"{NAME}-{size}", f"{TITLE}, {size} (training step)", setup, "hand-written DiCE", contenders,
                inner=inner, rounds=rounds, grad_groups=[[c.name for c in contenders]], rtol=1e-5)


def run(opts: Options) -> list[Result]:
    out = []
    for size in (("small",) if opts.quick else ("medium", "large")):
        result = time_case(build(opts, size), opts)
        result.targets.append(Target("scg.Graph / hand-written DiCE",
                                     ratio(result.rows, "scg.Graph", "hand-written DiCE"), "<=", 1.10))
        result.targets.append(Target("scg.Graph / hand-written DiCE, scg.laws.draw (same samplers)",
                                     ratio(result.rows, "scg.Graph", "hand-written DiCE, scg.laws.draw"), "<=", 1.10))
        out.append(result)
    return out


if __name__ == "__main__":
    from run import main

    main(["--case", NAME, *sys.argv[1:]])
