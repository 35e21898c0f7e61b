"""Defects a review found in packs and lines: signed packs left under hidden names by a
killed export, a line revoked while its export ran, a revoked line's key registered again,
a pack id with a trailing newline, an odd pull listing, and keygen chmodding a folder it
did not make."""

from __future__ import annotations

import io
import json
import os
import signal
import stat

import falcon.testing
import pytest
import test_crash_writes
import test_packs
from click.testing import CliRunner
from test_crash_writes import _child

import engine.http_packs as H
from cli.main import cli
from engine import DataFolder
from engine.errors import Conflict, NotFound
from engine.http_packs import PullError, create_app, pull_packs, sign_request
from engine.lines import generate_line_keys
from engine.packs import PackError, PackRegistry, open_pack

world = test_packs.world
pack_world = test_crash_writes.pack_world

# an export of 65 parts (hidden named files), killed at the first folder sync of placing
_KILLED = r'''
import os, signal, sys
from pathlib import Path
import engine.packs as P
from engine import DataFolder
P.sync_folder = lambda folder: os.kill(os.getpid(), signal.SIGKILL)
with DataFolder(Path(sys.argv[1])) as data:
    P.PackRegistry(data).export(1, "L1", Path(sys.argv[2]), parts=65, chunk_bytes=8192)
'''


def test_a_killed_export_of_many_parts_leaves_no_signed_pack_under_a_hidden_name(pack_world):
    """Before, every hidden .part name was removed only once all parts were placed: a kill
    left whole signed packs under names `pack list` and `pack revoke` do not see."""
    tmp, keys, brand = pack_world
    out = tmp / "packs"
    got = _child(_KILLED, tmp / "wuma-data", out)
    assert got.returncode == -signal.SIGKILL, got.stderr.decode()[-2000:]
    hidden = [f for f in out.iterdir() if f.name.endswith(".part")]
    assert hidden  # the parts not yet placed: unsigned
    for f in hidden:
        with pytest.raises(PackError, match="signature"):
            open_pack(f, keys, brand, io.BytesIO())


def test_revoke_removes_the_hidden_copy_left_beside_a_pack_never_placed(pack_world):
    """Before, `pack revoke` removed only the pack's own name: a signed hidden copy (the
    pack being placed when its export was killed) still opened after the range was
    exported again."""
    tmp, keys, brand = pack_world
    out = tmp / "packs"
    got = _child(_KILLED, tmp / "wuma-data", out)
    assert got.returncode == -signal.SIGKILL
    with DataFolder(tmp / "wuma-data") as data:
        reg = PackRegistry(data)
        todo = [p for p in reg.list() if p["placed_at"] is None]
        assert len(todo) == 65
        path = todo[1]["path"]
        left = out / f".{os.path.basename(path)}.k3x9_q2z.part"  # as a kill between link and unlink
        left.write_bytes(b"signed pack")
        other = out / "notes.part"
        other.write_bytes(b"")
        reg.revoke_all([p["id"] for p in todo])
        assert not left.exists() and other.exists()
        assert not any(f.name.endswith(".wpk") for f in out.iterdir())


def test_a_line_revoked_while_its_export_runs_gets_no_packs(world):
    """Before, only an export started after the revoke was refused."""
    reg, _keys, _brand, batch, tmp = world
    revoked = []

    def progress(n) -> None:
        if not revoked:
            revoked.append(reg.lines.revoke("L1"))

    with pytest.raises(Conflict, match="line L1 is revoked; it gets no packs"):
        reg.export(batch.id, "L1", tmp / "packs", parts=2, chunk_bytes=test_packs.CHUNK, progress=progress)
    assert reg.list() == []  # nothing registered
    assert list((tmp / "packs").iterdir()) == []  # the unsigned parts discarded


def test_a_line_revoked_while_its_packs_are_placed_fails_the_export(world, monkeypatch):
    reg, _keys, _brand, batch, tmp = world
    import engine.packs as P
    real = P._place_new

    def place(file) -> None:
        real(file)
        if reg.lines.get("L1").revoked_at is None:
            reg.lines.revoke("L1")

    monkeypatch.setattr(P, "_place_new", place)
    with pytest.raises(Conflict, match="line L1 is revoked"):
        reg.export(batch.id, "L1", tmp / "packs", parts=2, chunk_bytes=test_packs.CHUNK)
    packs = reg.list()
    assert len(packs) == 2 and all(p["export_failed_at"] and p["placed_at"] is None for p in packs)
    assert list((tmp / "packs").iterdir()) == []


@pytest.mark.parametrize("kind", ["x25519", "ed25519"])
def test_a_key_of_a_line_revoked_or_not_is_never_registered_again(world, kind):
    """Before, only both keys together were refused: a revoked line's X25519 key (the one
    that unwraps its packs) came back under a new name with a fresh Ed25519 key."""
    reg, _keys, _brand, _batch, tmp = world
    reg.lines.revoke("L1")
    pub = json.loads((tmp / "line1" / "line.pub").read_text())
    generate_line_keys(tmp / "fresh")
    fresh = json.loads((tmp / "fresh" / "line.pub").read_text())
    other = "ed25519" if kind == "x25519" else "x25519"
    pub[other] = fresh[other]
    pub.pop("fingerprint")
    with pytest.raises(Conflict, match=r"already registered as line L1 \(revoked\).*wuma line keygen"):
        reg.lines.add("L1b", json.dumps(pub).encode())
    assert reg.lines.find("L1b") is None
    reg.lines.add("L2", (tmp / "fresh" / "line.pub").read_bytes())


def test_a_pack_id_is_exactly_32_lowercase_hex_digits(pack_world):
    """Before, `$` matched before a trailing newline and bytes.fromhex skipped whitespace:
    GET /packs/<id>%0A was served, its download recorded under another id."""
    tmp, keys, _brand = pack_world
    with DataFolder(tmp / "wuma-data") as data:
        reg = PackRegistry(data)
        (p,) = reg.export(1, "L1", tmp / "packs", stop=100)
        for alias in (p.id + "\n", " " + p.id, p.id.upper(), p.id[:16] + " " + p.id[16:]):
            with pytest.raises(NotFound, match="not a pack id"):
                reg.get(alias)
    client = falcon.testing.TestClient(create_app(tmp / "wuma-data"))
    r = client.simulate_get(f"/packs/{p.id}%0A", headers=sign_request(keys, "GET", f"/packs/{p.id}\n"))
    assert r.status_code == 404
    # a nonce with a final newline, signed as it is: refused (`$` took it before)
    r = client.simulate_get("/packs", headers=sign_request(keys, "GET", "/packs", nonce="0" * 32 + "\n"))
    assert r.status_code == 401


@pytest.mark.parametrize("entry", [{"id": "0" * 32}, {"file": "a.wpk"}, "a.wpk", None,
                                   {"id": 7, "file": "a.wpk"}, {"id": "0" * 32, "file": ["a.wpk"]}])
def test_an_odd_listing_entry_is_a_pull_error(world, monkeypatch, entry):
    """Before, an entry without "file" ended `wuma pack pull` in a KeyError traceback."""
    _reg, keys, _brand, _batch, tmp = world
    monkeypatch.setattr(H, "_listing", lambda *a, **k: {"packs": [entry]})
    with pytest.raises(PullError, match="bad pack entry"):
        pull_packs(keys, "http://127.0.0.1:9", tmp / "pulled", timeout=1)
    monkeypatch.setattr(H, "_listing", lambda *a, **k: {"packs": [], "withheld": [entry]})
    with pytest.raises(PullError, match="bad (withheld pack|list of withheld)"):
        pull_packs(keys, "http://127.0.0.1:9", tmp / "pulled", timeout=1)


def test_keygen_leaves_an_existing_folder_s_mode_alone(tmp_path):
    """Before, `line keygen -o DIR` chmodded an existing DIR to 0700, even to refuse."""
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o755)
    res = CliRunner().invoke(cli, ["line", "keygen", "-o", str(shared)])
    assert res.exit_code == 0, res.output
    assert stat.S_IMODE(os.stat(shared).st_mode) == 0o755
    res = CliRunner().invoke(cli, ["line", "keygen", "-o", str(shared)])
    assert res.exit_code != 0 and "already exists" in res.output
    assert stat.S_IMODE(os.stat(shared).st_mode) == 0o755
    fresh = tmp_path / "new" / "line"
    assert CliRunner().invoke(cli, ["line", "keygen", "-o", str(fresh)]).exit_code == 0
    assert stat.S_IMODE(os.stat(fresh).st_mode) == 0o700
