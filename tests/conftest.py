from __future__ import annotations

import pytest

from engine import DataFolder


@pytest.fixture
def data(tmp_path):
    """A fresh data folder (beverage preset) on disk."""
    d = DataFolder.init(tmp_path / "wuma-data")
    yield d
    d.close()


from conftest_world import build_world  # noqa: E402,F401  (re-exported for tests)
