"""Listing bans a page at a time: after a botnet (thousands of addresses banned a day, kept
for months as evidence) `wuma bans list --all` and the admin API read one page, not every
ban ever recorded; the pages, one after the other, hold every ban exactly once."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from engine import abuse
from engine.abuse import AbuseGuard, AbuseLimits, subject
from engine.store import Store

THRESHOLD = 1  # the second invalid code bans


@pytest.fixture
def guard(tmp_path):
    store = Store(tmp_path / "db")
    g = AbuseGuard(store, tmp_path / "db-counters",
                   AbuseLimits(invalid_threshold=THRESHOLD, invalid_window_s=60, ban_s=300))
    yield g
    g.close()
    store.close()


def _ban(guard, s: str, at: float) -> float:
    """Ban ``s`` from ``at`` on; when the ban was made."""
    threshold = guard.limits.invalid_threshold
    for i in range(threshold + 1):
        guard.record_invalid([s], f"GUESS{i}", now=at + i)
    return at + threshold


def _botnet(guard, n: int, *, again: int = 0) -> dict[str, list[float]]:
    """``n`` addresses banned once at t=1000; every 7th banned ``again`` more times (each
    once the one before ended), every 5th of those lifted; {subject: when each of its bans
    was made}."""
    made: dict[str, list[float]] = {}
    for i in range(n):
        s = subject("ip", f"10.{i // 250}.{i % 250}.1")
        made[s] = [_ban(guard, s, 1000.0)]
    for k, s in enumerate(list(made)[::7]):
        for r in range(again):
            made[s].append(_ban(guard, s, 1000.0 + 10_000 * (r + 1)))
        if k % 5 == 0:
            guard.lift(s, now=made[s][-1] + 1)
    return made


def _expected(made: dict[str, list[float]]) -> list[tuple[str, float]]:
    """Every ban recorded, as the listing orders them: by subject, then oldest first."""
    return [(s, at) for s in sorted(made, key=str.encode) for at in made[s]]


def test_all_bans_are_listed_a_page_at_a_time_each_exactly_once(guard):
    made = _botnet(guard, 300, again=2)
    now = 1000.0 + 2 * 10_000 + 10
    got, after, pages = [], None, 0
    while page := guard.list_bans(now, include_inactive=True, limit=7, after=after):
        subjects = [b.subject for b in page]
        assert len(set(subjects)) <= 7  # the limit counts subjects: their bans stay together
        assert subjects == sorted(subjects, key=str.encode)
        got += [(b.subject, b.created_at) for b in page]
        after, pages = page[-1].subject, pages + 1
    assert got == _expected(made) and pages == -(-300 // 7)
    lifted = [b for b in guard.list_bans(now, include_inactive=True, limit=1000) if b.lifted_at is not None]
    assert len(lifted) == len(list(made)[::7][::5])


def test_a_page_reads_only_its_own_bans(guard, monkeypatch):
    """PERF: the whole history (every record with its evidence) was read and sorted for
    every page of `--all`: after months of bans, millions of records a listing."""
    made = _botnet(guard, 200, again=2)
    decoded = []
    real = abuse.unpack
    monkeypatch.setattr(abuse, "unpack", lambda raw: decoded.append(1) or real(raw))
    page = guard.list_bans(20_000.0, include_inactive=True, limit=5, after=sorted(made)[100])
    assert len({b.subject for b in page}) == 5
    assert len(decoded) <= 5 * 3  # the page's subjects, each at most 3 bans here


def test_the_default_page_is_bounded(guard):
    made = _botnet(guard, abuse.BANS_PAGE + 3)
    first = guard.list_bans(2000.0, include_inactive=True)
    assert len(first) == abuse.BANS_PAGE
    rest = guard.list_bans(2000.0, include_inactive=True, after=first[-1].subject)
    assert [(b.subject, b.created_at) for b in first + rest] == _expected(made)


def test_wuma_bans_list_pages_with_limit_and_after(tmp_path):
    from cli.main import cli
    from engine import DataFolder

    runner = CliRunner()
    path = tmp_path / "wuma-data"

    def wuma(*args):
        res = runner.invoke(cli, ["--data", str(path), *args], catch_exceptions=False)
        assert res.exit_code == 0, res.output
        return res

    wuma("init")
    with DataFolder(path) as data:
        limit = data.abuse.limits.invalid_threshold
        banned = sorted(subject("ip", f"203.0.113.{i}") for i in range(5))
        for s in banned:
            for i in range(limit + 1):
                data.abuse.record_invalid([s], f"GUESS{i}", now=1000.0 + i)  # ended long ago
    lines, after = [], None
    while True:
        res = wuma("bans", "list", "--all", "--limit", "2", *(("--after", after) if after else ()))
        page = res.stdout.splitlines()
        if not page:
            break
        assert len(page) <= 2 and all(line.split("\t")[1].startswith("ended ") for line in page)
        lines += page
        after = page[-1].split("\t")[0]
        if len(page) == 2:  # a full page: where the next one starts, on stderr
            assert f"--after {after}" in res.stderr
    assert [line.split("\t")[0] for line in lines] == banned
    got = [json.loads(x)["subject"] for x in wuma("bans", "list", "--all", "--json", "--limit", "3",
                                                  "--after", banned[0]).stdout.splitlines()]
    assert got == banned[1:4]


def test_the_admin_api_pages_every_ban(tmp_path):
    from admin_world import build_admin_world
    from falcon import testing

    from admin.http import create_app
    from admin.openapi import ADMIN_OPENAPI

    w = build_admin_world(tmp_path / "wuma-data")
    try:
        guard = w["data"].abuse
        made = _botnet(guard, 40, again=1)
        client = testing.TestClient(create_app(w["data"], admin=w["admin"]))
        auth = {"Authorization": f"Bearer {w['tokens']['viewer']}"}
        got, after = [], ""
        while page := client.simulate_get(
                "/admin/api/bans", params={"all": "true", "limit": "3", **({"after": after} if after else {})},
                headers=auth).json:
            assert len({b["subject"] for b in page}) <= 3
            got += [(b["subject"], b["created_at"]) for b in page]
            after = page[-1]["subject"]
        assert got == _expected(made)
        params = {p["name"]: p for p in ADMIN_OPENAPI["paths"]["/admin/api/bans"]["get"]["parameters"]}
        assert "subjects" in params["limit"]["description"]
    finally:
        w["admin"].close()
        w["data"].close()
