"""`wuma pack pull` keeps only whole packs, and the server never serves voided codes; an open
report is recorded once."""

from __future__ import annotations

import http.server
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import test_packs
from click.testing import CliRunner
from test_packs import _call, _export

from cli.main import cli
from engine.aggregation import Aggregation
from engine.data import DataFolder
from engine.http_packs import (PackWithheld, PullError, PullIncomplete, check_pack, pull_packs, server_base,
                               sign_request)
from engine.lines import generate_line_keys
from engine.packs import PackRegistry, open_pack_to_file

# The fixtures of test_packs (a registered line L1 with a batch; a real pull server).
world = test_packs.world
server = test_packs.server


def _files(folder: Path) -> list[str]:
    """Every name in the folder, hidden temporary files included."""
    return sorted(os.listdir(folder)) if folder.exists() else []


class _CuttingProxy(http.server.ThreadingHTTPServer):
    """Forwards to the pull server; for the packs in ``cut`` it sends the whole
    Content-Length but half the body, then closes (a connection lost mid-download); with
    ``slow`` set it sends every pack in 8 pieces, 30 ms apart; for the packs in ``drop`` it
    closes the connection without answering (no status line)."""

    daemon_threads = True

    def __init__(self, upstream: str, cut: set[str]) -> None:
        self.upstream, self.cut, self.slow = upstream, cut, False
        self.drop: set[str] = set()
        super().__init__(("127.0.0.1", 0), _CuttingHandler)


class _CuttingHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        if self.path.rsplit("/", 1)[-1] in self.server.drop:
            self.close_connection = True  # the server went away before answering
            return
        headers = {k: v for k, v in self.headers.items() if k.lower().startswith("x-wuma")}
        req = urllib.request.Request(self.server.upstream + self.path, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                body, code = r.read(), r.status
        except urllib.error.HTTPError as e:
            body, code = e.read(), e.code
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if code == 200 and self.path.rsplit("/", 1)[-1] in self.server.cut:
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
        elif code == 200 and self.server.slow and self.path.startswith("/packs/"):
            step = len(body) // 8 + 1
            for i in range(0, len(body), step):
                self.wfile.write(body[i : i + step])
                self.wfile.flush()
                time.sleep(0.03)
        else:
            self.wfile.write(body)


@pytest.fixture
def cutting_proxy(server):
    cut: set[str] = set()
    proxy = _CuttingProxy(server, cut)
    t = threading.Thread(target=proxy.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{proxy.server_address[1]}", cut, proxy
    finally:
        proxy.shutdown()
        proxy.server_close()


# -- 1. a pull keeps only whole packs -------------------------------------------------------
def test_pull_cut_off_keeps_nothing_of_that_pack_and_pulls_the_others(world, cutting_proxy):
    _reg, keys, brand, _batch, tmp = world
    url, cut, _proxy = cutting_proxy
    first, second = _export(world, start=0, stop=1000, parts=2)
    cut.add(first.id)
    out = tmp / "pulled"
    with pytest.raises(PullIncomplete, match=f"pack {first.id}: received .* not its") as e:
        pull_packs(keys, url, out)
    assert e.value.failed[0][0] == first.id and len(e.value.failed) == 1
    assert [p.name for p in e.value.pulled] == [os.path.basename(second.path)]
    assert _files(out) == [os.path.basename(second.path)]  # no .part, no short .wpk
    # the next pull gets it whole, and leaves the one already there alone
    cut.clear()
    got = pull_packs(keys, url, out)
    assert [p.name for p in got] == [os.path.basename(first.path)]
    for p in (first, second):
        pulled = out / os.path.basename(p.path)
        assert pulled.read_bytes() == Path(p.path).read_bytes()
        open_pack_to_file(pulled, keys, brand, tmp / "codes.csv")


def test_cli_pull_cut_off_fails_naming_the_pack(world, cutting_proxy):
    _reg, _keys, _brand, _batch, tmp = world
    url, cut, _proxy = cutting_proxy
    first, second = _export(world, start=0, stop=1000, parts=2)
    cut.add(second.id)
    res = CliRunner().invoke(
        cli, ["pack", "pull", "--line", str(tmp / "line1"), "--server", url, "-o", str(tmp / "p")]
    )
    assert res.exit_code == 1
    assert f"pack {second.id}: received" in res.output and "pull again" in res.output
    assert str(tmp / "p" / os.path.basename(first.path)) in res.output
    assert _files(tmp / "p") == [os.path.basename(first.path)]


@pytest.mark.parametrize("damage", ["truncate", "signature"])
def test_pull_of_a_pack_damaged_on_the_server_keeps_nothing(world, server, damage):
    _reg, keys, _brand, _batch, tmp = world
    (p,) = _export(world, stop=500)
    path = Path(p.path)
    if damage == "truncate":  # the reviewer's `truncate -s 1000`
        os.truncate(path, 1000)
    else:  # the last bytes: outside the signed digest, in the whole-file one
        blob = bytearray(path.read_bytes())
        blob[-1] ^= 1
        path.write_bytes(bytes(blob))
    with pytest.raises(PullIncomplete, match=p.id):
        pull_packs(keys, server, tmp / "pulled")
    assert _files(tmp / "pulled") == []


def test_pull_replaces_a_damaged_copy_in_the_folder(world, server):
    _reg, keys, _brand, _batch, tmp = world
    (p,) = _export(world, stop=500)
    out = tmp / "pulled"
    out.mkdir()
    target = out / os.path.basename(p.path)
    target.write_bytes(Path(p.path).read_bytes()[:1000])  # what an earlier pull left
    assert pull_packs(keys, server, out) == [target]
    assert target.read_bytes() == Path(p.path).read_bytes()
    assert pull_packs(keys, server, out) == []  # whole now: skipped
    assert _files(out) == [target.name]


def test_two_pulls_into_one_folder_do_not_meet(world, cutting_proxy):
    _reg, keys, _brand, _batch, tmp = world
    server, _cut, proxy = cutting_proxy
    proxy.slow = True  # NOTE: both pulls are then in the middle of the same pack
    packs = _export(world, start=0, stop=3000, parts=3)
    out = tmp / "pulled"
    errors: list[BaseException] = []

    def pull() -> None:
        try:
            pull_packs(keys, server, out)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=pull) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert _files(out) == sorted(os.path.basename(p.path) for p in packs)
    for p in packs:
        assert (out / os.path.basename(p.path)).read_bytes() == Path(p.path).read_bytes()


def test_pull_of_a_pack_without_answer_pulls_the_others(world, cutting_proxy):
    _reg, _keys, _brand, _batch, tmp = world
    url, _cut, proxy = cutting_proxy
    first, second, third = _export(world, start=0, stop=3000, parts=3)
    proxy.drop.add(second.id)
    out = tmp / "p"
    res = CliRunner().invoke(
        cli, ["pack", "pull", "--line", str(tmp / "line1"), "--server", url, "-o", str(out)]
    )
    assert res.exit_code == 1
    assert f"pack {second.id}: {url}/packs/{second.id}: no answer (RemoteDisconnected" in res.output
    kept = sorted(os.path.basename(p.path) for p in (first, third))
    for name in kept:
        assert str(out / name) in res.output
    assert _files(out) == kept


class _FailingWrites:
    """``os`` for engine.files (where a pull writes), with ``write`` failing like a full disk, and a record
    of the names in ``folder`` at each write."""

    def __init__(self, folder: Path, fail: bool) -> None:
        self.folder, self.fail, self.seen = folder, fail, []

    def __getattr__(self, name):
        return getattr(os, name)

    def write(self, fd, data):
        self.seen.append(_files(self.folder))
        if self.fail:
            raise OSError(28, os.strerror(28))
        return os.write(fd, data)


def test_pull_stops_at_a_local_write_error(world, server, monkeypatch):
    from engine import files

    _reg, keys, _brand, _batch, tmp = world
    first, second = _export(world, start=0, stop=1000, parts=2)
    out = tmp / "pulled"
    out.mkdir()
    (out / os.path.basename(first.path)).write_bytes(Path(first.path).read_bytes())
    fake = _FailingWrites(out, fail=True)
    monkeypatch.setattr(files, "os", fake)
    target = out / os.path.basename(second.path)
    with pytest.raises(PullIncomplete, match=f"cannot write {target}: No space left") as e:
        pull_packs(keys, server, out)
    assert "cut off" not in str(e.value) and e.value.failed == [] and e.value.pulled == []
    assert len(fake.seen) == 1  # NOTE: stopped at once, not tried again
    assert _files(out) == [os.path.basename(first.path)]


def test_a_pack_has_no_name_until_it_is_whole(world, server, monkeypatch):
    """So a killed pull leaves nothing behind (O_TMPFILE)."""
    from engine import files
    from engine.files import open_unnamed

    _reg, keys, _brand, _batch, tmp = world
    out = tmp / "pulled"
    out.mkdir()
    fd = open_unnamed(out)
    if fd is None:
        pytest.skip("no O_TMPFILE here")
    os.close(fd)
    packs = _export(world, start=0, stop=2000, parts=2)
    fake = _FailingWrites(out, fail=False)
    monkeypatch.setattr(files, "os", fake)
    got = pull_packs(keys, server, out)
    assert sorted(p.name for p in got) == sorted(os.path.basename(p.path) for p in packs)
    first = os.path.basename(packs[0].path)
    assert fake.seen and all(names in ([], [first]) for names in fake.seen), fake.seen


def test_listing_digests_checked_whatever_the_read_sizes(world):
    from engine.http_packs import _Expect

    reg, *_rest = world
    (p,) = _export(world, stop=500)
    (rec,) = [r for r in reg.list() if r["id"] == p.id]
    blob = Path(p.path).read_bytes()
    expect = _Expect(rec)
    for step in (1, 7, 64, 65, len(blob) - 64, len(blob) - 63, len(blob)):
        for data, ok in ((blob, True), (blob[:-1] + bytes([blob[-1] ^ 1]), False)):
            hashers, at = expect.hashers(), 0
            for i in range(0, len(data), step):
                expect.feed(hashers, at, data[i : i + step])
                at += len(data[i : i + step])
            assert (expect.mismatch(hashers, at) is None) is ok, step


# -- 2. packs with codes voided since the export are not served ------------------------------
def test_packs_with_voided_codes_are_not_listed_nor_served(world, server, data):
    reg, keys, _brand, batch, tmp = world
    kept, hit = _export(world, start=0, stop=200, parts=2)
    Aggregation(data).void(serial_range=(batch.id, 150, 160), reason="labels destroyed")
    status, body = _call(server, "/packs", sign_request(keys, "GET", "/packs"))
    assert status == 200 and [p["id"] for p in json.loads(body)["packs"]] == [kept.id]
    path = f"/packs/{hit.id}"
    status, body = _call(server, path, sign_request(keys, "GET", path))
    answer = json.loads(body)
    assert status == 410 and answer["error"] == "codes_voided"
    assert hit.id in answer["message"] and "serial 150" in answer["message"]
    assert "voided" in answer["message"]
    assert [p.name for p in pull_packs(keys, server, tmp / "pulled")] == [
        os.path.basename(kept.path)
    ]
    (listed,) = [p for p in reg.list() if p["id"] == hit.id]
    assert listed["voided_serial"] == 150
    assert not any(e["kind"] == "download" for e in listed["events"])
    data.close()  # NOTE: the CLI opens the folder itself (once a process)
    cli_data = ["--data", str(data.path)]
    res = CliRunner().invoke(cli, [*cli_data, "pack", "list"])
    assert res.exit_code == 0, res.output
    by_id = {line.split(":")[0]: line for line in res.output.splitlines()}
    assert "withheld: codes voided: serial 150" in by_id[f"pack {hit.id}"]
    assert "voided" not in by_id[f"pack {kept.id}"]
    # `wuma void --batch` takes the other one off too
    res = CliRunner().invoke(
        cli, [*cli_data, "void", "--batch", str(batch.id), "--reason", "recall"]
    )
    assert res.exit_code == 0, res.output
    status, body = _call(server, "/packs", sign_request(keys, "GET", "/packs"))
    assert json.loads(body)["packs"] == []
    path = f"/packs/{kept.id}"
    assert _call(server, path, sign_request(keys, "GET", path))[0] == 410


def test_local_copy_of_a_pack_voided_since_is_set_aside(world, server, data):
    _reg, _keys, _brand, batch, tmp = world
    kept, hit = _export(world, start=0, stop=200, parts=2)
    out = tmp / "p"
    pull = ["pack", "pull", "--line", str(tmp / "line1"), "--server", server, "-o", str(out)]
    res = CliRunner().invoke(cli, pull)
    assert res.exit_code == 0, res.output
    names = {p.id: os.path.basename(p.path) for p in (kept, hit)}
    assert _files(out) == sorted(names.values())
    kept_bytes = (out / names[kept.id]).read_bytes()
    Aggregation(data).void(serial_range=(batch.id, 150, 160), reason="labels destroyed")
    res = CliRunner().invoke(cli, pull)
    assert res.exit_code == 1, res.output
    aside = out / f"{names[hit.id]}.withheld"
    assert f"pack {hit.id} withheld: codes voided: serial 150 of batch {batch.id}" in res.output
    assert f"its local copy renamed to {aside}: do not print it" in res.output
    assert _files(out) == sorted([names[kept.id], aside.name])  # renamed, not deleted
    assert aside.read_bytes() == Path(hit.path).read_bytes()
    assert (out / names[kept.id]).read_bytes() == kept_bytes  # the other one untouched
    # nothing new to set aside: the next pull succeeds
    res = CliRunner().invoke(cli, pull)
    assert res.exit_code == 0, res.output
    assert "withheld" not in res.output
    assert _files(out) == sorted([names[kept.id], aside.name])


def test_local_copy_of_a_revoked_pack_is_set_aside_never_over_another(world, server):
    reg, keys, _brand, _batch, tmp = world
    kept, hit = _export(world, start=0, stop=200, parts=2)
    out = tmp / "pulled"
    assert len(pull_packs(keys, server, out)) == 2
    name = os.path.basename(hit.path)
    (out / f"{name}.withheld").write_bytes(b"an earlier copy set aside")
    reg.revoke(hit.id, now=1_800_000_000.0)
    # the listing keeps its old fields for an older client, with the withheld ones beside
    status, body = _call(server, "/packs", sign_request(keys, "GET", "/packs"))
    listing = json.loads(body)
    assert status == 200 and [p["id"] for p in listing["packs"]] == [kept.id]
    assert listing["withheld"] == [
        {"id": hit.id, "file": name, "reason": "revoked at 2027-01-15 16:00:00+08:00"}
    ]
    path = f"/packs/{hit.id}"  # and its file is refused with a code of its own
    status, body = _call(server, path, sign_request(keys, "GET", path))
    assert (status, json.loads(body)) == (410, {
        "error": "pack_revoked",
        "message": f"pack {hit.id} is withheld: revoked at 2027-01-15 16:00:00+08:00: it must not be printed"})
    got = pull_packs(keys, server, out)
    assert got == []
    (w,) = got.withheld
    assert (w.id, w.path, w.renamed) == (hit.id, out / name, out / f"{name}.withheld.2")
    assert w.reason == "revoked at 2027-01-15 16:00:00+08:00"
    assert (out / f"{name}.withheld").read_bytes() == b"an earlier copy set aside"
    assert (out / f"{name}.withheld.2").read_bytes() == Path(hit.path).read_bytes()
    assert _files(out) == sorted(
        [os.path.basename(kept.path), f"{name}.withheld", f"{name}.withheld.2"]
    )
    again = pull_packs(keys, server, out)
    assert again == [] and again.withheld == []


def test_open_asks_the_server_about_a_copy_kept_anywhere(world, server, data, monkeypatch):
    """A copy of a pack kept outside the pull folder (a USB stick) is out of reach of the
    pull's set-aside: `pack open --server` asks first, and refuses a pack revoked, voided
    since, or not issued to this line, writing nothing. A pack the server serves opens."""
    reg, keys, _brand, batch, tmp = world
    kept, voided, revoked = _export(world, start=0, stop=300, parts=3)
    stick = tmp / "usb"
    stick.mkdir()
    for p in (kept, voided, revoked):
        (stick / os.path.basename(p.path)).write_bytes(Path(p.path).read_bytes())
    Aggregation(data).void(serial_range=(batch.id, 150, 160), reason="labels destroyed")
    reg.revoke(revoked.id, now=1_800_000_000.0)
    data.close()  # NOTE: the CLI opens the folder itself (once a process)

    def open_(p, *extra, env=None):
        out = tmp / f"codes-{p.id}.csv"
        args = ["pack", "open", str(stick / os.path.basename(p.path)), "--key", str(tmp / "line1"),
                "-o", str(out), *extra]
        return CliRunner().invoke(cli, args, env=env), out

    res, out = open_(voided, "--server", server)
    assert res.exit_code == 1 and not out.exists(), res.output
    assert f"pack {voided.id} is withheld by {server}: codes voided: serial 150" in res.output
    assert "do not print it" in res.output and "Traceback" not in res.output
    res, out = open_(revoked, env={"WUMA_PACK_SERVER": server})  # the line's setting
    assert res.exit_code == 1 and not out.exists(), res.output
    assert "revoked at 2027-01-15 16:00:00+08:00" in res.output
    res, out = open_(kept, "--server", server)
    assert res.exit_code == 0, res.output
    assert len(out.read_text().splitlines()) == 1 + kept.count  # a header row, then the codes
    # not issued to this line: another line's key folder asks about it
    other = generate_line_keys(tmp / "line2", brand_keys=(tmp / "brand-keys.json").read_bytes())
    with DataFolder(reg._data.path) as again:
        PackRegistry(again).lines.add("L2", (tmp / "line2" / "line.pub").read_bytes())
    with pytest.raises(PackWithheld, match=f"pack {kept.id} is not issued to this line"):
        check_pack(other, server, Path(kept.path))
    # the file swapped for a revoked pack after the server vouched for it (a shared folder)
    out.unlink()
    checked = check_pack

    def swapped_after_the_check(keys, server, path, **kw):
        got = checked(keys, server, path, **kw)
        Path(path).write_bytes(Path(revoked.path).read_bytes())
        return got

    monkeypatch.setattr("engine.http_packs.check_pack", swapped_after_the_check)
    res, out = open_(kept, "--server", server)
    monkeypatch.undo()
    assert res.exit_code == 1 and not out.exists(), res.output
    assert f"is no longer pack {kept.id}" in res.output and f"but pack {revoked.id}" in res.output
    (stick / os.path.basename(kept.path)).write_bytes(Path(kept.path).read_bytes())
    # a server that cannot answer: a message, nothing opened
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    res, out = open_(kept, "--server", dead)
    assert res.exit_code == 1 and f"cannot reach {dead}" in res.output and not out.exists()


# -- 3. an open report is recorded once; a revoked pack's open is flagged ---------------------
def test_report_replayed_is_recorded_once(world, data):
    reg, keys, brand, _batch, tmp = world
    (p,) = _export(world, stop=300)
    reg.record_download(p.id, "L1", "127.0.0.1")  # NOTE: a line reports the opens of packs it pulled
    got = open_pack_to_file(p.path, keys, brand, tmp / "codes.csv")
    assert reg.record_open(got.receipt)["already_recorded"] is False
    assert reg.record_open(got.receipt)["already_recorded"] is True
    # the same body, re-encoded (other JSON spacing): the same open
    d = json.loads(got.receipt)
    assert reg.record_open(json.dumps(d, indent=2).encode())["already_recorded"] is True
    opens = [e for e in reg.list()[0]["events"] if e["kind"] == "opened"]
    assert len(opens) == 1
    # another open of the same pack answers as the first: one open a pack
    again = open_pack_to_file(p.path, keys, brand, tmp / "codes2.csv", now=time.time() + 1)
    assert reg.record_open(again.receipt)["already_recorded"] is True
    assert len([e for e in reg.list()[0]["events"] if e["kind"] == "opened"]) == 1
    receipt = tmp / "r.json"
    receipt.write_bytes(again.receipt)
    data.close()  # NOTE: the CLI opens the folder itself (once a process)
    res = CliRunner().invoke(cli, ["--data", str(data.path), "pack", "report", str(receipt)])
    assert res.exit_code == 0, res.output
    assert res.output.startswith(f"already recorded: this open of pack {p.id}")


@pytest.mark.parametrize("after", ["revoked", "voided"])
def test_report_of_a_pack_revoked_or_voided_since_says_so(world, data, after):
    from engine.aggregation import Aggregation

    reg, keys, brand, batch, tmp = world
    (p,) = _export(world, stop=300)
    reg.record_download(p.id, "L1", "127.0.0.1")
    got = open_pack_to_file(p.path, keys, brand, tmp / "codes.csv")
    if after == "revoked":
        reg.revoke(p.id, now=1_800_000_000.0)
    else:
        Aggregation(data).void(serial_range=(batch.id, 150, 160), reason="labels destroyed")
    receipt = tmp / "r.json"
    receipt.write_bytes(got.receipt)
    data.close()  # NOTE: the CLI opens the folder itself (once a process)
    res = CliRunner().invoke(cli, ["--data", str(data.path), "pack", "report", str(receipt)])
    assert res.exit_code == 0, res.output
    assert f"recorded open of pack {p.id}" in res.output
    events = [e["kind"] for e in json.loads(CliRunner().invoke(
        cli, ["--data", str(data.path), "pack", "list", "--json"]).output.splitlines()[0])["events"]]
    if after == "revoked":
        assert f"pack {p.id} is withheld (revoked at 2027-01-15 16:00:00+08:00)" in res.output
        assert "its codes should not have been printed" in res.output
        assert events == ["issued", "download", "revoked", "opened"]
    else:
        assert (f"pack {p.id} is withheld (codes voided: serial 150 of batch {batch.id} (maybe more in 0:300)): "
                "its codes should not have been printed") in res.output
        assert events == ["issued", "download", "opened"]


def test_the_pack_server_address_is_checked_and_a_password_in_it_never_echoed(world, tmp_path):
    """A password in the address was echoed in the error ("cannot reach http://line7:S3cret@
    ...", with a wrong cause: urllib read it as a port); an address that is no URL was
    reported as "the answer is not JSON", though nothing was asked."""
    _reg, keys, _brand, _batch, tmp = world
    assert server_base("HTTPS://Packs.Example.cn:8443/wuma/") == "https://packs.example.cn:8443/wuma"
    assert server_base("http://[::1]:8080") == "http://[::1]:8080"
    for address, why in (("https://line7:S3cretProxyPass@packs.example.cn", "user name or password"),
                         ("packs.example.cn", "an address such as"), ("ftp://packs.example.cn", "http or https"),
                         ("https://packs.example.cn:99999", "an address such as"),
                         ("https://packs.example.cn/?line=7", "no query")):
        for call in (lambda: pull_packs(keys, address, tmp / "pulled", timeout=1),
                     lambda: check_pack(keys, address, tmp / "any.wpk", timeout=1)):
            with pytest.raises(PullError, match=why) as e:
                call()
            assert "S3cret" not in str(e.value)
    assert not (tmp / "pulled").exists()  # refused before anything was made
