"""The study runner: resume, atomic cells, seeding by cell, --set validation, refusal to mix runs."""

from __future__ import annotations

import dataclasses
import json
import sys
import types
from pathlib import Path

import pytest
import torch

from scg.studies import registry
from scg.studies.base import PRESETS, Study, apply_overrides, cell_seed
from scg.studies.cli import main
from scg.studies.runner import run_study


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    sizes: tuple = (1, 2, 3)
    scale: float = 1.0
    repeats: int = 2
    label: str = "toy"
    flag: bool = False


class ToyStudy(Study):
    name = "toy"
    description = "a toy study for runner tests"
    reproduces = "nothing"
    time = {"smoke": "1 s", "default": "2 s", "full": "3 s"}
    Config = ToyConfig
    calls: list = []

    def smoke(self) -> ToyConfig:
        return ToyConfig(sizes=(1, 2))

    def full(self) -> ToyConfig:
        return ToyConfig(sizes=(1, 2, 3, 4), repeats=1, label="full")

    def cells(self, cfg):
        return [{"size": s, "rep": r} for s in cfg.sizes for r in range(cfg.repeats)]

    def run_cell(self, cfg, cell, ctx):
        ToyStudy.calls.append(dict(cell))
        x = torch.randn(cell["size"], generator=ctx.generator) * cfg.scale
        y = torch.rand(())  # global RNG, seeded per cell by the runner
        return [{"size": cell["size"], "rep": cell["rep"], "value": float(x.sum()), "g": float(y)}]

    def plot(self, rows, cfg, out_dir):
        path = Path(out_dir) / "toy.txt"
        path.write_text(str(len(rows)))
        return [path]


@pytest.fixture(autouse=True)
def _register(monkeypatch):
    module = types.ModuleType("scg_test_toy_study")
    module.ToyStudy = ToyStudy
    monkeypatch.setitem(sys.modules, "scg_test_toy_study", module)
    monkeypatch.setitem(registry.STUDIES, "toy", "scg_test_toy_study:ToyStudy")
    ToyStudy.calls = []


def test_run_writes_files_and_same_seed_gives_identical_csv(tmp_path):
    assert main(["run", "toy", "--out", str(tmp_path / "a"), "-q", "--device", "cpu"]) == 0
    assert main(["run", "toy", "--out", str(tmp_path / "b"), "-q", "--device", "cpu"]) == 0
    a = (tmp_path / "a" / "results.csv").read_text()
    assert a == (tmp_path / "b" / "results.csv").read_text()
    assert len(a.strip().splitlines()) == 1 + 6
    man = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert man["study"] == "toy" and man["seed"] == 0 and "git_revision" in man and "versions" in man
    assert (tmp_path / "a" / "toy.txt").read_text() == "6"
    assert main(["run", "toy", "--out", str(tmp_path / "c"), "-q", "--seed", "1", "--device", "cpu"]) == 0
    assert (tmp_path / "c" / "results.csv").read_text() != a


def test_resume_skips_finished_cells_and_reproduces_the_uninterrupted_result(tmp_path):
    study = ToyStudy()
    cfg = study.default()
    run_study(study, cfg, tmp_path / "full", seed=3, device="cpu", progress=False)

    class Interrupt(Exception):
        pass

    original = ToyStudy.run_cell

    def dying(self, cfg, cell, ctx):
        if len(ToyStudy.calls) == 3:
            raise Interrupt
        return original(self, cfg, cell, ctx)

    ToyStudy.calls = []
    ToyStudy.run_cell = dying
    try:
        with pytest.raises(Interrupt):
            run_study(study, cfg, tmp_path / "resumed", seed=3, device="cpu", progress=False)
    finally:
        ToyStudy.run_cell = original
    assert len(list((tmp_path / "resumed" / "cells").glob("*.json"))) == 3
    assert not (tmp_path / "resumed" / "results.csv").exists()
    ToyStudy.calls = []
    res = run_study(study, cfg, tmp_path / "resumed", seed=3, device="cpu", progress=False)
    assert len(res.skipped) == 3 and len(res.ran) == 3 and len(ToyStudy.calls) == 3
    assert (tmp_path / "resumed" / "results.csv").read_text() == (
        tmp_path / "full" / "results.csv"
    ).read_text()
    assert not list((tmp_path / "resumed").rglob("*.tmp"))


def test_cell_seed_depends_on_cell_not_order():
    assert cell_seed(0, {"a": 1, "b": 2}, "s") == cell_seed(0, {"b": 2, "a": 1}, "s")
    assert cell_seed(0, {"a": 1}, "s") != cell_seed(1, {"a": 1}, "s")


def test_refuses_to_mix_runs_with_different_config(tmp_path, capsys):
    assert main(["run", "toy", "--out", str(tmp_path), "-q", "--device", "cpu"]) == 0
    assert main(["run", "toy", "--out", str(tmp_path), "-q", "--set", "scale=2", "--device", "cpu"]) == 2
    assert "holds a run of toy with a different config or seed" in capsys.readouterr().err


def test_set_overrides_types_and_errors():
    cfg = ToyConfig()
    new = apply_overrides(cfg, ["sizes=4,5", "scale=0.5", "repeats=3", "label=x", "flag=true"])
    assert new == ToyConfig(sizes=(4, 5), scale=0.5, repeats=3, label="x", flag=True)
    with pytest.raises(
        ValueError, match=r"unknown key 'nope'; valid keys: sizes, scale, repeats, label, flag"
    ):
        apply_overrides(cfg, ["nope=1"])
    with pytest.raises(ValueError, match=r"--set repeats='two': expected an integer; valid keys: sizes"):
        apply_overrides(cfg, ["repeats=two"])
    with pytest.raises(ValueError, match=r"--set expects key=value; got 'scale'"):
        apply_overrides(cfg, ["scale"])


def test_cli_errors_list_valid_names(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "nope"])
    assert exc.value.code == 2
    assert "unknown study 'nope'; valid studies:" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["run", "toy", "--set", "bogus=1"])
    assert "valid keys: sizes, scale, repeats, label, flag" in capsys.readouterr().err


def test_plot_dir_redraws_from_cells(tmp_path):
    assert main(["run", "toy", "--smoke", "--out", str(tmp_path), "-q", "--no-plot", "--device", "cpu"]) == 0
    assert not (tmp_path / "toy.txt").exists()
    assert main(["plot", str(tmp_path)]) == 0
    assert (tmp_path / "toy.txt").read_text() == "4"


def test_list_shows_studies_and_their_time_at_each_size(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "toy" in out and "a toy study for runner tests" in out
    assert "time: smoke 1 s, default 2 s, full 3 s" in out


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def test_full_and_smoke_together_fail_with_a_clear_message(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "toy", "--smoke", "--full", "--out", str(tmp_path), "-q"])
    assert exc.value.code == 2
    assert "argument --full: not allowed with argument --smoke" in capsys.readouterr().err
    assert not tmp_path.joinpath("manifest.json").exists()


@pytest.mark.parametrize("flags, preset", [([], "default"), (["--smoke"], "smoke"), (["--full"], "full")])
def test_manifest_records_the_preset_and_its_config(tmp_path, flags, preset):
    out = tmp_path / preset
    assert main(["run", "toy", *flags, "--out", str(out), "-q", "--no-plot", "--device", "cpu"]) == 0
    man = _manifest(out)
    assert man["preset"] == preset
    want = dataclasses.asdict(ToyStudy().preset(preset))
    assert {k: man["config"][k] for k in want} == {
        k: list(v) if isinstance(v, tuple) else v for k, v in want.items()
    }
    assert len((out / "results.csv").read_text().strip().splitlines()) == 1 + len(
        ToyStudy().cells(ToyStudy().preset(preset))
    )


def test_set_applies_on_top_of_the_full_preset(tmp_path):
    out = tmp_path / "f"
    assert (
        main(
            [
                "run",
                "toy",
                "--full",
                "--set",
                "repeats=2",
                "--set",
                "sizes=",
                "--set",
                "sizes=7",
                "--out",
                str(out),
                "-q",
                "--no-plot",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    man = _manifest(out)
    assert man["preset"] == "full" and man["config"]["label"] == "full"  # from full(), not the default
    assert man["config"]["repeats"] == 2 and man["config"]["sizes"] == [7]  # later --set wins
    assert ToyStudy.calls == [{"size": 7, "rep": 0}, {"size": 7, "rep": 1}]


def test_default_output_folder_names_the_preset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "toy", "--full", "-q", "--no-plot", "--device", "cpu"]) == 0
    assert main(["run", "toy", "--smoke", "-q", "--no-plot", "--device", "cpu"]) == 0
    assert _manifest(tmp_path / "runs" / "toy-full")["preset"] == "full"
    assert _manifest(tmp_path / "runs" / "toy-smoke")["preset"] == "smoke"


def test_run_study_records_no_preset_for_a_hand_made_config_and_rejects_unknown_ones(tmp_path):
    study = ToyStudy()
    run_study(study, ToyConfig(sizes=(1,)), tmp_path / "a", device="cpu", progress=False, plot=False)
    assert _manifest(tmp_path / "a")["preset"] is None
    with pytest.raises(ValueError, match=r"`preset` must be one of smoke, default, full or None; got 'huge'"):
        run_study(study, ToyConfig(), tmp_path / "b", device="cpu", progress=False, preset="huge")
    with pytest.raises(ValueError, match=r"`name` must be one of smoke, default, full; got 'huge'"):
        study.preset("huge")


def test_base_class_full_is_the_default():
    class Plain(Study):
        Config = ToyConfig

    assert PRESETS == ("smoke", "default", "full")
    assert Plain().full() == Plain().default() == ToyConfig()


@dataclasses.dataclass(frozen=True)
class TypedConfig:
    dims: tuple[int, ...] = (1, 2)
    hidden: tuple[int, ...] = ()
    ks: tuple[float, ...] = ()
    scale: float = 1  # an int default of a float field


def test_set_types_come_from_annotations_and_empty_text_is_the_empty_tuple():
    cfg = apply_overrides(TypedConfig(), ["dims=", "hidden=64, 32", "ks=0.5", "scale=0.25"])
    assert cfg == TypedConfig(dims=(), hidden=(64, 32), ks=(0.5,), scale=0.25)
    assert type(cfg.hidden[0]) is int and type(cfg.ks[0]) is float
    msg = r"--set hidden='64,x': expected comma-separated values of type int \('x' is not\); valid keys: dims"
    with pytest.raises(ValueError, match=msg):
        apply_overrides(TypedConfig(), ["hidden=64,x"])


_MINE = ("gaussian", "iwae-snr", "blr", "doubly-stochastic", "discrete-vae", "flows-2d", "categorical")
_DOCS = Path(__file__).resolve().parents[2] / "docs" / "studies"


@pytest.mark.parametrize("name", registry.study_names())
def test_full_flag_hands_the_study_its_full_config(name, tmp_path, monkeypatch):
    """Through the CLI's parsing only: run_study is replaced, no full-size study runs."""
    import scg.studies.runner as runner

    seen = {}

    def fake_run_study(study, cfg, out, **kwargs):
        seen.update(study=study.name, cfg=cfg, preset=kwargs["preset"])
        return runner.RunResult(out=Path(out))

    monkeypatch.setattr(runner, "run_study", fake_run_study)
    assert main(["run", name, "--full", "--out", str(tmp_path), "-q"]) == 0
    study = registry.get_study(name)
    assert seen == {"study": name, "cfg": study.full(), "preset": "full"}
    assert study.cells(study.full())  # the full config is valid (cells() validates it)
    assert set(study.time) >= {"smoke", "full"}


@pytest.mark.parametrize("name", _MINE)
def test_full_size_differs_from_the_default_and_its_readme_uses_the_flag(name):
    study = registry.get_study(name)
    assert study.full() != study.default() and study.smoke() != study.default()
    assert set(study.time) == set(PRESETS)
    readme = (_DOCS / name / "README.md").read_text()
    assert f"scg-study run {name} --full" in readme or f"scg-study run {name} --device cuda --full" in readme


def test_a_deleted_manifest_and_a_changed_config_never_read_back_old_cells(tmp_path):
    """`run A; rm manifest.json results.csv; run B` recomputes every cell of B (cells are keyed by config)."""
    out = tmp_path / "x"
    first = run_study(ToyStudy(), ToyConfig(scale=1.0), out, progress=False, plot=False)
    (out / "manifest.json").unlink()
    (out / "results.csv").unlink()
    second = run_study(ToyStudy(), ToyConfig(scale=20.0), out, progress=False, plot=False)
    assert second.skipped == [] and len(second.ran) == len(first.ran)
    assert [r["value"] for r in second.rows] == pytest.approx(
        [20.0 * r["value"] for r in first.rows], rel=1e-6
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["scale"] == 20.0


def test_two_processes_with_different_configs_into_one_fresh_folder_never_mix(tmp_path):
    """Started together, one of them is refused (the manifest is created atomically); the cells
    and results.csv in the folder all belong to the one that ran."""
    import subprocess

    script = (
        "import sys, dataclasses, json; sys.path.insert(0, {tests!r});"
        "from test_runner import ToyStudy, ToyConfig; from scg.studies.runner import run_study\n"
        "try:\n"
        "    run_study(ToyStudy(), ToyConfig(scale=float(sys.argv[1]), repeats=3), {out!r}, progress=False, plot=False)\n"
        "    print('ran')\n"
        "except ValueError as e:\n"
        "    print('refused', e)\n"
    )
    for trial in range(2):
        out = tmp_path / f"race{trial}"
        code = script.format(tests=str(Path(__file__).parent), out=str(out))
        procs = [
            subprocess.Popen([sys.executable, "-c", code, s], stdout=subprocess.PIPE, text=True)
            for s in ("1.0", "5.0")
        ]
        outputs = [p.communicate(timeout=120)[0].strip() for p in procs]
        assert sorted(o.split()[0] for o in outputs) == ["ran", "refused"], outputs
        digest = json.loads((out / "manifest.json").read_text())["config_hash"]
        assert all(p.name.startswith(digest) for p in (out / "cells").glob("*.json"))


def test_result_files_get_the_mode_the_umask_gives(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        run_study(ToyStudy(), ToyConfig(), tmp_path / "m", progress=False, plot=False)
    finally:
        os.umask(old)
    for name in ("manifest.json", "results.csv"):
        assert stat.S_IMODE((tmp_path / "m" / name).stat().st_mode) == 0o644, name
