r"""Small helpers for running scg on ``torch.distributed`` (launched with ``torchrun``).

scg does not bring its own distributed engine: these helpers only read the
environment that ``torchrun`` sets, derive per-rank seeds, and keep the running
state of control variates (moving averages, normalisers) consistent across ranks.

* :func:`init_from_env` — initialise the default process group from ``RANK``,
  ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT`` (gloo on the CPU, NCCL on GPUs).
* :func:`rank_and_world` — ``(rank, world_size)``, ``(0, 1)`` without a process group.
* :func:`rank_seed` — the seed of a rank: ``seed + rank``.
* :func:`sync_buffers` — replace every buffer of a module by its mean over the
  ranks (exactly unchanged where the ranks agree).
* :func:`timeout_from_env` — the collective timeout from ``SCG_DIST_TIMEOUT``
  (seconds), used by :func:`scg.models.distributed.fit_distributed` and sharded studies.

Under ``torchrun`` a rank also exits when its launcher dies (:func:`init_from_env`
starts a watchdog), so a killed ``torchrun`` leaves no rank running on its own.

Why averaging buffers keeps the estimators unbiased: a running baseline used at
step t is built from the learning signals of steps < t (on every rank); those
draws are independent of the draws of step t, so subtracting it leaves the
expected gradient unchanged — the argument for one process carries over. For the
linear running averages (:class:`~scg.baselines.MovingAverage`, with or without
``optimal``, and :class:`~scg.baselines.Delta`'s moments) the mean over ranks of
the per-rank averages *is* the running average of the rank-averaged statistics,
i.e. of the global batch when ranks hold equal batches. For
:class:`~scg.baselines.Normalize` it is the mean of the per-rank variances (the
within-rank variance); it only rescales the step and is biased by design anyway.
Learned baselines (:class:`~scg.baselines.Learned`) are parameters: gradient
averaging (DDP) keeps them identical on every rank.

References:
    Li et al., "PyTorch Distributed: Experiences on Accelerating Data Parallel
    Training", VLDB 2020. https://arxiv.org/abs/2006.15704
"""

from __future__ import annotations

import datetime
import os
import sys
import threading
import time

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "init_from_env",
    "rank_and_world",
    "rank_seed",
    "sync_buffers",
    "env_world_size",
    "timeout_from_env",
    "exit_with_launcher",
]


def _env_int(name: str) -> int | None:
    text = os.environ.get(name)
    if text is None or text.strip() == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"environment variable `{name}` must be an integer; got {text!r}.") from None


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when unset); ``ValueError`` if it is not an int ≥ 1."""
    world = _env_int("WORLD_SIZE")
    if world is None:
        return 1
    if world < 1:
        raise ValueError(f"environment variable `WORLD_SIZE` must be >= 1; got {world}.")
    return world


def rank_and_world(group: dist.ProcessGroup | None = None) -> tuple[int, int]:
    """``(rank, world_size)`` of this process in ``group`` (default group); ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(group), dist.get_world_size(group)
    return 0, 1


def rank_seed(seed: int, rank: int | None = None) -> int:
    r"""The seed of one rank: :math:`\text{seed} + \text{rank}`.

    Every rank draws its own Monte Carlo samples from its own stream, and a run is
    reproducible given the base seed and the number of ranks. (Seeds of nearby
    runs overlap — rank 1 of seed 0 is rank 0 of seed 1 — so compare runs whose
    seeds differ by at least the world size.)

    Args:
        seed: the base seed (an int).
        rank: the rank; default this process's rank (0 without a process group).

    Returns:
        ``seed + rank``.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"`seed` must be an int; got {type(seed).__name__}.")
    if rank is None:
        rank = rank_and_world()[0]
    return seed + rank


def init_from_env(
    *, backend: str | None = None, timeout: datetime.timedelta | None = None
) -> tuple[int, int]:
    """Initialise the default process group from ``torchrun``'s environment; return ``(rank, world_size)``.

    Does nothing (and returns ``(0, 1)``) when ``WORLD_SIZE`` is unset or 1, and
    returns the existing group's rank and size when one is already initialised.

    Requires: ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` (set by
    ``torchrun``; by hand for other launchers).

    Args:
        backend: ``"gloo"`` (CPU), ``"nccl"`` (GPUs) or any torch backend string;
            default NCCL when CUDA is available, else gloo.
        timeout: how long a collective may wait for the slowest rank (torch's
            default when ``None``).

    Returns:
        ``(rank, world_size)``.
    """
    if dist.is_available() and dist.is_initialized():
        return rank_and_world()
    world = env_world_size()
    if world == 1:
        return 0, 1
    if not dist.is_available():  # pragma: no cover - every torch build we support has it
        raise RuntimeError("torch.distributed is not available in this torch build.")
    rank = _env_int("RANK")
    if rank is None:
        raise ValueError(
            f"environment variable `RANK` must be set when WORLD_SIZE={world}; launch with torchrun."
        )
    if not 0 <= rank < world:
        raise ValueError(f"environment variable `RANK` must be in [0, {world}); got {rank}.")
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
    if missing:
        raise ValueError(
            f"environment variables {', '.join(missing)} must be set for a {world}-process run; launch with torchrun."
        )
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    # timeout=None is the backend's default timeout
    dist.init_process_group(
        backend=backend, init_method="env://", rank=rank, world_size=world, timeout=timeout
    )
    if os.environ.get("TORCHELASTIC_RUN_ID"):  # launched by torchrun: do not outlive it
        exit_with_launcher()
    return rank, world


def timeout_from_env(default: float) -> datetime.timedelta:
    """The timeout of collectives: ``SCG_DIST_TIMEOUT`` seconds if set, else ``default`` seconds.

    Raises:
        ValueError: ``SCG_DIST_TIMEOUT`` is set but not a positive finite number.
    """
    text = os.environ.get("SCG_DIST_TIMEOUT", "").strip()
    if not text:
        return datetime.timedelta(seconds=default)
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise ValueError(
            f"environment variable `SCG_DIST_TIMEOUT` must be a positive number of seconds; got {text!r}."
        )
    return datetime.timedelta(seconds=value)


_WATCHING = False


def exit_with_launcher(interval: float = 0.5) -> None:
    """End this process soon after its parent (the launcher) dies; idempotent.

    A daemon thread compares ``os.getppid()`` with its value at the call every
    ``interval`` seconds; when the parent is gone (the process was re-parented),
    it prints one line and ends the process with exit code 1 (``os._exit``: no
    further writes). Atomic writes elsewhere leave no partial result behind.
    """
    global _WATCHING
    if _WATCHING:
        return
    _WATCHING = True
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(interval)
            if os.getppid() != parent:
                print(
                    f"scg: the launcher (pid {parent}) of this rank is gone; exiting.",
                    file=sys.stderr,
                    flush=True,
                )
                os._exit(1)

    threading.Thread(target=watch, name="scg-launcher-watchdog", daemon=True).start()


def _source(group: dist.ProcessGroup | None) -> int:
    return 0 if group is None else dist.get_global_rank(group, 0)


@torch.no_grad()
def sync_buffers(module: nn.Module, *, group: dist.ProcessGroup | None = None) -> None:
    r"""Replace every floating buffer of ``module`` by its mean over the ranks; copy the others from rank 0.

    .. math:: b \leftarrow b^{(0)} + \frac1W \sum_{r=0}^{W-1} \big(b^{(r)} − b^{(0)}\big)

    (the mean, written so that a buffer on which all ranks agree is left exactly
    unchanged). Integer and boolean buffers (step counters) are broadcast from
    rank 0. One broadcast and one all-reduce per buffer dtype.

    Call it after every optimiser step when ranks update running state on their
    own data (see the module docstring for why this keeps estimators unbiased).
    A no-op without a process group or with one rank.

    Args:
        module: any module; its buffers must live on a device the backend serves
            (CPU for gloo, CUDA for NCCL).
        group: process group (default: the default group).
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"`module` must be a torch.nn.Module; got {type(module).__name__}.")
    world = rank_and_world(group)[1]
    if world == 1:
        return
    src = _source(group)
    by_kind: dict[tuple[torch.dtype, torch.device], list[Tensor]] = {}
    for buf in module.buffers():
        if buf.numel():
            by_kind.setdefault((buf.dtype, buf.device), []).append(buf)
    for (dtype, _), bufs in by_kind.items():
        flat = torch.cat([b.reshape(-1) for b in bufs])
        ref = flat.clone()
        dist.broadcast(ref, src=src, group=group)
        if dtype.is_floating_point or dtype.is_complex:
            diff = flat - ref
            dist.all_reduce(diff, op=dist.ReduceOp.SUM, group=group)
            flat = ref + diff / world
        else:
            flat = ref
        offset = 0
        for b in bufs:
            b.copy_(flat[offset : offset + b.numel()].view_as(b))
            offset += b.numel()
