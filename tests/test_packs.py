"""Behaviour tests for print lines and encrypted code packs (issue 3)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import socket
import stat
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import msgpack
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from cli.main import cli
from engine import Conflict, DataFolder
from engine.http_packs import PullError, pull_packs, sign_request
from engine.lines import LineKeyError, LineKeys, generate_line_keys, load_brand_keys
from engine.packs import (
    MAGIC,
    PackError,
    PackRegistry,
    _signed_message,
    open_pack,
    open_pack_to_file,
    parse_share,
    share_text,
)

COUNT = 3000
CHUNK = 8 << 10  # ~200 units per chunk: many chunks in a small pack


@pytest.fixture
def world(data, tmp_path):
    reg = PackRegistry(data)
    brand = tmp_path / "brand-keys.json"
    brand.write_bytes(reg.lines.brand_keys())
    keys = generate_line_keys(tmp_path / "line1", brand_keys=brand.read_bytes())
    reg.lines.add("L1", (tmp_path / "line1" / "line.pub").read_bytes())
    batch = data.create_batch("cap", COUNT)
    return reg, keys, load_brand_keys(brand), batch, tmp_path


def _export(world, **kw):
    reg, _keys, _brand, batch, tmp = world
    kw.setdefault("chunk_bytes", CHUNK)
    return reg.export(batch.id, "L1", tmp / "packs", **kw)


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def _chunks(path):
    """(offset, length) of every chunk frame (frame header + ciphertext)."""
    blob = path.read_bytes()
    (n,) = struct.unpack(">I", blob[8:12])
    off = 12 + n + 80
    out = []
    while off < len(blob) - 64:
        (ct,) = struct.unpack(">I", blob[off : off + 4])
        out.append((off, 16 + ct))
        off += 16 + ct
    return 12 + n, out


def _no_output(tmp):
    return (
        not any(p.name.endswith(".part") or p.name.startswith(".codes") for p in tmp.iterdir())
        and not (tmp / "codes.csv").exists()
    )


# -- round trip ------------------------------------------------------------------------------
def test_round_trip_every_code_verifies(world, data):
    _reg, keys, brand, batch, tmp = world
    (p,) = _export(world)
    assert p.count == COUNT and p.share is None
    got = open_pack_to_file(p.path, keys, brand, tmp / "codes.csv")
    rows = _rows(tmp / "codes.csv")
    assert rows[0] == ["serial", "cap_outer", "cap_inner"]
    assert [int(r[0]) for r in rows[1:]] == list(range(COUNT))
    for serial, outer, inner in rows[1:]:
        for role, code in (("cap_outer", outer), ("cap_inner", inner)):
            v = data.codes.verify(code)
            assert (v.genuine, v.batch, v.serial, v.role) == (True, batch.id, int(serial), role)
    assert got.count == COUNT and got.header["line"] == "L1"
    assert stat.S_IMODE(os.stat(tmp / "codes.csv").st_mode) == 0o600


def test_pack_holds_no_plaintext_and_codes_match_generation(world, data):
    _reg, keys, brand, batch, _tmp = world
    (p,) = _export(world)
    blob = Path(p.path).read_bytes()
    first = data.codes.code(batch, 0, "cap_inner")
    assert first.encode() not in blob
    out = io.BytesIO()
    open_pack(p.path, keys, brand, out, url=True)
    assert (
        f"0,{data.url_base}{data.codes.code(batch, 0, 'cap_outer')},{data.url_base}{first}"
        in out.getvalue().decode()
    )


def test_range_parts_and_jsonl(world, data):
    _reg, keys, brand, _batch, _tmp = world
    packs = _export(world, start=100, stop=1100, parts=3)
    assert [(p.start, p.stop) for p in packs] == [(100, 433), (433, 766), (766, 1100)]
    out = io.BytesIO()
    open_pack(packs[1].path, keys, brand, out, output_format="jsonl")
    lines = [json.loads(x) for x in out.getvalue().decode().splitlines()]
    assert [d["serial"] for d in lines] == list(range(433, 766))
    assert lines[0]["cap_inner_url"] == data.url_base + lines[0]["cap_inner"]
    assert data.codes.verify(lines[-1]["cap_outer_url"]).serial == 765


# -- split key -------------------------------------------------------------------------------
def test_split_key(world):
    reg, keys, brand, _batch, tmp = world
    (p,) = _export(world, split_key=True)
    assert len(p.share) == 65 and parse_share(p.share.lower()) == parse_share(p.share)
    with pytest.raises(PackError, match="key share"):
        open_pack_to_file(p.path, keys, brand, tmp / "codes.csv")
    with pytest.raises(PackError, match="wrong key share"):
        open_pack_to_file(p.path, keys, brand, tmp / "codes.csv", share=share_text(os.urandom(32)))
    typo = p.share[:-1] + ("0" if p.share[-1] != "0" else "1")
    with pytest.raises(PackError, match="mistyped"):
        open_pack_to_file(p.path, keys, brand, tmp / "codes.csv", share=typo)
    assert _no_output(tmp)
    open_pack_to_file(p.path, keys, brand, tmp / "codes.csv", share=p.share)
    assert len(_rows(tmp / "codes.csv")) == COUNT + 1
    # APPSEC: the share is not kept at the brand.
    with reg._store.read() as txn:
        for db in ("packs", "pack_events"):
            for _, v in txn.cursor(db=reg._store.db(db)):
                assert parse_share(p.share) not in v


@given(st.binary(min_size=32, max_size=32), st.booleans(), st.booleans())
def test_a_share_reads_back_in_any_case_spacing_or_full_width(share, lower, wide):
    """As codes are read: any case, dashes or spaces (ideographic ones too), and the
    full-width forms of a Chinese input method."""
    text = share_text(share)
    text = text.lower() if lower else text
    text = text.replace("-", "\u3000" if wide else " ")
    if wide:
        text = "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)
    assert parse_share(text) == share


# -- tampering -------------------------------------------------------------------------------
def _regions(path):
    hdr_end, chunks = _chunks(path)
    size = path.stat().st_size
    yield "magic", 3
    yield "header", 20
    yield "header-end", hdr_end - 1
    yield "wrapped-key", hdr_end + 5
    for i, (off, n) in enumerate(chunks):
        yield f"chunk{i}-frame", off + 2
        yield f"chunk{i}-ciphertext", off + 16 + n // 3
        yield f"chunk{i}-tag", off + n - 1
    yield "signature", size - 10


def test_any_flipped_byte_is_rejected_without_output(world):
    _reg, keys, brand, _batch, tmp = world
    (p,) = _export(world)
    good = Path(p.path).read_bytes()
    regions = list(_regions(tmp / "packs" / os.path.basename(p.path)))
    assert sum(1 for r, _ in regions if r.endswith("-frame")) > 10
    bad = tmp / "bad.wpk"
    for region, off in regions:
        blob = bytearray(good)
        blob[off] ^= 0x01
        bad.write_bytes(bytes(blob))
        with pytest.raises(PackError):
            open_pack_to_file(bad, keys, brand, tmp / "codes.csv")
        out = io.BytesIO()
        with pytest.raises(PackError):
            open_pack(bad, keys, brand, out)
        assert out.getvalue() == b"", region
        assert _no_output(tmp), region


@pytest.mark.parametrize("cut", [1, 64, 65, 500, 9000, -100])
def test_truncation_is_rejected(world, cut):
    _reg, keys, brand, _batch, tmp = world
    (p,) = _export(world)
    good = Path(p.path).read_bytes()
    bad = tmp / "bad.wpk"
    bad.write_bytes(good[:-cut])
    with pytest.raises(PackError):
        open_pack_to_file(bad, keys, brand, tmp / "codes.csv")
    assert _no_output(tmp)


def _resign(data, blob: bytes) -> bytes:
    """What only the brand could do: sign a rearranged file (tests the chunk AAD alone)."""
    body = blob[:-64]
    return body + data.keys.signing_key(1).sign(_signed_message(hashlib.sha256(body).digest()))


def test_chunk_reorder_and_drop_fail_even_when_resigned(world, data):
    _reg, keys, brand, _batch, tmp = world
    (p,) = _export(world)
    path = tmp / "packs" / os.path.basename(p.path)
    good = path.read_bytes()
    _, chunks = _chunks(path)
    pieces = [good[o : o + n] for o, n in chunks]
    head = good[: chunks[0][0]]
    bad = tmp / "bad.wpk"
    # sanity: re-signing the untouched body opens fine
    bad.write_bytes(_resign(data, good))
    open_pack(bad, keys, brand, io.BytesIO())
    for variant in (
        pieces[1:2] + pieces[0:1] + pieces[2:],  # swapped
        pieces[:-1],  # last chunk dropped
        pieces[:3] + pieces[4:],  # middle chunk dropped
    ):
        bad.write_bytes(_resign(data, head + b"".join(variant) + good[-64:]))
        out = io.BytesIO()
        with pytest.raises(PackError, match="damaged|incomplete"):
            open_pack(bad, keys, brand, out)


# -- wrong keys, lines, signers --------------------------------------------------------------
def test_wrong_line_key_and_other_line(world, tmp_path):
    reg, _keys, brand, _batch, tmp = world
    (p,) = _export(world)
    stranger = generate_line_keys(tmp / "stranger")
    with pytest.raises(PackError, match="issued to line L1"):
        open_pack_to_file(p.path, stranger, brand, tmp / "codes.csv")
    other = generate_line_keys(tmp / "line2")
    reg.lines.add("L2", (tmp / "line2" / "line.pub").read_bytes())
    with pytest.raises(PackError, match="issued to line L1"):
        open_pack_to_file(p.path, other, brand, tmp / "codes.csv")
    assert _no_output(tmp)


def test_unknown_and_revoked_signer(world, tmp_path):
    reg, keys, _brand, _batch, tmp = world
    (p,) = _export(world)
    other = DataFolder.init(tmp / "other-brand")
    foreign = tmp / "foreign.json"
    foreign.write_bytes(PackRegistry(other).lines.brand_keys())
    other.close()
    with pytest.raises(PackError, match="unknown key"):
        open_pack_to_file(p.path, keys, load_brand_keys(foreign), tmp / "codes.csv")
    reg.lines.revoke_signer(1)
    revoked = tmp / "revoked.json"
    revoked.write_bytes(reg.lines.brand_keys())
    with pytest.raises(PackError, match="revoked brand key"):
        open_pack_to_file(p.path, keys, load_brand_keys(revoked), tmp / "codes.csv")
    with pytest.raises(Conflict, match="revoked"):
        _export(world)
    assert _no_output(tmp)


def test_revoked_line_gets_no_packs(world):
    reg, _keys, _brand, _batch, _tmp = world
    reg.lines.revoke("L1")
    with pytest.raises(Conflict, match="revoked"):
        _export(world)
    assert reg.lines.get("L1").revoked


def test_line_keys_private_and_not_overwritten(tmp_path):
    keys = generate_line_keys(tmp_path / "k")
    assert stat.S_IMODE(os.stat(tmp_path / "k").st_mode) == 0o700
    for name in ("x25519.key", "ed25519.key"):
        assert stat.S_IMODE(os.stat(tmp_path / "k" / name).st_mode) == 0o600
    assert repr(keys).startswith("LineKeys(") and "fingerprint" in repr(keys)
    with pytest.raises(Conflict):
        generate_line_keys(tmp_path / "k")
    os.chmod(tmp_path / "k" / "x25519.key", 0o644)
    with pytest.raises(LineKeyError, match="chmod 600"):
        LineKeys.load(tmp_path / "k")


def test_line_registry(data, tmp_path):
    reg = PackRegistry(data)
    generate_line_keys(tmp_path / "k")
    pub = (tmp_path / "k" / "line.pub").read_bytes()
    reg.lines.add("L1", pub)
    with pytest.raises(Conflict):
        reg.lines.add("L1", pub)
    with pytest.raises(Conflict, match="already registered"):
        reg.lines.add("L9", pub)
    with pytest.raises(ValueError):
        reg.lines.add("bad name!", pub)
    for junk in (b"{}", b"[" * 100_000):  # NOTE: nested too deeply: the same message, no RecursionError
        with pytest.raises(LineKeyError, match="not a Wuma line public key file"):
            reg.lines.add("L2", junk)
    assert [ln.name for ln in reg.lines.list()] == ["L1"]
    brand = tmp_path / "brand-keys.json"
    brand.write_bytes(b"[" * 60_000)
    with pytest.raises(LineKeyError, match="not a Wuma brand key file"):
        load_brand_keys(brand)
    with open(brand, "wb") as fh:  # a wrong file of 1 GiB (sparse): refused by its size, never read
        fh.truncate(1 << 30)
    with pytest.raises(LineKeyError, match="over 64 KiB: it is no brand-keys.json"):
        load_brand_keys(brand)


# -- audit -----------------------------------------------------------------------------------
def test_audit_issue_download_open_revoke(world, data):
    reg, keys, brand, batch, tmp = world
    (p,) = _export(world, start=0, stop=500)
    other_batch = data.create_batch("case", 100)
    reg.export(other_batch.id, "L1", tmp / "packs", chunk_bytes=CHUNK)
    reg.record_download(p.id, "L1", "127.0.0.1")
    got = open_pack_to_file(p.path, keys, brand, tmp / "codes.csv")
    reg.record_open(got.receipt)
    forged = json.loads(got.receipt)
    forged["receipt"] = forged["receipt"].replace('"count": 500', '"count": 1')
    with pytest.raises(PackError, match="signature"):
        reg.record_open(json.dumps(forged).encode())
    sig = forged["signature"]
    for junk in (b"[" * 100_000, b"[]", json.dumps({"receipt": 5, "signature": sig}).encode(),
                 json.dumps({"receipt": "[1]", "signature": sig}).encode()):
        with pytest.raises(PackError, match="not a Wuma open receipt"):
            reg.record_open(junk)
    reg.revoke(p.id)
    (rec,) = reg.list(batch=batch.id)
    assert [e["kind"] for e in rec["events"]] == ["issued", "download", "opened", "revoked"]
    assert rec["revoked_at"] is not None and rec["count"] == 500
    assert len(reg.list(line="L1")) == 2 and reg.list(line="L2") == []


# -- CLI -------------------------------------------------------------------------------------
def test_cli_flow(tmp_path):
    r = CliRunner()
    d = ["--data", str(tmp_path / "d")]

    def ok(*args):
        res = r.invoke(cli, [*d, *args])
        assert res.exit_code == 0, res.output
        return res

    ok("init")
    ok("batch", "create", "--level", "cap", "--count", "2000")
    ok("line", "brand-keys", "-o", str(tmp_path / "brand.json"))
    ok("line", "keygen", "-o", str(tmp_path / "line"), "--brand-key", str(tmp_path / "brand.json"))
    ok("line", "add", "L1", "--pubkey", str(tmp_path / "line" / "line.pub"))
    assert "L1" in ok("line", "list").output
    res = ok(
        "pack",
        "export",
        "1",
        "--line",
        "L1",
        "--range",
        "0:1000",
        "--parts",
        "2",
        "--split-key",
        "-o",
        str(tmp_path / "packs"),
        "--json",
    )
    packs = [json.loads(x) for x in res.stdout.splitlines()]
    assert len(packs) == 2
    out = tmp_path / "codes.csv"
    ok(
        "pack",
        "open",
        packs[0]["path"],
        "--key",
        str(tmp_path / "line"),
        "--share",
        packs[0]["share"],
        "-o",
        str(out),
        "--receipt",
        str(tmp_path / "r.json"),
    )
    rows = out.read_text().splitlines()
    assert len(rows) == 501
    no_download = r.invoke(cli, [*d, "pack", "report", str(tmp_path / "r.json")])
    assert no_download.exit_code == 1 and "line L1 never downloaded pack" in no_download.output
    with DataFolder(tmp_path / "d") as data:  # as `wuma pack pull` from the pack server
        PackRegistry(data).record_download(packs[0]["id"], "L1", "127.0.0.1")
    ok("pack", "report", str(tmp_path / "r.json"))
    bad = r.invoke(
        cli,
        [
            "pack",
            "open",
            packs[1]["path"],
            "--key",
            str(tmp_path / "line"),
            "--share",
            packs[0]["share"],
            "-o",
            "-",
        ],
    )
    assert bad.exit_code == 1 and "wrong key share" in bad.output and "serial" not in bad.output
    res = ok(
        "pack",
        "open",
        packs[1]["path"],
        "--key",
        str(tmp_path / "line"),
        "--share",
        packs[1]["share"],
        "-o",
        "-",
    )
    assert res.stdout.splitlines()[1].startswith("500,")
    ok("pack", "revoke", packs[1]["id"])
    listing = ok("pack", "list", "--line", "L1").output
    assert "opens 1" in listing and "revoked" in listing
    ok("line", "revoke", "L1")
    bad = r.invoke(cli, [*d, "pack", "export", "1", "--line", "L1", "-o", str(tmp_path / "p2")])
    assert bad.exit_code == 1 and "revoked" in bad.output


def test_every_command_has_an_example():
    for group in ("line", "pack"):
        g = cli.commands[group]
        assert "Example:" in g.help
        for name, cmd in g.commands.items():
            assert "Example:" in (cmd.help or ""), f"{group} {name}"


def test_not_a_pack(world):
    _reg, keys, brand, _batch, tmp = world
    junk = tmp / "junk.wpk"
    junk.write_bytes(b"hello")
    with pytest.raises(PackError, match="not a Wuma pack"):
        open_pack_to_file(junk, keys, brand, tmp / "codes.csv")
    junk.write_bytes(MAGIC + b"\xff\xff\xff\xff")
    with pytest.raises(PackError, match="damaged"):
        open_pack_to_file(junk, keys, brand, tmp / "codes.csv")


# -- HTTP pull (real gunicorn on loopback) ---------------------------------------------------
_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def server(world):
    reg, _keys, _brand, _batch, _tmp = world
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gunicorn = Path(sys.executable).parent / "gunicorn"
    env = dict(os.environ, WUMA_DATA=str(reg._data.path))
    proc = subprocess.Popen(
        [str(gunicorn), "-b", f"127.0.0.1:{port}", "-w", "1", "engine.http_packs:app_from_env()"],
        cwd=_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode()
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _call(url, path, headers):
    req = urllib.request.Request(url + path, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_pull_downloads_own_packs_and_records_it(world, server):
    reg, keys, brand, batch, tmp = world
    mine = _export(world, start=0, stop=1000, parts=2)
    other = generate_line_keys(tmp / "line2")
    reg.lines.add("L2", (tmp / "line2" / "line.pub").read_bytes())
    theirs = reg.export(batch.id, "L2", tmp / "packs", start=1000, stop=1100)
    got = pull_packs(keys, server, tmp / "pulled")
    assert sorted(p.name for p in got) == sorted(os.path.basename(p.path) for p in mine)
    for p in got:
        open_pack_to_file(p, keys, brand, tmp / "codes.csv")
    assert pull_packs(keys, server, tmp / "pulled") == []
    events = [e for p in reg.list(line="L1") for e in p["events"] if e["kind"] == "download"]
    assert len(events) == 2 and {e["who"] for e in events} == {"L1"}
    assert all(e["where"] == "127.0.0.1" and e["at"] > 0 for e in events)
    # another line's pack: not listed, not downloadable
    path = f"/packs/{theirs[0].id}"
    assert _call(server, path, sign_request(keys, "GET", path))[0] == 404
    status, body = _call(server, "/packs", sign_request(other, "GET", "/packs"))
    assert status == 200 and [p["id"] for p in json.loads(body)["packs"]] == [theirs[0].id]
    # a pack whose file was removed from the server: 404 saying so, to its own line only
    os.remove(theirs[0].path)
    path = f"/packs/{theirs[0].id}"
    status, body = _call(server, path, sign_request(other, "GET", path))[:2]
    assert (status, json.loads(body)["error"]) == (404, "pack_file_missing")
    assert theirs[0].id in json.loads(body)["message"]


def test_pull_rejects_replay_stale_forged_and_unknown(world, server):
    _reg, keys, _brand, _batch, tmp = world
    h = sign_request(keys, "GET", "/packs")
    assert _call(server, "/packs", h)[0] == 200
    assert _call(server, "/packs", h)[0] == 401  # replay
    assert (
        _call(server, "/packs", sign_request(keys, "GET", "/packs", now=time.time() - 3600))[0]
        == 401
    )
    h = sign_request(keys, "GET", "/packs/" + "0" * 32)
    assert _call(server, "/packs", h)[0] == 401  # signature for another path
    stranger = generate_line_keys(tmp / "stranger")
    assert _call(server, "/packs", sign_request(stranger, "GET", "/packs"))[0] == 401
    assert _call(server, "/packs", {})[0] == 401
    # a timestamp of other digits than ASCII is the same opaque 401, in the API's error shape
    odd = {**sign_request(keys, "GET", "/packs"), "X-Wuma-Timestamp": "\u00b2"}
    status, body = _call(server, "/packs", odd)[:2]
    assert status == 401 and json.loads(body)["error"] == "unauthorized"


def test_revoked_line_and_pack_get_nothing(world, server):
    reg, keys, _brand, _batch, tmp = world
    (p,) = _export(world, stop=100)
    reg.revoke(p.id)
    path = f"/packs/{p.id}"
    assert _call(server, path, sign_request(keys, "GET", path))[0] == 410
    assert (
        json.loads(_call(server, "/packs", sign_request(keys, "GET", "/packs"))[1])["packs"] == []
    )
    reg.lines.revoke("L1")
    status, body = _call(server, "/packs", sign_request(keys, "GET", "/packs"))[:2]
    assert (status, json.loads(body)) == (403, {"error": "line_revoked", "message": "line L1 is revoked"})
    with pytest.raises(PullError, match="403"):
        pull_packs(keys, server, tmp / "pulled")
    assert not any(e["kind"] == "download" for e in reg.list()[0]["events"])


def test_cli_pull(world, server):
    _reg, _keys, _brand, _batch, tmp = world
    (p,) = _export(world, stop=300)
    res = CliRunner().invoke(
        cli,
        [
            "pack",
            "pull",
            "--line",
            str(tmp / "line1"),
            "--server",
            server,
            "-o",
            str(tmp / "pulled"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert (tmp / "pulled" / os.path.basename(p.path)).read_bytes() == Path(p.path).read_bytes()


def test_header_with_wrong_types_is_damaged(world):
    _reg, keys, brand, _batch, tmp = world
    hb = msgpack.packb(
        {
            "v": 1,
            "pack": "00",
            "issuer": [1],
            "line": "L1",
            "line_fp": "x",
            "url_template": "",
            "roles": [],
            "widths": [],
            "range": [0, 1],
            "count": 1,
        }
    )
    junk = tmp / "junk.wpk"
    junk.write_bytes(MAGIC + struct.pack(">I", len(hb)) + hb + b"\0" * 200)
    with pytest.raises(PackError, match="damaged"):
        open_pack_to_file(junk, keys, brand, tmp / "codes.csv")


def test_voided_codes_are_not_packed_for_printing(world, data):
    from engine.aggregation import Aggregation

    reg, _keys, _brand, batch, _tmp = world
    Aggregation(data).void(serial_range=(batch.id, 100, 110), reason="labels destroyed")
    for start, stop in ((0, 200), (105, 106), (109, 300)):
        with pytest.raises(Conflict, match=f"batch {batch.id} .* is voided"):
            _export(world, start=start, stop=stop)
    assert [p.count for p in _export(world, start=0, stop=100)] == [100]
    assert [p.count for p in _export(world, start=110, stop=200)] == [90]
    assert len(reg.list()) == 2


def test_relabelled_labels_are_not_packed_for_printing_nor_served(world, data, server):
    """A label a relabel touched (标签替换) is refused as a voided one is: a replacement label
    in use (printed again: a second copy of a live label) and a dead one; a pack whose
    range holds one is withheld, its ``voided_serial`` naming the first."""
    from engine.aggregation import Aggregation

    reg, keys, _brand, batch, _tmp = world
    early, late = _export(world, start=0, stop=400, parts=2)
    agg = Aggregation(data)
    other = data.create_batch("cap", 2)
    codes = data.codes
    agg.relabel(codes.code(other, 0, "cap_outer"), codes.code(batch, 150, "cap_outer"))
    agg.relabel(codes.code(batch, 300, "cap_outer"), codes.code(other, 1, "cap_outer"))
    with pytest.raises(Conflict, match=f"serial 150 of batch {batch.id} .*in 0:200.* is a "
                                       f"replacement label in use .*{other.id}:0.* second copy"):
        _export(world, start=0, stop=200)
    with pytest.raises(Conflict, match=f"serial 300 of batch {batch.id} .* made dead by a relabel"):
        _export(world, start=250, stop=400)
    for start, stop in ((150, 151), (299, 301)):
        with pytest.raises(Conflict, match="relabel"):
            _export(world, start=start, stop=stop)
    with pytest.raises(Conflict, match=f"pack {early.id} .*codes voided: serial 150"):
        _export(world, start=0, stop=150)  # NOTE: a line may have printed it: revoked first
    reg.revoke(early.id)
    reg.revoke(late.id)
    fine = [_export(world, start=a, stop=b)[0] for a, b in ((0, 150), (151, 300), (301, 400))]
    # packs exported before: withheld, the first such serial named (a void after it too)
    agg.void(serial_range=(batch.id, 180, 190), reason="labels destroyed")
    listed = {p["id"]: p["voided_serial"] for p in reg.list()}
    assert (listed[early.id], listed[late.id]) == (150, 300)
    assert reg.get(late.id)["voided_serial"] == 300
    assert [listed[p.id] for p in fine] == [None, 180, None]
    status, body = _call(server, "/packs", sign_request(keys, "GET", "/packs"))
    answer = json.loads(body)
    assert status == 200 and {p["id"] for p in answer["packs"]} == {fine[0].id, fine[2].id}
    assert {w["id"] for w in answer["withheld"]} == {early.id, late.id, fine[1].id}
    path = f"/packs/{late.id}"
    status, _ = _call(server, path, sign_request(keys, "GET", path))
    assert status == 410
