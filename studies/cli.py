"""The ``scg-study`` command: ``list``, ``compare``, ``run NAME``, ``plot DIR``.

The CLI only parses arguments into a frozen config and calls the study code
(:mod:`scg.studies.compare`, :mod:`scg.studies.report`).

Exit codes: 0 success; 1 some estimator failed (its rows say ``error``); 2 bad
arguments (unknown estimator or problem names list the valid ones).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["main", "build_parser"]

_SMOKE_ESTIMATES = 2000


def _csv_names(valid: Callable[[], Sequence[str]], kind: str) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(n.strip() for n in text.split(",") if n.strip())
        if not names:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {kind}s; got {text!r}")
        allowed = list(valid())
        for n in names:
            if n not in allowed:
                raise argparse.ArgumentTypeError(f"unknown {kind} {n!r}; valid {kind}s: {', '.join(allowed)}")
        return names

    return parse


def _estimator_names() -> list[str]:
    from scg.studies.estimators import estimator_names

    return estimator_names()


def _problem_names() -> list[str]:
    from scg.studies.problems import GROUPS, problem_names

    return problem_names() + list(GROUPS)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1; got {value}")
    return value


def _add_problem_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--problem",
        dest="user_problems",
        action="append",
        default=[],
        metavar="MODULE:FUNCTION",
        help="a user problem: MODULE:FUNCTION returning a scg.studies.problems.Problem "
        "(or a list); repeatable",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (subcommands list, compare, run, plot)."""
    parser = argparse.ArgumentParser(
        prog="scg-study",
        description="Variance studies of Monte Carlo gradient estimators (scg).",
    )
    sub = parser.add_subparsers(dest="command", metavar="{list,compare,run,plot}")
    sub.required = True

    p_list = sub.add_parser("list", help="list the registered problems and estimators")
    _add_problem_args(p_list)

    p = sub.add_parser(
        "compare",
        help="every applicable estimator on each problem: estimate, exact gradient, variance, SNR, bias z",
        description="Compare estimators on the embedded problems (Gaussian cost family, Bernoulli toy and "
        "of docs/references.md) or your own; prints a table and writes results.csv, timings.csv, "
        "manifest.json and compare.png into --out.",
        epilog="Examples:\n"
        "  scg-study compare                                   # all problems, all estimators, N = 20000\n"
        "  scg-study compare --problems bernoulli-toy --estimators score_function,rloo,disarm\n"
        "  scg-study compare --problem mypkg.mod:make_problem -S 8 --out runs/mine\n"
        "  scg-study compare --problems gaussian -N 1000000    # SF variances on (x-k)^2 to ~1 %\n"
        "  scg-study compare --problems categorical -E 12      # categorical estimators at 12 evaluations\n\n"
        "'var err' is the relative error of the sampled variance against the exact one and 'var z'\n"
        "its z-score: heavy-tailed estimators (the score function on (x-k)^2) need N ~ 1e6 for 1-2 %.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--estimators",
        type=_csv_names(_estimator_names, "estimator"),
        default=None,
        metavar="A,B,...",
        help="comma-separated estimator names (default: all; see `scg-study list`)",
    )
    p.add_argument(
        "--problems",
        type=_csv_names(_problem_names, "problem"),
        default=None,
        metavar="A,B,...",
        help="comma-separated embedded problem names or groups (default: all embedded problems, "
        "or none when --problem is given)",
    )
    _add_problem_args(p)
    p.add_argument(
        "--num-samples",
        "-S",
        type=_positive,
        default=1,
        metavar="S",
        help="samples per estimate (default 1; RLOO uses max(S, 2))",
    )
    p.add_argument(
        "--evaluations",
        "-E",
        type=_positive,
        default=None,
        metavar="E",
        help="a budget of evaluations of f per estimate instead of -S: each estimator draws the most "
        "samples that fit (DisARM E/2, RELAX E/3, Enumerate one)",
    )
    p.add_argument(
        "--num-estimates",
        "-N",
        type=_positive,
        default=None,
        metavar="N",
        help="independent estimates per estimator (default 20000; 2000 with --smoke)",
    )
    p.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="auto = cuda if available (default)",
    )
    p.add_argument("--out", default="runs/compare", help="output folder (default runs/compare)")
    p.add_argument(
        "--engine",
        choices=("auto", "vmap", "batch"),
        default="auto",
        help="how N estimates are vectorised (default auto: torch.func vmap, batch fallback)",
    )
    p.add_argument(
        "--no-exact",
        dest="exact",
        action="store_false",
        help="skip the exact moments (scg.testing harness)",
    )
    p.add_argument("--no-plot", dest="plot", action="store_false", help="do not draw compare.png")
    p.add_argument("--smoke", action="store_true", help=f"tiny run for tests: N = {_SMOKE_ESTIMATES}")
    p.add_argument("--quiet", "-q", action="store_true", help="no table, no progress bar")

    p_run = sub.add_parser(
        "run",
        help="run a registered study by name (resumable; see `scg-study list`)",
        description="Run a study: writes manifest.json, cells/ (one file per finished cell), results.csv and "
        "PNG figures into --out. Re-running the same command resumes: finished cells are skipped. "
        "Sizes: the default (CPU, minutes), --smoke (seconds, the tests) or --full (the GPU size); "
        "--set overrides apply on top of the chosen size.",
    )
    p_run.add_argument("name", help="study name (see `scg-study list`)")
    p_run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field (repeatable); unknown keys list the valid ones",
    )
    size = p_run.add_mutually_exclusive_group()
    size.add_argument("--smoke", action="store_true", help="tiny configuration (seconds; used by the tests)")
    size.add_argument(
        "--full",
        action="store_true",
        help="full-size configuration (meant for a GPU; `scg-study list` gives the times)",
    )
    p_run.add_argument("--seed", type=int, default=0, help="run seed (default 0); cells are seeded from it")
    p_run.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda[:N]")
    p_run.add_argument(
        "--out",
        default=None,
        help="output folder (default runs/NAME, runs/NAME-smoke or runs/NAME-full)",
    )
    p_run.add_argument("--no-plot", dest="plot", action="store_false", help="do not draw figures")
    p_run.add_argument("--quiet", "-q", action="store_true", help="no progress bar")

    p_plot = sub.add_parser("plot", help="redraw the figure of a finished run from DIR/results.csv")
    p_plot.add_argument("dir", help="a run folder holding results.csv")
    p_plot.add_argument("--output", default=None, help="figure path (default DIR/compare.png)")
    return parser


def _cmd_list(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from scg.estimators import registry
    from scg.studies.problems import GROUPS, PROBLEMS, load_user_problem

    problems = list(PROBLEMS.values())
    for spec in args.user_problems:
        try:
            problems.extend(load_user_problem(spec))
        except (ValueError, TypeError) as exc:
            parser.error(str(exc))
    width = max(len(p.name) for p in problems)
    print("Problems:")
    for prob in problems:
        print(f"  {prob.name:<{width}}  {prob.description}")
    for group, members in GROUPS.items():
        print(f"  {group:<{width}}  (group: {', '.join(members)})")
    entries = list(registry.ENTRIES.values())
    width = max(len(e.name) for e in entries)
    print("\nEstimators (scg.estimators.registry; applies to N = Normal, B = Bernoulli, C = categorical):")
    for e in entries:
        flags = "".join(f[0].upper() if f in e.families else "-" for f in registry.FAMILIES)
        extra = [f"alias {', '.join(e.aliases)}"] if e.aliases else []
        if e.needs_context:
            extra.append("needs a model's input: not in compare")
        tail = f" ({'; '.join(extra)})" if extra else ""
        print(f"  {e.name:<{width}}  {flags}  {e.description}{tail}")
    from scg.studies.base import PRESETS
    from scg.studies.registry import get_study, study_names

    names = study_names()
    print("\nStudies (scg-study run NAME [--smoke | --full]):")
    if not names:
        print("  (none registered)")
    for name in names:
        study = get_study(name)
        t = study.time
        print(f"  {name:<18} {study.description}")
        times = ", ".join(f"{size} {t.get(size, '?')}" for size in PRESETS)
        print(f"  {'':<18} reproduces: {study.reproduces}; time: {times}")
    return 0


def _cmd_run(args: argparse.Namespace, parser: argparse.ArgumentParser, argv: Sequence[str]) -> int:
    from scg.studies.base import apply_overrides
    from scg.studies.registry import get_study
    from scg.studies.runner import run_study

    preset = "smoke" if args.smoke else "full" if args.full else "default"
    try:
        study = get_study(args.name)
        cfg = apply_overrides(study.preset(preset), args.overrides)
    except ValueError as exc:
        parser.error(str(exc))
    out = Path(args.out or f"runs/{args.name}{'' if preset == 'default' else '-' + preset}")
    _check_out(out, parser)
    shard = _shard()
    try:
        result = run_study(
            study,
            cfg,
            out,
            seed=args.seed,
            device=args.device,
            argv=["run", *argv],
            progress=not args.quiet,
            shard=shard,
            plot=args.plot,
            preset=preset,
        )
    except ValueError as exc:
        print(f"scg-study run: error: {exc}", file=sys.stderr)
        return 2
    print(
        f"{study.name}: ran {len(result.ran)} cell(s), skipped {len(result.skipped)} finished; wrote {out}",
        file=sys.stderr,
    )
    return 0


def _check_out(out: Path, parser: argparse.ArgumentParser) -> None:
    """Refuse, before any work, an ``--out`` that is a file or cannot be written."""
    if out.exists() and not out.is_dir():
        parser.error(f"`--out` must be a folder; {out} is a file.")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".scg-write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        parser.error(f"`--out` {out} cannot be written ({exc.strerror or exc}); choose another folder.")


def _shard() -> tuple[int, int]:
    """``(rank, world_size)`` under torchrun (see scg.studies.distributed), else ``(0, 1)``."""
    try:
        from scg.studies.distributed import current_shard
    except ImportError:
        return (0, 1)
    return current_shard()


def _cmd_compare(args: argparse.Namespace, parser: argparse.ArgumentParser, argv: Sequence[str]) -> int:
    from scg.studies._io import manifest
    from scg.studies.compare import COLUMNS, TIMING_COLUMNS, CompareConfig, config_dict, run_compare
    from scg.studies.problems import resolve_problems
    from scg.studies.report import format_table, write_compare

    num_estimates = args.num_estimates or (_SMOKE_ESTIMATES if args.smoke else CompareConfig.num_estimates)
    try:
        cfg = CompareConfig(
            problems=args.problems,
            user_problems=tuple(args.user_problems),
            estimators=args.estimators,
            num_samples=args.num_samples,
            evaluations=args.evaluations,
            num_estimates=num_estimates,
            seed=args.seed,
            device=args.device,
            engine=args.engine,
            exact=args.exact,
            out=args.out,
        )
        problems = resolve_problems(cfg.problems, cfg.user_problems)
    except (ValueError, TypeError) as exc:
        parser.error(str(exc))
    if not problems:
        parser.error("no problems selected; give --problems or --problem.")
    _check_out(Path(args.out), parser)
    try:
        result = run_compare(cfg, progress=not args.quiet)
    except ValueError as exc:  # e.g. --device cuda without a GPU
        print(f"scg-study compare: error: {exc}", file=sys.stderr)
        return 2
    descriptions = {p.name: p.description for p in problems}
    meta = manifest(
        config_dict(cfg),
        device=result.device,
        argv=["compare", *argv],
        extra={
            "notes": result.notes,
            "files": ["results.csv", "timings.csv", "manifest.json"] + (["compare.png"] if args.plot else []),
        },
    )
    paths = write_compare(cfg.out, result.rows, result.timings, meta, COLUMNS, TIMING_COLUMNS, plot=args.plot)
    if not args.quiet:
        print(format_table(result.rows, result.timings, descriptions))
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote {', '.join(str(p) for p in paths)}", file=sys.stderr)
    return 1 if any(r["status"] == "error" for r in result.rows) else 0


def _cmd_plot(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from scg.studies.report import load_rows, plot_compare

    manifest_path = Path(args.dir) / "manifest.json"
    if manifest_path.is_file():
        import json

        data = json.loads(manifest_path.read_text())
        if data.get("study"):
            return _plot_study(Path(args.dir), data, parser)
    results = Path(args.dir) / "results.csv"
    if not results.is_file():
        parser.error(f"`DIR` must hold a results.csv; {results} does not exist.")
    out = plot_compare(load_rows(results), args.output or Path(args.dir) / "compare.png")
    print(f"wrote {out}", file=sys.stderr)
    return 0


def _plot_study(out: Path, data: dict, parser: argparse.ArgumentParser) -> int:
    import dataclasses

    from scg.studies.registry import get_study
    from scg.studies.runner import merge_cells

    study = get_study(data["study"])
    fields = {f.name: f for f in dataclasses.fields(study.Config)}
    values = {}
    for key, value in data["config"].items():
        if key in fields:
            default = getattr(study.default(), key)
            values[key] = tuple(value) if isinstance(default, tuple) else value
    cfg = study.Config(**values)
    try:
        rows = merge_cells(study, cfg, out, str(data.get("config_hash")))
    except ValueError as exc:
        parser.error(str(exc))
    for path in study.plot(rows, cfg, out):
        print(f"wrote {path}", file=sys.stderr)
    return 0


def _missing_extras() -> list[str]:
    """The packages of the ``studies`` extra that cannot be imported."""
    import importlib.util

    return [
        name
        for name, module in (
            ("matplotlib", "matplotlib"),
            ("scikit-learn", "sklearn"),
            ("tqdm", "tqdm"),
        )
        if importlib.util.find_spec(module) is None
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``scg-study``; returns the exit code (argparse errors exit with 2)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    missing = _missing_extras()
    if missing:
        parser.exit(
            2,
            f"scg-study: needs {', '.join(missing)}, not installed: pip install 'scg-estimators[studies]'\n",
        )
    commands = {
        "list": lambda: _cmd_list(args, parser),
        "compare": lambda: _cmd_compare(args, parser, argv[1:]),
        "plot": lambda: _cmd_plot(args, parser),
        "run": lambda: _cmd_run(args, parser, argv[1:]),
    }
    try:
        return commands[args.command]()
    except KeyboardInterrupt:
        print(
            f"scg-study {args.command}: interrupted; finished cells are kept — run the same command again "
            "to resume.",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
