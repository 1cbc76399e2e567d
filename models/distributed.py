r"""Data-parallel training on ``torch.distributed``: :func:`fit_distributed`, one trainer for W processes.

Launch one process per CPU core group or GPU with ``torchrun``; every process runs
the same script and calls :func:`fit_distributed` instead of :func:`scg.models.fit`.

**Data.** Every rank draws the same permutation of the training set (order seed
``config.seed``) and cuts the same global batch of :math:`n = W·B` positions; rank
r takes a contiguous part :math:`G_r` of it (sizes differ by at most one). So the
ranks' batches are disjoint, an epoch still visits every data point once, and
each :math:`G_r` is a uniform random subset of the data.

**Monte Carlo draws.** Rank r seeds the global torch RNG with
``config.seed + r`` (:func:`scg.distributed.rank_seed`), so the estimators' samples,
dynamic binarisation and validation draws are independent across ranks and
reproducible.

**Gradients.** Rank r back-propagates :math:`\frac{W n_r}{n} L_r` with
:math:`L_r` = ``model.loss(x[G_r])``; DDP averages the gradients:

.. math::
    g = \frac1W \sum_r ∇\Big(\frac{W n_r}{n} L_r\Big) = \sum_r \frac{n_r}{n}\, ∇L_r,
    \qquad E[g] = \sum_r \frac{n_r}{n}\, ∇L = ∇L,

because :math:`G_r` is a uniform random subset and the draws are independent of
it, so each :math:`∇L_r` is unbiased for the full-data gradient :math:`∇L` (for
batch-mean losses — VAE, IWAE, discrete VAE — and for losses already scaled to be
unbiased at any batch size, like :class:`~scg.models.BayesianLogisticRegression`).
For a batch-mean loss :math:`g` is exactly the gradient of the mean over the
global batch: W processes with batch B follow, in law, one process with batch W·B.

**Running state.** DDP does not broadcast buffers here; after every step
:func:`scg.distributed.sync_buffers` averages them over the ranks (moving-average
baselines, normalisers), so every rank subtracts the same baseline, built from
earlier draws of all ranks (unbiased). Learned baselines are parameters and are
kept equal by the gradient average.

**Checkpoints.** Rank 0 writes ``last.pt`` (the keys of :func:`scg.models.fit`
plus ``world_size`` and every rank's RNG state), ``best.pt`` and
``history.json`` atomically; on resume rank 0 reads them and broadcasts them, so
the other machines need no shared file system. Resume with the same number of
processes (an error says so otherwise); a killed run resumed with the same seed
ends with the same parameters as an uninterrupted one.

References:
    Li et al., "PyTorch Distributed: Experiences on Accelerating Data Parallel
    Training", VLDB 2020. https://arxiv.org/abs/2006.15704
    Titsias & Lázaro-Gredilla, "Doubly Stochastic Variational Bayes for
    non-Conjugate Inference", ICML 2014.
"""

from __future__ import annotations

import datetime
import inspect
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from scg.checks import check_positive
from scg.distributed import init_from_env, rank_and_world, rank_seed, sync_buffers, timeout_from_env
from scg.models.checkpoint import load_checkpoint
from scg.models.train import History, TrainConfig, _check_fit_args, _Steps, _train, resolve_device

__all__ = ["local_slice", "DataParallelStep", "fit_distributed", "DEFAULT_TIMEOUT"]

#: Default seconds a training collective waits for the slowest rank (torch's default for gloo).
DEFAULT_TIMEOUT = 1800.0

_DDP_ARGS = inspect.signature(DistributedDataParallel.__init__).parameters


def local_slice(n: int, rank: int, world: int) -> slice:
    """Rank ``rank``'s contiguous part of ``n`` items: the first ``n % world`` ranks get one more.

    Example:
        >>> [local_slice(5, r, 2) for r in range(2)]
        [slice(0, 3, None), slice(3, 5, None)]
    """
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"`rank` must be in [0, world) with world >= 1; got rank={rank}, world={world}.")
    if n < 0:
        raise ValueError(f"`n` must be >= 0; got {n}.")
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


class _Loss(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, step: int) -> Tensor:
        return self.model.loss(x, step=step)


class DataParallelStep:
    r"""One data-parallel backward pass: this rank's loss, weighted so the DDP average is unbiased.

    .. math:: \text{backward of } \frac{W n_r}{n} L_r \;\Rightarrow\; \text{grad} = \sum_r \frac{n_r}{n} ∇L_r

    Wraps ``model`` in ``DistributedDataParallel`` (buffers not broadcast in forward)
    when the world has more than one rank; with one rank it is a plain
    ``model.loss(x).backward()``.

    Args:
        model: module with ``loss(x, *, step) -> scalar``; parameters on the
            device of this rank.
        device_ids: DDP's ``device_ids`` (``[local GPU]`` or ``None`` on the CPU).
        find_unused_parameters: pass to DDP when some parameters get no gradient.
        group: process group (default group).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        device_ids: list[int] | None = None,
        find_unused_parameters: bool = False,
        group: dist.ProcessGroup | None = None,
    ) -> None:
        if not callable(getattr(model, "loss", None)):
            raise TypeError(f"`model` must have a loss(x, *, step) method; got {type(model).__name__}.")
        self.model, self.group = model, group
        self.rank, self.world = rank_and_world(group)
        self.ddp: DistributedDataParallel | None = None
        if self.world > 1:
            # Buffers are synced at construction (rank 0's) and then averaged by sync(), not broadcast each forward.
            no_broadcast = (
                {"forward_sync_buffers": False}
                if "forward_sync_buffers" in _DDP_ARGS
                else {"broadcast_buffers": False}
            )
            self.ddp = DistributedDataParallel(
                _Loss(model),
                device_ids=device_ids,
                process_group=group,
                find_unused_parameters=find_unused_parameters,
                **no_broadcast,
            )

    def backward(self, x: Tensor, *, total: int, step: int = 0) -> Tensor:
        """Back-propagate this rank's weighted loss; ``.grad`` then holds the rank-averaged gradient.

        Args:
            x: this rank's part of the global batch, ``[n_r, ...]`` (``n_r`` may be 0).
            total: n, the size of the global batch (the same on every rank).
            step: the optimiser step (for schedules such as KL warm-up).

        Returns:
            This rank's (unweighted, detached) loss :math:`L_r`; NaN when ``n_r = 0``.
        """
        if total < max(1, x.shape[0]):
            raise ValueError(f"`total` must be >= the local batch size {x.shape[0]} and >= 1; got {total}.")
        k = int(x.shape[0])
        weight = self.world * k / total
        empty = k == 0
        if empty:  # fewer points than ranks: take part in the all-reduce with a zero-weighted dummy
            x = x.new_zeros((1, *x.shape[1:]))
            self.model.eval()  # running state must not see the dummy
        try:
            loss = self.ddp(x, step) if self.ddp is not None else self.model.loss(x, step=step)
            (loss if weight == 1.0 else loss * weight).backward()
        finally:
            if empty:
                self.model.train()
        return torch.full_like(loss.detach(), math.nan) if empty else loss.detach()

    def sync(self) -> None:
        """Average the model's buffers over the ranks (:func:`scg.distributed.sync_buffers`)."""
        sync_buffers(self.model, group=self.group)


def _all_sum(value: float, dev: torch.device, world: int) -> float:
    if world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=dev)
    dist.all_reduce(t)
    return t.tolist()[0]


def _broadcast(obj: Any, world: int, dev: torch.device) -> Any:
    if world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=dev if dev.type == "cuda" else None)
    return box[0]


def _gather(obj: Any, world: int) -> list[Any]:
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


class _DataParallelSteps(_Steps):
    """Rank r's part in :func:`scg.models.fit`'s loop (see the module docstring for the why)."""

    def __init__(self, device: torch.device, rank: int, world: int, find_unused_parameters: bool) -> None:
        super().__init__(device)
        self.rank, self.world, self.find_unused = rank, world, find_unused_parameters
        self.stepper: DataParallelStep | None = None

    @property
    def desc(self) -> str:
        return f"train ({self.world} ranks)"

    def seed(self, seed: int) -> int:
        return rank_seed(seed, self.rank)

    def part(self, n: int) -> slice:
        return local_slice(n, self.rank, self.world)

    def load(self, path: Path) -> Any:
        """Rank 0 reads ``path`` (on the CPU) and broadcasts it: no shared file system needed."""
        obj = None
        if self.rank == 0 and path.exists():
            obj = load_checkpoint(path)
        return _broadcast(obj, self.world, self.device)

    def restore(self, ckpt: dict, out: Path) -> None:
        saved = int(ckpt.get("world_size", 1))
        if saved != self.world:
            raise ValueError(
                f"`out_dir` {out} holds a checkpoint of a {saved}-process run; resume it with "
                f"{saved} processes (torchrun --nproc_per_node ...); got {self.world}."
            )
        torch.set_rng_state(ckpt["rank_rng"][self.rank] if "rank_rng" in ckpt else ckpt["rng"])
        if self.device.type == "cuda" and ckpt.get("rank_cuda_rng") is not None:  # pragma: no cover
            torch.cuda.set_rng_state(ckpt["rank_cuda_rng"][self.rank], self.device)

    def state(self) -> dict[str, Any]:
        rngs = _gather(torch.get_rng_state(), self.world)
        cuda = (
            _gather(torch.cuda.get_rng_state(self.device), self.world) if self.device.type == "cuda" else None
        )
        return {
            "rng": rngs[0],
            "rank_rng": rngs,
            "cuda_rng": None,
            "rank_cuda_rng": cuda,
            "world_size": self.world,
        }

    def prepare(self, model: nn.Module) -> None:
        self.stepper = DataParallelStep(
            model,
            device_ids=[self.device.index] if self.device.type == "cuda" else None,
            find_unused_parameters=self.find_unused,
        )

    def backward(self, model: nn.Module, x: Tensor, *, total: int, step: int) -> Tensor:
        return self.stepper.backward(x, total=total, step=step)

    def after_step(self, model: nn.Module) -> None:
        self.stepper.sync()

    def all_sum(self, value: float) -> float:
        return _all_sum(value, self.device, self.world)


def _device(device: str | torch.device) -> torch.device:
    dev = resolve_device(device)
    local = os.environ.get("LOCAL_RANK", "")
    if dev.type == "cuda" and dev.index is None and local.isdigit():  # pragma: no cover - no GPU in CI
        dev = torch.device("cuda", int(local) % torch.cuda.device_count())
    if dev.type == "cuda":  # pragma: no cover
        torch.cuda.set_device(dev)
    return dev


def fit_distributed(
    model: nn.Module,
    train: Tensor,
    val: Tensor | None = None,
    *,
    config: TrainConfig = TrainConfig(),
    out_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    transform: Callable[[Tensor], Tensor] | None = None,
    stop_after: int | None = None,
    find_unused_parameters: bool = False,
    timeout: float | None = None,
) -> History:
    r""":func:`scg.models.fit` on W processes: each rank trains on its part of a global batch of W·B.

    Initialises the process group from ``torchrun``'s environment when needed
    (gloo on the CPU, NCCL on CUDA). With one process (no ``torchrun``) it is
    :func:`scg.models.fit` — same draws, same parameters. The epoch/batch loop,
    resume and early stopping are :func:`scg.models.fit`'s own.

    Args:
        model: module with ``loss(x, *, step)`` and ``bound(x, *, num_samples)``; built
            the same way on every rank (DDP copies rank 0's parameters and buffers).
        train: ``[N, D]`` training data, the same on every rank.
        val: ``[M, D]`` validation data or ``None``; each rank evaluates its part.
        config: :class:`~scg.models.TrainConfig`; ``batch_size`` is **per rank** (B),
            ``seed`` seeds the data order (all ranks) and rank r's draws (``seed + r``).
        out_dir: checkpoint folder (written by rank 0; read by rank 0 and broadcast).
        device: ``"auto" | "cpu" | "cuda"``; ``cuda`` means ``cuda:LOCAL_RANK``.
        transform: applied to each rank's batch (e.g. dynamic binarisation, from the rank's RNG).
        stop_after: end after this many epochs in total (simulates a killed run).
        find_unused_parameters: DDP option for models whose loss leaves some parameters unused.
        timeout: seconds a collective waits for the slowest rank before this rank fails
            (a rank that stops responding); default ``SCG_DIST_TIMEOUT`` if set, else
            :data:`DEFAULT_TIMEOUT` (30 minutes, torch's own default).

    Returns:
        :class:`~scg.models.History` (the same on every rank).
    """
    _check_fit_args(model, train, val, config, stop_after)
    dev = _device(device)
    if timeout is not None:
        check_positive("timeout", timeout)
    wait = timeout_from_env(DEFAULT_TIMEOUT) if timeout is None else datetime.timedelta(seconds=timeout)
    rank, world = init_from_env(backend="nccl" if dev.type == "cuda" else "gloo", timeout=wait)
    steps = _DataParallelSteps(dev, rank, world, find_unused_parameters)
    return _train(
        steps,
        model,
        train,
        val,
        config=config,
        out_dir=out_dir,
        transform=transform,
        stop_after=stop_after,
    )


def main(argv: list[str] | None = None) -> int:
    """``[torchrun --nproc_per_node=W] python -m scg.models.distributed``: the digits VAE, data-parallel.

    Trains a Gaussian-latent VAE (pathwise gradients, analytic KL) on the binarised
    8×8 digits with :func:`fit_distributed` and prints one JSON line (rank 0) with
    the final and best validation ELBO (per-epoch, ``--val-samples`` draws) and the final one with
    ``--eval-samples`` draws per point; ``--json FILE`` also appends it to FILE.
    """
    import argparse

    from scg.models import VAE, BernoulliDecoder, GaussianEncoder
    from scg.models.data import digits

    p = argparse.ArgumentParser(
        prog="python -m scg.models.distributed",
        description="Data-parallel training of the digits VAE (see docs/distributed.md).",
    )
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=50, help="per rank (global batch = ranks x this)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0, help="order seed; rank r draws with seed + r")
    p.add_argument(
        "--init-seed",
        type=int,
        default=None,
        help="seed of the initial parameters (default --seed)",
    )
    p.add_argument("--z-dim", type=int, default=8)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--val-samples", type=int, default=10)
    p.add_argument(
        "--eval-samples",
        type=int,
        default=1000,
        help="samples per point for the final validation ELBO",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="checkpoint folder (resumable)")
    p.add_argument("--json", default=None, help="append the result line to this file (rank 0)")
    p.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds a rank waits for the slowest one (default SCG_DIST_TIMEOUT, else 1800)",
    )
    args = p.parse_args(argv)
    torch.manual_seed(args.seed if args.init_seed is None else args.init_seed)  # the same init on every rank
    data = digits()
    model = VAE(
        GaussianEncoder(64, args.z_dim, (args.hidden,)),
        BernoulliDecoder(args.z_dim, 64, (args.hidden,)),
    )
    cfg = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        val_samples=args.val_samples,
        progress=False,
    )
    t0 = time.perf_counter()
    history = fit_distributed(
        model, data.train, data.val, config=cfg, out_dir=args.out, device=args.device, timeout=args.timeout
    )
    seconds = time.perf_counter() - t0
    rank, world = rank_and_world()
    result = {
        "world_size": world,
        "batch_per_rank": args.batch_size,
        "global_batch": world * args.batch_size,
        "seed": args.seed,
        "init_seed": args.init_seed,
        "epochs": args.epochs,
        "final_val_elbo": round(history.val_bound[-1], 4),
        "best_val_elbo": round(history.best_val, 4),
        "seconds": round(seconds, 1),
    }
    if rank == 0:
        torch.manual_seed(10_000)  # the same evaluation draws for every run (common random numbers)
        with torch.no_grad():
            model.eval()
            total = sum(
                float(model.bound(chunk, num_samples=args.eval_samples).sum())
                for chunk in data.val.to(next(model.parameters()).device).split(50)
            )
        result[f"val_elbo_{args.eval_samples}"] = round(total / data.val.shape[0], 4)
        line = json.dumps(result)
        print(line, flush=True)
        if args.json:
            with open(args.json, "a", encoding="utf-8") as fh:
                fh.write(line + "\n")
    return 0


if __name__ == "__main__":  # pragma: no cover - exercised through torchrun in tests/test_distributed.py
    import sys

    from torch.distributed.elastic.multiprocessing.errors import record

    sys.exit(record(main)())
