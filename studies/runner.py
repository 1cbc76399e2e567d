"""Run a study: resumable, atomic, seeded per cell, shardable across ranks.

Layout of an output folder::

    manifest.json   config, seed, size it started from (preset), versions, git revision,
                    device, command line
    cells/          one JSON file per finished cell (written atomically), named by the
                    hash of the run's config and seed and of the cell
    results.csv     all cells' rows in the study's cell order (written atomically)
    *.png           the study's figures

Resuming: running the same study with the same config and seed into the same
folder skips every cell whose file exists. A folder holding a different config or
seed is refused (choose another ``--out``) so results are never mixed: the manifest
is created atomically (two processes starting together into one fresh folder with
different configs: one of them is refused; with the same config they share the
work), and every cell file carries the config hash in its name and contents, so a
deleted manifest or a changed config never lets a cell of another run be read back.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from scg.studies import _io
from scg.studies.base import (
    PRESETS,
    CellContext,
    Study,
    cell_key,
    cell_seed,
    config_to_dict,
    resolve_device,
)

__all__ = ["run_study", "RunResult", "merge_cells", "cell_path"]


@dataclass
class RunResult:
    """What a run did: output folder, rows, figures, and which cells ran or were skipped."""

    out: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _config_hash(study: Study, cfg_dict: dict[str, Any], seed: int) -> str:
    text = json.dumps({"study": study.name, "config": cfg_dict, "seed": seed}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cell_path(out: Path, index: int, cell: dict[str, Any], config_hash: str) -> Path:
    """File of cell ``index`` of the run with ``config_hash``: ``cells/<config hash>-00012-<hash of key>.json``."""
    digest = hashlib.sha256(cell_key(cell).encode()).hexdigest()[:10]
    return out / "cells" / f"{config_hash}-{index:05d}-{digest}.json"


def _load_cell(path: Path, key: str, config_hash: str) -> list[dict[str, Any]] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if data.get("key") != key or data.get("config_hash") != config_hash:
        return None
    return list(data["rows"])


def _claim_manifest(path: Path, data: dict[str, Any]) -> dict[str, Any] | None:
    """Create ``path`` holding ``data`` unless it exists (atomic); return the existing manifest, or None."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.claim")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    try:
        os.link(tmp, path)  # fails if the manifest exists: only one process creates it
        return None
    except FileExistsError:
        return _read_manifest(path)
    finally:
        tmp.unlink(missing_ok=True)


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"`--out` holds {path}, which is not a readable manifest ({exc}); choose another "
            "--out, or delete the folder to start afresh."
        ) from None


def merge_cells(study: Study, cfg: Any, out: Path, config_hash: str) -> list[dict[str, Any]]:
    """Rows of all finished cells of the run with ``config_hash``, in the study's cell order.

    Raises:
        ValueError: some cells are missing.
    """
    rows: list[dict[str, Any]] = []
    missing = []
    for i, cell in enumerate(study.cells(cfg)):
        got = _load_cell(cell_path(out, i, cell, config_hash), cell_key(cell), config_hash)
        if got is None:
            missing.append(cell_key(cell))
        else:
            rows.extend(got)
    if missing:
        raise ValueError(
            f"{len(missing)} cell(s) of {study.name} are not finished in {out}: {missing[:3]}..."
        )
    return rows


def run_study(
    study: Study,
    cfg: Any,
    out: Path,
    *,
    seed: int = 0,
    device: str = "auto",
    argv: Sequence[str] | None = None,
    progress: bool = True,
    shard: tuple[int, int] = (0, 1),
    plot: bool = True,
    preset: str | None = None,
) -> RunResult:
    """Run the missing cells of ``study`` (those of this shard), then merge and plot.

    Args:
        shard: ``(rank, world_size)``: this process runs cells ``i`` with
            ``i % world_size == rank``. Merging and plotting happen when all cells
            are present (rank 0 in a distributed run, after a barrier).
        preset: the size ``cfg`` started from (``smoke``, ``default`` or ``full``; see
            :data:`scg.studies.base.PRESETS`), recorded in the manifest; ``None`` for a
            config built otherwise. Not part of the config hash: the config itself is.

    Raises:
        ValueError: unknown device or ``preset``, or ``out`` holds a run with another
            config or seed.
    """
    out = Path(out)
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"`preset` must be one of {', '.join(PRESETS)} or None; got {preset!r}.")
    dev = resolve_device(device)
    cfg_dict = config_to_dict(cfg)
    digest = _config_hash(study, cfg_dict, seed)
    rank, world = shard
    cells = study.cells(cfg)
    if not cells:
        raise ValueError(
            f"the config of {study.name} selects no cells (an empty list, e.g. `--set estimators=`); "
            "nothing would be computed."
        )
    man_path = out / "manifest.json"
    old = None
    if man_path.exists():
        old = _read_manifest(man_path)
    elif rank == 0:
        data = _io.manifest(
            {**cfg_dict, "seed": seed},
            device=str(dev),
            argv=argv,
            extra={
                "study": study.name,
                "preset": preset,
                "config_hash": digest,
                "world_size": world,
            },
        )
        old = _claim_manifest(man_path, data)
    if old is not None and old.get("config_hash") != digest:
        raise ValueError(
            f"`--out` {out} holds a run of {old.get('study')} with a different config or seed "
            f"(hash {old.get('config_hash')} != {digest}); choose another --out to keep both."
        )
    result = RunResult(out=out)
    mine = [(i, c) for i, c in enumerate(cells) if i % world == rank]
    bar = _progress(len(mine), f"{study.name}", progress and rank == 0)
    for i, cell in mine:
        key = cell_key(cell)
        path = cell_path(out, i, cell, digest)
        if _load_cell(path, key, digest) is not None:
            result.skipped.append(key)
            bar.update(1)
            continue
        s = cell_seed(seed, cell, study.name)
        torch.manual_seed(s)
        gen = torch.Generator(device=dev)
        gen.manual_seed(s)
        rows = study.run_cell(cfg, cell, CellContext(device=dev, seed=s, generator=gen))
        rows = [_jsonable(r) for r in rows]
        _io.write_json(path, {"key": key, "config_hash": digest, "rows": rows})
        result.ran.append(key)
        bar.update(1)
    bar.close()
    if world > 1:
        from scg.studies.distributed import barrier

        barrier()  # every rank has written its cells before rank 0 merges them
    if rank != 0:
        return result
    rows = merge_cells(study, cfg, out, digest)
    result.rows = rows
    _io.write_csv(out / "results.csv", rows, study.columns(rows))
    if plot:
        result.figures = list(study.plot(rows, cfg, out))
    return result


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in row.items():
        if isinstance(v, torch.Tensor):
            v = v.item() if v.numel() == 1 else v.tolist()
        out[str(k)] = v
    return out


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="cell", file=sys.stderr, leave=False)
