"""The `wuma` command: each command through click, as a user runs it."""

import json
import re
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
    res = run("code", "verify", outer, inner, "nonsense", "--json")
    answers = [json.loads(x) for x in res.output.splitlines()]
    assert [a["verdict"] for a in answers] == ["genuine", "genuine", "invalid"]
    assert answers[1]["serial"] == 4000 and answers[1]["role"] == "cap_inner"
    # stdin, one per line, human output
    res = run("code", "verify", "-", input=f"{inner}\nxyz\n")
    assert res.output.splitlines() == [f"{inner}\tgenuine\tbatch 1 serial 4000 cap_inner (cap)", "xyz\tinvalid"]


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
    assert json.loads(run("account", "revoke", "s-1", "--json").output)["revoked_at"]
    res = run("account", "add", "s-2", "--role", "store", "--distributor", "nobody", ok=False)
    assert "no distributor account nobody" in res.output
    assert run("bans", "list").output == ""
    res = run("bans", "lift", "ip:1.2.3.4", ok=False)
    assert "no ban for ip:1.2.3.4" in res.output


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
