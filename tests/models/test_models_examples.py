"""Smoke runs of the models' example script and experiment CLI at toy sizes.

The other experiments take up to ~15 s each even with ``--smoke`` on two cores: they
are marked ``slow`` (still part of the default run; ``-m "not slow"`` skips them).
"""

import runpy
from pathlib import Path

import pytest
import torch

from scg.models.experiments import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_quickstart_example_runs_tiny(capsys):
    ns = runpy.run_path(str(ROOT / "examples" / "models_quickstart.py"), run_name="example")
    ns["main"](["--tiny", "--device", "cpu"])
    out = capsys.readouterr().out
    assert "VAE" in out and "SBN (DisARM)" in out and "BLR" in out


def test_linear_gaussian_experiment_smoke_and_cached_rerun(tmp_path, capsys):
    args = ["linear-gaussian", "--smoke", "--quiet", "--out", str(tmp_path), "--device", "cpu"]
    main(args)
    first = capsys.readouterr().out
    assert "IS estimate" in first and "mean-field gap closed" in first
    cells = sorted(p.name for p in (tmp_path / "linear-gaussian").iterdir())
    assert any(c.startswith("linear-vae-seed0-") for c in cells)
    assert all((tmp_path / "linear-gaussian" / c / "result.json").exists() for c in cells)
    main(args)  # every cell finished: read back, nothing retrained
    assert capsys.readouterr().out == first
    main(args + ["--lr", "0.005"])  # another configuration: its own cells, never the old results
    capsys.readouterr()
    again = sorted(p.name for p in (tmp_path / "linear-gaussian").iterdir())
    assert len(again) == 2 * len(cells) and set(cells) <= set(again)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["iwae", "flows", "discrete", "blr"])
def test_other_experiments_smoke(tmp_path, capsys, name):
    main([name, "--smoke", "--quiet", "--seeds", "1", "--grad-samples", "10", "--out", str(tmp_path)])
    assert "|" in capsys.readouterr().out
