r"""Checkpoints of :func:`scg.models.fit`: atomic writes, safe loading, integrity and the run's fingerprint.

Checkpoints hold only tensors, numbers, strings and containers of them and are read
with ``torch.load(..., weights_only=True)``, so loading one runs no code (a file that
needs more is refused). ``last.pt`` also records a hash of its own content (every
tensor bit for bit) and a fingerprint of the run — every training setting but
``epochs``, ``progress`` and ``restore_best``, the model's structure and its
estimators' settings (``repr(model)``), and hashes of the training and validation
data; resuming refuses, naming what differs, a corrupted checkpoint or one written
by a different run.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from scg.models._io import atomic_write, atomic_write_text

__all__ = ["load_checkpoint", "atomic_save", "atomic_save_json"]


#: Settings that may change between a run and its resumption: how long it runs and what it shows.
_RESUMABLE_CHANGES = frozenset({"epochs", "progress", "restore_best"})


def _digest(update: Callable[[hashlib._Hash], None]) -> str:
    h = hashlib.sha256()
    update(h)
    return h.hexdigest()[:16]


def _tensor_bytes(h: hashlib._Hash, obj: Any) -> None:
    """Feed every tensor and number inside ``obj`` (dicts in key order) to ``h``."""
    if isinstance(obj, Tensor):
        h.update(str((tuple(obj.shape), str(obj.dtype))).encode())
        h.update(
            obj.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
            if obj.numel()
            else b""
        )
    elif isinstance(obj, dict):
        for key in sorted(obj, key=str):
            h.update(str(key).encode())
            _tensor_bytes(h, obj[key])
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            _tensor_bytes(h, item)
    else:
        h.update(repr(obj).encode())


def _content_hash(content: dict) -> str:
    """Hash of a checkpoint's content (tensors bit for bit): its integrity check."""
    return _digest(lambda h: _tensor_bytes(h, content))


def _fingerprint(model: nn.Module, train: Tensor, val: Tensor | None, config: Any) -> dict:
    """What a resumed run must share with the run that wrote the checkpoint (``config``: a ``TrainConfig``)."""
    return {
        "config": {k: v for k, v in asdict(config).items() if k not in _RESUMABLE_CHANGES},
        "model": _digest(lambda h: h.update(repr(model).encode())),  # structure and estimator settings
        "train": _digest(lambda h: _tensor_bytes(h, train)),
        "val": None if val is None else _digest(lambda h: _tensor_bytes(h, val)),
    }


def _check_resumable(ckpt: dict, fingerprint: dict, path: Path) -> None:
    """Raise ``ValueError`` if ``ckpt`` is corrupted or was written by a different run."""
    content = {k: v for k, v in ckpt.items() if k not in ("fingerprint", "content_hash")}
    if "content_hash" not in ckpt or ckpt["content_hash"] != _content_hash(content):
        raise ValueError(
            f"`out_dir` holds {path}, whose content does not match its hash (corrupted or not "
            "written by scg.models.fit); delete it to start afresh, or use another out_dir."
        )
    saved = ckpt.get("fingerprint", {})
    for key, value in fingerprint["config"].items():
        if saved.get("config", {}).get(key) != value:
            raise ValueError(
                f"`config.{key}` must match the checkpoint in {path} to resume "
                f"({saved.get('config', {}).get(key)!r}); got {value!r}. Use another `out_dir` "
                "to start afresh."
            )
    what = {
        "model": "`model` (its structure or its estimators' settings)",
        "train": "`train` (the data)",
        "val": "`val` (the validation data)",
    }
    for key, name in what.items():
        if saved.get(key) != fingerprint[key]:
            raise ValueError(
                f"{name} must be the same as when the checkpoint {path} was written, to resume; "
                "it differs. Use another `out_dir` to start afresh."
            )


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> Any:
    """Read a checkpoint written by :func:`fit` with ``torch.load(..., weights_only=True)``.

    Checkpoints hold only tensors, numbers, strings and containers of them; nothing in
    them is executed. A file that is not such a checkpoint (a pickled object, a truncated
    or foreign file) is refused with a ``ValueError`` naming it.
    """
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # UnpicklingError, EOFError, RuntimeError (zip), OSError ...
        raise ValueError(
            f"`out_dir` holds {path}, which is not a checkpoint of scg.models.fit that loads with "
            f"weights_only=True ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
            "it was not run. Delete it to start afresh, or use another out_dir."
        ) from None


def atomic_save(obj: object, path: str | os.PathLike) -> None:
    """``torch.save`` atomically (never a half-written file; :mod:`scg.models._io`)."""
    atomic_write(path, lambda fh: torch.save(obj, fh))


def atomic_save_json(obj: object, path: str | os.PathLike) -> None:
    """JSON (indent 1), written atomically."""
    atomic_write_text(path, json.dumps(obj, indent=1))
