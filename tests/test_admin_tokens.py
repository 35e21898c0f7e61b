"""Admin tokens: shown once, stored hashed, reissued, roles and their permissions, audited
changes."""

import hashlib
import json

import pytest
from click.testing import CliRunner

from admin.audit import AuditLog
from admin.tokens import PERMISSIONS, ROLES, AdminToken, AdminTokens
from cli.main import cli
from engine import Conflict, DataFolder, NotFound
from engine.store import Store
from engine.tokens import new_token, parse_token, secret_matches


@pytest.fixture
def tokens(tmp_path):
    store = Store(tmp_path / "db")
    audit = AuditLog(store)
    yield AdminTokens(store, audit), audit, tmp_path
    store.close()


def test_token_is_shown_once_and_stored_hashed(tokens):
    reg, audit, path = tokens
    record, token = reg.add("ops.lead_1", "admin", who="cli:alice", now=1000.0)
    assert token.startswith("wma_ops.lead_1_") and len(token.rsplit("_", 1)[1]) == 64
    assert reg.authenticate(token) == record == AdminToken("ops.lead_1", "admin", 1000.0, "cli:alice")
    raw = (path / "db" / "data.mdb").read_bytes()
    assert token.encode() not in raw and token.rsplit("_", 1)[1].encode() not in raw
    assert audit.entries() == [{"seq": 1, "at": 1000.0, "who": "cli:alice", "action": "token.add",
                                "target": "ops.lead_1", "details": {"role": "admin"}}]


def test_wrong_revoked_and_malformed_tokens(tokens):
    reg, audit, _ = tokens
    _, token = reg.add("viewer-1", "viewer", who="cli:alice")
    flipped = token[:-1] + ("0" if token[-1] != "0" else "1")
    for bad in (flipped, "wma_viewer-1_", "wma__" + "0" * 64, "wm_viewer-1_" + token[-64:], "Bearer " + token,
                "wma_nobody_" + "0" * 64, "wma_" + "中" * 150 + "_00", "", None, 7, "x" * 10_000):
        assert reg.authenticate(bad) is None
    revoked = reg.revoke("viewer-1", who="token:root", now=2000.0)
    assert revoked.revoked_at == 2000.0 and not revoked.active
    assert reg.authenticate(token) is None
    assert audit.entries()[-1]["action"] == "token.revoke" and audit.entries()[-1]["who"] == "token:root"
    with pytest.raises(Conflict, match="already revoked"):
        reg.revoke("viewer-1", who="token:root")
    with pytest.raises(Conflict, match="never reused"):
        reg.add("viewer-1", "viewer", who="cli:alice")
    for missing in ("nobody", "", "中" * 300, None):
        with pytest.raises(NotFound):
            reg.revoke(missing, who="token:root")
    assert [(t.name, t.active) for t in reg.list()] == [("viewer-1", False)]


def test_a_new_token_replaces_the_old_one(tokens):
    """A token lost, leaked, or never seen (an add whose output was lost: the name is never
    reused) is replaced; the old one stops working at once; the audit log says who did it,
    never the secret; a revoked token gets none."""
    reg, audit, path = tokens
    record, old = reg.add("ops", "operator", who="cli:alice", now=1000.0)
    with pytest.raises(Conflict, match="never reused"):
        reg.add("ops", "operator", who="cli:alice")
    again, new = reg.reissue("ops", who="token:root", now=2000.0)
    assert again == record and new != old and new.startswith("wma_ops_") and len(new.rsplit("_", 1)[1]) == 64
    assert reg.authenticate(old) is None and reg.authenticate(new) == record
    secret = new.rsplit("_", 1)[1]
    assert secret.encode() not in (path / "db" / "data.mdb").read_bytes()
    entry = audit.entries()[-1]
    assert entry == {"seq": 2, "at": 2000.0, "who": "token:root", "action": "token.reissue", "target": "ops",
                     "details": {}}
    digest = hashlib.sha256(secret.encode()).digest()
    shown = repr(audit.entries())
    assert secret not in shown and digest.hex() not in shown and repr(digest) not in shown

    def unchanged(before):
        assert (reg.list(), audit.entries()) == before

    # Refused: unknown or malformed names, a revoked token, no one to answer for it.
    before = (reg.list(), audit.entries())
    for nobody in ("nobody", "", "中" * 300, "x" * 600, None):
        with pytest.raises(NotFound, match="no admin token"):
            reg.reissue(nobody, who="token:root")
    with pytest.raises(ValueError, match="who"):
        reg.reissue("ops", who="")
    unchanged(before)
    assert reg.authenticate(new) == record  # the failed reissue left the token as it was
    reg.revoke("ops", who="token:root", now=3000.0)
    before = (reg.list(), audit.entries())
    with pytest.raises(Conflict, match="admin token ops is revoked; it gets no new token"):
        reg.reissue("ops", who="token:root")
    unchanged(before)
    assert reg.authenticate(new) is None and reg.authenticate(old) is None


def test_cli_prints_a_reissued_token_once(tmp_path):
    runner = CliRunner()
    data = tmp_path / "wuma-data"

    def run(*args, ok=True):
        res = runner.invoke(cli, ["--data", str(data), *args], catch_exceptions=False)
        assert (res.exit_code == 0) == ok and "Traceback" not in res.output, res.output
        return res.output

    run("init")
    old = json.loads(run("admin-token", "add", "ops", "--role", "operator", "--json"))["token"]
    text = run("admin-token", "token", "ops")
    new = text.rsplit(" ", 1)[1].strip()
    assert text.startswith("admin token ops (operator): new token") and text.count("wma_ops_") == 1
    assert new.startswith("wma_ops_") and new != old
    got = json.loads(run("admin-token", "token", "ops", "--json"))
    assert set(got) == {"name", "role", "created_at", "created_by", "revoked_at", "token"}
    assert (got["name"], got["role"], got["revoked_at"]) == ("ops", "operator", None)
    newest = got["token"]
    assert newest not in run("admin-token", "list", "--json")
    folder = DataFolder(data)
    try:
        tokens = AdminTokens(folder.store, AuditLog(folder.store))
        assert tokens.authenticate(newest).name == "ops"
        assert tokens.authenticate(old) is None and tokens.authenticate(new) is None
        actions = [(e["action"], e["who"].split(":")[0]) for e in AuditLog(folder.store).entries()]
        assert actions == [("token.add", "cli"), ("token.reissue", "cli"), ("token.reissue", "cli")]
    finally:
        folder.close()
    assert "no admin token nobody" in run("admin-token", "token", "nobody", ok=False)
    run("admin-token", "revoke", "ops")
    assert "admin token ops is revoked" in run("admin-token", "token", "ops", ok=False)


def test_validation(tokens):
    reg, audit, _ = tokens
    with pytest.raises(ValueError, match="role must be one of viewer, operator, admin"):
        reg.add("x", "root", who="cli:alice")
    for name in ("bad name", "nl\n", "x" * 65, "\u0661"):  # a token with a newline cannot be sent
        with pytest.raises(ValueError, match="token name"):
            reg.add(name, "viewer", who="cli:alice")
    with pytest.raises(ValueError, match="who"):
        reg.add("x", "viewer", who="")
    assert reg.list() == [] and audit.entries() == []  # nothing half-made


@pytest.mark.parametrize("role, allowed", [
    ("viewer", {"read"}),
    ("operator", {"read", "product.add", "campaign.write", "pool.top_up", "voucher.sweep", "payout.retry"}),
    ("admin", set(PERMISSIONS)),
])
def test_permission_matrix(role, allowed):
    token = AdminToken("t", role, 0.0, "cli:test")
    assert {p for p in PERMISSIONS if token.may(p)} == allowed
    assert token.who == "token:t"
    with pytest.raises(ValueError):
        token.may("everything")
    assert ROLES == ("viewer", "operator", "admin")


def test_shared_token_helper():
    token, digest = new_token("wm", "store_7")
    name, secret = parse_token(token, "wm")
    assert name == "store_7" and secret_matches(digest, secret) and not secret_matches(digest, secret[::-1])
    assert parse_token(token, "wma") is None and parse_token("wm_" + "_" * 3, "wm") is None


def test_the_audit_log_pages_newest_first(tmp_path):
    """Newest first, ``before`` the last seq shown is the next page back, and ``after``
    bounds it below (it was ignored there: every page repeated the newest entries)."""
    store = Store(tmp_path / "db")
    audit = AuditLog(store)
    for i in range(10):
        with store.write() as txn:
            audit.append(txn, "cli:test", "product.add", f"P-{i}")
    seqs = lambda entries: [e["seq"] for e in entries]  # noqa: E731
    assert seqs(audit.entries(newest_first=True, limit=3)) == [10, 9, 8]
    assert seqs(audit.entries(newest_first=True, limit=3, before=8)) == [7, 6, 5]
    assert seqs(audit.entries(after=7, newest_first=True, limit=5)) == [10, 9, 8]
    assert seqs(audit.entries(after=2**63 - 1, newest_first=True)) == []
    assert seqs(audit.entries(after=3, limit=3, before=5)) == [4]
    assert seqs(audit.entries(newest_first=True, before=1)) == []
    store.close()
