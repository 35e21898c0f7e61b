"""Where an export (``-o PATH``: batch, EPCIS and ledger exports, pack open) may go: a
device, a FIFO or an open file is written into, never replaced by a file; the data
folder's own files are never written over."""

import os
import re
import socket
import stat
import threading
from pathlib import Path

import pytest

from engine.files import NewFile, OutputRefused, private_output, protect, unprotect

CODES = b"serial,cap_outer,cap_inner\r\n0,1K0V9YYWQT5WXJE5J90C,1YM7TEA36WQZGB2XXKN7\r\n"


def _read_fifo(path):
    """Start a thread that reads the FIFO ``path`` to its end; ``join()`` returns the bytes."""
    got = []

    def read():
        with open(path, "rb") as fh:
            got.append(fh.read())

    t = threading.Thread(target=read, daemon=True)  # NOTE: daemon: a FIFO never opened blocks it
    t.start()

    def join():
        t.join(10)
        return got[0] if got else None

    return join


def _kind(path):
    return stat.S_IFMT(os.lstat(path).st_mode)


# -- a device, a FIFO, a socket, an open file: written into or refused, never replaced --

def test_a_fifo_a_print_system_reads_gets_the_export_and_stays_a_fifo(tmp_path):
    fifo = tmp_path / "to-printer"
    os.mkfifo(fifo)
    join = _read_fifo(fifo)
    with private_output(fifo) as fh:
        fh.write(CODES)
    assert join() == CODES
    assert _kind(fifo) == stat.S_IFIFO and os.listdir(tmp_path) == ["to-printer"]


def test_a_symlink_to_a_fifo_writes_into_the_fifo_and_stays_a_symlink(tmp_path):
    fifo, link = tmp_path / "fifo", tmp_path / "printer"
    os.mkfifo(fifo)
    link.symlink_to(fifo)
    join = _read_fifo(fifo)
    with private_output(link, "w", encoding="utf-8") as fh:
        fh.write("codes\n")
    assert join() == b"codes\n"
    assert _kind(link) == stat.S_IFLNK and _kind(fifo) == stat.S_IFIFO
    assert sorted(os.listdir(tmp_path)) == ["fifo", "printer"]


def test_dev_null_through_a_symlink_stays_a_character_device(tmp_path):
    """``-o /dev/null`` run as root replaced the system's /dev/null with a file of
    plaintext codes; a symlink to it here (writing into /dev/null is harmless)."""
    link = tmp_path / "null"
    link.symlink_to("/dev/null")
    with private_output(link) as fh:
        fh.write(CODES)
    assert _kind(link) == stat.S_IFLNK and os.readlink(link) == "/dev/null"
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode) and os.listdir(tmp_path) == ["null"]


def test_a_character_device_node_is_written_into_not_replaced(tmp_path):
    node = tmp_path / "null"
    try:
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # NOTE: Linux's /dev/null
    except (PermissionError, AttributeError):
        pytest.skip("making a device node needs root")
    with private_output(node) as fh:
        fh.write(CODES)
    assert stat.S_ISCHR(os.lstat(node).st_mode) and os.stat(node).st_size == 0
    assert os.listdir(tmp_path) == ["null"]


def test_a_dev_stdout_style_link_writes_to_the_open_file_at_its_offset(tmp_path):
    """``-o /dev/stdout > codes.csv``: /dev/stdout leads to /proc/self/fd/1, here to a file;
    the export goes into that open file after what was written to it before (as ``-o -``
    would), and no link is replaced (as root, /dev/stdout was)."""
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("no /proc/self/fd")
    out = tmp_path / "codes.csv"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, b"# header\n")
        link = tmp_path / "stdout"
        link.symlink_to(f"/proc/self/fd/{fd}")
        with private_output(link) as fh:
            fh.write(CODES)
        os.write(fd, b"# footer\n")
    finally:
        os.close(fd)
    assert out.read_bytes() == b"# header\n" + CODES + b"# footer\n"
    assert _kind(link) == stat.S_IFLNK and sorted(os.listdir(tmp_path)) == ["codes.csv", "stdout"]


def test_a_link_to_a_closed_file_descriptor_is_refused_not_replaced(tmp_path):
    """``-o /dev/stdout`` with standard output closed: /proc/self/fd/1 leads nowhere, and
    renamed over, /dev/stdout itself (as root) would have become a file."""
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("no /proc/self/fd")
    fd = os.open(tmp_path, os.O_RDONLY)
    os.close(fd)
    link = tmp_path / "stdout"
    link.symlink_to(f"/proc/self/fd/{fd}")
    with pytest.raises(ValueError, match=f"file descriptor {fd}, which is not open"), \
            private_output(link):
        pytest.fail("the export was run")
    assert _kind(link) == stat.S_IFLNK and os.listdir(tmp_path) == ["stdout"]

def test_a_reader_gone_from_a_fifo_is_an_error_naming_it(tmp_path):
    fifo = tmp_path / "to-printer"
    os.mkfifo(fifo)

    def gone():
        with open(fifo, "rb"):
            pass

    t = threading.Thread(target=gone, daemon=True)
    t.start()
    with pytest.raises(OSError) as e, private_output(fifo) as fh:
        for _ in range(64):
            fh.write(CODES * 1000)
            fh.flush()
    t.join(10)
    assert e.value.filename == str(fifo) and _kind(fifo) == stat.S_IFIFO


def test_a_folder_is_refused_before_anything_is_written(tmp_path):
    folder = tmp_path / "exports"
    folder.mkdir()
    refused = pytest.raises(ValueError, match=re.escape(f"{folder} is a folder: give the name of"))
    with refused as e, private_output(folder):
        pytest.fail("the export was run")
    assert isinstance(e.value, OSError) and os.listdir(folder) == []
    assert os.listdir(tmp_path) == ["exports"]


def test_a_socket_is_refused_and_stays_a_socket(tmp_path):
    path = tmp_path / "s.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        refused = pytest.raises(ValueError, match=re.escape(f"{path} is a socket") + ".*-o -")
        with refused, private_output(path):
            pytest.fail("the export was run")
    assert _kind(path) == stat.S_IFSOCK and os.listdir(tmp_path) == ["s.sock"]


@pytest.mark.parametrize("special", ["fifo", "link to /dev/null"])
def test_a_new_file_is_never_renamed_over_a_fifo_or_a_device(tmp_path, special):
    """The same where any output replaces an existing name (a load's reject file)."""
    path = tmp_path / "rejects"
    if special == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/null")
    before = _kind(path)
    with NewFile(path) as f:
        f.write(b"bad records\n")
        with pytest.raises(OutputRefused, match="is never replaced"):
            f.replace()
    assert _kind(path) == before and os.listdir(tmp_path) == ["rejects"]

# -- the data folder's own files are never written over --

@pytest.fixture
def folder(tmp_path):
    """A data folder's files (stand-ins: the data folder calls protect itself), protected
    as the data folder protects them, and unprotected after."""
    d = tmp_path / "d"
    (d / "keys").mkdir(parents=True)
    (d / "db").mkdir()
    (d / "wuma.json").write_text('{"spec": {}}\n')
    (d / "keys" / "master-v1.key").write_bytes(bytes(range(32)))
    (d / "db" / "data.mdb").write_bytes(b"\xde\xc0" * 4096)
    owned = protect([d / "wuma.json", d / "keys", d / "db", d / "db-counters"])
    yield d
    unprotect(owned)


def _tree(root):
    """Every file under ``root``: its path from ``root`` and its bytes."""
    return {os.path.relpath(os.path.join(top, name), root): Path(top, name).read_bytes()
            for top, _, names in os.walk(root) for name in names}


@pytest.mark.parametrize("target", [
    "d/keys/master-v1.key",   # the master key: lost for good
    "d/keys/master-v2.key",   # a new file in keys/: read as a damaged key
    "d/wuma.json",
    "d/db/data.mdb",
    "d/db-counters/data.mdb",  # a protected folder not made yet
    "d/db/../wuma.json",
])
def test_an_export_over_the_data_folders_own_files_is_refused_and_they_stay_as_they_were(
        tmp_path, folder, monkeypatch, target):
    monkeypatch.chdir(tmp_path)
    before = _tree(tmp_path)
    with pytest.raises(ValueError, match="belongs to the data folder") as e, \
            private_output(target, "w") as fh:
        fh.write("a,b\n")
    assert str(e.value).startswith(f"{target} belongs")
    assert str(e.value).endswith("write the export elsewhere")
    assert _tree(tmp_path) == before and sorted(os.listdir(folder)) == ["db", "keys", "wuma.json"]


def test_the_data_folders_files_are_refused_by_a_relative_name_or_a_symlink(
        tmp_path, folder, monkeypatch):
    """``ledger export -o wuma.json`` run from inside the data folder, and a link to a key."""
    before = _tree(tmp_path)
    monkeypatch.chdir(folder)
    refused = pytest.raises(ValueError, match=r"^wuma\.json belongs to the data folder")
    with refused, private_output("wuma.json"):
        pytest.fail("the export was run")
    link = tmp_path / "key-link"
    link.symlink_to(folder / "keys" / "master-v1.key")
    with pytest.raises(ValueError, match="belongs to the data folder"), private_output(link):
        pytest.fail("the export was run")
    assert _tree(folder) == {k.removeprefix("d/"): v for k, v in before.items()}
    assert _kind(link) == stat.S_IFLNK


def test_a_new_file_is_never_renamed_over_the_data_folders_files(tmp_path, folder):
    """The same check where any output replaces an existing name (a load's reject file)."""
    key = folder / "keys" / "master-v1.key"
    with NewFile(key) as f:
        f.write(b"bad records\n")
        with pytest.raises(OutputRefused, match="belongs to the data folder"):
            f.replace()
    assert key.read_bytes() == bytes(range(32)) and os.listdir(folder / "keys") == ["master-v1.key"]


def test_exports_beside_the_data_folders_files_still_work(tmp_path, folder):
    for target in (tmp_path / "codes.csv", folder / "codes.csv", folder / "keys-old" / "codes.csv",
                   folder / "wuma.json.csv"):
        target.parent.mkdir(exist_ok=True)
        with private_output(target) as fh:
            fh.write(CODES)
        assert target.read_bytes() == CODES and stat.S_IMODE(target.stat().st_mode) == 0o600


def test_protection_lasts_while_a_folder_that_protects_a_path_is_open(tmp_path):
    """Two data folder objects on one folder: the first to close leaves the path protected."""
    key = tmp_path / "keys"
    key.mkdir()
    protect([key])
    protect([key])
    unprotect([key])
    refused = pytest.raises(ValueError, match="belongs to the data folder")
    with refused, private_output(key / "x.csv"):
        pytest.fail("the export was run")
    unprotect([key])
    with private_output(key / "x.csv") as fh:
        fh.write(CODES)
    assert (key / "x.csv").read_bytes() == CODES



def test_a_backup_into_the_data_folders_own_folders_is_refused(tmp_path):
    """A backup made inside keys/ or db/ would sit among the files the folder reads."""
    from engine import DataFolder
    from engine.files import OutputRefused

    with DataFolder.init(tmp_path / "d") as data:
        for dest in (tmp_path / "d" / "keys" / "copy", tmp_path / "d" / "db" / "copy"):
            with pytest.raises(OutputRefused, match="belongs to the data folder"):
                data.backup(dest)
            assert not dest.exists()
        assert data.backup(tmp_path / "copy")["path"]


def test_a_data_folder_on_disk_is_refused_to_a_process_that_never_opened_it(tmp_path):
    """`pack open -o DATA/keys/master-v1.key` (pack open opens no data folder) wrote
    plaintext codes over the master key: a data folder's own files are known by its layout
    on disk, not only while this process has it open."""
    from engine import DataFolder

    DataFolder.init(tmp_path / "d").close()
    key = tmp_path / "d" / "keys" / "master-v1.key"
    before = key.read_bytes()
    for target in (key, tmp_path / "d" / "wuma.json", tmp_path / "d" / "db" / "data.mdb",
                   tmp_path / "d" / "keys" / "new.key"):
        with pytest.raises(OutputRefused, match="belongs to the data folder"):
            with private_output(target) as fh:
                fh.write(b"0,CODE\n")
    assert key.read_bytes() == before
    with private_output(tmp_path / "d" / "codes.csv") as fh:  # beside them: an export like any
        fh.write(b"0,CODE\n")
    assert (tmp_path / "d" / "codes.csv").read_bytes() == b"0,CODE\n"
