"""A data folder whose store is behind its keys makes no batch before `wuma key rotate`, and
wuma.json is on disk whole once written.

A code is a function of (key version, batch id, serial) and the next batch id comes from the
store: a store restored from a backup, with the folder's newer keys/ kept (the only way to
keep codes printed under them verifying), handed out again the id of a batch printed after
the backup, under that batch's key, and repeated its codes one for one."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from engine import DataFolder, DataFolderError
from engine.store import Store

ROTATE_FIRST = "wuma key rotate"


def printed_after_a_backup(tmp_path: Path) -> tuple[Path, Path, list[str]]:
    """A folder with batch 1, a backup of it, then a rotation to key version 2 and batch 2,
    whose first codes (returned) are on products."""
    folder, backup = tmp_path / "wuma-data", tmp_path / "bk"
    with DataFolder.init(folder) as data:
        data.create_batch("cap", 10)
        data.backup(backup)
        assert data.rotate_key() == 2
        printed = data.create_batch("cap", 10)
        assert (printed.id, printed.key_version) == (2, 2)
        codes = [data.codes.code(printed, i, "cap_inner") for i in range(10)]
    return folder, backup, codes


def restore_db_only(folder: Path, backup: Path) -> None:
    """What the damaged-store error says to do: db/ from the backup, keys/ kept."""
    shutil.rmtree(folder / "db")
    shutil.copytree(backup / "db", folder / "db")


def unmark(db: Path) -> None:
    """A copy of db/ made some other way (an earlier release's backup, a file copy taken
    while the servers were stopped): no mark says it is a backup."""
    store = Store(db)
    try:
        with store.write() as txn:
            txn.delete(b"backup_copy", db=store.db("meta"))
    finally:
        store.close()


@pytest.mark.parametrize("marked", [True, False], ids=["wuma-backup", "other-copy"])
def test_db_restored_beside_newer_keys_repeats_no_printed_code(tmp_path, marked):
    folder, backup, printed = printed_after_a_backup(tmp_path)
    restore_db_only(folder, backup)
    if not marked:
        unmark(folder / "db")
    with DataFolder(folder) as data:
        with pytest.raises(DataFolderError, match=ROTATE_FIRST):
            data.create_batch("cap", 10)
        assert data.batches.find(2) is None  # nothing was made
        first = data.batches.find(1)  # codes of the backup's batches still verify
        assert data.codes.verify(data.codes.code(first, 0, "cap_inner")).genuine
        assert data.rotate_key() == 3  # above every version in keys/
        again = data.create_batch("cap", 10)
        assert (again.id, again.key_version) == (2, 3)
        assert not set(data.codes.code(again, i, "cap_inner") for i in range(10)) & set(printed)


def test_the_cli_refuses_the_batch_and_says_to_rotate(tmp_path):
    folder, backup, printed = printed_after_a_backup(tmp_path)
    restore_db_only(folder, backup)
    runner = CliRunner()

    def run(*args):
        return runner.invoke(cli, ["--data", str(folder), *args])

    got = run("batch", "create", "--level", "cap", "--count", "10")
    assert got.exit_code == 1 and ROTATE_FIRST in got.output
    listed = json.loads(run("key", "list", "--json").output)
    assert listed["versions"] == [1, 2] and ROTATE_FIRST in listed["batches_refused"]
    assert "no new batch before `wuma key rotate`" in run("key", "list").output
    assert run("key", "rotate").exit_code == 0
    made = json.loads(run("batch", "create", "--level", "cap", "--count", "10", "--json").output)
    assert (made["id"], made["key_version"]) == (2, 3)
    assert json.loads(run("key", "list", "--json").output) == {"versions": [1, 2, 3], "current": 3}
    exported = run("batch", "export", "2", "--plaintext", "-o", "-").output
    assert not set(exported.split()) & set(printed)


def test_a_key_rotate_interrupted_after_its_key_file_is_run_again(tmp_path):
    """Killed between the key file and its record, a rotate leaves a version the store never
    made current: it looks like a store behind its keys, so batches wait for the rotate to
    be run again; the version it left is recorded (its number never given again, its key
    file checked) but never used."""
    folder = tmp_path / "wuma-data"
    with DataFolder.init(folder) as data:
        data.create_batch("cap", 10)
        assert data.keys.rotate() == 2  # the key file, without the store's record
    with DataFolder(folder) as data:
        with pytest.raises(DataFolderError, match=ROTATE_FIRST):
            data.create_batch("cap", 10)
        assert data.rotate_key() == 3
        assert data.create_batch("cap", 10).key_version == 3
    (folder / "keys" / "master-v2.key").unlink()
    with pytest.raises(DataFolderError, match=r"version\(s\) 2 missing"):
        DataFolder(folder)


def test_a_folder_of_the_release_before_keeps_its_key_and_takes_no_unrecorded_one(tmp_path):
    """The release before recorded the versions issued but not the one for new batches:
    new batches use the newest it recorded; a version only in keys/ is not taken."""
    folder = tmp_path / "wuma-data"
    with DataFolder.init(folder) as data:
        data.rotate_key()
    store = Store(folder / "db")
    with store.write() as txn:
        txn.delete(b"batch_key", db=store.db("meta"))
    store.close()
    with DataFolder(folder) as data:
        assert data.create_batch("cap", 10).key_version == 2
    with DataFolder(folder) as data:
        data.keys.rotate()  # version 3: a key file the store does not record
    store = Store(folder / "db")
    with store.write() as txn:
        txn.delete(b"batch_key", db=store.db("meta"))
    store.close()
    with DataFolder(folder) as data:
        with pytest.raises(DataFolderError, match=f"version 3.*{ROTATE_FIRST}"):
            data.create_batch("cap", 10)


# -- wuma.json ----------------------------------------------------------------------------------
@pytest.fixture
def synced(monkeypatch):
    """What is put on disk, in order: ("fsync", path) and ("rename", source, target)."""
    events: list[tuple] = []
    fsync, replace = os.fsync, os.replace

    def spy_fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return fsync(fd)

    def spy_replace(src, dst):
        events.append(("rename", os.fspath(src), os.fspath(dst)))
        return replace(src, dst)

    monkeypatch.setattr(os, "fsync", spy_fsync)
    monkeypatch.setattr(os, "replace", spy_replace)
    return events


def assert_on_disk(events: list[tuple], folder: Path) -> None:
    """wuma.json was written under another name, that file fsynced, renamed onto
    wuma.json, then the folder fsynced: after a power loss it is the old file or the new
    one, whole, never missing or empty."""
    target = str(folder / "wuma.json")
    renames = [i for i, e in enumerate(events) if e[0] == "rename" and e[2] == target]
    assert renames, events
    i = renames[-1]
    source = events[i][1]
    assert ("fsync", source) in events[:i]
    assert ("fsync", str(folder)) in events[i + 1:]


def test_wuma_json_is_on_disk_after_init_and_a_settings_change(tmp_path, synced):
    folder = tmp_path / "wuma-data"
    with DataFolder.init(folder) as data:
        assert_on_disk(synced, folder)
        synced.clear()
        data.update_config(store={"durability": "relaxed"})
        assert_on_disk(synced, folder)
    with DataFolder(folder) as data:
        assert data.durability == "relaxed"
    assert sorted(p.name for p in folder.iterdir()) == ["db", "keys", "wuma.json"]


@pytest.mark.parametrize("umask", [0o000, 0o022], ids=["000", "022"])
def test_wuma_json_is_the_owners_only_whatever_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        with DataFolder.init(tmp_path / "wuma-data") as data:
            assert stat.S_IMODE((data.path / "wuma.json").stat().st_mode) == 0o600
            data.update_config(abuse={})
            assert stat.S_IMODE((data.path / "wuma.json").stat().st_mode) == 0o600
    finally:
        os.umask(old)
