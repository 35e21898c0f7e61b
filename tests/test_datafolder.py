"""A data folder that is damaged or incomplete is refused with a message saying what to do,
never opened with a new empty store (new batches would repeat codes already printed)."""

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine import DataFolder, DataFolderError
from engine.store import Store

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def folder(tmp_path):
    """A closed data folder with one batch."""
    with DataFolder.init(tmp_path / "wuma-data") as data:
        data.create_batch("cap", 10)
    return tmp_path / "wuma-data"


def _edit_config(path, change):
    cfg = path / "wuma.json"
    config = json.loads(cfg.read_text())
    change(config)
    cfg.write_text(json.dumps(config))


def test_init_records_the_store_and_an_unused_folder_opens(tmp_path):
    DataFolder.init(tmp_path / "w").close()
    assert json.loads((tmp_path / "w" / "wuma.json").read_text())["store_id"]
    with DataFolder(tmp_path / "w") as data:
        assert data.batches.list() == []


def _no_db(path):
    shutil.rmtree(path / "db")


def _empty_data_mdb(path):
    (path / "db" / "data.mdb").write_bytes(b"")


def _recreated_store(path):
    shutil.rmtree(path / "db")
    Store(path / "db").close()  # what opening the folder used to do silently


def _other_folders_store(path):
    shutil.rmtree(path / "db")
    DataFolder.init(path.parent / "other").close()
    shutil.copytree(path.parent / "other" / "db", path / "db")


@pytest.mark.parametrize("damage", [_no_db, _empty_data_mdb, _recreated_store, _other_folders_store])
def test_lost_store_is_refused_not_replaced(folder, damage):
    damage(folder)
    with pytest.raises(DataFolderError, match=r"restore .*db from the backup taken with wuma.json and keys/"):
        DataFolder(folder)
    if damage is _no_db:
        assert not (folder / "db").exists()  # nothing created in its place


def test_folder_made_before_store_ids_still_refuses_a_missing_store(folder):
    _edit_config(folder, lambda c: c.pop("store_id"))
    DataFolder(folder).close()  # opens as before
    shutil.rmtree(folder / "db")
    with pytest.raises(DataFolderError, match="db is missing: restore"):
        DataFolder(folder)


@pytest.mark.parametrize("config, match", [
    ([], "must hold a JSON object"),
    ({"url_base": "HTTPS://S.EXAMPLE.CN/Q/"}, 'no "spec" section'),
    ({"spec": {"name": "x", "levels": [1]}}, "level 0: must be an object"),
    ({"spec": {"name": "x", "levels": {"cap": 1}}}, "levels must be a list"),
    ({"spec": {"name": "x", "levels": [{"name": "cap", "roles": "cap"}]}}, "as a list"),
    ({"spec": {"name": "x", "levels": [{"name": "cap", "roles": [1]}]}}, "each role must be an object"),
    ({"spec": {"name": "x", "levels": [{"name": "cap", "capacity": [], "roles": [{"name": "c"}]}]}},
     "capacity must be a whole number"),
    ({"spec": {"name": "x", "levels": [{"name": "cap", "roles": [{"name": "c", "format": []}]}]}},
     "unknown format"),
    ({"spec": {"name": "x", "levels": [{"name": "cap", "capacity": 10**30, "roles": [{"name": "c"}]}]}},
     "capacity must be at most 4,294,967,296"),
    ("[" * 100_000, "JSON nested too deeply"),  # a traceback (RecursionError) before
])
def test_damaged_config_is_refused_with_a_message(folder, config, match):
    (folder / "wuma.json").write_text(config if isinstance(config, str) else json.dumps(config))
    with pytest.raises(DataFolderError, match=match) as e:
        DataFolder(folder)
    assert "wuma.json is damaged" in str(e.value) and "restore it from the backup" in str(e.value)


def test_a_config_edited_by_hand_is_read_as_any_text_file_and_checked_as_init_checks_it(folder):
    """Saved by Notepad (a UTF-8 byte-order mark): read, as every text file Wuma is given
    (it was "damaged ... restore it from the backup"). Saved as UTF-16: named as such. A
    url_base that no longer fits the QR code is refused at load too, not only at init."""
    cfg = folder / "wuma.json"
    good = cfg.read_bytes()
    cfg.write_bytes(b"\xef\xbb\xbf" + good)
    with DataFolder(folder) as data:
        assert data.url_base == "HTTPS://S.EXAMPLE.CN/Q/"
    cfg.write_bytes(good.decode().encode("utf-16"))
    with pytest.raises(DataFolderError, match="wuma.json: the file is UTF-16; save it as UTF-8$"):
        DataFolder(folder)
    cfg.write_bytes(json.dumps({**json.loads(good), "url_base": "https://s.example.cn/" + "Q" * 60 + "/"}).encode())
    with pytest.raises(DataFolderError, match='wuma.json, "url_base": url base is .* QR version 3-M: fix it there'):
        DataFolder(folder)
    cfg.write_bytes(json.dumps({**json.loads(good), "url_base": "https://s.example.cn/Q/"}).encode())
    with DataFolder(folder) as data:  # a host in small letters, as init takes it
        assert data.url_base == "HTTPS://S.EXAMPLE.CN/Q/"
    # a path in small letters, as earlier releases took it: read in capitals, as its labels
    # were printed (the folder still opens; `init` refuses such a path now)
    cfg.write_bytes(json.dumps({**json.loads(good), "url_base": "https://s.example.cn/q/"}).encode())
    with DataFolder(folder) as data:
        assert data.url_base == "HTTPS://S.EXAMPLE.CN/Q/"
    with pytest.raises(ValueError, match=r"path /q/ would be printed as /Q/"):
        DataFolder.init(folder.parent / "another", url_base="https://s.example.cn/q/")


def test_db_that_is_a_file_or_not_lmdb_is_refused(folder):
    (folder / "db" / "data.mdb").write_bytes(os.urandom(8192))
    with pytest.raises(DataFolderError, match="data.mdb is not an LMDB store: restore"):
        DataFolder(folder)
    shutil.rmtree(folder / "db")
    (folder / "db").write_text("x")
    with pytest.raises(DataFolderError, match="db is not a folder: restore"):
        DataFolder(folder)


@pytest.mark.parametrize("size", [8192, 4096, 100])
def test_truncated_store_is_refused_not_a_crash(folder, size):
    # NOTE: in a child process: LMDB would kill the process with SIGBUS
    os.truncate(folder / "db" / "data.mdb", size)
    got = subprocess.run([sys.executable, "-c", "import sys; from engine import DataFolder; "
                          "DataFolder(sys.argv[1])", str(folder)], cwd=ROOT, capture_output=True, text=True)
    assert got.returncode == 1, got.stderr
    assert "DataFolderError" in got.stderr and "data.mdb is truncated" in got.stderr


def test_unknown_abuse_setting_names_the_section_and_the_known_ones(folder):
    _edit_config(folder, lambda c: c.update(abuse={"max_scans": 1}))
    with DataFolder(folder) as data:
        with pytest.raises(DataFolderError, match=r'wuma.json, "abuse" section: unknown setting '
                                                  r"'max_scans'; known settings: rate_per_minute"):
            data.abuse
        with pytest.raises(ValueError, match="unknown setting 'max_scans'"):
            data.update_config(abuse={"max_scans": 1})


def test_init_can_be_run_again_after_failing_part_way(tmp_path, monkeypatch):
    path = tmp_path / "w"
    path.mkdir()
    replace = os.replace

    def full_disk(src, dst):  # stands in for a full disk when wuma.json is written
        if Path(dst).name == "wuma.json":
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return replace(src, dst)

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError):
        DataFolder.init(path)
    monkeypatch.setattr(os, "replace", replace)
    assert sorted(p.name for p in path.iterdir()) == ["db", "keys"]  # no temporary file left
    key = (path / "keys" / "master-v1.key").read_bytes()
    with pytest.raises(DataFolderError, match="if `wuma init` failed here, run it again"):
        DataFolder(path)
    with DataFolder.init(path) as data:
        assert data.keys.versions == [1]
    assert (path / "keys" / "master-v1.key").read_bytes() == key  # the key is kept, not replaced
    DataFolder(path).close()


def test_init_refuses_a_key_without_its_store(folder, tmp_path):
    restored = tmp_path / "restored"
    restored.mkdir()
    shutil.copytree(folder / "keys", restored / "keys")
    with pytest.raises(DataFolderError, match="restore wuma.json and db/ from the backup"):
        DataFolder.init(restored)
    assert not (restored / "db").exists() and not (restored / "wuma.json").exists()


def test_init_refuses_a_store_in_use_without_its_config(folder):
    (folder / "wuma.json").unlink()
    with pytest.raises(DataFolderError, match="holds data: restore wuma.json"):
        DataFolder.init(folder)
    assert not (folder / "wuma.json").exists()


# -- master key versions -------------------------------------------------------------------
def test_a_lost_or_replaced_key_is_refused_and_its_number_never_reused(folder):
    with DataFolder(folder) as data:
        assert data.rotate_key() == 2
        data.create_batch("cap", 5)  # under version 2
    v2 = folder / "keys" / "master-v2.key"
    kept = v2.read_bytes()
    v2.rename(folder / "v2.aside")
    with pytest.raises(DataFolderError, match=r"master key version\(s\) 2 missing from .*restore keys/"):
        DataFolder(folder)
    (folder / "v2.aside").rename(v2)
    os.chmod(v2, 0o600)
    with DataFolder(folder) as data:
        assert data.keys.versions == [1, 2]
    # a different key under a version's name is not the key the folder issued
    os.unlink(v2)
    fd = os.open(v2, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, bytes(32))
    os.close(fd)
    with pytest.raises(DataFolderError, match="master-v2.key is not the key this data folder issued"):
        DataFolder(folder)
    os.unlink(v2)
    fd = os.open(v2, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, kept)
    os.close(fd)
    # a rotate interrupted after the key file: the number is taken from the store's record
    with DataFolder(folder) as data:
        assert data.rotate_key() == 3


def test_a_folder_from_before_the_record_records_its_keys(folder):
    store = Store(folder / "db")  # the layout before: no record
    with store.write() as txn:
        txn.delete(b"key_versions", db=store.db("meta"))
    store.close()
    with DataFolder(folder) as data:
        assert data.keys.versions == [1]
    with DataFolder(folder) as data:
        data.rotate_key()
    os.rename(folder / "keys" / "master-v1.key", folder / "v1.aside")
    with pytest.raises(DataFolderError, match=r"version\(s\) 1 missing"):
        DataFolder(folder)


def test_a_rotate_past_what_the_codes_can_carry_is_refused(folder):
    with DataFolder(folder) as data:
        highest = min(f.max_key_version for f in data.spec.formats.values())
        for _ in range(highest - 1):
            data.rotate_key()
        with pytest.raises(ValueError, match=f"key version {highest + 1} does not fit"):
            data.rotate_key()
        assert data.keys.current == highest
        data.create_batch("cap", 1)  # still possible


def test_a_running_verifier_takes_a_key_rotated_by_another_process(folder, monkeypatch):
    """A server keeps its data folder open for days: a `key rotate` and new batches from
    the CLI meanwhile must verify there, not answer invalid (and count towards a ban)."""
    import engine.codes

    with DataFolder(folder) as server:
        code = subprocess.run([sys.executable, "-c", (
            "import sys; from engine import DataFolder\n"
            "with DataFolder(sys.argv[1]) as d:\n"
            "    d.rotate_key(); b = d.create_batch('cap', 3); print(d.codes.code(b, 0, 'cap_inner'))")
            , str(folder)], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        clock = [100.0]
        monkeypatch.setattr(engine.codes.time, "monotonic", lambda: clock[0])
        assert server.codes.verify(code).genuine
        assert server.keys.versions == [1, 2]
        # a forged code naming a version not here looks for its file once a second at most
        looks = []
        monkeypatch.setattr(server.keys, "load", lambda v: looks.append(v) or False)
        forged = "Z" + code[1:]
        for _ in range(3):
            assert not server.codes.verify(forged).genuine
        clock[0] += 1.5
        server.codes.verify(forged)
        assert len(looks) <= 2


def test_new_batches_take_a_key_rotated_by_another_process(folder):
    """A process holding the folder open (a long-running integration) makes its next batch
    under the version another process's `key rotate` issued, not the one it read on
    opening; a key file that is not the one issued is refused there too."""
    with DataFolder(folder) as long_lived:
        subprocess.run([sys.executable, "-m", "cli", "--data", str(folder), "key", "rotate"], cwd=ROOT,
                       capture_output=True, check=True)
        batch = long_lived.create_batch("cap", 3)
        assert batch.key_version == 2 and long_lived.keys.versions == [1, 2]
        assert long_lived.codes.verify(long_lived.codes.code(batch, 0, "cap_inner")).genuine
        subprocess.run([sys.executable, "-m", "cli", "--data", str(folder), "key", "rotate"], cwd=ROOT,
                       capture_output=True, check=True)
        v3 = folder / "keys" / "master-v3.key"
        os.unlink(v3)
        fd = os.open(v3, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, bytes(32))
        os.close(fd)
        with pytest.raises(DataFolderError, match="master-v3.key is not the key this data folder issued"):
            long_lived.create_batch("cap", 3)


@pytest.mark.parametrize("serve, msg", [
    ({"trusted_proxy": ["10.0.0.2"]},
     "unknown setting 'trusted_proxy'; known settings: trusted_proxies, proxy_header"),
    ([], "it must be a JSON object"),
    ({"trusted_proxies": "10.0.0.2"}, "trusted_proxies must be a list of IP addresses"),
    ({"trusted_proxies": [10]}, "trusted_proxies must be a list of IP addresses"),
    ({"trusted_proxies": ["10.0.0.0/8"]}, "'10.0.0.0/8' is not an IP address"),
    ({"trusted_proxies": ["proxy.internal"]}, "'proxy.internal' is not an IP address"),
    ({"proxy_header": "X Forwarded For"}, "proxy_header must be a header name"),
    ({"proxy_header": ""}, "proxy_header must be a header name"),
    ({"proxy_header": ["X-Forwarded-For"]}, "proxy_header must be a header name"),
])
def test_a_bad_serve_section_is_refused_with_what_is_wrong(folder, serve, msg):
    _edit_config(folder, lambda c: c.update(serve=serve))
    with DataFolder(folder) as data:
        with pytest.raises(DataFolderError, match=r'wuma.json, "serve" section: ') as e:
            data.serve_settings
        assert msg in str(e.value)
        with pytest.raises(ValueError, match='"serve" section: '):
            data.update_config(serve=serve)


def test_serve_settings_have_defaults_and_addresses_as_the_server_writes_them(folder):
    with DataFolder(folder) as data:
        assert data.serve_settings == {"trusted_proxies": [], "proxy_header": None}
        data.update_config(serve={"trusted_proxies": ["10.0.0.2", "2001:DB8::1"],
                                  "proxy_header": "X-Forwarded-For"})
    with DataFolder(folder) as data:
        assert data.serve_settings == {"trusted_proxies": ["10.0.0.2", "2001:db8::1"],
                                       "proxy_header": "X-Forwarded-For"}


def _edit_spec(folder: Path, edit) -> None:
    cfg = folder / "wuma.json"
    doc = json.loads(cfg.read_text())
    edit(doc["spec"])
    cfg.write_text(json.dumps(doc))


def test_a_spec_edited_as_codes_carry_it_is_refused_capacities_may_change(folder):
    """A role's format or place edited in wuma.json: exports came out in the other format
    and every printed code answered invalid, or a case's inner code read as its outer one.
    The store records the spec the codes were made with; only capacities, the spec's name
    and description may change."""
    good = (folder / "wuma.json").read_text()
    with DataFolder(folder) as data:
        code = data.codes.code(data.batches.find(1), 3, "cap_inner")

    def cap_level(spec):
        return next(lv for lv in spec["levels"] if lv["name"] == "cap")

    edits = {
        "format": (lambda spec: cap_level(spec)["roles"][0].update(format="decimal"),
                   r"level cap's roles are cap_outer \(decimal\), cap_inner \(base32\); the codes "
                   r"were made with cap_outer \(base32\), cap_inner \(base32\)"),
        "order": (lambda spec: cap_level(spec)["roles"].reverse(), "level cap's roles are cap_inner"),
        "levels": (lambda spec: spec["levels"][1].update(name="carton"),
                   "its levels are pallet, carton, cap; the codes were made with pallet, case, cap"),
    }
    for edit, message in edits.values():
        _edit_spec(folder, edit)
        with pytest.raises(DataFolderError, match=r'wuma.json, "spec": ' + message + ".*restore \"spec\""):
            DataFolder(folder)
        (folder / "wuma.json").write_text(good)
    _edit_spec(folder, lambda spec: (cap_level(spec).update(capacity=0), spec.update(name="ours"),
                                     next(lv for lv in spec["levels"] if lv["name"] == "case")
                                     .update(capacity=12)))
    with DataFolder(folder) as data:
        assert data.spec.level("case").capacity == 12 and data.codes.verify(code).serial == 3


def test_a_folder_from_before_the_spec_record_gets_it(folder):
    store = Store(folder / "db")
    with store.write() as txn:
        assert txn.delete(b"code_spec", db=store.db("meta"))
    store.env.close()
    DataFolder(folder).close()  # recorded as it is now
    _edit_spec(folder, lambda spec: spec["levels"][0]["roles"][0].update(format="decimal"))
    with pytest.raises(DataFolderError, match="the codes were made with pallet \\(base32\\)"):
        DataFolder(folder)


def test_a_backup_copy_makes_no_batch_before_a_new_key_version(folder, tmp_path):
    """Restored from a backup (use the copy as the data folder), the next batch took the
    id of a batch made after the backup in the original folder, under the same key: its
    codes were that batch's, code for code (labels already printed, twice). The copy
    refuses new batches until `wuma key rotate`; its older codes still verify."""
    with DataFolder(folder) as data:
        data.backup(tmp_path / "copy")
        after = data.create_batch("cap", 10)  # made after the backup: printed, shipped
        printed = data.codes.code(after, 3, "cap_inner")
    with DataFolder(tmp_path / "copy") as copy:
        with pytest.raises(DataFolderError, match="backup copy.*key version 1.*wuma key rotate"):
            copy.create_batch("cap", 10)
        assert copy.codes.verify(copy.codes.code(copy.batches.find(1), 0, "cap_inner")).genuine
        copy.rotate_key()
        again = copy.create_batch("cap", 10)
        assert again.id == after.id and again.key_version == 2  # the same id, a new key
        assert copy.codes.code(again, 3, "cap_inner") != printed
    with DataFolder(folder) as data:  # the original is no copy
        data.create_batch("cap", 1)
