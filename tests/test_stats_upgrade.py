"""Statistics folded by the release before region codes were read by whole levels: that
release filed a province-level code (440000, Guangdong) under a city "4400". Its counters
stay on disk as they are; reports read them as this release folds: no city."""

from __future__ import annotations

import random

import pytest

from admin import stats as stats_module
from admin.service import Admin
from admin.stats import UNKNOWN, Stats
from conftest_world import Clock, build_world
from engine.scan import ScanRequest

T0 = 1_800_000_000.0  # 2027-01-15 16:00 China time
DAY = "2027-01-15"
#: A province-level code written four ways, a city, a county, a town, a city elsewhere.
REGIONS = ("440000", "4400", "440000000", "440000000000", "440100", "440106", "440183100", "3101")


@pytest.fixture
def world(tmp_path):
    w = build_world(tmp_path / "wuma-data", rate_per_minute=100_000)
    w["clock"] = Clock()
    w["clock"].t = T0
    w["admin"] = Admin(w["data"], rng=random.Random(7), clock=w["clock"])
    w["pipe"] = w["admin"].scan_pipeline()
    yield w
    w["admin"].close()
    w["data"].close()


def _scan(w, serial: int, region: str) -> None:
    code = w["data"].codes.code(w["caps"], serial, "cap_inner")
    w["pipe"].scan(ScanRequest(code, actor_id=f"u{serial}", region=region))


def _fold_as_the_earlier_release(w, monkeypatch) -> None:
    """Fold what is new as the release before did: it read a region as written, its
    province the first 2 digits and its city the first 4 (``git show 3336a04^:admin/stats.py``)."""
    with monkeypatch.context() as m:
        m.setattr(stats_module, "region_prefix", lambda region: region)
        m.setattr(stats_module, "_city", lambda region: region[:4] if len(region) >= 4 else UNKNOWN,
                  raising=False)
        Stats(w["data"], w["admin"]).fold()


def test_cities_folded_by_the_earlier_release_are_read_by_whole_levels(world, monkeypatch):
    for i, region in enumerate(REGIONS):
        _scan(world, i, region)
    _fold_as_the_earlier_release(world, monkeypatch)
    with world["data"].store.read() as txn:  # as it left them: a city "4400"
        assert txn.get(f"d\0{DAY}\0city\x004400".encode(), db=world["data"].store.db("adm_stats")) is not None
    for i, region in enumerate(REGIONS):  # the same scans again, after the upgrade
        _scan(world, 10 + i, region)
    day = Stats(world["data"], world["admin"]).report(days=1, now=T0)["scans"]["by_day"][DAY]
    assert day["city"] == {UNKNOWN: 8, "4401": 6, "3101": 2}
    assert day["province"] == {"44": 14, "31": 2}
    assert sum(day["city"].values()) == day["total"] == 16


def test_a_city_level_of_zeros_names_no_city(world):
    """440012 (a county under a city "00") names no city: as 440000, it is not city 4400,
    whichever release folded it."""
    for i, region in enumerate(("440012", "44001", "440106")):
        _scan(world, i, region)
    day = Stats(world["data"], world["admin"]).report(days=1, now=T0)["scans"]["by_day"][DAY]
    assert day["city"] == {UNKNOWN: 2, "4401": 1}
