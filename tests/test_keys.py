"""Keys: file modes, never printed, HKDF purpose separation, damaged folders."""

import os
import stat

import pytest

from engine import DataFolder, DataFolderError
from engine.keys import KeyRing


def test_master_key_file_is_private(data):
    key_dir = data.path / "keys"
    assert stat.S_IMODE(key_dir.stat().st_mode) == 0o700
    f = key_dir / "master-v1.key"
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert len(f.read_bytes()) == 32


def test_key_never_in_repr_or_config(data):
    master = (data.path / "keys" / "master-v1.key").read_bytes()
    assert master.hex() not in repr(data.keys)
    config = (data.path / "wuma.json").read_bytes()
    assert master not in config and master.hex().encode() not in config


def test_purpose_keys_are_separated(data):
    a = data.keys.derive(1, "code-ff1/base32", 16)
    b = data.keys.derive(1, "code-ff1/decimal", 16)
    assert a != b and len(a) == 16
    v2 = data.keys.rotate()
    assert data.keys.derive(v2, "code-ff1/base32", 16) != a


def test_refuses_group_readable_key(data):
    f = data.path / "keys" / "master-v1.key"
    os.chmod(f, 0o644)
    with pytest.raises(DataFolderError, match="chmod 600"):
        KeyRing(data.path / "keys")


def test_refuses_second_init_and_missing_folder(data, tmp_path):
    with pytest.raises(DataFolderError, match="already"):
        DataFolder.init(data.path)
    with pytest.raises(DataFolderError, match="wuma init"):
        DataFolder(tmp_path / "nowhere")


def test_damaged_key_file(data):
    (data.path / "keys" / "master-v1.key").write_bytes(b"short")
    with pytest.raises(DataFolderError, match="damaged"):
        KeyRing(data.path / "keys")


@pytest.mark.parametrize("name", ["master-v\u0661.key", "master-v01.key", "master-v1.key~"])
def test_only_a_key_files_own_name_is_read_as_its_version(data, name):
    """A stray file whose name another script's digit or a leading zero makes look like
    version 1 (an editor's copy, a restore gone wrong) never stands in for the real key."""
    before = KeyRing(data.path / "keys").fingerprint(1)
    stray = data.path / "keys" / name
    stray.write_bytes(os.urandom(32))
    stray.chmod(0o600)
    ring = KeyRing(data.path / "keys")
    assert ring.versions == [1] and ring.fingerprint(1) == before


def test_dangling_key_symlink_is_a_clear_error(data):
    (data.path / "keys" / "master-v2.key").symlink_to(data.path / "nowhere")
    with pytest.raises(DataFolderError, match="master-v2.key cannot be read .*restore it from the backup"):
        KeyRing(data.path / "keys")


def test_failed_key_write_leaves_no_half_written_key(tmp_path, monkeypatch):
    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space"):
        KeyRing.create(tmp_path / "keys")
    monkeypatch.undo()
    assert not (tmp_path / "keys" / "master-v1.key").exists()
    assert KeyRing.create(tmp_path / "keys").versions == [1]  # a second try works
