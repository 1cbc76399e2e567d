"""Table, figure and files of ``scg-study compare`` (and ``scg-study plot DIR``).

Reads and writes the rows of results.csv as dicts, so the figure can be redrawn
from a results.csv alone.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from scg.studies._io import read_csv, save_figure, write_csv, write_json
from scg.studies._plotting import pyplot

__all__ = ["format_table", "plot_compare", "write_compare", "load_rows"]

_FLOAT_COLUMNS = (
    "mean",
    "exact_gradient",
    "exact_mean",
    "std_error",
    "bias_z",
    "variance",
    "variance_std_error",
    "exact_variance",
    "variance_rel_error",
    "variance_z",
    "snr",
)
_INT_COLUMNS = ("num_samples", "num_estimates", "evaluations")


def _num(value: Any) -> float:
    if value is None or value == "":
        return math.nan
    return float(value)


def load_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a results.csv with numbers parsed (empty cells become nan / None)."""
    rows: list[dict[str, Any]] = []
    for raw in read_csv(path):
        row: dict[str, Any] = dict(raw)
        for c in _FLOAT_COLUMNS:
            if c in row:
                row[c] = _num(row[c])
        for c in _INT_COLUMNS:
            if c in row:
                row[c] = int(row[c]) if row[c] not in (None, "") else None
        if "unbiased" in row:
            row["unbiased"] = {"true": True, "false": False}.get(str(row["unbiased"]))
        rows.append(row)
    return rows


def _g(x: Any, width: int, fmt: str = ".4g") -> str:
    v = _num(x)
    if math.isnan(v):
        return f"{'-':>{width}}"
    return f"{format(v, fmt):>{width}}"


def _pct(x: Any, width: int) -> str:
    v = _num(x)
    if math.isnan(v):
        return f"{'-':>{width}}"
    return f"{100 * v:>+{width - 1}.1f}%"


def format_table(
    rows: Sequence[Mapping[str, Any]],
    timings: Iterable[Mapping[str, Any]] = (),
    descriptions: Mapping[str, str] | None = None,
) -> str:
    """An aligned plain-text table, one block per problem.

    Columns: estimator, parameter, S, sampled mean, exact gradient, sampled and exact
    variance, relative error of the variance and its z-score, SNR, bias z,
    evaluations of f per estimate, microseconds per estimate (when ``timings`` are given).
    """
    times = {(t["problem"], t["estimator"], t["parameter"]): float(t["us_per_estimate"]) for t in timings}
    est_w = max([9] + [len(str(r["estimator"])) for r in rows])
    par_w = max([5] + [len(str(r["parameter"])) for r in rows])
    head = (
        f"{'estimator':<{est_w}} {'param':<{par_w}} {'S':>3} {'estimate':>10} {'exact grad':>10} "
        f"{'variance':>10} {'exact var':>10} {'var err':>8} {'var z':>7} {'SNR':>8} {'bias z':>7} {'f evals':>7} "
        f"{'us/est':>7}"
    )
    lines: list[str] = []
    problems = list(dict.fromkeys(r["problem"] for r in rows))
    for problem in problems:
        desc = (descriptions or {}).get(problem, "")
        lines.append(f"{problem}" + (f"  — {desc}" if desc else ""))
        lines.append(head)
        lines.append("-" * len(head))
        prow = [r for r in rows if r["problem"] == problem]
        seen: set[tuple[str, str, str]] = set()
        for r in prow:
            left = f"{r['estimator']:<{est_w}} {r['parameter']:<{par_w}} "
            if r["status"] != "ok":  # one line per estimator when all its parameters share the reason
                key = (str(r["estimator"]), str(r["status"]), str(r.get("note") or ""))
                if key in seen:
                    continue
                seen.add(key)
                same = [
                    q
                    for q in prow
                    if (str(q["estimator"]), str(q["status"]), str(q.get("note") or "")) == key
                ]
                if len(same) > 1:
                    left = f"{r['estimator']:<{est_w}} {'all':<{par_w}} "
                note = str(r.get("note") or "")
                note = note if len(note) <= 100 else note[:97] + "..."
                lines.append(left + f"{r['status']}: {note}")
                continue
            t = times.get((r["problem"], r["estimator"], r["parameter"]))
            lines.append(
                left + f"{r['num_samples']:>3} {_g(r['mean'], 10)} {_g(r['exact_gradient'], 10)} "
                f"{_g(r['variance'], 10)} {_g(r['exact_variance'], 10)} {_pct(r['variance_rel_error'], 8)} "
                f"{_g(r['variance_z'], 7, '+.2f')} "
                f"{_g(r['snr'], 8, '.3g')} {_g(r['bias_z'], 7, '+.2f')} {r['evaluations']:>7} "
                f"{_g(t, 7, '.3g') if t is not None else f'{chr(45):>7}'}"
            )
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


#: Problems with more parameters than this are drawn one row per estimator (variances summed).
_MAX_PARAMETER_ROWS = 3


def _summed_over_parameters(rows: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Rows of problems with many parameters replaced by one row per estimator: the total variance.

    The sampled total's SE combines the parameters' SEs in quadrature (an approximation: the
    components' sample variances are correlated); the exact total is the sum of the exact
    variances when every component has one, else missing. Other problems' rows are kept.
    """
    counts: dict[str, set[str]] = {}
    for r in rows:
        counts.setdefault(r["problem"], set()).add(r["parameter"])
    out: list[Mapping[str, Any]] = []
    groups: dict[tuple[str, str, Any], list[Mapping[str, Any]]] = {}
    for r in rows:
        if len(counts[r["problem"]]) <= _MAX_PARAMETER_ROWS:
            out.append(r)
            continue
        key = (r["problem"], r["estimator"], r["num_samples"])
        if key not in groups:
            groups[key] = []
            out.append({"_group": key})
        groups[key].append(r)
    merged: list[Mapping[str, Any]] = []
    for r in out:
        if "_group" not in r:
            merged.append(r)
            continue
        members = groups[r["_group"]]
        exact = [_num(m["exact_variance"]) for m in members]
        merged.append(
            {
                **members[0],
                "parameter": f"Σ {len(members)} parameters",
                "variance": sum(_num(m["variance"]) for m in members),
                "variance_std_error": math.sqrt(sum(_num(m["variance_std_error"]) ** 2 for m in members)),
                "exact_variance": sum(exact) if not any(math.isnan(e) for e in exact) else float("nan"),
                "exact_gradient": math.sqrt(sum(_num(m["exact_gradient"]) ** 2 for m in members)),
                "mean": math.sqrt(sum(_num(m["mean"]) ** 2 for m in members)),
            }
        )
    return merged


def plot_compare(rows: Sequence[Mapping[str, Any]], path: str | Path, *, title: str | None = None) -> Path:
    """Dot plot of the variance of one estimate, sampled (±2 SE) next to exact, one panel per problem.

    A problem with more than three parameters gets one row per estimator, its variance
    summed over the parameters (the total variance); ``results.csv`` keeps every component.

    Log-scale x axis; zero variances (e.g. DisARM on the Bernoulli toy; below
    1e-10 · gradient² counts as zero: float rounding) are drawn at the left edge and
    labelled "0" or "≈0". Written atomically to ``path``.
    """
    plt = pyplot()
    import matplotlib.ticker

    ok = _summed_over_parameters([r for r in rows if r["status"] == "ok"])
    problems = list(dict.fromkeys(r["problem"] for r in rows))
    n = max(1, len(problems))
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    heights = [max(1, sum(1 for r in ok if r["problem"] == p)) for p in problems]
    fig_h = max(3.0, 0.28 * max(heights) + 1.4) * nrows
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, fig_h), squeeze=False)
    params = list(dict.fromkeys(r["parameter"] for r in ok))
    colours = {p: plt.cm.tab10(i % 10) for i, p in enumerate(params)}
    for ax, problem in zip(axes.flat, problems, strict=False):
        prow = [r for r in ok if r["problem"] == problem]
        ax.set_title(problem, fontsize=10)
        if not prow:
            ax.text(0.5, 0.5, "no estimator applied", ha="center", va="center", transform=ax.transAxes)
            ax.set_yticks([])
            continue

        def zero(r: Mapping[str, Any], v: float) -> bool:
            # a variance 0 in exact arithmetic comes out of float64 as ~1e-17 or ~1e-37: call it 0
            scale = max(
                _num(r["exact_gradient"]) ** 2 if not math.isnan(_num(r["exact_gradient"])) else 0.0,
                _num(r["mean"]) ** 2,
            )
            return v == 0 or (v > 0 and v <= 1e-10 * scale)

        positive = [
            v
            for r in prow
            for v in (_num(r["variance"]), _num(r["exact_variance"]))
            if v > 0 and not zero(r, v)
        ]
        floor = (min(positive) / 10) if positive else 1e-12
        labels = []
        for y, r in enumerate(prow):
            labels.append(
                f"{r['estimator']} · {r['parameter']}"
                + (f" (S={r['num_samples']})" if r["num_samples"] not in (None, 1) else "")
            )
            c = colours[r["parameter"]]
            v, se, ex = (
                _num(r["variance"]),
                _num(r["variance_std_error"]),
                _num(r["exact_variance"]),
            )
            ys, ye = y - 0.14, y + 0.14  # sampled just above, exact just below the label line
            if zero(r, v):
                ax.plot([floor], [ys], marker="<", color=c, ms=6)
                ax.annotate(
                    "≈0" if v else "0",
                    (floor, ys),
                    xytext=(6, -3),
                    textcoords="offset points",
                    fontsize=7,
                )
            elif v > 0:
                lo = max(v - 2 * se, floor) if not math.isnan(se) else v
                hi = v + 2 * se if not math.isnan(se) else v
                ax.errorbar([v], [ys], xerr=[[v - lo], [hi - v]], fmt="o", color=c, ms=5, capsize=2)
            if zero(r, ex):
                ax.plot([floor], [ye], marker="D", mfc="none", mec="black", ms=6, mew=1.1)
            elif ex > 0:
                ax.plot([ex], [ye], marker="D", mfc="none", mec="black", ms=6, mew=1.1)
        ax.set_xscale("log")
        lo_x, hi_x = ax.get_xlim()
        if hi_x / lo_x < 10:  # at least one decade, so that major ticks are labelled
            mid = math.sqrt(lo_x * hi_x)
            ax.set_xlim(mid / math.sqrt(10), mid * math.sqrt(10))
            lo_x, hi_x = ax.get_xlim()
        if hi_x / lo_x < 100:  # few decades: label the 2s and 5s too
            ax.xaxis.set_minor_locator(matplotlib.ticker.LogLocator(subs=(2.0, 5.0)))
            ax.xaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}"))
            ax.tick_params(axis="x", which="minor", labelsize=7)
        else:
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_yticks(range(len(prow)), labels, fontsize=8)
        ax.set_ylim(len(prow) - 0.5, -0.5)
        ax.set_xlabel("variance of one gradient estimate (log scale)")
        ax.grid(True, axis="x", which="both", alpha=0.3)
    for ax in list(axes.flat)[len(problems) :]:
        ax.set_visible(False)
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], marker="o", ls="", color="grey", label="sampled (±2 SE of the variance)"),
        Line2D([], [], marker="D", ls="", mfc="none", mec="black", label="exact (harness)"),
    ]
    fig.legend(handles=handles, loc="upper right", fontsize=8, frameon=False)
    fig.suptitle(title or "Variance of single gradient estimates: sampled vs exact", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    out = save_figure(fig, path, dpi=110)
    plt.close(fig)
    return out


def write_compare(
    out: str | Path,
    rows: Sequence[Mapping[str, Any]],
    timings: Sequence[Mapping[str, Any]],
    manifest: Mapping[str, Any],
    columns: Sequence[str],
    timing_columns: Sequence[str],
    *,
    plot: bool = True,
) -> list[Path]:
    """Write results.csv, timings.csv, manifest.json and compare.png into ``out`` (atomically).

    With ``plot=False`` a ``compare.png`` already in ``out`` is removed: it showed other results.
    """
    out = Path(out)
    paths = [
        write_csv(out / "results.csv", rows, columns),
        write_csv(out / "timings.csv", timings, timing_columns),
    ]
    if plot:
        paths.append(plot_compare(rows, out / "compare.png"))
    else:  # a figure of earlier results must not stand beside these
        (out / "compare.png").unlink(missing_ok=True)
    paths.append(write_json(out / "manifest.json", manifest))
    return paths
