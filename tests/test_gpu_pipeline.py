"""`make gpu`'s pipeline (benchmarks/gpu.py) on the CPU path: it runs end to end and its report
names the device it ran on. A small subset (one study at smoke size, one benchmark case, the CUDA
tests of one file) keeps it under a minute; ``--cpu`` takes the CPU path on a GPU machine too."""

from __future__ import annotations

import os
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, BENCH)

import gpu  # noqa: E402


@pytest.mark.slow
def test_cpu_pipeline_writes_one_report_naming_the_device(tmp_path, capsys):
    out = tmp_path / "gpu"
    report = gpu.main(
        [
            "--out",
            str(out),
            "--cpu",
            "--studies",
            "blr",
            "--cases",
            "vae",
            "--tests",
            "tests/studies/test_cli.py",
        ]
    )
    text = report.read_text()
    assert report == out / "report.md"
    assert "NO CUDA DEVICE: the pipeline ran at smoke size on the CPU" in text
    assert "- device: CPU only:" in text and "torch " in text and "CUDA " in text
    assert "| blr | smoke |" in text and "| ok |" in text  # per-study wall time and status
    assert (
        "1. Gaussian VAE, pathwise" in text and "| contender | median ms/step" in text
    )  # the benchmark tables
    assert (out / "studies" / "blr" / "results.csv").exists() and (out / "tests.log").exists()
    assert "-m cuda" in text
    assert "NO CUDA DEVICE" in capsys.readouterr().out


def test_device_lines_name_the_cpu_without_cuda():
    lines = gpu.device_lines(cuda=False)
    assert lines[0].startswith("- device: CPU only") and "no CUDA device" in lines[0]
    assert any(line.startswith("- torch ") for line in lines)


def test_unknown_study_size_is_refused_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit):
        gpu.main(["--out", str(tmp_path / "gpu"), "--size", "blr=huge"])
    assert "`--size` must be STUDY=SIZE with SIZE one of ['full', 'default', 'smoke']; got 'blr=huge'" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "gpu").exists()
