"""The study contract: a frozen config, independent cells, ``run_cell`` and ``plot``.

A study is split into **cells** — independent units of work (one estimator at one
setting, one seed, ...). The runner (:mod:`scg.studies.runner`) executes missing
cells only, writes each finished cell atomically to ``cells/``, merges them in the
study's cell order into ``results.csv``, and draws the figures. This gives
resumable runs (an interrupted run skips finished cells), identical
``results.csv`` for the same seed on the CPU (every cell is seeded from the run
seed and its key, never from execution order), and sharding across
``torch.distributed`` ranks (cells are dealt to ranks).

Subclass contract::

    @dataclasses.dataclass(frozen=True)
    class GaussianConfig:          # defaults = full size; smoke() returns the tiny size
        num_estimates: int = 100_000
        ...

    class Gaussian(Study):
        name = "gaussian"
        description = "Mohamed et al. 2020 §3: ..."
        time = {"smoke": "2 s", "full": "3 min (2 CPU cores)"}
        Config = GaussianConfig
        def smoke(self) -> GaussianConfig: ...
        def cells(self, cfg) -> list[dict]: ...           # JSON-able, hashable keys, stable order
        def run_cell(self, cfg, cell, ctx) -> list[dict]: # rows for results.csv
        def plot(self, rows, cfg, out_dir) -> list[Path]: # PNG figures (labelled axes)

``ctx`` (:class:`CellContext`) gives the device, a seeded ``torch.Generator`` and
the cell's integer seed (``torch.manual_seed`` is already called with it), and a
progress callback.
"""

from __future__ import annotations

import dataclasses
import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Optional, Sequence

import torch

__all__ = ["Study", "CellContext", "cell_key", "cell_seed", "config_to_dict", "apply_overrides", "resolve_device"]


def resolve_device(device: str) -> torch.device:
    """``auto`` → cuda when available, else cpu; ``cuda`` without a GPU → ``ValueError``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"`device` {device!r} requested but CUDA is not available; use --device cpu or auto.")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"`device` must be auto, cpu or cuda[:N]; got {device!r}.")
    return torch.device(device)


def cell_key(cell: Mapping[str, Any]) -> str:
    """Canonical text of a cell (sorted JSON): its identity in ``cells/`` and for seeding."""
    return json.dumps(dict(cell), sort_keys=True, separators=(",", ":"), default=str)


def cell_seed(seed: int, cell: Mapping[str, Any], study: str) -> int:
    """A 31-bit seed derived from the run seed, the study name and the cell key."""
    return zlib.crc32(f"{seed}|{study}|{cell_key(cell)}".encode()) & 0x7FFFFFFF


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A frozen dataclass config as a JSON-able dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def _coerce(text: str, current: Any, key: str, valid: Sequence[str]) -> Any:
    def fail(kind: str) -> ValueError:
        return ValueError(f"--set {key}={text!r}: expected {kind}; valid keys: {', '.join(valid)}.")

    if isinstance(current, bool):
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise fail("a boolean (true/false)")
    if isinstance(current, int):
        try:
            return int(text)
        except ValueError:
            raise fail("an integer") from None
    if isinstance(current, float):
        try:
            return float(text)
        except ValueError:
            raise fail("a number") from None
    if isinstance(current, tuple):
        items = [t.strip() for t in text.split(",") if t.strip()]
        if current:
            return tuple(_coerce(t, current[0], key, valid) for t in items)
        return tuple(items)
    if current is None or isinstance(current, str):
        return text
    raise fail(f"a value of type {type(current).__name__}")


def apply_overrides(cfg: Any, overrides: Sequence[str]) -> Any:
    """Apply ``--set key=value`` strings to a frozen dataclass config (types from the defaults).

    Raises:
        ValueError: malformed item, unknown key (listing the valid keys) or a value
            of the wrong type (naming the expected type).
    """
    valid = [f.name for f in dataclasses.fields(cfg)]
    changes: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set expects key=value; got {item!r}. Valid keys: {', '.join(valid)}.")
        key, text = item.split("=", 1)
        key = key.strip()
        if key not in valid:
            raise ValueError(f"--set: unknown key {key!r}; valid keys: {', '.join(valid)}.")
        changes[key] = _coerce(text.strip(), getattr(cfg, key), key, valid)
    return dataclasses.replace(cfg, **changes)


@dataclass
class CellContext:
    """What a cell may use: device, its seed and generator, and a progress callback."""

    device: torch.device
    seed: int
    generator: torch.Generator
    progress: Callable[[int], None] = lambda n: None


class Study:
    """Base class of studies (contract in the module docstring)."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    reproduces: ClassVar[str] = ""
    time: ClassVar[dict[str, str]] = {"smoke": "?", "full": "?"}
    Config: ClassVar[type] = object

    def default(self) -> Any:
        """The full-size configuration."""
        return self.Config()

    def smoke(self) -> Any:  # pragma: no cover - every study overrides
        raise NotImplementedError

    def cells(self, cfg: Any) -> list[dict[str, Any]]:  # pragma: no cover
        raise NotImplementedError

    def run_cell(self, cfg: Any, cell: Mapping[str, Any], ctx: CellContext) -> list[dict[str, Any]]:  # pragma: no cover
        raise NotImplementedError

    def plot(self, rows: Sequence[Mapping[str, Any]], cfg: Any, out_dir: Path) -> list[Path]:  # pragma: no cover
        raise NotImplementedError

    def columns(self, rows: Sequence[Mapping[str, Any]]) -> list[str]:
        """Column order of results.csv: first-seen order over the rows."""
        cols: list[str] = []
        for r in rows:
            for k in r:
                if k not in cols:
                    cols.append(k)
        return cols
