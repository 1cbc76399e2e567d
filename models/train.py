r"""One small trainer: Adam, atomic checkpoints, exact resume, progress bar, early stopping.

A model is anything with ``loss(x, *, step) -> scalar`` (minimised) and
``bound(x) -> [B]`` (a per-data-point lower bound, maximised on validation data);
every model in :mod:`scg.models` qualifies. Estimators are submodules of the
models, so their running baselines and learned control variates are trained by
the same optimiser and saved in the same checkpoint.

Resume: after every epoch the trainer writes ``last.pt`` (model, optimiser,
epoch, step, history, early-stopping state, the global torch RNG state and the
data-order generator's state) atomically (write to a temporary file, then
``os.replace``). :func:`fit` with the same arguments and ``out_dir`` continues
after the last finished epoch, so a killed run restarted with the same seed ends
with the same parameters as an uninterrupted one (on the same device and torch
build), without redoing finished epochs.

Trust and integrity (:mod:`scg.models.checkpoint`): checkpoints are read with
``torch.load(..., weights_only=True)`` and checked against their content hash and the
run's fingerprint before resuming.

The loop is shared with :func:`scg.models.distributed.fit_distributed`: what differs
per process (which part of a batch it takes, how its gradient is weighted and
averaged, buffer syncing, RNG state, who writes checkpoints) is a small strategy
object (``_Steps``; the data-parallel one lives in :mod:`scg.models.distributed`).
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from scg.checks import check_positive, check_positive_int
from scg.models.checkpoint import (
    _check_resumable,
    _content_hash,
    _fingerprint,
    atomic_save,
    atomic_save_json,
    load_checkpoint,
)

__all__ = [
    "resolve_device",
    "TrainConfig",
    "History",
    "fit",
    "atomic_save",
    "atomic_save_json",
    "load_checkpoint",
]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The device for ``--device``/``device=``: ``"auto"`` → CUDA when available, else CPU.

    ``"cpu"``, ``"cuda"`` and ``"cuda:N"`` are taken as given; CUDA must then be available.
    The one device rule of scg.models and scg.studies.

    Raises:
        ValueError: any other string, or CUDA requested where it is not available.
    """
    if isinstance(device, torch.device):
        return device
    text = str(device)
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not (text in ("cpu", "cuda") or re.fullmatch(r"cuda:\d+", text)):
        raise ValueError(f'`device` must be "auto", "cpu", "cuda" or "cuda:N"; got {device!r}.')
    if text.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f'`device` {text!r} was requested but CUDA is not available; use "auto" or "cpu".')
    return torch.device(text)


@dataclass(frozen=True)
class TrainConfig:
    """Training settings.

    Attributes:
        epochs: maximum number of passes over the training data.
        batch_size: data points per step.
        lr: Adam learning rate.
        seed: seeds the global torch RNG (estimators' draws) and the data order.
        patience: stop when the validation bound has not improved for this many
            epochs (``None``: never stop early).
        val_samples: samples per data point for the validation bound.
        restore_best: load the best validation parameters at the end.
        progress: show a tqdm progress bar.
    """

    epochs: int = 10
    batch_size: int = 100
    lr: float = 1e-3
    seed: int = 0
    patience: int | None = None
    val_samples: int = 1
    restore_best: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise TypeError(f"`seed` must be an int; got {type(self.seed).__name__} ({self.seed!r}).")
        check_positive_int("epochs", self.epochs)
        check_positive_int("batch_size", self.batch_size)
        check_positive("lr", self.lr)
        check_positive_int("val_samples", self.val_samples)
        if self.patience is not None:
            check_positive_int("patience", self.patience)


@dataclass
class History:
    """Per-epoch records (``train_loss``, ``val_bound``, ``seconds``, ``step``) and the early-stopping state."""

    epochs: list[dict] = field(default_factory=list)
    best_val: float = -math.inf
    best_epoch: int = -1
    stopped_early: bool = False

    @property
    def train_loss(self) -> list[float]:
        return [e["train_loss"] for e in self.epochs]

    @property
    def val_bound(self) -> list[float]:
        return [e["val_bound"] for e in self.epochs]


class _Steps:
    """This process's part in the training loop of :func:`fit`: one process, the whole batch.

    The loop (epochs, batches, validation, early stopping, checkpoints, resume) is
    :func:`_train`; :func:`scg.models.distributed.fit_distributed` supplies a subclass
    that slices every global batch per rank, weights and averages the gradients, syncs
    buffers after the optimiser step, sums statistics over the ranks and lets rank 0
    alone write checkpoints. Every method is called on every rank (some are collective).
    """

    rank, world = 0, 1

    def __init__(self, device: torch.device) -> None:
        self.device = device

    @property
    def desc(self) -> str:
        """Label of the progress bar."""
        return "train"

    def seed(self, seed: int) -> int:
        """The seed of this process's global torch RNG (its Monte Carlo draws)."""
        return seed

    def part(self, n: int) -> slice:
        """This process's positions in a global batch of ``n``."""
        return slice(0, n)

    def load(self, path: Path) -> Any:
        """``torch.load(path, weights_only=True)`` (``None`` if it does not exist), on this process's device."""
        return load_checkpoint(path, self.device) if path.exists() else None

    def restore(self, ckpt: dict, out: Path) -> None:
        """Check that ``ckpt`` can be resumed here and restore this process's RNG state."""
        torch.set_rng_state(ckpt["rng"])
        if self.device.type == "cuda" and ckpt.get("cuda_rng") is not None:
            torch.cuda.set_rng_state_all(ckpt["cuda_rng"])

    def state(self) -> dict[str, Any]:
        """Checkpoint entries of this process (RNG states)."""
        return {
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,
        }

    def prepare(self, model: nn.Module) -> None:
        """Called once the model is on its device and resumed, before the first step."""

    def backward(self, model: nn.Module, x: Tensor, *, total: int, step: int) -> Tensor:
        """Back-propagate the loss of this process's part ``x`` of a global batch of ``total``; the loss."""
        loss = model.loss(x, step=step)
        loss.backward()
        return loss.detach()

    def after_step(self, model: nn.Module) -> None:
        """Called after every optimiser step."""

    def all_sum(self, value: float) -> float:
        """The sum of ``value`` over the processes."""
        return value


@torch.no_grad()
def _validate(model: nn.Module, x: Tensor, chunk: int, num_samples: int, steps: _Steps) -> float:
    """Mean bound over ``x``; every process evaluates its part."""
    part = x[steps.part(x.shape[0])]
    model.eval()
    try:
        total = 0.0
        for start in range(0, part.shape[0], chunk):
            total += float(model.bound(part[start : start + chunk], num_samples=num_samples).sum())
    finally:
        model.train()
    return steps.all_sum(total) / x.shape[0]


def fit(
    model: nn.Module,
    train: Tensor,
    val: Tensor | None = None,
    *,
    config: TrainConfig = TrainConfig(),
    out_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    transform: Callable[[Tensor], Tensor] | None = None,
    stop_after: int | None = None,
) -> History:
    r"""Train ``model`` with Adam on minibatches of ``train``; validate, checkpoint and resume.

    Args:
        model: module with ``loss(x, *, step)`` and ``bound(x, *, num_samples)``.
        train: ``[N, D]`` training data (inputs; for supervised models, what ``loss`` expects).
        val: ``[M, D]`` validation data or ``None`` (no validation, no early stopping).
        config: :class:`TrainConfig`.
        out_dir: folder for ``last.pt``, ``best.pt`` and ``history.json``; an existing
            ``last.pt`` there is resumed. ``None``: no checkpoints.
        device: ``"auto" | "cpu" | "cuda"``.
        transform: applied to each training batch (e.g. ``scg.models.data.binarize``
            for dynamic binarisation); it draws from the global RNG, which is checkpointed.
        stop_after: end this call after this many epochs *in total* (simulates a killed
            run; the checkpoint is left for resuming).

    Returns:
        :class:`History` of all epochs (including resumed ones).
    """
    _check_fit_args(model, train, val, config, stop_after)
    return _train(
        _Steps(resolve_device(device)),
        model,
        train,
        val,
        config=config,
        out_dir=out_dir,
        transform=transform,
        stop_after=stop_after,
    )


def _check_fit_args(model: object, train: object, val: object, config: object, stop_after: object) -> None:
    """The argument checks of :func:`fit` and ``fit_distributed``: ``TypeError``/``ValueError`` naming the argument."""
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"`model` must be a torch.nn.Module with loss() and bound(); got {type(model).__name__}."
        )
    for name, data in (("train", train), ("val", val)):
        if data is None and name == "val":
            continue
        if not isinstance(data, Tensor):
            raise TypeError(f"`{name}` must be a tensor [N, ...] of data points; got {type(data).__name__}.")
        if data.dim() < 2 or data.shape[0] < 1:
            raise ValueError(
                f"`{name}` must have shape [N, ...] with N >= 1 data points on dim 0 and at least one "
                f"feature dim; got shape {list(data.shape)}."
            )
    if not isinstance(config, TrainConfig):
        raise TypeError(f"`config` must be a TrainConfig; got {type(config).__name__}.")
    if stop_after is not None:
        check_positive_int("stop_after", stop_after)


def _train(
    steps: _Steps,
    model: nn.Module,
    train: Tensor,
    val: Tensor | None,
    *,
    config: TrainConfig,
    out_dir: str | os.PathLike | None,
    transform: Callable[[Tensor], Tensor] | None,
    stop_after: int | None,
) -> History:
    """The loop of :func:`fit` and :func:`scg.models.distributed.fit_distributed` (``steps``: the process's part)."""
    dev = steps.device
    model.to(dev)
    model.train()
    train = train.to(dev)
    val = None if val is None else val.to(dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    torch.manual_seed(steps.seed(config.seed))
    order_gen = torch.Generator().manual_seed(config.seed)
    history, step, start_epoch = History(), 0, 0
    out = None if out_dir is None else Path(out_dir)
    if out is not None and steps.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    ckpt = None if out is None else steps.load(out / "last.pt")
    fingerprint = _fingerprint(model, train, val, config)
    if ckpt is not None:
        _check_resumable(ckpt, fingerprint, out / "last.pt")  # type: ignore[operator]
        steps.restore(ckpt, out)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        order_gen.set_state(ckpt["order_rng"])
        history = History(**ckpt["history"])
        step, start_epoch = ckpt["step"], ckpt["epoch"]
    steps.prepare(model)
    n, per_step = train.shape[0], config.batch_size * steps.world
    batches = math.ceil(n / per_step)
    end_epoch = config.epochs if stop_after is None else min(config.epochs, stop_after)
    bar, best_state = None, None
    if config.progress and steps.rank == 0 and start_epoch < end_epoch and not history.stopped_early:
        from tqdm.auto import tqdm

        bar = tqdm(total=(end_epoch - start_epoch) * batches, desc=steps.desc, leave=False)
    try:
        for epoch in range(start_epoch, end_epoch):
            if history.stopped_early:
                break
            t0 = time.perf_counter()
            perm = torch.randperm(n, generator=order_gen).to(dev)
            total = 0.0
            for b in range(batches):
                idx = perm[b * per_step : (b + 1) * per_step]
                xb = train[idx[steps.part(idx.shape[0])]]
                if transform is not None and xb.shape[0]:
                    xb = transform(xb)
                optimizer.zero_grad(set_to_none=True)
                loss = steps.backward(model, xb, total=idx.shape[0], step=step)
                optimizer.step()
                steps.after_step(model)
                step += 1
                if xb.shape[0]:
                    total += float(loss) * xb.shape[0]
                if bar is not None:
                    bar.update(1)
            record = {
                "epoch": epoch + 1,
                "step": step,
                "train_loss": steps.all_sum(total) / n,
                "val_bound": math.nan,
                "seconds": time.perf_counter() - t0,
            }
            if val is not None:
                record["val_bound"] = _validate(
                    model, val, max(config.batch_size, 500), config.val_samples, steps
                )
                if record["val_bound"] > history.best_val:
                    history.best_val, history.best_epoch = record["val_bound"], epoch + 1
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                    if out is not None and steps.rank == 0:
                        atomic_save(best_state, out / "best.pt")
                elif config.patience is not None and epoch + 1 - history.best_epoch >= config.patience:
                    history.stopped_early = True
            history.epochs.append(record)
            if bar is not None:
                bar.set_postfix(loss=f"{record['train_loss']:.3f}", val=f"{record['val_bound']:.3f}")
            if out is not None:
                state = steps.state()  # collective: every rank
                if steps.rank == 0:
                    content = {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "epoch": epoch + 1,
                        "step": step,
                        "history": asdict(history),
                        "order_rng": order_gen.get_state(),
                        "config": asdict(config),
                        **state,
                    }
                    atomic_save(
                        {
                            **content,
                            "fingerprint": fingerprint,
                            "content_hash": _content_hash(content),
                        },
                        out / "last.pt",
                    )
                    atomic_save_json(asdict(history), out / "history.json")
    finally:
        if bar is not None:
            bar.close()
    done = history.stopped_early or len(history.epochs) >= config.epochs
    if done and config.restore_best:
        if best_state is None and out is not None:
            best_state = steps.load(out / "best.pt")
        if best_state is not None:
            model.load_state_dict(best_state)
    return history
