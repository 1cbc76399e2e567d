"""Shared test configuration.

Layout, mirroring the packages: ``library/`` tests ``scg`` itself (a folder named ``scg``
here would shadow the package as a namespace package whenever ``tests/`` is on
``sys.path``, as it is for the torchrun worker), ``models/`` tests ``scg.models``,
``studies/`` tests ``scg.studies`` and ``scg-study``; the files left in ``tests/`` cut
across them (README examples, packaging, bad inputs, distributed runs, benchmarks).

Randomised statistical tests follow torch.distributions' note: each test seeds
its generator, states a failure rate (1e-3 unless said otherwise) and uses a
Bonferroni-corrected threshold. Hypothesis runs derandomized (profile "ci", the
default) so every run draws the same examples.

Every test is seeded and its default dtype guarded (autouse); a module can opt in to
``one_thread`` / ``one_thread_module`` (one intra-op thread per test / per module) and
``float64`` (float64 default dtype per test) with ``pytestmark = pytest.mark.usefixtures(...)``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    database=None,
    max_examples=25,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("dev", deadline=None, max_examples=100)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _default_dtype_guard():
    """Fail loudly if a test leaks a changed default dtype to the tests after it."""
    before = torch.get_default_dtype()
    yield
    after = torch.get_default_dtype()
    torch.set_default_dtype(before)
    assert after == before, f"test changed the default dtype to {after} and did not restore it"


# Opt-in fixtures: a module asks for one with ``pytestmark = pytest.mark.usefixtures("<name>")``.
# They run after the autouse ones above, so the dtype guard sees the default dtype from before
# ``float64`` sets it and after ``float64`` has restored it.


@contextlib.contextmanager
def _num_threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread for each test, the previous number restored after it: the tests are
    many tiny ops, which two threads on a shared, busy machine slow down a hundredfold (spin-waiting)."""
    with _num_threads(1):
        yield


@pytest.fixture(scope="module")
def one_thread_module() -> Iterator[None]:
    """``one_thread`` for a whole module: set before its first test, restored after its last."""
    with _num_threads(1):
        yield


@pytest.fixture
def float64() -> Iterator[None]:
    """float64 default dtype for each test; the previous default restored after it."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``cuda`` run where CUDA is available and are skipped elsewhere (``-m cuda`` selects them)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)
