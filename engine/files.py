"""Output files that appear whole or not at all, readable by their owner only."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

__all__ = ["private_output", "same_file", "temp_beside"]

#: Turns the OSError of making a temporary file into the error to raise.
ErrorHook = Callable[[OSError], BaseException]


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
        if error is not None:
            raise error(e) from None
        raise OSError(e.errno, f"cannot write {path} ({e.strerror}); choose a folder that "
                      "exists and that you may write to", str(path)) from None


@contextmanager
def private_output(path, mode: str = "wb", *, perms: int = 0o600,
                   error: ErrorHook | None = None, fsync: bool = True, **open_args):
    """``with private_output(path) as fh:`` a file object whose contents appear at
    ``path`` only once the block ends without an error.

    It is written to a temporary file beside ``path`` (:func:`temp_beside`; mode
    ``perms``, 0600 by default: exports of codes, rewards and events are for their owner
    only), fsynced (unless ``fsync`` is false), then renamed over ``path``; on any error,
    Ctrl-C included, the temporary file is removed and ``path`` is left as it was. An
    OSError creating it names ``path`` (or is ``error(e)``, see :func:`temp_beside`)."""
    path = Path(path)
    fd, tmp = temp_beside(path, error)
    try:
        with os.fdopen(fd, mode, **open_args) as fh:
            os.fchmod(fh.fileno(), perms)
            yield fh
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
