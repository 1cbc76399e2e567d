"""Smoke tests of benchmarks/: every case runs with tiny sizes and its contenders agree.

No timing assertions: each case's own check (same parameters, same seed: equal
objective values, and equal gradients where the contenders implement the same
estimator) runs inside ``run`` and raises ``Mismatch`` on disagreement; here we also
assert that every contender was timed and every target was evaluated. Pyro is an
optional peer: without it, the Pyro contenders are skipped and the result says so.
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys

import pytest
import torch

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, BENCH)

import run as runner  # noqa: E402
from _case import Case, Contender, Mismatch, Options, Target  # noqa: E402
from _timing import blocks, interleaved, peak_memory, summarise  # noqa: E402

HAVE_PYRO = importlib.util.find_spec("pyro") is not None
QUICK = Options(quick=True, rounds=1)


@pytest.fixture(autouse=True)
def _settings():
    threads = torch.get_num_threads()
    validate = torch.distributions.Distribution._validate_args
    runner.configure(QUICK)
    yield
    torch.set_num_threads(threads)
    torch.distributions.Distribution.set_default_validate_args(validate)


def _check(results, pyro_contenders: int) -> None:
    for r in results:
        assert r.rows, r.name
        assert all(math.isfinite(row.median) and row.median > 0 for row in r.rows)
        assert r.targets and all(isinstance(t, Target) for t in r.targets)
        assert any("agree" in n or "=" in n for n in r.notes)
        names = [row.name for row in r.rows]
        pyro_rows = [n for n in names if n.startswith("pyro")]
        if HAVE_PYRO:
            assert len(pyro_rows) == pyro_contenders and not r.skipped
        else:
            assert not pyro_rows
            assert (len(r.skipped) > 0) == (pyro_contenders > 0)
            assert all("not installed" in s for s in r.skipped)


@pytest.mark.parametrize(
    "case, pyro_contenders",
    [("vae", 1), ("discrete", 1), ("gradient_samples", 1), ("graph", 0)],
)
def test_case_runs_and_contenders_agree(case, pyro_contenders):
    _check(runner.run_case(case, QUICK), pyro_contenders)


def test_iwae_case_scaling_and_memory():
    (result,) = runner.run_case("iwae", QUICK)
    assert (
        len(result.tables) == 1 and len(result.tables[0].splitlines()) == 2 + 4
    )  # header, rule, 4 values of K
    assert any("bound scg" in n for n in result.notes)
    assert {t.what.split(" ")[0] for t in result.targets} == {"training", "eval"}


def test_mismatch_is_caught():
    x = torch.zeros(())
    case = Case(
        "c",
        "c",
        "setup",
        "a",
        [
            Contender("a", lambda: None, value=lambda: float(x + 1.0)),
            Contender("b", lambda: None, value=lambda: float(x + 1.1)),
        ],
    )
    with pytest.raises(Mismatch, match="differs"):
        case.check()
    case = Case(
        "c",
        "c",
        "setup",
        "a",
        [
            Contender("a", lambda: None, value=lambda: 1.0, grads=lambda: torch.tensor([1.0, 2.0])),
            Contender("b", lambda: None, value=lambda: 1.0, grads=lambda: torch.tensor([1.0, 2.5])),
        ],
        grad_groups=[["a", "b"]],
    )
    with pytest.raises(Mismatch, match="gradients"):
        case.check()


def test_missing_peer_is_skipped_and_reported():
    from _case import peer

    skipped: list[str] = []
    assert peer("no_such_peer_library_xyz", skipped, "peer contender") is None
    assert skipped and "peer contender: skipped" in skipped[0] and "not installed" in skipped[0]


def test_timing_helpers():
    calls = {"a": 0, "b": 0}

    def bump(k):
        return lambda: calls.__setitem__(k, calls[k] + 1)

    times = blocks({"a": bump("a"), "b": bump("b")}, rounds=4, inner=3, warmup=1, clock="wall")
    assert calls == {"a": 15, "b": 15} and all(len(v) == 4 for v in times.values())
    rows = summarise(times, "b")
    assert [r.name for r in rows] == ["a", "b"] and rows[1].ratio == 1.0
    assert len(interleaved({"a": bump("a")}, repeats=2)["a"]) == 2
    with pytest.raises(ValueError, match="`clock` must be one of"):
        blocks({"a": bump("a")}, clock="sundial")
    with pytest.raises(ValueError, match="`baseline` must be one of"):
        summarise(times, "c")
    assert peak_memory(lambda: torch.ones(1000, 1000).sum()) >= 4_000_000


def test_targets():
    assert Target("r", 1.0, "<=", 1.05).met and not Target("r", 1.2, "<=", 1.05).met
    assert Target("r", 3.5, ">=", 3).met and not Target("r", float("nan"), ">=", 3).met
    assert "MISSED" in str(Target("r", 1.2, "<=", 1.05))


def test_case_without_pyro_skips_and_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyro", None)  # import pyro -> ImportError, as when not installed
    (result,) = runner.run_case("vae", QUICK)
    assert not [row for row in result.rows if row.name.startswith("pyro")]
    assert result.skipped and "not installed" in result.skipped[0]
    assert "skipped" in runner.summary([result]) and "SKIPPED" in runner.render(result)


def test_compiled_case_runs_and_contenders_agree():
    """Case 6 (--quick compiles with aot_eager): scg and hand-written, eager and compiled, agree."""
    results = runner.run_case("compiled", QUICK)
    _check(results, 1)
    for r in results:
        assert {"scg", "hand-written", "scg, compiled", "hand-written, compiled"} <= {
            row.name for row in r.rows
        }
        assert any("compiled / eager speed-up" in n for n in r.notes)
