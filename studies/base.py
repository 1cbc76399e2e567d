"""The study contract: a frozen config in three sizes, independent cells, ``run_cell`` and ``plot``.

A study is split into **cells** — independent units of work (one estimator at one
setting, one seed, ...). The runner (:mod:`scg.studies.runner`) executes missing
cells only, writes each finished cell atomically to ``cells/``, merges them in the
study's cell order into ``results.csv``, and draws the figures. This gives
resumable runs (an interrupted run skips finished cells), identical
``results.csv`` for the same seed on the CPU (every cell is seeded from the run
seed and its key, never from execution order), and sharding across
``torch.distributed`` ranks (cells are dealt to ranks).

Sizes (:data:`PRESETS`; ``scg-study run NAME [--smoke | --full] [--set KEY=VALUE ...]``,
the ``--set`` overrides applied on top of the chosen size):

* ``smoke`` — :meth:`Study.smoke`: seconds; what the tests run;
* ``default`` — :meth:`Study.default` = ``Config()``, the dataclass defaults: the CPU
  size (minutes on 2 cores), the run behind ``docs/studies/NAME/``;
* ``full`` — :meth:`Study.full`: the size at which the paper's claims are tested,
  meant for a GPU (the base class returns ``Config()``, for studies whose default
  already is the full size).

The manifest of a run records the size it started from (``preset``) and the overrides.

Subclass contract::

    @dataclasses.dataclass(frozen=True)
    class GaussianConfig:          # defaults = the CPU default size
        rel_se: float = 0.02 / 3
        ...

    class Gaussian(Study):
        name = "gaussian"
        description = "Mohamed et al. 2020 §3: ..."
        reproduces = "Mohamed et al. 2020 §3, Figs. 3-4"
        time = {"smoke": "5 s", "default": "1 min (2 CPU cores)", "full": "GPU"}  # wall time per size
        Config = GaussianConfig
        def smoke(self) -> GaussianConfig: ...            # the tiny size
        def full(self) -> GaussianConfig: ...             # the GPU size
        def cells(self, cfg) -> list[dict]: ...           # JSON-able, hashable keys, stable order
        def run_cell(self, cfg, cell, ctx) -> list[dict]: # rows for results.csv
        def plot(self, rows, cfg, out_dir) -> list[Path]: # PNG figures (labelled axes)

``ctx`` (:class:`CellContext`) gives the device, a seeded ``torch.Generator`` on that
device and the cell's integer seed (``torch.manual_seed`` is already called with
it), and a progress callback. Nothing may assume the CPU: tensors and generators
live on ``ctx.device``; results move to the CPU only to be written.
"""

from __future__ import annotations

import dataclasses
import json
import typing
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from scg.models.train import resolve_device

__all__ = [
    "Study",
    "CellContext",
    "PRESETS",
    "cell_key",
    "cell_seed",
    "config_to_dict",
    "apply_overrides",
    "resolve_device",
]


def cell_key(cell: Mapping[str, Any]) -> str:
    """Canonical text of a cell (sorted JSON): its identity in ``cells/`` and for seeding."""
    return json.dumps(dict(cell), sort_keys=True, separators=(",", ":"), default=str)


def cell_seed(seed: int, cell: Mapping[str, Any], study: str) -> int:
    """A 31-bit seed derived from the run seed, the study name and the cell key."""
    return zlib.crc32(f"{seed}|{study}|{cell_key(cell)}".encode()) & 0x7FFFFFFF


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A frozen dataclass config as a JSON-able dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


#: The sizes of a study: ``--smoke``, the default (no flag) and ``--full`` of ``scg-study run``.
PRESETS: tuple[str, ...] = ("smoke", "default", "full")

_SCALARS: tuple[type, ...] = (bool, int, float, str)


def _field_types(cfg: Any) -> dict[str, Any]:
    """Resolved annotations of a dataclass config (``{}`` if they cannot be evaluated)."""
    try:
        return typing.get_type_hints(type(cfg))
    except (NameError, TypeError):  # pragma: no cover - an annotation naming an unavailable type
        return {}


def _scalar(text: str, kind: type, key: str, valid: Sequence[str]) -> Any:
    def fail(what: str) -> ValueError:
        return ValueError(f"--set {key}={text!r}: expected {what}; valid keys: {', '.join(valid)}.")

    if kind is bool:
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise fail("a boolean (true/false)")
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise fail("an integer") from None
    if kind is float:
        try:
            return float(text)
        except ValueError:
            raise fail("a number") from None
    return text


def _coerce(text: str, current: Any, hint: Any, key: str, valid: Sequence[str]) -> Any:
    """``text`` as a value of field ``key``: typed by its annotation ``hint``, else by its value ``current``.

    Tuples are comma-separated and ``""`` is the empty tuple; items take the
    annotation's item type (``tuple[int, ...]``), else the type of the current first item.
    """
    if hint is tuple or typing.get_origin(hint) is tuple or (hint is None and isinstance(current, tuple)):
        args = typing.get_args(hint)
        kind: type = str
        if args and args[0] in _SCALARS:
            kind = args[0]
        elif isinstance(current, tuple) and current and type(current[0]) in _SCALARS:
            kind = type(current[0])
        items = [t.strip() for t in text.split(",") if t.strip()]
        for item in items:
            try:
                _scalar(item, kind, key, valid)
            except ValueError:
                raise ValueError(
                    f"--set {key}={text!r}: expected comma-separated values of type {kind.__name__} "
                    f"({item!r} is not); valid keys: {', '.join(valid)}."
                ) from None
        return tuple(_scalar(item, kind, key, valid) for item in items)
    if hint in _SCALARS:
        return _scalar(text, hint, key, valid)
    if isinstance(current, _SCALARS):
        return _scalar(text, type(current), key, valid)
    if current is None:
        return text
    raise ValueError(
        f"--set {key}={text!r}: a value of type {type(current).__name__} cannot be set; "
        f"valid keys: {', '.join(valid)}."
    )


def apply_overrides(cfg: Any, overrides: Sequence[str]) -> Any:
    """Apply ``--set key=value`` strings to a frozen dataclass config (types from its annotations).

    ``key=`` with nothing after ``=`` makes a tuple field empty (``--set dims=``); a
    later item for the same key wins.

    Raises:
        ValueError: malformed item, unknown key (listing the valid keys) or a value
            of the wrong type (naming the expected type).
    """
    valid = [f.name for f in dataclasses.fields(cfg)]
    hints = _field_types(cfg)
    changes: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set expects key=value; got {item!r}. Valid keys: {', '.join(valid)}.")
        key, text = item.split("=", 1)
        key = key.strip()
        if key not in valid:
            raise ValueError(f"--set: unknown key {key!r}; valid keys: {', '.join(valid)}.")
        changes[key] = _coerce(text.strip(), getattr(cfg, key), hints.get(key), key, valid)
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
    #: wall time at each size of :data:`PRESETS` (shown by ``scg-study list``).
    time: ClassVar[dict[str, str]] = {"smoke": "?", "default": "?", "full": "?"}
    Config: ClassVar[type] = object

    def default(self) -> Any:
        """The default (CPU) size: ``Config()``."""
        return self.Config()

    def smoke(self) -> Any:  # pragma: no cover - every study overrides
        """The tiny size the tests run (seconds)."""
        raise NotImplementedError

    def full(self) -> Any:
        """The full (GPU) size; ``Config()`` unless the study overrides it."""
        return self.Config()

    def preset(self, name: str) -> Any:
        """The config of size ``name``, one of :data:`PRESETS`.

        Raises:
            ValueError: ``name`` is not in :data:`PRESETS`.
        """
        if name not in PRESETS:
            raise ValueError(f"`name` must be one of {', '.join(PRESETS)}; got {name!r}.")
        return getattr(self, name)()

    def cells(self, cfg: Any) -> list[dict[str, Any]]:  # pragma: no cover
        raise NotImplementedError

    def run_cell(
        self, cfg: Any, cell: Mapping[str, Any], ctx: CellContext
    ) -> list[dict[str, Any]]:  # pragma: no cover
        raise NotImplementedError

    def plot(
        self, rows: Sequence[Mapping[str, Any]], cfg: Any, out_dir: Path
    ) -> list[Path]:  # pragma: no cover
        raise NotImplementedError

    def columns(self, rows: Sequence[Mapping[str, Any]]) -> list[str]:
        """Column order of results.csv: first-seen order over the rows."""
        cols: list[str] = []
        for r in rows:
            for k in r:
                if k not in cols:
                    cols.append(k)
        return cols
