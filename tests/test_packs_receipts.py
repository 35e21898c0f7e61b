"""An open receipt shows that the line holds the pack's data key and every code of it, not
only that its key signed a report: `wuma pack report` records only a receipt carrying a
proof that takes both to make (`wuma pack open --receipt` of this release). It does not show
that the codes came from this file's chunks (see the last test)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time

import pytest
import test_packs
from click.testing import CliRunner
from test_packs import _export

from cli.main import cli
from engine.packs import PackError, open_pack_to_file

world = test_packs.world

NOW = time.time() - 3600  # the download; receipts are dated from it, up to the brand's clock
REFUSED = "open the pack with this release's `wuma pack open --receipt"


def _sign(keys, report: dict, label: bytes = b"wuma/open-receipt/v2\x00") -> bytes:
    """A receipt with any body, signed by the line's key: what a holder of that key can make
    without opening the pack."""
    body = json.dumps(report, sort_keys=True)
    sig = keys.ed25519.sign(label + body.encode())
    return json.dumps({"receipt": body, "signature": base64.b64encode(sig).decode()}).encode()


def _report(keys, p, **extra) -> dict:
    return {"v": 2, "pack": p.id, "line": "L1", "line_fp": keys.fingerprint, "count": p.count,
            "opened_at": NOW + 10, **extra}


def _opens(reg, pack_id: str) -> list:
    return [e for e in reg.list() if e["id"] == pack_id][0]["events"]


def _opened(reg, pack_id: str) -> int:
    return sum(e["kind"] == "opened" for e in _opens(reg, pack_id))


def test_a_receipt_the_line_key_signed_without_decrypting_is_refused(world, data):
    """Before, the line key, the pack id and its count from the listing made a receipt that
    was recorded as an open: no decryption needed."""
    reg, keys, _brand, batch, _tmp = world
    (p,) = _export(world, stop=300)
    reg.record_download(p.id, "L1", "127.0.0.1", now=NOW)
    # the receipt format of the earlier release: its signature verifies, it proves nothing
    old = _report(keys, p)
    del old["v"]
    with pytest.raises(PackError, match=f"written by an earlier release.*{REFUSED}.*nothing recorded"):
        reg.record_open(_sign(keys, old, b"wuma/open-receipt/v1\x00"))
    forged = [
        _sign(keys, _report(keys, p)),  # no proof
        _sign(keys, _report(keys, p, proof=os.urandom(32).hex())),  # a made-up one
        _sign(keys, _report(keys, p, proof="zz")),  # not even one
        # the SHA-256 of the codes alone: what the brand's generator (or a leak of the codes)
        # gives without the pack's data key
        _sign(keys, _report(keys, p, proof=hashlib.sha256(data.codes.render(batch, 0, 300)).hexdigest())),
    ]
    for receipt in forged:
        with pytest.raises(PackError, match=f"pack {p.id}.*{REFUSED}.*nothing recorded"):
            reg.record_open(receipt)
    assert _opened(reg, p.id) == 0


def test_an_honest_receipt_is_recorded(world):
    reg, keys, brand, _batch, tmp = world
    plain, split = _export(world, stop=600, parts=2), _export(world, start=600, stop=900, split_key=True)
    for p in [*plain, *split]:
        reg.record_download(p.id, "L1", "127.0.0.1", now=NOW)
        got = open_pack_to_file(p.path, keys, brand, tmp / "codes.csv", share=p.share, now=NOW + 10,
                                receipt=tmp / "r.json")
        assert (tmp / "r.json").read_bytes() == got.receipt
        assert json.loads(json.loads(got.receipt)["receipt"])["v"] == 2
        rec = reg.record_open(got.receipt)
        assert rec["already_recorded"] is False and rec["open_proof"] == "checked"
        assert _opened(reg, p.id) == 1
        assert reg.record_open(got.receipt)["already_recorded"] is True
    # the proof is of the codes as the pack holds them, whatever the output's form
    (p,) = plain[:1]
    other = open_pack_to_file(p.path, keys, brand, tmp / "codes.jsonl", output_format="jsonl", url=True,
                              now=NOW + 10)
    assert _proof(other.receipt) == _proof(open_pack_to_file(p.path, keys, brand, tmp / "c.csv").receipt)


def _proof(receipt: bytes) -> str:
    return json.loads(json.loads(receipt)["receipt"])["proof"]


def test_a_receipt_for_one_pack_with_the_proof_of_another_is_refused(world):
    reg, keys, brand, _batch, tmp = world
    a, b = _export(world, stop=600, parts=2)
    for p in (a, b):
        reg.record_download(p.id, "L1", "127.0.0.1", now=NOW)
    of_b = open_pack_to_file(b.path, keys, brand, tmp / "codes.csv", now=NOW + 10).receipt
    with pytest.raises(PackError, match=f"proof .* does not match pack {a.id}.*{REFUSED}"):
        reg.record_open(_sign(keys, _report(keys, a, proof=_proof(of_b))))
    assert _opened(reg, a.id) == 0
    assert reg.record_open(of_b)["already_recorded"] is False


def test_cli_report_of_a_forged_receipt_says_what_the_line_must_do(world, data):
    reg, keys, _brand, _batch, tmp = world
    (p,) = _export(world, stop=300)
    reg.record_download(p.id, "L1", "127.0.0.1", now=NOW)
    receipt = tmp / "forged.json"
    report = _report(keys, p)
    del report["v"]  # NOTE: the earlier release's format: its signature verifies, nothing else
    receipt.write_bytes(_sign(keys, report, b"wuma/open-receipt/v1\x00"))
    data.close()  # NOTE: the CLI opens the folder itself (once a process)
    res = CliRunner().invoke(cli, ["--data", str(data.path), "pack", "report", str(receipt)])
    assert res.exit_code == 1 and REFUSED in res.output and "nothing recorded" in res.output, res.output
    assert "Traceback" not in res.output


def test_a_pack_exported_by_an_earlier_release_is_recorded_unchecked(world, data):
    """The earlier release kept nothing to check a proof against: its packs' opens are taken
    as before (the line key's word), and said so; a receipt of the earlier release too."""
    reg, keys, brand, _batch, tmp = world
    old, new = _export(world, stop=600, parts=2)
    with reg._store.write() as txn:  # NOTE: as the earlier release left the record
        rec = reg._get_raw(txn, old.id)
        del rec["open_proof_sha256"]
        reg._put(txn, rec)
    for p in (old, new):
        reg.record_download(p.id, "L1", "127.0.0.1", now=NOW)
    report = _report(keys, old)
    del report["v"]
    got = reg.record_open(_sign(keys, report, b"wuma/open-receipt/v1\x00"))
    assert got["already_recorded"] is False and got["open_proof"] == "unchecked"
    receipt = tmp / "r.json"
    receipt.write_bytes(open_pack_to_file(new.path, keys, brand, tmp / "codes.csv", now=NOW + 10).receipt)
    with reg._store.write() as txn:
        rec = reg._get_raw(txn, new.id)
        del rec["open_proof_sha256"]
        reg._put(txn, rec)
    data.close()  # NOTE: the CLI opens the folder itself (once a process)
    res = CliRunner().invoke(cli, ["--data", str(data.path), "pack", "report", str(receipt)])
    assert res.exit_code == 0, res.output
    assert f"recorded open of pack {new.id}" in res.output
    assert "exported by an earlier release: its open is the line key's word" in res.output


def test_the_proof_shows_the_key_and_the_codes_not_that_these_chunks_were_decrypted(world, data):
    """What the proof does not show (the docstrings once said it did): a range exported again
    after a revoke holds the revoked pack's codes, so a line that opened the old pack makes
    the new pack's proof with its data key alone, reading none of its chunks."""
    from engine import packs as P

    reg, keys, brand, batch, tmp = world
    (a,) = _export(world, stop=300)
    open_pack_to_file(a.path, keys, brand, tmp / "codes.csv")  # the line holds serials 0:300's codes
    held = hashlib.sha256(data.codes.render(batch, 0, 300)).digest()  # their rows, as a pack holds them
    reg.revoke(a.id)
    (b,) = _export(world, stop=300)
    reg.record_download(b.id, "L1", "127.0.0.1", now=NOW)
    with open(b.path, "rb") as fh:  # its header and its wrapped key: no chunk
        _header, hb, off = P._read_header(fh, b.path)
        wrapped = fh.read(P._WRAPPED)
    pid = bytes.fromhex(b.id)
    key = P._unwrap(wrapped, keys, pid, hashlib.sha256(hb).digest())
    got = reg.record_open(_sign(keys, _report(keys, b, proof=P._open_proof(key, pid, held).hex())))
    assert got["open_proof"] == "checked" and got["already_recorded"] is False
