"""Case 5 — a 3-node mixed ``scg.Graph`` vs a hand-written DiCE surrogate (training step).

The model: a ~ Bernoulli (score function) → z ~ Normal (pathwise) → b ~ Bernoulli
(score function); costs ‖z − x W_r‖² and −log p(x | b). Both contenders draw with the same random
calls, so after the same seed they compute the same surrogate value and gradients
(checked before timing). A training step here is forward + ``backward()`` + Adam
step (lr 1e-3) on the model's parameters.

Contenders: ``scg.Graph`` with ``loss.backward()`` (what a user writes);
``scg.Graph`` with ``loss.backward(inputs=params)`` (prunes the back-propagation to
the score-function samples, which the graph hands out as leaves that require grad,
see ``scg.Graph``'s docstring);
the hand-written DiCE surrogate with ``loss.backward()``, drawing with
``dist.sample()`` as the graph does. Sizes ``medium`` (S = 8,
B = 64, D = 64, H = 32) and ``large`` (S = 16, B = 128, D = 256, H = 128).

Run alone: ``python benchmarks/case_graph.py [--quick]`` (or through ``run.py``).
"""

from __future__ import annotations

import copy
import os
import sys

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Bernoulli, Independent, Normal

import scg

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _case import Case, Contender, Options, Result, Target, ratio, time_case  # noqa: E402

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


PATHWISE = scg.Pathwise()


def graph_step(
    m: Model, x: torch.Tensor, S: int, sf_a: scg.ScoreFunction, sf_b: scg.ScoreFunction
) -> torch.Tensor:
    g = scg.Graph(num_samples=S)
    a = g.sample("a", Independent(Bernoulli(logits=m.enc(x)), 1), sf_a)
    z = g.sample("z", Independent(Normal(m.w_z(a), F.softplus(m.log_s)), 1), PATHWISE)
    b = g.sample("b", Independent(Bernoulli(logits=m.w_b(z)), 1), sf_b)
    g.cost("fit", ((z - m.w_r(x)) ** 2).sum(-1))
    g.cost(
        "rec",
        F.binary_cross_entropy_with_logits(m.dec(b), x.expand_as(b), reduction="none").sum(-1),
    )
    return g.surrogate()


def dice_step(m: Model, x: torch.Tensor, S: int) -> torch.Tensor:
    """The same surrogate written by hand (DiCE), drawing with the same calls."""

    def box(lp: torch.Tensor) -> torch.Tensor:
        return torch.exp(lp - lp.detach())

    qa = Independent(Bernoulli(logits=m.enc(x)), 1)
    a = qa.sample((S,))
    lp_a = qa.log_prob(a)
    qz = Independent(Normal(m.w_z(a), F.softplus(m.log_s)), 1)
    z = qz.rsample()
    qb = Independent(Bernoulli(logits=m.w_b(z)), 1)
    b = qb.sample()
    lp_b = qb.log_prob(b)
    fit = ((z - m.w_r(x)) ** 2).sum(-1)
    rec = F.binary_cross_entropy_with_logits(m.dec(b), x.expand_as(b), reduction="none").sum(-1)
    return (box(lp_a) * fit).mean(0).sum() + (box(lp_a + lp_b) * rec).mean(0).sum()


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
        loss_fn = lambda: dice_step(m, x, S)  # noqa: E731
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
    ]
    setup = (
        f"size {size}: S = {S} graph samples, batch B = {B}, data D = {D}, hidden H = {H}; "
        f"a ~ Bernoulli (ScoreFunction), z ~ Normal (Pathwise), b ~ Bernoulli (ScoreFunction); "
        f"2 costs; Adam lr {LR}"
    )
    inner, rounds = {"small": (10, 30), "medium": (10, 30), "large": (3, 20)}[size]
    return Case(
        f"{NAME}-{size}",
        f"{TITLE}, {size} (training step)",
        setup,
        "hand-written DiCE",
        contenders,
        inner=inner,
        rounds=rounds,
        grad_groups=[[c.name for c in contenders]],
        rtol=1e-5,
    )


def run(opts: Options) -> list[Result]:
    out = []
    for size in ("small",) if opts.quick else ("medium", "large"):
        result = time_case(build(opts, size), opts)
        result.targets.append(
            Target(
                "scg.Graph / hand-written DiCE",
                ratio(result.rows, "scg.Graph", "hand-written DiCE"),
                "<=",
                1.10,
            )
        )
        out.append(result)
    return out


if __name__ == "__main__":
    from run import main

    main(["--case", NAME, *sys.argv[1:]])
