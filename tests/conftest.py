from __future__ import annotations

import pytest

from engine import DataFolder


@pytest.fixture
def data(tmp_path):
    """A fresh data folder (beverage preset) on disk."""
    d = DataFolder.init(tmp_path / "wuma-data")
    yield d
    d.close()


from conftest_world import build_world, production_run  # noqa: E402,F401  (re-exported for tests)


@pytest.fixture
def run(data):
    """A small production run on ``data``: see :func:`conftest_world.production_run`."""
    return production_run(data)
