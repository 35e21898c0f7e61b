"""`wuma product/pool/campaign/ledger/voucher` as an operator runs them."""

import json
import os

import pytest
from click.testing import CliRunner

from cli.main import cli
from conftest_world import build_world


@pytest.fixture
def run(tmp_path):
    w = build_world(tmp_path / "wuma-data")
    w["data"].close()
    runner = CliRunner()

    def invoke(*args, input=None, ok=True):
        res = runner.invoke(cli, ["--data", str(tmp_path / "wuma-data"), *args], input=input,
                            catch_exceptions=False)
        if ok:
            assert res.exit_code == 0, res.output
        else:
            assert res.exit_code != 0 and "Traceback" not in res.output
        return res

    invoke.world = w
    return invoke


def test_pool_campaign_lifecycle_and_audit(run, tmp_path):
    run("product", "add", "SKU-1", "--name", "Green tea 500ml", "--gtin", "06901234567892")
    assert "wrong check digit" in run("product", "add", "SKU-2", "--name", "x", "--gtin", "06901234567890",
                                      ok=False).output
    out = json.loads(run("pool", "create", "gd", "--total", "50000", "--daily", "10000",
                         "--region-cap", "44=50000", "--json").output)
    assert out["regions"] == {"44": 50000}
    assert "PREFIX=AMOUNT" in run("pool", "create", "x", "--total", "5", "--region-cap", "44", ok=False).output
    assert "PREFIX=AMOUNT" in run("pool", "create", "x", "--total", "5", "--region-cap", "44=\u00b2", ok=False).output
    assert "4401 is capped twice" in run("pool", "create", "x", "--total", "5", "--region-cap", "4401=5",
                                         "--region-cap", "4401=7", ok=False).output
    rule = {"name": "Cap draw", "pool": "gd", "trigger": {"code_role": "cap_inner", "actor_role": "consumer"},
            "target": {"skus": ["SKU-1"]}, "window": {"start": "2026-01-01T00:00", "end": "2030-01-01T00:00"},
            "reward": {"kind": "draw", "tiers": [{"amount": 100, "odds": 0.5}, {"amount": 0, "odds": 0.5}]}}
    f = tmp_path / "rule.json"
    f.write_text(json.dumps(rule))
    c = json.loads(run("campaign", "create", str(f), "--json").output)
    assert c["status"] == "active" and c["window"]["start"] == 1767196800.0
    overlap = run("campaign", "create", "-", input=json.dumps(rule), ok=False).output
    assert f"campaign {c['id']} (Cap draw) already rewards" in overlap
    assert "close it (a paused campaign keeps its place), or narrow this one" in overlap
    bad = dict(rule, reward={"kind": "draw", "tiers": [{"amount": 100, "odds": 0.4}]})
    assert "odds must sum to 1" in run("campaign", "create", "-", input=json.dumps(bad), ok=False).output
    assert "not valid JSON" in run("campaign", "create", "-", input="{nope", ok=False).output
    run("campaign", "pause", str(c["id"]))
    assert "cannot pause" in run("campaign", "pause", str(c["id"]), ok=False).output
    # a paused campaign keeps its place: an overlapping one is still refused
    assert f"campaign {c['id']} (Cap draw) already rewards" in run(
        "campaign", "create", "-", input=json.dumps(rule), ok=False).output
    lines = run("campaign", "list", "--status", "paused").output.splitlines()
    assert len(lines) == 1 and "Cap draw" in lines[0]
    run("campaign", "resume", str(c["id"]))
    run("campaign", "close", str(c["id"]))
    assert json.loads(run("campaign", "show", str(c["id"])).output)["status"] == "closed"
    assert json.loads(run("campaign", "show", str(c["id"]), "--json").output)["status"] == "closed"
    assert "no campaign 99" in run("campaign", "pause", "99", ok=False).output
    run("pool", "top-up", "gd", "1000")
    for _ in range(2):  # a script's retry with its key: done once
        run("pool", "top-up", "gd", "500", "--idempotency-key", "fin-2026-11-30-1")
    assert "not 700" in run("pool", "top-up", "gd", "700", "--idempotency-key", "fin-2026-11-30-1", ok=False).output
    shown = json.loads(run("pool", "show", "gd", "--json").output)
    assert shown["total"] == 51500 and shown["spent"] == 0
    assert run("ledger", "list").output == ""
    assert "no such voucher" in run("voucher", "show", "VNOPE", ok=False).output
    assert "no such voucher" in run("voucher", "show", "VNOPE", "--json", ok=False).output

    from admin.audit import AuditLog
    from engine import DataFolder

    with DataFolder(tmp_path / "wuma-data") as data:
        actions = [(e["action"], e["who"].startswith("cli:")) for e in AuditLog(data.store).entries()]
    assert actions == [("product.add", True), ("pool.create", True), ("campaign.create", True),
                       ("campaign.pause", True), ("campaign.resume", True), ("campaign.close", True),
                       ("pool.top_up", True), ("pool.top_up", True)]


def test_campaign_rule_file_with_utf8_bom(run, tmp_path):
    run("product", "add", "SKU-1", "--name", "Green tea 500ml")
    run("pool", "create", "gd", "--total", "50000")
    rule = {"name": "Cap draw", "pool": "gd", "trigger": {"code_role": "cap_inner", "actor_role": "consumer"},
            "target": {"skus": ["SKU-1"]}, "window": {"start": "2026-01-01T00:00", "end": "2030-01-01T00:00"},
            "reward": {"kind": "fixed", "amount": 100}}
    f = tmp_path / "rule.json"
    f.write_bytes(b"\xef\xbb\xbf" + json.dumps(rule).encode())
    assert json.loads(run("campaign", "create", str(f), "--json").output)["name"] == "Cap draw"
    res = run("campaign", "create", "-", input="\ufeff" + json.dumps(dict(rule, target={"skus": ["X"]})))
    assert "created, active" in res.output


def test_campaign_rule_in_utf16_or_not_utf8_is_named(run, tmp_path):
    """Read with the locale's or a strict UTF-8 codec, a UTF-16 rule said "not valid JSON
    ('utf-8' codec can't decode byte 0xff ...)"; it is now refused as what it is."""
    run("product", "add", "SKU-1", "--name", "Green tea 500ml")
    run("pool", "create", "gd", "--total", "50000")
    rule = json.dumps({"name": "Cap draw", "pool": "gd",
                       "trigger": {"code_role": "cap_inner", "actor_role": "consumer"},
                       "target": {"skus": ["SKU-1"]}, "reward": {"kind": "fixed", "amount": 100},
                       "window": {"start": "2026-01-01T00:00", "end": "2030-01-01T00:00"}})
    f = tmp_path / "rule.json"
    f.write_text(rule, encoding="utf-16")  # Notepad's "Unicode"
    res = run("campaign", "create", str(f), ok=False)
    assert res.exit_code == 1 and f"Error: {f}: the file is UTF-16; save it as UTF-8" in res.output
    res = run("campaign", "create", "-", input=rule.encode("utf-16"), ok=False)
    assert res.exit_code == 1 and "Error: <stdin>: the file is UTF-16; save it as UTF-8" in res.output
    res = run("campaign", "create", "-", input=rule.replace("Cap draw", "Café").encode("latin-1"), ok=False)
    assert res.exit_code == 1 and "<stdin>: not UTF-8 text (byte 0xE9 at offset 13" in res.output
    assert "not valid JSON" not in res.output
    assert run("campaign", "list").output == ""


def test_a_voucher_redeemed_twice_by_its_store_credits_once(run, tmp_path):
    """The store's retry (its network dropped the first answer) is told so, not credited again."""
    import time

    from admin.service import Admin
    from engine import DataFolder
    from engine.scan import ScanRequest

    w, now = run.world, time.time()
    run("pool", "create", "p", "--total", "10000")
    rule = {"name": "Swap", "pool": "p", "trigger": {"code_role": "cap_inner", "actor_role": "consumer"},
            "target": {"batches": [w["caps"].id]}, "window": {"start": now - 3600, "end": now + 86400},
            "reward": {"kind": "fixed", "amount": 500, "payout": "voucher", "valid_days": 7}}
    run("campaign", "create", "-", input=json.dumps(rule))
    with DataFolder(tmp_path / "wuma-data") as data:
        admin = Admin(data)
        try:
            code = data.codes.code(w["caps"], 0, "cap_inner")
            got = admin.scan_pipeline().scan(ScanRequest(code, actor_id="u1", region="440106"))
            voucher = got.rewards[0]["voucher"]
        finally:
            admin.close()
    first = run("voucher", "redeem", voucher, "--store", "s-1").output
    assert first.strip() == f"voucher {voucher} redeemed by s-1: 5.00 yuan credited"
    again = run("voucher", "redeem", voucher, "--store", "s-1").output
    assert again.strip() == f"voucher {voucher} was already redeemed by s-1: nothing credited again"
    payable = [json.loads(x) for x in run("ledger", "list", "--json").output.splitlines()]
    assert [e["kind"] for e in payable].count("redeem") == 1


@pytest.mark.parametrize("args", [("ledger", "list", "--after=-5"), ("ledger", "list", f"--after={2**64}"),
                                  ("payout", "status", "--seq=-1"), ("payout", "retry", "--", "-1"),
                                  ("ledger", "reverse", "--reason", "x", "--", str(2**64))])
def test_out_of_range_sequence_numbers_are_messages(run, args):
    res = run(*args, ok=False)
    assert res.exit_code in (1, 2) and "Error:" in res.output


def test_ledger_export_to_standard_output(run, tmp_path):
    """``-o -`` writes the export to standard output (a file named "-" before); the count
    goes to standard error, so a pipe gets the CSV alone."""
    res = run("ledger", "export", "-o", "-")
    assert res.stdout.splitlines()[0].startswith("seq,at,kind,amount")
    assert "0 payable entries written" in res.stderr
    assert not (tmp_path / "-").exists() and not os.path.exists("-")  # the CLI runs in the cwd


def test_a_campaign_rule_nested_too_deeply_is_a_message(run):
    assert "nested too deeply" in run("campaign", "create", "-", input="[" * 100_000, ok=False).output


def test_ledger_list_pages_and_refuses_a_limit_below_one(run):
    """`--limit 0` printed one entry (the check ran after the first); the library refuses
    it too."""
    res = run("ledger", "list", "--limit", "0", ok=False)
    assert res.exit_code == 2 and "0 is not in the range x>=1" in res.output
    from admin.ledger import Ledger
    from engine import DataFolder

    with DataFolder(run.world["data"].path) as data:  # NOTE: the CLI has closed it
        with pytest.raises(ValueError, match="limit must be a whole number of at least 1"):
            Ledger(data.store).entries(limit=0)


def test_void_of_an_empty_range_says_so(run):
    """5:3 is no range (it was "outside batch 1 (0:48)")."""
    res = run("void", "--range", "1:5:3", ok=False)
    assert "serial range 5:3 is empty: give START:STOP with START < STOP" in res.output
