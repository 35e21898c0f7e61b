"""Pull packs over HTTP: a Falcon app at the brand, and the line controller's client.

Routes (every request signed by a registered, unrevoked line)::

    GET /packs            the packs issued to the calling line (JSON) that its export put
                          in place; those not in place (an export running or cut off), of
                          a failed export, revoked, with codes voided since the export or
                          signed by a brand key revoked since are left out of ``packs``
                          and are in ``withheld`` ({"id", "file", "reason"}) so that a
                          line holding a copy sets it aside
    GET /packs/{id}       the pack file; once the last byte is handed to the connection the
                          download is recorded (who, which, when, from where), a download
                          cut off before as ``download_cut`` with the bytes sent;
                          410 ``export_failed``, ``pack_revoked``, ``codes_voided`` or
                          ``signer_revoked``, 404 ``pack_not_placed``, for a pack withheld

Signed request headers::

    X-Wuma-Line        the line's key fingerprint (see engine.lines.line_fingerprint)
    X-Wuma-Timestamp   integer Unix seconds
    X-Wuma-Nonce       32 hex characters, fresh per request
    X-Wuma-Signature   base64 Ed25519 over  "wuma/pull/v1\\n" METHOD "\\n" PATH "\\n" TS "\\n" NONCE

APPSEC: requests outside a +-5 minute window are refused, and a (timestamp, nonce) is
accepted once: nonces are kept in LMDB (``pull_nonces``) for the window, so a replay is
refused across workers and restarts. All auth failures answer the same 401
``unauthorized`` (no oracle), except a revoked line, which gets 403 ``line_revoked`` and
nothing else.

Run it with ``wuma pack serve``, or as it does: ``WUMA_DATA=./wuma-data
WUMA_BIND=127.0.0.1:8081 gunicorn -c python:engine.gunicorn_conf
'engine.http_packs:app_from_env()'``. NOTE: gunicorn's own default, one sync worker with a
30 s timeout, cut every download that took longer (the worker killed as hung) and made
every other line wait for the one being served; gevent workers (the config's) serve every
connection at once, and their heartbeat does not wait for a download.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import re
import struct
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from pathlib import Path

import falcon
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from engine import http_errors
from engine.data import DataFolder
from engine.errors import NotFound, WumaError
from engine.files import NewFile, sync_folder
from engine.ids import is_digits
from engine.lines import LineKeys
from engine.packs import _PACK_ID, CLOCK_SKEW, ListedPack, PackRegistry, export_unfinished, read_header

__all__ = [
    "REPLAY_WINDOW",
    "PackWithheld",
    "PullError",
    "PullIncomplete",
    "Pulled",
    "Withheld",
    "app_from_env",
    "check_pack",
    "create_app",
    "pull_packs",
    "server_base",
    "sign_request",
]

REPLAY_WINDOW = CLOCK_SKEW
#: A request's nonce: written as a pack id is (fullmatch: `$` matches before a final newline).
_NONCE = _PACK_ID


def _message(method: str, path: str, ts: str, nonce: str) -> bytes:
    return f"wuma/pull/v1\n{method.upper()}\n{path}\n{ts}\n{nonce}".encode()


def sign_request(
    keys: LineKeys, method: str, path: str, *, now: float | None = None, nonce: str | None = None
) -> dict[str, str]:
    """The auth headers for one request by a line."""
    ts = str(int(time.time() if now is None else now))
    nonce = nonce or os.urandom(16).hex()
    sig = keys.ed25519.sign(_message(method, path, ts, nonce))
    return {
        "X-Wuma-Line": keys.fingerprint,
        "X-Wuma-Timestamp": ts,
        "X-Wuma-Nonce": nonce,
        "X-Wuma-Signature": base64.b64encode(sig).decode(),
    }


class _LineAuth:
    """Middleware: authenticate the line behind every request; ``req.context.line``."""

    def __init__(
        self, data: DataFolder, registry: PackRegistry, clock: Callable[[], float]
    ) -> None:
        self._store = data.store
        self._lines = registry.lines
        self._nonces = data.store.db("pull_nonces")
        self._clock = clock

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        denied = falcon.HTTPUnauthorized(
            title="unauthorized", description="sign the request with a registered line key"
        )
        fp = req.get_header("X-Wuma-Line") or ""
        ts = req.get_header("X-Wuma-Timestamp") or ""
        nonce = req.get_header("X-Wuma-Nonce") or ""
        sig_text = req.get_header("X-Wuma-Signature") or ""
        if not is_digits(ts) or not _NONCE.fullmatch(nonce) or len(ts) > 12:
            raise denied
        now = self._clock()
        if abs(now - int(ts)) > REPLAY_WINDOW:
            raise denied
        line = self._lines.by_fingerprint(fp)
        if line is None:
            raise denied
        path = req.path + (f"?{req.query_string}" if req.query_string else "")
        try:
            sig = base64.b64decode(sig_text, validate=True)
            Ed25519PublicKey.from_public_bytes(line.ed25519).verify(
                sig, _message(req.method, path, ts, nonce)
            )
        except (ValueError, InvalidSignature):
            raise denied from None
        if line.revoked:
            raise falcon.HTTPForbidden(
                title="line_revoked", description=f"line {line.name} is revoked"
            )
        key = (
            struct.pack(">Q", int(ts))
            + bytes.fromhex(fp[:16].ljust(16, "0"))
            + bytes.fromhex(nonce)
        )
        with self._store.write() as txn:
            if txn.get(key, db=self._nonces) is not None:
                raise denied  # APPSEC: replay
            txn.put(key, b"", db=self._nonces)
            # Forget nonces older than the window: their timestamps are refused anyway.
            cur = txn.cursor(db=self._nonces)
            horizon = struct.pack(">Q", max(0, int(now) - REPLAY_WINDOW - 1))
            while cur.first() and cur.key() < horizon:
                cur.delete()
        req.context.line = line


def _public(rec: dict) -> dict:
    return {
        k: rec[k]
        for k in (
            "id",
            "file",
            "batch",
            "start",
            "stop",
            "count",
            "size",
            "signed_sha256",
            "split",
            "created",
        )
    } | ({"file_sha256": rec["file_sha256"]} if "file_sha256" in rec else {})


class _PackList:
    def __init__(self, registry: PackRegistry) -> None:
        self._registry = registry

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        line = req.context.line
        packs, withheld = [], []
        for p in self._registry.list(line=line.name, events=False):  # NOTE: no history needed
            if export_unfinished(p):
                continue  # NOTE: not issued yet (an export running): a line's copy is no copy to set aside
            why = p["withheld_reason"]  # NOTE: revoked, codes voided, or its signer revoked
            if why is None:
                packs.append(_public(p))
            else:  # NOTE: an extra key: an older client reads ``packs`` only
                withheld.append({"id": p["id"], "file": p["file"], "reason": why})
        resp.media = {"line": line.name, "packs": packs, "withheld": withheld}


def _refusal(rec: dict) -> falcon.HTTPError | None:
    """The answer to a line asking for its pack ``rec`` (as the registry annotates it) that
    is not served, or None: its first cause (its ``withheld_causes``, which
    :func:`~engine.packs.withheld_causes` words), 404 for a pack not in place, 410 for the
    others."""
    causes = rec["withheld_causes"]
    if not causes:
        return None
    code, why = causes[0]
    error = falcon.HTTPNotFound if code == "pack_not_placed" else falcon.HTTPGone
    return error(title=code,
                 description=f"pack {rec['id']} is withheld: {why}: it must not be printed")


class _PackFile:
    def __init__(self, registry: PackRegistry) -> None:
        self._registry = registry

    def on_get(self, req: falcon.Request, resp: falcon.Response, pack_id: str) -> None:
        line = req.context.line
        if not _PACK_ID.fullmatch(pack_id):
            raise falcon.HTTPNotFound()
        try:
            rec = self._registry.get(pack_id)
        except NotFound:
            raise falcon.HTTPNotFound() from None
        if rec["line"] != line.name:  # NOTE: same answer as a missing pack
            raise falcon.HTTPNotFound()
        refusal = _refusal(rec)
        if refusal is not None:
            raise refusal
        try:
            fh = open(rec["path"], "rb")  # noqa: SIM115 - the body closes it
        except OSError:
            raise falcon.HTTPNotFound(title="pack_file_missing", description=f"the file of pack "
                                      f"{pack_id} is no longer on the server") from None
        remote = req.remote_addr or ""
        body = _Body(fh, lambda sent: self._registry.record_download(pack_id, line.name, remote,
                                                                      sent=sent))
        resp.content_type = "application/octet-stream"
        resp.downloadable_as = rec["file"]
        resp.set_stream(body, body.size)


class _Body:
    """A pack file as a WSGI response body that knows how much of it went out: the server
    asks for the next piece once it has written the last one, and closes the body when the
    response ends (all sent, the client gone, a graceful stop's time up). On close,
    ``done(bytes sent)`` is called once: the download is recorded then, whole or cut off,
    not before a byte is sent. A worker killed outright records nothing. "Sent" is handed
    to the connection: a client that drops the last bytes still in the socket buffers, or
    a proxy that buffers the whole pack, counts as whole (the line's own SHA-256 check
    refuses a pack it did not get whole).

    PERF: read and written 256 KiB at a time (a slow line holds one piece: with 1 MiB
    pieces 60 slow lines took a worker from 71 to 134 MB, a review's run), not by sendfile (gunicorn's for a file body):
    after sendfile nothing says how much went out. Measured with 1 MiB pieces (one gevent
    worker, loopback, a 153 MiB pack pulled 3 times): 606-674 MiB/s, by sendfile 600-645:
    the line's own SHA-256 of what it receives bounds both (256 KiB pieces not measured)."""

    def __init__(self, fh, done: Callable[[int], None]) -> None:
        self._fh, self._done = fh, done
        self.size = os.fstat(fh.fileno()).st_size
        self._sent = self._pending = 0
        self._closed = False

    def __iter__(self):
        return self

    def __next__(self) -> bytes:
        self._sent += self._pending  # NOTE: asked again: the piece before is written
        piece = self._fh.read(min(_SERVE_PIECE, self.size - self._sent))
        self._pending = len(piece)
        if not piece:
            raise StopIteration
        return piece

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._fh.close()
        self._done(self._sent)


def create_app(data_path: Path, *, clock: Callable[[], float] = time.time) -> falcon.App:
    """The pull app for one data folder."""
    data = DataFolder(Path(data_path))
    registry = PackRegistry(data)
    app = falcon.App(middleware=[_LineAuth(data, registry, clock)])
    app.add_route("/packs", _PackList(registry))
    app.add_route("/packs/{pack_id}", _PackFile(registry))
    http_errors.install(app)  # NOTE: errors in the API's shape; a trace only in the log
    return app


def app_from_env() -> falcon.App:
    """``create_app($WUMA_DATA)``, for gunicorn."""
    from engine.data import default_data_path

    return create_app(default_data_path())


# -- the line controller's side -----------------------------------------------------------
class PullError(WumaError):
    """The server refused or could not be reached."""


def _not_authenticated_hint(keys: LineKeys, server_date: str | None, now: float) -> str:
    """What the line's operator can check after a 401.

    APPSEC: the server's answer stays the same opaque 401 (no oracle); this hint is made
    on the client from what it already knows: its own key, its clock, and the standard
    ``Date`` header of the reply."""
    skew = None
    try:
        if server_date:
            at = parsedate_to_datetime(server_date)
            if at.tzinfo is None:  # "-0000": UTC, source unknown
                at = at.replace(tzinfo=UTC)
            skew = now - at.timestamp()
    except (TypeError, ValueError, IndexError):
        pass
    if skew is not None and abs(skew) > REPLAY_WINDOW - 5:
        way = "ahead of" if skew > 0 else "behind"
        return (
            f"this machine's clock is about {abs(skew):.0f} s {way} the server's (at most "
            f"{REPLAY_WINDOW} s is allowed): set the clock right (e.g. enable NTP) and retry"
        )
    return (
        f"check that the brand registered this line's key (fingerprint {keys.fingerprint}) "
        "with `wuma line add NAME --pubkey line.pub`, and that this machine's clock is "
        f"within {REPLAY_WINDOW} s of the server's"
    )


def _get(keys: LineKeys, server: str, path: str, timeout: float, clock: Callable[[], float],
         again: str = "pull again"):
    """A signed GET; :class:`PullError` for a refusal or no answer (``again``: what to do
    then)."""
    now = clock()
    req = urllib.request.Request(
        server.rstrip("/") + path, headers=sign_request(keys, "GET", path, now=now)
    )
    try:
        return urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        try:
            body = json.loads(e.read())
            detail = body.get("message") or body.get("title") or e.reason
        except (ValueError, AttributeError):
            detail = e.reason
        message = f"{server}{path}: {e.code} {detail}"
        if e.code == 401:
            message += "; " + _not_authenticated_hint(keys, e.headers.get("Date"), now)
        raise PullError(message) from None
    except urllib.error.URLError as e:
        raise PullError(f"cannot reach {server}: {e.reason}") from None
    except (http.client.HTTPException, OSError) as e:
        # NOTE: the connection dropped or timed out before the status line
        # (RemoteDisconnected, TimeoutError, ConnectionResetError)
        raise PullError(
            f"{server}{path}: no answer ({e.__class__.__name__}: {e}): {again}"
        ) from None


@dataclass(frozen=True)
class Withheld:
    """A local copy of a pack the server withholds (revoked, signed by a revoked brand key,
    or codes voided since its export), set aside: ``path`` was renamed ``renamed``. Its
    labels must not be printed."""

    id: str
    path: Path
    renamed: Path
    reason: str


class Pulled(list):
    """The paths of the packs saved (a list), and ``withheld``: the local copies of
    withheld packs set aside by this pull (:class:`Withheld`)."""

    def __init__(self, paths=(), withheld: list[Withheld] | None = None) -> None:
        super().__init__(paths)
        self.withheld = list(withheld or [])


class PullIncomplete(PullError):
    """Some packs could not be pulled; the others were. ``pulled``: the paths saved;
    ``failed``: ``(pack id, why)`` for each pack not saved (nothing of it is kept);
    ``stopped``: None, or why the pull stopped before the end (a local write error: it
    would fail for every pack), the packs after it not tried; ``withheld``: the local
    copies of withheld packs set aside (:class:`Withheld`)."""

    def __init__(
        self,
        pulled: list[Path],
        failed: list[tuple[str, str]],
        stopped: str | None = None,
        withheld: list[Withheld] | None = None,
    ) -> None:
        self.pulled = pulled
        self.failed = failed
        self.stopped = stopped
        self.withheld = list(withheld or [])
        parts = []
        if stopped is not None:
            parts.append(f"{stopped}; the pull stopped there ({len(pulled)} pack(s) saved)")
        if failed:
            why = "; ".join(f"pack {pid}: {reason}" for pid, reason in failed)
            parts.append(f"{len(failed)} pack(s) not pulled, nothing of them kept: {why}")
        super().__init__("; ".join(parts))


class _WriteFailed(Exception):
    """A local write error while saving a pack (disk full, file-size limit, no permission):
    it would fail for every pack, so the pull stops."""


_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_PACK_FILE = re.compile(r"[A-Za-z0-9._-]+\.wpk")  # NOTE: fullmatch, as _PACK_ID
_READ = 1 << 20
#: A pack is served in pieces of this many bytes (see _Body).
_SERVE_PIECE = 256 << 10
_SIG = 64  # NOTE: the Ed25519 signature that ends a pack (engine.packs)


class _Expect:
    """What the listing says a pack's file is: its size, the SHA-256 of every byte before
    its 64-byte signature, and (packs exported since it is listed) of the whole file."""

    def __init__(self, p: dict) -> None:
        size, signed, whole = p.get("size"), p.get("signed_sha256"), p.get("file_sha256")
        if (
            not isinstance(size, int)
            or isinstance(size, bool)
            or size <= _SIG
            or not isinstance(signed, str)
            or not _SHA256_HEX.fullmatch(signed)
            or (whole is not None and not (isinstance(whole, str) and _SHA256_HEX.fullmatch(whole)))
        ):
            raise PullError(f"server listed pack {p.get('id')!r} without a valid size and digest")
        self.size, self.signed, self.whole = size, signed, whole

    def hashers(self):
        """PERF: one SHA-256 pass: the signed digest; the whole-file one is a copy of it
        updated with the last 64 bytes (kept aside), as the export makes it."""
        return hashlib.sha256(), bytearray()

    def feed(self, hashers, at: int, chunk: bytes) -> None:
        """Hash ``chunk``, found at offset ``at`` of the file."""
        signed, tail = hashers
        cut = self.size - _SIG - at
        if cut >= len(chunk):
            signed.update(chunk)
        else:
            if cut > 0:
                signed.update(memoryview(chunk)[:cut])
            tail += memoryview(chunk)[max(cut, 0) :]

    def mismatch(self, hashers, got: int) -> str | None:
        """Why ``got`` bytes with these digests are not the listed file (None: they are)."""
        if got != self.size:
            return (
                f"received {got:,} bytes, not its {self.size:,} (cut off or damaged on the "
                "way): pull again"
            )
        signed, tail = hashers
        ok = signed.hexdigest() == self.signed
        if ok and self.whole is not None:
            whole = signed.copy()
            whole.update(tail)
            ok = whole.hexdigest() == self.whole
        if not ok:
            return (
                "its bytes do not match the SHA-256 listed for it (damaged on the way): pull again"
            )
        return None

    def matches_file(self, path: Path) -> bool:
        """Is the file at ``path`` the listed one? (False if it cannot be read.)"""
        try:
            return self.file_differs(path) is None
        except OSError:
            return False

    def file_differs(self, path: Path) -> str | None:
        """How the file at ``path`` differs from the listed one (None: it is that file);
        OSError if it cannot be read. PERF: the size first; the hash (at disk speed) only
        for a file of the right size."""
        size = path.stat().st_size
        if size != self.size:
            return f"it is {size:,} bytes, the listed pack {self.size:,}"
        hashers, at = self.hashers(), 0
        with open(path, "rb") as fh:
            while chunk := fh.read(_READ):
                self.feed(hashers, at, chunk)
                at += len(chunk)
        if self.mismatch(hashers, at) is not None:
            return "its SHA-256 is not the listed one"
        return None

    def listed(self, pack_id: str) -> ListedPack:
        return ListedPack(pack_id, self.signed, self.size, self.whole)


def _write_failed(target: Path, e: OSError) -> _WriteFailed:
    return _WriteFailed(f"cannot write {target}: {e.strerror or e}")


def _download(keys, server, p, expect: _Expect, target: Path, timeout, clock) -> str | None:
    """Download pack ``p`` to a new file beside ``target`` that has no name yet (O_TMPFILE:
    a killed pull leaves nothing; a hidden temporary name where the file system has no
    such files), check it against the listing, fsync it, and name it ``target``. Returns
    None, or why nothing was kept; :class:`_WriteFailed` for a local write error."""
    # NOTE: mode 0644: a pack is encrypted and signed
    with NewFile(target, 0o644, error=lambda e: _write_failed(target, e)) as f:
        hashers, got = expect.hashers(), 0
        with _get(keys, server, f"/packs/{p['id']}", timeout, clock) as r:
            while True:
                # NOTE: CPython's HTTP client returns a short body without an error when
                # the connection closes early: the size and digests decide, not the read
                try:
                    chunk = r.read(_READ)
                except (http.client.HTTPException, OSError) as e:
                    return f"the download was cut off ({e.__class__.__name__}): pull again"
                if not chunk:
                    break
                expect.feed(hashers, got, chunk)
                got += len(chunk)
                if got > expect.size:
                    break
                try:  # NOTE: a local error, not the network's: kept apart
                    f.write(chunk)
                except OSError as e:
                    raise _write_failed(target, e) from None
        why = expect.mismatch(hashers, got)
        if why is not None:
            return why
        try:
            f.sync()
            _place_checked(f, expect)
            sync_folder(target.parent)
        except OSError as e:
            raise _write_failed(target, e) from None
        return None


def _place_checked(f: NewFile, expect: _Expect) -> None:
    """Name the checked file ``f`` the pack's file. A file already there is kept if it is
    the listed one (another pull into this folder named it first), else the checked copy
    replaces it in one rename: the pack's file is never missing."""
    try:
        f.link()
        return
    except FileExistsError:
        if expect.matches_file(f.path):
            return
    f.replace()  # NOTE: a checked copy over a damaged one


def _printable(text: object, limit: int = 500) -> str:
    """The server's text, safe for a terminal (no control characters)."""
    return "".join(c if c.isprintable() else "?" for c in str(text))[:limit]


def _listed_name(entry: object, what: str) -> str:
    """The file name a listing's entry (``what``: a pack, a withheld pack) gives its pack;
    :class:`PullError` unless the entry is an object with a pack id and a pack file name
    (the pull would otherwise end in a KeyError or TypeError)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("id"), str) \
            or not isinstance(entry.get("file"), str):
        raise PullError(f"server sent a bad {what} entry {_printable(entry, 200)!r}: each is an "
                        "object with a text id and file: is this the brand's pack server?")
    name = Path(entry["file"]).name
    if not _PACK_FILE.fullmatch(name) or not _PACK_ID.fullmatch(entry["id"]):
        raise PullError(f"server sent a bad {what} file name {_printable(name, 200)!r}")
    return name


def _set_aside(listing: dict, out_dir: Path) -> tuple[list[Withheld], str | None]:
    """Rename the local copies in ``out_dir`` of the packs the listing withholds to
    ``<file>.withheld`` (``.withheld.2``, ... if taken: never over another file), in one
    rename each; nothing is deleted. Returns what was set aside, and None or why a copy
    could not be (a local error: the pull stops)."""
    entries = listing.get("withheld") or []  # NOTE: an older server sends none
    if not isinstance(entries, list):
        raise PullError("server sent a bad list of withheld packs")
    done: list[Withheld] = []
    for w in entries:
        if not isinstance(w, dict):
            raise PullError("server sent a bad list of withheld packs")
        name = _listed_name(w, "withheld pack")
        target = out_dir / name
        if not os.path.lexists(target):
            continue
        reason = _printable(w.get("reason") or "withheld by the server")
        n = 1
        while True:
            aside = out_dir / (f"{name}.withheld" if n == 1 else f"{name}.withheld.{n}")
            if not os.path.lexists(aside):
                break
            n += 1
        try:
            os.replace(target, aside)
        except FileNotFoundError:
            continue  # NOTE: another pull into this folder set it aside first
        except OSError as e:
            return done, (
                f"pack {w['id']} withheld: {reason}; its local copy {target} could not be "
                f"renamed ({e.strerror or e}): do not print it"
            )
        done.append(Withheld(w["id"], target, aside, reason))
    if done:
        try:
            sync_folder(out_dir)
        except OSError:
            pass  # NOTE: the renames are done; only their durability is in doubt
    return done, None


def server_base(server: str) -> str:
    """The pack server's address as requests are made to it (``https://host[:port][/path]``,
    no trailing ``/``), or :class:`PullError` saying what is wrong with it. A user name or
    password in it is refused, never echoed: lines authenticate by their key, and the
    address is written in every message."""
    try:
        parts = urllib.parse.urlsplit(server.strip() if isinstance(server, str) else "")
        port = parts.port  # NOTE: ValueError for a port that is no number or out of range
    except ValueError:
        parts, port = None, None
    if parts is None or parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise PullError("the pack server must be an address such as https://packs.example.cn "
                        "(http or https and a host name)")
    if parts.username is not None or parts.password is not None:
        raise PullError("the pack server's address holds a user name or password: remove it (lines "
                        "sign their requests with their key; the address appears in messages)")
    if parts.query or parts.fragment:
        raise PullError("the pack server's address must have no query (?) or fragment (#)")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme.lower()}://{host}{'' if port is None else f':{port}'}{parts.path.rstrip('/')}"


def _listing(keys: LineKeys, server: str, timeout: float, clock: Callable[[], float],
             again: str = "pull again") -> dict:
    """``GET /packs``: the packs issued to this line (``packs``) and those withheld."""
    try:
        with _get(keys, server, "/packs", timeout, clock, again) as r:
            listing = json.loads(r.read())
    except (http.client.HTTPException, OSError) as e:
        raise PullError(f"{server}/packs: the answer was cut off ({e.__class__.__name__}): try again") from None
    except ValueError:  # NOTE: UnicodeDecodeError is one
        raise PullError(f"{server}/packs: the answer is not JSON: is this the brand's pack server?") from None
    if not isinstance(listing, dict) or not isinstance(listing.get("packs"), list):
        raise PullError(f"{server}/packs: the answer is not a list of packs: is this the brand's pack server?")
    return listing


class PackWithheld(PullError):
    """The pack server does not vouch for this pack file on this line (withheld, not issued
    to it, or not the bytes issued under its id): its labels must not be printed."""


def check_pack(
    keys: LineKeys,
    server: str,
    pack_path: Path,
    *,
    timeout: float = 60.0,
    clock: Callable[[], float] = time.time,
) -> ListedPack:
    """Ask the brand's pack server whether the pack file at ``pack_path`` may be printed on
    this line, wherever the file came from (a copy kept outside the pull folder, a USB
    stick); returns the pack as listed (:class:`~engine.packs.ListedPack`: its id, size
    and SHA-256). :class:`PackWithheld` if the server withholds it (revoked, codes voided
    since its export, or signed by a brand key revoked since), does not list it for this
    line, or lists another size under its id; :class:`PullError` if it cannot say.

    APPSEC: this compares the file's size only, and vouches for nothing printable on its
    own. Open with ``engine.packs.open_pack(..., server=URL)``, which calls this and checks
    the bytes; or give what this returns to :func:`engine.packs.open_pack` as
    ``expect_id``: it refuses bytes other than the listed ones (a pack forged
    with a leaked, revoked brand key keeps a listed id) once the signature is checked,
    and decrypts the bytes it checked. PERF: that check reuses the SHA-256 the signature
    check makes; hashing the file here too read and hashed it once more (the file may
    change after this anyway)."""
    server = server_base(server)
    pack_path = Path(pack_path)
    pack_id = read_header(pack_path)[0]["pack"]
    listing = _listing(keys, server, timeout, clock, "try again")
    for w in listing.get("withheld") or ():  # NOTE: an older server sends none
        if isinstance(w, dict) and w.get("id") == pack_id:
            reason = _printable(w.get("reason") or "withheld by the server")
            raise PackWithheld(f"pack {pack_id} is withheld by {server}: {reason}; do not print it")
    listed = next((p for p in listing["packs"] if isinstance(p, dict) and p.get("id") == pack_id), None)
    if listed is None:
        raise PackWithheld(f"pack {pack_id} is not issued to this line ({server} does not list it): "
                           "do not print it")
    expect = _Expect(listed)  # NOTE: PullError for a listing without a size and SHA-256
    try:
        size = pack_path.stat().st_size
    except OSError as e:
        raise PullError(f"cannot read {pack_path}: {e.strerror or e}") from None
    if size != expect.size:  # NOTE: the bytes are checked as the pack is opened
        raise PackWithheld(
            f"{pack_path} is not the pack {server} issued as {pack_id} (it is {size:,} bytes, the "
            f"listed pack {expect.size:,}): it was altered, or forged with that pack's id; do not "
            "print it"
        )
    return expect.listed(pack_id)


def pull_packs(
    keys: LineKeys,
    server: str,
    out_dir: Path,
    *,
    timeout: float = 60.0,
    clock: Callable[[], float] = time.time,
) -> Pulled:
    """Download the packs issued to this line that are not yet in ``out_dir``.

    Each is checked against the listing (size, SHA-256) before it gets its name, in a
    temporary file of its own (two pulls into one folder do not meet). A pack file already
    there is skipped only if it is the listed one; else it is downloaded again and the
    checked copy replaces it. A pack that fails (cut off, damaged, voided or revoked
    meanwhile, no answer) leaves nothing; the others are still pulled, then
    :class:`PullIncomplete` is raised with both. A local write error (disk full, a file-size
    limit) stops the pull at once: :class:`PullIncomplete` with ``stopped`` and what was
    saved. A killed pull leaves no temporary file (where the file system has unnamed
    ones). An error of the listing (auth, the server) raises :class:`PullError` at once.

    First, local copies of the packs the server withholds (revoked, signed by a revoked
    brand key, or codes voided since the export; pulled before that) are renamed
    ``<file>.withheld``, never deleted: the result's ``withheld`` (:class:`Pulled`, or
    :class:`PullIncomplete`) lists them."""
    server = server_base(server)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    listing = _listing(keys, server, timeout, clock)
    withheld, stopped = _set_aside(listing, out_dir)
    if stopped is not None:
        raise PullIncomplete([], [], stopped=stopped, withheld=withheld)
    got: list[Path] = []
    failed: list[tuple[str, str]] = []
    for p in listing["packs"]:
        name = _listed_name(p, "pack")
        expect = _Expect(p)
        target = out_dir / name
        if os.path.lexists(target) and expect.matches_file(target):
            continue
        try:
            why = _download(keys, server, p, expect, target, timeout, clock)
        except PullError as e:  # NOTE: this pack's request: 410 voided or revoked since, ...
            why = str(e)
        except _WriteFailed as e:  # NOTE: it would fail for every pack: stop here
            raise PullIncomplete(
                got, failed, stopped=f"{e} (pack {p['id']})", withheld=withheld
            ) from None
        if why is None:
            got.append(target)
        else:
            failed.append((p["id"], why))
    if failed:
        raise PullIncomplete(got, failed, withheld=withheld)
    return Pulled(got, withheld)
