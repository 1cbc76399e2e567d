"""The three code folders install into one namespace (DESIGN.md), in every install mode."""

from __future__ import annotations

import pathlib

import pytest
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    roots = {"scg": ROOT / "scg", "scg.models": ROOT / "models", "scg.studies": ROOT / "studies"}
    found = set()
    for name, folder in roots.items():
        for init in folder.rglob("__init__.py"):
            rel = init.parent.relative_to(folder).parts
            found.add(".".join((name, *rel)))
    assert found == listed, f"pyproject packages {sorted(listed)} != package folders {sorted(found)}"


@pytest.mark.parametrize(
    "module", ["scg.models", "scg.studies", "scg.studies.cli", "scg.testing", "scg.graph"]
)
def test_namespace_imports(module):
    __import__(module)


def test_import_scg_does_not_import_scipy_and_testing_loads_on_use():
    import subprocess
    import sys

    code = (
        "import sys, scg; assert 'scipy' not in sys.modules, 'scipy imported by import scg'; "
        "scg.testing.assert_unbiased; assert 'scipy' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_distribution_name_license_and_core_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == "scg-estimators"  # "scg" on the package index is another project
    assert project["license"] == "MIT"
    assert sorted(d.split(">")[0] for d in project["dependencies"]) == ["numpy", "scipy", "torch"]
    assert {"models", "studies", "test"} <= set(project["optional-dependencies"])
