"""Run the benchmark cases side by side and print medians, ratios and targets.

Usage::

    python benchmarks/run.py                      # every case, full sizes
    python benchmarks/run.py --case vae --quick   # one case, tiny sizes, 3 rounds
    python benchmarks/run.py --markdown out.md    # also write the tables as markdown

Every case runs its contenders in one process, interleaved (the order rotates each
round), after a warm-up block, and reports the median time per step, the
interquartile range and the ratio of medians to the case's baseline. Before timing,
each case checks that its contenders compute the same objective value (same
parameters, same seed). A peer library that is not installed (Pyro: ``pip install
-c constraints.txt -e '.[bench]'``) is skipped, and the output says so.

Clock: by default this process's CPU time (``--clock cpu``) with one torch thread
(``--threads 1``): on a shared machine, wall time also counts the time other
processes hold the cores. ``--clock wall`` measures elapsed time (required on a GPU,
``--device cuda``, where blocks are synchronised).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _case import Options, Result  # noqa: E402
from _timing import CLOCKS, load, machine  # noqa: E402

#: Case name -> module (each has NAME, TITLE and run(Options) -> Result).
CASES = {
    "vae": "case_vae",
    "discrete": "case_discrete",
    "iwae": "case_iwae",
    "gradient_samples": "case_gradient_samples",
    "graph": "case_graph",
    "compiled": "case_compiled",
}


def revision() -> str:
    """The git revision of the working tree, with the files that differ from it (they were measured too)."""
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "scg", "models"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    changed = [line[3:] for line in dirty if line.strip()]
    return rev + (f" + uncommitted changes in {', '.join(changed)}" if changed else "")


def configure(opts: Options, *, validate: bool = False) -> None:
    """Process-wide settings every contender shares: threads, argument validation."""
    torch.set_num_threads(opts.threads)
    torch.distributions.Distribution.set_default_validate_args(validate)
    try:
        import pyro

        pyro.enable_validation(validate)
    except ImportError:
        pass


def run_case(name: str, opts: Options) -> list[Result]:
    """Run one case (a module's ``run`` returns one result or a list of variants)."""
    if name not in CASES:
        raise ValueError(f"`case` must be one of {list(CASES)}; got {name!r}.")
    module = importlib.import_module(CASES[name])
    if torch.device(opts.device).type == "cpu":
        out = module.run(opts)
    else:  # factory calls without a device (e.g. in the reused scripts) follow --device; not on CPU, where
        with torch.device(opts.device):  # the mode would add a Python call to every torch function
            out = module.run(opts)
    return out if isinstance(out, list) else [out]


def render(result: Result) -> str:
    out = [f"### {result.title}", "", f"Setup: {result.setup}.", ""]
    for table in result.tables:
        out += [table, ""]
    for note in result.notes:
        out.append(f"- {note}")
    for skip in result.skipped:
        out.append(f"- SKIPPED {skip}")
    for target in result.targets:
        out.append(f"- target: {target}")
    return "\n".join(out) + "\n"


def summary(results: list[Result]) -> str:
    lines = ["| case | target | measured | met |", "|---|---|---|---|"]
    for r in results:
        for t in r.targets:
            lines.append(
                f"| {r.title} | {t.what} {t.op} {t.bound:g} | {t.measured:.3f} | {'yes' if t.met else 'NO'} |"
            )
        for s in r.skipped:
            lines.append(f"| {r.title} | {s.split(':')[0]} | skipped | – |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--case", action="append", choices=list(CASES), help="case to run (repeatable; default all)"
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes and 3 rounds (a smoke run)")
    parser.add_argument(
        "--rounds", type=int, default=None, help="timed rounds per contender (default: per case)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument(
        "--clock",
        choices=CLOCKS,
        default=None,
        help="cpu (default on CPU) or wall (default on CUDA)",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--validate",
        action="store_true",
        help="keep torch/pyro distribution argument validation on (default off for every contender)",
    )
    parser.add_argument("--markdown", default=None, help="also write the report as markdown to this file")
    args = parser.parse_args(argv)
    clock = args.clock or ("wall" if args.device.startswith("cuda") else "cpu")
    opts = Options(
        quick=args.quick,
        rounds=args.rounds,
        threads=args.threads,
        clock=clock,
        device=args.device,
        seed=args.seed,
    )
    configure(opts, validate=args.validate)
    names = args.case or list(CASES)
    command = "python benchmarks/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    header = [
        f"command: {command.strip()}",
        f"machine: {machine()}",
        f"revision: {revision()}",
        f"torch threads: {torch.get_num_threads()}; clock: {clock}; device: {args.device}; "
        f"distribution argument validation: {'on' if args.validate else 'off'}",
        f"{load()} at start",
    ]
    print("\n".join(header), flush=True)
    results = []
    start = time.time()
    for name in names:
        t0 = time.time()
        for result in run_case(name, opts):
            results.append(result)
            print("\n" + render(result), flush=True)
        print(f"({name}: {time.time() - t0:.0f} s)", flush=True)
    footer = [f"{load()} at end; total {time.time() - start:.0f} s"]
    print("\n## Summary\n\n" + summary(results) + "\n\n" + footer[0])
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write("\n".join(f"{h}  " for h in header) + "\n\n## Summary\n\n" + summary(results) + "\n\n")
            fh.write("\n".join(render(r) for r in results) + "\n" + footer[0] + "\n")
    return results


if __name__ == "__main__":
    main()
