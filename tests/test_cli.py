"""The `wuma` command: each command through click, as a user runs it."""

import errno
import json
import os
import re
import shutil
import stat
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from cli.main import cli

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.fixture
def run(tmp_path):
    runner = CliRunner()
    data = tmp_path / "wuma-data"

    def invoke(*args, input=None, ok=True):
        res = runner.invoke(cli, ["--data", str(data), *args], input=input, catch_exceptions=False)
        if ok:
            assert res.exit_code == 0, res.output
        return res

    invoke.data = data
    return invoke


def _commands(group, prefix=()):
    for name, cmd in group.commands.items():
        path = (*prefix, name)
        yield path, cmd
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, path)


def test_every_command_has_help_with_example_and_is_in_readme():
    readme = README.read_text()
    for path, cmd in _commands(cli):
        assert cmd.help and "Example:" in cmd.help, " ".join(path)
        if not isinstance(cmd, click.Group):
            assert f"wuma {' '.join(path)}" in readme, f"README does not document: wuma {' '.join(path)}"


def test_init_batch_export_verify(run, tmp_path):
    out = run("init", "--json")
    info = json.loads(out.output)
    assert info["spec"] == "beverage" and info["key_version"] == 1
    key = (run.data / "keys" / "master-v1.key").read_bytes()
    assert key.hex() not in out.output
    b = json.loads(run("batch", "create", "--level", "cap", "--count", "5000", "--json").output)
    assert b["state"] == "generated" and b["roles"] == ["cap_outer", "cap_inner"]
    lines = run("batch", "list", "--json").output.splitlines()
    assert [json.loads(x)["id"] for x in lines] == [1]
    show = json.loads(run("batch", "show", "1", "--json").output)
    assert show["code_formats"]["cap_inner"]["tag_bits"] == 40
    csv = tmp_path / "codes.csv"
    run("batch", "export", "1", "--plaintext", "-o", str(csv))
    rows = csv.read_text().splitlines()
    assert rows[0] == "serial,cap_outer,cap_inner"
    assert len(rows) == 5001
    serial, outer, inner = rows[4001].split(",")
    assert serial == "4000"
    # the scan API's verdicts: authentic but not yet activated is inactive
    res = run("code", "verify", outer, inner, "nonsense", "--json")
    answers = [json.loads(x) for x in res.output.splitlines()]
    assert [a["verdict"] for a in answers] == ["inactive", "inactive", "invalid"]
    assert [a["genuine"] for a in answers] == [True, True, False]
    assert answers[1]["serial"] == 4000 and answers[1]["role"] == "cap_inner"
    run("activate", "--batch", "1", "--sku", "S", "--name", "N", "--lot", "L", "--date", "2026-11-21")
    run("void", "--range", "1:4000:4001")
    assert [json.loads(x)["verdict"] for x in run("code", "verify", outer, rows[1].split(",")[1], "--json")
            .output.splitlines()] == ["voided", "genuine"]
    # stdin, one per line, human output
    res = run("code", "verify", "-", input=f"{inner}\nxyz\n")
    assert res.output.splitlines() == [f"{inner}\tvoided\tbatch 1 serial 4000 cap_inner (cap)", "xyz\tinvalid"]


def test_export_range_url_and_stdout(run):
    run("init")
    run("batch", "create", "--level", "pallet", "--count", "100")
    res = run("batch", "export", "1", "--plaintext", "--url", "--range", "10:12", "-o", "-")
    rows = res.output.splitlines()
    assert rows[0] == "serial,pallet" and len(rows) == 3
    assert re.fullmatch(r"10,HTTPS://S\.EXAMPLE\.CN/Q/1[0-9A-Z]{19}", rows[1])


def test_export_needs_plaintext_flag_and_leaves_no_file(run, tmp_path):
    run("init")
    run("batch", "create", "--level", "cap", "--count", "10")
    target = tmp_path / "x.csv"
    res = run("batch", "export", "1", "-o", str(target), ok=False)
    assert res.exit_code != 0 and "--plaintext" in res.output
    assert not target.exists()
    res = run("batch", "export", "1", "--plaintext", "--range", "5:50", "-o", str(target), ok=False)
    assert "outside" in res.output and not target.exists()


def test_clear_errors_without_tracebacks(run, tmp_path):
    res = run("batch", "list", ok=False)
    assert res.exit_code == 1 and "wuma init" in res.output and "Traceback" not in res.output
    run("init")
    for args, msg in [(("batch", "create", "--level", "crate", "--count", "5"), "unknown level"),
                      (("batch", "create", "--level", "cap", "--count", "0"), "count"),
                      (("batch", "show", "99"), "no batch 99"),
                      (("init",), "already")]:
        res = run(*args, ok=False)
        assert res.exit_code == 1 and msg in res.output and "Traceback" not in res.output


def test_key_rotate_and_list(run):
    run("init")
    run("batch", "create", "--level", "cap", "--count", "10")
    assert json.loads(run("key", "rotate", "--json").output) == {"current": 2}
    assert json.loads(run("key", "list", "--json").output) == {"current": 2, "versions": [1, 2]}
    b = json.loads(run("batch", "create", "--level", "cap", "--count", "10", "--json").output)
    assert b["key_version"] == 2


def test_accounts_and_bans(run):
    run("init")
    run("account", "add", "gz-1", "--role", "distributor", "--region", "4401")
    out = json.loads(run("account", "add", "s-1", "--role", "store", "--distributor", "gz-1", "--json").output)
    assert out["token"].startswith("wm_s-1_")
    listed = run("account", "list", "--json").output
    assert out["token"] not in listed
    assert [json.loads(x)["id"] for x in listed.splitlines()] == ["gz-1", "s-1"]
    new = run("account", "token", "s-1").output
    assert "new token" in new and out["token"] not in new and "wm_s-1_" in new
    assert json.loads(run("account", "revoke", "s-1", "--json").output)["revoked_at"]
    assert "revoked" in run("account", "token", "s-1", ok=False).output
    for args, said in ((("account", "token", ""), "no account ''"), (("account", "revoke", ""), "no account ''"),
                       (("bans", "lift", ""), "an id given is empty or too long")):
        res = run(*args, ok=False)  # an empty id is no store key: a message, not lmdb's traceback
        assert res.exit_code == 1 and said in res.output, args
    res = run("account", "add", "s-2", "--role", "store", "--distributor", "nobody", ok=False)
    assert "no distributor account nobody" in res.output
    assert run("bans", "list").output == ""
    res = run("bans", "lift", "ip:1.2.3.4", ok=False)
    assert "no ban for ip:1.2.3.4" in res.output


def test_bans_list_all_says_which_ban_is_in_force(run):
    """With --all a client banned again is listed once per ban: each line says whether
    that ban is in force, ended or lifted (it used to say "until ..." for all of them)."""
    import time

    from engine import DataFolder

    run("init")
    now = time.time()
    with DataFolder(run.data) as data:
        threshold = data.abuse.limits.invalid_threshold
        for start in (now - 2 * 86400, now - 60):  # one ban ended long ago, one in force
            for i in range(threshold + 1):
                data.abuse.record_invalid(["ip:203.0.113.9"], f"GUESS{i}", now=start + i * 0.001)
    states = [line.split("\t")[1].split()[0] for line in run("bans", "list", "--all").output.splitlines()]
    assert states == ["ended", "until"]
    assert run("bans", "list").output.count("until ") == 1
    run("bans", "lift", "ip:203.0.113.9")
    states = [line.split("\t")[1].split()[0] for line in run("bans", "list", "--all").output.splitlines()]
    assert states == ["ended", "lifted"]
    assert run("bans", "list").output == ""


def test_gs1_keys_of_other_digits_are_refused_with_a_message(run, tmp_path):
    """`activate --gtin` took Arabic-Indic digits and showed them; `epcis export
    --company-prefix` wrote them into SSCCs, or failed on '²' with int()'s message."""
    run("init")
    run("batch", "create", "--level", "cap", "--count", "10")
    act = ("activate", "--sku", "S", "--name", "N", "--lot", "L", "--date", "2026-11-21",
           "--batch", "1", "--gtin")
    res = run(*act, "٠٦٩٠١٢٣٤٥٦٧٨٩٢", ok=False)
    assert res.exit_code == 1 and "GTIN must be 8, 12, 13 or 14 ASCII digits (0-9)" in res.output
    for prefix in ("٦٩٠١٢٣٤", "6901²34"):
        res = run("epcis", "export", "-o", str(tmp_path / "e.jsonld"), "--company-prefix", prefix,
                  ok=False)
        assert res.exit_code == 1 and "company prefix must be 6 to 12 ASCII digits" in res.output
        assert "invalid literal" not in res.output and not (tmp_path / "e.jsonld").exists()
    run(*act, "06901234567892")
    # to standard output: the document there, its --json summary on standard error
    res = run("epcis", "export", "-o", "-", "--json")
    doc = json.loads(res.stdout)
    assert json.loads(res.stderr) == {"events": len(doc["epcisBody"]["eventList"]), "output": "-"}


@pytest.fixture
def utc_machine(monkeypatch):
    """The machine's zone is UTC, as on most servers."""
    import time

    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_bans_and_alerts_print_china_time_whatever_the_machine_zone(run, utc_machine):
    """They printed the machine's local time with no zone (UTC on a server) while pools'
    and campaigns' days and the admin page are China time."""
    from conftest_world import Clock, build_world

    from engine.scan import ScanPipeline, ScanRequest
    from engine.scanlog import ScanLog

    w = build_world(run.data)  # bans after 5 invalid codes
    data = w["data"]
    pipe = ScanPipeline(data.codes, w["agg"], ScanLog(data.store), data.abuse, data.accounts,
                        clock=Clock())  # 2027-01-15 16:00 China time (08:00 UTC)
    try:
        inner = data.codes.code(w["caps"], 9, "cap_inner")
        pipe.scan(ScanRequest(inner, ip="198.51.100.7", device="d-1", region="330106"))
        for i in range(6):
            data.abuse.record_invalid(["ip:203.0.113.9"], f"GUESS{i}", now=1_800_000_000.0 + i)
    finally:
        pipe.scans.close()
        data.close()
    (line, _) = run("alerts").output.splitlines()
    assert re.match(r"2027-01-15 16:00:\d\d\+08:00\tseq \d+\tgz-1\t", line), line
    (line,) = run("bans", "list").output.splitlines()  # banned an hour from the sixth
    assert re.search(r"\t(until|ended) 2027-01-15 17:00:05\+08:00\t", line), line


def test_region_import_list_locate(run, tmp_path):
    run("init")
    centres = tmp_path / "centres.csv"
    centres.write_text("code,lat,lng\n440106,23.1256,113.3618\n330106,30.2741,120.1551\n")
    assert "2 division centres loaded" in run("region", "import", str(centres)).output
    assert run("region", "locate", "23.13", "113.35").output.strip() == "440106"
    assert "no division centre within 30 km" in run("region", "locate", "31.23", "121.47").output
    assert [json.loads(x)["code"] for x in run("region", "list", "--json").output.splitlines()] == [
        "330106", "440106"]
    bad = tmp_path / "bad.csv"
    bad.write_text("110105,39.92\n")
    res = run("region", "import", str(bad), ok=False)
    assert res.exit_code == 1 and "bad.csv:1: expected code,lat,lng" in res.output
    assert "Traceback" not in res.output
    twice = tmp_path / "twice.csv"  # one code at two positions: it said "2 ... loaded"
    twice.write_text("110105,39.9219,116.4436\n110105,23.1256,113.3618\n")
    res = run("region", "import", str(twice), ok=False)
    assert res.exit_code == 1 and "110105 is given twice" in res.output
    assert "line 1 (39.9219, 116.4436) and line 2 (23.1256, 113.3618)" in res.output
    twice.write_text("110105,39.9219,116.4436\n110105,39.9219,116.4436\n")
    assert "1 division centres loaded" in run("region", "import", str(twice)).output


def test_library_errors_turns_a_number_out_of_range_into_a_message():
    import struct

    from cli.main import library_errors

    @library_errors
    def store_key(n):
        return struct.pack(">Q", n)

    @library_errors
    def overflow():
        raise OverflowError("Python int too large to convert to C long")

    for call in (lambda: store_key(-1), lambda: store_key(2**64), overflow):
        with pytest.raises(click.ClickException, match="out of range: ids and sequence numbers are whole"):
            call()


def test_region_locate_off_the_globe_is_a_message(run):
    run("init")
    for lat, lng in [("inf", "0"), ("1e308", "0"), ("nan", "0"), ("95", "500")]:
        res = run("region", "locate", lat, lng, ok=False)
        assert res.exit_code == 1 and "lat must be in [-90, 90] and lng in [-180, 180]" in res.output


def test_utf8_bom_in_verify_stdin_and_region_import(run, tmp_path):
    run("init")
    run("batch", "create", "--level", "cap", "--count", "3")
    code = run("batch", "export", "1", "--plaintext", "-o", "-").output.splitlines()[1].split(",")[2]
    res = run("code", "verify", "-", input=f"\ufeff{code}\r\n{code}\n")
    assert res.output.splitlines() == [f"{code}\tinactive\tbatch 1 serial 0 cap_inner (cap)"] * 2
    centres = tmp_path / "centres.csv"
    centres.write_bytes(b"\xef\xbb\xbfcode,lat,lng\r\n440106,23.1,113.3\r\n")
    assert "1 division centres loaded" in run("region", "import", str(centres)).output


def test_utf16_or_gbk_in_verify_stdin_and_region_import_is_named(run, tmp_path):
    """A UTF-16 region file printed "Error: 'utf-8' codec can't decode byte 0xff"; text that
    is not UTF-8 is now refused naming the file (and the byte offset), never a traceback."""
    run("init")
    run("batch", "create", "--level", "cap", "--count", "3")
    code = run("batch", "export", "1", "--plaintext", "-o", "-").output.splitlines()[1].split(",")[2]
    centres = tmp_path / "centres.csv"
    centres.write_text("code,lat,lng\r\n440106,23.1,113.3\r\n", encoding="utf-16")  # Excel's "Unicode Text"
    res = run("region", "import", str(centres), ok=False)
    assert res.exit_code == 1 and f"Error: {centres}: the file is UTF-16; save it as UTF-8" in res.output
    assert "codec" not in res.output and "Traceback" not in res.output
    centres.write_bytes("code,name,lat\n440106,广州,23.1\n".encode("gbk"))  # Excel's "CSV" on a Chinese Windows
    res = run("region", "import", str(centres), ok=False)
    assert res.exit_code == 1 and f"{centres}: not UTF-8 text (byte 0xB9 at offset 21" in res.output
    assert run("region", "list").output == ""
    res = run("code", "verify", "-", input=f"{code}\n".encode("utf-16"), ok=False)
    assert res.exit_code == 1 and "Error: stdin: the file is UTF-16; save it as UTF-8" in res.output
    res = run("code", "verify", "-", input=f"{code}\n".encode() + b"\xff\n", ok=False)
    assert res.output.splitlines()[0] == f"{code}\tinactive\tbatch 1 serial 0 cap_inner (cap)"
    assert res.exit_code == 1 and f"stdin: not UTF-8 text (byte 0xFF at offset {len(code) + 1}" in res.output


def test_plaintext_export_is_created_private(run, tmp_path):
    run("init")
    run("batch", "create", "--level", "cap", "--count", "3")
    target = tmp_path / "codes.csv"
    target.write_text("old")
    os.chmod(target, 0o644)
    old = os.umask(0o022)
    try:
        run("batch", "export", "1", "--plaintext", "-o", str(target))
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600 and target.read_text().startswith("serial,")


def test_folder_without_its_store_is_refused_not_given_a_new_one(run, tmp_path):
    run("init")
    run("batch", "create", "--level", "cap", "--count", "3")
    shutil.rmtree(run.data / "db")
    for args in (("batch", "list"), ("batch", "create", "--level", "cap", "--count", "3")):
        res = run(*args, ok=False)
        assert res.exit_code == 1 and "Traceback" not in res.output
        assert "db is missing: restore" in res.output and "backup taken with wuma.json and keys/" in res.output
    assert not (run.data / "db").exists()


def _list_config(path):
    (path / "wuma.json").write_text("[]")


def _levels_of_ints(path):
    config = json.loads((path / "wuma.json").read_text())
    config["spec"]["levels"] = [1]
    (path / "wuma.json").write_text(json.dumps(config))


def _dangling_key(path):
    (path / "keys" / "master-v2.key").symlink_to(path / "nowhere")


def _db_is_a_file(path):
    shutil.rmtree(path / "db")
    (path / "db").write_text("x")


def _not_lmdb(path):
    (path / "db" / "data.mdb").write_bytes(b"\x00" * 8192)


def _abuse_typo(path):
    config = json.loads((path / "wuma.json").read_text())
    config["abuse"] = {"max_scans": 1}
    (path / "wuma.json").write_text(json.dumps(config))


@pytest.mark.parametrize("damage, msg", [
    (_list_config, "wuma.json is damaged (it must hold a JSON object)"),
    (_levels_of_ints, "wuma.json is damaged (level 0: must be an object"),
    (_dangling_key, "master-v2.key cannot be read"),
    (_db_is_a_file, "db is not a folder: restore"),
    (_not_lmdb, "data.mdb is not an LMDB store: restore"),
    (_abuse_typo, 'wuma.json, "abuse" section: unknown setting \'max_scans\'; known settings:'),
])
def test_damaged_folder_is_a_message_not_a_traceback(run, damage, msg):
    run("init")
    damage(run.data)
    res = run("bans", "list", ok=False)
    assert res.exit_code == 1 and msg in res.output and "Traceback" not in res.output


def test_init_runs_again_after_failing_to_write_its_config(run, monkeypatch):
    replace = os.replace

    def full_disk(src, dst):
        if Path(dst).name == "wuma.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        return replace(src, dst)

    monkeypatch.setattr(os, "replace", full_disk)
    res = run("init", ok=False)
    assert res.exit_code == 1 and f"No space left on device: {run.data / 'wuma.json'}" in res.output
    monkeypatch.setattr(os, "replace", replace)
    assert json.loads(run("init", "--json").output)["key_version"] == 1
    run("batch", "list")


def _set_config(path, **sections):
    config = json.loads((path / "wuma.json").read_text())
    config.update(sections)
    (path / "wuma.json").write_text(json.dumps(config))


@pytest.mark.parametrize("sections, msg", [
    ({"serve": {"trusted_proxy": ["10.0.0.2"]}},
     'wuma.json, "serve" section: unknown setting \'trusted_proxy\'; known settings: '),
    ({"serve": {"trusted_proxies": "10.0.0.2"}}, '"serve" section: trusted_proxies must be a list'),
    ({"serve": {"proxy_header": ["X-Forwarded-For"]}},
     '"serve" section: proxy_header must be a header'),
    ({"abuse": {"max_scans": 1}}, 'wuma.json, "abuse" section: unknown setting \'max_scans\''),
    ({"regions": {"maxkm": 30}}, 'wuma.json, "regions" section: unknown setting \'maxkm\''),
])
def test_serve_checks_its_settings_before_starting_gunicorn(run, monkeypatch, sections, msg):
    started = []
    monkeypatch.setattr("cli.scan.os.execve", lambda *args: started.append(args))
    run("init")
    _set_config(run.data, **sections)
    res = run("serve", ok=False)
    assert res.exit_code == 1 and msg in res.output and "Traceback" not in res.output
    assert not started


def test_serve_starts_gunicorn_when_the_settings_are_good(run, monkeypatch):
    started = []
    monkeypatch.setattr("cli.scan.os.execve", lambda exe, argv, env: started.append(env))
    run("init")
    _set_config(run.data, abuse={"invalid_threshold": 5}, regions={"max_km": 20},
                serve={"trusted_proxies": ["10.0.0.2"], "proxy_header": "X-Forwarded-For"})
    run("serve", "--bind", "127.0.0.1:8081")
    assert len(started) == 1
    assert started[0]["WUMA_DATA"] == str(run.data) and started[0]["WUMA_BIND"] == "127.0.0.1:8081"


def test_serve_refuses_no_workers(run, monkeypatch):
    started = []
    monkeypatch.setattr("cli.scan.os.execve", lambda exe, argv, env: started.append(env))
    run("init")
    run("serve", "--bind", "[::1]:8081")
    run("serve", "--bind", "0.0.0.0:8081")
    assert [env["WUMA_BIND"] for env in started] == ["[::1]:8081", "0.0.0.0:8081"]
    for bad in (["--workers", "0"], ["--threads", "0"]):
        assert run("serve", *bad, ok=False).exit_code == 2
    assert len(started) == 2


def test_aggregate_load_skip_bad_says_how_many_were_loaded_and_how_many_bad(run, tmp_path):
    run("init")
    run("batch", "create", "--level", "cap", "--count", "8")
    run("batch", "create", "--level", "case", "--count", "3")
    codes = {}
    for batch, role in ((1, "cap_outer"), (2, "case_outer")):
        out = tmp_path / f"{role}.csv"
        run("batch", "export", str(batch), "--plaintext", "-o", str(out))
        codes[role] = [row.split(",")[1] for row in out.read_text().splitlines()[1:]]
    caps, cases = codes["cap_outer"], codes["case_outer"]
    lines = tmp_path / "line.csv"
    lines.write_text("\n".join([",".join([cases[0], *caps[:4]]),  # good
                                f"{cases[1]},1ZZZZZZZZZZZZZZZZZZZ",  # not a genuine code
                                f"{caps[5]},{caps[6]}",  # a cap in a cap
                                f"{cases[2]},{cases[0]}"]) + "\n")  # a case in a case
    res = run("aggregate", "load", str(lines), "--skip-bad")
    assert res.stdout == (f"loaded 1 of 4 records: 4 links added, 0 already present; 3 bad records "
                          f"not loaded, written to {lines}.rejects\n")


def test_batch_list_shows_batches_activated_and_voided(run):
    run("init")
    for _ in range(3):
        run("batch", "create", "--level", "cap", "--count", "100")
    run("activate", "--range", "1:0:40", "--sku", "S", "--name", "N", "--lot", "L",
        "--date", "2026-11-21")
    run("activate", "--batch", "2", "--sku", "S", "--name", "N", "--lot", "L",
        "--date", "2026-11-21")
    run("void", "--batch", "3")
    listed = [json.loads(x) for x in run("batch", "list", "--json").output.splitlines()]
    assert [(b["state"], b["activated"]) for b in listed] == [
        ("activated", 40), ("activated", 100), ("voided", 0)]
    assert [x.split(" v1 ", 1)[1] for x in run("batch", "list").output.splitlines()] == [
        "activated (40 of 100)", "activated (100 of 100)", "voided"]
    assert json.loads(run("batch", "show", "1", "--json").output)["activated"] == 40


def test_a_store_that_cannot_write_is_a_message_and_changes_nothing(tmp_path):
    """A disk full or a file-size limit under a write: the command says so, no traceback,
    and the store is as it was (LMDB's commit is all or nothing)."""
    import resource
    import subprocess
    import sys

    path = tmp_path / "wuma-data"
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(root))
    wuma = [sys.executable, "-m", "cli", "--data", str(path)]
    subprocess.run([*wuma, "init"], env=env, cwd=root, check=True, capture_output=True)
    size = (path / "db" / "data.mdb").stat().st_size
    limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))  # noqa: E731
    got = subprocess.run([*wuma, "batch", "create", "--level", "cap", "--count", "10"], env=env, cwd=root,
                         capture_output=True, text=True, preexec_fn=limit, timeout=120)
    assert got.returncode == 1 and "Traceback" not in got.stderr, got.stderr
    assert "the data store could not write" in got.stderr and "nothing was changed" in got.stderr
    listed = subprocess.run([*wuma, "batch", "list"], env=env, cwd=root, capture_output=True, text=True, check=True)
    assert listed.stdout.strip() == ""


def test_backup_while_scans_are_written_is_a_data_folder_of_its_own(tmp_path):
    """`wuma backup` while another process writes scans: the copy opens as a data folder
    (restore = use it with --data), verifies codes, and holds whole scan records (every
    record's count equals its events: one snapshot, not a torn file); the keys stay 0600;
    an existing folder is refused; nothing half-made is left under the name."""
    import subprocess
    import sys
    import threading

    from conftest_world import build_world

    from engine import DataFolder
    from engine.scan import ScanPipeline, ScanRequest
    from engine.scanlog import ScanLog

    w = build_world(tmp_path / "wuma-data", invalid_threshold=10**9, rate_per_minute=10**9)
    codes = [w["data"].codes.code(w["caps"], i, "cap_inner") for i in range(w["caps"].count)]
    stop = threading.Event()

    def scanning():
        data = w["data"]
        log = ScanLog(data.store)
        pipe = ScanPipeline(data.codes, w["agg"], log, data.abuse, data.accounts)
        i = 0
        while not stop.is_set():
            pipe.scan(ScanRequest(codes[i % len(codes)], actor_id=f"u{i}", region="440106"))
            i += 1
        log.close()

    t = threading.Thread(target=scanning)
    t.start()
    try:
        time.sleep(0.3)
        root = Path(__file__).resolve().parent.parent
        got = subprocess.run([sys.executable, "-m", "cli", "--data", str(tmp_path / "wuma-data"), "backup",
                              str(tmp_path / "bk"), "--json"], cwd=root, env=dict(os.environ, PYTHONPATH=str(root)),
                             capture_output=True, text=True, timeout=120)
    finally:
        stop.set()
        t.join(30)
    w["data"].close()
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["keys"] == ["master-v1.key"]
    assert stat.S_IMODE((tmp_path / "bk" / "keys" / "master-v1.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "bk").stat().st_mode) == 0o700
    with DataFolder(tmp_path / "bk") as copy:
        assert copy.codes.verify(codes[0]).genuine
        log = ScanLog(copy.store)
        idx = copy.spec.role("cap_inner").index
        counts: dict = {}
        for e in log.events(limit=10**6):
            counts[e["unit"]] = counts.get(e["unit"], 0) + 1
        assert counts and all(log.get(u, idx).count == n for u, n in counts.items())
        log.close()
    again = CliRunner().invoke(cli, ["--data", str(tmp_path / "wuma-data"), "backup", str(tmp_path / "bk")])
    assert again.exit_code == 1 and "exists already" in again.output
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_a_backup_removes_what_a_killed_backup_left_and_names_a_full_destination(tmp_path, monkeypatch):
    """kill -9 runs no cleanup: a backup killed half way leaves `.DEST.partial-PID`, a
    copy of the store (token hashes, the ledger, maybe the keys). The next backup to DEST
    removes those whose process is gone; a live process's is left alone. A destination
    that cannot take the copy is named as such (the CLI said "the data store could not
    write"), and nothing of it is left."""
    import subprocess
    import sys

    import lmdb

    from engine import DataFolder

    DataFolder.init(tmp_path / "wuma-data").close()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    left = tmp_path / f".bk.partial-{dead}"
    (left / "db").mkdir(parents=True)
    (left / "db" / "data.mdb").write_bytes(b"a half copy")
    alive = tmp_path / f".bk.partial-{os.getppid()}"
    alive.mkdir()
    mine = tmp_path / f".bk.partial-{os.getpid()}"  # a container's backups share one PID
    mine.mkdir()
    (tmp_path / ".bk.partial-\u00b2").mkdir()  # no PID at all: left alone, no error
    with DataFolder(tmp_path / "wuma-data") as data:
        data.backup(tmp_path / "bk")
        assert not left.exists() and alive.is_dir() and (tmp_path / ".bk.partial-\u00b2").is_dir()
        assert not any(p.name == mine.name for p in tmp_path.iterdir())

        class FullDisk:  # the destination's disk fills while LMDB copies the store
            def __init__(self, real):
                self._real = real

            def __getattr__(self, name):
                return getattr(self._real, name)

            def copy(self, *args, **kwargs):
                raise lmdb.Error("mdb_env_copy3: No space left on device")

        store = data.store
        monkeypatch.setattr(data, "store", FullDisk(store))
        data.store.env = FullDisk(store.env)
        with pytest.raises(OSError) as e:
            data.backup(tmp_path / "bk2")
        monkeypatch.undo()
    assert "the backup copy of the store failed (mdb_env_copy3: No space left on device)" in str(e.value)
    assert e.value.filename == str(tmp_path / "bk2") and not (tmp_path / "bk2").exists()
    assert not list(tmp_path.glob(".bk2.partial-*"))


def test_a_store_write_failing_on_a_full_disk_says_to_look_at_the_disk():
    """LMDB reports a short write on a full file system as an I/O error: the message says
    nothing was changed and what to check."""
    import click
    import lmdb

    from cli.main import library_errors

    @library_errors
    def commit():
        raise lmdb.Error("mdb_txn_commit: Input/output error")

    with pytest.raises(click.ClickException) as e:
        commit()
    assert e.value.message == ("the data store could not write (mdb_txn_commit: Input/output error): "
                               "nothing was changed; check that its disk has free space (df), then try again")
