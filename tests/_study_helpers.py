"""Helpers shared by the ``tests/test_study_*.py`` modules (imported as ``_study_helpers``)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest

from scg.studies import cli


def num(row: dict, key: str) -> float:
    """A cell of a results row as a float; nan for a missing or empty cell."""
    value = row.get(key)
    return math.nan if value in (None, "") else float(value)


def run_smoke(study: str, out: Path, *args: str) -> list[dict]:
    """``scg-study run <study> --smoke --out <out> -q <args>``: asserts it exits 0; the rows of results.csv."""
    assert cli.main(["run", study, "--smoke", "--out", str(out), "-q", *args]) == 0
    with open(out / "results.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def manifest(out: Path) -> dict[str, Any]:
    """The run's manifest.json."""
    return json.loads((out / "manifest.json").read_text())


def run_rejected(study: str, out: Path, *settings: str) -> int:
    """The exit code of a smoke run of ``study`` with each of ``settings`` passed as ``--set``."""
    sets = [arg for s in settings for arg in ("--set", s)]
    return cli.main(["run", study, "--smoke", *sets, "--out", str(out), "-q"])


def assert_cuda_smoke_run(study: Any, out: Path) -> None:
    """The smoke size of ``study`` runs on the GPU: every row ok, the manifest names a CUDA device."""
    from scg.studies.runner import run_study

    res = run_study(study, study.smoke(), out, device="cuda", progress=False, plot=False, preset="smoke")
    assert res.rows and all(r["status"] == "ok" for r in res.rows)
    assert manifest(out)["device"].startswith("cuda")


def smoke_fixture(study: str) -> Any:
    """A module-scoped fixture: ``(out, rows)`` of one CPU smoke run of ``study`` into a fresh folder."""

    @pytest.fixture(scope="module")
    def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
        out = tmp_path_factory.mktemp(study) / "run"
        return out, run_smoke(study, out, "--device", "cpu")

    return smoke
