"""Output files that appear whole or not at all, readable by their owner only, and never
over the data folder's own files (:func:`protect`) or a device, a pipe or a socket; CSV
files that people open in a spreadsheet, whose cells never run as formulas; and text files
that people give Wuma (a key share, a campaign rule, division centres), read as UTF-8."""

from __future__ import annotations

import csv
import errno
import math
import os
import re
import stat
import tempfile
import threading
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Self

__all__ = ["UTF8_BOM", "NewFile", "OutputRefused", "SpreadsheetWriter", "decode_text", "read_bounded", "size_text",
           "fsync_path", "link_new", "link_unnamed", "open_output", "open_stream", "open_unnamed", "private_output",
           "protect", "protect_owned",
           "refuse_protected", "refuse_utf16", "same_file", "spreadsheet_cell", "sync_folder",
           "temp_beside", "unprotect", "write_new_file"]

#: Turns the OSError of making a temporary file into the error to raise.
ErrorHook = Callable[[OSError], BaseException]

#: The UTF-8 byte-order mark Excel ("CSV UTF-8") and Windows Notepad put at the start.
UTF8_BOM = b"\xef\xbb\xbf"
#: The UTF-16 byte-order marks (Notepad's "Unicode", Excel's "Unicode Text"), LE and BE.
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def refuse_utf16(head: bytes, name: str, save_as: str = "UTF-8") -> None:
    """ValueError naming ``name`` if ``head``, the start of a file, shows that the file is
    not UTF-8 text: it starts with a UTF-16 byte-order mark, or holds a NUL byte (UTF-16
    without one, or a spreadsheet's own format). The message asks to save it as ``save_as``.

    NOTE: read as UTF-8, such a file said something misleading: a share "mistyped", a CSV
    line "not a genuine code", a region file "'utf-8' codec can't decode byte 0xff"."""
    if head.startswith(_UTF16_BOMS):
        raise ValueError(f"{name}: the file is UTF-16; save it as {save_as}")
    if b"\0" in head:
        raise ValueError(f"{name}: the file holds NUL bytes, so it is not UTF-8 text "
                         f"(UTF-16 without a byte-order mark? a spreadsheet?); save it as {save_as}")


def size_text(n: int) -> str:
    """A size for a person: ``64 MiB``, ``4 KiB``, else ``1,000 bytes``."""
    for unit, shift in (("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n:,} bytes"


def read_bounded(source, limit: int, name: str, what: str, *, kind: str = "file") -> bytes:
    """The bytes of ``source`` (a path, or a binary file open for reading), at most
    ``limit``; past them ValueError naming it (``name``), saying what it should hold
    (``what``, with how large that is) and asking if it is the right ``kind``. A regular
    file is judged by its size, unread; a pipe or a device (``/dev/zero``) is read up to
    the bound and one byte more (a wrong input grew the process until the OOM killer)."""
    if isinstance(source, (str, bytes, os.PathLike)):
        with open(source, "rb") as fh:
            return read_bounded(fh, limit, name, what, kind=kind)
    try:
        st = os.fstat(source.fileno())
        too_large = stat.S_ISREG(st.st_mode) and st.st_size - source.tell() > limit
    except (OSError, AttributeError, ValueError):  # NOTE: no file descriptor (a test's BytesIO)
        too_large = False
    raw = b"" if too_large else source.read(limit + 1)
    if too_large or len(raw) > limit:
        raise ValueError(f"{name}: over {size_text(limit)}, too large for {what}: is it the right {kind}?")
    return raw


def decode_text(raw: bytes, name: str, *, offset: int = 0) -> str:
    """The text of a file a person gave (``raw``, its bytes; ``name``, how to name it in a
    message), read the one way every command reads one: UTF-8, a UTF-8 byte-order mark at
    the start dropped (Excel's "CSV UTF-8" and Notepad write one).

    ValueError naming ``name`` for a UTF-16 file (:func:`refuse_utf16`), and for bytes
    that are not UTF-8, with the offset of the first one in the file (a CSV saved by Excel
    in the system's "ANSI" code page, GBK on a Chinese Windows, is the usual one).

    ``offset``: where ``raw`` starts in the file, for a file read in pieces (the lines of
    standard input as they arrive): only the piece at 0 may start with a byte-order mark,
    and the offset in a message counts from the start of the file."""
    if not isinstance(raw, (bytes, bytearray)):
        raise TypeError("raw must be bytes")
    if offset == 0 or b"\0" in raw:
        refuse_utf16(raw, name)
    if offset == 0 and raw.startswith(UTF8_BOM):
        raw, offset = raw[len(UTF8_BOM):], len(UTF8_BOM)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{name}: not UTF-8 text (byte 0x{raw[e.start]:02X} at offset {offset + e.start}: "
                         "saved as GBK or another legacy encoding?); save it as UTF-8") from None


def same_file(a, b) -> bool:
    """True if the paths name one file, however spelled (relative, ``..``, through
    symlinks or hard links, another case on a case-insensitive disk)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # NOTE: one does not exist (yet): compare where the names lead
        return os.path.realpath(a) == os.path.realpath(b)


def temp_beside(path, error: ErrorHook | None = None) -> tuple[int, str]:
    """``(fd, name)`` of a new hidden file ``.<name>.XXXX.part`` in the folder of ``path``
    (created 0600 with O_EXCL by ``tempfile.mkstemp``), to be renamed onto ``path`` once
    complete; making it proves up front that the folder accepts a new file.

    An OSError making it is raised as ``error(e)``; by default an OSError naming ``path``
    that says to choose a folder that exists and that you may write to."""
    path = Path(path)
    try:
        return tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    except OSError as e:
        raise (error or _cannot_write(path))(e) from None


def _cannot_write(path: Path) -> ErrorHook:
    """The default :data:`ErrorHook`: an OSError naming ``path`` that says what to do."""
    return lambda e: OSError(e.errno, f"cannot write {path} ({e.strerror}); choose a folder "
                             "that exists and that you may write to", str(path))


class OutputRefused(OSError, ValueError):
    """An output path Wuma will not write: one of the data folder's own files
    (:func:`protect`, :func:`protect_owned`), a folder, a socket. Raised before anything
    is written by :func:`private_output`; :meth:`NewFile.replace` raises it when the file is
    to be named (after it was written, never over the path). Its message names the path and
    says what to do, and is the whole of ``str(e)``.

    NOTE: an OSError (``errno``, ``filename``) so that code handling a failed write handles
    it, and a ValueError (like ``io.UnsupportedOperation``) so that it reads as the bad
    value it is: the CLI shows a ValueError's message as it is."""

    def __str__(self) -> str:
        return self.strerror


#: The real paths (symlinks resolved) of the data folders' own files and folders, and how
#: many open folders protect each: see :func:`protect`. The tuple is replaced, never
#: changed, so a check reads it without the lock.
_protected: tuple[str, ...] = ()
_protect_count: dict[str, int] = {}
_protect_lock = threading.Lock()


def protect(paths) -> tuple[str, ...]:
    """Refuse, from now on in this process, any output (:func:`private_output`,
    :meth:`NewFile.replace`) whose path resolves to one of ``paths`` or to anything under
    one of them, and say it belongs to the data folder: the data folder calls it when it
    opens, with its own files and folders (an export written over a master key loses the
    key for good; over ``wuma.json`` or ``db/``, the folder no longer opens).

    ``paths``: an iterable of paths, which need not exist yet; each is resolved now
    (symlinks followed, a relative path from the current folder) and returned so resolved:
    give those to :func:`unprotect` (the current folder may have changed since). Calls add
    up, and each is undone by one :func:`unprotect` of the same paths.

    PERF: with nothing protected an output pays one test of an empty tuple."""
    real = _real_paths(paths)
    global _protected
    with _protect_lock:
        for p in real:
            _protect_count[p] = _protect_count.get(p, 0) + 1
        _protected = tuple(_protect_count)
    return tuple(real)


def unprotect(paths) -> None:
    """Undo one :func:`protect` of ``paths`` (the data folder, when it closes)."""
    real = _real_paths(paths)
    global _protected
    with _protect_lock:
        for p in real:
            n = _protect_count.get(p, 0) - 1
            if n > 0:
                _protect_count[p] = n
            else:
                _protect_count.pop(p, None)
        _protected = tuple(_protect_count)


def _real_paths(paths) -> list[str]:
    if isinstance(paths, (str, bytes, os.PathLike)):
        raise TypeError("paths must be a list of paths, not one path")
    return [os.path.realpath(os.fspath(p)) for p in paths]


def refuse_protected(path) -> None:
    """:class:`OutputRefused` if ``path`` resolves (symlinks followed, a relative path from
    the current folder) to a file or folder given to :func:`protect`, or to anything under
    such a folder: the check every output here makes, for a caller to make up front,
    before its work (a load, a download) rather than when its file is named."""
    if not _protected and not _owners:
        return
    real = os.path.realpath(os.fspath(path))
    where = next((f"it is {p}" if real == p else f"it is in {p}" for p in _protected
                  if real == p or real.startswith(p.rstrip(os.sep) + os.sep)), None)
    if where is None:
        where = next((w for w in map(lambda owner: owner(real), _owners) if w is not None), None)
    if where is not None:
        raise OutputRefused(errno.EPERM, f"{path} belongs to the data folder ({where}): "
                            "writing there would break the folder; write the export elsewhere",
                            str(path))


#: Functions ``owner(real path) -> "it is in ..." | None`` that say a path on disk belongs
#: to something no output may touch, whether this process opened it or not: see
#: :func:`protect_owned`.
_owners: list = []


def protect_owned(owner) -> None:
    """Refuse every output whose real path ``owner(path)`` claims (returns where it is, as
    "it is in FOLDER"), in this process from now on. The data folder registers one that
    knows its layout on disk: ``pack open`` never opens a data folder, and its ``-o`` wrote
    plaintext codes over a master key."""
    if owner not in _owners:
        _owners.append(owner)


#: A link to an open file of a process (``/dev/stdout`` leads to ``/proc/self/fd/1``):
#: the process id (empty for ``/dev/fd``: always this process) and the file descriptor.
_FD_LINK = re.compile(r"/proc/(\d+)(?:/task/\d+)?/fd/(\d+)|/dev/fd/()(\d+)")


def _own_fd(path) -> int | None:
    """The file descriptor of this process that ``path`` leads to through symlinks
    (``/dev/stdout``, ``/dev/fd/2``, ``/proc/self/fd/1``, a link to one), else None."""
    p = os.path.abspath(path)
    for _ in range(40):  # NOTE: the kernel's own limit on a chain of symlinks
        parent = os.path.realpath(os.path.dirname(p))  # NOTE: /dev/fd is a link to /proc/self/fd
        p = os.path.join(parent, os.path.basename(p))
        m = _FD_LINK.fullmatch(p)
        if m:
            pid, fd = (m[1], m[2]) if m[2] is not None else (m[3], m[4])
            return int(fd) if not pid or int(pid) == os.getpid() else None
        if not os.path.islink(p):
            return None
        p = os.path.join(parent, os.readlink(p))
    return None


def _refuse_closed_fd(path) -> None:
    """:class:`OutputRefused` if ``path``, which leads nowhere, is a symlink to a file
    descriptor of this process that is not open (``-o /dev/stdout`` with standard output
    closed): renamed over, the link (``/dev/stdout`` itself, as root) would become a file."""
    if os.path.islink(path) and (fd := _own_fd(path)) is not None:
        raise OutputRefused(errno.EBADF, f"{path} leads to file descriptor {fd}, which is not "
                            "open: give the name of a file to write", str(path))


def open_stream(path: Path, error: ErrorHook) -> int | None:
    """The checks :func:`private_output` makes on an existing ``path`` before anything is
    written; a file descriptor to write into if ``path`` is a stream (a device, a FIFO,
    one of this process's open files such as ``/dev/stdout``), None for a file to replace.
    :class:`OutputRefused` for a folder or a socket."""
    try:
        st = os.stat(path)
    except OSError:
        _refuse_closed_fd(path)
        return None  # NOTE: a new file (or a dangling symlink): the usual errors name it
    if stat.S_ISREG(st.st_mode) and not os.path.islink(path):
        return None
    fd = _own_fd(path)
    if fd is not None:
        # NOTE: as `-o -` writes to standard output: shared with the shell, at its offset
        # (reopened, a file redirected with >> would be written from its start), and it
        # works for a socket or a pipe that /proc cannot reopen
        return os.dup(fd)
    if stat.S_ISDIR(st.st_mode):
        raise OutputRefused(errno.EISDIR, f"{path} is a folder: give the name of a file to write",
                            str(path))
    if stat.S_ISSOCK(st.st_mode):
        raise OutputRefused(errno.EOPNOTSUPP, f"{path} is a socket, which cannot be opened as a "
                            "file: write to standard output (-o -) and pipe that into it",
                            str(path))
    if stat.S_ISREG(st.st_mode):
        # NOTE: a symlink to a file: the link is replaced by the new file, the file it led
        # to is left as it was (no export is lost; a link planted in a shared folder cannot
        # send the rename over another file of the user's)
        return None
    try:
        # NOTE: a FIFO waits for its reader, as the shell's > does
        fd = os.open(path, os.O_WRONLY | os.O_NOCTTY)
    except OSError as e:
        raise error(e) from None
    if stat.S_ISREG(os.fstat(fd).st_mode):  # NOTE: replaced by a file since os.stat
        os.close(fd)
        return None
    return fd


@contextmanager
def private_output(path, mode: str = "wb", *, perms: int = 0o600,
                   error: ErrorHook | None = None, fsync: bool = True, **open_args):
    """``with private_output(path) as fh:`` a file object whose contents appear at
    ``path`` only once the block ends without an error.

    It is written to a :class:`NewFile` for ``path`` (mode ``perms``, 0600 by default:
    exports of codes, rewards and events are for their owner only), fsynced (unless
    ``fsync`` is false), then renamed over ``path``; on any error, Ctrl-C included,
    nothing is left and ``path`` is as it was. APPSEC: the file has no name until then
    (where the file system has unnamed files): a process killed while writing plaintext
    codes leaves no copy of them behind. An OSError creating it names ``path`` (or is
    ``error(e)``); so does a full disk, a quota or a file-size limit while it is written
    (they came without a file name: "No space left on device"). A symlink ``path`` to a
    file is replaced by the new file; the file it led to is left as it was.

    A ``path`` that exists and is not a file once symlinks are followed is written
    straight into, as ``-o -`` writes to standard output, and never replaced: a FIFO
    (that a print system reads; it waits for a reader), a character or block device
    (``/dev/null``), one of this process's open files (``/dev/stdout``, ``/dev/fd/2``).
    APPSEC: renamed over, ``-o /dev/null`` run as root replaced the system's
    ``/dev/null`` with a file of plaintext codes. The all-or-nothing promise cannot hold
    for a stream: what was written before an error stays written, and ``perms`` and
    ``fsync`` do not apply.

    :class:`OutputRefused`, before anything is written, for a ``path`` that belongs to the
    data folder (:func:`protect`), a folder or a socket."""
    path = Path(path)
    try:
        out = open_output(path, perms, error=error)
        if isinstance(out, NewFile):
            with out as new:
                with open(new.fd, mode, closefd=False, **open_args) as fh:
                    yield fh
                if fsync:
                    new.sync()
                new.replace()
            return
    except OSError as e:
        if e.filename is None and e.errno in _FULL:
            raise OSError(e.errno, e.strerror, str(path)) from None
        raise
    try:
        with open(out, mode, **open_args) as fh:
            yield fh
    except OSError as e:  # NOTE: a reader gone (EPIPE), a device full: name the output
        if e.filename is None and (e.errno in _FULL or e.errno == errno.EPIPE):
            raise OSError(e.errno, e.strerror, str(path)) from None
        raise


def open_output(path, perms: int = 0o600, *, error: ErrorHook | None = None,
                new_at=None) -> int | NewFile:
    """What :func:`private_output` opens, for a caller that writes later or keeps the file
    open across its own steps (a load's reject file): a file descriptor to write straight
    into if ``path`` is a stream (:func:`open_stream`), else a :class:`NewFile` for ``path``
    (or for ``new_at``: the real path of a symlink, to write through it, not over it) of
    mode ``perms``, to be named once complete. Checked first as :func:`private_output`
    checks: :class:`OutputRefused` for a ``path`` of the data folder, a folder or a socket;
    an OSError opening it names ``path`` (or is ``error(e)``)."""
    path = Path(path)
    refuse_protected(path)
    fail = error or _cannot_write(path)
    fd = open_stream(path, fail)
    if fd is not None:
        return fd
    return NewFile(path if new_at is None else new_at, perms, error=fail)


#: errno of a write refused for room: a full disk, a quota, a file-size limit.
_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


#: First characters that make Excel, WPS, LibreOffice or Google Sheets read a cell as a
#: formula (OWASP, "CSV Injection"): ``=HYPERLINK(...)``, ``+cmd|' /C calc'!A0``, ``@SUM(1)``.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
#: Prefixed to such a cell (and to a cell that starts with it, so the escape is undone
#: by removing one leading quote from any text cell that starts with one).
_ESCAPE = "'"


def spreadsheet_cell(value: object) -> str | int | float:
    """``value`` as a CSV cell that a spreadsheet shows as text and never evaluates
    (CWE-1236).

    ``None`` is an empty cell. An ``int`` or a finite ``float`` is returned unchanged and
    written as a number, negative ones included. Anything else is written as text
    (``str(value)``): text that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage
    return, or with ``'``, gets one ``'`` in front. The original text is the cell without
    that first ``'``; a cell starting with ``-`` is always a number."""
    if value is None:
        return ""
    if (isinstance(value, int) and not isinstance(value, bool)
            or isinstance(value, float) and math.isfinite(value)):
        return value
    text = str(value)
    if text.startswith(_FORMULA_START) or text.startswith(_ESCAPE):
        return _ESCAPE + text
    return text


class SpreadsheetWriter(csv.DictWriter):
    """A :class:`csv.DictWriter` for a CSV file that people open in a spreadsheet.

    APPSEC: every cell goes through :func:`spreadsheet_cell`, so values from outside
    (a consumer's id from the scan API, names) never become live formulas. Lines end in
    CRLF (RFC 4180, as Excel writes them), so a cell holding a carriage return or a line
    feed is always quoted: CPython before 3.11.9 / 3.12.3 leaves a bare CR unquoted
    under ``lineterminator="\\n"``, which would end the row in the reader and start a
    new one, escape or not (gh-67044). Open ``f`` with ``newline=""``."""

    def __init__(self, f, fieldnames) -> None:
        super().__init__(f, fieldnames, lineterminator="\r\n")

    def writerow(self, rowdict):
        return super().writerow({k: spreadsheet_cell(v) for k, v in rowdict.items()})

    def writerows(self, rowdicts):
        for row in rowdicts:
            self.writerow(row)


class NewFile:
    """A new file for ``path`` that has no name yet, until it is whole: an unnamed file in
    the folder of ``path`` (:func:`open_unnamed`: it vanishes with the process) where the
    file system has such files and ``unnamed`` is true, else a hidden temporary file beside
    ``path`` (:func:`temp_beside`, which :meth:`close` removes unless it became ``path``).
    Its mode is ``perms`` exactly (the umask does not apply). An OSError making it is
    raised as ``error(e)``, by default as it is.

    ``with NewFile(path) as f: f.write(data); f.sync(); f.link()``: a file that appears
    whole under its name or not at all, whenever the process is killed. (Written in
    place, a kill between creating a file and writing it left an empty file under the
    real name: a master key then read as damaged.)"""

    def __init__(self, path, perms: int = 0o600, *, unnamed: bool = True,
                 error: ErrorHook | None = None) -> None:
        self.path = Path(path)
        self.tmp: Path | None = None
        fail = error or (lambda e: e)
        try:
            fd = open_unnamed(self.path.parent, perms) if unnamed else None
        except OSError as e:
            raise fail(e) from None
        if fd is None:
            fd, name = temp_beside(self.path, fail)
            self.tmp = Path(name)
        self.fd: int | None = fd
        try:
            os.fchmod(fd, perms)
        except OSError as e:
            self.close()
            raise fail(e) from None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def write(self, data) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]

    def sync(self) -> None:
        """Put the contents on disk (before the file is named: after a power loss a named
        file is whole)."""
        os.fsync(self.fd)

    def park(self) -> None:
        """Close the descriptor of a file with a temporary name (many files at once: fewer
        open files); :meth:`append` reopens it. An unnamed file stays open: closing it
        would lose it."""
        if self.tmp is not None and self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def append(self, data) -> None:
        """Write ``data`` at the end (a parked file is opened again)."""
        if self.fd is None:
            self.fd = os.open(self.tmp, os.O_WRONLY | os.O_APPEND)
        else:
            os.lseek(self.fd, 0, os.SEEK_END)
        self.write(data)

    def link(self, path=None) -> None:
        """Name the file ``path`` (by default the one it was made for); FileExistsError if
        that name is taken: a link never replaces a file (:func:`link_new`)."""
        path = self.path if path is None else Path(path)
        if self.tmp is None:
            link_unnamed(self.fd, path)
        else:
            link_new(self.tmp, path)

    def replace(self, path=None) -> None:
        """Name the file ``path``, over a file of that name in one rename: ``path`` is
        never missing. :class:`OutputRefused` if ``path`` belongs to the data folder
        (:func:`protect`) or is not a file once symlinks are followed (a folder, a device,
        a FIFO, a socket: renamed over, ``/dev/null`` would become a file)."""
        path = self.path if path is None else Path(path)
        _refuse_replacing(path)
        if self.tmp is not None:
            os.replace(self.tmp, path)
            return
        # NOTE: an unnamed file cannot be renamed: it gets a hidden name for the moment of
        # the rename (a kill just then leaves it; nothing else does)
        side = path.parent / f".{path.name}.{os.urandom(6).hex()}.part"
        link_unnamed(self.fd, side)
        try:
            os.replace(side, path)
        finally:
            side.unlink(missing_ok=True)

    def close(self) -> None:
        """Close it; a temporary name it still has is removed (a file named by
        :meth:`link` keeps that name)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.tmp is not None:
            self.tmp.unlink(missing_ok=True)  # NOTE: gone if renamed (no hard links)


def _refuse_replacing(path: Path) -> None:
    """:class:`OutputRefused` unless a rename may put a new file at ``path``."""
    refuse_protected(path)
    try:
        mode = os.stat(path).st_mode
    except OSError:
        _refuse_closed_fd(path)
        return  # NOTE: no file there (or a dangling symlink): the rename names the error
    if not stat.S_ISREG(mode) or os.path.islink(path) and _own_fd(path) is not None:
        kind = ("a link to an open file descriptor (as /dev/stdout is)" if stat.S_ISREG(mode)
                else "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode)
                else "a socket" if stat.S_ISSOCK(mode) else "a device")
        raise OutputRefused(errno.EPERM, f"{path} is {kind}, which is never replaced: give the "
                            "name of a file to write", str(path))


def write_new_file(path, data: bytes, *, perms: int = 0o600) -> None:
    """Create ``path`` holding ``data``: whole or not at all, even if the process is killed
    at any moment, and never over an existing file (FileExistsError). Written and fsynced
    as a :class:`NewFile`, linked to ``path``, then the folder fsynced."""
    with NewFile(path, perms) as f:
        f.write(data)
        f.sync()
        f.link()
    sync_folder(Path(path).parent)


def fsync_path(path, flags: int = 0) -> None:
    """Put a file (or, with ``os.O_DIRECTORY``, a folder's entries) on disk."""
    fd = os.open(path, os.O_RDONLY | flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_folder(folder) -> None:
    """Put the folder's entries (names made, renamed, removed) on disk."""
    fsync_path(folder, os.O_DIRECTORY)


#: errno of a ``link()`` refused by a file system without hard links (vfat, exFAT, some
#: network and FUSE mounts: a USB stick taking a line's packs or keys).
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EMLINK})


def link_new(tmp, path) -> None:
    """Give the file ``tmp`` the name ``path``; FileExistsError if ``path`` exists (unlike
    rename, a link never replaces a file). ``tmp`` stays a second name of the file: the
    caller removes it. On a file system without hard links ``tmp`` is renamed instead,
    after a check that ``path`` is not there (not atomic, still careful)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError as e:
        if e.errno not in _NO_HARD_LINKS:
            raise
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path)) from None
        os.rename(tmp, path)


def open_unnamed(folder, perms: int = 0o600) -> int | None:
    """A file descriptor, open for writing, of a new file in ``folder`` that has no name
    yet (``O_TMPFILE``): it vanishes with the process unless :func:`link_unnamed` names
    it. None where the system or the file system has no such files."""
    if not hasattr(os, "O_TMPFILE") or not os.path.isdir("/proc/self/fd"):
        return None
    try:
        return os.open(folder, os.O_TMPFILE | os.O_WRONLY, perms)
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            return None
        raise


def link_unnamed(fd: int, path) -> None:
    """Give the unnamed file open as ``fd`` (:func:`open_unnamed`) the name ``path``;
    FileExistsError if the name is taken (a link never replaces a file)."""
    path = Path(path)
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        # NOTE: given a dir fd, os.link is linkat(AT_SYMLINK_FOLLOW): it links the file
        # behind /proc/self/fd/N, not that symlink (plain link() would)
        os.link(f"/proc/self/fd/{fd}", path.name, dst_dir_fd=folder)
    finally:
        os.close(folder)
