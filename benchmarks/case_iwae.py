"""Case 3 — IWAE with K = 1, 10, 100, 1000, 5000: time and peak memory per training step and for evaluation.

Model: ``scg.models.IWAE`` (``gradient="reparam"``) with ``GaussianEncoder`` 64 → 200 →
200 → 2×16 and ``BernoulliDecoder`` 16 → 200 → 200 → 64 (tanh); batch of 20 binarised
training digits (Burda et al.'s batch size); Adam, lr 1e-3. For each K:

* training step (forward + backward + Adam step) of scg's IWAE and of the same bound
  written by hand (``logsumexp`` of the log-weights), interleaved; the check compares
  their bounds with the same noise;
* evaluation: ``scg.models.log_likelihood(model, test, num_samples=K, chunk_size=500,
  batch_size=100)`` on the 447 test digits (importance-sampled log p(x), chunks of 500
  samples × 100 digits combined by a running log-sum-exp);
* minor page faults per training step (CPU; ``_timing.minor_faults``): memory the
  step obtains fresh from the OS — at large K the activations exceed glibc's 32 MiB
  mmap ceiling and are mapped and faulted in on every step;
* peak memory of one training step and of one evaluation, measured separately from
  the timings (``_timing.peak_memory``: the ``torch.profiler`` memory timeline on CPU,
  the CUDA allocator's peak on a GPU).

Targets: the log-log slope of training time against K over K ≥ 100 within
[0.9, 1.1]; evaluation memory bounded by the chunk — its peak at K = 5000 at most
1.1 × its peak at K = 1000 (both ≥ the chunk of 500 samples).

Run alone: ``python benchmarks/case_iwae.py [--quick]`` (or through ``run.py``).
"""

from __future__ import annotations

import copy
import functools
import math
import os
import sys

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _case import Contender, Mismatch, Options, Result, Target, close  # noqa: E402
from _timing import blocks, minor_faults, peak_memory, summarise  # noqa: E402

NAME = "iwae"
TITLE = "3. IWAE: time and memory against K"
FULL = dict(
    ks=(1, 10, 100, 1000, 5000),
    batch=20,
    hidden=(200, 200),
    latent=16,
    test=None,
    chunk=500,
    eval_batch=100,
)
QUICK = dict(ks=(1, 10, 100, 200), batch=4, hidden=(16,), latent=4, test=40, chunk=20, eval_batch=20)
LR = 1e-3
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def hand_bound(enc: nn.Module, dec: nn.Module, x: Tensor, K: int) -> Tensor:
    """K-sample bound per data point, plain PyTorch."""
    loc, scale, _ = enc.params(x)
    eps = torch.randn((K, *loc.shape), dtype=loc.dtype, device=loc.device)
    z = loc + scale * eps
    logits = dec.net(z)
    log_px = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
    log_q = (-0.5 * eps * eps - torch.log(scale) - HALF_LOG_2PI).sum(-1)
    log_pz = (-0.5 * z * z - HALF_LOG_2PI).sum(-1)
    return torch.logsumexp(log_pz + log_px - log_q, dim=0) - math.log(K)


def contenders(enc: nn.Module, dec: nn.Module, x: Tensor, K: int) -> list[Contender]:
    from scg.models import IWAE

    model = IWAE(copy.deepcopy(enc), copy.deepcopy(dec), num_samples=K, gradient="reparam")
    opt = torch.optim.Adam(model.parameters(), lr=LR)

    def scg_step() -> None:
        opt.zero_grad(set_to_none=True)
        model.loss(x).backward()
        opt.step()

    henc, hdec = copy.deepcopy(enc), copy.deepcopy(dec)
    hopt = torch.optim.Adam([*henc.parameters(), *hdec.parameters()], lr=LR)

    def hand_step() -> None:
        hopt.zero_grad(set_to_none=True)
        (-hand_bound(henc, hdec, x, K).mean()).backward()
        hopt.step()

    return [
        Contender("scg", scg_step, value=lambda: float(model.loss(x).detach())),
        Contender(
            "hand-written",
            hand_step,
            value=lambda: float(-hand_bound(henc, hdec, x, K).mean().detach()),
        ),
    ], model


def slope(ks: list[int], ys: list[float]) -> float:
    """Least-squares slope of log y against log K."""
    lx = [math.log(k) for k in ks]
    ly = [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=False)) / sum((a - mx) ** 2 for a in lx)


def run(opts: Options) -> Result:
    from scg.models import BernoulliDecoder, GaussianEncoder, log_likelihood
    from scg.models.data import digits

    cfg = QUICK if opts.quick else FULL
    device = opts.torch_device
    torch.manual_seed(opts.seed)
    enc = GaussianEncoder(64, cfg["latent"], cfg["hidden"]).to(device)
    dec = BernoulliDecoder(cfg["latent"], 64, cfg["hidden"]).to(device)
    splits = digits()
    x = splits.train[: cfg["batch"]].to(device)
    test = splits.test if cfg["test"] is None else splits.test[: cfg["test"]]
    test = test.to(device)
    hidden = "-".join(map(str, cfg["hidden"]))
    setup = (
        f"IWAE (reparam), GaussianEncoder 64-{hidden}-2x{cfg['latent']}, BernoulliDecoder {cfg['latent']}-{hidden}-64; "
        f"training batch {cfg['batch']}; Adam lr {LR}; evaluation: log_likelihood on {test.shape[0]} test digits, "
        f"chunk_size {cfg['chunk']}, batch_size {cfg['eval_batch']}"
    )
    result = Result(NAME, TITLE, setup, baseline="hand-written")
    rows = []
    train_t, train_m, eval_t, eval_m = [], [], [], []
    for K in cfg["ks"]:
        cs, model = contenders(enc, dec, x, K)
        values = {}
        for c in cs:
            torch.manual_seed(opts.seed)
            values[c.name] = c.value()
        if not close(values["scg"], values["hand-written"], rtol=1e-5, atol=1e-5):
            raise Mismatch(
                f"iwae K={K}: scg bound {values['scg']!r} != hand-written {values['hand-written']!r}"
            )
        inner = 1 if opts.quick else max(1, 200 // K)
        rounds = opts.rounds or (3 if opts.quick else (12 if K <= 1000 else 6))
        times = blocks(
            {c.name: c.step for c in cs},
            rounds=rounds,
            inner=inner,
            warmup=1,
            clock=opts.clock,
            device=device,
        )
        summary = {r.name: r for r in summarise(times, "hand-written")}
        faults = {c.name: minor_faults(c.step) for c in cs} if device.type == "cpu" else {}
        mem = peak_memory(cs[0].step, device=device)
        hand_mem = peak_memory(cs[1].step, device=device)
        evaluate = functools.partial(
            log_likelihood, model, test, num_samples=K, chunk_size=cfg["chunk"], batch_size=cfg["eval_batch"]
        )
        ev_rounds = opts.rounds or (2 if opts.quick else (3 if K >= 1000 else 5))
        ev = blocks({"eval": evaluate}, rounds=ev_rounds, inner=1, warmup=1, clock=opts.clock, device=device)
        ev_med = summarise(ev, "eval")[0].median
        ev_mem = peak_memory(evaluate, device=device)
        s, h = summary["scg"], summary["hand-written"]
        train_t.append(s.median)
        train_m.append(mem)
        eval_t.append(ev_med)
        eval_m.append(ev_mem)
        rows.append(
            f"| {K} | {1e3 * s.median:.2f} | {1e3 * h.median:.2f} | {s.ratio:.3f} | {mem / 2**20:.1f} | "
            f"{hand_mem / 2**20:.1f} | {ev_med:.3f} | {ev_mem / 2**20:.1f} |"
        )
        result.notes.append(
            f"K={K}: bound scg {values['scg']:.6g} = hand-written {values['hand-written']:.6g}; "
            f"{rounds} rounds x {inner} steps; evaluation {ev_rounds} rounds"
            + (
                "; minor page faults per step: " + ", ".join(f"{k} {v}" for k, v in faults.items())
                if faults and None not in faults.values()
                else ""
            )
        )
        print(rows[-1], flush=True)
    header = [
        "| K | scg ms/step | hand-written ms/step | scg / hand | scg step peak MiB | hand step peak MiB | "
        "eval s (test set) | eval peak MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    result.tables.append("\n".join(header + rows))
    ks = list(cfg["ks"])
    big = [i for i, k in enumerate(ks) if k >= 100]
    t_slope = slope([ks[i] for i in big], [train_t[i] for i in big]) if len(big) >= 2 else float("nan")
    m_slope = slope([ks[i] for i in big], [train_m[i] for i in big]) if len(big) >= 2 else float("nan")
    e_slope = slope([ks[i] for i in big], [eval_t[i] for i in big]) if len(big) >= 2 else float("nan")
    if len(big) >= 2:
        marginal = ", ".join(
            f"K {ks[i]}->{ks[j]}: {1e6 * (train_t[j] - train_t[i]) / (ks[j] - ks[i]):.1f} us"
            for i, j in zip(big[:-1], big[1:], strict=False)
        )
        result.notes.append(
            f"marginal training time per extra sample (whole batch): {marginal}; the fixed "
            f"part of a step (encoder, Adam, Python; K = 1: {1e3 * train_t[0]:.2f} ms) keeps the "
            f"log-log slope below 1 at small K"
        )
    result.notes.append(
        f"log-log slopes over K >= 100: training time {t_slope:.3f}, training peak memory {m_slope:.3f}, "
        f"evaluation time {e_slope:.3f}"
    )
    result.notes.append(
        "peak memory: tensor storages created during one call above those alive before it "
        + (
            "(CUDA allocator peak)"
            if device.type == "cuda"
            else "(torch.profiler memory timeline, profile_memory=True)"
        )
    )
    result.targets.append(Target("training time log-log slope, K >= 100", t_slope, ">=", 0.9))
    result.targets.append(Target("training time log-log slope, K >= 100", t_slope, "<=", 1.1))
    chunked = [i for i, k in enumerate(ks) if k >= cfg["chunk"]]
    if len(chunked) >= 2:
        first, last = chunked[0], chunked[-1]
        result.targets.append(
            Target(
                f"eval peak memory K={ks[last]} / K={ks[first]} (chunks of {cfg['chunk']})",
                eval_m[last] / eval_m[first],
                "<=",
                1.1,
            )
        )
    result.notes.append(
        f"evaluation peak memory {eval_m[-1] / 2**20:.1f} MiB at K = {ks[-1]} "
        f"(chunk of {cfg['chunk']} samples x {cfg['eval_batch']} digits)"
    )
    return result


if __name__ == "__main__":
    from run import main

    main(["--case", NAME, *sys.argv[1:]])
