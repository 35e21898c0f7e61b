"""Output files that appear whole or not at all, readable by their owner only."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

__all__ = ["private_output"]


@contextmanager
def private_output(path, mode: str = "wb", **open_args):
    """``with private_output(path) as fh:`` a file object whose contents appear at
    ``path`` only once the block ends without an error.

    It is written to a temporary file beside ``path`` (created 0600 with O_EXCL by
    ``tempfile.mkstemp``: exports of codes, rewards and events are for their owner only),
    fsynced, then renamed over ``path``; on any error, Ctrl-C included, the temporary file
    is removed and ``path`` is left as it was. An OSError creating it names ``path``."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    except OSError as e:
        raise OSError(e.errno, f"cannot write {path} ({e.strerror}); choose a folder that "
                      "exists and that you may write to", str(path)) from None
    try:
        with os.fdopen(fd, mode, **open_args) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
