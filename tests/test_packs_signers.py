"""A revoked brand signing key reaches the lines through the pack server, the server vouches
for a pack's bytes and not only its id, and an open report is refused unless `wuma pack open`
could have written it."""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
from pathlib import Path

import pytest
import test_packs
from click.testing import CliRunner
from test_packs import _call, _export

from cli.main import cli
from engine import packs as P
from engine.http_packs import PackWithheld, check_pack, pull_packs, sign_request
from engine.lines import brand_key_id, load_brand_keys
from engine.packs import ListedPack, PackError, open_pack_to_file, read_header
from engine.store import pack as mpack
from engine.store import unpack

# The fixtures of test_packs (a registered line L1 with a batch; a real pull server).
world = test_packs.world
server = test_packs.server

REVOKED_AT = 1_800_000_000.0  # 2027-01-15 16:00:00+08:00


def _forge(data, real: Path, out: Path) -> Path:
    """What a thief of the brand's version 1 signing key can make, knowing the line's public
    key: a pack of its own codes, under the id (and header) of the issued pack ``real``, of
    the same size."""
    url = "HTTPS://EVIL.EXAMPLE/Q/"
    for _ in range(5):  # NOTE: a string's length field grows with it: adjust again
        _forge_with(data, real, out, url)
        short = real.stat().st_size - out.stat().st_size
        if short == 0:
            return out
        url = url + "X" * short if short > 0 else url[:short]
    raise AssertionError("no forged pack of the same size")


def _forge_with(data, real: Path, out: Path, url: str) -> Path:
    header, _hb, _off = read_header(real)
    signing = data.keys.signing_key(1)
    fake = dict(header, issuer=brand_key_id(1, P._pub_raw(signing.public_key())),
                url_template=url + "{code}")
    line_x = P.LineRegistry(data.store, data.keys).get(header["line"]).x25519
    fb = mpack(fake)
    hd = hashlib.sha256(fb).digest()
    key, pid = os.urandom(32), bytes.fromhex(fake["pack"])
    row = sum(fake["widths"])
    a, b = fake["range"]
    plain = b"".join(f"FORGED{s:0{row - 6}d}"[:row].encode() for s in range(a, b))
    ct = P.AESGCM(key).encrypt(P._chunk_nonce(0, True), plain, P._chunk_aad(hd, 0, True, a, b - a))
    body = (P.MAGIC + struct.pack(">I", len(fb)) + fb + P._wrap(key, line_x, pid, hd)
            + P._FRAME.pack(len(ct), a, b - a) + ct)
    out.write_bytes(body + signing.sign(P._signed_message(hashlib.sha256(body).digest())))
    return out


@pytest.fixture
def rotated(world, data, request):
    """Pack ``old`` signed with brand key version 1; then the key rotated and a
    brand-keys.json written (the one the line keeps: versions 1 and 2, neither revoked);
    then version 1 revoked (its key leaked) and pack ``new`` exported, signed with version 2.
    The pull server runs on the folder."""
    reg, keys, _brand, _batch, tmp = world
    (old,) = _export(world, start=0, stop=300)
    data.rotate_key()
    stale = tmp / "brand-keys-stale.json"
    stale.write_bytes(reg.lines.brand_keys())
    reg.lines.revoke_signer(1, now=REVOKED_AT)
    (new,) = _export(world, start=300, stop=600)
    url = request.getfixturevalue("server")
    return reg, keys, load_brand_keys(stale), old, new, tmp, url


# -- a revoked brand key withholds the packs it signed ----------------------------------------
def test_packs_signed_by_a_revoked_brand_key_are_withheld_by_the_server(rotated, data):
    reg, keys, _stale, old, new, tmp, url = rotated
    v1 = read_header(Path(old.path))[0]["issuer"]
    assert v1.startswith("v1:") and read_header(Path(new.path))[0]["issuer"].startswith("v2:")
    # the brand's own list says so (pack list --json)
    listed = {p["id"]: p for p in reg.list()}
    assert listed[old.id]["signer_revoked_at"] == REVOKED_AT
    assert listed[old.id]["withheld_reason"] == f"signed by brand key {v1}, revoked at 2027-01-15 16:00:00+08:00"
    assert listed[new.id]["signer_revoked_at"] is None and listed[new.id]["withheld_reason"] is None
    # and its text (pack list)
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent  # NOTE: its own process: one LMDB env a process
    shown = subprocess.run([sys.executable, "-m", "cli", "--data", str(data.path), "pack", "list"], cwd=root,
                           env=dict(os.environ, PYTHONPATH=str(root)), capture_output=True, text=True,
                           timeout=60)
    assert shown.returncode == 0, shown.stderr
    (line,) = [row for row in shown.stdout.splitlines() if row.startswith(f"pack {old.id}")]
    assert f"signed by brand key {v1}, revoked at 2027-01-15 16:00:00+08:00" in line and "export its range" in line
    # revoking again keeps the first time
    reg.lines.revoke_signer(1, now=REVOKED_AT + 3600)
    assert reg.get(old.id)["signer_revoked_at"] == REVOKED_AT
    # the listing: withheld with the reason, as revoked and voided packs are
    body = json.loads(_call(url, "/packs", sign_request(keys, "GET", "/packs"))[1])
    assert [p["id"] for p in body["packs"]] == [new.id]
    assert body["withheld"] == [{"id": old.id, "file": os.path.basename(old.path),
                                 "reason": listed[old.id]["withheld_reason"]}]
    # the file: 410
    path = f"/packs/{old.id}"
    status, raw = _call(url, path, sign_request(keys, "GET", path))
    assert status == 410 and json.loads(raw)["error"] == "signer_revoked"
    assert [e["kind"] for p in reg.list() if p["id"] == old.id for e in p["events"]] == ["issued"]
    # a line that pulled it before: its copy set aside; a copy elsewhere refused by the server
    pulled = tmp / "pulled"
    pulled.mkdir()
    (pulled / os.path.basename(old.path)).write_bytes(Path(old.path).read_bytes())
    got = pull_packs(keys, url, pulled)
    assert [w.id for w in got.withheld] == [old.id] and [p.name for p in got] == [os.path.basename(new.path)]
    with pytest.raises(PackWithheld, match=f"pack {old.id} is withheld by .*: signed by brand key {v1}, revoked"):
        check_pack(keys, url, Path(old.path))


def test_a_pack_forged_with_a_leaked_key_under_a_listed_id_is_refused(rotated, data):
    """The line still holds the brand-keys.json in which version 1 is not revoked (nothing
    updates it): only the server's listing of the pack's bytes can tell the forged pack."""
    reg, keys, stale, _old, new, tmp, url = rotated
    forged = _forge(data, Path(new.path), tmp / "forged.wpk")
    out = tmp / "codes.csv"
    # NOTE: its id and size are the listed ones: its bytes are checked as it is opened (one
    # SHA-256 pass, the signature check's)
    with pytest.raises(PackError, match=f"forged.wpk is not the pack the server issued as {new.id}: "
                                        "its bytes differ"):
        open_pack_to_file(forged, keys, stale, out, expect_id=check_pack(keys, url, forged))
    assert not out.exists()
    # what the server lists is what opens
    kept = tmp / "kept.wpk"
    kept.write_bytes(Path(new.path).read_bytes())
    listed = check_pack(keys, url, kept)
    rec = reg.get(new.id)
    assert listed == ListedPack(new.id, rec["signed_sha256"], rec["size"], rec["file_sha256"])
    open_pack_to_file(kept, keys, stale, out, expect_id=listed)
    assert out.read_text().count("\n") == 1 + new.count and "FORGED" not in out.read_text()
    out.unlink()
    # the file replaced by the forged pack after the server vouched for it (a shared folder)
    kept.write_bytes(forged.read_bytes())
    with pytest.raises(PackError, match=f"is not the pack the server issued as {new.id}"):
        open_pack_to_file(kept, keys, stale, out, expect_id=listed)
    assert not out.exists()
    # the command: nothing written
    data.close()  # NOTE: the CLI opens the folder itself (once a process)
    stale_file = tmp / "brand-keys-stale.json"
    res = CliRunner().invoke(cli, ["pack", "open", str(forged), "--key", str(tmp / "line1"), "--brand-key",
                                   str(stale_file), "--server", url, "-o", str(out)])
    assert res.exit_code == 1 and not out.exists(), res.output
    assert f"is not the pack the server issued as {new.id}" in res.output and "do not print it" in res.output
    res = CliRunner().invoke(cli, ["pack", "open", str(Path(new.path)), "--key", str(tmp / "line1"),
                                   "--brand-key", str(stale_file), "--server", url, "-o", str(out)])
    assert res.exit_code == 0 and out.read_text().count("\n") == 1 + new.count, res.output


def test_a_pack_exported_before_the_whole_file_digest_was_listed_is_checked_by_its_signed_bytes(world, data, server):
    reg, keys, brand, _batch, tmp = world
    (p,) = _export(world, stop=300)
    with data.store.write() as txn:  # a record from before file_sha256
        rec = unpack(txn.get(bytes.fromhex(p.id), db=reg._packs))
        del rec["file_sha256"]
        txn.put(bytes.fromhex(p.id), mpack(rec), db=reg._packs)
    listed = check_pack(keys, server, Path(p.path))
    assert listed.file_sha256 is None and listed.signed_sha256 == rec["signed_sha256"]
    open_pack_to_file(p.path, keys, brand, tmp / "codes.csv", expect_id=listed)
    # a copy with other bytes after the signature (the signature still checks): not the pack
    longer = tmp / "longer.wpk"
    longer.write_bytes(Path(p.path).read_bytes() + b"\0")
    with pytest.raises(PackWithheld, match=f"not the pack {server} issued as {p.id} "
                                           r"\(it is [\d,]+ bytes, the listed pack [\d,]+\)"):
        check_pack(keys, server, longer)


# -- open reports -----------------------------------------------------------------------------
def _receipt(keys, pack, count, opened_at) -> bytes:
    """A receipt signed by the line's key with any count and time (the line writes what it
    likes), and the proof of decryption of an open of ``pack`` (an IssuedPack)."""
    brand = load_brand_keys(keys.folder / "brand-keys.json")
    opened = P.open_pack(pack.path, keys, brand, io.BytesIO(), share=pack.share)
    report = json.loads(json.loads(opened.receipt)["receipt"])
    return P._signed_receipt(keys, {**report, "count": count, "opened_at": opened_at})


def _opens(reg) -> list:
    return [(e.get("count"), e.get("reported_at")) for p in reg.list() for e in p["events"]
            if e["kind"] == "opened"]


def test_a_receipt_must_report_the_whole_pack(world):
    """An open writes the whole pack: its receipt reports the pack's count, a whole number."""
    reg, keys, _brand, _batch, _tmp = world
    (p,) = _export(world, stop=300)
    reg.record_download(p.id, "L1", "127.0.0.1", now=0.0)  # NOTE: receipts are dated from it
    for count in (999_999_999, -5, "lots", 299, 0, 300.0, True, None, 10**400):
        with pytest.raises(PackError, match=f"pack {p.id} holds 300 and an open reports them all"):
            reg.record_open(_receipt(keys, p, count, 1.0))
    for at in ("yesterday", None, float("nan"), float("inf"), -1.0, 10**400):
        with pytest.raises(PackError, match="is not a time"):
            reg.record_open(_receipt(keys, p, 300, at))
    assert _opens(reg) == []  # nothing recorded
    assert reg.record_open(_receipt(keys, p, 300, 2.0))["already_recorded"] is False
    assert _opens(reg) == [(300, 2.0)]


def test_a_revoked_lines_receipts_are_refused_whatever_time_they_say(world, data):
    reg, keys, brand, _batch, tmp = world
    (p,) = _export(world, stop=300)
    reg.record_download(p.id, "L1", "127.0.0.1", now=900.0)  # NOTE: receipts are dated from it
    before = open_pack_to_file(p.path, keys, brand, tmp / "codes.csv", now=1000.0).receipt
    reg.record_open(before)
    late = open_pack_to_file(p.path, keys, brand, tmp / "codes2.csv", now=2000.0).receipt  # not reported yet
    reg.lines.revoke("L1", now=REVOKED_AT)
    for receipt in (late, _receipt(keys, p, 300, REVOKED_AT + 60)):
        with pytest.raises(PackError, match="line L1 was revoked at 2027-01-15 16:00:00\\+08:00: receipts"):
            reg.record_open(receipt)
    assert reg.record_open(before)["already_recorded"] is True  # the open reported before stays
    assert _opens(reg) == [(300, 1000.0)]
    receipt = tmp / "r.json"
    receipt.write_bytes(late)
    data.close()  # NOTE: the CLI opens the folder itself (once a process)
    res = CliRunner().invoke(cli, ["--data", str(data.path), "pack", "report", str(receipt)])
    assert res.exit_code == 1 and "line L1 was revoked at" in res.output and "nothing recorded" in res.output
    assert "Traceback" not in res.output
