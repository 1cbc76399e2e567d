"""One command for a GPU machine: the CUDA tests, every study and the benchmarks, one report.

Usage::

    python benchmarks/gpu.py --out runs/gpu          # what `make gpu` runs
    python benchmarks/gpu.py --out runs/gpu --studies blr,gaussian --cases vae   # a subset

With CUDA (``torch.cuda.is_available()``):

1. the tests that need CUDA: ``pytest -m cuda`` (the tests marked ``cuda``; without a
   GPU they skip with "needs CUDA");
2. every study of ``scg-study list`` with ``scg-study run NAME --full --device cuda``,
   within a time budget (``--budget``, default 600 s for all studies together on one
   GPU): each study gets an equal share of what is left. A study still running at the
   end of its share is stopped; its finished cells stay in its folder (``scg-study``
   resumes them when the same command runs again) and the report says so. The sizes run
   are in the report: nothing here has been timed on a GPU yet (docs/gpu.md); a study
   whose full size does not fit runs at a smaller one with ``--size NAME=default``;
3. ``benchmarks/run.py --device cuda --clock wall`` (every case; ``--cases`` for a subset).

Without CUDA the same pipeline runs at smoke size on the CPU (studies ``--smoke
--device cpu``, benchmarks ``--quick``) and the report says so in its first lines: a
check that the pipeline works, not a measurement.

Everything goes into ``--out``: ``report.md`` (device, versions, per-study wall time,
the benchmark tables), ``tests.log``, ``benchmarks.log``, ``benchmarks.md`` and one
folder per study under ``studies/``.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
#: study size -> scg-study flag ("default" is the CPU-minutes size, no flag)
SIZES = {"full": ["--full"], "default": [], "smoke": ["--smoke"]}
BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Step:
    """One command of the pipeline and what came of it."""

    name: str
    command: list[str]
    seconds: float
    returncode: int | None  # None: stopped at its time limit
    tail: str

    @property
    def status(self) -> str:
        if self.returncode is None:
            return "stopped at its time limit"
        return "ok" if self.returncode == 0 else f"failed (exit {self.returncode})"


def run(name: str, command: list[str], log: Path, timeout: float | None) -> Step:
    """Run ``command`` from the repository root, its output to ``log``, stopped after ``timeout`` s."""
    start = time.perf_counter()
    with open(log, "w") as fh:
        fh.write("$ " + " ".join(command) + "\n")
        fh.flush()
        proc = subprocess.Popen(
            command, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            code: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 15)  # the study and the workers it started, nothing else
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
            code = None
    seconds = time.perf_counter() - start
    lines = log.read_text(errors="replace").strip().splitlines()
    return Step(name, command, seconds, code, "\n".join(lines[-3:]))


def study_names() -> list[str]:
    from scg.studies.registry import study_names as names

    return list(names())


def device_lines(cuda: bool) -> list[str]:
    if cuda:
        props = torch.cuda.get_device_properties(0)
        device = f"{torch.cuda.get_device_name(0)} ({props.total_memory / 2**30:.0f} GiB), {torch.cuda.device_count()} visible"
    else:
        device = (
            f"CPU only: {platform.processor() or platform.machine()}, {os.cpu_count()} cores (no CUDA device)"
        )
    return [
        f"- device: {device}",
        f"- torch {torch.__version__}; CUDA {torch.version.cuda or 'none'}; "
        f"cuDNN {torch.backends.cudnn.version() if cuda else 'n/a'}; Python {platform.python_version()}",
        f"- host: {platform.node()} ({platform.platform()})",
    ]


def cells(folder: Path) -> int:
    return len(list((folder / "cells").glob("*"))) if (folder / "cells").is_dir() else 0


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/gpu", help="output folder (default runs/gpu)")
    parser.add_argument(
        "--budget",
        type=float,
        default=600.0,
        help="seconds for all studies together (default 600); each gets an equal share of the rest",
    )
    parser.add_argument(
        "--bench-timeout",
        type=float,
        default=1200.0,
        help="seconds for the benchmarks (default 1200)",
    )
    parser.add_argument(
        "--studies", default=None, help="comma-separated subset of `scg-study list` (default all)"
    )
    parser.add_argument("--cases", default=None, help="comma-separated benchmark cases (default all)")
    parser.add_argument(
        "--tests", default="tests", help="where pytest looks for the CUDA tests (default tests)"
    )
    parser.add_argument(
        "--size",
        action="append",
        default=[],
        metavar="STUDY=SIZE",
        help="size of one study on the GPU: full (default), default or smoke (repeatable), e.g. "
        "once a report shows that a study's --full size does not fit the budget",
    )
    parser.add_argument(
        "--cpu", action="store_true", help="the CPU smoke pipeline even where CUDA is available"
    )
    args = parser.parse_args(argv)
    sizes = {}
    for item in args.size:
        study, _, size = item.partition("=")
        if size not in SIZES:
            parser.error(f"`--size` must be STUDY=SIZE with SIZE one of {list(SIZES)}; got {item!r}.")
        sizes[study] = size

    cuda = torch.cuda.is_available() and not args.cpu
    out = Path(args.out).resolve()
    (out / "studies").mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    py = sys.executable

    mode = (
        "GPU run: studies at --full size (within the budget), benchmarks on cuda with the wall clock"
        if cuda
        else "NO CUDA DEVICE: the pipeline ran at smoke size on the CPU (studies --smoke, benchmarks "
        "--quick) — a check that the command works, not a measurement"
    )
    print(mode, flush=True)

    tests = run(
        "CUDA tests",
        [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda", args.tests],
        out / "tests.log",
        timeout=None,
    )
    print(f"tests: {tests.status} in {tests.seconds:.0f} s", flush=True)

    names = args.studies.split(",") if args.studies else study_names()
    studies: list[tuple[str, str, Step, int]] = []
    deadline = time.perf_counter() + args.budget
    for i, name in enumerate(names):
        share = max(1.0, (deadline - time.perf_counter()) / (len(names) - i)) if cuda else None
        size = sizes.get(name, "full") if cuda else "smoke"
        folder = out / "studies" / name
        command = [
            str(BIN / "scg-study"),
            "run",
            name,
            *SIZES[size],
            "--device",
            "cuda" if cuda else "cpu",
            "--out",
            str(folder),
            "--quiet",
        ]
        step = run(f"study {name}", command, out / "studies" / f"{name}.log", timeout=share)
        studies.append((name, size, step, cells(folder)))
        print(f"study {name} ({size}): {step.status} in {step.seconds:.0f} s", flush=True)

    bench_cmd = [py, str(ROOT / "benchmarks" / "run.py"), "--markdown", str(out / "benchmarks.md")]
    bench_cmd += ["--device", "cuda", "--clock", "wall"] if cuda else ["--device", "cpu", "--quick"]
    for case in args.cases.split(",") if args.cases else []:
        bench_cmd += ["--case", case]
    bench = run("benchmarks", bench_cmd, out / "benchmarks.log", timeout=args.bench_timeout)
    print(f"benchmarks: {bench.status} in {bench.seconds:.0f} s", flush=True)

    lines = [
        "# GPU pipeline report",
        "",
        f"**{mode}.**",
        "",
        *device_lines(cuda),
        f"- started {started}; command: `python benchmarks/gpu.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
        "",
        "## CUDA tests",
        "",
        f"`{' '.join(tests.command[1:])}`: {tests.status}, {tests.seconds:.0f} s — `{tests.tail.splitlines()[-1] if tests.tail else ''}`"
        " (log: tests.log)",
        "",
        "## Studies",
        "",
        f"Budget {args.budget:.0f} s for all studies, an equal share of the rest each"
        if cuda
        else "Smoke size, no time limit",
        "",
        "| study | size | wall time (s) | status | cells written | output |",
        "|---|---|---|---|---|---|",
    ]
    for name, size, step, n in studies:
        note = step.status + (
            "; rerun the same command to resume the finished cells" if step.returncode is None else ""
        )
        lines.append(f"| {name} | {size} | {step.seconds:.0f} | {note} | {n} | studies/{name}/ |")
    lines += [
        "",
        "## Benchmarks",
        "",
        f"`{' '.join(bench.command[1:])}`: {bench.status}, {bench.seconds:.0f} s",
        "",
    ]
    md = out / "benchmarks.md"
    lines += [md.read_text() if md.exists() else f"(no tables; the log ends with)\n\n```\n{bench.tail}\n```"]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    print(f"report: {report}", flush=True)
    return report


if __name__ == "__main__":
    main()
