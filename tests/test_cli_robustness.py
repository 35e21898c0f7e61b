"""The `wuma` command where the world around it is not as expected: a reader that stops
early, closed standard streams, a terminal that does not send UTF-8, endless inputs, a bad
`serve --bind`, a secret file saved by Notepad, output shown once that cannot be printed,
an output that cannot be written after a change.

Through click's CliRunner where it shows the behaviour; through a real process where real
file descriptors matter (a closed stdin or stdout, a pipe whose reader has gone,
/dev/full, a memory limit)."""

from __future__ import annotations

import json
import os
import resource
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_payouts import SECRET, Receiver

from admin.ledger import Ledger
from cli.main import cli
from engine import DataFolder

ROOT = Path(__file__).resolve().parent.parent
#: What a GBK terminal sends for 绿茶, as Python reads it from a UTF-8 locale's command line.
GBK = b"\xc2\xcc\xb2\xe8".decode("utf-8", "surrogateescape")
MEMORY = 1 << 30  # NOTE: a child reading without bound stops at this, not at the OOM killer


@pytest.fixture
def world(tmp_path):
    """A data folder with a batch of 5,000 caps, a print line L1 (its key folder), a pack
    for it and one payable ledger entry."""
    data = tmp_path / "d"
    runner = CliRunner()

    def run(*args):
        res = runner.invoke(cli, ["--data", str(data), *map(str, args)], catch_exceptions=False)
        assert res.exit_code == 0, res.output
        return res

    run("init")
    run("batch", "create", "--level", "cap", "--count", "5000")
    run("line", "brand-keys", "-o", tmp_path / "brand-keys.json")
    run("line", "keygen", "-o", tmp_path / "line", "--brand-key", tmp_path / "brand-keys.json")
    run("line", "add", "L1", "--pubkey", tmp_path / "line" / "line.pub")
    pack = json.loads(run("pack", "export", "1", "--line", "L1", "--range", "0:100", "-o", tmp_path / "packs",
                          "--json").stdout)
    folder = DataFolder(data)
    try:
        ledger = Ledger(folder.store)  # NOTE: before the write: it opens its database
        with folder.store.write() as txn:
            ledger.append(txn, {
                "kind": "grant", "at": 1_800_000_000.0, "amount": 188, "unit": "cash",
                "beneficiary": {"role": "consumer", "id": "oUser1"}, "campaign": 3, "pool": "summer",
                "scan": 77, "settle_with": None})
    finally:
        folder.close()
    run.data, run.tmp, run.pack, run.line = data, tmp_path, Path(pack["path"]), tmp_path / "line"
    return run


def wuma(data, *args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, close=(), memory=None):
    """``wuma --data DATA ARGS`` as a process; ``close``: its file descriptors to close first
    (``<&-``, ``>&-``); ``memory``: its data size limit (``ulimit -d``)."""
    def child() -> None:
        for fd in close:
            os.close(fd)
        if memory:
            resource.setrlimit(resource.RLIMIT_DATA, (memory, memory))

    return subprocess.run([sys.executable, "-m", "cli", "--data", str(data), *map(str, args)], cwd=ROOT,
                          stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, preexec_fn=child, timeout=120,
                          check=False)


def brand_keys_revoked(run) -> list[int]:
    doc = json.loads(run("line", "brand-keys", "-o", "-").stdout)
    return [k["version"] for k in doc["keys"] if k["revoked"]]


# -- A. a reader that stops early ---------------------------------------------------------------
LISTINGS = [
    ["batch", "export", "1", "--plaintext", "-o", "-"],
    ["batch", "list"],
    ["code", "verify", "1Z05JGJADZG79SCFE9CS", "--json"],
    ["epcis", "export", "-o", "-"],
    ["ledger", "export", "-o", "-"],
    ["line", "brand-keys", "-o", "-"],
]


@pytest.mark.parametrize("args", LISTINGS, ids=lambda a: " ".join(a[:2]))
def test_a_reader_gone_before_the_first_byte_ends_the_command_quietly_with_141(world, args):
    """`wuma ... | head` said "Error: Broken pipe" and exit 1. Now as `cat` does: no word,
    status 141 (what a shell reports for a command killed by SIGPIPE), and no "Exception
    ignored ... BrokenPipeError" from Python's last flush."""
    r, w = os.pipe()
    os.close(r)
    try:
        got = wuma(world.data, *args, stdout=w)
    finally:
        os.close(w)
    assert got.returncode == 141 and got.stderr == b"", got.stderr.decode()


def test_head_1_on_an_export_ends_it_quietly_and_only_that(world, monkeypatch):
    proc = subprocess.Popen([sys.executable, "-m", "cli", "--data", str(world.data), "batch", "export", "1",
                             "--plaintext", "-o", "-"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    proc.stdout.close()  # NOTE: 5,000 rows are more than a pipe holds: the export is cut off
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141
    assert first.startswith(b"serial,cap_outer,cap_inner")
    assert err == b"", err.decode()

    # only standard output's reader gone is quiet: another broken pipe (a connection) is an
    # error with its message
    def broken(*args, **kwargs):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr("engine.data.DataFolder.rotate_key", broken)
    res = CliRunner().invoke(cli, ["--data", str(world.data), "key", "rotate"])
    assert res.exit_code == 1 and "Error: Broken pipe" in res.output


# -- B. closed standard streams -----------------------------------------------------------------
def test_closed_stdin_is_named(world):
    for args in (["code", "verify", "-"], ["campaign", "create", "-"],
                 ["pack", "open", world.pack, "--key", world.line, "--share-file", "-", "-o", world.tmp / "c.csv"]):
        got = wuma(world.data, *args, close=(0,))
        err = got.stderr.decode()
        assert got.returncode == 1 and "Traceback" not in err, err
        assert err.startswith("Error: standard input is closed, so `-` has nothing to read"), err
    assert not (world.tmp / "c.csv").exists()


def test_closed_stdout_is_named_before_anything_is_done(world):
    for args in (["batch", "export", "1", "--plaintext", "--range", "0:3", "-o", "-"], ["epcis", "export", "-o", "-"],
                 ["ledger", "export", "-o", "-"], ["line", "brand-keys", "-o", "-", "--revoke-version", "1"],
                 ["pack", "open", world.pack, "--key", world.line, "-o", "-"]):
        got = wuma(world.data, *args, close=(1,))
        err = got.stderr.decode()
        assert got.returncode == 1 and "Traceback" not in err, err
        assert err.startswith("Error: standard output is closed, so `-o -` has nowhere to write"), err
    assert brand_keys_revoked(world) == []  # NOTE: refused before the revocation


# -- C. arguments that are not UTF-8 --------------------------------------------------------------
def test_an_argument_from_a_gbk_terminal_is_refused_up_front_naming_it(world):
    r = CliRunner()
    res = r.invoke(cli, ["--data", str(world.data), "product", "add", "GT-1", "--name", GBK])
    assert res.exit_code == 2, res.output
    assert 'Error: the value of --name, "\\xc2\\xcc\\xb2\\xe8", is not UTF-8 text (read as GBK it is "绿茶")' \
        in res.output
    assert "the terminal does not send UTF-8" in res.output and "set it to UTF-8" in res.output
    res = r.invoke(cli, ["--data", str(world.data), "void", "--range", "1:5:6", f"--reason={GBK}"])
    assert res.exit_code == 2 and "Error: --reason, " in res.output, res.output
    res = r.invoke(cli, ["--data", str(world.data), "ship", GBK, "--to", "d-1"])
    assert res.exit_code == 2 and "Error: argument 4, " in res.output, res.output
    assert "GT-1" not in world("product", "list").output
    assert "voided" not in world("batch", "list").output


def test_init_at_a_path_from_a_gbk_terminal_creates_nothing(tmp_path):
    target = tmp_path / f"data-{GBK}"
    for _ in range(2):  # NOTE: a second try said the same, not "already exists"
        res = CliRunner().invoke(cli, ["--data", str(target), "init"])
        assert res.exit_code == 2 and "Error: the value of --data" in res.output, res.output
        assert "is not UTF-8 text" in res.output
    assert os.listdir(tmp_path) == []
    res = CliRunner().invoke(cli, ["init"], env={"WUMA_DATA": str(target)})
    assert res.exit_code == 2 and "Error: WUMA_DATA, " in res.output and "is not UTF-8" in res.output
    assert os.listdir(tmp_path) == []


def test_a_file_whose_name_on_disk_is_gbk_is_read_as_given(world):
    # NOTE: unzipped from a Windows archive: its name is GBK bytes on disk (广州), and the
    # command line passes those bytes as they are
    name = os.fsdecode(os.fsencode(world.tmp) + b"/centres-\xb9\xe3\xd6\xdd.csv")
    Path(name).write_bytes(b"440100,23.13,113.26\n")
    res = CliRunner().invoke(cli, ["--data", str(world.data), "region", "import", name])
    assert res.exit_code == 0 and "1 division centres loaded" in res.output, res.output
    # a name that is no file is still refused, as any text that is not UTF-8
    res = CliRunner().invoke(cli, ["--data", str(world.data), "region", "import", name + "x"])
    assert res.exit_code == 2 and "Error: argument 5, " in res.output and "is not UTF-8 text" in res.output


def test_a_data_folder_whose_name_is_not_utf8_is_refused_even_if_it_exists(tmp_path):
    target = tmp_path / f"data-{GBK}"
    target.mkdir()
    res = CliRunner().invoke(cli, ["--data", str(target), "init"])
    assert res.exit_code == 2 and "Error: the value of --data" in res.output, res.output
    assert os.listdir(target) == []


# -- D. inputs read with a bound ------------------------------------------------------------------
def test_endless_inputs_are_refused_not_read_until_memory_runs_out(world):
    zero = Path("/dev/zero")
    with zero.open("rb") as endless:
        verify = wuma(world.data, "code", "verify", "-", stdin=endless, memory=MEMORY)
        rule = wuma(world.data, "campaign", "create", "-", stdin=endless, memory=MEMORY)
    regions = wuma(world.data, "region", "import", zero, memory=MEMORY)
    share = wuma(world.data, "pack", "open", world.pack, "--key", world.line, "--share-file", zero,
                 "-o", world.tmp / "c.csv", memory=MEMORY)
    for got, msg in ((verify, "Error: stdin: line 1 is over 4 KiB, so it is no code"),
                     (rule, "Error: <stdin>: over 256 KiB, too large for a campaign rule"),
                     (regions, "Error: /dev/zero: over 64 MiB, too large for a table of division centres"),
                     (share, "Error: /dev/zero: over 4 KiB, too large for a key share")):
        err = got.stderr.decode()
        assert got.returncode == 1 and "Traceback" not in err and "MemoryError" not in err, err
        assert err.startswith(msg), err
    assert not (world.tmp / "c.csv").exists()
    # a line longer than any code, within the bound, is still answered invalid, as any input is
    code = world("batch", "export", "1", "--plaintext", "--range", "0:1", "-o", "-").stdout.splitlines()[1]
    res = CliRunner().invoke(cli, ["--data", str(world.data), "code", "verify", "-", "--json"],
                             input="X" * 3000 + "\n" + code.split(",")[1] + "\n")
    assert res.exit_code == 0, res.output
    assert [json.loads(x)["verdict"] for x in res.stdout.splitlines()] == ["invalid", "inactive"]


def test_code_verify_bounds_a_line_by_its_content_not_its_line_break(world):
    """A line of 4,096 bytes was refused as running "over 4 KiB without a line break"."""
    code = world("batch", "export", "1", "--plaintext", "--range", "0:1", "-o", "-").stdout.splitlines()[1]
    code = code.split(",")[1]
    r = CliRunner()
    for lines in (["X" * 4096, code], ["X" * 4096 + "\r", code], ["X" * 4095 + "\r", code]):
        res = r.invoke(cli, ["--data", str(world.data), "code", "verify", "-", "--json"],
                       input="\n".join(lines) + "\n")
        assert res.exit_code == 0, res.output
        assert [json.loads(x)["verdict"] for x in res.stdout.splitlines()] == ["invalid", "inactive"]
    for line in ("X" * 4097 + "\n", "X" * 4097 + "\r\n", "X" * 4097):
        res = r.invoke(cli, ["--data", str(world.data), "code", "verify", "-"], input=code + "\n" + line)
        assert res.exit_code == 1 and "Error: stdin: line 2 is over 4 KiB, so it is no code" in res.output, \
            res.output
        assert f"{code}\tinactive" in res.output  # NOTE: the lines before it are answered


def test_files_too_large_for_what_they_hold_are_refused_by_size(world):
    big = world.tmp / "big.txt"
    big.write_bytes(b"A" * 300_000)
    r = CliRunner()
    base = ["--data", str(world.data)]
    res = r.invoke(cli, [*base, "campaign", "create", str(big)])
    assert res.exit_code == 1 and f"Error: {big}: over 256 KiB, too large for a campaign rule" in res.output
    res = r.invoke(cli, ["pack", "open", str(world.pack), "--key", str(world.line), "--share-file", str(big),
                         "-o", str(world.tmp / "c.csv")])
    assert res.exit_code == 1 and f"Error: {big}: over 4 KiB, too large for a key share" in res.output
    res = r.invoke(cli, [*base, "line", "add", "L2", "--pubkey", str(big)])
    assert res.exit_code == 1 and "too large for a key file" in res.output
    res = r.invoke(cli, [*base, "pack", "report", str(big)])
    assert res.exit_code == 1 and "too large for an open receipt" in res.output
    huge = world.tmp / "centres.csv"
    with huge.open("wb") as fh:
        fh.truncate(65 << 20)  # NOTE: sparse: no disk used
    res = r.invoke(cli, [*base, "region", "import", str(huge)])
    assert res.exit_code == 1 and f"Error: {huge}: over 64 MiB, too large for a table" in res.output, res.output


# -- E. serve --bind --------------------------------------------------------------------------------
BAD_BINDS = [
    ("127.0.0.1:99999", "the port must be a number from 1 to 65535, not '99999'"),
    ("127.0.0.1:0", "the port must be a number from 1 to 65535, not '0'"),
    ("", "no port"),
    ("127.0.0.1", "no port"),
    ("::1:8080", "an IPv6 address goes in brackets"),
    ("[::zz]:8080", "'::zz' is not an IPv6 address"),
    ("[::1]", "no port after the bracketed address"),
    (":8080", "no host before the port"),
    ("127.0.0.1:\uff18\uff10\uff18\uff10", "the port must be a number from 1 to 65535"),  # full-width 8080
    ("unix:", "no socket path after unix:"),
    ("unix:/nonexistent/wuma.sock", "the folder /nonexistent does not exist"),
]


def test_serve_checks_bind_before_starting_anything(world, monkeypatch):
    """Given to gunicorn unchecked, port 99999 was a traceback in its JSON log and an empty
    address a server listening on nothing that exited 0."""
    started = []
    monkeypatch.setattr("cli.scan.os.execve", lambda exe, argv, env: started.append(env["WUMA_BIND"]))
    r = CliRunner()
    for bind, msg in BAD_BINDS:
        res = r.invoke(cli, ["--data", str(world.data), "serve", "--bind", bind])
        assert res.exit_code == 2 and msg in res.output and "Traceback" not in res.output, (bind, res.output)
        assert "give HOST:PORT (127.0.0.1:8080), [IPv6]:PORT ([::1]:8080) or unix:PATH" in res.output
    assert started == []
    good = ["127.0.0.1:8080", "localhost:1", "0.0.0.0:65535", "[::1]:8080", f"unix:{world.tmp}/wuma.sock"]
    for bind in good:
        res = r.invoke(cli, ["--data", str(world.data), "serve", "--bind", bind])
        assert res.exit_code == 0, res.output
    assert started == good


# -- F. payout --secret-file ------------------------------------------------------------------------
def test_secret_file_saved_by_notepad_signs_as_the_receiver_expects(world):
    """A Notepad file (UTF-8 BOM, CRLF) kept the BOM in the HMAC key: every delivery was
    refused by the receiver; a UTF-16 one gave a bare codec error."""
    receiver = Receiver()
    try:
        notepad = world.tmp / "secret.txt"
        notepad.write_bytes(b"\xef\xbb\xbf" + SECRET.encode() + b"\r\n")
        res = world("payout", "deliver", "--url", receiver.url, "--once", "--secret-file", notepad, "--json")
        assert json.loads(res.stdout)["paid"] == 1, res.output
        assert [r["signature_ok"] for r in receiver.requests] == [True]
    finally:
        receiver.close()
    r = CliRunner()
    unicode = world.tmp / "secret-utf16.txt"
    unicode.write_text(SECRET + "\r\n", encoding="utf-16")
    blank = world.tmp / "secret-blank.txt"
    blank.write_bytes(b"\xef\xbb\xbf \r\n")
    for path, msg in ((unicode, f"Error: {unicode}: the file is UTF-16; save it as UTF-8"),
                      (blank, f"Error: no secret in {blank}: it holds nothing but blanks")):
        res = r.invoke(cli, ["--data", str(world.data), "payout", "deliver", "--url", "http://127.0.0.1:9/",
                             "--once", "--secret-file", str(path)])
        assert res.exit_code == 1 and msg in res.output, res.output


# -- G. output shown once ---------------------------------------------------------------------------
def test_a_token_that_cannot_be_printed_says_the_account_exists_and_how_to_get_one(world):
    with open("/dev/full", "wb") as full:
        added = wuma(world.data, "account", "add", "s-77", "--role", "store", stdout=full)
        admin = wuma(world.data, "admin-token", "add", "ops-9", "--role", "admin", stdout=full)
        again = wuma(world.data, "account", "token", "s-77", stdout=full)
    err = added.stderr.decode()
    assert added.returncode == 1 and err.startswith(
        "Error: account s-77 was created, but its token could not be printed (standard output: No space left "
        "on device) and Wuma keeps no copy: give it a new one with "
        f"`wuma --data {world.data} account token s-77`"), err
    err = admin.stderr.decode()
    assert admin.returncode == 1 and "admin token ops-9 was added, but its token could not be printed" in err
    assert f"`wuma --data {world.data} admin-token token ops-9`" in err
    err = again.stderr.decode()
    assert again.returncode == 1 and "account s-77 was given a new token (the old one no longer works), but " \
        "the new token could not be printed" in err and f"run `wuma --data {world.data} account token s-77` again" in err
    # adding it again points to the same way out
    res = CliRunner().invoke(cli, ["--data", str(world.data), "account", "add", "s-77", "--role", "store"])
    assert res.exit_code == 1 and "Error: account s-77 already exists; if its token was lost" in res.output
    assert f"`wuma --data {world.data} account token s-77`" in res.output
    res = CliRunner().invoke(cli, ["--data", str(world.data), "admin-token", "add", "ops-9", "--role", "admin"])
    assert res.exit_code == 1 and f"`wuma --data {world.data} admin-token token ops-9`" in res.output
    # the advice works
    assert "new token (shown once" in world("account", "token", "s-77").stdout
    assert "new token (shown once" in world("admin-token", "token", "ops-9").stdout


def test_adding_again_an_id_that_was_revoked_says_to_use_another_not_to_ask_a_token(world):
    """The advice was `account token ID`, which refuses a revoked account."""
    world("account", "add", "s-5", "--role", "store")
    world("account", "revoke", "s-5")
    world("admin-token", "add", "ops-5", "--role", "admin")
    world("admin-token", "revoke", "ops-5")
    r = CliRunner()
    res = r.invoke(cli, ["--data", str(world.data), "account", "add", "s-5", "--role", "store"])
    assert res.exit_code == 1 and res.output == (
        "Error: account s-5 exists and is revoked (ids are never reused): add the account with another id\n")
    res = r.invoke(cli, ["--data", str(world.data), "admin-token", "add", "ops-5", "--role", "admin"])
    assert res.exit_code == 1 and res.output == (
        "Error: admin token ops-5 exists and is revoked (names are never reused): add one with another name\n")
    # the advice works
    assert "created; token (shown once)" in world("account", "add", "s-6", "--role", "store").stdout


def test_a_token_with_nowhere_to_go_is_not_made(world):
    r, w = os.pipe()
    os.close(r)
    try:
        gone = wuma(world.data, "account", "add", "s-1", "--role", "store", stdout=w)
    finally:
        os.close(w)
    closed = wuma(world.data, "admin-token", "add", "ops-1", "--role", "admin", close=(1,))
    assert gone.returncode == 1 and gone.stderr.decode().startswith(
        "Error: standard output is a pipe whose reader has gone: the token is printed there once"), gone.stderr
    assert closed.returncode == 1 and closed.stderr.decode().startswith(
        "Error: standard output is closed: the token is printed there once"), closed.stderr
    assert "nothing was done" in gone.stderr.decode()
    assert "s-1" not in world("account", "list").stdout
    assert "ops-1" not in world("admin-token", "list").stdout


def test_key_shares_that_cannot_be_printed_say_which_packs_to_revoke_and_export_again(world):
    out = world.tmp / "split"
    with open("/dev/full", "wb") as full:
        got = wuma(world.data, "pack", "export", "1", "--line", "L1", "--range", "100:300", "--parts", "2",
                   "--split-key", "-o", out, stdout=full)
    err = got.stderr.decode()
    listed = [json.loads(x) for x in world("pack", "list", "--json").stdout.splitlines()]
    lost = [p for p in listed if p["start"] >= 100]
    assert got.returncode == 1 and len(lost) == 2, err
    assert err.startswith(f"Error: packs {lost[0]['id']}, {lost[1]['id']} were exported and registered, but their "
                          "key shares could not be printed (standard output: No space left on device)"), err
    again = f"wuma --data {world.data} pack export 1 --line L1 --range 100:300 --parts 2 --split-key -o {out}"
    assert f"(`{again}`)" in err
    for p in lost:
        assert f"`wuma --data {world.data} pack revoke {p['id']}`" in err
        world("pack", "revoke", p["id"])
    shares = [json.loads(x)["share"] for x in world(*again.split()[3:], "--json").stdout.splitlines()]
    assert len(shares) == 2 and all(shares)


def test_key_shares_with_nowhere_to_go_are_not_exported(world):
    got = wuma(world.data, "pack", "export", "1", "--line", "L1", "--range", "100:300", "--split-key",
               "-o", world.tmp / "split", close=(1,))
    assert got.returncode == 1 and got.stderr.decode().startswith(
        "Error: standard output is closed: each pack's key share is printed there once"), got.stderr
    assert len(world("pack", "list").stdout.splitlines()) == 1
    assert not (world.tmp / "split").exists()


# -- H. brand-keys: the output first, then the revocation -------------------------------------------
def test_brand_keys_revokes_nothing_when_its_output_cannot_be_written(world):
    res = CliRunner().invoke(cli, ["--data", str(world.data), "line", "brand-keys", "--revoke-version", "1",
                                   "-o", "/nonexistent/brand-keys.json"])
    assert res.exit_code == 1 and "cannot write /nonexistent/brand-keys.json" in res.output, res.output
    assert brand_keys_revoked(world) == []
    target = world.tmp / "bk.json"
    world("key", "rotate")
    world("line", "brand-keys", "--revoke-version", "1", "-o", target)
    doc = json.loads(target.read_text())
    assert [(k["version"], k["revoked"]) for k in doc["keys"]] == [(1, True), (2, False)]
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # NOTE: public keys, for the lines
    assert [p.name for p in world.tmp.iterdir() if p.name.startswith(".bk.json")] == []
