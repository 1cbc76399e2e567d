"""Tests of the ``scg-study`` command (list, compare, plot, run) and its problem registry.

Statistical checks use fixed seeds, so they are deterministic; their thresholds
are z·SE with z chosen for a false-failure rate of 1e-3 (Bonferroni-corrected over
the checks of one test) had the seed been random.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from scg.studies import cli
from scg.studies.compare import COLUMNS, CompareConfig, run_compare
from scg.studies.estimators import estimator_names
from scg.studies.problems import PROBLEMS, Problem, get_problem, load_user_problem, resolve_problems
from scg.studies.sampling import statistics

try:  # the exact harness; the exact columns are empty without it
    import scg.testing as _testing

    HAVE_HARNESS = hasattr(_testing, "exact_moments")
except ImportError:  # pragma: no cover - depends on the installed scg
    HAVE_HARNESS = False

needs_harness = pytest.mark.skipif(not HAVE_HARNESS, reason="scg.testing.exact_moments not importable")

# Two-sided normal quantile for a false-failure rate of 1e-3 over 4 checks (Bonferroni): Φ⁻¹(1 − 1e-3/8).
Z4 = 3.66

# Single-draw variances from docs/references.md (exact).
REF = {
    ("bernoulli-toy", "score_function", "phi"): 1.5638e-2,
    ("bernoulli-toy", "rloo", "phi"): 2.5e-5,
    ("bernoulli-toy", "disarm", "phi"): 0.0,
    ("gaussian-square-k0", "pathwise", "mu"): 4.0,
    ("gaussian-square-k0", "pathwise", "sigma"): 12.0,
    ("gaussian-square-k0", "score_function", "mu"): 30.0,
    ("gaussian-square-k0", "score_function_optimal", "mu"): 14.0,
    ("gaussian-square-k0", "score_function_optimal", "sigma"): 64.0,
    ("gaussian-square-k0", "measure_valued", "mu"): 1.093,
    ("gaussian-square-k0", "measure_valued", "sigma"): 8.0,
}


def _compare(tmp_path: Path, *args: str, name: str = "out") -> tuple[int, Path]:
    out = tmp_path / name
    code = cli.main(["compare", "--out", str(out), "-q", *args])
    return code, out


def _rows(out: Path) -> dict[tuple[str, str, str], dict[str, str]]:
    with open(out / "results.csv", newline="") as fh:
        return {(r["problem"], r["estimator"], r["parameter"]): r for r in csv.DictReader(fh)}


# ---------------------------------------------------------------- list


def test_list_shows_problems_and_estimators(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["list"]) == 0
    text = capsys.readouterr().out
    for name in list(PROBLEMS) + estimator_names():
        assert name in text


def test_no_command_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main([])
    assert exc.value.code == 2


# ---------------------------------------------------------------- compare


def test_compare_writes_results_manifest_and_figure(tmp_path: Path) -> None:
    code, out = _compare(
        tmp_path,
        "--problems",
        "bernoulli-toy,gaussian-square-k0",
        "--estimators",
        "score_function,pathwise,rloo,disarm",
        "-N",
        "4000",
        "--seed",
        "3",
        "--no-exact",
    )
    assert code == 0
    for name in ("results.csv", "timings.csv", "manifest.json", "compare.png"):
        assert (out / name).is_file(), name
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # atomic writes leave no temp files
    with open(out / "results.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames or ()) == COLUMNS
        rows = list(reader)
    # bernoulli: 4 estimators x phi; gaussian: 4 estimators x (mu, sigma)
    assert len(rows) == 4 + 8
    keyed = {(r["problem"], r["estimator"], r["parameter"]): r for r in rows}
    ok = keyed[("gaussian-square-k0", "pathwise", "sigma")]
    assert ok["status"] == "ok" and ok["num_estimates"] == "4000" and ok["evaluations"] == "1"
    assert float(ok["exact_gradient"]) == 2.0
    assert keyed[("bernoulli-toy", "rloo", "phi")]["num_samples"] == "2"  # RLOO runs with max(S, 2)
    assert "S >= 2" in keyed[("bernoulli-toy", "rloo", "phi")]["note"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 3 and manifest["device"] == "cpu"
    assert manifest["config"]["num_estimates"] == 4000
    assert set(manifest["versions"]) >= {"python", "torch", "numpy", "scg"}
    assert manifest["command"].startswith("scg-study compare")
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_skipped_estimator_is_reported_not_crashed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(
        [
            "compare",
            "--out",
            str(tmp_path / "o"),
            "--problems",
            "bernoulli-toy",
            "--estimators",
            "pathwise,score_function",
            "-N",
            "200",
            "--no-plot",
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "skipped" in text and "rsample" in text
    row = _rows(tmp_path / "o")[("bernoulli-toy", "pathwise", "phi")]
    assert row["status"] == "skipped"
    assert "has no rsample" in row["note"]
    assert row["variance"] == ""


def test_sampled_variances_match_references(tmp_path: Path) -> None:
    """Sampled single-estimate variances agree with the exact ones of docs/references.md within Z4·SE."""
    code, out = _compare(
        tmp_path,
        "--problems",
        "bernoulli-toy,gaussian-square-k0",
        "--estimators",
        "score_function,pathwise",
        "-N",
        "20000",
        "--seed",
        "0",
        "--no-plot",
    )
    assert code == 0
    rows = _rows(out)
    for key in [
        ("bernoulli-toy", "score_function", "phi"),
        ("gaussian-square-k0", "pathwise", "mu"),
        ("gaussian-square-k0", "pathwise", "sigma"),
    ]:
        row = rows[key]
        var, se = float(row["variance"]), float(row["variance_std_error"])
        assert abs(var - REF[key]) <= Z4 * se, (key, var, REF[key], se)
        assert abs(float(row["bias_z"])) <= Z4, key
    # the Bernoulli score-function estimate takes two values: its variance is within 2 % at N = 20000
    assert abs(float(rows[("bernoulli-toy", "score_function", "phi")]["variance"]) / 1.5638e-2 - 1) < 0.02


@needs_harness
def test_exact_variance_column_reproduces_references(tmp_path: Path) -> None:
    keys = [k for k in REF if k[1] != "measure_valued" or hasattr(__import__("scg"), "MeasureValued")]
    code, out = _compare(
        tmp_path,
        "--problems",
        "bernoulli-toy,gaussian-square-k0",
        "--estimators",
        ",".join(sorted({k[1] for k in keys})),
        "-N",
        "2000",
        "--no-plot",
    )
    assert code == 0
    rows = _rows(out)
    for key in keys:
        exact = float(rows[key]["exact_variance"])
        assert exact == pytest.approx(REF[key], rel=2e-3, abs=1e-9), key
        assert float(rows[key]["exact_mean"]) == pytest.approx(
            float(rows[key]["exact_gradient"]), abs=1e-8
        ), key


def test_same_seed_same_csv_different_seed_differs(tmp_path: Path) -> None:
    args = [
        "--problems",
        "bernoulli-toy,gaussian-cos-k5",
        "--estimators",
        "score_function,rloo,pathwise",
        "-N",
        "1000",
        "--no-plot",
    ]
    _, a = _compare(tmp_path, *args, "--seed", "7", name="a")
    _, b = _compare(tmp_path, *args, "--seed", "7", name="b")
    _, c = _compare(tmp_path, *args, "--seed", "8", name="c")
    assert (a / "results.csv").read_bytes() == (b / "results.csv").read_bytes()
    assert (a / "results.csv").read_bytes() != (c / "results.csv").read_bytes()


def test_rows_do_not_depend_on_the_selection(tmp_path: Path) -> None:
    _, a = _compare(
        tmp_path,
        "--problems",
        "bernoulli-toy",
        "--estimators",
        "rloo",
        "-N",
        "500",
        "--no-plot",
        name="a",
    )
    _, b = _compare(
        tmp_path,
        "--problems",
        "gaussian-exp-k1,bernoulli-toy",
        "--estimators",
        "score_function,rloo",
        "-N",
        "500",
        "--no-plot",
        name="b",
    )
    key = ("bernoulli-toy", "rloo", "phi")
    assert _rows(a)[key] == _rows(b)[key]


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--estimators", "score_function,nope"],
            r"unknown estimator 'nope'; valid estimators: score_function, ",
        ),
        (
            ["--problems", "gaussian-nope"],
            r"unknown problem 'gaussian-nope'; valid problems: gaussian-square-k0",
        ),
        (
            ["--problem", "no_colon_here"],
            r"`--problem` must be 'module:function'; got 'no_colon_here'",
        ),
        (
            ["--problem", "scg_no_such_module_xyz:f"],
            r"cannot import module 'scg_no_such_module_xyz'",
        ),
        (["--num-samples", "0"], r"must be >= 1; got 0"),
    ],
)
def test_bad_arguments_exit_2_with_valid_names(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import re

    with pytest.raises(SystemExit) as exc:
        cli.main(["compare", "--out", str(tmp_path), *args])
    assert exc.value.code == 2
    assert re.search(message, capsys.readouterr().err)


USER_MODULE = """
import torch
from torch.distributions import Normal
from scg.studies.problems import Problem


def make_problem():
    # E[z^3] = mu^3 + 3 mu sigma^2: gradient (3 mu^2 + 3 sigma^2, 6 mu sigma) = (3.75, 3.0) at (0.5, 1)
    return Problem(name="user-cubic", make_dist=lambda loc, scale: Normal(loc, scale), params=(0.5, 1.0),
                   f=lambda z: z ** 3, param_names=("loc", "scale"), description="E[z^3]")


def not_a_problem():
    return 42


def strict_binary():
    # f refuses relaxed inputs: GumbelSoftmax fails on it (an "error" row), score_function works;
    # its data-dependent check also defeats torch.func, so the batch engine is used
    from torch.distributions import Bernoulli

    def f(b):
        if not bool(((b == 0) | (b == 1)).all()):
            raise ValueError("f needs binary input")
        return (b - 0.3) ** 2

    return [Problem(name="strict", make_dist=lambda logits: Bernoulli(logits=logits), params=(0.5,), f=f)]
"""


def test_user_problem_module_function(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "scg_user_problem_mod.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert cli.main(["list", "--problem", "scg_user_problem_mod:make_problem"]) == 0
    assert "user-cubic" in capsys.readouterr().out
    code, out = _compare(
        tmp_path,
        "--problem",
        "scg_user_problem_mod:make_problem",
        "--estimators",
        "pathwise,score_function",
        "-N",
        "4000",
        "--no-plot",
    )
    assert code == 0
    rows = _rows(out)
    assert {k[0] for k in rows} == {"user-cubic"}
    pw = rows[("user-cubic", "pathwise", "loc")]
    assert pw["status"] == "ok"
    if HAVE_HARNESS:  # no closed form given: the exact gradient comes from the harness
        assert float(pw["exact_gradient"]) == pytest.approx(3.75, abs=1e-8)
        assert float(rows[("user-cubic", "pathwise", "scale")]["exact_gradient"]) == pytest.approx(
            3.0, abs=1e-8
        )
        assert abs(float(pw["bias_z"])) <= Z4
    with pytest.raises(TypeError, match=r"must return a scg.studies.problems.Problem .*got int"):
        load_user_problem("scg_user_problem_mod:not_a_problem")
    with pytest.raises(ValueError, match=r"has no function 'missing'"):
        load_user_problem("scg_user_problem_mod:missing")


def test_failing_estimator_is_an_error_row_and_exit_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "scg_user_problem_mod2.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    code, out = _compare(
        tmp_path,
        "--problem",
        "scg_user_problem_mod2:strict_binary",
        "--estimators",
        "score_function,gumbel_softmax",
        "-N",
        "500",
        "--no-plot",
    )
    assert code == 1
    rows = _rows(out)
    assert rows[("strict", "score_function", "p0")]["status"] == "ok"
    assert rows[("strict", "score_function", "p0")]["method"] == "batch"
    bad = rows[("strict", "gumbel_softmax", "p0")]
    assert bad["status"] == "error" and "f needs binary input" in bad["note"]
    assert "strict / gumbel_softmax: error" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_cuda_without_gpu_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = _compare(tmp_path, "--device", "cuda", "--problems", "bernoulli-toy")
    assert code == 2
    assert 'CUDA is not available; use "auto" or "cpu"' in capsys.readouterr().err


def test_a_misspelt_device_is_named_not_blamed_on_cuda(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(
        [
            "run",
            "blr",
            "--smoke",
            "--no-plot",
            "--quiet",
            "--device",
            "cudax",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 2
    assert '`device` must be "auto", "cpu", "cuda" or "cuda:N"; got \'cudax\'' in capsys.readouterr().err


def test_plot_redraws_figure_from_results(tmp_path: Path) -> None:
    code, out = _compare(
        tmp_path,
        "--problems",
        "bernoulli-toy",
        "--estimators",
        "score_function,disarm",
        "-N",
        "300",
        "--no-plot",
    )
    assert code == 0 and not (out / "compare.png").exists()
    assert cli.main(["plot", str(out)]) == 0
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit) as exc:
        cli.main(["plot", str(tmp_path / "empty")])
    assert exc.value.code == 2


def test_run_unknown_study_lists_valid_ones(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["run", "anything"])
    assert exc.value.code == 2
    assert "unknown study 'anything'; valid studies:" in capsys.readouterr().err


# ---------------------------------------------------------------- registry and pieces


def test_closed_form_gradients() -> None:
    """The problems' closed-form gradients against autograd of the closed-form expectations."""
    mu = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    sigma = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    values = {
        "gaussian-square-k0": mu**2 + sigma**2,
        "gaussian-square-k3": (mu - 3) ** 2 + sigma**2,
        "gaussian-cos-k5": torch.cos(5 * mu) * torch.exp(-12.5 * sigma**2),
        "gaussian-exp-k1": (1 + 2 * sigma**2) ** -0.5 * torch.exp(-(mu**2) / (1 + 2 * sigma**2)),
    }
    for name, value in values.items():
        g = torch.autograd.grad(value, (mu, sigma))
        assert get_problem(name).exact_gradient == pytest.approx([float(x) for x in g], abs=1e-12), name
    assert get_problem("bernoulli-toy").exact_gradient == pytest.approx((0.25 * 0.02,))


@needs_harness
def test_closed_form_gradients_match_harness() -> None:
    from scg.testing import exact_gradient

    for problem in PROBLEMS.values():
        g = exact_gradient(problem.make_dist, problem.tensors(), problem.f)
        assert [float(v) for v in torch.as_tensor(g).reshape(-1)] == pytest.approx(
            problem.exact_gradient, abs=1e-8
        )


def test_problem_validation_and_registry_errors() -> None:
    with pytest.raises(ValueError, match=r"`name` must be a non-empty string"):
        Problem(name="", make_dist=lambda x: x, params=(1.0,), f=lambda z: z)
    with pytest.raises(TypeError, match=r"`f` must be callable; got int"):
        Problem(name="x", make_dist=lambda x: x, params=(1.0,), f=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`params` must be a non-empty tuple"):
        Problem(name="x", make_dist=lambda x: x, params=(), f=lambda z: z)
    with pytest.raises(ValueError, match=r"`param_names` must have one name per parameter \(1\); got 2"):
        Problem(name="x", make_dist=lambda x: x, params=(1.0,), f=lambda z: z, param_names=("a", "b"))
    with pytest.raises(ValueError, match=r"unknown problem 'zzz'; valid problems: gaussian-square-k0"):
        get_problem("zzz")
    assert [p.name for p in resolve_problems(["gaussian"])] == [
        n for n in PROBLEMS if n.startswith("gaussian")
    ]
    assert Problem(
        name="v",
        make_dist=lambda x: x,
        params=([0.0, 1.0], 2.0),
        f=lambda z: z,
        param_names=("w", "b"),
    ).labels() == ["w[0]", "w[1]", "b"]
    with pytest.raises(ValueError, match=r"unknown estimator 'x'; valid estimators: score_function"):
        CompareConfig(estimators=("x",))
    with pytest.raises(ValueError, match=r"`num_estimates` must be an int >= 1; got 0"):
        CompareConfig(num_estimates=0)
    with pytest.raises(ValueError, match=r"`device` must be auto, cpu or cuda; got 'tpu'"):
        CompareConfig(device="tpu")


def test_batch_engine_agrees_with_vmap_engine() -> None:
    """Both engines draw the same estimates for the same seed (same random stream) on plain estimators."""
    cfg = dict(
        problems=("gaussian-square-k3",),
        estimators=("score_function", "pathwise"),
        num_estimates=500,
        exact=False,
    )
    a = run_compare(CompareConfig(engine="batch", **cfg), progress=False).rows
    b = run_compare(CompareConfig(engine="vmap", **cfg), progress=False).rows
    for ra, rb in zip(a, b, strict=False):
        assert ra["mean"] == pytest.approx(rb["mean"], rel=1e-12)
        assert ra["variance"] == pytest.approx(rb["variance"], rel=1e-12)
        assert (ra["method"], rb["method"]) == ("batch", "vmap")


def test_statistics_edge_cases() -> None:
    import numpy as np

    s = statistics(np.full(10, 0.005), 0.005, 0.0)  # zero variance, exact: DisARM on the toy
    assert s["variance"] == 0.0 and s["variance_rel_error"] == 0.0 and s["bias_z"] == 0.0
    s = statistics(np.array([1.0, 3.0]), 0.0, 2.0)
    assert s["mean"] == 2.0 and s["variance"] == 2.0 and s["variance_rel_error"] == 0.0
    assert s["bias_z"] == pytest.approx(2.0 / math.sqrt(1.0))
    assert math.isnan(statistics(np.array([1.0, 3.0]), 0.0, math.nan)["variance_rel_error"])
    s = statistics(np.full(10, 0.005), 0.005, 7.5e-37)  # quadrature's rounding of an exact 0
    assert s["variance_rel_error"] == 0.0 and s["variance_z"] == 0.0


# ---------------------------------------------------------------- the console script


def test_console_script_subprocess(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("scg-study")
    command = (
        [str(exe)] if exe.exists() else ([shutil.which("scg-study")] if shutil.which("scg-study") else None)
    )
    if command is None:
        pytest.skip("scg-study console script not installed (pip install -e .)")
    out = tmp_path / "sub"
    proc = subprocess.run(
        [
            *command,
            "compare",
            "--smoke",
            "--problems",
            "bernoulli-toy",
            "--estimators",
            "score_function,disarm",
            "--device",
            "cpu",
            "--no-exact",
            "--no-plot",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "bernoulli-toy" in proc.stdout and "disarm" in proc.stdout
    assert "estimate" in proc.stdout and "exact grad" in proc.stdout
    assert (out / "results.csv").is_file() and (out / "manifest.json").is_file()


def test_ctrl_c_says_the_run_can_be_resumed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupt(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    import scg.studies.runner as runner

    monkeypatch.setattr(runner, "run_study", interrupt)
    code = cli.main(["run", "blr", "--smoke", "--no-plot", "--quiet", "--out", "/nonexistent/never-written"])
    assert code == 130
    err = capsys.readouterr().err
    assert "interrupted; finished cells are kept — run the same command again to resume." in err
    assert "Traceback" not in err


def test_out_that_is_a_file_is_refused_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "a-file"
    target.write_text("x")
    with pytest.raises(SystemExit) as exc:
        cli.main(["compare", "--problems", "bernoulli-toy", "--quiet", "--out", str(target)])
    assert exc.value.code == 2 and f"`--out` must be a folder; {target} is a file." in capsys.readouterr().err


def test_a_config_selecting_no_cells_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(
        [
            "run",
            "blr",
            "--smoke",
            "--no-plot",
            "--quiet",
            "--set",
            "estimators=",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 2 and "selects no cells" in capsys.readouterr().err


def test_no_plot_removes_a_stale_figure_of_earlier_results(tmp_path: Path) -> None:
    code, out = _compare(
        tmp_path, "--problems", "bernoulli-toy", "--estimators", "score_function", "-N", "200"
    )
    assert code == 0 and (out / "compare.png").exists()
    code, out = _compare(
        tmp_path, "--problems", "bernoulli-toy", "--estimators", "disarm", "-N", "200", "--no-plot"
    )
    assert code == 0 and not (out / "compare.png").exists()


# ---------------------------------------------------------------- the estimator registry


def test_list_shows_the_registry_with_families(capsys: pytest.CaptureFixture[str]) -> None:
    from scg.estimators import registry

    assert cli.main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for e in registry.ENTRIES.values():
        flags = "".join(f[0].upper() if f in e.families else "-" for f in registry.FAMILIES)
        assert any(line.split()[:2] == [e.name, flags] for line in lines), e.name
    assert set(estimator_names()) == {e.name for e in registry.ENTRIES.values() if not e.needs_context}


@needs_harness
def test_compare_categorical_at_a_budget_of_evaluations(tmp_path: Path) -> None:
    """-E 6 on the 3-class toy: S = 6 / (evaluations per sample); Enumerate spends its support (3) once."""
    code, out = _compare(
        tmp_path,
        "--problems",
        "categorical-toy-k3",
        "--estimators",
        "score_function,categorical_disarm,unordered_set,enumerate,disarm",
        "-E",
        "6",
        "--smoke",
        "--no-plot",
    )
    assert code == 0
    rows = _rows(out)
    by = {(e, p): r for (_, e, p), r in rows.items()}
    params = {p for (_, _, p) in rows}
    for p in params:
        assert by["disarm", p]["status"] == "skipped" and "Bernoulli" in by["disarm", p]["note"]
        for name, S, spent in (
            ("score_function", 6, 6),
            ("categorical_disarm", 3, 6),  # an antithetic pair per sample
            ("unordered_set", 3, 6),  # k = 2 classes per sample
            ("enumerate", 1, 3),  # the 3 classes, whatever S
        ):
            r = by[name, p]
            assert (r["status"], int(r["num_samples"]), int(r["evaluations"])) == ("ok", S, spent), (name, r)
            assert "budget of 6 evaluations" in r["note"]
        r = by["enumerate", p]  # exact columns: the harness's mean is the problem's closed-form gradient
        assert float(r["exact_mean"]) == pytest.approx(float(r["exact_gradient"]), rel=1e-9, abs=1e-15)
        assert float(r["exact_variance"]) == pytest.approx(0.0, abs=1e-20) and float(r["variance"]) < 1e-25


def test_compare_budget_must_be_positive() -> None:
    with pytest.raises(ValueError, match="`evaluations` must be None or an int >= 1; got 0"):
        CompareConfig(evaluations=0)


def test_compare_plot_sums_the_variances_of_problems_with_many_parameters():
    """Problems with more than three parameters are drawn one row per estimator: the total variance
    (SEs in quadrature; the exact total only when every component has an exact value)."""
    from scg.studies.report import _summed_over_parameters

    def row(problem, est, param, v, se, ex):
        return {
            "problem": problem,
            "estimator": est,
            "parameter": param,
            "num_samples": 1,
            "variance": v,
            "variance_std_error": se,
            "exact_variance": ex,
            "exact_gradient": 1.0,
            "mean": 1.0,
        }

    rows = [row("small", "sf", f"p{i}", 1.0, 0.1, 1.0) for i in range(2)]
    rows += [row("big", "sf", f"a[{i}]", float(i + 1), 0.3, float(i + 1)) for i in range(4)]
    rows += [row("big", "mv", f"a[{i}]", 2.0, 0.4, float("nan") if i == 2 else 2.0) for i in range(4)]
    out = _summed_over_parameters(rows)
    assert [r["parameter"] for r in out[:2]] == ["p0", "p1"]  # kept as they are
    sf, mv = out[2], out[3]
    assert sf["parameter"] == "Σ 4 parameters" and sf["variance"] == 10.0 and sf["exact_variance"] == 10.0
    assert sf["variance_std_error"] == pytest.approx(0.6)  # sqrt(4 * 0.3^2)
    assert mv["variance"] == 8.0 and math.isnan(mv["exact_variance"])
    assert len(out) == 4
