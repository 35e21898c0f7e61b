"""What a print line relies on from the pack server: it lists and serves a pack only once
the export put it in place; a pack of an export that failed is withheld, never forgotten
(a line holding a copy sets it aside); a slow line's download completes and does not hold
up the others; a download is recorded once it went out whole; an open is recorded once,
for a pack the line downloaded."""

from __future__ import annotations

import errno
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import test_crash_writes
import test_packs
from click.testing import CliRunner
from test_crash_writes import _child
from test_packs_signers import _receipt

import engine.packs as P
from cli.localserver import free_port, stop, wait_until_up
from cli.main import cli
from engine import DataFolder
from engine.http_packs import PackWithheld, check_pack, pull_packs, sign_request
from engine.lines import generate_line_keys
from engine.packs import CLOCK_SKEW, PackError, PackRegistry, open_pack_to_file

world = test_packs.world
pack_world = test_crash_writes.pack_world
ROOT = Path(__file__).resolve().parent.parent
CHUNK = test_packs.CHUNK


class PackServer:
    """The pull server on loopback, as an operator runs it: `wuma pack serve`, or (``raw``)
    the gunicorn command the README gives."""

    def __init__(self, data: Path, *, workers: int = 1, timeout: int = 30, raw: bool = False) -> None:
        self.port = free_port()  # NOTE: the kernel's pick: ports scanned from 18500 up collided with another run's
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = data.parent / f"pack-server-{self.port}.log"
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        if raw:
            env.update(WUMA_DATA=str(data), WUMA_BIND=f"127.0.0.1:{self.port}", WUMA_WORKERS=str(workers),
                       WUMA_TIMEOUT=str(timeout))
            argv = [sys.executable, "-m", "gunicorn", "-c", "python:engine.gunicorn_conf",
                    "engine.http_packs:app_from_env()"]
        else:
            argv = [sys.executable, "-m", "cli", "--data", str(data), "pack", "serve", "--bind",
                    f"127.0.0.1:{self.port}", "--workers", str(workers), "--timeout", str(timeout)]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        if not wait_until_up(self.url + "/packs", timeout=30):  # NOTE: up: 401 unsigned
            self.stop()
            raise RuntimeError(f"the pack server did not start: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop(self.proc)


@pytest.fixture
def pack_server(world):
    reg = world[0]
    server = PackServer(reg._data.path)
    try:
        yield server
    finally:
        server.stop()


def _listing(keys, url) -> dict:
    c = http.client.HTTPConnection("127.0.0.1", int(url.rsplit(":", 1)[1]), timeout=10)
    c.request("GET", "/packs", headers=sign_request(keys, "GET", "/packs"))
    r = c.getresponse()
    assert r.status == 200
    return json.loads(r.read())


def _get(keys, url, pack_id) -> tuple[int, dict | bytes]:
    path = f"/packs/{pack_id}"
    c = http.client.HTTPConnection("127.0.0.1", int(url.rsplit(":", 1)[1]), timeout=10)
    c.request("GET", path, headers=sign_request(keys, "GET", path))
    r = c.getresponse()
    body = r.read()
    return r.status, (json.loads(body) if r.status != 200 else body)


def _events(reg, pack_id: str) -> list[dict]:
    return next(p for p in reg.list() if p["id"] == pack_id)["events"]


def _wait_for(predicate, seconds: float = 10.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(0.05)
    return predicate()


def _cli(data_path: Path, *args):
    return CliRunner().invoke(cli, ["--data", str(data_path), *args])


# -- 2+3. a pack is served only once its export put it in place; a failed export's packs stay --
_ENOSPC = OSError(errno.ENOSPC, "No space left on device")


def _failing_export(world, monkeypatch, during_part0, error=_ENOSPC):
    """Export 2 parts of serials 0:1000; ``during_part0()`` runs once part 0 is in place,
    then placing part 1 fails with ``error`` (Ctrl-C, a disk full)."""
    placed = []
    real = P._WrittenPart.sign_and_place

    def place(part) -> None:
        if placed:
            raise error
        real(part)
        placed.append(part.path)
        during_part0(part.path)

    monkeypatch.setattr(P._WrittenPart, "sign_and_place", place)
    with pytest.raises(type(error)) as raised:
        test_packs._export(world, start=0, stop=1000, parts=2)
    assert raised.value is error  # NOTE: the export's own error, whatever its clean-up met
    monkeypatch.undo()


def test_a_pack_revoked_while_its_export_runs_withdraws_the_export(world, monkeypatch):
    """A pack revoked while its export placed the parts: the export ended well, printing
    every pack as issued, and the line got the others, part of an export, nobody told.
    The export is withdrawn: its packs withheld, its files removed, the brand told why."""
    reg, _keys, _brand, _batch, tmp = world
    real = P._WrittenPart.sign_and_place
    revoked = []

    def place(part) -> None:
        real(part)
        if not revoked:
            revoked.append(reg.revoke(part.record["id"])["id"])

    monkeypatch.setattr(P._WrittenPart, "sign_and_place", place)
    with pytest.raises(P.Conflict, match=rf"pack {revoked[0] if revoked else '[0-9a-f]+'} was revoked "
                                         r"while its export ran: the export is withdrawn .* export serials "
                                         r"0:1000 of batch \d+ again"):
        test_packs._export(world, start=0, stop=1000, parts=3)
    packs = reg.list()
    assert len(packs) == 3 and all(p["export_failed_at"] is not None for p in packs)
    assert os.listdir(tmp / "packs") == []


def test_a_failed_export_removes_its_files_before_it_marks_them(world, monkeypatch):
    """A second Ctrl-C while the clean-up marked the packs left every file in place, marked
    removed (and one being placed was never removed)."""
    reg, _keys, _brand, _batch, tmp = world
    settle, marks = reg._settle, []

    def interrupted(written, field, *args, **kwargs):
        if field == "placed_at":
            return settle(written, field, *args, **kwargs)
        marks.append(os.listdir(tmp / "packs"))
        raise KeyboardInterrupt  # NOTE: the second Ctrl-C, during the mark

    real, placed = P._WrittenPart.sign_and_place, []

    def place(part) -> None:  # part 0 placed, then a Ctrl-C while placing part 1
        if placed:
            raise KeyboardInterrupt
        real(part)
        placed.append(part)

    monkeypatch.setattr(reg, "_settle", interrupted)
    monkeypatch.setattr(P._WrittenPart, "sign_and_place", place)
    with pytest.raises(KeyboardInterrupt):
        test_packs._export(world, start=0, stop=1000, parts=2)
    assert marks == [[]] and os.listdir(tmp / "packs") == []


def test_a_line_pulling_during_an_export_gets_nothing_of_it_until_every_part_is_in_place(
        world, pack_server, monkeypatch):
    """Before, the listing named the packs as soon as they were registered: a pull during an
    export failed with 404 `no longer on the server`, and one after part 0 was placed took
    part 0 of an export that then failed."""
    _reg, keys, _brand, _batch, tmp = world
    seen = []

    def pull(_path) -> None:
        got = pull_packs(keys, pack_server.url, tmp / "pulled")  # NOTE: no PullIncomplete
        seen.append((list(got), [w.id for w in got.withheld], _listing(keys, pack_server.url)))

    _failing_export(world, monkeypatch, pull)
    ((got, set_aside, listing),) = seen
    # NOTE: not listed at all while it runs: a copy of a pack not yet issued is no copy to
    # set aside (a line's was renamed "do not print" and then served the same bytes)
    assert got == [] and set_aside == [] and listing == {"line": "L1", "packs": [], "withheld": []}
    assert not (tmp / "pulled").exists() or os.listdir(tmp / "pulled") == []


@pytest.mark.parametrize("error", [_ENOSPC, KeyboardInterrupt()])
def test_a_failed_exports_packs_are_withheld_and_a_copy_a_line_got_is_set_aside(
        world, pack_server, monkeypatch, error):
    """Before, the error path deleted the packs' records: a copy of part 0 taken from the
    export folder (a shared folder) opened without --server, `pack pull` never set it aside,
    and after the brand exported again the line held two openable packs of the same
    serials (duplicate labels)."""
    reg, keys, brand, batch, tmp = world
    pulled = tmp / "pulled"
    pulled.mkdir()

    def copy(path) -> None:
        shutil.copy(path, pulled / path.name)  # a line's copy, through a shared folder

    _failing_export(world, monkeypatch, copy, error)
    failed = reg.list()
    assert len(failed) == 2 and all(p["export_failed_at"] is not None for p in failed)
    assert not any(p["file_present"] for p in failed)  # the brand's copies are removed
    assert [e["kind"] for e in failed[0]["events"]] == ["issued", "export_failed"]
    (copy_name,) = os.listdir(pulled)
    # the line: `pack open --server` refuses the copy, `pack pull` sets it aside, naming why
    with pytest.raises(PackWithheld, match="its export failed at .* before every pack of it was in place"):
        check_pack(keys, pack_server.url, pulled / copy_name)
    status, body = _get(keys, pack_server.url, failed[0]["id"])
    assert (status, body["error"]) == (410, "export_failed")
    got = pull_packs(keys, pack_server.url, pulled)
    assert got == [] and [w.path.name for w in got.withheld] == [copy_name]
    assert os.listdir(pulled) == [copy_name + ".withheld"]
    # the brand exports again; the line then holds one openable pack per serial
    again = test_packs._export(world, start=0, stop=1000, parts=2)
    got = pull_packs(keys, pack_server.url, pulled)
    assert sorted(p.name for p in got) == sorted(Path(p.path).name for p in again)
    serials = []
    for f in sorted(pulled.glob("*.wpk")):
        o = open_pack_to_file(f, keys, brand, tmp / "codes.csv")
        serials += list(range(o.start, o.stop))
    assert sorted(serials) == list(range(1000))
    reg._data.close()  # NOTE: the CLI opens the folder itself (once a process)
    listing = _cli(reg._data.path, "pack", "list").output
    assert listing.count("export failed at") == 2 and f"export serials 0:500 of batch {batch.id} again" not in listing
    assert listing.count("its serials are in pack(s) exported since: nothing to export again") == 2


def test_an_export_whose_failure_the_store_cannot_mark_leaves_its_packs_unserved(world, monkeypatch):
    """The full disk that failed the export may refuse the mark too: the packs then stay
    not placed (not served either), and the export's own error is the one raised."""
    reg, _keys, _brand, _batch, tmp = world
    real = PackRegistry._settle

    def settle(self, written, field, now, **event) -> None:
        if field == "export_failed_at":
            raise OSError(errno.ENOSPC, "writes stop below 64 MiB")
        real(self, written, field, now, **event)

    monkeypatch.setattr(PackRegistry, "_settle", settle)
    _failing_export(world, monkeypatch, lambda _path: None)
    packs = reg.list()
    assert len(packs) == 2 and {p["withheld_reason"] for p in packs} == {
        "not in place: its export is still running, or was cut off before it placed every file"}
    assert os.listdir(tmp / "packs") == []


def test_a_killed_exports_packs_are_not_served_and_do_not_fail_the_lines_pulls(pack_world):
    """An export killed while placing its files: before, the listing named every pack and
    each pull failed with `404 the file of pack X is no longer on the server`, forever."""
    tmp, keys, _brand = pack_world
    out = tmp / "packs"
    got = _child(test_crash_writes._EXPORT, tmp / "wuma-data", out, "placed", "unnamed")
    assert got.returncode == -signal.SIGKILL, got.stderr.decode()[-2000:]
    (placed,) = os.listdir(out)  # part 0 was put in place, then the process was killed
    server = PackServer(tmp / "wuma-data")
    with DataFolder(tmp / "wuma-data") as data:
        ids = [p["id"] for p in PackRegistry(data).list()]
    try:
        assert _listing(keys, server.url) == {"line": "L1", "packs": [], "withheld": []}
        status, body = _get(keys, server.url, ids[0])
        assert (status, body["error"]) == (404, "pack_not_placed")
        line = tmp / "line-packs"
        assert pull_packs(keys, server.url, line) == []  # nothing to pull, no error
        shutil.copy(out / placed, line / placed)  # a copy taken from the export folder
        # the brand is told what to do: revoke them, which deletes the file left in place
        res = _cli(tmp / "wuma-data", "pack", "list")
        assert res.exit_code == 0 and res.output.count("withheld: not in place: its export is still running, or "
                                                       "was cut off before it placed every file; if no export is "
                                                       "running, revoke it") == 3
        assert "revoke it (`wuma --data" in res.output and "which deletes its file" in res.output
        for pack_id in ids:
            assert _cli(tmp / "wuma-data", "pack", "revoke", pack_id).exit_code == 0
        assert os.listdir(out) == []  # NOTE: it opened without --server: printed twice after a re-export
        got = pull_packs(keys, server.url, line)
        assert [w.path.name for w in got.withheld] == [placed] and os.listdir(line) == [placed + ".withheld"]
    finally:
        server.stop()
    res = _cli(tmp / "wuma-data", "pack", "list")
    assert res.output.count("withheld: never in place: its export was cut off before it placed every file; "
                            "revoked at ") == 3
    assert res.output.count("; export serials ") == 3


_EXPORT_LATE = r'''
import os, signal, sys
from pathlib import Path
import engine.packs as P
from engine import DataFolder

data_path, out, moment = sys.argv[1:]
die = lambda: os.kill(os.getpid(), signal.SIGKILL)
if moment == "all placed":  # every file in place and its folder synced, not yet marked placed
    P.sync_folder = lambda folder, _sync=P.sync_folder: (_sync(folder), die())
if moment == "marked placed":
    settle = P.PackRegistry._settle
    P.PackRegistry._settle = lambda self, *a, **kw: (settle(self, *a, **kw), die())
with DataFolder(Path(data_path)) as data:
    P.PackRegistry(data).export(1, "L1", Path(out), parts=3, chunk_bytes=8192)
'''


@pytest.mark.parametrize("moment", ["all placed", "marked placed"])
def test_an_export_killed_after_placing_leaves_only_registered_packs_served_once_marked(pack_world, moment):
    """The steps this release adds after placing (tests/test_crash_writes.py has the
    earlier ones): a pack that opens is registered, and served only once marked placed."""
    tmp, keys, brand = pack_world
    out = tmp / "packs"
    got = _child(_EXPORT_LATE, tmp / "wuma-data", out, moment)
    assert got.returncode == -signal.SIGKILL, got.stderr.decode()[-2000:]
    with DataFolder(tmp / "wuma-data") as data:
        listed = PackRegistry(data).list()
    opened = {open_pack_to_file(f, keys, brand, tmp / "codes.csv").id for f in out.iterdir()}
    assert opened == {p["id"] for p in listed} and len(opened) == 3
    served = {p["id"] for p in listed if p["withheld_reason"] is None}
    assert served == (opened if moment == "marked placed" else set())


# -- 1. the pull server: a slow line's download completes, and the others are served meanwhile --
def _slow_download(url: str, keys, pack_id: str, result: dict) -> None:
    """Download a pack reading 64 KiB every 30 ms through a small receive window (a line
    on a slow link): ~4 s for 8 MB."""
    path = f"/packs/{pack_id}"
    c = http.client.HTTPConnection("127.0.0.1", int(url.rsplit(":", 1)[1]), timeout=60)
    c.connect()
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 10)
    c.request("GET", path, headers=sign_request(keys, "GET", path))
    r = c.getresponse()
    body = bytearray()
    try:
        while piece := r.read(64 << 10):
            body += piece
            time.sleep(0.03)
    except (OSError, http.client.HTTPException) as e:
        result["error"] = repr(e)
    result.update(status=r.status, body=bytes(body), at=time.monotonic())


@pytest.mark.parametrize("how", ["wuma pack serve", "gunicorn as the README says"])
def test_a_slow_lines_download_outlasts_the_worker_timeout_and_other_lines_are_served_meanwhile(
        world, data, how):
    """Run as the README said (gunicorn's default: one sync worker, 30 s timeout), a download
    taking longer than the timeout was cut every time (WORKER TIMEOUT), and every other
    line waited for the one being served. Here the timeout is 1 s and one worker serves."""
    reg, keys, _brand, _batch, tmp = world
    big = data.create_batch("cap", 200_000)
    (slow,) = reg.export(big.id, "L1", tmp / "packs")
    other = generate_line_keys(tmp / "line2")
    reg.lines.add("L2", (tmp / "line2" / "line.pub").read_bytes())
    (theirs,) = reg.export(data.create_batch("cap", 100).id, "L2", tmp / "packs")
    server = PackServer(data.path, workers=1, timeout=1, raw=how != "wuma pack serve")
    try:
        result: dict = {}
        t = threading.Thread(target=_slow_download, args=(server.url, keys, slow.id, result))
        started = time.monotonic()
        t.start()
        time.sleep(0.5)
        got = pull_packs(other, server.url, tmp / "pulled-L2", timeout=10)
        other_done = time.monotonic()
        t.join(60)
        assert [p.name for p in got] == [Path(theirs.path).name]
        assert other_done - started < 2.5 and other_done < result["at"] - 1  # while L1's went on
        assert result["status"] == 200 and "error" not in result, result.get("error")
        assert result["at"] - started > 2  # longer than the worker timeout
        assert result["body"] == Path(slow.path).read_bytes()
        assert _wait_for(lambda: [e for e in _events(reg, slow.id) if e["kind"] == "download"])
    finally:
        server.stop()
    assert "WORKER TIMEOUT" not in server.log()


# -- 4. a download is recorded once it went out whole ---------------------------------------
def test_a_download_cut_off_is_recorded_as_cut_not_as_a_download(world, data, pack_server):
    """Before, the download was recorded before a byte was sent: attempts cut off counted
    as downloads."""
    reg, keys, _brand, _batch, tmp = world
    big = data.create_batch("cap", 200_000)
    (p,) = reg.export(big.id, "L1", tmp / "packs")
    path = f"/packs/{p.id}"
    c = http.client.HTTPConnection("127.0.0.1", pack_server.port, timeout=10)
    c.connect()
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 10)
    c.request("GET", path, headers=sign_request(keys, "GET", path))
    r = c.getresponse()
    assert r.status == 200 and len(r.read(64 << 10)) == 64 << 10
    c.sock.shutdown(socket.SHUT_RDWR)  # the line's link drops
    c.close()
    cut = _wait_for(lambda: [e for e in _events(reg, p.id) if e["kind"] == "download_cut"])
    assert len(cut) == 1 and 0 <= cut[0]["sent"] < p.size and cut[0]["who"] == "L1"
    assert [e["kind"] for e in _events(reg, p.id)] == ["issued", "download_cut"]
    assert reg.get(p.id)["downloaded_at"] is None
    # a whole one is a download
    pull_packs(keys, pack_server.url, tmp / "pulled")
    assert _wait_for(lambda: reg.get(p.id)["downloaded_at"] is not None)
    assert [e["kind"] for e in _events(reg, p.id)] == ["issued", "download_cut", "download"]
    data.close()  # NOTE: the CLI opens the folder itself (once a process)
    listing = _cli(data.path, "pack", "list", "--batch", str(big.id)).output
    assert "downloads 1 (and 1 cut off), opens 0" in listing


# -- 5. an open receipt: of a pack the line downloaded, dated sensibly, once ---------------------
def test_a_receipt_needs_a_download_a_sensible_time_and_counts_once(world):
    """Before, the line key, a pack id and its count sufficed for `recorded open` of a pack
    never downloaded (a split-key pack whose share the line never had); each opened_at was
    another open; the year 3000 was taken."""
    reg, keys, _brand, _batch, _tmp = world
    (p,) = test_packs._export(world, stop=300, split_key=True)
    now = time.time()
    with pytest.raises(PackError, match=f"line L1 never downloaded pack {p.id} whole"):
        reg.record_open(_receipt(keys, p, 300, now))
    reg.record_download(p.id, "L1", "127.0.0.1", sent=100, now=now - 60)  # cut off: not enough
    with pytest.raises(PackError, match="never downloaded"):
        reg.record_open(_receipt(keys, p, 300, now))
    reg.record_download(p.id, "L1", "127.0.0.1", now=now - 60)
    for at, why in ((32503680000.0, "ahead of this clock"), (now - 60 - CLOCK_SKEW - 1, "before its first download")):
        with pytest.raises(PackError, match=f"dates the open of pack {p.id} {why}"):
            reg.record_open(_receipt(keys, p, 300, at))
    assert not [e for e in _events(reg, p.id) if e["kind"] == "opened"]
    first = reg.record_open(_receipt(keys, p, 300, now - 60 - CLOCK_SKEW + 1))  # a line's clock behind
    assert first["already_recorded"] is False and first["opened_at"] == now - 60 - CLOCK_SKEW + 1
    for at in (now, now + 1):  # another open of the pack: answered as the first
        again = reg.record_open(_receipt(keys, p, 300, at))
        assert again["already_recorded"] is True and again["opened_at"] == first["opened_at"]
    assert len([e for e in _events(reg, p.id) if e["kind"] == "opened"]) == 1


def test_downloads_and_opens_recorded_before_the_upgrade_count(world):
    """A pack's record before this release kept no downloaded_at or opened_at: a pack opened
    then was recorded open again, and an honest receipt dated before a later download (a
    replacement controller pulling it again) was refused."""
    reg, keys, _brand, _batch, _tmp = world
    opened, reopened = test_packs._export(world, stop=600, parts=2)
    now = time.time()
    for p in (opened, reopened):
        reg.record_download(p.id, "L1", "127.0.0.1", now=now - 7200)
    reg.record_open(_receipt(keys, opened, 300, now - 7000))
    with reg._store.write() as txn:  # NOTE: as the earlier release left the records
        for p in (opened, reopened):
            rec = reg._get_raw(txn, p.id)
            del rec["downloaded_at"], rec["opened_at"]
            reg._put(txn, rec)
    assert reg.record_open(_receipt(keys, opened, 300, now - 100))["already_recorded"] is True
    reg.record_download(reopened.id, "L1", "127.0.0.1", now=now - 60)  # pulled again later
    got = reg.record_open(_receipt(keys, reopened, 300, now - 7000))  # its open of before
    assert got["already_recorded"] is False and got["opened_at"] == now - 7000


def test_a_line_reports_the_open_of_a_pack_it_pulled(world, data, pack_server):
    reg, keys, brand, _batch, tmp = world
    (p,) = test_packs._export(world, stop=300)
    (pulled,) = pull_packs(keys, pack_server.url, tmp / "pulled")
    _wait_for(lambda: reg.get(p.id)["downloaded_at"] is not None)
    receipts = [tmp / "receipt.json", tmp / "receipt-2.json"]
    for receipt in receipts:  # opened twice
        open_pack_to_file(pulled, keys, brand, tmp / "codes.csv", receipt=receipt)
    data.close()  # NOTE: the CLI opens the folder itself (once a process)
    res = _cli(data.path, "pack", "report", str(receipts[0]))
    assert res.exit_code == 0 and res.output.startswith(f"recorded open of pack {p.id} by line L1"), res.output
    res = _cli(data.path, "pack", "report", str(receipts[1]))
    assert res.output.startswith(f"already recorded: this open of pack {p.id}"), res.output


# -- 6. one line's listing reads that line's packs, not every line's ----------------------------
def test_a_lines_listing_reads_only_its_own_packs(world, monkeypatch):
    """Before, every listing read every line's packs: 0.5 s a `GET /packs` with 200,000
    packs of other lines."""
    reg, _keys, _brand, batch, tmp = world
    generate_line_keys(tmp / "line2")
    reg.lines.add("L2", (tmp / "line2" / "line.pub").read_bytes())
    reg.export(batch.id, "L2", tmp / "packs", stop=2000, parts=200, chunk_bytes=CHUNK)
    mine = test_packs._export(world, start=2000, stop=2100, parts=2)
    read = []
    real = P.unpack
    monkeypatch.setattr(P, "unpack", lambda raw: read.append(raw) or real(raw))
    assert [p["id"] for p in reg.list(line="L1", events=False)] == [p.id for p in mine]
    assert len(read) == 2
    assert len(reg.list(line="L2", events=False)) == 200 and reg.list(line="L3", events=False) == []


def test_packs_registered_before_the_index_are_listed_and_indexed_at_the_next_export(world):
    reg, _keys, _brand, _batch, _tmp = world
    old = test_packs._export(world, stop=100, parts=2)
    store = reg._data.store
    index = store.db("packs_by_line")  # NOTE: opened outside a write transaction
    with store.write() as txn:  # as a data folder of an earlier release: no index
        txn.drop(index, delete=False)
    assert [p["id"] for p in reg.list(line="L1")] == [p.id for p in old]
    new = test_packs._export(world, start=100, stop=200)
    with store.read() as txn:
        assert sum(1 for _ in txn.cursor(db=index)) == 1 + 3  # the mark, 3 packs
    assert [p["id"] for p in reg.list(line="L1")] == [p.id for p in old + new]
