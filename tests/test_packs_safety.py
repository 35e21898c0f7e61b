"""Pack export and open must never lose or destroy a pack, nor expose a key share."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import test_packs
from click.testing import CliRunner
from test_packs import _export, _rows

from cli.main import cli
from engine.http_packs import PullError, pull_packs
from engine.lines import generate_line_keys
from engine.packs import MAGIC, PackError, open_pack_to_file

# The fixtures of test_packs (a registered line L1 with a batch; a real pull server).
world = test_packs.world
server = test_packs.server


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# -- 1. a multi-part export is all or nothing ------------------------------------------------
def test_export_interrupted_in_a_later_part_leaves_nothing(world):
    reg, _keys, _brand, _batch, tmp = world
    calls = []

    def interrupt_in_part_two(n):
        calls.append(n)
        if len(calls) == 2:  # part 1 is fully written; Ctrl-C while part 2 is written
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _export(world, parts=3, split_key=True, progress=interrupt_in_part_two)
    assert reg.list(line="L1") == []
    assert _files(tmp / "packs") == []  # no pack file, no temporary file


def test_export_failing_to_place_a_part_leaves_no_file_and_withholds_its_packs(world, monkeypatch):
    """Its packs stay registered, marked export failed (withheld: a line that got a copy
    sets it aside); tests/test_packs_placing.py follows the lines' side."""
    reg, _keys, _brand, _batch, tmp = world
    real_link = os.link
    linked = []

    def link_fails_second(src, dst, **kw):
        if linked:
            raise OSError(28, "No space left on device", str(dst))
        linked.append(dst)
        return real_link(src, dst, **kw)

    monkeypatch.setattr(os, "link", link_fails_second)
    with pytest.raises(OSError, match="No space"):
        _export(world, parts=2, split_key=True)
    assert len(linked) == 1  # the first part was put in place, then taken back
    packs = reg.list(line="L1")
    assert len(packs) == 2 and all(p["export_failed_at"] is not None for p in packs)
    assert all(p["withheld_reason"].startswith("its export failed at") for p in packs)
    assert _files(tmp / "packs") == []


def test_export_registers_every_part_with_its_share(world):
    reg, keys, brand, _batch, tmp = world
    packs = _export(world, start=0, stop=900, parts=3, split_key=True)
    assert sorted(p["id"] for p in reg.list(line="L1")) == sorted(p.id for p in packs)
    assert _files(tmp / "packs") == sorted(os.path.basename(p.path) for p in packs)
    for p in packs:
        open_pack_to_file(p.path, keys, brand, tmp / "codes.csv", share=p.share)
        assert len(_rows(tmp / "codes.csv")) == p.count + 1


@pytest.mark.parametrize("unnamed", [True, False])
def test_export_with_named_or_unnamed_temporary_files(world, monkeypatch, unnamed):
    """Parts go to unnamed files (O_TMPFILE), or to hidden named ones for many parts: either
    way each is signed only once registered, and nothing else is left in the folder."""
    reg, keys, brand, _batch, tmp = world
    if not unnamed:
        monkeypatch.setattr("engine.packs._ANONYMOUS_PARTS", 2)
    calls = []

    def interrupt_in_part_three(n):
        calls.append(n)
        if len(calls) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _export(world, parts=3, progress=interrupt_in_part_three)
    assert reg.list() == [] and _files(tmp / "packs") == []
    packs = _export(world, start=0, stop=900, parts=3, split_key=True)
    assert _files(tmp / "packs") == sorted(os.path.basename(p.path) for p in packs)
    for p in packs:
        got = open_pack_to_file(p.path, keys, brand, tmp / "codes.csv", share=p.share)
        assert got.id == p.id and os.path.getsize(p.path) == reg.get(p.id)["size"]


def test_export_to_a_file_system_without_hard_links(world, monkeypatch):
    """A USB stick (vfat, exFAT): no O_TMPFILE and no hard links. The parts are placed by
    rename after a check, never over an existing pack, and nothing else is left."""
    import errno

    reg, keys, brand, _batch, tmp = world

    def no_links(src, dst, **kw):
        raise PermissionError(errno.EPERM, "Operation not permitted", str(dst))

    monkeypatch.setattr("engine.files.open_unnamed", lambda folder, perms: None)
    monkeypatch.setattr(os, "link", no_links)
    packs = _export(world, start=0, stop=600, parts=2)
    assert _files(tmp / "packs") == sorted(os.path.basename(p.path) for p in packs)
    for p in packs:
        assert open_pack_to_file(p.path, keys, brand, tmp / "codes.csv").id == p.id


# -- 2. exporting a range again never replaces an issued pack ---------------------------------
def test_reexport_of_same_range_keeps_both_packs(world):
    reg, keys, brand, _batch, tmp = world
    (first,) = _export(world, start=100, stop=150)
    first_bytes = Path(first.path).read_bytes()
    reg.revoke(first.id)  # NOTE: a range is exported again once its pack is revoked
    (second,) = _export(world, start=100, stop=150)
    assert first.path != second.path
    assert first.id in first.path and second.id in second.path
    assert Path(first.path).read_bytes() == first_bytes
    for p in (first, second):
        got = open_pack_to_file(p.path, keys, brand, tmp / "codes.csv")
        assert got.id == p.id
    assert {r["id"]: r["path"] for r in reg.list()} == {
        first.id: str(Path(first.path).resolve()),
        second.id: str(Path(second.path).resolve()),
    }


def test_export_never_replaces_an_existing_file(world, monkeypatch):
    reg, _keys, _brand, _batch, tmp = world
    (tmp / "packs").mkdir()
    squatter = tmp / "packs" / "L1-b1-0-10-fixed.wpk"
    squatter.write_bytes(b"an issued pack")
    monkeypatch.setattr("engine.packs.pack_file_name", lambda *a: squatter.name)
    with pytest.raises(PackError, match="already exists: not replacing it"):
        _export(world, start=0, stop=10)
    assert squatter.read_bytes() == b"an issued pack"
    assert reg.list() == [] and _files(tmp / "packs") == [squatter.name]


def test_pull_gets_each_reexported_pack_under_its_own_id(world, server):
    reg, keys, _brand, _batch, tmp = world
    (first,) = _export(world, start=100, stop=150)
    assert [p.name for p in pull_packs(keys, server, tmp / "pulled")] == [os.path.basename(first.path)]
    reg.revoke(first.id)  # NOTE: a range is exported again once its pack is revoked
    (second,) = _export(world, start=100, stop=150)
    got = pull_packs(keys, server, tmp / "pulled")
    assert [p.name for p in got] == [os.path.basename(second.path)]
    assert [w.id for w in got.withheld] == [first.id]  # set aside, never replaced
    pulled = tmp / "pulled" / os.path.basename(second.path)
    assert pulled.read_bytes() == Path(second.path).read_bytes()
    aside = tmp / "pulled" / (os.path.basename(first.path) + ".withheld")
    assert aside.read_bytes() == Path(first.path).read_bytes()


# -- 3. pack open never writes over the pack, and checks the receipt path first ---------------
def test_open_refuses_output_that_is_the_pack(world):
    _reg, keys, brand, _batch, tmp = world
    (p,) = _export(world, stop=100)
    before = Path(p.path).read_bytes()
    with pytest.raises(PackError, match="is the pack itself"):
        open_pack_to_file(p.path, keys, brand, p.path)
    link = tmp / "link.wpk"
    link.symlink_to(p.path)
    with pytest.raises(PackError, match="is the pack itself"):
        open_pack_to_file(link, keys, brand, Path(p.path))
    with pytest.raises(PackError, match="is the pack itself"):
        open_pack_to_file(p.path, keys, brand, tmp / "codes.csv", receipt=link)
    assert Path(p.path).read_bytes() == before and not (tmp / "codes.csv").exists()


def test_open_checks_receipt_path_before_writing_codes(world):
    _reg, keys, brand, _batch, tmp = world
    (p,) = _export(world, stop=100)
    with pytest.raises(PackError, match="cannot write the receipt .*nodir"):
        open_pack_to_file(p.path, keys, brand, tmp / "codes.csv", receipt=tmp / "nodir" / "r.json")
    with pytest.raises(PackError, match="same file"):
        open_pack_to_file(p.path, keys, brand, tmp / "codes.csv", receipt=tmp / "codes.csv")
    assert not (tmp / "codes.csv").exists()
    assert not [n for n in os.listdir(tmp) if n.endswith(".part")]
    got = open_pack_to_file(p.path, keys, brand, tmp / "codes.csv", receipt=tmp / "r.json")
    assert (tmp / "r.json").read_bytes() == got.receipt
    assert len(_rows(tmp / "codes.csv")) == 101


def test_cli_open_output_is_pack_or_receipt_unwritable(world):
    _reg, _keys, _brand, _batch, tmp = world
    (p,) = _export(world, stop=100)
    key = str(tmp / "line1")
    r = CliRunner()
    res = r.invoke(cli, ["pack", "open", p.path, "--key", key, "-o", p.path])
    assert res.exit_code == 1 and "the pack itself" in res.output
    assert Path(p.path).read_bytes().startswith(MAGIC)
    codes = tmp / "codes.csv"
    args = ["pack", "open", p.path, "--key", key, "-o", str(codes)]
    res = r.invoke(cli, [*args, "--receipt", str(tmp / "nodir" / "r.json")])
    assert res.exit_code == 1 and "cannot write the receipt" in res.output
    assert not codes.exists()
    res = r.invoke(cli, ["pack", "open", p.path, "--key", key, "-o", "-", "--receipt", p.path])
    assert res.exit_code == 1 and "the pack itself" in res.output and "serial" not in res.output


# -- 4. the key share from a file or stdin ----------------------------------------------------
def test_cli_share_from_file_or_stdin(world):
    _reg, _keys, _brand, _batch, tmp = world
    (p,) = _export(world, stop=100, split_key=True)
    key = str(tmp / "line1")
    share_file = tmp / "share.txt"
    share_file.write_text(p.share + "\n")
    r = CliRunner()
    base = ["pack", "open", p.path, "--key", key]
    res = r.invoke(cli, [*base, "--share-file", str(share_file), "-o", str(tmp / "a.csv")])
    assert res.exit_code == 0, res.output
    assert len(_rows(tmp / "a.csv")) == 101
    res = r.invoke(cli, [*base, "--share-file", "-", "-o", "-"], input=p.share + "\n")
    assert res.exit_code == 0, res.output
    assert res.stdout.splitlines()[0] == "serial,cap_outer,cap_inner"
    assert len(res.stdout.splitlines()) == 101
    # --share still works (scripts), and the help steers people to the safer way
    res = r.invoke(cli, [*base, "--share", p.share, "-o", str(tmp / "b.csv")])
    assert res.exit_code == 0, res.output
    help_text = r.invoke(cli, ["pack", "open", "--help"]).output
    assert "--share-file" in help_text and "prefer --share-file" in help_text


def _full_width(text: str) -> str:
    """What a Chinese input method types: U+FF01-FF5E for ASCII, U+3000 for a space."""
    return "".join("\u3000" if c == " " else chr(ord(c) + 0xFEE0) for c in text)


def test_cli_share_saved_by_notepad_or_typed_full_width(world):
    """A share file saved by Windows Notepad (UTF-8 BOM, CRLF) was refused as "mistyped:
    expected 55 letters/digits", and so was a share typed in full-width forms."""
    _reg, _keys, _brand, _batch, tmp = world
    (p,) = _export(world, stop=100, split_key=True)
    base = ["pack", "open", p.path, "--key", str(tmp / "line1")]
    notepad = tmp / "share-notepad.txt"
    notepad.write_bytes(b"\xef\xbb\xbf" + p.share.encode() + b"\r\n")
    wide = tmp / "share-wide.txt"
    wide.write_text(_full_width(p.share.lower()) + "\u3000\n", encoding="utf-8")
    r = CliRunner()
    for i, share_file in enumerate((notepad, wide)):
        out = tmp / f"n{i}.csv"
        res = r.invoke(cli, [*base, "--share-file", str(share_file), "-o", str(out)])
        assert res.exit_code == 0, res.output
        assert len(_rows(out)) == 101
    res = r.invoke(cli, [*base, "--share-file", "-", "-o", "-"],
                   input="\ufeff" + _full_width(p.share) + "\r\n")
    assert res.exit_code == 0, res.output
    unicode = tmp / "share-utf16.txt"  # Notepad's "Unicode": said "mistyped" too
    unicode.write_text(p.share + "\r\n", encoding="utf-16")
    res = r.invoke(cli, [*base, "--share-file", str(unicode), "-o", str(tmp / "u.csv")])
    assert res.exit_code == 1 and f"{unicode}: the file is UTF-16; save it as UTF-8" in res.output
    assert not (tmp / "u.csv").exists()


def test_cli_share_through_stdin_is_read_as_utf8_whatever_the_locale(world):
    """Through stdin the share was decoded by the locale: UTF-16 said "mistyped", and
    under a strict UTF-8 locale bytes that are not UTF-8 raised UnicodeDecodeError."""
    _reg, _keys, _brand, _batch, tmp = world
    (p,) = _export(world, stop=100, split_key=True)
    base = ["pack", "open", p.path, "--key", str(tmp / "line1"), "--share-file", "-", "-o", str(tmp / "u.csv")]
    r = CliRunner()
    for encoding in ("utf-16", "utf-16-be"):  # Notepad's "Unicode" (LE) and "Unicode big endian"
        raw = (b"\xfe\xff" if encoding == "utf-16-be" else b"") + (p.share + "\r\n").encode(encoding)
        res = r.invoke(cli, base, input=raw)
        assert res.exit_code == 1 and "stdin: the file is UTF-16; save it as UTF-8" in res.output, res.output
        assert "mistyped" not in res.output and "Traceback" not in res.output
    res = r.invoke(cli, base, input=p.share.encode()[:10] + b"\xe9" + p.share.encode()[10:])
    assert res.exit_code == 1 and "stdin: not UTF-8 text (byte 0xE9 at offset 10" in res.output, res.output
    assert not (tmp / "u.csv").exists()
    latin = tmp / "share-latin1.txt"
    latin.write_bytes(b"\xe9" + p.share.encode())
    res = r.invoke(cli, [*base[:-4], "--share-file", str(latin), "-o", str(tmp / "u.csv")])
    assert res.exit_code == 1 and f"{latin}: not UTF-8 text (byte 0xE9 at offset 0" in res.output
    assert not (tmp / "u.csv").exists()


def test_cli_share_file_errors(world):
    _reg, _keys, _brand, _batch, tmp = world
    (p,) = _export(world, stop=100, split_key=True)
    base = ["pack", "open", p.path, "--key", str(tmp / "line1"), "-o", str(tmp / "c.csv")]
    empty = tmp / "empty.txt"
    empty.write_text("\n")
    r = CliRunner()
    res = r.invoke(cli, [*base, "--share-file", str(empty)])
    assert res.exit_code == 1 and "no key share in" in res.output
    res = r.invoke(cli, [*base, "--share-file", str(empty), "--share", p.share])
    assert res.exit_code == 2 and "not both" in res.output
    res = r.invoke(cli, base)
    assert res.exit_code == 1 and "--share-file" in res.output
    assert not (tmp / "c.csv").exists()


# -- 5. a refused pull says what to check -----------------------------------------------------
def test_pull_unregistered_line_hints_at_line_add(world, server):
    _reg, _keys, _brand, _batch, tmp = world
    stranger = generate_line_keys(tmp / "stranger")
    with pytest.raises(PullError) as e:
        pull_packs(stranger, server, tmp / "pulled")
    msg = str(e.value)
    assert "401" in msg and "wuma line add" in msg and stranger.fingerprint in msg
    assert "clock" in msg


def test_pull_with_clock_off_says_so(world, server):
    _reg, keys, _brand, _batch, tmp = world
    with pytest.raises(PullError, match=r"401 .*clock is about \d+ s behind the server"):
        pull_packs(keys, server, tmp / "pulled", clock=lambda: time.time() - 3600)
    with pytest.raises(PullError, match=r"clock is about \d+ s ahead of the server"):
        pull_packs(keys, server, tmp / "pulled", clock=lambda: time.time() + 900)


def test_cli_pull_unregistered_line_hint(world, server):
    _reg, _keys, _brand, _batch, tmp = world
    generate_line_keys(tmp / "stranger")
    res = CliRunner().invoke(
        cli,
        ["pack", "pull", "--line", str(tmp / "stranger"), "--server", server, "-o", str(tmp / "p")],
    )
    assert res.exit_code == 1 and "wuma line add" in res.output


@pytest.mark.parametrize("unnamed", [True, False])
def test_each_pack_is_on_disk_before_it_gets_its_name(world, monkeypatch, unnamed):
    """A power loss after an export leaves each registered pack's file whole or absent,
    never short: each part is fsynced (signature included) before it is named, and the
    folder after."""
    import engine.packs as P

    if not unnamed:
        monkeypatch.setattr(P, "_ANONYMOUS_PARTS", 0)
    events, fsync = [], os.fsync

    def noting_fsync(fd):
        events.append(("fsync", os.fstat(fd).st_size))
        return fsync(fd)

    monkeypatch.setattr(os, "fsync", noting_fsync)
    monkeypatch.setattr(P, "_place_new", lambda file, _place=P._place_new: (
        events.append(("place", file.path.name)), _place(file))[1])
    packs = _export(world, start=0, stop=600, parts=2)
    sizes = {os.path.basename(p.path): os.path.getsize(p.path) for p in packs}
    placed = [i for i, e in enumerate(events) if e[0] == "place"]
    assert [events[i][1] for i in placed] == sorted(sizes)
    for i in placed:  # just before each naming: that file, whole, fsynced
        assert events[i - 1] == ("fsync", sizes[events[i][1]])
    assert events[-1][0] == "fsync"  # the folder, once both are named


# -- 5. a pack rewritten while it is opened -----------------------------------------------------
def _forged_over(path: Path, keys) -> bytes:
    """The pack at ``path`` as someone who may write where it lies would rewrite it: its
    signed header kept, with a data key of their own wrapped to the line's public key (no
    secret) and codes of their own encrypted under it."""
    import hashlib
    import struct

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    import engine.packs as P

    header, hb, _ = P.read_header(path)
    hd = hashlib.sha256(hb).digest()
    key = os.urandom(32)
    wrapped = P._wrap(key, keys.x25519_public, bytes.fromhex(header["pack"]), hd)
    row, (a, b) = sum(header["widths"]), header["range"]
    plain = b"F" * (row * (b - a))
    ct = AESGCM(key).encrypt(P._chunk_nonce(0, True), plain, P._chunk_aad(hd, 0, True, a, b - a))
    return MAGIC + struct.pack(">I", len(hb)) + hb + wrapped + P._FRAME.pack(len(ct), a, b - a) + ct + b"\0" * 64


@pytest.mark.parametrize("how", ["in place", "renamed over"])
def test_a_pack_rewritten_after_its_signature_check_writes_no_code_of_the_rewrite(world, monkeypatch, how):
    """``wuma pack open -o -`` streams codes as they decrypt. A file rewritten between the
    signature check and the decryption (a shared folder) must not get its own codes out:
    the data key is the one the signature covered, read once. Rewritten in place, the
    open fails before any code is written; renamed over, the open reads on in the file it
    checked."""
    import io

    import engine.packs as P

    _reg, keys, brand, _batch, tmp = world
    (p,) = _export(world, start=0, stop=400)
    forged = _forged_over(Path(p.path), keys)
    checked = P._verify

    def rewrite_after_check(fh, path, *args, **kw):  # the open pack, its path, the brand's keys
        got = checked(fh, path, *args, **kw)
        if how == "in place":
            Path(path).write_bytes(forged)
        else:
            Path(f"{path}.new").write_bytes(forged)
            os.replace(f"{path}.new", path)
        return got

    monkeypatch.setattr(P, "_verify", rewrite_after_check)
    out = io.BytesIO()
    if how == "in place":
        with pytest.raises(PackError, match="damaged: a chunk does not decrypt"):
            P.open_pack(p.path, keys, brand, out)
        assert out.getvalue() in (b"", b"serial,cap_outer,cap_inner\n")  # no code at all
    else:
        assert P.open_pack(p.path, keys, brand, out).id == p.id
        rows = out.getvalue().decode().splitlines()
        assert len(rows) == 401 and b"F" * 20 not in out.getvalue()  # no forged code (all F)
