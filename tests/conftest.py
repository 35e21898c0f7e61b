from __future__ import annotations

import pytest

from engine import DataFolder


@pytest.fixture
def data(tmp_path):
    """A fresh data folder (beverage preset) on disk."""
    d = DataFolder.init(tmp_path / "wuma-data")
    yield d
    d.close()


@pytest.fixture(scope="module")
def shared_data(tmp_path_factory):
    """A data folder shared by a module's tests that only read it: a batch of 1,000 caps
    (batch 1)."""
    d = DataFolder.init(tmp_path_factory.mktemp("shared") / "wuma-data")
    d.create_batch("cap", 1000)
    yield d
    d.close()


from conftest_world import build_world, production_run  # noqa: E402,F401  (re-exported for tests)


@pytest.fixture
def run(data):
    """A small production run on ``data``: see :func:`conftest_world.production_run`."""
    return production_run(data)
