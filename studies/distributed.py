r"""Sharded studies on ``torch.distributed``: ``torchrun ... scg-study run NAME``.

Under ``torchrun`` every process runs ``scg-study run NAME`` with the same
arguments. :func:`current_shard` (called by the CLI) joins the process group from
``torchrun``'s environment and returns ``(rank, world_size)``; the runner
(:func:`scg.studies.runner.run_study`) then runs the cells ``i`` with
``i % world_size == rank``, writes each finished cell atomically to
``OUT/cells/``, waits at :func:`barrier` until every rank has written its cells,
and rank 0 merges them into ``results.csv`` and draws the figures. Cells are
seeded from the run seed and their key, never from the rank, so ``results.csv``
is the same file a one-process run writes (same seed, same device and torch
build).

Failures: a rank that raises prints ``scg-study: rank R of W failed ...``, writes
the traceback to ``torchrun``'s error file (so the launch summary shows it) and
exits non-zero; ``torchrun`` then stops the other ranks and the launch fails. A
rank killed by a signal is reported by ``torchrun`` itself (``exitcode: -9``).
Finished cells stay on disk: re-running the same command (with any number of
processes) redoes only the missing cells.

Process group: gloo, also on GPU machines — the group only carries one barrier;
the cells' tensors live on each rank's device (``cuda`` means ``cuda:LOCAL_RANK``).
Environment: ``SCG_DIST_BACKEND`` (default ``gloo``) and ``SCG_DIST_TIMEOUT``
(seconds a rank may wait at the final barrier for the slowest rank; default
86400 = one day — a dead rank is noticed at once, not after the timeout).
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import time
import traceback
from types import TracebackType

import torch
import torch.distributed as dist

from scg.distributed import env_world_size, init_from_env, rank_and_world, timeout_from_env

__all__ = ["current_shard", "barrier", "failure_message", "DEFAULT_TIMEOUT"]

#: Default seconds a rank waits at the end of a study for the slowest rank.
DEFAULT_TIMEOUT = 86400.0

_HOOKED = False


def current_shard() -> tuple[int, int]:
    """``(rank, world_size)`` of this process; joins the process group under ``torchrun``.

    Without ``torchrun`` (``WORLD_SIZE`` unset or 1) returns ``(0, 1)`` and starts
    nothing. Otherwise initialises the default process group (gloo unless
    ``SCG_DIST_BACKEND`` says otherwise), selects ``cuda:LOCAL_RANK`` when GPUs are
    present, and installs the failure hook (see the module docstring). Calling it
    again returns the same shard.

    Returns:
        ``(rank, world_size)``.
    """
    global _HOOKED
    if env_world_size() == 1 and not dist.is_initialized():
        return 0, 1
    backend = os.environ.get("SCG_DIST_BACKEND", "").strip() or "gloo"
    rank, world = init_from_env(backend=backend, timeout=timeout_from_env(DEFAULT_TIMEOUT))
    local = os.environ.get("LOCAL_RANK", "")
    if torch.cuda.is_available() and local.isdigit():  # pragma: no cover - no GPU in CI
        torch.cuda.set_device(int(local) % torch.cuda.device_count())
    if world > 1 and not _HOOKED:
        _HOOKED = True
        previous = sys.excepthook

        def hook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
            _record(exc)
            print(failure_message(exc, rank, world), file=sys.stderr, flush=True)
            previous(kind, exc, tb)

        sys.excepthook = hook
        atexit.register(_shutdown)
    return rank, world


def failure_message(exc: BaseException, rank: int, world: int) -> str:
    """The line a failing rank prints before its traceback."""
    text = f"{type(exc).__name__}: {exc}".strip()
    lost = isinstance(exc, getattr(dist, "DistBackendError", ())) or "closed by peer" in str(exc).lower()
    if lost:
        return (
            f"scg-study: rank {rank} of {world} lost contact with another rank (that rank failed; see its "
            f"message). The launch fails; re-run the same command to resume: finished cells are kept."
        )
    return (
        f"scg-study: rank {rank} of {world} failed: {text.splitlines()[0] if text else '?'}\n"
        f"scg-study: torchrun stops the other ranks and the launch fails; finished cells are kept in "
        f"OUT/cells, so re-running the same command redoes only the missing cells."
    )


def _record(exc: BaseException) -> None:
    """Write the traceback to torchrun's error file (its JSON format; shown in the launch's failure summary)."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    data = {
        "message": {
            "message": f"{type(exc).__name__}: {exc}",
            "extraInfo": {
                "py_callstack": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
                "timestamp": str(int(time.time())),
            },
        }
    }
    try:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(data, fh)
    except OSError:  # pragma: no cover - never let the hook hide the original error
        traceback.print_exc()


def barrier() -> None:
    """Wait until every rank reaches this point (a no-op without a process group or with one rank).

    The runner calls it after each rank has written its cells and before rank 0
    merges them. If another rank dies meanwhile, gloo raises at once and
    ``torchrun`` stops this rank; a rank that hangs is given up after
    ``SCG_DIST_TIMEOUT`` seconds.
    """
    if rank_and_world()[1] > 1:
        dist.barrier()


def _shutdown() -> None:
    if dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # pragma: no cover - best effort at exit
            pass
