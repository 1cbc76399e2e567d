"""The three code folders install into one namespace (DESIGN.md), in every install mode."""

from __future__ import annotations

import pathlib
import tomllib

import pytest

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


@pytest.mark.parametrize("module", ["scg.models", "scg.studies", "scg.studies.cli", "scg.testing", "scg.graph"])
def test_namespace_imports(module):
    __import__(module)
